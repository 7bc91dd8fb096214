//! `--store memory`: everything in this process, lost on exit.
//!
//! Each organization has its own lock; the map of organizations is locked
//! only to find (or add) one. A listing reads one page from an ordered map
//! under its organization's lock, so a tenant with many conversations
//! never stalls another's requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tower_saas_guard::session::SessionId;
use tower_saas_guard::StoreError;

use super::{
    fits, AppStore, Conversation, Limit, Listing, Message, NewFile, Page, Status, StoredFile,
    WriteError,
};

/// The application's data in memory.
#[derive(Debug, Default)]
pub(crate) struct MemoryAppStore {
    tenants: Mutex<HashMap<String, Arc<Mutex<Tenant>>>>,
}

/// One organization's data.
#[derive(Debug, Default)]
struct Tenant {
    greeting: Option<String>,
    /// Conversations by position (creation order, from 1).
    conversations: BTreeMap<i64, Thread>,
    conversation_positions: HashMap<String, i64>,
    /// How many conversations each session started (for the cap).
    conversations_by_session: HashMap<SessionId, u32>,
    /// Files by position (creation order, from 1).
    files: BTreeMap<i64, NewFile>,
    file_positions: HashMap<String, i64>,
    last_position: i64,
}

/// A conversation and its messages (a message's position is its index + 1).
#[derive(Debug)]
struct Thread {
    conversation: Conversation,
    messages: Vec<Message>,
}

impl Tenant {
    fn next_position(&mut self) -> i64 {
        self.last_position += 1;
        self.last_position
    }

    fn thread(&mut self, id: &str) -> Option<&mut Thread> {
        let position = self.conversation_positions.get(id)?;
        self.conversations.get_mut(position)
    }
}

impl MemoryAppStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn tenants(&self) -> MutexGuard<'_, HashMap<String, Arc<Mutex<Tenant>>>> {
        self.tenants
            .lock()
            .expect("no code panics while holding the tenants lock")
    }

    /// The organization's data, added if it has none yet (for writes).
    fn tenant(&self, organization_id: &str) -> Arc<Mutex<Tenant>> {
        let mut tenants = self.tenants();
        match tenants.get(organization_id) {
            Some(tenant) => Arc::clone(tenant),
            None => Arc::clone(tenants.entry(organization_id.to_owned()).or_default()),
        }
    }

    /// The organization's data, if it has any (for reads: reading an
    /// unknown organization adds nothing).
    fn existing(&self, organization_id: &str) -> Option<Arc<Mutex<Tenant>>> {
        self.tenants().get(organization_id).map(Arc::clone)
    }
}

fn lock(tenant: &Mutex<Tenant>) -> MutexGuard<'_, Tenant> {
    tenant
        .lock()
        .expect("no code panics while holding a tenant's lock")
}

/// The page of `entries` (ordered by position) after `page.after`.
fn page_of<T, U>(entries: &BTreeMap<i64, T>, page: Page, item: impl Fn(&T) -> U) -> Listing<U> {
    let rows = entries
        .range(page.after_position() + 1..)
        .take(page.fetch())
        .map(|(position, entry)| (*position, item(entry)))
        .collect();
    page.listing(rows)
}

