//! Expiry on a real Redis server: deadlines in the sorted set beside the
//! hash, conditional sweeps by script, what other instances are told, and
//! maps of older formats (opened unchanged; format 2 moved to format 3 by
//! its first deadline, format 1 without expiry).

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{url_or_skip, Scratch};
use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{BatchOp, PersistentError, StorageBackend};
use persistent_map_redis::RedisBackend;
use redis::AsyncCommands;

type Op = BatchOp<String, u32>;
type Entries = HashMap<String, (u32, Option<SystemTime>)>;

async fn open(scratch: &Scratch, name: &str) -> RedisBackend {
    RedisBackend::builder(&scratch.url)
        .prefix(&scratch.prefix)
        .name(name)
        .build()
        .await
        .expect("backend opens")
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Now, in whole milliseconds (as the map hands deadlines over).
fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_millis()).expect("fits")
}

fn put(key: &str, value: u32) -> Op {
    BatchOp::Put {
        key: key.to_owned(),
        value,
    }
}

fn put_expiring(key: &str, value: u32, ms: u64) -> Op {
    BatchOp::PutExpiring {
        key: key.to_owned(),
        value,
        expires_at: at(ms),
    }
}

fn sweep(key: &str, ms: u64) -> Op {
    BatchOp::DeleteExpired {
        key: key.to_owned(),
        now: at(ms),
    }
}

async fn apply(backend: &RedisBackend, batch: &[Op]) {
    StorageBackend::<String, u32>::apply_batch(backend, batch)
        .await
        .expect("batch applies");
}

async fn try_entries(backend: &RedisBackend) -> Result<Entries, PersistentError> {
    let mut all = HashMap::new();
    StorageBackend::<String, u32>::load_with_expiry_into(backend, &mut |k, v, d| {
        all.insert(k, (v, d));
    })
    .await?;
    Ok(all)
}

async fn entries(backend: &RedisBackend) -> Entries {
    try_entries(backend).await.expect("loads")
}

fn expect(list: &[(&str, u32, Option<u64>)]) -> Entries {
    list.iter()
        .map(|(k, v, d)| ((*k).to_owned(), (*v, d.map(at))))
        .collect()
}

async fn version(backend: &RedisBackend) -> Option<String> {
    backend
        .connection()
        .hget(backend.meta_key(), "format_version")
        .await
        .expect("meta")
}

/// The sorted set of deadlines: field and score, by field.
async fn deadlines(backend: &RedisBackend) -> Vec<(String, i64)> {
    let mut all: Vec<(String, i64)> = backend
        .connection()
        .zrange_withscores(backend.expiry_key(), 0, -1)
        .await
        .expect("zrange");
    all.sort();
    all
}

#[tokio::test]
async fn a_put_a_removal_and_a_clear_remove_deadlines() {
    let Some(url) = url_or_skip("a_put_a_removal_and_a_clear_remove_deadlines") else {
        return;
    };
    let scratch = Scratch::new(url);
    let backend = open(&scratch, "exp").await;
    let later = now_ms() + 3_600_000;
    apply(
        &backend,
        &[
            put_expiring("apart", 1, later),
            put_expiring("together", 1, later),
            put_expiring("removed", 1, later),
        ],
    )
    .await;
    apply(&backend, &[put("apart", 2)]).await;
    apply(
        &backend,
        &[put_expiring("together", 3, later), put("together", 4)],
    )
    .await;
    apply(
        &backend,
        &[put("renewed", 5), put_expiring("renewed", 6, later)],
    )
    .await;
    StorageBackend::<String, u32>::delete(&backend, &"removed".to_owned())
        .await
        .expect("delete");
    drop(backend);

    let backend = open(&scratch, "exp").await;
    assert_eq!(
        entries(&backend).await,
        expect(&[
            ("apart", 2, None),
            ("together", 4, None),
            ("renewed", 6, Some(later))
        ])
    );
    assert_eq!(
        deadlines(&backend).await,
        [("renewed".to_owned(), i64::try_from(later).expect("fits"))]
    );
    StorageBackend::<String, u32>::clear(&backend)
        .await
        .expect("clear");
    assert_eq!(deadlines(&backend).await, []);
    assert_eq!(entries(&backend).await, expect(&[]));
}

