//! The `metrics` feature: requests by outcome and code, cache hits and
//! misses, renewals and store calls, counted through the `metrics` facade
//! by a recorder installed before the layers are built.
#![cfg(feature = "metrics")]

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use serde_json::json;
use tower::{service_fn, Layer, ServiceExt};
use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer, SessionToken};
use tower_saas_guard::subscription::{
    EntitlementPolicy, Entitlements, FromHeader, MemorySubscriptionStore, RequireSubscriptionLayer,
};
use tower_saas_guard::ManualClock;

use support::epoch;

/// Keeps every counter and the number of samples of every histogram, by
/// name and sorted labels.
#[derive(Default)]
struct Totals {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    samples: Mutex<BTreeMap<String, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(AtomicU64);

impl HistogramFn for Samples {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn describe(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|label| format!("{}={}", label.key(), label.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for &'static Totals {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().expect("not poisoned");
        Counter::from_arc(Arc::clone(counters.entry(describe(key)).or_default()))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut samples = self.samples.lock().expect("not poisoned");
        Histogram::from_arc(Arc::clone(samples.entry(describe(key)).or_default()))
    }
}

impl Totals {
    fn counter(&self, key: &str) -> u64 {
        self.counters
            .lock()
            .expect("not poisoned")
            .get(key)
            .map_or(0, |value| value.load(Ordering::Relaxed))
    }

    fn samples(&self, key: &str) -> u64 {
        self.samples
            .lock()
            .expect("not poisoned")
            .get(key)
            .map_or(0, |value| value.0.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn both_layers_count_outcomes_cache_lookups_renewals_and_store_calls() {
    let totals: &'static Totals = Box::leak(Box::default());
    metrics::set_global_recorder(totals).expect("the only recorder of this test binary");

    let clock = ManualClock::new(epoch());
    let sessions = SessionRefreshLayer::builder(MemorySessionStore::new())
        .clock(clock.clone())
        .build()
        .expect("valid configuration");
    let handle = sessions.handle();
    let session_service = sessions.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let token = handle
        .create(Some("org_1"), json!({}))
        .await
        .expect("create")
        .token;
    let call = |value: Option<String>| {
        let service = session_service.clone();
        let mut request = Request::builder();
        if let Some(value) = value {
            request = request.header("x-session-id", value);
        }
        let request = request.body(()).expect("valid request");
        async move { service.oneshot(request).await.expect("infallible").status() }
    };
    for _ in 0..3 {
        assert_eq!(call(Some(token.to_string())).await, 200);
    }
    clock.advance(Duration::from_secs(21 * 3600));
    assert_eq!(call(Some(token.to_string())).await, 200, "renews");
    assert_eq!(call(None).await, 401);
    assert_eq!(call(Some("garbage".to_owned())).await, 401);
    let stranger = SessionToken::generate().expect("os randomness");
    assert_eq!(call(Some(stranger.to_string())).await, 401);

    let admitted = "tower_saas_guard_requests_total{layer=session,outcome=admitted}";
    assert_eq!(totals.counter(admitted), 4);
    let hits = "tower_saas_guard_cache_lookups_total{layer=session,result=hit}";
    assert_eq!(totals.counter(hits), 3);
    let misses = "tower_saas_guard_cache_lookups_total{layer=session,result=miss}";
    assert_eq!(totals.counter(misses), 2, "the renewal and the stranger");
    assert_eq!(totals.counter("tower_saas_guard_renewals_total{}"), 1);
    for code in ["session_missing", "session_invalid", "session_not_found"] {
        let key = format!(
            "tower_saas_guard_requests_total{{code={code},layer=session,outcome=rejected}}"
        );
        assert_eq!(totals.counter(&key), 1, "{key}");
    }
    let loads = "tower_saas_guard_store_calls_total{op=load,result=ok,store=session}";
    assert_eq!(
        totals.counter(loads),
        2,
        "the renewal's stale copy, the stranger"
    );
    let extends = "tower_saas_guard_store_calls_total{op=extend,result=ok,store=session}";
    assert_eq!(totals.counter(extends), 1);
    assert_eq!(
        totals.samples("tower_saas_guard_store_call_seconds{op=create,store=session}"),
        1
    );

    // The subscription layer: a free organization is refused, twice (a
    // miss, then a hit).
    let entitlements = Entitlements::builder(MemorySubscriptionStore::new())
        .clock(clock.clone())
        .build()
        .expect("valid configuration");
    let gate = RequireSubscriptionLayer::new(entitlements, EntitlementPolicy::new())
        .organization(FromHeader::new(http::HeaderName::from_static(
            "x-organization-id",
        )))
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    for _ in 0..2 {
        let request = Request::builder()
            .header("x-organization-id", "org_free")
            .body(())
            .expect("valid request");
        assert_eq!(
            gate.clone()
                .oneshot(request)
                .await
                .expect("infallible")
                .status(),
            403
        );
    }
    let refused = "tower_saas_guard_requests_total{code=subscription_required,layer=subscription,outcome=rejected}";
    assert_eq!(totals.counter(refused), 2);
    let sub_hits = "tower_saas_guard_cache_lookups_total{layer=subscription,result=hit}";
    let sub_misses = "tower_saas_guard_cache_lookups_total{layer=subscription,result=miss}";
    assert_eq!(
        (totals.counter(sub_hits), totals.counter(sub_misses)),
        (1, 1)
    );
    let reads = "tower_saas_guard_store_calls_total{op=subscriptions,result=ok,store=subscription}";
    assert_eq!(totals.counter(reads), 1);
}
