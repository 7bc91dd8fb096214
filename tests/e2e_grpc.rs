//! The reference server's gRPC (`support.v1.Support`, `grpc.health.v1.Health`)
//! called by a real tonic client on the same address as its REST API, with
//! the clock in the test's hands: rejections, renewal, gating, sharing with
//! REST, application errors, and a store that is down.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "tonic"
))]

mod e2e_support;

use e2e_support::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The 10 s / 5 s demonstration.
const SHORT: [&str; 4] = ["--session-duration", "10s", "--refresh-threshold", "5s"];

fn list(conversation_id: &str) -> pb::ListMessagesRequest {
    pb::ListMessagesRequest {
        conversation_id: conversation_id.to_owned(),
    }
}

fn message(conversation_id: &str, content: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        conversation_id: conversation_id.to_owned(),
        content: content.to_owned(),
    }
}

fn draft(conversation_id: &str, draft: &str) -> pb::EnhanceRequest {
    pb::EnhanceRequest {
        conversation_id: conversation_id.to_owned(),
        draft: draft.to_owned(),
    }
}

/// Asserts a session rejection: `UNAUTHENTICATED`, no expiry metadata.
#[track_caller]
fn assert_unauthenticated<T: std::fmt::Debug>(result: Result<tonic::Response<T>, Status>) {
    let status = assert_code(result, Code::Unauthenticated);
    assert!(
        grpc_expires_at(status.metadata()).is_none(),
        "a rejection carries no expiry: {status:?}"
    );
    assert!(!status.message().is_empty(), "{status:?}");
}

#[tokio::test]
async fn calls_without_a_valid_session_are_unauthenticated() {
    let server = serve(&SHORT).await;
    let mut client = server.api.grpc().await;
    let token = server.api.start_session().await;
    let conversation = server.api.start_conversation(&token).await;

    // Missing.
    assert_unauthenticated(
        client
            .create_conversation(pb::CreateConversationRequest {})
            .await,
    );
    assert_unauthenticated(client.list_messages(list(&conversation)).await);
    // Malformed.
    assert_unauthenticated(
        client
            .send_message(with_session(message(&conversation, "hi"), "not-a-token"))
            .await,
    );
    // Unknown (well-formed, never issued).
    let unknown = SessionToken::generate().expect("os randomness").to_string();
    assert_unauthenticated(
        client
            .list_messages(with_session(list(&conversation), &unknown))
            .await,
    );
    // Expired.
    client
        .list_messages(with_session(list(&conversation), &token))
        .await
        .expect("still valid");
    server.clock.advance(10 * SECOND);
    assert_unauthenticated(
        client
            .list_messages(with_session(list(&conversation), &token))
            .await,
    );
    assert_unauthenticated(
        client
            .create_conversation(with_session(pb::CreateConversationRequest {}, &token))
            .await,
    );
    // REST agrees on the code.
    server
        .api
        .get(
            &format!("/conversations/{conversation}/messages"),
            Some(&token),
        )
        .await
        .assert_session_rejected("session_expired");
}

#[tokio::test]
async fn send_message_renews_inside_the_threshold_and_list_messages_never_does() {
    let server = serve(&SHORT).await;
    let mut client = server.api.grpc().await;
    let token = server.api.start_session().await;
    let created = client
        .create_conversation(with_session(pb::CreateConversationRequest {}, &token))
        .await
        .expect("a valid session");
    assert_eq!(
        grpc_expires_at(created.metadata()),
        Some(epoch() + 10 * SECOND)
    );
    let conversation = created.into_inner().conversation_id;

    // 4 s in, 6 s are left: outside the threshold, nothing to renew.
    server.clock.advance(4 * SECOND);
    let sent = client
        .send_message(with_session(message(&conversation, "hello"), &token))
        .await
        .expect("a valid session");
    assert_eq!(
        grpc_expires_at(sent.metadata()),
        Some(epoch() + 10 * SECOND)
    );

    // 6 s in, 4 s are left: listing only validates...
    server.clock.advance(2 * SECOND);
    let listed = client
        .list_messages(with_session(list(&conversation), &token))
        .await
        .expect("a valid session");
    assert_eq!(
        grpc_expires_at(listed.metadata()),
        Some(epoch() + 10 * SECOND)
    );
    // ... sending renews to now + 10 s.
    let sent = client
        .send_message(with_session(message(&conversation, "again"), &token))
        .await
        .expect("a valid session");
    assert_eq!(
        grpc_expires_at(sent.metadata()),
        Some(epoch() + 16 * SECOND)
    );

    // Past the first expiry the session lives on, over gRPC and REST.
    server.clock.advance(5 * SECOND);
    let listed = client
        .list_messages(with_session(list(&conversation), &token))
        .await
        .expect("renewed");
    assert_eq!(
        grpc_expires_at(listed.metadata()),
        Some(epoch() + 16 * SECOND)
    );
    let reply = server
        .api
        .get("/contact-sessions/current", Some(&token))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.session_expires_at(), Some(epoch() + 16 * SECOND));

    // CreateConversation renews too (15 s in, 1 s left).
    server.clock.advance(4 * SECOND);
    let created = client
        .create_conversation(with_session(pb::CreateConversationRequest {}, &token))
        .await
        .expect("renewed");
    assert_eq!(
        grpc_expires_at(created.metadata()),
        Some(epoch() + 25 * SECOND)
    );
}

