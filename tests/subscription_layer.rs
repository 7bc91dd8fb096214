//! RequireSubscriptionLayer and EntitlementLayer through
//! `tower::ServiceExt::oneshot`, with the clock driven by the tests.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use http::{header, HeaderName, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tower::{service_fn, Layer, ServiceExt};
use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
use tower_saas_guard::subscription::{
    Entitlement, EntitlementLayer, EntitlementPolicy, Entitlements, FromExtension, FromHeader,
    OnStoreError, OrganizationId, RequireSubscriptionLayer, Subscription, SubscriptionChange,
    SubscriptionStatus, SubscriptionStore,
};
use tower_saas_guard::{Clock, GuardBody, ManualClock, RequestHead};

use support::{burst, epoch, send, Answer, Echo, ProbeSubscriptions};

/// `subscription` as a billing change produced `seconds` after the epoch.
fn change(subscription: &Subscription, seconds: u64) -> SubscriptionChange {
    SubscriptionChange::new(subscription.clone(), epoch() + Duration::from_secs(seconds))
}

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);

fn org_header() -> HeaderName {
    HeaderName::from_static("x-organization-id")
}

/// Answers 200 with the entitlement it saw, as JSON.
fn echo<L>(layer: L) -> Echo
where
    L: Layer<
        tower::util::ServiceFn<
            fn(Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>>,
        >,
    >,
    L::Service: tower::Service<Request<()>, Response = Response<GuardBody<String>>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Request<()>>>::Future: Send + 'static,
{
    fn handler(request: Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>> {
        let body = match request.extensions().get::<Entitlement>() {
            Some(entitlement) => json!({
                "entitled": entitlement.is_entitled(),
                "reason": entitlement.reason().as_str(),
                "plan": entitlement.plan(),
                "status": entitlement.status().map(|s| s.as_str()),
                "organization_id": entitlement.organization_id(),
            }),
            None => Value::Null,
        };
        std::future::ready(Ok(Response::new(body.to_string())))
    }
    let inner = service_fn(handler as fn(Request<()>) -> _);
    tower::util::BoxCloneSyncService::new(layer.layer(inner))
}

struct Fixture {
    store: ProbeSubscriptions,
    clock: ManualClock,
    entitlements: Entitlements,
}

impl Fixture {
    fn new() -> Self {
        Self::with(|builder| builder)
    }

    fn with(
        configure: impl FnOnce(
            tower_saas_guard::subscription::EntitlementsBuilder,
        ) -> tower_saas_guard::subscription::EntitlementsBuilder,
    ) -> Self {
        let store = ProbeSubscriptions::default();
        let clock = ManualClock::new(epoch());
        let entitlements = configure(Entitlements::builder(store.clone()).clock(clock.clone()))
            .build()
            .expect("valid configuration");
        Self {
            store,
            clock,
            entitlements,
        }
    }

    fn require(&self) -> RequireSubscriptionLayer {
        RequireSubscriptionLayer::new(self.entitlements.clone(), EntitlementPolicy::new())
            .organization(FromHeader::new(org_header()))
    }

    fn soft(&self) -> EntitlementLayer {
        EntitlementLayer::new(self.entitlements.clone(), EntitlementPolicy::new())
            .organization(FromHeader::new(org_header()))
    }

    /// Writes straight to the store, behind the cache's back.
    async fn store_subscription(
        &self,
        status: SubscriptionStatus,
        period_end: Option<std::time::SystemTime>,
    ) {
        self.store
            .inner
            .upsert(&subscription("org_1", "sub_1", status, period_end))
            .await
            .expect("memory store");
    }
}

fn subscription(
    organization: &str,
    id: &str,
    status: SubscriptionStatus,
    period_end: Option<std::time::SystemTime>,
) -> Subscription {
    Subscription {
        organization_id: organization.into(),
        subscription_id: id.into(),
        status,
        plan: "pro".into(),
        current_period_end: period_end,
        trial_end: None,
    }
}

fn for_org(organization: &str) -> Request<()> {
    Request::builder()
        .uri("/pro")
        .header("x-organization-id", organization)
        .body(())
        .expect("valid request")
}

fn assert_problem(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status.as_u16(), status, "{:?}", answer.body);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(answer.body["code"], code);
}

#[tokio::test]
async fn entitled_organizations_pass_with_their_entitlement_and_others_get_403() {
    let fixture = Fixture::new();
    fixture
        .store_subscription(SubscriptionStatus::Active, None)
        .await;
    let service = echo(fixture.require());

    let pro = send(&service, for_org("org_1")).await;
    assert_eq!(pro.status, StatusCode::OK);
    assert_eq!(pro.body["entitled"], true);
    assert_eq!(pro.body["plan"], "pro");
    assert_eq!(pro.body["status"], "active");
    assert_eq!(pro.body["organization_id"], "org_1");

    let free = send(&service, for_org("org_free")).await;
    assert_problem(&free, 403, "subscription_required");
}

#[tokio::test]
async fn missing_organization_is_organization_missing() {
    let fixture = Fixture::new();
    for service in [echo(fixture.require()), echo(fixture.soft())] {
        assert_problem(
            &send(&service, Request::new(())).await,
            401,
            "organization_missing",
        );
        let blank = Request::builder()
            .header("x-organization-id", "  ")
            .body(())
            .expect("valid request");
        assert_problem(&send(&service, blank).await, 401, "organization_missing");
    }
    assert_eq!(fixture.store.reads(), 0);
}

#[tokio::test]
async fn the_soft_layer_never_rejects_for_lack_of_a_subscription() {
    let fixture = Fixture::new();
    let service = echo(fixture.soft());
    let free = send(&service, for_org("org_free")).await;
    assert_eq!(free.status, StatusCode::OK);
    assert_eq!(free.body["entitled"], false);
    assert_eq!(free.body["reason"], "no_subscription");
}

#[tokio::test]
async fn skipped_requests_need_no_organization_and_read_no_store() {
    let fixture = Fixture::new();
    let health = |head: &RequestHead<'_>| head.uri().path() == "/healthz";
    for service in [
        echo(fixture.require().skip_when(health)),
        echo(fixture.soft().skip_when(health)),
    ] {
        for request in [Request::get("/healthz").body(()), {
            Request::get("/healthz")
                .header(org_header(), "org_1")
                .body(())
        }] {
            let answer = send(&service, request.expect("valid request")).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.body, Value::Null, "no Entitlement extension");
        }
        assert_eq!(fixture.store.reads(), 0);
        let answer = send(&service, Request::get("/reports").body(()).expect("valid")).await;
        assert_problem(&answer, 401, "organization_missing");
    }
    // Not skipped: decided as before (the free organization is refused by
    // the rejecting layer, and read once, then cached).
    let gated = echo(fixture.require().skip_when(health));
    assert_problem(
        &send(&gated, for_org("org_1")).await,
        403,
        "subscription_required",
    );
    assert_eq!(fixture.store.reads(), 1);
}

