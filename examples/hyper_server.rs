//! Both layers on plain hyper 1.x (no axum): the wiring to copy.
//!
//! `cargo run --example hyper_server -- [--addr 127.0.0.1:3001]` prints
//! `listening on http://ADDR` first (`--addr 127.0.0.1:0` picks a free
//! port), then serves, on memory stores:
//!
//! | route | behind | answer |
//! |---|---|---|
//! | `POST /login` (body: an organization id) | — | 201, the session token |
//! | `GET /me` | `SessionRefreshLayer` | 200, with `x-session-expires-at` |
//! | `GET /pro/report` | `SessionRefreshLayer` + `RequireSubscriptionLayer` | 200 for `org_pro`, 403 `subscription_required` otherwise |
//! | `POST /logout` | `SessionRefreshLayer` (validate only) | 204 (no `x-session-expires-at`); the token is 401 afterwards |
//!
//! ```sh
//! token=$(curl -s -d org_pro http://127.0.0.1:3001/login)
//! curl -i -H "x-session-id: $token" http://127.0.0.1:3001/pro/report
//! ```
//!
//! # Response bodies
//!
//! A layer answers `Response<GuardBody<B>>`, where `B` is the body of the
//! service it wraps: `GuardBody` is that body, or a rejection's
//! problem+json. `GuardBody<B>` is an [`http_body::Body`] when `B` is one
//! with `Data = Bytes` (`Full<Bytes>`, hyper's `Incoming`, axum's and
//! tonic's bodies; not `Full<&str>` or `String`), and has `B`'s error
//! type. hyper serves it when `B: Send + 'static` and `B::Error` converts
//! into `Box<dyn Error + Send + Sync>`. So a handler answers
//! `Response::new(Full::new(Bytes::from(text)))`, and two layers nest:
//! `GuardBody<GuardBody<Full<Bytes>>>`. Routes with different layers have
//! different body types; [`BodyExt::boxed`] gives them one, as below.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_saas_guard::rfc3339_millis;
use tower_saas_guard::session::{MemorySessionStore, Session, SessionHandle, SessionRefreshLayer};
use tower_saas_guard::subscription::{
    Entitlement, EntitlementPolicy, Entitlements, MemorySubscriptionStore,
    RequireSubscriptionLayer, Subscription, SubscriptionChange, SubscriptionStatus,
};

/// What every route answers once its layers are applied.
type AppBody = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

/// `POST /login`: the body names the organization; answers the token.
async fn login(request: Request<Incoming>, handle: &SessionHandle) -> Response<Full<Bytes>> {
    let Ok(body) = Limited::new(request.into_body(), 128).collect().await else {
        return text(
            StatusCode::BAD_REQUEST,
            "an organization id, 128 bytes at most",
        );
    };
    let body = body.to_bytes();
    let organization = match std::str::from_utf8(&body).map(str::trim) {
        Ok(organization) if !organization.is_empty() => organization,
        _ => return text(StatusCode::BAD_REQUEST, "an organization id"),
    };
    match handle.create(Some(organization), ()).await {
        Ok(created) => text(StatusCode::CREATED, created.token.to_string()),
        Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
    }
}

/// `GET /me` and `POST /logout`, behind the session layer.
async fn account(
    request: Request<Incoming>,
    handle: SessionHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let session = request
        .extensions()
        .get::<Session>()
        .expect("SessionRefreshLayer puts the Session in");
    if request.method() == Method::POST {
        // Logout by the session's id: no need to read the token again. The
        // `SessionEnded` marker keeps the layer from announcing an expiry.
        return Ok(match handle.logout(session).await {
            Ok((_, ended)) => {
                let mut response = text(StatusCode::NO_CONTENT, Bytes::new());
                response.extensions_mut().insert(ended);
                response
            }
            Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
        });
    }
    let organization = session.organization_id().unwrap_or("none");
    let expires_at = rfc3339_millis(session.expires_at());
    Ok(text(
        StatusCode::OK,
        format!("organization {organization}, session expires at {expires_at}"),
    ))
}

/// `GET /pro/report`, behind both layers: only entitled organizations
/// get here.
async fn pro_report(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let entitlement = request
        .extensions()
        .get::<Entitlement>()
        .expect("RequireSubscriptionLayer puts the Entitlement in");
    let plan = entitlement.plan().unwrap_or("none");
    Ok(text(StatusCode::OK, format!("pro report (plan {plan})")))
}

fn parse_addr() -> Result<SocketAddr, String> {
    let mut addr = "127.0.0.1:3001".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.strip_prefix("--addr") {
            Some("") => addr = args.next().ok_or("--addr needs a value")?,
            Some(value) if value.starts_with('=') => addr = value[1..].to_owned(),
            _ => return Err(format!("unknown argument {arg:?} (only --addr ADDR)")),
        }
    }
    addr.parse()
        .map_err(|error| format!("--addr {addr:?}: {error}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = parse_addr().unwrap_or_else(|message| {
        eprintln!("{message}");
        std::process::exit(2);
    });

    let sessions = SessionRefreshLayer::new(MemorySessionStore::new());
    let handle = sessions.handle();
    let entitlements = Entitlements::new(MemorySubscriptionStore::new());
    // A billing webhook would do this (see `BillingWebhook`); here
    // `org_pro` pays from the start and every other organization is free.
    let pro = Subscription {
        organization_id: "org_pro".into(),
        subscription_id: "sub_1".into(),
        status: SubscriptionStatus::Active,
        plan: "pro".into(),
        current_period_end: None,
        trial_end: None,
    };
    entitlements
        .apply(&SubscriptionChange::new(pro, SystemTime::now()))
        .await?;

    // Each route gets its layers; the organization the subscription layer
    // checks comes from the Session the outer layer put in (`FromSession`).
    let account_handle = handle.clone();
    let me = ServiceBuilder::new()
        .layer(sessions.clone())
        .service_fn(move |request| account(request, account_handle.clone()));
    let logout_handle = handle.clone();
    let logout = ServiceBuilder::new()
        .layer(sessions.clone().validate_only())
        .service_fn(move |request| account(request, logout_handle.clone()));
    let report = ServiceBuilder::new()
        .layer(sessions)
        .layer(RequireSubscriptionLayer::new(
            entitlements,
            EntitlementPolicy::new(),
        ))
        .service_fn(pro_report);

    // The router: one `service_fn` over the three stacks and the login.
    let app = service_fn(move |request: Request<Incoming>| {
        let (me, logout, report, handle) =
            (me.clone(), logout.clone(), report.clone(), handle.clone());
        async move {
            let response: Response<AppBody> = match (request.method(), request.uri().path()) {
                (&Method::POST, "/login") => login(request, &handle).await.map(BodyExt::boxed),
                (&Method::GET, "/me") => me.oneshot(request).await?.map(BodyExt::boxed),
                (&Method::POST, "/logout") => logout.oneshot(request).await?.map(BodyExt::boxed),
                (&Method::GET, "/pro/report") => report.oneshot(request).await?.map(BodyExt::boxed),
                _ => text(StatusCode::NOT_FOUND, "not found").map(BodyExt::boxed),
            };
            Ok::<_, Infallible>(response)
        }
    });

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                eprintln!("connection error: {error}");
            }
        });
    }
}
