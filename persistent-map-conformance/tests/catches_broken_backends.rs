//! The suite must fail for backends that break the contract: a suite that
//! passes everything proves nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use persistent_map_conformance::{async_trait, cases, run_case, StoreFactory};
use persistent_map_core::codec::{key_from_text, key_to_text};
use persistent_map_core::{BatchOp, Capabilities, PersistentError, Result, StorageBackend};
use persistent_map_memory::InMemoryBackend;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, Clone, Copy)]
enum Defect {
    /// No defect: the control group.
    None,
    /// Applies each batch in reverse order.
    ReversesBatches,
    /// Silently drops every fifth save.
    DropsWrites,
    /// Declares atomic batches but applies them change by change.
    FakesAtomicity,
    /// Folds string keys to lower case and trims their white space.
    NormalizesKeys,
    /// Cuts values whose JSON is longer than 1 MiB.
    TruncatesValues,
    /// Applies only the first 100,000 changes of a batch.
    CapsBatches,
    /// Keeps keys as the legacy text form would read them back, where
    /// `None` and `Some("null")` are one key.
    LegacyKeyText,
}

/// Rewrites `x` through its JSON form when it is a string.
fn rewrite_string<T: Serialize + DeserializeOwned>(x: T, f: impl Fn(&str) -> String) -> T {
    match serde_json::to_value(&x) {
        Ok(serde_json::Value::String(s)) => {
            serde_json::from_value(serde_json::Value::String(f(&s))).unwrap_or(x)
        }
        _ => x,
    }
}

#[derive(Debug, Clone)]
struct Broken {
    inner: InMemoryBackend,
    defect: Defect,
    saves: Arc<AtomicUsize>,
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for Broken
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.inner.load_all().await
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        let n = self.saves.fetch_add(1, Ordering::Relaxed);
        if matches!(self.defect, Defect::DropsWrites) && n % 5 == 4 {
            return Ok(());
        }
        let key = match self.defect {
            Defect::NormalizesKeys => rewrite_string(key, |s| s.trim().to_lowercase()),
            Defect::LegacyKeyText => key_to_text(&key)
                .ok()
                .and_then(|text| key_from_text(&text).ok())
                .unwrap_or(key),
            _ => key,
        };
        let value = match self.defect {
            Defect::TruncatesValues => {
                rewrite_string(value, |s| s.chars().take(1024 * 1024).collect())
            }
            _ => value,
        };
        self.inner.save(key, value).await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        StorageBackend::<K, V>::delete(&self.inner, key).await
    }

    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        let mut ops: Vec<BatchOp<K, V>> = batch.to_vec();
        if matches!(self.defect, Defect::CapsBatches) {
            ops.truncate(100_000);
        }
        if matches!(self.defect, Defect::ReversesBatches) {
            ops.reverse();
        }
        for op in ops {
            match op {
                BatchOp::Put { key, value } => self.save(key, value).await?,
                BatchOp::Delete { key } => StorageBackend::<K, V>::delete(self, &key).await?,
                _ => return Err(PersistentError::unknown_change("broken")),
            }
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_atomic_batch(matches!(self.defect, Defect::FakesAtomicity))
    }
}

struct BrokenFactory {
    defect: Defect,
    current: Option<Broken>,
}

impl BrokenFactory {
    fn new(defect: Defect) -> Self {
        Self {
            defect,
            current: None,
        }
    }
}

#[async_trait]
impl StoreFactory for BrokenFactory {
    type Backend = Broken;

    async fn fresh(&mut self) -> Result<Broken> {
        let backend = Broken {
            inner: InMemoryBackend::new(),
            defect: self.defect,
            saves: Arc::default(),
        };
        self.current = Some(backend.clone());
        Ok(backend)
    }

    async fn reopen(&mut self) -> Result<Broken> {
        Ok(self.current.clone().expect("fresh first"))
    }
}

fn fails<Fut: std::future::Future<Output = ()>>(
    defect: Defect,
    case: impl FnOnce(BrokenFactory) -> Fut,
) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        run_case(BrokenFactory::new(defect), case)
    }))
    .is_err()
}

#[test]
fn a_backend_that_reorders_a_batch_is_caught() {
    assert!(fails(Defect::ReversesBatches, cases::batch_is_ordered));
    assert!(fails(
        Defect::ReversesBatches,
        cases::concurrent_writers_leave_store_equal_to_cache
    ));
}

#[test]
fn a_backend_that_drops_writes_is_caught() {
    assert!(fails(
        Defect::DropsWrites,
        cases::reopen_sees_exactly_what_was_acknowledged
    ));
    assert!(fails(Defect::DropsWrites, cases::round_trip_text));
}

#[test]
fn a_backend_that_fakes_atomic_batches_is_caught() {
    assert!(fails(
        Defect::FakesAtomicity,
        cases::failed_batch_applies_all_or_a_prefix
    ));
}

#[test]
fn a_backend_that_normalizes_keys_is_caught() {
    assert!(fails(
        Defect::NormalizesKeys,
        cases::keys_that_differ_slightly_stay_distinct
    ));
}

#[test]
fn a_backend_that_stores_keys_in_the_legacy_text_form_is_caught() {
    assert!(fails(
        Defect::LegacyKeyText,
        cases::keys_that_share_a_legacy_text_stay_distinct
    ));
}

#[test]
fn a_backend_that_truncates_large_values_is_caught() {
    assert!(fails(
        Defect::TruncatesValues,
        cases::a_large_key_and_a_large_value_round_trip
    ));
}

#[test]
fn a_backend_that_caps_batches_is_caught() {
    assert!(fails(
        Defect::CapsBatches,
        cases::a_million_changes_in_one_batch
    ));
}

#[test]
fn the_same_cases_pass_on_a_correct_backend() {
    run_case(BrokenFactory::new(Defect::None), cases::batch_is_ordered);
    run_case(
        BrokenFactory::new(Defect::None),
        cases::concurrent_writers_leave_store_equal_to_cache,
    );
    run_case(
        BrokenFactory::new(Defect::None),
        cases::reopen_sees_exactly_what_was_acknowledged,
    );
    run_case(BrokenFactory::new(Defect::None), cases::round_trip_text);
    run_case(
        BrokenFactory::new(Defect::None),
        cases::failed_batch_applies_all_or_a_prefix,
    );
    run_case(
        BrokenFactory::new(Defect::None),
        cases::keys_that_differ_slightly_stay_distinct,
    );
    run_case(
        BrokenFactory::new(Defect::None),
        cases::a_large_key_and_a_large_value_round_trip,
    );
    run_case(
        BrokenFactory::new(Defect::None),
        cases::keys_that_share_a_legacy_text_stay_distinct,
    );
}
