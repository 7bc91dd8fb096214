//! The layers over three response body types, one generic test each:
//! axum's `Body`, tonic's `Body` and `http_body_util::Full<Bytes>`. The
//! layers answer `GuardBody<B>`: the inner body untouched, or a rejection.

use std::convert::Infallible;
use std::fmt::Debug;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_saas_guard::session::{MemorySessionStore, Session, SessionRefreshLayer};
use tower_saas_guard::subscription::{
    Entitlement, EntitlementLayer, EntitlementPolicy, Entitlements, MemorySubscriptionStore,
    RequireSubscriptionLayer, Subscription, SubscriptionChange, SubscriptionStatus,
};

/// Compiles only when `value` is `Send`: hyper and tonic spawn the
/// response futures.
fn assert_send<T: Send>(value: T) -> T {
    value
}

/// Collects a response body; a body error fails the test.
async fn collect<B>(body: B) -> Bytes
where
    B: Body<Data = Bytes>,
    B::Error: Debug,
{
    body.collect()
        .await
        .expect("the body is read whole")
        .to_bytes()
}

async fn assert_rejection<B>(response: Response<B>, status: StatusCode, code: &str)
where
    B: Body<Data = Bytes>,
    B::Error: Debug,
{
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value =
        serde_json::from_slice(&collect(response.into_body()).await).expect("a problem+json body");
    assert_eq!(problem["code"], code);
    assert_eq!(problem["status"], status.as_u16());
}

/// Both layers (session outside, subscription inside) around a service
/// answering `make_body(..)`: a hit, a rejection by each layer, and the
/// soft entitlement.
async fn layers_pass_and_reject_with<B>(make_body: fn(Bytes) -> B)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Debug,
{
    let sessions = SessionRefreshLayer::new(MemorySessionStore::new());
    let handle = sessions.handle();
    let entitlements = Entitlements::new(MemorySubscriptionStore::new());
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
        .await
        .expect("the memory store applies");

    let handler = move |request: Request<()>| async move {
        let session = request.extensions().get::<Session>().expect("a Session");
        let entitlement = request
            .extensions()
            .get::<Entitlement>()
            .expect("an Entitlement");
        let text = format!(
            "{} entitled={} plan={}",
            session.organization_id().unwrap_or("-"),
            entitlement.is_entitled(),
            entitlement.plan().unwrap_or("-"),
        );
        let mut response = Response::new(make_body(Bytes::from(text)));
        response
            .headers_mut()
            .insert("x-inner", HeaderValue::from_static("yes"));
        Ok::<_, Infallible>(response)
    };
    let policy = EntitlementPolicy::new();
    let pro_only = ServiceBuilder::new()
        .layer(sessions.clone())
        .layer(RequireSubscriptionLayer::new(
            entitlements.clone(),
            policy.clone(),
        ))
        .service(service_fn(handler));
    let soft = ServiceBuilder::new()
        .layer(sessions)
        .layer(EntitlementLayer::new(entitlements, policy))
        .service(service_fn(handler));

    let pro_token = handle
        .create(Some("org_pro"), ())
        .await
        .expect("created")
        .token
        .to_string();
    let free_token = handle
        .create(Some("org_free"), ())
        .await
        .expect("created")
        .token
        .to_string();
    let request = |token: Option<&str>| {
        let mut request = Request::builder();
        if let Some(token) = token {
            request = request.header("x-session-id", token);
        }
        request.body(()).expect("a valid request")
    };

    // A hit: the inner body and headers come through, with the expiry.
    let hit = assert_send(pro_only.clone().oneshot(request(Some(&pro_token))))
        .await
        .expect("infallible");
    assert_eq!(hit.status(), StatusCode::OK);
    assert_eq!(hit.headers()["x-inner"], "yes");
    assert!(hit.headers().contains_key("x-session-expires-at"));
    assert!(!hit.body().is_rejection());
    assert_eq!(
        collect(hit.into_body()).await,
        "org_pro entitled=true plan=pro"
    );

    // Rejections: by the session layer, then by the subscription layer.
    let anonymous = pro_only
        .clone()
        .oneshot(request(None))
        .await
        .expect("infallible");
    assert!(anonymous.body().is_rejection());
    assert!(!anonymous.headers().contains_key("x-session-expires-at"));
    assert_rejection(anonymous, StatusCode::UNAUTHORIZED, "session_missing").await;

    let free = pro_only
        .oneshot(request(Some(&free_token)))
        .await
        .expect("infallible");
    assert!(!free.headers().contains_key("x-inner"));
    assert!(free.headers().contains_key("x-session-expires-at"));
    assert_rejection(free, StatusCode::FORBIDDEN, "subscription_required").await;

    // The entitlement without a gate: the handler reads the decision.
    let degraded = assert_send(soft.oneshot(request(Some(&free_token))))
        .await
        .expect("infallible");
    assert_eq!(degraded.status(), StatusCode::OK);
    assert_eq!(degraded.headers()["x-inner"], "yes");
    assert_eq!(
        collect(degraded.into_body()).await,
        "org_free entitled=false plan=-"
    );
}

#[tokio::test]
async fn layers_pass_and_reject_with_axum_body() {
    layers_pass_and_reject_with(axum::body::Body::from).await;
}

#[tokio::test]
async fn layers_pass_and_reject_with_tonic_body() {
    layers_pass_and_reject_with(|bytes| tonic::body::Body::new(Full::new(bytes))).await;
}

#[tokio::test]
async fn layers_pass_and_reject_with_full_bytes() {
    layers_pass_and_reject_with(Full::new).await;
}
