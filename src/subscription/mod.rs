//! Pro-only routes: [`RequireSubscriptionLayer`] and [`EntitlementLayer`].
//!
//! An organization may hold several subscriptions; it is entitled when any
//! of them entitles it under an [`EntitlementPolicy`] (by default `active`
//! or `trialing` with a period that has not ended). Lookups go through
//! [`Entitlements`], a moka cache keyed by organization in front of a
//! [`SubscriptionStore`] (each thread also keeps the few dozen entries it
//! used last, dropped at once by an invalidation); a billing webhook calls
//! [`Entitlements::apply`] so that an upgrade or a cancellation takes
//! effect on the next request, on every thread.
//!
//! * [`RequireSubscriptionLayer`] rejects requests of organizations that
//!   are not entitled with `subscription_required` (403; gRPC
//!   PERMISSION_DENIED). A predicate ([`gate_when`](RequireSubscriptionLayer::gate_when))
//!   chooses which requests are gated, for example only writes.
//! * [`EntitlementLayer`] never rejects for lack of a subscription: it only
//!   attaches the decision, for handlers that degrade softly.
//!
//! Both put the [`Entitlement`] into the request extensions of every
//! request they let through (an extractor with the `axum` feature). The
//! organization comes from an [`OrganizationResolver`]: the
//! [`Session`](crate::session::Session) (default), a header, an extension
//! set by your own auth, or a function; none → `organization_missing`.
//! Store failures follow [`OnStoreError`]: fail closed (`store_unavailable`,
//! 503 with `Retry-After`, gRPC UNAVAILABLE) by default, serve stale for a
//! bounded window, or fail open.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//!
//! use http::{Method, Request, Response, StatusCode};
//! use tower::{Layer, ServiceExt};
//! use tower_saas_guard::subscription::{
//!     Entitlement, EntitlementPolicy, Entitlements, FromHeader, MemorySubscriptionStore,
//!     RequireSubscriptionLayer, Subscription, SubscriptionChange, SubscriptionStatus,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let entitlements = Entitlements::new(MemorySubscriptionStore::new());
//! let pro_writes = RequireSubscriptionLayer::new(entitlements.clone(), EntitlementPolicy::new())
//!     .organization(FromHeader::new(http::HeaderName::from_static("x-organization-id")))
//!     .gate_when(|head: &tower_saas_guard::RequestHead<'_>| head.method() == Method::POST);
//! let service = pro_writes.layer(tower::service_fn(|request: Request<()>| async move {
//!     let entitled = request.extensions().get::<Entitlement>().is_some_and(Entitlement::is_entitled);
//!     Ok::<_, Infallible>(Response::new(format!("entitled: {entitled}")))
//! }));
//! let post = || Request::post("/files").header("x-organization-id", "org_1").body(());
//!
//! let free = service.clone().oneshot(post()?).await?;
//! assert_eq!(free.status(), StatusCode::FORBIDDEN);
//! let read = service.clone().oneshot(Request::get("/files").header("x-organization-id", "org_1").body(())?).await?;
//! assert_eq!(read.status(), StatusCode::OK); // reads are not gated
//!
//! // The billing webhook stores the upgrade and invalidates the cache.
//! let upgrade = Subscription {
//!     organization_id: "org_1".into(),
//!     subscription_id: "sub_1".into(),
//!     status: SubscriptionStatus::Active,
//!     plan: "pro".into(),
//!     current_period_end: None,
//!     trial_end: None,
//! };
//! let applied = entitlements
//!     .apply(&SubscriptionChange::new(upgrade, std::time::SystemTime::now()).with_event_id("evt_1"))
//!     .await?;
//! assert!(applied.is_applied());
//! let pro = service.oneshot(post()?).await?;
//! assert_eq!(pro.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

mod change;
mod entitlements;
mod layer;
mod model;
mod policy;
mod resolver;
mod service;
mod store;

pub use self::change::{ApplyOutcome, SubscriptionChange, EVENT_ID_RETENTION};
pub use self::entitlements::{Entitlements, EntitlementsBuilder, OnStoreError};
pub use self::layer::{EntitlementLayer, GateAll, GatePredicate, RequireSubscriptionLayer};
pub use self::model::{Subscription, SubscriptionStatus, UnknownStatus};
pub use self::policy::{Entitlement, EntitlementPolicy, EntitlementReason};
pub use self::resolver::{
    FromExtension, FromHeader, FromSession, OrganizationId, OrganizationResolver,
};
pub use self::service::SubscriptionGate;
pub use self::store::{MemorySubscriptionStore, SubscriptionStore};
pub use crate::future::ResponseFuture;
