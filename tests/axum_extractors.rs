//! The axum extractors: `Session`, `Entitlement` and their `Option`s.
#![cfg(feature = "axum")]

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_saas_guard::session::{MemorySessionStore, Session, SessionRefreshLayer};
use tower_saas_guard::subscription::{
    Entitlement, EntitlementLayer, EntitlementPolicy, Entitlements, MemorySubscriptionStore,
};

async fn body_text(response: axum::response::Response) -> (StatusCode, String) {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

fn get_request(path: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header("x-session-id", token);
    }
    request.body(Body::empty()).expect("valid request")
}

#[tokio::test]
async fn handlers_extract_the_session_and_the_entitlement() {
    let sessions = SessionRefreshLayer::new(MemorySessionStore::new());
    let entitlements = Entitlements::new(MemorySubscriptionStore::new());
    let created = sessions
        .handle()
        .create(Some("org_1"), serde_json::json!({ "name": "Ada" }))
        .await
        .expect("create");
    let app = Router::new()
        .route(
            "/me",
            get(|session: Session, entitlement: Entitlement| async move {
                format!(
                    "{} {} {}",
                    session.payload()["name"],
                    entitlement.organization_id(),
                    entitlement.is_entitled()
                )
            })
            .route_layer(EntitlementLayer::new(
                entitlements,
                EntitlementPolicy::new(),
            ))
            .route_layer(sessions.clone()),
        )
        .route(
            "/maybe",
            get(
                |session: Option<Session>, entitlement: Option<Entitlement>| async move {
                    format!("{} {}", session.is_some(), entitlement.is_some())
                },
            ),
        )
        .route("/misconfigured", get(|_: Session| async { "unreachable" }));

    let token = created.token.to_string();
    let (status, text) = body_text(
        app.clone()
            .oneshot(get_request("/me", Some(&token)))
            .await
            .expect("infallible"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "\"Ada\" org_1 false");

    let (status, text) = body_text(
        app.clone()
            .oneshot(get_request("/maybe", None))
            .await
            .expect("infallible"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "false false");

    let response = app
        .oneshot(get_request("/misconfigured", None))
        .await
        .expect("infallible");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let (status, text) = body_text(response).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let problem: serde_json::Value = serde_json::from_str(&text).expect("problem+json");
    assert_eq!(problem["code"], "server_misconfigured", "{text}");
    let detail = problem["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("`Session`") && detail.contains("SessionRefreshLayer"),
        "the detail names the missing layer: {detail}"
    );
}

#[tokio::test]
async fn a_subscription_layer_outside_the_session_layer_says_so_instead_of_401() {
    let sessions = SessionRefreshLayer::new(MemorySessionStore::new());
    let entitlements = Entitlements::new(MemorySubscriptionStore::new());
    let handle = sessions.handle();
    let with_organization = handle
        .create(Some("org_1"), serde_json::Value::Null)
        .await
        .expect("create")
        .token
        .to_string();
    let without_organization = handle
        .create(None, serde_json::Value::Null)
        .await
        .expect("create")
        .token
        .to_string();
    let soft = EntitlementLayer::new(entitlements, EntitlementPolicy::new());
    let app = Router::new()
        // The last route_layer is the outermost: the entitlement layer runs
        // first and finds no session.
        .route(
            "/misordered",
            get(|| async { "unreachable" })
                .route_layer(sessions.clone())
                .route_layer(soft.clone()),
        )
        .route(
            "/ordered",
            get(|entitlement: Entitlement| async move { entitlement.organization_id().to_owned() })
                .route_layer(soft)
                .route_layer(sessions),
        );

    let response = app
        .clone()
        .oneshot(get_request("/misordered", Some(&with_organization)))
        .await
        .expect("infallible");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let (status, text) = body_text(response).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    let problem: serde_json::Value = serde_json::from_str(&text).expect("problem+json");
    assert_eq!(problem["code"], "server_misconfigured", "{text}");
    let detail = problem["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("SessionRefreshLayer") && detail.contains("outside"),
        "{detail}"
    );

    // Ordered, a session of organization org_1 passes...
    let (status, text) = body_text(
        app.clone()
            .oneshot(get_request("/ordered", Some(&with_organization)))
            .await
            .expect("infallible"),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "org_1"));
    // ...and a session without one is the client's organization_missing.
    let response = app
        .oneshot(get_request("/ordered", Some(&without_organization)))
        .await
        .expect("infallible");
    assert!(response.headers().contains_key("www-authenticate"));
    let (status, text) = body_text(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("\"code\":\"organization_missing\""), "{text}");
}
