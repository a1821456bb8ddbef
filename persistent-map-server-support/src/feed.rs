//! [`Feed`]: a change feed's life cycle (one listener per map) and the
//! hand-over of decoded announcements to the map as a stream.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use persistent_map_core::{RemoteChange, RemoteChanges};
use tokio::sync::mpsc;

use crate::inbox::{Inbox, Raw, Reader};
use crate::listen::Listen;

/// Room in the channel between a feed and its map.
const CHANNEL_CAPACITY: usize = 64;

enum State {
    /// No map follows.
    Idle,
    /// A map took the feed (and may since have stopped following it).
    Taken(Arc<Inbox>),
}

/// The change feed of one backend instance: the listener's life cycle and
/// the hand-over to the map. See the [crate documentation](crate) and the
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
    /// announce, each key's text (after [`Listen::key_text`]) decoded with
    /// `decode`, the backend's own key decoding (for example
    /// [`key_from_text`](persistent_map_core::codec::key_from_text)); a key
    /// that does not decode turns the batch into a resync.
    ///
    /// The map calls [`watch`](persistent_map_core::StorageBackend::watch),
    /// and so this, before it loads the store: the listener is subscribed
    /// when this returns, so the load that follows plus the announcements
    /// cover every change, and no initial resync (a second full load) is
    /// needed. A previous map's listener stops when that map drops its
    /// stream.
    ///
    /// # Errors
    ///
    /// When the listener cannot start ([`Listen::start`]).
    pub async fn take<K, D, E>(&self, decode: D) -> Result<RemoteChanges<K>, L::Error>
    where
        K: Send + 'static,
        D: Fn(&str) -> Result<K, E> + Send + Sync + 'static,
        E: fmt::Display + 'static,
    {
        let reader = self.start().await?;
        *self.state() = State::Taken(Arc::clone(&reader.0));
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(forward(reader, Arc::clone(&self.listen), decode, tx));
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|change| (change, rx))
        })))
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
            State::Taken(inbox) if inbox.is_closed() => "stopped",
            State::Taken(_) => "following",
        };
        f.debug_struct("Feed")
            .field("channel", &self.listen.channel())
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// Decodes announcements for the map's key type and hands them over, until
/// the map stops following.
async fn forward<K, L, D, E>(
    reader: Reader,
    listen: Arc<L>,
    decode: D,
    tx: mpsc::Sender<RemoteChange<K>>,
) where
    K: Send + 'static,
    L: Listen,
    D: Fn(&str) -> Result<K, E>,
    E: fmt::Display,
{
    loop {
        let raw = tokio::select! {
            () = tx.closed() => return,
            raw = reader.0.next() => raw,
        };
        let change = match raw {
            Raw::Resync => RemoteChange::Resync,
            Raw::Keys(announced) => match decode_keys(&*listen, &decode, &announced) {
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
fn decode_keys<K, L, D, E>(listen: &L, decode: &D, announced: &[String]) -> Option<Vec<K>>
where
    L: Listen,
    D: Fn(&str) -> Result<K, E>,
    E: fmt::Display,
{
    let mut keys = Vec::with_capacity(announced.len());
    for text in announced {
        let Some(stored) = listen.key_text(text) else {
            tracing::warn!(channel = %listen.channel(), "an announced key's stored form is damaged; reloading");
            return None;
        };
        match decode(&stored) {
            Ok(key) => keys.push(key),
            Err(err) => {
                tracing::warn!(channel = %listen.channel(), error = %err, "an announced key does not decode as this map's key type; reloading");
                return None;
            }
        }
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use async_trait::async_trait;
    use futures::StreamExt;

    use super::*;

    /// Keeps the inbox, so the test pushes announcements by hand; announced
    /// texts starting with `!` are damaged.
    #[derive(Default)]
    struct ByHand(Mutex<Option<Arc<Inbox>>>);

    #[async_trait]
    impl Listen for ByHand {
        type Error = String;

        fn channel(&self) -> &str {
            "by hand"
        }

        async fn start(&self, inbox: Arc<Inbox>) -> Result<(), String> {
            *self.0.lock().expect("not poisoned") = Some(inbox);
            Ok(())
        }

        fn key_text<'a>(&self, announced: &'a str) -> Option<Cow<'a, str>> {
            (!announced.starts_with('!')).then_some(Cow::Borrowed(announced))
        }
    }

    fn inbox(feed: &Feed<ByHand>) -> Arc<Inbox> {
        feed.listener()
            .0
            .lock()
            .expect("not poisoned")
            .clone()
            .expect("started")
    }

    #[tokio::test]
    async fn keys_are_decoded_by_the_backends_decoder() {
        let feed = Feed::new(ByHand::default());
        let decode = |text: &str| text.parse::<u32>();
        let mut changes = feed.take(decode).await.expect("starts");
        let inbox = inbox(&feed);
        assert!(format!("{feed:?}").contains(r#"state: "following""#));

        inbox.push_keys(vec!["1".into(), "2".into()]);
        assert_eq!(
            changes.next().await,
            Some(RemoteChange::Changed(vec![1, 2]))
        );
        // A key of another type, or a damaged stored form: reload.
        inbox.push_keys(vec!["3".into(), "x".into()]);
        assert_eq!(changes.next().await, Some(RemoteChange::Resync));
        inbox.push_keys(vec!["!4".into()]);
        assert_eq!(changes.next().await, Some(RemoteChange::Resync));
        inbox.push_resync();
        assert_eq!(changes.next().await, Some(RemoteChange::Resync));

        drop(changes);
        tokio::time::timeout(std::time::Duration::from_secs(60), inbox.closed())
            .await
            .expect("dropping the stream closes the inbox, which stops the listener");
        assert_eq!(
            format!("{feed:?}"),
            r#"Feed { channel: "by hand", state: "stopped", .. }"#
        );
    }
}
