//! The thread that does an open store's appends and syncs.
//!
//! Appending one record is a single `write` call of about a microsecond;
//! handing it to tokio's blocking pool (`spawn_blocking`) and back costs
//! tens. So each open store owns one thread for its appends and syncs, and
//! both sides wait briefly by spinning before they sleep: the thread polls
//! its queue for a moment after each job, and a caller re-polls for a
//! moment before it parks its task. A lone writer's next record then never
//! waits for a thread to wake. The spinning is bounded (see [`SPIN`], and
//! for a sync about as long as the last sync took, at most
//! [`MAX_SYNC_SPIN`]); an idle store's thread sleeps, and it ends when the
//! store is dropped.

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use persistent_map_core::{PersistentError, Result};

/// How long either side keeps polling before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

/// The longest a caller polls for a sync (an fsync takes a fraction of a
/// millisecond to many milliseconds; beyond this the caller sleeps).
const MAX_SYNC_SPIN: Duration = Duration::from_millis(2);

type Job = Box<dyn FnOnce() + Send>;

/// One store's file thread; dropping it lets the thread finish its queue
/// and end.
pub(crate) struct FileThread {
    jobs: mpsc::Sender<Job>,
    /// How long the last sync took, in nanoseconds: a caller waiting for a
    /// sync polls for about that long before it sleeps.
    last_sync_nanos: Arc<AtomicU64>,
}

impl FileThread {
    /// Starts the thread for the store at `path` (named in errors).
    ///
    /// The thread keeps `held` (the store's lock) until it has run its last
    /// job: appends whose callers gave up are still written after the store
    /// is dropped, and the next opener must not take the file before then.
    pub(crate) fn start<H: Send + 'static>(path: &std::path::Path, held: H) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(String::from("persistent-map-csv"))
            .spawn(move || {
                serve(&queue);
                drop(held);
            })
            .map_err(|e| PersistentError::io(path, e))?;
        Ok(Self {
            jobs,
            last_sync_nanos: Arc::default(),
        })
    }

    /// Runs `work` on the thread; the future completes with its result.
    pub(crate) fn run<T, F>(&self, work: F) -> Done<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        self.run_spinning(work, SPIN)
    }

    /// Runs a sync on the thread. Its caller polls for as long as the last
    /// sync took (within bounds), so a fast disk's sync is not followed by
    /// the wake-up of a sleeping runtime thread.
    pub(crate) fn sync<T, F>(&self, work: F) -> Done<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let took = Duration::from_nanos(self.last_sync_nanos.load(Ordering::Relaxed));
        let spin = (took + took / 2).clamp(SPIN, MAX_SYNC_SPIN);
        let record = Arc::clone(&self.last_sync_nanos);
        self.run_spinning(
            move || {
                let start = Instant::now();
                let outcome = work();
                let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                record.store(nanos, Ordering::Relaxed);
                outcome
            },
            spin,
        )
    }

    fn run_spinning<T, F>(&self, work: F, spin: Duration) -> Done<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let slot = Arc::new(Slot::default());
        let filled = Arc::clone(&slot);
        let job: Job = Box::new(move || {
            let outcome = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
                Err(PersistentError::Other(
                    "the csv file thread panicked while writing".into(),
                ))
            });
            filled.fill(outcome);
        });
        if self.jobs.send(job).is_err() {
            slot.fill(Err(PersistentError::Other(
                "the csv file thread has stopped".into(),
            )));
        }
        Done {
            slot,
            spin,
            spinning_since: None,
        }
    }
}

impl fmt::Debug for FileThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileThread").finish_non_exhaustive()
    }
}

/// The thread's loop: run jobs in order until every sender is gone.
fn serve(queue: &mpsc::Receiver<Job>) {
    loop {
        let job = match queue.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => match next_spinning(queue) {
                Some(job) => job,
                None => match queue.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            },
        };
        job();
    }
}

/// Polls the queue for up to [`SPIN`]; `None` when nothing came.
fn next_spinning(queue: &mpsc::Receiver<Job>) -> Option<Job> {
    let start = Instant::now();
    while start.elapsed() < SPIN {
        match queue.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    None
}

/// Where the thread leaves a job's result.
struct Slot<T> {
    ready: AtomicBool,
    inner: Mutex<SlotInner<T>>,
}

struct SlotInner<T> {
    value: Option<Result<T>>,
    waker: Option<Waker>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            inner: Mutex::new(SlotInner {
                value: None,
                waker: None,
            }),
        }
    }
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, SlotInner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fill(&self, value: Result<T>) {
        let waker = {
            let mut inner = self.lock();
            inner.value = Some(value);
            inner.waker.take()
        };
        self.ready.store(true, Ordering::Release);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn take(&self) -> Option<Result<T>> {
        self.lock().value.take()
    }
}

/// The result of a job run by a [`FileThread`].
pub(crate) struct Done<T> {
    slot: Arc<Slot<T>>,
    spin: Duration,
    spinning_since: Option<Instant>,
}

impl<T> Future for Done<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if self.slot.ready.load(Ordering::Acquire) {
            if let Some(value) = self.slot.take() {
                return Poll::Ready(value);
            }
        }
        let since = *self.spinning_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.spin {
            // Poll again soon rather than park: the job takes microseconds.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut inner = self.slot.lock();
        if let Some(value) = inner.value.take() {
            return Poll::Ready(value);
        }
        inner.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_and_return_their_results() {
        let thread = FileThread::start(std::path::Path::new("test.csv"), ()).expect("starts");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for i in 0..100 {
            let order = Arc::clone(&order);
            waiting.push(thread.run(move || {
                order.lock().expect("not poisoned").push(i);
                Ok(i * 2)
            }));
        }
        for (i, done) in waiting.into_iter().enumerate() {
            assert_eq!(done.await.expect("ran"), i * 2);
        }
        assert_eq!(
            *order.lock().expect("not poisoned"),
            (0..100).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_goes_on() {
        let thread = FileThread::start(std::path::Path::new("test.csv"), ()).expect("starts");
        let err = thread
            .run(|| -> Result<()> { panic!("disk on fire") })
            .await
            .expect_err("the job panicked");
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(thread.run(|| Ok(7)).await.expect("runs"), 7);
    }

    #[tokio::test]
    async fn a_slow_job_parks_the_caller_and_wakes_it() {
        let thread = FileThread::start(std::path::Path::new("test.csv"), ()).expect("starts");
        let value = thread
            .run(|| {
                std::thread::sleep(Duration::from_millis(20));
                Ok("late")
            })
            .await
            .expect("runs");
        assert_eq!(value, "late");
    }
}
