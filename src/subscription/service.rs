//! The `SubscriptionGate` service behind both subscription layers.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::entitlements::{Entitlements, LookupFailure};
use super::layer::GateState;
use super::policy::Entitlement;
use crate::future::{Admitted, Decoration, ResponseFuture};
use crate::rejection::{ErrorCode, Rejection};
use crate::request::RequestHead;

/// Middleware that decides entitlement per request; made by
/// [`RequireSubscriptionLayer`](super::RequireSubscriptionLayer) and
/// [`EntitlementLayer`](super::EntitlementLayer).
#[derive(Clone)]
pub struct SubscriptionGate<S> {
    inner: S,
    state: Arc<GateState>,
}

impl<S> SubscriptionGate<S> {
    pub(crate) fn new(inner: S, state: Arc<GateState>) -> Self {
        Self { inner, state }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for SubscriptionGate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionGate")
            .field("inner", &self.inner)
            .field("layer", &self.state)
            .finish()
    }
}

/// The verdict on an entitlement for a gated or ungated request.
fn admit(entitlement: Entitlement, gated: bool) -> Result<Entitlement, Rejection> {
    if gated && !entitlement.is_entitled() {
        Err(Rejection::new(ErrorCode::SubscriptionRequired))
    } else {
        Ok(entitlement)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SubscriptionGate<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<crate::GuardBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let state = &self.state;
        let head = RequestHead::of(&request);
        if let Some(skip) = &state.skip {
            if skip.skips(&head) {
                return ResponseFuture::calling(self.inner.call(request), Decoration::default());
            }
        }
        let Some(organization_id) = state.resolver.organization(&head) else {
            let rejection = state.resolver.missing(&head);
            state.entitlements.core.metrics.rejected(rejection.code());
            return ResponseFuture::rejected(state.responder.respond(&rejection, &head));
        };
        let gated = state.gate.is_gated(&head);
        let core = &state.entitlements.core;
        let now = core.clock.now();
        let cached = match core.cached(&organization_id, now) {
            Ok(cached) => {
                // Cache hit: decide now; no store, no boxed future.
                core.metrics.lookup(true);
                let entitlement = state.policy.decide_shared(cached, now);
                return match admit(entitlement, gated) {
                    Ok(entitlement) => {
                        core.metrics.admitted();
                        request.extensions_mut().insert(entitlement);
                        ResponseFuture::calling(self.inner.call(request), Decoration::default())
                    }
                    Err(rejection) => {
                        core.metrics.rejected(rejection.code());
                        ResponseFuture::rejected(state.responder.respond(&rejection, &head))
                    }
                };
            }
            Err(cached) => {
                core.metrics.lookup(false);
                cached
            }
        };
        let metrics = Arc::clone(&core.metrics);
        let organization_id: Arc<str> = Arc::from(organization_id.as_ref());
        let policy = state.policy.clone();
        let lookup = Arc::clone(core).lookup(Arc::clone(&organization_id), cached);
        let clock = Arc::clone(&core.clock);
        let deciding = Box::pin(async move {
            let entitlement = match lookup.await {
                Ok(subscriptions) => policy.decide_shared(subscriptions, clock.now()),
                Err(LookupFailure::Open) => Entitlements::fail_open(&policy, organization_id),
                Err(LookupFailure::Closed(_)) if gated => {
                    metrics.rejected(ErrorCode::StoreUnavailable);
                    return Err(Rejection::new(ErrorCode::StoreUnavailable));
                }
                Err(LookupFailure::Closed(_)) => {
                    Entitlements::fail_closed(&policy, organization_id)
                }
            };
            match admit(entitlement, gated) {
                Ok(entitlement) => {
                    metrics.admitted();
                    Ok((Admitted::Entitlement(entitlement), Decoration::default()))
                }
                Err(rejection) => {
                    metrics.rejected(rejection.code());
                    Err(rejection)
                }
            }
        });
        // Move the service that was made ready into the future; keep a clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::deciding(deciding, request, inner, Arc::clone(&state.responder))
    }
}
