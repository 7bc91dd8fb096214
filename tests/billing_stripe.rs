//! StripeWebhook: Stripe's own events, signed with `Stripe-Signature`,
//! reach the store and the cache; anything unsigned, forged, stale,
//! older or repeated changes nothing.
//!
//! The event bodies are shaped like the Event and Subscription objects of
//! Stripe's API reference, in both API generations: before 2025-03-31 the
//! billing period is on the subscription, from 2025-03-31 (`basil`) on
//! each subscription item.

mod stripe_events;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, StatusCode};
use serde_json::{json, Value};
use tower_saas_guard::billing::stripe::{StripeReceipt, StripeVerifier, StripeWebhook};
use tower_saas_guard::billing::{SignatureError, WebhookError};
use tower_saas_guard::subscription::{
    ApplyOutcome, EntitlementPolicy, Entitlements, MemorySubscriptionStore, Subscription,
    SubscriptionStatus, SubscriptionStore,
};
use tower_saas_guard::{Clock, ConfigError, ManualClock, StoreError};

use stripe_events::{basil_subscription, event, legacy_subscription, price, DAY};

const SECRET: &str = "whsec_current";
const OLD_SECRET: &str = "whsec_previous";
/// 2027-01-15T08:00:00Z: "now" at the start of every test.
const NOW: u64 = 1_800_000_000;

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

struct Fixture {
    store: MemorySubscriptionStore,
    clock: ManualClock,
    entitlements: Entitlements,
    webhook: StripeWebhook,
}

impl Fixture {
    fn new() -> Self {
        Self::with(|webhook| webhook)
    }

    fn with(configure: impl FnOnce(StripeWebhook) -> StripeWebhook) -> Self {
        let store = MemorySubscriptionStore::new();
        let clock = ManualClock::new(at(NOW));
        let entitlements = Entitlements::builder(store.clone())
            .clock(clock.clone())
            .build()
            .expect("valid configuration");
        let verifier = StripeVerifier::try_new([SECRET, OLD_SECRET]).expect("two secrets");
        let webhook = configure(StripeWebhook::new(verifier, entitlements.clone()));
        Self {
            store,
            clock,
            entitlements,
            webhook,
        }
    }

    /// Signed with the current secret only, at the clock's now.
    fn signed(&self, body: &[u8]) -> HeaderValue {
        sign_with(SECRET, body, self.clock.now())
    }

    async fn deliver(&self, event: &Value) -> Result<StripeReceipt, WebhookError> {
        let body = serde_json::to_vec(event).expect("an event serializes");
        self.webhook.handle(Some(&self.signed(&body)), &body).await
    }

    async fn deliver_ok(&self, event: &Value) -> StripeReceipt {
        self.deliver(event)
            .await
            .unwrap_or_else(|error| panic!("{event}: {error} ({error:?})"))
    }

    async fn stored(&self, organization: &str) -> Vec<Subscription> {
        self.store
            .subscriptions(organization)
            .await
            .expect("the memory store answers")
    }

    async fn entitled(&self, organization: &str, policy: &EntitlementPolicy) -> bool {
        self.entitlements
            .entitlement(organization, policy)
            .await
            .expect("the memory store answers")
            .is_entitled()
    }
}

fn sign_with(secret: &str, body: &[u8], at: SystemTime) -> HeaderValue {
    let header = StripeVerifier::try_new([secret])
        .expect("a secret")
        .sign(body, at);
    HeaderValue::from_str(&header).expect("a signature is a header value")
}

fn org_metadata() -> Value {
    json!({ "organization_id": "org_acme" })
}

fn legacy_event(id: &str, event_type: &str, created: u64, status: &str) -> Value {
    event(
        id,
        event_type,
        created,
        legacy_subscription(status, NOW + 30 * DAY, org_metadata()),
    )
}

// ---------------------------------------------------------------- signature

