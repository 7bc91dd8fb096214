//! Redis: a session store and a pub/sub invalidation channel (feature
//! `redis`, on the [`redis`](https://docs.rs/redis) crate).
//!
//! * [`RedisSessionStore`]: one hash per session keyed by the token's
//!   SHA-256, whose Redis expiry follows `expires_at` plus the expired
//!   retention; the extend-only renewal as one Lua script; per-organization
//!   and per-subject sorted-set indexes for listing and revoking (never
//!   `KEYS` or a keyspace scan).
//! * [`RedisInvalidationChannel`]: revocations and subscription changes
//!   published on one pub/sub channel, so every instance drops its cached
//!   copies within milliseconds.
//!
//! Why the `redis` crate: it is the maintained async client with a
//! [`ConnectionManager`](redis::aio::ConnectionManager) that reconnects by
//! itself, script caching (`EVALSHA`, falling back to `EVAL`), a dedicated
//! async pub/sub connection whose stream ends when the connection does, and
//! cluster support behind a feature of its own.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use tower_saas_guard::session::SessionRefreshLayer;
//! use tower_saas_guard::stores::redis::{RedisInvalidationChannel, RedisSessionStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let retention = Duration::from_secs(24 * 3600);
//! let store = RedisSessionStore::connect("redis://127.0.0.1:6379")
//!     .await?
//!     .key_prefix("widgets:")
//!     .expired_retention(retention); // the same as the layer's
//! let channel = RedisInvalidationChannel::connect("redis://127.0.0.1:6379")
//!     .await?
//!     .channel_name("widgets:invalidation");
//! let sessions = SessionRefreshLayer::builder(store)
//!     .expired_retention(retention)
//!     .invalidation_channel(channel)
//!     .build()?;
//! let _purge = sessions.handle().spawn_purge(Duration::from_secs(3600))?;
//! # Ok(())
//! # }
//! ```

mod channel;
mod keys;
mod record;
mod session;

pub use self::channel::{RedisInvalidationChannel, DEFAULT_CHANNEL_NAME, DEFAULT_HEARTBEAT};
pub use self::record::MalformedRecord;
pub use self::session::{RedisSessionStore, DEFAULT_EXPIRED_RETENTION, DEFAULT_KEY_PREFIX};

use crate::error::StoreError;

/// A Redis error as a store error: a key holding another type than the
/// store wrote (`WRONGTYPE`) is a malformed value, anything else a backend
/// failure.
fn redis_error(error: redis::RedisError) -> StoreError {
    if error.code() == Some("WRONGTYPE") {
        StoreError::serialization(error)
    } else {
        StoreError::backend(error)
    }
}
