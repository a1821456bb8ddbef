//! [`RedisBackend`]: one map per Redis hash.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use persistent_map_core::codec::{value_from_json, KeyFormat};
use persistent_map_core::{
    async_trait, render_key, BatchOp, Capabilities, Durability, EntryPart, Location, Operation,
    PersistentError, RemoteChanges, Result, StorageBackend,
};
use persistent_map_server_support::{encode_batch, Announcement};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{RedisBuilder, RedisOptions, Watch};
use crate::error::{exec_error, map_redis_error, BACKEND};
use crate::expiry::deadline_of_score;
use crate::watch::{Feed, Subscriber};

/// The newest format this release reads, and the one it gives the maps it
/// creates.
///
/// * `1`: a hash `<prefix>:<name>` with one field per key (the key's text,
///   in [`KeyFormat::Legacy`]) holding the value's JSON text, and a hash
///   `<prefix>:<name>:meta` with the field `format_version`.
/// * `2`: the same, keys in [`KeyFormat::Distinct`]: a string key whose text
///   is JSON is quoted, so distinct keys stay distinct.
/// * `3`: format 2 plus deadlines: a sorted set `<prefix>:<name>:expiry`
///   whose members are the fields of the entries that expire, each scored
///   with its deadline in milliseconds since the Unix epoch. Every map this
///   release creates; a map of format 2 is moved to format 3 by its first
///   write that carries a deadline, in that write's transaction. A map of
///   format 1 (or a hash without a meta hash) keeps the legacy key format
///   and has no expiry.
pub const FORMAT_VERSION: u32 = 3;

/// The format of a hash written before key formats had a version.
const LEGACY_VERSION: u32 = 1;

/// The first format with deadlines.
pub(crate) const EXPIRY_VERSION: u32 = 3;

/// The field of the meta hash holding the format version.
const VERSION_FIELD: &str = "format_version";

/// A batch touching more keys than this publishes one "reload everything"
/// message instead of a long list.
pub(crate) const MAX_KEYS: usize = 10_000;

