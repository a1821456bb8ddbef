//! The suite must fail for backends that break the contract: a suite that
//! passes everything proves nothing.

mod support;

use std::collections::HashMap;
use std::hash::Hash;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::StreamExt as _;
use persistent_map_conformance::{async_trait, cases, run_case, StoreFactory};
use persistent_map_core::codec::{key_from_text, key_to_text};
use persistent_map_core::{
    BatchOp, Capabilities, PersistentError, RemoteChange, RemoteChanges, Result, StorageBackend,
};
use persistent_map_memory::InMemoryBackend;
use serde::de::DeserializeOwned;
use serde::Serialize;
use support::log_file::{FileDefect, LogFileFactory};
use tokio::sync::broadcast;

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
    /// Shares its store through a feed of changed keys: the control group
    /// for the sharing defects.
    Shares,
    /// Shares its store, but announces an instance's own writes back to it.
    Echoes,
    /// Shares its store, but answers `load_keys` in reverse order.
    ReversesLoadKeys,
    /// Keeps keys as the legacy text form would read them back, where
    /// `None` and `Some("null")` are one key.
    LegacyKeyText,
    /// Stores deadlines: the control group for the expiry defects.
    Expires,
    /// Stores deadlines, but sweeps an entry whatever its deadline.
    SweepsUnconditionally,
    /// Declares expiry, but stores every entry without its deadline.
    ForgetsDeadlines,
}

impl Defect {
    fn expires(self) -> bool {
        matches!(
            self,
            Defect::Expires | Defect::SweepsUnconditionally | Defect::ForgetsDeadlines
        )
    }

    fn shares(self) -> bool {
        matches!(
            self,
            Defect::Shares | Defect::Echoes | Defect::ReversesLoadKeys
        )
    }
}

/// A change announced on a shared store: who made it, and the key as JSON.
type Announcement = (u64, serde_json::Value);

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
    /// Which live instance of the store this is.
    instance: u64,
    /// The store's feed of changes, when it is shared.
    feed: Option<broadcast::Sender<Announcement>>,
    /// A text: writes of a key whose JSON contains it fail (an injected fault).
    poison: Arc<Mutex<Option<String>>>,
}

impl Broken {
    fn check_poison<K: Serialize>(&self, key: &K) -> Result<()> {
        let text = serde_json::to_string(key)?;
        match &*self.poison.lock().expect("not poisoned") {
            Some(poison) if text.contains(poison.as_str()) => Err(PersistentError::Other(
                format!("injected failure writing {text}").into(),
            )),
            _ => Ok(()),
        }
    }

