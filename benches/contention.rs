//! Throughput under contention: a Tokio runtime of 2 worker threads, 64
//! tasks sending requests as fast as they go for a fixed time, spread over
//! 1, 1 000, 10 000 or 100 000 distinct sessions (or organizations). The session
//! layer, the subscription layer, tower-sessions 0.15 (memory store,
//! reading one value) and the bare service run one after the other in one
//! process, so their figures compare. Store reads during the measured
//! time are counted: on a warm cache there should be none.
//!
//! `cargo bench --bench contention --all-features` (or the built binary
//! with the seconds per row, default 2).

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{active_subscription, tower_sessions_reader};
use http::header::COOKIE;
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
use tower_saas_guard::subscription::{
    EntitlementPolicy, Entitlements, FromHeader, MemorySubscriptionStore, RequireSubscriptionLayer,
};
use tower_saas_guard::test_kit::faults::{Faults, FaultySessionStore, FaultySubscriptionStore, Op};

const TASKS: usize = 64;
const DISTINCT: [usize; 4] = [1, 1_000, 10_000, 100_000];

/// Requests per second of `service` from `TASKS` tasks for `duration`,
/// task `t` cycling through `keys[t], keys[t + TASKS], …` in `header`.
async fn throughput<S, B>(
    service: S,
    header: HeaderName,
    keys: Arc<Vec<HeaderValue>>,
    duration: Duration,
) -> f64
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (mut service, header, keys) = (service.clone(), header.clone(), Arc::clone(&keys));
            let (stop, total) = (Arc::clone(&stop), Arc::clone(&total));
            tokio::spawn(async move {
                let mut sent = 0u64;
                let mut next = task % keys.len();
                while !stop.load(Ordering::Relaxed) {
                    let mut request = Request::new(());
                    request
                        .headers_mut()
                        .insert(header.clone(), keys[next].clone());
                    let response = service
                        .ready()
                        .await
                        .expect("infallible")
                        .call(request)
                        .await
                        .expect("infallible");
                    assert_eq!(response.status(), 200);
                    sent += 1;
                    next = (next + TASKS) % keys.len();
                    if sent % 64 == 0 {
                        // Let the timer and the other tasks in.
                        tokio::task::yield_now().await;
                    }
                }
                total.fetch_add(sent, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a task panicked");
    }
    total.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn inner() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(2);
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(duration));
}

async fn run(duration: Duration) {
    let long = Duration::from_secs(3600);
    println!(
        "{TASKS} tasks on 2 worker threads, {} s per row",
        duration.as_secs()
    );
    println!("| variant | distinct keys | requests/s | store reads while measured |");
    println!("|---|---|---|---|");
    let any = Arc::new(vec![HeaderValue::from_static("unused")]);
    let bare = throughput(inner(), HeaderName::from_static("x-any"), any, duration).await;
    println!("| bare service | — | {bare:.0} | — |");

    for distinct in DISTINCT {
        let faults = Faults::new(1);
        let store = FaultySessionStore::new(MemorySessionStore::new(), faults.clone());
        let layer = SessionRefreshLayer::builder(store)
            .cache_ttl(long)
            .cache_capacity(2 * distinct as u64)
            .build()
            .expect("valid settings");
        let mut tokens = Vec::with_capacity(distinct);
        for _ in 0..distinct {
            let created = layer
                .handle()
                .create(Some("org_1"), ())
                .await
                .expect("a session");
            tokens.push(HeaderValue::from_str(&created.token.to_string()).expect("a header"));
        }
        let tokens = Arc::new(tokens);
        let header = HeaderName::from_static("x-session-id");
        let service = layer.layer(inner());
        // Warm: every session cached once.
        for token in tokens.iter() {
            let mut request = Request::new(());
            request.headers_mut().insert(header.clone(), token.clone());
            let response = service.clone().oneshot(request).await.expect("infallible");
            assert_eq!(response.status(), 200);
        }
        let reads = faults.calls(Op::Load);
        let rate = throughput(service, header, tokens, duration).await;
        let reads = faults.calls(Op::Load) - reads;
        println!("| `SessionRefreshLayer` | {distinct} | {rate:.0} | {reads} |");
    }

    for distinct in DISTINCT {
        let faults = Faults::new(1);
        let store = FaultySubscriptionStore::new(MemorySubscriptionStore::new(), faults.clone());
        let entitlements = Entitlements::builder(store)
            .positive_ttl(long)
            .cache_capacity(2 * distinct as u64)
            .build()
            .expect("valid settings");
        let mut organizations = Vec::with_capacity(distinct);
        for n in 0..distinct {
            entitlements
                .apply(&active_subscription(format!("org_{n}")))
                .await
                .expect("a subscription");
            organizations.push(HeaderValue::from_str(&format!("org_{n}")).expect("a header"));
        }
        let organizations = Arc::new(organizations);
        let header = HeaderName::from_static("x-organization-id");
        let service = RequireSubscriptionLayer::new(entitlements, EntitlementPolicy::new())
            .organization(FromHeader::new(header.clone()))
            .layer(inner());
        for organization in organizations.iter() {
            let mut request = Request::new(());
            request
                .headers_mut()
                .insert(header.clone(), organization.clone());
            let response = service.clone().oneshot(request).await.expect("infallible");
            assert_eq!(response.status(), 200);
        }
        let reads = faults.calls(Op::Subscriptions);
        let rate = throughput(service, header, organizations, duration).await;
        let reads = faults.calls(Op::Subscriptions) - reads;
        println!("| `RequireSubscriptionLayer` | {distinct} | {rate:.0} | {reads} |");
    }

    for distinct in DISTINCT {
        use tower_sessions::{MemoryStore, SessionManagerLayer};
        let reader = tower_sessions_reader();
        let service = SessionManagerLayer::new(MemoryStore::default())
            .with_secure(false)
            .layer(reader);
        let mut cookies = Vec::with_capacity(distinct);
        for _ in 0..distinct {
            let first = service
                .clone()
                .oneshot(Request::new(()))
                .await
                .expect("infallible");
            let cookie = first.headers()[http::header::SET_COOKIE]
                .to_str()
                .expect("ascii cookie")
                .split(';')
                .next()
                .expect("name=value")
                .to_owned();
            cookies.push(HeaderValue::from_str(&cookie).expect("a header"));
        }
        let rate = throughput(service, COOKIE, Arc::new(cookies), duration).await;
        println!("| tower-sessions, read one value | {distinct} | {rate:.0} | — |");
    }
}
