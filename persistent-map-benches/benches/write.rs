//! Writes: sequential and concurrent acknowledged inserts, removes and bulk
//! loads, on every backend.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use persistent_map_benches::{for_each_backend, key, open, value};
use persistent_map_core::{PersistentMap, WriteBehind};

fn sequential_inserts(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("insert_sequential");
    group.throughput(Throughput::Elements(1));
    for_each_backend!(rt, |name, backend| {
        let map = rt.block_on(open(backend));
        let mut i = 0_u64;
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                i += 1;
                let (k, v) = (key(i), value(i));
                let map = &map;
                async move { map.insert(k, v).await.expect("insert") }
            })
        });
        rt.block_on(map.close()).expect("close");
    });
    group.finish();
}

fn concurrent_inserts(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("insert_concurrent");
    const PER_ROUND: u64 = 1_600;
    group.throughput(Throughput::Elements(PER_ROUND));
    for_each_backend!(rt, |name, backend| {
        let map = rt.block_on(open(backend));
        for tasks in [1_u64, 4, 16] {
            let mut round = 0_u64;
            group.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        round += 1;
                        let base = round * PER_ROUND;
                        let start = Instant::now();
                        rt.block_on(async {
                            let handles: Vec<_> = (0..tasks)
                                .map(|t| {
                                    let map = map.clone();
                                    tokio::spawn(async move {
                                        for i in (t..PER_ROUND).step_by(tasks as usize) {
                                            let n = base + i;
                                            map.insert(key(n), value(n)).await.expect("insert");
                                        }
                                    })
                                })
                                .collect();
                            for handle in handles {
                                handle.await.expect("task");
                            }
                        });
                        total += start.elapsed();
                    }
                    total
                })
            });
        }
        rt.block_on(map.close()).expect("close");
    });
    group.finish();
}

fn removes(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("remove");
    group.throughput(Throughput::Elements(1));
    for_each_backend!(rt, |name, backend| {
        let map = rt.block_on(open(backend));
        let mut i = 0_u64;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(map.extend((i..i + iters).map(|n| (key(n), value(n)))))
                    .expect("fill");
                let start = Instant::now();
                rt.block_on(async {
                    for n in i..i + iters {
                        map.remove(&key(n)).await.expect("remove");
                    }
                });
                i += iters;
                start.elapsed()
            })
        });
        rt.block_on(map.close()).expect("close");
    });
    group.finish();
}

fn bulk_load(c: &mut Criterion) {
    const ENTRIES: u64 = 100_000;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("bulk_load_100k");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ENTRIES));
    for_each_backend!(rt, |name, backend| {
        let map = rt.block_on(open(backend));
        let mut round = 0_u64;
        group.bench_function(BenchmarkId::new("insert_many", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let base = round * ENTRIES;
                    let batch: Vec<_> =
                        (base..base + ENTRIES).map(|n| (key(n), value(n))).collect();
                    let start = Instant::now();
                    rt.block_on(async {
                        map.extend(batch).await.expect("extend");
                        map.flush().await.expect("flush");
                    });
                    total += start.elapsed();
                }
                total
            })
        });
        rt.block_on(map.close()).expect("close");
    });
    for_each_backend!(rt, |name, backend| {
        let map: PersistentMap<String, String, _> = rt
            .block_on(
                PersistentMap::builder(backend)
                    .max_batch(8192)
                    .write_behind(WriteBehind::new())
                    .build(),
            )
            .expect("open");
        let mut round = 0_u64;
        group.bench_function(BenchmarkId::new("write_behind", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let base = round * ENTRIES;
                    let start = Instant::now();
                    rt.block_on(async {
                        for n in base..base + ENTRIES {
                            map.insert(key(n), value(n)).await.expect("insert");
                        }
                        map.flush().await.expect("flush");
                    });
                    total += start.elapsed();
                }
                total
            })
        });
        rt.block_on(map.close()).expect("close");
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4));
    targets = sequential_inserts, concurrent_inserts, removes, bulk_load
}
criterion_main!(benches);