#[tokio::test]
async fn a_predicate_chooses_which_requests_are_gated() {
    let fixture = Fixture::new();
    let writes_only =
        |head: &RequestHead<'_>| !matches!(*head.method(), Method::GET | Method::DELETE);
    let service = echo(fixture.require().gate_when(writes_only));
    for (method, expected) in [
        (Method::GET, StatusCode::OK),
        (Method::DELETE, StatusCode::OK),
        (Method::POST, StatusCode::FORBIDDEN),
        (Method::PUT, StatusCode::FORBIDDEN),
    ] {
        let mut request = for_org("org_free");
        *request.method_mut() = method.clone();
        let answer = send(&service, request).await;
        assert_eq!(answer.status, expected, "{method}");
        if expected == StatusCode::OK {
            assert_eq!(
                answer.body["entitled"], false,
                "ungated requests still get the decision"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_thousand_concurrent_requests_for_a_cold_organization_read_the_store_once() {
    let fixture = Fixture::new();
    fixture
        .store_subscription(SubscriptionStatus::Active, None)
        .await;
    let service = echo(fixture.require());
    fixture.store.gate.close();
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { send(&service, for_org("org_1")).await.status })
        })
        .collect();
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    fixture.store.gate.open();
    for request in requests {
        assert_eq!(request.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(fixture.store.reads(), 1);
    send(&service, for_org("org_1")).await;
    assert_eq!(fixture.store.reads(), 1, "then served from the cache");
}

#[tokio::test]
async fn after_invalidate_the_next_request_sees_the_change() {
    let fixture = Fixture::new();
    let service = echo(fixture.require());
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::FORBIDDEN
    );

    fixture
        .store_subscription(SubscriptionStatus::Active, None)
        .await;
    // Several times: the answer is in this thread's hot table, too.
    for _ in 0..3 {
        assert_eq!(
            send(&service, for_org("org_1")).await.status,
            StatusCode::FORBIDDEN,
            "still cached: the store changed behind the cache's back"
        );
    }
    fixture.entitlements.invalidate("org_1");
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_and_a_cancellation_are_seen_at_once_by_every_thread() {
    let fixture = Fixture::new();
    let service = echo(fixture.require());
    let request = || for_org("org_1");
    // Both worker threads now hold the (free) organization in their hot tables.
    burst(&service, request, StatusCode::FORBIDDEN).await;
    let upgrade = subscription("org_1", "sub_1", SubscriptionStatus::Active, None);
    fixture
        .entitlements
        .apply(&change(&upgrade, 1))
        .await
        .expect("apply");
    burst(&service, request, StatusCode::OK).await;
    let cancellation = subscription("org_1", "sub_1", SubscriptionStatus::Canceled, None);
    fixture
        .entitlements
        .apply(&change(&cancellation, 2))
        .await
        .expect("apply");
    burst(&service, request, StatusCode::FORBIDDEN).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_load_that_raced_an_apply_does_not_put_the_old_answer_back() {
    let fixture = Fixture::new();
    let service = echo(fixture.require());
    fixture.store.gate.close();
    // This load reads "no subscription", then waits at the gate.
    let racing = tokio::spawn({
        let service = service.clone();
        async move { send(&service, for_org("org_1")).await.status }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(fixture.store.reads(), 1);
    let upgrade = subscription("org_1", "sub_1", SubscriptionStatus::Active, None);
    fixture
        .entitlements
        .apply(&change(&upgrade, 1))
        .await
        .expect("apply");
    fixture.store.gate.open();
    assert_eq!(
        racing.await.expect("task"),
        StatusCode::FORBIDDEN,
        "decided before the change"
    );

    // The webhook has answered: the very next request must see the upgrade.
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );
    assert_eq!(fixture.store.reads(), 2, "the raced answer was not cached");
}

#[tokio::test]
async fn apply_stores_the_change_and_the_next_request_sees_it() {
    let fixture = Fixture::new();
    let service = echo(fixture.require());
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::FORBIDDEN
    );

    let upgrade = subscription(
        "org_1",
        "sub_1",
        SubscriptionStatus::Active,
        Some(epoch() + 30 * DAY),
    );
    fixture
        .entitlements
        .apply(&change(&upgrade, 1))
        .await
        .expect("apply");
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );

    let cancellation = Subscription {
        status: SubscriptionStatus::Canceled,
        ..upgrade
    };
    fixture
        .entitlements
        .apply(&change(&cancellation, 2))
        .await
        .expect("apply");
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::FORBIDDEN
    );
    let stored = fixture
        .store
        .inner
        .subscriptions("org_1")
        .await
        .expect("memory store");
    assert_eq!(
        stored.len(),
        1,
        "upsert keyed by organization and subscription id"
    );
}

#[tokio::test]
async fn positive_and_negative_results_are_cached_for_their_own_ttls() {
    let fixture =
        Fixture::with(|builder| builder.positive_ttl(60 * SECOND).negative_ttl(10 * SECOND));
    let service = echo(fixture.require());

    // Not entitled: cached for the negative TTL.
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::FORBIDDEN
    );
    fixture
        .store_subscription(SubscriptionStatus::Active, None)
        .await;
    fixture.clock.advance(9 * SECOND);
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::FORBIDDEN
    );
    fixture.clock.advance(SECOND);
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );
    assert_eq!(fixture.store.reads(), 2);

    // Entitled: cached for the positive TTL.
    fixture
        .store_subscription(SubscriptionStatus::Unpaid, None)
        .await;
    fixture.clock.advance(59 * SECOND);
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );
    fixture.clock.advance(SECOND);
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(fixture.store.reads(), 3);
}

