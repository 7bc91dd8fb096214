//! Fault injection through the layers (`test_kit::faults`): for every path
//! (load, renewal, creation, revocation, listing; subscription read and
//! apply; cache miss and hit), a store that fails, lags, hangs or returns
//! records that do not decode gets the documented answer within the store
//! timeout, never a panic or a hung request, and nothing is written that
//! should not be.
#![cfg(feature = "test-kit")]

mod support;

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use http::{header, Request, Response, StatusCode};
use serde_json::{json, Value};
use tower::{service_fn, Layer};
use tower_saas_guard::session::{
    MemorySessionStore, PageRequest, Session, SessionOwner, SessionRefreshLayer, SessionStore,
    SessionToken, SESSION_EXPIRES_AT,
};
use tower_saas_guard::subscription::{
    Entitlement, EntitlementLayer, EntitlementPolicy, Entitlements, FromHeader,
    MemorySubscriptionStore, OnStoreError, RequireSubscriptionLayer, Subscription,
    SubscriptionChange, SubscriptionStatus, SubscriptionStore,
};
use tower_saas_guard::test_kit::faults::{
    Fault, Faults, FaultySessionStore, FaultySubscriptionStore, Op,
};
use tower_saas_guard::{rfc3339_millis, Clock, ManualClock, StoreErrorKind};

use support::{epoch, send, Answer, Echo};

const HOUR: Duration = Duration::from_secs(3600);
const TIMEOUT: Duration = Duration::from_millis(500);

struct Sessions {
    store: FaultySessionStore<MemorySessionStore>,
    faults: Faults,
    clock: ManualClock,
    layer: SessionRefreshLayer,
}

impl Sessions {
    fn new() -> Self {
        let faults = Faults::new(11);
        let store = FaultySessionStore::new(MemorySessionStore::new(), faults.clone());
        let clock = ManualClock::new(epoch());
        let layer = SessionRefreshLayer::builder(store.clone())
            .clock(clock.clone())
            .store_timeout(TIMEOUT)
            .build()
            .expect("valid configuration");
        Self {
            store,
            faults,
            clock,
            layer,
        }
    }

    /// Another instance on the same store: a cold cache.
    fn cold(&self) -> Echo {
        session_echo(
            SessionRefreshLayer::builder(self.store.clone())
                .clock(self.clock.clone())
                .store_timeout(TIMEOUT)
                .build()
                .expect("valid configuration"),
        )
    }

    async fn create(&self) -> SessionToken {
        self.layer
            .handle()
            .create(Some("org_1"), json!({ "name": "Ada" }))
            .await
            .expect("create")
            .token
    }

    async fn stored_expiry(&self, token: &SessionToken) -> Option<SystemTime> {
        self.store
            .inner()
            .load(&token.id())
            .await
            .expect("the memory store answers")
            .map(|record| record.expires_at)
    }
}

fn session_echo(layer: SessionRefreshLayer) -> Echo {
    let inner = service_fn(|request: Request<()>| async move {
        let renewed = request.extensions().get::<Session>().map(Session::renewed);
        Ok::<_, Infallible>(Response::new(json!({ "renewed": renewed }).to_string()))
    });
    tower::util::BoxCloneSyncService::new(layer.layer(inner))
}

fn with_token(token: &SessionToken) -> Request<()> {
    Request::builder()
        .header("x-session-id", token.to_string())
        .body(())
        .expect("valid request")
}

fn assert_unavailable(answer: &Answer, case: &str) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{case}: {:?}",
        answer.body
    );
    assert_eq!(answer.body["code"], "store_unavailable", "{case}");
    assert_eq!(answer.headers[header::RETRY_AFTER], "1", "{case}");
    assert!(!answer.headers.contains_key(SESSION_EXPIRES_AT), "{case}");
}

/// Sends and requires an answer within the store timeout (plus slack):
/// no fault may hang a request.
async fn send_bounded(service: &Echo, request: Request<()>) -> Answer {
    tokio::time::timeout(TIMEOUT + Duration::from_secs(1), send(service, request))
        .await
        .expect("answered within the store timeout")
}

