//! Subscriptions in SQLite.

use std::time::SystemTime;

use async_trait::async_trait;
use sqlx::SqlitePool;

use super::{connect_pool, run_migrations};
use crate::error::StoreError;
use crate::stores::sql::to_millis;
use crate::stores::sql::{
    driver_error, subscription_from_row, subscription_times, MigrationGate, SubscriptionRow,
};
use crate::subscription::{ApplyOutcome, Subscription, SubscriptionChange, SubscriptionStore};

const SUBSCRIPTIONS: &str = "SELECT organization_id, subscription_id, status, plan, \
     current_period_end, trial_end FROM tower_saas_guard_subscriptions \
     WHERE organization_id = ?1 ORDER BY subscription_id";
const UPSERT: &str = "INSERT INTO tower_saas_guard_subscriptions \
     (organization_id, subscription_id, status, plan, current_period_end, trial_end) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT (organization_id, subscription_id) DO UPDATE SET status = excluded.status, \
     plan = excluded.plan, current_period_end = excluded.current_period_end, \
     trial_end = excluded.trial_end";

const ADVANCE_EVENT_TIME: &str = "INSERT INTO tower_saas_guard_subscription_event_times \
     (organization_id, subscription_id, event_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (organization_id, subscription_id) DO UPDATE SET event_at = excluded.event_at \
     WHERE tower_saas_guard_subscription_event_times.event_at <= excluded.event_at";
const RECORD_EVENT: &str = "INSERT INTO tower_saas_guard_subscription_events \
     (event_id, applied_at) VALUES (?1, ?2) ON CONFLICT (event_id) DO NOTHING";
const PURGE_EVENTS: &str = "DELETE FROM tower_saas_guard_subscription_events WHERE applied_at < ?1";

/// Subscriptions in a SQLite database (the table
/// `tower_saas_guard_subscriptions`), upserted by (organization,
/// subscription id).
///
/// [`apply`](SubscriptionStore::apply) runs in one transaction whose
/// statements carry the conditions: the event id is inserted into
/// `tower_saas_guard_subscription_events` only if absent, and the
/// subscription's last event time in
/// `tower_saas_guard_subscription_event_times` is advanced only if it is not
/// later than the change's; when either affects no row the transaction
/// rolls back and nothing changes, else the subscription is upserted in the
/// same transaction. Concurrent applications from several instances
/// serialize on the event id's key and the event time's row (SQLite: on the
/// write lock, taken at the start), so an older change never wins.
///
/// Cheap to clone: clones share the pool and the run-once migrations.
/// It can share a pool (and a file) with a
/// [`SqliteSessionStore`](super::SqliteSessionStore).
#[derive(Debug, Clone)]
pub struct SqliteSubscriptionStore {
    pool: SqlitePool,
    migrations: MigrationGate,
}

impl SqliteSubscriptionStore {
    /// A store over `pool`; the migrations run on first use.
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            migrations: MigrationGate::new(),
        }
    }

    /// Opens the database at `url` (created if missing) with the settings
    /// of [the module docs](super).
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
impl SubscriptionStore for SqliteSubscriptionStore {
    async fn subscriptions(&self, organization_id: &str) -> Result<Vec<Subscription>, StoreError> {
        sqlx::query_as::<_, SubscriptionRow>(SUBSCRIPTIONS)
            .bind(organization_id)
            .fetch_all(self.ready().await?)
            .await
            .map_err(driver_error)?
            .into_iter()
            .map(subscription_from_row)
            .collect()
    }

    async fn upsert(&self, subscription: &Subscription) -> Result<(), StoreError> {
        let (current_period_end, trial_end) = subscription_times(subscription)?;
        sqlx::query(UPSERT)
            .bind(subscription.organization_id.as_str())
            .bind(subscription.subscription_id.as_str())
            .bind(subscription.status.as_str())
            .bind(subscription.plan.as_str())
            .bind(current_period_end)
            .bind(trial_end)
            .execute(self.ready().await?)
            .await
            .map_err(driver_error)?;
        Ok(())
    }
    async fn apply(&self, change: &SubscriptionChange) -> Result<ApplyOutcome, StoreError> {
        let subscription = &change.subscription;
        let (current_period_end, trial_end) = subscription_times(subscription)?;
        let event_at = to_millis("event_at", change.event_at)?;
        let applied_at = to_millis("applied_at", SystemTime::now())?;
        // IMMEDIATE: take the write lock now, so that concurrent applications
        // queue on the busy timeout instead of failing to upgrade a read.
        let mut transaction = self
            .ready()
            .await?
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(driver_error)?;
        if let Some(event_id) = &change.event_id {
            let recorded = sqlx::query(RECORD_EVENT)
                .bind(event_id.as_str())
                .bind(applied_at)
                .execute(&mut *transaction)
                .await
                .map_err(driver_error)?;
            if recorded.rows_affected() == 0 {
                return Ok(ApplyOutcome::DuplicateEvent);
            }
        }
        let advanced = sqlx::query(ADVANCE_EVENT_TIME)
            .bind(subscription.organization_id.as_str())
            .bind(subscription.subscription_id.as_str())
            .bind(event_at)
            .execute(&mut *transaction)
            .await
            .map_err(driver_error)?;
        if advanced.rows_affected() == 0 {
            // Dropping the transaction rolls the event id back.
            return Ok(ApplyOutcome::Outdated);
        }
        sqlx::query(UPSERT)
            .bind(subscription.organization_id.as_str())
            .bind(subscription.subscription_id.as_str())
            .bind(subscription.status.as_str())
            .bind(subscription.plan.as_str())
            .bind(current_period_end)
            .bind(trial_end)
            .execute(&mut *transaction)
            .await
            .map_err(driver_error)?;
        transaction.commit().await.map_err(driver_error)?;
        Ok(ApplyOutcome::Applied)
    }

    async fn purge_event_ids(&self, before: SystemTime) -> Result<u64, StoreError> {
        let purged = sqlx::query(PURGE_EVENTS)
            .bind(to_millis("before", before)?)
            .execute(self.ready().await?)
            .await
            .map_err(driver_error)?;
        Ok(purged.rows_affected())
    }
}
