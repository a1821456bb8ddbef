//! Rules about awkward keys and large sizes: what a backend stores must come
//! back exactly, however close two keys are and however big a key, a value
//! or a batch is.

use std::collections::HashMap;

use crate::factory::StoreFactory;
use crate::harness::{assert_same, contents, open_fresh, reopen};

/// "Reading is honest": keys that differ only in letter case, in Unicode
/// normalisation (NFC against NFD) or in leading and trailing white space
/// stay distinct keys, each with its own value.
pub async fn keys_that_differ_slightly_stay_distinct<F: StoreFactory>(mut factory: F) {
    let keys = [
        "key",
        "Key",
        "KEY",
        "caf\u{e9}",
        "cafe\u{301}",
        "k",
        "k ",
        "k  ",
        " k",
        "k\t",
        "stra\u{df}e",
        "strasse",
    ];
    let map = open_fresh::<F, String, String>(&mut factory).await;
    let expected: HashMap<String, String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| ((*k).to_owned(), format!("value {i}")))
        .collect();
    for (k, v) in &expected {
        map.insert(k.clone(), v.clone()).await.expect("insert");
    }
    assert_same("before reopen", &contents(&map), &expected);
    let map = reopen(&mut factory, map).await;
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}

/// "Reading is honest", at size: a 64 KiB key and a 16 MiB value are
/// stored and read back whole, beside ordinary entries.
pub async fn a_large_key_and_a_large_value_round_trip<F: StoreFactory>(mut factory: F) {
    // Random letters: a store that compresses keys must not get away with
    // a repeated pattern.
    let mut rng = fastrand::Rng::with_seed(64);
    let big_key: String = (0..64 * 1024).map(|_| rng.alphanumeric()).collect();
    let big_value: String =
        "value with \"quotes\", commas\nand lines; ".repeat(16 * 1024 * 1024 / 40);
    let map = open_fresh::<F, String, String>(&mut factory).await;
    let mut expected = HashMap::new();
    for (k, v) in [
        (big_key.clone(), "small".to_owned()),
        ("small".to_owned(), big_value.clone()),
        ("both".to_owned() + &big_key, big_value),
        ("plain".to_owned(), "plain".to_owned()),
    ] {
        map.insert(k.clone(), v.clone())
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "a {} byte key with a {} byte value: {err}",
                    k.len(),
                    v.len()
                )
            });
        expected.insert(k, v);
    }
    let map = reopen(&mut factory, map).await;
    let found = contents(&map);
    assert_eq!(found.len(), expected.len(), "entries after reopen");
    for (k, v) in &expected {
        let got = found
            .get(k)
            .unwrap_or_else(|| panic!("the {} byte key is missing", k.len()));
        assert!(got == v, "the value under the {} byte key differs", k.len());
    }
    map.close().await.expect("close");
}

/// "Any batch size": an `insert_many` of 1,000,000 changes is accepted and
/// stored whole.
pub async fn a_million_changes_in_one_batch<F: StoreFactory>(mut factory: F) {
    const N: u32 = 1_000_000;
    let map = open_fresh::<F, String, String>(&mut factory).await;
    map.insert_many((0..N).map(|i| (format!("k{i}"), format!("v{i}"))))
        .await
        .expect("a batch of a million changes");
    assert_eq!(map.len(), N as usize);
    let map = reopen(&mut factory, map).await;
    assert_eq!(map.len(), N as usize, "entries after reopen");
    for i in [0, 1, 4_095, 4_096, 65_535, 65_536, 500_000, N - 1] {
        assert_eq!(map.get(&format!("k{i}")), Some(format!("v{i}")), "key k{i}");
    }
    map.close().await.expect("close");
}
