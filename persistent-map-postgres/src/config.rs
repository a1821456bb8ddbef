//! Options for opening a [`PostgresBackend`]: schema, table, pool size,
//! connect timeout and the change feed.

use persistent_map_core::codec::KeyFormat;
use std::time::Duration;

use persistent_map_core::{Location, Operation, PersistentError, Result};

use crate::backend::PostgresBackend;
use crate::error::BACKEND;

/// The schema a map's table lives in unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "public";

/// The table a map uses unless told otherwise (the SQLite backend's default too).
pub const DEFAULT_TABLE: &str = "kv";

/// The pool size unless told otherwise. Writes are serialised by the map's
/// writer task; the other connections serve `len`, `contains_key` and
/// refreshes after other instances' changes.
pub const DEFAULT_POOL_SIZE: u32 = 4;

/// How long opening a connection may take unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// PostgreSQL's identifier limit (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER: usize = 63;

/// Whether a backend follows the writes other instances make to its table
/// (cache coherence through `LISTEN`/`NOTIFY`).
///
/// With [`Watch::Enabled`] (the default) every batch sends a notification
/// in its own transaction, and a map on the backend keeps a dedicated
/// listening connection, through which it re-reads the keys other instances
/// changed. See the crate documentation for the consistency model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Watch {
    /// Notify on every batch and follow other instances' notifications.
    #[default]
    Enabled,
    /// Neither notify nor listen: for a table only one instance writes, or
    /// when one more connection per map is too many. Other instances'
    /// writes are then seen only after `reload()`.
    Disabled,
}

/// Settings of a [`PostgresBackend`] that do not depend on the server:
/// start with [`PostgresOptions::new`] (or `default()`), then pass them to
/// [`PostgresBackend::open`] or [`PostgresBackend::from_pool`].
///
/// ```
/// use std::time::Duration;
/// use persistent_map_postgres::{PostgresOptions, Watch};
///
/// let options = PostgresOptions::new()
///     .schema("app")
///     .table("sessions")
///     .pool_size(8)
///     .connect_timeout(Duration::from_secs(2))
///     .watch(Watch::Disabled);
/// assert_eq!(options.table_name(), "sessions");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    schema: String,
    table: String,
    pool_size: u32,
    connect_timeout: Duration,
    watch: Watch,
    new_store_key_format: KeyFormat,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            watch: Watch::default(),
            new_store_key_format: KeyFormat::NEW_STORES,
        }
    }
}

impl PostgresOptions {
    /// The defaults: schema `public`, table `kv`, 4 connections, 5 s connect
    /// timeout, [`Watch::Enabled`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema holding the map's table, created if missing. ASCII
    /// letters, digits and `_`, not starting with a digit or `pg_`, at most
    /// 63 characters; checked when the backend opens.
    #[must_use]
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = name.into();
        self
    }

    /// The table holding the map, created if missing. Same rules as
    /// [`schema`](Self::schema), and not `persistent_map_meta`.
    #[must_use]
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// The most connections the pool opens (at least 1). The change feed
    /// uses one more, outside the pool.
    #[must_use]
    pub fn pool_size(mut self, connections: u32) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// How long connecting (or waiting for a free pooled connection) may take
    /// before the operation fails with [`PersistentError::Connection`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The key format a store this backend creates gets (default
    /// [`KeyFormat::NEW_STORES`]); an existing store keeps its own. Creating
    /// a store in [`KeyFormat::Legacy`] is for tools that copy the stored
    /// texts of a legacy store, which cannot be translated without the
    /// application's key type.
    #[must_use]
    pub fn new_store_key_format(mut self, format: KeyFormat) -> Self {
        self.new_store_key_format = format;
        self
    }

    /// Whether to follow other instances' writes; see [`Watch`].
    #[must_use]
    pub fn watch(mut self, watch: Watch) -> Self {
        self.watch = watch;
        self
    }

    /// The configured schema name.
    #[must_use]
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// The configured table name.
    #[must_use]
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The configured pool size.
    #[must_use]
    pub fn pool_size_value(&self) -> u32 {
        self.pool_size
    }

    /// The configured connect timeout.
    #[must_use]
    pub fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    /// The key format of a store this backend creates.
    #[must_use]
    pub fn new_store_key_format_value(&self) -> KeyFormat {
        self.new_store_key_format
    }

    /// The configured change-feed setting.
    #[must_use]
    pub fn watch_value(&self) -> Watch {
        self.watch
    }

    /// Checks the schema and table names, so they can be quoted into SQL safely.
    pub(crate) fn validated_names(&self) -> Result<(&str, &str)> {
        let schema = validated("schema", &self.schema)?;
        let table = validated("table", &self.table)?;
        if table.eq_ignore_ascii_case(crate::format::META_TABLE) {
            return Err(invalid("table", table));
        }
        Ok((schema, table))
    }
}