#[tokio::test]
async fn signature_with_either_active_secret_is_accepted() {
    let fixture = Fixture::new();
    for (index, secret) in [SECRET, OLD_SECRET].into_iter().enumerate() {
        let body = serde_json::to_vec(&legacy_event(
            &format!("evt_secret{index}"),
            "customer.subscription.updated",
            NOW - 10 + index as u64,
            "active",
        ))
        .expect("serializes");
        let header = sign_with(secret, &body, fixture.clock.now());
        let receipt = fixture
            .webhook
            .handle(Some(&header), &body)
            .await
            .unwrap_or_else(|error| panic!("signed with {secret}: {error}"));
        assert!(receipt.applied(), "signed with {secret}");
    }
}

#[tokio::test]
async fn first_v1_wrong_and_second_right_is_accepted() {
    let fixture = Fixture::new();
    let body = serde_json::to_vec(&legacy_event(
        "evt_rotation",
        "customer.subscription.created",
        NOW,
        "active",
    ))
    .expect("serializes");
    let right = fixture.signed(&body);
    let right = right.to_str().expect("ascii");
    let (timestamp, tag) = right.split_once(",v1=").expect("t and v1");
    let wrong_tag = "0".repeat(64);
    let header = format!("{timestamp},v1={wrong_tag},v0={wrong_tag},v1={tag}");
    let receipt = fixture
        .webhook
        .handle(
            Some(&HeaderValue::from_str(&header).expect("header")),
            &body,
        )
        .await
        .expect("the second v1 matches");
    assert!(receipt.applied());

    let only_wrong = format!("{timestamp},v1={wrong_tag},v0={tag}");
    let error = fixture
        .webhook
        .handle(
            Some(&HeaderValue::from_str(&only_wrong).expect("header")),
            &body,
        )
        .await
        .expect_err("a v0 entry is not a signature");
    assert!(matches!(
        error,
        WebhookError::Signature(SignatureError::Mismatch)
    ));
}

#[tokio::test]
async fn stale_or_future_timestamp_is_refused_and_changes_nothing() {
    let fixture = Fixture::new();
    let body = serde_json::to_vec(&legacy_event(
        "evt_replayed",
        "customer.subscription.updated",
        NOW,
        "active",
    ))
    .expect("serializes");
    for signed_at in [at(NOW - 301), at(NOW + 301)] {
        let header = sign_with(SECRET, &body, signed_at);
        let error = fixture
            .webhook
            .handle(Some(&header), &body)
            .await
            .expect_err("outside the tolerance");
        assert!(
            matches!(
                error,
                WebhookError::Signature(SignatureError::OutsideTolerance)
            ),
            "{error:?}"
        );
        assert_eq!(error.code(), "invalid_signature");
        assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
    }
    for edge in [at(NOW - 300), at(NOW + 300)] {
        let verifier = StripeVerifier::try_new([SECRET]).expect("a secret");
        let header = verifier.sign(&body, edge);
        assert_eq!(verifier.verify(header.as_bytes(), &body, at(NOW)), Ok(edge));
    }
    assert!(fixture.stored("org_acme").await.is_empty());
}

#[tokio::test]
async fn configured_tolerance_replaces_the_default() {
    let verifier = StripeVerifier::try_new([SECRET])
        .expect("a secret")
        .tolerance(Duration::from_secs(10));
    let header = verifier.sign(b"{}", at(NOW));
    assert!(verifier
        .verify(header.as_bytes(), b"{}", at(NOW + 10))
        .is_ok());
    assert_eq!(
        verifier.verify(header.as_bytes(), b"{}", at(NOW + 11)),
        Err(SignatureError::OutsideTolerance)
    );
}

#[tokio::test]
async fn missing_header_is_invalid_signature() {
    let fixture = Fixture::new();
    let body = serde_json::to_vec(&legacy_event(
        "evt_unsigned",
        "customer.subscription.created",
        NOW,
        "active",
    ))
    .expect("serializes");
    let error = fixture
        .webhook
        .handle(None, &body)
        .await
        .expect_err("unsigned");
    assert!(matches!(
        error,
        WebhookError::Signature(SignatureError::Missing)
    ));
    assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
    assert!(fixture.stored("org_acme").await.is_empty());
}

