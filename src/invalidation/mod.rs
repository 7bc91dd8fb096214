//! Invalidation across instances: one process's revocations and
//! subscription changes reach every other process's caches.
//!
//! Each instance keeps its own moka cache. Without a channel, a session
//! revoked (or a subscription changed) by one instance is seen by the
//! others once their cached copy is older than the cache TTL. With an
//! [`InvalidationChannel`] given to the layers' builders
//! ([`SessionRefreshBuilder::invalidation_channel`](crate::session::SessionRefreshBuilder::invalidation_channel),
//! [`EntitlementsBuilder::invalidation_channel`](crate::subscription::EntitlementsBuilder::invalidation_channel)):
//!
//! * revoking one session, a subject's or an organization's sessions, and
//!   applying a subscription change publish a message, after the store
//!   changed;
//! * every instance listening drops what it cached for those keys (from
//!   its moka cache and every thread's hot table) on receipt, typically
//!   within milliseconds;
//! * the listener reconnects with exponential backoff (100 ms doubling up
//!   to 10 s) when the connection is lost; since messages sent meanwhile
//!   are lost, every successful (re)connection drops everything the cache
//!   held before it, so nothing cached before the gap is trusted after it;
//! * while the channel is down, staleness is bounded by the cache TTL, as
//!   without a channel. No request ever waits for the channel: publishing
//!   runs in the background (bounded by the store timeout, failures
//!   logged) and a cache hit costs no network round trip.
//!
//! The crate ships [`MemoryInvalidationChannel`] (one process, for tests)
//! and, behind features, Redis pub/sub and PostgreSQL `LISTEN/NOTIFY`.
//! Another transport (NATS, a message bus) is a small implementation of
//! [`InvalidationChannel`]: publish a text, and hand out a stream of the
//! texts received that ends when the connection is lost.
//!
//! # Example
//!
//! ```
//! use tower_saas_guard::invalidation::MemoryInvalidationChannel;
//! use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two "instances" on one store and one channel.
//! let store = MemorySessionStore::new();
//! let channel = MemoryInvalidationChannel::new();
//! let first = SessionRefreshLayer::builder(store.clone())
//!     .invalidation_channel(channel.clone())
//!     .build()?;
//! let second = SessionRefreshLayer::builder(store)
//!     .invalidation_channel(channel)
//!     .build()?;
//! let created = first.handle().create(None, ()).await?;
//! assert!(second.handle().get(&created.token).await?.is_some()); // cached there now
//! first.handle().revoke(&created.token).await?;
//! // The second drops its copy as soon as the message arrives.
//! for _ in 0..1000 {
//!     if second.handle().get(&created.token).await?.is_none() {
//!         break;
//!     }
//!     tokio::task::yield_now().await;
//! }
//! assert!(second.handle().get(&created.token).await?.is_none());
//! # Ok(())
//! # }
//! ```

mod listener;
mod memory;
mod message;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::error::StoreError;

pub use self::listener::ChannelStatus;
pub(crate) use self::listener::{ChannelLink, InvalidationTarget};
pub use self::memory::{ChannelDown, MemoryInvalidationChannel};
pub(crate) use self::message::Invalidation;

/// The longest message the crate publishes, in bytes (PostgreSQL's `NOTIFY`
/// takes payloads under 8000 bytes).
pub const MAX_MESSAGE_BYTES: usize = 7000;

/// The messages received on a channel, until its connection is lost.
pub type InvalidationStream = BoxStream<'static, String>;

/// A transport that carries invalidations between instances.
///
/// Messages are UTF-8 texts (JSON) of at most [`MAX_MESSAGE_BYTES`] bytes
/// that the crate writes and reads; a channel only moves them. Every instance
/// subscribed receives every message published, its own included (the
/// crate skips its own).
///
/// Implement it for another transport with `#[async_trait::async_trait]`.
/// Cheap to clone implementations (an `Arc` inside) let one channel serve
/// both layers.
#[async_trait]
pub trait InvalidationChannel: Send + Sync + 'static {
    /// Sends `message` to every subscriber. Called in the background; an
    /// error is logged and the message dropped (the receivers' cache TTL
    /// still bounds staleness).
    async fn publish(&self, message: &str) -> Result<(), StoreError>;

    /// Opens a subscription and returns once it is open (a message
    /// published after this returns is delivered): the stream yields each
    /// message received and
    /// **ends when the connection is lost** (messages may have been missed
    /// from then on). The crate then subscribes again, with backoff, and
    /// drops its cached entries once the new subscription is open.
    async fn subscribe(&self) -> Result<InvalidationStream, StoreError>;
}

#[async_trait]
impl<T: InvalidationChannel + ?Sized> InvalidationChannel for std::sync::Arc<T> {
    async fn publish(&self, message: &str) -> Result<(), StoreError> {
        (**self).publish(message).await
    }

    async fn subscribe(&self) -> Result<InvalidationStream, StoreError> {
        (**self).subscribe().await
    }
}

#[async_trait]
impl<T: InvalidationChannel + ?Sized> InvalidationChannel for Box<T> {
    async fn publish(&self, message: &str) -> Result<(), StoreError> {
        (**self).publish(message).await
    }

    async fn subscribe(&self) -> Result<InvalidationStream, StoreError> {
        (**self).subscribe().await
    }
}
