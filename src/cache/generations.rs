//! Change counters that let a cache tell whether what it just read may
//! already be out of date.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use moka::ops::compute::{CompResult, Op};

const STRIPES: usize = 64;

/// Two counters per stripe of keys.
///
/// * The load counter: a revocation or invalidation bumps the stripe of its
///   key *before* removing it, and a load caches what it read only if its
///   stripe did not move meanwhile.
/// * The hot counter: bumped *after* a removal, and after a renewed copy
///   replaced an older one; a per-thread hot-table slot (see `crate::hot`)
///   answers only while its stripe's hot counter is where it was when the
///   slot's entry was fetched.
///
/// Two counters, because a renewal must retire the hot copies of the old
/// expiry without making a load that raced it drop the renewed entry from
/// the cache (which would make the next due request write again). Striping
/// keeps a change to one key from disturbing unrelated keys.
pub(crate) struct Generations {
    stripes: [AtomicU64; STRIPES],
    hot_stripes: [AtomicU64; STRIPES],
}

/// The stripe of a key: the top six bits of its hash (multiplicative
/// hashes are best mixed at the top).
fn stripe_index(key_hash: u64) -> usize {
    (key_hash >> 58) as usize
}

impl Generations {
    pub(crate) fn new() -> Self {
        Self {
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            hot_stripes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn stripe(&self, key_hash: u64) -> &AtomicU64 {
        &self.stripes[stripe_index(key_hash)]
    }

    /// The hot counter of the key hashing to `key_hash`: read before
    /// fetching an entry for a hot table, compared on every use.
    #[inline]
    pub(crate) fn hot_current(&self, key_hash: u64) -> u64 {
        self.hot_stripes[stripe_index(key_hash)].load(Ordering::SeqCst)
    }

    /// A newer copy of the key replaced an older one in the cache: hot
    /// tables stop answering with the older one.
    pub(crate) fn replaced(&self, key_hash: u64) {
        self.hot_stripes[stripe_index(key_hash)].fetch_add(1, Ordering::SeqCst);
    }

    /// The current generation of the key hashing to `key_hash`.
    pub(crate) fn current(&self, key_hash: u64) -> u64 {
        self.stripe(key_hash).load(Ordering::SeqCst)
    }

    /// Marks a change to the key hashing to `key_hash`.
    pub(crate) fn bump(&self, key_hash: u64) {
        self.stripe(key_hash).fetch_add(1, Ordering::SeqCst);
    }

    /// Marks a change to every key (when the keys changed are unknown),
    /// on both counters.
    pub(crate) fn bump_all(&self) {
        for stripe in self.stripes.iter().chain(&self.hot_stripes) {
            stripe.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Removes `key` from `cache` so that no copy of it is used again.
    ///
    /// The load counter moves before the removal (a load racing it does not
    /// put what it read back, see [`insert_unless_changed`](Self::insert_unless_changed))
    /// and the hot counter after it (a hot-table slot filled from the
    /// removed copy read its counter before that copy was fetched, so
    /// before this bump, and no longer matches).
    pub(crate) fn remove<K, Q, V, S>(
        &self,
        cache: &moka::sync::Cache<K, V, S>,
        key: &Q,
        key_hash: u64,
    ) where
        K: Hash + Eq + Send + Sync + 'static + std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone + Send + Sync + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        self.bump(key_hash);
        cache.invalidate(key);
        self.replaced(key_hash);
    }

    /// Caches `value` for `key` unless its stripe moved since `seen` (when
    /// it was read from the store).
    ///
    /// The entry goes in unconfirmed and is confirmed only if no change
    /// happened meanwhile; a change that comes after the insert invalidates
    /// it itself. So no reader ever trusts a copy read before a revocation
    /// or invalidation that has already returned.
    ///
    /// A value older than the cached one ([`Confirmed::is_older_than`], say
    /// a load that read the store before a renewal landed) is not put over
    /// it: the check and the insert are one atomic step of moka's entry.
    ///
    /// Returns the copy to answer with: the cached one when it was kept as
    /// newer and is confirmed, otherwise `value`.
    pub(crate) fn insert_unless_changed<K, V, S>(
        &self,
        cache: &moka::sync::Cache<K, Arc<V>, S>,
        key: K,
        key_hash: u64,
        value: Arc<V>,
        seen: u64,
    ) -> Arc<V>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Confirmed + Send + Sync + 'static,
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        if self.current(key_hash) != seen {
            // Raced a change: drop whatever copy is cached, too.
            cache.invalidate(&key);
            return value;
        }
        let outcome = cache
            .entry(key.clone())
            .and_compute_with(|cached| match cached {
                Some(cached) if value.is_older_than(cached.value()) => Op::Nop,
                _ => Op::Put(Arc::clone(&value)),
            });
        if let CompResult::Unchanged(kept) = outcome {
            // Older than what is cached: not inserted, nothing to confirm.
            let kept = kept.into_value();
            return if kept.confirmed().load(Ordering::Acquire) {
                kept
            } else {
                value
            };
        }
        if self.current(key_hash) == seen {
            value.confirmed().store(true, Ordering::Release);
        } else {
            cache.invalidate(&key);
        }
        value
    }
}

/// A cached value with the flag [`Generations::insert_unless_changed`] sets
/// once nothing raced its insert; readers trust only confirmed values.
pub(crate) trait Confirmed {
    fn confirmed(&self) -> &AtomicBool;

    /// Whether this value is older information than `cached`, so that it
    /// must not replace it. By default nothing is older: a newer insert
    /// always wins.
    fn is_older_than(&self, _cached: &Self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_moves_only_its_stripe_and_bump_all_moves_every_one() {
        let generations = Generations::new();
        let key = |stripe: u64, low: u64| (stripe << 58) | low;
        generations.bump(key(3, 0));
        assert_eq!(generations.current(key(3, 0)), 1);
        assert_eq!(generations.current(key(3, 12_345)), 1, "same stripe");
        assert_eq!(generations.current(key(4, 0)), 0);
        generations.bump_all();
        assert_eq!(generations.current(key(4, 0)), 1);
        assert_eq!(generations.current(key(3, 0)), 2);
        assert_eq!(generations.current(key(63, 7)), 1);
    }

    struct Versioned {
        version: u64,
        confirmed: AtomicBool,
    }

    impl Confirmed for Versioned {
        fn confirmed(&self) -> &AtomicBool {
            &self.confirmed
        }

        fn is_older_than(&self, cached: &Self) -> bool {
            self.version < cached.version
        }
    }

    fn versioned(version: u64) -> Arc<Versioned> {
        Arc::new(Versioned {
            version,
            confirmed: AtomicBool::new(false),
        })
    }

    #[test]
    fn an_older_value_never_replaces_a_newer_one() {
        let generations = Generations::new();
        let cache: moka::sync::Cache<u64, Arc<Versioned>> = moka::sync::Cache::new(10);
        let (two, one, three) = (versioned(2), versioned(1), versioned(3));
        generations.insert_unless_changed(&cache, 7, 7, Arc::clone(&two), 0);
        let answer = generations.insert_unless_changed(&cache, 7, 7, Arc::clone(&one), 0);
        assert_eq!(answer.version, 2, "the newer cached copy answers");
        assert_eq!(cache.get(&7).map(|cached| cached.version), Some(2));
        assert!(two.confirmed.load(Ordering::Acquire));
        assert!(!one.confirmed.load(Ordering::Acquire), "never cached");
        generations.insert_unless_changed(&cache, 7, 7, Arc::clone(&three), 0);
        assert_eq!(cache.get(&7).map(|cached| cached.version), Some(3));
        assert!(three.confirmed.load(Ordering::Acquire));
    }

    #[test]
    fn a_load_that_raced_a_change_is_not_cached() {
        let generations = Generations::new();
        let cache: moka::sync::Cache<u64, Arc<Versioned>> = moka::sync::Cache::new(10);
        let seen = generations.current(7);
        generations.bump(7);
        let value = versioned(1);
        generations.insert_unless_changed(&cache, 7, 7, Arc::clone(&value), seen);
        assert!(cache.get(&7).is_none());
        assert!(!value.confirmed.load(Ordering::Acquire));
    }

    #[test]
    fn a_replacement_moves_only_the_hot_counter_and_bump_all_moves_both() {
        let generations = Generations::new();
        let key = |stripe: u64| stripe << 58;
        generations.replaced(key(5));
        assert_eq!(generations.hot_current(key(5)), 1);
        assert_eq!(generations.current(key(5)), 0, "loads are not disturbed");
        assert_eq!(generations.hot_current(key(6)), 0);
        generations.bump(key(6));
        assert_eq!(generations.hot_current(key(6)), 0);
        generations.bump_all();
        assert_eq!(generations.hot_current(key(6)), 1);
        assert_eq!(generations.current(key(6)), 2);
    }
}
