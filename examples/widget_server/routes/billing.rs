//! `POST /billing/webhook` (the simplified, signed subscription changes)
//! and `POST /billing/stripe` (Stripe's own events).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use tower_saas_guard::billing::stripe::STRIPE_SIGNATURE;
use tower_saas_guard::billing::{WebhookReceipt, WEBHOOK_SIGNATURE};

use super::app::AppState;
use super::input::MAX_WEBHOOK_BODY_BYTES;
use super::problem::ApiError;

/// `POST /billing/webhook`: verifies the `webhook-signature` over the raw
/// body (before anything parses it), applies the subscription change
/// (ordered by the signature's `t`, deduplicated by `event_id`) and
/// invalidates the organization's cached entitlement, then answers with the
/// organization's decision as the next request will see it and whether the
/// change was applied (`applied: false`: older than the last change applied
/// to that subscription, or a duplicate event id; still 200, so the sender
/// stops retrying).
pub(crate) async fn billing_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Some(billing) = &state.billing else {
        return Err(ApiError::webhook_not_configured("--webhook-secret"));
    };
    let body =
        body.map_err(|rejection| ApiError::unreadable_body(&rejection, MAX_WEBHOOK_BODY_BYTES))?;
    let receipt = billing
        .handle(headers.get(WEBHOOK_SIGNATURE), &body)
        .await
        .map_err(ApiError::webhook)?;
    let mut answer = decision(&state, &receipt).await?;
    answer["applied"] = json!(receipt.applied());
    Ok(Json(answer))
}

/// `POST /billing/stripe`: verifies `Stripe-Signature` over the raw body
/// with any of the configured secrets, then acts on the event as
/// [`StripeWebhook::handle`](tower_saas_guard::billing::stripe::StripeWebhook::handle)
/// does (subscription events ordered by the event's `created`,
/// deduplicated by its `id`).
///
/// Answers 200 `{received: true, organization_id, entitled, applied}` for
/// a subscription event and `{received: true, applied: false}` for a type
/// it ignores: Stripe retries anything that is not a 2xx, so every event it
/// should stop sending is acknowledged. A subscription without the
/// organization in its metadata is 422 `organization_unknown` (Stripe
/// retries it, and the dashboard shows the failure until the metadata is
/// set).
pub(crate) async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Some(stripe) = &state.stripe else {
        return Err(ApiError::webhook_not_configured("--stripe-webhook-secret"));
    };
    let body =
        body.map_err(|rejection| ApiError::unreadable_body(&rejection, MAX_WEBHOOK_BODY_BYTES))?;
    let receipt = stripe
        .handle(headers.get(STRIPE_SIGNATURE), &body)
        .await
        .map_err(ApiError::webhook)?;
    let mut answer = match &receipt.change {
        Some(change) => decision(&state, change).await?,
        None => json!({}),
    };
    answer["received"] = json!(true);
    answer["applied"] = json!(receipt.applied());
    Ok(Json(answer))
}

/// `{organization_id, entitled}` for the organization a change touched, as
/// the next request will see it.
async fn decision(state: &AppState, receipt: &WebhookReceipt) -> Result<Value, ApiError> {
    let organization_id = &receipt.subscription.organization_id;
    let entitlement = state
        .entitlements
        .entitlement(organization_id, &state.policy)
        .await
        .map_err(|error| ApiError::store_unavailable("subscription", &error))?;
    Ok(json!({
        "organization_id": organization_id,
        "entitled": entitlement.is_entitled(),
    }))
}
