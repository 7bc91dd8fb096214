//! `RedisInvalidationChannel` against a real Redis: messages between
//! channels, a killed pub/sub connection ending the stream, and two
//! `SessionRefreshLayer`s on one `RedisSessionStore` that see each other's
//! revocations within a second, also across a lost listener connection.
//! Each test uses its own channel name, key prefix and Redis users, and
//! kills only its own connections.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use serde_json::json;
use tower::{service_fn, Layer};
use tower_saas_guard::invalidation::{InvalidationChannel, InvalidationStream};
use tower_saas_guard::session::{SessionOwner, SessionRefreshLayer, SessionStore, SessionToken};

use support::redis_service::{redis_fixture, RedisFixture};
use support::{send, Echo};

macro_rules! redis_or_skip {
    () => {
        match redis_fixture(concat!(module_path!(), "::", line!())).await {
            Some(redis) => redis,
            None => return,
        }
    };
}

/// The next message within two seconds; `None` when the stream ended.
async fn next_message(stream: &mut InvalidationStream) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("a message or the end of the stream within 2 s")
}

#[tokio::test]
async fn a_message_published_on_one_channel_arrives_on_another() {
    let redis = redis_or_skip!();
    let sender = redis.channel_as("sender").await;
    let receiver = redis.channel_as("receiver").await;
    let elsewhere = redis
        .channel_as("elsewhere")
        .await
        .channel_name(format!("{}other", redis.prefix));
    let mut received = receiver.subscribe().await.expect("subscribe");
    let mut own = sender.subscribe().await.expect("subscribe");
    let mut other = elsewhere.subscribe().await.expect("subscribe");

    sender.publish("s1:hello").await.expect("publish");
    receiver.publish("s2:back").await.expect("publish");
    assert_eq!(
        next_message(&mut received).await.as_deref(),
        Some("s1:hello")
    );
    assert_eq!(
        next_message(&mut received).await.as_deref(),
        Some("s2:back")
    );
    // Every subscriber gets every message, its own included.
    assert_eq!(next_message(&mut own).await.as_deref(), Some("s1:hello"));
    // Another channel name hears nothing of it.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other.next())
            .await
            .is_err()
    );
    redis.finish().await;
}

#[tokio::test]
async fn killing_the_pubsub_connection_ends_the_stream_and_a_new_subscription_hears_later_messages()
{
    let redis = redis_or_skip!();
    let sender = redis.channel_as("sender").await;
    let listener = redis.channel_as("listener").await;
    let mut stream = listener.subscribe().await.expect("subscribe");
    sender.publish("before").await.expect("publish");
    assert_eq!(next_message(&mut stream).await.as_deref(), Some("before"));

    assert_eq!(redis.kill_pubsub_of("listener").await, 1);
    assert_eq!(next_message(&mut stream).await, None, "the stream ends");

    let mut again = listener.subscribe().await.expect("subscribe again");
    sender.publish("after").await.expect("publish");
    assert_eq!(next_message(&mut again).await.as_deref(), Some("after"));
    redis.finish().await;
}

#[tokio::test]
async fn publishing_reconnects_after_its_connection_is_killed() {
    let redis = redis_or_skip!();
    let sender = redis.channel_as("sender").await;
    let listener = redis.channel_as("listener").await;
    let mut stream = listener.subscribe().await.expect("subscribe");
    sender.publish("first").await.expect("publish");
    assert_eq!(next_message(&mut stream).await.as_deref(), Some("first"));

    assert_eq!(redis.kill_connections_of("sender", "normal").await, 1);
    // The command that meets the dead connection may fail; the manager
    // reconnects and a later one goes through.
    let started = tokio::time::Instant::now();
    while sender.publish("second").await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "publishing did not recover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(next_message(&mut stream).await.as_deref(), Some("second"));
    redis.finish().await;
}

