//! Key encoding and decoding, legacy format against the distinct one, for
//! the key shapes maps usually have: readable text, text that looks like a
//! number, and integers.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use persistent_map_core::codec::KeyFormat;

/// Keys per measured iteration.
const KEYS: usize = 1000;

fn formats() -> [(&'static str, KeyFormat); 2] {
    [
        ("legacy", KeyFormat::Legacy),
        ("distinct", KeyFormat::Distinct),
    ]
}

fn text_keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user:{i:06}")).collect()
}

/// Readable keys that start like JSON (`name…`, `true…`), which the
/// distinct format must parse before it can leave them unquoted.
fn json_like_keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("name-{i}")).collect()
}

fn digit_keys() -> Vec<String> {
    (0..KEYS).map(|i| i.to_string()).collect()
}

fn int_keys() -> Vec<u64> {
    (0..KEYS as u64).map(|i| i * 7919).collect()
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_encode");
    group.throughput(Throughput::Elements(KEYS as u64));
    for (name, format) in formats() {
        for (shape, keys) in [
            ("text", text_keys()),
            ("json_like_text", json_like_keys()),
            ("digit_text", digit_keys()),
        ] {
            group.bench_with_input(BenchmarkId::new(shape, name), &keys, |b, keys| {
                b.iter(|| {
                    for key in keys {
                        black_box(format.encode(key).expect("encodes"));
                    }
                });
            });
        }
        let ints = int_keys();
        group.bench_with_input(BenchmarkId::new("u64", name), &ints, |b, keys| {
            b.iter(|| {
                for key in keys {
                    black_box(format.encode(key).expect("encodes"));
                }
            });
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_decode");
    group.throughput(Throughput::Elements(KEYS as u64));
    for (name, format) in formats() {
        for (shape, keys) in [
            ("text", text_keys()),
            ("json_like_text", json_like_keys()),
            ("digit_text", digit_keys()),
        ] {
            let texts: Vec<String> = keys
                .iter()
                .map(|k| format.encode(k).expect("encodes"))
                .collect();
            group.bench_with_input(BenchmarkId::new(shape, name), &texts, |b, texts| {
                b.iter(|| {
                    for text in texts {
                        black_box(format.decode::<String>(text).expect("decodes"));
                    }
                });
            });
        }
        let texts: Vec<String> = int_keys()
            .iter()
            .map(|k| format.encode(k).expect("encodes"))
            .collect();
        group.bench_with_input(BenchmarkId::new("u64", name), &texts, |b, texts| {
            b.iter(|| {
                for text in texts {
                    black_box(format.decode::<u64>(text).expect("decodes"));
                }
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(30);
    targets = encode, decode
}
criterion_main!(benches);
