//! The README's quick start, compiled and runnable: sliding sessions (login,
//! a renewing route, a validating route, logout) and pro-only routes in a
//! small axum app. Run with `cargo run --example quick_start --features axum`
//! (listens on 127.0.0.1:3001).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tower_saas_guard::billing::{BillingWebhook, WebhookVerifier};
use tower_saas_guard::session::{
    MemorySessionStore, Session, SessionEnded, SessionHandle, SessionRefreshLayer,
};
use tower_saas_guard::subscription::{
    Entitlement, EntitlementLayer, EntitlementPolicy, Entitlements, FromHeader,
    MemorySubscriptionStore, RequireSubscriptionLayer,
};
use tower_saas_guard::{ConfigError, RequestHead};

#[derive(Deserialize)]
struct Login {
    name: String,
    organization_id: String,
}

/// Login: check the credentials your way, then create the session and hand
/// its token to the client, which sends it back in `x-session-id`.
async fn login(
    State(sessions): State<SessionHandle>,
    Json(login): Json<Login>,
) -> Result<(StatusCode, Json<Value>), StatusCode> {
    let created = sessions
        .create(Some(&login.organization_id), json!({ "name": login.name }))
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let body = json!({ "session_id": created.token.to_string() });
    Ok((StatusCode::CREATED, Json(body)))
}

async fn send_message(session: Session) -> String {
    // The layer validated (and, when due, renewed) the session.
    format!("hello {}", session.payload()["name"])
}

async fn list_messages(session: Session) -> String {
    format!(
        "session {} expires at {:?}",
        session.id(),
        session.expires_at()
    )
}

/// Logout: revoke the session the layer validated.
async fn logout(
    State(sessions): State<SessionHandle>,
    session: Session,
) -> Result<(SessionEnded, StatusCode), StatusCode> {
    // `SessionEnded` keeps the layer from announcing an expiry.
    match sessions.logout(&session).await {
        Ok((_, ended)) => Ok((ended, StatusCode::NO_CONTENT)),
        Err(_) => Err(StatusCode::SERVICE_UNAVAILABLE),
    }
}

async fn enhance() -> &'static str {
    "enhanced"
}

async fn list_files() -> &'static str {
    "[]"
}

async fn upload() -> StatusCode {
    StatusCode::CREATED
}

async fn reply(entitlement: Entitlement) -> &'static str {
    if entitlement.has_feature("ai_reply") {
        "AI reply"
    } else {
        "an operator will answer"
    }
}

/// Pro-only routes, gated by the organization's subscription.
fn pro_routes(entitlements: Entitlements) -> Router {
    let policy = EntitlementPolicy::new()
        .past_due_grace(Duration::from_secs(3 * 24 * 3600))
        .plan_features("pro", ["ai_reply", "file_upload"]);
    // Your own auth decides the organization; here a trusted header.
    let organization = || FromHeader::new(HeaderName::from_static("x-organization-id"));

    // Hard gate: 403 `subscription_required` for free organizations.
    let pro_only = RequireSubscriptionLayer::new(entitlements.clone(), policy.clone())
        .organization(organization());
    // Per-method gate: writes need a subscription, reads and deletes do not.
    let pro_writes = pro_only.clone().gate_when(|head: &RequestHead<'_>| {
        !matches!(*head.method(), Method::GET | Method::DELETE)
    });
    // Soft gate: never rejects, the handler reads the decision.
    let soft = EntitlementLayer::new(entitlements, policy).organization(organization());

    Router::new()
        .route("/enhance", post(enhance).route_layer(pro_only))
        .route(
            "/files",
            get(list_files).post(upload).route_layer(pro_writes),
        )
        .route("/replies", post(reply).route_layer(soft))
}

/// The subscription cache, in front of a store that billing webhooks keep
/// up to date.
fn entitlements() -> Result<Entitlements, ConfigError> {
    Entitlements::builder(MemorySubscriptionStore::new())
        .positive_ttl(Duration::from_secs(60)) // entitled organizations
        .negative_ttl(Duration::from_secs(10)) // others: re-checked sooner
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Sliding sessions: 24 h, renewed when less than 4 h are left.
    let sessions = SessionRefreshLayer::builder(MemorySessionStore::new())
        .duration(Duration::from_secs(24 * 3600))
        .refresh_threshold(Duration::from_secs(4 * 3600))
        .build()?;

    let entitlements = entitlements()?;
    // Billing: verify the signature on the raw body, then store the change
    // and invalidate the cache in one call.
    let webhook = BillingWebhook::new(
        WebhookVerifier::try_new("whsec_change_me")?,
        entitlements.clone(),
    );
    let billing = move |headers: HeaderMap, body: Bytes| async move {
        match webhook
            .handle(headers.get("webhook-signature"), &body)
            .await
        {
            Ok(_) => StatusCode::OK,
            Err(error) => error.status(),
        }
    };

    let app = Router::new()
        .route("/login", post(login))
        // Activity renews…
        .route(
            "/messages",
            post(send_message).route_layer(sessions.clone()),
        )
        // …reads only validate.
        .route(
            "/messages",
            get(list_messages).route_layer(sessions.clone().validate_only()),
        )
        .route(
            "/logout",
            post(logout).route_layer(sessions.clone().validate_only()),
        )
        .with_state(sessions.handle())
        .merge(pro_routes(entitlements))
        .route("/billing/webhook", post(billing));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://127.0.0.1:3001");
    axum::serve(listener, app).await?;
    Ok(())
}
