//! The application: its state, and the router that puts every route
//! behind its session and subscription layers.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_saas_guard::billing::stripe::{StripeVerifier, StripeWebhook};
use tower_saas_guard::billing::{BillingWebhook, WebhookVerifier};
use tower_saas_guard::rejection::DefaultResponder;
use tower_saas_guard::session::{
    PurgeTask, SessionHandle, SessionRefreshLayer, SessionStore, SESSION_EXPIRES_AT,
};
use tower_saas_guard::subscription::{
    EntitlementLayer, EntitlementPolicy, Entitlements, FromHeader, OrganizationResolver,
    RequireSubscriptionLayer,
};
use tower_saas_guard::{Clock, ErrorCode, Rejection, RejectionResponder, RequestHead};

use super::backends;
use super::cli::Config;
use super::grpc;
use super::input::{MAX_FILE_BODY_BYTES, MAX_ID_CHARS, MAX_WEBHOOK_BODY_BYTES};
use super::limits::Limits;
use super::log;
use super::problem::ApiError;
use super::routes::{billing, method_not_allowed, operator, route_not_found, visitor};
use super::storage::{AppStore, Caps};

/// The greeting a new conversation starts with while its organization has
/// not set one (`PUT /operator/widget-settings`).
pub(crate) const DEFAULT_GREETING: &str = "Hi! How can we help you today?";

/// The header operators name their organization in: a stand-in for the
/// application's own authentication (see the docs in `main.rs`).
pub(crate) const ORGANIZATION_HEADER: HeaderName = HeaderName::from_static("x-organization-id");

/// How often the background task purges sessions that expired longer ago
/// than [`EXPIRED_RETENTION`].
pub const PURGE_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// How long an expired session keeps answering `session_expired` before
/// the purge (or Redis, for sessions kept there) may drop it.
pub const EXPIRED_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// Settings that do not fit together (exit status 2, like a bad flag).
    Usage(String),
    /// A store could not be opened (exit status 1).
    Store(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Store(message) => f.write_str(message),
        }
    }
}

