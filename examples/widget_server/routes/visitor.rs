//! The visitor (widget) routes: contact sessions, conversations, messages.
//! The session token travels in `x-session-id`.
//!
//! Visitor sessions belong to an organization and carry the visitor's name
//! and e-mail as their payload; they have **no subject**: the e-mail is
//! whatever the visitor typed, unverified, so it cannot name a person whose
//! sessions one could list or end together. Operators list and end them by
//! organization.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower_saas_guard::session::{Session, SessionEnded};
use tower_saas_guard::subscription::Entitlement;
use tower_saas_guard::{rfc3339_millis, unix_millis};

use super::ai::stand_in_ai_reply;
use super::app::{AppState, DEFAULT_GREETING};
use super::input::{
    email_address, new_id, required_text, PathId, ValidJson, MAX_CONTENT_CHARS, MAX_ID_CHARS,
    MAX_NAME_CHARS,
};
use super::limits::ClientAddr;
use super::new_message;
use super::pagination::PageParams;
use super::problem::ApiError;
use super::storage::{Conversation, Message, Role, Status};

/// What a session's payload holds: who the visitor said they are.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Visitor {
    pub(crate) name: String,
    pub(crate) email: String,
}

#[derive(Deserialize)]
pub(crate) struct NewContactSession {
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) organization_id: String,
}

/// `POST /contact-sessions`: no session yet; creates one (no subject: see
/// the module's docs).
pub(crate) async fn create_contact_session(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ValidJson(body): ValidJson<NewContactSession>,
) -> Result<impl IntoResponse, ApiError> {
    state.limits.contact_session(client)?;
    let name = required_text("name", &body.name, MAX_NAME_CHARS)?;
    let email = email_address(&body.email)?;
    let organization_id = required_text("organization_id", &body.organization_id, MAX_ID_CHARS)?;

    let created = state
        .sessions
        .create_for(
            Some(organization_id.as_str()),
            None,
            Visitor { name, email },
        )
        .await
        .map_err(|error| ApiError::store_unavailable("session", &error))?;

    Ok((
        StatusCode::CREATED,
        Json(json!({
            "session_id": created.token.to_string(),
            "organization_id": organization_id,
            "created_at": rfc3339_millis(created.created_at),
            "created_at_ms": unix_millis(created.created_at),
            "expires_at": rfc3339_millis(created.expires_at),
            "expires_at_ms": unix_millis(created.expires_at),
        })),
    ))
}

/// `GET /contact-sessions/current`: validate only, never renews.
pub(crate) async fn current_contact_session(session: Session) -> Result<Json<Value>, ApiError> {
    let visitor: Visitor = session
        .payload_as()
        .map_err(|error| ApiError::internal(format!("unreadable session payload: {error}")))?;
    Ok(Json(json!({
        "organization_id": session.organization_id(),
        "name": visitor.name,
        "email": visitor.email,
        "created_at": rfc3339_millis(session.created_at()),
        "created_at_ms": unix_millis(session.created_at()),
        "expires_at": rfc3339_millis(session.expires_at()),
        "expires_at_ms": unix_millis(session.expires_at()),
    })))
}

/// The organization of a contact session (every one has one).
pub(crate) fn session_organization(session: &Session) -> Result<&str, ApiError> {
    session
        .organization_id()
        .ok_or_else(|| ApiError::internal("a contact session without an organization".to_owned()))
}

/// `DELETE /contact-sessions/current`: validate only; logs the session
/// out (revoked in the store, this instance's cache and, through the
/// invalidation channel, every other instance's). 204, marked
/// [`SessionEnded`] so the layer adds no `x-session-expires-at`.
pub(crate) async fn logout(
    State(state): State<AppState>,
    session: Session,
) -> Result<(SessionEnded, StatusCode), ApiError> {
    let (_, ended) = state
        .sessions
        .logout(&session)
        .await
        .map_err(|error| ApiError::store_unavailable("session", &error))?;
    Ok((ended, StatusCode::NO_CONTENT))
}

/// `POST /conversations`: renews; the body is ignored. Opens with the
/// organization's greeting, or the default one.
pub(crate) async fn create_conversation(
    State(state): State<AppState>,
    session: Session,
) -> Result<impl IntoResponse, ApiError> {
    let conversation = open_conversation(&state, &session).await?;
    Ok((StatusCode::CREATED, Json(conversation.summary_json())))
}

