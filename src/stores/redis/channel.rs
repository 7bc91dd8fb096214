//! `RedisInvalidationChannel`: PUBLISH on a reconnecting connection,
//! SUBSCRIBE on a dedicated one whose stream ends when it is lost.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{select, Either};
use futures_util::{Stream, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use tokio::sync::OnceCell;

use crate::error::StoreError;
use crate::invalidation::{InvalidationChannel, InvalidationStream};

/// The channel name when none is set.
pub const DEFAULT_CHANNEL_NAME: &str = "tsg:invalidation";

/// How often an idle subscription pings the server when not set otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// The least time a heartbeat ping is given to be answered.
const MIN_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening a subscription (connect + `SUBSCRIBE`) may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// An [`InvalidationChannel`] over Redis pub/sub.
///
/// Publishing sends `PUBLISH` on a [`ConnectionManager`] (made on first use,
/// reconnecting by itself). Each subscription is a dedicated connection
/// `SUBSCRIBE`d to the channel; its stream **ends when that connection is
/// lost** (closed by the server, `CLIENT KILL`, a network failure, or a
/// [heartbeat](Self::heartbeat) `PING` left unanswered), and the crate then
/// subscribes again with backoff and drops its caches, since messages sent
/// meanwhile are lost. The client library does not re-subscribe behind the
/// crate's back: a dedicated pub/sub connection is never reconnected by it.
///
/// Redis pub/sub is fire and forget: an instance that is not subscribed
/// when a message is published never sees it, which is why a reconnection
/// drops the caches. Every instance must use the same
/// [channel name](Self::channel_name) (and Redis database does not matter:
/// pub/sub channels are server-wide). Clones share the publishing
/// connection.
#[derive(Clone)]
pub struct RedisInvalidationChannel {
    client: redis::Client,
    publisher: Arc<OnceCell<ConnectionManager>>,
    name: Arc<str>,
    heartbeat: Option<Duration>,
}

impl fmt::Debug for RedisInvalidationChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisInvalidationChannel")
            .field("server", &self.client.get_connection_info().addr())
            .field("channel_name", &self.name)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl RedisInvalidationChannel {
    /// A channel on the Redis `client` points to, named
    /// [`tsg:invalidation`](DEFAULT_CHANNEL_NAME). Connects on first use.
    pub fn new(client: redis::Client) -> Self {
        Self {
            client,
            publisher: Arc::new(OnceCell::new()),
            name: DEFAULT_CHANNEL_NAME.into(),
            heartbeat: Some(DEFAULT_HEARTBEAT),
        }
    }

    /// Connects to the Redis at `url` for publishing now (so a wrong URL or
    /// an unreachable server shows at start-up); subscriptions open their
    /// own connections.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::backend)?;
        let publisher = ConnectionManager::new_with_config(client.clone(), publisher_config())
            .await
            .map_err(StoreError::backend)?;
        Ok(Self {
            publisher: Arc::new(OnceCell::new_with(Some(publisher))),
            ..Self::new(client)
        })
    }

    /// The pub/sub channel to use (default `tsg:invalidation`); the same on
    /// every instance.
    #[must_use]
    pub fn channel_name(mut self, name: impl AsRef<str>) -> Self {
        self.name = name.as_ref().into();
        self
    }

    /// How often a subscription pings the server (default 15 s); a ping not
    /// answered within the same interval (but at least 5 s) ends the
    /// subscription as a lost connection, so a connection cut without a
    /// TCP reset (a vanished host, a NAT that forgot it) is noticed.
    /// `Duration::ZERO` turns the heartbeat off.
    #[must_use]
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = (!interval.is_zero()).then_some(interval);
        self
    }

    /// The client the channel connects with.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The pub/sub channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn publisher(&self) -> Result<ConnectionManager, StoreError> {
        self.publisher
            .get_or_try_init(|| async {
                ConnectionManager::new_lazy_with_config(self.client.clone(), publisher_config())
            })
            .await
            .cloned()
            .map_err(StoreError::backend)
    }

    async fn open(&self) -> Result<(PubSubSink, PubSubStream), StoreError> {
        let (mut sink, messages) = self
            .client
            .get_async_pubsub()
            .await
            .map_err(StoreError::backend)?
            .split();
        sink.subscribe(&*self.name)
            .await
            .map_err(StoreError::backend)?;
        Ok((sink, messages))
    }
}