    fn announce<K: Serialize>(&self, key: &K) -> Result<()> {
        if let Some(feed) = &self.feed {
            // No receiver is not an error: nobody listens yet.
            let _ = feed.send((self.instance, serde_json::to_value(key)?));
        }
        Ok(())
    }
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
        self.check_poison(&key)?;
        self.announce(&key)?;
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
        self.check_poison(key)?;
        self.announce(key)?;
        StorageBackend::<K, V>::delete(&self.inner, key).await
    }

    async fn load_keys(&self, keys: &[K]) -> Result<Vec<(K, Option<V>)>> {
        let all: HashMap<K, V> = self.inner.load_all().await?;
        let mut answer: Vec<(K, Option<V>)> = keys
            .iter()
            .map(|key| (key.clone(), all.get(key).cloned()))
            .collect();
        if matches!(self.defect, Defect::ReversesLoadKeys) {
            answer.reverse();
        }
        Ok(answer)
    }

    async fn watch(&self) -> Result<Option<RemoteChanges<K>>> {
        let Some(feed) = &self.feed else {
            return Ok(None);
        };
        let me = self.instance;
        let echoes = matches!(self.defect, Defect::Echoes);
        let announcements = futures::stream::unfold(feed.subscribe(), |mut rx| async move {
            match rx.recv().await {
                Ok(announcement) => Some((Some(announcement), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        let stream = announcements.filter_map(move |item| async move {
            match item {
                None => Some(RemoteChange::Resync),
                // The instance's own writes are left out, unless it echoes.
                Some((from, _)) if from == me && !echoes => None,
                Some((_, key)) => serde_json::from_value(key)
                    .ok()
                    .map(|key| RemoteChange::Changed(vec![key])),
            }
        });
        Ok(Some(Box::pin(stream)))
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
                op @ (BatchOp::PutExpiring { .. } | BatchOp::DeleteExpired { .. })
                    if self.defect.expires() =>
                {
                    let op = match (self.defect, op) {
                        (Defect::SweepsUnconditionally, BatchOp::DeleteExpired { key, .. }) => {
                            BatchOp::Delete { key }
                        }
                        (Defect::ForgetsDeadlines, BatchOp::PutExpiring { key, value, .. }) => {
                            BatchOp::Put { key, value }
                        }
                        (_, op) => op,
                    };
                    self.inner.apply_batch(&[op]).await?;
                }
                _ => return Err(PersistentError::unknown_change("broken")),
            }
        }
        Ok(())
    }

    async fn load_with_expiry_into(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<SystemTime>) + Send),
    ) -> Result<()> {
        self.inner.load_with_expiry_into(sink).await
    }

    async fn load_keys_with_expiry(
        &self,
        keys: &[K],
    ) -> Result<Vec<(K, Option<(V, Option<SystemTime>)>)>> {
        self.inner.load_keys_with_expiry(keys).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_atomic_batch(matches!(self.defect, Defect::FakesAtomicity))
            .with_expiry(self.defect.expires())
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
            instance: 0,
            feed: self.defect.shares().then(|| broadcast::channel(1024).0),
            poison: Arc::default(),
        };
        self.current = Some(backend.clone());
        Ok(backend)
    }

    /// Another live instance on the same store.
    async fn reopen(&mut self) -> Result<Broken> {
        let mut backend = self.current.clone().expect("fresh first");
        backend.instance = fastrand::u64(1..);
        Ok(backend)
    }

    async fn fail_writes_of(&mut self, key: &str) -> Result<bool> {
        let current = self.current.as_ref().expect("fresh first");
        *current.poison.lock().expect("not poisoned") = Some(key.to_owned());
        Ok(true)
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
    assert!(fails(
        Defect::DropsWrites,
        cases::subscription_matches_the_store
    ));
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
        cases::subscription_matches_the_store,
    );
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

#[test]
fn a_backend_that_keeps_acknowledged_writes_in_memory_is_caught_by_a_drop() {
    assert!(fails_on_file(
        FileDefect::BuffersUntilFlush,
        cases::acknowledged_writes_survive_a_drop
    ));
}

#[test]
fn a_backend_that_keeps_acknowledged_writes_in_memory_is_caught_by_a_kill() {
    assert!(fails_on_file(
        FileDefect::BuffersUntilFlush,
        cases::acknowledged_writes_survive_a_kill
    ));
}

#[test]
fn a_backend_that_writes_only_when_dropped_is_caught_by_a_kill() {
    assert!(fails_on_file(
        FileDefect::WritesOnDrop,
        cases::acknowledged_writes_survive_a_kill
    ));
}

#[test]
fn a_flush_that_does_not_sync_is_caught() {
    // A child of the case runs this test again, under strace, where strace
    // cannot run a second time: only the parent decides whether to skip.
    let child = std::env::var_os("PERSISTENT_MAP_CONFORMANCE_CHILD").is_some();
    if !child && !strace_runs() {
        persistent_map_conformance::skip_notice(
            "a_flush_that_does_not_sync_is_caught",
            &"strace cannot run here, so the case cannot check syncs",
        );
        return;
    }
    assert!(fails_on_file(
        FileDefect::SkipsSync,
        cases::flush_syncs_the_store_files
    ));
}