#[tokio::test]
async fn a_cached_entitlement_never_outlives_the_period_end() {
    let fixture = Fixture::with(|builder| builder.positive_ttl(3600 * SECOND));
    fixture
        .store_subscription(SubscriptionStatus::Active, Some(epoch() + 10 * SECOND))
        .await;
    let service = echo(fixture.require());
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );
    fixture.clock.advance(10 * SECOND);
    let answer = send(&service, for_org("org_1")).await;
    assert_problem(&answer, 403, "subscription_required");
    assert_eq!(
        fixture.store.reads(),
        1,
        "decided from the cache, on the clock"
    );
}

#[tokio::test]
async fn fail_closed_rejects_gated_requests_and_degrades_soft_ones() {
    let fixture = Fixture::new();
    fixture.store.set_failing(true);
    let hard = send(&echo(fixture.require()), for_org("org_1")).await;
    assert_problem(&hard, 503, "store_unavailable");
    assert_eq!(hard.headers[header::RETRY_AFTER], "1");

    let soft = send(&echo(fixture.soft()), for_org("org_1")).await;
    assert_eq!(soft.status, StatusCode::OK);
    assert_eq!(soft.body["entitled"], false);
    assert_eq!(soft.body["reason"], "store_unavailable");
}

#[tokio::test]
async fn serve_stale_keeps_the_last_answer_for_a_bounded_window() {
    let fixture = Fixture::with(|builder| {
        builder
            .positive_ttl(60 * SECOND)
            .on_store_error(OnStoreError::ServeStale(300 * SECOND))
    });
    fixture
        .store_subscription(SubscriptionStatus::Active, None)
        .await;
    let service = echo(fixture.require());
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );

    fixture.store.set_failing(true);
    fixture.clock.advance(61 * SECOND);
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK,
        "stale answer served"
    );
    fixture.clock.advance(298 * SECOND);
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );
    fixture.clock.advance(2 * SECOND);
    assert_problem(
        &send(&service, for_org("org_1")).await,
        503,
        "store_unavailable",
    );
    // Never loaded: nothing stale to serve.
    assert_problem(
        &send(&service, for_org("org_2")).await,
        503,
        "store_unavailable",
    );

    fixture.store.set_failing(false);
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn while_the_store_hangs_serve_stale_tries_it_once_a_second_not_per_request() {
    let fixture = Fixture::with(|builder| {
        builder
            .positive_ttl(60 * SECOND)
            .store_timeout(Duration::from_millis(500))
            .on_store_error(OnStoreError::ServeStale(300 * SECOND))
    });
    fixture
        .store_subscription(SubscriptionStatus::Active, None)
        .await;
    let service = echo(fixture.require());
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );

    fixture
        .store
        .hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    fixture.clock.advance(61 * SECOND);
    let started = tokio::time::Instant::now();
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );
    assert_eq!(started.elapsed(), Duration::from_millis(500), "one timeout");
    for _ in 0..5 {
        fixture.clock.advance(Duration::from_millis(150));
        let started = tokio::time::Instant::now();
        assert_eq!(
            send(&service, for_org("org_1")).await.status,
            StatusCode::OK
        );
        assert_eq!(started.elapsed(), Duration::ZERO, "served from the cache");
    }
    assert_eq!(fixture.store.reads(), 2);
    fixture.clock.advance(Duration::from_millis(300));
    send(&service, for_org("org_1")).await;
    assert_eq!(fixture.store.reads(), 3, "tried again after a second");
}

