//! Reconnecting a listener that lost its connection, with a jittered
//! exponential backoff so that many instances losing one server do not all
//! reconnect (and reload their maps) in lock-step.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::inbox::Inbox;

/// The first wait before reconnecting, before jitter.
pub(crate) const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest wait between two attempts, before jitter.
pub(crate) const LAST_RETRY: Duration = Duration::from_secs(5);

/// The waits before each reconnection attempt: doubling from
/// [`FIRST_RETRY`] up to [`LAST_RETRY`], each lengthened by a random part of
/// itself (so a wait lies in `[d, 2d)` for the unjittered `d`), without end.
pub(crate) fn retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(FIRST_RETRY)
        .with_max_delay(LAST_RETRY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

impl Inbox {
    /// Reconnects a listener that lost its connection: waits, calls
    /// `connect`, and repeats until it succeeds, waiting longer each time
    /// (from about 100 ms, doubling, up to about 5 s, each wait lengthened by
    /// a random part of itself so that instances do not retry in
    /// lock-step). Then pushes a resync (what was announced while
    /// disconnected is lost) and returns the new connection. `None` as soon
    /// as the map stops following.
    pub async fn reconnect<T, E, F, Fut>(&self, mut connect: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        let channel = &self.channel;
        // Never ends: `without_max_times`.
        let mut delays = retry_delays();
        let connection = loop {
            let delay = delays.next().unwrap_or(LAST_RETRY);
            self.until_closed(tokio::time::sleep(delay)).await?;
            match connect().await {
                Ok(connection) => break connection,
                Err(err) => {
                    tracing::debug!(%channel, error = %err, "change feed still cannot reconnect");
                }
            }
        };
        tracing::info!(%channel, "change feed reconnected; the map reloads");
        self.push_resync();
        Some(connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::tests::{inbox, keys};

    #[test]
    fn retry_delays_are_jittered_growing_and_bounded() {
        const ATTEMPTS: usize = 40;
        let first: Vec<Duration> = retry_delays().take(ATTEMPTS).collect();
        let second: Vec<Duration> = retry_delays().take(ATTEMPTS).collect();
        assert_eq!(first.len(), ATTEMPTS, "the schedule must not end");
        assert_ne!(first, second, "two schedules must differ (jitter)");

        for schedule in [&first, &second] {
            let mut base = FIRST_RETRY;
            for (i, delay) in schedule.iter().enumerate() {
                assert!(
                    *delay >= base && *delay < base * 2,
                    "attempt {i}: {delay:?} outside [{base:?}, {:?})",
                    base * 2
                );
                base = (base * 2).min(LAST_RETRY);
            }
            // Late attempts wait about the cap, still jittered.
            assert!(schedule[ATTEMPTS - 1] >= LAST_RETRY);
        }
        let late: std::collections::HashSet<Duration> = first[20..].iter().copied().collect();
        assert!(late.len() > 1, "waits at the cap must differ too: {late:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn reconnecting_retries_then_asks_for_a_resync() {
        let inbox = inbox();
        let mut attempts = 0;
        let connected = inbox
            .reconnect(|| {
                attempts += 1;
                let attempt = attempts;
                async move {
                    if attempt < 3 {
                        Err("refused")
                    } else {
                        Ok(attempt)
                    }
                }
            })
            .await;
        assert_eq!(connected, Some(3));
        assert!(keys(inbox.next().await).is_none());
    }
}
