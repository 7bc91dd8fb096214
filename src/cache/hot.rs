//! A small per-thread table of recently used cache entries, in front of
//! the moka caches.
//!
//! A moka `get` costs about 120 ns here (a clock read, an epoch-pinned
//! lookup, and a read record for its eviction policy); a request through
//! both layers makes two. The entries themselves are immutable `Arc`s whose
//! freshness the layers judge on their own clock, so a thread may keep the
//! last entries it was given and use them again without asking moka, as
//! long as nothing invalidated them since:
//!
//! - each slot remembers the hot counter of its key's stripe
//!   ([`Generations::hot_current`]), read *before* the entry was fetched;
//!   every removal bumps it after the removal (see [`Generations::remove`]),
//!   and a session renewal once the renewed copy is cached
//!   ([`Generations::replaced`]), so a slot filled with an entry that was
//!   removed or renewed no longer matches (and is dropped when next looked
//!   at);
//! - the callers still check the entry's own freshness (cache TTL, expiry,
//!   the "trusted" flag) on every use, exactly as for a moka hit.
//!
//! So a revocation or an invalidation is seen at once by every thread, and
//! everything else is at most as old as a moka hit could be. Slots hold
//! `Weak` pointers: once moka (and the requests under way) let go of an
//! entry, its payload is freed, even in the tables of threads that never
//! run again, so no revoked session's personal data lingers in memory. Tables are
//! direct-mapped, 4096 slots per thread and kind of entry; entries
//! of one layer are told from another's by the owner id each cache gets
//! when it is built.
//!
//! A key takes a slot only the second time in a row that it is offered
//! there (the slot remembers the last key offered): when requests cycle
//! through more keys than the table holds, a miss costs a probe and one
//! write, not the replacement (and drop) of an entry.
//!
//! [`Generations`]: crate::cache::generations::Generations
//! [`Generations::remove`]: crate::cache::generations::Generations::remove
//! [`Generations::hot_current`]: crate::cache::generations::Generations::hot_current
//! [`Generations::replaced`]: crate::cache::generations::Generations::replaced

use std::borrow::Borrow;
use std::cell::RefCell;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::LocalKey;

use crate::cache::generations::Generations;

/// Slots per thread and kind of entry (a power of two): enough that a
/// thread serving a thousand sessions in turn keeps most of them
/// (`benches/contention.rs`: 1.9 M req/s with 64 slots, 3.3 M with 4096).
/// A session slot is 88 bytes, so a thread's session table is 352 KiB,
/// allocated on its first use.
const SLOTS: usize = 4096;

/// One cache's way into the per-thread tables of its kind of entry.
pub(crate) struct HotFront<K: 'static, V: 'static> {
    tables: &'static LocalKey<RefCell<HotTable<K, V>>>,
    /// A process-unique id, so that tables shared by every layer of a
    /// thread never answer one layer with another's entry.
    owner: u64,
}

impl<K, V> HotFront<K, V> {
    pub(crate) fn new(tables: &'static LocalKey<RefCell<HotTable<K, V>>>) -> Self {
        static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);
        Self {
            tables,
            owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The hot path's lookup of `key` (hashing to `key_hash`): a copy that
    /// is `usable` as is (`Ok`), from this thread's table or else `cache`,
    /// or whatever `cache` holds, for the slow path (`Err`).
    ///
    /// The hot counter is read before anything is fetched, so a removal or
    /// replacement that comes after it retires what this call offers to the
    /// table. `owned_key` makes the table's key from the cached value.
    #[inline]
    pub(crate) fn lookup<Q, S>(
        &self,
        cache: &moka::sync::Cache<K, Arc<V>, S>,
        generations: &Generations,
        key_hash: u64,
        key: &Q,
        owned_key: impl FnOnce(&Arc<V>) -> K,
        usable: impl Fn(&V) -> bool,
    ) -> Result<Arc<V>, Option<Arc<V>>>
    where
        K: Borrow<Q> + Hash + Eq + Send + Sync,
        Q: Hash + Eq + ?Sized,
        V: Send + Sync,
        S: BuildHasher + Clone + Send + Sync + 'static,
    {
        let generation = generations.hot_current(key_hash);
        let hot = self.tables.try_with(|table| {
            table
                .borrow_mut()
                .get(self.owner, key_hash, key, generation, &usable)
        });
        if let Ok(Some(value)) = hot {
            return Ok(value);
        }
        match cache.get(key) {
            Some(value) if usable(&value) => {
                // Unavailable only while the thread exits: then just skip.
                let _ = self.tables.try_with(|table| {
                    let owned_key = || owned_key(&value);
                    table
                        .borrow_mut()
                        .offer(self.owner, key_hash, owned_key, generation, &value);
                });
                Ok(value)
            }
            other => Err(other),
        }
    }
}

struct Slot<K, V> {
    owner: u64,
    key_hash: u64,
    key: K,
    generation: u64,
    /// Weak: the cache (and requests under way) own entries, a thread's
    /// table only points at them. An entry the cache dropped (revoked,
    /// invalidated, evicted) is freed with its payload even if this thread
    /// never looks at the slot again.
    value: Weak<V>,
}

struct Place<K, V> {
    slot: Option<Slot<K, V>>,
    /// The tag of the last key offered here (see [`HotTable::offer`]).
    last_offered: u64,
}

/// One thread's recently used entries of one kind.
pub(crate) struct HotTable<K, V> {
    places: Vec<Place<K, V>>,
}

impl<K, V> HotTable<K, V> {
    /// An empty table; allocates on the first [`offer`](Self::offer).
    pub(crate) const fn new() -> Self {
        Self { places: Vec::new() }
    }

