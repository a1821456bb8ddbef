//! Group 2: exact crash points and power loss.
//!
//! The child aborts at chosen points of the write path: after a CSV append
//! reached the file and before it is synced or acknowledged; after a SQLite
//! commit and before the map hears of it; in a CSV compaction between the
//! rename and the directory sync. The reopened store must hold everything
//! acknowledged, and everything that reached the file, with no hole.
//!
//! Power loss, CSV: every file operation of a run is recorded, and at every
//! sync the images a power cut could leave (synced bytes, a random prefix of
//! the unsynced ones, maybe zero-filled; a rename kept or not) are reopened:
//! nothing flushed is lost, no value is wrong, torn tails are repaired; the
//! same through a file's upgrade to the format with deadlines, where every
//! value must also come back with its deadline.
//! Power loss, SQLite: every pooled connection runs the documented journal
//! mode and synchronous level, and `strace -c` counts the syncs: one per
//! commit at `FULL`, at least one per flush in write-behind mode.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use persistent_map_core::{BatchOp, PersistentMap, StorageBackend};
use persistent_map_csv::CsvBackend;
use persistent_map_reliability::child::{Backend, ChildArgs, Crash, Mode, Running};
use persistent_map_reliability::cycle::{judge_run, possible_ops};
use persistent_map_reliability::model::{judge, State, Verdict};
use persistent_map_reliability::power::{Cut, Disk, Event, Recorder};
use persistent_map_reliability::stream::{op_at, Op};
use persistent_map_reliability::{figures, scaled, skip, stores};
use persistent_map_sqlite::{SqliteBackend, Synchronous};

const BIN: &str = env!("CARGO_BIN_EXE_pm-child");
const STRACE: &str = "/usr/bin/strace";

async fn crash_point(name: &str, backend: Backend, crash: Crash) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(if backend == Backend::Csv {
        "store.csv"
    } else {
        "store.db"
    });
    let mut rng = fastrand::Rng::with_seed(0xC0A5 + crash as u64);
    let cycles = scaled(50);
    let mut model = State::new();
    let (mut aborted, mut reached_kept, mut lost, mut holes, mut corrupt) =
        (0_u64, 0_u64, 0_u64, 0_u64, 0_u64);
    for cycle in 0..cycles {
        let mut args = ChildArgs::new(backend, &path, Mode::Through, 7000 + cycle as u64);
        args.crash = crash;
        if crash == Crash::CsvCompactRename {
            args.compact_every = 10;
            args.crash_at = rng.u64(1..=4);
        } else {
            args.crash_at = rng.u64(1..=40);
        }
        let t = Running::start(args.command(Path::new(BIN)))
            .expect("starts")
            .finish(Duration::from_secs(60));
        if t.crashed() && !t.timed_out {
            aborted += 1;
        }
        let reopened = match stores::reopen(backend, &path).await {
            Ok(r) => r,
            Err(err) => {
                eprintln!("{name} cycle {cycle}: reopen failed: {err}");
                corrupt += 1;
                break;
            }
        };
        if reopened.integrity.as_deref().is_some_and(|i| i != "ok") {
            corrupt += 1;
        }
        let judged = judge_run(&model, &args, &t, &reopened.state);
        let all = possible_ops(&args, &t).len();
        match judged.verdict {
            // The change being written when the process died had reached
            // the file (appended or committed): it must be there.
            Verdict::Prefix(n) if n == all || crash == Crash::CsvCompactRename => reached_kept += 1,
            Verdict::Prefix(n) => {
                eprintln!("{name} cycle {cycle}: the change that reached the file is missing ({n} of {all})");
                lost += 1;
            }
            Verdict::Lost(_) => lost += 1,
            Verdict::Beyond(_) | Verdict::Hole => holes += 1,
        }
        model = reopened.state;
    }
    figures(
        name,
        &[
            ("cycles", cycles as u64),
            ("aborted_at_point", aborted),
            ("kept", reached_kept),
            ("lost", lost),
            ("holes", holes),
            ("corrupt_reopen", corrupt),
        ],
    );
    assert_eq!(
        aborted, cycles as u64,
        "{name}: every child died at its crash point"
    );
    assert_eq!((lost, holes, corrupt), (0, 0, 0), "{name}");
}

#[tokio::test]
async fn crash_after_csv_append_before_sync() {
    crash_point("crash_csv_append", Backend::Csv, Crash::CsvAppend).await;
}

