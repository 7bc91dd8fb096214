//! Where the store keeps what: the key layout under one hash tag.

use std::sync::Arc;

use crate::session::{SessionId, SessionOwner};

/// The key names of one store.
///
/// Every key starts with the configured prefix wrapped in braces (a Redis
/// Cluster hash tag), so all keys of one store hash to one slot and each
/// script and transaction touches keys of a single slot:
///
/// | key | type | holds |
/// |---|---|---|
/// | `{prefix}session:<id hex>` | hash | the record; expires at `expires_at` + retention |
/// | `{prefix}org:<organization>` | sorted set | the organization's session ids, scored by `created_at` (ms) |
/// | `{prefix}subject:<subject>` | sorted set | the subject's session ids, likewise |
/// | `{prefix}expiry` | sorted set | every session id, scored by `expires_at` (ms), for the purge |
/// | `{prefix}indexes` | hash | session id → JSON list of the index keys it is in |
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// `{prefix}`.
    tag: Arc<str>,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            tag: format!("{{{prefix}}}").into(),
        }
    }

    /// The prefix the keys of one store start with (`{prefix}`).
    pub(super) fn tag(&self) -> &str {
        &self.tag
    }

    /// The prefix of session hashes; the id's hex follows.
    pub(super) fn session_prefix(&self) -> String {
        format!("{}session:", self.tag)
    }

    pub(super) fn session(&self, id: &SessionId) -> String {
        format!("{}session:{id}", self.tag)
    }

    pub(super) fn owner(&self, owner: SessionOwner<'_>) -> String {
        match owner {
            SessionOwner::Organization(organization) => format!("{}org:{organization}", self.tag),
            SessionOwner::Subject(subject) => format!("{}subject:{subject}", self.tag),
        }
    }

    pub(super) fn expiry(&self) -> String {
        format!("{}expiry", self.tag)
    }

    pub(super) fn registry(&self) -> String {
        format!("{}indexes", self.tag)
    }
}
