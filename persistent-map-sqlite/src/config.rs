//! Options for opening a [`SqliteBackend`]: table, journal mode, synchronous
//! level, busy timeout and pool size.

use persistent_map_core::codec::KeyFormat;
use std::path::{Path, PathBuf};
use std::time::Duration;

use persistent_map_core::{Location, PersistentError, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use crate::backend::SqliteBackend;

/// The table a map uses unless told otherwise; persistent-map 0.1.x always used it.
pub const DEFAULT_TABLE: &str = "kv";

/// The busy timeout unless told otherwise.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The pool size unless told otherwise. Writes are serialised by the map's
/// writer task anyway; the extra connections serve `len`/`contains_key` and
/// other readers of a shared backend.
pub const DEFAULT_POOL_SIZE: u32 = 4;

/// Longest accepted table name, to keep error messages and SQL readable.
const MAX_TABLE_NAME: usize = 64;

/// SQLite's journal mode: how a transaction is made atomic.
///
/// Only the modes that keep a committed transaction across a crash are
/// offered (`MEMORY` and `OFF` are not: a crash in the middle of a commit
/// could corrupt the file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JournalMode {
    /// Write-ahead log (the default): readers never block the writer, commits
    /// append to `<file>-wal`, and two processes can share the file.
    #[default]
    Wal,
    /// Rollback journal deleted after each commit (SQLite's own default).
    Delete,
    /// Rollback journal truncated to zero bytes after each commit.
    Truncate,
    /// Rollback journal kept, its header zeroed after each commit.
    Persist,
}

impl JournalMode {
    pub(crate) fn to_sqlx(self) -> SqliteJournalMode {
        match self {
            JournalMode::Wal => SqliteJournalMode::Wal,
            JournalMode::Delete => SqliteJournalMode::Delete,
            JournalMode::Truncate => SqliteJournalMode::Truncate,
            JournalMode::Persist => SqliteJournalMode::Persist,
        }
    }

    /// The name `PRAGMA journal_mode` reports for this mode, lowercase.
    #[must_use]
    pub fn pragma_name(self) -> &'static str {
        match self {
            JournalMode::Wal => "wal",
            JournalMode::Delete => "delete",
            JournalMode::Truncate => "truncate",
            JournalMode::Persist => "persist",
        }
    }
}

/// SQLite's `synchronous` level: when SQLite calls fsync.
///
/// Whatever the level, a write the map acknowledged survives the process
/// being killed (it has reached the operating system), and
/// [`flush`](persistent_map_core::PersistentMap::flush) returning `Ok` means
/// it survives a power cut too. The levels differ in what an *unflushed*
/// acknowledged write survives:
///
/// | level | WAL mode | rollback modes |
/// | --- | --- | --- |
/// | `Normal` | a power cut may lose the last commits since the last checkpoint or flush; the file stays consistent | each commit is synced: survives a power cut |
/// | `Full` | each commit syncs the WAL: survives a power cut | each commit is synced: survives a power cut |
/// | `Extra` | as `Full` | as `Full`, and the directory is synced after the journal is deleted |
///
/// `OFF` is not offered: with it SQLite never syncs, so no flush could keep
/// its promise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Synchronous {
    /// Sync at the critical moments only (the default): fast commits.
    #[default]
    Normal,
    /// Sync on every commit.
    Full,
    /// As `Full`, plus a directory sync in rollback modes.
    Extra,
}

impl Synchronous {
    pub(crate) fn to_sqlx(self) -> SqliteSynchronous {
        match self {
            Synchronous::Normal => SqliteSynchronous::Normal,
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Extra => SqliteSynchronous::Extra,
        }
    }

    /// The number `PRAGMA synchronous` reports for this level.
    #[must_use]
    pub fn pragma_value(self) -> i64 {
        match self {
            Synchronous::Normal => 1,
            Synchronous::Full => 2,
            Synchronous::Extra => 3,
        }
    }
}

/// Settings of a [`SqliteBackend`] that do not depend on the file: start with
/// [`SqliteOptions::new`] (or `default()`), then pass them to
/// [`SqliteBackend::open`] or [`SqliteBackend::from_pool`].
///
/// ```
/// use std::time::Duration;
/// use persistent_map_sqlite::{JournalMode, SqliteOptions, Synchronous};
///
/// let options = SqliteOptions::new()
///     .table("users")
///     .journal_mode(JournalMode::Wal)
///     .synchronous(Synchronous::Full)
///     .busy_timeout(Duration::from_secs(10))
///     .pool_size(2);
/// assert_eq!(options.table_name(), "users");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "options do nothing until used to open a backend"]
pub struct SqliteOptions {
    table: String,
    journal_mode: JournalMode,
    synchronous: Synchronous,
    busy_timeout: Duration,
    pool_size: u32,
    new_store_key_format: KeyFormat,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            journal_mode: JournalMode::default(),
            synchronous: Synchronous::default(),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            new_store_key_format: KeyFormat::NEW_STORES,
        }
    }
}

