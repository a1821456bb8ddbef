//! [`SqliteBackend`]: one map per table of a SQLite file, on sqlx.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::TryStreamExt;
use persistent_map_core::codec::{value_from_json, KeyFormat};
use persistent_map_core::{
    async_trait, render_key, BatchOp, Capabilities, Durability, EntryPart, Location, Operation,
    PersistentError, Result, StorageBackend,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Connection, Row, TypeInfo, ValueRef};
use tokio::sync::{Mutex, MutexGuard};

use crate::config::{SqliteBuilder, SqliteOptions};
use crate::error::{is_busy, is_io_error, map_sqlx_error, BACKEND};
use crate::format::{
    has_deadlines, key_format_of, new_table_version, FORMAT_VERSION, LEGACY_VERSION,
};
use crate::load::{self, Sink};
use crate::statements::{create_table_sql, Reads, Statements};
use crate::write::{self, chunks};
use persistent_map_core::codec::deadline_from_millis as from_millis;

/// The table that records, per map table, the format version it was written in.
pub(crate) const META_TABLE: &str = "persistent_map_meta";

/// A [`StorageBackend`] that keeps a map in a table of a SQLite database file.
///
/// Keys are stored as text in the table's
/// [`KeyFormat`] ([`key_format`](Self::key_format): string keys as
/// themselves, other keys as JSON), values as JSON text. Every batch the map
/// hands over is one transaction. See the crate documentation for the
/// durability guarantees and the file format.
///
/// Clones share one connection pool, one write connection and one table.
///
/// ```
/// use persistent_map_core::PersistentMap;
/// use persistent_map_sqlite::SqliteBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let backend = SqliteBackend::new(dir.path().join("data/app.db")).await?;
/// let map: PersistentMap<String, u32, _> = PersistentMap::new(backend).await?;
/// map.insert("answer".to_string(), 42).await?;
/// map.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// Reads (loading, counting) run on the pool.
    pool: SqlitePool,
    /// Writes, clears and flushes run on one connection the backend holds,
    /// opened on first use: no pool acquire (and its ping) per commit, and
    /// its statements stay prepared. SQLite runs one writer at a time anyway.
    writer: Mutex<Option<SqliteConnection>>,
    /// How long a flush retries a checkpoint that another connection blocks.
    busy_timeout: Duration,
    /// What the synchronous level makes of an acknowledged commit.
    durability: Durability,
    path: PathBuf,
    table: String,
    /// `<path> table "<table>"`, the store named in errors.
    store: String,
    /// How the table's keys are written, from its format version.
    key_format: KeyFormat,
    /// The table's format version as last seen: it moves up when a write
    /// adds the deadline column, here or (seen at the next load or expiry
    /// write) in another process.
    version: AtomicU32,
    sql: Statements,
}

