//! Session management through the handle: subjects, listing, revocation
//! by id / subject / organization, the negative cache, the purge task and
//! the invalidation channel's reconnection, with the clock driven by the
//! tests.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tower::{service_fn, Layer};
use tower_saas_guard::invalidation::MemoryInvalidationChannel;
use tower_saas_guard::session::{
    PageRequest, Session, SessionHandle, SessionOwner, SessionRefreshBuilder, SessionRefreshLayer,
    SessionStore, SessionToken,
};
use tower_saas_guard::{ConfigError, ManualClock};

use support::{epoch, send, Echo, ProbeStore};

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

struct Fixture {
    store: ProbeStore,
    clock: ManualClock,
    layer: SessionRefreshLayer,
}

impl Fixture {
    fn new() -> Self {
        Self::with(|builder| builder)
    }

    fn with(configure: impl FnOnce(SessionRefreshBuilder) -> SessionRefreshBuilder) -> Self {
        let store = ProbeStore::default();
        let clock = ManualClock::new(epoch());
        let layer = configure(SessionRefreshLayer::builder(store.clone()).clock(clock.clone()))
            .build()
            .expect("valid configuration");
        Self {
            store,
            clock,
            layer,
        }
    }

    fn handle(&self) -> SessionHandle {
        self.layer.handle()
    }

    /// The layer around a service that answers with the session's id and
    /// subject, and logs the session out when asked to (`x-logout`).
    fn service(&self) -> Echo {
        let handle = self.handle();
        let inner = service_fn(move |request: Request<()>| {
            let handle = handle.clone();
            async move {
                let session = request.extensions().get::<Session>().cloned();
                let body = match session {
                    Some(session) if request.headers().contains_key("x-logout") => {
                        let existed = handle.revoke_id(&session.id()).await.expect("revoke");
                        json!({ "logged_out": existed })
                    }
                    Some(session) => json!({
                        "id": session.id().to_string(),
                        "subject": session.subject(),
                        "organization_id": session.organization_id(),
                    }),
                    None => Value::Null,
                };
                Ok::<_, Infallible>(Response::new(body.to_string()))
            }
        });
        tower::util::BoxCloneSyncService::new(self.layer.clone().layer(inner))
    }
}

fn with_token(token: &SessionToken) -> Request<()> {
    Request::builder()
        .header("x-session-id", token.to_string())
        .body(())
        .expect("request")
}

fn logout(token: &SessionToken) -> Request<()> {
    Request::builder()
        .header("x-session-id", token.to_string())
        .header("x-logout", "1")
        .body(())
        .expect("request")
}

fn code(answer: &support::Answer) -> &str {
    answer.body["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_session_carries_its_subject_to_handlers_and_listings() {
    let fixture = Fixture::new();
    let handle = fixture.handle();
    let created = handle
        .create_for(Some("org_1"), Some("user_7"), json!({ "name": "Ada" }))
        .await
        .expect("create");
    let answer = send(&fixture.service(), with_token(&created.token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["subject"], "user_7");
    assert_eq!(answer.body["organization_id"], "org_1");
    assert_eq!(answer.body["id"], created.id.to_string());

    let page = handle
        .list(SessionOwner::Subject("user_7"), PageRequest::first(10))
        .await
        .expect("list");
    assert_eq!(page.sessions.len(), 1);
    assert_eq!(page.sessions[0].id, created.id);
    assert_eq!(page.sessions[0].subject.as_deref(), Some("user_7"));
    assert_eq!(page.sessions[0].payload, json!({ "name": "Ada" }));
}

#[tokio::test]
async fn a_handler_logs_its_own_session_out_by_id() {
    let fixture = Fixture::new();
    let created = fixture.handle().create(None, ()).await.expect("create");
    let service = fixture.service();
    // Cached (and hot) first, so the logout must reach the cached copy.
    for _ in 0..3 {
        assert_eq!(
            send(&service, with_token(&created.token)).await.status,
            StatusCode::OK
        );
    }
    let answer = send(&service, logout(&created.token)).await;
    assert_eq!(answer.body["logged_out"], true);
    let after = send(&service, with_token(&created.token)).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&after), "session_not_found");
}

