//! The subscription store trait and the in-memory store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::model::Subscription;
use crate::error::StoreError;

/// Where subscriptions live: implement this over your billing tables.
///
/// Object safe: layers hold an `Arc<dyn SubscriptionStore>`.
#[async_trait]
pub trait SubscriptionStore: Send + Sync + 'static {
    /// All subscriptions of `organization_id`, in any order (the decision
    /// does not depend on it); empty when it has none.
    async fn subscriptions(&self, organization_id: &str) -> Result<Vec<Subscription>, StoreError>;

    /// Inserts or replaces the subscription keyed by
    /// (`organization_id`, `subscription_id`).
    async fn upsert(&self, subscription: &Subscription) -> Result<(), StoreError>;
}

#[async_trait]
impl<T: SubscriptionStore + ?Sized> SubscriptionStore for Arc<T> {
    async fn subscriptions(&self, organization_id: &str) -> Result<Vec<Subscription>, StoreError> {
        (**self).subscriptions(organization_id).await
    }

    async fn upsert(&self, subscription: &Subscription) -> Result<(), StoreError> {
        (**self).upsert(subscription).await
    }
}

/// An in-process subscription store: for tests and single-process services.
///
/// Clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct MemorySubscriptionStore {
    organizations: Arc<Mutex<HashMap<String, Vec<Subscription>>>>,
}

impl MemorySubscriptionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SubscriptionStore for MemorySubscriptionStore {
    async fn subscriptions(&self, organization_id: &str) -> Result<Vec<Subscription>, StoreError> {
        Ok(self
            .organizations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(organization_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn upsert(&self, subscription: &Subscription) -> Result<(), StoreError> {
        let mut organizations = self
            .organizations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let subscriptions = organizations
            .entry(subscription.organization_id.clone())
            .or_default();
        match subscriptions
            .iter_mut()
            .find(|existing| existing.subscription_id == subscription.subscription_id)
        {
            Some(existing) => *existing = subscription.clone(),
            None => subscriptions.push(subscription.clone()),
        }
        Ok(())
    }
}
