//! "Failed means not applied", with the failure where it hurts: inside the
//! store, half-way through a batch, injected by the factory with the
//! store's own mechanism.

use std::collections::HashMap;

use persistent_map_core::StorageBackend;

use crate::factory::StoreFactory;
use crate::harness::{assert_same, contents, open_fresh, reopen, skip_notice};

/// The key whose writes the factory makes fail: distinctive, so that a
/// trigger matching it by substring hits nothing else.
const POISON: &str = "poison-7c1e5a";

/// "When a batch fails on a backend that declares atomic batches, none of
/// it happened; without atomic batches, a prefix of it may have been
/// applied, never a change after the one that failed", and the map's cache
/// agrees with the store afterwards.
///
/// An `insert_many` whose third change the store refuses (armed through
/// [`fail_writes_of`](StoreFactory::fail_writes_of)) fails; the cache then
/// equals the store, and the store, reopened, holds what it held before
/// plus (without atomic batches) a prefix of the changes before the one
/// that failed.
pub async fn a_failure_in_the_middle_of_a_batch<F: StoreFactory>(mut factory: F) {
    const CASE: &str = "a_failure_in_the_middle_of_a_batch";
    let map = open_fresh::<F, String, String>(&mut factory).await;
    let mut before = HashMap::new();
    for k in ["kept 1", "kept 2", "a"] {
        map.insert(k.to_owned(), format!("old {k}"))
            .await
            .expect("insert");
        before.insert(k.to_owned(), format!("old {k}"));
    }
    let armed = factory
        .fail_writes_of(POISON)
        .await
        .expect("the factory arms the injected failure");
    if !armed {
        skip_notice(
            CASE,
            &"the factory cannot make a write fail inside the store \
              (StoreFactory::fail_writes_of)",
        );
        map.close().await.expect("close");
        return;
    }
    let atomic = StorageBackend::<String, String>::capabilities(map.backend()).atomic_batch;
    let batch = [
        ("a", "new a"),
        ("b", "new b"),
        (POISON, "refused"),
        ("c", "new c"),
        ("kept 1", "new kept 1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let err = map
        .insert_many(batch.clone())
        .await
        .expect_err("a batch the store refuses half-way must fail");
    let cache = contents(&map);
    let map = reopen(&mut factory, map).await;
    let stored = contents(&map);
    assert_same(
        &format!("{CASE}: the store after the failure ({err}) against the cache"),
        &stored,
        &cache,
    );
    let applied = (0..=2)
        .map(|n| {
            let mut state = before.clone();
            state.extend(batch[..n].iter().cloned());
            state
        })
        .position(|state| state == stored);
    match (atomic, applied) {
        (true, Some(0)) | (false, Some(_)) => {}
        (true, _) => panic!(
            "{CASE}: the backend declares atomic batches, yet the failed batch \
             ({err}) left {stored:?} instead of {before:?}"
        ),
        (false, None) => panic!(
            "{CASE}: a failed batch ({err}) left {stored:?}: not the store before it \
             ({before:?}) plus a prefix of the changes before the one that failed"
        ),
    }
    map.close().await.expect("close");
}
