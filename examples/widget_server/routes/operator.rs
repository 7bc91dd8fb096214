//! The operator (dashboard) routes. Each handler gets the organization from
//! the `Entitlement` its subscription layer attached
//! (`Entitlement::organization_id`), resolved from `x-organization-id`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tower_saas_guard::session::{SessionId, SessionOwner, SessionRecord};
use tower_saas_guard::subscription::{Entitlement, EntitlementReason};
use tower_saas_guard::{rfc3339_millis, unix_millis};

use super::ai::stand_in_enhance;
use super::app::AppState;
use super::input::{
    new_id, required_text, PathId, ValidJson, MAX_CONTENT_CHARS, MAX_FILE_BYTES, MAX_NAME_CHARS,
};
use super::new_message;
use super::pagination::{session_next_cursor, PageParams};
use super::problem::ApiError;
use super::storage::{Conversation, NewFile, Role, StoredFile};
use super::visitor::{NewMessage, Visitor};

/// `GET /operator/subscription` (soft): the decision, with the deciding
/// subscription's plan and status (`null`s when there is none).
pub(crate) async fn operator_subscription(
    entitlement: Entitlement,
) -> Result<Json<Value>, ApiError> {
    refuse_if_store_failed(&entitlement)?;
    Ok(Json(json!({
        "entitled": entitlement.is_entitled(),
        "plan": entitlement.plan(),
        "status": entitlement.status(),
    })))
}

/// `GET /operator/conversations`: one page of the organization's
/// conversations (every visitor's), oldest first.
pub(crate) async fn operator_conversations(
    State(state): State<AppState>,
    entitlement: Entitlement,
    pagination: PageParams,
) -> Result<Json<Value>, ApiError> {
    let page = pagination.page()?;
    let conversations = state
        .store
        .conversations(entitlement.organization_id(), page)
        .await
        .map_err(ApiError::app_store)?;
    Ok(Json(json!({
        "conversations": conversations.items.iter().map(Conversation::summary_json).collect::<Vec<_>>(),
        "next_cursor": conversations.next_cursor(),
    })))
}

/// `POST /operator/conversations/{id}/messages`: an operator's reply; the
/// conversation's status stays as it is.
pub(crate) async fn operator_reply(
    State(state): State<AppState>,
    entitlement: Entitlement,
    PathId(id): PathId,
    ValidJson(body): ValidJson<NewMessage>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .limits
        .organization_write(entitlement.organization_id())?;
    required_text("content", &body.content, MAX_CONTENT_CHARS)?;
    let message = new_message(Role::Operator, body.content, state.now())?;
    let status = state
        .store
        .add_operator_message(
            entitlement.organization_id(),
            &id,
            &message,
            state.caps.messages_per_conversation,
        )
        .await
        .map_err(ApiError::app_write)?
        .ok_or_else(|| ApiError::not_found(format!("No conversation `{id}`.")))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "message_id": message.id,
            "status": status,
        })),
    ))
}

#[derive(Deserialize)]
pub(crate) struct Draft {
    pub(crate) draft: String,
}

/// `POST /operator/conversations/{id}/enhance` (subscribers only): the
/// draft, polished by the stand-in. Nothing is saved.
pub(crate) async fn enhance_draft(
    State(state): State<AppState>,
    entitlement: Entitlement,
    PathId(id): PathId,
    ValidJson(body): ValidJson<Draft>,
) -> Result<Json<Value>, ApiError> {
    let enhanced = enhance(&state, entitlement.organization_id(), &id, &body.draft).await?;
    Ok(Json(json!({ "enhanced": enhanced })))
}

/// `draft`, polished by the stand-in, for conversation `id` of
/// `organization_id` (REST `POST /operator/conversations/{id}/enhance`,
/// gRPC `Enhance`): the draft is checked first, then the conversation
/// must be the organization's. Nothing is saved.
pub(crate) async fn enhance(
    state: &AppState,
    organization_id: &str,
    id: &str,
    draft: &str,
) -> Result<String, ApiError> {
    state.limits.organization_write(organization_id)?;
    required_text("draft", draft, MAX_CONTENT_CHARS)?;
    state
        .store
        .conversation(organization_id, id)
        .await
        .map_err(ApiError::app_store)?
        .ok_or_else(|| ApiError::not_found(format!("No conversation `{id}`.")))?;
    Ok(stand_in_enhance(draft))
}

#[derive(Deserialize)]
pub(crate) struct Upload {
    pub(crate) name: String,
    pub(crate) content: String,
}

/// `POST /operator/files` (subscribers only).
pub(crate) async fn upload_file(
    State(state): State<AppState>,
    entitlement: Entitlement,
    ValidJson(body): ValidJson<Upload>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .limits
        .organization_write(entitlement.organization_id())?;
    let name = required_text("name", &body.name, MAX_NAME_CHARS)?;
    if body.content.trim().is_empty() {
        return Err(ApiError::invalid_request(
            "`content` must not be empty.".to_owned(),
        ));
    }
    if body.content.len() > MAX_FILE_BYTES {
        return Err(ApiError::invalid_request(format!(
            "`content` must be at most 1 MiB ({MAX_FILE_BYTES} bytes of UTF-8)."
        )));
    }
    let file = NewFile {
        id: new_id("file")?,
        organization_id: entitlement.organization_id().to_owned(),
        name,
        content: body.content,
        created_at: state.now(),
    };
    state
        .store
        .create_file(&file, state.caps.files_per_organization)
        .await
        .map_err(ApiError::app_write)?;
    Ok((StatusCode::CREATED, Json(file.summary().to_json())))
}

