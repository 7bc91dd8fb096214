//! gRPC: choosing calls by method path, and putting the layers in front of
//! a tonic server.
//!
//! A gRPC call is an HTTP/2 `POST` to `/package.Service/Method`, and its
//! metadata are HTTP headers, so every layer of this crate works in front
//! of a gRPC service as it is:
//!
//! * the token comes from metadata: `x-session-id` ([`HeaderSource`], the
//!   default), `authorization: Bearer …` ([`BearerSource`]), or either
//!   ([`FallbackSource`]);
//! * rejections of gRPC calls are trailers-only responses with the §3
//!   status (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `UNAVAILABLE`), see
//!   [`crate::rejection`];
//! * `x-session-expires-at` is added to the response headers, which tonic
//!   clients read as the response's (initial) metadata.
//!
//! [`GrpcMethods`] names calls by their path, as a route would: it is an
//! [`ActivityRule`] (which calls renew a session; the others only validate
//! it), a [`GatePredicate`] (which calls need a subscription) and a
//! [`SkipRule`] (which calls pass a layer untouched, such as
//! `grpc.health.v1.Health`). It reads only the request path and needs no
//! feature.
//!
//! # With tonic
//!
//! With the `tonic` feature, the middleware's services
//! ([`SessionRefresh`](crate::session::SessionRefresh),
//! [`SubscriptionGate`](crate::subscription::SubscriptionGate)) carry the
//! [`NamedService`](https://docs.rs/tonic/latest/tonic/server/trait.NamedService.html)
//! name of the service they wrap, so a layered service is added to
//! `tonic::transport::Server` like the plain one, one layer per service:
//!
//! ```text
//! Server::builder()
//!     .add_service(health)                                  // no session
//!     .add_service(sessions.layer(SupportServer::new(api)))
//! ```
//!
//! or once for every service, skipping those that need no session:
//!
//! ```text
//! Server::builder()
//!     .layer(sessions.skip_when(grpc::service("grpc.health.v1.Health")))
//!     .add_service(health)
//!     .add_service(SupportServer::new(api))
//! ```
//!
//! Either way rejections are `Ok` responses (the services keep tonic's
//! `Error = Infallible`), and the response body,
//! [`GuardBody`](crate::GuardBody), is a `http_body::Body` tonic serves as
//! it is. The same services can be routed inside an axum `Router` (with
//! tonic's `Routes::into_axum_router`), to serve gRPC and HTTP on one
//! port.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//!
//! use http::{Request, Response};
//! use tower::{Layer, ServiceExt};
//! use tower_saas_guard::grpc;
//! use tower_saas_guard::session::{MemorySessionStore, Session, SessionRefreshLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = SessionRefreshLayer::new(MemorySessionStore::new())
//!     // Sending renews a session close to expiry; every other call only validates.
//!     .activity(grpc::methods(["/support.v1.Support/SendMessage"]))
//!     // Health checks need no session.
//!     .skip_when(grpc::service("grpc.health.v1.Health"));
//! let service = sessions.layer(tower::service_fn(|request: Request<()>| async move {
//!     let has_session = request.extensions().get::<Session>().is_some();
//!     Ok::<_, Infallible>(Response::new(format!("session: {has_session}")))
//! }));
//! let call = |path: &str| {
//!     Request::post(path).header("content-type", "application/grpc").body(())
//! };
//!
//! let health = service.clone().oneshot(call("/grpc.health.v1.Health/Check")?).await?;
//! assert_eq!(health.status(), 200);
//! assert!(health.headers().get("grpc-status").is_none()); // the inner service answered
//!
//! let anonymous = service.oneshot(call("/support.v1.Support/SendMessage")?).await?;
//! assert_eq!(anonymous.headers()["grpc-status"], "16"); // UNAUTHENTICATED
//! # Ok(())
//! # }
//! ```
//!
//! [`HeaderSource`]: crate::session::HeaderSource
//! [`BearerSource`]: crate::session::BearerSource
//! [`FallbackSource`]: crate::session::FallbackSource
//! [`ActivityRule`]: crate::session::ActivityRule
//! [`GatePredicate`]: crate::subscription::GatePredicate
//! [`SkipRule`]: crate::SkipRule

use crate::request::RequestHead;
use crate::session::ActivityRule;
use crate::skip::SkipRule;
use crate::subscription::GatePredicate;

/// A set of gRPC calls, named by method path (`/package.Service/Method`) or
/// by whole service (`package.Service`).
///
/// Usable as an [`ActivityRule`] (the calls that renew a session), a
/// [`GatePredicate`] (the calls that need a subscription) and a
/// [`SkipRule`] (the calls a layer lets pass untouched). Only the request
/// path is read: an HTTP request to the same path matches too, and reaches
/// the same service.
///
/// ```
/// use tower_saas_guard::grpc::{self, GrpcMethods};
///
/// let renewing = grpc::methods([
///     "/support.v1.Support/CreateConversation",
///     "/support.v1.Support/SendMessage",
/// ]);
/// assert!(renewing.matches_path("/support.v1.Support/SendMessage"));
/// assert!(!renewing.matches_path("/support.v1.Support/ListMessages"));
///
/// let unguarded = GrpcMethods::new()
///     .service("grpc.health.v1.Health")
///     .service("grpc.reflection.v1.ServerReflection");
/// assert!(unguarded.matches_path("/grpc.health.v1.Health/Watch"));
/// assert!(!unguarded.matches_path("/grpc.health.v1.HealthCheck/Watch"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct GrpcMethods {
    /// Whole method paths: `/package.Service/Method`.
    methods: Vec<Box<str>>,
    /// Service prefixes: `/package.Service/`.
    services: Vec<Box<str>>,
}

