//! Rate limits of the reference server (SPEC §5): creating sessions per
//! client address, writes per session and per organization; beyond a
//! limit 429 `rate_limited` with `Retry-After`, and the defaults never
//! stop a real user. And the caps on counts a client could otherwise grow
//! without end (conversations per session, messages per conversation,
//! files per organization): 409 `limit_reached`, nothing saved, exact
//! under concurrent writes, in memory, SQLite and PostgreSQL.
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

/// Small caps, and rate limits out of the way.
const CAPS: [&str; 10] = [
    "--max-conversations-per-session",
    "3",
    "--max-messages-per-conversation",
    "5",
    "--max-files-per-organization",
    "2",
    "--rate-burst",
    "1000",
    "--webhook-secret",
    SECRET,
];

fn assert_limit_reached(reply: &Reply, detail: &str) {
    reply.assert_problem(409, "limit_reached");
    assert!(
        reply.body["detail"].as_str().unwrap().contains(detail),
        "{reply:?}"
    );
    // Retrying will not help: no Retry-After.
    assert!(!reply.headers.contains_key("retry-after"), "{reply:?}");
}

/// Every cap, on the server `server` (its store whichever the test chose).
async fn every_cap_holds(server: &Server) {
    let api = &server.api;
    server.upgrade("org_paid").await;

    // Conversations per session: the fourth is refused, another session of
    // the same organization is not.
    let token = api.start_session_in("org_free").await;
    let mut conversations = Vec::new();
    for _ in 0..3 {
        conversations.push(api.start_conversation(&token).await);
    }
    let reply = send(api.request(Method::POST, "/conversations", Some(&token))).await;
    assert_limit_reached(&reply, "started 3 conversations");
    assert_eq!(api.conversation_ids("org_free").await, conversations);
    let other = api.start_session_in("org_free").await;
    api.start_conversation(&other).await;

    // Messages per conversation (free plan, no AI reply): the greeting and
    // four messages fill it; the sixth is refused, also to an operator.
    let full = &conversations[0];
    for round in 0..4 {
        let reply = api.send_message(&token, full, "hi").await;
        assert_eq!(reply.status, 201, "round {round}: {reply:?}");
    }
    let reply = api.send_message(&token, full, "one too many").await;
    assert_limit_reached(&reply, "limit of 5 messages");
    let reply = api
        .reply_as_operator("org_free", full, "also too many")
        .await;
    assert_limit_reached(&reply, "limit of 5 messages");
    let (_, roles, contents) = api.conversation(&token, full).await;
    assert_eq!(roles.len(), 5, "{contents:?}");
    assert!(
        !contents.iter().any(|c| c.contains("too many")),
        "{contents:?}"
    );

    // A refused visitor message changes nothing, not even the status it
    // would have set: the greeting and four operator replies fill an
    // `unresolved` conversation (operators leave the status as it is); a
    // visitor message without an AI reply (free plan) would escalate it.
    let quiet = &conversations[1];
    for round in 0..4 {
        let reply = api
            .reply_as_operator("org_free", quiet, "an operator")
            .await;
        assert_eq!(reply.status, 201, "round {round}: {reply:?}");
    }
    let reply = api.send_message(&token, quiet, "too late").await;
    assert_limit_reached(&reply, "limit of 5 messages");
    let (status, roles, _) = api.conversation(&token, quiet).await;
    assert_eq!((status.as_str(), roles.len()), ("unresolved", 5));

    // A paid plan's message needs room for the AI reply too: with one slot
    // left it is refused whole, and the conversation stays `unresolved`
    // (the refused write changed nothing, not even the status).
    let paid = api.start_session_in("org_paid").await;
    let conversation = api.start_conversation(&paid).await;
    let reply = api.send_message(&paid, &conversation, "question").await;
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");
    let reply = api
        .reply_as_operator("org_paid", &conversation, "an operator")
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let reply = api.send_message(&paid, &conversation, "another").await;
    assert_limit_reached(&reply, "limit of 5 messages");
    let (status, roles, _) = api.conversation(&paid, &conversation).await;
    assert_eq!((status.as_str(), roles.len()), ("unresolved", 4));

    // Files per organization: the third is refused until one is deleted.
    for name in ["a.md", "b.md"] {
        let reply = api.upload_file("org_paid", name, "# text").await;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    let reply = api.upload_file("org_paid", "c.md", "# text").await;
    assert_limit_reached(&reply, "limit of 2 files");
    let files = api.file_ids("org_paid").await;
    assert_eq!(files.len(), 2);
    assert_eq!(api.delete_file("org_paid", &files[0]).await.status, 204);
    let reply = api.upload_file("org_paid", "c.md", "# text").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    // Another organization's files are counted apart.
    server.upgrade("org_paid_2").await;
    let reply = api.upload_file("org_paid_2", "a.md", "# text").await;
    assert_eq!(reply.status, 201, "{reply:?}");
}

/// Twelve creations of one session at once against a cap of 3: exactly
/// three land, whatever the interleaving.
async fn concurrent_writes_never_overshoot(server: &Server) {
    let api = &server.api;
    let token = api.start_session_in("org_race").await;
    let replies = futures_util::future::join_all(
        (0..12).map(|_| send(api.request(Method::POST, "/conversations", Some(&token)))),
    )
    .await;
    let created = replies.iter().filter(|reply| reply.status == 201).count();
    let refused = replies.iter().filter(|reply| reply.status == 409).count();
    assert_eq!((created, refused), (3, 9), "{replies:?}");
    assert_eq!(api.conversation_ids("org_race").await.len(), 3);

    // Twelve messages at once into a conversation with room for four.
    let conversation = api.conversation_ids("org_race").await.remove(0);
    let replies = futures_util::future::join_all(
        (0..12).map(|_| api.send_message(&token, &conversation, "hi")),
    )
    .await;
    let sent = replies.iter().filter(|reply| reply.status == 201).count();
    assert_eq!(sent, 4, "{replies:?}");
    let (_, roles, _) = api.conversation(&token, &conversation).await;
    assert_eq!(roles.len(), 5);
}

#[tokio::test]
async fn caps_hold_in_memory() {
    let server = serve(&CAPS).await;
    every_cap_holds(&server).await;
    concurrent_writes_never_overshoot(&server).await;
}

#[tokio::test]
async fn caps_hold_in_sqlite() {
    let server = serve_sqlite(&CAPS).await;
    every_cap_holds(&server).await;
    concurrent_writes_never_overshoot(&server).await;
}

#[tokio::test]
async fn caps_hold_in_postgres_across_two_instances() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let mut args = vec!["--store", database.url.as_str()];
    args.extend_from_slice(&CAPS);
    let server = serve(&args).await;
    every_cap_holds(&server).await;
    concurrent_writes_never_overshoot(&server).await;

    // Two instances writing into one conversation at once share the cap.
    let other = serve(&args).await;
    let token = server.api.start_session_in("org_two").await;
    let conversation = server.api.start_conversation(&token).await;
    let replies = futures_util::future::join_all((0..12).map(|round| {
        let api = if round % 2 == 0 {
            &server.api
        } else {
            &other.api
        };
        api.send_message(&token, &conversation, "hi")
    }))
    .await;
    let sent = replies.iter().filter(|reply| reply.status == 201).count();
    assert_eq!(sent, 4, "{replies:?}");
}