#[tokio::test]
async fn listing_is_oldest_first_paginated_and_skips_expired_sessions() {
    let fixture = Fixture::with(|builder| {
        builder
            .duration(100 * SECOND)
            .refresh_threshold(10 * SECOND)
    });
    let handle = fixture.handle();
    let doomed = handle.create(Some("org_1"), 0).await.expect("create");
    let mut live = Vec::new();
    for n in 1..=5 {
        fixture.clock.advance(10 * SECOND);
        live.push(handle.create(Some("org_1"), n).await.expect("create").id);
    }
    handle.create(Some("org_2"), 9).await.expect("create");
    // The first session expires (created at 0, now 100 s later).
    fixture.clock.advance(50 * SECOND);
    let owner = SessionOwner::Organization("org_1");
    let first = handle
        .list(owner, PageRequest::first(2))
        .await
        .expect("list");
    let ids: Vec<_> = first.sessions.iter().map(|session| session.id).collect();
    assert_eq!(ids, live[..2]);
    assert!(!ids.contains(&doomed.id), "expired sessions are not listed");
    let cursor = first.next.expect("more pages").to_string();
    let second = handle
        .list(
            owner,
            PageRequest::after(cursor.parse().expect("cursor"), 2),
        )
        .await
        .expect("list");
    let third = handle
        .list(owner, PageRequest::after(second.next.expect("more"), 2))
        .await
        .expect("list");
    let rest: Vec<_> = second
        .sessions
        .iter()
        .chain(&third.sessions)
        .map(|session| session.id)
        .collect();
    assert_eq!(rest, live[2..]);
    assert_eq!(third.next, None, "the last page has no cursor");
}