#[tokio::test]
async fn crash_after_sqlite_commit_before_ack() {
    crash_point("crash_sqlite_commit", Backend::Sqlite, Crash::SqliteCommit).await;
}

#[tokio::test]
async fn crash_in_compaction_between_rename_and_dir_sync() {
    crash_point(
        "crash_csv_compact_rename",
        Backend::Csv,
        Crash::CsvCompactRename,
    )
    .await;
}

/// A recorded CSV run, to be judged at every power cut it could meet.
struct Recorded<'a> {
    /// The data file.
    path: &'a Path,
    /// The disk before the run.
    base: Disk,
    events: Vec<Event>,
    /// The store before the run, and the changes the run made to it.
    start: State,
    ops: &'a [Op],
    /// Per change: recorder length when it was acknowledged.
    acked_at: &'a [usize],
    /// Per flush: recorder length when it returned, and how many changes it covered.
    flushes: &'a [(usize, usize)],
    /// When set, the deadline each value was written with (values are
    /// unique per change): every entry an image loads must carry it.
    deadlines: Option<&'a HashMap<u64, Option<SystemTime>>>,
}

/// What the power-cut images of recorded runs gave.
#[derive(Debug, Default)]
struct Images {
    images: u64,
    torn: u64,
    zero_filled: u64,
    flushed_lost: u64,
    holes: u64,
    reopen_errors: u64,
    dirty_after: u64,
    wrong_deadlines: u64,
}

impl Images {
    /// Reopens three random power-cut images at every sync of `run` and
    /// judges each: nothing flushed lost, no hole or wrong value (or
    /// deadline), torn tails repaired.
    async fn judge(&mut self, run: &Recorded<'_>, dir: &Path, tag: &str, rng: &mut fastrand::Rng) {
        for (e, event) in run.events.iter().enumerate() {
            if !event.is_sync() {
                continue;
            }
            let disk = run.base.after(&run.events[..e]);
            let flushed = run
                .flushes
                .iter()
                .filter(|(len, _)| *len <= e)
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0);
            let written = run.acked_at.iter().filter(|&&len| len <= e).count();
            for _ in 0..3 {
                let cut = Cut {
                    kept_per_mille: rng.u32(0..=1000),
                    zero_fill: rng.bool(),
                    rename_survives: rng.bool(),
                };
                let image = disk.image(cut);
                let Some(bytes) = image.get(run.path) else {
                    continue;
                };
                self.images += 1;
                if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                    self.torn += 1;
                }
                if bytes.last() == Some(&0) {
                    self.zero_filled += 1;
                }
                let image_dir = dir.join(format!("img{tag}-{e}-{}", self.images));
                std::fs::create_dir_all(&image_dir).expect("mkdir");
                Disk::write_image(&image, &image_dir).expect("writes");
                let image_path = image_dir.join(run.path.file_name().expect("a file name"));
                self.judge_image(run, &image_path, e, flushed, written)
                    .await;
                let _ = std::fs::remove_dir_all(&image_dir);
            }
        }
    }

    async fn judge_image(
        &mut self,
        run: &Recorded<'_>,
        image_path: &Path,
        e: usize,
        flushed: usize,
        written: usize,
    ) {
        let found = match stores::reopen(Backend::Csv, image_path).await {
            Err(err) => {
                eprintln!("image {e}: reopen failed: {err}");
                self.reopen_errors += 1;
                return;
            }
            Ok(found) => found,
        };
        match judge(
            &run.start,
            run.ops,
            &found.state,
            flushed,
            (written + 1).min(run.ops.len()),
        ) {
            Verdict::Prefix(_) => {}
            Verdict::Lost(n) => {
                eprintln!("image {e}: found the state after {n} changes, {flushed} were flushed");
                self.flushed_lost += 1;
            }
            other => {
                eprintln!("image {e}: {other:?}");
                self.holes += 1;
            }
        }
        if let Some(deadlines) = run.deadlines {
            let csv = CsvBackend::new(image_path);
            let mut wrong = 0_u64;
            let loaded =
                StorageBackend::<String, u64>::load_with_expiry_into(&csv, &mut |key, value, d| {
                    if deadlines.get(&value).copied().unwrap_or(None) != d {
                        eprintln!("image {e}: {key}={value} has deadline {d:?}");
                        wrong += 1;
                    }
                })
                .await;
            if let Err(err) = loaded {
                eprintln!("image {e}: load with deadlines failed: {err}");
                self.reopen_errors += 1;
            }
            self.wrong_deadlines += wrong;
        }
        let repaired = std::fs::read(image_path).expect("reads");
        if !repaired.ends_with(b"\n") || repaired.contains(&0) {
            self.dirty_after += 1;
        }
    }

    /// The test's one figures line, with `more` figures at its end.
    fn figures(&self, name: &str, more: &[(&str, u64)]) {
        let mut pairs = vec![
            ("images", self.images),
            ("torn_tails", self.torn),
            ("zero_filled_tails", self.zero_filled),
            ("flushed_lost", self.flushed_lost),
            ("holes_or_wrong_values", self.holes),
            ("reopen_errors", self.reopen_errors),
            ("unrepaired_tails", self.dirty_after),
        ];
        pairs.extend_from_slice(more);
        figures(name, &pairs);
    }

    fn assert_clean(&self) {
        assert!(
            self.images > 100 && self.torn > 0 && self.zero_filled > 0,
            "{self:?}"
        );
        assert_eq!(
            (
                self.flushed_lost,
                self.holes,
                self.wrong_deadlines,
                self.reopen_errors,
                self.dirty_after
            ),
            (0, 0, 0, 0, 0),
            "{self:?}"
        );
    }
}

