//! [`Inbox`]: the announcements a listener task received, waiting for the
//! map, collapsed into a reload when too many keys wait.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::announcement::Announcement;

/// Keys an [`Inbox`] buffers before it gives up on them and asks for a reload.
pub(crate) const INBOX_KEYS: usize = 16 * 1024;

/// What a listener saw, before keys are decoded for a map's key type.
pub(crate) enum Raw {
    /// Key texts another instance changed.
    Keys(Vec<String>),
    /// Anything may have changed.
    Resync,
}

/// Announcements waiting for the map, shared by a listener task (which
/// pushes) and the [`Feed`](crate::Feed) (which reads).
///
/// Guarantees:
///
/// * pushing never waits and never fails, however slow the map is: once more
///   than 16 384 keys wait, they collapse into a single resync (as does any
///   resync pushed);
/// * the map receives the waiting keys merged, each once, in order of first
///   arrival, or a resync if one is waiting;
/// * once the map stops following (its feed is dropped, or the feed
///   could not start), [`is_closed`](Self::is_closed) is true and
///   [`closed`](Self::closed) completes, for every waiter: the listener task
///   should then stop and drop its connection.
///
/// Only a [`Feed`](crate::Feed) creates inboxes, and hands each to
/// [`Listen::start`](crate::Listen::start).
pub struct Inbox {
    state: Mutex<InboxState>,
    /// What the listener follows, for log messages.
    pub(crate) channel: String,
    /// Something was pushed.
    ready: Notify,
    /// The reader is gone: the listener stops.
    gone: Notify,
}

#[derive(Default)]
struct InboxState {
    items: VecDeque<Raw>,
    keys: usize,
    closed: bool,
}

