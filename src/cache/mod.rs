//! The cache machinery both layers share, and the invalidation channel
//! drives.
//!
//! A lookup goes, fastest first:
//!
//! 1. **the thread's hot table** ([`hot`]): 4096 entries per thread
//!    and kind, used without touching moka while their stripe's *hot
//!    counter* has not moved since they were fetched;
//! 2. **the moka cache**: bounded by capacity, entries judged fresh on the
//!    layer's clock (cache TTL; for subscriptions, positive and negative
//!    TTLs), and trusted only once *confirmed* (no change raced their
//!    insert);
//! 3. **single flight** ([`single_flight`]): concurrent misses of one key
//!    become one store read (and concurrent due renewals one store write);
//! 4. **the store**.
//!
//! What invalidates what, through [`generations::Generations`] (two counters per
//! stripe of 1/64 of the keys):
//!
//! * a revocation or invalidation (local, or received from another
//!   instance) bumps the stripe's *load* counter, removes the moka entry,
//!   then bumps the *hot* counter: a load that read the store before it
//!   does not confirm what it read, and no hot table answers with the
//!   removed copy;
//! * a renewal bumps only the hot counter once the renewed copy is cached
//!   (a racing load must not drop it), and cache inserts never replace a
//!   copy with an older one;
//! * when the keys are unknown (a revoked session that was not cached
//!   here, a reconnection of the invalidation channel after messages may
//!   have been lost), every stripe is bumped, and after a reconnection
//!   the whole moka cache is dropped.
//!
//! Revocations by session id find the cached entry through the session
//! core's id index (the cache and hot tables are keyed by token).

pub(crate) mod generations;
pub(crate) mod hot;
pub(crate) mod single_flight;
