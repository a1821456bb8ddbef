//! Group 4: bad files. Hand-made damaged CSV and SQLite stores, each a typed
//! error naming the file and line (or table and key), never a panic, nothing
//! dropped silently; then a seeded mutation fuzz (byte flips, truncations,
//! zero-filled tails) of valid files, each loaded in a child process with a
//! timeout: every load is Ok with exactly the valid records, or an error
//! with a location.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use persistent_map_core::{PersistentError, PersistentMap, StorageBackend};
use persistent_map_csv::CsvBackend;
use persistent_map_reliability::child::{self, error_chain, error_kind, Backend, ChildArgs, Mode};
use persistent_map_reliability::model::State;
use persistent_map_reliability::oracle::{expect_csv, Expect};
use persistent_map_reliability::{figures, scaled, skip};
use persistent_map_sqlite::SqliteBackend;

const BIN: &str = env!("CARGO_BIN_EXE_pm-child");
const HEADER: &str = "persistent-map-csv/2,key,value\n";

#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    panics: u64,
    hangs: u64,
    located_errors: u64,
    silently_dropped: u64,
    exact_ok: u64,
    unlocated_errors: u64,
    false_alarms: u64,
}

impl Tally {
    fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("cases", self.cases),
            ("panics", self.panics),
            ("hangs", self.hangs),
            ("located_errors", self.located_errors),
            ("silently_dropped", self.silently_dropped),
            ("exact_ok", self.exact_ok),
            ("unlocated_errors", self.unlocated_errors),
            ("false_alarms", self.false_alarms),
        ]
    }

    fn assert_clean(&self, name: &str) {
        assert_eq!(
            (
                self.panics,
                self.hangs,
                self.silently_dropped,
                self.unlocated_errors,
                self.false_alarms
            ),
            (0, 0, 0, 0, 0),
            "{name}: {self:?}"
        );
    }
}

/// What a hand-made case must give.
enum Want {
    /// An error of one of these kinds whose message names all of `names`.
    Error(&'static [&'static str], Vec<String>),
    /// Exactly these entries.
    Entries(State),
}

/// A hand-made file: its name, its bytes, and what loading it must give.
type Case = (&'static str, Vec<u8>, fn(&Path) -> Want);

fn state(pairs: &[(&str, u64)]) -> State {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Loads in a task, so a panic is caught and counted rather than fatal.
async fn load<K, B>(backend: B) -> Result<Result<HashMap<K, u64>, PersistentError>, String>
where
    K: Eq
        + std::hash::Hash
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    B: StorageBackend<K, u64> + Send + Sync + 'static,
{
    let task = tokio::spawn(async move {
        let map = PersistentMap::<K, u64, B>::new(backend).await?;
        let entries: HashMap<K, u64> = map.iter().collect();
        map.close().await?;
        Ok(entries)
    });
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(join)) => Err(format!("panic: {join}")),
        Err(_) => Err(String::from("hang")),
    }
}

fn judge_case(
    tally: &mut Tally,
    name: &str,
    outcome: Result<Result<State, PersistentError>, String>,
    want: &Want,
) {
    tally.cases += 1;
    match (outcome, want) {
        (Err(what), _) => {
            eprintln!("case {name}: {what}");
            if what == "hang" {
                tally.hangs += 1;
            } else {
                tally.panics += 1;
            }
        }
        (Ok(Ok(got)), Want::Entries(expected)) if &got == expected => tally.exact_ok += 1,
        (Ok(Ok(got)), _) => {
            eprintln!("case {name}: loaded {got:?} where it must not");
            tally.silently_dropped += 1;
        }
        (Ok(Err(err)), Want::Error(kinds, names)) => {
            let text = error_chain(&err);
            let kind = error_kind(&err);
            if kinds.contains(&kind.as_str()) && names.iter().all(|n| text.contains(n.as_str())) {
                tally.located_errors += 1;
            } else {
                eprintln!("case {name}: {kind} error {text:?} lacks one of {names:?} or is not one of {kinds:?}");
                tally.unlocated_errors += 1;
            }
        }
        (Ok(Err(err)), Want::Entries(_)) => {
            eprintln!("case {name}: error {} for a valid file", error_chain(&err));
            tally.false_alarms += 1;
        }
    }
}

