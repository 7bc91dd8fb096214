//! Where the application's own data lives: conversations, their messages,
//! files and widget settings (sessions and subscriptions are the library's
//! stores, wired in `backends.rs`).
//!
//! One small trait, [`AppStore`], three implementations: [`memory`] (per
//! organization locks, lost on exit), [`sqlite`] (the same database file as
//! the sessions) and [`postgres`] (the same database as the sessions). Each
//! SQL backend creates its own `widget_*` tables at start-up with plain
//! idempotent DDL (`CREATE TABLE IF NOT EXISTS`), so it never touches the
//! library's migration bookkeeping (`_sqlx_migrations`).
//!
//! Every operation is scoped to an organization, and every listing is one
//! page in creation order, read with the database's index (or under one
//! organization's lock in memory): a busy tenant never stalls another.
//!
//! Counts a client could grow without end are capped ([`Limit`]): the
//! conversations of one session, the messages of one conversation and the
//! files of one organization. The check and the insert are one atomic step
//! in every backend (the organization's lock, SQLite's write lock, a
//! PostgreSQL row or advisory lock), so concurrent writes never overshoot.

pub(crate) mod memory;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{json, Value};
use tower_saas_guard::session::SessionId;
use tower_saas_guard::{rfc3339_millis, unix_millis, StoreError};

use super::pagination::{Listing, Page};

/// A count that reached its cap (`--max-*` flags): the write was refused
/// and nothing was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// One session started this many conversations.
    ConversationsPerSession(u32),
    /// One conversation holds this many messages (the greeting, the
    /// visitor's, the AI's and the operators').
    MessagesPerConversation(u32),
    /// One organization keeps this many files.
    FilesPerOrganization(u32),
}

impl Limit {
    /// A sentence for the problem's `detail`.
    pub(crate) fn detail(self) -> String {
        match self {
            Self::ConversationsPerSession(cap) => {
                format!("This session has started {cap} conversations, its limit.")
            }
            Self::MessagesPerConversation(cap) => {
                format!("This conversation holds its limit of {cap} messages.")
            }
            Self::FilesPerOrganization(cap) => {
                format!("This organization keeps its limit of {cap} files; delete one first.")
            }
        }
    }
}

/// The caps ([`Limit`]) every capped write is given (`--max-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    pub(crate) conversations_per_session: u32,
    pub(crate) messages_per_conversation: u32,
    pub(crate) files_per_organization: u32,
}

/// Why a capped write did not happen.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// A count is at its cap.
    Full(Limit),
    /// The store failed.
    Store(StoreError),
}

impl From<StoreError> for WriteError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// Whether `count` more items fit when `stored` are there and the cap is
/// `cap`.
pub(crate) fn fits(stored: i64, adding: i64, cap: u32) -> bool {
    stored.saturating_add(adding) <= i64::from(cap)
}

/// The application's data, behind one of the backends.
#[async_trait]
pub(crate) trait AppStore: Send + Sync + 'static {
    /// The organization's widget greeting, once an operator set one.
    async fn greeting(&self, organization_id: &str) -> Result<Option<String>, StoreError>;

    /// Sets the organization's greeting. When none exists yet it is created
    /// only if `may_create`; returns `Some(created)`, or `None` when nothing
    /// existed and creating was not allowed.
    async fn put_greeting(
        &self,
        organization_id: &str,
        greeting: &str,
        may_create: bool,
    ) -> Result<Option<bool>, StoreError>;

    /// Saves a new conversation with its first message, unless its session
    /// already started `cap` conversations.
    async fn create_conversation(
        &self,
        conversation: &Conversation,
        first: &Message,
        cap: u32,
    ) -> Result<(), WriteError>;

    /// The conversation `id` of `organization_id`, if there is one.
    async fn conversation(
        &self,
        organization_id: &str,
        id: &str,
    ) -> Result<Option<Conversation>, StoreError>;

    /// One page of the organization's conversations, oldest first.
    async fn conversations(
        &self,
        organization_id: &str,
        page: Page,
    ) -> Result<Listing<Conversation>, StoreError>;

    /// One page of a conversation's messages, oldest first.
    async fn messages(
        &self,
        organization_id: &str,
        conversation_id: &str,
        page: Page,
    ) -> Result<Listing<Message>, StoreError>;

    /// Appends a visitor's `message`, atomically with the decision it
    /// implies: while the conversation is `unresolved`, `ai_reply` (when
    /// given) is appended after it; otherwise the conversation becomes
    /// `escalated`. Returns the status after, and whether the reply was
    /// appended; `None` when the conversation does not exist. Nothing
    /// changes when what would be appended does not fit under `cap`
    /// messages.
    async fn add_visitor_message(
        &self,
        organization_id: &str,
        conversation_id: &str,
        message: &Message,
        ai_reply: Option<&Message>,
        cap: u32,
    ) -> Result<Option<(Status, bool)>, WriteError>;

    /// Appends an operator's `message` if the conversation holds fewer than
    /// `cap`; the status stays as it is and is returned. `None` when the
    /// conversation does not exist.
    async fn add_operator_message(
        &self,
        organization_id: &str,
        conversation_id: &str,
        message: &Message,
        cap: u32,
    ) -> Result<Option<Status>, WriteError>;

    /// Saves an uploaded file, unless the organization keeps `cap` already.
    async fn create_file(&self, file: &NewFile, cap: u32) -> Result<(), WriteError>;

    /// One page of the organization's files (without their content),
    /// oldest first.
    async fn files(
        &self,
        organization_id: &str,
        page: Page,
    ) -> Result<Listing<StoredFile>, StoreError>;

    /// Deletes the organization's file `id`; returns whether it existed.
    async fn delete_file(&self, organization_id: &str, id: &str) -> Result<bool, StoreError>;
}