/// Builds the router: checks the session settings (through the library's
/// builder), opens the stores the flags name, starts the purge task, and
/// wires every route to its session and subscription layers.
///
/// `clock` is the time the sessions, the subscription decisions, the
/// webhook's signature check and the timestamps of conversations, messages
/// and files all read (tests pass a `ManualClock`). Needs a Tokio runtime.
pub async fn build_app(config: &Config, clock: impl Clock) -> Result<Router, StartError> {
    // Sessions and handlers read the same clock; any closure is a `Clock`.
    let clock: Arc<dyn Clock> = Arc::new(clock);
    // Settings first: a wrong flag never opens (or creates) a database.
    let session_settings = |store: Arc<dyn SessionStore>| {
        let session_clock = Arc::clone(&clock);
        let builder = SessionRefreshLayer::builder(store)
            .duration(config.session_duration)
            .refresh_threshold(config.refresh_threshold)
            .expired_retention(EXPIRED_RETENTION)
            .clock(move || session_clock.now());
        match config.absolute_lifetime {
            Some(lifetime) => builder.absolute_lifetime(lifetime),
            None => builder.no_absolute_lifetime(),
        }
    };
    let invalid_sessions = |error| StartError::Usage(format!("invalid session settings: {error}"));
    let _valid: SessionRefreshLayer = session_settings(Arc::new(
        tower_saas_guard::session::MemorySessionStore::new(),
    ))
    .build()
    .map_err(invalid_sessions)?;
    let verifier = match &config.webhook_secret {
        Some(secret) => Some(
            WebhookVerifier::try_new(secret.expose())
                .map_err(|error| StartError::Usage(format!("invalid --webhook-secret: {error}")))?,
        ),
        None => None,
    };
    let stripe_verifier = if config.stripe_webhook_secrets.is_empty() {
        None
    } else {
        let secrets = config
            .stripe_webhook_secrets
            .iter()
            .map(|secret| secret.expose());
        Some(StripeVerifier::try_new(secrets).map_err(|error| {
            StartError::Usage(format!("invalid --stripe-webhook-secret: {error}"))
        })?)
    };

    let backends = backends::open(config, EXPIRED_RETENTION)
        .await
        .map_err(StartError::Store)?;
    let mut sessions = session_settings(Arc::clone(&backends.sessions));
    if let Some(channel) = &backends.channel {
        sessions = sessions.invalidation_channel(Arc::clone(channel));
    }
    let sessions = sessions.build().map_err(invalid_sessions)?;
    let purge = sessions
        .handle()
        .spawn_purge(PURGE_INTERVAL)
        .map_err(|error| StartError::Usage(format!("cannot start the purge task: {error}")))?;

    // One session core, two behaviours: sending counts as activity and
    // renews a session close to expiry; reading only validates it. They are
    // `route_layer`s on each method, so a wrong method is the router's 405
    // and an unknown route its 404, before any session check.
    let renewing = sessions.clone();
    let validate_only = sessions.clone().validate_only();

    // Subscriptions: one cache over one store, on the same clock, shared by
    // every subscription layer and by the billing webhook, so a webhook's
    // change is what the very next request of any route sees (on every
    // instance, with an invalidation channel).
    let mut entitlements =
        Entitlements::builder(Arc::clone(&backends.subscriptions)).clock(Arc::clone(&clock));
    if let Some(channel) = &backends.channel {
        entitlements = entitlements.invalidation_channel(Arc::clone(channel));
    }
    let entitlements = entitlements
        .build()
        .map_err(|error| StartError::Usage(format!("invalid subscription settings: {error}")))?;
    let policy = EntitlementPolicy::new();
    let billing = verifier.map(|verifier| BillingWebhook::new(verifier, entitlements.clone()));
    // Stripe puts the organization in the subscription's
    // `metadata.organization_id` (set when the checkout creates it).
    let stripe = stripe_verifier.map(|verifier| StripeWebhook::new(verifier, entitlements.clone()));

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

    // Billing event ids are remembered 30 days (longer than any provider
    // retries), then forgotten by the same schedule.
    let purge_event_ids = entitlements
        .spawn_purge(PURGE_INTERVAL)
        .map_err(|error| StartError::Usage(format!("cannot start the purge task: {error}")))?;

    let state = AppState {
        sessions: sessions.handle(),
        session_store: backends.sessions,
        store: backends.app,
        clock,
        entitlements,
        policy,
        billing,
        stripe,
        limits: Limits::start(config.rate_burst, config.rate_per_second),
        caps: Caps {
            conversations_per_session: config.max_conversations_per_session.get(),
            messages_per_conversation: config.max_messages_per_conversation.get(),
            files_per_organization: config.max_files_per_organization.get(),
        },
        _purge: Arc::new([purge, purge_event_ids]),
    };

    // gRPC's `support.v1.Support` sits behind the same layers (see
    // `grpc.rs`), so it shares their stores, caches and clock.
    let grpc_layers = grpc::SupportLayers {
        sessions: sessions.clone(),
        visitor_entitlement: visitor_entitlement.clone(),
        subscribers_only: subscribers_only.clone(),
    };

    // Visitor (widget) side: called by a widget embedded in other sites,
    // so behind CORS (outermost: preflights are answered before any
    // session check, and rejections carry the CORS headers too).
    let visitor_routes = Router::new()
        .route("/contact-sessions", post(visitor::create_contact_session))
        .route(
            "/contact-sessions/current",
            get(visitor::current_contact_session).route_layer(validate_only.clone()),
        )
        .route(
            "/contact-sessions/current",
            delete(visitor::logout).route_layer(validate_only.clone()),
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
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors(&config.cors_origins));

    let router = Router::new()
        // Operator (dashboard) side: same-origin, no CORS.
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
            put(operator::put_widget_settings).route_layer(operator.clone()),
        )
        .route(
            "/operator/contact-sessions",
            get(operator::list_contact_sessions).route_layer(operator.clone()),
        )
        .route(
            "/operator/contact-sessions",
            delete(operator::revoke_contact_sessions).route_layer(operator.clone()),
        )
        .route(
            "/operator/contact-sessions/{session_ref}",
            delete(operator::revoke_contact_session).route_layer(operator),
        )
        // Billing: no session, no organization; the signature is the check.
        // Both read the raw body (the signature covers it) up to 1 MiB.
        .route(
            "/billing/webhook",
            post(billing::billing_webhook)
                .route_layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY_BYTES)),
        )
        .route(
            "/billing/stripe",
            post(billing::stripe_webhook)
                .route_layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY_BYTES)),
        );
    // gRPC (HTTP/2 prior knowledge, on the same listener): `support.v1.Support`
    // and `grpc.health.v1.Health`.
    let router = grpc::add_services(router, state.clone(), grpc_layers).await;
    Ok(router
        // After the routes: it applies to the routes registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .merge(visitor_routes)
        .fallback(route_not_found)
        // A request that takes too long (a body trickled in, a stuck
        // store) is answered 408 and its work dropped.
        .layer(axum::middleware::from_fn_with_state(
            config.request_timeout,
            request_timeout,
        ))
        // Outermost: every request, answered by any route or layer.
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state))
}

