//! `POST /billing/webhook`: signed subscription changes.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use tower_saas_guard::billing::WEBHOOK_SIGNATURE;

use super::app::AppState;
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
        return Err(ApiError::webhook_not_configured());
    };
    let body = body.map_err(|rejection| ApiError::invalid_request(rejection.body_text()))?;
    let receipt = billing
        .handle(headers.get(WEBHOOK_SIGNATURE), &body)
        .await
        .map_err(ApiError::webhook)?;
    let organization_id = &receipt.subscription.organization_id;
    let entitlement = state
        .entitlements
        .entitlement(organization_id, &state.policy)
        .await
        .map_err(|error| ApiError::store_unavailable("subscription", &error))?;
    Ok(Json(json!({
        "organization_id": organization_id,
        "entitled": entitlement.is_entitled(),
        "applied": receipt.applied(),
    })))
}
