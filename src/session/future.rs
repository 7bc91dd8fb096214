//! The response future of `SessionRefresh`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::core::{Session, SessionData};
use super::layer::LayerState;
use super::token::SessionToken;
use crate::body::GuardBody;
use crate::rejection::Rejection;
use crate::request::RequestHead;

/// The response header that carries a session's expiry (RFC 3339 UTC, ms).
pub const SESSION_EXPIRES_AT: HeaderName = HeaderName::from_static("x-session-expires-at");

type Resolution = Result<(Arc<SessionData>, bool), Rejection>;

pin_project! {
    /// Response future of [`SessionRefresh`](super::SessionRefresh).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, F> {
        // Loading or renewing the session (cache miss, or renewal due).
        Resolving {
            // Boxed: only the slow path pays for its size.
            resolving: Box<Resolving<S, ReqBody>>,
        },
        // The session is valid: the inner service runs.
        Calling {
            #[pin]
            future: F,
            expires_header: Option<HeaderValue>,
            renewal_header: Option<Box<(HeaderName, HeaderValue)>>,
        },
        // Rejected before reaching the inner service.
        Rejected {
            // Boxed so the common states keep the future small.
            response: Option<Box<Response<Bytes>>>,
        },
    }
}

struct Resolving<S, ReqBody> {
    resolution: BoxFuture<'static, Resolution>,
    request: Option<Request<ReqBody>>,
    inner: S,
    layer: Arc<LayerState>,
    token: SessionToken,
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(Box::new(response)),
            },
        }
    }

    pub(crate) fn calling(future: S::Future, expires_header: HeaderValue) -> Self {
        Self {
            state: State::Calling {
                future,
                expires_header: Some(expires_header),
                renewal_header: None,
            },
        }
    }

    pub(crate) fn resolving(
        resolution: BoxFuture<'static, Resolution>,
        request: Request<ReqBody>,
        inner: S,
        layer: Arc<LayerState>,
        token: SessionToken,
    ) -> Self {
        Self {
            state: State::Resolving {
                resolving: Box::new(Resolving {
                    resolution,
                    request: Some(request),
                    inner,
                    layer,
                    token,
                }),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<GuardBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Resolving { resolving } => {
                    let Resolving {
                        resolution,
                        request,
                        inner,
                        layer,
                        token,
                    } = &mut **resolving;
                    let outcome = ready!(resolution.as_mut().poll(cx));
                    let mut request = request
                        .take()
                        .expect("ResponseFuture polled after it completed");
                    match outcome {
                        Ok((data, renewed)) => {
                            let renewal_header = if renewed {
                                let left = data
                                    .expires_at
                                    .duration_since(layer.core.clock.now())
                                    .unwrap_or(Duration::ZERO);
                                layer.source.on_renewal(token, left).map(Box::new)
                            } else {
                                None
                            };
                            let expires_header = data.expires_header.clone();
                            request.extensions_mut().insert(Session::new(data, renewed));
                            let future = inner.call(request);
                            this.state.set(State::Calling {
                                future,
                                expires_header: Some(expires_header),
                                renewal_header,
                            });
                        }
                        Err(rejection) => {
                            let response = layer
                                .responder
                                .respond(&rejection, &RequestHead::of(&request));
                            return Poll::Ready(Ok(response.map(GuardBody::rejection)));
                        }
                    }
                }
                StateProj::Calling {
                    future,
                    expires_header,
                    renewal_header,
                } => {
                    let mut response = ready!(future.poll(cx))?;
                    let headers = response.headers_mut();
                    if let Some(value) = expires_header.take() {
                        headers.insert(SESSION_EXPIRES_AT, value);
                    }
                    if let Some(renewal) = renewal_header.take() {
                        let (name, value) = *renewal;
                        headers.append(name, value);
                    }
                    return Poll::Ready(Ok(response.map(GuardBody::inner)));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after it completed");
                    return Poll::Ready(Ok((*response).map(GuardBody::rejection)));
                }
            }
        }
    }
}
