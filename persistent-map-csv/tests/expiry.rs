//! Deadlines (expiry) in real CSV files: the deadline field and its round
//! trip across a reopen, the conditional removal of expired entries, files
//! of older formats opening unchanged and getting the field with their first
//! deadline, and damaged deadlines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{BatchOp, PersistentError, PersistentMap, StorageBackend, WriteBehind};
use persistent_map_csv::{Compaction, CsvBackend};

type Op = BatchOp<String, u32>;
type Stored = BTreeMap<String, (u32, Option<SystemTime>)>;

const HEADER: &str = "persistent-map-csv/5,key,value,expires_at\n";

/// The instant `ms` milliseconds after the Unix epoch (before it if negative).
fn at(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn put(key: &str, value: u32) -> Op {
    BatchOp::Put {
        key: key.to_string(),
        value,
    }
}

fn put_until(key: &str, value: u32, ms: i64) -> Op {
    BatchOp::PutExpiring {
        key: key.to_string(),
        value,
        expires_at: at(ms),
    }
}

fn sweep(key: &str, now_ms: i64) -> Op {
    BatchOp::DeleteExpired {
        key: key.to_string(),
        now: at(now_ms),
    }
}

fn del(key: &str) -> Op {
    BatchOp::Delete {
        key: key.to_string(),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("file is readable")
}

async fn apply(backend: &CsvBackend, batch: &[Op]) {
    StorageBackend::<String, u32>::apply_batch(backend, batch)
        .await
        .expect("batch applies");
}

async fn stored(backend: &CsvBackend) -> Stored {
    let mut all = Stored::new();
    StorageBackend::<String, u32>::load_with_expiry_into(backend, &mut |k, v, d| {
        all.insert(k, (v, d));
    })
    .await
    .expect("loads with deadlines");
    all
}

/// Drops `backend` (releasing the file's lock) and opens the file again.
fn reopen(backend: CsvBackend) -> CsvBackend {
    let path = backend.path().to_path_buf();
    drop(backend);
    CsvBackend::new(path)
}

fn expected(entries: &[(&str, u32, Option<i64>)]) -> Stored {
    entries
        .iter()
        .map(|&(k, v, d)| (k.to_string(), (v, d.map(at))))
        .collect()
}

fn fixture(dir: &Path, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let target = dir.join(name);
    std::fs::copy(source, &target).expect("fixture copies");
    target
}

#[tokio::test]
async fn deadlines_round_trip_exactly_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ttl.csv");
    let backend = CsvBackend::new(&path);
    assert!(StorageBackend::<String, u32>::capabilities(&backend).expiry);
    apply(
        &backend,
        &[
            put_until("soon", 1, 1_767_225_600_123),
            put_until("past", 2, 1_000),
            put_until("before-epoch", 3, -86_400_001),
            put("never", 4),
        ],
    )
    .await;
    apply(&backend, &[put_until("alone", 5, 4_102_444_800_999)]).await;
    assert_eq!(
        read(&path),
        format!(
            "{HEADER}batch,,4,\nput,soon,1,1767225600123\nput,past,2,1000\n\
             put,before-epoch,3,-86400001\nput,never,4,\nput,alone,5,4102444800999\n"
        )
    );

    let backend = reopen(backend);
    let want = expected(&[
        ("soon", 1, Some(1_767_225_600_123)),
        ("past", 2, Some(1_000)),
        ("before-epoch", 3, Some(-86_400_001)),
        ("never", 4, None),
        ("alone", 5, Some(4_102_444_800_999)),
    ]);
    assert_eq!(stored(&backend).await, want);

    // Expired entries are returned as stored, by every load.
    let all = StorageBackend::<String, u32>::load_all(&backend)
        .await
        .expect("loads");
    assert_eq!(all.len(), 5);
    assert_eq!(all.get("past"), Some(&2));

    let backend = reopen(backend);
    let keys: Vec<String> = ["past", "missing", "never", "past"]
        .iter()
        .map(ToString::to_string)
        .collect();
    let got = StorageBackend::<String, u32>::load_keys_with_expiry(&backend, &keys)
        .await
        .expect("loads keys");
    assert_eq!(
        got,
        vec![
            ("past".to_string(), Some((2, Some(at(1_000))))),
            ("missing".to_string(), None),
            ("never".to_string(), Some((4, None))),
            ("past".to_string(), Some((2, Some(at(1_000))))),
        ]
    );
    let plain = StorageBackend::<String, u32>::load_keys(&backend, &keys)
        .await
        .expect("loads keys");
    assert_eq!(plain[0], ("past".to_string(), Some(2)));
    assert_eq!(plain[1], ("missing".to_string(), None));
}

#[tokio::test]
async fn a_put_clears_the_deadline_and_compaction_keeps_deadlines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ttl.csv");
    let backend = CsvBackend::new(&path);
    apply(
        &backend,
        &[
            put_until("a", 1, 5_000),
            put_until("b", 1, 5_000),
            put_until("expired", 9, 1),
        ],
    )
    .await;
    apply(&backend, &[put("a", 2)]).await;
    apply(
        &backend,
        &[put("b", 2), put("c", 3), put_until("d", 4, 6_000)],
    )
    .await;
    let want = expected(&[
        ("a", 2, None),
        ("b", 2, None),
        ("c", 3, None),
        ("d", 4, Some(6_000)),
        ("expired", 9, Some(1)),
    ]);
    let backend = reopen(backend);
    assert_eq!(stored(&backend).await, want);

    // Compaction keeps every live entry with its deadline, expired or not.
    backend.compact().await.expect("compacts");
    assert_eq!(
        read(&path),
        format!("{HEADER}put,expired,9,1\nput,a,2,\nput,b,2,\nput,c,3,\nput,d,4,6000\n")
    );
    let backend = reopen(backend);
    assert_eq!(stored(&backend).await, want);
}

