//! Sliding sessions end to end: the session layer on every visitor route,
//! expiry and renewal with a `ManualClock`, the absolute lifetime.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use e2e_support::*;

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

/// Every route behind the session layer, as (method, path, JSON body).
fn session_routes(conversation_id: &str) -> Vec<(Method, String, Option<Value>)> {
    let messages = format!("/conversations/{conversation_id}/messages");
    vec![
        (Method::GET, "/contact-sessions/current".to_owned(), None),
        (Method::POST, "/conversations".to_owned(), None),
        (Method::GET, messages.clone(), None),
        (Method::POST, messages, Some(json!({ "content": "hello" }))),
    ]
}

async fn call(
    api: &Api,
    method: &Method,
    path: &str,
    body: &Option<Value>,
    token: Option<&str>,
) -> Reply {
    let request = api.request(method.clone(), path, token);
    match body {
        Some(body) => send(request.json(body)).await,
        None => send(request).await,
    }
}

#[tokio::test]
async fn missing_malformed_and_unknown_tokens_are_401_problems_without_expiry_header() {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    let unknown = SessionToken::generate().expect("os randomness").to_string();
    let cases = [
        (None, "session_missing"),
        (Some("not-a-token"), "session_invalid"),
        (Some(&token[..42]), "session_invalid"),
        (Some(unknown.as_str()), "session_not_found"),
    ];
    for (method, path, body) in session_routes(&id) {
        for (presented, code) in cases {
            let reply = call(api, &method, &path, &body, presented).await;
            assert_eq!(reply.status, 401, "{method} {path} {code}: {reply:?}");
            reply.assert_session_rejected(code);
        }
        // And the real token works on the same route.
        let reply = call(api, &method, &path, &body, Some(&token)).await;
        assert!(reply.status < 300, "{method} {path}: {reply:?}");
    }
}

#[tokio::test]
async fn expiry_header_is_on_every_response_that_passed_the_session_layer() {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    let stranger = api.start_session().await;
    let id = api.start_conversation(&token).await;
    let others = api.start_conversation(&stranger).await;
    let expiry = epoch() + 24 * HOUR;
    let messages = format!("/conversations/{id}/messages");
    let others_messages = format!("/conversations/{others}/messages");

    let replies = [
        (
            "current session",
            api.get("/contact-sessions/current", Some(&token)).await,
        ),
        (
            "new conversation",
            send(api.request(Method::POST, "/conversations", Some(&token))).await,
        ),
        ("list messages", api.get(&messages, Some(&token)).await),
        ("send message", api.send_message(&token, &id, "hello").await),
        (
            "400 from the handler",
            api.post_raw(&messages, Some(&token), Some("application/json"), "{")
                .await,
        ),
        (
            "404 from the handler",
            api.get(&others_messages, Some(&token)).await,
        ),
        (
            "404 for a message to another's conversation",
            api.send_message(&token, &others, "hi").await,
        ),
    ];
    for (case, reply) in replies {
        assert_eq!(
            reply.session_expires_at(),
            Some(expiry),
            "{case}: {reply:?}"
        );
    }
}

