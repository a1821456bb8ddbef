//! Rules of the map that must hold on every backend and in both write modes
//! (write-through and write-behind): transactions, closures that read the
//! map or panic, a tiny queue, `close` racing writers, dropping and
//! reopening, handles, and removals on a shared store.
//!
//! Each case runs once per [`Mode`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use persistent_map_core::{PersistentError, PersistentMap, StorageBackend, WriteBehind};

use crate::factory::StoreFactory;
use crate::harness::{assert_same, contents};

/// The write modes every case runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Through,
    Behind,
}

const MODES: [Mode; 2] = [Mode::Through, Mode::Behind];

/// How long a case waits for something that would hang forever if the map
/// deadlocked. Generous: a loaded 2-core machine must never reach it.
const HANG: Duration = Duration::from_secs(120);

type Map<F> = PersistentMap<String, String, <F as StoreFactory>::Backend>;

async fn open_mode<F: StoreFactory>(
    factory: &mut F,
    mode: Mode,
    fresh: bool,
    max_pending: Option<usize>,
) -> Result<Map<F>, PersistentError> {
    let backend = if fresh {
        factory.fresh().await?
    } else {
        factory.reopen().await?
    };
    let mut builder = PersistentMap::builder(backend);
    if let Some(bound) = max_pending {
        builder = builder.max_pending(bound);
    }
    if mode == Mode::Behind {
        builder = builder.write_behind(WriteBehind::new().max_delay(Duration::from_millis(2)));
    }
    builder.build().await
}

async fn fresh_map<F: StoreFactory>(factory: &mut F, mode: Mode) -> Map<F> {
    open_mode(factory, mode, true, None)
        .await
        .unwrap_or_else(|err| panic!("{mode:?}: a map opens on a fresh store: {err}"))
}

/// Closes `map` and returns what the store holds, read by a new map.
async fn stored_after_close<F: StoreFactory>(
    factory: &mut F,
    map: Map<F>,
    mode: Mode,
) -> HashMap<String, String> {
    map.close()
        .await
        .unwrap_or_else(|err| panic!("{mode:?}: close: {err}"));
    drop(map);
    let again = open_mode(factory, Mode::Through, false, None)
        .await
        .unwrap_or_else(|err| panic!("{mode:?}: reopen: {err}"));
    let stored = contents(&again);
    again.close().await.expect("close the reopened map");
    stored
}

async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, work)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {HANG:?}: the map is stuck"))
}

fn atomic<F: StoreFactory>(map: &Map<F>) -> bool {
    StorageBackend::<String, String>::capabilities(map.backend()).atomic_batch
}

fn number(value: Option<String>) -> i64 {
    value.map_or(0, |v| v.parse().expect("a stored number"))
}

