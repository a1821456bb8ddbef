//! Building blocks of a change feed, for backends whose store is shared by
//! several instances (a database table, a Redis hash) and that announce
//! their writes to each other over some publish/subscribe channel.
//!
//! A backend implementing [`StorageBackend::watch`](crate::StorageBackend::watch)
//! this way needs three things, and only the first is specific to its driver:
//!
//! * a listener task that receives the payloads others publish and pushes
//!   them into an [`Inbox`], reconnecting when its connection is lost: the
//!   backend implements [`Listen`] to start it;
//! * the message format, [`Announcement`]: `{"from":"<instance>","keys":[..]}`
//!   or `{"from":"<instance>","resync":true}`, as JSON;
//! * the hand-over to the map: a [`Feed`] starts the listener and hands it to
//!   the map ([`Feed::take`], from [`watch`](crate::StorageBackend::watch),
//!   which the map calls before it loads the store, so nothing announced
//!   during or after the load is missed) and asks the map to reload after a
//!   write whose outcome is unknown ([`Feed::resync_after_doubt`]).
//!
//! The listener keeps reading whatever the map does: announcements pile up
//! in the inbox, which collapses them into a single "reload everything" when
//! it holds too many keys, so a slow map never makes the listener stop
//! reading (which would hold back the server's queue or get the subscriber
//! disconnected).

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::backend::{RemoteChange, RemoteChanges};
use crate::codec::KeyFormat;

/// Keys an [`Inbox`] buffers before it gives up on them and asks for a reload.
const INBOX_KEYS: usize = 16 * 1024;

/// Bounds of the wait between reconnection attempts in [`Inbox::reconnect`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// Room in the channel between a feed and its map.
const CHANNEL_CAPACITY: usize = 64;

/// One announcement instances sharing a store send each other, as JSON:
/// `{"from":"<instance>","keys":["a","b"]}` or
/// `{"from":"<instance>","resync":true}`.
///
/// `keys` are the keys' texts as the store holds them (in the store's
/// [`KeyFormat`]); an empty list is left out of
/// the JSON, and so is `resync` when false. Anything that sends this JSON on
/// the backend's channel is followed, so a script that changes the store
/// behind the maps' back can publish `{"from":"script","resync":true}`.
///
/// ```
/// use persistent_map_core::feed::Announcement;
///
/// let sent = Announcement::changed("a1", vec!["alice".to_string()]).to_json();
/// assert_eq!(sent, r#"{"from":"a1","keys":["alice"]}"#);
/// assert_eq!(Announcement::resync("a1").to_json(), r#"{"from":"a1","resync":true}"#);
///
/// let read = Announcement::parse(sent.as_bytes()).expect("understood");
/// assert_eq!((read.from.as_str(), read.keys.len(), read.resync), ("a1", 1, false));
/// assert!(Announcement::parse(b"not json").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Announcement {
    /// The sending backend instance; a listener ignores its own.
    pub from: String,
    /// The changed keys (their stored text), when not a resync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Every key may have changed: the receivers reload the whole store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resync: bool,
}

impl Announcement {
    /// `from` changed `keys`.
    #[must_use]
    pub fn changed(from: impl Into<String>, keys: Vec<String>) -> Self {
        Self {
            from: from.into(),
            keys,
            resync: false,
        }
    }

    /// `from` asks every other instance to reload the whole store.
    #[must_use]
    pub fn resync(from: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            keys: Vec::new(),
            resync: true,
        }
    }

    /// The JSON text of this announcement (never fails: it holds only
    /// strings and a bool).
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a payload; `None` for one that is not an announcement this
    /// release understands (a listener skips it).
    #[must_use]
    pub fn parse(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }

    /// The payloads announcing that `from` changed `keys`, for a channel
    /// whose payloads must stay within `max_bytes`: as few payloads as fit,
    /// each at most `max_bytes` long, carrying every key once and in order.
    ///
    /// When that would take more than `max_payloads` payloads, or a single
    /// key does not fit, it is one resync payload instead (the receivers
    /// reload everything, which is always correct). No keys give no
    /// payloads.
    ///
    /// ```
    /// use persistent_map_core::feed::Announcement;
    ///
    /// let keys: Vec<String> = (0..100).map(|i| format!("key-{i:03}")).collect();
    /// let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    /// let sent = Announcement::chunked("a1", &refs, 200, 16);
    /// assert!(sent.len() > 1 && sent.iter().all(|p| p.len() <= 200));
    ///
    /// let too_many = Announcement::chunked("a1", &refs, 200, 2);
    /// assert_eq!(too_many, [Announcement::resync("a1").to_json()]);
    /// ```
    #[must_use]
    pub fn chunked(
        from: &str,
        keys: &[&str],
        max_bytes: usize,
        max_payloads: usize,
    ) -> Vec<String> {
        let overhead = Self::changed(from, Vec::new()).to_json().len() + r#","keys":[]"#.len();
        let mut out = Vec::new();
        let mut chunk: Vec<String> = Vec::new();
        let mut size = overhead;
        for key in keys {
            let len = serde_json::to_string(key).map_or(usize::MAX, |k| k.len()) + 1;
            if overhead.saturating_add(len) > max_bytes {
                return vec![Self::resync(from).to_json()];
            }
            if size + len > max_bytes {
                out.push(Self::changed(from, std::mem::take(&mut chunk)).to_json());
                size = overhead;
                if out.len() >= max_payloads {
                    return vec![Self::resync(from).to_json()];
                }
            }
            chunk.push((*key).to_owned());
            size += len;
        }
        if !chunk.is_empty() {
            out.push(Self::changed(from, chunk).to_json());
        }
        out
    }
}

