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
    /// The user or visitor the session belongs to, if the application
    /// names one (for "your devices" and "log out everywhere").
    pub subject: Option<String>,
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
            .field("subject", &self.subject)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("payload", &"<redacted>")
            .finish()
    }
}

/// Whose sessions a listing or a bulk revocation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOwner<'a> {
    /// Every session of an organization ("who is online").
    Organization(&'a str),
    /// Every session of a subject ("your devices", "log out everywhere").
    Subject(&'a str),
}

impl SessionOwner<'_> {
    /// Whether `record` belongs to this owner.
    pub fn owns(&self, record: &SessionRecord) -> bool {
        self.owns_session(record.organization_id.as_deref(), record.subject.as_deref())
    }

    /// Whether a session of `organization_id` and `subject` belongs to
    /// this owner.
    pub(crate) fn owns_session(
        &self,
        organization_id: Option<&str>,
        subject: Option<&str>,
    ) -> bool {
        match *self {
            Self::Organization(organization) => organization_id == Some(organization),
            Self::Subject(wanted) => subject == Some(wanted),
        }
    }
}

/// Where a page of a session listing starts: strictly after this
/// (`created_at`, `id`) in the listing's order (oldest first, ties by id).
///
/// Its text form ([`Display`](std::fmt::Display), [`FromStr`](std::str::FromStr))
/// is opaque to clients: hand it out as a `next_cursor` and take it back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionCursor {
    /// `created_at` of the last session of the previous page.
    pub created_at: SystemTime,
    /// Its id.
    pub id: SessionId,
}

impl SessionCursor {
    /// The cursor that continues after `record`.
    pub fn after(record: &SessionRecord) -> Self {
        Self {
            created_at: record.created_at,
            id: record.id,
        }
    }

    /// Whether `record` comes after this cursor in listing order.
    pub fn precedes(&self, record: &SessionRecord) -> bool {
        (record.created_at, record.id) > (self.created_at, self.id)
    }
}

impl std::fmt::Debug for SessionCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionCursor({self})")
    }
}

impl std::fmt::Display for SessionCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}",
            crate::clock::unix_millis(self.created_at),
            self.id
        )
    }
}

/// A listing cursor that is not one this crate handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid session cursor: pass back the `next_cursor` of the previous page unchanged")]
pub struct InvalidCursor;

impl std::str::FromStr for SessionCursor {
    type Err = InvalidCursor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (millis, id) = text.split_once('.').ok_or(InvalidCursor)?;
        if millis.is_empty() || !millis.bytes().all(|digit| digit.is_ascii_digit()) {
            return Err(InvalidCursor);
        }
        // Stores keep times as signed 64-bit milliseconds.
        let millis: u64 = millis
            .parse()
            .ok()
            .filter(|millis| i64::try_from(*millis).is_ok())
            .ok_or(InvalidCursor)?;
        let created_at = SystemTime::UNIX_EPOCH
            .checked_add(std::time::Duration::from_millis(millis))
            .ok_or(InvalidCursor)?;
        let id = SessionId::from_hex(id).ok_or(InvalidCursor)?;
        Ok(Self { created_at, id })
    }
}

/// Which page of a listing to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Continue after this cursor; `None` for the first page.
    pub after: Option<SessionCursor>,
    /// At most this many sessions (at least 1).
    pub limit: u32,
}

impl PageRequest {
    /// The first page, of at most `limit` sessions (a zero limit counts as 1).
    pub fn first(limit: u32) -> Self {
        Self {
            after: None,
            limit: limit.max(1),
        }
    }

    /// The page after `cursor`, of at most `limit` sessions.
    pub fn after(cursor: SessionCursor, limit: u32) -> Self {
        Self {
            after: Some(cursor),
            limit: limit.max(1),
        }
    }
}

/// One page of a session listing.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionPage {
    /// Live sessions, oldest first (ties by id).
    pub sessions: Vec<SessionRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<SessionCursor>,
}

impl SessionPage {
    /// The page made of the first `limit` of `sorted` (which may hold one
    /// more, to tell whether another page follows). For stores that read
    /// `limit + 1` rows.
    pub fn from_sorted(mut sorted: Vec<SessionRecord>, limit: u32) -> Self {
        let limit = limit.max(1) as usize;
        let next = if sorted.len() > limit {
            sorted.truncate(limit);
            sorted.last().map(SessionCursor::after)
        } else {
            None
        };
        Self {
            sessions: sorted,
            next,
        }
    }
}

