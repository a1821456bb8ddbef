//! The change feed's listener: a dedicated subscriber connection that
//! follows what other instances publish.
//!
//! The subscriber keeps reading whatever happens downstream (a subscriber
//! that stops reading is eventually disconnected by the server's output
//! buffer limit); the inbox, the hand-over to the map and the message format
//! are [`persistent_map_server_support`]'s.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use persistent_map_core::async_trait;
use persistent_map_core::codec::KeyFormat;
use persistent_map_server_support::{Inbox, Listen};

/// The change feed of one backend instance.
pub(crate) type Feed = persistent_map_server_support::Feed<Subscriber>;

/// Starts subscriber connections on a hash's channel.
pub(crate) struct Subscriber {
    client: redis::Client,
    connect_timeout: Duration,
    channel: String,
    instance: String,
    /// The hash's key format: announced keys are its field texts.
    key_format: KeyFormat,
}

impl Subscriber {
    pub(crate) fn new(
        client: redis::Client,
        connect_timeout: Duration,
        channel: String,
        instance: String,
        key_format: KeyFormat,
    ) -> Self {
        Self {
            client,
            connect_timeout,
            channel,
            instance,
            key_format,
        }
    }

    /// The store's key format, which decodes announced keys.
    pub(crate) fn key_format(&self) -> KeyFormat {
        self.key_format
    }
}

#[async_trait]
impl Listen for Subscriber {
    type Error = redis::RedisError;

    fn channel(&self) -> &str {
        &self.channel
    }

    async fn start(&self, inbox: Arc<Inbox>) -> redis::RedisResult<()> {
        let subscriber = subscribe(&self.client, self.connect_timeout, &self.channel).await?;
        tokio::spawn(run(
            subscriber,
            inbox,
            self.client.clone(),
            self.connect_timeout,
            self.channel.clone(),
            self.instance.clone(),
        ));
        Ok(())
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

/// The subscriber task: reads messages until the map stops following,
/// reconnecting with a growing, jittered delay when the connection is lost, and asks
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
                let Some(received) = inbox.until_closed(messages.next()).await else {
                    return;
                };
                let Some(message) = received else {
                    tracing::info!(%channel, "change feed connection lost; reconnecting");
                    break;
                };
                if !inbox.receive(message.get_payload_bytes(), &instance) {
                    tracing::warn!(%channel, "ignoring a message this release does not understand");
                }
            }
        }
        drop(subscriber);
        match inbox
            .reconnect(|| subscribe(&client, timeout, &channel))
            .await
        {
            Some(reconnected) => subscriber = reconnected,
            None => return,
        }
    }
}
