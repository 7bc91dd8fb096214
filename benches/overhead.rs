//! Per-request overhead of the layers over a bare service, in one run.
//!
//! `cargo bench --bench overhead`. Every variant builds the same request
//! (one `x-session-id` header) and polls the service's future to
//! completion; only the middleware differs, so the difference in time per
//! iteration is the middleware's cost.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderValue, Request, Response};
use tower::{service_fn, Layer, Service};
use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};

/// Polls a future that is ready on its first poll (every variant here is).
fn ready_now<F: Future>(future: F) -> F::Output {
    let mut context = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut context) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked service should not wait"),
    }
}

fn request(token: &HeaderValue) -> Request<()> {
    let mut request = Request::new(());
    request.headers_mut().insert("x-session-id", token.clone());
    request
}

fn call<S>(service: &mut S, token: &HeaderValue) -> S::Response
where
    S: Service<Request<()>, Error = Infallible>,
{
    ready_now(service.call(request(token))).unwrap_or_else(|never| match never {})
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let inner = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let layer = SessionRefreshLayer::new(MemorySessionStore::new());
    let created = runtime
        .block_on(layer.handle().create(Some("org_1"), ()))
        .expect("create session");
    let token = HeaderValue::from_str(&created.token.to_string()).expect("token is a header");

    let mut bare = inner;
    let mut sessions = layer.layer(inner);
    let mut validate_only = layer.clone().validate_only().layer(inner);
    // Warm: the first call through each layer may load; later ones hit.
    assert_eq!(call(&mut sessions, &token).status(), 200);
    assert_eq!(call(&mut validate_only, &token).status(), 200);

    let mut group = c.benchmark_group("overhead");
    group.bench_function("bare", |b| b.iter(|| black_box(call(&mut bare, &token))));
    group.bench_function("session_refresh_cache_hit", |b| {
        b.iter(|| black_box(call(&mut sessions, &token)))
    });
    group.bench_function("session_validate_only_cache_hit", |b| {
        b.iter(|| black_box(call(&mut validate_only, &token)))
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
