//! What the server keeps besides sessions and subscriptions:
//! conversations, their messages, files and widget settings.

use std::collections::HashMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower_saas_guard::session::{Session, SessionId};
use tower_saas_guard::{rfc3339_millis, unix_millis};

use super::input::new_id;
use super::problem::ApiError;

/// Everything the server keeps besides sessions and subscriptions.
#[derive(Default)]
pub(crate) struct Records {
    pub(crate) conversations: HashMap<String, Conversation>,
    pub(crate) files: HashMap<String, StoredFile>,
    /// Each organization's widget greeting, once an operator created it.
    pub(crate) greetings: HashMap<String, String>,
    /// Numbers conversations and files in creation order, for listings.
    pub(crate) next_sequence: u64,
}

impl Records {
    pub(crate) fn next_sequence(&mut self) -> u64 {
        self.next_sequence += 1;
        self.next_sequence
    }
}

/// The entries of `organization_id` (conversations, files), oldest first,
/// rendered by `to_json`; `owner` tells an entry's organization and
/// sequence number.
pub(crate) fn oldest_first<T>(
    entries: &HashMap<String, T>,
    organization_id: &str,
    owner: impl Fn(&T) -> (&String, u64),
    to_json: impl Fn(&T, &str) -> Value,
) -> Vec<Value> {
    let mut owned: Vec<(u64, &String, &T)> = entries
        .iter()
        .filter_map(|(id, entry)| {
            let (organization, sequence) = owner(entry);
            (organization == organization_id).then_some((sequence, id, entry))
        })
        .collect();
    owned.sort_by_key(|(sequence, _, _)| *sequence);
    owned
        .into_iter()
        .map(|(_, id, entry)| to_json(entry, id))
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Visitor {
    pub(crate) name: String,
    pub(crate) email: String,
}

pub(crate) struct Conversation {
    /// The session that started it: the only one of the visitors that may
    /// see it.
    pub(crate) session_id: SessionId,
    /// Its session's organization: the operators that may see it.
    pub(crate) organization_id: String,
    pub(crate) sequence: u64,
    pub(crate) status: Status,
    pub(crate) created_at: SystemTime,
    pub(crate) messages: Vec<Message>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// Every conversation starts here; the AI replies only while it is.
    Unresolved,
    /// A visitor message got no AI reply: an operator has to answer.
    Escalated,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// The visitor.
    User,
    /// The greeting and AI replies.
    Assistant,
    /// A person on the dashboard.
    Operator,
}

pub(crate) struct Message {
    pub(crate) id: String,
    pub(crate) role: Role,
    pub(crate) content: String,
    pub(crate) created_at: SystemTime,
}

impl Message {
    pub(crate) fn new(
        role: Role,
        content: String,
        created_at: SystemTime,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            id: new_id("msg")?,
            role,
            content,
            created_at,
        })
    }

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

impl Conversation {
    /// The conversation `id`, if it exists and belongs to `session`;
    /// anything else is the same 404, so ids of others leak nothing.
    pub(crate) fn of_session<'a>(
        conversations: &'a mut HashMap<String, Conversation>,
        id: &str,
        session: &Session,
    ) -> Result<&'a mut Conversation, ApiError> {
        conversations
            .get_mut(id)
            .filter(|conversation| conversation.session_id == session.id())
            .ok_or_else(|| ApiError::not_found(format!("No conversation `{id}`.")))
    }

    /// The conversation `id`, if it exists and belongs to `organization_id`;
    /// anything else is the same 404.
    pub(crate) fn of_organization<'a>(
        conversations: &'a mut HashMap<String, Conversation>,
        id: &str,
        organization_id: &str,
    ) -> Result<&'a mut Conversation, ApiError> {
        conversations
            .get_mut(id)
            .filter(|conversation| conversation.organization_id == organization_id)
            .ok_or_else(|| ApiError::not_found(format!("No conversation `{id}`.")))
    }

    pub(crate) fn summary_json(&self, id: &str) -> Value {
        json!({
            "conversation_id": id,
            "status": self.status,
            "created_at": rfc3339_millis(self.created_at),
            "created_at_ms": unix_millis(self.created_at),
        })
    }
}

/// An uploaded file (in a real server, the AI's knowledge base).
pub(crate) struct StoredFile {
    pub(crate) organization_id: String,
    pub(crate) sequence: u64,
    pub(crate) name: String,
    pub(crate) content: String,
    pub(crate) created_at: SystemTime,
}

impl StoredFile {
    pub(crate) fn to_json(&self, id: &str) -> Value {
        json!({
            "file_id": id,
            "name": self.name,
            "size_bytes": self.content.len(),
            "created_at": rfc3339_millis(self.created_at),
            "created_at_ms": unix_millis(self.created_at),
        })
    }
}
