//! The CSV backend on real files: round trips, the on-disk format, tombstones,
//! batches, compaction, options and 0.1.x files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{
    BatchOp, CodecDirection, EntryPart, PersistentError, PersistentMap, StorageBackend,
};
use persistent_map_csv::{Compaction, CsvBackend, Delimiter, SyncPolicy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    nickname: Option<String>,
    tags: Vec<String>,
    scores: BTreeMap<String, i64>,
    address: Address,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Address {
    city: String,
    zip: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

fn awkward() -> Vec<String> {
    [
        "plain",
        "",
        "comma, separated",
        "semi;colon",
        "\"quoted\"",
        "new\nline",
        "carriage\r\nreturn",
        "tab\there",
        "unicode ñ 中文 🦀",
        "put",
        "del",
        "batch",
        "persistent-map-csv/2",
        "42",
        "{\"json\":1}",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn profile(i: i64) -> Profile {
    Profile {
        name: format!("user \"{i}\", the\nfirst"),
        nickname: (i % 2 == 0).then(|| String::from("nick")),
        tags: vec![String::from("a,b"), String::new()],
        scores: BTreeMap::from([(String::from("x"), i), (String::from("ü"), -i)]),
        address: Address {
            city: String::from("Zürich"),
            zip: None,
        },
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("file is readable")
}

fn line_count(path: &Path) -> usize {
    read(path).matches('\n').count()
}

#[tokio::test]
async fn awkward_string_keys_and_values_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/dirs/strings.csv");
    let map = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("opens");
    for (i, s) in awkward().into_iter().enumerate() {
        map.insert(s.clone(), format!("{s}|{i}"))
            .await
            .expect("inserts");
    }
    map.close().await.expect("closes");
    drop(map);

    let map: PersistentMap<String, String, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("reopens");
    assert_eq!(map.len(), awkward().len());
    for (i, s) in awkward().into_iter().enumerate() {
        assert_eq!(map.get(&s), Some(format!("{s}|{i}")), "key {s:?}");
    }
}

#[tokio::test]
async fn integer_tuple_and_struct_keys_with_nested_values_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ints = dir.path().join("ints.csv");
    let tuples = dir.path().join("tuples.csv");
    let points = dir.path().join("points.csv");
    {
        let a = PersistentMap::new(CsvBackend::new(&ints))
            .await
            .expect("opens");
        let b = PersistentMap::new(CsvBackend::new(&tuples))
            .await
            .expect("opens");
        let c = PersistentMap::new(CsvBackend::new(&points))
            .await
            .expect("opens");
        for i in 0..20_i64 {
            a.insert(i as u64, profile(i)).await.expect("inserts");
            b.insert((i as u32, format!("t,{i}")), vec![i as u8; 3])
                .await
                .expect("inserts");
            c.insert(Point { x: i as i32, y: -1 }, Some(format!("p{i}")))
                .await
                .expect("inserts");
        }
        a.remove(&3).await.expect("removes");
        c.insert(Point { x: 0, y: -1 }, None)
            .await
            .expect("inserts");
        for m in [a.close().await, b.close().await, c.close().await] {
            m.expect("closes");
        }
    }
    let a: PersistentMap<u64, Profile, _> = PersistentMap::new(CsvBackend::new(&ints))
        .await
        .expect("reopens");
    let b: PersistentMap<(u32, String), Vec<u8>, _> = PersistentMap::new(CsvBackend::new(&tuples))
        .await
        .expect("reopens");
    let c: PersistentMap<Point, Option<String>, _> = PersistentMap::new(CsvBackend::new(&points))
        .await
        .expect("reopens");
    assert_eq!(a.len(), 19);
    assert_eq!(a.get(&3), None);
    assert_eq!(a.get(&4), Some(profile(4)));
    assert_eq!(b.get(&(7, "t,7".to_string())), Some(vec![7; 3]));
    assert_eq!(c.get(&Point { x: 0, y: -1 }), Some(None));
    assert_eq!(c.get(&Point { x: 5, y: -1 }), Some(Some("p5".into())));
    // Keys stay readable: integers as numbers, structs as JSON.
    assert!(read(&ints).contains("\nput,4,"));
    assert!(read(&points).contains(r#"put,"{""x"":5,""y"":-1}","""p5""""#));
}

#[tokio::test]
async fn file_has_a_header_then_one_record_per_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("users.csv");
    let map = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("opens");
    map.insert("alice".to_string(), 30_u32)
        .await
        .expect("inserts");
    map.insert("bob, jr".to_string(), 7).await.expect("inserts");
    map.insert("alice".to_string(), 31).await.expect("inserts");
    map.remove(&"bob, jr".to_string()).await.expect("removes");
    assert_eq!(
        read(&path),
        "persistent-map-csv/5,key,value,expires_at\nput,alice,30,\nput,\"bob, jr\",7,\nput,alice,31,\ndel,\"bob, jr\",,\n"
    );
}

#[tokio::test]
async fn a_remove_appends_one_tombstone_and_rewrites_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kv.csv");
    let map = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("opens");
    for i in 0..50_u32 {
        map.insert(format!("k{i}"), i).await.expect("inserts");
    }
    let before = read(&path);
    map.remove(&"k10".to_string()).await.expect("removes");
    let after = read(&path);
    assert!(after.starts_with(&before), "earlier records are untouched");
    assert_eq!(&after[before.len()..], "del,k10,,\n");
    assert_eq!(line_count(&path), 52);
    map.close().await.expect("closes");
    drop(map);
    let map: PersistentMap<String, u32, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("reopens");
    assert_eq!(map.len(), 49);
    assert!(!map.contains_key("k10"));
}

#[tokio::test]
async fn a_batch_is_one_append_behind_a_marker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("batch.csv");
    let backend = CsvBackend::new(&path);
    let batch = vec![
        BatchOp::Put {
            key: "a".to_string(),
            value: 1_u32,
        },
        BatchOp::Put {
            key: "b".to_string(),
            value: 2,
        },
        BatchOp::Delete {
            key: "a".to_string(),
        },
    ];
    backend.apply_batch(&batch).await.expect("applies");
    assert_eq!(
        read(&path),
        "persistent-map-csv/5,key,value,expires_at\nbatch,,3,\nput,a,1,\nput,b,2,\ndel,a,,\n"
    );
    let loaded: std::collections::HashMap<String, u32> = backend.load_all().await.expect("loads");
    assert_eq!(loaded, [("b".to_string(), 2)].into());
}

/// A value whose serialization always fails.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses"))
    }
}

