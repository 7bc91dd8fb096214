//! BillingWebhook: signed subscription changes reach the store and the
//! cache at once; anything unsigned, forged or stale changes nothing.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_saas_guard::billing::{BillingWebhook, SignatureError, WebhookError, WebhookVerifier};
use tower_saas_guard::subscription::{
    ApplyOutcome, EntitlementPolicy, Entitlements, FromHeader, RequireSubscriptionLayer,
    SubscriptionStatus, SubscriptionStore,
};
use tower_saas_guard::{Clock, ManualClock};

use support::{epoch, ProbeSubscriptions};

const SECRET: &str = "whsec_reference";

struct Fixture {
    store: ProbeSubscriptions,
    clock: ManualClock,
    entitlements: Entitlements,
    webhook: BillingWebhook,
}

impl Fixture {
    fn new() -> Self {
        let store = ProbeSubscriptions::default();
        let clock = ManualClock::new(epoch());
        let entitlements = Entitlements::builder(store.clone())
            .clock(clock.clone())
            .build()
            .expect("valid configuration");
        let webhook = BillingWebhook::new(WebhookVerifier::new(SECRET), entitlements.clone());
        Self {
            store,
            clock,
            entitlements,
            webhook,
        }
    }

    fn signed(&self, body: &str) -> HeaderValue {
        self.signed_at(body, self.clock.now())
    }

    fn signed_at(&self, body: &str, at: std::time::SystemTime) -> HeaderValue {
        let header = WebhookVerifier::new(SECRET).sign(body.as_bytes(), at);
        HeaderValue::from_str(&header).expect("signature is a header")
    }

    async fn handle(&self, signature: &HeaderValue, body: &str) -> ApplyOutcome {
        self.webhook
            .handle(Some(signature), body.as_bytes())
            .await
            .unwrap_or_else(|error| panic!("{body}: {error} ({error:?})"))
            .outcome
    }

    async fn entitled(&self) -> bool {
        self.entitlements
            .entitlement("org_1", &EntitlementPolicy::new())
            .await
            .expect("store")
            .is_entitled()
    }

    async fn stored(&self) -> usize {
        self.store
            .inner
            .subscriptions("org_1")
            .await
            .expect("memory store")
            .len()
    }
}

fn event(status: &str) -> String {
    format!(
        r#"{{"organization_id":"org_1","subscription_id":"sub_1","status":"{status}","plan":"pro","current_period_end":"2030-01-01T00:00:00Z","unknown_field":1}}"#
    )
}

#[tokio::test]
async fn a_signed_upgrade_takes_effect_on_the_very_next_request() {
    let fixture = Fixture::new();
    let gate =
        RequireSubscriptionLayer::new(fixture.entitlements.clone(), EntitlementPolicy::new())
            .organization(FromHeader::new(http::HeaderName::from_static(
                "x-organization-id",
            )));
    let service = gate.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let status = || {
        let request = Request::builder()
            .header("x-organization-id", "org_1")
            .body(())
            .expect("valid request");
        let answer = service.clone().oneshot(request);
        async move { answer.await.expect("infallible").status() }
    };
    assert_eq!(status().await, StatusCode::FORBIDDEN);

    let body = event("active");
    let receipt = fixture
        .webhook
        .handle(Some(&fixture.signed(&body)), body.as_bytes())
        .await
        .expect("applied");
    assert!(receipt.applied());
    let applied = receipt.subscription;
    assert_eq!(applied.status, SubscriptionStatus::Active);
    assert_eq!(
        applied.current_period_end,
        Some(std::time::UNIX_EPOCH + Duration::from_secs(1_893_456_000))
    );
    assert_eq!(status().await, StatusCode::OK);

    let body = event("canceled");
    fixture
        .webhook
        .handle(Some(&fixture.signed(&body)), body.as_bytes())
        .await
        .expect("applied");
    assert_eq!(status().await, StatusCode::FORBIDDEN);
    assert_eq!(
        fixture.stored().await,
        1,
        "upsert keyed by organization and subscription id"
    );
}