#[tokio::test]
async fn fail_open_lets_requests_through_marked_as_such() {
    let fixture = Fixture::with(|builder| builder.on_store_error(OnStoreError::FailOpen));
    fixture.store.set_failing(true);
    let answer = send(&echo(fixture.require()), for_org("org_1")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["entitled"], true);
    assert_eq!(answer.body["reason"], "fail_open");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_is_cut_off_by_the_timeout() {
    let fixture = Fixture::with(|builder| builder.store_timeout(Duration::from_millis(300)));
    fixture
        .store
        .hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let answer = send(&echo(fixture.require()), for_org("org_1")).await;
    assert_problem(&answer, 503, "store_unavailable");
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test]
async fn grpc_callers_get_permission_denied_and_unavailable() {
    let fixture = Fixture::new();
    let service = echo(fixture.require());
    let grpc = |organization: &str| {
        Request::builder()
            .method("POST")
            .header("content-type", "application/grpc")
            .header("x-organization-id", organization)
            .body(())
            .expect("valid request")
    };
    let denied = send(&service, grpc("org_1")).await;
    assert_eq!(denied.status, StatusCode::OK);
    assert_eq!(denied.headers["content-type"], "application/grpc");
    assert_eq!(denied.headers["grpc-status"], "7");

    fixture.store.set_failing(true);
    let unavailable = send(&service, grpc("org_2")).await;
    assert_eq!(unavailable.headers["grpc-status"], "14");

    let missing = Request::builder()
        .method("POST")
        .header("content-type", "application/grpc")
        .body(())
        .expect("valid request");
    assert_eq!(send(&service, missing).await.headers["grpc-status"], "16");
}

#[tokio::test]
async fn the_organization_can_come_from_the_session_an_extension_or_a_function() {
    let fixture = Fixture::new();
    fixture
        .store_subscription(SubscriptionStatus::Active, None)
        .await;

    // From the session, with SessionRefreshLayer outside.
    let sessions = SessionRefreshLayer::builder(MemorySessionStore::new())
        .clock(fixture.clock.clone())
        .build()
        .expect("valid configuration");
    let gate =
        RequireSubscriptionLayer::new(fixture.entitlements.clone(), EntitlementPolicy::new());
    let stacked = tower::ServiceBuilder::new()
        .layer(sessions.clone())
        .layer(gate)
        .service_fn(|request: Request<()>| async move {
            let entitlement = request
                .extensions()
                .get::<Entitlement>()
                .cloned()
                .expect("decided");
            Ok::<_, Infallible>(Response::new(entitlement.organization_id().to_owned()))
        });
    for (organization, expected) in [("org_1", StatusCode::OK), ("org_2", StatusCode::FORBIDDEN)] {
        let created = sessions
            .handle()
            .create(Some(organization), ())
            .await
            .expect("create");
        let request = Request::builder()
            .header("x-session-id", created.token.to_string())
            .body(())
            .expect("valid request");
        let response = stacked.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), expected, "{organization}");
    }
    let anonymous = sessions.handle().create(None, ()).await.expect("create");
    let request = Request::builder()
        .header("x-session-id", anonymous.token.to_string())
        .body(())
        .expect("valid request");
    let response = stacked.oneshot(request).await.expect("infallible");
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "a session without organization"
    );

    // From an extension the application's own auth set.
    let service = echo(fixture.require().organization(FromExtension));
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(OrganizationId("org_1".into()));
    assert_eq!(send(&service, request).await.status, StatusCode::OK);

    // From a function.
    let from_path =
        |head: &RequestHead<'_>| head.uri().path().strip_prefix("/orgs/").map(str::to_owned);
    let service = echo(fixture.require().organization(from_path));
    let request = Request::builder()
        .uri("/orgs/org_1")
        .body(())
        .expect("valid request");
    assert_eq!(send(&service, request).await.status, StatusCode::OK);
}

