//! axum extractors for what the layers put into request extensions.

use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
use http::request::Parts;

use crate::rejection::{problem_json, ErrorCode};
use crate::session::{Session, SessionEnded};
use crate::subscription::Entitlement;

/// A handler asked for something no layer put into the request: the route
/// is missing its layer. Answers 500 `server_misconfigured` (a server bug)
/// whose detail, also logged at `error` level, names the layer to add.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "the handler extracts `{what}`, but no {layer} ran for this route: add it to the route \
     (`.route_layer(..)`) or to the router (`.layer(..)`), outside the handler; or extract \
     `Option<{what}>` where the layer is optional"
)]
pub struct MissingExtension {
    what: &'static str,
    layer: &'static str,
}

impl IntoResponse for MissingExtension {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        let code = ErrorCode::Misconfigured;
        problem_json(
            code.http_status(),
            code.as_str(),
            code.title(),
            &self.to_string(),
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
            .ok_or(MissingExtension {
                what: "Session",
                layer: "SessionRefreshLayer",
            })
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
            .ok_or(MissingExtension {
                what: "Entitlement",
                layer: "RequireSubscriptionLayer or EntitlementLayer",
            })
    }
}

/// `Option<Entitlement>`: `None` on routes without a subscription layer.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Entitlement {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Entitlement>().cloned())
    }
}

/// `(ended, StatusCode::NO_CONTENT)`: marks the response of a logout, so
/// the session layer adds no `x-session-expires-at` to it.
impl IntoResponseParts for SessionEnded {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Self::Error> {
        parts.extensions_mut().insert(self);
        Ok(parts)
    }
}
