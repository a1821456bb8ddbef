//! The `metrics` feature: the map's counters, the commit-latency histogram
//! and the gauges reach the installed recorder, labelled with the map's name.
#![cfg(feature = "metrics")]

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use persistent_map_core::PersistentMap;

mod common;
use common::Switchable;

#[tokio::test]
async fn counters_histograms_and_gauges_carry_the_map_name() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Before the map opens: handles taken earlier would go nowhere.
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let backend = Switchable::new(true);
    let map: PersistentMap<String, u32, _> = PersistentMap::builder(backend.clone())
        .name("metered")
        .build()
        .await
        .expect("open");
    // Another map, so the test shows the label tells them apart.
    let other: PersistentMap<String, u32, _> = PersistentMap::new(Switchable::new(true))
        .await
        .expect("open");
    other.insert("x".to_string(), 0).await.expect("insert");

    map.insert("a".to_string(), 1).await.expect("insert");
    map.insert_many([("b".to_string(), 2), ("c".to_string(), 3)])
        .await
        .expect("insert_many");
    backend.fail(true);
    map.insert("d".to_string(), 4).await.expect_err("refused");
    backend.fail(false);
    map.flush().await.expect("flush");
    map.reload().await.expect("reload");

    // (name, labels) -> value, for the metrics of the map named "metered".
    let mut seen: HashMap<(String, Vec<(String, String)>), DebugValue> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|label| (label.key().to_string(), label.value().to_string()))
            .collect();
        if labels.contains(&("map".to_string(), "metered".to_string())) {
            seen.insert((key.name().to_string(), labels), value);
        }
    }
    let map_label = vec![("map".to_string(), "metered".to_string())];
    let get = |name: &str| {
        seen.get(&(name.to_string(), map_label.clone()))
            .unwrap_or_else(|| panic!("{name} was not emitted for the map: {seen:#?}"))
    };
    assert_eq!(get("persistent_map_commits_total"), &DebugValue::Counter(2));
    assert_eq!(
        get("persistent_map_changes_written_total"),
        &DebugValue::Counter(3)
    );
    assert_eq!(get("persistent_map_flushes_total"), &DebugValue::Counter(1));
    assert_eq!(get("persistent_map_resyncs_total"), &DebugValue::Counter(1));
    match get("persistent_map_commit_duration_seconds") {
        DebugValue::Histogram(values) => {
            assert_eq!(values.len(), 2, "one latency per commit: {values:?}");
            assert!(values.iter().all(|v| v.into_inner() >= 0.0));
        }
        other => panic!("a histogram, not {other:?}"),
    }
    match get("persistent_map_batch_size") {
        DebugValue::Histogram(values) => {
            let sizes: Vec<f64> = values.iter().map(|v| v.into_inner()).collect();
            assert_eq!(sizes, [1.0, 2.0]);
        }
        other => panic!("a histogram, not {other:?}"),
    }
    let errors = seen
        .get(&(
            "persistent_map_write_errors_total".to_string(),
            vec![
                ("map".to_string(), "metered".to_string()),
                ("kind".to_string(), "other".to_string()),
            ],
        ))
        .unwrap_or_else(|| panic!("write errors were not emitted: {seen:#?}"));
    assert_eq!(errors, &DebugValue::Counter(1));
    assert_eq!(
        get("persistent_map_entries"),
        &DebugValue::Gauge(3.0.into())
    );
    assert_eq!(
        get("persistent_map_unflushed"),
        &DebugValue::Gauge(0.0.into())
    );
    match get("persistent_map_last_flush_timestamp_seconds") {
        DebugValue::Gauge(at) => assert!(at.into_inner() > 1.0e9, "a unix time: {at}"),
        other => panic!("a gauge, not {other:?}"),
    }
}