#[tokio::test]
async fn tampered_resigned_and_stale_webhooks_are_rejected_and_change_nothing() {
    let fixture = Fixture::new();
    let body = event("active");
    let genuine = fixture.signed(&body);

    let tampered = body.replace("\"pro\"", "\"enterprise\"");
    let other_secret = HeaderValue::from_str(
        &WebhookVerifier::new("whsec_attacker").sign(body.as_bytes(), fixture.clock.now()),
    )
    .expect("header");
    let stale = HeaderValue::from_str(&WebhookVerifier::new(SECRET).sign(
        body.as_bytes(),
        fixture.clock.now() - Duration::from_secs(600),
    ))
    .expect("header");
    let cases: [(Option<&HeaderValue>, &[u8], SignatureError); 4] = [
        (
            Some(&genuine),
            tampered.as_bytes(),
            SignatureError::Mismatch,
        ),
        (
            Some(&other_secret),
            body.as_bytes(),
            SignatureError::Mismatch,
        ),
        (
            Some(&stale),
            body.as_bytes(),
            SignatureError::OutsideTolerance,
        ),
        (None, body.as_bytes(), SignatureError::Missing),
    ];
    for (signature, payload, expected) in cases {
        let error = fixture
            .webhook
            .handle(signature, payload)
            .await
            .expect_err("rejected");
        assert_eq!(error.code(), "invalid_signature");
        assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        assert!(
            matches!(&error, WebhookError::Signature(found) if *found == expected),
            "{error:?}"
        );
    }
    assert_eq!(fixture.stored().await, 0, "nothing was written");
    assert!(!fixture.entitled().await);

    // The genuine one, replayed 10 minutes later, is refused too.
    fixture.clock.advance(Duration::from_secs(600));
    let error = fixture
        .webhook
        .handle(Some(&genuine), body.as_bytes())
        .await
        .expect_err("replay refused");
    assert!(matches!(
        error,
        WebhookError::Signature(SignatureError::OutsideTolerance)
    ));
    assert_eq!(fixture.stored().await, 0);
}