#[tokio::test]
async fn heartbeats_keep_a_healthy_subscription_open() {
    let redis = redis_or_skip!();
    let sender = redis.channel_as("sender").await;
    let listener = redis
        .channel_as("listener")
        .await
        .heartbeat(Duration::from_millis(50));
    let mut stream = listener.subscribe().await.expect("subscribe");
    // Several pings answered while idle.
    tokio::time::sleep(Duration::from_millis(400)).await;
    sender.publish("still here").await.expect("publish");
    assert_eq!(
        next_message(&mut stream).await.as_deref(),
        Some("still here")
    );
    redis.finish().await;
}

#[tokio::test]
async fn publishing_to_an_unreachable_server_is_a_backend_error() {
    let channel = tower_saas_guard::stores::redis::RedisInvalidationChannel::new(
        redis::Client::open("redis://127.0.0.1:1").expect("valid URL"),
    );
    let error = channel.publish("x").await.expect_err("nothing listens");
    assert_eq!(error.kind(), tower_saas_guard::StoreErrorKind::Backend);
    let error = channel.subscribe().await.err().expect("nothing listens");
    assert_eq!(error.kind(), tower_saas_guard::StoreErrorKind::Backend);
}

/// Two instances: two layers on one Redis store, each with its own
/// channel connection (and Redis user) on one channel name.
struct Instances {
    redis: RedisFixture,
    first: SessionRefreshLayer,
    second: SessionRefreshLayer,
    second_service: Echo,
}

