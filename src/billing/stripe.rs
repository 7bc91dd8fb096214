//! Stripe's own webhooks, as Stripe sends them: the `Stripe-Signature`
//! header and `customer.subscription.*` events.
//!
//! [`StripeWebhook::handle`] verifies the signature on the raw body (with
//! one or several active signing secrets, see [`StripeVerifier`]), then
//! reads the event envelope (`id`, `type`, `created`, `data.object`) and,
//! for a subscription event, maps the subscription to a [`Subscription`]
//! and applies it through [`Entitlements::apply`]: ordered by the event's
//! `created`, deduplicated by its `id`. Stripe delivers at least once, in
//! no guaranteed order, and retries for days; an older or repeated event
//! changes nothing and is still acknowledged.
//!
//! The events acted on are `customer.subscription.created`, `.updated`,
//! `.deleted`, `.paused`, `.resumed` and `.trial_will_end`: each carries
//! the whole subscription as it was when the event was created, so each is
//! applied the same way. Every other type is acknowledged and ignored.
//!
//! How a Stripe subscription becomes a [`Subscription`]:
//!
//! * **organization**: the subscription's `metadata.organization_id` (the
//!   key is configurable with [`StripeWebhook::metadata_key`]); when absent
//!   or blank, the [`CustomerOrganizations`] lookup given with
//!   [`StripeWebhook::customer_organizations`] (Stripe customer id →
//!   organization). Neither → [`WebhookError::OrganizationUnknown`]
//!   (`organization_unknown`, 422), so Stripe retries once the application
//!   knows the customer.
//! * **plan**: the first item's `price.lookup_key`, else its
//!   `price.product` (an id, or an expanded product's `id`), through the
//!   optional [`StripeWebhook::plan_mapping`].
//! * **`current_period_end`**: the subscription's own field (API versions
//!   before 2025-03-31); when the subscription has none (2025-03-31 and
//!   later, where each item has its period), the **latest** period end of
//!   its items, so the organization is paid up while any item is.
//! * **`trial_end`**, **status** (Stripe's eight values; an unknown one is
//!   `invalid_request`, never a guess). `cancel_at_period_end` does not
//!   change the status: Stripe keeps it `active` until the period ends and
//!   then sends `customer.subscription.deleted` with `canceled`
//!   ([`EntitlementPolicy::canceled_until_period_end`](crate::subscription::EntitlementPolicy::canceled_until_period_end)
//!   decides what a `canceled` one is worth).
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//!
//! use http::HeaderValue;
//! use tower_saas_guard::billing::stripe::{StripeVerifier, StripeWebhook};
//! use tower_saas_guard::subscription::{EntitlementPolicy, Entitlements, MemorySubscriptionStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let entitlements = Entitlements::new(MemorySubscriptionStore::new());
//! let verifier = StripeVerifier::try_new(["whsec_new", "whsec_old"])?;
//! let webhook = StripeWebhook::new(verifier.clone(), entitlements.clone());
//!
//! let now = SystemTime::now()
//!     .duration_since(SystemTime::UNIX_EPOCH)?
//!     .as_secs();
//! let body = format!(
//!     r#"{{"id":"evt_1","object":"event","type":"customer.subscription.created","created":{now},
//!         "data":{{"object":{{"id":"sub_1","object":"subscription","customer":"cus_1",
//!           "status":"active","metadata":{{"organization_id":"org_1"}},
//!           "items":{{"object":"list","data":[{{"id":"si_1","object":"subscription_item",
//!             "current_period_end":{end},"price":{{"id":"price_1","lookup_key":"pro","product":"prod_1"}}}}]}}}}}}}}"#,
//!     end = now + 30 * 86_400,
//! );
//! let signature = HeaderValue::from_str(&verifier.sign(body.as_bytes(), SystemTime::now()))?;
//! let receipt = webhook.handle(Some(&signature), body.as_bytes()).await?;
//! assert!(receipt.applied());
//! let entitlement = entitlements.entitlement("org_1", &EntitlementPolicy::new()).await?;
//! assert_eq!(entitlement.plan(), Some("pro"));
//!
//! // Stripe's retry of the same event changes nothing.
//! let again = webhook.handle(Some(&signature), body.as_bytes()).await?;
//! assert!(!again.applied());
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::signature::Signatures;
use super::{PayloadError, SignatureError, WebhookError, WebhookReceipt, MAX_ID_CHARS};
use crate::error::StoreError;
use crate::subscription::{Entitlements, Subscription, SubscriptionChange, SubscriptionStatus};
use crate::ConfigError;

