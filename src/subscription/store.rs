//! The subscription store trait and the in-memory store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;

use super::change::{ApplyOutcome, SubscriptionChange};
use super::model::Subscription;
use crate::clock::unix_millis;
use crate::error::StoreError;

/// Where subscriptions live: implement this over your billing tables.
///
/// Object safe: layers hold an `Arc<dyn SubscriptionStore>`.
///
/// # Applying billing events
///
/// Billing providers deliver events at least once, in no guaranteed order,
/// and retry for days. [`apply`](Self::apply) therefore stores a
/// [`SubscriptionChange`] only if
///
/// * its `event_at` is **not earlier** than the event time of the last
///   change applied to the same (`organization_id`, `subscription_id`), in
///   whole milliseconds (an older one answers
///   [`Outdated`](ApplyOutcome::Outdated)). Equal times apply, the later
///   delivery winning: providers stamp events in whole seconds (Stripe's
///   `created`, the simplified webhook's `t`), and two genuine changes in
///   the same second (`customer.subscription.created` then `.updated`) are
///   common; refusing the second would lose it. Exact re-deliveries are
///   caught by the event id;
/// * its `event_id`, when it has one, was never applied before (keyed by
///   the id alone: provider event ids are globally unique), else
///   [`DuplicateEvent`](ApplyOutcome::DuplicateEvent);
///
/// **atomically**: the checks and the write are one conditional statement
/// (or one transaction whose statements carry the conditions), so two
/// instances applying concurrently can never let an older change win. The
/// store keeps the last applied event time per subscription and the applied
/// event ids with the time they were applied, so this holds across
/// restarts and instances; [`purge_event_ids`](Self::purge_event_ids)
/// forgets ids applied before a cut-off (keep them at least as long as the
/// provider retries: [`EVENT_ID_RETENTION`](super::EVENT_ID_RETENTION)).
#[async_trait]
pub trait SubscriptionStore: Send + Sync + 'static {
    /// All subscriptions of `organization_id`, in any order (the decision
    /// does not depend on it); empty when it has none.
    async fn subscriptions(&self, organization_id: &str) -> Result<Vec<Subscription>, StoreError>;

    /// Inserts or replaces the subscription keyed by
    /// (`organization_id`, `subscription_id`) **unconditionally**, for
    /// seeding and administration: it neither checks nor changes the last
    /// applied event time or the applied event ids. Billing events go
    /// through [`apply`](Self::apply).
    async fn upsert(&self, subscription: &Subscription) -> Result<(), StoreError>;

    /// Stores `change` if it is not older than the last change applied to
    /// the same subscription and its event id was never applied, atomically
    /// (see [the trait docs](Self)); answers what it did. When it is not
    /// applied, nothing changes.
    async fn apply(&self, change: &SubscriptionChange) -> Result<ApplyOutcome, StoreError>;

    /// Forgets the event ids applied before `before`; returns how many.
    /// Last applied event times are kept (they are one per subscription).
    async fn purge_event_ids(&self, before: SystemTime) -> Result<u64, StoreError>;
}

#[async_trait]
impl<T: SubscriptionStore + ?Sized> SubscriptionStore for Arc<T> {
    async fn subscriptions(&self, organization_id: &str) -> Result<Vec<Subscription>, StoreError> {
        (**self).subscriptions(organization_id).await
    }

    async fn upsert(&self, subscription: &Subscription) -> Result<(), StoreError> {
        (**self).upsert(subscription).await
    }

    async fn apply(&self, change: &SubscriptionChange) -> Result<ApplyOutcome, StoreError> {
        (**self).apply(change).await
    }

    async fn purge_event_ids(&self, before: SystemTime) -> Result<u64, StoreError> {
        (**self).purge_event_ids(before).await
    }
}

/// An in-process subscription store: for tests and single-process services.
///
/// Clones share the same data. [`apply`](SubscriptionStore::apply) checks
/// and writes under one lock.
#[derive(Debug, Clone, Default)]
pub struct MemorySubscriptionStore {
    state: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    organizations: HashMap<String, Vec<Subscription>>,
    /// Last applied event time (Unix ms) per (organization, subscription).
    event_times: HashMap<(String, String), u64>,
    /// Applied event ids, with when they were applied (Unix ms).
    event_ids: HashMap<String, u64>,
}

impl MemoryState {
    fn upsert(&mut self, subscription: &Subscription) {
        let subscriptions = self
            .organizations
            .entry(subscription.organization_id.clone())
            .or_default();
        match subscriptions
            .iter_mut()
            .find(|existing| existing.subscription_id == subscription.subscription_id)
        {
            Some(existing) => *existing = subscription.clone(),
            None => subscriptions.push(subscription.clone()),
        }
    }
}

impl MemorySubscriptionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl SubscriptionStore for MemorySubscriptionStore {
    async fn subscriptions(&self, organization_id: &str) -> Result<Vec<Subscription>, StoreError> {
        Ok(self
            .state()
            .organizations
            .get(organization_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn upsert(&self, subscription: &Subscription) -> Result<(), StoreError> {
        self.state().upsert(subscription);
        Ok(())
    }

    async fn apply(&self, change: &SubscriptionChange) -> Result<ApplyOutcome, StoreError> {
        let subscription = &change.subscription;
        let event_at = unix_millis(change.event_at);
        let key = (
            subscription.organization_id.clone(),
            subscription.subscription_id.clone(),
        );
        let mut state = self.state();
        if let Some(event_id) = &change.event_id {
            if state.event_ids.contains_key(event_id) {
                return Ok(ApplyOutcome::DuplicateEvent);
            }
        }
        if state
            .event_times
            .get(&key)
            .is_some_and(|&last| last > event_at)
        {
            return Ok(ApplyOutcome::Outdated);
        }
        if let Some(event_id) = &change.event_id {
            state
                .event_ids
                .insert(event_id.clone(), unix_millis(SystemTime::now()));
        }
        state.event_times.insert(key, event_at);
        state.upsert(subscription);
        Ok(ApplyOutcome::Applied)
    }

    async fn purge_event_ids(&self, before: SystemTime) -> Result<u64, StoreError> {
        let before = unix_millis(before);
        let mut state = self.state();
        let count = state.event_ids.len();
        state
            .event_ids
            .retain(|_, applied_at| *applied_at >= before);
        Ok((count - state.event_ids.len()) as u64)
    }
}