#[tokio::test]
async fn too_many_entries_is_invalid_signature_not_a_panic() {
    let fixture = Fixture::new();
    let body = br#"{"id":"evt_1"}"#;
    let right = fixture.signed(body);
    let right = right.to_str().expect("ascii");
    let padding = ",v0=00".repeat(15);
    // 17 entries, the right signature last.
    let header = format!("{right}{padding}");
    let error = fixture
        .webhook
        .handle(Some(&HeaderValue::from_str(&header).expect("header")), body)
        .await
        .expect_err("too many entries");
    assert!(matches!(
        error,
        WebhookError::Signature(SignatureError::TooManyEntries)
    ));
    assert_eq!(error.code(), "invalid_signature");

    let huge = ",".repeat(100_000);
    let verifier = StripeVerifier::try_new([SECRET]).expect("a secret");
    assert_eq!(
        verifier.verify(huge.as_bytes(), body, at(NOW)),
        Err(SignatureError::TooManyEntries)
    );
    // 16 entries are fine.
    let header = format!("{right}{}", ",v0=00".repeat(14));
    assert!(verifier.verify(header.as_bytes(), body, at(NOW)).is_ok());
}

#[test]
fn no_secret_or_an_empty_secret_is_a_config_error() {
    assert_eq!(
        StripeVerifier::try_new(Vec::<String>::new()).err(),
        Some(ConfigError::NoWebhookSecret)
    );
    assert_eq!(
        StripeVerifier::try_new(["whsec_a", ""]).err(),
        Some(ConfigError::EmptyWebhookSecret)
    );
    let debug = format!(
        "{:?}",
        StripeVerifier::try_new(["whsec_topsecret"]).expect("ok")
    );
    assert!(!debug.contains("topsecret"), "{debug}");
}

// ------------------------------------------------------------ API shapes

#[tokio::test]
async fn legacy_api_period_end_is_read_from_the_subscription() {
    let fixture = Fixture::new();
    let receipt = fixture
        .deliver_ok(&legacy_event(
            "evt_legacy",
            "customer.subscription.created",
            NOW,
            "active",
        ))
        .await;
    assert_eq!(receipt.event_id, "evt_legacy");
    assert!(receipt.applied());
    assert_eq!(
        fixture.stored("org_acme").await,
        vec![Subscription {
            organization_id: "org_acme".into(),
            subscription_id: "sub_1MowQVLkdIwHu7ixeRlqHVzs".into(),
            status: SubscriptionStatus::Active,
            plan: "pro_monthly".into(),
            current_period_end: Some(at(NOW + 30 * DAY)),
            trial_end: None,
        }]
    );
    let policy = EntitlementPolicy::new();
    assert!(fixture.entitled("org_acme", &policy).await);
    fixture.clock.set(at(NOW + 30 * DAY + 1));
    assert!(!fixture.entitled("org_acme", &policy).await);
}

#[tokio::test]
async fn basil_api_period_end_is_the_latest_item_period_end() {
    let fixture = Fixture::new();
    let subscription =
        basil_subscription("active", &[NOW + 20 * DAY, NOW + 40 * DAY], org_metadata());
    let mut envelope = event(
        "evt_basil",
        "customer.subscription.created",
        NOW,
        subscription,
    );
    envelope["api_version"] = json!("2025-03-31.basil");
    assert!(fixture.deliver_ok(&envelope).await.applied());
    let stored = fixture.stored("org_acme").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].subscription_id, "sub_1RbasilLkdIwHu7ix");
    assert_eq!(stored[0].plan, "team_yearly");
    assert_eq!(stored[0].current_period_end, Some(at(NOW + 40 * DAY)));
}

