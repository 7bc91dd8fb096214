//! Subscriptions as billing (Stripe) describes them.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A subscription's status: Stripe's eight values, in snake_case.
///
/// An unknown string is an error ([`UnknownStatus`]), never "active".
///
/// ```
/// use tower_saas_guard::subscription::SubscriptionStatus;
///
/// assert_eq!("past_due".parse(), Ok(SubscriptionStatus::PastDue));
/// assert!("activ".parse::<SubscriptionStatus>().is_err());
/// assert!(serde_json::from_str::<SubscriptionStatus>("\"gold\"").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// The first payment has not succeeded yet.
    Incomplete,
    /// The first payment never succeeded; the subscription is dead.
    IncompleteExpired,
    /// In a free trial.
    Trialing,
    /// Paid and current.
    Active,
    /// The latest payment failed; billing is retrying.
    PastDue,
    /// Canceled (possibly effective at the period end).
    Canceled,
    /// Payment retries are exhausted.
    Unpaid,
    /// Paused (for example at the end of a trial without a payment method).
    Paused,
}

impl SubscriptionStatus {
    /// Every status, in Stripe's documentation order.
    pub const ALL: [Self; 8] = [
        Self::Incomplete,
        Self::IncompleteExpired,
        Self::Trialing,
        Self::Active,
        Self::PastDue,
        Self::Canceled,
        Self::Unpaid,
        Self::Paused,
    ];

    /// The snake_case name (`past_due`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
        }
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status string that is not one of Stripe's eight.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown subscription status {0:?}; expected one of incomplete, incomplete_expired, trialing, active, past_due, canceled, unpaid, paused")]
pub struct UnknownStatus(pub String);

impl FromStr for SubscriptionStatus {
    type Err = UnknownStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| UnknownStatus(text.to_owned()))
    }
}

/// One subscription of one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The organization that pays.
    pub organization_id: String,
    /// The billing system's id; unique within the organization.
    pub subscription_id: String,
    /// Its current status.
    pub status: SubscriptionStatus,
    /// The plan's name (`pro`, `enterprise`, …).
    pub plan: String,
    /// When the paid-for period ends, if known.
    pub current_period_end: Option<SystemTime>,
    /// When the trial ends, if there is one.
    pub trial_end: Option<SystemTime>,
}