/// "The cache and the store see the same changes in the same order in both
/// modes": a transaction's changes are visible at once, and later writes
/// decide on them. Backends without atomic batches refuse transactions.
pub async fn transactions_reach_the_cache_in_every_mode<F: StoreFactory>(mut factory: F) {
    for mode in MODES {
        let map = fresh_map(&mut factory, mode).await;
        map.insert("alice".into(), "100".into())
            .await
            .expect("insert");
        map.insert("bob".into(), "0".into()).await.expect("insert");
        let moved = map
            .transaction(|tx| {
                let alice = number(tx.get(&"alice".to_string()));
                let bob = number(tx.get(&"bob".to_string()));
                tx.insert("alice".into(), (alice - 30).to_string());
                tx.insert("bob".into(), (bob + 30).to_string());
                30
            })
            .await;
        if !atomic::<F>(&map) {
            assert!(
                matches!(moved, Err(PersistentError::Unsupported { .. })),
                "{mode:?}: a transaction on a backend without atomic batches must be refused, got {moved:?}"
            );
            map.close().await.expect("close");
            continue;
        }
        assert_eq!(moved.expect("transaction"), 30);
        assert_eq!(
            map.get("alice"),
            Some("70".into()),
            "{mode:?}: the cache shows the transaction"
        );
        assert_eq!(
            map.get("bob"),
            Some("30".into()),
            "{mode:?}: the cache shows the transaction"
        );
        let after = map
            .update(&"alice".to_string(), |v| {
                Some((number(v.cloned()) - 10).to_string())
            })
            .await
            .expect("update");
        assert_eq!(
            after,
            Some("60".into()),
            "{mode:?}: update decides on the transaction's value"
        );
        let expected: HashMap<String, String> = [("alice", "60"), ("bob", "30")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        assert_same(&format!("{mode:?}: cache"), &contents(&map), &expected);
        let stored = stored_after_close(&mut factory, map, mode).await;
        assert_same(&format!("{mode:?}: store"), &stored, &expected);
    }
}

/// Writers mixing `insert`, `transaction` and `update` on few keys with a
/// queue bound of 2 all finish (no deadlock), and the store ends equal to
/// the cache.
pub async fn mixed_writers_with_a_tiny_queue_finish<F: StoreFactory>(mut factory: F) {
    for mode in MODES {
        let map = open_mode(&mut factory, mode, true, Some(2))
            .await
            .expect("open with a tiny queue");
        let transactions = atomic::<F>(&map);
        let tasks: Vec<_> = (0..8_u64)
            .map(|task| {
                let map = map.clone();
                tokio::spawn(async move {
                    for step in 0..40_u64 {
                        let key = format!("k{}", (task * 7 + step) % 16);
                        match step % 3 {
                            0 => map.insert(key, format!("{task}:{step}")).await.map(drop),
                            1 if transactions => {
                                let other = format!("k{}", (task + step) % 16);
                                map.transaction(move |tx| {
                                    let a = tx.get(&key).unwrap_or_default();
                                    tx.insert(other, format!("{a}+"));
                                    tx.insert(key, format!("{task}:{step}"));
                                })
                                .await
                            }
                            _ => map
                                .update(&key, move |v| {
                                    Some(format!("{}|{task}", v.map_or("", String::as_str).len()))
                                })
                                .await
                                .map(drop),
                        }
                        .unwrap_or_else(|err| panic!("{mode:?}: task {task} step {step}: {err}"));
                    }
                })
            })
            .collect();
        within(
            &format!("{mode:?}: 8 mixed writers on a queue of 2"),
            async {
                for task in tasks {
                    task.await.expect("writer task");
                }
            },
        )
        .await;
        let cache = contents(&map);
        let stored = stored_after_close(&mut factory, map, mode).await;
        assert_same(&format!("{mode:?}: store against cache"), &stored, &cache);
    }
}

/// "User code never kills the map": a panic in the closure of `update`,
/// `get_or_insert_with`, `retain` or `transaction` resumes in the caller's
/// task, applies nothing, and every other write before and after it is kept.
pub async fn panicking_closures_leave_the_map_working<F: StoreFactory>(mut factory: F) {
    for mode in MODES {
        let map = fresh_map(&mut factory, mode).await;
        map.insert("k".into(), "before".into())
            .await
            .expect("insert");
        let transactions = atomic::<F>(&map);

        let calls: Vec<(&str, tokio::task::JoinHandle<()>)> = vec![
            ("update", {
                let map = map.clone();
                tokio::spawn(async move {
                    let _ = map
                        .update(&"k".to_string(), |_| -> Option<String> {
                            panic!("boom in update")
                        })
                        .await;
                })
            }),
            ("get_or_insert_with", {
                let map = map.clone();
                tokio::spawn(async move {
                    let _ = map
                        .get_or_insert_with("new".to_string(), || -> String {
                            panic!("boom in get_or_insert_with")
                        })
                        .await;
                })
            }),
            ("retain", {
                let map = map.clone();
                tokio::spawn(async move {
                    let _ = map
                        .retain(|_, _| -> bool { panic!("boom in retain") })
                        .await;
                })
            }),
        ];
        let mut calls = calls;
        if transactions {
            let tx_map = map.clone();
            calls.push((
                "transaction",
                tokio::spawn(async move {
                    let _ = tx_map
                        .transaction(|tx| {
                            tx.insert("k".into(), "from a doomed transaction".into());
                            panic!("boom in transaction")
                        })
                        .await;
                }),
            ));
        }
        for (what, call) in calls {
            let err = within(what, call)
                .await
                .expect_err("the panic reaches the caller's task");
            assert!(err.is_panic(), "{mode:?}: {what}: {err}");
            let message = err.into_panic();
            let text = message.downcast_ref::<&str>().copied().unwrap_or_default();
            assert!(
                text.starts_with("boom in"),
                "{mode:?}: {what}: payload {text:?}"
            );
        }
        assert_eq!(
            map.get("k"),
            Some("before".into()),
            "{mode:?}: a panicking closure changed nothing"
        );
        assert!(
            !map.contains_key("new"),
            "{mode:?}: a panicking closure inserted nothing"
        );
        assert!(!map.is_closed(), "{mode:?}: the map is still open");
        map.insert("after".into(), "1".into())
            .await
            .unwrap_or_else(|err| panic!("{mode:?}: writes work after the panics: {err}"));
        map.flush().await.expect("flush");
        let expected: HashMap<String, String> = [("k", "before"), ("after", "1")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let stored = stored_after_close(&mut factory, map, mode).await;
        assert_same(&format!("{mode:?}: store"), &stored, &expected);
    }
}

/// Closures given to `update`, `get_or_insert_with`, `retain` and
/// `transaction` hold no lock of the map, so they may read it.
pub async fn closures_may_read_the_map<F: StoreFactory>(mut factory: F) {
    for mode in MODES {
        let map = fresh_map(&mut factory, mode).await;
        map.insert("a".into(), "1".into()).await.expect("insert");
        map.insert("b".into(), "2".into()).await.expect("insert");
        let transactions = atomic::<F>(&map);
        within(&format!("{mode:?}: closures reading the map"), async {
            let reader = map.clone();
            let updated = map
                .update(&"a".to_string(), move |v| {
                    let seen = reader.get("a");
                    assert_eq!(seen.as_ref(), v, "the closure sees the value it is given");
                    Some(format!(
                        "{}+{}",
                        reader.len(),
                        reader.get("b").unwrap_or_default()
                    ))
                })
                .await
                .expect("update");
            assert_eq!(updated, Some("2+2".into()));

            let reader = map.clone();
            let value = map
                .get_or_insert_with("c".to_string(), move || {
                    format!("{}", reader.contains_key("c"))
                })
                .await
                .expect("get_or_insert_with");
            assert_eq!(value, "false");

            let reader = map.clone();
            let removed = map
                .retain(move |k, _| reader.get(k).is_some() && k != "b")
                .await
                .expect("retain");
            assert_eq!(removed, 1);

            if transactions {
                let reader = map.clone();
                map.transaction(move |tx| {
                    let outside = reader.get("a").unwrap_or_default();
                    tx.insert("d".into(), outside);
                })
                .await
                .expect("transaction");
                assert_eq!(map.get("d"), Some("2+2".into()));
            }
        })
        .await;
        let cache = contents(&map);
        let stored = stored_after_close(&mut factory, map, mode).await;
        assert_same(&format!("{mode:?}: store against cache"), &stored, &cache);
    }
}

/// Every write that returned `Ok` before `close` is kept, in both modes,
/// even while other tasks keep writing; writes after it return
/// [`PersistentError::Closed`].
pub async fn acknowledged_before_close_is_kept<F: StoreFactory>(mut factory: F) {
    for mode in MODES {
        let map = fresh_map(&mut factory, mode).await;
        let started = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|task| {
                let map = map.clone();
                let started = Arc::clone(&started);
                tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    for i in 0.. {
                        let key = format!("t{task}-{i}");
                        match map.insert(key.clone(), i.to_string()).await {
                            Ok(_) => acknowledged.push(key),
                            Err(PersistentError::Closed) => break,
                            Err(err) => panic!("unexpected error {err}"),
                        }
                        if i >= 20 {
                            started.store(true, Ordering::Release);
                        }
                    }
                    acknowledged
                })
            })
            .collect();
        within("the writers to get going", async {
            while !started.load(Ordering::Acquire) {
                tokio::task::yield_now().await;
            }
        })
        .await;
        map.close().await.expect("close");
        assert!(map.is_closed());
        let mut acknowledged = Vec::new();
        for writer in writers {
            acknowledged.extend(within("a writer to stop", writer).await.expect("writer"));
        }
        let stored = stored_after_close(&mut factory, map, mode).await;
        let lost: Vec<&String> = acknowledged
            .iter()
            .filter(|key| !stored.contains_key(*key))
            .collect();
        assert!(
            lost.is_empty(),
            "{mode:?}: {} of {} acknowledged writes are missing after close, e.g. {:?}",
            lost.len(),
            acknowledged.len(),
            lost.first()
        );
    }
}