#[tokio::test]
async fn revoking_a_subject_ends_its_sessions_everywhere_and_only_those() {
    let fixture = Fixture::new();
    let handle = fixture.handle();
    let service = fixture.service();
    let laptop = handle
        .create_for(Some("org_1"), Some("ada"), ())
        .await
        .expect("create");
    let phone = handle
        .create_for(Some("org_2"), Some("ada"), ())
        .await
        .expect("create");
    let colleague = handle
        .create_for(Some("org_1"), Some("bob"), ())
        .await
        .expect("create");
    for created in [&laptop, &phone, &colleague] {
        for _ in 0..3 {
            assert_eq!(
                send(&service, with_token(&created.token)).await.status,
                StatusCode::OK
            );
        }
    }
    let revoked = handle
        .revoke_all(SessionOwner::Subject("ada"))
        .await
        .expect("revoke");
    assert_eq!(revoked, 2);
    for created in [&laptop, &phone] {
        let answer = send(&service, with_token(&created.token)).await;
        assert_eq!(code(&answer), "session_not_found");
    }
    assert_eq!(
        send(&service, with_token(&colleague.token)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_repeated_unknown_token_costs_one_store_read_until_the_negative_ttl() {
    let fixture = Fixture::with(|builder| builder.negative_cache_ttl(10 * SECOND));
    let service = fixture.service();
    let unknown = SessionToken::generate().expect("randomness");
    for _ in 0..20 {
        let answer = send(&service, with_token(&unknown)).await;
        assert_eq!(code(&answer), "session_not_found");
    }
    assert_eq!(fixture.store.loads(), 1);
    fixture.clock.advance(9 * SECOND);
    send(&service, with_token(&unknown)).await;
    assert_eq!(fixture.store.loads(), 1, "still within the negative TTL");
    fixture.clock.advance(2 * SECOND);
    send(&service, with_token(&unknown)).await;
    assert_eq!(
        fixture.store.loads(),
        2,
        "re-read once the negative TTL passed"
    );
}

#[tokio::test]
async fn without_a_negative_cache_every_unknown_token_reads_the_store() {
    let fixture = Fixture::with(SessionRefreshBuilder::no_negative_cache);
    let service = fixture.service();
    let unknown = SessionToken::generate().expect("randomness");
    for _ in 0..5 {
        send(&service, with_token(&unknown)).await;
    }
    assert_eq!(fixture.store.loads(), 5);
}

#[tokio::test]
async fn a_revoked_token_is_refused_without_another_store_read() {
    let fixture = Fixture::new();
    let created = fixture.handle().create(None, ()).await.expect("create");
    let service = fixture.service();
    fixture
        .handle()
        .revoke(&created.token)
        .await
        .expect("revoke");
    for _ in 0..10 {
        let answer = send(&service, with_token(&created.token)).await;
        assert_eq!(code(&answer), "session_not_found");
    }
    assert_eq!(fixture.store.loads(), 0);
}

#[tokio::test]
async fn a_revocation_from_another_instance_drops_the_cached_copy_on_receipt() {
    let channel = MemoryInvalidationChannel::new();
    let here = Fixture::with(|builder| builder.invalidation_channel(channel.clone()));
    let elsewhere = SessionRefreshLayer::builder(here.store.clone())
        .clock(here.clock.clone())
        .invalidation_channel(channel.clone())
        .build()
        .expect("valid configuration")
        .handle();
    wait_until(|| connected(&here.handle(), 1) && connected(&elsewhere, 1)).await;
    let created = here
        .handle()
        .create(Some("org_1"), ())
        .await
        .expect("create");
    let service = here.service();
    for _ in 0..3 {
        assert_eq!(
            send(&service, with_token(&created.token)).await.status,
            StatusCode::OK
        );
    }
    let loads = here.store.loads();
    elsewhere.revoke_id(&created.id).await.expect("revoke");
    wait_until(|| {
        here.handle()
            .channel_status()
            .is_some_and(|s| s.received == 1)
    })
    .await;
    for _ in 0..3 {
        let answer = send(&service, with_token(&created.token)).await;
        assert_eq!(code(&answer), "session_not_found");
    }
    assert_eq!(
        here.store.loads(),
        loads + 1,
        "read once to learn it is gone (a message does not prove the deletion)"
    );
    assert_eq!(
        elsewhere.channel_status().map(|status| status.received),
        Some(0),
        "an instance skips its own messages"
    );
}

#[tokio::test]
async fn after_a_lost_channel_connection_nothing_cached_before_it_is_trusted() {
    let channel = MemoryInvalidationChannel::new();
    let fixture = Fixture::with(|builder| builder.invalidation_channel(channel.clone()));
    let handle = fixture.handle();
    wait_until(|| connected(&handle, 1)).await;
    let created = handle.create(None, ()).await.expect("create");
    let service = fixture.service();
    for _ in 0..3 {
        assert_eq!(
            send(&service, with_token(&created.token)).await.status,
            StatusCode::OK
        );
    }
    channel.set_down(true);
    wait_until(|| {
        handle
            .channel_status()
            .is_some_and(|status| !status.connected)
    })
    .await;
    // Requests are still answered, from the cache, while the channel is down.
    assert_eq!(
        send(&service, with_token(&created.token)).await.status,
        StatusCode::OK
    );
    let loads = fixture.store.loads();
    // Deleted behind the cache's back while no message could arrive.
    fixture
        .store
        .inner
        .delete(&created.id)
        .await
        .expect("delete");
    channel.set_down(false);
    wait_until(|| connected(&handle, 2)).await;
    let answer = send(&service, with_token(&created.token)).await;
    assert_eq!(code(&answer), "session_not_found");
    assert_eq!(fixture.store.loads(), loads + 1, "re-read after the gap");
}

#[tokio::test(start_paused = true)]
async fn the_purge_task_deletes_long_expired_sessions_and_stops_when_dropped() {
    let fixture = Fixture::with(|builder| {
        builder
            .duration(10 * SECOND)
            .refresh_threshold(5 * SECOND)
            .expired_retention(60 * SECOND)
    });
    let handle = fixture.handle();
    handle.create(None, ()).await.expect("create");
    let task = handle.spawn_purge(3600 * SECOND).expect("runtime");
    // Expired 10 s after creation; purgeable 60 s later.
    fixture.clock.advance(100 * SECOND);
    tokio::time::sleep(3599 * SECOND).await;
    assert_eq!(
        fixture.store.inner.len(),
        1,
        "no purge before the first interval"
    );
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(fixture.store.inner.len(), 0, "purged at the first interval");
    drop(task);
    handle.create(None, ()).await.expect("create");
    fixture.clock.advance(100 * SECOND);
    tokio::time::sleep(7200 * SECOND).await;
    assert_eq!(
        fixture.store.inner.len(),
        1,
        "a dropped task purges nothing"
    );
}

#[test]
fn settings_that_cannot_work_are_config_errors() {
    let build = |configure: fn(SessionRefreshBuilder) -> SessionRefreshBuilder| {
        configure(SessionRefreshLayer::builder(ProbeStore::default())).build()
    };
    assert_eq!(
        build(|builder| builder.negative_cache_ttl(Duration::ZERO)).err(),
        Some(ConfigError::ZeroCacheTtl)
    );
    assert_eq!(
        build(|builder| builder.negative_cache_capacity(0)).err(),
        Some(ConfigError::ZeroCacheCapacity)
    );
    // Outside a Tokio runtime a channel cannot listen.
    let channel = MemoryInvalidationChannel::new();
    let built = SessionRefreshLayer::builder(ProbeStore::default())
        .invalidation_channel(channel)
        .build();
    assert_eq!(built.err(), Some(ConfigError::NoRuntime));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let layer = runtime.block_on(async { SessionRefreshLayer::new(ProbeStore::default()) });
    let _guard = runtime.enter();
    assert_eq!(
        layer.handle().spawn_purge(Duration::ZERO).err(),
        Some(ConfigError::ZeroPurgeInterval)
    );
}

fn connected(handle: &SessionHandle, connections: u64) -> bool {
    handle
        .channel_status()
        .is_some_and(|status| status.connected && status.connections >= connections)
}

/// Yields until `condition` holds (the listener runs on the same runtime);
/// fails after 5 s of real time.
async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + 5 * SECOND;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within 5 s"
        );
        tokio::task::yield_now().await;
    }
}

