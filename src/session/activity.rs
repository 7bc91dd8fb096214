//! Which requests count as activity, and so may renew a session.

use crate::request::RequestHead;

/// Decides whether a request counts as activity (and may renew its session).
///
/// Implemented by [`EveryRequest`] (the default), [`ValidateOnly`] (never
/// renews), [`GrpcMethods`](crate::grpc::GrpcMethods) (the gRPC calls that
/// renew), and any `Fn(&RequestHead<'_>) -> bool` closure, for example
/// "only non-GET requests".
pub trait ActivityRule: Send + Sync + 'static {
    /// Whether `head` counts as activity.
    fn is_activity(&self, head: &RequestHead<'_>) -> bool;
}

impl<F> ActivityRule for F
where
    F: Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
{
    fn is_activity(&self, head: &RequestHead<'_>) -> bool {
        self(head)
    }
}

/// Every request through the layer is activity (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct EveryRequest;

impl ActivityRule for EveryRequest {
    fn is_activity(&self, _: &RequestHead<'_>) -> bool {
        true
    }
}

/// No request is activity: the layer validates sessions and never renews.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateOnly;

impl ActivityRule for ValidateOnly {
    fn is_activity(&self, _: &RequestHead<'_>) -> bool {
        false
    }
}