#[tokio::test]
async fn plan_falls_back_to_the_product_id_plain_or_expanded_through_the_mapping() {
    let fixture = Fixture::with(|webhook| {
        webhook.plan_mapping(|product: &str| match product {
            "prod_Gold" => "gold".to_owned(),
            other => other.to_owned(),
        })
    });
    let mut plain = legacy_subscription("active", NOW + DAY, org_metadata());
    plain["items"]["data"][0]["price"] = price(None, json!("prod_Gold"));
    fixture
        .deliver_ok(&event(
            "evt_plain",
            "customer.subscription.created",
            NOW,
            plain,
        ))
        .await;
    assert_eq!(fixture.stored("org_acme").await[0].plan, "gold");

    let mut expanded = legacy_subscription("active", NOW + DAY, org_metadata());
    expanded["items"]["data"][0]["price"] = price(
        None,
        json!({ "id": "prod_Silver", "object": "product", "name": "Silver" }),
    );
    fixture
        .deliver_ok(&event(
            "evt_expanded",
            "customer.subscription.updated",
            NOW + 1,
            expanded,
        ))
        .await;
    assert_eq!(fixture.stored("org_acme").await[0].plan, "prod_Silver");
}

#[tokio::test]
async fn trialing_subscription_is_entitled_with_its_trial_end() {
    let fixture = Fixture::new();
    let mut subscription = legacy_subscription("trialing", NOW + 14 * DAY, org_metadata());
    subscription["trial_start"] = json!(NOW);
    subscription["trial_end"] = json!(NOW + 14 * DAY);
    fixture
        .deliver_ok(&event(
            "evt_trial",
            "customer.subscription.created",
            NOW,
            subscription.clone(),
        ))
        .await;
    let stored = fixture.stored("org_acme").await;
    assert_eq!(stored[0].status, SubscriptionStatus::Trialing);
    assert_eq!(stored[0].trial_end, Some(at(NOW + 14 * DAY)));
    assert!(
        fixture
            .entitled("org_acme", &EntitlementPolicy::new())
            .await
    );

    // `trial_will_end` carries the subscription too and is applied.
    let receipt = fixture
        .deliver_ok(&event(
            "evt_trial_ending",
            "customer.subscription.trial_will_end",
            NOW + 11 * DAY,
            subscription,
        ))
        .await;
    assert!(receipt.applied());
}

#[tokio::test]
async fn past_due_is_entitled_only_within_a_configured_grace() {
    let fixture = Fixture::new();
    fixture
        .deliver_ok(&event(
            "evt_past_due",
            "customer.subscription.updated",
            NOW,
            legacy_subscription("past_due", NOW + DAY, org_metadata()),
        ))
        .await;
    let strict = EntitlementPolicy::new();
    let lenient = EntitlementPolicy::new().past_due_grace(Duration::from_secs(3 * DAY));
    assert!(!fixture.entitled("org_acme", &strict).await);
    assert!(fixture.entitled("org_acme", &lenient).await);
    fixture.clock.set(at(NOW + 3 * DAY));
    assert!(fixture.entitled("org_acme", &lenient).await);
    fixture.clock.set(at(NOW + 4 * DAY + 1));
    assert!(!fixture.entitled("org_acme", &lenient).await);
}

#[tokio::test]
async fn deleted_subscription_is_canceled_and_not_entitled() {
    let fixture = Fixture::new();
    fixture
        .deliver_ok(&legacy_event(
            "evt_created",
            "customer.subscription.created",
            NOW - 100,
            "active",
        ))
        .await;
    assert!(
        fixture
            .entitled("org_acme", &EntitlementPolicy::new())
            .await
    );
    let receipt = fixture
        .deliver_ok(&legacy_event(
            "evt_deleted",
            "customer.subscription.deleted",
            NOW,
            "canceled",
        ))
        .await;
    assert!(receipt.applied());
    assert_eq!(
        fixture.stored("org_acme").await[0].status,
        SubscriptionStatus::Canceled
    );
    assert!(
        !fixture
            .entitled("org_acme", &EntitlementPolicy::new())
            .await
    );
    let until_end = EntitlementPolicy::new().canceled_until_period_end();
    assert!(fixture.entitled("org_acme", &until_end).await);
    fixture.clock.set(at(NOW + 30 * DAY + 1));
    assert!(!fixture.entitled("org_acme", &until_end).await);
}

