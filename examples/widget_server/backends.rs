//! Opens what `--store` and `--session-store` name: the application's
//! store ([`AppStore`]), the library's session and subscription stores,
//! and the invalidation channel that keeps several instances' caches in
//! step.
//!
//! | `--store` | app data and subscriptions | sessions (default) | channel |
//! |---|---|---|---|
//! | `memory` | this process | this process | none |
//! | `sqlite://PATH` | the file (created if missing) | the same file | none |
//! | `postgres://…` | the database | the same database | `LISTEN/NOTIFY` on it |
//!
//! `--session-store` moves sessions elsewhere: another SQLite file or
//! PostgreSQL database, or `redis://…` ([`RedisSessionStore`] under the
//! `--redis-prefix` key prefix). The invalidation channel follows the
//! shared stores: Redis pub/sub when sessions are in Redis, otherwise
//! PostgreSQL `LISTEN/NOTIFY` when either flag names PostgreSQL
//! (`--store`'s database first); with only memory and SQLite there is no
//! other instance to tell. One channel serves both layers.
//!
//! One database URL opens one connection pool, shared by everything in it.
//! The library's migrations run here, at start-up, so a database that
//! cannot take them stops the server before it listens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tower_saas_guard::invalidation::InvalidationChannel;
use tower_saas_guard::session::{MemorySessionStore, SessionStore};
use tower_saas_guard::stores::postgres::{
    PostgresInvalidationChannel, PostgresSessionStore, PostgresSubscriptionStore,
};
use tower_saas_guard::stores::redis::{RedisInvalidationChannel, RedisSessionStore};
use tower_saas_guard::stores::sqlite::{SqliteSessionStore, SqliteSubscriptionStore};
use tower_saas_guard::subscription::{MemorySubscriptionStore, SubscriptionStore};
use tower_saas_guard::StoreError;

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

/// The `application_name` of the `LISTEN` connection of the server
/// running as process `pid`, as `pg_stat_activity` shows it: one per
/// instance, so an operator (or a test) can tell the instances' listeners
/// apart on one database.
pub fn listener_application_name(pid: u32) -> String {
    format!("widget_server listener {pid}")
}

/// The Redis pub/sub channel of the instances sharing `--redis-prefix`.
pub fn redis_channel_name(prefix: &str) -> String {
    format!("{prefix}invalidation")
}

/// Opens (and creates, for SQLite) every database the flags name, runs the
/// library's migrations and the application's DDL, and picks the
/// invalidation channel. An error names the flag and the store, without
/// its password.
///
/// `expired_retention` is the session layer's: a Redis session store keeps
/// expired sessions exactly that long.
pub(crate) async fn open(config: &Config, expired_retention: Duration) -> Result<Backends, String> {
    let mut pools = Pools::default();
    let store = pools.open("--store", &config.store).await?;
    let store_failed = |error: StoreError| failed("--store", &config.store, &error);
    let (app, subscriptions): (Arc<dyn AppStore>, Arc<dyn SubscriptionStore>) = match &store {
        Database::Memory => (
            Arc::new(MemoryAppStore::new()),
            Arc::new(MemorySubscriptionStore::new()),
        ),
        Database::Sqlite(pool) => {
            let subscriptions = SqliteSubscriptionStore::new(pool.clone());
            subscriptions.migrate().await.map_err(store_failed)?;
            let app = SqliteAppStore::new(pool.clone())
                .await
                .map_err(store_failed)?;
            (Arc::new(app), Arc::new(subscriptions))
        }
        Database::Postgres(pool) => {
            let subscriptions = PostgresSubscriptionStore::new(pool.clone());
            subscriptions.migrate().await.map_err(store_failed)?;
            let app = PostgresAppStore::new(pool.clone())
                .await
                .map_err(store_failed)?;
            (Arc::new(app), Arc::new(subscriptions))
        }
    };

    let session_url = config.session_store();
    let session_failed = |error: StoreError| failed("--session-store", session_url, &error);
    let (sessions, channel): (Arc<dyn SessionStore>, Option<Arc<dyn InvalidationChannel>>) =
        match session_url {
            // Sessions in Redis: its pub/sub carries both layers'
            // invalidations, whatever `--store` is.
            StoreUrl::Redis(url) => {
                let (sessions, channel) = open_redis(url, &config.redis_prefix, expired_retention)
                    .await
                    .map_err(session_failed)?;
                (Arc::new(sessions), Some(Arc::new(channel)))
            }
            _ => {
                let database = pools.open("--session-store", session_url).await?;
                let sessions = sql_sessions(&database).await.map_err(session_failed)?;
                // `LISTEN/NOTIFY` on `--store`'s database, or else on
                // `--session-store`'s, when either is PostgreSQL.
                let channel = [&store, &database].into_iter().find_map(postgres_channel);
                (sessions, channel)
            }
        };
    Ok(Backends {
        app,
        sessions,
        subscriptions,
        channel,
    })
}

/// The session store in `database` (migrated).
async fn sql_sessions(database: &Database) -> Result<Arc<dyn SessionStore>, StoreError> {
    Ok(match database {
        Database::Memory => Arc::new(MemorySessionStore::new()),
        Database::Sqlite(pool) => {
            let sessions = SqliteSessionStore::new(pool.clone());
            sessions.migrate().await?;
            Arc::new(sessions)
        }
        Database::Postgres(pool) => {
            let sessions = PostgresSessionStore::new(pool.clone());
            sessions.migrate().await?;
            Arc::new(sessions)
        }
    })
}

/// The `LISTEN/NOTIFY` channel on `database`, if it is PostgreSQL; its
/// listening connections carry this instance's name.
fn postgres_channel(database: &Database) -> Option<Arc<dyn InvalidationChannel>> {
    let Database::Postgres(pool) = database else {
        return None;
    };
    let channel = PostgresInvalidationChannel::new(pool.clone())
        .listener_application_name(listener_application_name(std::process::id()));
    Some(Arc::new(channel))
}

/// Sessions in the Redis at `url`, under `prefix`, keeping expired ones
/// `expired_retention` (the layer's); and the pub/sub channel
/// `<prefix>invalidation` that both layers share.
async fn open_redis(
    url: &str,
    prefix: &str,
    expired_retention: Duration,
) -> Result<(RedisSessionStore, RedisInvalidationChannel), StoreError> {
    let sessions = RedisSessionStore::connect(url)
        .await?
        .key_prefix(prefix)
        .expired_retention(expired_retention);
    let channel = RedisInvalidationChannel::connect(url)
        .await?
        .channel_name(redis_channel_name(prefix));
    Ok((sessions, channel))
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

/// `--flag: cannot open `URL`: error: its source: …`, the URL without
/// its password.
fn failed(flag: &str, url: &StoreUrl, error: &dyn std::error::Error) -> String {
    let mut message = format!("{flag}: cannot open `{}`: {error}", url.redacted());
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
