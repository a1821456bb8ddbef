//! Rules for backends that store deadlines ([`Capabilities::expiry`]):
//! what `PutExpiring` and `DeleteExpired` do to the store, and what a map
//! on it does with expiring entries. A backend that declares no expiry
//! skips these cases, with a notice.
//!
//! [`Capabilities::expiry`]: persistent_map_core::Capabilities

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use persistent_map_core::{BatchOp, PersistentMap, StorageBackend, WriteBehind};

use crate::factory::StoreFactory;
use crate::harness::{skip_notice, until};

/// A sweep interval long enough that no sweep runs during a case.
const NO_SWEEP: Duration = Duration::from_secs(24 * 3600);

/// A sweep interval that makes a case's sweep quick.
const QUICK_SWEEP: Duration = Duration::from_millis(10);

/// A time to live that outlasts any case.
const HOUR: Duration = Duration::from_secs(3600);

type Stored = Option<(String, Option<SystemTime>)>;

/// Whether the backend stores deadlines; prints a skip notice if not.
fn declares_expiry<B: StorageBackend<String, String>>(backend: &B, case: &str) -> bool {
    let expiry = backend.capabilities().expiry;
    if !expiry {
        skip_notice(
            case,
            &"the backend declares no expiry (Capabilities::expiry)",
        );
    }
    expiry
}

/// Whole milliseconds since the epoch, `offset` from now: deadlines as the
/// map hands them to a backend.
fn deadline(offset: i64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    let millis = i64::try_from(now.as_millis()).expect("a sane clock") + offset;
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).expect("after 1970"))
}

async fn stored<B>(backend: &B, keys: &[&str]) -> Vec<Stored>
where
    B: StorageBackend<String, String> + Sync + ?Sized,
{
    let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    backend
        .load_keys_with_expiry(&keys)
        .await
        .expect("load_keys_with_expiry")
        .into_iter()
        .map(|(_, found)| found)
        .collect()
}

fn put(key: &str, value: &str, at: Option<SystemTime>) -> BatchOp<String, String> {
    let (key, value) = (key.to_owned(), value.to_owned());
    match at {
        Some(expires_at) => BatchOp::PutExpiring {
            key,
            value,
            expires_at,
        },
        None => BatchOp::Put { key, value },
    }
}

fn sweep(key: &str, now: SystemTime) -> BatchOp<String, String> {
    BatchOp::DeleteExpired {
        key: key.to_owned(),
        now,
    }
}

/// "`PutExpiring` stores the deadline with the entry; `Put` clears it;
/// `DeleteExpired` removes an entry only if its deadline is not after the
/// sweep's clock; loading returns every entry as stored, expired ones
/// included": deadlines come back to the millisecond after the store is
/// reopened, and a batch mixing the four kinds applies in order.
pub async fn expiring_entries_round_trip_through_the_store<F: StoreFactory>(mut factory: F) {
    const CASE: &str = "expiring_entries_round_trip_through_the_store";
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    if !declares_expiry(&backend, CASE) {
        return;
    }
    let (later, past) = (deadline(3_600_000), deadline(-60_000));
    backend
        .apply_batch(&[
            put("later", "1", Some(later)),
            put("past", "2", Some(past)),
            put("kept", "3", None),
            put("cleared", "4", Some(later)),
            put("cleared", "5", None),
        ])
        .await
        .expect("a batch with deadlines is applied");
    drop(backend);

    let backend = factory.reopen().await.expect("factory reopens the store");
    let mut loaded = HashMap::new();
    backend
        .load_with_expiry_into(&mut |k: String, v: String, at| {
            loaded.insert(k, (v, at));
        })
        .await
        .expect("load_with_expiry_into");
    let expected: HashMap<String, (String, Option<SystemTime>)> = [
        ("later", "1", Some(later)),
        ("past", "2", Some(past)),
        ("kept", "3", None),
        ("cleared", "5", None),
    ]
    .into_iter()
    .map(|(k, v, at)| (k.to_owned(), (v.to_owned(), at)))
    .collect();
    assert_eq!(
        loaded, expected,
        "every entry comes back with its exact deadline, expired ones included"
    );
    assert_eq!(
        stored(&backend, &["later", "missing", "past", "kept"]).await,
        vec![
            Some(("1".to_owned(), Some(later))),
            None,
            Some(("2".to_owned(), Some(past))),
            Some(("3".to_owned(), None)),
        ],
        "load_keys_with_expiry answers in the order asked"
    );

    let now = deadline(0);
    backend
        .apply_batch(&[
            sweep("later", now),
            sweep("past", now),
            sweep("kept", now),
            sweep("missing", now),
            // Written again after it expired, then swept: it stays.
            put("again", "old", Some(past)),
            put("again", "new", None),
            sweep("again", now),
            // Expired, then swept, in one batch: it goes.
            put("brief", "x", Some(past)),
            sweep("brief", now),
            // Swept before it was written: it stays, expired.
            sweep("late", now),
            put("late", "y", Some(past)),
        ])
        .await
        .expect("a batch of conditional deletes is applied");
    drop(backend);

    let backend = factory.reopen().await.expect("factory reopens the store");
    assert_eq!(
        stored(
            &backend,
            &["later", "past", "kept", "again", "brief", "late"]
        )
        .await,
        vec![
            Some(("1".to_owned(), Some(later))),
            None,
            Some(("3".to_owned(), None)),
            Some(("new".to_owned(), None)),
            None,
            Some(("y".to_owned(), Some(past))),
        ],
        "DeleteExpired removed exactly the entries expired at its point in the batch"
    );
}