/// What a listener saw, before keys are decoded for a map's key type.
enum Raw {
    /// Key texts another instance changed.
    Keys(Vec<String>),
    /// Anything may have changed.
    Resync,
}

/// Announcements waiting for the map, shared by a listener task (which
/// pushes) and the [`Feed`] (which reads).
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
/// Only a [`Feed`] creates inboxes, and hands each to [`Listen::start`].
pub struct Inbox {
    state: Mutex<InboxState>,
    /// What the listener follows, for log messages.
    channel: String,
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
    fn new(channel: String) -> Self {
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

    /// Reconnects a listener that lost its connection: waits, calls
    /// `connect`, and repeats with a growing delay (100 ms doubling up to
    /// 5 s) until it succeeds. Then pushes a resync (what was announced
    /// while disconnected is lost) and returns the new connection. `None`
    /// as soon as the map stops following.
    pub async fn reconnect<T, E, F, Fut>(&self, mut connect: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        let channel = &self.channel;
        let mut delay = FIRST_RETRY;
        let connection = loop {
            self.until_closed(tokio::time::sleep(delay)).await?;
            match connect().await {
                Ok(connection) => break connection,
                Err(err) => {
                    tracing::debug!(%channel, error = %err, "change feed still cannot reconnect");
                    delay = (delay * 2).min(LAST_RETRY);
                }
            }
        };
        tracing::info!(%channel, "change feed reconnected; the map reloads");
        self.push_resync();
        Some(connection)
    }

    /// Waits for announcements and takes them all, merged.
    async fn next(&self) -> Raw {
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
struct Reader(Arc<Inbox>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The driver-specific part of a change feed: starting a listener task.
///
/// ```
/// use std::sync::Arc;
///
/// use persistent_map_core::feed::{Announcement, Feed, Inbox, Listen};
/// use persistent_map_core::{async_trait, PersistentError, RemoteChange};
/// use tokio::sync::broadcast;
///
/// /// Follows a broadcast channel standing in for a server's pub/sub.
/// struct Bus {
///     tx: broadcast::Sender<String>,
///     instance: String,
/// }
///
/// #[async_trait]
/// impl Listen for Bus {
///     type Error = PersistentError;
///
///     fn channel(&self) -> &str {
///         "bus"
///     }
///
///     async fn start(&self, inbox: Arc<Inbox>) -> Result<(), PersistentError> {
///         // Subscribe before returning: nothing published later is missed.
///         let mut rx = self.tx.subscribe();
///         let instance = self.instance.clone();
///         tokio::spawn(async move {
///             while let Some(Ok(payload)) = inbox.until_closed(rx.recv()).await {
///                 inbox.receive(payload.as_bytes(), &instance);
///             }
///         });
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), PersistentError> {
/// let (tx, _) = broadcast::channel(16);
/// let feed = Feed::new(Bus { tx: tx.clone(), instance: "me".into() });
/// let mut changes = feed.take::<String>().await?; // in watch
///
/// tx.send(Announcement::changed("me", vec!["mine".into()]).to_json()).ok();
/// tx.send(Announcement::changed("other", vec!["k".into()]).to_json()).ok();
/// use futures::StreamExt;
/// assert_eq!(changes.next().await, Some(RemoteChange::Changed(vec!["k".to_string()])));
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Listen: Send + Sync + 'static {
    /// What starting a listener can fail with (the backend maps it to a
    /// [`PersistentError`](crate::PersistentError) naming what it was doing).
    type Error: Send;

    /// What the listener follows (a channel name), for log messages.
    fn channel(&self) -> &str;

    /// Connects and spawns a listener task that pushes what other instances
    /// announce into `inbox` (usually with [`Inbox::receive`]), until the
    /// inbox [closes](Inbox::closed).
    ///
    /// It must be subscribed when it returns, so that nothing announced
    /// afterwards is missed; after losing its connection the task
    /// reconnects and pushes a resync ([`Inbox::reconnect`] does both).
    ///
    /// # Errors
    ///
    /// When the first connection fails; the inbox is then closed.
    async fn start(&self, inbox: Arc<Inbox>) -> Result<(), Self::Error>;

    /// The key text ([`key_format`](Self::key_format) decodes it) of an
    /// announced key, as the store holds it; `None` when it is damaged, which makes the map
    /// reload. The default returns it unchanged; a backend that escapes
    /// keys in its store undoes that here.
    fn key_text<'a>(&self, announced: &'a str) -> Option<Cow<'a, str>> {
        Some(Cow::Borrowed(announced))
    }

    /// The format the store holds its keys in, which decodes the texts of
    /// announced keys. The default is [`KeyFormat::Legacy`], the format of
    /// stores that do not record one; a backend whose store records its
    /// format returns that.
    fn key_format(&self) -> KeyFormat {
        KeyFormat::Legacy
    }
}

enum State {
    /// No map follows.
    Idle,
    /// A map follows the feed.
    Taken(Arc<Inbox>),
}

/// The change feed of one backend instance: the listener's life cycle and
/// the hand-over to the map. See the [module documentation](self) and the
/// example on [`Listen`].
///
/// At most one listener runs per map: the one started by [`take`] stops
/// when the map that took it stops following.
///
/// [`take`]: Self::take
pub struct Feed<L> {
    listen: Arc<L>,
    state: Mutex<State>,
}

impl<L: Listen> Feed<L> {
    /// A feed that starts its listeners with `listen`; nothing starts yet.
    pub fn new(listen: L) -> Self {
        Self {
            listen: Arc::new(listen),
            state: Mutex::new(State::Idle),
        }
    }

