//! The layers in front of a real `tonic::transport::Server`, called by real
//! tonic clients over HTTP/2: per-service wiring (`NamedService` passes
//! through), one global layer with a skip rule, method predicates for
//! renewal and gating, and tokens in either metadata key.
#![cfg(feature = "tonic")]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::Layer;
use tower_saas_guard::grpc;
use tower_saas_guard::session::{
    BearerSource, FallbackSource, HeaderSource, MemorySessionStore, Session, SessionHandle,
    SessionRefreshLayer,
};
use tower_saas_guard::subscription::{
    Entitlement, EntitlementLayer, EntitlementPolicy, Entitlements, FromHeader,
    MemorySubscriptionStore, RequireSubscriptionLayer, Subscription, SubscriptionChange,
    SubscriptionStatus,
};
use tower_saas_guard::{parse_rfc3339, ManualClock};

#[allow(clippy::all, clippy::pedantic)]
mod pb {
    include!("../examples/widget_server/grpc/support.v1.rs");
}

use pb::support_client::SupportClient;
use pb::support_server::{Support, SupportServer};

const SECOND: Duration = Duration::from_secs(1);
const SEND_MESSAGE: &str = "/support.v1.Support/SendMessage";
const ENHANCE: &str = "/support.v1.Support/Enhance";
const HEALTH: &str = "grpc.health.v1.Health";

/// A `Support` service that reports what the layers attached: the session
/// (its expiry, whether it was renewed) and the entitlement.
#[derive(Debug, Clone, Copy)]
struct Probe;

fn session_of<T>(request: &Request<T>) -> String {
    match request.extensions().get::<Session>() {
        Some(session) => format!("session renewed={}", session.renewed()),
        None => "no session".to_owned(),
    }
}

#[tonic::async_trait]
impl Support for Probe {
    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        Ok(Response::new(pb::Conversation {
            conversation_id: session_of(&request),
            status: String::new(),
        }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        Ok(Response::new(pb::SendMessageResponse {
            message_id: session_of(&request),
            ai_replied: false,
            status: String::new(),
        }))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let entitled = request
            .extensions()
            .get::<Entitlement>()
            .map(|entitlement| entitlement.is_entitled().to_string());
        Ok(Response::new(pb::ListMessagesResponse {
            messages: Vec::new(),
            status: entitled.unwrap_or_else(|| session_of(&request)),
        }))
    }

    async fn enhance(
        &self,
        request: Request<pb::EnhanceRequest>,
    ) -> Result<Response<pb::EnhanceResponse>, Status> {
        Ok(Response::new(pb::EnhanceResponse {
            enhanced: request.into_inner().draft.to_uppercase(),
        }))
    }
}

fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_750_000_000_000)
}

/// 10 s sessions renewed within 5 s of expiry, on a hand-driven clock.
fn sessions(clock: &ManualClock) -> SessionRefreshLayer {
    SessionRefreshLayer::builder(MemorySessionStore::new())
        .duration(10 * SECOND)
        .refresh_threshold(5 * SECOND)
        .clock(clock.clone())
        .build()
        .expect("valid settings")
}

/// Serves `router` on a free loopback port in the background (the server
/// stops with the test's runtime) and connects a channel to it.
macro_rules! serve {
    ($router:expr $(,)?) => {{
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("bound address");
        let server = $router.serve_with_incoming(TcpIncoming::from(listener));
        tokio::spawn(async move { server.await.expect("the gRPC server runs") });
        connect(addr).await
    }};
}

async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the server accepts connections")
}

/// A request carrying `token` in `x-session-id`.
fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "x-session-id",
        MetadataValue::try_from(token).expect("a token is ASCII"),
    );
    request
}

fn expires_at<T>(response: &Response<T>) -> SystemTime {
    let value = response
        .metadata()
        .get("x-session-expires-at")
        .expect("x-session-expires-at in the response metadata")
        .to_str()
        .expect("ASCII");
    parse_rfc3339(value).expect("RFC 3339")
}

async fn health_status(channel: Channel) -> Result<ServingStatus, Status> {
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(reply.into_inner().status())
}

async fn new_token(handle: &SessionHandle, organization: &str) -> String {
    handle
        .create(Some(organization), ())
        .await
        .expect("the memory store creates")
        .token
        .to_string()
}

