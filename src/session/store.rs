//! The session store trait and the in-memory store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use serde_json::Value;

use super::token::SessionId;
use crate::error::StoreError;

/// A session as a store keeps it.
///
/// Holds the hash of the token (`id`), never the token itself. `Debug`
/// leaves the payload out (it often holds personal data).
#[derive(Clone, PartialEq)]
pub struct SessionRecord {
    /// SHA-256 of the session token.
    pub id: SessionId,
    /// The organization the session belongs to, if any.
    pub organization_id: Option<String>,
    /// When the session was created (whole milliseconds).
    pub created_at: SystemTime,
    /// When the session expires unless renewed (whole milliseconds).
    pub expires_at: SystemTime,
    /// The application's payload (for example a visitor's name and e-mail).
    pub payload: Value,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("id", &self.id)
            .field("organization_id", &self.organization_id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("payload", &"<redacted>")
            .finish()
    }
}

/// Where sessions live: implement this to put them in your own database.
///
/// Object safe: layers hold an `Arc<dyn SessionStore>`. Every operation is
/// keyed by [`SessionId`], the SHA-256 of the token. The crate's stores all
/// pass the same conformance tests.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts a new record. Ids come from 256 random bits, so a collision
    /// is not a case to handle; a store may overwrite.
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError>;

    /// Loads a record, expired or not; `None` when there is none.
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError>;

    /// Moves the record's `expires_at` to `expires_at` **only if that is
    /// later** than the stored value **and** the record is still alive at
    /// `now` (stored `expires_at > now`), atomically; returns the stored
    /// value afterwards (`None` when the record does not exist). Never moves
    /// it backwards and never revives an expired session, whatever the
    /// interleaving of concurrent calls.
    async fn extend(
        &self,
        id: &SessionId,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError>;

    /// Deletes a record; returns whether one existed.
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError>;

    /// Deletes every record of `organization_id`; returns how many.
    async fn delete_by_organization(&self, organization_id: &str) -> Result<u64, StoreError>;

    /// Deletes records whose `expires_at` is before `before`; returns how many.
    async fn purge_expired(&self, before: SystemTime) -> Result<u64, StoreError>;
}

#[async_trait]
impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        (**self).create(record).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        (**self).load(id).await
    }
    async fn extend(
        &self,
        id: &SessionId,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        (**self).extend(id, expires_at, now).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        (**self).delete(id).await
    }
    async fn delete_by_organization(&self, organization_id: &str) -> Result<u64, StoreError> {
        (**self).delete_by_organization(organization_id).await
    }
    async fn purge_expired(&self, before: SystemTime) -> Result<u64, StoreError> {
        (**self).purge_expired(before).await
    }
}

/// An in-process session store: for tests and single-process services.
///
/// Clones share the same records. Nothing survives a restart.
#[derive(Debug, Clone, Default)]
pub struct MemorySessionStore {
    records: Arc<Mutex<HashMap<SessionId, SessionRecord>>>,
}

impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records the store holds (expired ones included).
    pub fn len(&self) -> usize {
        self.records().len()
    }

    /// Whether the store holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, SessionRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.records().insert(record.id, record.clone());
        Ok(())
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.records().get(id).cloned())
    }

    async fn extend(
        &self,
        id: &SessionId,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        Ok(self.records().get_mut(id).map(|record| {
            if expires_at > record.expires_at && record.expires_at > now {
                record.expires_at = expires_at;
            }
            record.expires_at
        }))
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        Ok(self.records().remove(id).is_some())
    }

    async fn delete_by_organization(&self, organization_id: &str) -> Result<u64, StoreError> {
        let mut records = self.records();
        let before = records.len();
        records.retain(|_, record| record.organization_id.as_deref() != Some(organization_id));
        Ok((before - records.len()) as u64)
    }

    async fn purge_expired(&self, before: SystemTime) -> Result<u64, StoreError> {
        let mut records = self.records();
        let count = records.len();
        records.retain(|_, record| record.expires_at >= before);
        Ok((count - records.len()) as u64)
    }
}
