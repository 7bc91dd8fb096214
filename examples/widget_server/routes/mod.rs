//! The handlers, one module per side: the visitor (widget), the operator
//! (dashboard) and billing; plus the answers for unknown routes and methods.

pub(crate) mod billing;
pub(crate) mod operator;
pub(crate) mod visitor;

use std::time::SystemTime;

use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::problem::ApiError;
// Private imports are visible to the submodules: they reach the rest of
// the app as `super::app`, `super::storage`, … (this file is included as a
// module by the end-to-end tests too, so `crate::` would not name it).
use super::{ai, app, input, limits, pagination, problem, storage};
use storage::{Message, Role};

/// An unknown route: 404 `not_found`, or `UNIMPLEMENTED` for a gRPC call
/// (an unknown service; tonic answers unknown methods of a known one).
pub(crate) async fn route_not_found(request: Request) -> Response {
    if is_grpc_call(&request) {
        return tonic::Status::unimplemented("No service matches this path.").into_http();
    }
    ApiError::not_found("No route matches this path.".to_owned()).into_response()
}

/// A gRPC call: a POST whose content-type is `application/grpc`, or
/// `application/grpc+…` / `application/grpc;…`.
fn is_grpc_call(request: &Request) -> bool {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .map_or(&b""[..], |value| value.as_bytes());
    let grpc = b"application/grpc";
    request.method() == Method::POST
        && content_type.len() >= grpc.len()
        && content_type[..grpc.len()].eq_ignore_ascii_case(grpc)
        && matches!(content_type.get(grpc.len()), None | Some(b'+' | b';'))
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        title: "Method not allowed",
        detail: "This route does not accept this method; see the Allow header.".to_owned(),
        retry_after: None,
    }
}

/// A new message with a fresh id.
fn new_message(role: Role, content: String, created_at: SystemTime) -> Result<Message, ApiError> {
    Ok(Message {
        id: input::new_id("msg")?,
        role,
        content,
        created_at,
    })
}
