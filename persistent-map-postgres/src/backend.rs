//! [`PostgresBackend`]: one map per table of a PostgreSQL database, on sqlx.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use futures::TryStreamExt;
use persistent_map_core::codec::deadline_from_millis;
use persistent_map_core::codec::{value_from_json, KeyFormat};
use persistent_map_core::{
    async_trait, render_key, BatchOp, Capabilities, Durability, EntryPart, Location, Operation,
    PersistentError, RemoteChanges, Result, StorageBackend,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};

use crate::config::{PostgresBuilder, PostgresOptions, Watch};
use crate::error::{map_sqlx_error, BACKEND};
use crate::format::{
    create_expiry_index, fnv1a, index_name, layout_of, table_columns, Statements,
    DISTINCT_KEYS_VERSION, EXPIRY_VERSION, FORMAT_VERSION, KEY_HASH_FN, META_TABLE,
};
use crate::stored::{load_key, load_value, store_key};
use crate::watch::{Feed, Listener};
use crate::write::Work;

/// Serialises schema creation between persistent-map openers of one
/// database (`pg_advisory_xact_lock` key; "pmap" in ASCII).
const SCHEMA_LOCK: i64 = 0x706d_6170;

/// A [`StorageBackend`] that keeps a map in a table of a PostgreSQL database.
///
/// Keys are stored as text in the table's [`KeyFormat`]
/// ([`key_format`](Self::key_format): string keys as themselves, other keys
/// as JSON), values as `JSONB`, so the table can be
/// queried with SQL. Every batch the map hands over is one transaction.
/// With [`Watch::Enabled`] (the default) each transaction also announces its
/// keys with `pg_notify`, and maps on other instances re-read them. See the
/// crate documentation for durability, the consistency model and the format.
///
/// Clones share one connection pool and one table.
///
/// ```no_run
/// use persistent_map_core::PersistentMap;
/// use persistent_map_postgres::PostgresBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let backend = PostgresBackend::new("postgres://postgres@127.0.0.1:5432/test").await?;
/// let map: PersistentMap<String, u32, _> = PersistentMap::new(backend).await?;
/// map.insert("answer".to_string(), 42).await?;
/// map.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    /// `host:port` (or the socket directory), never credentials.
    pub(crate) endpoint: String,
    database: String,
    pub(crate) schema: String,
    pub(crate) table: String,
    /// `"<schema>"."<table>" on <endpoint>/<database>`, the store named in errors.
    pub(crate) store: String,
    pub(crate) channel: String,
    pub(crate) instance: String,
    pub(crate) watch: Watch,
    /// `None` when watching is disabled.
    feed: Option<Feed>,
    /// Set once the table's format is known (when the backend opens).
    sql: OnceLock<Formats>,
    /// Set once a table opened in format 3 is known to be in format 4
    /// (moved by this instance or another).
    upgraded: AtomicBool,
    /// The key format a table created by this backend gets.
    new_store_key_format: KeyFormat,
}

/// The statements of the format a table opened in, and of format 4 for a
/// table of format 3, which any write carrying a deadline moves to it.
struct Formats {
    opened: Statements,
    expiring: Option<Statements>,
}

impl Formats {
    fn new(schema: &str, table: &str, format: u32) -> Self {
        let opened = Statements::new(schema, table, format);
        let expiring = opened
            .may_gain_expiry()
            .then(|| Statements::new(schema, table, EXPIRY_VERSION));
        Self { opened, expiring }
    }
}

