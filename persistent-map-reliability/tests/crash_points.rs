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
//! nothing flushed is lost, no value is wrong, torn tails are repaired.
//! Power loss, SQLite: every pooled connection runs the documented journal
//! mode and synchronous level, and `strace -c` counts the syncs: one per
//! commit at `FULL`, at least one per flush in write-behind mode.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use persistent_map_core::PersistentMap;
use persistent_map_csv::CsvBackend;
use persistent_map_reliability::child::{Backend, ChildArgs, Crash, Mode, Running};
use persistent_map_reliability::cycle::{judge_run, possible_ops};
use persistent_map_reliability::model::{judge, State, Verdict};
use persistent_map_reliability::power::{Cut, Disk, Recorder};
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

#[tokio::test]
async fn csv_power_loss_images() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = fastrand::Rng::with_seed(0x90E5);
    let (
        mut images,
        mut flushed_lost,
        mut holes,
        mut reopen_errors,
        mut torn,
        mut zero_filled,
        mut dirty_after,
    ) = (0_u64, 0_u64, 0_u64, 0_u64, 0_u64, 0_u64, 0_u64);
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
        // Per change: recorder length when it was acknowledged; per flush:
        // recorder length when it returned, and how many changes it covered.
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
        let events = recorder.events();
        let base = Disk::default();
        for (e, event) in events.iter().enumerate() {
            if !event.is_sync() {
                continue;
            }
            let disk = base.after(&events[..e]);
            let flushed = flushes
                .iter()
                .filter(|(len, _)| *len <= e)
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0);
            let written = acked_at.iter().filter(|&&len| len <= e).count();
            for _ in 0..3 {
                let cut = Cut {
                    kept_per_mille: rng.u32(0..=1000),
                    zero_fill: rng.bool(),
                    rename_survives: rng.bool(),
                };
                let image = disk.image(cut);
                let Some(bytes) = image.get(&path) else {
                    continue;
                };
                images += 1;
                if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                    torn += 1;
                }
                if bytes.last() == Some(&0) {
                    zero_filled += 1;
                }
                let image_dir = dir.path().join(format!("img{run}-{e}-{images}"));
                std::fs::create_dir_all(&image_dir).expect("mkdir");
                Disk::write_image(&image, &image_dir).expect("writes");
                let image_path = image_dir.join("store.csv");
                match stores::reopen(Backend::Csv, &image_path).await {
                    Err(err) => {
                        eprintln!("image {e}: reopen failed: {err}");
                        reopen_errors += 1;
                    }
                    Ok(found) => {
                        match judge(
                            &State::new(),
                            &ops,
                            &found.state,
                            flushed,
                            (written + 1).min(ops.len()),
                        ) {
                            Verdict::Prefix(_) => {}
                            Verdict::Lost(n) => {
                                eprintln!("image {e}: found the state after {n} changes, {flushed} were flushed");
                                flushed_lost += 1;
                            }
                            other => {
                                eprintln!("image {e}: {other:?}");
                                holes += 1;
                            }
                        }
                        let repaired = std::fs::read(&image_path).expect("reads");
                        if !repaired.ends_with(b"\n") || repaired.contains(&0) {
                            dirty_after += 1;
                        }
                    }
                }
                let _ = std::fs::remove_dir_all(&image_dir);
            }
        }
    }
    figures(
        "csv_power_loss",
        &[
            ("images", images),
            ("torn_tails", torn),
            ("zero_filled_tails", zero_filled),
            ("flushed_lost", flushed_lost),
            ("holes_or_wrong_values", holes),
            ("reopen_errors", reopen_errors),
            ("unrepaired_tails", dirty_after),
        ],
    );
    assert!(images > 100 && torn > 0 && zero_filled > 0);
    assert_eq!(
        (flushed_lost, holes, reopen_errors, dirty_after),
        (0, 0, 0, 0)
    );
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