#[test]
fn the_caps_have_flags_with_documented_defaults() {
    let config = parsed_config(&[]);
    assert_eq!(
        (
            config.max_conversations_per_session.get(),
            config.max_messages_per_conversation.get(),
            config.max_files_per_organization.get()
        ),
        (100, 1000, 1000)
    );
    let config = parsed_config(&["--max-files-per-organization=7"]);
    assert_eq!(config.max_files_per_organization.get(), 7);
    for zero in [
        "--max-conversations-per-session",
        "--max-messages-per-conversation",
        "--max-files-per-organization",
    ] {
        let error = parse_args([zero.to_owned(), "0".to_owned()]).unwrap_err();
        assert!(error.contains(zero), "{error}");
    }
}

#[test]
fn session_creation_buckets_ipv6_clients_by_their_64_network() {
    use e2e_support::widget_server::client_network;
    use std::net::IpAddr;
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    // Rotating through one /64 stays in one bucket; the next /64 is apart.
    let network = client_network(ip("2001:db8:1:2:aaaa::1"));
    assert_eq!(network, ip("2001:db8:1:2::"));
    assert_eq!(client_network(ip("2001:db8:1:2:ffff:1:2:3")), network);
    assert_ne!(client_network(ip("2001:db8:1:3::1")), network);
    // IPv4, also mapped into IPv6, is the address itself.
    assert_eq!(client_network(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    assert_eq!(client_network(ip("192.0.2.7")), ip("192.0.2.7"));
}
