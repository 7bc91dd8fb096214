//! PostgreSQL stores and the `LISTEN/NOTIFY` invalidation channel (sqlx):
//! several instances sharing sessions and subscriptions.
//!
//! * [`PostgresSessionStore`] and [`PostgresSubscriptionStore`] take a
//!   [`PgPool`] ([`new`](PostgresSessionStore::new)) or a URL
//!   ([`connect`](PostgresSessionStore::connect)). Renewal is one
//!   conditional `UPDATE … RETURNING`, so instances renewing one session
//!   at once can only move its expiry forward.
//! * [`PostgresInvalidationChannel`] carries revocations and subscription
//!   changes between the instances' caches: `pg_notify` to publish, a
//!   dedicated `LISTEN` connection to receive. Give the same channel (or
//!   clones) to both layers' builders.
//!
//! Each store runs the embedded migrations (`migrations/postgres/`) on
//! first use, once, under sqlx's advisory migration lock, so instances
//! starting together apply them once. They go to the first schema of the
//! connection's `search_path`. See [the module docs of
//! `stores`](crate::stores#migrations) for running them yourself and
//! [`skip_migrations`](PostgresSessionStore::skip_migrations).
//!
//! # Example
//!
//! ```no_run
//! use tower_saas_guard::session::SessionRefreshLayer;
//! use tower_saas_guard::stores::postgres::{PostgresInvalidationChannel, PostgresSessionStore};
//! use tower_saas_guard::subscription::Entitlements;
//! use tower_saas_guard::stores::postgres::PostgresSubscriptionStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://app@db.internal/app").await?;
//! let channel = PostgresInvalidationChannel::new(pool.clone());
//! let sessions = SessionRefreshLayer::builder(PostgresSessionStore::new(pool.clone()))
//!     .invalidation_channel(channel.clone())
//!     .build()?;
//! let entitlements = Entitlements::builder(PostgresSubscriptionStore::new(pool))
//!     .invalidation_channel(channel)
//!     .build()?;
//! # drop((sessions, entitlements));
//! # Ok(())
//! # }
//! ```

mod channel;
mod session;
mod subscription;

use sqlx::migrate::Migrator;
use sqlx::PgPool;

pub use self::channel::{InvalidChannelName, PostgresInvalidationChannel};
pub use self::session::PostgresSessionStore;
pub use self::subscription::PostgresSubscriptionStore;
use super::sql::{apply_pending, driver_error, embedded_migrator};
use crate::error::StoreError;

/// The crate's PostgreSQL migrations (the files of `migrations/postgres/`),
/// tracked in the table `_tower_saas_guard_migrations`.
///
/// The stores run them themselves; this is for running them from your own
/// deployment code, or for comparing them with what a database holds.
pub fn migrator() -> Migrator {
    embedded_migrator(&[
        (
            "0001_sessions",
            include_str!("../../../migrations/postgres/0001_sessions.sql"),
        ),
        (
            "0002_subscriptions",
            include_str!("../../../migrations/postgres/0002_subscriptions.sql"),
        ),
        (
            "0003_subscription_events",
            include_str!("../../../migrations/postgres/0003_subscription_events.sql"),
        ),
    ])
}

/// Applies the migrations on one connection, under sqlx's advisory lock.
///
/// The lock is held by the session, not a transaction, so the connection
/// is closed afterwards rather than returned to the pool: when the store
/// timeout cuts a migration short (say, while it waits for another
/// instance's), a pooled connection would keep the lock and every other
/// instance's migration would wait for it until the pool retired it.
async fn run_migrations(pool: &PgPool) -> Result<(), StoreError> {
    let mut connection = pool.acquire().await.map_err(driver_error)?;
    connection.close_on_drop();
    apply_pending(&migrator(), &mut *connection).await
}

/// A pool for `url`, with sqlx's defaults.
async fn connect_pool(url: &str) -> Result<PgPool, StoreError> {
    PgPool::connect(url).await.map_err(StoreError::backend)
}
