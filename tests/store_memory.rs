//! The conformance kit against the memory stores and the in-process
//! invalidation channel: the same suites the SQLite, PostgreSQL and Redis
//! stores run.
#![cfg(feature = "test-kit")]

use tower_saas_guard::invalidation::MemoryInvalidationChannel;
use tower_saas_guard::session::MemorySessionStore;
use tower_saas_guard::subscription::MemorySubscriptionStore;
use tower_saas_guard::test_kit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_session_store_passes_the_conformance_suite() {
    test_kit::session_store_suite(|| async { MemorySessionStore::new() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_subscription_store_passes_the_conformance_suite() {
    test_kit::subscription_store_suite(|| async { MemorySubscriptionStore::new() }).await;
}

#[tokio::test]
async fn applied_event_times_are_shared_by_clones_of_the_memory_store() {
    let store = MemorySubscriptionStore::new();
    let clone = store.clone();
    test_kit::applied_event_times_survive_a_new_store(store, || async { clone }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_channel_passes_the_conformance_suite() {
    let channel = MemoryInvalidationChannel::new();
    let kill = channel.clone();
    test_kit::invalidation_channel_suite(
        || {
            let channel = channel.clone();
            async move { channel }
        },
        || {
            let kill = kill.clone();
            async move { kill.disconnect() }
        },
    )
    .await;
}
