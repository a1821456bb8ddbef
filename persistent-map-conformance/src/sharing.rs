//! Rules for a store several live instances share: what `watch` announces
//! and what `load_keys` answers.

use std::time::Duration;

use futures::StreamExt as _;
use persistent_map_core::{
    BatchOp, MapEvent, Origin, PersistentMap, RemoteChange, RemoteChanges, StorageBackend,
    Subscription,
};

use crate::factory::StoreFactory;
use crate::harness::{skip_notice, until, PATIENCE};

/// "`load_keys` returns the current stored value of each of `keys` (`None`
/// for a missing key), in order": the answer follows the order asked, not
/// the store's, with missing keys in their place.
pub async fn load_keys_answers_in_the_order_asked<F: StoreFactory>(mut factory: F) {
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    let stored: std::collections::HashMap<String, String> =
        backend.load_all().await.expect("a fresh store loads");
    assert!(stored.is_empty(), "a fresh store must be empty");
    for k in ["a", "b", "c", "d"] {
        backend
            .save(k.to_owned(), format!("value of {k}"))
            .await
            .expect("save");
    }
    let asked: Vec<String> = ["d", "missing", "a", "c", "b", "a"]
        .map(String::from)
        .to_vec();
    let answer = StorageBackend::<String, String>::load_keys(&backend, &asked)
        .await
        .expect("load_keys");
    let expected: Vec<(String, Option<String>)> = asked
        .iter()
        .map(|k| {
            let value = (k != "missing").then(|| format!("value of {k}"));
            (k.clone(), value)
        })
        .collect();
    assert_eq!(
        answer, expected,
        "load_keys must answer each key asked, in the order asked"
    );
}

/// For a store shared by live instances (no exclusive lock, and `watch`
/// gives a feed): "the backend must leave out changes made through itself",
/// each instance hears of the other's writes, and two maps on the store
/// follow each other's inserts and removals.
///
/// The echo check relies on a feed that delivers announcements in the
/// order the store saw the writes (as one notification channel does): an
/// instance's own write made before another instance's write would be
/// announced before it.
pub async fn two_live_instances_follow_each_other<F: StoreFactory>(mut factory: F) {
    const CASE: &str = "two_live_instances_follow_each_other";
    let first = factory.fresh().await.expect("factory opens a fresh store");
    if StorageBackend::<String, String>::capabilities(&first).exclusive_lock {
        skip_notice(
            CASE,
            &"the backend declares an exclusive lock: no two live instances",
        );
        return;
    }
    let Some(mut first_feed) = StorageBackend::<String, String>::watch(&first)
        .await
        .expect("watch")
    else {
        skip_notice(
            CASE,
            &"the backend's watch gives no feed: live instances do not follow each other",
        );
        return;
    };
    let second = factory
        .reopen()
        .await
        .expect("a second live instance on the shared store");
    let mut second_feed = StorageBackend::<String, String>::watch(&second)
        .await
        .expect("watch")
        .expect("the second instance of a store with a feed has one too");

    first
        .save("from first".to_owned(), "1".to_owned())
        .await
        .expect("save through the first instance");
    second
        .save("from second".to_owned(), "2".to_owned())
        .await
        .expect("save through the second instance");
    let heard = until_announced(&mut second_feed, "from first").await;
    assert!(
        !heard.iter().any(|k| k == "from second"),
        "the second instance heard its own write announced back: {heard:?}"
    );
    let heard = until_announced(&mut first_feed, "from second").await;
    assert!(
        !heard.iter().any(|k| k == "from first"),
        "the first instance heard its own write announced back: {heard:?}"
    );
    // Once more the other way round, so each feed is checked after its
    // own instance's write.
    first
        .save("again from first".to_owned(), "3".to_owned())
        .await
        .expect("save");
    let heard = until_announced(&mut second_feed, "again from first").await;
    assert!(
        !heard.iter().any(|k| k == "from second"),
        "the second instance heard its own write announced back: {heard:?}"
    );
    let answer = StorageBackend::<String, String>::load_keys(
        &second,
        &["again from first".to_owned(), "from first".to_owned()],
    )
    .await
    .expect("load_keys on the other instance");
    assert_eq!(
        answer,
        vec![
            ("again from first".to_owned(), Some("3".to_owned())),
            ("from first".to_owned(), Some("1".to_owned())),
        ],
        "load_keys on the second instance sees the first one's writes, in the order asked"
    );
    drop((first_feed, second_feed, first, second));

    let (one, two) = open_two_maps(&mut factory).await;
    one.insert("by map one".into(), "a".into())
        .await
        .expect("insert");
    until(
        || two.get("by map one") == Some("a".into()),
        "map two sees map one's insert",
    )
    .await;
    two.remove(&"by map one".to_string()).await.expect("remove");
    until(
        || !one.contains_key("by map one"),
        "map one sees map two's removal",
    )
    .await;
    two.insert("by map two".into(), "b".into())
        .await
        .expect("insert");
    until(
        || one.get("by map two") == Some("b".into()),
        "map one sees map two's insert",
    )
    .await;
    one.close().await.expect("close");
    two.close().await.expect("close");
}