#[tokio::test]
async fn a_layered_service_is_added_per_service_under_its_own_name() {
    assert_eq!(
        <tower_saas_guard::session::SessionRefresh<SupportServer<Probe>> as NamedService>::NAME,
        "support.v1.Support"
    );
    let clock = ManualClock::new(epoch());
    let sessions = sessions(&clock);
    let handle = sessions.handle();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let channel = serve!(Server::builder()
        .add_service(health)
        .add_service(sessions.layer(SupportServer::new(Probe))),);
    let mut client = SupportClient::new(channel.clone());

    // The health service was added beside it, without the layer.
    assert_eq!(
        health_status(channel)
            .await
            .expect("health answers without a session"),
        ServingStatus::Serving
    );

    let status = client
        .create_conversation(pb::CreateConversationRequest {})
        .await
        .expect_err("no session");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.metadata().get("x-session-expires-at").is_none());

    let token = new_token(&handle, "org_1").await;
    let reply = client
        .create_conversation(with_token(pb::CreateConversationRequest {}, &token))
        .await
        .expect("a valid session");
    assert_eq!(expires_at(&reply), epoch() + 10 * SECOND);
    assert_eq!(reply.into_inner().conversation_id, "session renewed=false");
}

#[tokio::test]
async fn one_global_layer_guards_every_service_but_the_skipped_ones() {
    let clock = ManualClock::new(epoch());
    let sessions = sessions(&clock).skip_when(grpc::service(HEALTH));
    let handle = sessions.handle();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let channel = serve!(Server::builder()
        .layer(sessions)
        .add_service(health)
        .add_service(SupportServer::new(Probe)),);

    // Skipped: answered without a session, and nothing is added.
    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no session");
    assert!(reply.metadata().get("x-session-expires-at").is_none());
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);

    let mut client = SupportClient::new(channel);
    let status = client
        .list_messages(pb::ListMessagesRequest::default())
        .await
        .expect_err("no session");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let token = new_token(&handle, "org_1").await;
    let reply = client
        .list_messages(with_token(pb::ListMessagesRequest::default(), &token))
        .await
        .expect("a valid session");
    assert!(reply.metadata().get("x-session-expires-at").is_some());
    assert_eq!(reply.into_inner().status, "session renewed=false");
}

#[tokio::test]
async fn without_the_skip_rule_the_global_layer_guards_health_too() {
    let clock = ManualClock::new(epoch());
    let (_reporter, health) = tonic_health::server::health_reporter();
    let channel = serve!(Server::builder()
        .layer(sessions(&clock))
        .add_service(health));
    let status = health_status(channel).await.expect_err("no session");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn only_the_named_methods_renew_the_others_validate() {
    let clock = ManualClock::new(epoch());
    let sessions = sessions(&clock).activity(grpc::methods([SEND_MESSAGE]));
    let handle = sessions.handle();
    let channel = serve!(Server::builder().add_service(sessions.layer(SupportServer::new(Probe))));
    let mut client = SupportClient::new(channel);
    let token = new_token(&handle, "org_1").await;

    // 6 s in, 4 s are left: inside the 5 s threshold.
    clock.advance(6 * SECOND);
    let listed = client
        .list_messages(with_token(pb::ListMessagesRequest::default(), &token))
        .await
        .expect("a valid session");
    assert_eq!(
        expires_at(&listed),
        epoch() + 10 * SECOND,
        "reading never renews"
    );
    assert_eq!(listed.into_inner().status, "session renewed=false");

    let sent = client
        .send_message(with_token(pb::SendMessageRequest::default(), &token))
        .await
        .expect("a valid session");
    assert_eq!(expires_at(&sent), epoch() + 16 * SECOND, "sending renews");
    assert_eq!(sent.into_inner().message_id, "session renewed=true");

    // The renewal holds: past the first expiry, the session still works.
    clock.advance(5 * SECOND);
    let listed = client
        .list_messages(with_token(pb::ListMessagesRequest::default(), &token))
        .await
        .expect("renewed");
    assert_eq!(expires_at(&listed), epoch() + 16 * SECOND);
}

#[tokio::test]
async fn the_token_may_come_as_a_bearer_or_in_x_session_id() {
    let clock = ManualClock::new(epoch());
    let sessions =
        sessions(&clock).token_source(FallbackSource::new(HeaderSource::default(), BearerSource));
    let handle = sessions.handle();
    let channel = serve!(Server::builder().add_service(sessions.layer(SupportServer::new(Probe))));
    let mut client = SupportClient::new(channel);
    let token = new_token(&handle, "org_1").await;

    let mut bearer = Request::new(pb::ListMessagesRequest::default());
    bearer.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("ASCII"),
    );
    let reply = client.list_messages(bearer).await.expect("a bearer token");
    assert_eq!(reply.into_inner().status, "session renewed=false");
    client
        .list_messages(with_token(pb::ListMessagesRequest::default(), &token))
        .await
        .expect("x-session-id");

    let mut wrong_scheme = Request::new(pb::ListMessagesRequest::default());
    wrong_scheme.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Basic {token}")).expect("ASCII"),
    );
    let status = client
        .list_messages(wrong_scheme)
        .await
        .expect_err("not a bearer");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

