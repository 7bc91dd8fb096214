//! The application: its state, and the router that puts every route
//! behind its session and subscription layers.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use axum::routing::{delete, get, post, put};
use axum::Router;
use tower_saas_guard::billing::{BillingWebhook, WebhookVerifier};
use tower_saas_guard::rejection::DefaultResponder;
use tower_saas_guard::session::{MemorySessionStore, SessionHandle, SessionRefreshLayer};
use tower_saas_guard::subscription::{
    EntitlementLayer, EntitlementPolicy, Entitlements, FromHeader, MemorySubscriptionStore,
    OrganizationResolver, RequireSubscriptionLayer,
};
use tower_saas_guard::{Clock, ErrorCode, Rejection, RejectionResponder, RequestHead};

use super::cli::Config;
use super::input::{MAX_FILE_BODY_BYTES, MAX_ID_CHARS};
use super::routes::{billing, method_not_allowed, operator, route_not_found, visitor};
use super::storage::Records;

/// The greeting a new conversation starts with while its organization has
/// not set one (`PUT /operator/widget-settings`).
pub(crate) const DEFAULT_GREETING: &str = "Hi! How can we help you today?";

/// The header operators name their organization in: a stand-in for the
/// application's own authentication (see the docs in `main.rs`).
pub(crate) const ORGANIZATION_HEADER: HeaderName = HeaderName::from_static("x-organization-id");

/// Builds the router: checks the session settings (through the library's
/// builder) and the stores, and wires every route to its session and
/// subscription layers.
///
/// `clock` is the time the sessions, the subscription decisions, the
/// webhook's signature check and the timestamps of conversations, messages
/// and files all read (tests pass a `ManualClock`).
pub fn build_app(config: &Config, clock: impl Clock) -> Result<Router, String> {
    config.store.check_available("--store")?;
    if let Some(session_store) = &config.session_store {
        session_store.check_available("--session-store")?;
    }

    // Sessions and handlers read the same clock; any closure is a `Clock`.
    let clock: Arc<dyn Clock> = Arc::new(clock);
    let session_clock = Arc::clone(&clock);
    let builder = SessionRefreshLayer::builder(MemorySessionStore::new())
        .duration(config.session_duration)
        .refresh_threshold(config.refresh_threshold)
        .clock(move || session_clock.now());
    let builder = match config.absolute_lifetime {
        Some(lifetime) => builder.absolute_lifetime(lifetime),
        None => builder.no_absolute_lifetime(),
    };
    let sessions = builder
        .build()
        .map_err(|error| format!("invalid session settings: {error}"))?;

    // One session core, two behaviours: sending counts as activity and
    // renews a session close to expiry; reading only validates it. They are
    // `route_layer`s on each method, so a wrong method is the router's 405
    // and an unknown route its 404, before any session check.
    let renewing = sessions.clone();
    let validate_only = sessions.clone().validate_only();

    // Subscriptions: one cache over one store, on the same clock, shared by
    // every subscription layer and by the billing webhook, so a webhook's
    // change is what the very next request of any route sees.
    let entitlements = Entitlements::builder(MemorySubscriptionStore::new())
        .clock(Arc::clone(&clock))
        .build()
        .map_err(|error| format!("invalid subscription settings: {error}"))?;
    let policy = EntitlementPolicy::new();
    let billing = match &config.webhook_secret {
        Some(secret) => {
            let verifier = WebhookVerifier::try_new(secret.expose())
                .map_err(|error| format!("invalid --webhook-secret: {error}"))?;
            Some(BillingWebhook::new(verifier, entitlements.clone()))
        }
        None => None,
    };

    // The visitor's organization is its session's (`FromSession`, the
    // default): the soft layer sits inside the session layer.
    let visitor_entitlement = EntitlementLayer::new(entitlements.clone(), policy.clone());
    // The operator's organization is the `x-organization-id` header. Every
    // operator route resolves it through a subscription layer, so a missing
    // header is the library's `organization_missing` everywhere: the soft
    // layer on routes any organization may use, the rejecting one on the
    // routes only subscribers may use.
    let operator = EntitlementLayer::new(entitlements.clone(), policy.clone())
        .organization(OperatorOrganization::new())
        .responder(operator_rejection);
    let subscribers_only = RequireSubscriptionLayer::new(entitlements.clone(), policy.clone())
        .organization(OperatorOrganization::new())
        .responder(operator_rejection);

    let state = AppState {
        sessions: sessions.handle(),
        clock,
        entitlements,
        policy,
        billing,
        records: Arc::default(),
    };

    Ok(Router::new()
        // Visitor (widget) side.
        .route("/contact-sessions", post(visitor::create_contact_session))
        .route(
            "/contact-sessions/current",
            get(visitor::current_contact_session).route_layer(validate_only.clone()),
        )
        .route(
            "/conversations",
            post(visitor::create_conversation).route_layer(renewing.clone()),
        )
        .route(
            "/conversations/{id}/messages",
            get(visitor::list_messages).route_layer(validate_only),
        )
        .route(
            "/conversations/{id}/messages",
            // The last `route_layer` is the outermost: session, then the
            // entitlement, then the handler.
            post(visitor::send_message)
                .route_layer(visitor_entitlement)
                .route_layer(renewing),
        )
        // Operator (dashboard) side.
        .route(
            "/operator/subscription",
            get(operator::operator_subscription).route_layer(operator.clone()),
        )
        .route(
            "/operator/conversations",
            get(operator::operator_conversations).route_layer(operator.clone()),
        )
        .route(
            "/operator/conversations/{id}/messages",
            post(operator::operator_reply).route_layer(operator.clone()),
        )
        .route(
            "/operator/conversations/{id}/enhance",
            post(operator::enhance_draft).route_layer(subscribers_only.clone()),
        )
        .route(
            "/operator/files",
            get(operator::list_files).route_layer(operator.clone()),
        )
        .route(
            "/operator/files",
            post(operator::upload_file)
                .route_layer(DefaultBodyLimit::max(MAX_FILE_BODY_BYTES))
                .route_layer(subscribers_only),
        )
        .route(
            "/operator/files/{id}",
            delete(operator::delete_file).route_layer(operator.clone()),
        )
        .route(
            "/operator/widget-settings",
            put(operator::put_widget_settings).route_layer(operator),
        )
        // Billing: no session, no organization; the signature is the check.
        .route("/billing/webhook", post(billing::billing_webhook))
        .fallback(route_not_found)
        // After the routes: it applies to the routes registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state))
}

/// The organization an operator acts for: the `x-organization-id` header
/// (trimmed; empty or not UTF-8 counts as missing, as with the library's
/// `FromHeader`), refused as missing when it is longer than an id may be.
///
/// The header stands in for the application's own authentication.
#[derive(Debug, Clone)]
pub(crate) struct OperatorOrganization(FromHeader);

impl OperatorOrganization {
    pub(crate) fn new() -> Self {
        Self(FromHeader::new(ORGANIZATION_HEADER))
    }
}

impl OrganizationResolver for OperatorOrganization {
    fn organization<'a>(&self, head: &RequestHead<'a>) -> Option<Cow<'a, str>> {
        self.0
            .organization(head)
            .filter(|id| id.chars().count() <= MAX_ID_CHARS)
    }
}

