//! What a map's handles and its writer task share about failures and
//! progress: a write-behind background failure (the map is *poisoned* until
//! `reload`), why the writer stopped, and how many write-behind changes were
//! queued, persisted and made durable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::error::{PersistentError, Result};

/// Why the writer task stopped.
#[derive(Debug, Clone)]
pub(crate) enum Stop {
    /// `close` ran, or the last handle was dropped.
    Closed,
    /// Something else ended it; the text says what.
    Failed(String),
}

#[derive(Debug, Default)]
pub(crate) struct Health {
    poisoned: AtomicBool,
    failure: Mutex<Option<Arc<PersistentError>>>,
    stopped: AtomicBool,
    stop: Mutex<Option<Stop>>,
    exited: Notify,
    /// Write-behind changes accepted.
    pub(crate) queued: AtomicU64,
    /// Write-behind changes the backend acknowledged (or that a reload made moot).
    pub(crate) persisted: AtomicU64,
    /// Write-behind changes covered by a successful flush.
    pub(crate) durable: AtomicU64,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Health {
    /// The write-behind background failure, if any, as an error for a caller.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        match locked(&self.failure).as_ref() {
            Some(err) => Err(PersistentError::Shared(Arc::clone(err))),
            None => Ok(()),
        }
    }

    /// Records a background write failure: from now on writes and flushes
    /// return it, until [`cure`](Self::cure).
    pub(crate) fn poison(&self, err: PersistentError) {
        tracing::error!(error = %err, "background write failed; the map refuses writes until reload()");
        let mut failure = locked(&self.failure);
        if failure.is_none() {
            *failure = Some(Arc::new(err));
        }
        self.poisoned.store(true, Ordering::Release);
    }

    /// A reload brought the cache back to the store: forget the failure, and
    /// count every change accepted so far as settled.
    pub(crate) fn cure(&self) {
        *locked(&self.failure) = None;
        self.poisoned.store(false, Ordering::Release);
        let queued = self.queued.load(Ordering::Acquire);
        self.persisted.store(queued, Ordering::Release);
        self.durable.store(queued, Ordering::Release);
    }

    /// Write-behind changes accepted but not yet covered by a flush.
    pub(crate) fn unflushed(&self) -> u64 {
        self.queued
            .load(Ordering::Acquire)
            .saturating_sub(self.durable.load(Ordering::Acquire))
    }

    /// Whether the writer stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The error for a caller of a map whose writer stopped:
    /// [`PersistentError::Closed`] after `close`, otherwise the cause.
    pub(crate) fn stopped_error(&self) -> PersistentError {
        match locked(&self.stop).as_ref() {
            Some(Stop::Failed(reason)) => PersistentError::WriterStopped {
                reason: reason.clone(),
            },
            Some(Stop::Closed) | None => PersistentError::Closed,
        }
    }

    /// Records why the writer stopped (the first reason wins) and wakes
    /// everyone waiting for it.
    pub(crate) fn mark_stopped(&self, stop: Stop) {
        {
            let mut slot = locked(&self.stop);
            if slot.is_none() {
                if let Stop::Failed(reason) = &stop {
                    tracing::error!(%reason, "the map's writer stopped; writes now fail");
                }
                *slot = Some(stop);
            }
        }
        self.stopped.store(true, Ordering::Release);
        self.exited.notify_waiters();
    }

    /// Completes once the writer stopped.
    pub(crate) async fn wait_stopped(&self) {
        let notified = self.exited.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if self.is_stopped() {
            return;
        }
        notified.await;
    }
}
