//! Sliding sessions: [`SessionRefreshLayer`].
//!
//! A session lives for a fixed [`duration`](SessionRefreshBuilder::duration)
//! (24 h by default). While its holder stays active it is renewed, but only
//! when less than the [`refresh_threshold`](SessionRefreshBuilder::refresh_threshold)
//! (4 h) is left, so an active user is never logged out and the store is
//! written once per renewal window rather than once per request. An
//! [`absolute_lifetime`](SessionRefreshBuilder::absolute_lifetime) (30 days)
//! caps renewal. Expired and unknown sessions are rejected, never recreated.
//!
//! For each request the layer:
//!
//! 1. takes the token from its [`TokenSource`] (`x-session-id` by default):
//!    none → `session_missing`; not a token's shape → `session_invalid`,
//!    without touching the store;
//! 2. loads the session: the moka cache first (with a few dozen entries
//!    per thread kept in front of it, dropped at once on revocation or
//!    renewal), then the store; concurrent loads of one cold session are
//!    coalesced into one store read;
//! 3. rejects unknown sessions (`session_not_found`) and expired ones
//!    (`session_expired`; a cached record that looks expired is re-read
//!    once, since another instance may have renewed it);
//! 4. renews when the request is activity (see [`ActivityRule`]) and less
//!    than the threshold is left: `expires_at` becomes
//!    `min(now + duration, created_at + absolute_lifetime)` through the
//!    store's extend-only [`SessionStore::extend`], once per session however
//!    many requests are due at the same moment;
//! 5. puts the [`Session`] into the request extensions (an extractor with
//!    the `axum` feature);
//! 6. calls the inner service and adds `x-session-expires-at` to its
//!    response (and, for a [`CookieSource`], re-sends the cookie when
//!    renewed).
//!
//! Rejections are `Ok` responses (problem+json, or trailers-only gRPC for
//! gRPC callers); see [`crate::rejection`]. A store that fails or hangs past
//! [`store_timeout`](SessionRefreshBuilder::store_timeout) yields
//! `store_unavailable`. Store calls need a Tokio runtime (for the timeout).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_saas_guard::session::{MemorySessionStore, Session, SessionRefreshLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = SessionRefreshLayer::builder(MemorySessionStore::new())
//!     .duration(Duration::from_secs(10))
//!     .refresh_threshold(Duration::from_secs(5))
//!     .build()?;
//! let handle = sessions.handle();
//!
//! let service = ServiceBuilder::new()
//!     .layer(sessions)
//!     .service_fn(|request: Request<String>| async move {
//!         let session = request.extensions().get::<Session>().expect("set by the layer");
//!         let body = format!("hello, {}", session.payload()["name"]);
//!         Ok::<_, Infallible>(Response::new(body))
//!     });
//!
//! let created = handle.create(Some("org_1"), serde_json::json!({ "name": "Ada" })).await?;
//! let request = Request::builder()
//!     .header("x-session-id", created.token.to_string())
//!     .body(String::new())?;
//! let response = service.clone().oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert!(response.headers().contains_key("x-session-expires-at"));
//!
//! let anonymous = service.oneshot(Request::new(String::new())).await?;
//! assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```

mod activity;
mod core;
mod layer;
mod service;
mod signing;
mod source;
mod store;
mod token;

pub use self::activity::{ActivityRule, EveryRequest, ValidateOnly};
pub use self::core::{CreatedSession, PurgeTask, Session, SessionEnded, SessionHandle};
pub use crate::future::ResponseFuture;

/// The response header that carries a session's expiry (RFC 3339 UTC, ms).
pub const SESSION_EXPIRES_AT: http::HeaderName =
    http::HeaderName::from_static("x-session-expires-at");
pub use self::layer::{SessionRefreshBuilder, SessionRefreshLayer};
pub use self::service::SessionRefresh;
pub use self::signing::{TokenKeys, MIN_TOKEN_KEY_BYTES};
pub use self::source::{
    BearerSource, CookieSource, FallbackSource, HeaderSource, SameSite, TokenError, TokenSource,
    DEFAULT_COOKIE_NAME,
};
pub use self::store::{
    InvalidCursor, MemorySessionStore, PageRequest, SessionCursor, SessionOwner, SessionPage,
    SessionRecord, SessionStore,
};
pub use self::token::{MalformedToken, SessionId, SessionToken};
