//! The `LISTEN/NOTIFY` invalidation channel.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use crate::error::StoreError;
use crate::invalidation::{InvalidationChannel, InvalidationStream};

/// The channel name unless [`channel_name`](PostgresInvalidationChannel::channel_name) sets another.
const DEFAULT_CHANNEL: &str = "tower_saas_guard_invalidation";
/// The listening connection's `application_name` unless
/// [`listener_application_name`](PostgresInvalidationChannel::listener_application_name)
/// sets another.
const DEFAULT_APPLICATION_NAME: &str = "tower_saas_guard_listener";
/// How often an idle listening connection is checked, unless
/// [`heartbeat`](PostgresInvalidationChannel::heartbeat) sets another.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// The longest a heartbeat query may take (never longer than the interval)
/// before the connection counts as lost.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// PostgreSQL's longest identifier (`NAMEDATALEN - 1`), which a channel
/// name is.
const MAX_CHANNEL_NAME_BYTES: usize = 63;

/// An invalidation channel over PostgreSQL `LISTEN/NOTIFY`.
///
/// * [`publish`](InvalidationChannel::publish) runs
///   `SELECT pg_notify(channel, message)` on the pool; every session
///   listening on the channel receives it once the statement commits.
/// * [`subscribe`](InvalidationChannel::subscribe) opens a dedicated
///   connection (a pool of one, from the pool's connect options, with
///   `application_name` set to
///   [`listener_application_name`](Self::listener_application_name)), runs
///   `LISTEN`, and yields the payloads received. The stream **ends when
///   that connection is lost** (a server restart, a network cut, a
///   `pg_terminate_backend`): notifications sent while no connection
///   listens are lost, so the crate re-subscribes with backoff and drops
///   what it cached before the gap. It never reconnects silently. A
///   connection that dies without a word (a cut network, no TCP reset) is
///   found by a heartbeat: after [`heartbeat`](Self::heartbeat) (15 s) of
///   silence the listener runs `SELECT 1`, and a query that fails or takes
///   longer than the interval (at most 5 s) ends the stream too.
///
/// The listening backend can be found in `pg_stat_activity` by its
/// `application_name` (`tower_saas_guard_listener` by default), for
/// monitoring, or to kill it in a test.
///
/// Cheap to clone; clones share the pool. Every instance of an application
/// must use the same [`channel_name`](Self::channel_name) on the same
/// database. `NOTIFY` payloads are under 8000 bytes; the crate's messages
/// are at most [`MAX_MESSAGE_BYTES`](crate::invalidation::MAX_MESSAGE_BYTES).
#[derive(Debug, Clone)]
pub struct PostgresInvalidationChannel {
    pool: PgPool,
    channel: Arc<str>,
    application_name: Arc<str>,
    heartbeat: Duration,
}

/// A channel name PostgreSQL cannot take: empty, longer than 63 bytes, or
/// holding a NUL character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LISTEN/NOTIFY channel name {0:?}: use 1 to 63 bytes without NUL")]
pub struct InvalidChannelName(pub String);

impl PostgresInvalidationChannel {
    /// A channel publishing through `pool`, on the channel
    /// `tower_saas_guard_invalidation`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            channel: Arc::from(DEFAULT_CHANNEL),
            application_name: Arc::from(DEFAULT_APPLICATION_NAME),
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }

    /// Connects a pool to `url` (sqlx's defaults) for a channel.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::new(
            PgPool::connect(url).await.map_err(StoreError::backend)?,
        ))
    }

    /// Uses the `LISTEN/NOTIFY` channel `name` (case-sensitive, 1 to 63
    /// bytes; a name PostgreSQL cannot take makes publishing and
    /// subscribing fail with [`InvalidChannelName`]). Separate
    /// applications on one database use separate names.
    #[must_use]
    pub fn channel_name(self, name: impl Into<String>) -> Self {
        Self {
            channel: Arc::from(name.into()),
            ..self
        }
    }

    /// Sets the `application_name` of the listening connection (shown in
    /// `pg_stat_activity`; default `tower_saas_guard_listener`).
    #[must_use]
    pub fn listener_application_name(self, name: impl Into<String>) -> Self {
        Self {
            application_name: Arc::from(name.into()),
            ..self
        }
    }

    /// After how long without a notification the listening connection is
    /// checked with `SELECT 1` (default 15 s; at least 100 ms).
    #[must_use]
    pub fn heartbeat(self, interval: Duration) -> Self {
        Self {
            heartbeat: interval.max(Duration::from_millis(100)),
            ..self
        }
    }

    /// The pool the channel publishes through.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn checked_channel(&self) -> Result<&str, StoreError> {
        let name = &*self.channel;
        if name.is_empty() || name.len() > MAX_CHANNEL_NAME_BYTES || name.contains('\0') {
            return Err(StoreError::backend(InvalidChannelName(name.to_owned())));
        }
        Ok(name)
    }
}

