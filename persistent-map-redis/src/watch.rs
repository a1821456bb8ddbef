//! The change feed: a dedicated subscriber connection that follows what
//! other instances publish, and hands it to the map.
//!
//! The subscriber keeps reading whatever happens downstream (a subscriber
//! that stops reading is eventually disconnected by the server's output
//! buffer limit); announcements pile up in an [`Inbox`] that collapses into
//! a single "reload everything" when it grows too large, and the map drains it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use persistent_map_core::codec::key_from_text;
use persistent_map_core::{RemoteChange, RemoteChanges};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, Notify};

use crate::notify;

/// Keys buffered before the inbox gives up on them and asks for a reload.
const INBOX_KEYS: usize = 16 * 1024;

/// Bounds of the wait between reconnection attempts.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// What the listener saw, before keys are decoded for a map's key type.
enum Raw {
    /// Key texts (hash fields) another instance changed.
    Keys(Vec<String>),
    /// Anything may have changed.
    Resync,
}

/// Announcements waiting for the map, shared by the listener task and the
/// reader.
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
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
    fn push(&self, raw: Raw) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
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

    fn is_closed(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed
    }

    /// Waits for announcements and takes them all, merged.
    async fn next(&self) -> Raw {
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if !state.items.is_empty() {
                    state.keys = 0;
                    return merge(std::mem::take(&mut state.items));
                }
            }
            self.ready.notified().await;
        }
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

/// The reading end of an inbox; dropping it stops the listener.
struct Reader(Arc<Inbox>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.0.gone.notify_one();
    }
}

enum State {
    /// No listener yet.
    Idle,
    /// A subscriber started before the map loaded (so nothing announced
    /// between the load and the feed is missed), waiting for `watch`.
    Pending(Reader),
    /// A map follows the feed.
    Taken(Arc<Inbox>),
}

/// The change feed of one backend instance.
pub(crate) struct Feed {
    client: redis::Client,
    connect_timeout: Duration,
    channel: String,
    instance: String,
    state: Mutex<State>,
}

impl Feed {
    pub(crate) fn new(
        client: redis::Client,
        connect_timeout: Duration,
        channel: String,
        instance: String,
    ) -> Self {
        Self {
            client,
            connect_timeout,
            channel,
            instance,
            state: Mutex::new(State::Idle),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts listening before a map loads the table, unless a map already
    /// follows this backend.
    pub(crate) async fn prepare(&self) -> redis::RedisResult<()> {
        if !matches!(*self.state(), State::Idle) {
            return Ok(());
        }
        let reader = self.start().await?;
        let mut state = self.state();
        if matches!(*state, State::Idle) {
            *state = State::Pending(reader);
        }
        Ok(())
    }

    /// Hands the feed to a map. Without a listener started before the map
    /// loaded, a new one starts with a resync, as changes between the load
    /// and now were not followed.
    pub(crate) async fn take<K>(&self) -> redis::RedisResult<RemoteChanges<K>>
    where
        K: DeserializeOwned + Send + 'static,
    {
        let pending = match std::mem::replace(&mut *self.state(), State::Idle) {
            State::Pending(reader) => Some(reader),
            State::Idle | State::Taken(_) => None,
        };
        let reader = match pending {
            Some(reader) => reader,
            None => {
                let reader = self.start().await?;
                reader.0.push(Raw::Resync);
                reader
            }
        };
        *self.state() = State::Taken(Arc::clone(&reader.0));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(forward(reader, tx));
        Ok(rx)
    }

    /// A write failed in a way that may have committed it anyway: the map
    /// reloads, so its cache matches the table whatever happened.
    pub(crate) fn resync_after_doubt(&self) {
        if let State::Taken(inbox) = &*self.state() {
            tracing::debug!(channel = %self.channel, "write outcome unknown; asking the map to reload");
            inbox.push(Raw::Resync);
        }
    }

    async fn start(&self) -> redis::RedisResult<Reader> {
        let subscriber = subscribe(&self.client, self.connect_timeout, &self.channel).await?;
        let inbox = Arc::new(Inbox::default());
        tokio::spawn(run(
            subscriber,
            Arc::clone(&inbox),
            self.client.clone(),
            self.connect_timeout,
            self.channel.clone(),
            self.instance.clone(),
        ));
        Ok(Reader(inbox))
    }
}

/// A dedicated pub/sub connection subscribed to `channel`.
async fn subscribe(
    client: &redis::Client,
    timeout: Duration,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let connect = async {
        let mut subscriber = client.get_async_pubsub().await?;
        subscriber.subscribe(channel).await?;
        Ok(subscriber)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {timeout:?}"),
        ))),
    }
}

/// The subscriber task: reads messages until the reader is gone,
/// reconnecting with a growing delay when the connection is lost, and asks
/// for a resync after every reconnection (messages published meanwhile are lost).
async fn run(
    mut subscriber: redis::aio::PubSub,
    inbox: Arc<Inbox>,
    client: redis::Client,
    timeout: Duration,
    channel: String,
    instance: String,
) {
    loop {
        {
            let mut messages = subscriber.on_message();
            loop {
                if inbox.is_closed() {
                    return;
                }
                let received = tokio::select! {
                    () = inbox.gone.notified() => return,
                    received = messages.next() => received,
                };
                let Some(message) = received else {
                    tracing::info!(%channel, "change feed connection lost; reconnecting");
                    break;
                };
                let Some(message) = notify::parse(message.get_payload_bytes()) else {
                    tracing::warn!(%channel, "ignoring a message this release does not understand");
                    continue;
                };
                if message.from == instance {
                    continue;
                }
                if message.resync {
                    inbox.push(Raw::Resync);
                } else {
                    inbox.push(Raw::Keys(message.keys));
                }
            }
        }
        drop(subscriber);
        let mut delay = FIRST_RETRY;
        subscriber = loop {
            tokio::select! {
                () = inbox.gone.notified() => return,
                () = tokio::time::sleep(delay) => {}
            }
            match subscribe(&client, timeout, &channel).await {
                Ok(subscriber) => break subscriber,
                Err(err) => {
                    tracing::debug!(%channel, error = %err, "change feed still cannot reconnect");
                    delay = (delay * 2).min(LAST_RETRY);
                }
            }
        };
        tracing::info!(%channel, "change feed reconnected; the map reloads");
        inbox.push(Raw::Resync);
    }
}

/// Decodes announcements for the map's key type and hands them over, until
/// the map stops following.
async fn forward<K>(reader: Reader, tx: mpsc::Sender<RemoteChange<K>>)
where
    K: DeserializeOwned + Send + 'static,
{
    loop {
        let raw = tokio::select! {
            () = tx.closed() => return,
            raw = reader.0.next() => raw,
        };
        let change = match raw {
            Raw::Resync => RemoteChange::Resync,
            Raw::Keys(stored) => match decode_keys(&stored) {
                Some(keys) => RemoteChange::Changed(keys),
                None => RemoteChange::Resync,
            },
        };
        if tx.send(change).await.is_err() {
            return;
        }
    }
}

/// Decodes key texts; `None` (so the map reloads) when one does not
/// decode, which a hash shared by maps of different key types can cause.
fn decode_keys<K: DeserializeOwned>(stored: &[String]) -> Option<Vec<K>> {
    stored
        .iter()
        .map(|s| key_from_text(s).ok())
        .collect::<Option<Vec<K>>>()
        .or_else(|| {
            tracing::warn!("an announced key does not decode as this map's key type; reloading");
            None
        })
}
