//! What the benches (and `tests/allocations.rs`) share: the request every
//! hit-path variant sends, polling a future that is ready at once, an
//! active subscription, and tower-sessions' baseline handler; `svg`
//! draws the benches' plots.
#![allow(dead_code)]

pub mod svg;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use http::{HeaderValue, Request, Response};
use tower::{service_fn, Service};
use tower_saas_guard::subscription::{Subscription, SubscriptionChange, SubscriptionStatus};

/// Polls a future that is ready on its first poll (a cache hit is).
pub fn ready_now<F: Future>(future: F) -> F::Output {
    let mut context = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut context) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a cache hit should not wait"),
    }
}

/// The same request for every variant: a session token and an
/// organization header (the subscription layer alone reads the latter).
pub fn request(token: &HeaderValue, organization: &HeaderValue) -> Request<()> {
    let mut request = Request::new(());
    request.headers_mut().insert("x-session-id", token.clone());
    request
        .headers_mut()
        .insert("x-organization-id", organization.clone());
    request
}

/// `organization_id` subscribes to `pro` (subscription `sub_1`), now.
pub fn active_subscription(organization_id: String) -> SubscriptionChange {
    SubscriptionChange::new(
        Subscription {
            organization_id,
            subscription_id: "sub_1".into(),
            status: SubscriptionStatus::Active,
            plan: "pro".into(),
            current_period_end: None,
            trial_end: None,
        },
        SystemTime::now(),
    )
}

/// A handler behind tower-sessions that reads one value of its session
/// (storing it the first time): the baseline's fair equivalent of a
/// session hit.
pub fn tower_sessions_reader(
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(|request: Request<()>| async move {
        let session = request
            .extensions()
            .get::<tower_sessions::Session>()
            .cloned()
            .expect("tower-sessions session");
        if session.get::<String>("name").await.ok().flatten().is_none() {
            session
                .insert("name", "Ada")
                .await
                .expect("memory store insert");
        }
        Ok::<_, Infallible>(Response::new(()))
    })
}

/// `ROUNDS` from the environment (default 3): how many times a bench
/// measures each row. Anything but a whole number from 1 ends the run.
pub fn rounds() -> usize {
    match std::env::var("ROUNDS") {
        Ok(rounds) => match rounds.parse() {
            Ok(rounds) if rounds > 0 => rounds,
            _ => {
                eprintln!("ROUNDS must be a whole number from 1, not `{rounds}`");
                std::process::exit(2);
            }
        },
        Err(_) => 3,
    }
}
