//! Sessions in SQLite.

use std::time::SystemTime;

use async_trait::async_trait;
use sqlx::SqlitePool;

use super::{connect_pool, run_migrations};
use crate::error::StoreError;
use crate::session::{
    PageRequest, SessionId, SessionOwner, SessionPage, SessionRecord, SessionStore,
};
use crate::stores::sql::{
    deleted_ids, driver_error, from_millis, session_columns, session_from_row, session_values,
    to_millis, MigrationGate, SessionRow,
};

const CREATE: &str = concat!(
    "INSERT INTO tower_saas_guard_sessions (",
    session_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT (id) DO UPDATE SET organization_id = excluded.organization_id, \
     subject = excluded.subject, created_at = excluded.created_at, \
     expires_at = excluded.expires_at, payload = excluded.payload"
);
const LOAD: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM tower_saas_guard_sessions WHERE id = ?1"
);
const EXTEND: &str = "UPDATE tower_saas_guard_sessions SET expires_at = ?2 \
     WHERE id = ?1 AND expires_at < ?2 AND expires_at > ?3 RETURNING expires_at";
const EXPIRES_AT: &str = "SELECT expires_at FROM tower_saas_guard_sessions WHERE id = ?1";
const DELETE: &str = "DELETE FROM tower_saas_guard_sessions WHERE id = ?1";
const DELETE_ORGANIZATION: &str =
    "DELETE FROM tower_saas_guard_sessions WHERE organization_id = ?1 RETURNING id";
const DELETE_SUBJECT: &str =
    "DELETE FROM tower_saas_guard_sessions WHERE subject = ?1 RETURNING id";
const PURGE: &str = "DELETE FROM tower_saas_guard_sessions WHERE expires_at < ?1";

/// A listing query: `?1` owner, `?2` now, `?3` limit (+1), and with a
/// cursor `?4`/`?5` its created_at/id. Served by the (owner, created_at,
/// id) indexes.
macro_rules! list_sql {
    ($owner:literal, $keyset:literal) => {
        concat!(
            "SELECT ",
            session_columns!(),
            " FROM tower_saas_guard_sessions WHERE ",
            $owner,
            " = ?1 AND expires_at > ?2",
            $keyset,
            " ORDER BY created_at, id LIMIT ?3"
        )
    };
}

fn list_sql(owner: SessionOwner<'_>, after: bool) -> &'static str {
    match (owner, after) {
        (SessionOwner::Organization(_), false) => list_sql!("organization_id", ""),
        (SessionOwner::Organization(_), true) => {
            list_sql!("organization_id", " AND (created_at, id) > (?4, ?5)")
        }
        (SessionOwner::Subject(_), false) => list_sql!("subject", ""),
        (SessionOwner::Subject(_), true) => {
            list_sql!("subject", " AND (created_at, id) > (?4, ?5)")
        }
    }
}

/// Sessions in a SQLite database (the table `tower_saas_guard_sessions`).
///
/// Cheap to clone: clones share the pool and the run-once migrations.
/// See [the module docs](super) for the connection settings.
#[derive(Debug, Clone)]
pub struct SqliteSessionStore {
    pool: SqlitePool,
    migrations: MigrationGate,
}

impl SqliteSessionStore {
    /// A store over `pool`; the migrations run on first use.
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            migrations: MigrationGate::new(),
        }
    }

    /// Opens the database at `url` (`sqlite://path/to/file.db`, created if
    /// missing; or `sqlite::memory:`) with the settings of
    /// [the module docs](super).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::new(connect_pool(url).await?))
    }

    /// Never runs the migrations automatically: for a schema you apply
    /// with your own migration tool (the files of `migrations/sqlite/`).
    #[must_use]
    pub fn skip_migrations(self) -> Self {
        Self {
            migrations: self.migrations.skipped(),
            ..self
        }
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Applies the pending migrations now (whether or not they were
    /// skipped); later uses do not run them again.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        run_migrations(&self.pool).await?;
        self.migrations.mark_done();
        Ok(())
    }

    async fn ready(&self) -> Result<&SqlitePool, StoreError> {
        let pool = self.pool.clone();
        self.migrations
            .before_use(|| async move { run_migrations(&pool).await })
            .await?;
        Ok(&self.pool)
    }
}

