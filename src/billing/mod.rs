//! Keeping entitlements in sync with billing: verify a Stripe-style signed
//! webhook and apply the subscription change to the store **and** the cache
//! in one call.
//!
//! ```
//! use std::time::SystemTime;
//!
//! use http::HeaderValue;
//! use tower_saas_guard::billing::{BillingWebhook, WebhookVerifier};
//! use tower_saas_guard::subscription::{EntitlementPolicy, Entitlements, MemorySubscriptionStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let entitlements = Entitlements::new(MemorySubscriptionStore::new());
//! let webhook = BillingWebhook::new(WebhookVerifier::new("whsec_test"), entitlements.clone());
//!
//! let body = br#"{"organization_id":"org_1","subscription_id":"sub_1","status":"active","plan":"pro"}"#;
//! let signature = WebhookVerifier::new("whsec_test").sign(body, SystemTime::now());
//! let receipt = webhook.handle(Some(&HeaderValue::from_str(&signature)?), body).await?;
//! assert_eq!(receipt.subscription.organization_id, "org_1");
//! assert!(receipt.applied());
//! assert!(entitlements.entitlement("org_1", &EntitlementPolicy::new()).await?.is_entitled());
//!
//! let forged = webhook.handle(Some(&HeaderValue::from_static("t=1,v1=00")), body).await;
//! assert_eq!(forged.unwrap_err().code(), "invalid_signature");
//! # Ok(())
//! # }
//! ```

mod signature;
pub mod stripe;

use std::fmt;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

pub use self::signature::{SignatureError, WebhookVerifier};
use crate::error::StoreError;
use crate::subscription::{
    ApplyOutcome, Entitlements, Subscription, SubscriptionChange, SubscriptionStatus,
};

/// The header a signed webhook carries its signature in.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Longest id (`organization_id`, `subscription_id`, `plan`) accepted.
const MAX_ID_CHARS: usize = 128;

/// A subscription change as a billing webhook sends it (JSON):
/// `{organization_id, subscription_id, status, plan, current_period_end?,
/// trial_end?, event_id?}`, timestamps in RFC 3339. Unknown fields are
/// ignored; an unknown status is an error.
#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionEvent {
    /// The organization that pays.
    pub organization_id: String,
    /// The billing system's subscription id.
    pub subscription_id: String,
    /// The new status.
    pub status: SubscriptionStatus,
    /// The plan's name.
    pub plan: String,
    /// When the paid period ends (RFC 3339).
    #[serde(default, deserialize_with = "rfc3339::option")]
    pub current_period_end: Option<SystemTime>,
    /// When the trial ends (RFC 3339).
    #[serde(default, deserialize_with = "rfc3339::option")]
    pub trial_end: Option<SystemTime>,
    /// The sender's event id: a webhook whose id was applied before changes
    /// nothing (at most 128 characters, not empty).
    #[serde(default)]
    pub event_id: Option<String>,
}

impl SubscriptionEvent {
    /// Parses and checks a webhook body: JSON of the right shape, ids
    /// (and `event_id`, when present) non-empty after trimming and at most
    /// 128 characters.
    pub fn from_json(body: &[u8]) -> Result<Self, PayloadError> {
        let event: Self = serde_json::from_slice(body).map_err(PayloadError::Json)?;
        let named = [
            ("organization_id", Some(&event.organization_id)),
            ("subscription_id", Some(&event.subscription_id)),
            ("plan", Some(&event.plan)),
            ("event_id", event.event_id.as_ref()),
        ];
        for (field, value) in named
            .into_iter()
            .filter_map(|(field, value)| Some((field, value?)))
        {
            let value = value.trim();
            if value.is_empty() {
                return Err(PayloadError::Empty(field));
            }
            if value.chars().count() > MAX_ID_CHARS {
                return Err(PayloadError::TooLong(field));
            }
        }
        Ok(event)
    }

    /// The change this event describes, produced at `event_at` (the
    /// signature's `t`), with its event id.
    pub fn into_change(self, event_at: SystemTime) -> SubscriptionChange {
        let event_id = self.event_id.as_deref().map(|id| id.trim().to_owned());
        SubscriptionChange {
            subscription: self.into_subscription(),
            event_at,
            event_id,
        }
    }

    /// The subscription this event describes.
    pub fn into_subscription(self) -> Subscription {
        Subscription {
            organization_id: self.organization_id.trim().to_owned(),
            subscription_id: self.subscription_id.trim().to_owned(),
            status: self.status,
            plan: self.plan.trim().to_owned(),
            current_period_end: self.current_period_end,
            trial_end: self.trial_end,
        }
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer};