#[tokio::test]
async fn delete_expired_removes_only_what_has_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ttl.csv");
    let backend = CsvBackend::new(&path);
    apply(
        &backend,
        &[
            put_until("expired", 1, 1_000),
            put_until("due-now", 2, 2_000),
            put_until("later", 3, 9_000),
            put("forever", 4),
        ],
    )
    .await;
    // The deadlines are read back from the file, not remembered.
    let backend = reopen(backend);
    let before = read(&path);
    apply(
        &backend,
        &[
            sweep("expired", 2_000),
            sweep("due-now", 2_000),
            sweep("later", 2_000),
            sweep("forever", 2_000),
            sweep("missing", 2_000),
        ],
    )
    .await;
    assert_eq!(
        &read(&path)[before.len()..],
        "batch,,2,\ndel,expired,,\ndel,due-now,,\n",
        "a tombstone for each expired entry, nothing for the others"
    );
    let unchanged = read(&path);
    apply(&backend, &[sweep("missing", 2_000)]).await;
    apply(&backend, &[sweep("later", 8_999), sweep("forever", 9_999)]).await;
    assert_eq!(
        read(&path),
        unchanged,
        "sweeps that remove nothing write nothing"
    );
    let backend = reopen(backend);
    assert_eq!(
        stored(&backend).await,
        expected(&[("later", 3, Some(9_000)), ("forever", 4, None)])
    );
    apply(&backend, &[sweep("later", 9_000)]).await;
    let backend = reopen(backend);
    assert_eq!(stored(&backend).await, expected(&[("forever", 4, None)]));
}

#[tokio::test]
async fn a_batch_applies_conditional_removals_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ttl.csv");
    let backend = CsvBackend::new(&path);
    apply(
        &backend,
        &[put_until("kept", 1, 1_000), put_until("back", 1, 1_000)],
    )
    .await;
    apply(
        &backend,
        &[
            // Written with a past deadline, then swept: gone.
            put_until("swept", 1, 1_000),
            sweep("swept", 5_000),
            // A put without a deadline, then a sweep: stays.
            put("kept", 2),
            sweep("kept", 5_000),
            // Swept, then written again with a past deadline: stays, with it.
            sweep("back", 5_000),
            put_until("back", 2, 2_000),
            // Removed, written with a deadline, swept with a clock before it.
            del("later"),
            put_until("later", 3, 9_000),
            sweep("later", 5_000),
            // Removed, then swept: still gone, no second tombstone.
            del("gone"),
            sweep("gone", 5_000),
        ],
    )
    .await;
    let want = expected(&[
        ("kept", 2, None),
        ("back", 2, Some(2_000)),
        ("later", 3, Some(9_000)),
    ]);
    assert_eq!(stored(&backend).await, want);
    let backend = reopen(backend);
    assert_eq!(stored(&backend).await, want);
    // The sweep of `back` came first, and removed it; the one of `gone` wrote nothing.
    assert_eq!(read(&path).matches("del,back,,").count(), 1);
    assert_eq!(read(&path).matches("del,gone,,").count(), 1);
}

