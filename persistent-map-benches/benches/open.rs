//! Reopen: loading a store of 100,000 entries into the cache.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use persistent_map_benches::{key, open, value, Kind};
use persistent_map_core::PersistentMap;

const ENTRIES: u64 = 100_000;

fn reopen(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("reopen_100k");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ENTRIES));
    for kind in Kind::ALL {
        if kind == Kind::SqliteFull {
            continue; // the same file format as SqliteNormal
        }
        let dir = tempfile::tempdir().expect("dir");
        let memory = persistent_map_benches::memory();
        macro_rules! run {
            ($make:expr) => {{
                let map = rt.block_on(open($make));
                rt.block_on(map.extend((0..ENTRIES).map(|i| (key(i), value(i)))))
                    .expect("fill");
                rt.block_on(map.close()).expect("close");
                drop(map);
                group.bench_function(kind.name(), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let start = Instant::now();
                            let map: PersistentMap<String, String, _> =
                                rt.block_on(PersistentMap::new($make)).expect("reopen");
                            total += start.elapsed();
                            assert_eq!(map.len() as u64, ENTRIES);
                            rt.block_on(map.close()).expect("close");
                        }
                        total
                    })
                });
            }};
        }
        match kind {
            Kind::Memory => run!(memory.clone()),
            Kind::SqliteNormal | Kind::SqliteFull => {
                run!(rt.block_on(persistent_map_benches::sqlite(
                    dir.path(),
                    persistent_map_sqlite::Synchronous::Normal
                )))
            }
            Kind::Csv => run!(persistent_map_benches::csv(dir.path())),
        }
    }
    group.finish();
}

criterion_group!(benches, reopen);
criterion_main!(benches);
