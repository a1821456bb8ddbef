//! "Acknowledged means kept", checked the way a crash would check it: the
//! map and backend are dropped without `close` or `flush`, or the process
//! writing is killed, and the store is opened again.
//!
//! Reopening after `close` cannot see a backend that keeps acknowledged
//! writes in its own memory until `flush`, since `close` flushes.

use std::collections::HashMap;

use persistent_map_core::{Durability, PersistentMap, StorageBackend};

use crate::child::{self, ChildRun};
use crate::factory::StoreFactory;
use crate::harness::{assert_same, contents, open_fresh, skip_notice};

/// How many acknowledgements the parent waits for before it kills the child.
const ACKS_BEFORE_KILL: usize = 200;
/// How many writes the child attempts at most; far more than it gets to.
const CHILD_WRITES: usize = 1_000_000;

fn key(i: usize) -> String {
    format!("k{i:07}")
}

fn value(i: usize) -> String {
    // Long enough that a backend buffering in its own memory does not get
    // its buffer written out by accident.
    format!("{i}:{}", "acknowledged means kept ".repeat(4))
}

/// "Acknowledged means kept": every write a write-through map acknowledged
/// is in the store after the map and its backend are dropped without
/// `close` or `flush`, as a crashing program leaves them.
pub async fn acknowledged_writes_survive_a_drop<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, String, String>(&mut factory).await;
    let mut expected = HashMap::new();
    for i in 0..100 {
        map.insert(key(i), value(i)).await.expect("insert");
        expected.insert(key(i), value(i));
    }
    map.remove(&key(7)).await.expect("remove");
    expected.remove(&key(7));
    // No close, no flush: whatever the backend has not handed to its
    // medium by now is lost, as in a crash.
    drop(map);
    let backend = factory.reopen().await.expect("factory reopens the store");
    let again = PersistentMap::<String, String, _>::new(backend)
        .await
        .expect("a map reopens on the same store");
    assert_same(
        "after drop without close or flush",
        &contents(&again),
        &expected,
    );
    again.close().await.expect("close");
}

/// "Acknowledged means kept: when `save` returns `Ok`, the change must
/// survive the process being killed (`kill -9`) right after" and "no
/// holes": a child process (this test executable run again) writes through
/// a write-through map and reports each acknowledged key; it is killed
/// while still writing, and the store, opened again, holds every
/// acknowledged key and never a key without the ones written before it.
///
/// Needs the factory's [`locator`](StoreFactory::locator) and
/// [`attach`](StoreFactory::attach); a backend that declares
/// [`Durability::Volatile`] keeps nothing past its process, and is not asked.
pub async fn acknowledged_writes_survive_a_kill<F: StoreFactory>(mut factory: F) {
    const CASE: &str = "acknowledged_writes_survive_a_kill";
    if let Some(locator) = child::role(CASE) {
        return write_until_killed(factory, &locator).await;
    }
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    let durability = StorageBackend::<String, String>::capabilities(&backend).durability;
    if durability == Durability::Volatile {
        skip_notice(
            CASE,
            &"the backend declares Durability::Volatile: its store cannot outlive its process",
        );
        return;
    }
    let Some(locator) = factory.locator() else {
        skip_notice(
            CASE,
            &"the factory gives no locator (StoreFactory::locator and attach) \
              to open its store from a child process",
        );
        return;
    };
    // The child opens the store itself: an exclusive lock must be free.
    drop(backend);
    let mut run = match ChildRun::start(CASE, &locator, &[]) {
        Ok(run) => run,
        Err(why) => panic!("{CASE}: cannot start the child process: {why}"),
    };
    let mut acknowledged = 0;
    while acknowledged < ACKS_BEFORE_KILL {
        match run.next().await {
            Some(line) if line.starts_with("ack ") => acknowledged += 1,
            Some(line) if line.starts_with("failed ") => {
                let stderr = run.stderr_after_kill().await;
                panic!("{CASE}: the child {line}\n{stderr}");
            }
            Some(_) => {}
            None => {
                let stderr = run.stderr_after_kill().await;
                panic!(
                    "{CASE}: the child stopped after {acknowledged} acknowledgements:\n{stderr}"
                );
            }
        }
    }
    run.kill().await;
    let backend = factory
        .reopen()
        .await
        .expect("factory reopens the store after the kill");
    let map = PersistentMap::<String, String, _>::new(backend)
        .await
        .expect("a map reopens on the store the killed child wrote");
    let stored = contents(&map);
    for i in 0..acknowledged {
        assert_eq!(
            stored.get(&key(i)),
            Some(&value(i)),
            "{CASE}: key {} was acknowledged before the kill but is not stored \
             ({} of {acknowledged} acknowledged keys are there)",
            key(i),
            (0..acknowledged)
                .filter(|i| stored.contains_key(&key(*i)))
                .count()
        );
    }
    let kept = stored.len();
    for i in 0..kept {
        assert_eq!(
            stored.get(&key(i)),
            Some(&value(i)),
            "{CASE}: a hole: {kept} keys are stored, but not key {}",
            key(i)
        );
    }
    map.close().await.expect("close");
}

/// The child half: write through until killed, reporting each acknowledgement.
async fn write_until_killed<F: StoreFactory>(mut factory: F, locator: &str) {
    let backend = match factory.attach(locator).await {
        Ok(backend) => backend,
        Err(err) => return child::report(&format!("failed to attach {locator}: {err}")),
    };
    let map = match PersistentMap::<String, String, _>::new(backend).await {
        Ok(map) => map,
        Err(err) => return child::report(&format!("failed to open a map: {err}")),
    };
    for i in 0..CHILD_WRITES {
        if let Err(err) = map.insert(key(i), value(i)).await {
            return child::report(&format!("failed to insert {}: {err}", key(i)));
        }
        child::report(&format!("ack {i}"));
    }
}