impl Inner {
    /// Creates the metadata and map tables if missing and checks (or
    /// records) the format version, all in one write transaction so that two
    /// processes opening a new file at once cannot both create it. Returns
    /// the table's format version.
    async fn prepare_schema(&self) -> Result<u32> {
        let fail = |e| map_sqlx_error(e, Operation::Open, file_location(&self.path), &self.path);
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(fail)?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {META_TABLE} \
             (table_name TEXT PRIMARY KEY NOT NULL, format_version INTEGER NOT NULL)"
        ))
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
        let stored: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT format_version FROM {META_TABLE} WHERE table_name = ?1"
        ))
        .bind(&self.table)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fail)?;

        match stored {
            Some(found) => {
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
                if found < LEGACY_VERSION {
                    // Versions 0 and 1 share the table layout and key
                    // format: stamping is the whole migration.
                    self.stamp(&mut tx, found, LEGACY_VERSION).await?;
                }
                if has_deadlines(found) {
                    let column: Option<i64> = sqlx::query_scalar(&self.sql.has_deadline_column)
                        .bind(&self.table)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(fail)?;
                    if column.is_none() {
                        return Err(PersistentError::corrupt(
                            self.location(),
                            format!("format version {found} but no expires_at column"),
                        ));
                    }
                }
                // A version 1 table keeps its key format: moving it to
                // version 2 would mean rewriting keys that other programs
                // may read. Versions 1 and 2 get the deadline column only
                // with their first deadline (see `write::write_upgrading`).
                tx.commit().await.map_err(fail)?;
                Ok(found.max(LEGACY_VERSION))
            }
            None => {
                let columns: Vec<(String, i64)> =
                    sqlx::query_as("SELECT name, pk FROM pragma_table_info(?1)")
                        .bind(&self.table)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(fail)?;
                let version = if columns.is_empty() {
                    let version = new_table_version(self.key_format);
                    for sql in create_table_sql(&self.table, has_deadlines(version)) {
                        sqlx::query(&sql).execute(&mut *tx).await.map_err(fail)?;
                    }
                    version
                } else {
                    self.check_columns(&columns)?;
                    tracing::info!(store = %self.store, "stamping a persistent-map 0.1.x table with format version {LEGACY_VERSION}");
                    LEGACY_VERSION
                };
                self.stamp(&mut tx, 0, version).await?;
                tx.commit().await.map_err(fail)?;
                Ok(version)
            }
        }
    }

    /// Accepts an existing table without metadata only if it has the 0.1.x
    /// layout: `key` as its single primary key column, and `value`.
    fn check_columns(&self, columns: &[(String, i64)]) -> Result<()> {
        let has = |name: &str| columns.iter().any(|(c, _)| c.eq_ignore_ascii_case(name));
        let key_is_pk = columns
            .iter()
            .filter(|(_, pk)| *pk > 0)
            .map(|(c, _)| c.to_ascii_lowercase())
            .eq(std::iter::once(String::from("key")));
        if has("key") && has("value") && key_is_pk {
            Ok(())
        } else {
            Err(PersistentError::corrupt(
                self.location(),
                "the table exists but is not a persistent-map table (expected key TEXT PRIMARY KEY, value TEXT)",
            ))
        }
    }

    async fn stamp(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        from: u32,
        to: u32,
    ) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {META_TABLE} (table_name, format_version) VALUES (?1, ?2) \
             ON CONFLICT(table_name) DO UPDATE SET format_version = excluded.format_version"
        ))
        .bind(&self.table)
        .bind(i64::from(to))
        .execute(&mut **tx)
        .await
        .map_err(|e| map_sqlx_error(e, Operation::Open, self.location(), &self.path))?;
        tracing::debug!(store = %self.store, from, to, "format version recorded");
        Ok(())
    }

    fn location(&self) -> Location {
        Location::new(self.store.clone())
    }
}

