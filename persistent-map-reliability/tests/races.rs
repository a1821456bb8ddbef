//! Group 5: races. 16 tasks x 2,000 changes on 32 shared keys (inserts,
//! removes, `update`, two-key transactions, `retain` and `reload`), on a
//! multi-threaded runtime, in both write modes, with the window between the
//! cache update and the backend write widened by a wrapper that yields and
//! sleeps inside `apply_batch`; every fourth seed closes the map while the
//! tasks still write. After flush (or close) and reopen every key's stored
//! value equals the cache and was written to that key. The same check run over a wrapper that
//! reorders writes reports divergence, so it can fail. Then a property test
//! against a model of durable and not-yet-durable state, in both write
//! modes: inserts, removes, updates, transactions, retain, reload, close and
//! reopen, flushes and power cuts; the cache must equal the model after every
//! change.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use persistent_map_core::{
    async_trait, BatchOp, Capabilities, PersistentError, PersistentMap, Result, StorageBackend,
    WriteBehind,
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
    let map = builder.build().await.expect("opens");
    // Every fourth seed closes the map while the tasks still write: what
    // was acknowledged before must be kept, and nothing after.
    let close_midway = !reorder && seed % 4 == 3;
    let progress = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let map = map.clone();
        let progress = Arc::clone(&progress);
        tasks.push(tokio::spawn(async move {
            for i in 0..ops {
                match race_step(&map, seed, task, i).await {
                    Ok(()) => {}
                    Err(PersistentError::Closed) if close_midway => return,
                    Err(err) => panic!("task {task} step {i}: {err}"),
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    if close_midway {
        while progress.load(Ordering::Relaxed) < TASKS * ops / 2 {
            tokio::task::yield_now().await;
        }
        map.close().await.expect("closes while writers run");
    }
    for task in tasks {
        task.await.expect("task finished");
    }
    if close_midway {
        let cache: State = map.iter().collect();
        let batches = map.backend().batches.load(Ordering::Relaxed);
        drop(map);
        let store = stores::reopen(Backend::Csv, &path)
            .await
            .expect("reopens")
            .state;
        return compare(seed, &cache, &store, batches);
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
    compare(seed, &cache, &store, batches)
}

/// One change of task `task` at step `i`: mostly inserts and removes, and
/// every so often a read-modify-write, a two-key transaction, a `retain`
/// or a `reload`, all of which must keep the same order in cache and store.
async fn race_step(
    map: &PersistentMap<String, u64, Delayed<CsvBackend>>,
    seed: u64,
    task: u64,
    i: u64,
) -> Result<()> {
    let key = key_of(seed, task, i);
    let value = task * 1_000_000 + i;
    match i % 10 {
        9 => map.remove(&key).await.map(drop),
        3 => map
            .update(&key, move |old| {
                Some(old.map_or(value, |&old| old.max(value)))
            })
            .await
            .map(drop),
        6 => {
            let next = key_of(seed, task, i + 1);
            map.transaction(move |tx| {
                if tx.contains_key(&key) {
                    tx.insert(next, value + 1);
                }
                tx.insert(key, value);
            })
            .await
        }
        7 if i % 500 == 7 && task == 0 => map.retain(|_, v| v % 7 != 0).await.map(drop),
        7 if i % 500 == 257 && task == 1 => map.reload().await,
        _ => map.insert(key, value).await.map(drop),
    }
}

/// (divergent keys, values written to another key, backend batches).
fn compare(seed: u64, cache: &State, store: &State, batches: u64) -> (u64, u64, u64) {
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
            (
                "closed_midway_runs",
                (0..seeds).filter(|s| s % 4 == 3).count() as u64,
            ),
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
    /// A read-modify-write: add to the value (missing counts as 0).
    Update(u8, u64),
    /// Two puts, all or none.
    Transaction(u8, u8, u64),
    /// Remove every entry whose value is a multiple of this.
    Retain(u64),
    Flush,
    /// Replace the cache with the store.
    Reload,
    /// Close the map (which flushes) and open the store again.
    Close,
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
        2 => (0_u8..8, 0_u64..100).prop_map(|(k, d)| Step::Update(k, d)),
        2 => (0_u8..8, 0_u8..8, any::<u64>()).prop_map(|(a, b, v)| Step::Transaction(a, b, v)),
        1 => (2_u64..5).prop_map(Step::Retain),
        1 => Just(Step::Flush),
        1 => Just(Step::Reload),
        1 => Just(Step::Close),
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
        Step::Update(k, d) => {
            let key = format!("k{k}");
            let value = state.get(&key).copied().unwrap_or(0).wrapping_add(*d);
            state.insert(key, value);
        }
        Step::Transaction(a, b, v) => {
            state.insert(format!("k{a}"), *v);
            state.insert(format!("k{b}"), v.wrapping_add(1));
        }
        Step::Retain(m) => state.retain(|_, v| *v % m != 0),
        Step::Flush | Step::Reload | Step::Close | Step::Crash { .. } => {}
    }
}

type ModelMap = PersistentMap<String, u64, CsvBackend>;

async fn open_model_map(path: &Path, recorder: &Arc<Recorder>, behind: bool) -> ModelMap {
    let backend = CsvBackend::builder(path).file_io(recorder.clone()).build();
    let builder = PersistentMap::builder(backend);
    let builder = if behind {
        builder.write_behind(WriteBehind::new().max_delay(Duration::from_micros(100)))
    } else {
        builder
    };
    builder.build().await.expect("opens")
}

/// Makes one change of the model's steps through the map.
async fn map_apply(map: &ModelMap, step: &Step) {
    match step.clone() {
        Step::Insert(k, v) => map.insert(format!("k{k}"), v).await.map(drop),
        Step::Remove(k) => map.remove(&format!("k{k}")).await.map(drop),
        Step::Update(k, d) => map
            .update(&format!("k{k}"), move |v| {
                Some(v.copied().unwrap_or(0).wrapping_add(d))
            })
            .await
            .map(drop),
        Step::Transaction(a, b, v) => {
            map.transaction(move |tx| {
                tx.insert(format!("k{a}"), v);
                tx.insert(format!("k{b}"), v.wrapping_add(1));
            })
            .await
        }
        Step::Retain(m) => map.retain(move |_, v| *v % m != 0).await.map(drop),
        Step::Reload => map.reload().await,
        Step::Flush | Step::Close | Step::Crash { .. } => Ok(()),
    }
    .unwrap_or_else(|err| panic!("{step:?}: {err}"));
}

async fn run_steps(behind: bool, steps: Vec<Step>) -> std::result::Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut generation = 0;
    let mut path = dir.path().join("g0").join("store.csv");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut durable = State::new();
    let mut pending: Vec<Step> = Vec::new();
    let mut base = Disk::default();
    let mut recorder = Arc::new(Recorder::default());
    let mut map = open_model_map(&path, &recorder, behind).await;
    for step in steps {
        match &step {
            Step::Flush => {
                map.flush().await.expect("flushes");
                for p in pending.drain(..) {
                    model_apply(&mut durable, &p);
                }
            }
            Step::Close => {
                map.close().await.expect("closes");
                drop(map);
                for p in pending.drain(..) {
                    model_apply(&mut durable, &p);
                }
                map = open_model_map(&path, &recorder, behind).await;
                let cache: State = map.iter().collect();
                prop_assert_eq!(&cache, &durable, "after close and reopen");
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
                map = open_model_map(&path, &recorder, behind).await;
            }
            change => {
                map_apply(&map, change).await;
                pending.push(step.clone());
                // The cache is the model's current state in both modes.
                let mut current = durable.clone();
                for p in &pending {
                    model_apply(&mut current, p);
                }
                let cache: State = map.iter().collect();
                prop_assert_eq!(&cache, &current, "the cache after {:?}", change);
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
    let input = (any::<bool>(), proptest::collection::vec(step(), 1..60));
    let result = runner.run(&input, |(behind, steps)| {
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
        runtime.block_on(run_steps(behind, steps))
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