/// Opens a conversation of `session`, with the organization's greeting or
/// the default one (REST `POST /conversations`, gRPC `CreateConversation`).
pub(crate) async fn open_conversation(
    state: &AppState,
    session: &Session,
) -> Result<Conversation, ApiError> {
    state.limits.session_write(session.id())?;
    let organization_id = session_organization(session)?;
    let now = state.now();
    let greeting = state
        .store
        .greeting(organization_id)
        .await
        .map_err(ApiError::app_store)?
        .unwrap_or_else(|| DEFAULT_GREETING.to_owned());
    let conversation = Conversation {
        id: new_id("conv")?,
        organization_id: organization_id.to_owned(),
        session_id: session.id(),
        status: Status::Unresolved,
        created_at: now,
    };
    let greeting = new_message(Role::Assistant, greeting, now)?;
    state
        .store
        .create_conversation(
            &conversation,
            &greeting,
            state.caps.conversations_per_session,
        )
        .await
        .map_err(ApiError::app_write)?;
    Ok(conversation)
}

/// The conversation `id`, if it exists and belongs to `session`; anything
/// else is the same 404, so ids of others leak nothing.
pub(crate) async fn conversation_of(
    state: &AppState,
    session: &Session,
    id: &str,
) -> Result<Conversation, ApiError> {
    let organization_id = session_organization(session)?;
    state
        .store
        .conversation(organization_id, id)
        .await
        .map_err(ApiError::app_store)?
        .filter(|conversation| conversation.session_id == session.id())
        .ok_or_else(|| ApiError::not_found(format!("No conversation `{id}`.")))
}

/// `GET /conversations/{id}/messages`: validate only; one page, oldest
/// first.
pub(crate) async fn list_messages(
    State(state): State<AppState>,
    session: Session,
    PathId(id): PathId,
    pagination: PageParams,
) -> Result<Json<Value>, ApiError> {
    let page = pagination.page()?;
    let conversation = conversation_of(&state, &session, &id).await?;
    let messages = state
        .store
        .messages(&conversation.organization_id, &id, page)
        .await
        .map_err(ApiError::app_store)?;
    Ok(Json(json!({
        "conversation_id": id,
        "status": conversation.status,
        "messages": messages.items.iter().map(Message::to_json).collect::<Vec<_>>(),
        "next_cursor": messages.next_cursor(),
    })))
}

#[derive(Deserialize)]
pub(crate) struct NewMessage {
    pub(crate) content: String,
}

/// `POST /conversations/{id}/messages`: renews; soft-gated; see
/// [`post_visitor_message`].
pub(crate) async fn send_message(
    State(state): State<AppState>,
    session: Session,
    entitlement: Entitlement,
    PathId(id): PathId,
    ValidJson(body): ValidJson<NewMessage>,
) -> Result<impl IntoResponse, ApiError> {
    let sent = post_visitor_message(&state, &session, &entitlement, &id, body.content).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "message_id": sent.message_id,
            "ai_replied": sent.ai_replied,
            "status": sent.status,
        })),
    ))
}

/// What sending a visitor message did.
pub(crate) struct SentMessage {
    pub(crate) message_id: String,
    pub(crate) ai_replied: bool,
    pub(crate) status: Status,
}

/// Saves the visitor's `content` in conversation `id` (REST `POST
/// /conversations/{id}/messages`, gRPC `SendMessage`). When the
/// organization is entitled and the conversation is `unresolved`, the AI
/// (stand-in) answers at once; otherwise the message waits for an operator
/// and the conversation becomes `escalated`. The store decides on the
/// status and appends in one step, so concurrent messages agree.
///
/// The content is checked before the id, so an invalid message to an
/// unknown conversation is a 400.
pub(crate) async fn post_visitor_message(
    state: &AppState,
    session: &Session,
    entitlement: &Entitlement,
    id: &str,
    content: String,
) -> Result<SentMessage, ApiError> {
    state.limits.session_write(session.id())?;
    required_text("content", &content, MAX_CONTENT_CHARS)?;
    let now = state.now();
    let conversation = conversation_of(state, session, id).await?;
    let reply = if entitlement.is_entitled() {
        Some(new_message(
            Role::Assistant,
            stand_in_ai_reply(&content),
            now,
        )?)
    } else {
        None
    };
    let message = new_message(Role::User, content, now)?;
    let (status, ai_replied) = state
        .store
        .add_visitor_message(
            &conversation.organization_id,
            id,
            &message,
            reply.as_ref(),
            state.caps.messages_per_conversation,
        )
        .await
        .map_err(ApiError::app_write)?
        .ok_or_else(|| ApiError::not_found(format!("No conversation `{id}`.")))?;
    Ok(SentMessage {
        message_id: message.id,
        ai_replied,
        status,
    })
}
