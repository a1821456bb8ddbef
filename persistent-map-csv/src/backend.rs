//! [`CsvBackend`]: the state of one open file and the [`StorageBackend`] methods.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{
    async_trait, render_key, BatchOp, Capabilities, Durability, EntryPart, PersistentError, Result,
    StorageBackend,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::changes::{decide, decode_stored, encode_key, encode_value, prepare, Prepared, Record};
use crate::compaction::compact_contents;
use crate::config::{CsvBackendBuilder, Options, SyncPolicy};
use crate::error::at;
use crate::files::{
    append, create_parent, open_for_append, remove_stale_temp, replace_atomically, sync_data,
    truncate, Io,
};
use crate::format::{header_line, parse_header, Encoder, Header, Layout};
use crate::lock::LockFile;
use crate::read::{key_hash, read_legacy, read_start, scan, Change, Scan};
use crate::thread::FileThread;

/// A [`StorageBackend`] that keeps a map in one CSV file, appending a record
/// per change.
///
/// Nothing on disk is touched until the first load or write; then the
/// backend creates the file and its directory if missing and takes an
/// exclusive lock on it (held until the backend is dropped and its last
/// queued write is done). See the crate documentation for the file format
/// and the guarantees.
///
/// ```
/// use persistent_map_core::PersistentMap;
/// use persistent_map_csv::CsvBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let map = PersistentMap::new(CsvBackend::new(dir.path().join("users.csv"))).await?;
/// map.insert("alice".to_string(), 30_u32).await?;
/// map.flush().await?;
/// map.backend().compact().await?;
/// # Ok(())
/// # }
/// ```
pub struct CsvBackend {
    path: PathBuf,
    options: Options,
    io: Io,
    state: Mutex<Option<Store>>,
}

/// An open, locked file.
struct Store {
    /// Does the appends and syncs; holds the store's lock.
    thread: FileThread,
    delimiter: u8,
    /// How the file writes keys, from its header (a file keeps its key
    /// format), and whether its records have the deadline field (a file
    /// gets it with its first deadline).
    layout: Layout,
    kind: Kind,
    /// Data rows and batch markers in the file.
    rows: u64,
    /// [`key_hash`] of every live key.
    live: HashSet<u64>,
    /// The deadline of every live key that has one, by key text: what
    /// decides a removal of an expired entry. Known once the file is read.
    deadlines: HashMap<String, i64>,
    /// Set when a failed append could not be cut back: the length to cut to
    /// before the next write.
    dirty_tail: Option<u64>,
    /// The file's length, once an append told it; forgotten whenever the
    /// file is replaced.
    len: Option<u64>,
    /// Set when a sync of the file failed. The kernel may have dropped the
    /// unsynced data and marked it clean, so a later sync could succeed
    /// without writing it: from then on every write and flush fails, until
    /// the store is opened again.
    sync_failed: Option<std::io::ErrorKind>,
}

enum Kind {
    /// A 0.1.x file, migrated before the first write.
    Legacy,
    /// A file with a header, not read yet: row counts unknown.
    Unscanned,
    /// A file with a header, read, open for appending.
    Ready(Arc<File>),
}