#[tokio::test]
async fn an_unencodable_value_fails_the_whole_batch_naming_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("enc.csv");
    let backend = CsvBackend::new(&path);
    let first: Vec<BatchOp<String, Option<Unencodable>>> = vec![BatchOp::Put {
        key: "fine".into(),
        value: None,
    }];
    backend.apply_batch(&first).await.expect("applies");
    let before = read(&path);
    let batch = vec![
        BatchOp::Put {
            key: "ok".to_string(),
            value: None,
        },
        BatchOp::Put {
            key: "bad key".to_string(),
            value: Some(Unencodable),
        },
    ];
    let err = backend.apply_batch(&batch).await.expect_err("refused");
    match &err {
        PersistentError::Codec {
            direction: CodecDirection::Encode,
            part: EntryPart::Value,
            location,
            ..
        } => assert_eq!(location.key.as_deref(), Some("\"bad key\"")),
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(read(&path), before, "nothing of the batch was written");
}

#[tokio::test]
async fn explicit_compaction_keeps_exactly_the_live_entries_and_shrinks_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("compact.csv");
    let backend = CsvBackend::builder(&path)
        .compaction(Compaction::Manual)
        .build();
    let map = PersistentMap::new(backend).await.expect("opens");
    for round in 0..10_u32 {
        for i in 0..20_u32 {
            map.insert(format!("k,{i}"), round * 100 + i)
                .await
                .expect("inserts");
        }
    }
    for i in 0..5_u32 {
        map.remove(&format!("k,{i}")).await.expect("removes");
    }
    let before = std::fs::metadata(&path).expect("metadata").len();
    assert_eq!(line_count(&path), 1 + 200 + 5);
    map.backend().compact().await.expect("compacts");
    let after = std::fs::metadata(&path).expect("metadata").len();
    assert!(after < before / 5, "{after} < {before} / 5");
    assert_eq!(line_count(&path), 1 + 15);
    // Writes after compaction go to the new file.
    map.insert("late".to_string(), 1).await.expect("inserts");
    map.close().await.expect("closes");
    drop(map);

    let map: PersistentMap<String, u32, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("reopens");
    assert_eq!(map.len(), 16);
    for i in 5..20_u32 {
        assert_eq!(map.get(&format!("k,{i}")), Some(900 + i));
    }
    assert_eq!(map.get("late"), Some(1));
    assert!(!dir.path().join("compact.csv.rewrite.tmp").exists());
}

