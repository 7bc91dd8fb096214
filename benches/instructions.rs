//! The hit path in instructions: a program for `valgrind --tool=callgrind`,
//! whose counts do not move with the machine's load the way wall-clock
//! time does. Run it through `benches/callgrind.sh`, which builds it, runs
//! every variant at two iteration counts and reports the difference per
//! request (so the setup cancels out).
//!
//! By hand: `instructions-<hash> <variant> <iterations>` sends
//! `iterations` requests through the warm `variant` (`bare`, `session`,
//! `validate_only`, `subscription`, `both`): the same requests and
//! services as `benches/overhead.rs`'s cache-hit rows; `session_1000`
//! cycles through a thousand sessions, more than a thread's hot table
//! holds, so each hit is a moka lookup.

mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use common::{active_subscription, ready_now, request};
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{service_fn, Layer, Service};
use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
use tower_saas_guard::subscription::{
    EntitlementPolicy, Entitlements, FromHeader, MemorySubscriptionStore, RequireSubscriptionLayer,
};

/// One warm-up call on the runtime per token (a first call may load),
/// then `iterations` calls polled once each, cycling through `tokens`.
fn run<S, B>(
    runtime: &tokio::runtime::Runtime,
    mut service: S,
    tokens: &[HeaderValue],
    organization: &HeaderValue,
    iterations: u64,
) where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    for token in tokens {
        let warm = runtime
            .block_on(service.call(request(token, organization)))
            .unwrap_or_else(|never| match never {});
        assert_eq!(warm.status(), 200);
    }
    let _entered = runtime.enter();
    let mut next = 0;
    for _ in 0..iterations {
        let response = ready_now(service.call(request(&tokens[next], organization)))
            .unwrap_or_else(|never| match never {});
        black_box(response);
        next = (next + 1) % tokens.len();
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: instructions <bare|session|session_1000|validate_only|subscription|both> \
                 <iterations>";
    let variant = args.next().expect(usage);
    let iterations: u64 = args.next().and_then(|n| n.parse().ok()).expect(usage);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // TTLs longer than any run: every measured call is a hit.
    let long = Duration::from_secs(3600);
    let layer = SessionRefreshLayer::builder(MemorySessionStore::new())
        .cache_ttl(long)
        .build()
        .expect("valid settings");
    let created = runtime
        .block_on(layer.handle().create(Some("org_1"), ()))
        .expect("a session");
    let token = HeaderValue::from_str(&created.token.to_string()).expect("a header");
    // `session_1000`: a thousand sessions, more than a thread's hot table
    // holds, so each hit goes to moka.
    let mut many = Vec::new();
    if variant == "session_1000" {
        for _ in 0..1000 {
            let created = runtime
                .block_on(layer.handle().create(Some("org_1"), ()))
                .expect("a session");
            many.push(HeaderValue::from_str(&created.token.to_string()).expect("a header"));
        }
    }
    let organization = HeaderValue::from_static("org_1");
    let entitlements = Entitlements::builder(MemorySubscriptionStore::new())
        .positive_ttl(long)
        .build()
        .expect("valid settings");
    runtime
        .block_on(entitlements.apply(&active_subscription("org_1".into())))
        .expect("a subscription");
    let inner = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let (token, organization) = (std::slice::from_ref(&token), &organization);
    match variant.as_str() {
        "bare" => run(&runtime, inner, token, organization, iterations),
        "session_1000" => run(
            &runtime,
            layer.layer(inner),
            &many,
            organization,
            iterations,
        ),
        "session" => run(
            &runtime,
            layer.layer(inner),
            token,
            organization,
            iterations,
        ),
        "validate_only" => run(
            &runtime,
            layer.clone().validate_only().layer(inner),
            token,
            organization,
            iterations,
        ),
        "subscription" => run(
            &runtime,
            RequireSubscriptionLayer::new(entitlements, EntitlementPolicy::new())
                .organization(FromHeader::new(HeaderName::from_static(
                    "x-organization-id",
                )))
                .layer(inner),
            token,
            organization,
            iterations,
        ),
        "both" => run(
            &runtime,
            layer.layer(
                RequireSubscriptionLayer::new(entitlements, EntitlementPolicy::new()).layer(inner),
            ),
            token,
            organization,
            iterations,
        ),
        other => panic!("unknown variant `{other}`; {usage}"),
    }
}