impl Instances {
    async fn start(redis: RedisFixture) -> Self {
        let layer = |channel| {
            SessionRefreshLayer::builder(redis.store())
                .invalidation_channel(channel)
                .build()
                .expect("valid configuration")
        };
        let first = layer(redis.channel_as("first").await);
        let second = layer(redis.channel_as("second").await);
        for instance in [&first, &second] {
            wait_until(Duration::from_secs(5), || {
                instance
                    .handle()
                    .channel_status()
                    .is_some_and(|status| status.connected)
            })
            .await;
        }
        let inner = service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        });
        let second_service = tower::util::BoxCloneSyncService::new(second.clone().layer(inner));
        Self {
            redis,
            first,
            second,
            second_service,
        }
    }

    async fn create(&self, organization: &str, subject: &str) -> SessionToken {
        self.first
            .handle()
            .create_for(
                Some(organization),
                Some(subject),
                json!({ "name": subject }),
            )
            .await
            .expect("create")
            .token
    }

    /// The second instance's answer to a request carrying `token`.
    async fn second_answers(&self, token: &SessionToken) -> StatusCode {
        let request = Request::builder()
            .header("x-session-id", token.to_string())
            .body(())
            .expect("request");
        send(&self.second_service, request).await.status
    }

    /// Waits (at most `within`) until the second instance refuses `token`.
    async fn refused_by_second_within(&self, token: &SessionToken, within: Duration) {
        let started = tokio::time::Instant::now();
        loop {
            let status = self.second_answers(token).await;
            if status == StatusCode::UNAUTHORIZED {
                return;
            }
            assert_eq!(status, StatusCode::OK);
            assert!(
                started.elapsed() < within,
                "the second instance still accepts a revoked session after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn wait_until(within: Duration, condition: impl Fn() -> bool) {
    let started = tokio::time::Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < within,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const WITHIN_ONE_SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_instance_is_refused_by_the_other_within_a_second() {
    let instances = Instances::start(redis_or_skip!()).await;
    let ada_acme = instances.create("acme", "ada").await;
    let ada_globex = instances.create("globex", "ada").await;
    let bob_acme = instances.create("acme", "bob").await;
    let cy_globex = instances.create("globex", "cy").await;
    // The second instance caches all four.
    for token in [&ada_acme, &ada_globex, &bob_acme, &cy_globex] {
        assert_eq!(instances.second_answers(token).await, StatusCode::OK);
    }

    // One session.
    assert!(instances
        .first
        .handle()
        .revoke(&cy_globex)
        .await
        .expect("revoke"));
    instances
        .refused_by_second_within(&cy_globex, WITHIN_ONE_SECOND)
        .await;

    // Every session of a subject ("log out everywhere").
    assert_eq!(
        instances
            .first
            .handle()
            .revoke_all(SessionOwner::Subject("ada"))
            .await
            .expect("revoke_all"),
        2
    );
    instances
        .refused_by_second_within(&ada_acme, WITHIN_ONE_SECOND)
        .await;
    instances
        .refused_by_second_within(&ada_globex, WITHIN_ONE_SECOND)
        .await;
    assert_eq!(instances.second_answers(&bob_acme).await, StatusCode::OK);

    // Every session of an organization.
    assert_eq!(
        instances
            .first
            .handle()
            .revoke_organization("acme")
            .await
            .expect("revoke_organization"),
        1
    );
    instances
        .refused_by_second_within(&bob_acme, WITHIN_ONE_SECOND)
        .await;
    // (The counter moves just after the cache is cleared.)
    wait_until(WITHIN_ONE_SECOND, || {
        instances
            .second
            .handle()
            .channel_status()
            .is_some_and(|status| status.received >= 3)
    })
    .await;
    instances.redis.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_propagate_after_the_listener_connection_is_killed() {
    let instances = Instances::start(redis_or_skip!()).await;
    let busy = instances.create("acme", "ada").await;
    let deleted_unheard = instances.create("acme", "bob").await;
    let revoked_later = instances.create("acme", "cy").await;
    for token in [&busy, &deleted_unheard, &revoked_later] {
        assert_eq!(instances.second_answers(token).await, StatusCode::OK);
    }
    // Deleted behind both instances' backs (no message): the second still
    // trusts its cached copy, as a message lost in a gap would leave it.
    instances
        .redis
        .store()
        .delete(&deleted_unheard.id())
        .await
        .expect("delete");
    assert_eq!(
        instances.second_answers(&deleted_unheard).await,
        StatusCode::OK
    );

    // Requests keep being answered while the listener is down and back.
    let keep_asking = {
        let service = instances.second_service.clone();
        let token = busy;
        tokio::spawn(async move {
            let mut answered = 0;
            for _ in 0..100 {
                let request = Request::builder()
                    .header("x-session-id", token.to_string())
                    .body(())
                    .expect("request");
                let answer = tokio::time::timeout(Duration::from_secs(1), send(&service, request))
                    .await
                    .expect("answered within 1 s while the channel reconnects");
                assert_eq!(answer.status, StatusCode::OK);
                answered += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answered
        })
    };

    let status = instances.second.handle().channel_status().expect("channel");
    assert_eq!(status.connections, 1);
    assert_eq!(instances.redis.kill_pubsub_of("second").await, 1);
    wait_until(Duration::from_secs(5), || {
        instances
            .second
            .handle()
            .channel_status()
            .is_some_and(|status| status.connections >= 2 && status.connected)
    })
    .await;
    assert_eq!(keep_asking.await.expect("requests answered"), 100);

    // What was cached before the gap is not trusted after it.
    assert_eq!(
        instances.second_answers(&deleted_unheard).await,
        StatusCode::UNAUTHORIZED
    );
    // And revocations reach the second instance again.
    assert_eq!(
        instances.second_answers(&revoked_later).await,
        StatusCode::OK
    );
    assert!(instances
        .first
        .handle()
        .revoke(&revoked_later)
        .await
        .expect("revoke"));
    instances
        .refused_by_second_within(&revoked_later, WITHIN_ONE_SECOND)
        .await;
    assert_eq!(instances.second_answers(&busy).await, StatusCode::OK);
    instances.redis.finish().await;
}

/// The conformance kit's channel behaviours: every connection `make` opens
/// is this test's Redis user `kit`, so `kill` cuts exactly their pub/sub
/// connections.
#[cfg(feature = "test-kit")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_kit_passes() {
    let redis = redis_or_skip!();
    let fixture = &redis;
    tower_saas_guard::test_kit::invalidation_channel_suite(
        move || async move { fixture.channel_as("kit").await },
        move || async move {
            assert!(
                fixture.kill_pubsub_of("kit").await >= 1,
                "a listener to kill"
            );
        },
    )
    .await;
    redis.finish().await;
}
