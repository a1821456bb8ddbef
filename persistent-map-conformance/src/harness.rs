//! Plumbing shared by the cases: a runtime per case, opening and reopening maps.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use persistent_map_core::{PersistentMap, StorageBackend};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::factory::StoreFactory;

/// Tells the person running the tests that `case` was skipped and why.
///
/// Written straight to the process's standard error, which the test
/// harness does not capture, so the skip is visible in a passing run.
pub fn skip_notice(case: &str, reason: &dyn std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIP: {case}: {reason}");
}

/// Runs one case on a fresh multi-threaded runtime, so cases exercise real
/// parallelism whatever test harness calls them.
///
/// # Panics
///
/// When the runtime cannot be built, or when the case fails.
pub fn run_case<F, Fut>(factory: F, case: impl FnOnce(F) -> Fut)
where
    Fut: Future<Output = ()>,
{
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the case")
        .block_on(case(factory));
}

pub(crate) async fn open_fresh<F, K, V>(factory: &mut F) -> PersistentMap<K, V, F::Backend>
where
    F: StoreFactory,
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    F::Backend: StorageBackend<K, V>,
{
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    let map = PersistentMap::new(backend)
        .await
        .expect("a map opens on a fresh store");
    assert!(
        map.is_empty(),
        "a fresh store must be empty, found {} entries",
        map.len()
    );
    map
}

/// Closes `map` (flushing it and releasing the backend) and opens the same store again.
pub(crate) async fn reopen<F, K, V>(
    factory: &mut F,
    map: PersistentMap<K, V, F::Backend>,
) -> PersistentMap<K, V, F::Backend>
where
    F: StoreFactory,
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    F::Backend: StorageBackend<K, V>,
{
    map.close().await.expect("close flushes and stops the map");
    drop(map);
    let backend = factory.reopen().await.expect("factory reopens the store");
    PersistentMap::new(backend)
        .await
        .expect("a map reopens on the same store")
}

/// The map's content as a `HashMap`, for comparisons.
pub(crate) fn contents<K, V, B>(map: &PersistentMap<K, V, B>) -> HashMap<K, V>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    map.iter().collect()
}

/// Asserts two maps are equal, naming the first differing key.
pub(crate) fn assert_same<K, V>(what: &str, found: &HashMap<K, V>, expected: &HashMap<K, V>)
where
    K: Eq + Hash + Debug,
    V: PartialEq + Debug,
{
    for (k, v) in expected {
        match found.get(k) {
            Some(f) => assert_eq!(f, v, "{what}: key {k:?} has the wrong value"),
            None => panic!("{what}: key {k:?} is missing (expected {v:?})"),
        }
    }
    for k in found.keys() {
        assert!(
            expected.contains_key(k),
            "{what}: key {k:?} is present but was never acknowledged or was removed"
        );
    }
}

/// How long a case waits for something that settles on its own (a feed, a
/// sweep). Generous: a loaded 2-core machine must never reach it.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// How often a case looks again at what it waits for.
const POLL: Duration = Duration::from_millis(10);

/// Waits until `condition` holds, failing the case after [`PATIENCE`].
pub(crate) async fn until(condition: impl Fn() -> bool, what: &str) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !condition() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: not within {PATIENCE:?}");
}