/// "An expired entry disappears from `get`, `contains_key`, `len`,
/// iteration and transactions immediately, even before it is deleted;
/// expired entries are not loaded into the cache at open; the sweep
/// deletes them from the store": with no sweep running, the entry is gone
/// from every read but still stored; a reopened map leaves it out; a map
/// that sweeps deletes it.
pub async fn expired_entries_vanish_at_once_and_are_swept<F: StoreFactory>(mut factory: F) {
    const CASE: &str = "expired_entries_vanish_at_once_and_are_swept";
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    if !declares_expiry(&backend, CASE) {
        return;
    }
    let map: PersistentMap<String, String, _> = PersistentMap::builder(backend)
        .sweep_interval(NO_SWEEP)
        .build()
        .await
        .expect("a map opens");
    map.insert_with_ttl("gone".into(), "a".into(), Duration::ZERO)
        .await
        .expect("insert_with_ttl");
    map.insert_with_ttl("later".into(), "b".into(), HOUR)
        .await
        .expect("insert_with_ttl");
    map.insert("kept".into(), "c".into()).await.expect("insert");
    // A time to live of zero expires within the millisecond.
    until(
        || map.get("gone").is_none(),
        "an entry with no time left vanishes",
    )
    .await;
    assert!(!map.contains_key("gone"));
    assert_eq!(map.len(), 2, "len leaves the expired entry out");
    let mut keys: Vec<String> = map.keys().collect();
    keys.sort();
    assert_eq!(keys, ["kept", "later"], "iteration leaves it out");
    assert_eq!(map.ttl("gone"), None);
    let ttl = map.ttl("later").expect("the entry has a deadline");
    assert!(
        ttl <= HOUR && ttl > HOUR - Duration::from_secs(600),
        "ttl {ttl:?}"
    );
    assert_eq!(map.ttl("kept"), None, "no deadline, no ttl");
    if StorageBackend::<String, String>::capabilities(map.backend()).atomic_batch {
        let seen = map
            .transaction(|tx| tx.get(&"gone".to_string()))
            .await
            .expect("transaction");
        assert_eq!(seen, None, "a transaction does not see the expired entry");
    }
    let seen = map
        .update(&"gone".to_string(), |current| {
            Some(format!("seen {current:?}"))
        })
        .await
        .expect("update");
    assert_eq!(
        seen.as_deref(),
        Some("seen None"),
        "update sees no current value"
    );
    map.insert_with_ttl("gone".into(), "a".into(), Duration::ZERO)
        .await
        .expect("insert_with_ttl");
    until(|| map.get("gone").is_none(), "the entry vanishes again").await;
    let held = stored(map.backend(), &["gone"]).await;
    assert!(
        matches!(held.as_slice(), [Some((value, Some(_)))] if value == "a"),
        "with no sweep, the expired entry is still stored: {held:?}"
    );
    map.close().await.expect("close");
    drop(map);

    let backend = factory.reopen().await.expect("factory reopens the store");
    let map: PersistentMap<String, String, _> = PersistentMap::builder(backend)
        .sweep_interval(QUICK_SWEEP)
        .build()
        .await
        .expect("a map reopens");
    assert_eq!(map.get("gone"), None, "an expired entry is not loaded");
    assert_eq!(map.len(), 2);
    let ttl = map.ttl("later").expect("the deadline survived the reopen");
    assert!(ttl <= HOUR, "ttl {ttl:?}");
    let backend = map.backend();
    let deleted = async {
        loop {
            if stored(backend, &["gone"]).await == [None] {
                return;
            }
            tokio::time::sleep(QUICK_SWEEP).await;
        }
    };
    tokio::time::timeout(crate::harness::PATIENCE, deleted)
        .await
        .expect("the sweep deletes the expired entry from the store");
    assert_eq!(
        stored(backend, &["later", "kept"]).await.len(),
        2,
        "answers for both keys"
    );
    assert!(
        stored(backend, &["later", "kept"])
            .await
            .iter()
            .all(Option::is_some),
        "the sweep leaves live entries alone"
    );
    until(|| map.stats().expired_swept >= 1, "the sweep is counted").await;
    map.close().await.expect("close");
}