#[async_trait]
impl InvalidationChannel for PostgresInvalidationChannel {
    async fn publish(&self, message: &str) -> Result<(), StoreError> {
        let channel = self.checked_channel()?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(message)
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }

    async fn subscribe(&self) -> Result<InvalidationStream, StoreError> {
        let channel = self.checked_channel()?;
        // A connection of its own: its application_name makes it findable,
        // and it never goes back to the application's pool with a LISTEN on.
        let options = (*self.pool.connect_options())
            .clone()
            .application_name(&self.application_name);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .connect_with(options)
            .await
            .map_err(StoreError::backend)?;
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(StoreError::backend)?;
        // On a lost connection, `try_recv` returns `Ok(None)` without
        // connecting again: the stream ends and the crate re-subscribes.
        listener.eager_reconnect(false);
        listener
            .listen(channel)
            .await
            .map_err(StoreError::backend)?;
        let heartbeat = self.heartbeat;
        let ping_timeout = heartbeat.min(HEARTBEAT_TIMEOUT);
        let stream = futures_util::stream::unfold(
            (listener, pool),
            move |(mut listener, pool)| async move {
                loop {
                    // `try_recv` is cancel safe: a notification is either
                    // returned or stays buffered for the next call.
                    let received = {
                        let next = Box::pin(listener.try_recv());
                        let quiet = Box::pin(tokio::time::sleep(heartbeat));
                        match select(next, quiet).await {
                            Either::Left((received, _)) => Some(received),
                            Either::Right(_) => None,
                        }
                    };
                    match received {
                        Some(Ok(Some(notification))) => {
                            let payload = notification.payload().to_owned();
                            return Some((payload, (listener, pool)));
                        }
                        Some(Ok(None)) => {
                            tracing::warn!("PostgreSQL LISTEN connection lost");
                            return None;
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "PostgreSQL LISTEN connection failed");
                            return None;
                        }
                        None => {
                            let ping = sqlx::query("SELECT 1").execute(&mut listener);
                            match tokio::time::timeout(ping_timeout, ping).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(error)) => {
                                    tracing::warn!(%error, "PostgreSQL LISTEN heartbeat failed");
                                    return None;
                                }
                                Err(_) => {
                                    tracing::warn!("PostgreSQL LISTEN heartbeat timed out");
                                    return None;
                                }
                            }
                        }
                    }
                }
            },
        );
        // Fused: once ended, it stays ended, however often it is polled.
        Ok(stream.fuse().boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lazy_pool() -> PgPool {
        PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a valid URL")
    }

    #[tokio::test]
    async fn a_channel_name_postgres_cannot_take_is_refused_before_any_io() {
        for name in ["", &"x".repeat(64), "a\0b"] {
            let channel = PostgresInvalidationChannel::new(lazy_pool()).channel_name(name);
            let error = channel.publish("m").await.unwrap_err();
            let source = std::error::Error::source(&error)
                .and_then(|source| source.downcast_ref::<InvalidChannelName>());
            assert_eq!(source, Some(&InvalidChannelName(name.to_owned())));
            assert!(channel.subscribe().await.is_err());
        }
        let longest = "y".repeat(63);
        let channel = PostgresInvalidationChannel::new(lazy_pool()).channel_name(longest.as_str());
        assert_eq!(
            channel
                .checked_channel()
                .expect("63 bytes is a valid channel name"),
            longest
        );
    }
}