#[tokio::test]
async fn entitlements_can_be_asked_directly() {
    let fixture = Fixture::new();
    fixture
        .store_subscription(SubscriptionStatus::Trialing, None)
        .await;
    let decision = fixture
        .entitlements
        .entitlement("org_1", &EntitlementPolicy::new())
        .await
        .expect("store");
    assert!(decision.is_entitled());
    assert_eq!(decision.status(), Some(SubscriptionStatus::Trialing));
    let _ = fixture.clock.now();
}

#[test]
fn invalid_entitlement_settings_are_errors_at_build_time() {
    use tower_saas_guard::ConfigError;
    let build = |configure: fn(
        tower_saas_guard::subscription::EntitlementsBuilder,
    ) -> tower_saas_guard::subscription::EntitlementsBuilder| {
        configure(Entitlements::builder(ProbeSubscriptions::default()))
            .build()
            .err()
    };
    assert_eq!(
        build(|b| b.positive_ttl(Duration::ZERO)),
        Some(ConfigError::ZeroCacheTtl)
    );
    assert_eq!(
        build(|b| b.negative_ttl(Duration::ZERO)),
        Some(ConfigError::ZeroCacheTtl)
    );
    assert_eq!(
        build(|b| b.cache_capacity(0)),
        Some(ConfigError::ZeroCacheCapacity)
    );
    assert_eq!(
        build(|b| b.store_timeout(Duration::ZERO)),
        Some(ConfigError::ZeroStoreTimeout)
    );
    assert_eq!(
        build(|b| b.max_in_flight(0)),
        Some(ConfigError::ZeroMaxInFlight)
    );
    assert_eq!(build(|b| b.max_in_flight(1)), None);
    assert!(matches!(
        build(|b| b.positive_ttl(Duration::MAX)),
        Some(ConfigError::DurationTooLong { .. })
    ));
    assert!(matches!(
        build(|b| b.on_store_error(OnStoreError::ServeStale(Duration::MAX))),
        Some(ConfigError::DurationTooLong { .. })
    ));
    assert_eq!(build(|b| b), None);
}

