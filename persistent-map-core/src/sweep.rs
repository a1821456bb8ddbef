//! The expiry sweep: a task that, every sweep interval, asks the write
//! pipeline to delete entries whose deadline passed. The deletion itself goes
//! through the pipeline in order with every other write (see
//! `Writer::sweep` and `Pipeline::sweep_behind`), so it never removes an
//! entry written after it expired.
//!
//! Expired entries are invisible to readers from their deadline on; the
//! sweep only frees their memory and their room in the store, which is why
//! a coarse interval is enough.

use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use crate::cache::now;
use crate::queue::{Command, Pipeline};

/// Starts the sweep of the map whose pipeline this is; it ends with the map.
pub(crate) fn spawn<K, V>(pipeline: Weak<Pipeline<K, V>>)
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let Some(interval) = pipeline.upgrade().map(|p| p.config.sweep_interval) else {
        return;
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // Held only between two ticks, so the map can go away.
            let Some(pipeline) = pipeline.upgrade() else {
                return;
            };
            if !pipeline.sweep_once().await {
                return;
            }
        }
    });
}

impl<K, V> Pipeline<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Queues a sweep if an entry is due; `false` once the map is closed.
    async fn sweep_once(&self) -> bool {
        {
            let state = self.lock();
            if state.closing || state.dropped || self.health.is_stopped() {
                return false;
            }
        }
        if !self.cache.sweep_due(now()) {
            return true;
        }
        if self.write_behind() {
            // A failure poisons the map like any write-behind change; the
            // map reports it on the next call.
            let _swept = self.sweep_behind().await;
            return true;
        }
        if self.sweep_queued.swap(true, Ordering::AcqRel) {
            return true;
        }
        match self.admit().await {
            Ok(mut state) => {
                self.enqueue(&mut state, Command::Sweep(None), false);
                true
            }
            Err(_) => false,
        }
    }
}
