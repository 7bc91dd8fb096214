//! Who is entitled: [`EntitlementPolicy`] and its decision, [`Entitlement`].

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::model::{Subscription, SubscriptionStatus};

/// The subscriptions of one organization, as loaded (and cached) together.
#[derive(Debug)]
pub(crate) struct OrganizationSubscriptions {
    pub(crate) organization_id: Arc<str>,
    pub(crate) subscriptions: Vec<Subscription>,
    /// Re-read from the store from this instant on (on the clock).
    pub(crate) fresh_until: SystemTime,
    /// Usable after a failed re-read until this instant (serve-stale).
    pub(crate) stale_until: SystemTime,
    /// Set once no invalidation raced the insert; until then readers treat
    /// the entry as a miss.
    pub(crate) confirmed: std::sync::atomic::AtomicBool,
}

impl crate::cache::generations::Confirmed for OrganizationSubscriptions {
    fn confirmed(&self) -> &std::sync::atomic::AtomicBool {
        &self.confirmed
    }
}

impl OrganizationSubscriptions {
    /// Whether a cached copy may answer at `now` without a store read.
    #[inline]
    pub(crate) fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.fresh_until && self.confirmed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Subscriptions that were not loaded through the cache.
    pub(crate) fn uncached(organization_id: Arc<str>, subscriptions: Vec<Subscription>) -> Self {
        Self {
            organization_id,
            subscriptions,
            fresh_until: SystemTime::UNIX_EPOCH,
            stale_until: SystemTime::UNIX_EPOCH,
            confirmed: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Orders entitlement ends, an open (unknown) end lasting longest.
fn by_end(a: Option<SystemTime>, b: Option<SystemTime>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => a.cmp(&b),
    }
}

/// Why an [`Entitlement`] came out the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntitlementReason {
    /// Entitled: an `active` subscription.
    Active,
    /// Entitled: a `trialing` subscription.
    Trialing,
    /// Entitled: `past_due`, within the configured grace period.
    PastDueGrace,
    /// Entitled: `canceled`, until the end of the paid period.
    CanceledUntilPeriodEnd,
    /// Entitled: the store failed and the layer is configured to fail open.
    FailOpen,
    /// Not entitled: the organization has no subscription.
    NoSubscription,
    /// Not entitled: the subscription's paid period (or grace) has ended.
    PeriodEnded,
    /// Not entitled: the status does not entitle under this policy.
    StatusNotEntitling,
    /// Not entitled: the plan is not one the policy requires.
    PlanNotAllowed,
    /// Not entitled: the plan lacks a feature the policy requires.
    FeatureMissing,
    /// Not entitled: the store failed (a soft gate degrades instead of
    /// rejecting).
    StoreUnavailable,
}

impl EntitlementReason {
    /// A stable snake_case name (`past_due_grace`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Trialing => "trialing",
            Self::PastDueGrace => "past_due_grace",
            Self::CanceledUntilPeriodEnd => "canceled_until_period_end",
            Self::FailOpen => "fail_open",
            Self::NoSubscription => "no_subscription",
            Self::PeriodEnded => "period_ended",
            Self::StatusNotEntitling => "status_not_entitling",
            Self::PlanNotAllowed => "plan_not_allowed",
            Self::FeatureMissing => "feature_missing",
            Self::StoreUnavailable => "store_unavailable",
        }
    }
}

impl fmt::Display for EntitlementReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Default, Clone)]
struct PolicyRules {
    past_due_grace: Option<Duration>,
    canceled_until_period_end: bool,
    required_plans: Option<HashSet<String>>,
    plan_features: HashMap<String, HashSet<String>>,
    required_features: Vec<String>,
}

impl PolicyRules {
    fn plan_has(&self, plan: &str, feature: &str) -> bool {
        self.plan_features
            .get(plan)
            .is_some_and(|features| features.contains(feature))
    }
}

/// Decides whether an organization's subscriptions entitle it.
///
/// An organization is entitled when **any** of its subscriptions entitles
/// it, whatever the order the store returns them in. By default `active`
/// and `trialing` entitle while `current_period_end` (when present) is in
/// the future. Options add a grace period for `past_due`, let `canceled`
/// entitle until the period end, require plans, and require features of a
/// plan → features map.
///
/// ```
/// use std::time::Duration;
/// use tower_saas_guard::subscription::EntitlementPolicy;
///
/// let ai_reply = EntitlementPolicy::new()
///     .past_due_grace(Duration::from_secs(3 * 24 * 3600))
///     .plan_features("pro", ["ai_reply", "file_upload"])
///     .plan_features("enterprise", ["ai_reply", "file_upload", "sso"])
///     .require_feature("ai_reply");
/// # let _ = ai_reply;
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct EntitlementPolicy {
    rules: Arc<PolicyRules>,
}

impl fmt::Debug for EntitlementPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.rules.fmt(f)
    }
}