/// 408 `request_timeout` when the rest of the stack takes longer than
/// `limit` (`--request-timeout`).
async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::request_timeout(limit)),
    }
}

/// One line per request on stderr: method, path (never the query, which
/// may hold a cursor; never a header, which may hold a token), status and
/// the time the answer took. Queued for [`log`]'s thread, so a slow
/// stderr never holds up an answer.
async fn log_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    log::line(format!(
        "{method} {path} {} {:.1}ms",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1000.0
    ));
    response
}

/// CORS for the visitor routes (SPEC §5): preflights from `origins` (any
/// origin when empty, `--cors-origin *`) are answered for the methods the
/// widget uses, with the `x-session-id` and `content-type` request headers;
/// responses expose `x-session-expires-at` so the widget can read it. No
/// credentials: the token travels in a header, not a cookie.
fn cors(origins: &[HeaderValue]) -> CorsLayer {
    let allowed = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    CorsLayer::new()
        .allow_origin(allowed)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([HeaderName::from_static("x-session-id"), CONTENT_TYPE])
        .expose_headers([SESSION_EXPIRES_AT])
        .max_age(Duration::from_secs(600))
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
    /// Creates, lists and revokes sessions; shares the layers' store,
    /// cache, clock and invalidation channel.
    pub(crate) sessions: SessionHandle,
    /// The same session store, read directly to check whose a session is
    /// before an operator revokes it (the handle has no load by id).
    pub(crate) session_store: Arc<dyn SessionStore>,
    /// Conversations, messages, files and widget settings.
    pub(crate) store: Arc<dyn AppStore>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The subscription cache every subscription layer reads.
    pub(crate) entitlements: Entitlements,
    /// The policy every subscription layer decides with.
    pub(crate) policy: EntitlementPolicy,
    /// `None` without `--webhook-secret`.
    pub(crate) billing: Option<BillingWebhook>,
    /// `None` without `--stripe-webhook-secret`.
    pub(crate) stripe: Option<StripeWebhook>,
    /// The rate limits of session creation and of writes.
    pub(crate) limits: Arc<Limits>,
    /// The caps of counts a client could otherwise grow without end.
    pub(crate) caps: Caps,
    /// Purge expired sessions and old billing event ids for as long as the
    /// router lives.
    _purge: Arc<[PurgeTask; 2]>,
}

impl AppState {
    pub(crate) fn now(&self) -> SystemTime {
        self.clock.now()
    }
}