#[tokio::test]
async fn compaction_runs_by_itself_past_the_threshold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auto.csv");
    let backend = CsvBackend::builder(&path)
        .compaction(Compaction::when_dead(10, 50))
        .build();
    let map = PersistentMap::new(backend).await.expect("opens");
    map.insert("stable".to_string(), 0_u32)
        .await
        .expect("inserts");
    for i in 0..100_u32 {
        map.insert("hot".to_string(), i).await.expect("inserts");
    }
    // Without compaction there would be 101 rows; it runs whenever 10 dead
    // rows make up half the file, so the file stays small.
    assert!(line_count(&path) <= 1 + 12, "{}", read(&path));
    map.close().await.expect("closes");
    drop(map);
    let map: PersistentMap<String, u32, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("reopens");
    assert_eq!(map.get("hot"), Some(99));
    assert_eq!(map.get("stable"), Some(0));
    assert_eq!(map.len(), 2);
}

#[tokio::test]
async fn clear_leaves_only_the_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clear.csv");
    let map = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("opens");
    map.insert(1_u8, 1_u8).await.expect("inserts");
    map.clear().await.expect("clears");
    assert_eq!(read(&path), "persistent-map-csv/5,key,value,expires_at\n");
    map.insert(2, 2).await.expect("inserts");
    map.close().await.expect("closes");
    drop(map);
    let map: PersistentMap<u8, u8, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("reopens");
    assert_eq!(map.iter().collect::<Vec<_>>(), vec![(2, 2)]);
}