#[tokio::test]
async fn sessions_and_conversations_are_shared_with_rest_both_ways() {
    let server = serve(&WITH_SECRET).await;
    let mut client = server.api.grpc().await;
    let token = server.api.start_session().await;

    // Opened over gRPC, read over REST.
    let created = client
        .create_conversation(with_session(pb::CreateConversationRequest {}, &token))
        .await
        .expect("a REST session works over gRPC")
        .into_inner();
    assert_eq!(created.status, "unresolved");
    assert!(created.conversation_id.starts_with("conv_"), "{created:?}");
    let sent = client
        .send_message(with_session(
            message(&created.conversation_id, "from gRPC"),
            &token,
        ))
        .await
        .expect("sent")
        .into_inner();
    // Free organization: no AI reply, the conversation waits for an operator.
    assert!(!sent.ai_replied);
    assert_eq!(sent.status, "escalated");
    let (status, roles, contents) = server
        .api
        .conversation(&token, &created.conversation_id)
        .await;
    assert_eq!(status, "escalated");
    assert_eq!(roles, ["assistant", "user"]);
    assert_eq!(contents[1], "from gRPC");
    assert_eq!(
        server.api.conversation_ids("org_1").await,
        std::slice::from_ref(&created.conversation_id)
    );

    // Opened over REST, written and read over gRPC, after an upgrade.
    server.upgrade("org_1").await;
    let rest = server.api.start_conversation(&token).await;
    let sent = client
        .send_message(with_session(message(&rest, "two words"), &token))
        .await
        .expect("sent")
        .into_inner();
    assert!(
        sent.ai_replied,
        "an entitled organization gets the AI reply"
    );
    assert_eq!(sent.status, "unresolved");
    let operator = server
        .api
        .reply_as_operator("org_1", &rest, "an operator here")
        .await;
    assert_eq!(operator.status, 201, "{operator:?}");
    let listed = client
        .list_messages(with_session(list(&rest), &token))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed.status, "unresolved");
    let roles: Vec<&str> = listed.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["assistant", "user", "assistant", "operator"]);
    assert_eq!(listed.messages[1].content, "two words");
    assert_eq!(listed.messages[3].content, "an operator here");
    let (_, _, contents) = server.api.conversation(&token, &rest).await;
    let ids: Vec<String> = listed.messages.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), contents.len());
    assert!(ids.iter().all(|id| id.starts_with("msg_")), "{ids:?}");

    // Another session sees neither conversation.
    let other = server.api.start_session().await;
    for conversation in [&created.conversation_id, &rest] {
        assert_code(
            client
                .list_messages(with_session(list(conversation), &other))
                .await,
            Code::NotFound,
        );
    }

    // A logout over REST ends the session over gRPC too.
    assert_eq!(server.api.logout(Some(&token)).await.status, 204);
    assert_unauthenticated(
        client
            .list_messages(with_session(list(&rest), &token))
            .await,
    );
}