impl EntitlementPolicy {
    /// The default policy: `active` and `trialing` entitle while their
    /// period (when known) has not ended.
    pub fn new() -> Self {
        Self::default()
    }

    fn edit(mut self, change: impl FnOnce(&mut PolicyRules)) -> Self {
        change(Arc::make_mut(&mut self.rules));
        self
    }

    /// `past_due` keeps entitling until `current_period_end + grace`.
    pub fn past_due_grace(self, grace: Duration) -> Self {
        self.edit(|rules| rules.past_due_grace = Some(grace))
    }

    /// `canceled` keeps entitling until `current_period_end`.
    pub fn canceled_until_period_end(self) -> Self {
        self.edit(|rules| rules.canceled_until_period_end = true)
    }

    /// Only these plans entitle (called again, adds to the set).
    pub fn require_plans<I, P>(self, plans: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.edit(|rules| {
            rules
                .required_plans
                .get_or_insert_with(HashSet::new)
                .extend(plans.into_iter().map(Into::into));
        })
    }

    /// Declares the features `plan` includes.
    pub fn plan_features<I, F>(self, plan: impl Into<String>, features: I) -> Self
    where
        I: IntoIterator<Item = F>,
        F: Into<String>,
    {
        self.edit(|rules| {
            rules
                .plan_features
                .entry(plan.into())
                .or_default()
                .extend(features.into_iter().map(Into::into));
        })
    }

    /// Only plans that include `feature` entitle.
    pub fn require_feature(self, feature: impl Into<String>) -> Self {
        self.edit(|rules| rules.required_features.push(feature.into()))
    }

    /// Whether `subscription` entitles at `now`: until when (`None`: no end
    /// known), or why not.
    fn evaluate(
        &self,
        subscription: &Subscription,
        now: SystemTime,
    ) -> Result<(EntitlementReason, Option<SystemTime>), EntitlementReason> {
        let rules = &*self.rules;
        let period_end = subscription.current_period_end;
        let (reason, until) = match subscription.status {
            SubscriptionStatus::Active | SubscriptionStatus::Trialing => {
                let (reason, end) = if subscription.status == SubscriptionStatus::Active {
                    (EntitlementReason::Active, period_end)
                } else {
                    // A trial ends at the earlier of its trial end and period end.
                    let end = match (period_end, subscription.trial_end) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    (EntitlementReason::Trialing, end)
                };
                if end.is_some_and(|end| end <= now) {
                    return Err(EntitlementReason::PeriodEnded);
                }
                (reason, end)
            }
            SubscriptionStatus::PastDue => match (rules.past_due_grace, period_end) {
                (Some(grace), Some(end)) => {
                    // A grace too long to add to the end has no end.
                    let until = end.checked_add(grace);
                    if until.is_some_and(|until| until <= now) {
                        return Err(EntitlementReason::PeriodEnded);
                    }
                    (EntitlementReason::PastDueGrace, until)
                }
                _ => return Err(EntitlementReason::StatusNotEntitling),
            },
            SubscriptionStatus::Canceled if rules.canceled_until_period_end => match period_end {
                Some(end) if end > now => (EntitlementReason::CanceledUntilPeriodEnd, Some(end)),
                Some(_) => return Err(EntitlementReason::PeriodEnded),
                None => return Err(EntitlementReason::StatusNotEntitling),
            },
            _ => return Err(EntitlementReason::StatusNotEntitling),
        };
        if let Some(plans) = &rules.required_plans {
            if !plans.contains(&subscription.plan) {
                return Err(EntitlementReason::PlanNotAllowed);
            }
        }
        if rules
            .required_features
            .iter()
            .any(|feature| !rules.plan_has(&subscription.plan, feature))
        {
            return Err(EntitlementReason::FeatureMissing);
        }
        Ok((reason, until))
    }

    /// Decides for the organization whose subscriptions these are, at `now`.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_saas_guard::subscription::{EntitlementPolicy, Subscription, SubscriptionStatus};
    ///
    /// let now = SystemTime::now();
    /// let subscription = |id: &str, status| Subscription {
    ///     organization_id: "org_1".into(),
    ///     subscription_id: id.into(),
    ///     status,
    ///     plan: "pro".into(),
    ///     current_period_end: Some(now + Duration::from_secs(3600)),
    ///     trial_end: None,
    /// };
    /// let old = subscription("sub_old", SubscriptionStatus::Canceled);
    /// let new = subscription("sub_new", SubscriptionStatus::Active);
    /// let policy = EntitlementPolicy::new();
    /// for subscriptions in [vec![old.clone(), new.clone()], vec![new, old]] {
    ///     let decision = policy.decide("org_1", subscriptions, now);
    ///     assert!(decision.is_entitled());
    ///     assert_eq!(decision.subscription().map(|s| s.subscription_id.as_str()), Some("sub_new"));
    /// }
    /// ```
    pub fn decide(
        &self,
        organization_id: &str,
        subscriptions: Vec<Subscription>,
        now: SystemTime,
    ) -> Entitlement {
        self.decide_shared(
            Arc::new(OrganizationSubscriptions::uncached(
                Arc::from(organization_id),
                subscriptions,
            )),
            now,
        )
    }