#[tokio::test]
async fn a_file_keeps_the_delimiter_it_was_created_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("semi.csv");
    let backend = CsvBackend::builder(&path)
        .delimiter(Delimiter::Semicolon)
        .sync(SyncPolicy::EveryWrite)
        .build();
    let map = PersistentMap::new(backend).await.expect("opens");
    map.insert("a;b".to_string(), "x,y".to_string())
        .await
        .expect("inserts");
    map.close().await.expect("closes");
    drop(map);
    assert_eq!(
        read(&path),
        "persistent-map-csv/5;key;value;expires_at\nput;\"a;b\";\"\"\"x,y\"\"\";\n"
    );
    // Opened with the default (comma) option, the header's delimiter wins.
    let map: PersistentMap<String, String, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("reopens");
    assert_eq!(map.get("a;b"), Some("x,y".to_string()));
    map.insert("c".to_string(), "d".to_string())
        .await
        .expect("inserts");
    assert!(read(&path).ends_with("put;c;\"\"\"d\"\"\";\n"));
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
async fn a_0_1_file_of_strings_loads_is_migrated_and_stays_loadable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fixture(dir.path(), "v0_1_strings.csv");
    let original = read(&path);
    let map: PersistentMap<String, String, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("loads a 0.1.x file");
    assert_eq!(map.len(), 3);
    assert_eq!(map.get("alice"), Some("updated".into()));
    assert_eq!(map.get("bob"), Some("hi, there".into()));
    assert_eq!(map.get("carol"), Some("she said \"yes\"".into()));
    assert_eq!(read(&path), original, "loading alone changes nothing");

    map.insert("dave".into(), "new".into())
        .await
        .expect("inserts");
    map.remove(&"bob".to_string()).await.expect("removes");
    map.insert("7".into(), "seven".into())
        .await
        .expect("inserts");
    map.remove(&"7".to_string()).await.expect("removes");
    assert_eq!(
        map.backend().key_format().await.expect("open"),
        KeyFormat::Legacy
    );
    map.close().await.expect("closes");
    drop(map);
    // The migration adds the header of the legacy key format; keys keep
    // their 0.1.x text, a string that looks like JSON unquoted included.
    let migrated = read(&path);
    assert!(migrated.starts_with("persistent-map-csv/2,key,value\n"));
    assert!(
        migrated.ends_with("put,dave,\"\"\"new\"\"\"\ndel,bob,\nput,7,\"\"\"seven\"\"\"\ndel,7,\n")
    );

    let map: PersistentMap<String, String, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("reopens");
    assert_eq!(map.len(), 3);
    assert_eq!(map.get("alice"), Some("updated".into()));
    assert_eq!(map.get("carol"), Some("she said \"yes\"".into()));
    assert_eq!(map.get("dave"), Some("new".into()));
    assert_eq!(map.get("bob"), None);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
    active: bool,
}

#[tokio::test]
async fn a_0_1_file_of_structs_loads_and_is_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fixture(dir.path(), "v0_1_struct.csv");
    let ada = User {
        name: "Ada".into(),
        age: 36,
        active: true,
    };
    let lovelace = User {
        name: "Lovelace, Ada".into(),
        age: 37,
        active: false,
    };
    let map: PersistentMap<u32, User, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("loads a 0.1.x file");
    assert_eq!(map.get(&1), Some(ada.clone()));
    assert_eq!(map.get(&2), Some(lovelace.clone()));
    map.insert(3, ada.clone()).await.expect("inserts");
    map.close().await.expect("closes");
    drop(map);
    assert!(read(&path).contains("put,2,\"{\"\"name\"\":\"\"Lovelace, Ada\"\""));

    let map: PersistentMap<u32, User, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("reopens");
    assert_eq!(map.len(), 3);
    assert_eq!(map.get(&2), Some(lovelace));
    assert_eq!(map.get(&3), Some(ada));
}

/// A backend dropped with appends still queued (their callers gave up on
/// them) keeps the store locked until those appends are written, so the
/// next opener never reads, truncates or appends to a half-written file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_held_until_abandoned_appends_are_written() {
    const ABANDONED: usize = 400;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("s.csv");
    let big = "x".repeat(1024);
    let open = || {
        CsvBackend::builder(&path)
            .sync(SyncPolicy::EveryWrite)
            .build()
    };
    for round in 0..3 {
        let first = open();
        StorageBackend::<String, String>::save(&first, format!("small{round}"), "1".into())
            .await
            .expect("saves");
        for i in 0..ABANDONED {
            let save = StorageBackend::<String, String>::save(
                &first,
                format!("big{round}-{i}"),
                big.clone(),
            );
            futures::pin_mut!(save);
            // One poll hands the append to the file thread; then the caller gives up.
            let _ = futures::poll!(save.as_mut());
        }
        drop(first);

        let second = open();
        let seen: std::collections::HashMap<String, String> = second
            .load_all()
            .await
            .unwrap_or_else(|e| panic!("round {round}: the next opener reads the store: {e}"));
        let abandoned = |map: &std::collections::HashMap<String, String>| {
            (0..ABANDONED)
                .filter(|i| map.contains_key(&format!("big{round}-{i}")))
                .collect::<Vec<_>>()
        };
        StorageBackend::<String, String>::save(&second, format!("after{round}"), "2".into())
            .await
            .expect("saves");
        drop(second);

        let third = open();
        let last: std::collections::HashMap<String, String> = third
            .load_all()
            .await
            .unwrap_or_else(|e| panic!("round {round}: the store reopens: {e}"));
        assert_eq!(
            last.get(&format!("after{round}")).map(String::as_str),
            Some("2"),
            "round {round}: the second opener's write was lost"
        );
        // Whatever the second opener found is all there is: nothing of the
        // first backend landed after it took the store.
        assert_eq!(
            abandoned(&last),
            abandoned(&seen),
            "round {round}: appends of the dropped backend landed after the next opener took the store"
        );
        for i in abandoned(&last) {
            let value = &last[&format!("big{round}-{i}")];
            assert_eq!(value.len(), big.len(), "round {round}: append {i} is cut");
        }
    }
}