#[tokio::test]
async fn csv_power_loss_images() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = fastrand::Rng::with_seed(0x90E5);
    let mut tally = Images::default();
    for run in 0..scaled(3) as u64 {
        let path = dir.path().join(format!("run{run}")).join("store.csv");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let recorder = Arc::new(Recorder::default());
        let map = PersistentMap::<String, u64, _>::new(
            CsvBackend::builder(&path).file_io(recorder.clone()).build(),
        )
        .await
        .expect("opens");
        let seed = 400 + run;
        let ops: Vec<Op> = (0..300).map(|i| op_at(seed, 16, i)).collect();
        let mut acked_at = Vec::new();
        let mut flushes: Vec<(usize, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Put { key, value } => map
                    .insert(key.clone(), *value)
                    .await
                    .map(drop)
                    .expect("inserts"),
                Op::Del { key } => map.remove(key).await.map(drop).expect("removes"),
            }
            acked_at.push(recorder.len());
            if (i + 1) % 10 == 0 {
                map.flush().await.expect("flushes");
                flushes.push((recorder.len(), i + 1));
            }
            if (i + 1) % 100 == 0 {
                map.backend().compact().await.expect("compacts");
            }
        }
        map.close().await.expect("closes");
        drop(map);
        let recorded = Recorded {
            path: &path,
            base: Disk::default(),
            events: recorder.events(),
            start: State::new(),
            ops: &ops,
            acked_at: &acked_at,
            flushes: &flushes,
            deadlines: None,
        };
        tally
            .judge(&recorded, dir.path(), &run.to_string(), &mut rng)
            .await;
    }
    tally.figures("csv_power_loss", &[]);
    tally.assert_clean();
}

