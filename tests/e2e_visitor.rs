//! The visitor (widget) side: contact sessions, conversations, messages,
//! request validation and routing.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use e2e_support::*;

// ---------------------------------------------------------------------------
// Visitor routes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn creating_a_contact_session_returns_its_token_and_timestamps() {
    let server = serve(&[]).await;
    let reply = server
        .api
        .post_json(
            "/contact-sessions",
            None,
            &visitor("Ada", "ada@example.com", "org_1"),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let token = reply.body["session_id"].as_str().expect("session_id");
    assert!(
        SessionToken::parse(token).is_ok(),
        "{token:?} is a session token"
    );
    assert_eq!(reply.body["organization_id"], "org_1");
    assert_eq!(timestamp(&reply.body, "created_at"), epoch());
    assert_eq!(timestamp(&reply.body, "expires_at"), epoch() + 24 * HOUR);

    let other = server.api.start_session().await;
    assert_ne!(other, token, "every contact session gets its own token");
}

#[tokio::test]
async fn current_contact_session_shows_the_visitor_and_its_expiry() {
    let server = serve(&[]).await;
    let reply = server
        .api
        .post_json(
            "/contact-sessions",
            None,
            &visitor("  Ada Lovelace ", " ada@example.com ", " org_42 "),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let token = reply.body["session_id"].as_str().unwrap().to_owned();

    server.clock.advance(HOUR);
    let reply = server
        .api
        .get("/contact-sessions/current", Some(&token))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["organization_id"], "org_42");
    assert_eq!(reply.body["name"], "Ada Lovelace");
    assert_eq!(reply.body["email"], "ada@example.com");
    assert_eq!(timestamp(&reply.body, "created_at"), epoch());
    assert_eq!(timestamp(&reply.body, "expires_at"), epoch() + 24 * HOUR);
    assert_eq!(reply.session_expires_at(), Some(epoch() + 24 * HOUR));
}

#[tokio::test]
async fn new_conversation_is_unresolved_and_opens_with_an_assistant_greeting() {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    server.clock.advance(SECOND);

    let reply = send(api.request(Method::POST, "/conversations", Some(&token))).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["status"], "unresolved");
    assert_eq!(timestamp(&reply.body, "created_at"), epoch() + SECOND);
    let id = reply.body["conversation_id"]
        .as_str()
        .expect("conversation_id");

    let reply = api
        .get(&format!("/conversations/{id}/messages"), Some(&token))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["conversation_id"], id);
    assert_eq!(reply.body["status"], "unresolved");
    let messages = reply.body["messages"].as_array().expect("messages array");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let greeting = &messages[0];
    assert_eq!(greeting["role"], "assistant");
    assert!(
        greeting["content"]
            .as_str()
            .is_some_and(|text| !text.trim().is_empty()),
        "{greeting}"
    );
    assert!(greeting["message_id"].is_string(), "{greeting}");
    assert_eq!(timestamp(greeting, "created_at"), epoch() + SECOND);
}

