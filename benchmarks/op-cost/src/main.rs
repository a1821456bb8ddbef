//! The op-cost probe (see `../op-cost.sh`): `persistent-map-op-cost <op> <n>`
//! runs n operations on a map over the memory backend; run it under
//! callgrind at two n and subtract to get instructions per operation.
use persistent_map_core::{PersistentMap, WriteBehind};
use persistent_map_memory::InMemoryBackend;
use std::hint::black_box;

fn key(i: u64) -> String {
    format!("user:{i:08}")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().expect("what");
    let n: u64 = args.next().expect("n").parse().expect("n");
    let behind = what.ends_with("_behind");
    let builder = PersistentMap::builder(InMemoryBackend::new());
    let builder = if behind {
        builder.write_behind(WriteBehind::new())
    } else {
        builder
    };
    let map: PersistentMap<String, String, _> = builder.build().await.expect("open");
    const ENTRIES: u64 = 100_000;
    let keys: Vec<String> = (0..ENTRIES).map(key).collect();
    match what.as_str() {
        "get" => {
            map.extend(keys.iter().map(|k| (k.clone(), "value".to_string())))
                .await
                .expect("fill");
            let mut hits = 0usize;
            for i in 0..n {
                hits +=
                    black_box(map.get(&keys[((i * 7919) % ENTRIES) as usize])).is_some() as usize;
            }
            assert_eq!(hits as u64, n);
        }
        "insert" | "insert_behind" => {
            for i in 0..n {
                map.insert(keys[(i % ENTRIES) as usize].clone(), "value".to_string())
                    .await
                    .expect("insert");
            }
        }
        _ => panic!("what"),
    }
    map.close().await.expect("close");
}