impl PostgresBackend {
    /// Connects to the database at `url` with the default options: schema
    /// `public`, table `kv`, 4 connections, [`Watch::Enabled`].
    ///
    /// `url` is a libpq-style URL: `postgres://user[:password]@host[:port]/database[?options]`.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub async fn new(url: &str) -> Result<Self> {
        Self::open(url, PostgresOptions::default()).await
    }

    /// Starts a [`PostgresBuilder`] to choose the schema, table, pool size,
    /// connect timeout and change feed.
    pub fn builder(url: impl Into<String>) -> PostgresBuilder {
        PostgresBuilder::new(url.into())
    }

    /// Connects to the database at `url` with `options`, creates the schema
    /// and table if missing and checks (or records) the format version.
    ///
    /// # Errors
    ///
    /// * [`PersistentError::Connection`] naming `host:port` (never the
    ///   password) when the server cannot be reached, refuses the login or
    ///   the database does not exist,
    /// * [`PersistentError::Corrupt`] when the table exists with other columns,
    /// * [`PersistentError::UnsupportedFormat`] when a newer release wrote the table,
    /// * [`PersistentError::Backend`] for an invalid URL, schema or table
    ///   name, or any other failure (for example missing privileges).
    pub async fn open(url: &str, options: PostgresOptions) -> Result<Self> {
        options.validated_names()?;
        let connect = PgConnectOptions::from_str(url).map_err(|_| invalid_url())?;
        let endpoint = endpoint_of(&connect);
        let timeout = options.connect_timeout_value();
        // One direct connection first: the pool would retry a refused
        // connection until its timeout and then report only the timeout.
        let mut conn =
            match tokio::time::timeout(timeout, PgConnection::connect_with(&connect)).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => return Err(connection_error(&endpoint, err)),
                Err(_) => {
                    return Err(connection_error(
                        &endpoint,
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no connection within {timeout:?}"),
                        ),
                    ))
                }
            };
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size_value())
            .acquire_timeout(timeout)
            .connect_lazy_with(connect);
        let backend = Self::assemble(pool, endpoint, &options)?;
        let prepared = backend.prepare_schema(&mut conn).await;
        // The check connection is not needed any more either way.
        let _ = conn.close().await;
        prepared?;
        Ok(backend)
    }

    /// Uses an existing pool, for example one shared with the rest of an
    /// application, with the schema, table and change feed of `options`
    /// (its pool size and connect timeout are the pool's own). The change
    /// feed opens its own connection with the pool's connect options.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub async fn from_pool(pool: PgPool, options: PostgresOptions) -> Result<Self> {
        options.validated_names()?;
        let endpoint = endpoint_of(&pool.connect_options());
        let backend = Self::assemble(pool.clone(), endpoint, &options)?;
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| backend.error(e, Operation::Open))?;
        backend.prepare_schema(&mut conn).await?;
        Ok(backend)
    }

    fn assemble(pool: PgPool, endpoint: String, options: &PostgresOptions) -> Result<Self> {
        let (schema, table) = options.validated_names()?;
        let connect = pool.connect_options();
        let database = connect.get_database().unwrap_or_default().to_owned();
        let qualified = format!("\"{schema}\".\"{table}\"");
        let store = format!("{qualified} on {endpoint}/{database}");
        let channel = channel_name(schema, table);
        let instance = format!("{:016x}", fastrand::u64(..));
        let feed = match options.watch_value() {
            Watch::Enabled => {
                let listen_pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(options.connect_timeout_value())
                    .connect_lazy_with((*connect).clone());
                Some(Feed::new(Listener::new(
                    listen_pool,
                    channel.clone(),
                    instance.clone(),
                )))
            }
            Watch::Disabled => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                endpoint,
                database,
                schema: schema.to_owned(),
                table: table.to_owned(),
                store,
                channel,
                instance,
                watch: options.watch_value(),
                feed,
                sql: OnceLock::new(),
                upgraded: AtomicBool::new(false),
                new_store_key_format: options.new_store_key_format_value(),
            }),
        })
    }

    /// Creates the schema, the metadata table and the map table if missing
    /// and checks (or records) the format version, in one transaction under
    /// an advisory lock, so that instances opening a new table at once
    /// cannot both create it.
    async fn prepare_schema(&self, conn: &mut PgConnection) -> Result<()> {
        let inner = &*self.inner;
        let fail = |e| self.error(e, Operation::Open);
        let meta = format!("\"{}\".{META_TABLE}", inner.schema);
        let qualified = format!("\"{}\".\"{}\"", inner.schema, inner.table);
        let mut tx = conn.begin().await.map_err(fail)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        // Existence is checked first: CREATE ... IF NOT EXISTS needs the
        // CREATE privilege even when there is nothing to create.
        let schema_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&inner.schema)
                .fetch_one(&mut *tx)
                .await
                .map_err(fail)?;
        if !schema_exists {
            sqlx::query(&format!("CREATE SCHEMA \"{}\"", inner.schema))
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
        if !relation_exists(&mut tx, &meta).await.map_err(fail)? {
            sqlx::query(&format!(
                "CREATE TABLE {meta} (table_name TEXT PRIMARY KEY, format_version INTEGER NOT NULL)"
            ))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        }
        let stored: Option<i32> = sqlx::query_scalar(&format!(
            "SELECT format_version FROM {meta} WHERE table_name = $1"
        ))
        .bind(&inner.table)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fail)?;
        if let Some(found) = stored {
            let found = u32::try_from(found).map_err(|_| {
                PersistentError::corrupt(
                    self.location(),
                    format!("invalid format version {found} in {META_TABLE}"),
                )
            })?;
            if found > FORMAT_VERSION {
                return Err(PersistentError::UnsupportedFormat {
                    location: self.location(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
        }
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&inner.schema)
        .bind(&inner.table)
        .fetch_all(&mut *tx)
        .await
        .map_err(fail)?;
        let format = if columns.is_empty() {
            let format = match inner.new_store_key_format {
                KeyFormat::Legacy => DISTINCT_KEYS_VERSION - 1,
                _ => FORMAT_VERSION,
            };
            self.create_table(&mut tx, &qualified, format >= EXPIRY_VERSION)
                .await?;
            format
        } else {
            self.format_of(&columns, stored)?
        };
        if stored != Some(format as i32) {
            sqlx::query(&format!(
                "INSERT INTO {meta} (table_name, format_version) VALUES ($1, $2) \
                 ON CONFLICT (table_name) DO UPDATE SET format_version = EXCLUDED.format_version"
            ))
            .bind(&inner.table)
            .bind(format as i32)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
            tracing::debug!(store = %inner.store, version = format, "format version recorded");
        }
        tx.commit().await.map_err(fail)?;
        let sql = Formats::new(&inner.schema, &inner.table, format);
        if let Some(feed) = &inner.feed {
            feed.listener().set_key_format(sql.opened.key_format);
        }
        let _ = inner.sql.set(sql);
        Ok(())
    }

    /// Creates a table in the layout of format 2 (and 3), or of format 4
    /// with `expiry` (with its deadline index), and the schema's key hash
    /// function if it is missing. The function only wraps `sha256(convert_to(key, 'UTF8'))`,
    /// which PostgreSQL cannot prove immutable on its own (`convert_to` is
    /// stable), as a generated column needs; for a given key it never changes.
    async fn create_table(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        qualified: &str,
        expiry: bool,
    ) -> Result<()> {
        let fail = |e| self.error(e, Operation::Open);
        let schema = &self.inner.schema;
        let hash_exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = $1 AND p.proname = $2)",
        )
        .bind(schema)
        .bind(KEY_HASH_FN)
        .fetch_one(&mut **tx)
        .await
        .map_err(fail)?;
        if !hash_exists {
            sqlx::query(&format!(
                "CREATE FUNCTION \"{schema}\".{KEY_HASH_FN}(text) RETURNS bytea \
                 LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE \
                 AS $$ SELECT sha256(convert_to($1, 'UTF8')) $$"
            ))
            .execute(&mut **tx)
            .await
            .map_err(fail)?;
        }
        sqlx::query(&format!(
            "CREATE TABLE {qualified} {}",
            table_columns(schema, expiry)
        ))
        .execute(&mut **tx)
        .await
        .map_err(fail)?;
        if expiry {
            let index = index_name(&self.inner.table);
            sqlx::query(&create_expiry_index(qualified, &index))
                .execute(&mut **tx)
                .await
                .map_err(fail)?;
        }
        Ok(())
    }

    /// The statements for this table's format, as this instance last
    /// found it.
    pub(crate) fn sql(&self) -> Result<&Statements> {
        let formats = self.inner.sql.get().ok_or_else(|| {
            PersistentError::corrupt(self.location(), "the table was not prepared")
        })?;
        Ok(match &formats.expiring {
            Some(expiring) if self.inner.upgraded.load(Ordering::Acquire) => expiring,
            _ => &formats.opened,
        })
    }

    /// The statements of format 4, for a table of format 3 that a write is
    /// about to move to it; `None` for a table of another format.
    pub(crate) fn expiring_sql(&self) -> Option<&Statements> {
        self.inner.sql.get()?.expiring.as_ref()
    }

    /// Records that the table is in format 4 (a table opened in format 3
    /// that this instance or another moved).
    pub(crate) fn mark_upgraded(&self) {
        if !self.inner.upgraded.swap(true, Ordering::AcqRel) {
            tracing::debug!(store = %self.inner.store, version = EXPIRY_VERSION, "the table is in the expiry format");
        }
    }

    /// The statements for a read that returns deadlines: for a table that
    /// opened in format 3, the recorded version is read first, since
    /// another instance may have moved the table to format 4 since.
    async fn sql_with_deadlines(&self) -> Result<&Statements> {
        let sql = self.sql()?;
        if !sql.may_gain_expiry() {
            return Ok(sql);
        }
        let version: Option<i32> = sqlx::query_scalar(&sql.version)
            .bind(&self.inner.table)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.error(e, Operation::Load))?;
        if version.is_some_and(|v| v >= EXPIRY_VERSION as i32) {
            self.mark_upgraded();
        }
        self.sql()
    }

    /// Whether entries of this table can carry a deadline: tables of
    /// formats 3 (moved to format 4 by the first write of one) and 4.
    fn expiry_possible(&self) -> bool {
        self.sql()
            .is_ok_and(|sql| sql.expiry() || sql.may_gain_expiry())
    }

    /// The format of an existing table, from its columns and its recorded
    /// version (`stored`); only a table of another layout is refused.
    fn format_of(&self, columns: &[(String, String)], stored: Option<i32>) -> Result<u32> {
        match (layout_of(columns), stored) {
            (None, _) => Err(PersistentError::corrupt(
                self.location(),
                "the table exists but is not a persistent-map table (expected key TEXT, value JSONB and, from format 2, key_hash BYTEA, from format 4, expires_at BIGINT)",
            )),
            // Formats 2 and 3 share a layout: the recorded version tells
            // the key format, and a table without one keeps the legacy
            // keys it was written with.
            (Some(2), Some(3)) => Ok(DISTINCT_KEYS_VERSION),
            (Some(2), Some(found)) if found >= EXPIRY_VERSION as i32 => {
                Err(PersistentError::corrupt(
                    self.location(),
                    format!("the table has no expires_at column but format version {found}"),
                ))
            }
            (Some(4), Some(found)) if found < DISTINCT_KEYS_VERSION as i32 => {
                Err(PersistentError::corrupt(
                    self.location(),
                    format!("the table has an expires_at column but format version {found}, whose keys are legacy"),
                ))
            }
            (Some(layout), _) => Ok(layout),
        }
    }

    /// The server, as `host:port`.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The database name.
    #[must_use]
    pub fn database(&self) -> &str {
        &self.inner.database
    }

    /// The schema holding this map's table.
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The table holding this map.
    #[must_use]
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// How the table stores keys: [`KeyFormat::Distinct`] in formats 3 and
    /// 4 (every table this release creates), [`KeyFormat::Legacy`] in a
    /// table of format 1 or 2, which keeps its format.
    #[must_use]
    pub fn key_format(&self) -> KeyFormat {
        self.inner
            .sql
            .get()
            .map_or(KeyFormat::Legacy, |sql| sql.opened.key_format)
    }

    /// The `LISTEN`/`NOTIFY` channel announcing changes to this table.
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Whether this backend announces its writes and follows other instances'.
    #[must_use]
    pub fn watch(&self) -> Watch {
        self.inner.watch
    }

    /// The connection pool, for queries of your own (for example to query
    /// the JSONB values). Writing to the map's table behind the map's back
    /// leaves its cache stale until `PersistentMap::reload`, unless the write
    /// also sends a `{"from":"sql","resync":true}` notification on
    /// [`channel`](Self::channel).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub(crate) fn location(&self) -> Location {
        Location::new(self.inner.store.clone())
    }

    fn error(&self, err: sqlx::Error, operation: Operation) -> PersistentError {
        map_sqlx_error(err, operation, self.location(), &self.inner.endpoint)
    }

    /// Decodes one row of `sql`'s `SELECT key, value::text[, expires_at]`.
    fn decode_row<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        row: &PgRow,
        sql: &Statements,
    ) -> Result<(K, V, Option<SystemTime>)> {
        let stored_key: String = row
            .try_get(0)
            .map_err(|e| PersistentError::decode(EntryPart::Key, self.location(), e))?;
        let at = || self.location().with_key(render_key(&stored_key));
        let key_text = load_key(&stored_key)
            .ok_or_else(|| PersistentError::corrupt(at(), "the key's U+0001 escape is damaged"))?;
        let key: K = sql
            .key_format
            .decode(&key_text)
            .map_err(|e| PersistentError::decode(EntryPart::Key, at(), e))?;
        let printed: String = row
            .try_get(1)
            .map_err(|e| PersistentError::decode(EntryPart::Value, at(), e))?;
        let value: V = value_from_json(&load_value(printed))
            .map_err(|e| PersistentError::decode(EntryPart::Value, at(), e))?;
        if !sql.expiry() {
            return Ok((key, value, None));
        }
        let millis: Option<i64> = row.try_get(2).map_err(|e| {
            PersistentError::corrupt(at(), format!("expires_at does not decode: {e}"))
        })?;
        let deadline = millis
            .map(|ms| {
                deadline_from_millis(ms).ok_or_else(|| {
                    PersistentError::corrupt(
                        at(),
                        format!("expires_at {ms} is beyond what this platform's clock holds"),
                    )
                })
            })
            .transpose()?;
        Ok((key, value, deadline))
    }

    /// Streams the rows of `sql`'s `select_all` into `sink`, decoding each
    /// as it arrives.
    async fn stream_rows<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        sql: &Statements,
        sink: &mut (dyn FnMut(K, V, Option<SystemTime>) + Send),
    ) -> Result<()> {
        let mut rows = sqlx::query(&sql.select_all).fetch(&self.inner.pool);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| self.error(e, Operation::Load))?
        {
            let (key, value, deadline) = self.decode_row(&row, sql)?;
            sink(key, value, deadline);
        }
        Ok(())
    }

    /// The stored entries of `keys` (each once), by `sql`'s `select_keys`.
    async fn select_keys<K, V>(
        &self,
        keys: &[K],
        sql: &Statements,
    ) -> Result<HashMap<K, (V, Option<SystemTime>)>>
    where
        K: Eq + Hash + Serialize + DeserializeOwned,
        V: DeserializeOwned,
    {
        let mut stored_keys = Vec::with_capacity(keys.len());
        for key in keys {
            let text = sql.key_format.encode(key).map_err(|e| {
                PersistentError::encode(
                    EntryPart::Key,
                    self.location().with_key(render_key(key)),
                    e,
                )
            })?;
            stored_keys.push(store_key(&text).into_owned());
        }
        let rows = sqlx::query(&sql.select_keys)
            .bind(&stored_keys)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.error(e, Operation::Load))?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let (key, value, deadline) = self.decode_row(row, sql)?;
            found.insert(key, (value, deadline));
        }
        Ok(found)
    }
}

