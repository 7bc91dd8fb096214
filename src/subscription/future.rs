//! The response future of `SubscriptionGate`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::layer::GateState;
use super::policy::Entitlement;
use crate::body::GuardBody;
use crate::rejection::Rejection;
use crate::request::RequestHead;

type Decision = Result<Entitlement, Rejection>;

pin_project! {
    /// Response future of [`SubscriptionGate`](super::SubscriptionGate).
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
        // Loading the organization's subscriptions (cache miss or stale).
        Deciding {
            // Boxed: only the slow path pays for its size.
            deciding: Box<Deciding<S, ReqBody>>,
        },
        // Admitted: the inner service runs.
        Calling {
            #[pin]
            future: F,
        },
        // Rejected before reaching the inner service.
        Rejected {
            response: Option<Box<Response<Bytes>>>,
        },
    }
}

struct Deciding<S, ReqBody> {
    decision: BoxFuture<'static, Decision>,
    request: Option<Request<ReqBody>>,
    inner: S,
    layer: Arc<GateState>,
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

    pub(crate) fn calling(future: S::Future) -> Self {
        Self {
            state: State::Calling { future },
        }
    }

    pub(crate) fn deciding(
        decision: BoxFuture<'static, Decision>,
        request: Request<ReqBody>,
        inner: S,
        layer: Arc<GateState>,
    ) -> Self {
        Self {
            state: State::Deciding {
                deciding: Box::new(Deciding {
                    decision,
                    request: Some(request),
                    inner,
                    layer,
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
                StateProj::Deciding { deciding } => {
                    let Deciding {
                        decision,
                        request,
                        inner,
                        layer,
                    } = &mut **deciding;
                    let decision = ready!(decision.as_mut().poll(cx));
                    let mut request = request
                        .take()
                        .expect("ResponseFuture polled after it completed");
                    match decision {
                        Ok(entitlement) => {
                            request.extensions_mut().insert(entitlement);
                            let future = inner.call(request);
                            this.state.set(State::Calling { future });
                        }
                        Err(rejection) => {
                            let response = layer
                                .responder
                                .respond(&rejection, &RequestHead::of(&request));
                            return Poll::Ready(Ok(response.map(GuardBody::rejection)));
                        }
                    }
                }
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx))?;
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