#[tokio::test]
async fn enhance_needs_the_organization_and_a_subscription() {
    let server = serve(&WITH_SECRET).await;
    let mut client = server.api.grpc().await;
    let token = server.api.start_session().await;
    let conversation = server.api.start_conversation(&token).await;

    // No organization: the library's organization_missing.
    let status = assert_code(
        client.enhance(draft(&conversation, "thanks")).await,
        Code::Unauthenticated,
    );
    assert!(status.message().contains("x-organization-id"), "{status:?}");
    // A session is not an organization: the operator's call ignores it.
    assert_code(
        client
            .enhance(with_session(draft(&conversation, "thanks"), &token))
            .await,
        Code::Unauthenticated,
    );
    // A free organization.
    assert_code(
        client
            .enhance(as_operator(draft(&conversation, "thanks"), "org_1"))
            .await,
        Code::PermissionDenied,
    );

    server.upgrade("org_1").await;
    let enhanced = client
        .enhance(as_operator(
            draft(&conversation, "  thanks   a lot"),
            "org_1",
        ))
        .await
        .expect("a paying organization");
    assert!(grpc_expires_at(enhanced.metadata()).is_none(), "no session");
    assert_eq!(enhanced.into_inner().enhanced, "Thanks a lot.");
    // The same answer as REST's.
    let rest = server
        .api
        .enhance("org_1", &conversation, "  thanks   a lot")
        .await;
    assert_eq!(rest.body["enhanced"], "Thanks a lot.");
    // Another organization's conversation is not found, even when it pays.
    server.upgrade("org_2").await;
    assert_code(
        client
            .enhance(as_operator(draft(&conversation, "thanks"), "org_2"))
            .await,
        Code::NotFound,
    );
    // A cancellation takes effect on the next call.
    server.cancel("org_1").await;
    assert_code(
        client
            .enhance(as_operator(draft(&conversation, "thanks"), "org_1"))
            .await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_unknown_conversations_not_found() {
    let server = serve(&WITH_SECRET).await;
    let mut client = server.api.grpc().await;
    let token = server.api.start_session().await;
    let conversation = server.api.start_conversation(&token).await;
    server.upgrade("org_1").await;

    for content in ["", "   ", &"x".repeat(10_001)] {
        let status = assert_code(
            client
                .send_message(with_session(message(&conversation, content), &token))
                .await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains("content"), "{status:?}");
    }
    // The content is checked before the conversation, as over REST.
    assert_code(
        client
            .send_message(with_session(message("conv_unknown", ""), &token))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        client
            .send_message(with_session(message("conv_unknown", "hi"), &token))
            .await,
        Code::NotFound,
    );
    assert_code(
        client
            .list_messages(with_session(list("conv_unknown"), &token))
            .await,
        Code::NotFound,
    );
    assert_code(
        client.list_messages(with_session(list(""), &token)).await,
        Code::InvalidArgument,
    );
    assert_code(
        client
            .list_messages(with_session(list(&"c".repeat(129)), &token))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        client
            .enhance(as_operator(draft(&conversation, " "), "org_1"))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        client
            .enhance(as_operator(draft("conv_unknown", "thanks"), "org_1"))
            .await,
        Code::NotFound,
    );
    // Nothing was saved by the refused calls.
    let (status, roles, _) = server.api.conversation(&token, &conversation).await;
    assert_eq!((status.as_str(), roles.len()), ("unresolved", 1));
}

#[tokio::test]
async fn health_answers_serving_without_a_session() {
    let server = serve(&[]).await;
    let mut health = HealthClient::new(server.api.grpc_channel().await);
    for service in ["", "support.v1.Support"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("{service:?}: {status:?}"));
        assert!(grpc_expires_at(reply.metadata()).is_none());
        assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    }
    assert_code(
        health
            .check(HealthCheckRequest {
                service: "unknown.v1.Service".to_owned(),
            })
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn an_unknown_grpc_service_is_unimplemented_and_http_still_gets_problems() {
    let server = serve(&[]).await;
    let channel = server.api.grpc_channel().await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    let path = http::uri::PathAndQuery::from_static("/unknown.v1.Service/Call");
    let result: Result<tonic::Response<pb::Conversation>, Status> = grpc
        .unary(
            tonic::Request::new(pb::CreateConversationRequest {}),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_code(result, Code::Unimplemented);
    // A plain HTTP request to a gRPC path is not a gRPC call.
    server
        .api
        .get("/unknown.v1.Service/Call", None)
        .await
        .assert_problem(404, "not_found");
}

#[tokio::test]
async fn a_store_that_is_down_is_unavailable() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let server = serve(&["--store", database.url.as_str(), "--webhook-secret", SECRET]).await;
    let mut client = server.api.grpc().await;
    let token = server.api.start_session().await;
    let conversation = server.api.start_conversation(&token).await;
    server.upgrade("org_1").await;
    client
        .list_messages(with_session(list(&conversation), &token))
        .await
        .expect("the store is up");
    client
        .enhance(as_operator(draft(&conversation, "thanks"), "org_1"))
        .await
        .expect("the store is up");

    // A second instance that has cached nothing: every call it gets must
    // read the store. (The first may keep admitting its cached session:
    // with its invalidation channel up, or lost only just now, a cached
    // session is trusted longer than the 30 s cache TTL.)
    let cold = serve(&["--store", database.url.as_str(), "--webhook-secret", SECRET]).await;
    let mut cold_client = cold.api.grpc().await;

    database.allow_connections(false).await;
    assert!(database.terminate_all_backends().await > 0);
    let status = assert_code(
        cold_client
            .list_messages(with_session(list(&conversation), &token))
            .await,
        Code::Unavailable,
    );
    assert!(grpc_expires_at(status.metadata()).is_none(), "{status:?}");
    assert_code(
        cold_client
            .enhance(as_operator(draft(&conversation, "thanks"), "org_1"))
            .await,
        Code::Unavailable,
    );
    // The first instance answers UNAVAILABLE too, whichever store it
    // needed first (the application's, past its session cache).
    server.clock.advance(61 * SECOND);
    assert_code(
        client
            .list_messages(with_session(list(&conversation), &token))
            .await,
        Code::Unavailable,
    );

    // Back up: answered again.
    database.allow_connections(true).await;
    client
        .list_messages(with_session(list(&conversation), &token))
        .await
        .expect("the store is back");
}

#[tokio::test]
async fn the_binary_serves_grpc_and_http_on_one_listener() {
    let (running, _) = spawn_binary(&["--addr", "127.0.0.1:0", "--store", "memory"]).await;
    let api = Api::new(running.addr);
    // HTTP/1 first, then HTTP/2 prior knowledge on the same port.
    let token = api.start_session().await;
    let mut health = HealthClient::new(api.grpc_channel().await);
    let reply = health
        .check(HealthCheckRequest {
            service: "support.v1.Support".to_owned(),
        })
        .await
        .expect("health over h2c");
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    let mut client = api.grpc().await;
    let created = client
        .create_conversation(with_session(pb::CreateConversationRequest {}, &token))
        .await
        .expect("a REST session over gRPC")
        .into_inner();
    let (status, roles, _) = api.conversation(&token, &created.conversation_id).await;
    assert_eq!((status.as_str(), roles.len()), ("unresolved", 1));
    running.stop().await;
}

#[tokio::test]
async fn writes_past_the_rate_limit_are_resource_exhausted() {
    let server = serve(&["--rate-burst", "3", "--rate-per-second", "1"]).await;
    let mut client = server.api.grpc().await;
    let token = server.api.start_session().await;
    let conversation = client
        .create_conversation(with_session(pb::CreateConversationRequest {}, &token))
        .await
        .expect("a valid session")
        .into_inner()
        .conversation_id;
    for round in 0..2 {
        let sent = client
            .send_message(with_session(message(&conversation, "hello"), &token))
            .await;
        assert!(sent.is_ok(), "round {round}: {sent:?}");
    }
    // The session's bucket is shared with REST: both protocols are refused.
    let refused = client
        .send_message(with_session(message(&conversation, "hello"), &token))
        .await;
    let status = assert_code(refused, Code::ResourceExhausted);
    assert!(status.message().contains("Too many requests"), "{status:?}");
    let reply = server
        .api
        .send_message(&token, &conversation, "hello")
        .await;
    reply.assert_problem(429, "rate_limited");
}

#[tokio::test]
async fn a_conversation_at_its_message_cap_is_resource_exhausted() {
    let server = serve(&["--max-messages-per-conversation", "2"]).await;
    let mut client = server.api.grpc().await;
    let token = server.api.start_session().await;
    let conversation = client
        .create_conversation(with_session(pb::CreateConversationRequest {}, &token))
        .await
        .expect("a valid session")
        .into_inner()
        .conversation_id;
    // The greeting and one message fill it (a free plan: no AI reply).
    let sent = client
        .send_message(with_session(message(&conversation, "hello"), &token))
        .await;
    assert!(sent.is_ok(), "{sent:?}");
    let refused = client
        .send_message(with_session(message(&conversation, "again"), &token))
        .await;
    let status = assert_code(refused, Code::ResourceExhausted);
    assert!(
        status.message().contains("limit of 2 messages"),
        "{status:?}"
    );
}