/// Where sessions live: implement this to put them in your own database.
///
/// Object safe: layers hold an `Arc<dyn SessionStore>`. Every operation is
/// keyed by [`SessionId`], the SHA-256 of the token.
///
/// # Write your own store
///
/// The trait is declared with [`async_trait`](crate::async_trait), so an
/// `impl` needs the same attribute, re-exported as
/// `tower_saas_guard::async_trait` (without it, plain `async fn`s fail with
/// E0195, "lifetime parameters do not match the trait declaration").
/// Map your driver's errors with [`StoreError::backend`] (and
/// [`StoreError::serialization`] for a record that does not decode): the
/// layer answers them `store_unavailable`, never a panic. The one subtle
/// operation is [`extend`](Self::extend): it must be a single conditional
/// update in your database (`UPDATE … SET expires_at = $2 WHERE id = $1 AND
/// expires_at < $2 AND expires_at > $3 RETURNING expires_at`, or a script),
/// never a read followed by a write, because several instances renew at
/// once. Then run the conformance suite every store of this crate passes
/// (`test_kit::session_store_suite`, feature `test-kit`) against yours.
///
/// A complete store, here over a `HashMap` behind a mutex where yours would
/// call its database:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::SystemTime;
///
/// use tower_saas_guard::async_trait;
/// use tower_saas_guard::session::{
///     PageRequest, SessionId, SessionOwner, SessionPage, SessionRecord, SessionStore,
/// };
/// use tower_saas_guard::StoreError;
///
/// #[derive(Default)]
/// struct MyStore {
///     rows: Mutex<HashMap<SessionId, SessionRecord>>,
/// }
///
/// impl MyStore {
///     // Where a database store maps its driver's error.
///     fn rows(&self) -> Result<std::sync::MutexGuard<'_, HashMap<SessionId, SessionRecord>>, StoreError> {
///         self.rows
///             .lock()
///             .map_err(|_| StoreError::backend(std::io::Error::other("lock poisoned")))
///     }
/// }
///
/// #[async_trait]
/// impl SessionStore for MyStore {
///     async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
///         self.rows()?.insert(record.id, record.clone());
///         Ok(())
///     }
///
///     async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
///         Ok(self.rows()?.get(id).cloned())
///     }
///
///     async fn extend(
///         &self,
///         id: &SessionId,
///         expires_at: SystemTime,
///         now: SystemTime,
///     ) -> Result<Option<SystemTime>, StoreError> {
///         // One atomic step: later only, and never for an expired record.
///         Ok(self.rows()?.get_mut(id).map(|record| {
///             if expires_at > record.expires_at && record.expires_at > now {
///                 record.expires_at = expires_at;
///             }
///             record.expires_at
///         }))
///     }
///
///     async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
///         Ok(self.rows()?.remove(id).is_some())
///     }
///
///     async fn delete_all(&self, owner: SessionOwner<'_>) -> Result<Vec<SessionId>, StoreError> {
///         let mut rows = self.rows()?;
///         let ids: Vec<SessionId> = rows
///             .values()
///             .filter(|record| owner.owns(record))
///             .map(|record| record.id)
///             .collect();
///         for id in &ids {
///             rows.remove(id);
///         }
///         Ok(ids)
///     }
///
///     async fn list(
///         &self,
///         owner: SessionOwner<'_>,
///         now: SystemTime,
///         page: PageRequest,
///     ) -> Result<SessionPage, StoreError> {
///         let mut live: Vec<SessionRecord> = self
///             .rows()?
///             .values()
///             .filter(|record| owner.owns(record) && record.expires_at > now)
///             .filter(|record| page.after.as_ref().is_none_or(|after| after.precedes(record)))
///             .cloned()
///             .collect();
///         live.sort_by(|a, b| (a.created_at, a.id).cmp(&(b.created_at, b.id)));
///         live.truncate(page.limit as usize + 1);
///         Ok(SessionPage::from_sorted(live, page.limit))
///     }
///
///     async fn purge_expired(&self, before: SystemTime) -> Result<u64, StoreError> {
///         let mut rows = self.rows()?;
///         let count = rows.len();
///         rows.retain(|_, record| record.expires_at >= before);
///         Ok((count - rows.len()) as u64)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let sessions = tower_saas_guard::session::SessionRefreshLayer::new(MyStore::default());
/// let created = sessions.handle().create(Some("org_1"), ()).await.expect("stored");
/// assert!(sessions.handle().get(&created.token).await.expect("loaded").is_some());
/// # }
/// ```
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

    /// Deletes every record of `owner` (expired ones too) through the
    /// store's index of organizations or subjects; returns their ids.
    async fn delete_all(&self, owner: SessionOwner<'_>) -> Result<Vec<SessionId>, StoreError>;

    /// The sessions of `owner` still alive at `now` (`expires_at > now`),
    /// oldest first (by `created_at`, ties by id), strictly after
    /// `page.after`, at most `page.limit` of them; `next` is set when more
    /// follow.
    async fn list(
        &self,
        owner: SessionOwner<'_>,
        now: SystemTime,
        page: PageRequest,
    ) -> Result<SessionPage, StoreError>;

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
    async fn delete_all(&self, owner: SessionOwner<'_>) -> Result<Vec<SessionId>, StoreError> {
        (**self).delete_all(owner).await
    }
    async fn list(
        &self,
        owner: SessionOwner<'_>,
        now: SystemTime,
        page: PageRequest,
    ) -> Result<SessionPage, StoreError> {
        (**self).list(owner, now, page).await
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

    async fn delete_all(&self, owner: SessionOwner<'_>) -> Result<Vec<SessionId>, StoreError> {
        let mut records = self.records();
        let mut deleted = Vec::new();
        records.retain(|id, record| {
            let owned = owner.owns(record);
            if owned {
                deleted.push(*id);
            }
            !owned
        });
        Ok(deleted)
    }

    async fn list(
        &self,
        owner: SessionOwner<'_>,
        now: SystemTime,
        page: PageRequest,
    ) -> Result<SessionPage, StoreError> {
        let mut live: Vec<SessionRecord> = self
            .records()
            .values()
            .filter(|record| owner.owns(record) && record.expires_at > now)
            .filter(|record| page.after.is_none_or(|cursor| cursor.precedes(record)))
            .cloned()
            .collect();
        live.sort_by_key(|record| (record.created_at, record.id));
        live.truncate(page.limit.max(1) as usize + 1);
        Ok(SessionPage::from_sorted(live, page.limit))
    }

    async fn purge_expired(&self, before: SystemTime) -> Result<u64, StoreError> {
        let mut records = self.records();
        let count = records.len();
        records.retain(|_, record| record.expires_at >= before);
        Ok((count - records.len()) as u64)
    }
}
