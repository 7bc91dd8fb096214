//! The visitor (widget) routes: contact sessions, conversations, messages.
//! The session token travels in `x-session-id`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tower_saas_guard::session::Session;
use tower_saas_guard::subscription::Entitlement;
use tower_saas_guard::{rfc3339_millis, unix_millis};

use super::ai::stand_in_ai_reply;
use super::app::{AppState, DEFAULT_GREETING};
use super::input::{
    email_address, new_id, required_text, ValidJson, MAX_CONTENT_CHARS, MAX_ID_CHARS,
    MAX_NAME_CHARS,
};
use super::problem::ApiError;
use super::storage::{Conversation, Message, Role, Status, Visitor};

#[derive(Deserialize)]
pub(crate) struct NewContactSession {
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) organization_id: String,
}

/// `POST /contact-sessions`: no session yet; creates one.
pub(crate) async fn create_contact_session(
    State(state): State<AppState>,
    ValidJson(body): ValidJson<NewContactSession>,
) -> Result<impl IntoResponse, ApiError> {
    let name = required_text("name", &body.name, MAX_NAME_CHARS)?;
    let email = email_address(&body.email)?;
    let organization_id = required_text("organization_id", &body.organization_id, MAX_ID_CHARS)?;

    let created = state
        .sessions
        .create(Some(organization_id.as_str()), Visitor { name, email })
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

/// `POST /conversations`: renews; the body is ignored. Opens with the
/// organization's greeting, or the default one.
pub(crate) async fn create_conversation(
    State(state): State<AppState>,
    session: Session,
) -> Result<impl IntoResponse, ApiError> {
    let organization_id = session_organization(&session)?;
    let now = state.now();
    let conversation_id = new_id("conv")?;

    let mut records = state.records();
    let greeting = records
        .greetings
        .get(organization_id)
        .map_or(DEFAULT_GREETING, String::as_str)
        .to_owned();
    let conversation = Conversation {
        session_id: session.id(),
        organization_id: organization_id.to_owned(),
        sequence: records.next_sequence(),
        status: Status::Unresolved,
        created_at: now,
        messages: vec![Message::new(Role::Assistant, greeting, now)?],
    };
    let body = conversation.summary_json(&conversation_id);
    records.conversations.insert(conversation_id, conversation);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /conversations/{id}/messages`: validate only; oldest first.
pub(crate) async fn list_messages(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut records = state.records();
    let conversation = Conversation::of_session(&mut records.conversations, &id, &session)?;
    let messages: Vec<Value> = conversation.messages.iter().map(Message::to_json).collect();
    Ok(Json(json!({
        "conversation_id": id,
        "status": conversation.status,
        "messages": messages,
    })))
}

#[derive(Deserialize)]
pub(crate) struct NewMessage {
    pub(crate) content: String,
}

/// `POST /conversations/{id}/messages`: renews; soft-gated. When the
/// organization is entitled and the conversation is `unresolved`, the AI
/// (stand-in) answers at once; otherwise the message waits for an operator
/// and the conversation becomes `escalated`.
///
/// The body is checked before the id, so an invalid body on an unknown
/// conversation is a 400.
pub(crate) async fn send_message(
    State(state): State<AppState>,
    session: Session,
    entitlement: Entitlement,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<NewMessage>,
) -> Result<impl IntoResponse, ApiError> {
    required_text("content", &body.content, MAX_CONTENT_CHARS)?;
    let now = state.now();

    let mut records = state.records();
    let conversation = Conversation::of_session(&mut records.conversations, &id, &session)?;
    let ai_replies = entitlement.is_entitled() && conversation.status == Status::Unresolved;
    let reply = ai_replies.then(|| stand_in_ai_reply(&body.content));
    let message = Message::new(Role::User, body.content, now)?;
    let message_id = message.id.clone();
    conversation.messages.push(message);
    match reply {
        Some(reply) => conversation
            .messages
            .push(Message::new(Role::Assistant, reply, now)?),
        None => conversation.status = Status::Escalated,
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "message_id": message_id,
            "ai_replied": ai_replies,
            "status": conversation.status,
        })),
    ))
}
