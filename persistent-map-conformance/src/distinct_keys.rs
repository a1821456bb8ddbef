//! The rule that distinct keys stay distinct when a key type can be both a
//! string and something else, which a text encoding that stores every string
//! unquoted gets wrong (`None` and `Some("null")` both become `null`).

use std::collections::HashMap;

use persistent_map_core::StorageBackend;
use serde_json::{json, Value};

use crate::factory::StoreFactory;
use crate::harness::{assert_same, contents, open_fresh, reopen};

/// "Reading is honest": keys whose serialized forms differ only in being a
/// JSON string or not (`null` and `"null"`, `42` and `"42"`, `[1]` and
/// `"[1]"`, strings whose text is itself JSON) stay distinct keys, each with
/// its own value, after a reopen.
///
/// The keys are [`serde_json::Value`]s, a type that can be both, as
/// `Option<String>` or an untagged enum of a string and a number can.
pub async fn keys_that_share_a_legacy_text_stay_distinct<F>(mut factory: F)
where
    F: StoreFactory,
    F::Backend: StorageBackend<Value, String>,
{
    let keys = [
        Value::Null,
        json!("null"),
        json!(42),
        json!("42"),
        json!(""),
        json!("\"x\""),
        json!([1]),
        json!("[1]"),
        json!({"a": 1}),
        json!("{\"a\":1}"),
        json!(true),
        json!("true"),
        json!(" 7"),
        json!("alice"),
    ];
    let expected: HashMap<Value, String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), format!("value {i}")))
        .collect();
    let map = open_fresh::<F, Value, String>(&mut factory).await;
    for (k, v) in &expected {
        map.insert(k.clone(), v.clone()).await.expect("insert");
    }
    assert_same("before reopen", &contents(&map), &expected);
    let map = reopen(&mut factory, map).await;
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}
