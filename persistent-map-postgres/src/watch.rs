//! The change feed: a dedicated `LISTEN` connection that follows what other
//! instances announce with `pg_notify`, and hands it to the map.
//!
//! The listener keeps reading whatever happens downstream (an idle listener
//! would hold back PostgreSQL's notification queue for every writer);
//! announcements pile up in an [`Inbox`] that collapses into a single
//! "reload everything" when it grows too large, and the map drains it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_map_core::codec::key_from_text;
use persistent_map_core::{RemoteChange, RemoteChanges};
use serde::de::DeserializeOwned;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{mpsc, Notify};

use crate::notify;
use crate::stored::load_key;

/// Keys buffered before the inbox gives up on them and asks for a reload.
const INBOX_KEYS: usize = 16 * 1024;

/// Bounds of the wait between reconnection attempts.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// What the listener saw, before keys are decoded for a map's key type.
enum Raw {
    /// Stored key texts another instance changed.
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
    /// A listener started before the map loaded (so nothing announced
    /// between the load and the feed is missed), waiting for `watch`.
    Pending(Reader),
    /// A map follows the feed.
    Taken(Arc<Inbox>),
}

/// The change feed of one backend instance.
pub(crate) struct Feed {
    /// A pool of one connection, outside the backend's pool, for `LISTEN`.
    pool: PgPool,
    channel: String,
    instance: String,
    state: Mutex<State>,
}

impl Feed {
    pub(crate) fn new(pool: PgPool, channel: String, instance: String) -> Self {
        Self {
            pool,
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
    pub(crate) async fn prepare(&self) -> std::result::Result<(), sqlx::Error> {
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
    pub(crate) async fn take<K>(&self) -> std::result::Result<RemoteChanges<K>, sqlx::Error>
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

    async fn start(&self) -> std::result::Result<Reader, sqlx::Error> {
        let listener = listen(&self.pool, &self.channel).await?;
        let inbox = Arc::new(Inbox::default());
        tokio::spawn(run(
            listener,
            Arc::clone(&inbox),
            self.pool.clone(),
            self.channel.clone(),
            self.instance.clone(),
        ));
        Ok(Reader(inbox))
    }
}

async fn listen(pool: &PgPool, channel: &str) -> std::result::Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    // Reconnection is done here, so a resync is sent once LISTEN is back.
    listener.eager_reconnect(false);
    listener.listen(channel).await?;
    Ok(listener)
}

/// The listener task: reads notifications until the reader is gone,
/// reconnecting with a growing delay when the connection is lost, and asks
/// for a resync after every reconnection (notifications sent meanwhile are lost).
async fn run(
    mut listener: PgListener,
    inbox: Arc<Inbox>,
    pool: PgPool,
    channel: String,
    instance: String,
) {
    loop {
        loop {
            if inbox.is_closed() {
                return;
            }
            let received = tokio::select! {
                () = inbox.gone.notified() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => {
                    let Some(message) = notify::parse(notification.payload()) else {
                        tracing::warn!(%channel, "ignoring a notification this release does not understand");
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
                Ok(None) => {
                    tracing::info!(%channel, "change feed connection lost; reconnecting");
                    break;
                }
                Err(err) => {
                    tracing::info!(%channel, error = %err, "change feed failed; reconnecting");
                    break;
                }
            }
        }
        drop(listener);
        let mut delay = FIRST_RETRY;
        listener = loop {
            tokio::select! {
                () = inbox.gone.notified() => return,
                () = tokio::time::sleep(delay) => {}
            }
            match listen(&pool, &channel).await {
                Ok(listener) => break listener,
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

/// Decodes stored key texts; `None` (so the map reloads) when one does not
/// decode, which a table shared by maps of different key types can cause.
fn decode_keys<K: DeserializeOwned>(stored: &[String]) -> Option<Vec<K>> {
    stored
        .iter()
        .map(|s| {
            let text = load_key(s)?;
            key_from_text(&text).ok()
        })
        .collect::<Option<Vec<K>>>()
        .or_else(|| {
            tracing::warn!("an announced key does not decode as this map's key type; reloading");
            None
        })
}
