//! The operator (dashboard) routes. Each handler gets the organization from
//! the `Entitlement` its subscription layer attached
//! (`Entitlement::organization_id`), resolved from `x-organization-id`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tower_saas_guard::subscription::{Entitlement, EntitlementReason};

use super::ai::stand_in_enhance;
use super::app::AppState;
use super::input::{
    new_id, required_text, ValidJson, MAX_CONTENT_CHARS, MAX_FILE_BYTES, MAX_NAME_CHARS,
};
use super::problem::ApiError;
use super::storage::{oldest_first, Conversation, Message, Role, StoredFile};
use super::visitor::NewMessage;

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

/// `GET /operator/conversations`: the organization's conversations (every
/// visitor's), oldest first.
pub(crate) async fn operator_conversations(
    State(state): State<AppState>,
    entitlement: Entitlement,
) -> Json<Value> {
    let records = state.records();
    let conversations = oldest_first(
        &records.conversations,
        entitlement.organization_id(),
        |conversation| (&conversation.organization_id, conversation.sequence),
        Conversation::summary_json,
    );
    Json(json!({ "conversations": conversations }))
}

/// `POST /operator/conversations/{id}/messages`: an operator's reply; the
/// conversation's status stays as it is.
pub(crate) async fn operator_reply(
    State(state): State<AppState>,
    entitlement: Entitlement,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<NewMessage>,
) -> Result<impl IntoResponse, ApiError> {
    required_text("content", &body.content, MAX_CONTENT_CHARS)?;
    let now = state.now();

    let mut records = state.records();
    let conversation = Conversation::of_organization(
        &mut records.conversations,
        &id,
        entitlement.organization_id(),
    )?;
    let message = Message::new(Role::Operator, body.content, now)?;
    let message_id = message.id.clone();
    conversation.messages.push(message);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "message_id": message_id,
            "status": conversation.status,
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
    Path(id): Path<String>,
    ValidJson(body): ValidJson<Draft>,
) -> Result<Json<Value>, ApiError> {
    required_text("draft", &body.draft, MAX_CONTENT_CHARS)?;
    Conversation::of_organization(
        &mut state.records().conversations,
        &id,
        entitlement.organization_id(),
    )?;
    Ok(Json(json!({ "enhanced": stand_in_enhance(&body.draft) })))
}

#[derive(Deserialize)]
pub(crate) struct NewFile {
    pub(crate) name: String,
    pub(crate) content: String,
}

/// `POST /operator/files` (subscribers only).
pub(crate) async fn upload_file(
    State(state): State<AppState>,
    entitlement: Entitlement,
    ValidJson(body): ValidJson<NewFile>,
) -> Result<impl IntoResponse, ApiError> {
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
    let file_id = new_id("file")?;

    let mut records = state.records();
    let file = StoredFile {
        organization_id: entitlement.organization_id().to_owned(),
        sequence: records.next_sequence(),
        name,
        content: body.content,
        created_at: state.now(),
    };
    let body = file.to_json(&file_id);
    records.files.insert(file_id, file);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /operator/files`: the organization's files, oldest first.
pub(crate) async fn list_files(
    State(state): State<AppState>,
    entitlement: Entitlement,
) -> Json<Value> {
    let records = state.records();
    let files = oldest_first(
        &records.files,
        entitlement.organization_id(),
        |file| (&file.organization_id, file.sequence),
        StoredFile::to_json,
    );
    Json(json!({ "files": files }))
}

/// `DELETE /operator/files/{id}`: open to every organization, so a
/// downgraded one can still clean up.
pub(crate) async fn delete_file(
    State(state): State<AppState>,
    entitlement: Entitlement,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut records = state.records();
    let owned = records
        .files
        .get(&id)
        .is_some_and(|file| file.organization_id == entitlement.organization_id());
    if !owned {
        return Err(ApiError::not_found(format!("No file `{id}`.")));
    }
    records.files.remove(&id);
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
    let mut records = state.records();
    let created = !records.greetings.contains_key(organization_id);
    if created && !entitlement.is_entitled() {
        refuse_if_store_failed(&entitlement)?;
        return Err(ApiError::subscription_required(
            "Creating widget settings requires an active subscription; \
             existing settings can always be updated."
                .to_owned(),
        ));
    }
    let ValidJson(body) = body?;
    let greeting = required_text("greeting", &body.greeting, MAX_CONTENT_CHARS)?;
    records
        .greetings
        .insert(organization_id.to_owned(), greeting.clone());
    Ok(Json(json!({ "greeting": greeting, "created": created })))
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
