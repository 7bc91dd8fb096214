//! [`Entitlements`]: the subscription store behind a moka cache, shared by
//! the subscription layers and the billing webhook.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use moka::ops::compute::{CompResult, Op};

use super::change::{ApplyOutcome, SubscriptionChange};
use super::model::{Subscription, SubscriptionStatus};
use super::policy::{Entitlement, EntitlementPolicy, EntitlementReason, OrganizationSubscriptions};
use super::store::SubscriptionStore;
use crate::cache::generations::Generations;
use crate::cache::hot::{HotFront, HotTable};
use crate::cache::single_flight::SingleFlight;
use crate::clock::{Clock, CoarseClock};
use crate::error::{check_durations, ConfigError, StoreError, STORE_RETRY_INTERVAL};
use crate::invalidation::{
    ChannelLink, ChannelStatus, Invalidation, InvalidationChannel, InvalidationTarget,
};
use crate::metrics::LayerMetrics;
use crate::session::PurgeTask;

/// What the subscription layers do when the store fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Refuse: a hard gate answers `store_unavailable`; a soft gate attaches
    /// a non-entitled decision (reason `store_unavailable`). The default.
    FailClosed,
    /// Keep deciding from the last subscriptions loaded, for at most this
    /// long past their cache TTL; then fail closed. While the store is
    /// down it is tried again at most once a second per organization.
    ServeStale(Duration),
    /// Treat the organization as entitled (reason `fail_open`).
    FailOpen,
}

#[derive(Debug, Clone)]
struct EntitlementsConfig {
    positive_ttl: Duration,
    negative_ttl: Duration,
    cache_capacity: u64,
    store_timeout: Duration,
    on_store_error: OnStoreError,
    max_in_flight: usize,
}

type LoadOutcome = Result<Arc<OrganizationSubscriptions>, StoreError>;

pub(crate) struct EntitlementsCore {
    store: Arc<dyn SubscriptionStore>,
    pub(crate) cache:
        moka::sync::Cache<Arc<str>, Arc<OrganizationSubscriptions>, foldhash::fast::RandomState>,
    loads: SingleFlight<Arc<str>, Arc<OrganizationSubscriptions>>,
    /// Requests by outcome, cache hits and misses (both subscription layers).
    pub(crate) metrics: Arc<LayerMetrics>,
    config: EntitlementsConfig,
    pub(crate) clock: Arc<dyn Clock>,
    /// Bumped by every invalidation, so a load that raced one does not put
    /// what it read before the change back into the cache, and no thread's
    /// hot table keeps answering with it.
    invalidations: Generations,
    /// Hashes organization ids to their stripe of `invalidations`.
    stripe_hasher: foldhash::fast::RandomState,
    /// This cache's per-thread hot tables.
    hot: HotFront<Arc<str>, OrganizationSubscriptions>,
    /// The invalidation channel, when other instances share the store.
    channel: Option<ChannelLink>,
}

thread_local! {
    /// Organizations this thread decided for last, in front of the moka cache.
    static HOT_ORGANIZATIONS: RefCell<HotTable<Arc<str>, OrganizationSubscriptions>> =
        const { RefCell::new(HotTable::new()) };
}

/// Why a lookup produced no subscriptions to decide from.
pub(crate) enum LookupFailure {
    /// Fail closed.
    Closed(StoreError),
    /// Fail open.
    Open,
}

impl EntitlementsCore {
    /// The hot path's lookup: subscriptions of `organization_id` fresh at
    /// `now` (`Ok`), from this thread's hot table or else the moka cache,
    /// or whatever the cache holds for the slow path (`Err`).
    #[inline]
    pub(crate) fn cached(
        &self,
        organization_id: &str,
        now: SystemTime,
    ) -> Result<Arc<OrganizationSubscriptions>, Option<Arc<OrganizationSubscriptions>>> {
        self.hot.lookup(
            &self.cache,
            &self.invalidations,
            self.stripe(organization_id),
            organization_id,
            |cached| Arc::clone(&cached.organization_id),
            |cached| cached.is_fresh(now),
        )
    }

    async fn with_timeout<T>(
        &self,
        op: &'static str,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        crate::error::timed_store_call("subscription", op, self.config.store_timeout, operation)
            .await
    }

