//! BillingWebhook: signed subscription changes reach the store and the
//! cache at once; anything unsigned, forged or stale changes nothing.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_saas_guard::billing::{BillingWebhook, SignatureError, WebhookError, WebhookVerifier};
use tower_saas_guard::subscription::{
    EntitlementPolicy, Entitlements, FromHeader, RequireSubscriptionLayer, SubscriptionStatus,
    SubscriptionStore,
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
        let header = WebhookVerifier::new(SECRET).sign(body.as_bytes(), self.clock.now());
        HeaderValue::from_str(&header).expect("signature is a header")
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
    let applied = fixture
        .webhook
        .handle(Some(&fixture.signed(&body)), body.as_bytes())
        .await
        .expect("applied");
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