/// Power cuts through a file's life from format version 3 (no deadline
/// field) to 5: plain appends, the rewrite before the first deadline, puts
/// with deadlines, sweeps of expired entries, compactions. Every image loads
/// a prefix of the changes, each value with the deadline it was written with.
#[tokio::test]
async fn csv_power_loss_images_through_the_deadline_upgrade() {
    const PAST: i64 = 1_000;
    const FUTURE: i64 = 4_102_444_800_000;
    let at = |ms: i64| UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = fastrand::Rng::with_seed(0x0DEA_D11E);
    let mut tally = Images::default();
    let (mut upgrades, mut sweeps_removing) = (0_u64, 0_u64);
    for run in 0..scaled(3) as u64 {
        let path = dir.path().join(format!("ttl{run}")).join("store.csv");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let old = b"persistent-map-csv/3,key,value\nput,k0,1\nput,k1,2\n".to_vec();
        std::fs::write(&path, &old).expect("writes");
        let start: State = [("k0".to_string(), 1), ("k1".to_string(), 2)].into();
        let recorder = Arc::new(Recorder::default());
        let csv = CsvBackend::builder(&path).file_io(recorder.clone()).build();
        let seed = 900 + run;
        // The model's changes (a sweep that removes nothing is none), and
        // the deadline each value was written with.
        let mut ops: Vec<Op> = Vec::new();
        let mut deadlines: HashMap<u64, Option<SystemTime>> =
            [(1, None), (2, None)].into_iter().collect();
        let mut current: HashMap<String, Option<i64>> = HashMap::new();
        let mut acked_at = Vec::new();
        let mut flushes: Vec<(usize, usize)> = Vec::new();
        for i in 0..300_u64 {
            let op = op_at(seed, 16, i);
            let batch: Vec<BatchOp<String, u64>> = match &op {
                // Deadlines from the 50th change on: the upgrade comes then.
                Op::Put { key, value } if i >= 50 && i % 3 != 0 => {
                    let ms = if i % 2 == 0 { PAST } else { FUTURE };
                    current.insert(key.clone(), Some(ms));
                    deadlines.insert(*value, Some(at(ms)));
                    ops.push(op.clone());
                    vec![BatchOp::PutExpiring {
                        key: key.clone(),
                        value: *value,
                        expires_at: at(ms),
                    }]
                }
                Op::Put { key, value } => {
                    current.insert(key.clone(), None);
                    deadlines.insert(*value, None);
                    ops.push(op.clone());
                    vec![BatchOp::Put {
                        key: key.clone(),
                        value: *value,
                    }]
                }
                // Every removal is a sweep: it removes only an expired entry.
                Op::Del { key } => {
                    if current.get(key).copied().flatten() == Some(PAST) {
                        current.insert(key.clone(), None);
                        ops.push(op.clone());
                        sweeps_removing += 1;
                    }
                    vec![BatchOp::DeleteExpired {
                        key: key.clone(),
                        now: at(5_000),
                    }]
                }
            };
            let version_before = std::fs::read(&path).expect("reads").get(19).copied();
            StorageBackend::<String, u64>::apply_batch(&csv, &batch)
                .await
                .expect("applies");
            if version_before == Some(b'3')
                && std::fs::read(&path).expect("reads").get(19) == Some(&b'5')
            {
                upgrades += 1;
            }
            acked_at.resize(ops.len(), recorder.len());
            if (i + 1) % 10 == 0 {
                StorageBackend::<String, u64>::flush(&csv)
                    .await
                    .expect("flushes");
                flushes.push((recorder.len(), ops.len()));
            }
            if (i + 1) % 100 == 0 {
                csv.compact().await.expect("compacts");
            }
        }
        StorageBackend::<String, u64>::flush(&csv)
            .await
            .expect("flushes");
        drop(csv);
        let recorded = Recorded {
            path: &path,
            base: Disk::with_files(&[(path.clone(), old)].into_iter().collect()),
            events: recorder.events(),
            start,
            ops: &ops,
            acked_at: &acked_at,
            flushes: &flushes,
            deadlines: Some(&deadlines),
        };
        tally
            .judge(&recorded, dir.path(), &format!("ttl{run}"), &mut rng)
            .await;
    }
    tally.figures(
        "csv_power_loss_deadlines",
        &[
            ("wrong_deadlines", tally.wrong_deadlines),
            ("upgrades", upgrades),
            ("sweeps_removing", sweeps_removing),
        ],
    );
    assert_eq!(
        upgrades,
        scaled(3) as u64,
        "each run upgraded its file once"
    );
    assert!(sweeps_removing > 0);
    tally.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_connection_has_the_documented_pragmas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = 0_u64;
    for (level, expected) in [
        (Synchronous::Normal, 1_i64),
        (Synchronous::Full, 2),
        (Synchronous::Extra, 3),
    ] {
        let db = SqliteBackend::builder(dir.path().join(format!("p{expected}.db")))
            .synchronous(level)
            .pool_size(4)
            .build()
            .await
            .expect("opens");
        // Hold all four at once, so each is a distinct pooled connection.
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(db.pool().acquire().await.expect("connection"));
        }
        for conn in &mut conns {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **conn)
                .await
                .expect("mode");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut **conn)
                .await
                .expect("sync");
            assert_eq!((mode.as_str(), sync), ("wal", expected), "{level:?}");
            checked += 1;
        }
        drop(conns);
        db.close().await;
    }
    figures(
        "sqlite_pragmas",
        &[("connections_checked", checked), ("mismatches", 0)],
    );
}

fn fsyncs(args: &ChildArgs) -> Option<(u64, ChildOutput)> {
    let log = tempfile::NamedTempFile::new().ok()?;
    let output = Command::new(STRACE)
        .args(["-f", "-c", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(log.path())
        .arg(BIN)
        .args(args.to_args())
        .output()
        .ok()?;
    let text = std::fs::read_to_string(log.path()).ok()?;
    let syncs = text
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            match cols.last() {
                Some(&"fsync" | &"fdatasync") => cols.get(3)?.parse::<u64>().ok(),
                _ => None,
            }
        })
        .sum();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    Some((syncs, ChildOutput(stdout)))
}

