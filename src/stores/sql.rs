//! What the SQL stores share: records to column values and back (every
//! conversion checked), driver errors to [`StoreError`]s, and the
//! run-once gate of the embedded migrations.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType, Migrator};
use sqlx::SqlSafeStr;
use tokio::sync::OnceCell;

use crate::error::StoreError;
use crate::session::{SessionId, SessionRecord};
use crate::subscription::{Subscription, SubscriptionStatus, UnknownStatus};

/// The table the crate's migrations are tracked in (not sqlx's default
/// `_sqlx_migrations`, which an application's own migrations may use).
pub(crate) const MIGRATIONS_TABLE: &str = "_tower_saas_guard_migrations";

/// The migrations of one backend, from the files of `migrations/<backend>/`
/// as `(file stem, contents)`, tracked in [`MIGRATIONS_TABLE`].
///
/// What `sqlx::migrate!` builds from that folder (version and description
/// from `VERSION_DESCRIPTION.sql`, the SHA-384 of the file as checksum,
/// `-- no-transaction` honoured), without sqlx's proc macros: they would
/// compile every enabled driver (SQLite's C library included) a second
/// time, for the compiler, in every build of an application.
pub(crate) fn embedded_migrator(files: &[(&'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|&(stem, sql)| {
            let (version, description) = stem
                .split_once('_')
                .expect("migration files are named VERSION_DESCRIPTION.sql");
            Migration::new(
                version
                    .parse()
                    .expect("migration files start with a numeric version"),
                description.replace('_', " ").into(),
                MigrationType::Simple,
                sql.into_sql_str(),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// A value that cannot go into a row, or a stored row that does not decode.
///
/// The source of a [`StoreError`] of kind
/// [`Serialization`](crate::StoreErrorKind::Serialization) from the SQL
/// stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// A stored session id is not 32 bytes (the SHA-256 of a token).
    #[error("stored session id is {0} bytes long; a session id (SHA-256 of the token) is 32")]
    IdLength(usize),
    /// A stored time is not a Unix time in milliseconds this platform can
    /// represent (negative, or too far in the future).
    #[error("stored {column} ({value}) is not a valid Unix time in milliseconds")]
    Timestamp {
        /// The column.
        column: &'static str,
        /// The stored value.
        value: i64,
    },
    /// A time is too far in the future to store as 64-bit Unix milliseconds.
    #[error("{column} is too far in the future to store as 64-bit Unix milliseconds")]
    TimestampOutOfRange {
        /// The column.
        column: &'static str,
    },
    /// A session payload that is not JSON.
    #[error("session payload is not valid JSON")]
    Payload(#[source] serde_json::Error),
    /// A stored subscription status that is not one of Stripe's.
    #[error("stored subscription status is not one this crate knows")]
    Status(#[source] UnknownStatus),
    /// A stored column has a type the store cannot read (for example text
    /// where a number belongs).
    #[error("a stored column could not be decoded")]
    Column(#[source] sqlx::Error),
}

/// A driver error as a [`StoreError`]: a column that does not decode is a
/// malformed row ([`RowError::Column`]); anything else is the backend's.
pub(crate) fn driver_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::serialization(RowError::Column(error))
        }
        error => StoreError::backend(error),
    }
}

/// A time as Unix milliseconds for a `BIGINT` column.
pub(crate) fn to_millis(column: &'static str, at: SystemTime) -> Result<i64, StoreError> {
    i64::try_from(crate::clock::unix_millis(at))
        .map_err(|_| StoreError::serialization(RowError::TimestampOutOfRange { column }))
}

/// A `BIGINT` column of Unix milliseconds as a time.
pub(crate) fn from_millis(column: &'static str, value: i64) -> Result<SystemTime, StoreError> {
    u64::try_from(value)
        .ok()
        .and_then(|millis| UNIX_EPOCH.checked_add(Duration::from_millis(millis)))
        .ok_or_else(|| StoreError::serialization(RowError::Timestamp { column, value }))
}

fn optional_time(
    column: &'static str,
    value: Option<i64>,
) -> Result<Option<SystemTime>, StoreError> {
    value.map(|value| from_millis(column, value)).transpose()
}

fn optional_millis(
    column: &'static str,
    at: Option<SystemTime>,
) -> Result<Option<i64>, StoreError> {
    at.map(|at| to_millis(column, at)).transpose()
}

/// A stored session id.
pub(crate) fn session_id(bytes: &[u8]) -> Result<SessionId, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(SessionId::from_bytes)
        .map_err(|_| StoreError::serialization(RowError::IdLength(bytes.len())))
}

/// A session row as selected: id, organization_id, subject, created_at,
/// expires_at, payload.
pub(crate) type SessionRow = (Vec<u8>, Option<String>, Option<String>, i64, i64, String);

/// The columns of a [`SessionRow`], in its order.
macro_rules! session_columns {
    () => {
        "id, organization_id, subject, created_at, expires_at, payload"
    };
}
pub(crate) use session_columns;

/// Decodes a session row, checking every value.
pub(crate) fn session_from_row(row: SessionRow) -> Result<SessionRecord, StoreError> {
    let (id, organization_id, subject, created_at, expires_at, payload) = row;
    Ok(SessionRecord {
        id: session_id(&id)?,
        organization_id,
        subject,
        created_at: from_millis("created_at", created_at)?,
        expires_at: from_millis("expires_at", expires_at)?,
        payload: serde_json::from_str(&payload)
            .map_err(|error| StoreError::serialization(RowError::Payload(error)))?,
    })
}

/// A session's column values, ready to bind.
pub(crate) struct SessionValues {
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) payload: String,
}

/// Encodes what of a session needs converting.
pub(crate) fn session_values(record: &SessionRecord) -> Result<SessionValues, StoreError> {
    Ok(SessionValues {
        created_at: to_millis("created_at", record.created_at)?,
        expires_at: to_millis("expires_at", record.expires_at)?,
        payload: serde_json::to_string(&record.payload)
            .map_err(|error| StoreError::serialization(RowError::Payload(error)))?,
    })
}

/// The ids `delete_all` returned. A row whose id is not 32 bytes is gone
/// as well, but could never have been loaded (ids are looked up as 32
/// bytes), so no cache holds it: it is left out with a warning rather than
/// failing a revocation that did happen and hiding the ids of the others,
/// which caches must drop.
pub(crate) fn deleted_ids(rows: Vec<Vec<u8>>) -> Vec<SessionId> {
    rows.into_iter()
        .filter_map(|bytes| match session_id(&bytes) {
            Ok(id) => Some(id),
            Err(_) => {
                tracing::warn!(
                    length = bytes.len(),
                    "deleted a session row whose id is not 32 bytes"
                );
                None
            }
        })
        .collect()
}

/// A subscription row as selected: organization_id, subscription_id,
/// status, plan, current_period_end, trial_end.
pub(crate) type SubscriptionRow = (String, String, String, String, Option<i64>, Option<i64>);

/// Decodes a subscription row, checking every value.
pub(crate) fn subscription_from_row(row: SubscriptionRow) -> Result<Subscription, StoreError> {
    let (organization_id, subscription_id, status, plan, current_period_end, trial_end) = row;
    Ok(Subscription {
        organization_id,
        subscription_id,
        status: status
            .parse::<SubscriptionStatus>()
            .map_err(|error| StoreError::serialization(RowError::Status(error)))?,
        plan,
        current_period_end: optional_time("current_period_end", current_period_end)?,
        trial_end: optional_time("trial_end", trial_end)?,
    })
}

/// A subscription's `current_period_end` and `trial_end`, ready to bind.
pub(crate) fn subscription_times(
    subscription: &Subscription,
) -> Result<(Option<i64>, Option<i64>), StoreError> {
    Ok((
        optional_millis("current_period_end", subscription.current_period_end)?,
        optional_millis("trial_end", subscription.trial_end)?,
    ))
}

/// Applies `migrator`'s pending migrations on `connection`, under the
/// backend's migration lock (PostgreSQL: an advisory lock; SQLite: none, the
/// caller holds the write lock), tracked in [`MIGRATIONS_TABLE`].
///
/// What `Migrator::run` does, written out on the public `Migrate` trait:
/// on a borrowed connection the future of `Migrator::run` is not provably
/// `Send`, which the stores' `async_trait` methods need. Two differences:
/// the lock is released on failure too, and versions applied by a newer
/// release of the crate are left alone instead of refused, so an older
/// binary keeps running during a rolling deploy.
pub(crate) async fn apply_pending<C>(
    migrator: &Migrator,
    connection: &mut C,
) -> Result<(), StoreError>
where
    C: Migrate + Send,
{
    connection.lock().await.map_err(StoreError::backend)?;
    let applied = apply_unlocked(migrator, connection).await;
    let unlocked = connection.unlock().await.map_err(StoreError::backend);
    applied.map_err(StoreError::backend).and(unlocked)
}

async fn apply_unlocked<C>(migrator: &Migrator, connection: &mut C) -> Result<(), MigrateError>
where
    C: Migrate + Send,
{
    connection.ensure_migrations_table(MIGRATIONS_TABLE).await?;
    if let Some(version) = connection.dirty_version(MIGRATIONS_TABLE).await? {
        return Err(MigrateError::Dirty(version));
    }
    let applied = connection.list_applied_migrations(MIGRATIONS_TABLE).await?;
    let pending = migrator
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration());
    for migration in pending {
        match applied
            .iter()
            .find(|applied| applied.version == migration.version)
        {
            Some(applied) if applied.checksum != migration.checksum => {
                return Err(MigrateError::VersionMismatch(migration.version));
            }
            Some(_) => {}
            None => {
                connection.apply(MIGRATIONS_TABLE, migration).await?;
            }
        }
    }
    Ok(())
}