/// Handles are cheap clones of one map: a write through one is seen through
/// the other, `close` on one closes all, and the store is released when the
/// last one is dropped.
pub async fn clones_share_one_map<F: StoreFactory>(mut factory: F) {
    for mode in MODES {
        let map = fresh_map(&mut factory, mode).await;
        let other = map.clone();
        other
            .insert("k".into(), "v".into())
            .await
            .expect("insert through a clone");
        assert_eq!(
            map.get("k"),
            Some("v".into()),
            "{mode:?}: clones share the cache"
        );
        other.close().await.expect("close");
        assert!(
            map.is_closed() && other.is_closed(),
            "{mode:?}: close closes every clone"
        );
        assert!(
            matches!(
                map.insert("x".into(), "y".into()).await,
                Err(PersistentError::Closed)
            ),
            "{mode:?}: a closed map refuses writes"
        );
        assert_eq!(
            map.get("k"),
            Some("v".into()),
            "{mode:?}: a closed map still reads"
        );
        map.close().await.expect("closing twice is fine");
        drop(other);
        drop(map);
        let again = open_mode(&mut factory, mode, false, None)
            .await
            .expect("the store is released with the last clone");
        assert_eq!(again.get("k"), Some("v".into()));
        again.close().await.expect("close");
    }
}

