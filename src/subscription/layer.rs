//! `RequireSubscriptionLayer` (rejects) and `EntitlementLayer` (attaches).

use std::any::type_name;
use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::entitlements::Entitlements;
use super::policy::EntitlementPolicy;
use super::resolver::{FromSession, OrganizationResolver};
use super::service::SubscriptionGate;
use crate::rejection::{DefaultResponder, RejectionResponder};
use crate::request::RequestHead;
use crate::skip::SkipRule;
use crate::type_name_of;

/// Decides which requests a [`RequireSubscriptionLayer`] gates (rejects
/// when not entitled); the others only get the [`Entitlement`](super::Entitlement).
///
/// Implemented by [`GateAll`] (the default),
/// [`GrpcMethods`](crate::grpc::GrpcMethods) and any
/// `Fn(&RequestHead<'_>) -> bool` closure, for example "not GET or DELETE".
pub trait GatePredicate: Send + Sync + 'static {
    /// Whether `head` is gated.
    fn is_gated(&self, head: &RequestHead<'_>) -> bool;
}

impl<F> GatePredicate for F
where
    F: Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
{
    fn is_gated(&self, head: &RequestHead<'_>) -> bool {
        self(head)
    }
}

/// Every request is gated.
#[derive(Debug, Clone, Copy, Default)]
pub struct GateAll;

impl GatePredicate for GateAll {
    fn is_gated(&self, _: &RequestHead<'_>) -> bool {
        true
    }
}

/// Nothing is gated: the non-rejecting layer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GateNone;

impl GatePredicate for GateNone {
    fn is_gated(&self, _: &RequestHead<'_>) -> bool {
        false
    }
}

#[derive(Clone)]
pub(crate) struct GateState {
    pub(crate) entitlements: Entitlements,
    pub(crate) policy: EntitlementPolicy,
    pub(crate) gate: Arc<dyn GatePredicate>,
    gate_name: &'static str,
    pub(crate) resolver: Arc<dyn OrganizationResolver>,
    resolver_name: &'static str,
    pub(crate) responder: Arc<dyn RejectionResponder>,
    responder_name: &'static str,
    /// Requests that pass untouched; `None` (the default) costs one branch.
    pub(crate) skip: Option<Arc<dyn SkipRule>>,
    skip_name: Option<&'static str>,
}

impl GateState {
    fn new(
        entitlements: Entitlements,
        policy: EntitlementPolicy,
        gate: impl GatePredicate,
    ) -> Self {
        Self {
            entitlements,
            policy,
            gate_name: type_name_of(&gate),
            gate: Arc::new(gate),
            resolver: Arc::new(FromSession),
            resolver_name: type_name::<FromSession>(),
            responder: Arc::new(DefaultResponder::new()),
            responder_name: type_name::<DefaultResponder>(),
            skip: None,
            skip_name: None,
        }
    }

    fn with_skip(&self, rule: impl SkipRule) -> Self {
        let mut state = self.clone();
        state.skip_name = Some(type_name_of(&rule));
        state.skip = Some(Arc::new(rule));
        state
    }

    fn with_gate(&self, gate: impl GatePredicate) -> Self {
        let mut state = self.clone();
        state.gate_name = type_name_of(&gate);
        state.gate = Arc::new(gate);
        state
    }

    fn with_resolver(&self, resolver: impl OrganizationResolver) -> Self {
        let mut state = self.clone();
        state.resolver_name = type_name_of(&resolver);
        state.resolver = Arc::new(resolver);
        state
    }

    fn with_responder(&self, responder: impl RejectionResponder) -> Self {
        let mut state = self.clone();
        state.responder_name = type_name_of(&responder);
        state.responder = Arc::new(responder);
        state
    }
}

impl fmt::Debug for GateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionLayer")
            .field("policy", &self.policy)
            .field("gate", &self.gate_name)
            .field("organization", &self.resolver_name)
            .field("responder", &self.responder_name)
            .field("skip_when", &self.skip_name)
            .finish()
    }
}

/// Lets a request through only when its organization is entitled; others
/// get `subscription_required` (403, or gRPC PERMISSION_DENIED).
///
/// Requests the [`gate_when`](Self::gate_when) predicate does not gate pass
/// whatever the decision. Every request that passes carries the
/// [`Entitlement`](super::Entitlement).
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct RequireSubscriptionLayer {
    state: Arc<GateState>,
}

impl RequireSubscriptionLayer {
    /// Gates every request on `policy`, looked up through `entitlements`;
    /// the organization comes from the [`Session`](crate::session::Session).
    pub fn new(entitlements: Entitlements, policy: EntitlementPolicy) -> Self {
        Self {
            state: Arc::new(GateState::new(entitlements, policy, GateAll)),
        }
    }

    /// Gates only the requests `predicate` selects (for example writes).
    pub fn gate_when(self, predicate: impl GatePredicate) -> Self {
        Self {
            state: Arc::new(self.state.with_gate(predicate)),
        }
    }

    /// Where the organization comes from (default: [`FromSession`]).
    pub fn organization(self, resolver: impl OrganizationResolver) -> Self {
        Self {
            state: Arc::new(self.state.with_resolver(resolver)),
        }
    }

