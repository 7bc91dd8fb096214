//! SessionRefreshLayer end to end through `tower::ServiceExt::oneshot`, with
//! the clock driven by the tests.

mod support;

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_saas_guard::session::{
    BearerSource, CookieSource, HeaderSource, MemorySessionStore, Session, SessionRefreshLayer,
    SessionToken, TokenError, TokenKeys, SESSION_EXPIRES_AT,
};
use tower_saas_guard::{rfc3339_millis, Clock, ConfigError, ManualClock, RequestHead};

use support::{burst, epoch, send, Answer, Echo, ProbeStore};

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// An inner service that answers 200 with the session it saw, as JSON.
fn echo_service(layer: SessionRefreshLayer) -> Echo {
    let inner = service_fn(|request: Request<()>| async move {
        let session = request.extensions().get::<Session>().cloned();
        let body = match session {
            Some(session) => json!({
                "id": session.id().to_string(),
                "organization_id": session.organization_id(),
                "created_at": rfc3339_millis(session.created_at()),
                "expires_at": rfc3339_millis(session.expires_at()),
                "renewed": session.renewed(),
                "payload": session.payload(),
            }),
            None => Value::Null,
        };
        Ok::<_, Infallible>(Response::new(body.to_string()))
    });
    tower::util::BoxCloneSyncService::new(layer.layer(inner))
}

struct Fixture {
    store: ProbeStore,
    clock: ManualClock,
    layer: SessionRefreshLayer,
}

impl Fixture {
    /// Another process: the same store and clock, default settings, its own
    /// (cold) cache.
    fn other_process(&self) -> SessionRefreshLayer {
        SessionRefreshLayer::builder(self.store.clone())
            .clock(self.clock.clone())
            .build()
            .expect("valid configuration")
    }

    /// 24 h sessions renewed within 4 h, 30-day cap: the defaults.
    fn new() -> Self {
        Self::with(|builder| builder)
    }

    fn with(
        configure: impl FnOnce(
            tower_saas_guard::session::SessionRefreshBuilder,
        ) -> tower_saas_guard::session::SessionRefreshBuilder,
    ) -> Self {
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

    async fn create(&self) -> SessionToken {
        self.layer
            .handle()
            .create(
                Some("org_1"),
                json!({ "name": "Ada", "email": "ada@example.com" }),
            )
            .await
            .expect("create session")
            .token
    }

    /// Deletes the record straight from the store (say, an admin tool),
    /// behind the layer's cache.
    async fn delete_behind_the_back(&self, token: &SessionToken) {
        use tower_saas_guard::session::SessionStore;
        self.store.inner.delete(&token.id()).await.expect("delete");
    }

    /// Sends `request` on `service` with the store's extends held at the
    /// extend gate, and returns once the renewal is waiting there.
    async fn start_held_renewal(
        &self,
        service: &Echo,
        request: Request<()>,
    ) -> tokio::task::JoinHandle<Answer> {
        self.store.extend_gate.close();
        let extends_before = self.store.extends();
        let write = tokio::spawn({
            let service = service.clone();
            async move { send(&service, request).await }
        });
        while self.store.extends() == extends_before {
            tokio::task::yield_now().await;
        }
        write
    }

    /// What the store holds as the session's expiry.
    async fn stored_expiry(&self, token: &SessionToken) -> Option<SystemTime> {
        use tower_saas_guard::session::SessionStore;
        self.store
            .inner
            .load(&token.id())
            .await
            .expect("memory store")
            .map(|record| record.expires_at)
    }
}

fn with_token(token: &SessionToken) -> Request<()> {
    Request::builder()
        .header("x-session-id", token.to_string())
        .body(())
        .expect("valid request")
}

fn assert_rejected(answer: &Answer, code: &str) {
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{:?}", answer.body);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(answer.body["code"], code);
    assert_eq!(answer.body["status"], 401);
    assert!(
        !answer.headers.contains_key(SESSION_EXPIRES_AT),
        "a rejection never carries x-session-expires-at"
    );
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    assert!(answer.headers.contains_key(header::WWW_AUTHENTICATE));
}

fn expires_header(answer: &Answer) -> String {
    answer.headers[SESSION_EXPIRES_AT]
        .to_str()
        .expect("ascii")
        .to_owned()
}

#[tokio::test]
async fn valid_session_reaches_the_handler_with_its_extension_and_expiry_header() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());

    let answer = send(&service, with_token(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let expected_expiry = rfc3339_millis(epoch() + 24 * HOUR);
    assert_eq!(expires_header(&answer), expected_expiry);
    assert_eq!(answer.body["id"], token.id().to_string());
    assert_eq!(answer.body["organization_id"], "org_1");
    assert_eq!(answer.body["created_at"], rfc3339_millis(epoch()));
    assert_eq!(answer.body["expires_at"], expected_expiry);
    assert_eq!(answer.body["renewed"], false);
    assert_eq!(answer.body["payload"]["email"], "ada@example.com");
    // Creation warmed the cache: no store read at all.
    assert_eq!(fixture.store.loads(), 0);
}

#[tokio::test]
async fn skipped_requests_pass_untouched_and_never_read_the_store() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let unknown = SessionToken::generate().expect("os randomness");
    let service = echo_service(
        fixture
            .layer
            .clone()
            .skip_when(|head: &RequestHead<'_>| head.uri().path() == "/healthz"),
    );
    let to = |path: &str, token: Option<&SessionToken>| {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header("x-session-id", token.to_string());
        }
        request.body(()).expect("valid request")
    };

    // Skipped, with no token, an unknown one or a valid one: the handler
    // sees no session, and nothing is added to the answer.
    for token in [None, Some(&unknown), Some(&token)] {
        let answer = send(&service, to("/healthz", token)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, Value::Null, "no Session extension");
        assert!(!answer.headers.contains_key(SESSION_EXPIRES_AT));
    }
    assert_eq!(fixture.store.loads(), 0);

    // Every other path is checked as before.
    assert_rejected(
        &send(&service, to("/account", None)).await,
        "session_missing",
    );
    assert_rejected(
        &send(&service, to("/account", Some(&unknown))).await,
        "session_not_found",
    );
    assert_eq!(fixture.store.loads(), 1);
    let answer = send(&service, to("/account", Some(&token))).await;
    assert_eq!(answer.body["id"], token.id().to_string());
    assert!(answer.headers.contains_key(SESSION_EXPIRES_AT));
}

