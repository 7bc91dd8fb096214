//! The `SessionRefresh` service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower_service::Service;

use super::core::Session;
use super::layer::LayerState;
use super::source::TokenError;
use crate::future::{Admitted, Decoration, ResponseFuture};
use crate::rejection::{ErrorCode, Rejection};
use crate::request::RequestHead;

/// Middleware that validates and renews sessions; made by
/// [`SessionRefreshLayer`](super::SessionRefreshLayer).
#[derive(Clone)]
pub struct SessionRefresh<S> {
    inner: S,
    state: Arc<LayerState>,
}

impl<S> SessionRefresh<S> {
    pub(crate) fn new(inner: S, state: Arc<LayerState>) -> Self {
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

impl<S: fmt::Debug> fmt::Debug for SessionRefresh<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRefresh")
            .field("inner", &self.inner)
            .field("layer", &self.state)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionRefresh<S>
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
        let token = match state.source.token(&head) {
            Ok(token) => token,
            Err(error) => {
                let code = match error {
                    TokenError::Missing => ErrorCode::SessionMissing,
                    TokenError::Malformed => ErrorCode::SessionInvalid,
                };
                state.core.metrics.rejected(code);
                let rejection = Rejection::new(code).with_challenge(state.source.challenge(code));
                let response = state.responder.respond(&rejection, &head);
                return ResponseFuture::rejected(response);
            }
        };
        let activity = state.activity.is_activity(&head);
        let core = &state.core;
        let cached = match core.cached(&token, core.clock.now(), activity) {
            Ok(data) => {
                core.metrics.lookup(true);
                core.metrics.admitted();
                // Cache hit with nothing to write: no store, no boxed future.
                let decoration = Decoration {
                    expires_header: Some(data.expires_header.clone()),
                    renewal_header: None,
                };
                request.extensions_mut().insert(Session::new(data, false));
                return ResponseFuture::calling(self.inner.call(request), decoration);
            }
            Err(cached) => {
                core.metrics.lookup(false);
                cached
            }
        };
        let resolution = Arc::clone(core).resolve(token, cached, activity);
        let layer = Arc::clone(state);
        let decision = Box::pin(async move {
            let (data, renewed) = resolution.await.map_err(|rejection| {
                let challenge = layer.source.challenge(rejection.code());
                rejection.with_challenge(challenge)
            })?;
            let renewal_header = if renewed {
                let left = data
                    .expires_at
                    .duration_since(layer.core.clock.now())
                    .unwrap_or(Duration::ZERO);
                layer.source.on_renewal(&token, left).map(Box::new)
            } else {
                None
            };
            let decoration = Decoration {
                expires_header: Some(data.expires_header.clone()),
                renewal_header,
            };
            Ok((Admitted::Session(Session::new(data, renewed)), decoration))
        });
        // Move the service that was made ready into the future; keep a clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::deciding(decision, request, inner, Arc::clone(&state.responder))
    }
}