#[async_trait]
impl SessionStore for SqliteSessionStore {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let values = session_values(record)?;
        sqlx::query(CREATE)
            .bind(record.id.as_bytes().as_slice())
            .bind(record.organization_id.as_deref())
            .bind(record.subject.as_deref())
            .bind(values.created_at)
            .bind(values.expires_at)
            .bind(values.payload)
            .execute(self.ready().await?)
            .await
            .map_err(driver_error)?;
        Ok(())
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        sqlx::query_as::<_, SessionRow>(LOAD)
            .bind(id.as_bytes().as_slice())
            .fetch_optional(self.ready().await?)
            .await
            .map_err(driver_error)?
            .map(session_from_row)
            .transpose()
    }

    async fn extend(
        &self,
        id: &SessionId,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        let pool = self.ready().await?;
        let wanted = to_millis("expires_at", expires_at)?;
        let now = to_millis("now", now)?;
        // The write is this one conditional statement: SQLite runs it under
        // its write lock, so concurrent extends can only move expires_at
        // forward and never revive an expired session.
        let updated: Option<i64> = sqlx::query_scalar(EXTEND)
            .bind(id.as_bytes().as_slice())
            .bind(wanted)
            .bind(now)
            .fetch_optional(pool)
            .await
            .map_err(driver_error)?;
        // Nothing updated (not later, expired, or no record): a plain read
        // tells which value stands. It writes nothing, so it cannot break
        // the guarantee; a concurrent extend in between only makes it later.
        let stored = match updated {
            Some(stored) => Some(stored),
            None => sqlx::query_scalar(EXPIRES_AT)
                .bind(id.as_bytes().as_slice())
                .fetch_optional(pool)
                .await
                .map_err(driver_error)?,
        };
        stored
            .map(|millis| from_millis("expires_at", millis))
            .transpose()
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let done = sqlx::query(DELETE)
            .bind(id.as_bytes().as_slice())
            .execute(self.ready().await?)
            .await
            .map_err(driver_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_all(&self, owner: SessionOwner<'_>) -> Result<Vec<SessionId>, StoreError> {
        let (sql, key) = match owner {
            SessionOwner::Organization(organization) => (DELETE_ORGANIZATION, organization),
            SessionOwner::Subject(subject) => (DELETE_SUBJECT, subject),
        };
        let ids: Vec<Vec<u8>> = sqlx::query_scalar(sql)
            .bind(key)
            .fetch_all(self.ready().await?)
            .await
            .map_err(driver_error)?;
        Ok(deleted_ids(ids))
    }

    async fn list(
        &self,
        owner: SessionOwner<'_>,
        now: SystemTime,
        page: PageRequest,
    ) -> Result<SessionPage, StoreError> {
        let key = match owner {
            SessionOwner::Organization(key) | SessionOwner::Subject(key) => key,
        };
        let mut query = sqlx::query_as::<_, SessionRow>(list_sql(owner, page.after.is_some()))
            .bind(key)
            .bind(to_millis("now", now)?)
            .bind(i64::from(page.limit.max(1)) + 1);
        if let Some(cursor) = page.after {
            query = query
                .bind(to_millis("cursor", cursor.created_at)?)
                .bind(cursor.id.as_bytes().to_vec());
        }
        let rows = query
            .fetch_all(self.ready().await?)
            .await
            .map_err(driver_error)?;
        let records = rows
            .into_iter()
            .map(session_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SessionPage::from_sorted(records, page.limit))
    }

    async fn purge_expired(&self, before: SystemTime) -> Result<u64, StoreError> {
        let done = sqlx::query(PURGE)
            .bind(to_millis("before", before)?)
            .execute(self.ready().await?)
            .await
            .map_err(driver_error)?;
        Ok(done.rows_affected())
    }
}