#[async_trait]
impl AppStore for MemoryAppStore {
    async fn greeting(&self, organization_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .existing(organization_id)
            .and_then(|tenant| lock(&tenant).greeting.clone()))
    }

    async fn put_greeting(
        &self,
        organization_id: &str,
        greeting: &str,
        may_create: bool,
    ) -> Result<Option<bool>, StoreError> {
        let tenant = if may_create {
            self.tenant(organization_id)
        } else {
            match self.existing(organization_id) {
                Some(tenant) => tenant,
                None => return Ok(None),
            }
        };
        let mut tenant = lock(&tenant);
        let created = tenant.greeting.is_none();
        if created && !may_create {
            return Ok(None);
        }
        tenant.greeting = Some(greeting.to_owned());
        Ok(Some(created))
    }

    async fn create_conversation(
        &self,
        conversation: &Conversation,
        first: &Message,
        cap: u32,
    ) -> Result<(), WriteError> {
        let tenant = self.tenant(&conversation.organization_id);
        let mut tenant = lock(&tenant);
        let started = tenant
            .conversations_by_session
            .entry(conversation.session_id)
            .or_default();
        if !fits(i64::from(*started), 1, cap) {
            return Err(WriteError::Full(Limit::ConversationsPerSession(cap)));
        }
        *started += 1;
        let position = tenant.next_position();
        tenant
            .conversation_positions
            .insert(conversation.id.clone(), position);
        tenant.conversations.insert(
            position,
            Thread {
                conversation: conversation.clone(),
                messages: vec![first.clone()],
            },
        );
        Ok(())
    }

    async fn conversation(
        &self,
        organization_id: &str,
        id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let Some(tenant) = self.existing(organization_id) else {
            return Ok(None);
        };
        let mut tenant = lock(&tenant);
        Ok(tenant.thread(id).map(|thread| thread.conversation.clone()))
    }

    async fn conversations(
        &self,
        organization_id: &str,
        page: Page,
    ) -> Result<Listing<Conversation>, StoreError> {
        let Some(tenant) = self.existing(organization_id) else {
            return Ok(page.listing(Vec::new()));
        };
        let tenant = lock(&tenant);
        Ok(page_of(&tenant.conversations, page, |thread| {
            thread.conversation.clone()
        }))
    }

    async fn messages(
        &self,
        organization_id: &str,
        conversation_id: &str,
        page: Page,
    ) -> Result<Listing<Message>, StoreError> {
        let Some(tenant) = self.existing(organization_id) else {
            return Ok(page.listing(Vec::new()));
        };
        let mut tenant = lock(&tenant);
        let Some(thread) = tenant.thread(conversation_id) else {
            return Ok(page.listing(Vec::new()));
        };
        let start = usize::try_from(page.after_position()).unwrap_or(usize::MAX);
        let rows = thread
            .messages
            .iter()
            .enumerate()
            .skip(start)
            .take(page.fetch())
            .map(|(index, message)| (index as i64 + 1, message.clone()))
            .collect();
        Ok(page.listing(rows))
    }

    async fn add_visitor_message(
        &self,
        organization_id: &str,
        conversation_id: &str,
        message: &Message,
        ai_reply: Option<&Message>,
        cap: u32,
    ) -> Result<Option<(Status, bool)>, WriteError> {
        let Some(tenant) = self.existing(organization_id) else {
            return Ok(None);
        };
        let mut tenant = lock(&tenant);
        let Some(thread) = tenant.thread(conversation_id) else {
            return Ok(None);
        };
        let reply = ai_reply.filter(|_| thread.conversation.status == Status::Unresolved);
        let adding = 1 + i64::from(reply.is_some());
        if !fits(thread.messages.len() as i64, adding, cap) {
            return Err(WriteError::Full(Limit::MessagesPerConversation(cap)));
        }
        thread.messages.push(message.clone());
        match reply {
            Some(reply) => thread.messages.push(reply.clone()),
            None => thread.conversation.status = Status::Escalated,
        }
        Ok(Some((thread.conversation.status, reply.is_some())))
    }

    async fn add_operator_message(
        &self,
        organization_id: &str,
        conversation_id: &str,
        message: &Message,
        cap: u32,
    ) -> Result<Option<Status>, WriteError> {
        let Some(tenant) = self.existing(organization_id) else {
            return Ok(None);
        };
        let mut tenant = lock(&tenant);
        let Some(thread) = tenant.thread(conversation_id) else {
            return Ok(None);
        };
        if !fits(thread.messages.len() as i64, 1, cap) {
            return Err(WriteError::Full(Limit::MessagesPerConversation(cap)));
        }
        thread.messages.push(message.clone());
        Ok(Some(thread.conversation.status))
    }

    async fn create_file(&self, file: &NewFile, cap: u32) -> Result<(), WriteError> {
        let tenant = self.tenant(&file.organization_id);
        let mut tenant = lock(&tenant);
        if !fits(tenant.files.len() as i64, 1, cap) {
            return Err(WriteError::Full(Limit::FilesPerOrganization(cap)));
        }
        let position = tenant.next_position();
        tenant.file_positions.insert(file.id.clone(), position);
        tenant.files.insert(position, file.clone());
        Ok(())
    }

    async fn files(
        &self,
        organization_id: &str,
        page: Page,
    ) -> Result<Listing<StoredFile>, StoreError> {
        let Some(tenant) = self.existing(organization_id) else {
            return Ok(page.listing(Vec::new()));
        };
        let tenant = lock(&tenant);
        Ok(page_of(&tenant.files, page, NewFile::summary))
    }

    async fn delete_file(&self, organization_id: &str, id: &str) -> Result<bool, StoreError> {
        let Some(tenant) = self.existing(organization_id) else {
            return Ok(false);
        };
        let mut tenant = lock(&tenant);
        let Some(position) = tenant.file_positions.remove(id) else {
            return Ok(false);
        };
        Ok(tenant.files.remove(&position).is_some())
    }
}