fn into_state<K: ToString>(
    r: Result<Result<HashMap<K, u64>, PersistentError>, String>,
) -> Result<Result<State, PersistentError>, String> {
    r.map(|inner| inner.map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn line(path: &Path, n: u64) -> Vec<String> {
    vec![path.display().to_string(), format!("line {n}")]
}

#[tokio::test]
async fn bad_csv_files_are_located_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut tally = Tally::default();
    let big_value = "9".repeat(16 << 20);
    let cases: Vec<Case> = vec![
        (
            "torn last line",
            format!("{HEADER}put,k1,1\nput,k2,2\nput,k3,3").into_bytes(),
            |_| Want::Entries(state(&[("k1", 1), ("k2", 2)])),
        ),
        (
            "wrong field count",
            format!("{HEADER}put,k1,1\nput,k2\nput,k3,3\n").into_bytes(),
            |p| Want::Error(&["Corrupt"], line(p, 3)),
        ),
        (
            "NUL bytes in a value",
            format!("{HEADER}put,k1,1\nput,k2,2\0\0\nput,k3,3\n").into_bytes(),
            |p| Want::Error(&["Codec"], line(p, 3)),
        ),
        (
            "NUL line mid-file",
            format!("{HEADER}put,k1,1\n\0\0\0\0\nput,k3,3\n").into_bytes(),
            |p| Want::Error(&["Corrupt"], line(p, 3)),
        ),
        (
            "zero-filled tail",
            format!("{HEADER}put,k1,1\nput,k2,2\n\0\0\0\0\0\0\0\0").into_bytes(),
            |_| Want::Entries(state(&[("k1", 1), ("k2", 2)])),
        ),
        (
            "invalid UTF-8",
            [
                format!("{HEADER}put,k1,1\nput,k").into_bytes(),
                vec![0xff, 0xfe],
                b",2\nput,k3,3\n".to_vec(),
            ]
            .concat(),
            |p| Want::Error(&["Corrupt"], line(p, 3)),
        ),
        (
            "byte order mark",
            [
                vec![0xef, 0xbb, 0xbf],
                format!("{HEADER}put,k1,1\n").into_bytes(),
            ]
            .concat(),
            |p| Want::Error(&["Corrupt", "Codec"], line(p, 1)),
        ),
        (
            "16 MiB line",
            format!("{HEADER}put,k1,1\nput,k2,{big_value}\nput,k3,3\n").into_bytes(),
            |p| Want::Error(&["Codec"], line(p, 3)),
        ),
        (
            "wrong value type",
            format!("{HEADER}put,k1,1\nput,k2,\"\"\"text\"\"\"\n").into_bytes(),
            |p| {
                let mut names = line(p, 3);
                names.push(String::from("k2"));
                Want::Error(&["Codec"], names)
            },
        ),
        (
            "duplicate keys",
            format!("{HEADER}put,k1,1\nput,k1,2\nput,k2,3\ndel,k2,\n").into_bytes(),
            |_| Want::Entries(state(&[("k1", 2)])),
        ),
        (
            "unknown op",
            format!("{HEADER}put,k1,1\nupsert,k2,2\n").into_bytes(),
            |p| Want::Error(&["Corrupt"], line(p, 3)),
        ),
        (
            "batch cut inside its last record",
            format!("{HEADER}put,k1,1\nbatch,,3\nput,k2,2\nput,k3,3").into_bytes(),
            |_| Want::Entries(state(&[("k1", 1)])),
        ),
        (
            "batch marker promising more complete records than follow",
            format!("{HEADER}put,k1,1\nbatch,,3\nput,k2,2\nput,k3,3\n").into_bytes(),
            |p| Want::Error(&["Corrupt"], line(p, 3)),
        ),
        (
            "batch marker count flipped mid-file",
            format!("{HEADER}put,k1,1\nbatch,,7\nput,k2,2\nput,k3,3\nput,k4,4\ndel,k1,\n")
                .into_bytes(),
            |p| Want::Error(&["Corrupt"], line(p, 3)),
        ),
    ];
    for (index, (name, bytes, want)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("case{index}.csv"));
        std::fs::write(&path, &bytes).expect("writes the case");
        let outcome = into_state(load::<String, _>(CsvBackend::new(&path)).await);
        judge_case(&mut tally, name, outcome, &want(&path));
    }

    // A key that does not parse as the key type.
    let path = dir.path().join("badkey.csv");
    std::fs::write(&path, format!("{HEADER}put,1,1\nput,abc,2\n")).expect("writes");
    let outcome = into_state(load::<u32, _>(CsvBackend::new(&path)).await);
    let mut names = line(&path, 3);
    names.push(String::from("abc"));
    judge_case(
        &mut tally,
        "unparsable key",
        outcome,
        &Want::Error(&["Codec"], names),
    );

    // A directory where the file should be.
    let path = dir.path().join("isadir.csv");
    std::fs::create_dir(&path).expect("mkdir");
    let outcome = into_state(load::<String, _>(CsvBackend::new(&path)).await);
    judge_case(
        &mut tally,
        "directory",
        outcome,
        &Want::Error(&["Io"], vec![path.display().to_string()]),
    );

    // A read-only location (root ignores permission bits, so a read-only mount).
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&ro)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let path = ro.join("store.csv");
        std::fs::write(&path, format!("{HEADER}put,k1,1\n")).expect("writes");
        let remounted = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&ro)
            .status()
            .is_ok_and(|s| s.success());
        if remounted {
            let outcome = into_state(load::<String, _>(CsvBackend::new(&path)).await);
            judge_case(
                &mut tally,
                "read-only location",
                outcome,
                &Want::Error(&["Io"], vec![ro.display().to_string()]),
            );
        } else {
            skip(
                "bad_csv_files",
                "cannot remount read-only: read-only location case not run",
            );
        }
        let _ = std::process::Command::new("umount").arg(&ro).status();
    } else {
        skip(
            "bad_csv_files",
            "cannot mount a tmpfs (not root?): read-only location case not run",
        );
    }

    figures("bad_csv_files", &tally.pairs());
    tally.assert_clean("bad_csv_files");
    assert!(tally.cases >= 14);
}