#[test]
fn an_honest_file_backend_survives_a_drop() {
    run_case(
        LogFileFactory::new(FileDefect::None),
        cases::acknowledged_writes_survive_a_drop,
    );
}

#[test]
fn an_honest_file_backend_survives_a_kill() {
    run_case(
        LogFileFactory::new(FileDefect::None),
        cases::acknowledged_writes_survive_a_kill,
    );
}

#[test]
fn an_honest_file_backend_syncs_on_flush() {
    run_case(
        LogFileFactory::new(FileDefect::None),
        cases::flush_syncs_the_store_files,
    );
}

#[test]
fn a_backend_that_echoes_its_own_writes_is_caught() {
    assert!(fails(
        Defect::Echoes,
        cases::two_live_instances_follow_each_other
    ));
    assert!(fails(
        Defect::Echoes,
        cases::subscription_marks_remote_changes
    ));
}

#[test]
fn a_backend_that_answers_load_keys_out_of_order_is_caught() {
    assert!(fails(
        Defect::ReversesLoadKeys,
        cases::load_keys_answers_in_the_order_asked
    ));
    assert!(fails(
        Defect::ReversesLoadKeys,
        cases::two_live_instances_follow_each_other
    ));
}

#[test]
fn a_backend_that_applies_a_prefix_of_an_atomic_batch_is_caught() {
    assert!(fails(
        Defect::FakesAtomicity,
        cases::a_failure_in_the_middle_of_a_batch
    ));
}

#[test]
fn the_sharing_and_fault_cases_pass_on_a_correct_backend() {
    run_case(
        BrokenFactory::new(Defect::Shares),
        cases::two_live_instances_follow_each_other,
    );
    run_case(
        BrokenFactory::new(Defect::Shares),
        cases::load_keys_answers_in_the_order_asked,
    );
    run_case(
        BrokenFactory::new(Defect::Shares),
        cases::subscription_marks_remote_changes,
    );
    // Without atomic batches, a prefix of the failed batch may stay.
    run_case(
        BrokenFactory::new(Defect::None),
        cases::a_failure_in_the_middle_of_a_batch,
    );
}

fn fails_on_file<Fut: std::future::Future<Output = ()>>(
    defect: FileDefect,
    case: impl FnOnce(LogFileFactory) -> Fut,
) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        run_case(LogFileFactory::new(defect), case)
    }))
    .is_err()
}

fn strace_runs() -> bool {
    cfg!(target_os = "linux")
        && std::process::Command::new("strace")
            .args(["-qq", "-e", "trace=none", "--", "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

#[test]
fn a_backend_that_sweeps_entries_written_again_is_caught() {
    assert!(fails(
        Defect::SweepsUnconditionally,
        cases::expiring_entries_round_trip_through_the_store
    ));
    assert!(fails(
        Defect::SweepsUnconditionally,
        cases::the_sweep_spares_a_key_written_again
    ));
}

#[test]
fn a_backend_that_forgets_deadlines_is_caught() {
    assert!(fails(
        Defect::ForgetsDeadlines,
        cases::expiring_entries_round_trip_through_the_store
    ));
    assert!(fails(
        Defect::ForgetsDeadlines,
        cases::expired_entries_vanish_at_once_and_are_swept
    ));
    assert!(fails(
        Defect::ForgetsDeadlines,
        cases::deadlines_follow_update_expire_and_persist
    ));
}

#[test]
fn the_expiry_cases_pass_on_a_backend_that_keeps_deadlines() {
    run_case(
        BrokenFactory::new(Defect::Expires),
        cases::expiring_entries_round_trip_through_the_store,
    );
    run_case(
        BrokenFactory::new(Defect::Expires),
        cases::expired_entries_vanish_at_once_and_are_swept,
    );
    run_case(
        BrokenFactory::new(Defect::Expires),
        cases::the_sweep_spares_a_key_written_again,
    );
    run_case(
        BrokenFactory::new(Defect::Expires),
        cases::deadlines_follow_update_expire_and_persist,
    );
}