    /// The subscriptions to decide from: cached when fresh, else loaded
    /// (single-flight); on a store error, per [`OnStoreError`].
    pub(crate) async fn lookup(
        self: Arc<Self>,
        organization_id: Arc<str>,
        cached: Option<Arc<OrganizationSubscriptions>>,
    ) -> Result<Arc<OrganizationSubscriptions>, LookupFailure> {
        let invalidations_seen = self.invalidations.current(self.stripe(&organization_id));
        match self
            .load(Arc::clone(&organization_id), cached.clone())
            .await
        {
            Ok(loaded) => Ok(loaded),
            Err(error) => {
                tracing::warn!(%error, "subscription store unavailable");
                match self.config.on_store_error {
                    OnStoreError::FailOpen => Err(LookupFailure::Open),
                    OnStoreError::ServeStale(_) => match cached {
                        Some(cached) if self.clock.now() < cached.stale_until => {
                            // Serve the stale copy from the cache for a while,
                            // so a down store costs one timeout per interval,
                            // not one per request.
                            let retry_at =
                                (self.clock.now() + STORE_RETRY_INTERVAL).min(cached.stale_until);
                            let deferred = Arc::new(OrganizationSubscriptions {
                                organization_id: Arc::clone(&organization_id),
                                subscriptions: cached.subscriptions.clone(),
                                fresh_until: retry_at,
                                stale_until: cached.stale_until,
                                confirmed: AtomicBool::new(false),
                            });
                            self.replace_if_unchanged(
                                organization_id,
                                &cached,
                                deferred,
                                invalidations_seen,
                            );
                            Ok(cached)
                        }
                        _ => Err(LookupFailure::Closed(error)),
                    },
                    OnStoreError::FailClosed => Err(LookupFailure::Closed(error)),
                }
            }
        }
    }

    /// Forgets `organization_id` in this process (not published).
    fn forget(&self, organization_id: &str) {
        self.loads.forget(&Arc::from(organization_id));
        self.invalidations
            .remove(&self.cache, organization_id, self.stripe(organization_id));
    }

    /// Puts `replacement` in place of `read` only if the cache still holds
    /// `read` itself (one atomic step of moka's entry): a copy read before
    /// an invalidation (an `apply` between the request's cache read and its
    /// store attempt) is never put back. Confirmed unless the stripe moved
    /// since `invalidations_seen`.
    fn replace_if_unchanged(
        &self,
        organization_id: Arc<str>,
        read: &Arc<OrganizationSubscriptions>,
        replacement: Arc<OrganizationSubscriptions>,
        invalidations_seen: u64,
    ) {
        let stripe = self.stripe(&organization_id);
        let outcome = self
            .cache
            .entry(Arc::clone(&organization_id))
            .and_compute_with(|current| match current {
                Some(current) if Arc::ptr_eq(current.value(), read) => {
                    Op::Put(Arc::clone(&replacement))
                }
                _ => Op::Nop,
            });
        if matches!(outcome, CompResult::ReplacedWith(_)) {
            if self.invalidations.current(stripe) == invalidations_seen {
                replacement.confirmed.store(true, Ordering::Release);
            } else {
                self.cache.invalidate(&organization_id);
            }
        }
    }

    async fn purge_event_ids(&self) -> Result<u64, StoreError> {
        let before = self
            .clock
            .now()
            .checked_sub(super::EVENT_ID_RETENTION)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.with_timeout("purge_event_ids", self.store.purge_event_ids(before))
            .await
    }