async fn sqlite_with(path: &Path, setup: &[&str]) {
    let db = SqliteBackend::new(path).await.expect("creates");
    for sql in setup {
        sqlx::query(sql)
            .execute(db.pool())
            .await
            .expect("setup sql");
    }
    db.close().await;
}

fn table_key(path: &Path, key: Option<&str>) -> Vec<String> {
    let mut names = vec![path.display().to_string(), String::from("\"kv\"")];
    names.extend(key.map(String::from));
    names
}

#[tokio::test]
async fn bad_sqlite_files_are_located_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut tally = Tally::default();
    let open = |p: PathBuf| async move { SqliteBackend::new(&p).await };

    let path = dir.path().join("json.db");
    sqlite_with(
        &path,
        &["INSERT INTO kv (key, value) VALUES ('k1', '1'), ('k2', '{bad')"],
    )
    .await;
    let outcome = match open(path.clone()).await {
        Ok(db) => into_state(load::<String, _>(db).await),
        Err(e) => Ok(Err(e)),
    };
    judge_case(
        &mut tally,
        "value not JSON",
        outcome,
        &Want::Error(&["Codec"], table_key(&path, Some("k2"))),
    );

    // NULL and BLOB need a table without the NOT NULL / TEXT discipline: a
    // hand-made (0.1.x style) table.
    for (name, value) in [("NULL value", "NULL"), ("BLOB value", "X'0102'")] {
        let path = dir.path().join(format!("{}.db", name.replace(' ', "_")));
        {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
                .await
                .expect("pool");
            sqlx::query("CREATE TABLE kv (key TEXT PRIMARY KEY, value)")
                .execute(&pool)
                .await
                .expect("create");
            sqlx::query(&format!(
                "INSERT INTO kv (key, value) VALUES ('k1', '1'), ('k2', {value})"
            ))
            .execute(&pool)
            .await
            .expect("insert");
            pool.close().await;
        }
        let outcome = match open(path.clone()).await {
            Ok(db) => into_state(load::<String, _>(db).await),
            Err(e) => Ok(Err(e)),
        };
        judge_case(
            &mut tally,
            name,
            outcome,
            &Want::Error(&["Codec"], table_key(&path, Some("k2"))),
        );
    }

    let path = dir.path().join("missing.db");
    sqlite_with(&path, &["DROP TABLE kv"]).await;
    let outcome = match open(path.clone()).await {
        Ok(db) => into_state(load::<String, _>(db).await),
        Err(e) => Ok(Err(e)),
    };
    judge_case(
        &mut tally,
        "missing table",
        outcome,
        &Want::Error(&["Backend", "Corrupt"], table_key(&path, None)),
    );

    let path = dir.path().join("random.db");
    let mut rng = fastrand::Rng::with_seed(7);
    std::fs::write(&path, (0..8192).map(|_| rng.u8(..)).collect::<Vec<u8>>()).expect("writes");
    let outcome = match open(path.clone()).await {
        Ok(db) => into_state(load::<String, _>(db).await),
        Err(e) => Ok(Err(e)),
    };
    judge_case(
        &mut tally,
        "random bytes",
        outcome,
        &Want::Error(&["Corrupt"], vec![path.display().to_string()]),
    );

    // A valid file with enough rows to span many pages, then damaged.
    let valid = dir.path().join("valid.db");
    {
        let db = SqliteBackend::builder(&valid)
            .journal_mode(persistent_map_sqlite::JournalMode::Delete)
            .build()
            .await
            .expect("creates");
        let map = PersistentMap::<String, u64, _>::new(db)
            .await
            .expect("opens");
        map.insert_many((0..3000_u64).map(|i| (format!("key-{i:05}-{}", "x".repeat(40)), i)))
            .await
            .expect("inserts");
        map.close().await.expect("closes");
    }
    let bytes = std::fs::read(&valid).expect("reads");

    let path = dir.path().join("half.db");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("writes");
    let outcome = match open(path.clone()).await {
        Ok(db) => into_state(load::<String, _>(db).await),
        Err(e) => Ok(Err(e)),
    };
    judge_case(
        &mut tally,
        "cut in half",
        outcome,
        &Want::Error(&["Corrupt"], vec![path.display().to_string()]),
    );

    let path = dir.path().join("header.db");
    let mut damaged = bytes.clone();
    damaged[..16].copy_from_slice(b"garbage-garbage!");
    std::fs::write(&path, &damaged).expect("writes");
    let outcome = match open(path.clone()).await {
        Ok(db) => into_state(load::<String, _>(db).await),
        Err(e) => Ok(Err(e)),
    };
    judge_case(
        &mut tally,
        "damaged header",
        outcome,
        &Want::Error(&["Corrupt"], vec![path.display().to_string()]),
    );

    figures("bad_sqlite_files", &tally.pairs());
    tally.assert_clean("bad_sqlite_files");
    assert_eq!(tally.cases, 7);
}

