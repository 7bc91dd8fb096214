//! Requests a layer lets pass untouched: [`SkipRule`].

use crate::request::RequestHead;

/// Decides which requests a layer lets straight through to the inner
/// service, untouched: no check, nothing added to the request or the
/// response. For health checks, reflection, metrics.
///
/// Set with [`SessionRefreshLayer::skip_when`](crate::session::SessionRefreshLayer::skip_when),
/// [`RequireSubscriptionLayer::skip_when`](crate::subscription::RequireSubscriptionLayer::skip_when)
/// and [`EntitlementLayer::skip_when`](crate::subscription::EntitlementLayer::skip_when).
/// Implemented by [`GrpcMethods`](crate::grpc::GrpcMethods) and any
/// `Fn(&RequestHead<'_>) -> bool` closure.
///
/// ```
/// use tower_saas_guard::{RequestHead, SkipRule};
///
/// let health = |head: &RequestHead<'_>| head.uri().path() == "/healthz";
/// let request = http::Request::get("/healthz").body(())?;
/// assert!(health.skips(&RequestHead::of(&request)));
/// # Ok::<(), http::Error>(())
/// ```
pub trait SkipRule: Send + Sync + 'static {
    /// Whether `head` passes the layer untouched.
    fn skips(&self, head: &RequestHead<'_>) -> bool;
}

impl<F> SkipRule for F
where
    F: Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
{
    fn skips(&self, head: &RequestHead<'_>) -> bool {
        self(head)
    }
}
