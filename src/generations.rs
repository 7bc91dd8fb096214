//! Change counters that let a cache tell whether what it just read may
//! already be out of date.

use std::sync::atomic::{AtomicU64, Ordering};

const STRIPES: usize = 64;

/// One counter per stripe of keys: a revocation or invalidation bumps the
/// stripe of its key, and a load caches what it read only if its stripe did
/// not move meanwhile. Striping keeps a change to one key from stopping
/// concurrent loads of unrelated keys from being cached.
pub(crate) struct Generations {
    stripes: [AtomicU64; STRIPES],
}

impl Generations {
    pub(crate) fn new() -> Self {
        Self {
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn stripe(&self, key_hash: u64) -> &AtomicU64 {
        // `STRIPES` is a power of two: the low bits pick the stripe.
        &self.stripes[(key_hash as usize) & (STRIPES - 1)]
    }

    /// The current generation of the key hashing to `key_hash`.
    pub(crate) fn current(&self, key_hash: u64) -> u64 {
        self.stripe(key_hash).load(Ordering::SeqCst)
    }

    /// Marks a change to the key hashing to `key_hash`.
    pub(crate) fn bump(&self, key_hash: u64) {
        self.stripe(key_hash).fetch_add(1, Ordering::SeqCst);
    }

    /// Marks a change to every key (when the keys changed are unknown).
    pub(crate) fn bump_all(&self) {
        for stripe in &self.stripes {
            stripe.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_moves_only_its_stripe_and_bump_all_moves_every_one() {
        let generations = Generations::new();
        let before: Vec<u64> = (0..STRIPES as u64)
            .map(|k| generations.current(k))
            .collect();
        generations.bump(3);
        assert_eq!(generations.current(3), before[3] + 1);
        assert_eq!(
            generations.current(3 + STRIPES as u64),
            before[3] + 1,
            "same stripe"
        );
        assert_eq!(generations.current(4), before[4]);
        generations.bump_all();
        assert_eq!(generations.current(4), before[4] + 1);
        assert_eq!(generations.current(3), before[3] + 2);
    }
}