    /// The listener starter.
    pub fn listener(&self) -> &L {
        &self.listen
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a listener and hands it to a map: the changes other instances
    /// announce, keys decoded in [`Listen::key_format`] (after
    /// [`Listen::key_text`]); a key that does not decode as a `K` turns the
    /// batch into a resync.
    ///
    /// The map calls [`watch`](crate::StorageBackend::watch), and so this,
    /// before it loads the store: the listener is subscribed when this
    /// returns, so the load that follows plus the announcements cover every
    /// change, and no initial resync (a second full load) is needed. A
    /// previous map's listener stops when that map drops its receiver.
    ///
    /// # Errors
    ///
    /// When the listener cannot start ([`Listen::start`]).
    pub async fn take<K>(&self) -> Result<RemoteChanges<K>, L::Error>
    where
        K: DeserializeOwned + Send + 'static,
    {
        let reader = self.start().await?;
        *self.state() = State::Taken(Arc::clone(&reader.0));
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(forward(reader, Arc::clone(&self.listen), tx));
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|change| (change, rx))
        })))
    }

    /// A write failed in a way that may have committed it anyway (the
    /// connection broke before the outcome arrived): the map following this
    /// feed reloads, so its cache matches the store whatever happened.
    /// Does nothing when no map follows.
    pub fn resync_after_doubt(&self) {
        if let State::Taken(inbox) = &*self.state() {
            tracing::debug!(channel = %self.listen.channel(), "write outcome unknown; asking the map to reload");
            inbox.push_resync();
        }
    }

    async fn start(&self) -> Result<Reader, L::Error> {
        // Created first, so a failed start closes the inbox.
        let reader = Reader(Arc::new(Inbox::new(self.listen.channel().to_owned())));
        self.listen.start(Arc::clone(&reader.0)).await?;
        Ok(reader)
    }
}

impl<L: Listen> fmt::Debug for Feed<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.state() {
            State::Idle => "idle",
            State::Taken(_) => "taken",
        };
        f.debug_struct("Feed")
            .field("channel", &self.listen.channel())
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// Decodes announcements for the map's key type and hands them over, until
/// the map stops following.
async fn forward<K, L>(reader: Reader, listen: Arc<L>, tx: mpsc::Sender<RemoteChange<K>>)
where
    K: DeserializeOwned + Send + 'static,
    L: Listen,
{
    loop {
        let raw = tokio::select! {
            () = tx.closed() => return,
            raw = reader.0.next() => raw,
        };
        let change = match raw {
            Raw::Resync => RemoteChange::Resync,
            Raw::Keys(announced) => match decode_keys(&*listen, &announced) {
                Some(keys) => RemoteChange::Changed(keys),
                None => RemoteChange::Resync,
            },
        };
        if tx.send(change).await.is_err() {
            return;
        }
    }
}

