//! Subscriptions in PostgreSQL.

use async_trait::async_trait;
use sqlx::PgPool;

use super::{connect_pool, run_migrations};
use crate::error::StoreError;
use crate::stores::sql::{
    driver_error, subscription_from_row, subscription_times, MigrationGate, SubscriptionRow,
};
use crate::subscription::{Subscription, SubscriptionStore};

const SUBSCRIPTIONS: &str = "SELECT organization_id, subscription_id, status, plan, \
     current_period_end, trial_end FROM tower_saas_guard_subscriptions \
     WHERE organization_id = $1 ORDER BY subscription_id";
const UPSERT: &str = "INSERT INTO tower_saas_guard_subscriptions \
     (organization_id, subscription_id, status, plan, current_period_end, trial_end) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (organization_id, subscription_id) DO UPDATE SET status = excluded.status, \
     plan = excluded.plan, current_period_end = excluded.current_period_end, \
     trial_end = excluded.trial_end";

/// Subscriptions in a PostgreSQL database (the table
/// `tower_saas_guard_subscriptions`), upserted by (organization,
/// subscription id).
///
/// Cheap to clone: clones share the pool and the run-once migrations.
/// It can share a pool with a
/// [`PostgresSessionStore`](super::PostgresSessionStore).
#[derive(Debug, Clone)]
pub struct PostgresSubscriptionStore {
    pool: PgPool,
    migrations: MigrationGate,
}

impl PostgresSubscriptionStore {
    /// A store over `pool`; the migrations run on first use.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            migrations: MigrationGate::new(),
        }
    }

    /// Connects to the database at `url` (`postgres://user@host/database`)
    /// with sqlx's pool defaults.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::new(connect_pool(url).await?))
    }

    /// Never runs the migrations automatically: for a schema you apply
    /// with your own migration tool (the files of `migrations/postgres/`).
    #[must_use]
    pub fn skip_migrations(self) -> Self {
        Self {
            migrations: self.migrations.skipped(),
            ..self
        }
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the pending migrations now (whether or not they were
    /// skipped); later uses do not run them again.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        run_migrations(&self.pool).await?;
        self.migrations.mark_done();
        Ok(())
    }

    async fn ready(&self) -> Result<&PgPool, StoreError> {
        let pool = self.pool.clone();
        self.migrations
            .before_use(|| async move { run_migrations(&pool).await })
            .await?;
        Ok(&self.pool)
    }
}

#[async_trait]
impl SubscriptionStore for PostgresSubscriptionStore {
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
}