/// The header Stripe signs its webhooks in.
pub const STRIPE_SIGNATURE: HeaderName = HeaderName::from_static("stripe-signature");

/// The metadata key the organization is read from unless configured.
const DEFAULT_METADATA_KEY: &str = "organization_id";

/// Verifies Stripe's `Stripe-Signature` header:
/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>,…`.
///
/// * Several secrets may be active at once (rolling an endpoint's secret
///   in Stripe keeps the old one valid for a while): a header passes when
///   any `v1` entry matches any secret. Every `v1` entry is compared with
///   every secret, each comparison in constant time, with no early exit.
/// * Other schemes (`v0`, which Stripe sends for test events) and unknown
///   entries are ignored; hex is case-insensitive.
/// * `t` must be within the tolerance of now, in either direction (300 s
///   by default), checked only for a signature that matched.
/// * A header with more entries than the cap (16 by default) is refused
///   ([`SignatureError::TooManyEntries`]) before any MAC is computed.
///
/// `Debug` never prints the secrets.
#[derive(Clone)]
pub struct StripeVerifier {
    signatures: Signatures,
}

impl StripeVerifier {
    /// A verifier accepting signatures made with any of `secrets` (Stripe's
    /// `whsec_…` signing secrets), or [`ConfigError::NoWebhookSecret`] for
    /// no secret at all and [`ConfigError::EmptyWebhookSecret`] for an
    /// empty one.
    pub fn try_new<I, S>(secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<Vec<u8>>,
    {
        Ok(Self {
            signatures: Signatures::try_new(secrets)?,
        })
    }

    /// Sets how far `t` may be from now, in either direction (inclusive;
    /// default 5 minutes).
    #[must_use]
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.signatures.tolerance = tolerance;
        self
    }

    /// Sets how many `,`-separated entries a header may carry (default
    /// 16; at least 2, a `t` and a `v1`).
    #[must_use]
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.signatures.max_entries = max_entries.max(2);
        self
    }

    /// Checks `header` (the raw `Stripe-Signature` value) against the raw
    /// `body` at `now`, and returns the signed `t`.
    ///
    /// Errors, in the order checked: [`SignatureError::TooManyEntries`],
    /// [`SignatureError::Malformed`] (no single `t` of decimal digits, or
    /// no `v1` entry that is hex), [`SignatureError::Mismatch`],
    /// [`SignatureError::OutsideTolerance`].
    pub fn verify(
        &self,
        header: &[u8],
        body: &[u8],
        now: SystemTime,
    ) -> Result<SystemTime, SignatureError> {
        self.signatures.verify(header, body, now)
    }

    /// Checks an optional `Stripe-Signature` header; an absent one is
    /// [`SignatureError::Missing`]. Returns the signed `t`.
    pub fn verify_header(
        &self,
        header: Option<&HeaderValue>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<SystemTime, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        self.verify(header.as_bytes(), body, now)
    }

    /// The header Stripe would send for `body` at `timestamp` (for tests):
    /// `t=<seconds>,v1=<hex>` with one `v1` per secret, in the order given.
    #[must_use]
    pub fn sign(&self, body: &[u8], timestamp: SystemTime) -> String {
        self.signatures.sign(body, timestamp)
    }
}

impl fmt::Debug for StripeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeVerifier")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.signatures.secrets()),
            )
            .field("tolerance", &self.signatures.tolerance)
            .field("max_entries", &self.signatures.max_entries)
            .finish()
    }
}

/// The application's mapping from a Stripe customer id to an organization,
/// asked when a subscription carries no organization in its metadata.
///
/// Implemented for async closures
/// `Fn(String) -> impl Future<Output = Result<Option<String>, StoreError>>`;
/// `Ok(None)` means "no such customer" (`organization_unknown`), `Err`
/// a failed lookup (`store_unavailable`, so Stripe retries).
#[async_trait]
pub trait CustomerOrganizations: Send + Sync + 'static {
    /// The organization of Stripe customer `customer_id` (`cus_…`), if known.
    async fn organization_of(&self, customer_id: &str) -> Result<Option<String>, StoreError>;
}

#[async_trait]
impl<F, Fut> CustomerOrganizations for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<String>, StoreError>> + Send + 'static,
{
    async fn organization_of(&self, customer_id: &str) -> Result<Option<String>, StoreError> {
        (self)(customer_id.to_owned()).await
    }
}

/// The event envelope: only the fields used.
#[derive(Debug, Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    created: u64,
    data: EventData,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: serde_json::Value,
}

/// A Stripe subscription: only the fields used.
#[derive(Debug, Deserialize)]
struct StripeSubscription {
    id: String,
    customer: IdOrObject,
    status: SubscriptionStatus,
    #[serde(default)]
    current_period_end: Option<u64>,
    #[serde(default)]
    trial_end: Option<u64>,
    #[serde(default)]
    metadata: HashMap<String, String>,
    items: ItemList,
}

#[derive(Debug, Deserialize)]
struct ItemList {
    data: Vec<Item>,
}

#[derive(Debug, Deserialize)]
struct Item {
    price: Price,
    #[serde(default)]
    current_period_end: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Price {
    #[serde(default)]
    lookup_key: Option<String>,
    product: IdOrObject,
}

/// A reference Stripe sends as an id, or as the object when expanded.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IdOrObject {
    Id(String),
    Object { id: String },
}

impl IdOrObject {
    fn id(&self) -> &str {
        match self {
            Self::Id(id) | Self::Object { id } => id,
        }
    }
}

/// The subscription event types applied; every other type is ignored.
const SUBSCRIPTION_EVENTS: [&str; 6] = [
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
];

type PlanMapping = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Verifies Stripe webhooks and applies their subscription changes to the
/// store and the entitlement cache (see the [module docs](self)).
#[derive(Clone)]
pub struct StripeWebhook {
    verifier: StripeVerifier,
    entitlements: Entitlements,
    metadata_key: Arc<str>,
    customers: Option<Arc<dyn CustomerOrganizations>>,
    plan_mapping: Option<PlanMapping>,
}

impl fmt::Debug for StripeWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeWebhook")
            .field("verifier", &self.verifier)
            .field("entitlements", &self.entitlements)
            .field("metadata_key", &self.metadata_key)
            .field(
                "customer_organizations",
                &self.customers.as_ref().map(|_| "dyn CustomerOrganizations"),
            )
            .field(
                "plan_mapping",
                &self.plan_mapping.as_ref().map(|_| "dyn Fn(&str) -> String"),
            )
            .finish()
    }
}

impl StripeWebhook {
    /// Checks signatures with `verifier` and applies changes to
    /// `entitlements`; the organization comes from
    /// `metadata.organization_id`, the plan is the price's lookup key or
    /// product id as is.
    pub fn new(verifier: StripeVerifier, entitlements: Entitlements) -> Self {
        Self {
            verifier,
            entitlements,
            metadata_key: Arc::from(DEFAULT_METADATA_KEY),
            customers: None,
            plan_mapping: None,
        }
    }

    /// Reads the organization from the subscription's metadata under `key`
    /// instead of `organization_id`.
    #[must_use]
    pub fn metadata_key(mut self, key: impl Into<String>) -> Self {
        self.metadata_key = Arc::from(key.into());
        self
    }

    /// Asks `lookup` for the organization of the subscription's Stripe
    /// customer when its metadata has none.
    #[must_use]
    pub fn customer_organizations(mut self, lookup: impl CustomerOrganizations) -> Self {
        self.customers = Some(Arc::new(lookup));
        self
    }

    /// Maps the first item's price lookup key (or, without one, its product
    /// id) to the plan name stored, e.g. `prod_Pro123` → `pro`.
    #[must_use]
    pub fn plan_mapping(
        mut self,
        mapping: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        self.plan_mapping = Some(Arc::new(mapping));
        self
    }

    /// Verifies `signature` (the `Stripe-Signature` header) over the raw
    /// `body` at the entitlements' clock's now, **then** parses the event;
    /// a subscription event is mapped and applied through
    /// [`Entitlements::apply`] (ordered by the event's `created`,
    /// deduplicated by its `id`), any other type acknowledged untouched.
    pub async fn handle(
        &self,
        signature: Option<&HeaderValue>,
        body: &[u8],
    ) -> Result<StripeReceipt, WebhookError> {
        let now = self.entitlements.core.clock.now();
        self.verifier.verify_header(signature, body, now)?;
        let envelope: Envelope = serde_json::from_slice(body).map_err(PayloadError::Json)?;
        check_id("id", &envelope.id)?;
        if !SUBSCRIPTION_EVENTS.contains(&envelope.event_type.as_str()) {
            return Ok(StripeReceipt {
                event_id: envelope.id,
                event_type: envelope.event_type,
                change: None,
            });
        }
        let stripe: StripeSubscription =
            serde_json::from_value(envelope.data.object).map_err(PayloadError::Json)?;
        let subscription = self.subscription(stripe).await?;
        let created = UNIX_EPOCH
            .checked_add(Duration::from_secs(envelope.created))
            .ok_or(PayloadError::Timestamp("created"))?;
        let change =
            SubscriptionChange::new(subscription, created).with_event_id(envelope.id.clone());
        let outcome = self
            .entitlements
            .apply(&change)
            .await
            .map_err(WebhookError::Store)?;
        Ok(StripeReceipt {
            event_id: envelope.id,
            event_type: envelope.event_type,
            change: Some(WebhookReceipt {
                subscription: change.subscription,
                outcome,
            }),
        })
    }

    /// Maps a Stripe subscription to ours (see the module docs).
    async fn subscription(&self, stripe: StripeSubscription) -> Result<Subscription, WebhookError> {
        check_id("subscription id", &stripe.id)?;
        let first = stripe.items.data.first().ok_or(PayloadError::NoItems)?;
        let product_or_key = first
            .price
            .lookup_key
            .as_deref()
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .unwrap_or_else(|| first.price.product.id().trim());
        let plan = match &self.plan_mapping {
            Some(mapping) => mapping(product_or_key),
            None => product_or_key.to_owned(),
        };
        check_id("plan", &plan)?;
        let current_period_end = stripe
            .current_period_end
            .or_else(|| {
                stripe
                    .items
                    .data
                    .iter()
                    .filter_map(|item| item.current_period_end)
                    .max()
            })
            .map(|seconds| unix_seconds(seconds, "current_period_end"))
            .transpose()?;
        let trial_end = stripe
            .trial_end
            .map(|seconds| unix_seconds(seconds, "trial_end"))
            .transpose()?;
        let customer = stripe.customer.id().trim();
        let from_metadata = stripe
            .metadata
            .get(&*self.metadata_key)
            .map(|organization| organization.trim())
            .filter(|organization| !organization.is_empty())
            .map(str::to_owned);
        let organization_id = match (from_metadata, &self.customers) {
            (Some(organization), _) => organization,
            (None, Some(customers)) => customers
                .organization_of(customer)
                .await
                .map_err(WebhookError::Store)?
                .map(|organization| organization.trim().to_owned())
                .filter(|organization| !organization.is_empty())
                .ok_or_else(|| self.unknown(customer, &stripe.id))?,
            (None, None) => return Err(self.unknown(customer, &stripe.id)),
        };
        check_id("organization id", &organization_id)?;
        Ok(Subscription {
            organization_id,
            subscription_id: stripe.id.trim().to_owned(),
            status: stripe.status,
            plan,
            current_period_end,
            trial_end,
        })
    }

    fn unknown(&self, customer: &str, subscription: &str) -> WebhookError {
        WebhookError::OrganizationUnknown {
            customer: customer.to_owned(),
            subscription: subscription.to_owned(),
            metadata_key: self.metadata_key.to_string(),
        }
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), PayloadError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(PayloadError::Empty(field));
    }
    if value.chars().count() > MAX_ID_CHARS {
        return Err(PayloadError::TooLong(field));
    }
    Ok(())
}

fn unix_seconds(seconds: u64, field: &'static str) -> Result<SystemTime, PayloadError> {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(seconds))
        .ok_or(PayloadError::Timestamp(field))
}

/// What [`StripeWebhook::handle`] did with a verified event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeReceipt {
    /// The event's id (`evt_…`).
    pub event_id: String,
    /// The event's type (`customer.subscription.updated`, …).
    pub event_type: String,
    /// For a subscription event, the subscription and whether it was
    /// applied; `None` for a type that is acknowledged and ignored.
    pub change: Option<WebhookReceipt>,
}

impl StripeReceipt {
    /// Whether the event changed a subscription (`false` for an ignored
    /// type, an event older than the last one applied to the subscription,
    /// or a repeated event id).
    pub fn applied(&self) -> bool {
        self.change.as_ref().is_some_and(WebhookReceipt::applied)
    }

    /// Whether the event's type is one this webhook does not act on.
    pub fn ignored(&self) -> bool {
        self.change.is_none()
    }
}