impl Inbox {
    pub(crate) fn new(channel: String) -> Self {
        Self {
            state: Mutex::default(),
            channel,
            ready: Notify::new(),
            gone: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, raw: Raw) {
        let mut state = self.state();
        let collapse = match &raw {
            Raw::Resync => true,
            Raw::Keys(keys) => state.keys + keys.len() > INBOX_KEYS,
        };
        if collapse {
            state.items.clear();
            state.keys = 0;
            state.items.push_back(Raw::Resync);
        } else {
            if let Raw::Keys(keys) = &raw {
                state.keys += keys.len();
            }
            state.items.push_back(raw);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Another instance changed `keys` (their stored text).
    pub fn push_keys(&self, keys: Vec<String>) {
        self.push(Raw::Keys(keys));
    }

    /// Anything may have changed (for example announcements were lost while
    /// the listener was disconnected): the map reloads everything. Drops the
    /// keys waiting, which the reload covers.
    pub fn push_resync(&self) {
        self.push(Raw::Resync);
    }

    /// Reads a received payload as an [`Announcement`] and pushes it,
    /// unless it comes from `own_instance` (the backend's own writes, which
    /// its map already holds). Returns `false`, pushing nothing, for a
    /// payload that is not an announcement this release understands.
    pub fn receive(&self, payload: &[u8], own_instance: &str) -> bool {
        let Some(announcement) = Announcement::parse(payload) else {
            return false;
        };
        if announcement.from != own_instance {
            if announcement.resync {
                self.push_resync();
            } else {
                self.push_keys(announcement.keys);
            }
        }
        true
    }

    /// Whether the map stopped following: the listener should stop.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Completes once the map stopped following (at once if it already has).
    pub async fn closed(&self) {
        let notified = std::pin::pin!(self.gone.notified());
        let mut notified = notified;
        // Registered before the check, so a close in between is not missed.
        notified.as_mut().enable();
        if self.is_closed() {
            return;
        }
        notified.await;
    }

    /// Runs `work` (typically: receive the next message) unless the map
    /// stops following first: `None` when it already had or does meanwhile,
    /// in which case `work` is dropped unfinished.
    pub async fn until_closed<F: Future>(&self, work: F) -> Option<F::Output> {
        if self.is_closed() {
            return None;
        }
        tokio::select! {
            () = self.closed() => None,
            output = work => Some(output),
        }
    }

    /// Waits for announcements and takes them all, merged.
    pub(crate) async fn next(&self) -> Raw {
        loop {
            {
                let mut state = self.state();
                if !state.items.is_empty() {
                    state.keys = 0;
                    return merge(std::mem::take(&mut state.items));
                }
            }
            self.ready.notified().await;
        }
    }

    fn close(&self) {
        self.state().closed = true;
        self.gone.notify_waiters();
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Inbox")
            .field("channel", &self.channel)
            .field("waiting", &state.items.len())
            .field("keys", &state.keys)
            .field("closed", &state.closed)
            .finish()
    }
}

fn merge(items: VecDeque<Raw>) -> Raw {
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for item in items {
        match item {
            Raw::Resync => return Raw::Resync,
            Raw::Keys(batch) => {
                for key in batch {
                    if seen.insert(key.clone()) {
                        keys.push(key);
                    }
                }
            }
        }
    }
    Raw::Keys(keys)
}

/// The reading end of an inbox; dropping it closes the inbox, which stops
/// the listener.
pub(crate) struct Reader(pub(crate) Arc<Inbox>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn inbox() -> Inbox {
        Inbox::new("test".to_owned())
    }

    /// The keys taken, or `None` for a resync.
    pub(crate) fn keys(raw: Raw) -> Option<Vec<String>> {
        match raw {
            Raw::Keys(keys) => Some(keys),
            Raw::Resync => None,
        }
    }

    fn texts(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("k{i}")).collect()
    }

    #[tokio::test]
    async fn waiting_keys_are_merged_once_in_order_of_arrival() {
        let inbox = inbox();
        inbox.push_keys(vec!["b".into(), "a".into()]);
        inbox.push_keys(vec!["a".into(), "c".into(), "b".into()]);
        assert_eq!(
            keys(inbox.next().await),
            Some(vec!["b".into(), "a".into(), "c".into()])
        );
        inbox.push_keys(vec!["a".into()]);
        assert_eq!(keys(inbox.next().await), Some(vec!["a".into()]));
    }

    #[tokio::test]
    async fn a_resync_replaces_what_waits() {
        let inbox = inbox();
        inbox.push_keys(vec!["a".into()]);
        inbox.push_resync();
        inbox.push_keys(vec!["b".into()]);
        // The keys pushed after the resync are covered by it too.
        assert!(keys(inbox.next().await).is_none());
        inbox.push_keys(vec!["c".into()]);
        assert_eq!(keys(inbox.next().await), Some(vec!["c".into()]));
    }

    #[tokio::test]
    async fn too_many_waiting_keys_collapse_into_a_resync() {
        let inbox = inbox();
        inbox.push_keys(texts(0..INBOX_KEYS));
        assert_eq!(keys(inbox.next().await).map(|k| k.len()), Some(INBOX_KEYS));

        inbox.push_keys(texts(0..INBOX_KEYS));
        inbox.push_keys(texts(0..1));
        assert!(keys(inbox.next().await).is_none());
        // Taking resets the count.
        inbox.push_keys(texts(0..INBOX_KEYS));
        assert_eq!(keys(inbox.next().await).map(|k| k.len()), Some(INBOX_KEYS));
    }

    #[tokio::test]
    async fn own_and_unknown_payloads_are_not_pushed() {
        let inbox = inbox();
        let own = Announcement::changed("me", vec!["mine".into()]).to_json();
        assert!(inbox.receive(own.as_bytes(), "me"));
        assert!(!inbox.receive(b"{\"keys\":[]}", "me"));
        assert!(!inbox.receive(b"garbage", "me"));
        let other = Announcement::changed("you", vec!["yours".into()]).to_json();
        assert!(inbox.receive(other.as_bytes(), "me"));
        assert_eq!(keys(inbox.next().await), Some(vec!["yours".into()]));
        assert!(inbox.receive(Announcement::resync("you").to_json().as_bytes(), "me"));
        assert!(keys(inbox.next().await).is_none());
    }

    #[tokio::test]
    async fn dropping_the_reader_closes_the_inbox_for_every_waiter() {
        let reader = Reader(Arc::new(inbox()));
        let inbox = Arc::clone(&reader.0);
        assert!(!inbox.is_closed());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let inbox = Arc::clone(&inbox);
                tokio::spawn(async move { inbox.until_closed(std::future::pending::<()>()).await })
            })
            .collect();
        tokio::task::yield_now().await;
        drop(reader);
        for waiter in waiters {
            assert_eq!(waiter.await.expect("joins"), None);
        }
        assert!(inbox.is_closed());
        inbox.closed().await;
        assert_eq!(inbox.until_closed(async { 1 }).await, None);
        let connected: Option<()> = inbox.reconnect(|| async { Ok::<(), String>(()) }).await;
        assert_eq!(connected, None);
    }
}
