//! Group 5: races. 16 tasks x 2,000 changes on 32 shared keys, on a
//! multi-threaded runtime, with the window between the cache update and the
//! backend write widened by a wrapper that yields and sleeps inside
//! `apply_batch`; after flush and reopen every key's stored value equals the
//! cache and was written to that key. The same check run over a wrapper that
//! reorders writes reports divergence, so it can fail. Then a property test
//! against a model of durable and not-yet-durable state, with power cuts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use persistent_map_core::{
    async_trait, BatchOp, Capabilities, PersistentMap, Result, StorageBackend, WriteBehind,
};
use persistent_map_csv::CsvBackend;
use persistent_map_reliability::child::{Backend, Mode};
use persistent_map_reliability::model::State;
use persistent_map_reliability::power::{Cut, Disk, Recorder};
use persistent_map_reliability::{figures, scaled, stores};
use proptest::prelude::*;

/// Widens the race window: yields and sometimes sleeps before writing, and
/// (when `reorder` is set) writes each batch in reverse order: a broken
/// backend, to show the check catches it.
#[derive(Debug)]
struct Delayed<B> {
    inner: B,
    rng: std::sync::Mutex<fastrand::Rng>,
    reorder: bool,
    batches: AtomicU64,
}

#[async_trait]
impl<B: StorageBackend<String, u64> + Send + Sync> StorageBackend<String, u64> for Delayed<B> {
    async fn load_all(&self) -> Result<HashMap<String, u64>> {
        self.inner.load_all().await
    }
    async fn save(&self, key: String, value: u64) -> Result<()> {
        self.apply_batch(&[BatchOp::Put { key, value }]).await
    }
    async fn delete(&self, key: &String) -> Result<()> {
        self.apply_batch(&[BatchOp::Delete { key: key.clone() }])
            .await
    }
    async fn apply_batch(&self, batch: &[BatchOp<String, u64>]) -> Result<()> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let (yields, sleep) = {
            let mut rng = self.rng.lock().expect("rng");
            (rng.u32(0..4), rng.u8(0..8) == 0)
        };
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        if sleep {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        if self.reorder {
            let reversed: Vec<_> = batch.iter().rev().cloned().collect();
            return self.inner.apply_batch(&reversed).await;
        }
        self.inner.apply_batch(batch).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

const TASKS: u64 = 16;
const OPS: u64 = 2000;
const KEYS: u64 = 32;

/// The key task `task` writes at step `i` of stream `seed`.
fn key_of(seed: u64, task: u64, i: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed ^ task << 32 ^ i);
    format!("k{}", rng.u64(0..KEYS))
}

/// Runs one seed; returns (divergent keys, values written to another key).
async fn race(dir: &Path, seed: u64, mode: Mode, reorder: bool, ops: u64) -> (u64, u64, u64) {
    let path = dir.join(format!("race{seed}-{reorder}-{mode:?}.csv"));
    let backend = Delayed {
        inner: CsvBackend::new(&path),
        rng: std::sync::Mutex::new(fastrand::Rng::with_seed(seed)),
        reorder,
        batches: AtomicU64::new(0),
    };
    let builder = PersistentMap::<String, u64, _>::builder(backend);
    let builder = match mode {
        Mode::Through => builder.write_through(),
        // A reordering backend gets long batches, so that the closing
        // double write below lands in one batch.
        Mode::Behind => builder.write_behind(WriteBehind::new().max_delay(if reorder {
            Duration::from_millis(50)
        } else {
            Duration::from_micros(200)
        })),
    };
    let map = Arc::new(builder.build().await.expect("opens"));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let map = Arc::clone(&map);
        tasks.push(tokio::spawn(async move {
            for i in 0..ops {
                let key = key_of(seed, task, i);
                if i % 10 == 9 {
                    map.remove(&key).await.expect("removes");
                } else {
                    map.insert(key, task * 1_000_000 + i)
                        .await
                        .expect("inserts");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task finished");
    }
    if reorder {
        // Two writes of one key back to back: whatever the random stream
        // did, a backend that reverses a batch now stores the older one.
        let key = key_of(seed, 0, 0);
        let again = (1..ops)
            .find(|i| key_of(seed, 0, *i) == key)
            .expect("32 keys repeat within the stream");
        map.insert(key.clone(), 0).await.expect("inserts");
        map.insert(key, again).await.expect("inserts");
    }
    map.flush().await.expect("flushes");
    let batches = map.backend().batches.load(Ordering::Relaxed);
    let cache: State = map.iter().collect();
    map.close().await.expect("closes");
    drop(map);
    let store = stores::reopen(Backend::Csv, &path)
        .await
        .expect("reopens")
        .state;
    let keys: std::collections::BTreeSet<&String> = cache.keys().chain(store.keys()).collect();
    let divergent = keys
        .iter()
        .filter(|k| cache.get(**k) != store.get(**k))
        .count() as u64;
    let misplaced = store
        .iter()
        .filter(|(key, value)| key_of(seed, **value / 1_000_000, **value % 1_000_000) != **key)
        .count() as u64;
    (divergent, misplaced, batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_leave_store_equal_to_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let seeds = scaled(20) as u64;
    let (mut divergent, mut misplaced, mut batches) = (0, 0, 0);
    for seed in 0..seeds {
        let mode = if seed % 2 == 0 {
            Mode::Through
        } else {
            Mode::Behind
        };
        let (d, m, b) = race(dir.path(), seed, mode, false, OPS).await;
        divergent += d;
        misplaced += m;
        batches += b;
    }
    // The same check against a backend that reorders writes must fail.
    let mut caught = 0;
    let negative = 4;
    for seed in 0..negative {
        let (d, m, _) = race(dir.path(), 1000 + seed, Mode::Behind, true, OPS / 4).await;
        if d + m > 0 {
            caught += 1;
        }
    }
    figures(
        "races",
        &[
            ("seeds", seeds),
            ("tasks", TASKS),
            ("ops_per_task", OPS),
            ("keys", KEYS),
            ("backend_batches", batches),
            ("divergent_keys", divergent),
            ("misplaced_values", misplaced),
            ("reordering_runs", negative),
            ("reordering_caught", caught),
        ],
    );
    assert_eq!((divergent, misplaced), (0, 0));
    assert_eq!(
        caught, negative,
        "the check must report a reordering backend"
    );
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Step {
    Insert(u8, u64),
    Remove(u8),
    Flush,
    /// Power cut: `kept` per mille of unsynced bytes survive, maybe zero-filled.
    Crash {
        kept: u32,
        zero_fill: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0_u8..8, any::<u64>()).prop_map(|(k, v)| Step::Insert(k, v)),
        2 => (0_u8..8).prop_map(Step::Remove),
        1 => Just(Step::Flush),
        1 => (0_u32..=1000, any::<bool>()).prop_map(|(kept, zero_fill)| Step::Crash { kept, zero_fill }),
    ]
}

fn model_apply(state: &mut State, step: &Step) {
    match step {
        Step::Insert(k, v) => {
            state.insert(format!("k{k}"), *v);
        }
        Step::Remove(k) => {
            state.remove(&format!("k{k}"));
        }
        _ => {}
    }
}

async fn run_steps(steps: Vec<Step>) -> std::result::Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut generation = 0;
    let mut path = dir.path().join("g0").join("store.csv");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut durable = State::new();
    let mut pending: Vec<Step> = Vec::new();
    let mut base = Disk::default();
    let mut recorder = Arc::new(Recorder::default());
    let mut map = PersistentMap::<String, u64, _>::new(
        CsvBackend::builder(&path).file_io(recorder.clone()).build(),
    )
    .await
    .expect("opens");
    for step in steps {
        match &step {
            Step::Insert(k, v) => {
                map.insert(format!("k{k}"), *v).await.expect("inserts");
                pending.push(step.clone());
            }
            Step::Remove(k) => {
                map.remove(&format!("k{k}")).await.expect("removes");
                pending.push(step.clone());
            }
            Step::Flush => {
                map.flush().await.expect("flushes");
                for p in pending.drain(..) {
                    model_apply(&mut durable, &p);
                }
            }
            Step::Crash { kept, zero_fill } => {
                let disk = base.after(&recorder.events());
                drop(map);
                let image = disk.image(Cut {
                    kept_per_mille: *kept,
                    zero_fill: *zero_fill,
                    rename_survives: true,
                });
                generation += 1;
                let gen_dir = dir.path().join(format!("g{generation}"));
                std::fs::create_dir_all(&gen_dir).expect("mkdir");
                Disk::write_image(&image, &gen_dir).expect("writes image");
                path = gen_dir.join("store.csv");
                let found = stores::reopen(Backend::Csv, &path)
                    .await
                    .expect("image reopens")
                    .state;
                // Durable state plus some prefix of the pending changes.
                let mut candidate = durable.clone();
                let mut ok = candidate == found;
                for p in &pending {
                    model_apply(&mut candidate, p);
                    ok |= candidate == found;
                }
                prop_assert!(
                    ok,
                    "after a power cut found {found:?}; durable {durable:?}, pending {pending:?}"
                );
                durable = found;
                pending.clear();
                let files: HashMap<_, _> = std::fs::read_dir(&gen_dir)
                    .expect("lists")
                    .filter_map(|e| e.ok())
                    .filter_map(|e| Some((e.path(), std::fs::read(e.path()).ok()?)))
                    .collect();
                base = Disk::with_files(&files);
                recorder = Arc::new(Recorder::default());
                map = PersistentMap::new(
                    CsvBackend::builder(&path).file_io(recorder.clone()).build(),
                )
                .await
                .expect("reopens");
            }
        }
    }
    Ok(())
}

static CRASHES: AtomicU64 = AtomicU64::new(0);
static STEPS: AtomicU64 = AtomicU64::new(0);

#[test]
fn model_of_durable_and_pending_state() {
    let cases = scaled(64) as u32;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let result = runner.run(&proptest::collection::vec(step(), 1..60), |steps| {
        STEPS.fetch_add(steps.len() as u64, Ordering::Relaxed);
        CRASHES.fetch_add(
            steps
                .iter()
                .filter(|s| matches!(s, Step::Crash { .. }))
                .count() as u64,
            Ordering::Relaxed,
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run_steps(steps))
    });
    figures(
        "model_proptest",
        &[
            ("cases", u64::from(cases)),
            ("steps", STEPS.load(Ordering::Relaxed)),
            ("power_cuts", CRASHES.load(Ordering::Relaxed)),
            ("failed", u64::from(result.is_err())),
        ],
    );
    if let Err(err) = result {
        panic!("{err}");
    }
}
