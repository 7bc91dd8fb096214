//! Fault injection: wrappers around any session or subscription store that
//! make chosen operations fail, lag, hang or return records that do not
//! decode, by script or by probability.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::StoreError;
use crate::session::{
    PageRequest, SessionId, SessionOwner, SessionPage, SessionRecord, SessionStore,
};
use crate::subscription::{ApplyOutcome, Subscription, SubscriptionChange, SubscriptionStore};

/// A store operation a fault can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`SessionStore::create`].
    Create,
    /// [`SessionStore::load`].
    Load,
    /// [`SessionStore::extend`] (a renewal).
    Extend,
    /// [`SessionStore::delete`] (a revocation by token or id).
    Delete,
    /// [`SessionStore::delete_all`] (a bulk revocation).
    DeleteAll,
    /// [`SessionStore::list`].
    List,
    /// [`SessionStore::purge_expired`].
    PurgeExpired,
    /// [`SubscriptionStore::subscriptions`] (an entitlement read).
    Subscriptions,
    /// [`SubscriptionStore::upsert`].
    Upsert,
    /// [`SubscriptionStore::apply`] (a billing event).
    Apply,
    /// [`SubscriptionStore::purge_event_ids`].
    PurgeEventIds,
}

/// What happens to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The call goes through untouched.
    Pass,
    /// The backend fails ([`StoreError::backend`]); nothing is written.
    Error,
    /// The call waits this long, then goes through.
    Latency(Duration),
    /// The call never answers (the layer's store timeout cuts it off);
    /// nothing is written.
    Hang,
    /// The call answers a record that does not decode
    /// ([`StoreError::serialization`], as a database store reports a
    /// corrupt row); nothing is written.
    Malformed,
}

#[derive(Debug, thiserror::Error)]
#[error("fault injected into {0:?}")]
struct Injected(Op);

#[derive(Default)]
struct Plan {
    /// Played first, one fault per call, in order.
    script: VecDeque<Fault>,
    /// Then, with this probability (parts per million), this fault.
    random: Option<(Fault, u32)>,
}

/// The shared plan of faults: clone it into the store wrappers and keep a
/// clone in the test to change the plan and count calls while requests
/// run.
///
/// Per operation, a call first takes the next fault of its
/// [script](Self::script); when that is empty, the [random](Self::random)
/// fault with its probability (a seeded generator, so a run repeats);
/// otherwise it passes.
///
/// ```
/// use std::time::Duration;
///
/// use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
/// use tower_saas_guard::test_kit::faults::{Fault, Faults, FaultySessionStore, Op};
///
/// let faults = Faults::new(7);
/// // The next two loads fail, then one in ten hangs.
/// faults.script(Op::Load, [Fault::Error, Fault::Error]);
/// faults.random(Op::Load, Fault::Hang, 0.1);
/// let store = FaultySessionStore::new(MemorySessionStore::new(), faults.clone());
/// let sessions = SessionRefreshLayer::builder(store)
///     .store_timeout(Duration::from_millis(200))
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

struct Shared {
    plans: Mutex<HashMap<Op, Plan>>,
    calls: Mutex<HashMap<Op, usize>>,
    seed: AtomicUsize,
}

impl Faults {
    /// No faults yet; `seed` drives the random ones.
    pub fn new(seed: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                plans: Mutex::default(),
                calls: Mutex::default(),
                // Never zero: xorshift would stay at zero.
                seed: AtomicUsize::new((seed as usize) | 1),
            }),
        }
    }

    /// Appends `faults` to the script of `op`: its next calls meet them, one
    /// per call, in order.
    pub fn script(&self, op: Op, faults: impl IntoIterator<Item = Fault>) {
        self.plans().entry(op).or_default().script.extend(faults);
    }

    /// Once the script of `op` is played, each call meets `fault` with
    /// `probability` (0 to 1; 1 for every call).
    pub fn random(&self, op: Op, fault: Fault, probability: f64) {
        let parts = (probability.clamp(0.0, 1.0) * 1_000_000.0).round() as u32;
        self.plans().entry(op).or_default().random = Some((fault, parts));
    }

    /// Every call of `op` meets `fault` from now on (a store that is down).
    pub fn always(&self, op: Op, fault: Fault) {
        let mut plans = self.plans();
        let plan = plans.entry(op).or_default();
        plan.script.clear();
        plan.random = Some((fault, 1_000_000));
    }

    /// Every operation meets `fault` from now on.
    pub fn all(&self, fault: Fault) {
        for op in ALL_OPS {
            self.always(op, fault);
        }
    }

    /// Removes every planned fault of every operation (the store is back).
    pub fn heal(&self) {
        self.plans().clear();
    }

    /// How many calls of `op` reached the wrapper (faulty or not).
    pub fn calls(&self, op: Op) -> usize {
        self.counts().get(&op).copied().unwrap_or(0)
    }

    /// The fault the next call of `op` meets, counting the call.
    fn next(&self, op: Op) -> Fault {
        *self.counts().entry(op).or_default() += 1;
        let mut plans = self.plans();
        let Some(plan) = plans.get_mut(&op) else {
            return Fault::Pass;
        };
        if let Some(fault) = plan.script.pop_front() {
            return fault;
        }
        match plan.random {
            Some((fault, parts)) if self.roll() < parts => fault,
            _ => Fault::Pass,
        }
    }

    /// A number below one million, from a xorshift generator.
    fn roll(&self) -> u32 {
        let mut next = 0;
        let _ = self
            .shared
            .seed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mut x| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                next = x;
                Some(x)
            });
        (next % 1_000_000) as u32
    }

    fn plans(&self) -> std::sync::MutexGuard<'_, HashMap<Op, Plan>> {
        self.shared
            .plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Op, usize>> {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies the next fault of `op` around `call`.
    async fn around<T, F>(&self, op: Op, call: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        match self.next(op) {
            Fault::Pass => call.await,
            Fault::Error => Err(StoreError::backend(Injected(op))),
            Fault::Latency(delay) => {
                tokio::time::sleep(delay).await;
                call.await
            }
            Fault::Hang => std::future::pending().await,
            Fault::Malformed => Err(StoreError::serialization(Injected(op))),
        }
    }
}

