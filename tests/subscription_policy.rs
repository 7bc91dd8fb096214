//! Every rule of `EntitlementPolicy`, decided at a fixed instant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tower_saas_guard::subscription::{
    EntitlementPolicy, EntitlementReason, Subscription, SubscriptionStatus, UnknownStatus,
};

const DAY: Duration = Duration::from_secs(86_400);

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn subscription(
    id: &str,
    status: SubscriptionStatus,
    plan: &str,
    period_end: Option<SystemTime>,
) -> Subscription {
    Subscription {
        organization_id: "org_1".into(),
        subscription_id: id.into(),
        status,
        plan: plan.into(),
        current_period_end: period_end,
        trial_end: None,
    }
}

fn decide(
    policy: &EntitlementPolicy,
    subscriptions: Vec<Subscription>,
) -> (bool, EntitlementReason, Option<String>) {
    let decision = policy.decide("org_1", subscriptions, now());
    (
        decision.is_entitled(),
        decision.reason(),
        decision.subscription().map(|s| s.subscription_id.clone()),
    )
}

use SubscriptionStatus::*;

#[test]
fn an_organization_without_subscriptions_is_not_entitled() {
    let decision = EntitlementPolicy::new().decide("org_1", vec![], now());
    assert!(!decision.is_entitled());
    assert_eq!(decision.reason(), EntitlementReason::NoSubscription);
    assert_eq!(decision.plan(), None);
    assert_eq!(decision.status(), None);
    assert_eq!(decision.organization_id(), "org_1");
}

#[test]
fn active_and_trialing_entitle_by_default() {
    let policy = EntitlementPolicy::new();
    let future = Some(now() + DAY);
    assert_eq!(
        decide(&policy, vec![subscription("s", Active, "pro", future)]).1,
        EntitlementReason::Active
    );
    assert_eq!(
        decide(&policy, vec![subscription("s", Active, "pro", None)]).1,
        EntitlementReason::Active
    );
    assert_eq!(
        decide(&policy, vec![subscription("s", Trialing, "pro", future)]).1,
        EntitlementReason::Trialing
    );
    for status in [
        Incomplete,
        IncompleteExpired,
        PastDue,
        Canceled,
        Unpaid,
        Paused,
    ] {
        let (entitled, reason, _) = decide(&policy, vec![subscription("s", status, "pro", future)]);
        assert!(!entitled, "{status}");
        assert_eq!(reason, EntitlementReason::StatusNotEntitling, "{status}");
    }
}

#[test]
fn a_trial_ends_at_the_earlier_of_its_trial_end_and_period_end() {
    let policy = EntitlementPolicy::new();
    let trial = |period_end, trial_end| Subscription {
        trial_end,
        ..subscription("s", Trialing, "pro", period_end)
    };
    let decision = policy.decide(
        "org_1",
        vec![trial(Some(now() + 9 * DAY), Some(now() + DAY))],
        now(),
    );
    assert!(decision.is_entitled());
    assert_eq!(decision.valid_until(), Some(now() + DAY));
    for (period_end, trial_end) in [(None, Some(now())), (Some(now() + DAY), Some(now() - DAY))] {
        let (entitled, reason, _) = decide(&policy, vec![trial(period_end, trial_end)]);
        assert!(!entitled);
        assert_eq!(reason, EntitlementReason::PeriodEnded);
    }
    // `trial_end` means nothing once the subscription is active.
    let active = Subscription {
        trial_end: Some(now() - DAY),
        ..subscription("s", Active, "pro", None)
    };
    assert!(decide(&policy, vec![active]).0);
}

#[test]
fn an_active_subscription_whose_period_ended_does_not_entitle() {
    let policy = EntitlementPolicy::new();
    for end in [now(), now() - Duration::from_secs(1)] {
        let (entitled, reason, _) =
            decide(&policy, vec![subscription("s", Active, "pro", Some(end))]);
        assert!(!entitled);
        assert_eq!(reason, EntitlementReason::PeriodEnded);
    }
    let (entitled, _, _) = decide(
        &policy,
        vec![subscription("s", Trialing, "pro", Some(now() - DAY))],
    );
    assert!(!entitled);
}