    /// A key's tag: its hash mixed with the owner; the top bits pick its
    /// place.
    fn tag(owner: u64, key_hash: u64) -> u64 {
        // Key hashes are mixed at the top bits already, owners are small:
        // spread the owner.
        key_hash ^ owner.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn index(tag: u64) -> usize {
        (tag >> (64 - SLOTS.trailing_zeros())) as usize
    }

    /// The entry of `owner` for `key`, if this thread has one that was
    /// fetched while the key's stripe was at `generation`, and `usable`
    /// says it may answer. An entry of the key from an older generation
    /// (revoked, invalidated or renewed since) is dropped on the spot, so
    /// that a revoked session's data does not linger here.
    #[inline]
    pub(crate) fn get<Q>(
        &mut self,
        owner: u64,
        key_hash: u64,
        key: &Q,
        generation: u64,
        usable: impl FnOnce(&V) -> bool,
    ) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        let place = self
            .places
            .get_mut(Self::index(Self::tag(owner, key_hash)))?;
        let slot = place.slot.as_ref()?;
        if slot.owner != owner || slot.key_hash != key_hash || slot.key.borrow() != key {
            return None;
        }
        let value = match slot.value.upgrade() {
            Some(value) if slot.generation == generation => value,
            _ => {
                place.slot = None;
                return None;
            }
        };
        usable(&value).then_some(value)
    }