/// Checks the keys' types (the hash, its meta hash and its deadlines) and
/// the format version, recording `new_version`
/// for a new map (`HSETNX`, so instances opening a new map at once agree),
/// and returns it. A hash that has entries but no version (written before versions were
/// kept) is recorded as format 1, so its keys keep their legacy form.
async fn prepare(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    new_version: u32,
    store: &str,
    endpoint: &str,
) -> Result<u32> {
    let Keys {
        hash: hash_key,
        meta: meta_key,
        expiry: expiry_key,
    } = keys;
    let location = || Location::new(store.to_owned());
    let fail = |e| map_redis_error(e, Operation::Open, location(), endpoint);
    for (key, wanted) in [(hash_key, "hash"), (meta_key, "hash"), (expiry_key, "zset")] {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(conn)
            .await
            .map_err(fail)?;
        if kind != wanted && kind != "none" {
            return Err(PersistentError::corrupt(
                location(),
                format!("the key {key:?} holds a {kind}, not a persistent-map {wanted}"),
            ));
        }
    }
    let has_entries: bool = conn.exists(hash_key).await.map_err(fail)?;
    let initial = if has_entries {
        LEGACY_VERSION
    } else {
        new_version
    };
    let _: bool = conn
        .hset_nx(meta_key, VERSION_FIELD, initial)
        .await
        .map_err(fail)?;
    let found: String = conn.hget(meta_key, VERSION_FIELD).await.map_err(fail)?;
    let found: u32 = found.parse().map_err(|_| {
        PersistentError::corrupt(
            location(),
            format!("invalid format version {found:?} in {meta_key:?}"),
        )
    })?;
    if found > FORMAT_VERSION {
        return Err(PersistentError::UnsupportedFormat {
            location: location(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    Ok(found)
}

/// The Redis keys of one map.
struct Keys {
    /// `<prefix>:<name>`: the entries.
    hash: String,
    /// `<prefix>:<name>:meta`: the format version.
    meta: String,
    /// `<prefix>:<name>:expiry`: the deadlines (format 3).
    expiry: String,
}

/// A [`StorageBackend`] that keeps a map in a Redis hash.
///
/// Keys are stored as hash fields in the map's [`KeyFormat`]
/// ([`key_format`](Self::key_format): string keys as themselves, other keys
/// as JSON), values as JSON text. Every batch the map
/// hands over is one `MULTI`/`EXEC` transaction; with [`Watch::Enabled`]
/// (the default) it also publishes its keys, and maps on other instances
/// re-read them. Commands go through a [`ConnectionManager`], which
/// reconnects after the server comes back. See the crate documentation for
/// durability and the consistency model.
///
/// Clones share one connection and one hash.
///
/// ```no_run
/// use persistent_map_core::PersistentMap;
/// use persistent_map_redis::RedisBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let backend = RedisBackend::new("redis://127.0.0.1:6379").await?;
/// let map: PersistentMap<String, u32, _> = PersistentMap::new(backend).await?;
/// map.insert("answer".to_string(), 42).await?;
/// map.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) manager: ConnectionManager,
    /// `host:port` (or the socket path), never credentials.
    pub(crate) endpoint: String,
    pub(crate) db: i64,
    pub(crate) hash_key: String,
    pub(crate) meta_key: String,
    pub(crate) expiry_key: String,
    pub(crate) channel: String,
    /// `hash "<key>" on <endpoint>/<db>`, the store named in errors.
    pub(crate) store: String,
    pub(crate) instance: String,
    pub(crate) watch: Watch,
    pub(crate) scan_count: usize,
    /// `None` when watching is disabled.
    pub(crate) feed: Option<Feed>,
    /// What the server's persistence settings make of an acknowledged write.
    pub(crate) durability: Durability,
    /// How the hash's fields encode keys, from the meta hash's version.
    pub(crate) key_format: KeyFormat,
    /// The format version as this instance last knew it: read when it
    /// opened, raised when it moved the map to format 3.
    pub(crate) version: AtomicU32,
}

impl RedisBackend {
    /// Connects to the server at `url` with the default options: hash
    /// `persistent-map:kv`, [`Watch::Enabled`].
    ///
    /// `url` is `redis://[user][:password@]host[:port][/db]` (or `rediss://`
    /// for TLS where the `redis` crate is built with it, `unix:///path`).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub async fn new(url: &str) -> Result<Self> {
        Self::open(url, RedisOptions::default()).await
    }

    /// Starts a [`RedisBuilder`] to choose the prefix, name, `HSCAN` count,
    /// timeouts and change feed.
    pub fn builder(url: impl Into<String>) -> RedisBuilder {
        RedisBuilder::new(url.into())
    }

    /// Connects to the server at `url` with `options` and checks (or
    /// records) the format version.
    ///
    /// # Errors
    ///
    /// * [`PersistentError::Connection`] naming `host:port` (never the
    ///   password) when the server cannot be reached in time,
    /// * [`PersistentError::Corrupt`] when the hash key holds another type,
    /// * [`PersistentError::UnsupportedFormat`] when a newer release wrote the hash,
    /// * [`PersistentError::Backend`] for an invalid URL, prefix or name, a
    ///   refused login, or any other failure.
    pub async fn open(url: &str, options: RedisOptions) -> Result<Self> {
        options.validate()?;
        let client = redis::Client::open(url).map_err(|_| invalid_url())?;
        let info = client.get_connection_info();
        let endpoint = info.addr().to_string();
        let db = info.redis_settings().db();
        let timeout = options.connect_timeout_value();
        // One direct connection first, so that a server that is down fails
        // the open at once with the real cause, instead of after the
        // manager's retries.
        // With the configured timeouts: the driver's defaults (1 s to
        // connect, 500 ms per reply) failed opens on a loaded machine.
        let check_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(options.response_timeout_value()));
        let mut check = match tokio::time::timeout(
            timeout,
            client.get_multiplexed_async_connection_with_config(&check_config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => {
                return Err(map_redis_error(
                    err,
                    Operation::Open,
                    Location::new(endpoint.clone()),
                    &endpoint,
                ))
            }
            Err(_) => {
                return Err(PersistentError::Connection {
                    backend: BACKEND,
                    endpoint,
                    source: format!("no connection within {timeout:?}").into(),
                })
            }
        };
        let hash_key = options.hash_key();
        let meta_key = options.meta_key();
        let expiry_key = options.expiry_key();
        let channel = format!("{hash_key}:changes");
        let store = format!("hash {hash_key:?} on {endpoint}/{db}");
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(options.response_timeout_value()))
            .set_number_of_retries(2)
            .set_min_delay(std::time::Duration::from_millis(50))
            .set_max_delay(std::time::Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| {
                map_redis_error(e, Operation::Open, Location::new(store.clone()), &endpoint)
            })?;
        let new_version = match options.new_store_key_format_value() {
            KeyFormat::Legacy => LEGACY_VERSION,
            _ => FORMAT_VERSION,
        };
        let keys = Keys {
            hash: hash_key,
            meta: meta_key,
            expiry: expiry_key,
        };
        let version = prepare(&mut check, &keys, new_version, &store, &endpoint).await?;
        let Keys {
            hash: hash_key,
            meta: meta_key,
            expiry: expiry_key,
        } = keys;
        let key_format = if version >= 2 {
            KeyFormat::Distinct
        } else {
            KeyFormat::Legacy
        };
        let instance = format!("{:016x}", fastrand::u64(..));
        let feed = match options.watch_value() {
            Watch::Enabled => Some(Feed::new(Subscriber::new(
                client,
                timeout,
                channel.clone(),
                instance.clone(),
                key_format,
            ))),
            Watch::Disabled => None,
        };
        let durability = server_durability(&mut check).await;
        Ok(Self {
            inner: Arc::new(Inner {
                manager,
                endpoint,
                db,
                hash_key,
                meta_key,
                expiry_key,
                channel,
                store,
                instance,
                watch: options.watch_value(),
                scan_count: options.scan_count_value(),
                feed,
                durability,
                key_format,
                version: AtomicU32::new(version),
            }),
        })
    }

    /// The server, as `host:port`.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The database number.
    #[must_use]
    pub fn db(&self) -> i64 {
        self.inner.db
    }

    /// The hash holding the map: `<prefix>:<name>`.
    #[must_use]
    pub fn hash_key(&self) -> &str {
        &self.inner.hash_key
    }

    /// How the hash's fields encode keys: [`KeyFormat::Distinct`] in formats
    /// 2 and 3 (every map this release creates), [`KeyFormat::Legacy`] in a
    /// map of format 1, which keeps its format.
    #[must_use]
    pub fn key_format(&self) -> KeyFormat {
        self.inner.key_format
    }

    /// The hash holding the format version: `<prefix>:<name>:meta`.
    #[must_use]
    pub fn meta_key(&self) -> &str {
        &self.inner.meta_key
    }

    /// The sorted set holding the deadlines of the entries that expire:
    /// `<prefix>:<name>:expiry` (from format 3).
    #[must_use]
    pub fn expiry_key(&self) -> &str {
        &self.inner.expiry_key
    }

    /// The pub/sub channel announcing changes: `<prefix>:<name>:changes`.
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Whether this backend announces its writes and follows other instances'.
    #[must_use]
    pub fn watch(&self) -> Watch {
        self.inner.watch
    }

    /// The reconnecting connection, for commands of your own. Writing to the
    /// map's hash behind the map's back leaves its cache stale until
    /// `PersistentMap::reload`, unless the write also publishes
    /// `{"from":"cli","resync":true}` on [`channel`](Self::channel).
    #[must_use]
    pub fn connection(&self) -> ConnectionManager {
        self.inner.manager.clone()
    }

    pub(crate) fn location(&self) -> Location {
        Location::new(self.inner.store.clone())
    }

    /// The format version as this instance last knew it.
    pub(crate) fn version(&self) -> u32 {
        self.inner.version.load(Ordering::Acquire)
    }

    fn error(&self, err: redis::RedisError, operation: Operation) -> PersistentError {
        map_redis_error(err, operation, self.location(), &self.inner.endpoint)
    }

    fn encode_key<K: Serialize>(&self, key: &K) -> Result<String> {
        self.inner.key_format.encode(key).map_err(|e| {
            PersistentError::encode(EntryPart::Key, self.location().with_key(render_key(key)), e)
        })
    }

    fn decode_entry<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        field: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(K, V)> {
        let field = String::from_utf8(field).map_err(|e| {
            PersistentError::decode(
                EntryPart::Key,
                self.location()
                    .with_key(render_key(&String::from_utf8_lossy(e.as_bytes()))),
                e,
            )
        })?;
        let at = || self.location().with_key(render_key(&field));
        let key: K = self
            .inner
            .key_format
            .decode(&field)
            .map_err(|e| PersistentError::decode(EntryPart::Key, at(), e))?;
        let value = std::str::from_utf8(&value)
            .map_err(|e| PersistentError::decode(EntryPart::Value, at(), e))?;
        let value: V = value_from_json(value)
            .map_err(|e| PersistentError::decode(EntryPart::Value, at(), e))?;
        Ok((key, value))
    }

    /// The deadline of the entry in `field`, from its score in the
    /// deadlines (`None`: it has none).
    fn decode_deadline(&self, field: &[u8], score: Option<String>) -> Result<Option<SystemTime>> {
        let Some(score) = score else {
            return Ok(None);
        };
        deadline_of_score(&score).map(Some).map_err(|reason| {
            PersistentError::corrupt(
                self.location()
                    .with_key(render_key(&String::from_utf8_lossy(field))),
                format!("{reason} (in {:?})", self.inner.expiry_key),
            )
        })
    }

    /// Whether entries of this map can carry a deadline: maps of formats 2
    /// (moved to format 3 by the first write of one) and 3.
    pub(crate) fn expiry_possible(&self) -> bool {
        self.inner.key_format == KeyFormat::Distinct
    }

    /// Reads the hash with `HSCAN` in chunks of the configured count, and
    /// with `with_deadlines` each chunk's deadlines with `ZMSCORE`.
    async fn scan<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        with_deadlines: bool,
        sink: &mut (dyn FnMut(K, V, Option<SystemTime>) + Send),
    ) -> Result<()> {
        let mut cursor: u64 = 0;
        loop {
            let mut command = redis::cmd("HSCAN");
            command
                .arg(&self.inner.hash_key)
                .arg(cursor)
                .arg("COUNT")
                .arg(self.inner.scan_count);
            let (next, flat): (u64, Vec<Vec<u8>>) = self.read(Operation::Load, &command).await?;
            let mut scores: Vec<Option<String>> = Vec::new();
            if with_deadlines && !flat.is_empty() {
                let mut command = redis::cmd("ZMSCORE");
                command.arg(&self.inner.expiry_key);
                for field in flat.iter().step_by(2) {
                    command.arg(field);
                }
                scores = self.read(Operation::Load, &command).await?;
            }
            let mut scores = scores.into_iter();
            let mut items = flat.into_iter();
            while let (Some(field), Some(value)) = (items.next(), items.next()) {
                let deadline = self.decode_deadline(&field, scores.next().flatten())?;
                // HSCAN may return an entry twice; the sink keeps the last.
                let (key, value) = self.decode_entry(field, value)?;
                sink(key, value, deadline);
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The stored entries of `keys`, in order, with their deadlines when
    /// `with_deadlines`: one `HMGET` (and one `ZMSCORE` in the same
    /// `MULTI`/`EXEC`, so that value and deadline are read together).
    #[allow(clippy::type_complexity)]
    async fn read_keys<K, V>(
        &self,
        keys: &[K],
        with_deadlines: bool,
    ) -> Result<Vec<(K, Option<(V, Option<SystemTime>)>)>>
    where
        K: Clone + Serialize + DeserializeOwned,
        V: DeserializeOwned,
    {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let fields = keys
            .iter()
            .map(|k| self.encode_key(k))
            .collect::<Result<Vec<String>>>()?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HMGET").arg(&self.inner.hash_key).arg(&fields);
        let (values, scores): (Vec<Option<Vec<u8>>>, Vec<Option<String>>) = if with_deadlines {
            pipe.cmd("ZMSCORE").arg(&self.inner.expiry_key).arg(&fields);
            self.read(Operation::Load, &pipe).await?
        } else {
            let (values,): (Vec<Option<Vec<u8>>>,) = self.read(Operation::Load, &pipe).await?;
            (values, Vec::new())
        };
        let mut scores = scores.into_iter();
        let mut out = Vec::with_capacity(keys.len());
        for ((key, field), value) in keys.iter().zip(fields).zip(values) {
            let score = scores.next().flatten();
            let entry = match value {
                Some(bytes) => {
                    let deadline = self.decode_deadline(field.as_bytes(), score)?;
                    let (_, value) = self.decode_entry::<K, V>(field.into_bytes(), bytes)?;
                    Some((value, deadline))
                }
                None => None,
            };
            out.push((key.clone(), entry));
        }
        Ok(out)
    }

    /// Runs a read (a command, or a pipeline of reads), once more if the
    /// connection had died: the connection manager only notices a dead
    /// connection (for example after a server restart) when a command
    /// fails on it, and a read is safe to repeat.
    async fn read<T, Q>(&self, operation: Operation, query: &Q) -> Result<T>
    where
        T: redis::FromRedisValue,
        Q: Query,
    {
        let mut conn = self.inner.manager.clone();
        let result = match query.run::<T>(&mut conn).await {
            Err(err) if crate::error::is_connection_error(&err) => {
                tracing::debug!(error = %err, "read failed on a dead connection; retrying once");
                query.run::<T>(&mut conn).await
            }
            other => other,
        };
        result.map_err(|e| self.error(e, operation))
    }

    /// Runs an atomic pipeline (`MULTI` ... `EXEC`, sent as one request).
    ///
    /// A connection that could not be made sent nothing: a
    /// [`PersistentError::Connection`]. A connection lost once the request
    /// may have gone out may have lost only `EXEC`'s reply:
    /// [`PersistentError::OutcomeUnknown`], which the map settles by reading
    /// the keys back (the server applies a transaction whole or not at all).
    async fn run_atomic(
        &self,
        pipe: &redis::Pipeline,
        operation: Operation,
        location: Location,
    ) -> Result<()> {
        let mut conn = self.inner.manager.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| exec_error(e, operation, location, &self.inner.endpoint))
    }
}

/// A command or a pipeline, sent the same way.
trait Query: Sync {
    async fn run<T: redis::FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> redis::RedisResult<T>;
}

impl Query for redis::Cmd {
    async fn run<T: redis::FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> redis::RedisResult<T> {
        self.query_async(conn).await
    }
}

impl Query for redis::Pipeline {
    async fn run<T: redis::FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> redis::RedisResult<T> {
        self.query_async(conn).await
    }
}

/// The message announcing `keys` (the fields a batch changed), or a resync
/// when there are more than [`MAX_KEYS`].
pub(crate) fn announcement(from: &str, keys: &[&str]) -> String {
    let announcement = if keys.len() > MAX_KEYS {
        Announcement::resync(from)
    } else {
        Announcement::changed(from, keys.iter().map(|&key| key.to_owned()).collect())
    };
    announcement.to_json()
}

fn invalid_url() -> PersistentError {
    // The URL may hold a password: it is not repeated in the error.
    PersistentError::backend(
        BACKEND,
        Operation::Open,
        Location::new("connection url"),
        "invalid redis connection url (expected redis://[user][:password@]host[:port][/db])",
    )
}

/// Why `WAITAOF` did not confirm a flush.
#[derive(Debug)]
enum FlushError {
    /// The server answered that nothing was fsynced.
    NotSynced,
    /// The command failed.
    Redis(redis::RedisError),
}

/// Judges the server's answer to `WAITAOF 1 0 0`.
///
/// Only two refusals mean there is no fsync to wait for, and make the flush
/// rely on the server's persistence setting: the command is unknown (Redis
/// before 7.2), or the server keeps no append-only file. Any other error (an
/// ACL refusal, a read-only replica, a server still loading) fails the flush.
fn flush_outcome(waited: redis::RedisResult<(i64, i64)>) -> Result<(), FlushError> {
    match waited {
        Ok((local, _)) if local >= 1 => Ok(()),
        Ok(_) => Err(FlushError::NotSynced),
        Err(err) if has_no_fsync_to_wait_for(&err) => {
            tracing::trace!(error = %err, "WAITAOF unavailable; flush relies on the server's persistence setting");
            Ok(())
        }
        Err(err) => Err(FlushError::Redis(err)),
    }
}

fn has_no_fsync_to_wait_for(err: &redis::RedisError) -> bool {
    if err.code() != Some("ERR") {
        return false;
    }
    let detail = err.detail().unwrap_or_default().to_ascii_lowercase();
    detail.starts_with("unknown command 'waitaof'") || detail.contains("appendonly is disabled")
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("RedisBackend")
            .field("endpoint", &inner.endpoint)
            .field("db", &inner.db)
            .field("hash_key", &inner.hash_key)
            .field("watch", &inner.watch)
            .field("instance", &inner.instance)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for RedisBackend
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

    /// Redis acknowledges a write once it is in the server's memory; what
    /// then survives a server crash is the server's persistence setting.
    /// On Redis 7.2 and later with `appendonly yes`, flush runs `WAITAOF 1 0`
    /// and returns once the append-only file holding every acknowledged
    /// write is fsynced. On older servers, or without the append-only file,
    /// there is nothing a client can wait for: flush only checks that the
    /// server answers. Any other refusal (an ACL, a read-only replica) is an
    /// error. See the crate documentation.
    async fn flush(&self) -> Result<()> {
        let mut conn = self.inner.manager.clone();
        let waited: redis::RedisResult<(i64, i64)> = redis::cmd("WAITAOF")
            .arg(1)
            .arg(0)
            .arg(0)
            .query_async(&mut conn)
            .await;
        flush_outcome(waited).map_err(|err| match err {
            FlushError::NotSynced => PersistentError::backend(
                BACKEND,
                Operation::Flush,
                self.location(),
                "WAITAOF returned before the append-only file was fsynced",
            ),
            FlushError::Redis(err) => self.error(err, Operation::Flush),
        })
    }

    async fn contains_key(&self, key: &K) -> Result<bool> {
        let field = self.encode_key(key)?;
        let mut command = redis::cmd("HEXISTS");
        command.arg(&self.inner.hash_key).arg(field);
        self.read(Operation::Load, &command).await
    }

    async fn len(&self) -> Result<usize> {
        let mut command = redis::cmd("HLEN");
        command.arg(&self.inner.hash_key);
        self.read(Operation::Load, &command).await
    }

    /// One `MULTI`/`EXEC` transaction per batch: one `HDEL`, one `HSET` of
    /// every new value, one `ZREM` and one `ZADD` of the deadlines cleared
    /// and set, one `EVAL` of the sweep script, and (with [`Watch::Enabled`])
    /// a `PUBLISH` of the keys (the sweep script announces the keys it
    /// removed). Everything is encoded first, so an unencodable key or
    /// value fails the batch before anything is sent. The first write
    /// carrying a deadline to a map of format 2 records format 3 in the same
    /// transaction.
    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Only the net change per key matters inside one transaction.
        let net = encode_batch(batch, BACKEND, &self.inner.store, self.inner.key_format)?;
        let writes = self.batch_pipeline(&net)?;
        let location = match batch {
            [op] => self.location().with_key(render_key(op.key())),
            _ => self.location(),
        };
        self.run_atomic(&writes.pipe, Operation::Write, location)
            .await?;
        if writes.moves_to_expiry_format {
            self.inner
                .version
                .fetch_max(EXPIRY_VERSION, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Removes the hash and its deadlines with `UNLINK` (the server frees
    /// their memory in the background) and tells other instances to reload.
    async fn clear(&self) -> Result<()> {
        let inner = &*self.inner;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("UNLINK")
            .arg(&inner.hash_key)
            .arg(&inner.expiry_key)
            .ignore();
        if inner.watch == Watch::Enabled {
            pipe.cmd("PUBLISH")
                .arg(&inner.channel)
                .arg(Announcement::resync(inner.instance.as_str()).to_json())
                .ignore();
        }
        self.run_atomic(&pipe, Operation::Clear, self.location())
            .await
    }

    /// Reads the hash with `HSCAN` in chunks of the configured count, so a
    /// large map never blocks the server. `HSCAN` is not a snapshot: with
    /// [`Watch::Enabled`] the map subscribes to the change feed (`watch`)
    /// before it loads, so a change made by another instance during the scan
    /// is followed afterwards.
    async fn load_into(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<()> {
        self.scan(false, &mut |key, value, _| sink(key, value))
            .await
    }

    async fn load_keys(&self, keys: &[K]) -> Result<Vec<(K, Option<V>)>> {
        Ok(self
            .read_keys::<K, V>(keys, false)
            .await?
            .into_iter()
            .map(|(key, entry)| (key, entry.map(|(value, _)| value)))
            .collect())
    }

    /// As [`load_into`](Self::load_into), each chunk's deadlines read with
    /// `ZMSCORE`, expired entries included; a map without deadlines (an
    /// empty sorted set) is read as by `load_into`.
    async fn load_with_expiry_into(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<SystemTime>) + Send),
    ) -> Result<()> {
        let with_deadlines = self.expiry_possible() && {
            let mut command = redis::cmd("ZCARD");
            command.arg(&self.inner.expiry_key);
            self.read::<u64, _>(Operation::Load, &command).await? > 0
        };
        self.scan(with_deadlines, sink).await
    }

    async fn load_keys_with_expiry(
        &self,
        keys: &[K],
    ) -> Result<Vec<(K, Option<(V, Option<SystemTime>)>)>> {
        self.read_keys(keys, self.expiry_possible()).await
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

    /// Atomic batches: `MULTI`/`EXEC` applies all of a batch or none of it
    /// (the server checks every command when it is queued, and with the
    /// append-only file it replays a transaction whole or not at all).
    /// Expiry on maps of formats 2 and 3; a map of format 1 (legacy keys)
    /// has none.
    fn capabilities(&self) -> Capabilities {
        // Read from the server's persistence settings when the backend opened.
        Capabilities::new()
            .with_atomic_batch(true)
            .with_durability(self.inner.durability)
            .with_expiry(self.expiry_possible())
    }
}

/// What the server's persistence settings make of an acknowledged write:
/// with `appendfsync always` every write is synced before the reply; with
/// an append-only file on Redis 7.2 or later, `flush` waits for its fsync
/// (`WAITAOF`); otherwise the server persists on its own schedule. Settings
/// the server does not show (`CONFIG` refused) count as the last case.
async fn server_durability(conn: &mut redis::aio::MultiplexedConnection) -> Durability {
    let config = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async::<std::collections::HashMap<String, String>>(&mut conn)
                .await
                .ok()
                .and_then(|mut reply| reply.remove(name))
        }
    };
    let appendonly = config("appendonly").await;
    let appendfsync = config("appendfsync").await;
    let info: Option<String> = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .ok();
    let version = info.as_deref().and_then(redis_version);
    durability_of(appendonly.as_deref(), appendfsync.as_deref(), version)
}

/// The `major.minor` of `redis_version:` in an `INFO server` reply.
fn redis_version(info: &str) -> Option<(u32, u32)> {
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?;
    let mut parts = line.trim().split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn durability_of(
    appendonly: Option<&str>,
    appendfsync: Option<&str>,
    version: Option<(u32, u32)>,
) -> Durability {
    match (appendonly, appendfsync) {
        (Some("yes"), Some("always")) => Durability::OnAcknowledge,
        (Some("yes"), _) if version.is_some_and(|v| v >= (7, 2)) => Durability::OnFlush,
        _ => Durability::ServerManaged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_follows_the_persistence_settings() {
        let info = "# Server\r\nredis_version:7.2.4\r\nredis_mode:standalone\r\n";
        assert_eq!(redis_version(info), Some((7, 2)));
        assert_eq!(
            durability_of(Some("yes"), Some("always"), Some((7, 0))),
            Durability::OnAcknowledge
        );
        assert_eq!(
            durability_of(Some("yes"), Some("everysec"), Some((7, 2))),
            Durability::OnFlush
        );
        assert_eq!(
            durability_of(Some("yes"), Some("everysec"), Some((7, 0))),
            Durability::ServerManaged,
            "before 7.2 flush cannot wait for the fsync"
        );
        assert_eq!(
            durability_of(Some("no"), Some("always"), Some((7, 4))),
            Durability::ServerManaged
        );
        assert_eq!(durability_of(None, None, None), Durability::ServerManaged);
    }

    #[test]
    fn batches_announce_their_keys_or_a_resync() {
        let sent =
            Announcement::parse(announcement("me", &["a", "\u{0}b"]).as_bytes()).expect("parses");
        assert_eq!(
            sent,
            Announcement::changed("me", vec!["a".into(), "\u{0}b".into()])
        );
        let keys: Vec<String> = (0..=MAX_KEYS).map(|i| i.to_string()).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let sent = Announcement::parse(announcement("me", &keys).as_bytes()).expect("parses");
        assert_eq!(sent, Announcement::resync("me"));
    }

    /// The server's answer to `WAITAOF`, read from its wire form.
    fn answer(wire: &str) -> redis::RedisResult<(i64, i64)> {
        let value = redis::parse_redis_value(wire.as_bytes())?.extract_error()?;
        Ok(redis::from_redis_value(value)?)
    }

    #[test]
    fn flush_is_ok_only_when_synced_or_when_the_server_has_no_fsync_to_wait_for() {
        assert!(flush_outcome(answer("*2\r\n:1\r\n:0\r\n")).is_ok());
        assert!(matches!(
            flush_outcome(answer("*2\r\n:0\r\n:0\r\n")),
            Err(FlushError::NotSynced)
        ));
        // Servers before 7.2, and servers without an append-only file.
        for no_fsync in [
            "-ERR unknown command 'WAITAOF', with args beginning with: '1' '0' '0' \r\n",
            "-ERR WAITAOF cannot be used when numlocal is set but appendonly is disabled.\r\n",
        ] {
            assert!(flush_outcome(answer(no_fsync)).is_ok(), "{no_fsync}");
        }
        for refused in [
            "-NOPERM User pm has no permissions to run the 'waitaof' command\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-ERR WAITAOF cannot be used with replica instances.\r\n",
            "-ERR unknown command 'WAITAOFX', with args beginning with: \r\n",
        ] {
            assert!(
                matches!(flush_outcome(answer(refused)), Err(FlushError::Redis(_))),
                "{refused}"
            );
        }
    }
}