/// "The sweep never resurrects or removes a key written again after it
/// expired", in write-through and write-behind mode: an entry written again
/// with no deadline outlives every sweep, in the map and after a reopen,
/// while its expired neighbour is swept.
pub async fn the_sweep_spares_a_key_written_again<F: StoreFactory>(mut factory: F) {
    const CASE: &str = "the_sweep_spares_a_key_written_again";
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    if !declares_expiry(&backend, CASE) {
        return;
    }
    let map: PersistentMap<String, String, _> = PersistentMap::builder(backend)
        .sweep_interval(NO_SWEEP)
        .build()
        .await
        .expect("a map opens");
    map.insert_with_ttl("elsewhere".into(), "old".into(), Duration::ZERO)
        .await
        .expect("insert_with_ttl");
    until(|| map.get("elsewhere").is_none(), "the entry expires").await;
    // Another instance writes the key again, unheard of by this map (here
    // through the map's own backend, which the contract allows).
    map.backend()
        .apply_batch(&[put("elsewhere", "new", None)])
        .await
        .expect("a write behind the map's back");
    let swept = map.sweep_expired().await.expect("sweep_expired");
    assert_eq!(swept, 1, "the map sweeps the entry it holds as expired");
    map.close().await.expect("close");
    drop(map);
    let backend = factory.reopen().await.expect("factory reopens the store");
    assert_eq!(
        stored(&backend, &["elsewhere"]).await,
        vec![Some(("new".to_owned(), None))],
        "the sweep's delete is conditional: the entry written again stays"
    );
    // Released, so that a backend with an exclusive lock can reopen it.
    drop(backend);
    for behind in [false, true] {
        let backend = factory.reopen().await.expect("factory reopens the store");
        let builder = PersistentMap::builder(backend).sweep_interval(QUICK_SWEEP);
        let builder = if behind {
            builder.write_behind(WriteBehind::new().max_delay(Duration::from_millis(5)))
        } else {
            builder
        };
        let map: PersistentMap<String, String, _> = builder.build().await.expect("a map opens");
        let mode = if behind {
            "write-behind"
        } else {
            "write-through"
        };
        let swept_before = map.stats().expired_swept;
        for round in 0..20 {
            let key = format!("again{round}");
            map.insert_with_ttl(key.clone(), "old".into(), Duration::ZERO)
                .await
                .expect("insert_with_ttl");
            map.insert(key, "new".into()).await.expect("insert");
        }
        map.insert_with_ttl("neighbour".into(), "x".into(), Duration::ZERO)
            .await
            .expect("insert_with_ttl");
        until(
            || map.stats().expired_swept > swept_before,
            "the expired neighbour is swept",
        )
        .await;
        map.flush().await.expect("flush");
        for round in 0..20 {
            assert_eq!(
                map.get(&format!("again{round}")).as_deref(),
                Some("new"),
                "{mode}: a key written again stays"
            );
        }
        map.close().await.expect("close");
        drop(map);
        let backend = factory.reopen().await.expect("factory reopens the store");
        for round in 0..20 {
            assert_eq!(
                stored(&backend, &[format!("again{round}").as_str()]).await,
                vec![Some(("new".to_owned(), None))],
                "{mode}: the store keeps the key written again, with no deadline"
            );
        }
        drop(backend);
    }
}