    fn stripe(&self, organization_id: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.stripe_hasher, organization_id)
    }

    /// Caches `loaded` unless its organization was invalidated since
    /// `invalidations_seen`.
    fn insert_guarded(
        &self,
        organization_id: Arc<str>,
        loaded: Arc<OrganizationSubscriptions>,
        invalidations_seen: u64,
    ) {
        let stripe = self.stripe(&organization_id);
        self.invalidations.insert_unless_changed(
            &self.cache,
            organization_id,
            stripe,
            loaded,
            invalidations_seen,
        );
    }

    async fn load(
        self: &Arc<Self>,
        organization_id: Arc<str>,
        stale: Option<Arc<OrganizationSubscriptions>>,
    ) -> LoadOutcome {
        let core = Arc::clone(self);
        let key = Arc::clone(&organization_id);
        let flight = self.loads.run(key, move || {
            async move {
                if let Some(current) = core.cache.get(&*organization_id) {
                    let same = stale.is_some_and(|stale| Arc::ptr_eq(&stale, &current));
                    if !same && current.is_fresh(core.clock.now()) {
                        return Ok(current);
                    }
                }
                let invalidations_seen = core.invalidations.current(core.stripe(&organization_id));
                let subscriptions = core
                    .with_timeout("subscriptions", core.store.subscriptions(&organization_id))
                    .await?;
                let now = core.clock.now();
                let ttl = if subscriptions.iter().any(|s| may_entitle(s, now)) {
                    core.config.positive_ttl
                } else {
                    core.config.negative_ttl
                };
                let stale_window = match core.config.on_store_error {
                    OnStoreError::ServeStale(window) => window,
                    _ => Duration::ZERO,
                };
                let loaded = Arc::new(OrganizationSubscriptions {
                    organization_id: Arc::clone(&organization_id),
                    subscriptions,
                    fresh_until: now + ttl,
                    stale_until: now + ttl + stale_window,
                    confirmed: AtomicBool::new(false),
                });
                // Inserted unconfirmed, confirmed only if no invalidation
                // raced the read: no reader trusts data read before an
                // `invalidate` that has returned.
                core.insert_guarded(organization_id, Arc::clone(&loaded), invalidations_seen);
                Ok(loaded)
            }
            .boxed()
        });
        flight.await
    }
}

/// Whether a subscription could entitle under some policy right now: such
/// organizations are cached for the positive TTL, others for the negative.
fn may_entitle(subscription: &Subscription, now: SystemTime) -> bool {
    match subscription.status {
        SubscriptionStatus::Active
        | SubscriptionStatus::Trialing
        | SubscriptionStatus::PastDue
        | SubscriptionStatus::Canceled => {
            subscription.current_period_end.is_none_or(|end| end > now)
        }
        _ => false,
    }
}

/// Subscription lookups behind a moka cache, shared by every subscription
/// layer built from it and by the billing webhook.
///
/// Keyed by organization: concurrent lookups of one cold organization are
/// coalesced into one store read; organizations that may be entitled are
/// cached for the positive TTL (60 s), others for the shorter negative TTL
/// (10 s); [`invalidate`](Self::invalidate) (or [`apply`](Self::apply),
/// from a billing webhook) makes the very next request see a change. The
/// decision itself is made per request from the cached subscriptions, on
/// the clock, so a cached "entitled" never outlives the subscription's
/// `current_period_end`.
#[derive(Clone)]
pub struct Entitlements {
    pub(crate) core: Arc<EntitlementsCore>,
}

impl fmt::Debug for Entitlements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entitlements")
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

impl Entitlements {
    /// Entitlements over `store` with the default settings.
    pub fn new(store: impl SubscriptionStore) -> Self {
        Self::builder(store)
            .build()
            .expect("the default entitlement settings are valid")
    }

    /// A builder over `store`, to change the settings.
    pub fn builder(store: impl SubscriptionStore) -> EntitlementsBuilder {
        EntitlementsBuilder {
            store: Arc::new(store),
            config: EntitlementsConfig {
                positive_ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(10),
                cache_capacity: 100_000,
                store_timeout: Duration::from_secs(2),
                on_store_error: OnStoreError::FailClosed,
                max_in_flight: 10_000,
            },
            clock: Arc::new(CoarseClock::new()),
            channel: None,
        }
    }

    /// Forgets what this process cached about `organization_id`: the next
    /// request reads the store. With an invalidation channel, every other
    /// instance forgets it too, on receipt.
    pub fn invalidate(&self, organization_id: &str) {
        let core = &self.core;
        core.forget(organization_id);
        if let Some(channel) = &core.channel {
            channel.publish(&Invalidation::Subscriptions(organization_id.to_owned()));
        }
    }

    /// Forgets the event ids the store applied longer ago than
    /// [`EVENT_ID_RETENTION`](super::EVENT_ID_RETENTION) (30 days, longer
    /// than any provider retries), on this cache's clock; returns how many.
    pub async fn purge_event_ids(&self) -> Result<u64, StoreError> {
        self.core.purge_event_ids().await
    }

