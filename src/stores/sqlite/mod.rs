//! SQLite stores (sqlx): sessions and subscriptions in one file on one
//! machine, surviving restarts.
//!
//! [`SqliteSessionStore`] and [`SqliteSubscriptionStore`] take a
//! [`SqlitePool`] ([`new`](SqliteSessionStore::new)) or a URL
//! ([`connect`](SqliteSessionStore::connect)). `connect` creates the file
//! if it is missing and opens it in WAL mode (readers never wait for the
//! writer) with `synchronous = NORMAL` and a 5 s busy timeout, so
//! concurrent writers queue instead of failing. A pool of your own should
//! set a busy timeout too (sqlx's default is 5 s).
//!
//! An in-memory database (`sqlite::memory:`) lives only as long as a
//! connection to it: `connect` gives it a pool of exactly one connection
//! that is never closed while the pool lives. Build a pool of your own for
//! it the same way (`max_connections(1)`, `min_connections(1)`, no idle
//! timeout, no max lifetime).
//!
//! Each store runs the embedded migrations (`migrations/sqlite/`) on first
//! use, once, inside one `BEGIN IMMEDIATE` transaction, so two stores or
//! two processes starting on one file apply them once. See
//! [the module docs of `stores`](crate::stores#migrations) for running
//! them yourself and [`skip_migrations`](SqliteSessionStore::skip_migrations).
//!
//! # Example
//!
//! ```
//! use tower_saas_guard::session::SessionRefreshLayer;
//! use tower_saas_guard::stores::sqlite::SqliteSessionStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A file path works the same: "sqlite://sessions.db" (created if missing).
//! let store = SqliteSessionStore::connect("sqlite::memory:").await?;
//! store.migrate().await?; // optional: the first use runs them anyway
//! let sessions = SessionRefreshLayer::new(store);
//! let created = sessions.handle().create(Some("acme"), ()).await?;
//! assert!(sessions.handle().get(&created.token).await?.is_some());
//! # Ok(())
//! # }
//! ```

mod session;
mod subscription;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use self::session::SqliteSessionStore;
pub use self::subscription::SqliteSubscriptionStore;
use super::sql::{apply_pending, driver_error, embedded_migrator};
use crate::error::StoreError;

/// The crate's SQLite migrations (the files of `migrations/sqlite/`),
/// tracked in the table `_tower_saas_guard_migrations`.
///
/// The stores run them themselves; this is for running them from your own
/// deployment code, or for comparing them with what a database holds.
pub fn migrator() -> Migrator {
    embedded_migrator(&[
        (
            "0001_sessions",
            include_str!("../../../migrations/sqlite/0001_sessions.sql"),
        ),
        (
            "0002_subscriptions",
            include_str!("../../../migrations/sqlite/0002_subscriptions.sql"),
        ),
        (
            "0003_subscription_events",
            include_str!("../../../migrations/sqlite/0003_subscription_events.sql"),
        ),
    ])
}

/// Applies the migrations inside one `BEGIN IMMEDIATE` transaction: it
/// takes SQLite's write lock first, so a second store (or process) starting
/// at the same time waits for it (busy timeout) and then finds them
/// applied, instead of racing to create the same tables.
async fn run_migrations(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut transaction = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(driver_error)?;
    apply_pending(&migrator(), &mut *transaction).await?;
    transaction.commit().await.map_err(driver_error)
}

/// A pool for `url`: the file created if missing, WAL, a busy timeout; an
/// in-memory database kept alive on one connection.
async fn connect_pool(url: &str) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(StoreError::backend)?
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(5));
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let pool = if in_memory {
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
    } else {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        // Switching a new file to WAL takes an exclusive lock that the busy
        // timeout does not wait for: stores (or processes) opening one new
        // file at once may see SQLITE_BUSY here. Retry for the busy timeout.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut wait = Duration::from_millis(10);
        loop {
            match SqlitePoolOptions::new().connect_with(options.clone()).await {
                Err(error) if is_busy(&error) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
                pool => break pool,
            }
        }
    };
    pool.map_err(StoreError::backend)
}

/// Whether SQLite answered SQLITE_BUSY (or one of its extended codes).
fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database) => database
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| code & 0xff == 5),
        _ => false,
    }
}
