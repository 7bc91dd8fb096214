//! Opens what `--store` and `--session-store` name: the application's
//! store ([`AppStore`]), the library's session and subscription stores,
//! and the invalidation channel that keeps several instances' caches in
//! step.
//!
//! | `--store` | app data and subscriptions | sessions (default) |
//! |---|---|---|
//! | `memory` | this process | this process |
//! | `sqlite://PATH` | the file (created if missing) | the same file |
//! | `postgres://…` | the database | the same database |
//!
//! `--session-store` moves sessions elsewhere (`redis://…` too). One
//! database URL opens one connection pool, shared by everything in it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tower_saas_guard::invalidation::InvalidationChannel;
use tower_saas_guard::session::{MemorySessionStore, SessionStore};
use tower_saas_guard::subscription::{MemorySubscriptionStore, SubscriptionStore};

use super::cli::{Config, StoreUrl};
use super::storage::memory::MemoryAppStore;
use super::storage::postgres::PostgresAppStore;
use super::storage::sqlite::SqliteAppStore;
use super::storage::AppStore;

/// How long a request waits for a pooled database connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per pool.
const POOL_SIZE: u32 = 8;

/// Everything the stores flags opened.
pub(crate) struct Backends {
    pub(crate) app: Arc<dyn AppStore>,
    pub(crate) sessions: Arc<dyn SessionStore>,
    pub(crate) subscriptions: Arc<dyn SubscriptionStore>,
    /// Carries revocations and subscription changes between instances;
    /// `None` when nothing else can share the stores (memory, SQLite).
    pub(crate) channel: Option<Arc<dyn InvalidationChannel>>,
}

/// A database the flags named, opened once.
#[derive(Clone)]
enum Database {
    Memory,
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Opens (and creates, for SQLite) every database the flags name, and the
/// application's tables in `--store`'s. An error names the flag and the
/// store, without its password.
pub(crate) async fn open(config: &Config) -> Result<Backends, String> {
    let mut pools = Pools::default();
    let store = pools.open("--store", &config.store).await?;
    let app: Arc<dyn AppStore> = match &store {
        Database::Memory => Arc::new(MemoryAppStore::new()),
        Database::Sqlite(pool) => Arc::new(
            SqliteAppStore::new(pool.clone())
                .await
                .map_err(|error| failed("--store", &config.store, &error))?,
        ),
        Database::Postgres(pool) => Arc::new(
            PostgresAppStore::new(pool.clone())
                .await
                .map_err(|error| failed("--store", &config.store, &error))?,
        ),
    };

    // The library's SQLite, PostgreSQL and Redis stores are not in this
    // build yet: sessions and subscriptions stay in memory whatever the
    // flags say, and the app data goes where `--store` says.
    let session_store = config.session_store();
    if !matches!(session_store, StoreUrl::Memory | StoreUrl::Redis(_)) {
        pools.open("--session-store", session_store).await?;
    }
    let sessions: Arc<dyn SessionStore> = match session_store {
        StoreUrl::Memory | StoreUrl::Sqlite(_) | StoreUrl::Postgres(_) | StoreUrl::Redis(_) => {
            Arc::new(MemorySessionStore::new())
        }
    };
    let subscriptions: Arc<dyn SubscriptionStore> = match &store {
        Database::Memory | Database::Sqlite(_) | Database::Postgres(_) => {
            Arc::new(MemorySubscriptionStore::new())
        }
    };
    if !matches!(config.store, StoreUrl::Memory) || !matches!(session_store, StoreUrl::Memory) {
        eprintln!(
            "widget_server: sessions and subscriptions are kept in memory in this build \
             (the library's database stores are not available yet)"
        );
    }
    Ok(Backends {
        app,
        sessions,
        subscriptions,
        channel: None,
    })
}

/// The pools opened so far, by URL: `--store` and `--session-store` naming
/// one database share one pool.
#[derive(Default)]
struct Pools {
    opened: HashMap<String, Database>,
}

impl Pools {
    async fn open(&mut self, flag: &str, url: &StoreUrl) -> Result<Database, String> {
        let text = match url {
            StoreUrl::Memory => return Ok(Database::Memory),
            StoreUrl::Redis(_) => {
                return Err(format!("{flag}: redis holds sessions only, not this data"))
            }
            StoreUrl::Sqlite(text) | StoreUrl::Postgres(text) => text,
        };
        if let Some(database) = self.opened.get(text) {
            return Ok(database.clone());
        }
        let opened = if matches!(url, StoreUrl::Sqlite(_)) {
            open_sqlite(text).await.map(Database::Sqlite)
        } else {
            open_postgres(text).await.map(Database::Postgres)
        };
        let database = opened.map_err(|error| failed(flag, url, &error))?;
        self.opened.insert(text.clone(), database.clone());
        Ok(database)
    }
}

/// The SQLite file at `url`, created if missing; write-ahead logging so
/// readers never wait for the writer.
async fn open_sqlite(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let options = url
        .parse::<SqliteConnectOptions>()?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}

async fn open_postgres(url: &str) -> Result<PgPool, sqlx::Error> {
    let options = url.parse::<PgConnectOptions>()?;
    PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}

fn failed(flag: &str, url: &StoreUrl, error: &dyn std::fmt::Display) -> String {
    format!("{flag}: cannot open `{}`: {error}", url.redacted())
}