/// `org_1` subscribes to `pro`.
async fn upgrade(entitlements: &Entitlements) {
    let subscription = Subscription {
        organization_id: "org_1".into(),
        subscription_id: "sub_1".into(),
        status: SubscriptionStatus::Active,
        plan: "pro".into(),
        current_period_end: None,
        trial_end: None,
    };
    let change = SubscriptionChange::new(subscription, SystemTime::now()).with_event_id("evt_1");
    assert!(entitlements
        .apply(&change)
        .await
        .expect("the memory store applies")
        .is_applied());
}

fn as_operator<T>(message: T, organization: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "x-organization-id",
        MetadataValue::try_from(organization).expect("ASCII"),
    );
    request
}

#[tokio::test]
async fn only_the_gated_method_needs_a_subscription_and_skipped_calls_need_no_organization() {
    let entitlements = Entitlements::new(MemorySubscriptionStore::new());
    let pro_only = RequireSubscriptionLayer::new(entitlements.clone(), EntitlementPolicy::new())
        .organization(FromHeader::new(http::HeaderName::from_static(
            "x-organization-id",
        )))
        .gate_when(grpc::methods([ENHANCE]))
        .skip_when(grpc::service(HEALTH));
    let (_reporter, health) = tonic_health::server::health_reporter();
    let channel = serve!(Server::builder()
        .layer(pro_only)
        .add_service(health)
        .add_service(SupportServer::new(Probe)),);
    let mut client = SupportClient::new(channel.clone());
    let enhance = || {
        as_operator(
            pb::EnhanceRequest {
                conversation_id: "conv_1".into(),
                draft: "thanks".into(),
            },
            "org_1",
        )
    };

    assert_eq!(
        health_status(channel)
            .await
            .expect("health answers without a session"),
        ServingStatus::Serving
    );
    let status = client
        .list_messages(pb::ListMessagesRequest::default())
        .await
        .expect_err("no organization");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let status = client
        .enhance(enhance())
        .await
        .expect_err("a free organization");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Not gated: the decision is only attached.
    let listed = client
        .list_messages(as_operator(pb::ListMessagesRequest::default(), "org_1"))
        .await
        .expect("ungated");
    assert_eq!(listed.into_inner().status, "false");

    upgrade(&entitlements).await;
    let enhanced = client
        .enhance(enhance())
        .await
        .expect("a paying organization");
    assert_eq!(enhanced.into_inner().enhanced, "THANKS");
    let listed = client
        .list_messages(as_operator(pb::ListMessagesRequest::default(), "org_1"))
        .await
        .expect("ungated");
    assert_eq!(listed.into_inner().status, "true");
}

#[tokio::test]
async fn the_soft_layer_is_added_per_service_and_skips_health() {
    let entitlements = Entitlements::new(MemorySubscriptionStore::new());
    let soft = EntitlementLayer::new(entitlements.clone(), EntitlementPolicy::new())
        .organization(FromHeader::new(http::HeaderName::from_static(
            "x-organization-id",
        )))
        .skip_when(grpc::service(HEALTH));
    let (_reporter, health) = tonic_health::server::health_reporter();
    // The same layer on both services: the skip rule lets health through.
    let channel = serve!(Server::builder()
        .add_service(soft.layer(health))
        .add_service(soft.layer(SupportServer::new(Probe))),);
    assert_eq!(
        health_status(channel.clone())
            .await
            .expect("health answers without a session"),
        ServingStatus::Serving
    );

    let mut client = SupportClient::new(channel);
    let enhanced = client
        .enhance(as_operator(pb::EnhanceRequest::default(), "org_2"))
        .await
        .expect("the soft layer never gates");
    assert_eq!(enhanced.into_inner().enhanced, "");
    let status = client
        .enhance(pb::EnhanceRequest::default())
        .await
        .expect_err("no organization");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}
