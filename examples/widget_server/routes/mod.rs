//! The handlers, one module per side: the visitor (widget), the operator
//! (dashboard) and billing; plus the answers for unknown routes and methods.

pub(crate) mod billing;
pub(crate) mod operator;
pub(crate) mod visitor;

use std::time::SystemTime;

use axum::http::StatusCode;

use super::problem::ApiError;
// Private imports are visible to the submodules: they reach the rest of
// the app as `super::app`, `super::storage`, … (this file is included as a
// module by the end-to-end tests too, so `crate::` would not name it).
use super::{ai, app, input, pagination, problem, storage};
use storage::{Message, Role};

pub(crate) async fn route_not_found() -> ApiError {
    ApiError::not_found("No route matches this path.".to_owned())
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        title: "Method not allowed",
        detail: "This route does not accept this method; see the Allow header.".to_owned(),
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