impl SqliteBackend {
    /// Opens (or creates) the database file at `path` with the default
    /// options: table `kv`, WAL, synchronous `NORMAL`. Missing parent
    /// directories are created.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub async fn new(path: impl AsRef<Path>) -> Result<Self> {
        Self::open(path, SqliteOptions::default()).await
    }

    /// Starts a [`SqliteBuilder`] to choose the table, journal mode,
    /// synchronous level, busy timeout and pool size.
    pub fn builder(path: impl AsRef<Path>) -> SqliteBuilder {
        SqliteBuilder::new(path.as_ref().to_path_buf())
    }

    /// Opens (or creates) the database file at `path` with `options`.
    ///
    /// Creates missing parent directories, opens a pool whose connections
    /// all run the same pragmas, creates the table if missing and records
    /// the format version. A persistent-map 0.1.x file (a `kv` table without
    /// metadata) is stamped with format version 1, in one transaction, its
    /// rows untouched; a table of an older version than
    /// [`FORMAT_VERSION`] is otherwise opened as it is.
    ///
    /// # Errors
    ///
    /// * [`PersistentError::Io`] naming the directory when it cannot be created
    ///   (for example when a parent is a regular file),
    /// * [`PersistentError::Corrupt`] naming the file when it is not a SQLite
    ///   database, or the table exists with other columns; the file is not changed,
    /// * [`PersistentError::UnsupportedFormat`] when a newer release wrote the table,
    /// * [`PersistentError::Backend`] for an invalid table name or any other
    ///   SQLite failure (for example a database still busy after the busy
    ///   timeout; opening is retried until then, so that processes creating
    ///   one new file at the same instant all open it).
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let table = options.validated_table(&path)?.to_owned();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| PersistentError::io(parent, e))?;
        }
        // Two processes creating one new file at once both take a shared
        // lock, then both need an exclusive one to switch it to WAL: SQLite
        // answers one of them busy at once rather than wait in its busy
        // handler, which would deadlock. Such a refusal is retried, with a
        // short jittered pause, until the busy timeout has passed.
        let deadline = Instant::now() + options.busy_timeout_value();
        let mut pause = Duration::from_millis(1);
        loop {
            match Self::connect(&path, &table, &options).await {
                Err(err) if is_busy(&err) && Instant::now() + pause < deadline => {
                    tracing::debug!(path = %path.display(), error = %err, "database busy while opening; retrying");
                    tokio::time::sleep(pause + Duration::from_micros(fastrand::u64(..1000))).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                result => return result,
            }
        }
    }

    /// One attempt at opening: the pool, its pragmas, and the schema.
    async fn connect(path: &Path, table: &str, options: &SqliteOptions) -> Result<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(options.pool_size_value())
            .connect_with(options.connect_options(path))
            .await
            .map_err(|e| map_sqlx_error(e, Operation::Open, file_location(path), path))?;
        // Every journal mode offered keeps commits; the level decides when.
        let durability = durability_of(options.synchronous_value().pragma_value(), "journaled");
        let prepared = Self::prepare(
            pool.clone(),
            path.to_path_buf(),
            table.to_owned(),
            options,
            durability,
        )
        .await;
        if prepared.is_err() {
            // Closes the connections now, so none holds a lock into a retry.
            pool.close().await;
        }
        prepared
    }

    /// Uses an existing pool, for example one shared with the rest of an
    /// application, with the table of `options`.
    ///
    /// The pool's own connect options then decide the journal mode, the
    /// synchronous level and the busy timeout: the ones in `options` are not
    /// applied (sqlx cannot change the set-up of a pool's future connections).
    /// Use WAL or a rollback journal and a synchronous level of at least
    /// `NORMAL`, or `flush` cannot make writes durable; a warning is logged
    /// otherwise.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), without the directory creation.
    pub async fn from_pool(pool: SqlitePool, options: SqliteOptions) -> Result<Self> {
        let path = pool.connect_options().get_filename().to_path_buf();
        let table = options.validated_table(&path)?.to_owned();
        let durability = pool_durability(&pool, &path).await?;
        Self::prepare(pool, path, table, &options, durability).await
    }

    async fn prepare(
        pool: SqlitePool,
        path: PathBuf,
        table: String,
        options: &SqliteOptions,
        durability: Durability,
    ) -> Result<Self> {
        let store = format!("{} table \"{table}\"", path.display());
        let sql = Statements::new(&table);
        let mut inner = Inner {
            pool,
            writer: Mutex::new(None),
            busy_timeout: options.busy_timeout_value(),
            durability,
            path,
            table,
            store,
            // What a table created now gets; `prepare_schema` reads an
            // existing table's.
            key_format: options.new_store_key_format_value(),
            version: AtomicU32::new(0),
            sql,
        };
        let version = inner.prepare_schema().await?;
        inner.key_format = key_format_of(version);
        inner.version = AtomicU32::new(version);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The database file as text; the 0.1.x name of [`path`](Self::path).
    ///
    /// # Errors
    ///
    /// Never; kept fallible for 0.1.x code.
    pub async fn db_path(&self) -> Result<String> {
        Ok(self.inner.path.display().to_string())
    }

    /// The table holding this map.
    #[must_use]
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// How the table stores keys: [`KeyFormat::Distinct`] for a table this
    /// release created, [`KeyFormat::Legacy`] for one created by
    /// persistent-map 0.1.x or an earlier 0.2 (format versions 0 and 1,
    /// and 3 once such a table has a deadline column), which keeps its format.
    #[must_use]
    pub fn key_format(&self) -> KeyFormat {
        self.inner.key_format
    }

    /// The table's format version (see [`FORMAT_VERSION`]) as this backend
    /// last saw it: the one it opened, or a later one after a write stored
    /// the first deadline.
    #[must_use]
    pub fn format_version(&self) -> u32 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// The connection pool, for queries of your own (for example to read the
    /// table with SQL). Writing to the map's table behind the map's back
    /// leaves its cache stale until [`PersistentMap::reload`](persistent_map_core::PersistentMap::reload).
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Closes the write connection and every pooled connection; later calls
    /// fail. Optional: dropping the last clone closes them too, but without
    /// waiting for it.
    pub async fn close(&self) {
        if let Some(conn) = self.inner.writer.lock().await.take() {
            let _ = conn.close().await;
        }
        self.inner.pool.close().await;
    }

    /// The write connection, opened with the pool's options on first use.
    async fn writer(
        &self,
    ) -> std::result::Result<MutexGuard<'_, Option<SqliteConnection>>, sqlx::Error> {
        let mut writer = self.inner.writer.lock().await;
        if writer.is_none() {
            // Taken from the pool (so it runs the pool's set-up, and a
            // closed pool refuses it) and kept out of it.
            *writer = Some(self.inner.pool.acquire().await?.detach());
        }
        Ok(writer)
    }

    fn location(&self) -> Location {
        self.inner.location()
    }

    fn error(&self, err: sqlx::Error, operation: Operation) -> PersistentError {
        map_sqlx_error(err, operation, self.location(), &self.inner.path)
    }

    /// Streams rows one by one into `sink`, decoding each (with its
    /// deadline if `reads` reads them): the whole table, or `(after,
    /// limit)`: at most `limit` rows after that rowid. A row that does not
    /// decode is an error naming the table and key.
    async fn load_rows<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        conn: &mut SqliteConnection,
        reads: &Reads,
        range: Option<(i64, i64)>,
        sink: &mut Sink<'_, K, V>,
    ) -> Result<()> {
        let query = match range {
            None => sqlx::query(&reads.select_all),
            Some((after, limit)) => sqlx::query(&reads.select_after).bind(after).bind(limit),
        };
        let mut rows = query.fetch(conn);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| self.error(e, Operation::Load))?
        {
            let key_text = self.text_column(&row, 0, EntryPart::Key, None)?;
            let key: K = self.inner.key_format.decode(key_text).map_err(|e| {
                PersistentError::decode(
                    EntryPart::Key,
                    self.location().with_key(render_key(key_text)),
                    e,
                )
            })?;
            let (value, deadline) = self.value_columns(&row, reads, key_text)?;
            sink(key, value, deadline);
        }
        Ok(())
    }

    /// Decodes the value of `row` (column 1), and its deadline (column 2)
    /// if `reads` reads them.
    fn value_columns<V: DeserializeOwned>(
        &self,
        row: &SqliteRow,
        reads: &Reads,
        key_text: &str,
    ) -> Result<(V, Option<SystemTime>)> {
        let value_text = self.text_column(row, 1, EntryPart::Value, Some(key_text))?;
        let value: V = value_from_json(value_text).map_err(|e| {
            PersistentError::decode(
                EntryPart::Value,
                self.location().with_key(render_key(key_text)),
                e,
            )
        })?;
        let deadline = if reads.deadlines {
            self.deadline_column(row, 2, key_text)?
        } else {
            None
        };
        Ok((value, deadline))
    }

    /// Reads column `index` of `row` as a deadline: NULL is none, an
    /// integer is milliseconds since the Unix epoch, anything else is
    /// damage naming the key.
    fn deadline_column(
        &self,
        row: &SqliteRow,
        index: usize,
        key_text: &str,
    ) -> Result<Option<SystemTime>> {
        let location = || self.location().with_key(render_key(key_text));
        let raw = row
            .try_get_raw(index)
            .map_err(|e| PersistentError::corrupt(location(), e.to_string()))?;
        if raw.is_null() {
            return Ok(None);
        }
        let stored = raw.type_info().name().to_owned();
        if stored != "INTEGER" {
            return Err(PersistentError::corrupt(
                location(),
                format!("the stored deadline is {stored}, not an integer number of milliseconds"),
            ));
        }
        let millis: i64 = row
            .try_get(index)
            .map_err(|e| PersistentError::corrupt(location(), e.to_string()))?;
        from_millis(millis).map(Some).ok_or_else(|| {
            PersistentError::corrupt(
                location(),
                format!("the stored deadline {millis} is out of this platform's time range"),
            )
        })
    }

    /// The statements that read the table, with deadlines if `wanted` and
    /// the table has them. Looks at the stored version first when the
    /// table had no deadline column when last seen: another process may
    /// have added it.
    async fn reads(&self, conn: &mut SqliteConnection, wanted: bool) -> Result<&Reads> {
        if wanted && !has_deadlines(self.format_version()) {
            let stored: Option<i64> = sqlx::query_scalar(&self.inner.sql.version)
                .bind(&self.inner.table)
                .fetch_optional(conn)
                .await
                .map_err(|e| self.error(e, Operation::Load))?;
            if let Some(version) = stored.and_then(|v| u32::try_from(v).ok()) {
                self.saw_version(version)?;
            }
        }
        let deadlines = wanted && has_deadlines(self.format_version());
        Ok(self.inner.sql.reads(deadlines))
    }

    /// Records a version read from the meta table; refuses one newer than
    /// this release reads.
    fn saw_version(&self, version: u32) -> Result<()> {
        if version > FORMAT_VERSION {
            return Err(PersistentError::UnsupportedFormat {
                location: self.location(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        self.inner.version.fetch_max(version, Ordering::AcqRel);
        Ok(())
    }

    /// Reads the table in one snapshot, in chunks that SQLite packs as JSON
    /// and that are decoded while the next one is read; with deadlines if
    /// `deadlines` and the table has them.
    async fn load_chunks<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        deadlines: bool,
        sink: &mut Sink<'_, K, V>,
    ) -> Result<()> {
        let fail = |e| self.error(e, Operation::Load);
        let mut conn = self.inner.pool.acquire().await.map_err(fail)?;
        let mut tx = conn.begin().await.map_err(fail)?;
        let reads = self.reads(&mut tx, deadlines).await?;
        let chunks = &reads.load_chunk;
        let mut current = match load::fetch_chunk(&mut tx, chunks, i64::MIN).await {
            Ok(first) => first,
            Err(e) => {
                // No rowid (a table of another origin) or no JSON functions.
                tracing::debug!(store = %self.inner.store, error = %e, "reading rows one by one");
                return self.load_rows(&mut tx, reads, None, sink).await;
            }
        };
        let mut after = i64::MIN;
        while let Some(chunk) = current {
            let (next, decoded) =
                tokio::join!(load::fetch_chunk(&mut tx, chunks, chunk.last), async {
                    load::decode_chunk(&chunk.json, self.inner.key_format, sink)
                });
            if !decoded {
                // Name the row that is wrong.
                self.load_rows::<K, V>(
                    &mut tx,
                    reads,
                    Some((after, chunk.rows)),
                    &mut |_, _, _| {},
                )
                .await?;
                return Err(PersistentError::corrupt(
                    self.location(),
                    format!(
                        "the rows after rowid {after} do not decode together, though each one does"
                    ),
                ));
            }
            after = chunk.last;
            current = match next {
                Ok(next) => next,
                // A later chunk SQLite cannot pack (a damaged value, a chunk
                // too large): read the rest row by row, which names a bad row.
                Err(e) => {
                    tracing::debug!(store = %self.inner.store, error = %e, "reading the rest row by row");
                    self.load_rows(&mut tx, reads, Some((after, -1)), sink)
                        .await?;
                    return tx.rollback().await.map_err(fail);
                }
            };
        }
        tx.rollback().await.map_err(fail)
    }

    /// The stored value and deadline of each of `keys`, in one snapshot,
    /// with `SELECT ... WHERE key IN (...)` in chunks.
    #[allow(clippy::type_complexity)]
    async fn load_keys_inner<K: Serialize + Clone, V: DeserializeOwned + Clone>(
        &self,
        keys: &[K],
        deadlines: bool,
    ) -> Result<Vec<(K, Option<(V, Option<SystemTime>)>)>> {
        let texts: Vec<String> = keys
            .iter()
            .map(|key| {
                self.inner.key_format.encode(key).map_err(|e| {
                    PersistentError::encode(
                        EntryPart::Key,
                        self.location().with_key(render_key(key)),
                        e,
                    )
                })
            })
            .collect::<Result<_>>()?;
        let fail = |e| self.error(e, Operation::Load);
        let mut conn = self.inner.pool.acquire().await.map_err(fail)?;
        let mut tx = conn.begin().await.map_err(fail)?;
        let reads = self.reads(&mut tx, deadlines).await?;
        let asked: HashSet<&str> = texts.iter().map(String::as_str).collect();
        let mut found: HashMap<&str, (V, Option<SystemTime>)> = HashMap::new();
        for chunk in chunks(&texts) {
            let size = chunk.len().trailing_zeros() as usize;
            let mut query = sqlx::query(&reads.select_keys[size]);
            for text in chunk {
                query = query.bind(text.as_str());
            }
            let mut rows = query.fetch(&mut *tx);
            while let Some(row) = rows.try_next().await.map_err(fail)? {
                let stored = self.text_column(&row, 0, EntryPart::Key, None)?;
                // Kept under the asked text, which outlives the row.
                let Some(&text) = asked.get(stored) else {
                    continue;
                };
                found.insert(text, self.value_columns(&row, reads, stored)?);
            }
        }
        tx.rollback().await.map_err(fail)?;
        Ok(keys
            .iter()
            .zip(&texts)
            .map(|(key, text)| (key.clone(), found.get(text.as_str()).cloned()))
            .collect())
    }

    /// Reads column `index` of `row` as text borrowed from the row, refusing
    /// NULL and BLOB.
    fn text_column<'r>(
        &self,
        row: &'r SqliteRow,
        index: usize,
        what: EntryPart,
        key_text: Option<&str>,
    ) -> Result<&'r str> {
        let location = || match key_text {
            Some(key) => self.location().with_key(render_key(key)),
            None => self.location(),
        };
        let raw = row
            .try_get_raw(index)
            .map_err(|e| PersistentError::decode(what, location(), e))?;
        if raw.is_null() {
            return Err(PersistentError::decode(
                what,
                location(),
                format!("the stored {what} is NULL"),
            ));
        }
        if raw.type_info().name() == "BLOB" {
            return Err(PersistentError::decode(
                what,
                location(),
                format!("the stored {what} is a BLOB, not text"),
            ));
        }
        row.try_get::<&str, _>(index)
            .map_err(|e| PersistentError::decode(what, location(), e))
    }
}

