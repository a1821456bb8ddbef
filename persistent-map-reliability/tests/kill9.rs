//! Group 1: kill -9 cycles. A child runs a seeded stream on one store kept
//! across cycles and is killed with SIGKILL after a random 5-150 ms (one
//! cycle in ten after 0-5 ms, so some kills land while it opens); the reopened store must equal the model at
//! some point at or after the last acknowledgement (write-through) or the
//! last returned flush (write-behind), never with a hole. SQLite also
//! passes `PRAGMA integrity_check`.

use std::path::Path;
use std::time::Duration;

use persistent_map_reliability::child::{Backend, ChildArgs, Mode, Running};
use persistent_map_reliability::cycle::{judge_run, Tally};
use persistent_map_reliability::model::{State, Verdict};
use persistent_map_reliability::{figures, scaled, stores};

const BIN: &str = env!("CARGO_BIN_EXE_pm-child");

/// Cycles per backend and mode at scale 1.
const CYCLES: usize = 200;

fn base_seed() -> u64 {
    std::env::var("PM_RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001)
}

async fn kill_cycles(name: &str, backend: Backend, mode: Mode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(match backend {
        Backend::Sqlite => "store.db",
        Backend::Csv => "store.csv",
    });
    let seed = base_seed() ^ (backend as u64) << 8 ^ (mode as u64) << 12;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = State::new();
    let mut tally = Tally::default();
    let cycles = scaled(CYCLES);
    for cycle in 0..cycles {
        let mut args = ChildArgs::new(backend, &path, mode, seed.wrapping_add(cycle as u64 + 1));
        args.flush_every = 25;
        let running = Running::start(args.command(Path::new(BIN))).expect("child starts");
        // 5-150 ms, and one cycle in ten 0-5 ms so that kills land while
        // the child starts and opens the store (a CSV child opens in a few ms).
        let delay = if rng.u8(0..10) == 0 {
            rng.u64(0..5)
        } else {
            rng.u64(5..=150)
        };
        std::thread::sleep(Duration::from_millis(delay));
        let transcript = running.kill();
        assert!(
            transcript.crashed(),
            "{name} cycle {cycle}: the child ended before it was killed: {transcript:?}"
        );
        if !transcript.opened {
            tally.killed_in_open += 1;
        }
        tally.acked += transcript.acked.len() as u64;
        tally.errors += (transcript.errors.len() + transcript.flush_errors.len()) as u64;

        let reopened = match stores::reopen(backend, &path).await {
            Ok(reopened) => reopened,
            Err(err) => {
                tally.corrupt_reopen += 1;
                eprintln!("{name} cycle {cycle}: reopen failed: {err}");
                break;
            }
        };
        if reopened.integrity.as_deref().is_some_and(|i| i != "ok") {
            tally.corrupt_reopen += 1;
            eprintln!(
                "{name} cycle {cycle}: integrity_check: {:?}",
                reopened.integrity
            );
        }
        let judged = judge_run(&model, &args, &transcript, &reopened.state);
        if !matches!(judged.verdict, Verdict::Prefix(_)) {
            eprintln!(
                "{name} cycle {cycle} (seed {}): {judged:?}; acked up to {:?}, flushed {:?}",
                args.seed,
                transcript.last_ack(),
                transcript.flushed
            );
        }
        tally.record(mode, &judged);
        model = reopened.state;
    }
    figures(name, &tally.pairs());
    assert_eq!(
        tally.cycles as usize, cycles,
        "{name}: every cycle reopened"
    );
    assert_eq!(
        (
            tally.acked_lost,
            tally.flushed_lost,
            tally.holes,
            tally.corrupt_reopen,
            tally.errors
        ),
        (0, 0, 0, 0, 0),
        "{name}: {tally:?}"
    );
    assert!(tally.acked > 0, "{name}: the children acknowledged changes");
    assert!(
        tally.killed_in_open > 0 || cycles < 50,
        "{name}: some kills should land while the child opens"
    );
}

#[tokio::test]
async fn kill9_sqlite_write_through() {
    kill_cycles("kill9_sqlite_write_through", Backend::Sqlite, Mode::Through).await;
}

#[tokio::test]
async fn kill9_sqlite_write_behind() {
    kill_cycles("kill9_sqlite_write_behind", Backend::Sqlite, Mode::Behind).await;
}

#[tokio::test]
async fn kill9_csv_write_through() {
    kill_cycles("kill9_csv_write_through", Backend::Csv, Mode::Through).await;
}

#[tokio::test]
async fn kill9_csv_write_behind() {
    kill_cycles("kill9_csv_write_behind", Backend::Csv, Mode::Behind).await;
}