    pub(crate) fn decide_shared(
        &self,
        organization: Arc<OrganizationSubscriptions>,
        now: SystemTime,
    ) -> Entitlement {
        let mut best: Option<(usize, EntitlementReason, Option<SystemTime>)> = None;
        for (index, subscription) in organization.subscriptions.iter().enumerate() {
            let Ok((reason, until)) = self.evaluate(subscription, now) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((best_index, _, best_until)) => {
                    // Later end wins, then the greater subscription id, so
                    // store order never matters.
                    by_end(until, *best_until)
                        .then_with(|| {
                            subscription
                                .subscription_id
                                .cmp(&organization.subscriptions[*best_index].subscription_id)
                        })
                        .is_gt()
                }
            };
            if better {
                best = Some((index, reason, until));
            }
        }
        match best {
            Some((index, reason, until)) => Entitlement {
                entitled: true,
                reason,
                deciding: Some(index),
                valid_until: until,
                organization,
                policy: self.clone(),
            },
            None => {
                // Report the subscription with the latest `current_period_end`
                // (one without any counts as earliest; ties: the greater
                // id), and why it does not entitle.
                let shown = organization
                    .subscriptions
                    .iter()
                    .enumerate()
                    .max_by(|(_, a), (_, b)| {
                        a.current_period_end
                            .cmp(&b.current_period_end)
                            .then_with(|| a.subscription_id.cmp(&b.subscription_id))
                    })
                    .map(|(index, _)| index);
                let reason = match shown {
                    Some(index) => self
                        .evaluate(&organization.subscriptions[index], now)
                        .err()
                        .unwrap_or(EntitlementReason::StatusNotEntitling),
                    None => EntitlementReason::NoSubscription,
                };
                Entitlement {
                    entitled: false,
                    reason,
                    deciding: shown,
                    valid_until: None,
                    organization,
                    policy: self.clone(),
                }
            }
        }
    }

    pub(crate) fn without_answer(
        &self,
        organization_id: Arc<str>,
        entitled: bool,
        reason: EntitlementReason,
    ) -> Entitlement {
        Entitlement {
            entitled,
            reason,
            deciding: None,
            valid_until: None,
            organization: Arc::new(OrganizationSubscriptions::uncached(
                organization_id,
                Vec::new(),
            )),
            policy: self.clone(),
        }
    }
}

/// The decision for one organization: entitled or not, which subscription
/// (plan, status) decided, and why.
///
/// The subscription layers put one into the request extensions of every
/// request they let through, so a handler can degrade softly; with the
/// `axum` feature it is an extractor. Cloning is cheap.
#[derive(Clone)]
pub struct Entitlement {
    entitled: bool,
    reason: EntitlementReason,
    deciding: Option<usize>,
    valid_until: Option<SystemTime>,
    organization: Arc<OrganizationSubscriptions>,
    policy: EntitlementPolicy,
}

impl Entitlement {
    /// Whether the organization is entitled.
    pub fn is_entitled(&self) -> bool {
        self.entitled
    }

    /// Why.
    pub fn reason(&self) -> EntitlementReason {
        self.reason
    }

    /// The organization decided for.
    pub fn organization_id(&self) -> &str {
        &self.organization.organization_id
    }

    /// The subscription that decided: when entitled, the entitling one that
    /// lasts longest (an open end lasting longest); otherwise the one with
    /// the latest `current_period_end` (one without counting as earliest).
    /// Ties go to the greater `subscription_id`. `None` when the
    /// organization has none.
    pub fn subscription(&self) -> Option<&Subscription> {
        self.deciding
            .map(|index| &self.organization.subscriptions[index])
    }

    /// The deciding subscription's plan.
    pub fn plan(&self) -> Option<&str> {
        self.subscription()
            .map(|subscription| subscription.plan.as_str())
    }

    /// The deciding subscription's status.
    pub fn status(&self) -> Option<SubscriptionStatus> {
        self.subscription().map(|subscription| subscription.status)
    }

    /// Until when the entitlement holds, when it ends at a known time.
    pub fn valid_until(&self) -> Option<SystemTime> {
        self.valid_until
    }

    /// Whether the organization is entitled **and** its plan includes
    /// `feature` (per the policy's plan → features map).
    pub fn has_feature(&self, feature: &str) -> bool {
        self.entitled
            && self
                .plan()
                .is_some_and(|plan| self.policy.rules.plan_has(plan, feature))
    }
}

impl fmt::Debug for Entitlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entitlement")
            .field("organization_id", &self.organization_id())
            .field("entitled", &self.entitled)
            .field("reason", &self.reason)
            .field("plan", &self.plan())
            .field("status", &self.status())
            .field("valid_until", &self.valid_until)
            .finish()
    }
}