    /// Replaces the builder of rejection responses.
    pub fn responder(self, responder: impl RejectionResponder) -> Self {
        Self {
            state: Arc::new(self.state.with_responder(responder)),
        }
    }

    /// Lets the requests `rule` selects pass straight to the inner service,
    /// untouched: no organization is resolved, nothing is looked up, no
    /// [`Entitlement`](super::Entitlement) is attached. Unlike a request
    /// [`gate_when`](Self::gate_when) leaves ungated, a skipped one needs no
    /// organization. A later call replaces an earlier rule.
    ///
    /// ```
    /// use std::convert::Infallible;
    ///
    /// use http::{Request, Response};
    /// use tower::{Layer, ServiceExt};
    /// use tower_saas_guard::grpc;
    /// use tower_saas_guard::subscription::{
    ///     EntitlementPolicy, Entitlements, MemorySubscriptionStore, RequireSubscriptionLayer,
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let entitlements = Entitlements::new(MemorySubscriptionStore::new());
    /// let pro_only = RequireSubscriptionLayer::new(entitlements, EntitlementPolicy::new())
    ///     .skip_when(grpc::service("grpc.health.v1.Health"));
    /// let service = pro_only.layer(tower::service_fn(|_: Request<()>| async {
    ///     Ok::<_, Infallible>(Response::new("ok"))
    /// }));
    /// let health = Request::post("/grpc.health.v1.Health/Check").body(())?;
    /// assert_eq!(service.oneshot(health).await?.status(), 200); // no organization needed
    /// # Ok(())
    /// # }
    /// ```
    pub fn skip_when(self, rule: impl SkipRule) -> Self {
        Self {
            state: Arc::new(self.state.with_skip(rule)),
        }
    }
}

impl fmt::Debug for RequireSubscriptionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.state.fmt(f)
    }
}

impl<S> Layer<S> for RequireSubscriptionLayer {
    type Service = SubscriptionGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SubscriptionGate::new(inner, Arc::clone(&self.state))
    }
}

/// Attaches the [`Entitlement`](super::Entitlement) to every request and
/// never rejects for lack of one: for handlers that degrade softly.
///
/// A request with no organization is still `organization_missing`; when the
/// store fails (fail closed), the decision is "not entitled" with reason
/// `store_unavailable` rather than a 503.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct EntitlementLayer {
    state: Arc<GateState>,
}

impl EntitlementLayer {
    /// Attaches decisions under `policy`, looked up through `entitlements`.
    pub fn new(entitlements: Entitlements, policy: EntitlementPolicy) -> Self {
        Self {
            state: Arc::new(GateState::new(entitlements, policy, GateNone)),
        }
    }

    /// Where the organization comes from (default: [`FromSession`]).
    pub fn organization(self, resolver: impl OrganizationResolver) -> Self {
        Self {
            state: Arc::new(self.state.with_resolver(resolver)),
        }
    }

    /// Replaces the builder of rejection responses (`organization_missing`).
    pub fn responder(self, responder: impl RejectionResponder) -> Self {
        Self {
            state: Arc::new(self.state.with_responder(responder)),
        }
    }

    /// Lets the requests `rule` selects pass straight to the inner service,
    /// untouched: no organization is resolved (so none is required),
    /// nothing is looked up, no [`Entitlement`](super::Entitlement) is
    /// attached. A later call replaces an earlier rule.
    ///
    /// ```
    /// use std::convert::Infallible;
    ///
    /// use http::{Request, Response};
    /// use tower::{Layer, ServiceExt};
    /// use tower_saas_guard::subscription::{
    ///     EntitlementLayer, EntitlementPolicy, Entitlements, FromHeader, MemorySubscriptionStore,
    /// };
    /// use tower_saas_guard::RequestHead;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let entitlements = Entitlements::new(MemorySubscriptionStore::new());
    /// let soft = EntitlementLayer::new(entitlements, EntitlementPolicy::new())
    ///     .organization(FromHeader::new(http::HeaderName::from_static("x-organization-id")))
    ///     .skip_when(|head: &RequestHead<'_>| head.uri().path() == "/healthz");
    /// let service = soft.layer(tower::service_fn(|_: Request<()>| async {
    ///     Ok::<_, Infallible>(Response::new("ok"))
    /// }));
    /// let health = service.clone().oneshot(Request::get("/healthz").body(())?).await?;
    /// assert_eq!(health.status(), 200);
    /// let anonymous = service.oneshot(Request::get("/reports").body(())?).await?;
    /// assert_eq!(anonymous.status(), 401); // organization_missing
    /// # Ok(())
    /// # }
    /// ```
    pub fn skip_when(self, rule: impl SkipRule) -> Self {
        Self {
            state: Arc::new(self.state.with_skip(rule)),
        }
    }
}

impl fmt::Debug for EntitlementLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.state.fmt(f)
    }
}

impl<S> Layer<S> for EntitlementLayer {
    type Service = SubscriptionGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SubscriptionGate::new(inner, Arc::clone(&self.state))
    }
}
