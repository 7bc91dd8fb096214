//! The invalidation channel behaviours.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;

use super::unique;
use crate::invalidation::{InvalidationChannel, MAX_MESSAGE_BYTES};
use crate::session::{MemorySessionStore, SessionHandle, SessionRefreshLayer};
use crate::subscription::{
    EntitlementPolicy, Entitlements, MemorySubscriptionStore, Subscription, SubscriptionChange,
    SubscriptionStatus,
};

/// How long a message may take to arrive (SPEC: within one second).
const DELIVERY: Duration = Duration::from_secs(1);
/// How long a (re)connection may take.
const CONNECT: Duration = Duration::from_secs(10);

/// Every channel behaviour of the kit. `make` returns a new connection to
/// one shared channel (same server, same channel name) each time it is
/// called; `kill` cuts the listening connections of that channel the way
/// a server restart or a network failure would (for Redis,
/// `CLIENT KILL` of the pub/sub connection; for PostgreSQL,
/// `pg_terminate_backend` of the listening backend).
pub async fn invalidation_channel_suite<C, Make, MakeFuture, Kill, KillFuture>(
    make: Make,
    kill: Kill,
) where
    C: InvalidationChannel,
    Make: Fn() -> MakeFuture,
    MakeFuture: Future<Output = C>,
    Kill: Fn() -> KillFuture,
    KillFuture: Future<Output = ()>,
{
    eprintln!("conformance: published_messages_reach_another_subscriber");
    published_messages_reach_another_subscriber(make().await, make().await).await;
    eprintln!("conformance: a_revocation_reaches_another_instance");
    a_revocation_reaches_another_instance(make().await, make().await).await;
    eprintln!("conformance: a_subscription_change_reaches_another_instance");
    a_subscription_change_reaches_another_instance(make().await, make().await).await;
    eprintln!("conformance: a_lost_connection_drops_what_was_cached_before_it");
    a_lost_connection_drops_what_was_cached_before_it(make().await, make().await, kill).await;
}

