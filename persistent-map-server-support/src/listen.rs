//! [`Listen`]: the driver-specific part of a change feed, starting a
//! listener task.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;

use crate::inbox::Inbox;

/// The driver-specific part of a change feed: starting a listener task.
///
/// ```
/// use std::sync::Arc;
///
/// use persistent_map_core::codec::key_from_text;
/// use persistent_map_core::{async_trait, PersistentError, RemoteChange};
/// use persistent_map_server_support::{Announcement, Feed, Inbox, Listen};
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
/// // In `StorageBackend::watch`, with the store's own key decoding:
/// let mut changes = feed.take(key_from_text::<String>).await?;
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
    /// [`PersistentError`](persistent_map_core::PersistentError) naming what
    /// it was doing).
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

    /// The key text (which the key decoder given to
    /// [`Feed::take`](crate::Feed::take) decodes) of an announced key, as the
    /// store holds it; `None` when it is damaged, which makes the map
    /// reload. The default returns it unchanged; a backend that escapes
    /// keys in its store undoes that here.
    fn key_text<'a>(&self, announced: &'a str) -> Option<Cow<'a, str>> {
        Some(Cow::Borrowed(announced))
    }
}