/// Per `flushed` line of a child run under strace: whether the database's
/// directory was fsynced after the journal's last removal before it.
fn dir_synced_per_flush(args: &ChildArgs, dir: &Path) -> Option<Vec<bool>> {
    let log = tempfile::NamedTempFile::new().ok()?;
    Command::new(STRACE)
        .args(["-f", "-y", "-s", "64", "-o"])
        .arg(log.path())
        // The child reports each line with one `writev`.
        .args(["-e", "trace=fsync,fdatasync,unlink,unlinkat,writev"])
        .arg(BIN)
        .args(args.to_args())
        .output()
        .ok()?;
    let text = std::fs::read_to_string(log.path()).ok()?;
    let dir_fd = format!("<{}>", dir.display());
    let mut synced_since_unlink = false;
    let mut flushes = Vec::new();
    for line in text.lines() {
        if line.contains("-journal\"") && line.contains("unlink") {
            synced_since_unlink = false;
        } else if (line.contains("fsync(") || line.contains("fdatasync(")) && line.contains(&dir_fd)
        {
            synced_since_unlink = true;
        } else if line.contains("writev(") && line.contains("\"flushed ") {
            flushes.push(synced_since_unlink);
        }
    }
    Some(flushes)
}

#[tokio::test]
async fn sqlite_flush_in_a_rollback_journal_syncs_the_removal() {
    if !Path::new(STRACE).exists() {
        skip(
            "sqlite_rollback_flush",
            "strace is not installed at /usr/bin/strace: rollback-journal flush not checked",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = ChildArgs::new(
        Backend::Sqlite,
        dir.path().join("delete.db"),
        Mode::Through,
        8,
    );
    args.journal_delete = true;
    args.ops = 40;
    args.flush_every = 10;
    let flushes = dir_synced_per_flush(&args, dir.path()).expect("strace runs");
    let synced = flushes.iter().filter(|&&s| s).count() as u64;
    figures(
        "sqlite_rollback_flush",
        &[
            ("flushes", flushes.len() as u64),
            ("dir_synced_after_commit", synced),
        ],
    );
    // At `NORMAL` SQLite does not sync the directory after removing the
    // journal (the commit point): only a flush that does makes it durable.
    assert!(flushes.len() >= 4, "{flushes:?}");
    assert!(flushes.iter().all(|&s| s), "{flushes:?}");
}

struct ChildOutput(String);

impl ChildOutput {
    fn count(&self, prefix: &str) -> u64 {
        self.0.lines().filter(|l| l.starts_with(prefix)).count() as u64
    }
}

#[tokio::test]
async fn sqlite_syncs_counted_under_strace() {
    if !Path::new(STRACE).exists() {
        skip(
            "sqlite_fsync_count",
            "strace is not installed at /usr/bin/strace: sync counts not checked",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut through = ChildArgs::new(
        Backend::Sqlite,
        dir.path().join("full.db"),
        Mode::Through,
        5,
    );
    through.ops = 100;
    through.sync_full = true;
    let (full_syncs, out) = fsyncs(&through).expect("strace runs");
    let commits = out.count("ack ");

    let mut normal = through.clone();
    normal.path = dir.path().join("normal.db");
    normal.sync_full = false;
    let (normal_syncs, _) = fsyncs(&normal).expect("strace runs");

    let mut behind = ChildArgs::new(
        Backend::Sqlite,
        dir.path().join("behind.db"),
        Mode::Behind,
        6,
    );
    behind.ops = 400;
    behind.flush_every = 40;
    let (behind_syncs, out) = fsyncs(&behind).expect("strace runs");
    let flushes = out.count("flushed ");
    figures(
        "sqlite_fsync_count",
        &[
            ("full_commits", commits),
            ("full_syncs", full_syncs),
            ("normal_commits", commits),
            ("normal_syncs", normal_syncs),
            ("behind_flushes", flushes),
            ("behind_syncs", behind_syncs),
        ],
    );
    assert!(commits >= 90, "{commits}");
    assert!(
        full_syncs >= commits,
        "FULL syncs every commit: {full_syncs} syncs for {commits} commits"
    );
    assert!(
        normal_syncs < commits,
        "NORMAL does not sync per commit: {normal_syncs}"
    );
    assert!(
        flushes >= 10 && behind_syncs >= flushes,
        "a sync per flush: {behind_syncs} for {flushes}"
    );
}
