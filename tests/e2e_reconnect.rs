//! The invalidation channel survives losing its connection, end to end:
//! two reference-server processes, and the second one's listening
//! connections killed mid-test (PostgreSQL: `pg_terminate_backend` on its
//! `LISTEN` backends, found by their per-instance `application_name`;
//! Redis: `CLIENT KILL USER … TYPE pubsub`, each instance connecting as a
//! Redis user of its own). The shared servers are never restarted.
//!
//! To make the gap real, new connections of the second instance are kept
//! out for a moment (`ALLOW_CONNECTIONS false` on the test's database;
//! `ACL SETUSER … off` for its Redis user; open connections stay), and a
//! logout happens meanwhile on the first instance, which the second cannot
//! hear about. Skipped with a printed reason when PostgreSQL or Redis
//! cannot be reached, except under `CI=true`, where it fails.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use std::time::Instant;

use e2e_support::*;

/// How long the second instance may take to listen again.
const RECONNECT_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn postgres_listener_killed_requests_still_answered_and_revocations_propagate_after_reconnect(
) {
    let Some(instances) = Instances::start(Shared::Postgres, &[]).await else {
        return;
    };
    channel_survives_losing_its_connection(&instances).await;
    instances.finish().await;
}

#[tokio::test]
async fn redis_pubsub_killed_requests_still_answered_and_revocations_propagate_after_reconnect() {
    let Some(instances) = Instances::start(Shared::PostgresAndRedis, &[]).await else {
        return;
    };
    channel_survives_losing_its_connection(&instances).await;
    instances.finish().await;
}

/// How many listening connections the second instance has open.
async fn listeners_of_second(instances: &Instances) -> usize {
    match &instances.redis {
        Some(redis) => redis.pubsub_connections_of("two").await,
        None => {
            let name = Instances::listener_name(&instances.two);
            let listening = instances.database.listening_backends_of(&name).await;
            usize::try_from(listening).expect("a count")
        }
    }
}

/// Keeps the second instance's new connections out (`false`) or lets
/// them in again.
async fn allow_reconnects_of_second(instances: &Instances, allowed: bool) {
    match &instances.redis {
        Some(redis) => redis.allow_logins_of("two", allowed).await,
        None => instances.database.allow_connections(allowed).await,
    }
}

/// Kills the second instance's listening connections; returns how many.
async fn kill_listeners_of_second(instances: &Instances) -> usize {
    let killed = match &instances.redis {
        Some(redis) => redis.kill_pubsub_of("two").await,
        None => {
            let name = Instances::listener_name(&instances.two);
            instances.database.terminate_backends_of(&name).await
        }
    };
    usize::try_from(killed).expect("a count")
}

/// `GET /contact-sessions/current` with `token`.
async fn current(api: &Api, token: &str) -> Reply {
    api.get("/contact-sessions/current", Some(token)).await
}

/// The token is refused as unknown (revoked) by `api`.
async fn refused(api: &Api, token: &str) -> bool {
    let reply = current(api, token).await;
    if reply.status == 200 {
        return false;
    }
    reply.assert_session_rejected("session_not_found");
    true
}

/// `request` answers within 2 s (nothing waits for the channel).
async fn promptly<T>(what: &str, request: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(2 * SECOND, request)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 2 s while the channel is down"))
}

async fn channel_survives_losing_its_connection(instances: &Instances) {
    let (first, second) = (&instances.first, &instances.second);
    // Both layers of the second instance listen.
    eventually(Instant::now(), RECONNECT_WITHIN, "listening", || async {
        listeners_of_second(instances).await >= 2
    })
    .await;
    let listening = listeners_of_second(instances).await;

    // The second instance caches two sessions, an entitlement, a listing.
    let kept = first.start_session().await;
    let revoked_in_the_gap = first.start_session().await;
    for token in [&kept, &revoked_in_the_gap] {
        assert_eq!(current(second, token).await.status, 200);
    }
    let reply = post_signed(first, &event("org_1", "sub_1", "active", "pro")).await;
    assert_eq!(reply.body["entitled"], true, "{reply:?}");
    assert_eq!(second.subscription("org_1").await["entitled"], true);
    let conversation = second.start_conversation(&kept).await;

    allow_reconnects_of_second(instances, false).await;
    let killed = kill_listeners_of_second(instances).await;
    assert_eq!(killed, listening, "every listening connection was killed");

    // Meanwhile every request is answered, from the caches or the stores.
    let gap = Instant::now();
    for _ in 0..5 {
        let reply = promptly("a cached session", current(second, &kept)).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let subscription = promptly("an entitlement", second.subscription("org_1")).await;
        assert_eq!(subscription["entitled"], true);
        let conversations = promptly("a listing", second.conversation_ids("org_1")).await;
        assert_eq!(conversations, std::slice::from_ref(&conversation));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A logout the second instance cannot hear about.
    assert_eq!(first.logout(Some(&revoked_in_the_gap)).await.status, 204);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        listeners_of_second(instances).await,
        0,
        "the second instance could not reconnect yet"
    );

    allow_reconnects_of_second(instances, true).await;
    let reopened = Instant::now();
    let took = eventually(reopened, RECONNECT_WITHIN, "listening again", || async {
        listeners_of_second(instances).await == listening
    })
    .await;
    eprintln!(
        "gap of {:?}; listening again {took:?} after connections were allowed",
        gap.elapsed() - took
    );

    // What it cached before the gap is not trusted after it: the logout it
    // missed is seen.
    eventually(
        Instant::now(),
        SECOND,
        "the logout during the gap is seen after it",
        || refused(second, &revoked_in_the_gap),
    )
    .await;
    assert_eq!(current(second, &kept).await.status, 200);

    // And the channel carries revocations again.
    let reply = first.logout(Some(&kept)).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let took = eventually(
        Instant::now(),
        SECOND,
        "a logout after the reconnection",
        || refused(second, &kept),
    )
    .await;
    eprintln!("logout after the reconnection seen after {took:?}");
}
