//! `BillingWebhook::handle` with the input as the body, signed by the
//! target so that the payload decoder is reached.
//!
//! A signed body is either applied (a fresh store: `applied`), or refused
//! as `invalid_request` (400), nothing else; an applied one names ids that
//! are trimmed, non-empty and at most 128 characters, a repeated event id
//! changes nothing, and deciding the organization's entitlement afterwards
//! never panics whatever timestamps it carried.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use tower_saas_guard::billing::{BillingWebhook, SubscriptionEvent, WebhookVerifier};
use tower_saas_guard::subscription::{EntitlementPolicy, Entitlements, MemorySubscriptionStore};
use tower_saas_guard::ManualClock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

fn well_formed_id(id: &str) -> bool {
    id == id.trim() && !id.is_empty() && id.chars().count() <= 128
}

fuzz_target!(|body: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = ManualClock::new(now);
    let entitlements = Entitlements::builder(MemorySubscriptionStore::new())
        .clock(clock)
        .build()
        .expect("valid settings");
    let verifier = WebhookVerifier::new("whsec_fuzz");
    let webhook = BillingWebhook::new(verifier.clone(), entitlements.clone());
    let signature = HeaderValue::from_str(&verifier.sign(body, now)).expect("a header value");

    runtime().block_on(async {
        match webhook.handle(Some(&signature), body).await {
            Err(error) => {
                assert_eq!(error.code(), "invalid_request", "{error}");
                assert_eq!(error.status(), 400);
            }
            Ok(receipt) => {
                assert!(
                    receipt.applied(),
                    "the first change to a fresh store applies"
                );
                let subscription = &receipt.subscription;
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
                    .expect("a body accepted once is accepted again");
                assert_eq!(again.subscription, receipt.subscription);
                let event = SubscriptionEvent::from_json(body).expect("a handled body parses");
                // The same `t` is not older: only an event id makes it a repeat.
                assert_eq!(again.applied(), event.event_id.is_none());
                let policy = EntitlementPolicy::new()
                    .past_due_grace(Duration::from_secs(u64::MAX))
                    .canceled_until_period_end();
                let decision = entitlements
                    .entitlement(&subscription.organization_id, &policy)
                    .await
                    .expect("the memory store answers");
                assert_eq!(decision.organization_id(), subscription.organization_id);
                if decision.is_entitled() {
                    assert_eq!(decision.plan(), Some(subscription.plan.as_str()));
                }
            }
        }
    });
});
