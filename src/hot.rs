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
//! - each slot remembers the invalidation [`Generations`] of its key's
//!   stripe, read *before* the entry was fetched; every removal bumps the
//!   stripe before and after it (see [`Generations::remove`]), so a slot
//!   filled with an entry that was removed no longer matches;
//! - the callers still check the entry's own freshness (cache TTL, expiry,
//!   the "trusted" flag) on every use, exactly as for a moka hit.
//!
//! So a revocation or an invalidation is seen at once by every thread, and
//! everything else is at most as old as a moka hit could be. Tables are
//! direct-mapped (a new entry takes its slot), a few dozen slots per thread
//! and kind of entry; entries of one layer are told from another's by the
//! owner id each cache gets when it is built.
//!
//! [`Generations`]: crate::generations::Generations
//! [`Generations::remove`]: crate::generations::Generations::remove

use std::borrow::Borrow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Slots per thread and kind of entry (a power of two).
const SLOTS: usize = 64;

/// A process-unique id for one cache, so that tables shared by every
/// layer of a thread never answer one layer with another's entry.
pub(crate) fn new_owner_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

struct Slot<K, V> {
    owner: u64,
    key_hash: u64,
    key: K,
    generation: u64,
    value: Arc<V>,
}

/// One thread's recently used entries of one kind.
pub(crate) struct HotTable<K, V> {
    slots: Vec<Option<Slot<K, V>>>,
}

impl<K, V> HotTable<K, V> {
    /// An empty table; allocates on the first [`put`](Self::put).
    pub(crate) const fn new() -> Self {
        Self { slots: Vec::new() }
    }

    fn index(owner: u64, key_hash: u64) -> usize {
        // Both inputs are mixed already at the top bits (key hashes) or
        // small (owners): spread the owner, keep the top bits.
        let mixed = key_hash ^ owner.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> (64 - SLOTS.trailing_zeros())) as usize
    }

    /// The entry of `owner` for `key`, if this thread has one that was
    /// fetched while the key's stripe was at `generation`, and `usable`
    /// says it may answer.
    #[inline]
    pub(crate) fn get<Q>(
        &self,
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
        let slot = self.slots.get(Self::index(owner, key_hash))?.as_ref()?;
        let hit = slot.owner == owner
            && slot.key_hash == key_hash
            && slot.generation == generation
            && slot.key.borrow() == key
            && usable(&slot.value);
        hit.then(|| Arc::clone(&slot.value))
    }

    /// Remembers `value` for `key`; `generation` is the key's stripe as
    /// read before `value` was fetched.
    pub(crate) fn put(
        &mut self,
        owner: u64,
        key_hash: u64,
        key: K,
        generation: u64,
        value: Arc<V>,
    ) {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        self.slots[Self::index(owner, key_hash)] = Some(Slot {
            owner,
            key_hash,
            key,
            generation,
            value,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_the_same_owner_key_and_generation() {
        let mut table: HotTable<String, u32> = HotTable::new();
        let always = |_: &u32| true;
        assert!(table.get(1, 7, "a", 0, always).is_none(), "empty");
        table.put(1, 7, "a".to_owned(), 3, Arc::new(10));
        assert_eq!(table.get(1, 7, "a", 3, always).as_deref(), Some(&10));
        assert!(table.get(2, 7, "a", 3, always).is_none(), "other owner");
        assert!(table.get(1, 7, "b", 3, always).is_none(), "other key");
        assert!(
            table.get(1, 7, "a", 4, always).is_none(),
            "invalidated since"
        );
        assert!(table.get(1, 7, "a", 3, |_| false).is_none(), "not usable");
    }

    #[test]
    fn a_newer_entry_takes_the_slot() {
        let mut table: HotTable<String, u32> = HotTable::new();
        let always = |_: &u32| true;
        table.put(1, 7, "a".to_owned(), 0, Arc::new(10));
        table.put(1, 7, "b".to_owned(), 0, Arc::new(20));
        assert!(table.get(1, 7, "a", 0, always).is_none());
        assert_eq!(table.get(1, 7, "b", 0, always).as_deref(), Some(&20));
    }
}
