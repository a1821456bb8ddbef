//! Group 7: exit without flush, and background errors in write-behind mode.
//!
//! A write-behind child that returns from `main` without flushing loses at
//! most an unflushed suffix, and logs a warning; with `close().await` it
//! loses nothing. A background write error makes the next `flush()` fail
//! within seconds, and the map refuses writes until `reload()`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use persistent_map_core::{PersistentMap, WriteBehind};
use persistent_map_csv::fault::FileIo;
use persistent_map_csv::CsvBackend;
use persistent_map_reliability::child::{Backend, ChildArgs, Exit, Mode, Running};
use persistent_map_reliability::cycle::{judge_run, possible_ops};
use persistent_map_reliability::model::{State, Verdict};
use persistent_map_reliability::{figures, scaled, stores};
use persistent_map_sqlite::SqliteBackend;

const BIN: &str = env!("CARGO_BIN_EXE_pm-child");
const WARNING: &str = "write-behind map dropped with changes not yet flushed";

async fn exits(name: &str, backend: Backend, exit: Exit) {
    let dir = tempfile::tempdir().expect("temp dir");
    let trials = scaled(10);
    let (mut holes, mut lost_flushed, mut warned, mut suffix_lost, mut everything_kept) =
        (0_u64, 0_u64, 0_u64, 0_u64, 0_u64);
    for trial in 0..trials {
        let path = dir.path().join(format!(
            "store{trial}.{}",
            if backend == Backend::Csv { "csv" } else { "db" }
        ));
        let mut args = ChildArgs::new(backend, &path, Mode::Behind, 900 + trial as u64);
        args.ops = 3000;
        args.flush_every = 700;
        args.exit = exit;
        let t = Running::start(args.command(Path::new(BIN)))
            .expect("starts")
            .finish(Duration::from_secs(60));
        assert!(
            t.done && t.status.is_some_and(|s| s.success()),
            "{name}: child ran to its end: {t:?}"
        );
        if t.stderr.contains(WARNING) {
            warned += 1;
        }
        let store = stores::reopen(backend, &path).await.expect("reopens").state;
        let judged = judge_run(&State::new(), &args, &t, &store);
        let all = possible_ops(&args, &t)
            .iter()
            .filter(|(i, _)| *i < args.ops)
            .count();
        match judged.verdict {
            Verdict::Prefix(n) => {
                suffix_lost += (all - n) as u64;
                if n == all {
                    everything_kept += 1;
                }
            }
            Verdict::Lost(_) => lost_flushed += 1,
            Verdict::Beyond(_) | Verdict::Hole => holes += 1,
        }
    }
    figures(
        name,
        &[
            ("trials", trials as u64),
            ("holes", holes),
            ("flushed_lost", lost_flushed),
            ("unflushed_ops_lost", suffix_lost),
            ("everything_kept", everything_kept),
            ("warned", warned),
        ],
    );
    assert_eq!((holes, lost_flushed), (0, 0), "{name}");
    match exit {
        Exit::Return => assert_eq!(
            warned, trials as u64,
            "{name}: every drop with unflushed changes warns"
        ),
        _ => {
            assert_eq!(
                everything_kept, trials as u64,
                "{name}: close() keeps everything"
            );
            assert_eq!(warned, 0, "{name}: no warning after close()");
        }
    }
}

#[tokio::test]
async fn sqlite_return_without_flush_loses_only_a_suffix() {
    exits("exit_return_sqlite", Backend::Sqlite, Exit::Return).await;
}

#[tokio::test]
async fn csv_return_without_flush_loses_only_a_suffix() {
    exits("exit_return_csv", Backend::Csv, Exit::Return).await;
}

#[tokio::test]
async fn sqlite_close_loses_nothing() {
    exits("exit_close_sqlite", Backend::Sqlite, Exit::Close).await;
}

#[tokio::test]
async fn csv_close_loses_nothing() {
    exits("exit_close_csv", Backend::Csv, Exit::Close).await;
}

/// CSV file I/O whose appends fail with EIO while `failing` is set.
#[derive(Debug, Default)]
struct FailingAppends {
    failing: AtomicBool,
}

impl FileIo for FailingAppends {
    fn append(&self, file: &std::fs::File, _path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        std::io::Write::write_all(&mut &*file, bytes)
    }
}

