//! [`PostgresBackend`]: one map per table of a PostgreSQL database, on sqlx.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use persistent_map_core::codec::{value_from_json, KeyFormat};
use persistent_map_core::{
    async_trait, render_key, BatchOp, Capabilities, Durability, EntryPart, Location, Operation,
    PersistentError, RemoteChanges, Result, StorageBackend,
};
use persistent_map_server_support::{encode_batch, Announcement};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};

use crate::config::{PostgresBuilder, PostgresOptions, Watch};
use crate::error::{commit_error, map_sqlx_error, BACKEND};
use crate::stored::{load_key, load_value, store_key, store_value};
use crate::watch::{Feed, Listener};

/// The table that records, per map table of a schema, the format version it
/// was written in.
pub(crate) const META_TABLE: &str = "persistent_map_meta";

/// The newest table format this release reads and the one it writes.
///
/// * `1`: `key TEXT PRIMARY KEY, value JSONB NOT NULL`, plus a row in the
///   schema's `persistent_map_meta` table. A B-tree index entry holds at
///   most about 2.7 KB, so longer keys that do not compress are refused.
/// * `2`: the same columns, plus `key_hash BYTEA PRIMARY KEY`, generated as
///   the SHA-256 of the key's UTF-8 text (by the schema's
///   `persistent_map_key_hash` function): keys of any size. Tables of
///   format 1 keep format 1.
/// * `3`: the layout of format 2, keys in [`KeyFormat::Distinct`] (formats 1
///   and 2 write them in [`KeyFormat::Legacy`]): a string key whose text is
///   JSON is quoted, so distinct keys stay distinct. Every table this
///   release creates; tables of formats 1 and 2 keep their format.
pub const FORMAT_VERSION: u32 = 3;

/// The first format whose keys are in [`KeyFormat::Distinct`].
const DISTINCT_KEYS_VERSION: u32 = 3;

/// The key format of a table in format `version` (as its meta table
/// records it), for tools that read a table without opening a backend.
///
/// ```
/// use persistent_map_core::codec::KeyFormat;
///
/// assert_eq!(persistent_map_postgres::key_format_of(2), KeyFormat::Legacy);
/// assert_eq!(persistent_map_postgres::key_format_of(3), KeyFormat::Distinct);
/// ```
pub fn key_format_of(version: u32) -> KeyFormat {
    if version >= DISTINCT_KEYS_VERSION {
        KeyFormat::Distinct
    } else {
        KeyFormat::Legacy
    }
}

/// The function computing a format 2 table's `key_hash`.
const KEY_HASH_FN: &str = "persistent_map_key_hash";

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
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// `host:port` (or the socket directory), never credentials.
    endpoint: String,
    database: String,
    schema: String,
    table: String,
    /// `"<schema>"."<table>" on <endpoint>/<database>`, the store named in errors.
    store: String,
    channel: String,
    instance: String,
    watch: Watch,
    /// `None` when watching is disabled.
    feed: Option<Feed>,
    /// Set once the table's format is known (when the backend opens).
    sql: OnceLock<Statements>,
    /// The key format a table created by this backend gets.
    new_store_key_format: KeyFormat,
}

/// The SQL texts this backend runs, built once for its table.
struct Statements {
    /// How the table's keys are written, from its format version.
    key_format: KeyFormat,
    select_all: String,
    select_keys: String,
    count: String,
    contains: String,
    upsert: String,
    delete: String,
    delete_all: String,
}