#[tokio::test]
async fn a_format_3_file_opens_unchanged_and_gets_the_field_with_its_first_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fixture(dir.path(), "format_3.csv");
    let original = read(&path);
    let backend = CsvBackend::new(&path);
    assert_eq!(
        backend.key_format().await.expect("opens"),
        KeyFormat::Distinct
    );
    assert_eq!(
        stored(&backend).await,
        expected(&[("alice", 30, None), ("42", 42, None), ("bob", 25, None)])
    );
    assert_eq!(read(&path), original, "loading changes nothing");

    // Plain writes keep the format; sweeps have nothing to remove.
    apply(&backend, &[put("dave", 1)]).await;
    apply(&backend, &[sweep("alice", 5_000), sweep("dave", 5_000)]).await;
    assert_eq!(read(&path), format!("{original}put,dave,1\n"));
    let backend = reopen(backend);

    // The first deadline rewrites the file with the deadline field, then
    // appends the batch.
    apply(
        &backend,
        &[put("eve", 2), put_until("alice", 31, 1_767_225_600_123)],
    )
    .await;
    assert_eq!(
        read(&path),
        format!(
            "{HEADER}put,alice,30,\nput,\"\"\"42\"\"\",42,\nput,bob,25,\nput,dave,1,\n\
             batch,,2,\nput,eve,2,\nput,alice,31,1767225600123\n"
        )
    );
    let backend = reopen(backend);
    assert_eq!(
        backend.key_format().await.expect("opens"),
        KeyFormat::Distinct
    );
    assert_eq!(
        stored(&backend).await,
        expected(&[
            ("alice", 31, Some(1_767_225_600_123)),
            ("42", 42, None),
            ("bob", 25, None),
            ("dave", 1, None),
            ("eve", 2, None),
        ])
    );
}

#[tokio::test]
async fn a_format_2_file_keeps_its_legacy_keys_when_it_gets_deadlines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v2.csv");
    let original = "persistent-map-csv/2,key,value\nput,42,1\nput,alice,2\n";
    std::fs::write(&path, original).expect("writes");
    let backend = CsvBackend::new(&path);
    assert_eq!(
        stored(&backend).await,
        expected(&[("42", 1, None), ("alice", 2, None)])
    );
    assert_eq!(read(&path), original);
    apply(&backend, &[put_until("7", 3, 86_400_000)]).await;
    assert_eq!(
        read(&path),
        "persistent-map-csv/4,key,value,expires_at\nput,42,1,\nput,alice,2,\nput,7,3,86400000\n"
    );
    let backend = reopen(backend);
    assert_eq!(
        backend.key_format().await.expect("opens"),
        KeyFormat::Legacy
    );
    assert_eq!(
        stored(&backend).await,
        expected(&[
            ("42", 1, None),
            ("alice", 2, None),
            ("7", 3, Some(86_400_000))
        ])
    );
    backend.compact().await.expect("compacts");
    StorageBackend::<String, u32>::clear(&backend)
        .await
        .expect("clears");
    assert_eq!(read(&path), "persistent-map-csv/4,key,value,expires_at\n");
}

#[tokio::test]
async fn a_0_1_file_goes_straight_to_the_deadline_format_with_its_first_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fixture(dir.path(), "v0_1_strings.csv");
    let original = read(&path);
    let backend = CsvBackend::new(&path);
    let mut loaded = BTreeMap::new();
    StorageBackend::<String, String>::load_with_expiry_into(&backend, &mut |k, v, d| {
        loaded.insert(k, (v, d));
    })
    .await
    .expect("loads");
    assert_eq!(loaded.len(), 3);
    assert!(loaded.values().all(|(_, d)| d.is_none()));
    // A sweep has nothing to remove, and leaves the file as it is.
    let op = BatchOp::<String, String>::DeleteExpired {
        key: "alice".to_string(),
        now: at(5_000),
    };
    StorageBackend::<String, String>::apply_batch(&backend, &[op])
        .await
        .expect("applies");
    assert_eq!(read(&path), original);

    let op = BatchOp::PutExpiring {
        key: "alice".to_string(),
        value: "soon gone".to_string(),
        expires_at: at(1_000),
    };
    StorageBackend::<String, String>::apply_batch(&backend, &[op])
        .await
        .expect("applies");
    let migrated = read(&path);
    assert!(
        migrated.starts_with("persistent-map-csv/4,key,value,expires_at\n"),
        "{migrated}"
    );
    assert!(
        migrated.ends_with("put,alice,\"\"\"soon gone\"\"\",1000\n"),
        "{migrated}"
    );
    let backend = reopen(backend);
    let got = StorageBackend::<String, String>::load_keys_with_expiry(
        &backend,
        &["alice".to_string(), "bob".to_string()],
    )
    .await
    .expect("loads");
    assert_eq!(
        got,
        vec![
            (
                "alice".to_string(),
                Some(("soon gone".to_string(), Some(at(1_000))))
            ),
            ("bob".to_string(), Some(("hi, there".to_string(), None))),
        ]
    );
}