/// A message published on one connection, once another's subscription is
/// open, arrives there intact (a message of the largest size included).
pub async fn published_messages_reach_another_subscriber(
    publisher: impl InvalidationChannel,
    subscriber: impl InvalidationChannel,
) {
    let name = "published_messages_reach_another_subscriber";
    let mut messages = tokio::time::timeout(CONNECT, subscriber.subscribe())
        .await
        .unwrap_or_else(|_| panic!("{name}: subscribe took over {CONNECT:?}"))
        .unwrap_or_else(|error| panic!("{name}: subscribe failed: {error}"));
    let small = unique("probe");
    let large = "x".repeat(MAX_MESSAGE_BYTES - small.len());
    let large = format!("{small}{large}");
    for sent in [small, large] {
        publisher
            .publish(&sent)
            .await
            .unwrap_or_else(|error| panic!("{name}: publish failed: {error}"));
        // Other tests may share the server: skip anything that is not ours.
        let received = tokio::time::timeout(DELIVERY, async {
            while let Some(message) = messages.next().await {
                if message == sent {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            received,
            Ok(true),
            "{name}: a {}-byte message did not arrive",
            sent.len()
        );
    }
}

async fn connected(handle_status: impl Fn() -> Option<u64>, at_least: u64, name: &str) {
    let waited = tokio::time::timeout(CONNECT, async {
        while handle_status().unwrap_or(0) < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{name}: the listener did not (re)connect within {CONNECT:?}"
    );
}

async fn sessions_connected(handle: &SessionHandle, at_least: u64, name: &str) {
    connected(
        || handle.channel_status().map(|s| s.connections),
        at_least,
        name,
    )
    .await;
}

/// Polls `gone` until it is true, for at most [`DELIVERY`].
async fn within_delivery<F: Future<Output = bool>>(mut gone: impl FnMut() -> F) -> bool {
    tokio::time::timeout(DELIVERY, async {
        while !gone().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok()
}

fn instances(
    first: impl InvalidationChannel,
    second: impl InvalidationChannel,
) -> (MemorySessionStore, SessionHandle, SessionHandle) {
    let store = MemorySessionStore::new();
    let layer = |channel| {
        SessionRefreshLayer::builder(store.clone())
            .invalidation_channel(channel)
            .build()
            .expect("built inside a Tokio runtime")
    };
    let first = layer(Box::new(first) as Box<dyn InvalidationChannel>).handle();
    let second = layer(Box::new(second) as Box<dyn InvalidationChannel>).handle();
    (store, first, second)
}

/// Two instances on one store: a session the second has cached is refused
/// by it within a second of the first revoking it (one session, then a
/// whole organization).
pub async fn a_revocation_reaches_another_instance(
    first: impl InvalidationChannel,
    second: impl InvalidationChannel,
) {
    let name = "a_revocation_reaches_another_instance";
    let (_store, first, second) = instances(first, second);
    sessions_connected(&first, 1, name).await;
    sessions_connected(&second, 1, name).await;
    let organization = unique("org");
    let one = first.create(Some(&organization), ()).await.expect("create");
    let two = first.create(Some(&organization), ()).await.expect("create");
    for created in [&one, &two] {
        assert!(
            second.get(&created.token).await.expect("get").is_some(),
            "{name}: cached"
        );
    }
    first.revoke(&one.token).await.expect("revoke");
    let gone = within_delivery(|| async { second.get(&one.token).await.expect("get").is_none() });
    assert!(
        gone.await,
        "{name}: the second instance still accepts a revoked session"
    );
    assert!(
        second.get(&two.token).await.expect("get").is_some(),
        "{name}: another session ended"
    );
    first
        .revoke_organization(&organization)
        .await
        .expect("revoke");
    let gone = within_delivery(|| async { second.get(&two.token).await.expect("get").is_none() });
    assert!(
        gone.await,
        "{name}: an organization-wide revocation did not reach the second"
    );
}

/// Two instances on one subscription store: an upgrade applied by the
/// first changes the second's decision within a second, though the second
/// had cached "not entitled".
pub async fn a_subscription_change_reaches_another_instance(
    first: impl InvalidationChannel,
    second: impl InvalidationChannel,
) {
    let name = "a_subscription_change_reaches_another_instance";
    let store = MemorySubscriptionStore::new();
    let instance = |channel| {
        Entitlements::builder(store.clone())
            .invalidation_channel(channel)
            .build()
            .expect("built inside a Tokio runtime")
    };
    let first = instance(Box::new(first) as Box<dyn InvalidationChannel>);
    let second = instance(Box::new(second) as Box<dyn InvalidationChannel>);
    for instance in [&first, &second] {
        connected(|| instance.channel_status().map(|s| s.connections), 1, name).await;
    }
    let policy = EntitlementPolicy::new();
    let organization = unique("org");
    let decided = second
        .entitlement(&organization, &policy)
        .await
        .expect("decide");
    assert!(
        !decided.is_entitled(),
        "{name}: entitled before any subscription"
    );
    first
        .apply(&SubscriptionChange::new(
            Subscription {
                organization_id: organization.clone(),
                subscription_id: "sub_1".to_owned(),
                status: SubscriptionStatus::Active,
                plan: "pro".to_owned(),
                current_period_end: None,
                trial_end: None,
            },
            super::at(0),
        ))
        .await
        .expect("apply");
    let seen = within_delivery(|| async {
        second
            .entitlement(&organization, &policy)
            .await
            .expect("decide")
            .is_entitled()
    });
    assert!(
        seen.await,
        "{name}: the second instance did not see the upgrade"
    );
}

/// After the listening connection is cut and comes back, nothing cached
/// before the gap is trusted (a revocation published during the gap was
/// lost), requests keep being answered meanwhile, and revocations after
/// the reconnection propagate again.
pub async fn a_lost_connection_drops_what_was_cached_before_it<Kill, KillFuture>(
    first: impl InvalidationChannel,
    second: impl InvalidationChannel,
    kill: Kill,
) where
    Kill: Fn() -> KillFuture,
    KillFuture: Future<Output = ()>,
{
    let name = "a_lost_connection_drops_what_was_cached_before_it";
    let (store, first, second) = instances(first, second);
    sessions_connected(&first, 1, name).await;
    sessions_connected(&second, 1, name).await;
    let before = second
        .channel_status()
        .map_or(0, |status| status.connections);
    let lost = first.create(None, ()).await.expect("create");
    let later = first.create(None, ()).await.expect("create");
    for created in [&lost, &later] {
        assert!(
            second.get(&created.token).await.expect("get").is_some(),
            "{name}: cached"
        );
    }
    kill().await;
    // Revoked behind the channel's back, as if its message were lost.
    crate::session::SessionStore::delete(&store, &lost.id)
        .await
        .expect("delete");
    // Requests are answered while the channel is away (from the cache).
    let answered = tokio::time::timeout(Duration::from_secs(1), second.get(&later.token)).await;
    assert!(answered.is_ok(), "{name}: a request waited for the channel");
    sessions_connected(&second, before + 1, name).await;
    assert!(
        second.get(&lost.token).await.expect("get").is_none(),
        "{name}: a copy cached before the gap was trusted after it"
    );
    sessions_connected(&first, 1, name).await;
    first.revoke(&later.token).await.expect("revoke");
    let gone = within_delivery(|| async { second.get(&later.token).await.expect("get").is_none() });
    assert!(
        gone.await,
        "{name}: revocations after the reconnection do not propagate"
    );
}