/// The library's rejections for operator routes, with a hint about the
/// header on `organization_missing`.
pub(crate) fn operator_rejection(
    rejection: &Rejection,
    head: &RequestHead<'_>,
) -> axum::http::Response<Bytes> {
    let rejection = match rejection.code() {
        ErrorCode::OrganizationMissing => rejection.clone().with_detail(
            "Operator routes need the organization in the `x-organization-id` header \
             (at most 128 characters).",
        ),
        _ => rejection.clone(),
    };
    DefaultResponder::new().respond(&rejection, head)
}

#[derive(Clone)]
pub(crate) struct AppState {
    /// Creates sessions; shares the layers' store, cache and clock.
    pub(crate) sessions: SessionHandle,
    pub(crate) clock: Arc<dyn Clock>,
    /// The subscription cache every subscription layer reads.
    pub(crate) entitlements: Entitlements,
    /// The policy every subscription layer decides with.
    pub(crate) policy: EntitlementPolicy,
    /// `None` without `--webhook-secret`.
    pub(crate) billing: Option<BillingWebhook>,
    pub(crate) records: Arc<Mutex<Records>>,
}

impl AppState {
    pub(crate) fn now(&self) -> SystemTime {
        self.clock.now()
    }

    pub(crate) fn records(&self) -> MutexGuard<'_, Records> {
        self.records
            .lock()
            .expect("no handler panics while holding the records lock")
    }
}
