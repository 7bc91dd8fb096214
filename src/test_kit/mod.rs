//! The conformance kit: the tests every store and channel in this crate
//! passes, for the author of a store or channel for another database.
//!
//! Each behaviour is a plain async function named after it that takes a
//! fresh store (or two channels) and panics, naming the behaviour, when
//! the store gets it wrong. A store author's test file is a list of
//! one-line calls, or one call of a whole suite:
//!
//! ```
//! use tower_saas_guard::session::MemorySessionStore;
//! use tower_saas_guard::subscription::MemorySubscriptionStore;
//! use tower_saas_guard::test_kit;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Each behaviour gets a store of its own from the constructor.
//! test_kit::session_store_suite(|| async { MemorySessionStore::new() }).await;
//! test_kit::subscription_store_suite(|| async { MemorySubscriptionStore::new() }).await;
//! // Or one behaviour at a time:
//! test_kit::extend_moves_expiry_forward_only(MemorySessionStore::new()).await;
//! # }
//! ```
//!
//! Records are written with random ids and times relative to the moment
//! the kit first ran (whole seconds, never in the wall clock's past, for
//! stores whose keys expire on the wall clock), and the functions pass
//! their own `now` relative to it: no behaviour depends on the wall clock
//! moving, and stores that share a database across calls (distinct tables
//! or prefixes are still better) see distinct organizations and subjects
//! in each call.
//!
//! Besides the suites: [`malformed_session_is_an_error`] and
//! [`malformed_subscription_is_an_error`] take a hook that writes a
//! malformed record the way only your backend can, and
//! [`invalidation_channel_suite`] checks a channel, alone and under two
//! layers. [`faults`] wraps any store to make chosen operations fail, lag,
//! hang or return undecodable records, by script or by probability.

mod channel;
pub mod faults;
mod sessions;
mod subscriptions;

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::channel::{
    a_revocation_reaches_another_instance, a_subscription_change_reaches_another_instance,
    invalidation_channel_suite, published_messages_reach_another_subscriber,
};
pub use self::sessions::{
    concurrent_extends_never_move_expiry_backwards, create_then_load_round_trips,
    delete_all_by_organization_returns_exactly_its_ids,
    delete_all_by_subject_returns_exactly_its_ids, delete_removes_a_session_once,
    expired_sessions_load_until_purged, extend_moves_expiry_forward_only,
    extend_never_revives_an_expired_session, list_by_subject_sees_only_that_subject,
    list_pages_through_live_sessions_oldest_first, malformed_session_is_an_error,
    session_store_suite, two_layers_on_one_store_write_once_per_window_and_never_backwards,
    unknown_sessions_are_none,
};
pub use self::subscriptions::{
    a_duplicate_event_id_is_not_applied_even_with_another_body,
    an_older_change_after_a_newer_one_is_not_applied, applied_event_times_survive_a_new_store,
    event_ids_are_remembered_until_purged, every_status_and_optional_time_round_trips,
    malformed_subscription_is_an_error, organizations_hold_several_subscriptions,
    shuffled_changes_from_two_instances_end_in_the_newest_state, subscription_store_suite,
    the_same_change_twice_is_applied_once, unknown_organizations_have_no_subscriptions,
    upsert_replaces_by_organization_and_subscription,
};

/// The instant the kit's times are relative to: the wall clock when the
/// kit first ran in this process, in whole seconds. Never in the past, so
/// a store that expires keys on the wall clock (Redis) keeps the kit's
/// records for the test's duration.
pub(crate) fn base_time() -> SystemTime {
    static BASE: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        UNIX_EPOCH + Duration::from_secs(seconds)
    })
}

/// `base_time() + seconds`.
pub(crate) fn at(seconds: u64) -> SystemTime {
    base_time() + Duration::from_secs(seconds)
}

/// A random lowercase name with `prefix`, so repeated runs on a shared
/// database do not see each other's organizations or subjects.
pub(crate) fn unique(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("os randomness");
    format!("{prefix}_{:016x}", u64::from_le_bytes(bytes))
}

/// Runs `behaviour` on a fresh value from `make`, telling stderr which.
pub(crate) async fn run<S, Make, MakeFuture, Behaviour>(
    name: &str,
    make: &Make,
    behaviour: impl FnOnce(S) -> Behaviour,
) where
    Make: Fn() -> MakeFuture,
    MakeFuture: Future<Output = S>,
    Behaviour: Future<Output = ()>,
{
    eprintln!("conformance: {name}");
    behaviour(make().await).await;
}
