//! What a backend provides to be checked: a way to open a new store and to
//! open the same store again, and optional hooks for the cases that need
//! more (another process, the store's files, an injected failure).

use std::path::PathBuf;

use persistent_map_core::{async_trait, PersistentError, Result, StorageBackend};

use crate::types::{Fragile, Point, Record};

/// A backend that can hold every key and value type the suite uses.
///
/// Implemented automatically for any backend generic over serde types.
pub trait ConformanceBackend:
    StorageBackend<String, String>
    + StorageBackend<u64, Record>
    + StorageBackend<(u32, String), Vec<u8>>
    + StorageBackend<Point, Option<String>>
    + StorageBackend<String, Fragile>
    + Send
    + Sync
    + 'static
{
}

impl<T> ConformanceBackend for T where
    T: StorageBackend<String, String>
        + StorageBackend<u64, Record>
        + StorageBackend<(u32, String), Vec<u8>>
        + StorageBackend<Point, Option<String>>
        + StorageBackend<String, Fragile>
        + Send
        + Sync
        + 'static
{
}

/// Opens stores for the suite. Each case gets its own factory.
///
/// ```
/// use persistent_map_conformance::{async_trait, StoreFactory};
/// use persistent_map_memory::InMemoryBackend;
///
/// #[derive(Default)]
/// struct MemoryFactory {
///     current: Option<InMemoryBackend>,
/// }
///
/// #[async_trait]
/// impl StoreFactory for MemoryFactory {
///     type Backend = InMemoryBackend;
///
///     async fn fresh(&mut self) -> persistent_map_core::Result<InMemoryBackend> {
///         let store = InMemoryBackend::new();
///         self.current = Some(store.clone());
///         Ok(store)
///     }
///
///     async fn reopen(&mut self) -> persistent_map_core::Result<InMemoryBackend> {
///         Ok(self.current.clone().expect("fresh was called first"))
///     }
/// }
/// ```
#[async_trait]
pub trait StoreFactory: Send + 'static {
    /// The backend under test.
    type Backend: ConformanceBackend;

    /// Opens a new, empty store and remembers it for [`reopen`](Self::reopen).
    ///
    /// # Errors
    ///
    /// When the store cannot be created; the case then fails.
    async fn fresh(&mut self) -> Result<Self::Backend>;

    /// Opens the store made by the last [`fresh`](Self::fresh) again, as a
    /// restarted process would. The suite closes and drops every map on the
    /// store before calling it, except where a case checks locking.
    ///
    /// # Errors
    ///
    /// When the store cannot be opened (for example it is locked).
    async fn reopen(&mut self) -> Result<Self::Backend>;

    /// A text naming the store made by the last [`fresh`](Self::fresh), from
    /// which [`attach`](Self::attach) in another process (a copy of this
    /// test executable) opens the same store: a path, a table name, a key
    /// prefix. `None` (the default) means the store cannot be reached from
    /// another process, and the cases that run a child
    /// ([`acknowledged_writes_survive_a_kill`](crate::cases::acknowledged_writes_survive_a_kill),
    /// [`two_processes_follow_each_other`](crate::cases::two_processes_follow_each_other))
    /// print a `SKIP:` notice saying so.
    ///
    /// ```
    /// # use std::path::PathBuf;
    /// # struct Factory { current: Option<PathBuf> }
    /// # impl Factory {
    /// fn locator(&self) -> Option<String> {
    ///     self.current.as_ref().map(|path| path.display().to_string())
    /// }
    /// # }
    /// ```
    fn locator(&self) -> Option<String> {
        None
    }

    /// Opens the store named by `locator` (a [`locator`](Self::locator) of
    /// another process's factory) on a factory the suite has just built, in
    /// a child process, and remembers it for [`reopen`](Self::reopen). Needed
    /// only when `locator` gives `Some`.
    ///
    /// ```ignore
    /// async fn attach(&mut self, locator: &str) -> persistent_map_core::Result<MyBackend> {
    ///     self.current = Some(PathBuf::from(locator));
    ///     MyBackend::open(locator).await
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// When the store cannot be opened. The default refuses with
    /// [`PersistentError::Unsupported`].
    async fn attach(&mut self, locator: &str) -> Result<Self::Backend> {
        let _ = locator;
        Err(PersistentError::Unsupported {
            backend: "conformance factory",
            feature: "attach (opening a store by its locator in another process)",
        })
    }

    /// The files that make up the store made by the last
    /// [`fresh`](Self::fresh) (data files, journals, logs; directories
    /// count for the files inside them), so the suite can check that
    /// `flush` syncs them
    /// ([`flush_syncs_the_store_files`](crate::cases::flush_syncs_the_store_files)).
    /// Empty (the default) means the store is not made of local files, and
    /// the case prints a `SKIP:` notice.
    ///
    /// ```
    /// # use std::path::PathBuf;
    /// # struct Factory { dir: PathBuf }
    /// # impl Factory {
    /// fn files(&self) -> Vec<PathBuf> {
    ///     vec![self.dir.clone()]
    /// }
    /// # }
    /// ```
    fn files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Makes every later write of a key whose stored form contains `key`
    /// fail inside the store made by the last [`fresh`](Self::fresh), with
    /// the store's own mechanism (a trigger that raises an error, for
    /// example), not a wrapper around the backend: the case
    /// [`a_failure_in_the_middle_of_a_batch`](crate::cases::a_failure_in_the_middle_of_a_batch)
    /// then checks what a batch that fails half-way leaves behind.
    ///
    /// Returns whether the failure is armed; `false` (the default) makes
    /// that case print a `SKIP:` notice.
    ///
    /// ```ignore
    /// async fn fail_writes_of(&mut self, key: &str) -> persistent_map_core::Result<bool> {
    ///     let sql = format!(
    ///         "CREATE TRIGGER fail BEFORE INSERT ON kv WHEN instr(NEW.key, '{key}') > 0 \
    ///          BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    ///     );
    ///     self.admin_connection().execute(&sql).await?;
    ///     Ok(true)
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// When the failure could not be armed; the case then fails.
    async fn fail_writes_of(&mut self, key: &str) -> Result<bool> {
        let _ = key;
        Ok(false)
    }
}