/// Runs a store's migrations before its first use, once.
///
/// Clones of a store share the gate. A failed run leaves it closed, so the
/// next use tries again.
#[derive(Debug, Clone)]
pub(crate) struct MigrationGate {
    done: Arc<OnceCell<()>>,
    automatic: bool,
}

impl MigrationGate {
    pub(crate) fn new() -> Self {
        Self {
            done: Arc::new(OnceCell::new()),
            automatic: true,
        }
    }

    /// Never runs them automatically.
    pub(crate) fn skipped(self) -> Self {
        Self {
            automatic: false,
            ..self
        }
    }

    /// Runs `migrate` unless it already succeeded through this gate (or
    /// migrations are skipped). Concurrent callers wait for one run.
    pub(crate) async fn before_use<F, Fut>(&self, migrate: F) -> Result<(), StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        if !self.automatic {
            return Ok(());
        }
        self.done.get_or_try_init(migrate).await.map(|_| ())
    }

    /// Records an explicit, successful run.
    pub(crate) fn mark_done(&self) {
        // Already set means another run succeeded first: same outcome.
        let _ = self.done.set(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreErrorKind;

    fn source_of(error: &StoreError) -> &RowError {
        std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<RowError>())
            .expect("a RowError source")
    }

    #[test]
    fn negative_and_overflowing_millis_are_serialization_errors() {
        let error = from_millis("expires_at", -1).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Serialization);
        assert!(matches!(
            source_of(&error),
            RowError::Timestamp {
                column: "expires_at",
                value: -1
            }
        ));
        assert_eq!(
            from_millis("created_at", 1_700_000_000_123)
                .expect("a positive millisecond count decodes"),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        let far = UNIX_EPOCH + Duration::from_millis(u64::MAX / 2 + 1);
        let error = to_millis("expires_at", far).unwrap_err();
        assert!(matches!(
            source_of(&error),
            RowError::TimestampOutOfRange {
                column: "expires_at"
            }
        ));
    }

    #[test]
    fn a_session_id_must_be_32_bytes() {
        assert!(session_id(&[7; 32]).is_ok());
        let error = session_id(&[7; 31]).unwrap_err();
        assert!(matches!(source_of(&error), RowError::IdLength(31)));
    }

    #[test]
    fn malformed_session_rows_are_errors_not_panics() {
        let row = |payload: &str, created_at: i64| -> SessionRow {
            (vec![1; 32], None, None, created_at, 10, payload.to_owned())
        };
        assert!(session_from_row(row("{\"a\":1}", 5)).is_ok());
        assert!(matches!(
            source_of(&session_from_row(row("{not json", 5)).unwrap_err()),
            RowError::Payload(_)
        ));
        assert!(matches!(
            source_of(&session_from_row(row("null", i64::MIN)).unwrap_err()),
            RowError::Timestamp { .. }
        ));
    }

    #[test]
    fn an_unknown_status_is_a_serialization_error() {
        let row: SubscriptionRow = (
            "org".into(),
            "sub".into(),
            "lifetime_deal".into(),
            "pro".into(),
            None,
            None,
        );
        let error = subscription_from_row(row).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Serialization);
        assert!(
            matches!(source_of(&error), RowError::Status(UnknownStatus(status)) if status == "lifetime_deal")
        );
    }

    #[test]
    fn deleted_ids_skip_malformed_ones() {
        let ids = deleted_ids(vec![vec![1; 32], vec![2; 3], vec![3; 32]]);
        assert_eq!(
            ids,
            [
                SessionId::from_bytes([1; 32]),
                SessionId::from_bytes([3; 32])
            ]
        );
    }
}
