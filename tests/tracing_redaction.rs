//! The crate's tracing output over a whole session lifecycle names sessions
//! by their short `log_ref` only: neither the token nor the full id (the
//! hash stores key by) appears in any event or span, at any level.

mod support;

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use serde_json::json;
use tower::{service_fn, Layer, ServiceExt};
use tower_saas_guard::session::{
    MemorySessionStore, PageRequest, SessionOwner, SessionRefreshLayer, SessionToken,
};
use tower_saas_guard::ManualClock;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use support::epoch;

/// Every event and span, formatted with all its fields, as one line each.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Capture {
    fn push(&self, line: String) {
        self.0.lock().expect("not poisoned").push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").clone()
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = format!("span {}", span.metadata().name());
        span.record(&mut Line(&mut line));
        self.push(line);
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut line = "record".to_owned();
        values.record(&mut Line(&mut line));
        self.push(line);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = format!("{} {}", event.metadata().level(), event.metadata().target());
        event.record(&mut Line(&mut line));
        self.push(line);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "current_thread")]
async fn a_whole_session_lifecycle_logs_no_token_and_no_full_id() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let store = MemorySessionStore::new();
    let clock = ManualClock::new(epoch());
    let build = || {
        SessionRefreshLayer::builder(store.clone())
            .clock(clock.clone())
            .build()
            .expect("valid configuration")
    };
    let layer = build();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let call = |token: &SessionToken| {
        let service = service.clone();
        let request = Request::builder()
            .header("x-session-id", token.to_string())
            .body(())
            .expect("valid request");
        async move { service.oneshot(request).await.expect("infallible").status() }
    };

    let created = handle
        .create_for(
            Some("org_1"),
            Some("user_1"),
            json!({ "email": "ada@example.com" }),
        )
        .await
        .expect("create");
    let token = created.token;
    assert_eq!(call(&token).await, 200, "a hit");
    clock.advance(Duration::from_secs(21 * 3600));
    assert_eq!(call(&token).await, 200, "a renewal");
    // A cold instance: a cache miss and a store read.
    let cold = build().layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let request = Request::builder()
        .header("x-session-id", token.to_string())
        .body(())
        .expect("valid request");
    assert_eq!(
        cold.oneshot(request).await.expect("infallible").status(),
        200
    );
    let stranger = SessionToken::generate().expect("os randomness");
    assert_eq!(call(&stranger).await, 401, "unknown");
    let page = handle
        .list(SessionOwner::Subject("user_1"), PageRequest::first(10))
        .await
        .expect("list");
    assert_eq!(page.sessions.len(), 1);
    assert!(handle.revoke(&token).await.expect("revoke"));
    assert_eq!(call(&token).await, 401, "revoked");
    assert_eq!(handle.purge_expired().await.expect("purge"), 0);

    let lines = capture.lines();
    let all = lines.join("\n");
    // The lifecycle was traced at all (so the absence below means something).
    assert!(all.contains("session renewed"), "{all}");
    assert!(all.contains("session rejected"), "{all}");
    assert!(all.contains("store call"), "{all}");
    assert!(all.contains(&created.id.log_ref().to_string()), "{all}");
    for secret in [
        token.to_string(),
        created.id.to_string(),
        stranger.to_string(),
        stranger.id().to_string(),
        "ada@example.com".to_owned(),
    ] {
        assert!(!all.contains(&secret), "{secret} leaked into:\n{all}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_lost_and_regained_invalidation_channel_is_traced() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let channel = tower_saas_guard::invalidation::MemoryInvalidationChannel::new();
    let layer = SessionRefreshLayer::builder(MemorySessionStore::new())
        .invalidation_channel(channel.clone())
        .build()
        .expect("valid configuration");
    let handle = layer.handle();
    async fn connected(handle: &tower_saas_guard::session::SessionHandle, count: u64) {
        for _ in 0..200 {
            if handle
                .channel_status()
                .map_or(0, |status| status.connections)
                >= count
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not connected {count} times: {:?}", handle.channel_status());
    }
    connected(&handle, 1).await;
    channel.disconnect();
    connected(&handle, 2).await;

    let all = capture.lines().join("\n");
    assert!(
        all.contains("invalidation channel lost; reconnecting"),
        "{all}"
    );
    let regained = capture
        .lines()
        .into_iter()
        .filter(|line| line.contains("invalidation channel connected"))
        .collect::<Vec<_>>();
    assert_eq!(regained.len(), 2, "{all}");
    assert!(regained[1].contains("connections=2"), "{all}");
}