impl CsvBackend {
    /// A backend on the file at `path`, with default options.
    ///
    /// Touches nothing on disk: the file (and its directory) is created,
    /// checked and locked on first use.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::with_options(path.into(), Options::default(), crate::files::real_io())
    }

    /// Starts a [`CsvBackendBuilder`] to set the delimiter, compaction and
    /// sync policy.
    pub fn builder(path: impl Into<PathBuf>) -> CsvBackendBuilder {
        CsvBackendBuilder::new(path.into())
    }

    pub(crate) fn with_options(path: PathBuf, options: Options, io: Io) -> Self {
        Self {
            path,
            options,
            io,
            state: Mutex::new(None),
        }
    }

    /// The data file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the file stores keys, from its header: [`KeyFormat::Distinct`]
    /// for a file this release created (format version 5, or 3 from before
    /// deadlines), [`KeyFormat::Legacy`] for one written by persistent-map
    /// 0.1.x or 0.2.0 (no header, or format version 2, and 4 once such a
    /// file has deadlines), which keeps its format.
    ///
    /// # Errors
    ///
    /// As opening the store on first use: the file is locked by another
    /// backend, or its header is malformed or from a newer release.
    pub async fn key_format(&self) -> Result<KeyFormat> {
        let mut state = self.state.lock().await;
        Ok(self.open(&mut state).await?.layout.key_format)
    }

    /// Rewrites the file with only its live entries, dropping replaced
    /// values and tombstones.
    ///
    /// The new file is written next to the old one, synced, and renamed over
    /// it, and the directory is synced: a crash at any point leaves either
    /// the old file or the new one, whole. It runs between two writes of the
    /// map, so it never loses one. With a map, reach it through
    /// [`PersistentMap::backend`](persistent_map_core::PersistentMap::backend).
    ///
    /// The file keeps its format version: a file without the deadline
    /// field gets it with its first deadline, not here. A 0.1.x file that
    /// has not been written to yet is left as it is: its migration on the
    /// first write already keeps only live entries.
    ///
    /// ```
    /// # use persistent_map_core::PersistentMap;
    /// # use persistent_map_csv::CsvBackend;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// let map = PersistentMap::new(CsvBackend::new(dir.path().join("kv.csv"))).await?;
    /// for i in 0..10_u32 {
    ///     map.insert("counter".to_string(), i).await?;
    /// }
    /// map.backend().compact().await?;
    /// assert_eq!(map.get("counter"), Some(9));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// When the file is locked by another backend, has a malformed record
    /// (nothing is then written), or cannot be rewritten.
    pub async fn compact(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let store = self.open(&mut state).await?;
        let layout = store.layout;
        self.compact_store(store, layout).await
    }

    /// Opens and locks the store on first use.
    async fn open<'s>(&self, state: &'s mut Option<Store>) -> Result<&'s mut Store> {
        match state {
            Some(store) => Ok(store),
            None => Ok(state.insert(self.open_store().await?)),
        }
    }

    async fn open_store(&self) -> Result<Store> {
        create_parent(&self.path).await?;
        let lock = LockFile::acquire(&self.path, self.options.lock_timeout).await?;
        remove_stale_temp(&self.path).await;
        let lock_path = lock.path().to_owned();
        let mut store = Store {
            thread: FileThread::start(&self.path, lock)?,
            delimiter: self.options.delimiter.as_byte(),
            // What a file created now gets; the header of an existing one
            // overrides it.
            layout: Layout::new_store(self.options.new_store_key_format),
            kind: Kind::Unscanned,
            rows: 0,
            live: HashSet::new(),
            deadlines: HashMap::new(),
            dirty_tail: None,
            len: None,
            sync_failed: None,
        };
        match read_start(&self.path).await? {
            None => {
                let header = header_line(store.delimiter, store.layout);
                let file = replace_atomically(&self.io, &self.path, header).await?;
                store.kind = Kind::Ready(file);
                store.len = None;
            }
            Some(start) => match parse_header(&self.path, &start)? {
                Header::Current { delimiter, layout } => {
                    store.delimiter = delimiter;
                    store.layout = layout;
                }
                Header::Legacy => {
                    // Its keys stay as 0.1.x wrote them, also after the
                    // migration to a file with a header.
                    store.layout = Layout {
                        key_format: KeyFormat::Legacy,
                        deadlines: false,
                    };
                    store.kind = Kind::Legacy;
                }
            },
        }
        tracing::debug!(
            path = %self.path.display(),
            lock = %lock_path.display(),
            "opened csv store"
        );
        Ok(store)
    }

    /// Reads a file with a header through `apply`, cuts off an incomplete
    /// tail, and makes the store ready for appending.
    async fn scan_store<F>(&self, store: &mut Store, apply: F) -> Result<()>
    where
        F: FnMut(Change) -> Result<()>,
    {
        let Scan {
            rows,
            live,
            deadlines,
            torn,
        } = scan(&self.path, store.delimiter, store.layout.deadlines, apply).await?;
        if let Some(torn) = torn {
            tracing::warn!(
                path = %self.path.display(),
                line = torn.line,
                keep_len = torn.keep_len,
                "discarding an incompletely written record at the end of the file"
            );
            truncate(&self.io, &self.path, torn.keep_len).await?;
            store.dirty_tail = None;
            store.len = None;
        }
        if !matches!(store.kind, Kind::Ready(_)) {
            store.kind = Kind::Ready(open_for_append(&self.path).await?);
        }
        store.rows = rows;
        store.live = live;
        store.deadlines = deadlines;
        Ok(())
    }

    /// Every live entry, as `make` builds it from the value and deadline.
    async fn load_entries<K, V, T>(
        &self,
        make: impl Fn(V, Option<SystemTime>) -> T + Send,
    ) -> Result<HashMap<K, T>>
    where
        K: Eq + Hash + Serialize + DeserializeOwned,
        V: DeserializeOwned,
    {
        let mut state = self.state.lock().await;
        let store = self.open(&mut state).await?;
        if matches!(store.kind, Kind::Legacy) {
            let entries: HashMap<K, V> = read_legacy(&self.path).await?;
            return Ok(entries
                .into_iter()
                .map(|(key, value)| (key, make(value, None)))
                .collect());
        }
        let mut entries = HashMap::new();
        let path = &self.path;
        let key_format = store.layout.key_format;
        self.scan_store(store, |change| {
            let location = at(path).with_line(change.line);
            let key: K = key_format.decode(&change.key).map_err(|e| {
                PersistentError::decode(
                    EntryPart::Key,
                    location.clone().with_key(render_key(&change.key)),
                    e,
                )
            })?;
            match &change.value {
                Some(json) => {
                    let (value, deadline) = decode_stored::<V>(
                        path,
                        change.line,
                        &change.key,
                        json,
                        change.expires_at,
                    )?;
                    entries.insert(key, make(value, deadline));
                }
                None => {
                    entries.remove(&key);
                }
            }
            Ok(())
        })
        .await?;
        Ok(entries)
    }

    /// The stored value and deadline of each of `keys`, from one pass over
    /// the file that decodes only their records.
    #[allow(clippy::type_complexity)]
    async fn load_key_entries<K, V>(
        &self,
        keys: &[K],
    ) -> Result<Vec<(K, Option<(V, Option<SystemTime>)>)>>
    where
        K: Eq + Hash + Clone + Serialize + DeserializeOwned,
        V: Clone + DeserializeOwned,
    {
        let mut state = self.state.lock().await;
        let store = self.open(&mut state).await?;
        if matches!(store.kind, Kind::Legacy) {
            let entries: HashMap<K, V> = read_legacy(&self.path).await?;
            return Ok(keys
                .iter()
                .map(|key| (key.clone(), entries.get(key).cloned().map(|v| (v, None))))
                .collect());
        }
        let texts: Vec<String> = keys
            .iter()
            .map(|key| encode_key(&self.path, store.layout.key_format, key))
            .collect::<Result<_>>()?;
        let wanted: HashSet<&str> = texts.iter().map(String::as_str).collect();
        // The last change of each wanted key: its line, value and deadline.
        let mut last: HashMap<String, (u64, Option<String>, Option<i64>)> = HashMap::new();
        self.scan_store(store, |change| {
            if wanted.contains(change.key.as_str()) {
                last.insert(change.key, (change.line, change.value, change.expires_at));
            }
            Ok(())
        })
        .await?;
        let mut found: HashMap<&str, (V, Option<SystemTime>)> = HashMap::new();
        for (key, (line, value, expires_at)) in &last {
            if let Some(json) = value {
                found.insert(
                    key.as_str(),
                    decode_stored(&self.path, *line, key, json, *expires_at)?,
                );
            }
        }
        Ok(keys
            .iter()
            .zip(&texts)
            .map(|(key, text)| (key.clone(), found.get(text.as_str()).cloned()))
            .collect())
    }

    /// The append handle of a store, after migrating a 0.1.x file or reading
    /// an unread one, and (if `deadlines`) after giving a file without the
    /// deadline field that field.
    async fn ready<K, V>(&self, store: &mut Store, deadlines: bool) -> Result<Arc<File>>
    where
        K: Eq + Hash + Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        if deadlines && !store.layout.deadlines {
            self.upgrade::<K, V>(store).await?;
        }
        match &store.kind {
            Kind::Ready(file) => return Ok(Arc::clone(file)),
            Kind::Unscanned => self.scan_store(store, |_| Ok(())).await?,
            Kind::Legacy => self.migrate::<K, V>(store, store.layout).await?,
        }
        match &store.kind {
            Kind::Ready(file) => Ok(Arc::clone(file)),
            _ => Err(PersistentError::corrupt(
                at(&self.path),
                "store not ready after opening",
            )),
        }
    }

    /// Rewrites a 0.1.x file in `layout` (format version 2, or 4 when its
    /// first write stores a deadline), atomically: with a header, its keys
    /// still in the legacy format.
    async fn migrate<K, V>(&self, store: &mut Store, layout: Layout) -> Result<()>
    where
        K: Eq + Hash + Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        let entries: HashMap<K, V> = read_legacy(&self.path).await?;
        let header = header_line(store.delimiter, layout);
        let mut encoder = Encoder::new(store.delimiter, layout, header);
        let mut live = HashSet::with_capacity(entries.len());
        for (key, value) in &entries {
            let key = encode_key(&self.path, layout.key_format, key)?;
            encoder.put(&key, &encode_value(&self.path, &key, value)?, None);
            live.insert(key_hash(&key));
        }
        let contents = encoder.finish();
        let file = replace_atomically(&self.io, &self.path, contents).await?;
        tracing::info!(
            path = %self.path.display(),
            entries = entries.len(),
            version = layout.version(),
            "migrated a persistent-map 0.1.x csv file to a file with a header"
        );
        store.kind = Kind::Ready(file);
        store.layout = layout;
        store.len = None;
        store.rows = live.len() as u64;
        store.live = live;
        store.deadlines.clear();
        store.dirty_tail = None;
        Ok(())
    }

    /// Gives a file without the deadline field that field, before its first
    /// deadline is appended: rewrites it like a compaction (a 0.1.x file
    /// like its migration), atomically, in the version with the field and
    /// the same key format. A crash leaves the old file or the new one,
    /// both holding the same entries.
    async fn upgrade<K, V>(&self, store: &mut Store) -> Result<()>
    where
        K: Eq + Hash + Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        let from = store.layout.version();
        let to = store.layout.with_deadlines();
        match store.kind {
            Kind::Legacy => self.migrate::<K, V>(store, to).await?,
            _ => self.compact_store(store, to).await?,
        }
        tracing::info!(
            path = %self.path.display(),
            from,
            to = to.version(),
            "rewrote the csv file with a deadline field for its first deadline"
        );
        Ok(())
    }

    /// Rewrites the file with only its live records, in layout `to`,
    /// inside a `persistent_map.compaction` span (the map never compacts a
    /// store on its own: this backend does, so the span is its own).
    async fn compact_store(&self, store: &mut Store, to: Layout) -> Result<()> {
        let span = tracing::info_span!(
            "persistent_map.compaction",
            path = %self.path.display(),
            rows_before = store.rows,
            rows_after = tracing::field::Empty,
        );
        self.compact_rows(store, to)
            .instrument(span.clone())
            .await
            .inspect(|()| {
                span.record("rows_after", store.rows);
            })
    }

    async fn compact_rows(&self, store: &mut Store, to: Layout) -> Result<()> {
        match store.kind {
            Kind::Legacy => return Ok(()),
            // Reading first cuts off a torn tail, so the rewrite starts from
            // a file whose every record counts.
            Kind::Unscanned => self.scan_store(store, |_| Ok(())).await?,
            Kind::Ready(_) => {}
        }
        let rows_before = store.rows;
        let compacted = compact_contents(&self.path, store.delimiter, store.layout, to).await?;
        let rows = compacted.rows();
        let file = replace_atomically(&self.io, &self.path, compacted.contents).await?;
        store.kind = Kind::Ready(file);
        store.layout = to;
        store.len = None;
        store.rows = rows;
        store.live = compacted.live;
        store.dirty_tail = None;
        // Everything the file holds was just rewritten and synced.
        store.sync_failed = None;
        tracing::debug!(
            path = %self.path.display(),
            rows_before,
            rows_after = rows,
            "compacted csv store"
        );
        Ok(())
    }

    /// Appends the changes `encode` makes in the file's key format as one
    /// write; a batch gets the marker that makes it all-or-nothing at load.
    /// The first deadline a file without the deadline field gets makes it
    /// rewrite the file with that field first.
    async fn write<K, V>(
        &self,
        encode: impl FnOnce(KeyFormat) -> Result<Vec<Prepared>> + Send,
    ) -> Result<()>
    where
        K: Eq + Hash + Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        let mut state = self.state.lock().await;
        let store = self.open(&mut state).await?;
        let mut changes = encode(store.layout.key_format)?;
        let stores_deadline = changes.iter().any(|change| {
            matches!(
                change,
                Prepared::Put {
                    expires_at: Some(_),
                    ..
                }
            )
        });
        if !store.layout.deadlines && !stores_deadline {
            // No entry has a deadline: removals of expired entries have
            // nothing to remove, and must not migrate a 0.1.x file either.
            changes.retain(|change| !matches!(change, Prepared::DelExpired { .. }));
        }
        if changes.is_empty() {
            return Ok(());
        }
        self.check_synced(store)?;
        let file = self.ready::<K, V>(store, stores_deadline).await?;
        let records = decide(&changes, &store.deadlines);
        if records.is_empty() {
            return Ok(());
        }

        let mut encoder = Encoder::new(store.delimiter, store.layout, Vec::new());
        let mut rows = records.len() as u64;
        if records.len() > 1 {
            encoder.batch(records.len());
            rows += 1;
        }
        for record in &records {
            match *record {
                Record::Put {
                    key,
                    value,
                    expires_at,
                } => encoder.put(key, value, expires_at),
                Record::Del { key } => encoder.del(key),
            }
        }
        let bytes = encoder.finish();

        let sync = self.options.sync == SyncPolicy::EveryWrite;
        let appended = append(
            &store.thread,
            &self.io,
            &self.path,
            file,
            bytes,
            sync,
            store.dirty_tail,
            // Taken, so that an append whose future is dropped leaves the
            // length unknown rather than stale.
            store.len.take(),
        )
        .await;
        store.dirty_tail = appended.dirty_tail;
        store.len = appended.len;
        if appended.sync_failed {
            store.note_failed_sync(&self.path, &appended.result);
        }
        appended.result?;

        store.rows += rows;
        for record in &records {
            let key = record.key();
            let hash = key_hash(key);
            match *record {
                Record::Put { expires_at, .. } => {
                    store.live.insert(hash);
                    match expires_at {
                        Some(deadline) => {
                            store.deadlines.insert(key.to_owned(), deadline);
                        }
                        None if store.deadlines.is_empty() => {}
                        None => {
                            store.deadlines.remove(key);
                        }
                    }
                }
                Record::Del { .. } => {
                    store.live.remove(&hash);
                    if !store.deadlines.is_empty() {
                        store.deadlines.remove(key);
                    }
                }
            }
        }
        if self
            .options
            .compaction
            .is_due(store.rows, store.live.len() as u64)
        {
            // The write is already acknowledged by the file; a failed
            // compaction leaves the old file, which is still complete.
            let layout = store.layout;
            if let Err(err) = self.compact_store(store, layout).await {
                tracing::warn!(path = %self.path.display(), error = %err, "automatic compaction failed");
            }
        }
        Ok(())
    }
}

