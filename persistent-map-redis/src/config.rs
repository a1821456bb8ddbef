//! Options for opening a [`RedisBackend`]: key prefix and map name, HSCAN
//! chunk size, timeouts and the change feed.

use persistent_map_core::codec::KeyFormat;
use std::time::Duration;

use persistent_map_core::{Location, Operation, PersistentError, Result};

use crate::backend::RedisBackend;
use crate::error::BACKEND;

/// The key prefix (namespace) unless told otherwise.
pub const DEFAULT_PREFIX: &str = "persistent-map";

/// The map name unless told otherwise.
pub const DEFAULT_NAME: &str = "kv";

/// Entries asked for per `HSCAN` call unless told otherwise.
pub const DEFAULT_SCAN_COUNT: usize = 1000;

/// How long connecting may take unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one command may wait for its answer unless told otherwise.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest accepted prefix or name, to keep keys and errors readable.
const MAX_NAME: usize = 200;

/// Whether a backend follows the writes other instances make to its hash
/// (cache coherence through pub/sub).
///
/// With [`Watch::Enabled`] (the default) every batch publishes its keys on
/// the map's channel inside its `MULTI`/`EXEC`, and a map on the backend
/// keeps a dedicated subscriber connection, through which it re-reads the
/// keys other instances changed. See the crate documentation for the
/// consistency model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Watch {
    /// Publish on every batch and follow other instances' messages.
    #[default]
    Enabled,
    /// Neither publish nor subscribe: for a hash only one instance writes.
    /// Other instances' writes are then seen only after `reload()`.
    Disabled,
}

/// Settings of a [`RedisBackend`] that do not depend on the server: start
/// with [`RedisOptions::new`] (or `default()`), then pass them to
/// [`RedisBackend::open`].
///
/// ```
/// use persistent_map_redis::{RedisOptions, Watch};
///
/// let options = RedisOptions::new()
///     .prefix("myapp")
///     .name("sessions")
///     .scan_count(500)
///     .watch(Watch::Disabled);
/// assert_eq!(options.hash_key(), "myapp:sessions");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    prefix: String,
    name: String,
    scan_count: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
    watch: Watch,
    new_store_key_format: KeyFormat,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            name: DEFAULT_NAME.to_owned(),
            scan_count: DEFAULT_SCAN_COUNT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            watch: Watch::default(),
            new_store_key_format: KeyFormat::NEW_STORES,
        }
    }
}

impl RedisOptions {
    /// The defaults: prefix `persistent-map`, name `kv`, `HSCAN` count 1000,
    /// 5 s connect and 10 s response timeouts, [`Watch::Enabled`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The namespace of every key this backend uses. Printable, no
    /// whitespace, at most 200 bytes; may contain `:`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The map's name within the prefix: the hash is `<prefix>:<name>`.
    /// Same rules as [`prefix`](Self::prefix), without `:`.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many entries each `HSCAN` call asks for while loading (at least
    /// 1): smaller chunks keep the server responsive to other clients.
    #[must_use]
    pub fn scan_count(mut self, count: usize) -> Self {
        self.scan_count = count.max(1);
        self
    }

    /// How long connecting may take before it fails with
    /// [`PersistentError::Connection`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a command may wait for its answer before it fails with
    /// [`PersistentError::Connection`] (its outcome is then unknown).
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
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

    /// The hash holding the map: `<prefix>:<name>`.
    #[must_use]
    pub fn hash_key(&self) -> String {
        format!("{}:{}", self.prefix, self.name)
    }

    /// The hash holding the format version: `<prefix>:<name>:meta`.
    #[must_use]
    pub fn meta_key(&self) -> String {
        format!("{}:meta", self.hash_key())
    }

    /// The sorted set holding the deadlines (format 3): `<prefix>:<name>:expiry`.
    #[must_use]
    pub fn expiry_key(&self) -> String {
        format!("{}:expiry", self.hash_key())
    }

    /// The configured `HSCAN` count.
    #[must_use]
    pub fn scan_count_value(&self) -> usize {
        self.scan_count
    }

    /// The configured connect timeout.
    #[must_use]
    pub fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    /// The configured response timeout.
    #[must_use]
    pub fn response_timeout_value(&self) -> Duration {
        self.response_timeout
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

    /// Checks the prefix and name.
    pub(crate) fn validate(&self) -> Result<()> {
        let ok = |s: &str, colon: bool| {
            !s.is_empty()
                && s.len() <= MAX_NAME
                && s.chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && (colon || c != ':'))
        };
        if !ok(&self.prefix, true) {
            return Err(invalid("prefix", &self.prefix, "printable, no whitespace"));
        }
        if !ok(&self.name, false) {
            return Err(invalid(
                "name",
                &self.name,
                "printable, no whitespace or ':'",
            ));
        }
        Ok(())
    }
}

fn invalid(what: &'static str, value: &str, rule: &'static str) -> PersistentError {
    PersistentError::backend(
        BACKEND,
        Operation::Open,
        Location::new(format!("{what} {value:?}")),
        format!("invalid {what} {value:?}: use 1 to {MAX_NAME} bytes, {rule}"),
    )
}

/// Opens a [`RedisBackend`] with chosen options; start with
/// [`RedisBackend::builder`].
///
/// ```no_run
/// use persistent_map_redis::{RedisBackend, Watch};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let backend = RedisBackend::builder("redis://cache.internal:6379/0")
///     .prefix("myapp")
///     .name("sessions")
///     .watch(Watch::Enabled)
///     .build()
///     .await?;
/// assert_eq!(backend.hash_key(), "myapp:sessions");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct RedisBuilder {
    url: String,
    options: RedisOptions,
}

impl std::fmt::Debug for RedisBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBuilder")
            .field("url", &persistent_map_server_support::redact_url(&self.url))
            .field("options", &self.options)
            .finish()
    }
}

impl RedisBuilder {
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            options: RedisOptions::default(),
        }
    }

    /// Replaces every option at once.
    pub fn options(mut self, options: RedisOptions) -> Self {
        self.options = options;
        self
    }

    /// See [`RedisOptions::prefix`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.options = self.options.prefix(prefix);
        self
    }

    /// See [`RedisOptions::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options = self.options.name(name);
        self
    }

    /// See [`RedisOptions::scan_count`].
    pub fn scan_count(mut self, count: usize) -> Self {
        self.options = self.options.scan_count(count);
        self
    }

    /// See [`RedisOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options = self.options.connect_timeout(timeout);
        self
    }

    /// See [`RedisOptions::response_timeout`].
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.options = self.options.response_timeout(timeout);
        self
    }

    /// See [`RedisOptions::watch`].
    pub fn watch(mut self, watch: Watch) -> Self {
        self.options = self.options.watch(watch);
        self
    }

    /// See [`RedisOptions::new_store_key_format`].
    pub fn new_store_key_format(mut self, format: KeyFormat) -> Self {
        self.options = self.options.new_store_key_format(format);
        self
    }

    /// Connects and checks (or records) the format version.
    ///
    /// # Errors
    ///
    /// As [`RedisBackend::open`].
    pub async fn build(self) -> Result<RedisBackend> {
        RedisBackend::open(&self.url, self.options).await
    }
}