/// A conversation between one visitor session and its organization.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conversation {
    pub(crate) id: String,
    /// Its session's organization: the operators that may see it.
    pub(crate) organization_id: String,
    /// The session that started it: the only visitor that may see it.
    pub(crate) session_id: SessionId,
    pub(crate) status: Status,
    pub(crate) created_at: SystemTime,
}

impl Conversation {
    pub(crate) fn summary_json(&self) -> Value {
        json!({
            "conversation_id": self.id,
            "status": self.status,
            "created_at": rfc3339_millis(self.created_at),
            "created_at_ms": unix_millis(self.created_at),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// Every conversation starts here; the AI replies only while it is.
    Unresolved,
    /// A visitor message got no AI reply: an operator has to answer.
    Escalated,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Unresolved => "unresolved",
            Self::Escalated => "escalated",
        }
    }
}

impl FromStr for Status {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "unresolved" => Ok(Self::Unresolved),
            "escalated" => Ok(Self::Escalated),
            other => Err(malformed(format!("unknown conversation status `{other}`"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// The visitor.
    User,
    /// The greeting and AI replies.
    Assistant,
    /// A person on the dashboard.
    Operator,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Operator => "operator",
        }
    }
}

impl FromStr for Role {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "user" => Ok(Self::User),
            "assistant" => Ok(Self::Assistant),
            "operator" => Ok(Self::Operator),
            other => Err(malformed(format!("unknown message role `{other}`"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub(crate) id: String,
    pub(crate) role: Role,
    pub(crate) content: String,
    pub(crate) created_at: SystemTime,
}

impl Message {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "message_id": self.id,
            "role": self.role,
            "content": self.content,
            "created_at": rfc3339_millis(self.created_at),
            "created_at_ms": unix_millis(self.created_at),
        })
    }
}

/// An uploaded file (in a real server, the AI's knowledge base).
#[derive(Debug, Clone)]
pub(crate) struct NewFile {
    pub(crate) id: String,
    pub(crate) organization_id: String,
    pub(crate) name: String,
    pub(crate) content: String,
    pub(crate) created_at: SystemTime,
}

impl NewFile {
    /// What a listing shows of it.
    pub(crate) fn summary(&self) -> StoredFile {
        StoredFile {
            id: self.id.clone(),
            name: self.name.clone(),
            size_bytes: self.content.len() as u64,
            created_at: self.created_at,
        }
    }
}

/// A file as listings show it: no content.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredFile {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) size_bytes: u64,
    pub(crate) created_at: SystemTime,
}

impl StoredFile {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "file_id": self.id,
            "name": self.name,
            "size_bytes": self.size_bytes,
            "created_at": rfc3339_millis(self.created_at),
            "created_at_ms": unix_millis(self.created_at),
        })
    }
}

/// A row that does not decode: an error, never a panic.
#[derive(Debug, thiserror::Error)]
#[error("malformed row: {0}")]
pub(crate) struct MalformedRow(String);

pub(crate) fn malformed(detail: String) -> StoreError {
    StoreError::serialization(MalformedRow(detail))
}

/// A time as the SQL backends store it: integer Unix milliseconds.
pub(crate) fn to_millis(at: SystemTime) -> i64 {
    i64::try_from(unix_millis(at)).unwrap_or(i64::MAX)
}

/// The time stored as `millis`; negative is a malformed row.
pub(crate) fn from_millis(millis: i64) -> Result<SystemTime, StoreError> {
    u64::try_from(millis)
        .ok()
        .and_then(|millis| UNIX_EPOCH.checked_add(Duration::from_millis(millis)))
        .ok_or_else(|| malformed(format!("timestamp {millis} ms is out of range")))
}

/// A session id stored as 32 bytes.
pub(crate) fn session_id_from_bytes(bytes: &[u8]) -> Result<SessionId, StoreError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| malformed(format!("a session id of {} bytes", bytes.len())))?;
    Ok(SessionId::from_bytes(bytes))
}