/// For a store shared by live instances whose `watch` gives a feed: a
/// map's subscription reports another instance's writes with
/// [`Origin::Remote`] and its own with [`Origin::Local`], in order. A
/// backend that announces an instance's own writes back to it fails here
/// too: its map would re-read them and report them as remote.
pub async fn subscription_marks_remote_changes<F: StoreFactory>(mut factory: F) {
    const CASE: &str = "subscription_marks_remote_changes";
    let Some((one, two)) = two_live_maps(&mut factory, CASE, false).await else {
        return;
    };
    let mut seen_by_one = one.subscribe();
    let mut seen_by_two = two.subscribe();
    let s = |text: &str| text.to_owned();

    one.insert(s("from one"), s("1")).await.expect("insert");
    let remote_insert = MapEvent::Inserted {
        key: s("from one"),
        old: None,
        value: s("1"),
        origin: Origin::Remote,
    };
    let heard = until_event(&mut seen_by_two, &remote_insert).await;
    assert_eq!(
        heard,
        [remote_insert],
        "map two reports map one's insert as remote, and nothing else"
    );

    two.insert(s("from two"), s("2")).await.expect("insert");
    let remote_insert = MapEvent::Inserted {
        key: s("from two"),
        old: None,
        value: s("2"),
        origin: Origin::Remote,
    };
    let heard = until_event(&mut seen_by_one, &remote_insert).await;
    assert_eq!(
        heard,
        [
            MapEvent::Inserted {
                key: s("from one"),
                old: None,
                value: s("1"),
                origin: Origin::Local,
            },
            remote_insert,
        ],
        "map one reports its own insert as local (never announced back as remote), \
         then map two's as remote"
    );

    two.remove(&s("from one")).await.expect("remove");
    let remote_removal = MapEvent::Removed {
        key: s("from one"),
        old: Some(s("1")),
        origin: Origin::Remote,
    };
    let heard = until_event(&mut seen_by_one, &remote_removal).await;
    assert_eq!(
        heard,
        [remote_removal],
        "map one reports map two's removal as remote"
    );
    let own = until_event(
        &mut seen_by_two,
        &MapEvent::Removed {
            key: s("from one"),
            old: Some(s("1")),
            origin: Origin::Local,
        },
    )
    .await;
    assert_eq!(
        own.len(),
        2,
        "map two reports its own insert and removal, as local: {own:?}"
    );
    one.close().await.expect("close");
    two.close().await.expect("close");
}

/// Reads `events` until `wanted` arrives, returning every event read.
async fn until_event(
    events: &mut Subscription<String, String>,
    wanted: &MapEvent<String, String>,
) -> Vec<MapEvent<String, String>> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.next().await {
            let done = event == *wanted;
            seen.push(event);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    match found {
        Ok(true) => seen,
        Ok(false) => panic!("the subscription ended before {wanted:?} (saw {seen:?})"),
        Err(_) => panic!("no {wanted:?} within {PATIENCE:?} (saw {seen:?})"),
    }
}

/// Reads `feed` until it announces `key`, returning every key it announced.
async fn until_announced(feed: &mut RemoteChanges<String>, key: &str) -> Vec<String> {
    let mut heard = Vec::new();
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(change) = feed.next().await {
            if let RemoteChange::Changed(keys) = change {
                let done = keys.iter().any(|k| k == key);
                heard.extend(keys);
                if done {
                    return true;
                }
            }
        }
        false
    })
    .await;
    match found {
        Ok(true) => heard,
        Ok(false) => panic!("the feed ended before it announced {key:?} (heard {heard:?})"),
        Err(_) => panic!("the feed did not announce {key:?} within {PATIENCE:?} (heard {heard:?})"),
    }
}

/// "Every bundled backend stores the deadline with the entry, so instances
/// share it; an expired entry disappears on every instance": a deadline set
/// through one map reaches the other through the feed, and both stop
/// showing the entry at the same wall-clock time.
pub async fn expiry_is_shared_by_live_instances<F: StoreFactory>(mut factory: F) {
    const CASE: &str = "expiry_is_shared_by_live_instances";
    // Long enough that the other instance hears of the entry before it
    // expires, even on a loaded machine.
    const TTL: Duration = Duration::from_secs(20);
    let Some((one, two)) = two_live_maps(&mut factory, CASE, true).await else {
        return;
    };
    one.insert_with_ttl("session".into(), "alice".into(), TTL)
        .await
        .expect("insert_with_ttl");
    until(
        || two.ttl("session").is_some(),
        "map two learns the entry and its deadline",
    )
    .await;
    let (first_ttl, second_ttl) = (one.ttl("session"), two.ttl("session"));
    let (Some(first_ttl), Some(second_ttl)) = (first_ttl, second_ttl) else {
        panic!("both maps know the deadline: {first_ttl:?}, {second_ttl:?}");
    };
    assert!(
        first_ttl.abs_diff(second_ttl) < Duration::from_secs(5),
        "one deadline, as stored: {first_ttl:?} and {second_ttl:?}"
    );
    until(|| one.get("session").is_none(), "the entry expires").await;
    assert_eq!(
        two.get("session"),
        None,
        "the other instance stops showing it at the same time"
    );
    one.close().await.expect("close");
    two.close().await.expect("close");
}