#[test]
fn cursors_that_no_store_can_hold_are_invalid_not_store_errors() {
    use tower_saas_guard::session::SessionCursor;
    let id = "ab".repeat(32);
    assert!(format!("{}.{id}", i64::MAX)
        .parse::<SessionCursor>()
        .is_ok());
    for text in [
        format!("{}.{id}", i64::MAX as u64 + 1),
        format!("{}.{id}", u64::MAX),
        format!("99999999999999999999999.{id}"),
        format!("-1.{id}"),
        format!("+1.{id}"),
        format!("1.{}", &id[2..]),
        format!("1.{id}x"),
        "1".to_owned(),
        String::new(),
    ] {
        assert!(text.parse::<SessionCursor>().is_err(), "{text}");
    }
}

/// One request a minute for a simulated day, on a fresh fixture: how many
/// store reads and writes (renewals) it cost.
async fn store_calls_over_a_visitor_day(fixture: &Fixture) -> (usize, usize) {
    let created = fixture
        .handle()
        .create(Some("org_1"), ())
        .await
        .expect("create");
    let service = fixture.service();
    for minute in 0..24 * 60 {
        let answer = send(&service, with_token(&created.token)).await;
        assert_eq!(answer.status, StatusCode::OK, "minute {minute}");
        fixture.clock.advance(60 * SECOND);
    }
    (
        fixture.store.loads(),
        fixture
            .store
            .extends
            .load(std::sync::atomic::Ordering::SeqCst),
    )
}

#[tokio::test]
async fn with_a_connected_channel_an_active_visitor_is_read_about_once_an_hour() {
    let without = Fixture::new();
    let (reads_without, writes_without) = store_calls_over_a_visitor_day(&without).await;
    let channel = MemoryInvalidationChannel::new();
    let with = Fixture::with(|builder| builder.invalidation_channel(channel.clone()));
    wait_until(|| connected(&with.handle(), 1)).await;
    let (reads_with, writes_with) = store_calls_over_a_visitor_day(&with).await;
    println!(
        "a simulated visitor-day: {reads_without} store reads and {writes_without} writes \
         without a channel, {reads_with} reads and {writes_with} writes with one"
    );
    // Created with 24 h to live, renewed once under 4 h are left (at 20 h):
    // one write in the day, not one per request.
    assert_eq!(writes_without, 1, "renewals in a day without a channel");
    assert_eq!(writes_with, 1, "renewals in a day with a channel");
    // A minute apart, every request outlives the 30 s TTL: one read each.
    assert!(reads_without >= 24 * 60 - 1, "{reads_without}");
    // With the channel, one read an hour (the 1 h channel TTL).
    assert!(reads_with <= 25, "{reads_with} reads in a day");
    assert!(
        reads_with >= 23,
        "{reads_with}: the channel TTL still applies"
    );
}