impl CsvBackend {
    /// Refuses to go on after a failed sync (see [`Store::sync_failed`]).
    fn check_synced(&self, store: &Store) -> Result<()> {
        match store.sync_failed {
            None => Ok(()),
            Some(kind) => Err(PersistentError::io(
                &self.path,
                std::io::Error::new(
                    kind,
                    "an earlier sync of this file failed, so data written before it may not be \
                     on disk; open the store again to go on",
                ),
            )),
        }
    }
}

impl Store {
    /// Remembers a failed sync, so no later flush can claim durability.
    fn note_failed_sync(&mut self, path: &Path, result: &Result<()>) {
        if let Err(err) = result {
            let kind = match err {
                PersistentError::Io { source, .. }
                | PersistentError::StorageFull { source, .. } => source.kind(),
                _ => std::io::ErrorKind::Other,
            };
            tracing::error!(path = %path.display(), error = %err, "sync failed; the store refuses writes and flushes until it is opened again");
            self.sync_failed = Some(kind);
        }
    }
}

impl fmt::Debug for CsvBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvBackend")
            .field("path", &self.path)
            .field("delimiter", &self.options.delimiter)
            .field("compaction", &self.options.compaction)
            .field("sync", &self.options.sync)
            .field("lock_timeout", &self.options.lock_timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for CsvBackend
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.load_entries(|value: V, _| value).await
    }

    async fn load_into(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<()> {
        // Tombstones and later records override earlier ones, so entries are
        // settled per key before the sink sees them.
        for (key, value) in self.load_entries(|value: V, _| value).await? {
            sink(key, value);
        }
        Ok(())
    }

    /// One pass over the file, as [`load_into`](Self::load_into), with each
    /// entry's deadline (none in a file without the deadline field).
    async fn load_with_expiry_into(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<SystemTime>) + Send),
    ) -> Result<()> {
        for (key, (value, deadline)) in self.load_entries(|value: V, d| (value, d)).await? {
            sink(key, value, deadline);
        }
        Ok(())
    }

    /// One pass over the file that decodes only the records of `keys`.
    async fn load_keys(&self, keys: &[K]) -> Result<Vec<(K, Option<V>)>> {
        Ok(self
            .load_key_entries::<K, V>(keys)
            .await?
            .into_iter()
            .map(|(key, found)| (key, found.map(|(value, _)| value)))
            .collect())
    }

    /// As [`load_keys`](Self::load_keys), with each entry's deadline.
    async fn load_keys_with_expiry(
        &self,
        keys: &[K],
    ) -> Result<Vec<(K, Option<(V, Option<SystemTime>)>)>> {
        self.load_key_entries(keys).await
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        self.write::<K, V>(|format| {
            Ok(vec![Prepared::Put {
                key: encode_key(&self.path, format, &key)?,
                value: encode_value(&self.path, &key, &value)?,
                expires_at: None,
            }])
        })
        .await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        self.write::<K, V>(|format| {
            Ok(vec![Prepared::Del {
                key: encode_key(&self.path, format, key)?,
            }])
        })
        .await
    }

    /// One append per batch (see the crate documentation). A removal of an
    /// expired entry appends a tombstone only if the entry's deadline, as
    /// the file and the batch's earlier changes leave it, is at or before
    /// its clock. The first deadline a file without the deadline field
    /// gets rewrites the file with that field first.
    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        self.write::<K, V>(|format| {
            batch
                .iter()
                .map(|op| prepare(&self.path, format, op))
                .collect()
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let Some(store) = state.as_mut() else {
            // Nothing was written through this backend yet: nothing to sync.
            return Ok(());
        };
        self.check_synced(store)?;
        let Kind::Ready(file) = &store.kind else {
            return Ok(());
        };
        let result = sync_data(&store.thread, &self.io, &self.path, Arc::clone(file)).await;
        store.note_failed_sync(&self.path, &result);
        result
    }

    async fn clear(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let store = self.open(&mut state).await?;
        // The store keeps its format version: a cleared store is the same store.
        let header = header_line(store.delimiter, store.layout);
        let file = replace_atomically(&self.io, &self.path, header).await?;
        store.kind = Kind::Ready(file);
        store.len = None;
        store.rows = 0;
        store.live.clear();
        store.deadlines.clear();
        store.dirty_tail = None;
        store.sync_failed = None;
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        // Every file can store deadlines: one without the field gets it
        // with its first deadline.
        Capabilities::new()
            .with_atomic_batch(true)
            .with_exclusive_lock(true)
            .with_expiry(true)
            .with_durability(match self.options.sync {
                SyncPolicy::EveryWrite => Durability::OnAcknowledge,
                _ => Durability::OnFlush,
            })
    }
}