/// "`DeleteExpired` removes an entry only if its stored deadline is not
/// after the sweep's clock", as other instances hear it: a sweep announces
/// the entries it removed, and not those it left (a later deadline, none, a
/// missing key), so other instances do not re-read keys for nothing.
pub async fn a_sweep_announces_only_what_it_removed<F: StoreFactory>(mut factory: F) {
    const CASE: &str = "a_sweep_announces_only_what_it_removed";
    let first = factory.fresh().await.expect("factory opens a fresh store");
    let capabilities = StorageBackend::<String, String>::capabilities(&first);
    if !capabilities.expiry || capabilities.exclusive_lock {
        skip_notice(
            CASE,
            &"the backend declares no expiry, or an exclusive lock",
        );
        return;
    }
    let second = factory.reopen().await.expect("a second live instance");
    let Some(mut feed) = StorageBackend::<String, String>::watch(&second)
        .await
        .expect("watch")
    else {
        skip_notice(CASE, &"the backend's watch gives no feed");
        return;
    };
    let now = std::time::SystemTime::now();
    let (past, later) = (
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    let put = |key: &str, expires_at: Option<std::time::SystemTime>| -> BatchOp<String, String> {
        let (key, value) = (key.to_owned(), "v".to_owned());
        match expires_at {
            Some(expires_at) => BatchOp::PutExpiring {
                key,
                value,
                expires_at,
            },
            None => BatchOp::Put { key, value },
        }
    };
    let sweep = |key: &str| -> BatchOp<String, String> {
        BatchOp::DeleteExpired {
            key: key.to_owned(),
            now,
        }
    };
    first
        .apply_batch(&[
            put("expired", Some(past)),
            put("later", Some(later)),
            put("plain", None),
            put("marker 1", None),
        ])
        .await
        .expect("a batch with deadlines");
    until_announced(&mut feed, "marker 1").await;
    first
        .apply_batch(&[
            sweep("expired"),
            sweep("later"),
            sweep("plain"),
            sweep("missing"),
        ])
        .await
        .expect("a sweep");
    first
        .apply_batch(&[put("marker 2", None)])
        .await
        .expect("a write after the sweep");
    let heard = until_announced(&mut feed, "marker 2").await;
    assert!(
        heard.iter().any(|k| k == "expired"),
        "the swept entry is announced: {heard:?}"
    );
    for kept in ["later", "plain", "missing"] {
        assert!(
            !heard.iter().any(|k| k == kept),
            "{kept:?} was not removed, yet announced: {heard:?}"
        );
    }
}

/// Two maps on live instances of one fresh store, for the cases about a
/// store shared through a feed; `None`, with a skip notice for `case`, when
/// the backend declares an exclusive lock, its `watch` gives no feed, or
/// (when `expiry` is asked) it stores no deadlines.
async fn two_live_maps<F: StoreFactory>(
    factory: &mut F,
    case: &str,
    expiry: bool,
) -> Option<(
    PersistentMap<String, String, F::Backend>,
    PersistentMap<String, String, F::Backend>,
)> {
    let first = factory.fresh().await.expect("factory opens a fresh store");
    let capabilities = StorageBackend::<String, String>::capabilities(&first);
    if capabilities.exclusive_lock {
        skip_notice(
            case,
            &"the backend declares an exclusive lock: no two live instances",
        );
        return None;
    }
    if expiry && !capabilities.expiry {
        skip_notice(case, &"the backend declares no expiry");
        return None;
    }
    if StorageBackend::<String, String>::watch(&first)
        .await
        .expect("watch")
        .is_none()
    {
        skip_notice(
            case,
            &"the backend's watch gives no feed: live instances do not follow each other",
        );
        return None;
    }
    drop(first);
    Some(open_two_maps(factory).await)
}

/// Two maps, each on a live instance of the factory's current store.
async fn open_two_maps<F: StoreFactory>(
    factory: &mut F,
) -> (
    PersistentMap<String, String, F::Backend>,
    PersistentMap<String, String, F::Backend>,
) {
    let mut maps = Vec::with_capacity(2);
    for _ in 0..2 {
        let backend = factory.reopen().await.expect("a live instance for a map");
        maps.push(
            PersistentMap::<String, String, _>::new(backend)
                .await
                .expect("a map on the shared store"),
        );
    }
    let two = maps.pop().expect("two maps");
    let one = maps.pop().expect("two maps");
    (one, two)
}
