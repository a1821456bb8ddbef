//! [`CsvBackend`]: the state of one open file and the [`StorageBackend`] methods.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use persistent_map_core::codec::{value_from_json, value_to_json, KeyFormat};
use persistent_map_core::{
    async_trait, render_key, BatchOp, Capabilities, Durability, EntryPart, PersistentError, Result,
    StorageBackend,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::compaction::compact_contents;
use crate::config::{CsvBackendBuilder, Options, SyncPolicy};
use crate::error::at;
use crate::files::{
    append, create_parent, open_for_append, remove_stale_temp, replace_atomically, sync_data,
    truncate, Io,
};
use crate::format::{header_line, parse_header, Encoder, Header};
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
    /// How the file writes keys, from its header; a file keeps its format.
    key_format: KeyFormat,
    kind: Kind,
    /// Data rows and batch markers in the file.
    rows: u64,
    /// [`key_hash`] of every live key.
    live: HashSet<u64>,
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
    /// A version 2 file not read yet: row counts unknown.
    Unscanned,
    /// A version 2 file, read, open for appending.
    Ready(Arc<File>),
}

/// Keys and values encoded as text (once the file's key format is known)
/// before anything is written, so a change that cannot be encoded fails
/// without changing the file.
struct Prepared {
    key: String,
    value: Option<String>,
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
    /// for a file this release created (format version 3),
    /// [`KeyFormat::Legacy`] for one written by persistent-map 0.1.x or an
    /// earlier 0.2 (no header, or format version 2), which keeps its format.
    ///
    /// # Errors
    ///
    /// As opening the store on first use: the file is locked by another
    /// backend, or its header is malformed or from a newer release.
    pub async fn key_format(&self) -> Result<KeyFormat> {
        let mut state = self.state.lock().await;
        Ok(self.open(&mut state).await?.key_format)
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
    /// A 0.1.x file that has not been written to yet is left as it is: its
    /// migration on the first write already keeps only live entries.
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
        self.compact_store(store).await
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
            key_format: self.options.new_store_key_format,
            kind: Kind::Unscanned,
            rows: 0,
            live: HashSet::new(),
            dirty_tail: None,
            len: None,
            sync_failed: None,
        };
        match read_start(&self.path).await? {
            None => {
                let header = header_line(store.delimiter, store.key_format);
                let file = replace_atomically(&self.io, &self.path, header).await?;
                store.kind = Kind::Ready(file);
                store.len = None;
            }
            Some(start) => match parse_header(&self.path, &start)? {
                Header::Current {
                    delimiter,
                    key_format,
                } => {
                    store.delimiter = delimiter;
                    store.key_format = key_format;
                }
                Header::Legacy => {
                    // Its keys stay as 0.1.x wrote them, also after the
                    // migration to a file with a header.
                    store.key_format = KeyFormat::Legacy;
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

    /// Reads a version 2 file through `apply`, cuts off an incomplete tail,
    /// and makes the store ready for appending.
    async fn scan_store<F>(&self, store: &mut Store, apply: F) -> Result<()>
    where
        F: FnMut(Change) -> Result<()>,
    {
        let Scan { rows, live, torn } = scan(&self.path, store.delimiter, apply).await?;
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
        Ok(())
    }

    async fn load_entries<K, V>(&self) -> Result<HashMap<K, V>>
    where
        K: Eq + Hash + Serialize + DeserializeOwned,
        V: DeserializeOwned,
    {
        let mut state = self.state.lock().await;
        let store = self.open(&mut state).await?;
        if matches!(store.kind, Kind::Legacy) {
            return read_legacy(&self.path).await;
        }
        let mut entries = HashMap::new();
        let path = &self.path;
        let key_format = store.key_format;
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
                    let value: V = value_from_json(json).map_err(|e| {
                        PersistentError::decode(
                            EntryPart::Value,
                            location.with_key(render_key(&key)),
                            e,
                        )
                    })?;
                    entries.insert(key, value);
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

    /// The append handle of a store, after migrating a 0.1.x file or reading
    /// an unread one.
    async fn ready<K, V>(&self, store: &mut Store) -> Result<Arc<File>>
    where
        K: Eq + Hash + Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        match &store.kind {
            Kind::Ready(file) => return Ok(Arc::clone(file)),
            Kind::Unscanned => self.scan_store(store, |_| Ok(())).await?,
            Kind::Legacy => self.migrate::<K, V>(store).await?,
        }
        match &store.kind {
            Kind::Ready(file) => Ok(Arc::clone(file)),
            _ => Err(PersistentError::corrupt(
                at(&self.path),
                "store not ready after opening",
            )),
        }
    }

    /// Rewrites a 0.1.x file in format version 2, atomically: with a header,
    /// its keys still in the legacy format.
    async fn migrate<K, V>(&self, store: &mut Store) -> Result<()>
    where
        K: Eq + Hash + Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        let entries: HashMap<K, V> = read_legacy(&self.path).await?;
        let header = header_line(store.delimiter, store.key_format);
        let mut encoder = Encoder::new(store.delimiter, header);
        let mut live = HashSet::with_capacity(entries.len());
        for (key, value) in &entries {
            let change = prepare(&self.path, store.key_format, key, Some(value))?;
            encoder.put(&change.key, change.value.as_deref().unwrap_or_default());
            live.insert(key_hash(&change.key));
        }
        let contents = encoder.finish();
        let file = replace_atomically(&self.io, &self.path, contents).await?;
        tracing::info!(
            path = %self.path.display(),
            entries = entries.len(),
            "migrated a persistent-map 0.1.x csv file to format version 2"
        );
        store.kind = Kind::Ready(file);
        store.len = None;
        store.rows = live.len() as u64;
        store.live = live;
        store.dirty_tail = None;
        Ok(())
    }

    /// Rewrites the file with only its live records, inside a
    /// `persistent_map.compaction` span (the map never compacts a store on
    /// its own: this backend does, so the span is its own).
    async fn compact_store(&self, store: &mut Store) -> Result<()> {
        let span = tracing::info_span!(
            "persistent_map.compaction",
            path = %self.path.display(),
            rows_before = store.rows,
            rows_after = tracing::field::Empty,
        );
        self.compact_rows(store)
            .instrument(span.clone())
            .await
            .inspect(|()| {
                span.record("rows_after", store.rows);
            })
    }

    async fn compact_rows(&self, store: &mut Store) -> Result<()> {
        match store.kind {
            Kind::Legacy => return Ok(()),
            // Reading first cuts off a torn tail, so the rewrite starts from
            // a file whose every record counts.
            Kind::Unscanned => self.scan_store(store, |_| Ok(())).await?,
            Kind::Ready(_) => {}
        }
        let rows_before = store.rows;
        let compacted = compact_contents(&self.path, store.delimiter, store.key_format).await?;
        let rows = compacted.rows();
        let file = replace_atomically(&self.io, &self.path, compacted.contents).await?;
        store.kind = Kind::Ready(file);
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
        let changes = encode(store.key_format)?;
        if changes.is_empty() {
            return Ok(());
        }
        self.check_synced(store)?;
        let file = self.ready::<K, V>(store).await?;

        let mut encoder = Encoder::new(store.delimiter, Vec::new());
        let mut rows = changes.len() as u64;
        if changes.len() > 1 {
            encoder.batch(changes.len());
            rows += 1;
        }
        for change in &changes {
            match &change.value {
                Some(value) => encoder.put(&change.key, value),
                None => encoder.del(&change.key),
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
        for change in &changes {
            let hash = key_hash(&change.key);
            if change.value.is_some() {
                store.live.insert(hash);
            } else {
                store.live.remove(&hash);
            }
        }
        if self
            .options
            .compaction
            .is_due(store.rows, store.live.len() as u64)
        {
            // The write is already acknowledged by the file; a failed
            // compaction leaves the old file, which is still complete.
            if let Err(err) = self.compact_store(store).await {
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

/// Encodes a key and (for a put) a value as text, naming the key on failure.
fn prepare<K: Serialize, V: Serialize>(
    path: &Path,
    key_format: KeyFormat,
    key: &K,
    value: Option<&V>,
) -> Result<Prepared> {
    let location = || at(path).with_key(render_key(key));
    let key_text = key_format
        .encode(key)
        .map_err(|e| PersistentError::encode(EntryPart::Key, location(), e))?;
    let value = value
        .map(|v| {
            value_to_json(v).map_err(|e| PersistentError::encode(EntryPart::Value, location(), e))
        })
        .transpose()?;
    Ok(Prepared {
        key: key_text,
        value,
    })
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
        self.load_entries().await
    }

    async fn load_into(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<()> {
        // Tombstones and later records override earlier ones, so entries are
        // settled per key before the sink sees them.
        for (key, value) in self.load_entries::<K, V>().await? {
            sink(key, value);
        }
        Ok(())
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        self.write::<K, V>(|format| Ok(vec![prepare(&self.path, format, &key, Some(&value))?]))
            .await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        self.write::<K, V>(|format| Ok(vec![prepare::<K, V>(&self.path, format, key, None)?]))
            .await
    }

    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        self.write::<K, V>(|format| {
            batch
                .iter()
                .map(|op| match op {
                    BatchOp::Put { key, value } => prepare(&self.path, format, key, Some(value)),
                    BatchOp::Delete { key } => prepare::<K, V>(&self.path, format, key, None),
                    _ => Err(PersistentError::unknown_change("csv")),
                })
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
        // The store keeps its key format: a cleared store is the same store.
        let header = header_line(store.delimiter, store.key_format);
        let file = replace_atomically(&self.io, &self.path, header).await?;
        store.kind = Kind::Ready(file);
        store.len = None;
        store.rows = 0;
        store.live.clear();
        store.dirty_tail = None;
        store.sync_failed = None;
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_atomic_batch(true)
            .with_exclusive_lock(true)
            .with_durability(match self.options.sync {
                SyncPolicy::EveryWrite => Durability::OnAcknowledge,
                _ => Durability::OnFlush,
            })
    }
}