/// A map as a release before expiry left it: the hash, and the meta hash
/// with `version` (none: no meta hash at all).
async fn create_pre_expiry_map(scratch: &Scratch, name: &str, version: Option<u32>) {
    let client = redis::Client::open(scratch.url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let hash = format!("{}:{name}", scratch.prefix);
    let _: () = conn.hset(&hash, "kept", "1").await.expect("hset");
    if let Some(version) = version {
        let _: () = conn
            .hset(format!("{hash}:meta"), "format_version", version)
            .await
            .expect("hset");
    }
}

#[tokio::test]
async fn a_format_2_map_opens_unchanged_and_moves_to_format_3_with_its_first_deadline() {
    let Some(url) = url_or_skip("a_format_2_map_opens_unchanged") else {
        return;
    };
    let scratch = Scratch::new(url);
    create_pre_expiry_map(&scratch, "two", Some(2)).await;
    let backend = open(&scratch, "two").await;
    assert_eq!(backend.key_format(), KeyFormat::Distinct);
    assert!(StorageBackend::<String, u32>::capabilities(&backend).expiry);
    assert_eq!(entries(&backend).await, expect(&[("kept", 1, None)]));
    apply(&backend, &[put("plain", 2), sweep("kept", now_ms())]).await;
    assert_eq!(version(&backend).await.as_deref(), Some("2"), "unchanged");
    let exists: bool = backend
        .connection()
        .exists(backend.expiry_key())
        .await
        .expect("exists");
    assert!(!exists, "no deadlines yet");

    let later = now_ms() + 3_600_000;
    apply(&backend, &[put_expiring("expiring", 3, later)]).await;
    assert_eq!(version(&backend).await.as_deref(), Some("3"));
    drop(backend);

    let backend = open(&scratch, "two").await;
    assert_eq!(
        entries(&backend).await,
        expect(&[
            ("kept", 1, None),
            ("plain", 2, None),
            ("expiring", 3, Some(later))
        ])
    );
}

#[tokio::test]
async fn instances_that_opened_a_format_2_map_follow_its_move_by_another() {
    let Some(url) = url_or_skip("instances_that_opened_a_format_2_map_follow_its_move") else {
        return;
    };
    let scratch = Scratch::new(url);
    create_pre_expiry_map(&scratch, "two", Some(2)).await;
    let mover = open(&scratch, "two").await;
    let writer = open(&scratch, "two").await;
    let reader = open(&scratch, "two").await;
    let sweeper = open(&scratch, "two").await;
    let now = now_ms();
    let later = now + 3_600_000;
    apply(
        &mover,
        &[
            put_expiring("rewritten", 1, later),
            put_expiring("read", 2, later),
            put_expiring("swept", 3, now - 1),
        ],
    )
    .await;
    apply(&writer, &[put("rewritten", 10)]).await;
    let got = StorageBackend::<String, u32>::load_keys_with_expiry(&reader, &["read".to_owned()])
        .await
        .expect("loads keys");
    assert_eq!(got, [("read".to_owned(), Some((2, Some(at(later)))))]);
    apply(&sweeper, &[sweep("swept", now)]).await;

    let backend = open(&scratch, "two").await;
    assert_eq!(
        entries(&backend).await,
        expect(&[
            ("kept", 1, None),
            ("rewritten", 10, None),
            ("read", 2, Some(later))
        ])
    );
    assert_eq!(version(&backend).await.as_deref(), Some("3"));
}

#[tokio::test]
async fn maps_with_legacy_keys_have_no_expiry() {
    let Some(url) = url_or_skip("maps_with_legacy_keys_have_no_expiry") else {
        return;
    };
    let scratch = Scratch::new(url);
    for (name, recorded) in [("one", Some(1)), ("bare", None)] {
        create_pre_expiry_map(&scratch, name, recorded).await;
        let backend = open(&scratch, name).await;
        assert_eq!(backend.key_format(), KeyFormat::Legacy);
        assert!(!StorageBackend::<String, u32>::capabilities(&backend).expiry);
        assert_eq!(entries(&backend).await, expect(&[("kept", 1, None)]));
        let err = StorageBackend::<String, u32>::apply_batch(
            &backend,
            &[put("plain", 2), put_expiring("x", 1, now_ms())],
        )
        .await
        .expect_err("no deadline in a legacy map");
        assert!(
            matches!(
                err,
                PersistentError::Unsupported {
                    backend: "redis",
                    ..
                }
            ),
            "{err:?}"
        );
        // Nothing there can be expired: a sweep changes nothing.
        apply(&backend, &[sweep("kept", now_ms())]).await;
        assert_eq!(entries(&backend).await, expect(&[("kept", 1, None)]));
        // A hash without a meta hash was recorded as version 1 when opened.
        assert_eq!(version(&backend).await.as_deref(), Some("1"));
    }

    // A map created in the legacy key format gets format 1, without expiry.
    let created = RedisBackend::builder(&scratch.url)
        .prefix(&scratch.prefix)
        .name("legacy")
        .new_store_key_format(KeyFormat::Legacy)
        .build()
        .await
        .expect("opens");
    assert!(!StorageBackend::<String, u32>::capabilities(&created).expiry);
    assert_eq!(version(&created).await.as_deref(), Some("1"));
}

#[tokio::test]
async fn an_undecodable_deadline_is_an_error_naming_the_hash_and_key() {
    let Some(url) = url_or_skip("an_undecodable_deadline_is_an_error_naming_the_hash_and_key")
    else {
        return;
    };
    let scratch = Scratch::new(url);
    let backend = open(&scratch, "exp").await;
    apply(&backend, &[put("odd", 1), put("fine", 2)]).await;
    let _: () = backend
        .connection()
        .zadd(backend.expiry_key(), "odd", 1.5)
        .await
        .expect("zadd");
    let is_odd = |err: &PersistentError| {
        matches!(err, PersistentError::Corrupt { location, reason }
            if location.store.contains(backend.hash_key())
                && location.key.as_deref() == Some("\"odd\"")
                && reason.contains(backend.expiry_key()))
    };
    let err = try_entries(&backend).await.expect_err("undecodable");
    assert!(is_odd(&err), "{err:?}");
    let err = StorageBackend::<String, u32>::load_keys_with_expiry(&backend, &["odd".to_owned()])
        .await
        .expect_err("undecodable");
    assert!(is_odd(&err), "{err:?}");
    // Reading never repairs: the score is still there.
    let score: Option<f64> = backend
        .connection()
        .zscore(backend.expiry_key(), "odd")
        .await
        .expect("zscore");
    assert_eq!(score, Some(1.5));

    // A deadline key of another type is refused when the map opens.
    let _: () = backend
        .connection()
        .set(format!("{}:text:expiry", scratch.prefix), "x")
        .await
        .expect("set");
    let err = RedisBackend::builder(&scratch.url)
        .prefix(&scratch.prefix)
        .name("text")
        .build()
        .await
        .expect_err("not a sorted set");
    assert!(matches!(err, PersistentError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn a_deadline_a_score_cannot_hold_is_refused_naming_its_key() {
    let Some(url) = url_or_skip("a_deadline_a_score_cannot_hold_is_refused_naming_its_key") else {
        return;
    };
    let scratch = Scratch::new(url);
    let backend = open(&scratch, "exp").await;
    let far = (1_u64 << 53) + 1;
    let err = StorageBackend::<String, u32>::apply_batch(&backend, &[put_expiring("far", 1, far)])
        .await
        .expect_err("beyond a double's exact range");
    assert!(
        matches!(&err, PersistentError::Backend { backend: "redis", location, .. }
            if location.key.as_deref() == Some("\"far\"")),
        "{err:?}"
    );
    assert_eq!(entries(&backend).await, expect(&[]), "nothing was applied");
    apply(&backend, &[put_expiring("edge", 1, 1 << 53)]).await;
    assert_eq!(
        entries(&backend).await,
        expect(&[("edge", 1, Some(1 << 53))])
    );
}
