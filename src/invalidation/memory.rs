//! An in-process channel: for tests, and for several layers in one process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};

use super::{InvalidationChannel, InvalidationStream};
use crate::error::StoreError;

/// An invalidation channel inside one process (a Tokio broadcast).
///
/// For tests of code that uses a channel: [`disconnect`](Self::disconnect)
/// ends every open subscription as a lost connection would, and
/// [`set_down`](Self::set_down) makes publishing and subscribing fail, as
/// an unreachable server would. Clones share the channel.
#[derive(Debug, Clone)]
pub struct MemoryInvalidationChannel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    messages: broadcast::Sender<String>,
    /// Moved by `disconnect`: open subscriptions end.
    cuts: watch::Sender<u64>,
    down: AtomicBool,
}

/// The error of a [`MemoryInvalidationChannel`] that was set down.
#[derive(Debug, thiserror::Error)]
#[error("the in-memory invalidation channel is down (set_down)")]
pub struct ChannelDown;

impl Default for MemoryInvalidationChannel {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryInvalidationChannel {
    /// A channel with no subscribers yet.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                messages: broadcast::channel(1024).0,
                cuts: watch::channel(0).0,
                down: AtomicBool::new(false),
            }),
        }
    }

    /// Ends every open subscription, as a lost connection would.
    pub fn disconnect(&self) {
        self.inner.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// While `down`, publishing and subscribing fail (and `true` also ends
    /// the open subscriptions).
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
        if down {
            self.disconnect();
        }
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.inner.down.load(Ordering::SeqCst) {
            Err(StoreError::backend(ChannelDown))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl InvalidationChannel for MemoryInvalidationChannel {
    async fn publish(&self, message: &str) -> Result<(), StoreError> {
        self.check_up()?;
        // No subscriber is not an error: nobody has anything to drop.
        let _ = self.inner.messages.send(message.to_owned());
        Ok(())
    }

    async fn subscribe(&self) -> Result<InvalidationStream, StoreError> {
        self.check_up()?;
        let messages = self.inner.messages.subscribe();
        let mut cuts = self.inner.cuts.subscribe();
        cuts.mark_unchanged();
        let stream =
            futures_util::stream::unfold((messages, cuts), |(mut messages, mut cuts)| async move {
                let received = {
                    let next = Box::pin(messages.recv());
                    let cut = Box::pin(cuts.changed());
                    match select(next, cut).await {
                        Either::Left((received, _)) => received.ok(),
                        Either::Right(_) => None,
                    }
                };
                // A lagging receiver lost messages: end like a lost connection.
                received.map(|message| (message, (messages, cuts)))
            });
        Ok(stream.boxed())
    }
}