#[test]
fn two_subscriptions_in_either_order_one_canceled_one_active_entitle() {
    let policy = EntitlementPolicy::new();
    let old = subscription("sub_old", Canceled, "pro", Some(now() - DAY));
    let new = subscription("sub_new", Active, "pro", Some(now() + 30 * DAY));
    for subscriptions in [
        vec![old.clone(), new.clone()],
        vec![new.clone(), old.clone()],
    ] {
        let decision = policy.decide("org_1", subscriptions, now());
        assert!(decision.is_entitled());
        assert_eq!(decision.status(), Some(Active));
        assert_eq!(
            decision.subscription().map(|s| s.subscription_id.as_str()),
            Some("sub_new")
        );
        assert_eq!(decision.valid_until(), Some(now() + 30 * DAY));
    }
}

#[test]
fn the_deciding_subscription_does_not_depend_on_store_order() {
    let policy = EntitlementPolicy::new();
    let subscriptions = vec![
        subscription("sub_a", Active, "basic", Some(now() + DAY)),
        subscription("sub_b", Trialing, "pro", Some(now() + 2 * DAY)),
        subscription("sub_c", Active, "team", Some(now() + 2 * DAY)),
        subscription("sub_d", Unpaid, "pro", Some(now() + 9 * DAY)),
    ];
    let mut seen = Vec::new();
    for rotation in 0..subscriptions.len() {
        let mut order = subscriptions.clone();
        order.rotate_left(rotation);
        let mut reversed = order.clone();
        reversed.reverse();
        for order in [order, reversed] {
            seen.push(decide(&policy, order));
        }
    }
    // Latest end wins; the tie between sub_b and sub_c goes to the greater id.
    assert!(
        seen.iter()
            .all(|decision| decision == &(true, EntitlementReason::Active, Some("sub_c".into()))),
        "{seen:?}"
    );
}

#[test]
fn not_entitled_reports_the_subscription_with_the_latest_period_end() {
    let policy = EntitlementPolicy::new();
    let subscriptions = vec![
        subscription("sub_1", Canceled, "pro", Some(now() - 10 * DAY)),
        subscription("sub_2", Unpaid, "team", Some(now() - DAY)),
        subscription("sub_0", Canceled, "basic", Some(now() - DAY)),
    ];
    for order in [
        subscriptions.clone(),
        subscriptions.iter().cloned().rev().collect(),
    ] {
        let decision = policy.decide("org_1", order, now());
        assert!(!decision.is_entitled());
        // sub_0 and sub_2 end together: the greater id wins the tie.
        assert_eq!(decision.plan(), Some("team"));
        assert_eq!(decision.status(), Some(Unpaid));
        assert_eq!(decision.reason(), EntitlementReason::StatusNotEntitling);
    }
    // One without a period end counts as the earliest here.
    let mut with_open_end = subscriptions;
    with_open_end.push(subscription("sub_9", Incomplete, "pro", None));
    for order in [
        with_open_end.clone(),
        with_open_end.into_iter().rev().collect(),
    ] {
        let decision = policy.decide("org_1", order, now());
        assert_eq!(
            decision.subscription().map(|s| s.subscription_id.as_str()),
            Some("sub_2")
        );
    }
}

#[test]
fn past_due_entitles_only_within_a_configured_grace() {
    let end = Some(now() - DAY);
    let past_due = vec![subscription("s", PastDue, "pro", end)];
    assert!(!decide(&EntitlementPolicy::new(), past_due.clone()).0);

    let generous = EntitlementPolicy::new().past_due_grace(3 * DAY);
    let decision = generous.decide("org_1", past_due.clone(), now());
    assert!(decision.is_entitled());
    assert_eq!(decision.reason(), EntitlementReason::PastDueGrace);
    assert_eq!(decision.valid_until(), Some(now() + 2 * DAY));

    let short = EntitlementPolicy::new().past_due_grace(DAY / 2);
    let (entitled, reason, _) = decide(&short, past_due);
    assert!(!entitled);
    assert_eq!(reason, EntitlementReason::PeriodEnded);

    // A grace too long to add to the end never ends (and never panics).
    let forever = EntitlementPolicy::new().past_due_grace(Duration::MAX);
    let decision = forever.decide("org_1", vec![subscription("s", PastDue, "pro", end)], now());
    assert!(decision.is_entitled());
    assert_eq!(decision.valid_until(), None);

    // Without a known period end there is nothing to count the grace from.
    assert!(!decide(&generous, vec![subscription("s", PastDue, "pro", None)]).0);
}

