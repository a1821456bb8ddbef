//! Reads: `get` on a warm map against a bare `DashMap` of the same data, and
//! `get` while write-through writers run.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use dashmap::DashMap;
use persistent_map_benches::{key, open, value};

const ENTRIES: u64 = 100_000;

fn warm_get(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let map = rt.block_on(async {
        let map = open(persistent_map_benches::memory()).await;
        map.extend((0..ENTRIES).map(|i| (key(i), value(i))))
            .await
            .expect("fill");
        map
    });
    let bare: DashMap<String, String> = (0..ENTRIES).map(|i| (key(i), value(i))).collect();
    let keys: Vec<String> = (0..ENTRIES).map(|i| key((i * 7919) % ENTRIES)).collect();

    let mut group = c.benchmark_group("get_warm");
    group.bench_function("persistent_map", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(map.get(&keys[i]))
        })
    });
    group.bench_function("bare_dashmap_get_clone", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(bare.get(&keys[i]).map(|v| v.value().clone()))
        })
    });
    group.finish();
}

fn get_under_writes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let map = rt.block_on(async {
        let backend =
            persistent_map_benches::sqlite(dir.path(), persistent_map_sqlite::Synchronous::Normal)
                .await;
        let map = open(backend).await;
        map.extend((0..ENTRIES).map(|i| (key(i), value(i))))
            .await
            .expect("fill");
        map
    });
    let keys: Vec<String> = (0..ENTRIES).map(|i| key((i * 7919) % ENTRIES)).collect();

    let mut group = c.benchmark_group("get_with_writers");
    for writers in [0_u64, 4] {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let map = map.clone();
                let stop = Arc::clone(&stop);
                rt.spawn(async move {
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        map.insert(key(i % ENTRIES), value(i)).await.expect("write");
                        i += writers;
                    }
                })
            })
            .collect();
        group.bench_function(format!("{writers}_writers"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for n in 0..iters {
                    black_box(map.get(&keys[(n as usize) % keys.len()]));
                }
                start.elapsed()
            })
        });
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            rt.block_on(task).expect("writer");
        }
    }
    group.finish();
}

criterion_group!(benches, warm_get, get_under_writes);
criterion_main!(benches);
