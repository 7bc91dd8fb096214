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
    assert!(text.contains("\"code\":\"internal_error\""), "{text}");
}