#[tokio::test]
async fn a_stale_copy_read_before_an_apply_is_not_put_back_under_serve_stale() {
    let fixture = Fixture::with(|builder| {
        builder
            .positive_ttl(60 * SECOND)
            .on_store_error(OnStoreError::ServeStale(300 * SECOND))
    });
    fixture
        .store_subscription(SubscriptionStatus::Active, None)
        .await;
    let service = echo(fixture.require());
    assert_eq!(
        send(&service, for_org("org_1")).await.status,
        StatusCode::OK
    );
    fixture.store.set_failing(true);
    fixture.clock.advance(61 * SECOND);
    // This request reads the stale copy when it is called, and is polled
    // only after the cancellation below landed.
    let mut early = service.clone();
    let in_flight = tower::Service::call(
        tower::ServiceExt::ready(&mut early)
            .await
            .expect("infallible"),
        for_org("org_1"),
    );
    // The cancellation reaches the store (its writes work) and the cache.
    fixture
        .store_subscription(SubscriptionStatus::Canceled, None)
        .await;
    fixture.entitlements.invalidate("org_1");
    // Read before the cancellation: it may still pass.
    let _ = in_flight.await.expect("infallible");
    // The pre-cancellation copy must not be back in the cache: with the
    // store down there is nothing fresh to decide from.
    assert_problem(
        &send(&service, for_org("org_1")).await,
        503,
        "store_unavailable",
    );
    fixture.store.set_failing(false);
    assert_problem(
        &send(&service, for_org("org_1")).await,
        403,
        "subscription_required",
    );
}

#[tokio::test(start_paused = true)]
async fn the_purge_task_forgets_event_ids_after_the_retention() {
    let fixture = Fixture::new();
    let active = subscription("org_1", "sub_1", SubscriptionStatus::Active, None);
    let event = SubscriptionChange::new(active, fixture.clock.now()).with_event_id("evt_1");
    assert!(fixture
        .entitlements
        .apply(&event)
        .await
        .expect("apply")
        .is_applied());
    assert!(!fixture
        .entitlements
        .apply(&event)
        .await
        .expect("apply")
        .is_applied());
    let task = fixture
        .entitlements
        .spawn_purge(3600 * SECOND)
        .expect("runtime");
    // Past the retention on the cache's clock; the task runs after an hour.
    fixture
        .clock
        .advance(tower_saas_guard::subscription::EVENT_ID_RETENTION + 3600 * SECOND);
    tokio::time::sleep(3601 * SECOND).await;
    assert!(
        fixture
            .entitlements
            .apply(&event)
            .await
            .expect("apply")
            .is_applied(),
        "the id was forgotten (its event time equals the last applied one)"
    );
    drop(task);
    assert_eq!(
        fixture.entitlements.spawn_purge(Duration::ZERO).err(),
        Some(tower_saas_guard::ConfigError::ZeroPurgeInterval)
    );
}
