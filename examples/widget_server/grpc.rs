//! gRPC on the same address as HTTP: `support.v1.Support`
//! (`examples/proto/support.proto`) behind the same session and
//! subscription layers, on the same state, and the standard
//! `grpc.health.v1.Health` outside them.
//!
//! | method | session | organization / gating |
//! |---|---|---|
//! | `CreateConversation` | renews | none |
//! | `SendMessage` | renews | soft (the AI reply) |
//! | `ListMessages` | validate only | none |
//! | `Enhance` | none | metadata `x-organization-id`, required |
//!
//! Each call runs the very function its REST route runs (`routes/`), so
//! the two protocols answer alike and share sessions and conversations.
//! Application errors become the status codes gRPC clients expect:
//! `INVALID_ARGUMENT` (400), `NOT_FOUND` (404), `PERMISSION_DENIED` (403),
//! `RESOURCE_EXHAUSTED` (429), `UNAVAILABLE` (503), `INTERNAL`.
//!
//! The generated code in `grpc/support.v1.rs` is committed; regenerate it
//! after changing the proto with
//! `cargo run --manifest-path tools/protogen/Cargo.toml` (pure Rust, no
//! `protoc`).

use axum::http::StatusCode;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tower::ServiceBuilder;
use tower_saas_guard::grpc;
use tower_saas_guard::session::{Session, SessionRefreshLayer};
use tower_saas_guard::subscription::{Entitlement, EntitlementLayer, RequireSubscriptionLayer};
use tower_saas_guard::RequestHead;

use super::app::AppState;
use super::input::{required_text, MAX_ID_CHARS};
use super::pagination::{Page, MAX_LIMIT};
use super::problem::ApiError;
use super::routes::{operator, visitor};

/// The code generated from `examples/proto/support.proto`.
#[allow(clippy::all, clippy::pedantic, unreachable_pub)]
pub mod pb {
    include!("grpc/support.v1.rs");
}

use pb::support_server::{Support, SupportServer};

/// The method paths, as the layers see them.
pub(crate) const CREATE_CONVERSATION: &str = "/support.v1.Support/CreateConversation";
pub(crate) const SEND_MESSAGE: &str = "/support.v1.Support/SendMessage";
pub(crate) const ENHANCE: &str = "/support.v1.Support/Enhance";

/// The layers of `support.v1.Support`, made from the ones the REST routes
/// use (so they share their stores, caches and clock).
pub(crate) struct SupportLayers {
    /// The REST routes' session layer (settings, store, cache).
    pub(crate) sessions: SessionRefreshLayer,
    /// The visitor's soft layer (organization from the session).
    pub(crate) visitor_entitlement: EntitlementLayer,
    /// The operator's rejecting layer (organization from `x-organization-id`).
    pub(crate) subscribers_only: RequireSubscriptionLayer,
}