#[tokio::test]
async fn missing_token_is_session_missing_for_every_source() {
    let fixture = Fixture::new();
    for layer in [
        fixture.layer.clone(),
        fixture.layer.clone().token_source(BearerSource),
        fixture.layer.clone().token_source(CookieSource::new("sid")),
    ] {
        let service = echo_service(layer);
        let answer = send(&service, Request::new(())).await;
        assert_rejected(&answer, "session_missing");
    }
    assert_eq!(fixture.store.loads(), 0);
}

#[tokio::test]
async fn malformed_token_is_session_invalid_without_touching_the_store() {
    let fixture = Fixture::new();
    let good = fixture.create().await.to_string();
    let cases: Vec<(SessionRefreshLayer, &str, String)> = vec![
        (fixture.layer.clone(), "x-session-id", "short".into()),
        (fixture.layer.clone(), "x-session-id", format!("{good}x")),
        (
            fixture.layer.clone(),
            "x-session-id",
            format!("{}*", &good[..42]),
        ),
        (fixture.layer.clone(), "x-session-id", String::new()),
        (
            fixture.layer.clone().token_source(BearerSource),
            "authorization",
            "Bearer nope".into(),
        ),
        (
            fixture.layer.clone().token_source(BearerSource),
            "authorization",
            format!("Basic {good}"),
        ),
        (
            fixture.layer.clone().token_source(CookieSource::new("sid")),
            "cookie",
            "sid=%%%".into(),
        ),
    ];
    for (layer, name, value) in cases {
        let service = echo_service(layer);
        let request = Request::builder()
            .header(name, value.as_str())
            .body(())
            .expect("valid request");
        let answer = send(&service, request).await;
        assert_rejected(&answer, "session_invalid");
    }
    assert_eq!(
        fixture.store.loads(),
        0,
        "shape is checked before any store access"
    );
}

#[tokio::test]
async fn header_bearer_and_cookie_sources_all_authenticate() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let cases =
        [
            (fixture.layer.clone(), "x-session-id", token.to_string()),
            (
                fixture.layer.clone().token_source(HeaderSource::new(
                    http::HeaderName::from_static("x-widget-token"),
                )),
                "x-widget-token",
                token.to_string(),
            ),
            (
                fixture.layer.clone().token_source(BearerSource),
                "authorization",
                format!("Bearer {token}"),
            ),
            (
                fixture.layer.clone().token_source(CookieSource::new("sid")),
                "cookie",
                format!("theme=dark; sid={token}"),
            ),
        ];
    for (layer, name, value) in cases {
        let service = echo_service(layer);
        let request = Request::builder()
            .header(name, value)
            .body(())
            .expect("valid request");
        let answer = send(&service, request).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}");
        assert_eq!(answer.body["id"], token.id().to_string());
    }
}

#[tokio::test]
async fn a_user_function_can_be_the_token_source() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let from_query = |head: &RequestHead<'_>| {
        let query = head.uri().query().ok_or(TokenError::Missing)?;
        let value = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("session="))
            .ok_or(TokenError::Missing)?;
        Ok(SessionToken::parse(value)?)
    };
    let service = echo_service(fixture.layer.clone().token_source(from_query));
    let request = Request::builder()
        .uri(format!("/x?a=1&session={token}"))
        .body(())
        .expect("valid request");
    assert_eq!(send(&service, request).await.status, StatusCode::OK);
    let request = Request::builder()
        .uri("/x?session=bad")
        .body(())
        .expect("valid request");
    assert_rejected(&send(&service, request).await, "session_invalid");
    assert_rejected(&send(&service, Request::new(())).await, "session_missing");
}

#[tokio::test]
async fn unknown_token_is_session_not_found_and_creates_nothing() {
    let fixture = Fixture::new();
    let service = echo_service(fixture.layer.clone());
    let stranger = SessionToken::generate().expect("os randomness");
    for _ in 0..3 {
        assert_rejected(
            &send(&service, with_token(&stranger)).await,
            "session_not_found",
        );
    }
    assert!(
        fixture.store.inner.is_empty(),
        "an unknown token never creates a record"
    );
    assert_eq!(fixture.store.extends(), 0);
}

#[tokio::test]
async fn expired_session_is_rejected_not_recreated() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());

    fixture.clock.advance(24 * HOUR - Duration::from_millis(1));
    assert_eq!(
        send(&service, with_token(&token)).await.status,
        StatusCode::OK
    );
    // The request above renewed it (less than 4 h were left); let it lapse.
    fixture.clock.advance(24 * HOUR);
    let expired_at = fixture.stored_expiry(&token).await.expect("still stored");
    assert!(expired_at <= fixture.clock.now());

    for _ in 0..3 {
        assert_rejected(&send(&service, with_token(&token)).await, "session_expired");
    }
    assert_eq!(
        fixture.stored_expiry(&token).await,
        Some(expired_at),
        "never extended"
    );
    assert_eq!(fixture.store.inner.len(), 1, "nothing created");
}

#[tokio::test]
async fn expired_records_answer_session_expired_until_the_retention_has_passed() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    let handle = fixture.layer.handle();

    fixture.clock.advance(24 * HOUR + 23 * HOUR);
    assert_eq!(
        handle.purge_expired().await.expect("purge"),
        0,
        "retained 24 h"
    );
    assert_rejected(&send(&service, with_token(&token)).await, "session_expired");

    fixture.clock.advance(2 * HOUR);
    assert_eq!(handle.purge_expired().await.expect("purge"), 1);
    assert_rejected(
        &send(&service, with_token(&token)).await,
        "session_not_found",
    );
}

