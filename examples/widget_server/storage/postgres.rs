//! `--store postgres://…`: the application's tables in the same PostgreSQL
//! database as the sessions and subscriptions, shared by every instance.
//!
//! The `widget_*` tables are created at start-up by [`SCHEMA`], plain
//! idempotent DDL run under a transaction-scoped advisory lock (two
//! instances starting together do not race on `CREATE TABLE`), so they
//! never mix with the library's migrations. Positions in creation order
//! are identity columns.

use std::time::SystemTime;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;
use tower_saas_guard::StoreError;

use super::{
    fits, from_millis, session_id_from_bytes, to_millis, AppStore, Conversation, Limit, Listing,
    Message, NewFile, Page, Status, StoredFile, WriteError,
};

/// The application's tables; safe to run at every start, from several
/// instances at once (the advisory lock serialises them; the statements
/// of one simple query run in one transaction, which holds it).
pub(crate) const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7242025001);

CREATE TABLE IF NOT EXISTS widget_conversations (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT   NOT NULL UNIQUE,
    organization_id TEXT   NOT NULL,
    session_id      BYTEA  NOT NULL,
    status          TEXT   NOT NULL,
    created_at_ms   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS widget_conversations_by_organization
    ON widget_conversations (organization_id, position);
CREATE INDEX IF NOT EXISTS widget_conversations_by_session
    ON widget_conversations (session_id);

CREATE TABLE IF NOT EXISTS widget_messages (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT   NOT NULL UNIQUE,
    conversation_id TEXT   NOT NULL REFERENCES widget_conversations (id),
    role            TEXT   NOT NULL,
    content         TEXT   NOT NULL,
    created_at_ms   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS widget_messages_by_conversation
    ON widget_messages (conversation_id, position);

CREATE TABLE IF NOT EXISTS widget_files (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT   NOT NULL UNIQUE,
    organization_id TEXT   NOT NULL,
    name            TEXT   NOT NULL,
    content         TEXT   NOT NULL,
    size_bytes      BIGINT NOT NULL,
    created_at_ms   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS widget_files_by_organization
    ON widget_files (organization_id, position);

CREATE TABLE IF NOT EXISTS widget_settings (
    organization_id TEXT PRIMARY KEY,
    greeting        TEXT NOT NULL
);
";

/// The application's data in PostgreSQL.
#[derive(Debug, Clone)]
pub(crate) struct PostgresAppStore {
    pool: PgPool,
}

impl PostgresAppStore {
    /// Creates the tables (if missing) in `pool`'s database.
    pub(crate) async fn new(pool: PgPool) -> Result<Self, StoreError> {
        sqlx::raw_sql(SCHEMA)
            .execute(&pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(Self { pool })
    }
}

fn conversation(row: &PgRow) -> Result<(i64, Conversation), StoreError> {
    let session_id: Vec<u8> = row.try_get("session_id").map_err(StoreError::backend)?;
    let status: String = row.try_get("status").map_err(StoreError::backend)?;
    Ok((
        row.try_get("position").map_err(StoreError::backend)?,
        Conversation {
            id: row.try_get("id").map_err(StoreError::backend)?,
            organization_id: row
                .try_get("organization_id")
                .map_err(StoreError::backend)?,
            session_id: session_id_from_bytes(&session_id)?,
            status: status.parse()?,
            created_at: created_at(row)?,
        },
    ))
}

fn message(row: &PgRow) -> Result<(i64, Message), StoreError> {
    let role: String = row.try_get("role").map_err(StoreError::backend)?;
    Ok((
        row.try_get("position").map_err(StoreError::backend)?,
        Message {
            id: row.try_get("id").map_err(StoreError::backend)?,
            role: role.parse()?,
            content: row.try_get("content").map_err(StoreError::backend)?,
            created_at: created_at(row)?,
        },
    ))
}

fn file(row: &PgRow) -> Result<(i64, StoredFile), StoreError> {
    let size_bytes: i64 = row.try_get("size_bytes").map_err(StoreError::backend)?;
    Ok((
        row.try_get("position").map_err(StoreError::backend)?,
        StoredFile {
            id: row.try_get("id").map_err(StoreError::backend)?,
            name: row.try_get("name").map_err(StoreError::backend)?,
            size_bytes: u64::try_from(size_bytes)
                .map_err(|_| super::malformed(format!("a file of {size_bytes} bytes")))?,
            created_at: created_at(row)?,
        },
    ))
}

fn created_at(row: &PgRow) -> Result<SystemTime, StoreError> {
    from_millis(row.try_get("created_at_ms").map_err(StoreError::backend)?)
}

fn rows<T>(
    rows: Vec<PgRow>,
    decode: impl Fn(&PgRow) -> Result<(i64, T), StoreError>,
) -> Result<Vec<(i64, T)>, StoreError> {
    rows.iter().map(decode).collect()
}

/// `LIMIT` for a page: one more row than it shows.
fn fetch(page: Page) -> i64 {
    page.fetch() as i64
}

#[async_trait]
impl AppStore for PostgresAppStore {
    async fn greeting(&self, organization_id: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT greeting FROM widget_settings WHERE organization_id = $1")
            .bind(organization_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::backend)
    }

    async fn put_greeting(
        &self,
        organization_id: &str,
        greeting: &str,
        may_create: bool,
    ) -> Result<Option<bool>, StoreError> {
        if may_create {
            let inserted = sqlx::query(
                "INSERT INTO widget_settings (organization_id, greeting) VALUES ($1, $2) \
                 ON CONFLICT (organization_id) DO NOTHING",
            )
            .bind(organization_id)
            .bind(greeting)
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
            if inserted.rows_affected() > 0 {
                return Ok(Some(true));
            }
        }
        let updated =
            sqlx::query("UPDATE widget_settings SET greeting = $1 WHERE organization_id = $2")
                .bind(greeting)
                .bind(organization_id)
                .execute(&self.pool)
                .await
                .map_err(StoreError::backend)?;
        Ok((updated.rows_affected() > 0).then_some(false))
    }

    async fn create_conversation(
        &self,
        conversation: &Conversation,
        first: &Message,
        cap: u32,
    ) -> Result<(), WriteError> {
        let mut transaction = self.pool.begin().await.map_err(StoreError::backend)?;
        // One session's creations queue on an advisory lock, so the count
        // each one reads includes the others' (read committed takes a new
        // snapshot per statement) and the cap is never overshot.
        read_committed(&mut transaction).await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("widget_conversations:{}", conversation.session_id))
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::backend)?;
        let inserted = sqlx::query(
            "INSERT INTO widget_conversations \
             (id, organization_id, session_id, status, created_at_ms) \
             SELECT $1, $2, $3, $4, $5 \
             WHERE (SELECT count(*) FROM widget_conversations WHERE session_id = $3) < $6",
        )
        .bind(&conversation.id)
        .bind(&conversation.organization_id)
        .bind(conversation.session_id.as_bytes().as_slice())
        .bind(conversation.status.as_str())
        .bind(to_millis(conversation.created_at))
        .bind(i64::from(cap))
        .execute(&mut *transaction)
        .await
        .map_err(StoreError::backend)?;
        if inserted.rows_affected() == 0 {
            return Err(WriteError::Full(Limit::ConversationsPerSession(cap)));
        }
        insert_message(&mut transaction, &conversation.id, first).await?;
        transaction.commit().await.map_err(StoreError::backend)?;
        Ok(())
    }

    async fn conversation(
        &self,
        organization_id: &str,
        id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM widget_conversations WHERE id = $1 AND organization_id = $2",
        )
        .bind(id)
        .bind(organization_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::backend)?;
        row.as_ref()
            .map(|row| conversation(row).map(|(_, conversation)| conversation))
            .transpose()
    }

    async fn conversations(
        &self,
        organization_id: &str,
        page: Page,
    ) -> Result<Listing<Conversation>, StoreError> {
        let found = sqlx::query(
            "SELECT * FROM widget_conversations WHERE organization_id = $1 AND position > $2 \
             ORDER BY position LIMIT $3",
        )
        .bind(organization_id)
        .bind(page.after_position())
        .bind(fetch(page))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::backend)?;
        Ok(page.listing(rows(found, conversation)?))
    }

    async fn messages(
        &self,
        organization_id: &str,
        conversation_id: &str,
        page: Page,
    ) -> Result<Listing<Message>, StoreError> {
        let found = sqlx::query(
            "SELECT m.* FROM widget_messages m \
             JOIN widget_conversations c ON c.id = m.conversation_id \
             WHERE m.conversation_id = $1 AND c.organization_id = $2 AND m.position > $3 \
             ORDER BY m.position LIMIT $4",
        )
        .bind(conversation_id)
        .bind(organization_id)
        .bind(page.after_position())
        .bind(fetch(page))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::backend)?;
        Ok(page.listing(rows(found, message)?))
    }

    async fn add_visitor_message(
        &self,
        organization_id: &str,
        conversation_id: &str,
        message: &Message,
        ai_reply: Option<&Message>,
        cap: u32,
    ) -> Result<Option<(Status, bool)>, WriteError> {
        let mut transaction = self.pool.begin().await.map_err(StoreError::backend)?;
        // The write comes first, so the transaction holds the write lock
        // from its first statement: the status it reads is the one it sets.
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE widget_conversations \
             SET status = CASE WHEN $1 AND status = 'unresolved' THEN status ELSE 'escalated' END \
             WHERE id = $2 AND organization_id = $3 RETURNING status",
        )
        .bind(ai_reply.is_some())
        .bind(conversation_id)
        .bind(organization_id)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(StoreError::backend)?;
        let Some(status) = status else {
            return Ok(None);
        };
        let status: Status = status.parse()?;
        let reply = ai_reply.filter(|_| status == Status::Unresolved);
        let adding = 1 + i64::from(reply.is_some());
        if !fits(
            message_count(&mut transaction, conversation_id).await?,
            adding,
            cap,
        ) {
            // Dropping the transaction rolls the status change back.
            return Err(WriteError::Full(Limit::MessagesPerConversation(cap)));
        }
        insert_message(&mut transaction, conversation_id, message).await?;
        if let Some(reply) = reply {
            insert_message(&mut transaction, conversation_id, reply).await?;
        }
        transaction.commit().await.map_err(StoreError::backend)?;
        Ok(Some((status, reply.is_some())))
    }

    async fn add_operator_message(
        &self,
        organization_id: &str,
        conversation_id: &str,
        message: &Message,
        cap: u32,
    ) -> Result<Option<Status>, WriteError> {
        let mut transaction = self.pool.begin().await.map_err(StoreError::backend)?;
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE widget_conversations SET status = status \
             WHERE id = $1 AND organization_id = $2 RETURNING status",
        )
        .bind(conversation_id)
        .bind(organization_id)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(StoreError::backend)?;
        let Some(status) = status else {
            return Ok(None);
        };
        if !fits(
            message_count(&mut transaction, conversation_id).await?,
            1,
            cap,
        ) {
            return Err(WriteError::Full(Limit::MessagesPerConversation(cap)));
        }
        insert_message(&mut transaction, conversation_id, message).await?;
        transaction.commit().await.map_err(StoreError::backend)?;
        Ok(Some(status.parse()?))
    }

    async fn create_file(&self, file: &NewFile, cap: u32) -> Result<(), WriteError> {
        let mut transaction = self.pool.begin().await.map_err(StoreError::backend)?;
        // One organization's uploads queue on an advisory lock, so the
        // count each one reads includes the others'.
        read_committed(&mut transaction).await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("widget_files:{}", file.organization_id))
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::backend)?;
        let inserted = sqlx::query(
            "INSERT INTO widget_files \
             (id, organization_id, name, content, size_bytes, created_at_ms) \
             SELECT $1, $2, $3, $4, $5, $6 \
             WHERE (SELECT count(*) FROM widget_files WHERE organization_id = $2) < $7",
        )
        .bind(&file.id)
        .bind(&file.organization_id)
        .bind(&file.name)
        .bind(&file.content)
        .bind(file.content.len() as i64)
        .bind(to_millis(file.created_at))
        .bind(i64::from(cap))
        .execute(&mut *transaction)
        .await
        .map_err(StoreError::backend)?;
        if inserted.rows_affected() == 0 {
            return Err(WriteError::Full(Limit::FilesPerOrganization(cap)));
        }
        transaction.commit().await.map_err(StoreError::backend)?;
        Ok(())
    }

    async fn files(
        &self,
        organization_id: &str,
        page: Page,
    ) -> Result<Listing<StoredFile>, StoreError> {
        let found = sqlx::query(
            "SELECT position, id, name, size_bytes, created_at_ms FROM widget_files \
             WHERE organization_id = $1 AND position > $2 ORDER BY position LIMIT $3",
        )
        .bind(organization_id)
        .bind(page.after_position())
        .bind(fetch(page))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::backend)?;
        Ok(page.listing(rows(found, file)?))
    }

    async fn delete_file(&self, organization_id: &str, id: &str) -> Result<bool, StoreError> {
        let deleted =
            sqlx::query("DELETE FROM widget_files WHERE id = $1 AND organization_id = $2")
                .bind(id)
                .bind(organization_id)
                .execute(&self.pool)
                .await
                .map_err(StoreError::backend)?;
        Ok(deleted.rows_affected() > 0)
    }
}

async fn insert_message(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conversation_id: &str,
    message: &Message,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO widget_messages (id, conversation_id, role, content, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&message.id)
    .bind(conversation_id)
    .bind(message.role.as_str())
    .bind(&message.content)
    .bind(to_millis(message.created_at))
    .execute(&mut **transaction)
    .await
    .map_err(StoreError::backend)?;
    Ok(())
}

/// How many messages conversation `conversation_id` holds (read inside the
/// transaction that holds the conversation's row, or SQLite's write lock).
async fn message_count(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conversation_id: &str,
) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT count(*) FROM widget_messages WHERE conversation_id = $1")
        .bind(conversation_id)
        .fetch_one(&mut **transaction)
        .await
        .map_err(StoreError::backend)
}

/// The count after an advisory lock must see the previous holder's
/// commit: each statement needs a snapshot of its own, whatever the
/// server's `default_transaction_isolation` says.
async fn read_committed(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<(), StoreError> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut **transaction)
        .await
        .map_err(StoreError::backend)?;
    Ok(())
}