/// Runs the background-error scenario on an open write-behind map:
/// `fail` starts the failure, `heal` ends it.
async fn background_error<B>(
    name: &str,
    map: PersistentMap<String, u64, B>,
    fail: impl std::future::Future<Output = ()>,
    heal: impl std::future::Future<Output = ()>,
) -> (PersistentMap<String, u64, B>, Vec<(&'static str, u64)>)
where
    B: persistent_map_core::StorageBackend<String, u64> + Send + Sync + 'static,
{
    map.insert("before".into(), 1).await.expect("queues");
    map.flush().await.expect("flushes");
    fail.await;
    map.insert("during".into(), 2)
        .await
        .expect("queued before the failure is known");
    let started = Instant::now();
    let flushed = tokio::time::timeout(Duration::from_secs(20), map.flush())
        .await
        .expect("flush returns, never hangs");
    let flush_ms = started.elapsed().as_millis() as u64;
    assert!(
        flushed.is_err(),
        "{name}: flush after a background error fails"
    );
    let refused = map.insert("after".into(), 3).await.is_err();
    heal.await;
    let still_refused = map.insert("after".into(), 3).await.is_err();
    let flush_refused = map.flush().await.is_err();
    map.reload().await.expect("reload recovers");
    let reloaded_without_failed = map.get("during").is_none() && map.get("before") == Some(1);
    map.insert("recovered".into(), 4)
        .await
        .expect("writes accepted after reload");
    map.flush().await.expect("flushes after reload");
    let figures = vec![
        ("flush_error_ms", flush_ms),
        ("write_refused", u64::from(refused)),
        (
            "refused_until_reload",
            u64::from(still_refused && flush_refused),
        ),
        ("reload_drops_unstored", u64::from(reloaded_without_failed)),
    ];
    assert!(
        refused && still_refused && flush_refused,
        "{name}: writes refused until reload: {figures:?}"
    );
    assert!(
        reloaded_without_failed,
        "{name}: reload brings the cache back to the store"
    );
    assert!(flush_ms < 10_000, "{name}: error within seconds");
    (map, figures)
}

#[tokio::test]
async fn sqlite_background_busy_poisons_until_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("busy.db");
    let backend = SqliteBackend::builder(&path)
        .busy_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("opens");
    let map = PersistentMap::<String, u64, _>::builder(backend)
        .write_behind(WriteBehind::new())
        .build()
        .await
        .expect("opens");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connects");
    let holder = Arc::new(tokio::sync::Mutex::new(
        pool.acquire().await.expect("connection"),
    ));
    let (h1, h2) = (Arc::clone(&holder), Arc::clone(&holder));
    // SQLITE_BUSY for every other writer while this transaction is open.
    let fail = async move {
        let mut conn = h1.lock().await;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut **conn)
            .await
            .expect("locks");
    };
    let heal = async move {
        let mut conn = h2.lock().await;
        sqlx::query("ROLLBACK")
            .execute(&mut **conn)
            .await
            .expect("unlocks");
    };
    let (map, pairs) = background_error("sqlite busy", map, fail, heal).await;
    map.close().await.expect("closes");
    drop(map);
    drop(holder);
    pool.close().await;
    let store = stores::reopen(Backend::Sqlite, &path)
        .await
        .expect("reopens")
        .state;
    assert_eq!(
        store,
        State::from([("before".to_string(), 1), ("recovered".to_string(), 4)])
    );
    figures("background_error_sqlite_busy", &pairs);
}

#[tokio::test]
async fn csv_background_eio_poisons_until_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("eio.csv");
    let io = Arc::new(FailingAppends::default());
    let backend = CsvBackend::builder(&path)
        .file_io(Arc::clone(&io) as Arc<dyn FileIo>)
        .build();
    let map = PersistentMap::<String, u64, _>::builder(backend)
        .write_behind(WriteBehind::new())
        .build()
        .await
        .expect("opens");
    let (fail_io, heal_io) = (Arc::clone(&io), Arc::clone(&io));
    let (map, pairs) = background_error(
        "csv eio",
        map,
        async move { fail_io.failing.store(true, Ordering::SeqCst) },
        async move { heal_io.failing.store(false, Ordering::SeqCst) },
    )
    .await;
    map.close().await.expect("closes");
    drop(map);
    let store = stores::reopen(Backend::Csv, &path)
        .await
        .expect("reopens")
        .state;
    assert_eq!(
        store,
        State::from([("before".to_string(), 1), ("recovered".to_string(), 4)])
    );
    figures("background_error_csv_eio", &pairs);
}
