//! A commit that finishes even if its caller stops waiting.
//!
//! A caller that commits its own change ([`Pipeline::try_lead`]) runs the
//! backend call inside its own future. Dropping that future half-way (a
//! `select!`, a timeout) must not cut the commit off: its outcome would be
//! unknown and the map would stay locked to other writers. So the commit is
//! boxed, and a [`Detached`] dropped before it completes hands the box to
//! the runtime to finish it.
//!
//! [`Pipeline::try_lead`]: crate::queue::Pipeline::try_lead

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type Work<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Polls `work` for its caller; if dropped first, spawns the rest of it, or
/// (with no runtime to spawn on) calls `abandoned`.
pub(crate) struct Detached<T: Send + 'static> {
    work: Option<Work<T>>,
    abandoned: Option<Box<dyn FnOnce() + Send>>,
}

impl<T: Send + 'static> Detached<T> {
    pub(crate) fn new(
        work: impl Future<Output = T> + Send + 'static,
        abandoned: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self {
            work: Some(Box::pin(work)),
            abandoned: Some(Box::new(abandoned)),
        }
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Pending;
        };
        match work.as_mut().poll(cx) {
            Poll::Ready(output) => {
                self.work = None;
                Poll::Ready(output)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = work.await;
                });
            }
            Err(_) => {
                drop(work);
                if let Some(abandoned) = self.abandoned.take() {
                    abandoned();
                }
            }
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Detached<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detached")
            .field("finished", &self.work.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_dropped_commit_still_finishes() {
        let done = Arc::new(AtomicBool::new(false));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::clone(&done);
        let detached = Detached::new(
            async move {
                let _ = wait.await;
                finished.store(true, Ordering::SeqCst);
            },
            || panic!("a runtime is there"),
        );
        drop(detached);
        go.send(()).expect("the work still waits");
        for _ in 0..1000 {
            if done.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the spawned rest of the work never ran");
    }

    #[test]
    fn without_a_runtime_the_abandonment_is_reported() {
        let abandoned = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&abandoned);
        drop(Detached::new(std::future::pending::<()>(), move || {
            flag.store(true, Ordering::SeqCst);
        }));
        assert!(abandoned.load(Ordering::SeqCst));
    }
}