impl Statements {
    /// The statements for a table of `format` (1, 2 or 3).
    fn new(qualified: &str, schema: &str, format: u32) -> Self {
        let t = qualified;
        // Format 2 finds rows by the hash of their key (any size); format 1
        // by the key itself.
        let hash = format!("\"{schema}\".{KEY_HASH_FN}");
        let (one, many, target) = if format >= 2 {
            (
                format!("key_hash = {hash}($1)"),
                format!("key_hash = ANY(ARRAY(SELECT {hash}(k) FROM UNNEST($1::text[]) AS k))"),
                "key_hash",
            )
        } else {
            (
                String::from("key = $1"),
                String::from("key = ANY($1::text[])"),
                "key",
            )
        };
        Self {
            key_format: key_format_of(format),
            select_all: format!("SELECT key, value::text FROM {t}"),
            select_keys: format!("SELECT key, value::text FROM {t} WHERE {many}"),
            count: format!("SELECT COUNT(*) FROM {t}"),
            contains: format!("SELECT EXISTS (SELECT 1 FROM {t} WHERE {one})"),
            // One statement for any number of rows: the rows arrive as two
            // arrays, so the SQL text (and its prepared plan) never changes.
            upsert: format!(
                "INSERT INTO {t} (key, value) \
                 SELECT k, v::jsonb FROM UNNEST($1::text[], $2::text[]) AS u(k, v) \
                 ON CONFLICT ({target}) DO UPDATE SET value = EXCLUDED.value"
            ),
            delete: format!("DELETE FROM {t} WHERE {many}"),
            delete_all: format!("DELETE FROM {t}"),
        }
    }
}

/// What a write transaction does before it announces itself.
enum Work {
    /// Apply an encoded batch.
    Batch(EncodedBatch),
    /// Delete every row.
    Clear,
}

/// Sends every payload of a batch in one statement.
const NOTIFY: &str = "SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p";

/// PostgreSQL refuses notification payloads of 8000 bytes or more; stay
/// clear of it.
const MAX_PAYLOAD: usize = 7900;

/// A batch whose keys would need more notifications than this sends one
/// "reload everything" notification instead.
const MAX_NOTIFICATIONS: usize = 16;