    /// Offers `value` for `key`, fetched while the key's stripe was at
    /// `generation`. It takes its place if the last offer there was for the
    /// same key; otherwise the place only remembers this offer, and nothing
    /// is cloned.
    pub(crate) fn offer(
        &mut self,
        owner: u64,
        key_hash: u64,
        key: impl FnOnce() -> K,
        generation: u64,
        value: &Arc<V>,
    ) {
        if self.places.is_empty() {
            self.places.resize_with(SLOTS, || Place {
                slot: None,
                last_offered: 0,
            });
        }
        let tag = Self::tag(owner, key_hash);
        let place = &mut self.places[Self::index(tag)];
        if place.last_offered != tag {
            place.last_offered = tag;
            return;
        }
        place.slot = Some(Slot {
            owner,
            key_hash,
            key: key(),
            generation,
            value: Arc::downgrade(value),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers twice in a row, so that the key takes its place; returns the
    /// entry, which the caller holds as the cache would.
    #[must_use]
    fn put(
        table: &mut HotTable<String, u32>,
        key_hash: u64,
        key: &str,
        generation: u64,
        value: u32,
    ) -> Arc<u32> {
        let value = Arc::new(value);
        for _ in 0..2 {
            table.offer(1, key_hash, || key.to_owned(), generation, &value);
        }
        value
    }

    #[test]
    fn a_session_slot_is_as_large_as_documented() {
        // `SLOTS`' docs: 88 bytes a session slot, 352 KiB a table. (The
        // value type does not count: a slot holds a `Weak` to it.)
        let place = std::mem::size_of::<Place<crate::session::SessionToken, u8>>();
        assert_eq!(place, 88);
        assert_eq!(place * SLOTS, 352 * 1024);
    }

    #[test]
    fn a_thousand_keys_used_in_turn_are_mostly_answered_from_the_table() {
        let mut table: HotTable<String, u32> = HotTable::new();
        let keys: Vec<(u64, String, Arc<u32>)> = (0..1000u32)
            .map(|n| {
                let hash = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                (hash, format!("key {n}"), Arc::new(n))
            })
            .collect();
        // Requests cycle through all of them: each is offered once a round.
        for _ in 0..2 {
            for (hash, key, value) in &keys {
                table.offer(1, *hash, || key.clone(), 0, value);
            }
        }
        let answered = keys
            .iter()
            .filter(|(hash, key, _)| table.get(1, *hash, key.as_str(), 0, |_| true).is_some())
            .count();
        // Direct-mapped: a key whose place no other key shares gets it,
        // about e^(-1000/4096) = 78 % of them.
        assert!(answered >= 700, "{answered} of 1000");
    }

    #[test]
    fn answers_only_the_same_owner_key_and_generation() {
        let mut table: HotTable<String, u32> = HotTable::new();
        let always = |_: &u32| true;
        assert!(table.get(1, 7, "a", 0, always).is_none(), "empty");
        let _cached = put(&mut table, 7, "a", 3, 10);
        assert_eq!(table.get(1, 7, "a", 3, always).as_deref(), Some(&10));
        assert!(table.get(2, 7, "a", 3, always).is_none(), "other owner");
        assert!(table.get(1, 7, "b", 3, always).is_none(), "other key");
        assert!(table.get(1, 7, "a", 3, |_| false).is_none(), "not usable");
        assert_eq!(table.get(1, 7, "a", 3, always).as_deref(), Some(&10));
        assert!(
            table.get(1, 7, "a", 4, always).is_none(),
            "invalidated since"
        );
    }

    #[test]
    fn an_entry_from_an_older_generation_is_dropped_when_found() {
        let mut table: HotTable<String, u32> = HotTable::new();
        let value = Arc::new(10);
        for _ in 0..2 {
            table.offer(1, 7, || "a".to_owned(), 3, &value);
        }
        assert_eq!(Arc::weak_count(&value), 1, "pointed at by the table");
        assert!(table.get(1, 7, "a", 4, |_| true).is_none());
        assert_eq!(Arc::weak_count(&value), 0, "dropped, not kept");
        assert!(table.get(1, 7, "a", 3, |_| true).is_none());
    }

    #[test]
    fn an_entry_the_cache_dropped_is_freed_without_the_thread_looking() {
        let mut table: HotTable<String, Vec<u8>> = HotTable::new();
        let payload = Arc::new(vec![7u8; 1024]);
        for _ in 0..2 {
            table.offer(1, 7, || "a".to_owned(), 3, &payload);
        }
        let watch = Arc::downgrade(&payload);
        assert!(
            table.get(1, 7, "a", 3, |_| true).is_some(),
            "served while cached"
        );
        // The cache lets go (a revocation); this thread never looks again.
        drop(payload);
        assert!(watch.upgrade().is_none(), "the payload is freed at once");
        assert!(table.get(1, 7, "a", 3, |_| true).is_none());
    }

    #[test]
    fn a_key_takes_its_place_only_on_the_second_offer_in_a_row() {
        let mut table: HotTable<String, u32> = HotTable::new();
        let always = |_: &u32| true;
        let (ten, twenty) = (Arc::new(10), Arc::new(20));
        // Hashes 7 and 8 share their top bits, so their place. Taking
        // turns, neither is admitted, and nothing is cloned.
        for _ in 0..3 {
            table.offer(1, 7, || "a".to_owned(), 0, &ten);
            table.offer(1, 8, || "b".to_owned(), 0, &twenty);
        }
        assert!(table.get(1, 7, "a", 0, always).is_none());
        assert!(table.get(1, 8, "b", 0, always).is_none());
        assert_eq!(Arc::weak_count(&ten), 0);
        // Twice in a row: admitted; later a newer key takes the place.
        let _first = put(&mut table, 7, "a", 0, 10);
        assert_eq!(table.get(1, 7, "a", 0, always).as_deref(), Some(&10));
        let _second = put(&mut table, 8, "b", 0, 20);
        assert!(table.get(1, 7, "a", 0, always).is_none());
        assert_eq!(table.get(1, 8, "b", 0, always).as_deref(), Some(&20));
    }
}