#[tokio::test]
async fn checks_run_session_first_then_body_then_conversation_id() {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    let unknown = "/conversations/conv_unknown/messages";
    let json = Some("application/json");

    // An invalid body without a session: the session layer answers first.
    api.post_raw(unknown, None, json, "{ broken")
        .await
        .assert_session_rejected("session_missing");
    api.post_raw(unknown, Some("bad"), json, r#"{"content": ""}"#)
        .await
        .assert_session_rejected("session_invalid");
    // An invalid body on an unknown conversation: the body answers first.
    api.post_raw(unknown, Some(&token), json, "{ broken")
        .await
        .assert_problem(400, "invalid_request");
    api.post_raw(unknown, Some(&token), json, r#"{"content": "   "}"#)
        .await
        .assert_problem(400, "invalid_request");
    // A valid body on an unknown conversation: then the id.
    api.post_raw(unknown, Some(&token), json, r#"{"content": "hi"}"#)
        .await
        .assert_problem(404, "not_found");
}

#[tokio::test]
async fn expired_session_is_rejected_on_every_route_and_never_recreated() {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;

    server.clock.advance(24 * HOUR);
    for round in 0..2 {
        for (method, path, body) in session_routes(&id) {
            let reply = call(api, &method, &path, &body, Some(&token)).await;
            assert_eq!(
                reply.status, 401,
                "round {round}: {method} {path}: {reply:?}"
            );
            reply.assert_session_rejected("session_expired");
        }
        server.clock.advance(HOUR);
    }
}

// ---------------------------------------------------------------------------
// SPEC §1: the 10 s / 5 s demonstration
// ---------------------------------------------------------------------------

const DEMO: [&str; 4] = ["--session-duration", "10s", "--refresh-threshold", "5s"];

#[tokio::test]
async fn ten_second_session_stays_alive_while_its_visitor_keeps_sending() {
    let server = serve(&DEMO).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;

    let mut expires_at = epoch() + 10 * SECOND;
    let mut renewals = 0;
    for step in 1..=12u32 {
        server.clock.advance(3 * SECOND);
        let now = epoch() + step * 3 * SECOND;
        let left = expires_at.duration_since(now).expect("still alive");

        let reply = api
            .send_message(&token, &id, &format!("message {step}"))
            .await;
        assert_eq!(reply.status, 201, "t={}s: {reply:?}", step * 3);
        let header = reply.session_expires_at().expect("x-session-expires-at");
        if left < 5 * SECOND {
            assert_eq!(
                header,
                now + 10 * SECOND,
                "t={}s: renewed with {left:?} left",
                step * 3
            );
            renewals += 1;
        } else {
            assert_eq!(
                header,
                expires_at,
                "t={}s: not renewed with {left:?} left",
                step * 3
            );
        }
        expires_at = header;
    }
    // 36 s after its creation, a 10 s session is alive, renewed every 6 s.
    assert_eq!(renewals, 6);
    let reply = api
        .get(&format!("/conversations/{id}/messages"), Some(&token))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["messages"].as_array().unwrap().len(), 13);
    let reply = api.get("/contact-sessions/current", Some(&token)).await;
    assert_eq!(timestamp(&reply.body, "expires_at"), epoch() + 46 * SECOND);
}

#[tokio::test]
async fn ten_second_session_that_only_reads_expires_and_is_not_recreated() {
    let server = serve(&DEMO).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    let messages = format!("/conversations/{id}/messages");
    let expires_at = epoch() + 10 * SECOND;

    for _ in 0..3 {
        server.clock.advance(3 * SECOND);
        let current = api.get("/contact-sessions/current", Some(&token)).await;
        assert_eq!(current.status, 200, "{current:?}");
        assert_eq!(
            current.session_expires_at(),
            Some(expires_at),
            "reads never renew"
        );
        assert_eq!(timestamp(&current.body, "expires_at"), expires_at);
        let listed = api.get(&messages, Some(&token)).await;
        assert_eq!(listed.status, 200, "{listed:?}");
        assert_eq!(
            listed.session_expires_at(),
            Some(expires_at),
            "reads never renew"
        );
    }

    // t = 10 s: expires_at <= now.
    server.clock.advance(SECOND);
    api.get("/contact-sessions/current", Some(&token))
        .await
        .assert_session_rejected("session_expired");
    api.get(&messages, Some(&token))
        .await
        .assert_session_rejected("session_expired");
    // Activity cannot bring it back, and it stays expired (not recreated,
    // not forgotten).
    api.send_message(&token, &id, "anyone?")
        .await
        .assert_session_rejected("session_expired");
    send(api.request(Method::POST, "/conversations", Some(&token)))
        .await
        .assert_session_rejected("session_expired");
    server.clock.advance(HOUR);
    api.get("/contact-sessions/current", Some(&token))
        .await
        .assert_session_rejected("session_expired");
}

#[tokio::test]
async fn absolute_lifetime_caps_a_session_however_active() {
    let server = serve(&[
        "--session-duration=10s",
        "--refresh-threshold=5s",
        "--absolute-lifetime=20s",
    ])
    .await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;

    // Renewed at 6 s (to 16 s) and at 12 s (capped at 20 s), then no more.
    for (seconds, expected) in [(6, 16), (12, 20), (18, 20)] {
        server.clock.set(epoch() + seconds * SECOND);
        let reply = api.send_message(&token, &id, "still here").await;
        assert_eq!(reply.status, 201, "t={seconds}s: {reply:?}");
        assert_eq!(
            reply.session_expires_at(),
            Some(epoch() + expected * SECOND),
            "t={seconds}s"
        );
    }
    server.clock.set(epoch() + 20 * SECOND);
    api.send_message(&token, &id, "hello?")
        .await
        .assert_session_rejected("session_expired");
}
