//! The subscription store behaviours.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{at, run, unique};
use crate::error::StoreErrorKind;
use crate::subscription::{
    ApplyOutcome, EntitlementPolicy, Entitlements, Subscription, SubscriptionChange,
    SubscriptionStatus, SubscriptionStore,
};

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
    run(
        "an_older_change_after_a_newer_one_is_not_applied",
        &make,
        an_older_change_after_a_newer_one_is_not_applied,
    )
    .await;
    run(
        "a_duplicate_event_id_is_not_applied_even_with_another_body",
        &make,
        a_duplicate_event_id_is_not_applied_even_with_another_body,
    )
    .await;
    run(
        "the_same_change_twice_is_applied_once",
        &make,
        the_same_change_twice_is_applied_once,
    )
    .await;
    run(
        "event_ids_are_remembered_until_purged",
        &make,
        event_ids_are_remembered_until_purged,
    )
    .await;
    run(
        "shuffled_changes_from_two_instances_end_in_the_newest_state",
        &make,
        shuffled_changes_from_two_instances_end_in_the_newest_state,
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

async fn apply(store: &impl SubscriptionStore, change: &SubscriptionChange) -> ApplyOutcome {
    store
        .apply(change)
        .await
        .unwrap_or_else(|error| panic!("apply failed: {error} ({error:?})"))
}

fn with_status(mut subscription: Subscription, status: SubscriptionStatus) -> Subscription {
    subscription.status = status;
    subscription
}

/// A change produced later than the last one applied to the same
/// (organization, subscription) is applied, an older one is not
/// (`Outdated`, nothing changes), and one produced at the same millisecond
/// is applied (the later delivery wins a tie). Another subscription of the
/// same organization has its own order.
pub async fn an_older_change_after_a_newer_one_is_not_applied(store: impl SubscriptionStore) {
    let name = "an_older_change_after_a_newer_one_is_not_applied";
    let active = subscription(&unique("org"), "sub_1");
    let canceled = with_status(active.clone(), SubscriptionStatus::Canceled);
    let newer = SubscriptionChange::new(canceled.clone(), at(100));
    assert_eq!(apply(&store, &newer).await, ApplyOutcome::Applied, "{name}");
    let older = SubscriptionChange::new(active.clone(), at(100) - Duration::from_millis(1));
    assert_eq!(
        apply(&store, &older).await,
        ApplyOutcome::Outdated,
        "{name}"
    );
    assert_eq!(
        sorted(&store, &active.organization_id).await,
        vec![canceled.clone()],
        "{name}: an older change changed the subscription"
    );

    let past_due = with_status(active.clone(), SubscriptionStatus::PastDue);
    let tie = SubscriptionChange::new(past_due.clone(), at(100));
    assert_eq!(
        apply(&store, &tie).await,
        ApplyOutcome::Applied,
        "{name}: a tie"
    );
    let mut other = active.clone();
    other.subscription_id = "sub_2".to_owned();
    let other_change = SubscriptionChange::new(other.clone(), at(0));
    assert_eq!(
        apply(&store, &other_change).await,
        ApplyOutcome::Applied,
        "{name}: another subscription is ordered on its own"
    );
    assert_eq!(
        sorted(&store, &active.organization_id).await,
        vec![past_due, other],
        "{name}"
    );
}

/// A change whose event id was applied before is not applied
/// (`DuplicateEvent`), even with another body, a later time, or another
/// organization (event ids are unique at the provider).
pub async fn a_duplicate_event_id_is_not_applied_even_with_another_body(
    store: impl SubscriptionStore,
) {
    let name = "a_duplicate_event_id_is_not_applied_even_with_another_body";
    let event_id = unique("evt");
    let active = subscription(&unique("org"), "sub_1");
    let first = SubscriptionChange::new(active.clone(), at(0)).with_event_id(&event_id);
    assert_eq!(apply(&store, &first).await, ApplyOutcome::Applied, "{name}");
    let canceled = with_status(active.clone(), SubscriptionStatus::Canceled);
    let replayed = SubscriptionChange::new(canceled, at(100)).with_event_id(&event_id);
    assert_eq!(
        apply(&store, &replayed).await,
        ApplyOutcome::DuplicateEvent,
        "{name}"
    );
    let elsewhere = subscription(&unique("org"), "sub_1");
    let reused = SubscriptionChange::new(elsewhere.clone(), at(100)).with_event_id(&event_id);
    assert_eq!(
        apply(&store, &reused).await,
        ApplyOutcome::DuplicateEvent,
        "{name}: event ids are keyed by the id alone"
    );
    assert_eq!(
        sorted(&store, &active.organization_id).await,
        vec![active],
        "{name}"
    );
    assert_eq!(
        sorted(&store, &elsewhere.organization_id).await,
        Vec::new(),
        "{name}: a duplicate stored a subscription"
    );
    let fresh = SubscriptionChange::new(
        with_status(
            subscription(&first.subscription.organization_id, "sub_1"),
            SubscriptionStatus::Unpaid,
        ),
        at(100),
    )
    .with_event_id(unique("evt"));
    assert_eq!(
        apply(&store, &fresh).await,
        ApplyOutcome::Applied,
        "{name}: a duplicate must not block a later change with a new id"
    );
}

/// The same change delivered twice is applied once: the second delivery
/// answers `DuplicateEvent`.
pub async fn the_same_change_twice_is_applied_once(store: impl SubscriptionStore) {
    let name = "the_same_change_twice_is_applied_once";
    let change = SubscriptionChange::new(subscription(&unique("org"), "sub_1"), at(10))
        .with_event_id(unique("evt"));
    assert_eq!(
        apply(&store, &change).await,
        ApplyOutcome::Applied,
        "{name}"
    );
    assert_eq!(
        apply(&store, &change).await,
        ApplyOutcome::DuplicateEvent,
        "{name}"
    );
    assert_eq!(
        sorted(&store, &change.subscription.organization_id).await,
        vec![change.subscription.clone()],
        "{name}"
    );
}

/// Applied event ids are remembered until `purge_event_ids` is given a
/// cut-off after they were applied; then the same id applies again (if it
/// is not older).
pub async fn event_ids_are_remembered_until_purged(store: impl SubscriptionStore) {
    let name = "event_ids_are_remembered_until_purged";
    let change = SubscriptionChange::new(subscription(&unique("org"), "sub_1"), at(10))
        .with_event_id(unique("evt"));
    assert_eq!(
        apply(&store, &change).await,
        ApplyOutcome::Applied,
        "{name}"
    );
    let hour = Duration::from_secs(3600);
    store
        .purge_event_ids(SystemTime::now() - hour)
        .await
        .unwrap_or_else(|error| panic!("{name}: purge failed: {error} ({error:?})"));
    assert_eq!(
        apply(&store, &change).await,
        ApplyOutcome::DuplicateEvent,
        "{name}: an id applied after the cut-off was purged"
    );
    let purged = store
        .purge_event_ids(SystemTime::now() + hour)
        .await
        .unwrap_or_else(|error| panic!("{name}: purge failed: {error} ({error:?})"));
    assert!(purged >= 1, "{name}: purged {purged} ids");
    assert_eq!(
        apply(&store, &change).await,
        ApplyOutcome::Applied,
        "{name}: a purged id is forgotten"
    );
}

/// A random permutation of `0..count`.
fn shuffled(count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    for i in (1..count).rev() {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("os randomness");
        let j = usize::try_from(u64::from_le_bytes(bytes) % (i as u64 + 1)).expect("small");
        order.swap(i, j);
    }
    order
}

/// Two instances (two [`Entitlements`] on one store) each receive every
/// change of one subscription, shuffled, and apply them concurrently: each
/// event id is applied at most once, the newest exactly once, and both
/// instances end up deciding on the newest state.
pub async fn shuffled_changes_from_two_instances_end_in_the_newest_state(
    store: impl SubscriptionStore,
) {
    const CHANGES: usize = 24;
    let name = "shuffled_changes_from_two_instances_end_in_the_newest_state";
    let store = Arc::new(store);
    let first = Entitlements::new(Arc::clone(&store));
    let second = Entitlements::new(Arc::clone(&store));
    let organization = unique("org");
    let statuses = [
        SubscriptionStatus::Canceled,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Unpaid,
        SubscriptionStatus::Active,
    ];
    let changes: Arc<Vec<SubscriptionChange>> = Arc::new(
        (0..CHANGES)
            .map(|index| {
                let mut changed = with_status(
                    subscription(&organization, "sub_1"),
                    statuses[index % statuses.len()],
                );
                changed.plan = format!("plan_{index}");
                SubscriptionChange::new(changed, at(index as u64))
                    .with_event_id(format!("{organization}_evt_{index}"))
            })
            .collect(),
    );
    let newest = changes[CHANGES - 1].subscription.clone();
    assert_eq!(newest.status, SubscriptionStatus::Active);

    let deliver = |instance: Entitlements| {
        let changes = Arc::clone(&changes);
        let order = shuffled(CHANGES);
        tokio::spawn(async move {
            let mut outcomes = vec![ApplyOutcome::Outdated; CHANGES];
            for index in order {
                outcomes[index] = instance
                    .apply(&changes[index])
                    .await
                    .unwrap_or_else(|error| panic!("apply failed: {error} ({error:?})"));
            }
            outcomes
        })
    };
    let (one, two) = (deliver(first.clone()), deliver(second.clone()));
    let (one, two) = (
        one.await.expect("first instance"),
        two.await.expect("second instance"),
    );
    for index in 0..CHANGES {
        let applied = usize::from(one[index].is_applied()) + usize::from(two[index].is_applied());
        assert!(
            applied <= 1,
            "{name}: change {index} applied {applied} times"
        );
    }
    assert!(
        one[CHANGES - 1].is_applied() != two[CHANGES - 1].is_applied(),
        "{name}: the newest change must be applied exactly once ({:?}, {:?})",
        one[CHANGES - 1],
        two[CHANGES - 1]
    );
    assert_eq!(
        sorted(store.as_ref(), &organization).await,
        vec![newest],
        "{name}: the store does not hold the newest state"
    );
    let policy = EntitlementPolicy::new();
    for instance in [&first, &second] {
        let decided = instance
            .entitlement(&organization, &policy)
            .await
            .unwrap_or_else(|error| panic!("{name}: decide failed: {error} ({error:?})"));
        assert!(
            decided.is_entitled(),
            "{name}: an instance decided on an older state"
        );
    }
}

/// The last applied event time and the applied event ids outlive the store
/// value: a store opened anew on the same data (`reopen`: for example a new
/// pool on the same database) still refuses an older change and a
/// duplicate id.
pub async fn applied_event_times_survive_a_new_store<S, Reopen, ReopenFuture>(
    store: S,
    reopen: Reopen,
) where
    S: SubscriptionStore,
    Reopen: FnOnce() -> ReopenFuture,
    ReopenFuture: Future<Output = S>,
{
    let name = "applied_event_times_survive_a_new_store";
    let canceled = with_status(
        subscription(&unique("org"), "sub_1"),
        SubscriptionStatus::Canceled,
    );
    let newer = SubscriptionChange::new(canceled.clone(), at(100)).with_event_id(unique("evt"));
    assert_eq!(apply(&store, &newer).await, ApplyOutcome::Applied, "{name}");
    drop(store);
    let reopened = reopen().await;
    let older = SubscriptionChange::new(
        with_status(canceled.clone(), SubscriptionStatus::Active),
        at(50),
    );
    assert_eq!(
        apply(&reopened, &older).await,
        ApplyOutcome::Outdated,
        "{name}"
    );
    assert_eq!(
        apply(&reopened, &newer).await,
        ApplyOutcome::DuplicateEvent,
        "{name}"
    );
    assert_eq!(
        sorted(&reopened, &canceled.organization_id).await,
        vec![canceled],
        "{name}"
    );
}