/// Adds `support.v1.Support` (behind its layers) and `grpc.health.v1.Health`
/// (behind none) to `router`, at `/<service>/<method>` as tonic routes them.
pub(crate) async fn add_services(
    router: axum::Router<AppState>,
    state: AppState,
    layers: SupportLayers,
) -> axum::Router<AppState> {
    // Creating a conversation and sending renew; listing only validates.
    // `Enhance` is the operator's: no session.
    let sessions = layers
        .sessions
        .activity(grpc::methods([CREATE_CONVERSATION, SEND_MESSAGE]))
        .skip_when(grpc::methods([ENHANCE]));
    // Only `SendMessage` reads the visitor's entitlement (the AI reply);
    // only `Enhance` requires the operator's.
    let soft = layers
        .visitor_entitlement
        .skip_when(|head: &RequestHead<'_>| head.uri().path() != SEND_MESSAGE);
    let required = layers
        .subscribers_only
        .skip_when(|head: &RequestHead<'_>| head.uri().path() != ENHANCE);
    let support = ServiceBuilder::new()
        .layer(sessions)
        .layer(soft)
        .layer(required)
        .service(SupportServer::new(SupportApi { state }));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SupportServer<SupportApi>>()
        .await;

    router
        .route_service(&service_route(&support), support)
        .route_service(&service_route(&health), health)
}

/// `/<package.Service>/{*method}`: where tonic routes a service's calls.
fn service_route<S: NamedService>(_: &S) -> String {
    format!("/{}/{{*method}}", S::NAME)
}

/// `support.v1.Support`, on the app's state.
pub(crate) struct SupportApi {
    state: AppState,
}

/// What the session layer attached (it always does for these calls).
fn session_of<T>(request: &Request<T>) -> Result<Session, Status> {
    request
        .extensions()
        .get::<Session>()
        .cloned()
        .ok_or_else(|| Status::internal("the session layer did not run"))
}

/// What a subscription layer attached.
fn entitlement_of<T>(request: &Request<T>) -> Result<Entitlement, Status> {
    request
        .extensions()
        .get::<Entitlement>()
        .cloned()
        .ok_or_else(|| Status::internal("the subscription layer did not run"))
}

/// A conversation id as a client sent it: non-empty, at most 128
/// characters (`INVALID_ARGUMENT` otherwise).
fn conversation_id(id: &str) -> Result<&str, Status> {
    required_text("conversation_id", id, MAX_ID_CHARS)?;
    Ok(id)
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let code = match error.status {
            StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
            StatusCode::NOT_FOUND => tonic::Code::NotFound,
            StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
            StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::CONFLICT => tonic::Code::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        };
        Status::new(code, error.detail)
    }
}

#[tonic::async_trait]
impl Support for SupportApi {
    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let session = session_of(&request)?;
        let conversation = visitor::open_conversation(&self.state, &session).await?;
        Ok(Response::new(pb::Conversation {
            conversation_id: conversation.id,
            status: conversation.status.as_str().to_owned(),
        }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let session = session_of(&request)?;
        let entitlement = entitlement_of(&request)?;
        let message = request.into_inner();
        // As over REST: the content first, then the conversation.
        required_text("content", &message.content, super::input::MAX_CONTENT_CHARS)?;
        let id = conversation_id(&message.conversation_id)?;
        let sent =
            visitor::post_visitor_message(&self.state, &session, &entitlement, id, message.content)
                .await?;
        Ok(Response::new(pb::SendMessageResponse {
            message_id: sent.message_id,
            ai_replied: sent.ai_replied,
            status: sent.status.as_str().to_owned(),
        }))
    }

    /// The first 200 messages, oldest first (the proto has no paging; the
    /// REST route pages).
    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let session = session_of(&request)?;
        let id = conversation_id(&request.get_ref().conversation_id)?;
        let conversation = visitor::conversation_of(&self.state, &session, id).await?;
        let page = Page {
            after: None,
            limit: MAX_LIMIT,
        };
        let messages = self
            .state
            .store
            .messages(&conversation.organization_id, id, page)
            .await
            .map_err(ApiError::app_store)?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: messages
                .items
                .into_iter()
                .map(|message| pb::Message {
                    id: message.id,
                    role: message.role.as_str().to_owned(),
                    content: message.content,
                })
                .collect(),
            status: conversation.status.as_str().to_owned(),
        }))
    }

    async fn enhance(
        &self,
        request: Request<pb::EnhanceRequest>,
    ) -> Result<Response<pb::EnhanceResponse>, Status> {
        let entitlement = entitlement_of(&request)?;
        let draft = request.into_inner();
        required_text("draft", &draft.draft, super::input::MAX_CONTENT_CHARS)?;
        let id = conversation_id(&draft.conversation_id)?;
        let enhanced =
            operator::enhance(&self.state, entitlement.organization_id(), id, &draft.draft).await?;
        Ok(Response::new(pb::EnhanceResponse { enhanced }))
    }
}