#[tokio::test]
async fn conversation_creation_ignores_its_body() {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    let bodies = [
        (None, ""),
        (Some("text/plain"), "not json at all"),
        (Some("application/json"), "{ broken"),
        (Some("application/json"), r#"{"subject": "billing"}"#),
    ];
    let mut ids = Vec::new();
    for (content_type, body) in bodies {
        let reply = api
            .post_raw("/conversations", Some(&token), content_type, body)
            .await;
        assert_eq!(reply.status, 201, "{content_type:?} {body:?}: {reply:?}");
        ids.push(reply.body["conversation_id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "each conversation has its own id");
}

#[tokio::test]
async fn free_organizations_visitor_messages_are_saved_oldest_first_and_escalate_without_an_ai_reply(
) {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;

    let mut sent = Vec::new();
    for (step, content) in ["Hello?", "My widget is broken.", "  still there?  "]
        .into_iter()
        .enumerate()
    {
        server.clock.advance(SECOND);
        let reply = api.send_message(&token, &id, content).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        assert_eq!(reply.body["ai_replied"], false);
        assert_eq!(reply.body["status"], "escalated");
        let message_id = reply.body["message_id"].as_str().expect("message_id");
        sent.push((message_id.to_owned(), content, step as u32 + 1));
    }

    let reply = api
        .get(&format!("/conversations/{id}/messages"), Some(&token))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["status"], "escalated");
    let messages = reply.body["messages"].as_array().expect("messages array");
    assert_eq!(messages.len(), 4, "greeting + 3, no AI reply: {messages:?}");
    assert_eq!(messages[0]["role"], "assistant");
    assert_eq!(timestamp(&messages[0], "created_at"), epoch());
    for (message, (message_id, content, seconds)) in messages[1..].iter().zip(&sent) {
        assert_eq!(message["message_id"], message_id.as_str());
        assert_eq!(message["role"], "user");
        assert_eq!(message["content"], *content, "saved as sent");
        assert_eq!(
            timestamp(message, "created_at"),
            epoch() + *seconds * SECOND
        );
    }
}

#[tokio::test]
async fn a_session_sees_only_its_own_conversations() {
    let server = serve(&[]).await;
    let api = &server.api;
    let owner = api.start_session().await;
    let stranger = api.start_session().await;
    let id = api.start_conversation(&owner).await;
    let path = format!("/conversations/{id}/messages");

    api.get(&path, Some(&stranger))
        .await
        .assert_problem(404, "not_found");
    api.send_message(&stranger, &id, "let me in")
        .await
        .assert_problem(404, "not_found");
    api.get("/conversations/conv_unknown/messages", Some(&owner))
        .await
        .assert_problem(404, "not_found");
    api.send_message(&owner, "conv_unknown", "hello")
        .await
        .assert_problem(404, "not_found");

    let reply = api.get(&path, Some(&owner)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let messages = reply.body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "the stranger's message was not saved");
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalid_contact_session_bodies_are_400_invalid_request() {
    let server = serve(&[]).await;
    let json = Some("application/json");
    let long_name = "n".repeat(201);
    let long_org = "o".repeat(129);
    let long_email = format!("{}@example.com", "a".repeat(321 - 12));
    let cases: Vec<(&str, Option<&str>, String)> = vec![
        ("malformed JSON", json, r#"{"name": "Ada","#.to_owned()),
        ("empty body", json, String::new()),
        ("not an object", json, r#"["Ada"]"#.to_owned()),
        (
            "missing name",
            json,
            r#"{"email": "ada@example.com", "organization_id": "org_1"}"#.to_owned(),
        ),
        (
            "missing email",
            json,
            r#"{"name": "Ada", "organization_id": "org_1"}"#.to_owned(),
        ),
        (
            "missing organization_id",
            json,
            r#"{"name": "Ada", "email": "ada@example.com"}"#.to_owned(),
        ),
        (
            "null name",
            json,
            r#"{"name": null, "email": "ada@example.com", "organization_id": "org_1"}"#.to_owned(),
        ),
        (
            "numeric name",
            json,
            r#"{"name": 7, "email": "ada@example.com", "organization_id": "org_1"}"#.to_owned(),
        ),
        (
            "empty name",
            json,
            visitor("", "ada@example.com", "org_1").to_string(),
        ),
        (
            "whitespace name",
            json,
            visitor(" \t\n ", "ada@example.com", "org_1").to_string(),
        ),
        (
            "name of 201 characters",
            json,
            visitor(&long_name, "ada@example.com", "org_1").to_string(),
        ),
        (
            "empty organization_id",
            json,
            visitor("Ada", "ada@example.com", "").to_string(),
        ),
        (
            "whitespace organization_id",
            json,
            visitor("Ada", "ada@example.com", "   ").to_string(),
        ),
        (
            "organization_id of 129 characters",
            json,
            visitor("Ada", "ada@example.com", &long_org).to_string(),
        ),
        ("empty email", json, visitor("Ada", "", "org_1").to_string()),
        (
            "email without @",
            json,
            visitor("Ada", "ada.example.com", "org_1").to_string(),
        ),
        (
            "email with two @",
            json,
            visitor("Ada", "ada@@example.com", "org_1").to_string(),
        ),
        (
            "email with @ twice apart",
            json,
            visitor("Ada", "a@b@c", "org_1").to_string(),
        ),
        (
            "email without local part",
            json,
            visitor("Ada", "@example.com", "org_1").to_string(),
        ),
        (
            "email without domain",
            json,
            visitor("Ada", "ada@", "org_1").to_string(),
        ),
        (
            "email of 321 characters",
            json,
            visitor("Ada", &long_email, "org_1").to_string(),
        ),
        (
            "text/plain content-type",
            Some("text/plain"),
            visitor("Ada", "ada@example.com", "org_1").to_string(),
        ),
        (
            "no content-type",
            None,
            visitor("Ada", "ada@example.com", "org_1").to_string(),
        ),
    ];
    for (case, content_type, body) in cases {
        let reply = server
            .api
            .post_raw("/contact-sessions", None, content_type, &body)
            .await;
        assert_eq!(reply.status, 400, "{case}: {reply:?}");
        reply.assert_problem(400, "invalid_request");
    }
}

#[tokio::test]
async fn contact_session_limits_are_inclusive_and_count_characters() {
    let server = serve(&[]).await;
    // Two bytes per character: a byte count would reject these.
    let name = "é".repeat(200);
    let organization_id = "ö".repeat(128);
    let email = format!("{}@example.com", "ä".repeat(320 - 12));
    let reply = server
        .api
        .post_json(
            "/contact-sessions",
            None,
            &visitor(&name, &email, &organization_id),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["organization_id"], organization_id.as_str());

    let token = reply.body["session_id"].as_str().unwrap();
    let reply = server
        .api
        .get("/contact-sessions/current", Some(token))
        .await;
    assert_eq!(reply.body["name"], name.as_str());
    assert_eq!(reply.body["email"], email.as_str());
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let server = serve(&[]).await;
    let reply = server
        .api
        .post_json(
            "/contact-sessions",
            None,
            &json!({
                "name": "Ada",
                "email": "ada@example.com",
                "organization_id": "org_1",
                "phone": "+44 20 7946 0000",
                "nested": { "anything": [1, 2, 3] },
            }),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let token = reply.body["session_id"].as_str().unwrap().to_owned();

    let id = server.api.start_conversation(&token).await;
    let reply = server
        .api
        .post_json(
            &format!("/conversations/{id}/messages"),
            Some(&token),
            &json!({ "content": "hi", "attachments": [], "role": "operator" }),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let reply = server
        .api
        .get(&format!("/conversations/{id}/messages"), Some(&token))
        .await;
    assert_eq!(
        reply.body["messages"][1]["role"], "user",
        "a client cannot choose its role"
    );
}

#[tokio::test]
async fn invalid_message_bodies_are_400_invalid_request_after_the_session_layer() {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    let path = format!("/conversations/{id}/messages");
    let json = Some("application/json");
    let too_long = json!({ "content": "é".repeat(10_001) }).to_string();
    let cases: Vec<(&str, Option<&str>, String)> = vec![
        ("empty content", json, r#"{"content": ""}"#.to_owned()),
        (
            "whitespace content",
            json,
            r#"{"content": "  \n\t "}"#.to_owned(),
        ),
        ("content of 10 001 characters", json, too_long),
        ("missing content", json, r#"{"text": "hi"}"#.to_owned()),
        ("null content", json, r#"{"content": null}"#.to_owned()),
        ("numeric content", json, r#"{"content": 42}"#.to_owned()),
        ("malformed JSON", json, r#"{"content": "hi""#.to_owned()),
        ("empty body", json, String::new()),
        (
            "text/plain content-type",
            Some("text/plain"),
            r#"{"content": "hi"}"#.to_owned(),
        ),
        ("no content-type", None, r#"{"content": "hi"}"#.to_owned()),
    ];
    for (case, content_type, body) in cases {
        let reply = api.post_raw(&path, Some(&token), content_type, &body).await;
        assert_eq!(reply.status, 400, "{case}: {reply:?}");
        reply.assert_problem(400, "invalid_request");
        assert!(
            reply.session_expires_at().is_some(),
            "{case}: the request passed the session layer"
        );
    }

    let reply = api.get(&path, Some(&token)).await;
    assert_eq!(
        reply.body["messages"].as_array().unwrap().len(),
        1,
        "nothing invalid was saved"
    );
}

#[tokio::test]
async fn message_content_limit_is_inclusive_and_counts_characters() {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    let content = "é".repeat(10_000);
    let reply = api.send_message(&token, &id, &content).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let reply = api
        .get(&format!("/conversations/{id}/messages"), Some(&token))
        .await;
    assert_eq!(reply.body["messages"][1]["content"], content.as_str());
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_routes_are_404_not_found_problems() {
    let server = serve(&[]).await;
    let token = server.api.start_session().await;
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/nope"),
        (Method::POST, "/contact-sessions/current/extra"),
        (Method::POST, "/conversations/conv_1"),
        (Method::GET, "/conversations/conv_1/messages/msg_1"),
        (Method::GET, "/operator"),
        (Method::GET, "/operator/conversations/conv_1"),
        (Method::GET, "/operator/files/file_1/content"),
        (Method::POST, "/billing"),
    ] {
        let reply = send(server.api.request(method.clone(), path, Some(&token))).await;
        assert_eq!(reply.status, 404, "{method} {path}: {reply:?}");
        reply.assert_problem(404, "not_found");
    }
}

#[tokio::test]
async fn wrong_methods_are_405_method_not_allowed_problems_before_any_session_or_organization_check(
) {
    let server = serve(&[]).await;
    for (method, path, allowed) in [
        (Method::GET, "/contact-sessions", "POST"),
        (Method::POST, "/contact-sessions/current", "GET"),
        (Method::PUT, "/contact-sessions/current", "DELETE"),
        (Method::POST, "/operator/contact-sessions", "DELETE"),
        (Method::GET, "/operator/contact-sessions/0123", "DELETE"),
        (Method::GET, "/conversations", "POST"),
        (Method::PUT, "/conversations", "POST"),
        (Method::PATCH, "/conversations/conv_1/messages", "POST"),
        (Method::POST, "/operator/subscription", "GET"),
        (Method::DELETE, "/operator/conversations", "GET"),
        (
            Method::GET,
            "/operator/conversations/conv_1/messages",
            "POST",
        ),
        (
            Method::GET,
            "/operator/conversations/conv_1/enhance",
            "POST",
        ),
        (Method::PATCH, "/operator/files", "POST"),
        (Method::GET, "/operator/files/file_1", "DELETE"),
        (Method::POST, "/operator/widget-settings", "PUT"),
        (Method::GET, "/billing/webhook", "POST"),
    ] {
        // No session or organization at all: the method is wrong before
        // either matters.
        let reply = send(server.api.request(method.clone(), path, None)).await;
        assert_eq!(reply.status, 405, "{method} {path}: {reply:?}");
        reply.assert_problem(405, "method_not_allowed");
        let allow = reply.headers["allow"].to_str().unwrap();
        assert!(allow.contains(allowed), "{method} {path}: allow {allow:?}");
    }
}

#[tokio::test]
async fn an_id_that_is_not_utf8_is_a_400_problem_not_plain_text() {
    let server = serve(&[]).await;
    let token = server.api.start_session().await;
    let reply = server
        .api
        .get("/conversations/%FF%FE/messages", Some(&token))
        .await;
    reply.assert_problem(400, "invalid_request");
    let reply = server
        .api
        .operator_json(
            Method::POST,
            "/operator/conversations/%C3%28/messages",
            "org_1",
            &json!({ "content": "hi" }),
        )
        .await;
    reply.assert_problem(400, "invalid_request");
}
