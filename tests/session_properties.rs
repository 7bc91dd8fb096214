//! Property tests: `expires_at` never moves backwards, whatever the
//! interleaving of renewals.

mod support;

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};
use tower_saas_guard::session::{
    MemorySessionStore, SessionRecord, SessionRefreshLayer, SessionStore, SessionToken,
};
use tower_saas_guard::{Clock, ManualClock};

use support::{epoch, ProbeStore};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Concurrent `extend` calls with arbitrary targets: every caller sees a
    /// value at least its own target and at least what it saw before, and
    /// the store ends at the maximum.
    #[test]
    fn store_extend_is_extend_only_under_any_interleaving(
        workers in prop::collection::vec(prop::collection::vec(0u64..100_000, 1..40), 2..6),
    ) {
        runtime().block_on(async {
            let store = MemorySessionStore::new();
            let token = SessionToken::generate().expect("os randomness");
            let start = epoch() + Duration::from_millis(50_000);
            store.create(&SessionRecord {
                id: token.id(),
                organization_id: None,
                subject: None,
                created_at: epoch(),
                expires_at: start,
                payload: serde_json::Value::Null,
            }).await.expect("create");

            let expected = workers
                .iter()
                .flatten()
                .map(|ms| epoch() + Duration::from_millis(*ms))
                .fold(start, SystemTime::max);
            let tasks: Vec<_> = workers.into_iter().map(|targets| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut seen = SystemTime::UNIX_EPOCH;
                    for ms in targets {
                        let target = epoch() + Duration::from_millis(ms);
                        let now = store.extend(&token.id(), target, epoch()).await
                            .expect("memory store").expect("record exists");
                        assert!(now >= target, "stored value below the request");
                        assert!(now >= seen, "expires_at moved backwards");
                        seen = now;
                        tokio::task::yield_now().await;
                    }
                })
            }).collect();
            let watcher = {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut seen = SystemTime::UNIX_EPOCH;
                    for _ in 0..200 {
                        let now = store.load(&token.id()).await.expect("memory store")
                            .expect("record exists").expires_at;
                        assert!(now >= seen, "a reader saw expires_at move backwards");
                        seen = now;
                        tokio::task::yield_now().await;
                    }
                })
            };
            for task in tasks {
                task.await.expect("worker");
            }
            watcher.await.expect("watcher");
            let stored = store.load(&token.id()).await.expect("memory store").expect("exists");
            assert_eq!(stored.expires_at, expected);
        });
    }

    /// Two processes (two layers, one store, one clock) serve bursts of
    /// concurrent requests at random times: the stored expiry never moves
    /// backwards nor past the absolute cap, each process writes at most once
    /// per burst, and a request succeeds exactly when the session was alive.
    #[test]
    fn layer_renewals_never_move_expiry_backwards(
        steps in prop::collection::vec((0u64..9_000, 0usize..2, 1usize..8), 1..30),
    ) {
        runtime().block_on(async {
            let store = ProbeStore::default();
            let clock = ManualClock::new(epoch());
            let build = || SessionRefreshLayer::builder(store.clone())
                .clock(clock.clone())
                .duration(Duration::from_secs(10))
                .refresh_threshold(Duration::from_secs(5))
                .absolute_lifetime(Duration::from_secs(60))
                .build()
                .expect("valid configuration");
            let processes = [build(), build()];
            let token = processes[0].handle().create(None, ()).await.expect("create").token;
            let inner = service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            });
            let services: Vec<_> = processes.iter().map(|layer| layer.layer(inner)).collect();
            let cap = epoch() + Duration::from_secs(60);

            let mut stored = epoch() + Duration::from_secs(10);
            for (advance_ms, process, burst) in steps {
                clock.advance(Duration::from_millis(advance_ms));
                let alive = stored > clock.now();
                let extends_before = store.extends();
                let requests: Vec<_> = (0..burst).map(|_| {
                    let service = services[process].clone();
                    let request = Request::builder()
                        .header("x-session-id", token.to_string())
                        .body(())
                        .expect("valid request");
                    tokio::spawn(async move { service.oneshot(request).await.expect("infallible").status() })
                }).collect();
                for request in requests {
                    let status = request.await.expect("request task");
                    assert_eq!(status == StatusCode::OK, alive, "accepted iff alive");
                }
                assert!(store.extends() - extends_before <= 1, "one write per burst");
                let now_stored = store.inner.load(&token.id()).await.expect("memory store")
                    .expect("record kept").expires_at;
                assert!(now_stored >= stored, "expires_at moved backwards");
                assert!(now_stored <= cap, "expires_at passed the absolute lifetime");
                stored = now_stored;
            }
        });
    }
}