#[tokio::test]
async fn renews_only_within_threshold() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    let first_expiry = epoch() + 24 * HOUR;

    // 20 h later exactly 4 h are left: not *less* than the threshold.
    for step in [HOUR, 10 * HOUR, 9 * HOUR] {
        fixture.clock.advance(step);
        let answer = send(&service, with_token(&token)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body["renewed"], false);
        assert_eq!(expires_header(&answer), rfc3339_millis(first_expiry));
    }
    assert_eq!(fixture.store.extends(), 0, "no write outside the threshold");

    fixture.clock.advance(Duration::from_millis(1));
    let answer = send(&service, with_token(&token)).await;
    let renewed_to = fixture.clock.now() + 24 * HOUR;
    assert_eq!(answer.body["renewed"], true);
    assert_eq!(expires_header(&answer), rfc3339_millis(renewed_to));
    assert_eq!(answer.body["expires_at"], rfc3339_millis(renewed_to));
    assert_eq!(fixture.stored_expiry(&token).await, Some(renewed_to));
    assert_eq!(fixture.store.extends(), 1);

    // Right after a renewal, more activity writes nothing.
    fixture.clock.advance(SECOND);
    let answer = send(&service, with_token(&token)).await;
    assert_eq!(answer.body["renewed"], false);
    assert_eq!(expires_header(&answer), rfc3339_millis(renewed_to));
    assert_eq!(fixture.store.extends(), 1);
}

#[tokio::test]
async fn validate_only_never_renews() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone().validate_only());
    fixture.clock.advance(23 * HOUR);
    let answer = send(&service, with_token(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(expires_header(&answer), rfc3339_millis(epoch() + 24 * HOUR));
    fixture.clock.advance(HOUR);
    assert_rejected(&send(&service, with_token(&token)).await, "session_expired");
    assert_eq!(fixture.store.extends(), 0);
}

#[tokio::test]
async fn an_activity_predicate_chooses_which_requests_renew() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let only_writes = |head: &RequestHead<'_>| head.method() != Method::GET;
    let service = echo_service(fixture.layer.clone().activity(only_writes));
    fixture.clock.advance(21 * HOUR);

    for _ in 0..3 {
        let mut get = with_token(&token);
        *get.method_mut() = Method::GET;
        assert_eq!(send(&service, get).await.body["renewed"], false);
    }
    assert_eq!(fixture.store.extends(), 0);

    let mut post = with_token(&token);
    *post.method_mut() = Method::POST;
    let renewed = send(&service, post).await;
    assert_eq!(renewed.body["renewed"], true);
    assert_eq!(fixture.store.extends(), 1);

    // A read right after sees the renewed expiry, not the copy it used
    // before the renewal.
    let mut get = with_token(&token);
    *get.method_mut() = Method::GET;
    let read = send(&service, get).await;
    assert_eq!(read.body["renewed"], false);
    assert_eq!(expires_header(&read), expires_header(&renewed));
    assert_eq!(read.body["expires_at"], renewed.body["expires_at"]);
}

#[tokio::test]
async fn absolute_lifetime_caps_renewal() {
    let fixture = Fixture::with(|builder| {
        builder
            .duration(10 * SECOND)
            .refresh_threshold(5 * SECOND)
            .absolute_lifetime(25 * SECOND)
    });
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    let cap = epoch() + 25 * SECOND;

    let mut latest = epoch() + 10 * SECOND;
    for _ in 0..8 {
        fixture.clock.advance(3 * SECOND);
        if fixture.clock.now() >= latest {
            break;
        }
        let answer = send(&service, with_token(&token)).await;
        assert_eq!(answer.status, StatusCode::OK);
        let expiry = fixture.stored_expiry(&token).await.expect("stored");
        assert!(
            expiry <= cap,
            "expires_at never passes created_at + absolute_lifetime"
        );
        assert!(expiry >= latest, "expires_at never moves backwards");
        latest = expiry;
    }
    assert_eq!(latest, cap, "renewals reached the cap exactly");
    fixture.clock.set(cap);
    assert_rejected(&send(&service, with_token(&token)).await, "session_expired");
}

#[tokio::test]
async fn disabled_absolute_lifetime_lets_an_active_session_live_on() {
    let fixture = Fixture::with(|builder| {
        builder
            .duration(10 * SECOND)
            .refresh_threshold(5 * SECOND)
            .no_absolute_lifetime()
    });
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    for _ in 0..40 {
        fixture.clock.advance(3 * SECOND);
        assert_eq!(
            send(&service, with_token(&token)).await.status,
            StatusCode::OK
        );
    }
    assert!(fixture.stored_expiry(&token).await.expect("stored") > epoch() + 120 * SECOND);
}