impl GrpcMethods {
    /// The empty set: matches no call.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the method `path`: `/package.Service/Method` (the leading `/`
    /// may be left out).
    ///
    /// # Panics
    /// When `path` is not `package.Service/Method` with both parts
    /// non-empty and no other `/`: a programming error, caught at start-up.
    pub fn method(mut self, path: impl AsRef<str>) -> Self {
        let path = path.as_ref();
        let bare = path.strip_prefix('/').unwrap_or(path);
        assert!(
            matches!(bare.split_once('/'), Some((service, method))
                if !service.is_empty() && !method.is_empty() && !method.contains('/')),
            "{path:?} is not a gRPC method path (`/package.Service/Method`)"
        );
        self.methods.push(format!("/{bare}").into_boxed_str());
        self
    }

    /// Adds every method of the service `name` (`package.Service`, as in
    /// tonic's `NamedService::NAME`).
    ///
    /// # Panics
    /// When `name` is empty or holds a `/`: a programming error, caught at
    /// start-up.
    pub fn service(mut self, name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        assert!(
            !name.is_empty() && !name.contains('/'),
            "{name:?} is not a gRPC service name (`package.Service`)"
        );
        self.services.push(format!("/{name}/").into_boxed_str());
        self
    }

    /// Whether the request path `path` is one of these calls.
    pub fn matches_path(&self, path: &str) -> bool {
        self.methods.iter().any(|method| **method == *path)
            || self.services.iter().any(|service| {
                path.strip_prefix(&**service)
                    .is_some_and(|method| !method.is_empty() && !method.contains('/'))
            })
    }

    /// Whether the request `head` calls one of these methods.
    pub fn matches(&self, head: &RequestHead<'_>) -> bool {
        self.matches_path(head.uri().path())
    }
}

/// The calls `paths` (`/package.Service/Method` each); see
/// [`GrpcMethods::method`].
///
/// ```
/// let reads = tower_saas_guard::grpc::methods(["/support.v1.Support/ListMessages"]);
/// assert!(reads.matches_path("/support.v1.Support/ListMessages"));
/// ```
///
/// # Panics
/// As [`GrpcMethods::method`], for a path that is not a method path.
pub fn methods<I>(paths: I) -> GrpcMethods
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    paths
        .into_iter()
        .fold(GrpcMethods::new(), GrpcMethods::method)
}

/// Every call of the service `name` (`package.Service`); see
/// [`GrpcMethods::service`].
///
/// ```
/// let health = tower_saas_guard::grpc::service("grpc.health.v1.Health");
/// assert!(health.matches_path("/grpc.health.v1.Health/Check"));
/// ```
///
/// # Panics
/// As [`GrpcMethods::service`], for a name that is empty or holds a `/`.
pub fn service(name: impl AsRef<str>) -> GrpcMethods {
    GrpcMethods::new().service(name)
}

impl ActivityRule for GrpcMethods {
    fn is_activity(&self, head: &RequestHead<'_>) -> bool {
        self.matches(head)
    }
}

impl GatePredicate for GrpcMethods {
    fn is_gated(&self, head: &RequestHead<'_>) -> bool {
        self.matches(head)
    }
}

impl SkipRule for GrpcMethods {
    fn skips(&self, head: &RequestHead<'_>) -> bool {
        self.matches(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_matches(set: &GrpcMethods, path: &str) -> bool {
        let request = http::Request::post(path).body(()).expect("a valid request");
        set.matches(&RequestHead::of(&request))
    }

    #[test]
    fn a_method_matches_only_its_exact_path() {
        let set = methods(["support.v1.Support/SendMessage"]);
        assert!(head_matches(&set, "/support.v1.Support/SendMessage"));
        assert!(!head_matches(&set, "/support.v1.Support/SendMessages"));
        assert!(!head_matches(&set, "/support.v1.Support/Send"));
        assert!(!head_matches(&set, "/other.v1.Support/SendMessage"));
        assert!(!head_matches(&set, "/support.v1.Support/SendMessage/x"));
    }

    #[test]
    fn a_service_matches_its_methods_not_a_longer_name() {
        let set = service("grpc.health.v1.Health");
        assert!(head_matches(&set, "/grpc.health.v1.Health/Check"));
        assert!(head_matches(&set, "/grpc.health.v1.Health/Watch"));
        assert!(!head_matches(&set, "/grpc.health.v1.HealthX/Check"));
        assert!(!head_matches(&set, "/grpc.health.v1.Health/"));
        assert!(!head_matches(&set, "/grpc.health.v1.Health"));
        assert!(!head_matches(&set, "/grpc.health.v1.Health/Check/more"));
    }

    #[test]
    fn the_empty_set_matches_nothing() {
        assert!(!head_matches(&GrpcMethods::new(), "/a.B/C"));
        assert!(!head_matches(&GrpcMethods::new(), "/"));
    }

    #[test]
    #[should_panic(expected = "is not a gRPC method path")]
    fn a_service_name_is_not_a_method_path() {
        let _ = methods(["support.v1.Support"]);
    }

    #[test]
    #[should_panic(expected = "is not a gRPC service name")]
    fn a_method_path_is_not_a_service_name() {
        let _ = service("/support.v1.Support/SendMessage");
    }
}
