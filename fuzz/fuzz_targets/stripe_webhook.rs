//! `StripeWebhook::handle` with the input as the event body, signed by the
//! target (two active secrets) so that the event decoder is reached; the
//! application maps customer `cus_known` to `org_known`.
//!
//! A signed body is applied (a fresh store), acknowledged as an ignored
//! type, or refused as `invalid_request` (400) or `organization_unknown`
//! (422), nothing else; an applied event is a `customer.subscription.*`
//! one whose ids are trimmed, non-empty and at most 128 characters, and
//! Stripe's retry of it changes nothing.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use tower_saas_guard::billing::stripe::{StripeVerifier, StripeWebhook};
use tower_saas_guard::subscription::{EntitlementPolicy, Entitlements, MemorySubscriptionStore};
use tower_saas_guard::{ManualClock, StoreError};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

/// The event types the webhook acts on (the module docs' list).
const SUBSCRIPTION_EVENTS: [&str; 6] = [
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
];

fn well_formed_id(id: &str) -> bool {
    id == id.trim() && !id.is_empty() && id.chars().count() <= 128
}

fuzz_target!(|body: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let entitlements = Entitlements::builder(MemorySubscriptionStore::new())
        .clock(ManualClock::new(now))
        .build()
        .expect("valid settings");
    let verifier = StripeVerifier::try_new(["whsec_fuzz", "whsec_old"]).expect("two secrets");
    let webhook = StripeWebhook::new(verifier.clone(), entitlements.clone())
        .customer_organizations(|customer: String| async move {
            Ok::<_, StoreError>((customer == "cus_known").then(|| "org_known".to_owned()))
        });
    let signature = HeaderValue::from_str(&verifier.sign(body, now)).expect("a header value");

    runtime().block_on(async {
        match webhook.handle(Some(&signature), body).await {
            Err(error) => {
                let status = error.status();
                match error.code() {
                    "invalid_request" => assert_eq!(status, 400),
                    "organization_unknown" => assert_eq!(status, 422),
                    other => panic!("a signed event refused as {other}: {error}"),
                }
            }
            Ok(receipt) if receipt.ignored() => {
                assert!(!SUBSCRIPTION_EVENTS.contains(&receipt.event_type.as_str()));
                assert!(!receipt.applied());
            }
            Ok(receipt) => {
                assert!(SUBSCRIPTION_EVENTS.contains(&receipt.event_type.as_str()));
                assert!(
                    receipt.applied(),
                    "the first event to a fresh store applies"
                );
                let change = receipt.change.as_ref().expect("not ignored");
                let subscription = &change.subscription;
                for id in [
                    &subscription.organization_id,
                    &subscription.subscription_id,
                    &subscription.plan,
                ] {
                    assert!(well_formed_id(id), "accepted id {id:?}");
                }
                let again = webhook
                    .handle(Some(&signature), body)
                    .await
                    .expect("an event accepted once is accepted again");
                assert!(
                    !again.applied(),
                    "Stripe's retry of an event changes nothing"
                );
                let policy = EntitlementPolicy::new()
                    .past_due_grace(Duration::from_secs(u64::MAX))
                    .canceled_until_period_end();
                let decision = entitlements
                    .entitlement(&subscription.organization_id, &policy)
                    .await
                    .expect("the memory store answers");
                if decision.is_entitled() {
                    assert_eq!(decision.plan(), Some(subscription.plan.as_str()));
                }
            }
        }
    });
});