/// A valid CSV file written by the backend: puts, removes and batches.
async fn valid_csv(path: &Path, seed: u64) {
    let map = PersistentMap::<String, u64, _>::new(CsvBackend::new(path))
        .await
        .expect("opens");
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..60_u64 {
        let key = format!("k{}", rng.u32(0..12));
        match rng.u8(0..10) {
            0 => {
                map.remove(&key).await.expect("removes");
            }
            1 | 2 => {
                let batch: Vec<(String, u64)> = (0..rng.u64(2..4))
                    .map(|j| (format!("k{}", rng.u32(0..12)), i * 10 + j))
                    .collect();
                map.insert_many(batch).await.expect("batch");
            }
            _ => {
                map.insert(key, i).await.expect("inserts");
            }
        }
    }
    map.close().await.expect("closes");
}

fn load_in_child(backend: Backend, path: &Path) -> child::Transcript {
    let mut args = ChildArgs::new(backend, path, Mode::Through, 0);
    args.load_only = true;
    child::run(args.command(Path::new(BIN)), Duration::from_secs(20)).expect("child starts")
}

#[tokio::test]
async fn mutation_fuzz_loads_are_exact_or_located() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut tally = Tally::default();
    let mut unknown = 0_u64;
    let mut rng = fastrand::Rng::with_seed(0xF022);
    let valid = dir.path().join("valid.csv");
    let runs = scaled(300);
    for run in 0..runs {
        if run % 50 == 0 {
            let _ = std::fs::remove_file(&valid);
            valid_csv(&valid, rng.u64(..)).await;
        }
        let mut bytes = std::fs::read(&valid).expect("reads");
        match rng.u8(0..4) {
            0 | 1 => {
                for _ in 0..rng.usize(1..=3) {
                    let at = rng.usize(0..bytes.len());
                    bytes[at] ^= rng.u8(1..=255);
                }
            }
            2 => bytes.truncate(rng.usize(0..bytes.len())),
            _ => {
                let keep = rng.usize(HEADER.len()..bytes.len());
                let zeros = bytes.len() - keep;
                bytes.truncate(keep);
                bytes.resize(keep + rng.usize(1..=zeros.max(1)), 0);
            }
        }
        let path = dir.path().join(format!("fuzz{run}.csv"));
        std::fs::write(&path, &bytes).expect("writes");
        let expect = expect_csv(&bytes);
        let t = load_in_child(Backend::Csv, &path);
        tally.cases += 1;
        let located = |r: &child::Reported| {
            r.message.contains(&path.display().to_string()) && r.message.contains("line ")
        };
        if t.timed_out {
            tally.hangs += 1;
        } else if !t.done || t.status.is_some_and(|s| !s.success()) {
            eprintln!("fuzz {run}: child died: {:?}\n{}", t.status, t.stderr);
            tally.panics += 1;
        } else {
            match (&t.loaded, &t.load_error, &expect) {
                (Some(got), _, Expect::Entries(want)) if got == want => tally.exact_ok += 1,
                (Some(_), _, Expect::Unknown) => {
                    unknown += 1;
                    tally.exact_ok += 1;
                }
                (Some(got), _, _) => {
                    eprintln!("fuzz {run}: loaded {got:?}, expected {expect:?}");
                    tally.silently_dropped += 1;
                }
                (None, Some(err), Expect::Entries(_)) => {
                    eprintln!("fuzz {run}: {err:?} for a valid file");
                    tally.false_alarms += 1;
                }
                (None, Some(err), _) if located(err) || err.kind == "UnsupportedFormat" => {
                    tally.located_errors += 1;
                    if matches!(expect, Expect::Unknown) {
                        unknown += 1;
                    }
                }
                (None, err, _) => {
                    eprintln!("fuzz {run}: unlocated {err:?}");
                    tally.unlocated_errors += 1;
                }
            }
        }
    }

    // SQLite: truncations of a valid file; no checksums, so byte flips in
    // values cannot be detected by any reader and are not judged here.
    let db = dir.path().join("valid.db");
    {
        let backend = SqliteBackend::builder(&db)
            .journal_mode(persistent_map_sqlite::JournalMode::Delete)
            .build()
            .await
            .expect("creates");
        let map = PersistentMap::<String, u64, _>::new(backend)
            .await
            .expect("opens");
        map.insert_many((0..2000_u64).map(|i| (format!("key-{i:05}-{}", "y".repeat(30)), i)))
            .await
            .expect("inserts");
        map.close().await.expect("closes");
    }
    let bytes = std::fs::read(&db).expect("reads");
    let full: State = (0..2000_u64)
        .map(|i| (format!("key-{i:05}-{}", "y".repeat(30)), i))
        .collect();
    for run in 0..scaled(40) {
        let path = dir.path().join(format!("fuzz{run}.db"));
        std::fs::write(&path, &bytes[..rng.usize(0..bytes.len())]).expect("writes");
        let t = load_in_child(Backend::Sqlite, &path);
        tally.cases += 1;
        if t.timed_out {
            tally.hangs += 1;
        } else if t
            .status
            .is_some_and(|s| s.code().is_none() || s.code() == Some(101))
        {
            tally.panics += 1;
        } else {
            match (&t.loaded, &t.load_error) {
                (Some(got), _) if got == &full || got.is_empty() && bytes.is_empty() => {
                    tally.exact_ok += 1
                }
                (Some(got), _) => {
                    eprintln!(
                        "sqlite fuzz {run}: loaded {} of {} rows without an error",
                        got.len(),
                        full.len()
                    );
                    tally.silently_dropped += 1;
                }
                (None, Some(err)) if err.message.contains(&path.display().to_string()) => {
                    tally.located_errors += 1
                }
                (None, err) => {
                    eprintln!("sqlite fuzz {run}: unlocated {err:?}");
                    tally.unlocated_errors += 1;
                }
            }
        }
    }
    let mut pairs = tally.pairs();
    pairs.push(("oracle_unknown", unknown));
    figures("mutation_fuzz", &pairs);
    tally.assert_clean("mutation_fuzz");
    assert!(tally.located_errors > 0 && tally.exact_ok > 0);
}