    /// Starts a background task that calls
    /// [`purge_event_ids`](Self::purge_event_ids) every `interval` (the
    /// first time after one interval; failures are logged and retried at
    /// the next). It stops when the returned [`PurgeTask`] is dropped, when
    /// every clone of these `Entitlements` is gone, or when the runtime
    /// shuts down. Needs a Tokio runtime.
    pub fn spawn_purge(&self, interval: Duration) -> Result<PurgeTask, ConfigError> {
        PurgeTask::spawn(
            Arc::downgrade(&self.core),
            interval,
            "applied billing event ids",
            |core: Arc<EntitlementsCore>| async move { core.purge_event_ids().await },
        )
    }

    /// What the invalidation channel's listener has done so far; `None`
    /// without a channel.
    pub fn channel_status(&self) -> Option<ChannelStatus> {
        self.core.channel.as_ref().map(ChannelLink::status)
    }

    /// Applies a subscription change through the store
    /// ([`SubscriptionStore::apply`]: only if it is not older than the last
    /// change applied to the subscription and its event id is new, keyed by
    /// organization and subscription id) and invalidates the organization,
    /// in one call: the next request sees the change. Answers whether the
    /// change was applied.
    ///
    /// The organization is invalidated (and the invalidation published)
    /// even when the change was not applied or the store failed: a provider
    /// retries an event whose delivery failed, and when the first delivery
    /// stored the change but failed later (say, before the invalidation
    /// reached other instances), the retry is a duplicate; invalidating
    /// again costs one store read and makes sure every instance sees the
    /// stored state.
    pub async fn apply(&self, change: &SubscriptionChange) -> Result<ApplyOutcome, StoreError> {
        let core = &self.core;
        let stored = core.with_timeout("apply", core.store.apply(change)).await;
        self.invalidate(&change.subscription.organization_id);
        stored
    }

    /// Decides for `organization_id` under `policy`, through the cache,
    /// as the layers do (store failures follow [`OnStoreError`]; fail
    /// closed returns the error).
    pub async fn entitlement(
        &self,
        organization_id: &str,
        policy: &EntitlementPolicy,
    ) -> Result<Entitlement, StoreError> {
        let core = &self.core;
        let cached = core.cache.get(organization_id);
        let subscriptions = match cached {
            Some(cached) if cached.is_fresh(core.clock.now()) => cached,
            stale => {
                let key: Arc<str> = Arc::from(organization_id);
                match Arc::clone(core).lookup(Arc::clone(&key), stale).await {
                    Ok(subscriptions) => subscriptions,
                    Err(LookupFailure::Open) => return Ok(Self::fail_open(policy, key)),
                    Err(LookupFailure::Closed(error)) => return Err(error),
                }
            }
        };
        Ok(policy.decide_shared(subscriptions, core.clock.now()))
    }

    pub(crate) fn fail_closed(
        policy: &EntitlementPolicy,
        organization_id: Arc<str>,
    ) -> Entitlement {
        policy.without_answer(organization_id, false, EntitlementReason::StoreUnavailable)
    }

    pub(crate) fn fail_open(policy: &EntitlementPolicy, organization_id: Arc<str>) -> Entitlement {
        policy.without_answer(organization_id, true, EntitlementReason::FailOpen)
    }
}

/// Builds [`Entitlements`]; the settings are checked by [`build`](Self::build).
///
/// | setting | default |
/// |---|---|
/// | [`positive_ttl`](Self::positive_ttl) | 60 s |
/// | [`negative_ttl`](Self::negative_ttl) | 10 s |
/// | [`cache_capacity`](Self::cache_capacity) | 100 000 organizations |
/// | [`store_timeout`](Self::store_timeout) | 2 s |
/// | [`on_store_error`](Self::on_store_error) | [`OnStoreError::FailClosed`] |
/// | [`max_in_flight`](Self::max_in_flight) | 10 000 store reads |
/// | [`invalidation_channel`](Self::invalidation_channel) | none |
/// | [`clock`](Self::clock) | [`CoarseClock`] |
#[must_use = "a builder does nothing until `build` is called"]
pub struct EntitlementsBuilder {
    store: Arc<dyn SubscriptionStore>,
    config: EntitlementsConfig,
    clock: Arc<dyn Clock>,
    channel: Option<Arc<dyn InvalidationChannel>>,
}

impl fmt::Debug for EntitlementsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntitlementsBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EntitlementsBuilder {
    /// How long an organization that may be entitled stays cached.
    pub fn positive_ttl(mut self, ttl: Duration) -> Self {
        self.config.positive_ttl = ttl;
        self
    }