/// A key that is a string or a number, as an untagged enum: `"42"` and
/// `42` are two keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Number(u32),
}

/// `Option<String>` keys whose texts collide in the legacy key format.
fn colliding_keys() -> Vec<(Option<String>, u32)> {
    [
        None,
        Some("null"),
        Some("42"),
        Some(""),
        Some("\"x\""),
        Some("alice"),
    ]
    .into_iter()
    .map(|k| k.map(str::to_owned))
    .zip(1..)
    .collect()
}

#[tokio::test]
async fn keys_that_share_a_legacy_text_stay_distinct_across_a_reopen_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.csv");
    let map: PersistentMap<Option<String>, u32, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("opens");
    for (k, v) in colliding_keys() {
        map.insert(k, v).await.expect("insert");
    }
    map.close().await.expect("closes");
    drop(map);
    assert!(read(&path).starts_with("persistent-map-csv/5,key,value,expires_at\n"));
    for compact in [false, true] {
        let backend = CsvBackend::new(&path);
        if compact {
            backend.compact().await.expect("compacts");
            assert!(read(&path).starts_with("persistent-map-csv/5,key,value,expires_at\n"));
        }
        let map: PersistentMap<Option<String>, u32, _> =
            PersistentMap::new(backend).await.expect("reopens");
        let mut got: Vec<(Option<String>, u32)> = map.iter().collect();
        got.sort_by_key(|(_, v)| *v);
        assert_eq!(got, colliding_keys(), "compacted: {compact}");
        map.close().await.expect("closes");
    }

    let path = dir.path().join("enum.csv");
    let map: PersistentMap<TextOrNumber, u32, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("opens");
    map.insert(TextOrNumber::Text("42".into()), 1)
        .await
        .expect("insert");
    map.insert(TextOrNumber::Number(42), 2)
        .await
        .expect("insert");
    map.close().await.expect("closes");
    drop(map);
    let map: PersistentMap<TextOrNumber, u32, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("reopens");
    assert_eq!(map.len(), 2);
    assert_eq!(map.get(&TextOrNumber::Text("42".into())), Some(1));
    assert_eq!(map.get(&TextOrNumber::Number(42)), Some(2));
}

#[tokio::test]
async fn a_version_2_file_keeps_the_legacy_key_format_through_writes_compaction_and_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v2.csv");
    std::fs::write(
        &path,
        "persistent-map-csv/2,key,value\nput,42,1\nput,alice,2\n",
    )
    .expect("writes");
    let map: PersistentMap<String, u32, _> = PersistentMap::new(CsvBackend::new(&path))
        .await
        .expect("opens");
    assert_eq!(
        map.backend().key_format().await.expect("open"),
        KeyFormat::Legacy
    );
    assert_eq!(map.get("42"), Some(1));
    map.insert("7".into(), 3).await.expect("insert");
    assert!(read(&path).ends_with("put,7,3\n"));
    map.backend().compact().await.expect("compacts");
    assert_eq!(
        read(&path),
        "persistent-map-csv/2,key,value\nput,42,1\nput,alice,2\nput,7,3\n"
    );
    map.clear().await.expect("clears");
    assert_eq!(read(&path), "persistent-map-csv/2,key,value\n");
}