#[tokio::test]
async fn cancel_at_period_end_keeps_stripes_status_and_the_policy_decides() {
    let fixture = Fixture::new();
    let mut scheduled = legacy_subscription("active", NOW + 5 * DAY, org_metadata());
    scheduled["cancel_at_period_end"] = json!(true);
    scheduled["cancel_at"] = json!(NOW + 5 * DAY);
    fixture
        .deliver_ok(&event(
            "evt_scheduled",
            "customer.subscription.updated",
            NOW,
            scheduled,
        ))
        .await;
    assert_eq!(
        fixture.stored("org_acme").await[0].status,
        SubscriptionStatus::Active
    );
    let until_end = EntitlementPolicy::new().canceled_until_period_end();
    assert!(fixture.entitled("org_acme", &until_end).await);

    // At the period end Stripe cancels it and sends `deleted`.
    fixture.clock.set(at(NOW + 5 * DAY));
    let mut ended = legacy_subscription("canceled", NOW + 5 * DAY, org_metadata());
    ended["cancel_at_period_end"] = json!(true);
    ended["ended_at"] = json!(NOW + 5 * DAY);
    fixture
        .deliver_ok(&event(
            "evt_ended",
            "customer.subscription.deleted",
            NOW + 5 * DAY,
            ended,
        ))
        .await;
    assert!(
        !fixture
            .entitled("org_acme", &EntitlementPolicy::new())
            .await
    );
    fixture.clock.set(at(NOW + 5 * DAY + 1));
    assert!(!fixture.entitled("org_acme", &until_end).await);
}

#[tokio::test]
async fn paused_and_resumed_events_are_applied() {
    let fixture = Fixture::new();
    fixture
        .deliver_ok(&legacy_event(
            "evt_paused",
            "customer.subscription.paused",
            NOW,
            "paused",
        ))
        .await;
    assert!(
        !fixture
            .entitled("org_acme", &EntitlementPolicy::new())
            .await
    );
    fixture
        .deliver_ok(&legacy_event(
            "evt_resumed",
            "customer.subscription.resumed",
            NOW + 1,
            "active",
        ))
        .await;
    assert!(
        fixture
            .entitled("org_acme", &EntitlementPolicy::new())
            .await
    );
}

// ---------------------------------------------------- what is not applied

#[tokio::test]
async fn unrelated_event_type_is_acknowledged_and_changes_nothing() {
    let fixture = Fixture::new();
    let invoice = json!({
        "id": "in_1MtHbELkdIwHu7ixl4OzzPMv",
        "object": "invoice",
        "customer": "cus_NffrFeUfNV2Hib",
        "status": "paid",
        "subscription": "sub_1MowQVLkdIwHu7ixeRlqHVzs"
    });
    let receipt = fixture
        .deliver_ok(&event("evt_invoice", "invoice.paid", NOW, invoice))
        .await;
    assert!(receipt.ignored());
    assert!(!receipt.applied());
    assert_eq!(receipt.event_type, "invoice.paid");
    assert!(fixture.stored("org_acme").await.is_empty());
}

#[tokio::test]
async fn missing_organization_without_a_lookup_is_organization_unknown() {
    let fixture = Fixture::new();
    let error = fixture
        .deliver(&event(
            "evt_orphan",
            "customer.subscription.created",
            NOW,
            legacy_subscription("active", NOW + DAY, json!({})),
        ))
        .await
        .expect_err("no organization");
    assert_eq!(error.code(), "organization_unknown");
    assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let message = error.to_string();
    assert!(message.contains("cus_NffrFeUfNV2Hib"), "{message}");
    assert!(message.contains("metadata.organization_id"), "{message}");
}

#[tokio::test]
async fn missing_organization_is_asked_of_the_customer_lookup() {
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let fixture = Fixture::with(move |webhook| {
        webhook.customer_organizations(move |customer: String| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, StoreError>((customer == "cus_NffrFeUfNV2Hib").then(|| "org_known".into()))
            }
        })
    });
    fixture
        .deliver_ok(&event(
            "evt_lookup",
            "customer.subscription.created",
            NOW,
            legacy_subscription("active", NOW + DAY, json!({})),
        ))
        .await;
    assert_eq!(fixture.stored("org_known").await.len(), 1);
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // Metadata wins without asking.
    fixture
        .deliver_ok(&legacy_event(
            "evt_metadata",
            "customer.subscription.created",
            NOW,
            "active",
        ))
        .await;
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // A customer the lookup does not know.
    let mut stranger = legacy_subscription("active", NOW + DAY, json!({}));
    stranger["customer"] = json!({ "id": "cus_Stranger", "object": "customer" });
    let error = fixture
        .deliver(&event(
            "evt_stranger",
            "customer.subscription.created",
            NOW,
            stranger,
        ))
        .await
        .expect_err("unknown customer");
    assert_eq!(error.code(), "organization_unknown");
    assert!(error.to_string().contains("cus_Stranger"), "{error}");
}