fn invalid_url() -> PersistentError {
    // The URL may hold a password: it is not repeated in the error.
    PersistentError::backend(
        BACKEND,
        Operation::Open,
        Location::new("connection url"),
        "invalid postgres connection url (expected postgres://user[:password]@host[:port]/database)",
    )
}

fn connection_error(
    endpoint: &str,
    source: impl Into<persistent_map_core::BoxError>,
) -> PersistentError {
    PersistentError::Connection {
        backend: BACKEND,
        endpoint: endpoint.to_owned(),
        source: source.into(),
    }
}

/// `host:port`, or the socket directory and port.
fn endpoint_of(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(dir) => format!("{}:{}", dir.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// The notification channel of a table: readable when it fits PostgreSQL's
/// 63-byte identifier limit, otherwise a stable hash of the qualified name.
fn channel_name(schema: &str, table: &str) -> String {
    let readable = format!("persistent_map:{schema}.{table}");
    if readable.len() <= 63 {
        return readable;
    }
    format!(
        "persistent_map:{:016x}",
        fnv1a(&format!("{schema}.{table}"))
    )
}

async fn relation_exists(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    qualified: &str,
) -> std::result::Result<bool, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(qualified)
        .fetch_one(&mut **tx)
        .await?;
    Ok(found.is_some())
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("PostgresBackend")
            .field("endpoint", &inner.endpoint)
            .field("database", &inner.database)
            .field("schema", &inner.schema)
            .field("table", &inner.table)
            .field("watch", &inner.watch)
            .field("instance", &inner.instance)
            .field("connections", &inner.pool.size())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for PostgresBackend
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        let mut all = HashMap::new();
        self.load_into(&mut |k, v| {
            all.insert(k, v);
        })
        .await?;
        Ok(all)
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        self.apply_batch(&[BatchOp::Put { key, value }]).await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        let op: BatchOp<K, V> = BatchOp::Delete { key: key.clone() };
        self.apply_batch(std::slice::from_ref(&op)).await
    }

    /// A committed PostgreSQL transaction is already durable under the
    /// default `synchronous_commit = on` (its WAL record was flushed before
    /// the commit returned), so flush only checks that the server is
    /// reachable and runs with that setting; under `off` or `local` it fails
    /// rather than claim durability it cannot confirm.
    async fn flush(&self) -> Result<()> {
        let setting: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.error(e, Operation::Flush))?;
        if matches!(setting.as_str(), "off" | "local") {
            return Err(PersistentError::backend(
                BACKEND,
                Operation::Flush,
                self.location(),
                format!(
                    "synchronous_commit is {setting}: committed transactions are not confirmed durable"
                ),
            ));
        }
        Ok(())
    }

    async fn contains_key(&self, key: &K) -> Result<bool> {
        let key_text = self.sql()?.key_format.encode(key).map_err(|e| {
            PersistentError::encode(EntryPart::Key, self.location().with_key(render_key(key)), e)
        })?;
        sqlx::query_scalar(&self.sql()?.contains)
            .bind(store_key(&key_text).as_ref())
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.error(e, Operation::Load))
    }

    async fn len(&self) -> Result<usize> {
        let count: i64 = sqlx::query_scalar(&self.sql()?.count)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.error(e, Operation::Load))?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// One transaction per batch: one `DELETE ... WHERE key = ANY($1)`, one
    /// multi-row upsert from arrays (deadlines included), one conditional
    /// `DELETE ... RETURNING` of the swept keys, and (with
    /// [`Watch::Enabled`]) the notifications announcing the keys (a swept
    /// key only when it was deleted). Everything is encoded first, so an
    /// unencodable key or value fails the batch before anything is sent.
    /// The first write carrying a deadline to a table of format 3 moves it
    /// to format 4 in the same transaction.
    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let encoded = self.encode_batch(batch)?;
        if encoded.has_deadlines() && !self.expiry_possible() {
            return Err(PersistentError::Unsupported {
                backend: BACKEND,
                feature: "expiry in a table of format 1 or 2 (legacy keys; see the crate documentation to move it)",
            });
        }
        // A single change (the map replays a failed batch change by change)
        // is reported with its key.
        let location = match batch {
            [op] => self.location().with_key(render_key(op.key())),
            _ => self.location(),
        };
        self.write(Operation::Write, location, Work::Batch(encoded))
            .await
    }

    /// Deletes every row (not `TRUNCATE`, which would block concurrent
    /// readers of the table) and tells other instances to reload.
    async fn clear(&self) -> Result<()> {
        self.write(Operation::Clear, self.location(), Work::Clear)
            .await
    }

    /// Streams the rows, decoding each as it arrives. A row that does not
    /// decode stops the load with an error naming the table and key; nothing
    /// is changed. With [`Watch::Enabled`] the map subscribes to the change
    /// feed (`watch`) before it loads, so no change made during or after the
    /// load is missed.
    async fn load_into(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<()> {
        self.stream_rows(self.sql()?, &mut |key, value, _| sink(key, value))
            .await
    }

    async fn load_keys(&self, keys: &[K]) -> Result<Vec<(K, Option<V>)>> {
        let found = self.select_keys::<K, V>(keys, self.sql()?).await?;
        // A key asked twice is answered twice: `get`, not `remove`.
        Ok(keys
            .iter()
            .map(|key| (key.clone(), found.get(key).map(|(value, _)| value.clone())))
            .collect())
    }

    /// As [`load_into`](Self::load_into), with each row's `expires_at`,
    /// expired rows included.
    async fn load_with_expiry_into(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<SystemTime>) + Send),
    ) -> Result<()> {
        self.stream_rows(self.sql_with_deadlines().await?, sink)
            .await
    }

    async fn load_keys_with_expiry(
        &self,
        keys: &[K],
    ) -> Result<Vec<(K, Option<(V, Option<SystemTime>)>)>> {
        let found = self
            .select_keys::<K, V>(keys, self.sql_with_deadlines().await?)
            .await?;
        // A key asked twice is answered twice: `get`, not `remove`.
        Ok(keys
            .iter()
            .map(|key| (key.clone(), found.get(key).cloned()))
            .collect())
    }

    async fn watch(&self) -> Result<Option<RemoteChanges<K>>> {
        match &self.inner.feed {
            Some(feed) => {
                let format = feed.listener().key_format();
                feed.take(move |text: &str| format.decode::<K>(text))
                    .await
                    .map(Some)
                    .map_err(|e| self.error(e, Operation::Open))
            }
            None => Ok(None),
        }
    }

    /// Expiry on tables of formats 3 and 4; a table of format 1 or 2
    /// (legacy keys) has none.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_atomic_batch(true)
            .with_durability(Durability::OnAcknowledge)
            .with_expiry(self.expiry_possible())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_fit_the_identifier_limit() {
        assert_eq!(channel_name("public", "kv"), "persistent_map:public.kv");
        let long = "t".repeat(63);
        let name = channel_name(&long, &long);
        assert!(name.len() <= 63, "{name}");
        assert_eq!(name, channel_name(&long, &long));
        assert_ne!(name, channel_name(&long, "other"));
    }
}
