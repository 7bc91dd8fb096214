//! Coalesces concurrent work on one key into one execution.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::error::StoreError;

type Outcome<T> = Result<T, StoreError>;
type Flight<T> = Shared<BoxFuture<'static, Outcome<T>>>;
/// Keyed by client input (a presented token, an organization id): hashed
/// with a per-process random seed, so no client can pick keys that collide.
type Flights<K, T> = HashMap<K, (u64, Flight<T>), foldhash::quality::RandomState>;

/// Runs at most one store operation per key at a time; callers that arrive
/// while it runs await the same result. At most `max_in_flight` keys may
/// be in flight at once: past that, a new key is refused at once
/// ([`StoreError::overloaded`]) instead of queueing on a store that is
/// already too slow (a flood of distinct tokens while it lags).
///
/// The entry leaves the map only after the work finished, so work that
/// publishes its result (into a cache) before finishing is seen by every
/// caller that arrives afterwards. Under a Tokio runtime the work runs as
/// its own task, so it finishes (and leaves the map) even when every caller
/// gave up on it, for example on a client disconnect.
pub(crate) struct SingleFlight<K, T: Clone> {
    in_flight: Arc<Mutex<Flights<K, T>>>,
    next_id: std::sync::atomic::AtomicU64,
    max_in_flight: usize,
    /// The store the flights call, for the flights-in-progress gauge.
    store: &'static str,
}

impl<K, T> SingleFlight<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(max_in_flight: usize, store: &'static str) -> Self {
        Self {
            in_flight: Arc::new(Mutex::new(HashMap::default())),
            next_id: std::sync::atomic::AtomicU64::new(0),
            max_in_flight: max_in_flight.max(1),
            store,
        }
    }

    /// Joins the flight for `key`, or starts one with `start()`.
    pub(crate) fn run(
        &self,
        key: K,
        start: impl FnOnce() -> BoxFuture<'static, Outcome<T>>,
    ) -> Flight<T> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, flight)) = in_flight.get(&key) {
            return flight.clone();
        }
        if in_flight.len() >= self.max_in_flight {
            return futures_util::future::ready(Err(StoreError::overloaded()))
                .boxed()
                .shared();
        }
        let work = start();
        let map = Arc::clone(&self.in_flight);
        let landing_key = key.clone();
        let store = self.store;
        crate::metrics::flights(store, 1.0);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let landed = async move {
            let value = work.await;
            crate::metrics::flights(store, -1.0);
            let mut in_flight = map.lock().unwrap_or_else(PoisonError::into_inner);
            // Remove this flight only: after `forget`, a newer one may hold the key.
            if in_flight
                .get(&landing_key)
                .is_some_and(|(held, _)| *held == id)
            {
                in_flight.remove(&landing_key);
            }
            value
        };
        let flight = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let task = runtime.spawn(landed);
                async move {
                    task.await
                        .unwrap_or_else(|failed| Err(StoreError::backend(failed)))
                }
                .boxed()
                .shared()
            }
            // No runtime to spawn on: the callers drive the work themselves.
            Err(_) => landed.boxed().shared(),
        };
        in_flight.insert(key, (id, flight.clone()));
        flight
    }

    /// Lets callers that arrive from now on start a new flight for `key`
    /// (the running one still completes for those already waiting on it).
    pub(crate) fn forget(&self, key: &K) {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// [`forget`](Self::forget) for every key.
    pub(crate) fn forget_all(&self) {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_execution_and_the_entry_is_removed() {
        let flights = Arc::new(SingleFlight::<u32, usize>::new(100, "test"));
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let gate = gate.shared();
        let mut waiters = Vec::new();
        for _ in 0..50 {
            let runs = Arc::clone(&runs);
            let gate = gate.clone();
            waiters.push(flights.run(7, move || {
                async move {
                    let _ = gate.await;
                    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
                }
                .boxed()
            }));
        }
        assert_eq!(flights.len(), 1);
        release.send(()).expect("gate receiver alive");
        for waiter in waiters {
            assert_eq!(waiter.await.expect("no store error"), 1);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_flight_every_caller_abandoned_still_finishes_and_leaves_the_map() {
        let flights = SingleFlight::<u32, u32>::new(100, "test");
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel::<()>();
        let abandoned = flights.run(9, move || {
            async move {
                let _ = gate.await;
                let _ = finished.send(());
                Ok(9)
            }
            .boxed()
        });
        drop(abandoned);
        assert_eq!(flights.len(), 1);
        release.send(()).expect("gate receiver alive");
        done.await.expect("the work ran to the end");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            flights.len(),
            0,
            "an abandoned flight must not stay in the map"
        );
    }

    #[tokio::test]
    async fn after_forget_a_new_flight_starts_and_the_old_one_does_not_remove_it() {
        let flights = SingleFlight::<u32, u32>::new(100, "test");
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let old = flights.run(1, move || {
            async move {
                let _ = gate.await;
                Ok(1)
            }
            .boxed()
        });
        flights.forget(&1);
        let (release_new, gate_new) = tokio::sync::oneshot::channel::<()>();
        let new = flights.run(1, move || {
            async move {
                let _ = gate_new.await;
                Ok(2)
            }
            .boxed()
        });
        release.send(()).expect("gate receiver alive");
        assert_eq!(old.await.expect("no store error"), 1);
        assert_eq!(flights.len(), 1, "the newer flight is still registered");
        assert!(flights.run(1, || async { Ok(3) }.boxed()).peek().is_none());
        release_new.send(()).expect("gate receiver alive");
        assert_eq!(new.await.expect("no store error"), 2);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn past_the_cap_a_new_key_is_refused_but_a_flying_one_is_joined() {
        let flights = SingleFlight::<u32, u32>::new(2, "test");
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let gate = gate.shared();
        let mut flying = Vec::new();
        for key in [1, 2] {
            let gate = gate.clone();
            flying.push(flights.run(key, move || {
                async move {
                    let _ = gate.await;
                    Ok(key)
                }
                .boxed()
            }));
        }
        let refused = flights.run(3, || async { Ok(3) }.boxed());
        let error = refused.await.expect_err("a third key is refused");
        assert_eq!(error.kind(), crate::StoreErrorKind::Overloaded);
        assert_eq!(flights.len(), 2, "the refusal registered nothing");
        let joined = flights.run(1, || async { Ok(100) }.boxed());
        release.send(()).expect("gate receiver alive");
        assert_eq!(joined.await.expect("no store error"), 1, "joined, not run");
        for (flight, key) in flying.into_iter().zip([1, 2]) {
            assert_eq!(flight.await.expect("no store error"), key);
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(flights.len(), 0);
        assert_eq!(
            flights.run(3, || async { Ok(3) }.boxed()).await.ok(),
            Some(3)
        );
    }
}