#[tokio::test]
async fn metadata_key_is_configurable() {
    let fixture = Fixture::with(|webhook| webhook.metadata_key("tenant"));
    fixture
        .deliver_ok(&event(
            "evt_tenant",
            "customer.subscription.created",
            NOW,
            legacy_subscription("active", NOW + DAY, json!({ "tenant": "org_tenant" })),
        ))
        .await;
    assert_eq!(fixture.stored("org_tenant").await.len(), 1);
}

#[tokio::test]
async fn body_that_is_not_an_event_is_invalid_request() {
    let fixture = Fixture::new();
    let missing_status = {
        let mut subscription = legacy_subscription("active", NOW + DAY, org_metadata());
        subscription
            .as_object_mut()
            .expect("an object")
            .remove("status");
        event(
            "evt_no_status",
            "customer.subscription.updated",
            NOW,
            subscription,
        )
    };
    let no_items = {
        let mut subscription = legacy_subscription("active", NOW + DAY, org_metadata());
        subscription["items"]["data"] = json!([]);
        event(
            "evt_no_items",
            "customer.subscription.updated",
            NOW,
            subscription,
        )
    };
    let bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"[]".to_vec(),
        br#"{"id":"evt_1","type":"customer.subscription.updated"}"#.to_vec(),
        serde_json::to_vec(&legacy_subscription("active", NOW + DAY, org_metadata()))
            .expect("serializes"),
        serde_json::to_vec(&legacy_event(
            "evt_status",
            "customer.subscription.updated",
            NOW,
            "gold",
        ))
        .expect("serializes"),
        serde_json::to_vec(&missing_status).expect("serializes"),
        serde_json::to_vec(&no_items).expect("serializes"),
    ];
    for body in bodies {
        let error = fixture
            .webhook
            .handle(Some(&fixture.signed(&body)), &body)
            .await
            .expect_err("not a valid event");
        assert_eq!(
            error.code(),
            "invalid_request",
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }
    assert!(fixture.stored("org_acme").await.is_empty());
}

#[tokio::test]
async fn older_event_after_a_newer_one_is_not_applied() {
    let fixture = Fixture::new();
    fixture
        .deliver_ok(&legacy_event(
            "evt_canceled",
            "customer.subscription.deleted",
            NOW,
            "canceled",
        ))
        .await;
    // Stripe retries an earlier "active" event, re-signed now.
    let receipt = fixture
        .deliver_ok(&legacy_event(
            "evt_active_earlier",
            "customer.subscription.updated",
            NOW - 200,
            "active",
        ))
        .await;
    assert!(!receipt.applied());
    assert_eq!(
        receipt.change.as_ref().map(|change| change.outcome),
        Some(ApplyOutcome::Outdated)
    );
    assert_eq!(
        fixture.stored("org_acme").await[0].status,
        SubscriptionStatus::Canceled
    );
    assert!(
        !fixture
            .entitled("org_acme", &EntitlementPolicy::new())
            .await
    );
}

#[tokio::test]
async fn same_event_id_twice_is_applied_once() {
    let fixture = Fixture::new();
    let first = legacy_event("evt_twice", "customer.subscription.updated", NOW, "active");
    assert!(fixture.deliver_ok(&first).await.applied());
    fixture.clock.advance(Duration::from_secs(60));
    let receipt = fixture.deliver_ok(&first).await;
    assert!(!receipt.applied());
    assert_eq!(
        receipt.change.map(|change| change.outcome),
        Some(ApplyOutcome::DuplicateEvent)
    );
    assert_eq!(fixture.stored("org_acme").await.len(), 1);
}