/// The net effect of a batch, in stored form: rows to upsert and keys to
/// delete, each key at most once.
#[derive(Default)]
struct EncodedBatch {
    put_keys: Vec<String>,
    put_values: Vec<String>,
    deletes: Vec<String>,
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
            self.create_table(&mut tx, &qualified).await?;
            match inner.new_store_key_format {
                KeyFormat::Legacy => DISTINCT_KEYS_VERSION - 1,
                _ => FORMAT_VERSION,
            }
        } else {
            match self.check_columns(&columns)? {
                // Formats 2 and 3 share a layout: the recorded version tells
                // the key format, and a table without one keeps the legacy
                // keys it was written with.
                2 if stored == Some(DISTINCT_KEYS_VERSION as i32) => DISTINCT_KEYS_VERSION,
                layout => layout,
            }
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
        let sql = Statements::new(&qualified, &inner.schema, format);
        if let Some(feed) = &inner.feed {
            feed.listener().set_key_format(sql.key_format);
        }
        let _ = inner.sql.set(sql);
        Ok(())
    }

    /// Creates a table in the layout of format 2 (and 3), and the schema's key hash function if it
    /// is missing. The function only wraps `sha256(convert_to(key, 'UTF8'))`,
    /// which PostgreSQL cannot prove immutable on its own (`convert_to` is
    /// stable), as a generated column needs; for a given key it never changes.
    async fn create_table(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        qualified: &str,
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
            "CREATE TABLE {qualified} (key TEXT NOT NULL, value JSONB NOT NULL, \
             key_hash BYTEA GENERATED ALWAYS AS (\"{schema}\".{KEY_HASH_FN}(key)) STORED PRIMARY KEY)"
        ))
        .execute(&mut **tx)
        .await
        .map_err(fail)?;
        Ok(())
    }

    /// The statements for this table's format.
    fn sql(&self) -> Result<&Statements> {
        self.inner
            .sql
            .get()
            .ok_or_else(|| PersistentError::corrupt(self.location(), "the table was not prepared"))
    }

    /// Accepts an existing table only with the layout this release writes.
    /// Returns the table's format (1 or 2).
    fn check_columns(&self, columns: &[(String, String)]) -> Result<u32> {
        let has = |name: &str, ty: &str| columns.iter().any(|(c, t)| c == name && t == ty);
        match (has("key", "text") && has("value", "jsonb"), columns.len()) {
            (true, 2) => Ok(1),
            (true, 3) if has("key_hash", "bytea") => Ok(2),
            _ => Err(PersistentError::corrupt(
                self.location(),
                "the table exists but is not a persistent-map table (expected key TEXT, value JSONB and, from format 2, key_hash BYTEA)",
            )),
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

    /// How the table stores keys: [`KeyFormat::Distinct`] for a table this
    /// release created (format 3), [`KeyFormat::Legacy`] for one created by
    /// an earlier release (formats 1 and 2), which keeps its format.
    #[must_use]
    pub fn key_format(&self) -> KeyFormat {
        self.inner
            .sql
            .get()
            .map_or(KeyFormat::Legacy, |sql| sql.key_format)
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

    fn location(&self) -> Location {
        Location::new(self.inner.store.clone())
    }

    fn error(&self, err: sqlx::Error, operation: Operation) -> PersistentError {
        map_sqlx_error(err, operation, self.location(), &self.inner.endpoint)
    }

    /// Encodes a batch before any transaction opens, keeping only the last
    /// change per key: inside one transaction only the final state of each
    /// key matters (and one upsert may not touch a row twice).
    fn encode_batch<K: Serialize, V: Serialize>(
        &self,
        batch: &[BatchOp<K, V>],
    ) -> Result<EncodedBatch> {
        let mut encoded = EncodedBatch::default();
        let key_format = self.sql()?.key_format;
        for (key_text, value) in encode_batch(batch, BACKEND, &self.inner.store, key_format)? {
            let key = stored(store_key(&key_text)).unwrap_or(key_text);
            match value {
                Some(json) => {
                    let value = store_value(&json)
                        .map_err(|e| self.value_error(batch, key_format, &key, e))?;
                    let value = stored(value).unwrap_or(json);
                    encoded.put_keys.push(key);
                    encoded.put_values.push(value);
                }
                None => encoded.deletes.push(key),
            }
        }
        Ok(encoded)
    }

    /// The error of a value that has JSON but no stored form, naming its key
    /// (found again in the batch: this never happens in practice).
    fn value_error<K: Serialize, V>(
        &self,
        batch: &[BatchOp<K, V>],
        key_format: KeyFormat,
        stored_key: &str,
        err: serde_json::Error,
    ) -> PersistentError {
        let key = batch
            .iter()
            .rev()
            .map(BatchOp::key)
            .find(|key| {
                key_format
                    .encode(key)
                    .is_ok_and(|text| store_key(&text) == stored_key)
            })
            .map(render_key);
        let location = match key {
            Some(key) => self.location().with_key(key),
            None => self.location(),
        };
        PersistentError::encode(EntryPart::Value, location, err)
    }

    /// Decodes one row of `SELECT key, value::text`.
    fn decode_row<K: DeserializeOwned, V: DeserializeOwned>(&self, row: &PgRow) -> Result<(K, V)> {
        let stored_key: String = row
            .try_get(0)
            .map_err(|e| PersistentError::decode(EntryPart::Key, self.location(), e))?;
        let at = || self.location().with_key(render_key(&stored_key));
        let key_text = load_key(&stored_key)
            .ok_or_else(|| PersistentError::corrupt(at(), "the key's U+0001 escape is damaged"))?;
        let key: K = self
            .sql()?
            .key_format
            .decode(&key_text)
            .map_err(|e| PersistentError::decode(EntryPart::Key, at(), e))?;
        let printed: String = row
            .try_get(1)
            .map_err(|e| PersistentError::decode(EntryPart::Value, at(), e))?;
        let value: V = value_from_json(&load_value(printed))
            .map_err(|e| PersistentError::decode(EntryPart::Value, at(), e))?;
        Ok((key, value))
    }

    /// Runs `work` in one transaction that also announces `payloads`.
    ///
    /// A connection lost before `COMMIT` is sent leaves nothing applied (the
    /// server rolls back a session that ends inside a transaction): a
    /// [`PersistentError::Connection`]. One lost while `COMMIT`'s reply is
    /// awaited may have committed: [`PersistentError::OutcomeUnknown`], which
    /// the map settles by reading the keys back.
    async fn write(
        &self,
        operation: Operation,
        location: Location,
        work: Work,
        payloads: Vec<String>,
    ) -> Result<()> {
        let inner = &*self.inner;
        let sql = self.sql()?;
        let fail = |e| map_sqlx_error(e, operation, location.clone(), &inner.endpoint);
        let mut tx = inner.pool.begin().await.map_err(fail)?;
        match &work {
            Work::Batch(batch) => {
                if !batch.deletes.is_empty() {
                    sqlx::query(&sql.delete)
                        .bind(&batch.deletes)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                }
                if !batch.put_keys.is_empty() {
                    sqlx::query(&sql.upsert)
                        .bind(&batch.put_keys)
                        .bind(&batch.put_values)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                }
            }
            Work::Clear => {
                sqlx::query(&sql.delete_all)
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
            }
        }
        if !payloads.is_empty() {
            sqlx::query(NOTIFY)
                .bind(&inner.channel)
                .bind(&payloads)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
        tx.commit()
            .await
            .map_err(|e| commit_error(e, operation, location.clone(), &inner.endpoint))
    }
}

/// The owned text of a stored form that differs from its input; `None`
/// when it is the input itself (which the caller then keeps, uncopied).
fn stored(form: Cow<'_, str>) -> Option<String> {
    match form {
        Cow::Owned(text) => Some(text),
        Cow::Borrowed(_) => None,
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
    // FNV-1a: stable across processes and releases, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("{schema}.{table}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("persistent_map:{hash:016x}")
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
    /// multi-row upsert from two arrays, and (with [`Watch::Enabled`]) the
    /// notifications announcing the keys. Everything is encoded first, so an
    /// unencodable key or value fails the batch before anything is sent.
    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let encoded = self.encode_batch(batch)?;
        let payloads = match self.inner.watch {
            Watch::Enabled => {
                let keys: Vec<&str> = encoded
                    .put_keys
                    .iter()
                    .chain(encoded.deletes.iter())
                    .map(String::as_str)
                    .collect();
                Announcement::chunked(&self.inner.instance, &keys, MAX_PAYLOAD, MAX_NOTIFICATIONS)
            }
            Watch::Disabled => Vec::new(),
        };
        // A single change (the map replays a failed batch change by change)
        // is reported with its key.
        let location = match batch {
            [op] => self.location().with_key(render_key(op.key())),
            _ => self.location(),
        };
        self.write(Operation::Write, location, Work::Batch(encoded), payloads)
            .await
    }

    /// Deletes every row (not `TRUNCATE`, which would block concurrent
    /// readers of the table) and tells other instances to reload.
    async fn clear(&self) -> Result<()> {
        let payloads = match self.inner.watch {
            Watch::Enabled => vec![Announcement::resync(self.inner.instance.as_str()).to_json()],
            Watch::Disabled => Vec::new(),
        };
        self.write(Operation::Clear, self.location(), Work::Clear, payloads)
            .await
    }

    /// Streams the rows, decoding each as it arrives. A row that does not
    /// decode stops the load with an error naming the table and key; nothing
    /// is changed. With [`Watch::Enabled`] the map subscribes to the change
    /// feed (`watch`) before it loads, so no change made during or after the
    /// load is missed.
    async fn load_into(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<()> {
        let mut rows = sqlx::query(&self.sql()?.select_all).fetch(&self.inner.pool);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| self.error(e, Operation::Load))?
        {
            let (key, value) = self.decode_row(&row)?;
            sink(key, value);
        }
        Ok(())
    }

    async fn load_keys(&self, keys: &[K]) -> Result<Vec<(K, Option<V>)>> {
        let mut stored_keys = Vec::with_capacity(keys.len());
        let key_format = self.sql()?.key_format;
        for key in keys {
            let text = key_format.encode(key).map_err(|e| {
                PersistentError::encode(
                    EntryPart::Key,
                    self.location().with_key(render_key(key)),
                    e,
                )
            })?;
            stored_keys.push(store_key(&text).into_owned());
        }
        let rows = sqlx::query(&self.sql()?.select_keys)
            .bind(&stored_keys)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.error(e, Operation::Load))?;
        let mut found: HashMap<K, V> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let (key, value) = self.decode_row::<K, V>(row)?;
            found.insert(key, value);
        }
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

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_atomic_batch(true)
            .with_durability(Durability::OnAcknowledge)
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
