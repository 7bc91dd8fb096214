//! The crate's side of a channel: publishing in the background, and the
//! listener task that reconnects and applies what it receives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::{Invalidation, InvalidationChannel};
use crate::error::{ConfigError, StoreError};

/// The first wait after a failed subscription; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A connection open this long before it was lost resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// A cache that a channel's messages invalidate.
pub(crate) trait InvalidationTarget: Send + Sync + 'static {
    /// Drops what the message names; whether it concerned this cache.
    fn invalidate(&self, invalidation: &Invalidation) -> bool;

    /// Messages may have been lost: drop everything cached before now.
    fn resync(&self);
}

/// What a channel's listener has done so far, for health checks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStatus {
    /// Whether a subscription is open right now.
    pub connected: bool,
    /// How many subscriptions were opened (1 + the reconnections).
    pub connections: u64,
    /// How many messages from other instances concerned this cache and
    /// were applied.
    pub received: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    connections: AtomicU64,
    received: AtomicU64,
}

/// One cache's link to its channel: publishes for it, and owns its
/// listener task (which stops when the link is dropped).
pub(crate) struct ChannelLink {
    channel: Arc<dyn InvalidationChannel>,
    /// Random per cache: its own messages come back and are skipped.
    instance: u64,
    publish_timeout: Duration,
    counters: Arc<Counters>,
    /// Dropped with the link: the listener task ends.
    _stop: oneshot::Sender<()>,
}

/// A listener ready to start once its cache exists.
pub(crate) struct PendingListener {
    runtime: tokio::runtime::Handle,
    channel: Arc<dyn InvalidationChannel>,
    instance: u64,
    counters: Arc<Counters>,
    stopped: oneshot::Receiver<()>,
}

impl PendingListener {
    /// Starts listening for `target` (whose link this is).
    pub(crate) fn start(self, target: Weak<dyn InvalidationTarget>) {
        self.runtime.spawn(listen(
            self.channel,
            self.instance,
            target,
            self.counters,
            self.stopped,
        ));
    }
}

impl ChannelLink {
    /// A link to `channel`, and its listener to start once the cache it
    /// invalidates is built. Needs a Tokio runtime.
    pub(crate) fn new(
        channel: Arc<dyn InvalidationChannel>,
        publish_timeout: Duration,
    ) -> Result<(Self, PendingListener), ConfigError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let mut instance = [0u8; 8];
        // Any distinct value works; randomness only avoids collisions.
        if getrandom::fill(&mut instance).is_err() {
            instance = (u64::from(std::process::id())
                ^ crate::unix_millis(std::time::SystemTime::now()))
            .to_le_bytes();
        }
        let instance = u64::from_le_bytes(instance);
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel();
        let pending = PendingListener {
            runtime,
            channel: Arc::clone(&channel),
            instance,
            counters: Arc::clone(&counters),
            stopped,
        };
        let link = Self {
            channel,
            instance,
            publish_timeout,
            counters,
            _stop: stop,
        };
        Ok((link, pending))
    }

    /// Publishes `invalidation` in the background; never waits.
    pub(crate) fn publish(&self, invalidation: &Invalidation) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no Tokio runtime: invalidation not published");
            return;
        };
        for message in invalidation.encode(self.instance) {
            let channel = Arc::clone(&self.channel);
            let timeout = self.publish_timeout;
            runtime.spawn(async move {
                let sent = crate::error::with_timeout(timeout, channel.publish(&message)).await;
                if let Err(error) = sent {
                    tracing::warn!(
                        %error,
                        "invalidation not published; other instances see the change within their cache TTL"
                    );
                }
            });
        }
    }

    pub(crate) fn status(&self) -> ChannelStatus {
        ChannelStatus {
            connected: self.counters.connected.load(Ordering::Acquire),
            connections: self.counters.connections.load(Ordering::Acquire),
            received: self.counters.received.load(Ordering::Acquire),
        }
    }
}

/// Subscribes, applies messages, and on a lost connection subscribes again
/// with backoff, dropping the cache after every (re)connection.
async fn listen(
    channel: Arc<dyn InvalidationChannel>,
    instance: u64,
    target: Weak<dyn InvalidationTarget>,
    counters: Arc<Counters>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let subscribed = match select(channel.subscribe(), &mut stopped).await {
            Either::Left((subscribed, _)) => subscribed,
            Either::Right(_) => return,
        };
        match subscribed {
            Ok(mut messages) => {
                let opened = std::time::Instant::now();
                let connections = counters.connections.fetch_add(1, Ordering::AcqRel) + 1;
                counters.connected.store(true, Ordering::Release);
                tracing::info!(
                    connections,
                    "invalidation channel connected; dropping the cache, as anything \
                     published while it was not may have been missed"
                );
                match target.upgrade() {
                    // Whatever was published before this subscription opened
                    // may have been missed.
                    Some(target) => target.resync(),
                    None => return,
                }
                loop {
                    let message = match select(messages.next(), &mut stopped).await {
                        Either::Left((Some(message), _)) => message,
                        Either::Left((None, _)) => break,
                        Either::Right(_) => return,
                    };
                    let Some(target) = target.upgrade() else {
                        return;
                    };
                    match Invalidation::decode(&message) {
                        Some((from, _)) if from == instance => {}
                        Some((_, invalidation)) => {
                            if target.invalidate(&invalidation) {
                                counters.received.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                        None => {
                            tracing::debug!("ignored an invalidation message of another format")
                        }
                    }
                }
                counters.connected.store(false, Ordering::Release);
                // A connection that lived a while starts the backoff over;
                // one that keeps dropping at once is retried ever later
                // (never in a loop that would wipe the cache each time).
                if opened.elapsed() >= STABLE_CONNECTION {
                    backoff = FIRST_BACKOFF;
                }
                tracing::warn!(
                    retry_in_ms = backoff.as_millis() as u64,
                    "invalidation channel lost; reconnecting"
                );
                let sleep = tokio::time::sleep(backoff);
                if let Either::Right(_) = select(Box::pin(sleep), &mut stopped).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(error) => {
                log_failure(&error, backoff);
                let sleep = tokio::time::sleep(backoff);
                if let Either::Right(_) = select(Box::pin(sleep), &mut stopped).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn log_failure(error: &StoreError, backoff: Duration) {
    tracing::warn!(
        %error,
        retry_in_ms = backoff.as_millis() as u64,
        "invalidation channel unavailable; caches rely on their TTL until it is back"
    );
}