#[tokio::test]
async fn cached_record_renewed_by_another_writer_is_not_rejected() {
    // Two processes share one store; each has its own cache.
    let fixture = Fixture::new();
    let other_process = fixture.other_process();
    let token = fixture.create().await;
    let here = echo_service(fixture.layer.clone().validate_only());
    let there = echo_service(other_process);

    assert_eq!(send(&here, with_token(&token)).await.status, StatusCode::OK);
    fixture.clock.advance(21 * HOUR);
    let renewed = send(&there, with_token(&token)).await;
    assert_eq!(renewed.body["renewed"], true);

    // Past the expiry this process cached: it must ask the store again.
    fixture.clock.advance(4 * HOUR);
    let loads_before = fixture.store.loads();
    let answer = send(&here, with_token(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(expires_header(&answer), expires_header(&renewed));
    assert_eq!(
        fixture.store.loads(),
        loads_before + 1,
        "re-read exactly once"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_thousand_concurrent_requests_on_a_cold_session_load_it_once() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    // A fresh process: same store, empty cache.
    let cold = fixture.other_process();
    let service = echo_service(cold);
    fixture.store.gate.close();

    let requests: Vec<_> = (0..1000)
        .map(|_| {
            tokio::spawn({
                let service = service.clone();
                async move { send(&service, with_token(&token)).await.status }
            })
        })
        .collect();
    // Let every request reach the store gate before it opens.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    fixture.store.gate.open();
    for request in requests {
        assert_eq!(request.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(fixture.store.loads(), 1);

    // And they are now served from the cache.
    send(&service, with_token(&token)).await;
    assert_eq!(fixture.store.loads(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_thousand_concurrent_due_requests_write_once() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    fixture.clock.advance(21 * HOUR);
    fixture.store.gate.close();

    let requests: Vec<_> = (0..1000)
        .map(|_| {
            tokio::spawn({
                let service = service.clone();
                async move { send(&service, with_token(&token)).await }
            })
        })
        .collect();
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    fixture.store.gate.open();
    let renewed_to = rfc3339_millis(fixture.clock.now() + 24 * HOUR);
    for request in requests {
        let answer = request.await.expect("task");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(expires_header(&answer), renewed_to);
    }
    assert_eq!(fixture.store.extends(), 1);
    // The cached copy was older than the cache TTL: re-read once, for all.
    assert_eq!(fixture.store.loads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_due_requests_on_two_threads_write_once_and_never_backwards() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    fixture.clock.advance(21 * HOUR);
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            tokio::spawn({
                let service = service.clone();
                async move { send(&service, with_token(&token)).await.status }
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(fixture.store.extends(), 1);
    assert_eq!(
        fixture.stored_expiry(&token).await,
        Some(fixture.clock.now() + 24 * HOUR)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_seen_at_once_by_every_thread() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    let request = move || with_token(&token);
    // Both worker threads now hold the session in their hot tables.
    burst(&service, request, StatusCode::OK).await;
    // Requests keep arriving on both threads while the revocation runs.
    let during = burst_during(&service, token);
    assert!(fixture.layer.handle().revoke(&token).await.expect("revoke"));
    during.await.expect("concurrent requests");
    burst(&service, request, StatusCode::UNAUTHORIZED).await;
}

/// Requests on the session while something else happens: each may pass or
/// be rejected, but none may fail otherwise.
fn burst_during(service: &support::Echo, token: SessionToken) -> tokio::task::JoinHandle<()> {
    let service = service.clone();
    tokio::spawn(async move {
        for _ in 0..200 {
            let status = send(&service, with_token(&token)).await.status;
            assert!(status == StatusCode::OK || status == StatusCode::UNAUTHORIZED);
            tokio::task::yield_now().await;
        }
    })
}

#[tokio::test]
async fn revoked_session_is_rejected_at_once_even_when_cached() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    // Several times: the copy is in this thread's hot table, too.
    for _ in 0..3 {
        assert_eq!(
            send(&service, with_token(&token)).await.status,
            StatusCode::OK
        );
    }

    assert!(fixture.layer.handle().revoke(&token).await.expect("revoke"));
    assert_rejected(
        &send(&service, with_token(&token)).await,
        "session_not_found",
    );
    assert!(!fixture
        .layer
        .handle()
        .revoke(&token)
        .await
        .expect("revoke twice"));
}

#[tokio::test]
async fn a_revocation_by_another_process_is_seen_within_the_cache_ttl() {
    let fixture = Fixture::with(|builder| builder.cache_ttl(30 * SECOND));
    let other_process = fixture.other_process();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    assert_eq!(
        send(&service, with_token(&token)).await.status,
        StatusCode::OK
    );

    assert!(other_process.handle().revoke(&token).await.expect("revoke"));
    fixture.clock.advance(29 * SECOND);
    // Bounded staleness: this process may still trust its copy for a while.
    assert_eq!(
        send(&service, with_token(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(fixture.store.loads(), 0);
    fixture.clock.advance(SECOND);
    assert_rejected(
        &send(&service, with_token(&token)).await,
        "session_not_found",
    );
    assert_eq!(fixture.store.loads(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_load_that_raced_a_revocation_does_not_put_the_session_back() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let cold = fixture.other_process();
    let service = echo_service(cold.clone());
    fixture.store.gate.close();
    // This load reads the live record, then waits at the gate.
    let racing = tokio::spawn({
        let service = service.clone();
        async move { send(&service, with_token(&token)).await.status }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(fixture.store.loads(), 1);
    assert!(cold.handle().revoke(&token).await.expect("revoke"));
    fixture.store.gate.open();
    assert_eq!(
        racing.await.expect("task"),
        StatusCode::OK,
        "read before the revocation"
    );

    // The revocation has returned: the next request must not be let in.
    assert_rejected(
        &send(&service, with_token(&token)).await,
        "session_not_found",
    );
    // Had the raced record been cached, the request above would have
    // passed; the revoked id is remembered as unknown, so no second read.
    assert_eq!(fixture.store.loads(), 1);
}

#[tokio::test]
async fn revoking_an_organization_ends_all_its_sessions_and_only_those() {
    let fixture = Fixture::new();
    let handle = fixture.layer.handle();
    let first = fixture.create().await;
    let second = fixture.create().await;
    let other = handle
        .create(Some("org_2"), json!({}))
        .await
        .expect("create")
        .token;
    let service = echo_service(fixture.layer.clone());
    for token in [&first, &second, &other, &first, &second, &first, &second] {
        assert_eq!(
            send(&service, with_token(token)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        handle.revoke_organization("org_1").await.expect("revoke"),
        2
    );
    assert_rejected(
        &send(&service, with_token(&first)).await,
        "session_not_found",
    );
    assert_rejected(
        &send(&service, with_token(&second)).await,
        "session_not_found",
    );
    assert_eq!(
        send(&service, with_token(&other)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn cookie_is_resent_with_the_new_max_age_only_when_renewed() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone().token_source(CookieSource::new("sid")));
    let request = || {
        Request::builder()
            .header("cookie", format!("sid={token}"))
            .body(())
            .expect("valid request")
    };
    let answer = send(&service, request()).await;
    assert!(!answer.headers.contains_key(header::SET_COOKIE));

    fixture.clock.advance(22 * HOUR);
    let answer = send(&service, request()).await;
    assert_eq!(answer.body["renewed"], true);
    assert_eq!(
        answer.headers[header::SET_COOKIE],
        format!("sid={token}; Max-Age=86400; Path=/; HttpOnly; Secure; SameSite=Lax").as_str()
    );
}

#[tokio::test]
async fn grpc_callers_get_trailers_only_unauthenticated() {
    let fixture = Fixture::new();
    let service = echo_service(fixture.layer.clone());
    let stranger = SessionToken::generate().expect("os randomness");
    let requests = [
        Request::builder()
            .method("POST")
            .header("content-type", "application/grpc")
            .body(()),
        Request::builder()
            .method("POST")
            .header("content-type", "application/grpc+proto")
            .header("x-session-id", "garbage")
            .body(()),
        Request::builder()
            .method("POST")
            .header("content-type", "application/grpc")
            .header("x-session-id", stranger.to_string())
            .body(()),
    ];
    for request in requests {
        let answer = send(&service, request.expect("valid request")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["content-type"], "application/grpc");
        assert_eq!(answer.headers["grpc-status"], "16");
        assert!(answer.headers.contains_key("grpc-message"));
        assert_eq!(answer.body, Value::Null, "trailers-only: no body");
    }
}

#[tokio::test]
async fn a_get_claiming_grpc_is_answered_over_http_not_with_a_200() {
    let fixture = Fixture::new();
    let service = echo_service(fixture.layer.clone());
    for content_type in [
        "application/grpc",
        "application/grpc+proto",
        "application/grpcfoo",
    ] {
        let request = Request::builder()
            .header("content-type", content_type)
            .body(())
            .expect("valid request");
        assert_rejected(&send(&service, request).await, "session_missing");
    }
    // A POST with a content type that merely starts like gRPC's, too.
    let request = Request::builder()
        .method("POST")
        .header("content-type", "application/grpcfoo")
        .body(())
        .expect("valid request");
    assert_rejected(&send(&service, request).await, "session_missing");
}

#[tokio::test]
async fn every_401_challenges_with_where_its_source_reads_the_token() {
    let fixture = Fixture::new();
    let stranger = SessionToken::generate().expect("os randomness");
    let cases: [(SessionRefreshLayer, &str, String, [&str; 3]); 3] = [
        (
            fixture.layer.clone(),
            "x-session-id",
            stranger.to_string(),
            [r#"Session header="x-session-id""#; 3],
        ),
        (
            fixture.layer.clone().token_source(BearerSource),
            "authorization",
            format!("Bearer {stranger}"),
            [
                "Bearer",
                r#"Bearer error="invalid_token""#,
                r#"Bearer error="invalid_token""#,
            ],
        ),
        (
            fixture.layer.clone().token_source(CookieSource::new("sid")),
            "cookie",
            format!("sid={stranger}"),
            [r#"Session cookie="sid""#; 3],
        ),
    ];
    for (layer, name, unknown, [missing, malformed, not_found]) in cases {
        let service = echo_service(layer);
        let challenge = |answer: &Answer| answer.headers[header::WWW_AUTHENTICATE].clone();
        let answer = send(&service, Request::new(())).await;
        assert_rejected(&answer, "session_missing");
        assert_eq!(challenge(&answer), missing, "{name}");
        let garbage = if name == "authorization" {
            "Bearer x"
        } else {
            "sid=x"
        };
        let garbage = if name == "x-session-id" { "x" } else { garbage };
        let request = Request::builder().header(name, garbage).body(());
        let answer = send(&service, request.expect("valid request")).await;
        assert_rejected(&answer, "session_invalid");
        assert_eq!(challenge(&answer), malformed, "{name}");
        // Decided after a store read, on the other path through the layer.
        let request = Request::builder().header(name, unknown).body(());
        let answer = send(&service, request.expect("valid request")).await;
        assert_rejected(&answer, "session_not_found");
        assert_eq!(challenge(&answer), not_found, "{name}");
    }
}

#[tokio::test]
async fn a_logout_marked_session_ended_carries_no_expiry_and_clears_the_cookie() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let other = fixture.create().await;
    let cookies = CookieSource::new("sid");
    let handle = fixture.layer.handle();
    let logout = service_fn(move |request: Request<()>| {
        let handle = handle.clone();
        let cookies = cookies.clone();
        async move {
            let session = request
                .extensions()
                .get::<Session>()
                .cloned()
                .expect("the layer put the session there");
            let (existed, ended) = handle.logout(&session).await.expect("memory store");
            let mut response = Response::new(json!({ "existed": existed }).to_string());
            response.extensions_mut().insert(ended);
            response
                .headers_mut()
                .insert(header::SET_COOKIE, cookies.clear_cookie());
            Ok::<_, Infallible>(response)
        }
    });
    let service: Echo = tower::util::BoxCloneSyncService::new(
        fixture
            .layer
            .validate_only()
            .token_source(CookieSource::new("sid"))
            .layer(logout),
    );
    let request = |token: &SessionToken| {
        Request::builder()
            .header("cookie", format!("sid={token}"))
            .body(())
            .expect("valid request")
    };
    let answer = send(&service, request(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["existed"], true);
    assert!(
        !answer.headers.contains_key(SESSION_EXPIRES_AT),
        "{:?}",
        answer.headers
    );
    assert_eq!(
        answer.headers[header::SET_COOKIE],
        "sid=; Max-Age=0; Path=/; HttpOnly; Secure; SameSite=Lax"
    );
    assert_rejected(&send(&service, request(&token)).await, "session_not_found");
    // Only that session ended; a response without the marker keeps the header.
    let answer = send(&echo_service(fixture.layer.clone()), with_token(&other)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.headers.contains_key(SESSION_EXPIRES_AT));
}

#[tokio::test]
async fn grpc_responses_carry_the_expiry_as_response_metadata() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    let request = Request::builder()
        .method("POST")
        .header("content-type", "application/grpc")
        .header("x-session-id", token.to_string())
        .body(())
        .expect("valid request");
    let answer = send(&service, request).await;
    assert_eq!(expires_header(&answer), rfc3339_millis(epoch() + 24 * HOUR));
}

#[tokio::test]
async fn failing_store_is_store_unavailable_with_retry_after() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let cold = echo_service(fixture.other_process());
    fixture
        .store
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let answer = send(&cold, with_token(&token)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["code"], "store_unavailable");
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");

    let mut grpc = with_token(&token);
    *grpc.method_mut() = Method::POST;
    grpc.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    let answer = send(&cold, grpc).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["grpc-status"], "14");
}

#[tokio::test(start_paused = true)]
async fn hanging_store_is_cut_off_by_the_timeout() {
    let fixture = Fixture::with(|builder| builder.store_timeout(Duration::from_millis(250)));
    let token = fixture.create().await;
    let cold = echo_service(
        SessionRefreshLayer::builder(fixture.store.clone())
            .clock(fixture.clock.clone())
            .store_timeout(Duration::from_millis(250))
            .build()
            .expect("valid configuration"),
    );
    fixture
        .store
        .hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let answer = send(&cold, with_token(&token)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["code"], "store_unavailable");
    assert_eq!(started.elapsed(), Duration::from_millis(250));
}

#[tokio::test]
async fn failed_renewal_lets_the_still_valid_session_through_and_retries_a_second_later() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    fixture.clock.advance(21 * HOUR);
    fixture
        .store
        .fail_extend
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let answer = send(&service, with_token(&token)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["renewed"], false);
    assert_eq!(expires_header(&answer), rfc3339_millis(epoch() + 24 * HOUR));

    // While the store is down, the write is retried once a second, not on
    // every request.
    for _ in 0..3 {
        fixture.clock.advance(Duration::from_millis(300));
        let answer = send(&service, with_token(&token)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body["renewed"], false);
    }
    assert_eq!(fixture.store.extends(), 1);

    fixture
        .store
        .fail_extend
        .store(false, std::sync::atomic::Ordering::SeqCst);
    fixture.clock.advance(Duration::from_millis(200));
    let answer = send(&service, with_token(&token)).await;
    assert_eq!(answer.body["renewed"], true);
    assert_eq!(fixture.store.extends(), 2);
}

#[tokio::test]
async fn a_renewal_that_fails_after_a_revocation_refuses_instead_of_admitting() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    fixture.clock.advance(21 * HOUR);
    fixture
        .store
        .fail_extend
        .store(true, std::sync::atomic::Ordering::SeqCst);
    fixture.store.extend_gate.close();
    let in_flight = tokio::spawn({
        let service = service.clone();
        async move { send(&service, with_token(&token)).await }
    });
    while fixture.store.extends() == 0 {
        tokio::task::yield_now().await;
    }
    // Revoked while its renewal is at the store; then the write fails.
    assert!(fixture
        .layer
        .handle()
        .revoke(&token)
        .await
        .expect("memory store"));
    fixture.store.extend_gate.open();
    let answer = in_flight.await.expect("the request completes");
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.body
    );
    assert_eq!(answer.body["code"], "store_unavailable");
    assert_rejected(
        &send(&service, with_token(&token)).await,
        "session_not_found",
    );
}

#[tokio::test]
async fn past_max_in_flight_a_new_token_is_refused_without_a_store_call() {
    let fixture = Fixture::with(|builder| builder.max_in_flight(2).no_negative_cache());
    let service = echo_service(fixture.layer.clone());
    fixture.store.load_gate.close();
    let strangers: Vec<SessionToken> = (0..3)
        .map(|_| SessionToken::generate().expect("os randomness"))
        .collect();
    let waiting: Vec<_> = strangers[..2]
        .iter()
        .map(|token| {
            let service = service.clone();
            let token = *token;
            tokio::spawn(async move { send(&service, with_token(&token)).await })
        })
        .collect();
    while fixture.store.loads() < 2 {
        tokio::task::yield_now().await;
    }
    // A third distinct token while two loads wait: refused on the spot.
    let answer = send(&service, with_token(&strangers[2])).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.body
    );
    assert_eq!(answer.body["code"], "store_unavailable");
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");
    // A token already in flight joins its load instead.
    let joined = tokio::spawn({
        let service = service.clone();
        let token = strangers[0];
        async move { send(&service, with_token(&token)).await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    fixture.store.load_gate.open();
    for request in waiting.into_iter().chain([joined]) {
        let answer = request.await.expect("the request completes");
        assert_rejected(&answer, "session_not_found");
    }
    assert_eq!(
        fixture.store.loads(),
        2,
        "the refused and the joined read nothing"
    );
    // Once the loads landed there is room again.
    assert_rejected(
        &send(&service, with_token(&strangers[2])).await,
        "session_not_found",
    );
    assert!(matches!(
        SessionRefreshLayer::builder(MemorySessionStore::new())
            .max_in_flight(0)
            .build(),
        Err(ConfigError::ZeroMaxInFlight)
    ));
}

#[tokio::test]
async fn with_token_keys_forged_tokens_never_reach_the_store_and_keys_rotate() {
    const OLD: &[u8] = b"an old key, 32 bytes or longer..";
    const NEW: &[u8] = b"the new key, 32 bytes or longer.";
    let store = ProbeStore::default();
    let clock = ManualClock::new(epoch());
    let layer = |keys: TokenKeys| {
        SessionRefreshLayer::builder(store.clone())
            .clock(clock.clone())
            .token_keys(keys)
            .build()
            .expect("valid configuration")
    };
    let before = layer(TokenKeys::new(OLD).expect("key"));
    let old_token = before
        .handle()
        .create(Some("org_1"), json!({}))
        .await
        .expect("create")
        .token;
    let service = echo_service(before.clone());
    assert_eq!(
        send(&service, with_token(&old_token)).await.status,
        StatusCode::OK
    );

    // Well-formed tokens the server never minted: refused, no store read.
    let loads = store.loads();
    for _ in 0..100 {
        let forged = SessionToken::generate().expect("os randomness");
        assert_rejected(
            &send(&service, with_token(&forged)).await,
            "session_invalid",
        );
        assert!(before
            .handle()
            .get(&forged)
            .await
            .expect("no store call")
            .is_none());
    }
    assert_eq!(
        store.loads(),
        loads,
        "not one store read for a forged token"
    );

    // Rotation: a new current key, the old one kept as previous. A cold
    // layer (another instance) accepts both generations of tokens.
    let rotated = layer(
        TokenKeys::new(NEW)
            .and_then(|keys| keys.previous(OLD))
            .expect("keys"),
    );
    let new_token = rotated
        .handle()
        .create(Some("org_1"), json!({}))
        .await
        .expect("create")
        .token;
    let service = echo_service(rotated);
    for token in [&old_token, &new_token] {
        assert_eq!(
            send(&service, with_token(token)).await.status,
            StatusCode::OK
        );
    }
    // The old key dropped: its tokens end, the new ones live on.
    let service = echo_service(layer(TokenKeys::new(NEW).expect("key")));
    assert_rejected(
        &send(&service, with_token(&old_token)).await,
        "session_invalid",
    );
    assert_eq!(
        send(&service, with_token(&new_token)).await.status,
        StatusCode::OK
    );
    // Without keys, nothing changes: a signed token is still a token.
    let plain = echo_service(fixture_free_layer(&store, &clock));
    assert_eq!(
        send(&plain, with_token(&new_token)).await.status,
        StatusCode::OK
    );
}

fn fixture_free_layer(store: &ProbeStore, clock: &ManualClock) -> SessionRefreshLayer {
    SessionRefreshLayer::builder(store.clone())
        .clock(clock.clone())
        .build()
        .expect("valid configuration")
}

#[tokio::test]
async fn session_revoked_before_its_renewal_is_not_found() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let service = echo_service(fixture.layer.clone());
    assert_eq!(
        send(&service, with_token(&token)).await.status,
        StatusCode::OK
    );
    fixture.delete_behind_the_back(&token).await;
    fixture.clock.advance(21 * HOUR);
    assert_rejected(
        &send(&service, with_token(&token)).await,
        "session_not_found",
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_renewal_is_seen_by_reads_that_cached_a_newer_load_meanwhile() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let writes = echo_service(fixture.layer.clone());
    let reads = echo_service(fixture.layer.clone().validate_only());
    fixture.clock.advance(21 * HOUR);
    assert_eq!(
        send(&reads, with_token(&token)).await.body["renewed"],
        false
    );

    // A renewal starts from that copy and waits in the store ...
    let write = fixture
        .start_held_renewal(&writes, with_token(&token))
        .await;
    // ... while the cache TTL passes and reads load a newer copy, which
    // this thread keeps using.
    fixture.clock.advance(31 * SECOND);
    for _ in 0..3 {
        assert_eq!(
            send(&reads, with_token(&token)).await.status,
            StatusCode::OK
        );
    }
    fixture.store.extend_gate.open();
    let renewed = write.await.expect("write");
    assert_eq!(renewed.body["renewed"], true);

    let read = send(&reads, with_token(&token)).await;
    assert_eq!(expires_header(&read), expires_header(&renewed));
    assert_eq!(read.body["expires_at"], renewed.body["expires_at"]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_load_that_read_before_a_renewal_does_not_put_the_old_expiry_back() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let writes = echo_service(fixture.layer.clone());
    let reads = echo_service(fixture.layer.clone().validate_only());
    fixture.clock.advance(21 * HOUR);
    assert_eq!(
        send(&reads, with_token(&token)).await.status,
        StatusCode::OK
    );

    // A renewal starts and waits in the store ...
    let write = fixture
        .start_held_renewal(&writes, with_token(&token))
        .await;
    // ... the cache TTL passes, and a read's load reads the old expiry
    // from the store and waits before caching it ...
    fixture.clock.advance(31 * SECOND);
    fixture.store.load_gate.close();
    let loads_before = fixture.store.loads();
    let read = tokio::spawn({
        let reads = reads.clone();
        async move { send(&reads, with_token(&token)).await }
    });
    while fixture.store.loads() == loads_before {
        tokio::task::yield_now().await;
    }
    // ... while the renewal lands.
    fixture.store.extend_gate.open();
    let renewed = write.await.expect("write");
    assert_eq!(renewed.body["renewed"], true);
    fixture.store.load_gate.open();
    let raced = read.await.expect("read");
    assert_eq!(raced.body["expires_at"], renewed.body["expires_at"]);

    // The cache kept the renewed copy: reads report it, writes write nothing.
    let read = send(&reads, with_token(&token)).await;
    assert_eq!(read.body["expires_at"], renewed.body["expires_at"]);
    let write = send(&writes, with_token(&token)).await;
    assert_eq!(write.body["renewed"], false);
    assert_eq!(fixture.store.extends(), 1);
}

#[tokio::test]
async fn a_renewal_that_finds_the_session_gone_ends_it_for_reads_too() {
    // 10 s sessions renewed within 5 s: due well inside the 30 s cache TTL.
    let fixture =
        Fixture::with(|builder| builder.duration(10 * SECOND).refresh_threshold(5 * SECOND));
    let token = fixture.create().await;
    let writes = echo_service(fixture.layer.clone());
    let reads = echo_service(fixture.layer.clone().validate_only());
    for _ in 0..2 {
        assert_eq!(
            send(&reads, with_token(&token)).await.status,
            StatusCode::OK
        );
    }
    fixture.delete_behind_the_back(&token).await;
    // Cached and trusted: reads still pass until the TTL or a store visit.
    assert_eq!(
        send(&reads, with_token(&token)).await.status,
        StatusCode::OK
    );
    fixture.clock.advance(6 * SECOND);
    assert_rejected(
        &send(&writes, with_token(&token)).await,
        "session_not_found",
    );
    // The renewal found it gone: reads that used the cached copy until now
    // are rejected too.
    assert_rejected(&send(&reads, with_token(&token)).await, "session_not_found");
}

#[tokio::test]
async fn inner_errors_pass_through_untouched() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let failing = service_fn(|_: Request<()>| async { Err::<Response<String>, _>("inner failed") });
    let mut service = fixture.layer.layer(failing);
    let error = service
        .ready()
        .await
        .expect("ready")
        .call(with_token(&token))
        .await
        .expect_err("the inner error is returned as is");
    assert_eq!(error, "inner failed");
}

#[tokio::test]
async fn the_response_builder_can_be_replaced() {
    let fixture = Fixture::new();
    let teapot = |rejection: &tower_saas_guard::Rejection, _: &RequestHead<'_>| {
        let mut response = Response::new(Bytes::from(rejection.code().as_str()));
        *response.status_mut() = StatusCode::IM_A_TEAPOT;
        response
    };
    let service = echo_service(fixture.layer.clone().responder(teapot));
    let response = service.oneshot(Request::new(())).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "session_missing");
}

#[test]
fn invalid_configuration_is_an_error_at_build_time() {
    let build = |configure: fn(
        tower_saas_guard::session::SessionRefreshBuilder,
    ) -> tower_saas_guard::session::SessionRefreshBuilder| {
        configure(SessionRefreshLayer::builder(ProbeStore::default()))
            .build()
            .err()
    };
    assert_eq!(
        build(|b| b.duration(Duration::ZERO)),
        Some(ConfigError::ZeroDuration)
    );
    assert!(matches!(
        build(|b| b.duration(HOUR).refresh_threshold(2 * HOUR)),
        Some(ConfigError::ThresholdExceedsDuration { .. })
    ));
    assert!(matches!(
        build(|b| b
            .duration(2 * HOUR)
            .refresh_threshold(HOUR)
            .absolute_lifetime(HOUR)),
        Some(ConfigError::AbsoluteLifetimeShorterThanDuration { .. })
    ));
    assert_eq!(
        build(|b| b.cache_capacity(0)),
        Some(ConfigError::ZeroCacheCapacity)
    );
    assert_eq!(
        build(|b| b.cache_ttl(Duration::ZERO)),
        Some(ConfigError::ZeroCacheTtl)
    );
    assert_eq!(
        build(|b| b.store_timeout(Duration::ZERO)),
        Some(ConfigError::ZeroStoreTimeout)
    );
    type Configure = fn(
        tower_saas_guard::session::SessionRefreshBuilder,
    ) -> tower_saas_guard::session::SessionRefreshBuilder;
    let too_long: [Configure; 4] = [
        |b| b.absolute_lifetime(Duration::MAX),
        |b| b.duration(Duration::from_secs(200 * 365 * 86_400)),
        |b| b.cache_ttl(Duration::MAX),
        |b| b.expired_retention(Duration::MAX),
    ];
    for configure in too_long {
        assert!(matches!(
            build(configure),
            Some(ConfigError::DurationTooLong { .. })
        ));
    }
    // The seed product's demonstration settings are expressible.
    assert_eq!(
        build(|b| b.duration(10 * SECOND).refresh_threshold(5 * SECOND)),
        None
    );
    assert_eq!(
        build(|b| b
            .duration(HOUR)
            .refresh_threshold(HOUR)
            .absolute_lifetime(HOUR)),
        None
    );
    let message = ConfigError::ThresholdExceedsDuration {
        threshold: 2 * HOUR,
        duration: HOUR,
    }
    .to_string();
    assert_eq!(
        message,
        "refresh threshold (2h) must not exceed the session duration (1h)"
    );
}

#[tokio::test]
async fn handle_get_reads_without_renewing() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let handle = fixture.layer.handle();
    fixture.clock.advance(23 * HOUR);
    let session = handle.get(&token).await.expect("store").expect("valid");
    assert_eq!(session.expires_at(), epoch() + 24 * HOUR);
    assert_eq!(fixture.store.extends(), 0);
    fixture.clock.advance(HOUR);
    assert!(handle.get(&token).await.expect("store").is_none());
    let stranger = SessionToken::generate().expect("os randomness");
    assert!(handle.get(&stranger).await.expect("store").is_none());
}

#[tokio::test]
async fn the_store_never_extends_a_record_that_has_already_expired() {
    use tower_saas_guard::session::{MemorySessionStore, SessionRecord, SessionStore};
    let store = MemorySessionStore::new();
    let token = SessionToken::generate().expect("os randomness");
    let expires_at = epoch() + 10 * SECOND;
    store
        .create(&SessionRecord {
            id: token.id(),
            organization_id: None,
            subject: None,
            created_at: epoch(),
            expires_at,
            payload: Value::Null,
        })
        .await
        .expect("create");
    let later = epoch() + 100 * SECOND;
    // Alive at `now`: extended.
    assert_eq!(
        store
            .extend(&token.id(), later, epoch() + 9 * SECOND)
            .await
            .expect("memory"),
        Some(later)
    );
    // Never backwards.
    assert_eq!(
        store
            .extend(&token.id(), epoch() + 50 * SECOND, epoch())
            .await
            .expect("memory"),
        Some(later)
    );
    // Expired at `now`: unchanged, whatever the target.
    let far = epoch() + 1000 * SECOND;
    assert_eq!(
        store.extend(&token.id(), far, later).await.expect("memory"),
        Some(later)
    );
    let stranger = SessionToken::generate().expect("os randomness");
    assert_eq!(
        store
            .extend(&stranger.id(), far, epoch())
            .await
            .expect("memory"),
        None
    );
}

#[tokio::test]
async fn unknown_and_expired_tokens_are_rejected_alike_from_every_source() {
    let fixture = Fixture::new();
    let token = fixture.create().await;
    let stranger = SessionToken::generate().expect("os randomness");
    type Present = fn(&SessionToken) -> String;
    let sources: [(SessionRefreshLayer, &str, Present); 3] = [
        (fixture.layer.clone(), "x-session-id", |t| t.to_string()),
        (
            fixture.layer.clone().token_source(BearerSource),
            "authorization",
            |t| format!("Bearer {t}"),
        ),
        (
            fixture.layer.clone().token_source(CookieSource::new("sid")),
            "cookie",
            |t| format!("sid={t}"),
        ),
    ];
    let request = |name: &str, value: String| {
        Request::builder()
            .header(name, value)
            .body(())
            .expect("valid request")
    };
    for (layer, name, present) in &sources {
        let service = echo_service(layer.clone());
        assert_rejected(
            &send(&service, request(name, present(&stranger))).await,
            "session_not_found",
        );
    }
    fixture.clock.advance(24 * HOUR);
    for (layer, name, present) in &sources {
        let service = echo_service(layer.clone());
        assert_rejected(
            &send(&service, request(name, present(&token))).await,
            "session_expired",
        );
    }
    assert_eq!(fixture.store.inner.len(), 1, "nothing created");
    assert_eq!(fixture.store.extends(), 0);
}