    pub(super) fn option<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| crate::clock::parse_rfc3339(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A webhook body that is not a valid subscription change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Not JSON of the expected shape (missing field, unknown status, bad
    /// timestamp…).
    #[error("invalid webhook body: {0}")]
    Json(#[source] serde_json::Error),
    /// A field that names something is empty.
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    /// A field is longer than 128 characters.
    #[error("`{0}` is longer than 128 characters")]
    TooLong(&'static str),
    /// A Stripe subscription has no items, so it names no plan.
    #[error("the subscription has no items, so no plan")]
    NoItems,
    /// A Unix timestamp is too large to be a point in time.
    #[error("`{0}` is not a representable Unix timestamp")]
    Timestamp(&'static str),
}

/// Why a billing webhook was not applied. Nothing changed in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The signature is missing, malformed, stale or wrong.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The signed body is not a valid subscription change.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A Stripe subscription names no organization: nothing under the
    /// metadata key, and no customer lookup or one that does not know the
    /// customer. Stripe retries the event, so it is applied once the
    /// application knows the customer.
    #[error(
        "no organization for Stripe subscription {subscription} (customer {customer}): set `metadata.{metadata_key}` on the subscription, or map the customer to an organization"
    )]
    OrganizationUnknown {
        /// The Stripe customer id (`cus_…`).
        customer: String,
        /// The Stripe subscription id (`sub_…`).
        subscription: String,
        /// The metadata key the organization was looked for under.
        metadata_key: String,
    },
    /// The subscription store (or the customer lookup) failed.
    #[error("could not store the subscription change")]
    Store(#[source] StoreError),
}

impl WebhookError {
    /// The problem code: `invalid_signature`, `invalid_request`,
    /// `organization_unknown` or `store_unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Signature(_) => "invalid_signature",
            Self::Payload(_) => "invalid_request",
            Self::OrganizationUnknown { .. } => "organization_unknown",
            Self::Store(_) => "store_unavailable",
        }
    }

    /// A short human-readable summary (a problem's `title`).
    pub fn title(&self) -> &'static str {
        match self {
            Self::Signature(_) => "Invalid signature",
            Self::Payload(_) => "Invalid request",
            Self::OrganizationUnknown { .. } => "Organization unknown",
            Self::Store(_) => "Store unavailable",
        }
    }

    /// The HTTP status to answer with: 401, 400, 422 or 503.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::Payload(_) => StatusCode::BAD_REQUEST,
            Self::OrganizationUnknown { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Verifies a signed billing webhook and applies its subscription change to
/// the store and the entitlement cache in one call.
#[derive(Clone)]
pub struct BillingWebhook {
    verifier: WebhookVerifier,
    entitlements: Entitlements,
}

impl fmt::Debug for BillingWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillingWebhook")
            .field("verifier", &self.verifier)
            .field("entitlements", &self.entitlements)
            .finish()
    }
}

impl BillingWebhook {
    /// Checks signatures with `verifier` and applies changes to
    /// `entitlements` (its store and its cache).
    pub fn new(verifier: WebhookVerifier, entitlements: Entitlements) -> Self {
        Self {
            verifier,
            entitlements,
        }
    }

    /// Verifies `signature` (the `webhook-signature` header) over the raw
    /// `body` at the entitlements' clock's now, **then** parses the body and
    /// applies the change ([`Entitlements::apply`]): ordered by the
    /// signature's `t` (a webhook older than the last change applied to the
    /// same subscription changes nothing), deduplicated by the body's
    /// `event_id`, the organization's cached entitlement invalidated.
    /// Returns the subscription and whether it was applied.
    pub async fn handle(
        &self,
        signature: Option<&HeaderValue>,
        body: &[u8],
    ) -> Result<WebhookReceipt, WebhookError> {
        let now = self.entitlements.core.clock.now();
        let event_at = self.verifier.verified_at(signature, body, now)?;
        let change = SubscriptionEvent::from_json(body)?.into_change(event_at);
        let outcome = self
            .entitlements
            .apply(&change)
            .await
            .map_err(WebhookError::Store)?;
        Ok(WebhookReceipt {
            subscription: change.subscription,
            outcome,
        })
    }
}

/// What [`BillingWebhook::handle`] did with a verified webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReceipt {
    /// The subscription the webhook described (stored only when applied).
    pub subscription: Subscription,
    /// Whether the change was applied, and if not, why.
    pub outcome: ApplyOutcome,
}

impl WebhookReceipt {
    /// Whether the change was applied (`false`: older than the last change
    /// applied to the subscription, or a duplicate event id).
    pub fn applied(&self) -> bool {
        self.outcome.is_applied()
    }
}