impl SqliteOptions {
    /// The defaults: table `kv`, WAL, `NORMAL`, 5 s busy timeout, 4 connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table holding this map (default `kv`). Several maps can share one
    /// file, each in its own table. The name must be an SQL identifier:
    /// ASCII letters, digits and `_`, not starting with a digit nor with
    /// `sqlite_`, at most 64 characters; it is checked when the backend opens.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// The journal mode (default [`JournalMode::Wal`]).
    pub fn journal_mode(mut self, mode: JournalMode) -> Self {
        self.journal_mode = mode;
        self
    }

    /// The synchronous level (default [`Synchronous::Normal`]).
    pub fn synchronous(mut self, level: Synchronous) -> Self {
        self.synchronous = level;
        self
    }

    /// How long a statement waits for another connection's lock before
    /// failing with a busy error (default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The most connections the pool opens (default 4; values below 1 count as 1).
    pub fn pool_size(mut self, connections: u32) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// The key format a store this backend creates gets (default
    /// [`KeyFormat::NEW_STORES`]); an existing store keeps its own. Creating
    /// a store in [`KeyFormat::Legacy`] is for tools that copy the stored
    /// texts of a legacy store, which cannot be translated without the
    /// application's key type.
    pub fn new_store_key_format(mut self, format: KeyFormat) -> Self {
        self.new_store_key_format = format;
        self
    }

    /// The table name.
    #[must_use]
    pub fn table_name(&self) -> &str {
        &self.table
    }

    pub(crate) fn synchronous_value(&self) -> Synchronous {
        self.synchronous
    }

    pub(crate) fn busy_timeout_value(&self) -> Duration {
        self.busy_timeout
    }

    pub(crate) fn pool_size_value(&self) -> u32 {
        self.pool_size
    }

    pub(crate) fn new_store_key_format_value(&self) -> KeyFormat {
        self.new_store_key_format
    }

    /// The connect options every pooled connection is opened with, so each
    /// one runs the same pragmas.
    pub(crate) fn connect_options(&self, path: &Path) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(self.journal_mode.to_sqlx())
            .synchronous(self.synchronous.to_sqlx())
            .busy_timeout(self.busy_timeout)
            // The schema has no foreign keys; leave SQLite's default alone.
            .foreign_keys(false)
    }

    /// Checks the table name, so it can be quoted into SQL safely.
    pub(crate) fn validated_table(&self, path: &Path) -> Result<&str> {
        let name = self.table.as_str();
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        let reserved = name.to_ascii_lowercase().starts_with("sqlite_")
            || name.eq_ignore_ascii_case(crate::backend::META_TABLE);
        if first_ok && rest_ok && !reserved && name.len() <= MAX_TABLE_NAME {
            Ok(name)
        } else {
            Err(PersistentError::backend(
                crate::error::BACKEND,
                persistent_map_core::Operation::Open,
                Location::new(path.display().to_string()),
                InvalidTableName(name.to_owned()),
            ))
        }
    }
}

/// A table name that is not a plain SQL identifier.
#[derive(Debug)]
struct InvalidTableName(String);

impl std::fmt::Display for InvalidTableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid table name {:?}: use ASCII letters, digits and '_', not starting with a digit or 'sqlite_', at most {MAX_TABLE_NAME} characters",
            self.0
        )
    }
}

impl std::error::Error for InvalidTableName {}

/// Opens a [`SqliteBackend`] on a file with chosen options; start with
/// [`SqliteBackend::builder`].
///
/// ```
/// use persistent_map_sqlite::{SqliteBackend, Synchronous};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let backend = SqliteBackend::builder(dir.path().join("app.db"))
///     .table("sessions")
///     .synchronous(Synchronous::Full)
///     .build()
///     .await?;
/// assert_eq!(backend.table(), "sessions");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct SqliteBuilder {
    path: PathBuf,
    options: SqliteOptions,
}

impl SqliteBuilder {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            options: SqliteOptions::default(),
        }
    }

    /// Replaces every option at once.
    pub fn options(mut self, options: SqliteOptions) -> Self {
        self.options = options;
        self
    }

    /// See [`SqliteOptions::table`].
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.options = self.options.table(name);
        self
    }

    /// See [`SqliteOptions::journal_mode`].
    pub fn journal_mode(mut self, mode: JournalMode) -> Self {
        self.options = self.options.journal_mode(mode);
        self
    }

    /// See [`SqliteOptions::synchronous`].
    pub fn synchronous(mut self, level: Synchronous) -> Self {
        self.options = self.options.synchronous(level);
        self
    }

    /// See [`SqliteOptions::busy_timeout`].
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.options = self.options.busy_timeout(timeout);
        self
    }

    /// See [`SqliteOptions::pool_size`].
    pub fn pool_size(mut self, connections: u32) -> Self {
        self.options = self.options.pool_size(connections);
        self
    }

    /// See [`SqliteOptions::new_store_key_format`].
    pub fn new_store_key_format(mut self, format: KeyFormat) -> Self {
        self.options = self.options.new_store_key_format(format);
        self
    }

    /// Creates the file (and its parent directories) if missing, opens the
    /// pool and prepares the table.
    ///
    /// # Errors
    ///
    /// As [`SqliteBackend::open`].
    pub async fn build(self) -> Result<SqliteBackend> {
        SqliteBackend::open(self.path, self.options).await
    }
}
