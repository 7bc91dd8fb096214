//! Persistent stores and invalidation channels, one module per backend,
//! each behind the Cargo feature of the same name.
//!
//! The in-memory stores stay beside their traits
//! ([`MemorySessionStore`](crate::session::MemorySessionStore),
//! [`MemoryInvalidationChannel`](crate::invalidation::MemoryInvalidationChannel));
//! everything about one database (its stores, its channel, its scripts or
//! SQL) sits in its module here, so "how does Redis work here?" is answered
//! by one folder.

#[cfg(feature = "redis")]
pub mod redis;