    /// How long an organization that cannot be entitled stays cached
    /// (shorter, so a missed upgrade is seen soon).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.config.negative_ttl = ttl;
        self
    }

    /// How many organizations the cache holds at most.
    pub fn cache_capacity(mut self, capacity: u64) -> Self {
        self.config.cache_capacity = capacity;
        self
    }

    /// How long a store call may take before it counts as failed.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.config.store_timeout = timeout;
        self
    }

    /// What to do when the store fails.
    pub fn on_store_error(mut self, policy: OnStoreError) -> Self {
        self.config.on_store_error = policy;
        self
    }

    /// The clock decisions and cache freshness read.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How many store reads may wait on the
    /// store at once in this process, each for a distinct key (10 000 by
    /// default; at least 1). Requests for a key already in flight join it;
    /// past the cap a new key is answered `store_unavailable` without a
    /// store call, so a flood of distinct tokens or organizations while the
    /// store lags cannot pile up unbounded work.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.config.max_in_flight = max;
        self
    }

    /// Shares subscription changes with other instances through `channel`
    /// (see [`crate::invalidation`]): [`Entitlements::invalidate`] and
    /// [`Entitlements::apply`] publish, and changes published elsewhere
    /// drop this cache's copy on receipt. `build()` then needs a Tokio
    /// runtime.
    pub fn invalidation_channel(mut self, channel: impl InvalidationChannel) -> Self {
        self.channel = Some(Arc::new(channel));
        self
    }

    /// Checks the settings and builds.
    pub fn build(self) -> Result<Entitlements, ConfigError> {
        let config = &self.config;
        if config.positive_ttl.is_zero() || config.negative_ttl.is_zero() {
            return Err(ConfigError::ZeroCacheTtl);
        }
        if config.cache_capacity == 0 {
            return Err(ConfigError::ZeroCacheCapacity);
        }
        if config.store_timeout.is_zero() {
            return Err(ConfigError::ZeroStoreTimeout);
        }
        if config.max_in_flight == 0 {
            return Err(ConfigError::ZeroMaxInFlight);
        }
        let stale = match config.on_store_error {
            OnStoreError::ServeStale(window) => window,
            _ => Duration::ZERO,
        };
        check_durations(&[
            ("positive_ttl", config.positive_ttl),
            ("negative_ttl", config.negative_ttl),
            ("store_timeout", config.store_timeout),
            ("serve-stale window", stale),
        ])?;
        let stale_window = match config.on_store_error {
            OnStoreError::ServeStale(window) => window,
            _ => Duration::ZERO,
        };
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_capacity)
            // Housekeeping in real time; freshness is judged on the clock.
            .time_to_live(config.positive_ttl.max(config.negative_ttl) + stale_window)
            // Organization ids come from clients: a seeded hasher.
            .build_with_hasher(foldhash::fast::RandomState::default());
        let (link, listener) = match self.channel {
            Some(channel) => {
                // Past its longest TTL a receiver re-reads anyway.
                let retry_for = self.config.positive_ttl.max(self.config.negative_ttl);
                let (link, listener) =
                    ChannelLink::new(channel, self.config.store_timeout, retry_for)?;
                (Some(link), Some(listener))
            }
            None => (None, None),
        };
        let core = Arc::new(EntitlementsCore {
            store: self.store,
            cache,
            loads: SingleFlight::new(self.config.max_in_flight, "subscription"),
            metrics: Arc::new(LayerMetrics::new("subscription")),
            config: self.config,
            clock: self.clock,
            invalidations: Generations::new(),
            stripe_hasher: foldhash::fast::RandomState::default(),
            hot: HotFront::new(&HOT_ORGANIZATIONS),
            channel: link,
        });
        if let Some(listener) = listener {
            let target: Arc<dyn InvalidationTarget> = Arc::clone(&core) as _;
            listener.start(Arc::downgrade(&target));
        }
        Ok(Entitlements { core })
    }
}

impl InvalidationTarget for EntitlementsCore {
    fn invalidate(&self, invalidation: &Invalidation) -> bool {
        match invalidation {
            Invalidation::Subscriptions(organization_id) => {
                self.forget(organization_id);
                true
            }
            Invalidation::Sessions(_) => false,
        }
    }

    fn resync(&self) {
        self.invalidations.bump_all();
        self.loads.forget_all();
        self.cache.invalidate_all();
        self.invalidations.bump_all();
    }
}