/// After a commit that failed with an I/O error: rolls back, then
/// checkpoints and truncates the WAL on the same connection.
///
/// A WAL commit whose last step failed (the fsync at `synchronous = FULL`)
/// leaves its frames in the WAL file: this process treats the transaction
/// as rolled back, but the next process to open the file would recover it
/// as committed. Truncating the WAL erases those frames, so that failed
/// really means not applied.
async fn discard_failed_commit(conn: &mut sqlx::SqliteConnection, store: &str) {
    // Ends the transaction if SQLite left it open; an error only means none was.
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    let truncated: std::result::Result<(i64, i64, i64), _> =
        sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *conn)
            .await;
    match truncated {
        Ok((0, _, _)) => {
            tracing::warn!(
                store,
                "a commit failed with an i/o error; its frames were discarded"
            );
        }
        other => tracing::error!(
            store,
            outcome = ?other.map_err(|e| e.to_string()),
            "could not truncate the WAL after a failed commit; a later open may still find that commit"
        ),
    }
}

/// Makes the last commit of a rollback-journal database durable: fsyncs the
/// database file, its journal if one exists, and (on Unix) their directory,
/// which holds the removal of a `DELETE`-mode journal.
fn sync_rollback_files(path: &Path) -> Result<()> {
    let sync = |file: &Path| -> Result<bool> {
        match std::fs::File::open(file) {
            Ok(handle) => handle
                .sync_all()
                .map(|()| true)
                .map_err(|e| PersistentError::io(file, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(PersistentError::io(file, e)),
        }
    };
    if !sync(path)? {
        // No file (an in-memory database): nothing can be made durable.
        return Ok(());
    }
    let mut journal = path.as_os_str().to_owned();
    journal.push("-journal");
    sync(Path::new(&journal))?;
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync(dir)?;
    }
    Ok(())
}

fn file_location(path: &Path) -> Location {
    Location::new(path.display().to_string())
}

/// What a connection's `synchronous` level (as `PRAGMA synchronous` reports
/// it) and journal mode make of an acknowledged commit.
fn durability_of(synchronous: i64, journal_mode: &str) -> Durability {
    let journal = journal_mode.to_ascii_lowercase();
    match synchronous {
        _ if matches!(journal.as_str(), "memory" | "off") => Durability::ServerManaged,
        0 => Durability::ServerManaged,
        1 => Durability::OnFlush,
        _ => Durability::OnAcknowledge,
    }
}

/// Reads the durability of a caller's pool from its pragmas, and logs a
/// warning when flush cannot keep its promise under them.
async fn pool_durability(pool: &SqlitePool, path: &Path) -> Result<Durability> {
    let fail = |e| map_sqlx_error(e, Operation::Open, file_location(path), path);
    let mut conn = pool.acquire().await.map_err(fail)?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .map_err(fail)?;
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .map_err(fail)?;
    let durability = durability_of(sync, &mode);
    if durability == Durability::ServerManaged {
        tracing::warn!(
            path = %path.display(),
            journal_mode = %mode,
            synchronous = sync,
            "the pool's pragmas do not keep committed writes across a crash; flush cannot make them durable"
        );
    }
    Ok(durability)
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.inner.path)
            .field("table", &self.inner.table)
            .field("connections", &self.inner.pool.size())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for SqliteBackend
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

    /// Checkpoints the WAL with `PRAGMA wal_checkpoint(FULL)`.
    ///
    /// A checkpoint first fsyncs the WAL (at `NORMAL` too, where commits do
    /// not), copies it into the database file and fsyncs that: once it
    /// completes, every committed transaction is durable. `FULL` waits (up to
    /// the busy timeout) for other connections' writes and old read snapshots
    /// to finish, so the checkpoint covers everything; if it still cannot
    /// complete, the flush fails rather than claim durability.
    ///
    /// In a rollback journal mode a commit syncs the database file, but its
    /// commit point (removing the journal in `DELETE` mode, truncating or
    /// zeroing it in `TRUNCATE` and `PERSIST`) is synced only at `EXTRA` or
    /// `FULL`: flush fsyncs the database file, the journal if there is one,
    /// and their directory, so the last commit survives a power cut too.
    ///
    /// A checkpoint that cannot start because another connection (another
    /// process) is running one returns at once, without SQLite's busy
    /// handler; it is retried until the busy timeout has passed.
    async fn flush(&self) -> Result<()> {
        let deadline = Instant::now() + self.inner.busy_timeout;
        let mut writer = self
            .writer()
            .await
            .map_err(|e| self.error(e, Operation::Flush))?;
        let Some(conn) = writer.as_mut() else {
            return Err(PersistentError::Closed);
        };
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.error(e, Operation::Flush))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // The writer stays locked, so no commit of this process runs
            // during the syncs (another process's may: extra syncs never
            // break SQLite's ordering of its own).
            let path = self.inner.path.clone();
            return tokio::task::spawn_blocking(move || sync_rollback_files(&path))
                .await
                .map_err(|e| PersistentError::Other(Box::new(e)))?;
        }
        loop {
            let (busy, wal_frames, checkpointed): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(FULL)")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| self.error(e, Operation::Flush))?;
            if busy == 0 {
                tracing::trace!(store = %self.inner.store, wal_frames, "checkpointed");
                return Ok(());
            }
            if Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            return Err(PersistentError::backend(
                BACKEND,
                Operation::Flush,
                self.location(),
                format!(
                    "database busy: the wal checkpoint could not complete ({checkpointed} of {wal_frames} frames copied)"
                ),
            ));
        }
    }

    async fn contains_key(&self, key: &K) -> Result<bool> {
        let key_text = self.inner.key_format.encode(key).map_err(|e| {
            PersistentError::encode(EntryPart::Key, self.location().with_key(render_key(key)), e)
        })?;
        let found: Option<i64> = sqlx::query_scalar(&self.inner.sql.contains)
            .bind(key_text)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.error(e, Operation::Load))?;
        Ok(found.is_some())
    }

    async fn len(&self) -> Result<usize> {
        let count: i64 = sqlx::query_scalar(&self.inner.sql.count)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.error(e, Operation::Load))?;
        // COUNT(*) is never negative; saturate rather than panic regardless.
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// One `BEGIN IMMEDIATE` transaction per batch: multi-row upserts,
    /// `DELETE ... IN (...)` and, for expired entries, `DELETE ... WHERE
    /// expires_at <= now AND key IN (...)`, in chunks of at most 256 rows.
    /// An unencodable key, value or deadline fails the batch before
    /// anything is committed. The first deadline stored in a table without
    /// the deadline column adds it, in the same transaction.
    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let sql = &self.inner.sql;
        let target = write::Target {
            store: &self.inner.store,
            table: &self.inner.table,
            format: self.inner.key_format,
        };
        // A single change (the map replays a failed batch change by change)
        // is reported with its key; built only on failure.
        let location = || match batch {
            [op] => self.location().with_key(render_key(op.key())),
            _ => self.location(),
        };
        let mut writer = self
            .writer()
            .await
            .map_err(|e| map_sqlx_error(e, Operation::Write, location(), &self.inner.path))?;
        let Some(conn) = writer.as_mut() else {
            return Err(PersistentError::Closed);
        };
        let deadlines = has_deadlines(self.format_version());
        let expiry = batch.iter().any(|op| {
            matches!(
                op,
                BatchOp::PutExpiring { .. } | BatchOp::DeleteExpired { .. }
            )
        });
        let written = if deadlines || !expiry {
            write::write_batch(conn, &sql.writes(deadlines), batch, &target).await
        } else {
            write::write_upgrading(conn, sql, batch, &target)
                .await
                .map(|version| {
                    self.inner.version.fetch_max(version, Ordering::AcqRel);
                })
        };
        match written {
            Ok(()) => Ok(()),
            Err(write::Failure::Refused(e)) => Err(e),
            Err(write::Failure::Sql(e)) => {
                if is_io_error(&e) {
                    discard_failed_commit(conn, &self.inner.store).await;
                }
                // SQLite may have ended the transaction by itself (a full
                // disk, an I/O error), leaving the connection's state unsure:
                // the next write starts on a fresh connection.
                *writer = None;
                Err(map_sqlx_error(
                    e,
                    Operation::Write,
                    location(),
                    &self.inner.path,
                ))
            }
        }
    }

    async fn clear(&self) -> Result<()> {
        let fail = |e| self.error(e, Operation::Clear);
        let mut writer = self.writer().await.map_err(fail)?;
        let Some(conn) = writer.as_mut() else {
            return Err(PersistentError::Closed);
        };
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(fail)?;
        sqlx::query(&self.inner.sql.delete_all)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    /// Reads the table in one snapshot, in chunks that SQLite packs as JSON
    /// and that are decoded while the next one is read.
    /// A row that does not decode stops the load with an error naming the
    /// table and key; nothing is changed.
    async fn load_into(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<()> {
        self.load_chunks(false, &mut |key, value, _| sink(key, value))
            .await
    }

    /// As [`load_into`](Self::load_into), with each row's `expires_at`
    /// (none in a table without the column). A deadline that is not an
    /// integer is [`PersistentError::Corrupt`] naming the table and key.
    async fn load_with_expiry_into(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<SystemTime>) + Send),
    ) -> Result<()> {
        self.load_chunks(true, sink).await
    }

    /// `SELECT ... WHERE key IN (...)`, up to 256 keys a statement, in one
    /// snapshot.
    async fn load_keys(&self, keys: &[K]) -> Result<Vec<(K, Option<V>)>> {
        Ok(self
            .load_keys_inner::<K, V>(keys, false)
            .await?
            .into_iter()
            .map(|(key, found)| (key, found.map(|(value, _)| value)))
            .collect())
    }

    /// As [`load_keys`](Self::load_keys), with each row's `expires_at`.
    async fn load_keys_with_expiry(
        &self,
        keys: &[K],
    ) -> Result<Vec<(K, Option<(V, Option<SystemTime>)>)>> {
        self.load_keys_inner(keys, true).await
    }

    fn capabilities(&self) -> Capabilities {
        // Every table can store deadlines: one without the column gets it
        // with its first deadline.
        Capabilities::new()
            .with_atomic_batch(true)
            .with_durability(self.inner.durability)
            .with_expiry(true)
    }
}
