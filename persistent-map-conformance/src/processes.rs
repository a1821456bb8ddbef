//! Two OS processes on one shared store, following each other through the
//! backend's change feed: what two live instances in one process show
//! (`two_live_instances_follow_each_other`), checked where it matters, with
//! no memory, runtime or connection pool in common.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use persistent_map_core::{PersistentMap, StorageBackend};

use crate::child::{self, ChildRun, Orders};
use crate::factory::StoreFactory;
use crate::harness::{contents, skip_notice, until};

const CASE: &str = "two_processes_follow_each_other";

/// Keys each process writes for itself, and keys both write.
const OWN: usize = 50;
const SHARED: usize = 10;

/// The two children, by the role each is told.
const ROLES: [&str; 2] = ["a", "b"];

/// What each child reports, and the orders it takes.
const READY: &str = "ready";
const SAW: &str = "saw ";
const STATE: &str = "state ";
const CLOSED: &str = "closed";
const GO: &str = "go";
const CHECK: &str = "check";

fn own_key(role: &str, i: usize) -> String {
    format!("{role}-{i}")
}

fn shared_key(i: usize) -> String {
    format!("shared-{i}")
}

fn value(role: &str, i: usize) -> String {
    format!("{role}{i}")
}

/// For a store shared by live instances (no exclusive lock, and `watch`
/// gives a feed), across processes: two child processes (this test
/// executable run again) open the store before either writes; then each
/// writes 50 keys of its own and the same 10 keys as the other, waits until
/// its map shows every key of the other's, and, once nobody writes any
/// more, until its map equals a fresh load of the store.
/// The store then holds every key, each shared key with one child's value,
/// and both children's maps equal it.
///
/// Prints one `figures[<backend> two processes]:` line: how long each child
/// took, from the start of its own writes, to see all of the other's keys.
///
/// Needs the factory's [`locator`](StoreFactory::locator) and
/// [`attach`](StoreFactory::attach); a backend that declares an exclusive
/// lock, or whose `watch` gives no feed, is not asked.
pub async fn two_processes_follow_each_other<F: StoreFactory>(mut factory: F) {
    if let Some(locator) = child::role(CASE) {
        let part = child::part().expect("the parent names the child's part");
        return follow(factory, &part, &locator).await;
    }
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    if StorageBackend::<String, String>::capabilities(&backend).exclusive_lock {
        skip_notice(
            CASE,
            &"the backend declares an exclusive lock: no two live instances",
        );
        return;
    }
    if StorageBackend::<String, String>::watch(&backend)
        .await
        .expect("watch")
        .is_none()
    {
        skip_notice(
            CASE,
            &"the backend's watch gives no feed: live instances do not follow each other",
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
    drop(backend);
    let mut children = ROLES.map(|role| {
        ChildRun::start_as(CASE, role, &locator)
            .unwrap_or_else(|why| panic!("{CASE}: cannot start child {role}: {why}"))
    });
    for child in &mut children {
        expect_event(child, READY).await;
    }
    for child in &mut children {
        child.order(GO).await;
    }
    let mut saw = Vec::new();
    for child in &mut children {
        saw.push(expect_event(child, SAW).await);
    }
    // Both have written everything: the stores the children load now are final.
    for child in &mut children {
        child.order(CHECK).await;
    }
    let mut states = Vec::new();
    for child in &mut children {
        let json = expect_event(child, STATE).await;
        let state: BTreeMap<String, String> = serde_json::from_str(&json)
            .unwrap_or_else(|err| panic!("{CASE}: a child's state is not a JSON map: {err}"));
        states.push(state);
    }
    for child in &mut children {
        expect_event(child, CLOSED).await;
    }

    let backend = factory
        .reopen()
        .await
        .expect("factory reopens the store the children wrote");
    let map = PersistentMap::<String, String, _>::new(backend)
        .await
        .expect("a map on the store the children wrote");
    let stored: BTreeMap<String, String> = contents(&map).into_iter().collect();
    map.close().await.expect("close");
    assert_eq!(
        stored.len(),
        ROLES.len() * OWN + SHARED,
        "{CASE}: every key of both children, once each: {stored:?}"
    );
    for role in ROLES {
        for i in 0..OWN {
            assert_eq!(
                stored.get(&own_key(role, i)),
                Some(&value(role, i)),
                "{CASE}: child {role}'s key {} in the store",
                own_key(role, i)
            );
        }
    }
    for i in 0..SHARED {
        let stored_value = stored.get(&shared_key(i));
        assert!(
            ROLES
                .iter()
                .any(|role| stored_value == Some(&value(role, i))),
            "{CASE}: {} holds one child's value, not {stored_value:?}",
            shared_key(i)
        );
    }
    for (role, state) in ROLES.iter().zip(&states) {
        assert_eq!(
            state, &stored,
            "{CASE}: child {role}'s map against the store"
        );
    }
    figures(&format!(
        "figures[{} two processes]: {} writes each ({OWN} own, {SHARED} shared); \
         a saw all of b's after {} ms, b saw all of a's after {} ms \
         (from the start of its own writes)",
        backend_name::<F>(),
        OWN + SHARED,
        saw[0],
        saw[1]
    ));
}

/// The rest of the child's next event, which must start with `prefix`;
/// fails the case with the child's standard error otherwise.
async fn expect_event(child: &mut ChildRun, prefix: &str) -> String {
    match child.next().await {
        Some(event) if event.starts_with(prefix) => event[prefix.len()..].to_owned(),
        other => {
            let stderr = child.stderr_after_kill().await;
            panic!("{CASE}: a child said {other:?} where {prefix:?} was due:\n{stderr}");
        }
    }
}

/// The child half: open, wait for the order, write, follow the other, agree
/// with the store.
async fn follow<F: StoreFactory>(mut factory: F, role: &str, locator: &str) {
    let other = ROLES.iter().find(|r| **r != role).copied().unwrap_or("?");
    let mut orders = Orders::new();
    let backend = factory
        .attach(locator)
        .await
        .unwrap_or_else(|err| panic!("{CASE} child {role}: attach {locator}: {err}"));
    let map = PersistentMap::<String, String, _>::new(backend)
        .await
        .unwrap_or_else(|err| panic!("{CASE} child {role}: open a map: {err}"));
    child::report(READY);
    orders.expect(GO).await;

    let started = Instant::now();
    for i in 0..OWN {
        map.insert(own_key(role, i), value(role, i))
            .await
            .unwrap_or_else(|err| panic!("{CASE} child {role}: insert: {err}"));
        if i < SHARED {
            map.insert(shared_key(i), value(role, i))
                .await
                .unwrap_or_else(|err| panic!("{CASE} child {role}: insert: {err}"));
        }
    }
    until(
        || (0..OWN).all(|i| map.get(&own_key(other, i)) == Some(value(other, i))),
        &format!("{CASE}: child {role} sees every key of child {other}"),
    )
    .await;
    child::report(&format!("{SAW}{}", started.elapsed().as_millis()));

    orders.expect(CHECK).await;
    let fresh = PersistentMap::<String, String, _>::new(
        factory
            .reopen()
            .await
            .unwrap_or_else(|err| panic!("{CASE} child {role}: reopen: {err}")),
    )
    .await
    .unwrap_or_else(|err| panic!("{CASE} child {role}: a fresh map: {err}"));
    let stored: HashMap<String, String> = contents(&fresh);
    fresh
        .close()
        .await
        .unwrap_or_else(|err| panic!("{CASE} child {role}: close: {err}"));
    until(
        || contents(&map) == stored,
        &format!("{CASE}: child {role}'s map settles on what the store holds"),
    )
    .await;
    let state: BTreeMap<String, String> = contents(&map).into_iter().collect();
    let json = serde_json::to_string(&state)
        .unwrap_or_else(|err| panic!("{CASE} child {role}: state as JSON: {err}"));
    child::report(&format!("{STATE}{json}"));
    map.close()
        .await
        .unwrap_or_else(|err| panic!("{CASE} child {role}: close: {err}"));
    child::report(CLOSED);
}

/// The backend's type name without its path, for the figures line.
fn backend_name<F: StoreFactory>() -> &'static str {
    let full = std::any::type_name::<F::Backend>();
    let bare = full.split('<').next().unwrap_or(full);
    bare.rsplit("::").next().unwrap_or(bare)
}

/// Prints a figures line past the test harness's output capture, as
/// [`skip_notice`] does.
fn figures(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}