#[tokio::test(start_paused = true)]
async fn a_cache_miss_meets_every_fault_with_store_unavailable_or_passes() {
    let sessions = Sessions::new();
    let token = sessions.create().await;
    for (fault, case) in [
        (Fault::Error, "error"),
        (Fault::Hang, "hang"),
        (Fault::Malformed, "malformed"),
        (Fault::Latency(TIMEOUT * 2), "latency past the timeout"),
    ] {
        sessions.faults.script(Op::Load, [fault]);
        let answer = send_bounded(&sessions.cold(), with_token(&token)).await;
        assert_unavailable(&answer, case);
    }
    // A lag inside the timeout is only a lag.
    sessions
        .faults
        .script(Op::Load, [Fault::Latency(TIMEOUT / 2)]);
    let answer = send_bounded(&sessions.cold(), with_token(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    // An unknown token meets the same faults the same way, and is not
    // remembered as unknown because of them.
    let stranger = SessionToken::generate().expect("os randomness");
    let cold = sessions.cold();
    sessions.faults.script(Op::Load, [Fault::Error]);
    assert_unavailable(
        &send_bounded(&cold, with_token(&stranger)).await,
        "stranger",
    );
    let answer = send_bounded(&cold, with_token(&stranger)).await;
    assert_eq!(answer.body["code"], "session_not_found");
}

#[tokio::test(start_paused = true)]
async fn a_cache_hit_never_asks_the_store_so_it_survives_any_fault() {
    let sessions = Sessions::new();
    let token = sessions.create().await;
    let service = session_echo(sessions.layer.clone());
    sessions.faults.all(Fault::Hang);
    let loads = sessions.faults.calls(Op::Load);
    for _ in 0..10 {
        let answer = send_bounded(&service, with_token(&token)).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(sessions.faults.calls(Op::Load), loads);
}

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_keeps_the_old_expiry_and_a_later_request_retries_it() {
    let sessions = Sessions::new();
    let token = sessions.create().await;
    let created_expiry = sessions.stored_expiry(&token).await.expect("stored");
    let service = session_echo(sessions.layer.clone());
    sessions.clock.advance(21 * HOUR);
    for fault in [Fault::Error, Fault::Hang, Fault::Malformed] {
        sessions.faults.script(Op::Extend, [fault]);
        let answer = send_bounded(&service, with_token(&token)).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{fault:?}: {:?}",
            answer.body
        );
        assert_eq!(answer.body["renewed"], false, "{fault:?}");
        assert_eq!(
            answer.headers[SESSION_EXPIRES_AT],
            rfc3339_millis(created_expiry).as_str()
        );
        assert_eq!(
            sessions.stored_expiry(&token).await,
            Some(created_expiry),
            "{fault:?}: nothing written"
        );
        // The retry waits a second, then goes to the store again.
        sessions.clock.advance(Duration::from_millis(1100));
    }
    let answer = send_bounded(&service, with_token(&token)).await;
    assert_eq!(answer.body["renewed"], true);
    assert!(sessions.stored_expiry(&token).await > Some(created_expiry));
}

#[tokio::test(start_paused = true)]
async fn creation_revocation_and_listing_report_store_errors_and_write_nothing() {
    let sessions = Sessions::new();
    let handle = sessions.layer.handle();
    for fault in [Fault::Error, Fault::Hang, Fault::Malformed] {
        sessions.faults.script(Op::Create, [fault]);
        let created = tokio::time::timeout(TIMEOUT * 2, handle.create(Some("org_1"), json!({})))
            .await
            .expect("bounded by the store timeout");
        assert!(created.is_err(), "{fault:?}");
    }
    assert!(sessions.store.inner().is_empty(), "no session was created");

    let token = sessions.create().await;
    sessions.faults.script(Op::Delete, [Fault::Hang]);
    let revoked = tokio::time::timeout(TIMEOUT * 2, handle.revoke(&token))
        .await
        .expect("bounded by the store timeout");
    assert_eq!(revoked.map_err(|e| e.kind()), Err(StoreErrorKind::Timeout));
    // The store still holds it: the caller was told the revocation failed.
    assert!(sessions.stored_expiry(&token).await.is_some());
    assert!(handle.revoke(&token).await.expect("healed"));

    sessions.faults.script(Op::DeleteAll, [Fault::Error]);
    assert!(handle
        .revoke_all(SessionOwner::Organization("org_1"))
        .await
        .is_err());
    sessions.faults.script(Op::List, [Fault::Malformed]);
    let listed = handle
        .list(SessionOwner::Organization("org_1"), PageRequest::first(10))
        .await;
    assert_eq!(
        listed.map(|page| page.sessions.len()).map_err(|e| e.kind()),
        Err(StoreErrorKind::Serialization)
    );
}

#[tokio::test]
async fn under_random_faults_every_answer_is_200_or_store_unavailable() {
    let sessions = Sessions::new();
    let mut tokens = Vec::new();
    for _ in 0..20 {
        tokens.push(sessions.create().await);
    }
    sessions.faults.random(Op::Load, Fault::Error, 0.3);
    sessions.faults.random(Op::Extend, Fault::Malformed, 0.3);
    let mut seen = std::collections::BTreeMap::new();
    for round in 0..30 {
        // A new instance each round: every request is a cache miss, and
        // later rounds are due for renewal.
        let service = sessions.cold();
        sessions.clock.advance(HOUR);
        for token in &tokens {
            let answer = send_bounded(&service, with_token(token)).await;
            let key = match answer.status {
                StatusCode::OK => "ok",
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_unavailable(&answer, "random");
                    "store_unavailable"
                }
                // Every renewal attempt of its window failed: it expired,
                // as the store says.
                StatusCode::UNAUTHORIZED if answer.body["code"] == "session_expired" => {
                    let stored = sessions.stored_expiry(token).await.expect("stored");
                    assert!(stored <= sessions.clock.now(), "round {round}");
                    "session_expired"
                }
                other => panic!("round {round}: {other} {:?}", answer.body),
            };
            *seen.entry(key).or_insert(0) += 1;
        }
    }
    assert!(
        seen["ok"] > 300 && seen["store_unavailable"] > 100,
        "{seen:?}"
    );
}

// ------------------------------------------------------------ subscriptions

struct Subscriptions {
    store: FaultySubscriptionStore<MemorySubscriptionStore>,
    faults: Faults,
    clock: ManualClock,
}

impl Subscriptions {
    async fn new() -> Self {
        let faults = Faults::new(5);
        let store = FaultySubscriptionStore::new(MemorySubscriptionStore::new(), faults.clone());
        store
            .inner()
            .upsert(&Subscription {
                organization_id: "org_1".to_owned(),
                subscription_id: "sub_1".to_owned(),
                status: SubscriptionStatus::Active,
                plan: "pro".to_owned(),
                current_period_end: Some(epoch() + 30 * 24 * HOUR),
                trial_end: None,
            })
            .await
            .expect("the memory store answers");
        Self {
            store,
            faults,
            clock: ManualClock::new(epoch()),
        }
    }

    fn entitlements(&self, on_error: OnStoreError) -> Entitlements {
        Entitlements::builder(self.store.clone())
            .clock(self.clock.clone())
            .store_timeout(TIMEOUT)
            .on_store_error(on_error)
            .build()
            .expect("valid configuration")
    }
}

fn gate_echo(entitlements: &Entitlements, soft: bool) -> Echo {
    let inner = service_fn(|request: Request<()>| async move {
        let entitled = request
            .extensions()
            .get::<Entitlement>()
            .map(Entitlement::is_entitled);
        Ok::<_, Infallible>(Response::new(json!({ "entitled": entitled }).to_string()))
    });
    let organization = FromHeader::new(http::HeaderName::from_static("x-organization-id"));
    let policy = EntitlementPolicy::new();
    if soft {
        let layer = EntitlementLayer::new(entitlements.clone(), policy).organization(organization);
        tower::util::BoxCloneSyncService::new(layer.layer(inner))
    } else {
        let layer =
            RequireSubscriptionLayer::new(entitlements.clone(), policy).organization(organization);
        tower::util::BoxCloneSyncService::new(layer.layer(inner))
    }
}

fn org_request() -> Request<()> {
    Request::builder()
        .header("x-organization-id", "org_1")
        .body(())
        .expect("valid request")
}

#[tokio::test(start_paused = true)]
async fn a_subscription_read_fails_closed_by_default_serves_stale_or_opens_as_configured() {
    let subscriptions = Subscriptions::new().await;
    for fault in [Fault::Error, Fault::Hang, Fault::Malformed] {
        let entitlements = subscriptions.entitlements(OnStoreError::FailClosed);
        subscriptions.faults.script(Op::Subscriptions, [fault]);
        let answer = send_bounded(&gate_echo(&entitlements, false), org_request()).await;
        assert_unavailable(&answer, "hard gate, fail closed");
        subscriptions.faults.script(Op::Subscriptions, [fault]);
        let soft = send_bounded(&gate_echo(&entitlements, true), org_request()).await;
        assert_eq!(soft.status, StatusCode::OK);
        assert_eq!(soft.body, json!({ "entitled": false }), "{fault:?}");
    }

    let open = subscriptions.entitlements(OnStoreError::FailOpen);
    subscriptions.faults.always(Op::Subscriptions, Fault::Error);
    let answer = send_bounded(&gate_echo(&open, false), org_request()).await;
    assert_eq!(answer.body, json!({ "entitled": true }), "fail open");
    subscriptions.faults.heal();

    // Serve stale: the last answer holds for the window past the TTL, then
    // the gate closes.
    let stale = subscriptions.entitlements(OnStoreError::ServeStale(Duration::from_secs(300)));
    let gate = gate_echo(&stale, false);
    assert_eq!(
        send_bounded(&gate, org_request()).await.body,
        json!({ "entitled": true })
    );
    subscriptions.faults.always(Op::Subscriptions, Fault::Hang);
    subscriptions.clock.advance(Duration::from_secs(61 + 200));
    assert_eq!(
        send_bounded(&gate, org_request()).await.body,
        json!({ "entitled": true }),
        "within the stale window"
    );
    subscriptions.clock.advance(Duration::from_secs(200));
    assert_unavailable(&send_bounded(&gate, org_request()).await, "past the window");
}

#[tokio::test(start_paused = true)]
async fn a_failed_apply_reports_the_error_changes_nothing_and_keeps_the_cached_decision() {
    let subscriptions = Subscriptions::new().await;
    let entitlements = subscriptions.entitlements(OnStoreError::FailClosed);
    let gate = gate_echo(&entitlements, false);
    assert_eq!(
        send_bounded(&gate, org_request()).await.status,
        StatusCode::OK
    );
    let canceled = SubscriptionChange::new(
        Subscription {
            organization_id: "org_1".to_owned(),
            subscription_id: "sub_1".to_owned(),
            status: SubscriptionStatus::Canceled,
            plan: "pro".to_owned(),
            current_period_end: None,
            trial_end: None,
        },
        epoch() + Duration::from_secs(10),
    );
    for fault in [Fault::Error, Fault::Hang, Fault::Malformed] {
        subscriptions.faults.script(Op::Apply, [fault]);
        let applied = tokio::time::timeout(TIMEOUT * 2, entitlements.apply(&canceled))
            .await
            .expect("bounded by the store timeout");
        assert!(applied.is_err(), "{fault:?}");
        let stored = subscriptions
            .store
            .inner()
            .subscriptions("org_1")
            .await
            .expect("the memory store answers");
        assert_eq!(stored[0].status, SubscriptionStatus::Active, "{fault:?}");
        let answer = send_bounded(&gate, org_request()).await;
        assert_eq!(answer.body, json!({ "entitled": true }), "{fault:?}");
    }
    // Healed, the same change applies and the gate closes at once.
    entitlements.apply(&canceled).await.expect("healed");
    let answer = send_bounded(&gate, org_request()).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.body["code"], Value::from("subscription_required"));
}