const ALL_OPS: [Op; 11] = [
    Op::Create,
    Op::Load,
    Op::Extend,
    Op::Delete,
    Op::DeleteAll,
    Op::List,
    Op::PurgeExpired,
    Op::Subscriptions,
    Op::Upsert,
    Op::Apply,
    Op::PurgeEventIds,
];

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("calls", &*self.counts())
            .finish_non_exhaustive()
    }
}

/// A [`SessionStore`] whose operations meet the [`Faults`] planned for them.
#[derive(Debug, Clone)]
pub struct FaultySessionStore<S> {
    inner: S,
    faults: Faults,
}

impl<S: SessionStore> FaultySessionStore<S> {
    /// Wraps `inner`; `faults` decides what each call meets.
    pub fn new(inner: S, faults: Faults) -> Self {
        Self { inner, faults }
    }

    /// The wrapped store (to look at what was really written).
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for FaultySessionStore<S> {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.faults
            .around(Op::Create, self.inner.create(record))
            .await
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.faults.around(Op::Load, self.inner.load(id)).await
    }

    async fn extend(
        &self,
        id: &SessionId,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        self.faults
            .around(Op::Extend, self.inner.extend(id, expires_at, now))
            .await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.faults.around(Op::Delete, self.inner.delete(id)).await
    }

    async fn delete_all(&self, owner: SessionOwner<'_>) -> Result<Vec<SessionId>, StoreError> {
        self.faults
            .around(Op::DeleteAll, self.inner.delete_all(owner))
            .await
    }

    async fn list(
        &self,
        owner: SessionOwner<'_>,
        now: SystemTime,
        page: PageRequest,
    ) -> Result<SessionPage, StoreError> {
        self.faults
            .around(Op::List, self.inner.list(owner, now, page))
            .await
    }

    async fn purge_expired(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.faults
            .around(Op::PurgeExpired, self.inner.purge_expired(before))
            .await
    }
}

/// A [`SubscriptionStore`] whose operations meet the [`Faults`] planned for
/// them.
#[derive(Debug, Clone)]
pub struct FaultySubscriptionStore<S> {
    inner: S,
    faults: Faults,
}

impl<S: SubscriptionStore> FaultySubscriptionStore<S> {
    /// Wraps `inner`; `faults` decides what each call meets.
    pub fn new(inner: S, faults: Faults) -> Self {
        Self { inner, faults }
    }

    /// The wrapped store (to look at what was really written).
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: SubscriptionStore> SubscriptionStore for FaultySubscriptionStore<S> {
    async fn subscriptions(&self, organization_id: &str) -> Result<Vec<Subscription>, StoreError> {
        self.faults
            .around(Op::Subscriptions, self.inner.subscriptions(organization_id))
            .await
    }

    async fn upsert(&self, subscription: &Subscription) -> Result<(), StoreError> {
        self.faults
            .around(Op::Upsert, self.inner.upsert(subscription))
            .await
    }

    async fn apply(&self, change: &SubscriptionChange) -> Result<ApplyOutcome, StoreError> {
        self.faults
            .around(Op::Apply, self.inner.apply(change))
            .await
    }

    async fn purge_event_ids(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.faults
            .around(Op::PurgeEventIds, self.inner.purge_event_ids(before))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::MemorySessionStore;

    #[tokio::test]
    async fn the_script_plays_first_then_the_random_fault_by_its_probability() {
        let faults = Faults::new(42);
        let store = FaultySessionStore::new(MemorySessionStore::new(), faults.clone());
        let id = crate::session::SessionToken::generate()
            .expect("os randomness")
            .id();
        faults.script(Op::Load, [Fault::Error, Fault::Malformed, Fault::Pass]);
        let kinds: Vec<_> = [
            store.load(&id).await.map_err(|e| e.kind()),
            store.load(&id).await.map_err(|e| e.kind()),
            store.load(&id).await.map_err(|e| e.kind()),
        ]
        .into();
        assert_eq!(
            kinds,
            [
                Err(crate::StoreErrorKind::Backend),
                Err(crate::StoreErrorKind::Serialization),
                Ok(None)
            ]
        );
        faults.random(Op::Load, Fault::Error, 0.25);
        let mut failed = 0;
        for _ in 0..4000 {
            failed += usize::from(store.load(&id).await.is_err());
        }
        assert!((800..1200).contains(&failed), "about a quarter: {failed}");
        assert_eq!(faults.calls(Op::Load), 4003);
        assert_eq!(faults.calls(Op::Extend), 0);
        faults.heal();
        assert_eq!(store.load(&id).await.ok(), Some(None));
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_and_hang_never_answers() {
        let faults = Faults::new(1);
        let store = FaultySessionStore::new(MemorySessionStore::new(), faults.clone());
        let id = crate::session::SessionToken::generate()
            .expect("os randomness")
            .id();
        faults.script(
            Op::Delete,
            [Fault::Latency(Duration::from_secs(3)), Fault::Hang],
        );
        let started = tokio::time::Instant::now();
        assert_eq!(store.delete(&id).await.ok(), Some(false));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        let hung = tokio::time::timeout(Duration::from_secs(3600), store.delete(&id)).await;
        assert!(hung.is_err(), "a hang never answers");
    }
}
