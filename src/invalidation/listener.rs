//! The crate's side of a channel: publishing in the background, and the
//! listener task that reconnects and applies what it receives.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
/// The longest wait between two tries of a message that failed to publish.
const MAX_PUBLISH_BACKOFF: Duration = Duration::from_secs(5);
/// Messages tried again at once, at most; past it a failed one is dropped
/// (and logged) at once rather than pile up during a long outage.
const MAX_RETRYING: usize = 1024;

/// A cache that a channel's messages invalidate.
pub(crate) trait InvalidationTarget: Send + Sync + 'static {
    /// Drops what the message names; whether it concerned this cache.
    fn invalidate(&self, invalidation: &Invalidation) -> bool;

    /// Messages may have been lost: drop everything cached before now.
    fn resync(&self);

    /// The subscription just ended: from now on messages may be lost
    /// (until the next `resync`).
    fn disconnected(&self) {}
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
    retry_for: Duration,
    /// Messages being tried again now (at most `MAX_RETRYING`).
    retrying: Arc<AtomicUsize>,
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
    /// `retry_for`: how long a message that fails to publish is tried
    /// again (the cache TTL receivers use while connected: past it they
    /// re-read anyway).
    pub(crate) fn new(
        channel: Arc<dyn InvalidationChannel>,
        publish_timeout: Duration,
        retry_for: Duration,
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
            retry_for,
            retrying: Arc::new(AtomicUsize::new(0)),
            counters,
            _stop: stop,
        };
        Ok((link, pending))
    }

    /// Publishes `invalidation` in the background; never waits. A message
    /// that fails is tried again, backing off from 100 ms to 5 s, for up
    /// to `retry_for`: receivers whose connection is up trust their cache
    /// that long, so a message lost here would otherwise leave them stale
    /// for all of it. (A receiver whose connection is down uses the short
    /// TTL and drops its cache when it reconnects.)
    pub(crate) fn publish(&self, invalidation: &Invalidation) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no Tokio runtime: invalidation not published");
            return;
        };
        for message in invalidation.encode(self.instance) {
            let channel = Arc::clone(&self.channel);
            let timeout = self.publish_timeout;
            let retry_for = self.retry_for;
            let retrying = Arc::clone(&self.retrying);
            runtime.spawn(async move {
                let started = tokio::time::Instant::now();
                let mut backoff = FIRST_BACKOFF;
                let mut counted = false;
                let error = loop {
                    let sent = crate::error::with_timeout(timeout, channel.publish(&message)).await;
                    let Err(error) = sent else {
                        break None;
                    };
                    if started.elapsed() + backoff > retry_for {
                        break Some(error);
                    }
                    if !counted {
                        if retrying.fetch_add(1, Ordering::AcqRel) >= MAX_RETRYING {
                            retrying.fetch_sub(1, Ordering::AcqRel);
                            break Some(error);
                        }
                        counted = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_PUBLISH_BACKOFF);
                };
                if counted {
                    retrying.fetch_sub(1, Ordering::AcqRel);
                }
                if let Some(error) = error {
                    tracing::warn!(
                        %error,
                        "invalidation not published; other instances see the change within their cache TTL"
                    );
                }
            });
        }
    }

    /// Whether the listener's subscription is open now.
    #[inline]
    pub(crate) fn connected(&self) -> bool {
        self.counters.connected.load(Ordering::Acquire)
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
                // Said before the flag falls: a lookup that sees it down
                // also sees when it went down.
                if let Some(target) = target.upgrade() {
                    target.disconnected();
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
