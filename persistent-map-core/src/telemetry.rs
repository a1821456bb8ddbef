//! The `metrics` feature: the map's counters, a commit-latency histogram and
//! a few gauges, sent to the [`metrics`] facade with a `map` label holding
//! the map's name. The names are listed in the crate's README.
//!
//! Handles are registered once, when the map opens, so a commit costs an
//! atomic add per figure and no lookup. As everywhere with the `metrics`
//! crate, the recorder (a Prometheus or OpenTelemetry exporter) must be
//! installed before the map opens: handles taken earlier go nowhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::error::ErrorKind;

pub(crate) const COMMITS: &str = "persistent_map_commits_total";
pub(crate) const CHANGES_WRITTEN: &str = "persistent_map_changes_written_total";
pub(crate) const WRITE_ERRORS: &str = "persistent_map_write_errors_total";
pub(crate) const FLUSHES: &str = "persistent_map_flushes_total";
pub(crate) const REMOTE_CHANGES: &str = "persistent_map_remote_changes_applied_total";
pub(crate) const RESYNCS: &str = "persistent_map_resyncs_total";
pub(crate) const EXPIRED_SWEPT: &str = "persistent_map_expired_swept_total";
pub(crate) const COMMIT_SECONDS: &str = "persistent_map_commit_duration_seconds";
pub(crate) const BATCH_SIZE: &str = "persistent_map_batch_size";
pub(crate) const ENTRIES: &str = "persistent_map_entries";
pub(crate) const QUEUE_DEPTH: &str = "persistent_map_queue_depth";
pub(crate) const UNFLUSHED: &str = "persistent_map_unflushed";
pub(crate) const LAST_FLUSH: &str = "persistent_map_last_flush_timestamp_seconds";

/// The metric handles of one map.
#[derive(Debug)]
pub(crate) struct Telemetry {
    commits: Counter,
    changes_written: Counter,
    flushes: Counter,
    remote_applied: Counter,
    resyncs: Counter,
    expired_swept: Counter,
    commit_seconds: Histogram,
    batch_size: Histogram,
    entries: Gauge,
    queue_depth: Gauge,
    unflushed: Gauge,
    last_flush: Gauge,
}

impl Telemetry {
    pub(crate) fn new(name: &str) -> Self {
        describe();
        let map = name.to_owned();
        Self {
            commits: metrics::counter!(COMMITS, "map" => map.clone()),
            changes_written: metrics::counter!(CHANGES_WRITTEN, "map" => map.clone()),
            flushes: metrics::counter!(FLUSHES, "map" => map.clone()),
            remote_applied: metrics::counter!(REMOTE_CHANGES, "map" => map.clone()),
            resyncs: metrics::counter!(RESYNCS, "map" => map.clone()),
            expired_swept: metrics::counter!(EXPIRED_SWEPT, "map" => map.clone()),
            commit_seconds: metrics::histogram!(COMMIT_SECONDS, "map" => map.clone()),
            batch_size: metrics::histogram!(BATCH_SIZE, "map" => map.clone()),
            entries: metrics::gauge!(ENTRIES, "map" => map.clone()),
            queue_depth: metrics::gauge!(QUEUE_DEPTH, "map" => map.clone()),
            unflushed: metrics::gauge!(UNFLUSHED, "map" => map.clone()),
            last_flush: metrics::gauge!(LAST_FLUSH, "map" => map),
        }
    }

    pub(crate) fn batch_written(&self, changes: u64, elapsed: Option<Duration>) {
        self.commits.increment(1);
        self.changes_written.increment(changes);
        self.batch_size.record(changes as f64);
        if let Some(elapsed) = elapsed {
            self.commit_seconds.record(elapsed);
        }
    }

    /// Errors are rare, and labelled by kind too: this handle is looked up
    /// on each call rather than kept, one per kind.
    pub(crate) fn write_failed(&self, name: &str, kind: ErrorKind) {
        metrics::counter!(WRITE_ERRORS, "map" => name.to_owned(), "kind" => kind_label(kind))
            .increment(1);
    }

    pub(crate) fn flushed(&self) {
        self.flushes.increment(1);
        if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
            self.last_flush.set(now.as_secs_f64());
        }
    }

    pub(crate) fn remote_applied(&self, entries: u64) {
        self.remote_applied.increment(entries);
    }

    pub(crate) fn resynced(&self) {
        self.resyncs.increment(1);
    }

    pub(crate) fn expired_swept(&self, entries: u64) {
        self.expired_swept.increment(entries);
    }

    pub(crate) fn gauges(&self, entries: usize, queue_depth: u64, unflushed: u64) {
        self.entries.set(entries as f64);
        self.queue_depth.set(queue_depth as f64);
        self.unflushed.set(unflushed as f64);
    }
}

/// Descriptions for exporters that show them (Prometheus `# HELP`).
fn describe() {
    metrics::describe_counter!(COMMITS, "backend batches written");
    metrics::describe_counter!(
        CHANGES_WRITTEN,
        "changes (puts and deletes) in the batches written"
    );
    metrics::describe_counter!(
        WRITE_ERRORS,
        "backend writes (batch, clear, flush) that failed"
    );
    metrics::describe_counter!(FLUSHES, "successful flushes of the backend");
    metrics::describe_counter!(
        REMOTE_CHANGES,
        "entries refreshed because another instance changed them"
    );
    metrics::describe_counter!(RESYNCS, "times the whole cache was reloaded from the store");
    metrics::describe_counter!(EXPIRED_SWEPT, "expired entries deleted by the sweep");
    metrics::describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "time a backend batch took");
    metrics::describe_histogram!(BATCH_SIZE, Unit::Count, "changes per backend batch");
    metrics::describe_gauge!(ENTRIES, Unit::Count, "entries in the map");
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "changes queued or being written, not yet settled"
    );
    metrics::describe_gauge!(
        UNFLUSHED,
        Unit::Count,
        "acknowledged changes a flush would still make durable"
    );
    metrics::describe_gauge!(
        LAST_FLUSH,
        Unit::Seconds,
        "unix time of the last successful flush"
    );
}

/// A metric label for `kind`: stable, lowercase, no spaces.
fn kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Backend => "backend",
        ErrorKind::Io => "io",
        ErrorKind::StorageFull => "storage_full",
        ErrorKind::Codec => "codec",
        ErrorKind::Corrupt => "corrupt",
        ErrorKind::UnsupportedFormat => "unsupported_format",
        ErrorKind::Locked => "locked",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Connection => "connection",
        ErrorKind::OutcomeUnknown => "outcome_unknown",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Closed => "closed",
        ErrorKind::Other => "other",
    }
}