/// Dropping the last handle releases the store promptly: opening it again
/// right after `drop(map)` works, every time, on a multi-threaded and on a
/// current-thread runtime (the one `#[tokio::test]` uses), and sees every
/// acknowledged write (write-behind: every flushed one).
pub async fn drop_then_reopen_releases_the_store<F: StoreFactory>(mut factory: F) {
    const ROUNDS: u32 = 50;
    factory = drop_reopen_rounds(factory, ROUNDS, "multi-thread").await;
    let done = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
            .block_on(drop_reopen_rounds(factory, ROUNDS, "current-thread"))
    })
    .await;
    done.expect("the current-thread rounds");
}

async fn drop_reopen_rounds<F: StoreFactory>(mut factory: F, rounds: u32, runtime: &str) -> F {
    for mode in MODES {
        let mut map = fresh_map(&mut factory, mode).await;
        for round in 0..rounds {
            map.insert("round".into(), round.to_string())
                .await
                .expect("insert");
            if mode == Mode::Behind {
                map.flush().await.expect("flush");
            }
            drop(map);
            map = open_mode(&mut factory, mode, false, None)
                .await
                .unwrap_or_else(|err| {
                    panic!("{runtime}, {mode:?}, round {round}: reopening right after drop failed: {err} ({err:?})")
                });
            assert_eq!(
                map.get("round"),
                Some(round.to_string()),
                "{runtime}, {mode:?}, round {round}: the reopened map lost the last write"
            );
        }
        map.close().await.expect("close");
    }
    factory
}

/// On a store others may write (no exclusive lock), `remove` always reaches
/// the store, even for a key this map's cache has not seen: another
/// instance's insert is removed. With an exclusive lock there is no other
/// writer, and nothing to check.
pub async fn remove_reaches_a_shared_store<F: StoreFactory>(mut factory: F) {
    for mode in MODES {
        let map = fresh_map(&mut factory, mode).await;
        if StorageBackend::<String, String>::capabilities(map.backend()).exclusive_lock {
            map.close().await.expect("close");
            return;
        }
        let other = open_mode(&mut factory, Mode::Through, false, None)
            .await
            .expect("a second instance on the shared store");
        other
            .insert("theirs".into(), "1".into())
            .await
            .expect("insert through the other instance");
        map.remove(&"theirs".to_string()).await.expect("remove");
        map.flush().await.expect("flush");
        other.close().await.expect("close the other instance");
        let stored = stored_after_close(&mut factory, map, mode).await;
        assert!(
            !stored.contains_key("theirs"),
            "{mode:?}: a removal of a key another instance inserted was not written"
        );
    }
}