/// `GET /operator/files`: one page of the organization's files, oldest
/// first.
pub(crate) async fn list_files(
    State(state): State<AppState>,
    entitlement: Entitlement,
    pagination: PageParams,
) -> Result<Json<Value>, ApiError> {
    let page = pagination.page()?;
    let files = state
        .store
        .files(entitlement.organization_id(), page)
        .await
        .map_err(ApiError::app_store)?;
    Ok(Json(json!({
        "files": files.items.iter().map(StoredFile::to_json).collect::<Vec<_>>(),
        "next_cursor": files.next_cursor(),
    })))
}

/// `DELETE /operator/files/{id}`: open to every organization, so a
/// downgraded one can still clean up.
pub(crate) async fn delete_file(
    State(state): State<AppState>,
    entitlement: Entitlement,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    let deleted = state
        .store
        .delete_file(entitlement.organization_id(), &id)
        .await
        .map_err(ApiError::app_store)?;
    if !deleted {
        return Err(ApiError::not_found(format!("No file `{id}`.")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(crate) struct WidgetSettings {
    pub(crate) greeting: String,
}

/// `PUT /operator/widget-settings` (soft): creating the settings needs a
/// subscription, updating them never does. The subscription check comes
/// before the body's, as a layer's would.
pub(crate) async fn put_widget_settings(
    State(state): State<AppState>,
    entitlement: Entitlement,
    body: Result<ValidJson<WidgetSettings>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let organization_id = entitlement.organization_id();
    state.limits.organization_write(organization_id)?;
    let may_create = entitlement.is_entitled();
    let refuse_creation = || {
        refuse_if_store_failed(&entitlement)?;
        Err(ApiError::subscription_required(
            "Creating widget settings requires an active subscription; \
             existing settings can always be updated."
                .to_owned(),
        ))
    };
    if !may_create {
        let existing = state
            .store
            .greeting(organization_id)
            .await
            .map_err(ApiError::app_store)?;
        if existing.is_none() {
            return refuse_creation();
        }
    }
    let ValidJson(body) = body?;
    let greeting = required_text("greeting", &body.greeting, MAX_CONTENT_CHARS)?;
    match state
        .store
        .put_greeting(organization_id, &greeting, may_create)
        .await
        .map_err(ApiError::app_store)?
    {
        Some(created) => Ok(Json(json!({ "greeting": greeting, "created": created }))),
        None => refuse_creation(),
    }
}

/// `GET /operator/contact-sessions`: one page of the organization's live
/// visitor sessions, oldest first. `session_ref` is the session's id (the
/// hex of its token's SHA-256), never the token.
pub(crate) async fn list_contact_sessions(
    State(state): State<AppState>,
    entitlement: Entitlement,
    pagination: PageParams,
) -> Result<Json<Value>, ApiError> {
    let page = pagination.session_page()?;
    let sessions = state
        .sessions
        .list(
            SessionOwner::Organization(entitlement.organization_id()),
            page,
        )
        .await
        .map_err(|error| ApiError::store_unavailable("session", &error))?;
    Ok(Json(json!({
        "sessions": sessions.sessions.iter().map(contact_session_json).collect::<Vec<_>>(),
        "next_cursor": session_next_cursor(sessions.next),
    })))
}

/// A session as the operator's listing shows it. A payload this server
/// did not write shows `null` name and e-mail rather than failing the page.
fn contact_session_json(record: &SessionRecord) -> Value {
    let visitor = serde_json::from_value::<Visitor>(record.payload.clone()).ok();
    json!({
        "session_ref": record.id.to_string(),
        "name": visitor.as_ref().map(|visitor| &visitor.name),
        "email": visitor.as_ref().map(|visitor| &visitor.email),
        "created_at": rfc3339_millis(record.created_at),
        "created_at_ms": unix_millis(record.created_at),
        "expires_at": rfc3339_millis(record.expires_at),
        "expires_at_ms": unix_millis(record.expires_at),
    })
}

/// `DELETE /operator/contact-sessions/{session_ref}`: ends one of the
/// organization's sessions. Whose it is comes from one store read by id
/// (the handle has no load by id); another organization's, or an unknown
/// or malformed ref, is the same 404.
pub(crate) async fn revoke_contact_session(
    State(state): State<AppState>,
    entitlement: Entitlement,
    PathId(session_ref): PathId,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found(format!("No contact session `{session_ref}`."));
    let id = SessionId::from_hex(&session_ref).ok_or_else(not_found)?;
    let record = state
        .session_store
        .load(&id)
        .await
        .map_err(|error| ApiError::store_unavailable("session", &error))?;
    let owned = record.is_some_and(|record| {
        SessionOwner::Organization(entitlement.organization_id()).owns(&record)
    });
    if !owned {
        return Err(not_found());
    }
    let existed = state
        .sessions
        .revoke_id(&id)
        .await
        .map_err(|error| ApiError::store_unavailable("session", &error))?;
    if !existed {
        // Revoked (or purged) between the read and the delete.
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /operator/contact-sessions`: ends every session of the
/// organization; answers how many there were.
pub(crate) async fn revoke_contact_sessions(
    State(state): State<AppState>,
    entitlement: Entitlement,
) -> Result<Json<Value>, ApiError> {
    let revoked = state
        .sessions
        .revoke_organization(entitlement.organization_id())
        .await
        .map_err(|error| ApiError::store_unavailable("session", &error))?;
    Ok(Json(json!({ "revoked": revoked })))
}

/// A soft layer that could not read the store decides "not entitled"
/// (reason `store_unavailable`); where that would be a wrong answer rather
/// than a degraded one, say 503 instead.
pub(crate) fn refuse_if_store_failed(entitlement: &Entitlement) -> Result<(), ApiError> {
    if entitlement.reason() == EntitlementReason::StoreUnavailable {
        return Err(ApiError::store_unavailable(
            "subscription",
            &"no answer from the subscription store",
        ));
    }
    Ok(())
}