#[tokio::test]
async fn a_damaged_deadline_is_an_error_naming_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.csv");
    for (bad, key) in [
        ("put,k2,2,soon\n", Some("k2")),
        ("put,k2,2,1.5\n", Some("k2")),
        ("put,k2,2,99999999999999999999\n", Some("k2")),
        ("del,k1,,1000\n", None),
        ("put,k2,2\n", None),
    ] {
        let text = format!("{HEADER}put,k1,1,1000\n{bad}put,k3,3,\n");
        std::fs::write(&path, &text).expect("writes");
        let backend = CsvBackend::new(&path);
        let err = StorageBackend::<String, u32>::load_with_expiry_into(&backend, &mut |_, _, _| {})
            .await
            .expect_err("a damaged record fails the load");
        let PersistentError::Corrupt { location, .. } = &err else {
            panic!("{bad:?}: expected Corrupt, got {err:?}");
        };
        assert_eq!(location.store, path.display().to_string());
        assert_eq!(location.line, Some(3), "{bad:?}: {err}");
        assert_eq!(
            location.key.as_deref(),
            key.map(|k| format!("\"{k}\"")).as_deref()
        );
        // Every read reports it, and nothing is changed.
        let err = StorageBackend::<String, u32>::load_keys_with_expiry(&backend, &["k1".into()])
            .await
            .expect_err("and a lookup");
        assert!(matches!(err, PersistentError::Corrupt { .. }), "{err:?}");
        drop(backend);
        assert_eq!(read(&path), text);
    }
}

#[tokio::test]
async fn automatic_compaction_keeps_the_deadlines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auto.csv");
    let backend = CsvBackend::builder(&path)
        .compaction(Compaction::when_dead(10, 50))
        .build();
    for i in 0..30_i64 {
        apply(&backend, &[put_until("k", 1, i)]).await;
    }
    assert!(read(&path).lines().count() < 20, "compacted");
    let backend = reopen(backend);
    assert_eq!(stored(&backend).await, expected(&[("k", 1, Some(29))]));
}

/// A file created in the legacy key format (by a tool copying a legacy
/// file) is created as 0.2.0 created one, and gets the field the same way.
#[tokio::test]
async fn a_new_legacy_key_file_is_version_2_until_its_first_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("legacy.csv");
    let backend = CsvBackend::builder(&path)
        .new_store_key_format(KeyFormat::Legacy)
        .build();
    apply(&backend, &[put("42", 1)]).await;
    assert_eq!(read(&path), "persistent-map-csv/2,key,value\nput,42,1\n");
    apply(&backend, &[put_until("42", 2, 1_000)]).await;
    assert_eq!(
        read(&path),
        "persistent-map-csv/4,key,value,expires_at\nput,42,1,\nput,42,2,1000\n"
    );
    let backend = reopen(backend);
    assert_eq!(
        backend.key_format().await.expect("opens"),
        KeyFormat::Legacy
    );
    assert_eq!(stored(&backend).await, expected(&[("42", 2, Some(1_000))]));
}

/// A removal of an entry that already expired writes nothing to a file the
/// map holds alone (the entry is invisible), yet the sweep must still delete
/// it from the file: in write-behind mode the removal used to drop it from
/// the sweep's sight, and the expired record stayed in the file.
#[tokio::test]
async fn an_expired_entry_removed_before_the_sweep_is_still_swept_from_the_file() {
    for behind in [false, true] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("map.csv");
        let builder = PersistentMap::builder(CsvBackend::new(&path))
            .sweep_interval(Duration::from_secs(24 * 3600));
        let builder = if behind {
            builder.write_behind(WriteBehind::new())
        } else {
            builder
        };
        let map: PersistentMap<String, String, _> = builder.build().await.expect("open");
        map.insert_with_ttl("k".into(), "v".into(), Duration::ZERO)
            .await
            .expect("insert_with_ttl");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while map.get("k").is_some() {
            assert!(tokio::time::Instant::now() < deadline, "the entry expires");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(map.remove(&"k".to_string()).await.expect("remove"), None);
        map.sweep_expired().await.expect("sweep_expired");
        map.close().await.expect("close");
        drop(map);
        let backend = CsvBackend::new(&path);
        let stored =
            StorageBackend::<String, String>::load_keys_with_expiry(&backend, &["k".to_string()])
                .await
                .expect("load");
        assert_eq!(stored, vec![("k".to_string(), None)], "behind={behind}");
    }
}