/// Decodes announced key texts; `None` (so the map reloads) when one does
/// not decode, which a store shared by maps of different key types can cause.
fn decode_keys<K: DeserializeOwned, L: Listen>(listen: &L, announced: &[String]) -> Option<Vec<K>> {
    announced
        .iter()
        .map(|s| {
            let text = listen.key_text(s)?;
            listen.key_format().decode(&text).ok()
        })
        .collect::<Option<Vec<K>>>()
        .or_else(|| {
            tracing::warn!("an announced key does not decode as this map's key type; reloading");
            None
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> Inbox {
        Inbox::new("test".to_owned())
    }

    fn keys(raw: Raw) -> Option<Vec<String>> {
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

    #[tokio::test]
    async fn reconnecting_retries_then_asks_for_a_resync() {
        let inbox = inbox();
        let mut attempts = 0;
        let connected = inbox
            .reconnect(|| {
                attempts += 1;
                let attempt = attempts;
                async move {
                    if attempt < 2 {
                        Err("refused")
                    } else {
                        Ok(attempt)
                    }
                }
            })
            .await;
        assert_eq!(connected, Some(2));
        assert!(keys(inbox.next().await).is_none());
    }

    #[test]
    fn announcements_round_trip() {
        for sent in [
            Announcement::changed("me", vec!["a".into(), "\u{0}b".into(), "\"c\"".into()]),
            Announcement::resync("me"),
            Announcement::changed("me", Vec::new()),
        ] {
            let json = sent.to_json();
            assert_eq!(Announcement::parse(json.as_bytes()), Some(sent), "{json}");
        }
        assert_eq!(
            Announcement::parse(br#"{"from":"sql","resync":true}"#),
            Some(Announcement::resync("sql"))
        );
        assert_eq!(Announcement::parse(br#"{"resync":true}"#), None);
    }

    #[test]
    fn chunks_stay_under_the_limit_and_carry_every_key() {
        const LIMIT: usize = 7900;
        let keys: Vec<String> = (0..2000).map(|i| format!("key-{i:05}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let sent = Announcement::chunked("me", &refs, LIMIT, 16);
        assert!(sent.len() > 1);
        let mut seen = Vec::new();
        for p in &sent {
            assert!(p.len() <= LIMIT, "{}", p.len());
            let m = Announcement::parse(p.as_bytes()).expect("parses");
            assert_eq!(m.from, "me");
            assert!(!m.resync);
            seen.extend(m.keys);
        }
        assert_eq!(seen, keys);
        assert!(Announcement::chunked("me", &[], LIMIT, 16).is_empty());
    }

    #[test]
    fn chunks_respect_the_limits_at_their_edges() {
        let one = Announcement::changed("me", vec!["abc".into()]).to_json();
        let two = Announcement::changed("me", vec!["abc".into(), "def".into()]).to_json();
        let resync = Announcement::resync("me").to_json();
        // The size is counted with one spare byte per payload.
        assert_eq!(
            Announcement::chunked("me", &["abc", "def"], two.len() + 1, 16),
            vec![two.clone()]
        );
        let split = Announcement::chunked("me", &["abc", "def"], two.len(), 16);
        assert_eq!(
            split,
            [
                one.clone(),
                Announcement::changed("me", vec!["def".into()]).to_json()
            ]
        );
        assert_eq!(
            Announcement::chunked("me", &["abc", "def"], two.len(), 1),
            vec![resync.clone()]
        );
        assert_eq!(
            Announcement::chunked("me", &["abc"], one.len() + 1, 1),
            vec![one.clone()]
        );
        assert_eq!(
            Announcement::chunked("me", &["abc"], one.len() - 1, 16),
            [resync]
        );
    }

    #[test]
    fn too_many_or_too_large_keys_become_a_resync() {
        const LIMIT: usize = 7900;
        let resync = Announcement::resync("me").to_json();
        let huge = "x".repeat(LIMIT);
        assert_eq!(
            Announcement::chunked("me", &["a", &huge], LIMIT, 16),
            vec![resync.clone()]
        );

        let keys: Vec<String> = (0..100_000).map(|i| format!("key-{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(Announcement::chunked("me", &refs, LIMIT, 16), [resync]);
    }
}