/// "`update` keeps an entry's deadline; `expire` sets it and `persist`
/// drops it, keeping the value; a default time to live applies to every
/// entry written without one": each survives a reopen.
pub async fn deadlines_follow_update_expire_and_persist<F: StoreFactory>(mut factory: F) {
    const CASE: &str = "deadlines_follow_update_expire_and_persist";
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    if !declares_expiry(&backend, CASE) {
        return;
    }
    let map: PersistentMap<String, String, _> = PersistentMap::builder(backend)
        .sweep_interval(NO_SWEEP)
        .build()
        .await
        .expect("a map opens");
    let key = "counter".to_string();
    map.insert_with_ttl(key.clone(), "1".into(), HOUR)
        .await
        .expect("insert_with_ttl");
    map.update(&key, |n| n.map(|n| format!("{n}+")))
        .await
        .expect("update");
    let ttl = map.ttl(&key).expect("update keeps the deadline");
    assert!(ttl <= HOUR, "ttl {ttl:?}");
    assert!(map.expire(&key, 2 * HOUR).await.expect("expire"));
    assert!(map.ttl(&key).expect("expire sets a deadline") > HOUR);
    assert!(!map
        .expire(&"missing".to_string(), HOUR)
        .await
        .expect("expire"));
    map.insert("plain".into(), "7".into())
        .await
        .expect("insert");
    assert!(map
        .expire(&"plain".to_string(), HOUR)
        .await
        .expect("expire"));
    assert!(map.persist(&key).await.expect("persist"));
    assert_eq!(map.ttl(&key), None, "persist drops the deadline");
    assert_eq!(map.get(&key).as_deref(), Some("1+"), "and keeps the value");
    map.close().await.expect("close");
    drop(map);

    let backend = factory.reopen().await.expect("factory reopens the store");
    let map: PersistentMap<String, String, _> = PersistentMap::builder(backend)
        .sweep_interval(NO_SWEEP)
        .default_ttl(HOUR)
        .build()
        .await
        .expect("a map with a default time to live opens");
    assert_eq!(map.get(&key).as_deref(), Some("1+"));
    assert_eq!(map.ttl(&key), None, "persisted before the reopen");
    let ttl = map.ttl("plain").expect("expire survived the reopen");
    assert!(ttl <= HOUR, "ttl {ttl:?}");
    map.insert("default".into(), "1".into())
        .await
        .expect("insert");
    map.get_or_insert_with("created".into(), || "2".into())
        .await
        .expect("get_or_insert_with");
    map.extend([("many".to_string(), "3".to_string())])
        .await
        .expect("extend");
    for k in ["default", "created", "many"] {
        let ttl = map
            .ttl(k)
            .unwrap_or_else(|| panic!("{k}: the default time to live applies"));
        assert!(ttl <= HOUR, "{k}: ttl {ttl:?}");
    }
    map.update(&key, |n| n.map(|n| format!("{n}+")))
        .await
        .expect("update");
    assert_eq!(
        map.ttl(&key),
        None,
        "an update keeps an entry without a deadline so"
    );
    map.close().await.expect("close");
    drop(map);

    let backend = factory.reopen().await.expect("factory reopens the store");
    let map: PersistentMap<String, String, _> =
        PersistentMap::new(backend).await.expect("a map reopens");
    for k in ["default", "created", "many", "plain"] {
        assert!(map.ttl(k).is_some(), "{k}: the deadline survived");
    }
    assert_eq!(map.ttl(&key), None);
    map.close().await.expect("close");
}
