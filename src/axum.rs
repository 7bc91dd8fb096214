//! axum extractors for what the layers put into request extensions.

use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::rejection::problem_json;
use crate::session::Session;
use crate::subscription::Entitlement;

/// A handler asked for something no layer put into the request: the route
/// is missing its layer. Answers 500, since this is a server bug.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{0} is missing from the request extensions: is its layer applied to this route?")]
pub struct MissingExtension(&'static str);

impl IntoResponse for MissingExtension {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        problem_json(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal server error",
            "The server is misconfigured.",
        )
        .map(axum_core::body::Body::from)
    }
}

/// Extracts the [`Session`] that `SessionRefreshLayer` validated.
impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = MissingExtension;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(MissingExtension("Session"))
    }
}

/// `Option<Session>`: `None` on routes without `SessionRefreshLayer`.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Session>().cloned())
    }
}

/// Extracts the [`Entitlement`] a subscription layer decided.
impl<S: Send + Sync> FromRequestParts<S> for Entitlement {
    type Rejection = MissingExtension;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Entitlement>()
            .cloned()
            .ok_or(MissingExtension("Entitlement"))
    }
}

/// `Option<Entitlement>`: `None` on routes without a subscription layer.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Entitlement {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Entitlement>().cloned())
    }
}