fn validated<'a>(what: &'static str, name: &'a str) -> Result<&'a str> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    let reserved = name.to_ascii_lowercase().starts_with("pg_");
    if first_ok && rest_ok && !reserved && name.len() <= MAX_IDENTIFIER {
        Ok(name)
    } else {
        Err(invalid(what, name))
    }
}

fn invalid(what: &'static str, name: &str) -> PersistentError {
    PersistentError::backend(
        BACKEND,
        Operation::Open,
        Location::new(format!("{what} {name:?}")),
        InvalidName {
            what,
            name: name.to_owned(),
        },
    )
}

/// A schema or table name that is not a plain SQL identifier.
#[derive(Debug)]
struct InvalidName {
    what: &'static str,
    name: String,
}

impl std::fmt::Display for InvalidName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid {} name {:?}: use ASCII letters, digits and '_', not starting with a digit or 'pg_', at most {MAX_IDENTIFIER} characters",
            self.what, self.name
        )
    }
}

impl std::error::Error for InvalidName {}

/// Opens a [`PostgresBackend`] with chosen options; start with
/// [`PostgresBackend::builder`].
///
/// ```no_run
/// use persistent_map_postgres::{PostgresBackend, Watch};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let backend = PostgresBackend::builder("postgres://app@db.internal/app")
///     .schema("cache")
///     .table("sessions")
///     .pool_size(8)
///     .watch(Watch::Enabled)
///     .build()
///     .await?;
/// assert_eq!(backend.table(), "sessions");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct PostgresBuilder {
    url: String,
    options: PostgresOptions,
}

impl std::fmt::Debug for PostgresBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBuilder")
            .field("url", &persistent_map_server_support::redact_url(&self.url))
            .field("options", &self.options)
            .finish()
    }
}

impl PostgresBuilder {
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            options: PostgresOptions::default(),
        }
    }

    /// Replaces every option at once.
    pub fn options(mut self, options: PostgresOptions) -> Self {
        self.options = options;
        self
    }

    /// See [`PostgresOptions::schema`].
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.options = self.options.schema(name);
        self
    }

    /// See [`PostgresOptions::table`].
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.options = self.options.table(name);
        self
    }

    /// See [`PostgresOptions::pool_size`].
    pub fn pool_size(mut self, connections: u32) -> Self {
        self.options = self.options.pool_size(connections);
        self
    }

    /// See [`PostgresOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options = self.options.connect_timeout(timeout);
        self
    }

    /// See [`PostgresOptions::watch`].
    pub fn watch(mut self, watch: Watch) -> Self {
        self.options = self.options.watch(watch);
        self
    }

    /// See [`PostgresOptions::new_store_key_format`].
    pub fn new_store_key_format(mut self, format: KeyFormat) -> Self {
        self.options = self.options.new_store_key_format(format);
        self
    }

    /// Connects, creates the schema and table if missing and checks the
    /// format version.
    ///
    /// # Errors
    ///
    /// As [`PostgresBackend::open`].
    pub async fn build(self) -> Result<PostgresBackend> {
        PostgresBackend::open(&self.url, self.options).await
    }
}