/// The publishing connection gives up on a down server quickly (a message
/// is not worth waiting for: receivers fall back on their cache TTL) and
/// tries again at the next message.
fn publisher_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

#[async_trait]
impl InvalidationChannel for RedisInvalidationChannel {
    /// Publishes `message`, sending it a second time when the first try
    /// met a connection lost since the last message: the connection
    /// manager reports the old connection's failure once and only then
    /// reconnects, so without the retry the first message after a Redis
    /// restart would be lost. (Receivers only drop cache entries, so a
    /// message that arrives twice does no harm.)
    async fn publish(&self, message: &str) -> Result<(), StoreError> {
        let mut connection = self.publisher().await?;
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&*self.name).arg(message);
        let first = publish.query_async::<i64>(&mut connection).await;
        match first {
            Err(error) if connection_lost(&error) => publish
                .query_async::<i64>(&mut connection)
                .await
                .map(drop)
                .map_err(StoreError::backend),
            other => other.map(drop).map_err(StoreError::backend),
        }
    }

    async fn subscribe(&self) -> Result<InvalidationStream, StoreError> {
        let (sink, messages) = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.open())
            .await
            .map_err(|_| StoreError::timeout())??;
        Ok(received(sink, messages, Arc::clone(&self.name), self.heartbeat).boxed())
    }
}

/// Whether `error` says the connection was lost (rather than the command
/// refused), so sending it again on a new connection may succeed.
fn connection_lost(error: &redis::RedisError) -> bool {
    error.is_connection_dropped() || error.is_io_error() || error.is_connection_refusal()
}

/// What a subscription waits for next.
enum Event {
    Message(Option<redis::Msg>),
    Heartbeat,
}

/// The payloads received on `name`; ends when the connection's driver stops
/// (the connection is lost) or a heartbeat ping goes unanswered.
fn received(
    sink: PubSubSink,
    messages: PubSubStream,
    name: Arc<str>,
    heartbeat: Option<Duration>,
) -> impl Stream<Item = String> + Send + 'static {
    let ticks = heartbeat.map(|interval| {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (ticks, interval.max(MIN_PING_TIMEOUT))
    });
    futures_util::stream::unfold(
        (sink, messages, ticks),
        move |(mut sink, mut messages, mut ticks)| {
            let name = Arc::clone(&name);
            async move {
                loop {
                    let event = match &mut ticks {
                        Some((ticks, _)) => {
                            match select(messages.next(), Box::pin(ticks.tick())).await {
                                Either::Left((message, _)) => Event::Message(message),
                                Either::Right(_) => Event::Heartbeat,
                            }
                        }
                        None => Event::Message(messages.next().await),
                    };
                    match event {
                        Event::Message(None) => return None,
                        Event::Message(Some(message)) => {
                            if message.get_channel_name() != &*name {
                                continue;
                            }
                            match message.get_payload::<String>() {
                                Ok(payload) => return Some((payload, (sink, messages, ticks))),
                                Err(error) => {
                                    tracing::debug!(%error, "ignored a non-text invalidation message");
                                }
                            }
                        }
                        Event::Heartbeat => {
                            let timeout = ticks
                                .as_ref()
                                .map_or(DEFAULT_HEARTBEAT, |(_, patience)| *patience);
                            let pong =
                                tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                tracing::warn!(
                                    "Redis pub/sub connection did not answer its heartbeat"
                                );
                                return None;
                            }
                        }
                    }
                }
            }
        },
    )
}
