//! The response future shared by every middleware in this crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::GuardBody;
use crate::rejection::{Rejection, RejectionResponder};
use crate::request::RequestHead;
use crate::session::{Session, SessionEnded, SESSION_EXPIRES_AT};
use crate::subscription::Entitlement;

/// What a layer learned about an admitted request, to put into its
/// extensions.
pub(crate) enum Admitted {
    Session(Session),
    Entitlement(Entitlement),
}

/// What a layer adds to the inner service's response.
#[derive(Default)]
pub(crate) struct Decoration {
    /// `x-session-expires-at`.
    pub(crate) expires_header: Option<HeaderValue>,
    /// A re-sent cookie (rare: boxed to keep the future small).
    pub(crate) renewal_header: Option<Box<(HeaderName, HeaderValue)>>,
}

/// The slow path's verdict: admitted (with its decoration), or rejected.
pub(crate) type Decision = BoxFuture<'static, Result<(Admitted, Decoration), Rejection>>;

pin_project! {
    /// Response future of this crate's middleware
    /// ([`SessionRefresh`](crate::session::SessionRefresh),
    /// [`SubscriptionGate`](crate::subscription::SubscriptionGate)).
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
        // A store lookup (cache miss, stale entry, renewal) decides first.
        Deciding {
            // Boxed: only the slow path pays for its size.
            pending: Box<Pending<S, ReqBody>>,
        },
        // Admitted: the inner service runs.
        Calling {
            #[pin]
            future: F,
            decoration: Decoration,
        },
        // Rejected before reaching the inner service.
        Rejected {
            response: Option<Box<Response<Bytes>>>,
        },
    }
}

/// The slow path's outcome: the inner call under way (and what to add to
/// its response), or the rejection to send.
type Admission<F> = Result<(F, Decoration), Response<Bytes>>;

struct Pending<S, ReqBody> {
    decision: Decision,
    request: Option<Request<ReqBody>>,
    inner: S,
    responder: Arc<dyn RejectionResponder>,
}

impl<S, ReqBody> Pending<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Polls the decision; once admitted, puts what was learned into the
    /// request and calls the inner service. Kept out of line: the hot path
    /// (a cache hit) never comes here.
    #[cold]
    #[inline(never)]
    fn poll_decision(&mut self, cx: &mut Context<'_>) -> Poll<Admission<S::Future>> {
        let decision = ready!(self.decision.as_mut().poll(cx));
        let mut request = self
            .request
            .take()
            .expect("ResponseFuture polled after it completed");
        Poll::Ready(match decision {
            Ok((admitted, decoration)) => {
                let extensions = request.extensions_mut();
                match admitted {
                    Admitted::Session(session) => extensions.insert(session).map(drop),
                    Admitted::Entitlement(entitlement) => extensions.insert(entitlement).map(drop),
                };
                Ok((self.inner.call(request), decoration))
            }
            Err(rejection) => Err(self
                .responder
                .respond(&rejection, &RequestHead::of(&request))),
        })
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Answers with `response` without calling the inner service.
    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(Box::new(response)),
            },
        }
    }

    /// The request was admitted on the spot; `future` is the inner call.
    pub(crate) fn calling(future: S::Future, decoration: Decoration) -> Self {
        Self {
            state: State::Calling { future, decoration },
        }
    }

    /// `decision` runs first; then `inner` is called, or `responder` answers.
    pub(crate) fn deciding(
        decision: Decision,
        request: Request<ReqBody>,
        inner: S,
        responder: Arc<dyn RejectionResponder>,
    ) -> Self {
        Self {
            state: State::Deciding {
                pending: Box::new(Pending {
                    decision,
                    request: Some(request),
                    inner,
                    responder,
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
                StateProj::Calling { future, decoration } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(value) = decoration.expires_header.take() {
                        // A logout's response announces no expiry.
                        if response.extensions().get::<SessionEnded>().is_none() {
                            response.headers_mut().insert(SESSION_EXPIRES_AT, value);
                        }
                    }
                    if let Some(renewal) = decoration.renewal_header.take() {
                        let (name, value) = *renewal;
                        response.headers_mut().append(name, value);
                    }
                    return Poll::Ready(Ok(response.map(GuardBody::inner)));
                }
                StateProj::Deciding { pending } => match ready!(pending.poll_decision(cx)) {
                    Ok((future, decoration)) => {
                        this.state.set(State::Calling { future, decoration });
                    }
                    Err(response) => return Poll::Ready(Ok(response.map(GuardBody::rejection))),
                },
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
