//! The subscription store behaviours.

use std::future::Future;
use std::time::Duration;

use super::{at, run, unique};
use crate::error::StoreErrorKind;
use crate::subscription::{Subscription, SubscriptionStatus, SubscriptionStore};

/// Every subscription store behaviour of the kit, each on a fresh store
/// from `make`. Panics (naming the behaviour) at the first one that fails.
pub async fn subscription_store_suite<S, Make, MakeFuture>(make: Make)
where
    S: SubscriptionStore,
    Make: Fn() -> MakeFuture,
    MakeFuture: Future<Output = S>,
{
    run(
        "unknown_organizations_have_no_subscriptions",
        &make,
        unknown_organizations_have_no_subscriptions,
    )
    .await;
    run(
        "every_status_and_optional_time_round_trips",
        &make,
        every_status_and_optional_time_round_trips,
    )
    .await;
    run(
        "organizations_hold_several_subscriptions",
        &make,
        organizations_hold_several_subscriptions,
    )
    .await;
    run(
        "upsert_replaces_by_organization_and_subscription",
        &make,
        upsert_replaces_by_organization_and_subscription,
    )
    .await;
}

fn subscription(organization_id: &str, subscription_id: &str) -> Subscription {
    Subscription {
        organization_id: organization_id.to_owned(),
        subscription_id: subscription_id.to_owned(),
        status: SubscriptionStatus::Active,
        plan: "pro".to_owned(),
        current_period_end: Some(at(30 * 24 * 3600)),
        trial_end: None,
    }
}

async fn upsert(store: &impl SubscriptionStore, subscription: &Subscription) {
    store
        .upsert(subscription)
        .await
        .unwrap_or_else(|error| panic!("upsert failed: {error} ({error:?})"));
}

async fn sorted(store: &impl SubscriptionStore, organization_id: &str) -> Vec<Subscription> {
    let mut read = store
        .subscriptions(organization_id)
        .await
        .unwrap_or_else(|error| panic!("subscriptions failed: {error} ({error:?})"));
    read.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
    read
}

/// An organization the store never saw has no subscriptions (not an error).
pub async fn unknown_organizations_have_no_subscriptions(store: impl SubscriptionStore) {
    assert!(
        sorted(&store, &unique("org")).await.is_empty(),
        "unknown_organizations_have_no_subscriptions"
    );
}

/// Each of the eight statuses, with and without `current_period_end` and
/// `trial_end` (to the millisecond), reads back as written.
pub async fn every_status_and_optional_time_round_trips(store: impl SubscriptionStore) {
    let organization = unique("org");
    let mut written = Vec::new();
    for (n, status) in SubscriptionStatus::ALL.into_iter().enumerate() {
        let mut with_times = subscription(&organization, &format!("sub_{n}_times"));
        with_times.status = status;
        with_times.plan = format!("plan \"{n}\" ünïcode");
        with_times.current_period_end = Some(at(1000) + Duration::from_millis(n as u64 + 1));
        with_times.trial_end = Some(at(500) + Duration::from_millis(7));
        let mut without = subscription(&organization, &format!("sub_{n}_none"));
        without.status = status;
        without.current_period_end = None;
        written.extend([with_times, without]);
    }
    for subscription in &written {
        upsert(&store, subscription).await;
    }
    written.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
    assert_eq!(
        sorted(&store, &organization).await,
        written,
        "every_status_and_optional_time_round_trips"
    );
}

/// One organization holds several subscriptions; others are not mixed in.
pub async fn organizations_hold_several_subscriptions(store: impl SubscriptionStore) {
    let (first, second) = (unique("org"), unique("org"));
    let old = subscription(&first, "sub_old");
    let new = subscription(&first, "sub_new");
    // The same subscription id in another organization is another subscription.
    let elsewhere = subscription(&second, "sub_old");
    for subscription in [&old, &new, &elsewhere] {
        upsert(&store, subscription).await;
    }
    assert_eq!(
        sorted(&store, &first).await,
        vec![new, old],
        "organizations_hold_several_subscriptions"
    );
    assert_eq!(
        sorted(&store, &second).await,
        vec![elsewhere],
        "organizations_hold_several_subscriptions: another organization"
    );
}

/// An upsert with the same (organization, subscription id) replaces every
/// field of the stored subscription.
pub async fn upsert_replaces_by_organization_and_subscription(store: impl SubscriptionStore) {
    let organization = unique("org");
    let first = subscription(&organization, "sub_1");
    upsert(&store, &first).await;
    let replaced = Subscription {
        status: SubscriptionStatus::Canceled,
        plan: "enterprise".to_owned(),
        current_period_end: None,
        trial_end: Some(at(42)),
        ..first
    };
    upsert(&store, &replaced).await;
    assert_eq!(
        sorted(&store, &organization).await,
        vec![replaced],
        "upsert_replaces_by_organization_and_subscription"
    );
}

/// A malformed subscription read back (an unknown status, a bad time…,
/// written by `corrupt`, which only your backend knows how to do) is a
/// [`StoreError`](crate::StoreError) of kind
/// [`Serialization`](StoreErrorKind::Serialization), never a panic and
/// never a guessed status.
///
/// `corrupt` receives a subscription just stored and must damage it.
pub async fn malformed_subscription_is_an_error<S, Corrupt, CorruptFuture>(
    store: S,
    corrupt: Corrupt,
) where
    S: SubscriptionStore,
    Corrupt: FnOnce(Subscription) -> CorruptFuture,
    CorruptFuture: Future<Output = ()>,
{
    let written = subscription(&unique("org"), "sub_damaged");
    upsert(&store, &written).await;
    corrupt(written.clone()).await;
    match store.subscriptions(&written.organization_id).await {
        Err(error) => assert_eq!(
            error.kind(),
            StoreErrorKind::Serialization,
            "malformed_subscription_is_an_error"
        ),
        Ok(read) => {
            panic!("malformed_subscription_is_an_error: read a damaged subscription as {read:?}")
        }
    }
}
