//! Rate limits of the reference server (SPEC §5): creating sessions per
//! client address, writes per session and per organization; beyond a
//! limit 429 `rate_limited` with `Retry-After`, and the defaults never
//! stop a real user.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "tonic"
))]

mod e2e_support;

use e2e_support::*;

/// Five at once, then one a second: small enough to cross in a test.
const TIGHT: [&str; 4] = ["--rate-burst", "5", "--rate-per-second", "1"];

fn assert_rate_limited(reply: &Reply) {
    reply.assert_problem(429, "rate_limited");
    let retry_after: u64 = reply.headers["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    assert!((1..=2).contains(&retry_after), "{reply:?}");
}

#[tokio::test]
async fn creating_sessions_is_limited_per_client_address() {
    let server = serve(&TIGHT).await;
    for _ in 0..5 {
        server.api.start_session().await;
    }
    let reply = server
        .api
        .post_json(
            "/contact-sessions",
            None,
            &visitor("Ada", "ada@example.com", "org_1"),
        )
        .await;
    assert_rate_limited(&reply);
}

#[tokio::test]
async fn writes_are_limited_per_session_and_another_session_is_untouched() {
    let server = serve(&TIGHT).await;
    let flooder = server.api.start_session().await;
    let other = server.api.start_session().await;
    let conversation = server.api.start_conversation(&flooder).await;
    for round in 0..4 {
        let reply = server.api.send_message(&flooder, &conversation, "hi").await;
        assert_eq!(reply.status, 201, "round {round}: {reply:?}");
    }
    let reply = server.api.send_message(&flooder, &conversation, "hi").await;
    assert_rate_limited(&reply);
    let reply = send(
        server
            .api
            .request(Method::POST, "/conversations", Some(&flooder)),
    )
    .await;
    assert_rate_limited(&reply);
    // Reads are not limited; another session writes as usual.
    let reply = server
        .api
        .get(
            &format!("/conversations/{conversation}/messages"),
            Some(&flooder),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let theirs = server.api.start_conversation(&other).await;
    let reply = server.api.send_message(&other, &theirs, "hello").await;
    assert_eq!(reply.status, 201, "{reply:?}");
}

#[tokio::test]
async fn operator_writes_are_limited_per_organization() {
    let server = serve(&TIGHT).await;
    let token = server.api.start_session_in("org_1").await;
    let conversation = server.api.start_conversation(&token).await;
    for round in 0..5 {
        let reply = server
            .api
            .reply_as_operator("org_1", &conversation, "on it")
            .await;
        assert_eq!(reply.status, 201, "round {round}: {reply:?}");
    }
    let reply = server
        .api
        .reply_as_operator("org_1", &conversation, "on it")
        .await;
    assert_rate_limited(&reply);
    let reply = server.api.put_greeting("org_1", "Hello!").await;
    assert_rate_limited(&reply);
    // Another organization's bucket is its own.
    let reply = server.api.put_greeting("org_2", "Hello!").await;
    assert_ne!(reply.status, 429, "{reply:?}");
}

#[tokio::test]
async fn the_default_limits_let_a_hundred_quick_writes_through() {
    let server = serve(&[]).await;
    let token = server.api.start_session().await;
    let conversation = server.api.start_conversation(&token).await;
    for round in 0..99 {
        let reply = server.api.send_message(&token, &conversation, "hi").await;
        assert_eq!(reply.status, 201, "round {round}: {reply:?}");
    }
}
