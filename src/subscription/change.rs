//! A subscription change as a billing provider delivers it, and whether a
//! store applied it.

use std::time::SystemTime;

use super::model::Subscription;

/// How long a store should remember applied event ids before
/// [`purge_event_ids`](super::SubscriptionStore::purge_event_ids) may drop
/// them: 30 days, ten times Stripe's three-day retry horizon.
pub const EVENT_ID_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// A subscription change with the time the billing provider produced it
/// and, when the provider has one, the event's id.
///
/// Providers deliver events at least once and in no guaranteed order, so a
/// store applies a change only if it is not older than the last change
/// applied to the same (organization, subscription), and only once per
/// event id (see [`SubscriptionStore::apply`](super::SubscriptionStore::apply)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    /// The subscription as it is after the change.
    pub subscription: Subscription,
    /// When the provider produced the change (the event's creation time;
    /// for the simplified webhook, the signature's `t`). Stored in whole
    /// milliseconds.
    pub event_at: SystemTime,
    /// The provider's event id, globally unique at the provider; `None`
    /// when the provider sends none (then only the time orders changes).
    pub event_id: Option<String>,
}

impl SubscriptionChange {
    /// A change to `subscription` produced at `event_at`, without an event
    /// id.
    pub fn new(subscription: Subscription, event_at: SystemTime) -> Self {
        Self {
            subscription,
            event_at,
            event_id: None,
        }
    }

    /// The same change, carrying the provider's event id.
    #[must_use]
    pub fn with_event_id(self, event_id: impl Into<String>) -> Self {
        Self {
            event_id: Some(event_id.into()),
            ..self
        }
    }
}

/// What a store did with a [`SubscriptionChange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApplyOutcome {
    /// The change was stored: it is now the subscription's state.
    Applied,
    /// Nothing changed: a change produced later was already applied to the
    /// same (organization, subscription).
    Outdated,
    /// Nothing changed: a change with the same event id was already
    /// applied.
    DuplicateEvent,
}

impl ApplyOutcome {
    /// Whether the change was stored.
    pub fn is_applied(self) -> bool {
        self == Self::Applied
    }

    /// `"applied"`, `"outdated"` or `"duplicate_event"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Outdated => "outdated",
            Self::DuplicateEvent => "duplicate_event",
        }
    }
}