#[test]
fn canceled_can_entitle_until_the_period_end() {
    let policy = EntitlementPolicy::new().canceled_until_period_end();
    let decision = policy.decide(
        "org_1",
        vec![subscription("s", Canceled, "pro", Some(now() + DAY))],
        now(),
    );
    assert!(decision.is_entitled());
    assert_eq!(decision.reason(), EntitlementReason::CanceledUntilPeriodEnd);
    assert_eq!(
        decide(
            &policy,
            vec![subscription("s", Canceled, "pro", Some(now()))]
        )
        .1,
        EntitlementReason::PeriodEnded
    );
    assert!(!decide(&policy, vec![subscription("s", Canceled, "pro", None)]).0);
    assert!(
        !decide(
            &EntitlementPolicy::new(),
            vec![subscription("s", Canceled, "pro", Some(now() + DAY))]
        )
        .0
    );
}

#[test]
fn required_plans_only_entitle_those_plans() {
    let policy = EntitlementPolicy::new().require_plans(["pro", "enterprise"]);
    assert!(decide(&policy, vec![subscription("s", Active, "pro", None)]).0);
    let (entitled, reason, _) = decide(&policy, vec![subscription("s", Active, "basic", None)]);
    assert!(!entitled);
    assert_eq!(reason, EntitlementReason::PlanNotAllowed);
    let mixed = vec![
        subscription("a", Active, "basic", None),
        subscription("b", Trialing, "enterprise", None),
    ];
    assert_eq!(
        decide(&policy, mixed),
        (true, EntitlementReason::Trialing, Some("b".into()))
    );
}

#[test]
fn feature_requirements_follow_the_plan_features_map() {
    let plans = EntitlementPolicy::new()
        .plan_features("basic", ["widget"])
        .plan_features("pro", ["widget", "ai_reply"]);
    let ai = plans.clone().require_feature("ai_reply");
    assert!(decide(&ai, vec![subscription("s", Active, "pro", None)]).0);
    let (entitled, reason, _) = decide(&ai, vec![subscription("s", Active, "basic", None)]);
    assert!(!entitled);
    assert_eq!(reason, EntitlementReason::FeatureMissing);
    assert!(!decide(&ai, vec![subscription("s", Active, "unknown_plan", None)]).0);

    // Without a requirement, the decision still tells handlers the features.
    let basic = plans.decide(
        "org_1",
        vec![subscription("s", Active, "basic", None)],
        now(),
    );
    assert!(basic.is_entitled());
    assert!(basic.has_feature("widget"));
    assert!(!basic.has_feature("ai_reply"));
    let lapsed = plans.decide(
        "org_1",
        vec![subscription("s", Canceled, "pro", None)],
        now(),
    );
    assert!(
        !lapsed.has_feature("ai_reply"),
        "features need an entitlement"
    );
}

#[test]
fn statuses_parse_from_stripe_names_and_unknown_ones_are_errors() {
    for status in SubscriptionStatus::ALL {
        assert_eq!(status.as_str().parse::<SubscriptionStatus>(), Ok(status));
        let json = serde_json::to_string(&status).expect("serializes");
        assert_eq!(json, format!("\"{}\"", status.as_str()));
        assert_eq!(
            serde_json::from_str::<SubscriptionStatus>(&json).expect("parses"),
            status
        );
    }
    for unknown in ["", "ACTIVE", "Active", "activ", "gold", "past-due"] {
        assert_eq!(
            unknown.parse::<SubscriptionStatus>(),
            Err(UnknownStatus(unknown.into()))
        );
        assert!(serde_json::from_str::<SubscriptionStatus>(&format!("\"{unknown}\"")).is_err());
    }
}
