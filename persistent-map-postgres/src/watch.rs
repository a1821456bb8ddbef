//! The change feed's listener: a dedicated `LISTEN` connection that follows
//! what other instances announce with `pg_notify`.
//!
//! The listener keeps reading whatever happens downstream (an idle listener
//! would hold back PostgreSQL's notification queue for every writer); the
//! inbox, the hand-over to the map and the message format are
//! [`persistent_map_server_support`]'s.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use persistent_map_core::async_trait;
use persistent_map_core::codec::KeyFormat;
use persistent_map_server_support::{Inbox, Listen};
use sqlx::postgres::{PgListener, PgPool};

use crate::stored::load_key;

/// The change feed of one backend instance.
pub(crate) type Feed = persistent_map_server_support::Feed<Listener>;

/// Starts `LISTEN` connections on a table's channel.
pub(crate) struct Listener {
    /// A pool of one connection, outside the backend's pool, for `LISTEN`.
    pool: PgPool,
    channel: String,
    instance: String,
    /// The table's key format, set when the backend has read it (before
    /// any map can take the feed).
    key_format: OnceLock<KeyFormat>,
}

impl Listener {
    pub(crate) fn new(pool: PgPool, channel: String, instance: String) -> Self {
        Self {
            pool,
            channel,
            instance,
            key_format: OnceLock::new(),
        }
    }

    /// Records the table's key format, which decodes announced keys.
    pub(crate) fn set_key_format(&self, format: KeyFormat) {
        let _ = self.key_format.set(format);
    }

    /// The store's key format, which decodes announced keys.
    pub(crate) fn key_format(&self) -> KeyFormat {
        // Always set when the backend opens, before `watch` can run.
        self.key_format.get().copied().unwrap_or(KeyFormat::Legacy)
    }
}

#[async_trait]
impl Listen for Listener {
    type Error = sqlx::Error;

    fn channel(&self) -> &str {
        &self.channel
    }

    async fn start(&self, inbox: Arc<Inbox>) -> Result<(), sqlx::Error> {
        let listener = listen(&self.pool, &self.channel).await?;
        tokio::spawn(run(
            listener,
            inbox,
            self.pool.clone(),
            self.channel.clone(),
            self.instance.clone(),
        ));
        Ok(())
    }

    /// Announced keys are stored keys: their escape is undone.
    fn key_text<'a>(&self, announced: &'a str) -> Option<Cow<'a, str>> {
        load_key(announced)
    }
}

async fn listen(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    // Reconnection is done here, so a resync is sent once LISTEN is back.
    listener.eager_reconnect(false);
    listener.listen(channel).await?;
    Ok(listener)
}

/// The listener task: reads notifications until the map stops following,
/// reconnecting with a growing, jittered delay when the connection is lost, and asks
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
            let Some(received) = inbox.until_closed(listener.try_recv()).await else {
                return;
            };
            match received {
                Ok(Some(notification)) => {
                    if !inbox.receive(notification.payload().as_bytes(), &instance) {
                        tracing::warn!(%channel, "ignoring a notification this release does not understand");
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
        match inbox.reconnect(|| listen(&pool, &channel)).await {
            Some(reconnected) => listener = reconnected,
            None => return,
        }
    }
}
