//! The op-cost probe (see `../op-cost.sh`):
//! `persistent-map-op-cost <op> <n> [memory|sqlite|csv]` runs n operations
//! (`get`, `insert`, `insert_behind`) on a map of `String` to `String` over
//! the given backend (default memory); run it under callgrind at two n and
//! subtract to get instructions per operation.
use std::hint::black_box;

use persistent_map_core::{PersistentMap, StorageBackend, WriteBehind};
use persistent_map_csv::CsvBackend;
use persistent_map_memory::InMemoryBackend;
use persistent_map_sqlite::{SqliteBackend, Synchronous};

const ENTRIES: u64 = 100_000;

fn key(i: u64) -> String {
    format!("user:{i:08}")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let op = args.next().expect("an operation");
    let n: u64 = args.next().expect("a count").parse().expect("a count");
    let backend = args.next().unwrap_or_else(|| "memory".to_string());
    let dir = std::env::temp_dir().join(format!("op-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    match backend.as_str() {
        "memory" => run(InMemoryBackend::new(), &op, n).await,
        "sqlite" => {
            let backend = SqliteBackend::builder(dir.join("probe.db"))
                .synchronous(Synchronous::Normal)
                .build()
                .await
                .expect("sqlite opens");
            run(backend, &op, n).await;
        }
        "csv" => run(CsvBackend::new(dir.join("probe.csv")), &op, n).await,
        other => panic!("unknown backend {other}"),
    }
    std::fs::remove_dir_all(&dir).expect("scratch removed");
}

async fn run<B>(backend: B, op: &str, n: u64)
where
    B: StorageBackend<String, String> + Send + Sync + 'static,
{
    let builder = PersistentMap::builder(backend);
    let builder = if op.ends_with("_behind") {
        builder.write_behind(WriteBehind::new())
    } else {
        builder
    };
    let map: PersistentMap<String, String, _> = builder.build().await.expect("open");
    let keys: Vec<String> = (0..ENTRIES).map(key).collect();
    match op {
        "get" => {
            map.extend(keys.iter().map(|k| (k.clone(), "value".to_string())))
                .await
                .expect("fill");
            let mut hits = 0_u64;
            for i in 0..n {
                let key = &keys[usize::try_from((i * 7919) % ENTRIES).expect("small")];
                hits += u64::from(black_box(map.get(key)).is_some());
            }
            assert_eq!(hits, n);
        }
        "insert" | "insert_behind" => {
            for i in 0..n {
                let key = keys[usize::try_from(i % ENTRIES).expect("small")].clone();
                map.insert(key, "value".to_string()).await.expect("insert");
            }
        }
        other => panic!("unknown operation {other}"),
    }
    map.close().await.expect("close");
}