#[tokio::test]
async fn signed_but_invalid_bodies_are_invalid_request_and_change_nothing() {
    let fixture = Fixture::new();
    let bodies = [
        "not json".to_owned(),
        r#"{"organization_id":"org_1","subscription_id":"sub_1","plan":"pro"}"#.to_owned(),
        event("gold"),
        event("ACTIVE"),
        event("active").replace("2030-01-01T00:00:00Z", "next tuesday"),
        event("active").replace("\"org_1\"", "\"  \""),
        event("active").replace("\"sub_1\"", &format!("\"{}\"", "s".repeat(129))),
        with_event_id(&event("active"), " "),
        with_event_id(&event("active"), &"e".repeat(129)),
    ];
    for body in bodies {
        let error = fixture
            .webhook
            .handle(Some(&fixture.signed(&body)), body.as_bytes())
            .await
            .expect_err("invalid body");
        assert_eq!(error.code(), "invalid_request", "{body}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(fixture.stored().await, 0);
}

#[tokio::test]
async fn a_failing_store_is_reported_as_store_unavailable() {
    let fixture = Fixture::new();
    fixture.store.set_failing(true);
    let body = event("active");
    let error = fixture
        .webhook
        .handle(Some(&fixture.signed(&body)), body.as_bytes())
        .await
        .expect_err("store down");
    assert_eq!(error.code(), "store_unavailable");
    assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn two_subscriptions_of_one_organization_in_either_order_entitle() {
    for order in [["canceled", "active"], ["active", "canceled"]] {
        let fixture = Fixture::new();
        for (index, status) in order.iter().enumerate() {
            let id = if *status == "active" {
                "sub_new"
            } else {
                "sub_old"
            };
            let body = event(status).replace("sub_1", id);
            fixture
                .webhook
                .handle(Some(&fixture.signed(&body)), body.as_bytes())
                .await
                .unwrap_or_else(|error| panic!("event {index}: {error}"));
        }
        assert_eq!(fixture.stored().await, 2);
        let decision = fixture
            .entitlements
            .entitlement("org_1", &EntitlementPolicy::new())
            .await
            .expect("store");
        assert!(decision.is_entitled(), "{order:?}");
        assert_eq!(
            decision.subscription().map(|s| s.subscription_id.as_str()),
            Some("sub_new")
        );
    }
}

/// `body` (an `event(..)`) carrying `"event_id": id`.
fn with_event_id(body: &str, id: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(body).expect("json");
    value["event_id"] = serde_json::Value::from(id);
    value.to_string()
}

#[tokio::test]
async fn an_older_webhook_replayed_or_resigned_after_a_cancellation_is_not_applied() {
    let fixture = Fixture::new();
    let now = fixture.clock.now();
    let active = event("active");
    let captured = fixture.signed_at(&active, now - Duration::from_secs(200));
    assert_eq!(
        fixture.handle(&captured, &active).await,
        ApplyOutcome::Applied
    );
    assert!(fixture.entitled().await);

    let canceled = event("canceled");
    let cancellation = fixture.signed_at(&canceled, now);
    assert_eq!(
        fixture.handle(&cancellation, &canceled).await,
        ApplyOutcome::Applied
    );
    assert!(!fixture.entitled().await);

    // The captured body and header, replayed within the 300 s tolerance.
    assert_eq!(
        fixture.handle(&captured, &active).await,
        ApplyOutcome::Outdated
    );
    assert!(!fixture.entitled().await, "a replay undid the cancellation");
    // The same body signed again, at a time still before the cancellation.
    let resigned = fixture.signed_at(&active, now - Duration::from_secs(1));
    assert_eq!(
        fixture.handle(&resigned, &active).await,
        ApplyOutcome::Outdated
    );
    assert!(!fixture.entitled().await, "a re-signed older event won");
    let stored = fixture
        .store
        .inner
        .subscriptions("org_1")
        .await
        .expect("memory");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].status, SubscriptionStatus::Canceled);

    // A later change applies again.
    fixture.clock.advance(Duration::from_secs(60));
    assert_eq!(
        fixture.handle(&fixture.signed(&active), &active).await,
        ApplyOutcome::Applied
    );
    assert!(fixture.entitled().await);
}

#[tokio::test]
async fn a_webhook_whose_event_id_was_applied_is_not_applied_even_later_and_different() {
    let fixture = Fixture::new();
    let first = with_event_id(&event("active"), "evt_1");
    let receipt = fixture
        .webhook
        .handle(Some(&fixture.signed(&first)), first.as_bytes())
        .await
        .expect("applied");
    assert_eq!(receipt.outcome, ApplyOutcome::Applied);
    assert!(fixture.entitled().await);

    fixture.clock.advance(Duration::from_secs(10));
    let same_id = with_event_id(&event("canceled"), " evt_1 ");
    let receipt = fixture
        .webhook
        .handle(Some(&fixture.signed(&same_id)), same_id.as_bytes())
        .await
        .expect("accepted");
    assert!(!receipt.applied());
    assert_eq!(receipt.outcome, ApplyOutcome::DuplicateEvent);
    assert_eq!(receipt.subscription.status, SubscriptionStatus::Canceled);
    assert!(
        fixture.entitled().await,
        "a duplicate event id changed the subscription"
    );

    let new_id = with_event_id(&event("canceled"), "evt_2");
    assert_eq!(
        fixture.handle(&fixture.signed(&new_id), &new_id).await,
        ApplyOutcome::Applied
    );
    assert!(!fixture.entitled().await);
}
