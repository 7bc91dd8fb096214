//! Heap allocations a cache hit adds, counted by a counting global
//! allocator (this thread's allocations only). A count, not a timing: it
//! does not move with the machine's load, so it can be a test.
//!
//! Each variant sends the same request as `benches/overhead.rs` (a session
//! token and an organization header, built anew each time) through a warm
//! layer; the bare service's count is subtracted, so what is left is the
//! layer's own. That is then compared with what `http` itself needs for
//! what a hit must do: a request extension (`Session`, `Entitlement`) in
//! an empty extension map costs 3 (the map's box, its table, the boxed
//! value), a header on a response with no headers 2 (the index and entry
//! arrays). The layers add exactly that and nothing of their own: 5 for
//! the session layer, 3 for the subscription layer, 6 for both. Behind a
//! real server the request's extension map and the response's headers
//! usually exist already, and a hit costs one allocation per layer.

#[path = "../benches/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::time::Duration;

use common::{active_subscription, ready_now, request};
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{service_fn, Layer, Service};
use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
use tower_saas_guard::subscription::{
    EntitlementPolicy, Entitlements, FromHeader, MemorySubscriptionStore, RequireSubscriptionLayer,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to `System` unchanged; the counter is a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const ROUNDS: u64 = 1_000;

fn warm<S, B>(
    runtime: &tokio::runtime::Runtime,
    service: &mut S,
    token: &HeaderValue,
    organization: &HeaderValue,
) where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let response = runtime
        .block_on(service.call(request(token, organization)))
        .unwrap_or_else(|never| match never {});
    assert_eq!(response.status(), 200);
}

/// Allocations per request through `service` (request built and response
/// dropped included), over `ROUNDS` requests after a warm-up.
fn per_request<S, B>(service: &mut S, token: &HeaderValue, organization: &HeaderValue) -> f64
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let send = |service: &mut S| {
        let response = ready_now(service.call(request(token, organization)))
            .unwrap_or_else(|never| match never {});
        assert_eq!(response.status(), 200);
    };
    for _ in 0..100 {
        send(service);
    }
    let before = allocations();
    for _ in 0..ROUNDS {
        send(service);
    }
    (allocations() - before) as f64 / ROUNDS as f64
}

#[test]
fn a_cache_hit_adds_at_most_a_few_allocations() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let long = Duration::from_secs(3600);
    let layer = SessionRefreshLayer::builder(MemorySessionStore::new())
        .cache_ttl(long)
        .build()
        .expect("valid settings");
    let created = runtime
        .block_on(layer.handle().create(Some("org_1"), ()))
        .expect("a session");
    let token = HeaderValue::from_str(&created.token.to_string()).expect("a header");
    let organization = HeaderValue::from_static("org_1");
    let entitlements = Entitlements::builder(MemorySubscriptionStore::new())
        .positive_ttl(long)
        .build()
        .expect("valid settings");
    runtime
        .block_on(entitlements.apply(&active_subscription("org_1".into())))
        .expect("a subscription");

    let inner = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let by_header = RequireSubscriptionLayer::new(entitlements.clone(), EntitlementPolicy::new())
        .organization(FromHeader::new(HeaderName::from_static(
            "x-organization-id",
        )));
    let by_session = RequireSubscriptionLayer::new(entitlements, EntitlementPolicy::new());
    let mut bare = inner;
    let mut session = layer.layer(inner);
    let mut validate_only = layer.clone().validate_only().layer(inner);
    let mut subscription = by_header.layer(inner);
    let mut both = layer.layer(by_session.layer(inner));
    // The first call of each loads on the runtime; afterwards every call
    // is a hit, ready on its first poll.
    warm(&runtime, &mut session, &token, &organization);
    warm(&runtime, &mut validate_only, &token, &organization);
    warm(&runtime, &mut subscription, &token, &organization);
    warm(&runtime, &mut both, &token, &organization);
    let _entered = runtime.enter();

    let base = per_request(&mut bare, &token, &organization);
    let added = [
        (
            "session (renewing)",
            per_request(&mut session, &token, &organization) - base,
        ),
        (
            "session, validate only",
            per_request(&mut validate_only, &token, &organization) - base,
        ),
        (
            "subscription",
            per_request(&mut subscription, &token, &organization) - base,
        ),
        (
            "both layers",
            per_request(&mut both, &token, &organization) - base,
        ),
    ];
    println!("bare service: {base:.2} allocations per request");
    for (variant, count) in added {
        println!("{variant}: +{count:.2}");
    }

    // What `http` itself costs for what a hit must do: put a value in the
    // request's (empty) extensions, and a header on the response.
    let floor = |extensions: usize, header: bool| {
        let before = allocations();
        for _ in 0..ROUNDS {
            let mut request = Request::new(());
            for n in 0..extensions {
                match n {
                    0 => request.extensions_mut().insert(1u64).is_some(),
                    _ => request.extensions_mut().insert(1u32).is_some(),
                };
            }
            let mut response = Response::new(());
            if header {
                response.headers_mut().insert(
                    tower_saas_guard::session::SESSION_EXPIRES_AT,
                    HeaderValue::from_static("2026-12-01T00:00:00.000Z"),
                );
            }
            std::hint::black_box((request, response));
        }
        let with = (allocations() - before) as f64 / ROUNDS as f64;
        let before = allocations();
        for _ in 0..ROUNDS {
            std::hint::black_box((Request::new(()), Response::new(())));
        }
        with - (allocations() - before) as f64 / ROUNDS as f64
    };
    let floors = [
        floor(1, true),
        floor(1, true),
        floor(1, false),
        floor(2, true),
    ];
    println!(
        "what http needs for the same (one extension and the expiry header; one extension; \
         two and the header): {floors:?}"
    );
    // The layers add nothing beyond what `http` needs for the extension
    // (`Session`, `Entitlement`) and the `x-session-expires-at` header.
    for ((variant, count), floor) in added.iter().zip(floors) {
        assert!(
            *count <= floor,
            "{variant} adds {count:.2} allocations per hit; http alone needs {floor}"
        );
    }
    // And today's counts, so a change that adds one fails here.
    let ceilings = [5.0, 5.0, 3.0, 6.0];
    for ((variant, count), ceiling) in added.iter().zip(ceilings) {
        assert!(
            *count <= ceiling,
            "{variant} adds {count:.2} allocations per hit, more than {ceiling}"
        );
    }
}
