//! What a backend provides to be checked: a way to open a new store and to
//! open the same store again.

use persistent_map_core::{async_trait, Result, StorageBackend};

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
}