#[tokio::test]
async fn losing_the_channel_falls_back_to_the_cache_ttl_from_the_loss() {
    let channel = MemoryInvalidationChannel::new();
    let fixture = Fixture::with(|builder| builder.invalidation_channel(channel.clone()));
    wait_until(|| connected(&fixture.handle(), 1)).await;
    let created = fixture
        .handle()
        .create(Some("org_1"), ())
        .await
        .expect("create");
    let service = fixture.service();
    assert_eq!(
        send(&service, with_token(&created.token)).await.status,
        StatusCode::OK
    );
    // Deleted behind the layer's back: no message says so.
    use tower_saas_guard::session::SessionStore;
    assert!(fixture
        .store
        .inner
        .delete(&created.id)
        .await
        .expect("delete"));
    fixture.clock.advance(20 * MINUTE);
    let loads = fixture.store.loads();
    assert_eq!(
        send(&service, with_token(&created.token)).await.status,
        StatusCode::OK,
        "connected: trusted for the channel's TTL (1 h)"
    );
    assert_eq!(fixture.store.loads(), loads);
    channel.set_down(true);
    wait_until(|| {
        fixture
            .handle()
            .channel_status()
            .is_some_and(|status| !status.connected)
    })
    .await;
    // Whatever was revoked before the loss would have arrived: the copy is
    // trusted for the cache TTL (30 s) past the loss, no longer.
    fixture.clock.advance(29 * SECOND);
    assert_eq!(
        send(&service, with_token(&created.token)).await.status,
        StatusCode::OK,
        "29 s after the loss"
    );
    assert_eq!(fixture.store.loads(), loads);
    fixture.clock.advance(2 * SECOND);
    let answer = send(&service, with_token(&created.token)).await;
    assert_eq!(code(&answer), "session_not_found", "31 s after the loss");
    assert_eq!(fixture.store.loads(), loads + 1);
}

/// A channel whose first `failures` publishes fail.
#[derive(Clone)]
struct FlakyPublish {
    inner: MemoryInvalidationChannel,
    failures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[tower_saas_guard::async_trait]
impl tower_saas_guard::invalidation::InvalidationChannel for FlakyPublish {
    async fn publish(&self, message: &str) -> Result<(), tower_saas_guard::StoreError> {
        use std::sync::atomic::Ordering;
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(tower_saas_guard::StoreError::timeout());
        }
        self.inner.publish(message).await
    }

    async fn subscribe(
        &self,
    ) -> Result<tower_saas_guard::invalidation::InvalidationStream, tower_saas_guard::StoreError>
    {
        self.inner.subscribe().await
    }
}

#[tokio::test]
async fn a_revocation_that_fails_to_publish_is_tried_again_until_it_arrives() {
    let channel = MemoryInvalidationChannel::new();
    let flaky = FlakyPublish {
        inner: channel.clone(),
        failures: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(3)),
    };
    let here = Fixture::with(|builder| builder.invalidation_channel(channel.clone()));
    let elsewhere = SessionRefreshLayer::builder(here.store.clone())
        .clock(here.clock.clone())
        .invalidation_channel(flaky.clone())
        .build()
        .expect("valid configuration")
        .handle();
    wait_until(|| connected(&here.handle(), 1) && connected(&elsewhere, 1)).await;
    let created = here
        .handle()
        .create(Some("org_1"), ())
        .await
        .expect("create");
    let service = here.service();
    assert_eq!(
        send(&service, with_token(&created.token)).await.status,
        StatusCode::OK
    );
    elsewhere.revoke_id(&created.id).await.expect("revoke");
    // Three failures, then the retries (100, 200, 400 ms apart) get it
    // through.
    let deadline = std::time::Instant::now() + 5 * SECOND;
    while here
        .handle()
        .channel_status()
        .is_none_or(|status| status.received == 0)
    {
        assert!(std::time::Instant::now() < deadline, "never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(flaky.failures.load(std::sync::atomic::Ordering::SeqCst), 0);
    let answer = send(&service, with_token(&created.token)).await;
    assert_eq!(code(&answer), "session_not_found");
}
