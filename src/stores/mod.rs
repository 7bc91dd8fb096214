//! Persistent stores and cross-instance invalidation channels, one module
//! per backend, each behind its Cargo feature.
//!
//! | module | feature | what it holds | for |
//! |---|---|---|---|
//! | `sqlite` | `sqlite` | `SqliteSessionStore`, `SqliteSubscriptionStore` | one machine, persistent: sessions survive a restart |
//! | `postgres` | `postgres` | `PostgresSessionStore`, `PostgresSubscriptionStore`, `PostgresInvalidationChannel` (`LISTEN/NOTIFY`) | several instances on one database |
//! | `redis` | `redis` | `RedisSessionStore`, `RedisInvalidationChannel` (pub/sub) | sessions of several instances, expired by Redis itself |
//!
//! Everything about one database (its stores, its channel, its SQL or Lua
//! scripts) sits in its module here, so "how does Redis work here?" is
//! answered by one folder.
//!
//! The in-memory stores stay beside their traits
//! ([`MemorySessionStore`](crate::session::MemorySessionStore),
//! [`MemorySubscriptionStore`](crate::subscription::MemorySubscriptionStore)).
//!
//! # What the SQL stores keep
//!
//! A session row is keyed by the SHA-256 of its token (32 bytes, a `BLOB` /
//! `BYTEA`); the token itself is never written, so a leaked database holds
//! no usable tokens. Times are `BIGINT` Unix milliseconds; the payload is
//! the application's JSON as text. Subscriptions are keyed by
//! (`organization_id`, `subscription_id`); a billing change is applied in
//! one transaction whose statements carry the conditions (the event id
//! inserted only if absent, the subscription's last event time advanced only
//! if the change is not older), so that no change older than the last one
//! applied, and no event id applied before, ever wins, whichever instance
//! applies it. Indexes serve "sessions of an organization" and "of a
//! subject" in listing order (`created_at`, `id`), the purge of expired
//! sessions (`expires_at`), "subscriptions of an organization" (the primary
//! key) and the purge of old event ids (`applied_at`). The tables are
//! `tower_saas_guard_sessions`, `tower_saas_guard_subscriptions`,
//! `tower_saas_guard_subscription_event_times` and
//! `tower_saas_guard_subscription_events`, named so that they sit beside an
//! application's own tables.
//!
//! Renewal is one conditional `UPDATE … RETURNING` (it never moves
//! `expires_at` backwards and never revives an expired session); revoking
//! an organization's or a subject's sessions is one
//! `DELETE … RETURNING id`; listing is a keyset query on
//! (`created_at`, `id`). A stored value that does not decode (an id that is
//! not 32 bytes, a negative time, a payload that is not JSON, an unknown
//! subscription status) is a [`StoreError`](crate::StoreError) of kind
//! [`Serialization`](crate::StoreErrorKind::Serialization) whose source is
//! a `RowError`, never a panic.
//!
//! # Migrations
//!
//! The schema ships as plain SQL files in the crate's
//! `migrations/sqlite/` and `migrations/postgres/` folders (one migration
//! set per backend, sessions and subscriptions together), embedded in the
//! crate (`include_str!`, with the version, description and checksum
//! `sqlx::migrate!` would give them, but without sqlx's proc macros, which
//! would build every enabled driver a second time). Each store runs them on its first use, once (a
//! concurrent first use runs them once; two stores on one database, or two
//! processes, may both start: the migrations take the database's lock and
//! the second finds them applied). `migrate()` runs them explicitly, for
//! example at start-up so a broken database fails early.
//!
//! They are tracked in their own table, `_tower_saas_guard_migrations`,
//! not in sqlx's default `_sqlx_migrations`, so they never mix with an
//! application's own sqlx migrations in the same database.
//!
//! If you run your own migration tool, copy the files into it (they use
//! `IF NOT EXISTS` throughout) and build the stores with
//! `skip_migrations()`, so they never touch the schema.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use self::sql::RowError;
