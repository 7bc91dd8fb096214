//! The operator (dashboard) side: widget settings, the organization
//! header, ownership, check order and validation.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use e2e_support::*;

// ---------------------------------------------------------------------------
// Widget settings
// ---------------------------------------------------------------------------

#[tokio::test]
async fn widget_settings_need_a_subscription_to_create_but_not_to_update() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;

    api.put_greeting("org_1", "Hello from Acme!")
        .await
        .assert_problem(403, "subscription_required");

    server.upgrade("org_1").await;
    let reply = api.put_greeting("org_1", "  Hello from Acme!  ").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({ "greeting": "Hello from Acme!", "created": true })
    );

    server.cancel("org_1").await;
    let reply = api.put_greeting("org_1", "Acme says hi").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({ "greeting": "Acme says hi", "created": false })
    );
    // Another free organization still cannot create its own.
    api.put_greeting("org_2", "Hello")
        .await
        .assert_problem(403, "subscription_required");
}

#[tokio::test]
async fn new_conversations_greet_with_the_organizations_greeting() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;
    let before = api.start_conversation(&token).await;
    let (_, _, contents) = api.conversation(&token, &before).await;
    let default_greeting = contents[0].clone();

    server.upgrade("org_1").await;
    assert_eq!(
        api.put_greeting("org_1", "Welcome to Acme!").await.status,
        200
    );
    let after = api.start_conversation(&token).await;
    let (_, roles, contents) = api.conversation(&token, &after).await;
    assert_eq!(roles, ["assistant"]);
    assert_eq!(contents, ["Welcome to Acme!"]);
    // Existing conversations keep theirs; other organizations keep the default.
    let (_, _, contents) = api.conversation(&token, &before).await;
    assert_eq!(contents, [default_greeting.as_str()]);
    let stranger = api.start_session_in("org_2").await;
    let theirs = api.start_conversation(&stranger).await;
    let (_, _, contents) = api.conversation(&stranger, &theirs).await;
    assert_eq!(contents, [default_greeting]);
}

// ---------------------------------------------------------------------------
// Operator: organization, ownership, check order, validation
// ---------------------------------------------------------------------------

/// Every operator route, as (method, path, JSON body).
fn operator_routes(conversation_id: &str, file_id: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, "/operator/subscription".to_owned(), None),
        (Method::GET, "/operator/conversations".to_owned(), None),
        (
            Method::POST,
            format!("/operator/conversations/{conversation_id}/messages"),
            Some(json!({ "content": "hi" })),
        ),
        (
            Method::POST,
            format!("/operator/conversations/{conversation_id}/enhance"),
            Some(json!({ "draft": "hi" })),
        ),
        (
            Method::POST,
            "/operator/files".to_owned(),
            Some(json!({ "name": "a.md", "content": "a" })),
        ),
        (Method::GET, "/operator/files".to_owned(), None),
        (Method::DELETE, format!("/operator/files/{file_id}"), None),
        (
            Method::PUT,
            "/operator/widget-settings".to_owned(),
            Some(json!({ "greeting": "hi" })),
        ),
    ]
}

#[tokio::test]
async fn operator_routes_without_x_organization_id_are_401_organization_missing() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    server.upgrade("org_1").await;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    let file = api.upload_file("org_1", "a.md", "a").await;
    let file_id = file.body["file_id"].as_str().unwrap().to_owned();
    let too_long = "o".repeat(129);

    for (method, path, body) in operator_routes(&id, &file_id) {
        for organization in [None, Some(""), Some("   "), Some(too_long.as_str())] {
            let mut request = api.operator(method.clone(), &path, organization);
            if let Some(body) = &body {
                request = request.json(body);
            }
            // A session does not stand in for the operator's organization.
            let reply = send(request.header("x-session-id", &token)).await;
            assert_eq!(
                reply.status, 401,
                "{method} {path} {organization:?}: {reply:?}"
            );
            reply.assert_problem(401, "organization_missing");
            assert!(
                reply.body["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.contains("x-organization-id")),
                "the detail names the header: {reply:?}"
            );
        }
    }
    // An id of the longest allowed length works.
    let longest = "o".repeat(128);
    assert_eq!(api.subscription(&longest).await["entitled"], false);
    // Nothing was changed by the refused calls.
    assert_eq!(api.file_ids("org_1").await, [file_id]);
}

#[tokio::test]
async fn another_organizations_conversation_and_file_ids_are_404() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    server.upgrade("org_1").await;
    server.upgrade("org_2").await;
    let token = api.start_session_in("org_1").await;
    let id = api.start_conversation(&token).await;
    let file = api.upload_file("org_1", "a.md", "a").await;
    let file_id = file.body["file_id"].as_str().unwrap().to_owned();

    for conversation in [id.as_str(), "conv_unknown"] {
        api.reply_as_operator("org_2", conversation, "hi")
            .await
            .assert_problem(404, "not_found");
        api.enhance("org_2", conversation, "hi")
            .await
            .assert_problem(404, "not_found");
    }
    for file in [file_id.as_str(), "file_unknown"] {
        api.delete_file("org_2", file)
            .await
            .assert_problem(404, "not_found");
    }
    assert!(api.conversation_ids("org_2").await.is_empty());
    assert!(api.file_ids("org_2").await.is_empty());

    // Nothing happened to org_1's.
    let (_, roles, _) = api.conversation(&token, &id).await;
    assert_eq!(roles, ["assistant"]);
    assert_eq!(api.file_ids("org_1").await, [file_id]);
}

#[tokio::test]
async fn operator_checks_run_organization_then_subscription_then_body_then_id() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let json = "application/json";
    let invalid_bodies = ["{ broken", r#"{"draft": "   "}"#, r#"{"text": "hi"}"#];
    let unknown = "/operator/conversations/conv_unknown/enhance";
    let raw = |organization: Option<&'static str>, path: &str, body: &str| {
        api.operator(Method::POST, path, organization)
            .header("content-type", json)
            .body(body.to_owned())
    };

    for body in invalid_bodies {
        // No organization: 401 before anything else.
        send(raw(None, unknown, body))
            .await
            .assert_problem(401, "organization_missing");
        // A free organization: 403 before the body is read.
        send(raw(Some("org_free"), unknown, body))
            .await
            .assert_problem(403, "subscription_required");
        send(raw(Some("org_free"), "/operator/files", body))
            .await
            .assert_problem(403, "subscription_required");
        send(
            api.operator(Method::PUT, "/operator/widget-settings", Some("org_free"))
                .header("content-type", json)
                .body(body.to_owned()),
        )
        .await
        .assert_problem(403, "subscription_required");
    }

    server.upgrade("org_pro").await;
    for body in invalid_bodies {
        // An entitled organization: the body, before the id.
        send(raw(Some("org_pro"), unknown, body))
            .await
            .assert_problem(400, "invalid_request");
        send(raw(
            Some("org_pro"),
            "/operator/conversations/conv_unknown/messages",
            body,
        ))
        .await
        .assert_problem(400, "invalid_request");
    }
    // A valid body: then the id.
    send(raw(Some("org_pro"), unknown, r#"{"draft": "hi"}"#))
        .await
        .assert_problem(404, "not_found");
    send(raw(
        Some("org_free"),
        "/operator/conversations/conv_unknown/messages",
        r#"{"content": "hi"}"#,
    ))
    .await
    .assert_problem(404, "not_found");
}

#[tokio::test]
async fn operator_conversation_list_shows_every_visitor_of_the_organization_and_only_them() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let ada = api.start_session_in("org_1").await;
    let bob = api.start_session_in("org_1").await;
    let eve = api.start_session_in("org_2").await;
    let mut expected = Vec::new();
    for token in [&ada, &bob, &eve, &ada] {
        server.clock.advance(SECOND);
        let id = api.start_conversation(token).await;
        if token != &eve {
            expected.push(id);
        }
    }
    api.send_message(&bob, &expected[1], "help").await;

    let reply = api.operator_get("/operator/conversations", "org_1").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        ids(&reply.body["conversations"], "conversation_id"),
        expected,
        "oldest first"
    );
    let conversations = reply.body["conversations"].as_array().unwrap();
    let statuses: Vec<&str> = conversations
        .iter()
        .map(|conversation| conversation["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["unresolved", "escalated", "unresolved"]);
    assert_eq!(
        timestamp(&conversations[2], "created_at"),
        epoch() + 4 * SECOND
    );
    assert_eq!(api.conversation_ids("org_2").await.len(), 1);
    // A visitor still sees only its own.
    api.get(
        &format!("/conversations/{}/messages", expected[0]),
        Some(&bob),
    )
    .await
    .assert_problem(404, "not_found");
}

#[tokio::test]
async fn operator_bodies_beyond_the_limits_are_400_and_the_limits_are_inclusive() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    server.upgrade("org_1").await;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    let enhance = format!("/operator/conversations/{id}/enhance");
    let reply_path = format!("/operator/conversations/{id}/messages");
    let mib = 1024 * 1024;

    let invalid: Vec<(&str, Method, &str, Value)> = vec![
        (
            "empty draft",
            Method::POST,
            &enhance,
            json!({ "draft": " \n " }),
        ),
        (
            "draft of 10 001",
            Method::POST,
            &enhance,
            json!({ "draft": "é".repeat(10_001) }),
        ),
        (
            "numeric draft",
            Method::POST,
            &enhance,
            json!({ "draft": 7 }),
        ),
        (
            "empty reply",
            Method::POST,
            &reply_path,
            json!({ "content": "" }),
        ),
        (
            "reply of 10 001",
            Method::POST,
            &reply_path,
            json!({ "content": "é".repeat(10_001) }),
        ),
        (
            "empty name",
            Method::POST,
            "/operator/files",
            json!({ "name": "  ", "content": "a" }),
        ),
        (
            "name of 201",
            Method::POST,
            "/operator/files",
            json!({ "name": "n".repeat(201), "content": "a" }),
        ),
        (
            "missing content",
            Method::POST,
            "/operator/files",
            json!({ "name": "a.md" }),
        ),
        (
            "empty content",
            Method::POST,
            "/operator/files",
            json!({ "name": "a.md", "content": "\t" }),
        ),
        (
            "content of 1 MiB + 1 byte",
            Method::POST,
            "/operator/files",
            json!({ "name": "a.md", "content": "x".repeat(mib + 1) }),
        ),
        (
            "empty greeting",
            Method::PUT,
            "/operator/widget-settings",
            json!({ "greeting": "" }),
        ),
        (
            "greeting of 10 001",
            Method::PUT,
            "/operator/widget-settings",
            json!({ "greeting": "é".repeat(10_001) }),
        ),
        (
            "null greeting",
            Method::PUT,
            "/operator/widget-settings",
            json!({ "greeting": null }),
        ),
    ];
    for (case, method, path, body) in invalid {
        let reply = api.operator_json(method, path, "org_1", &body).await;
        assert_eq!(reply.status, 400, "{case}: {reply:?}");
        reply.assert_problem(400, "invalid_request");
    }
    assert!(
        api.file_ids("org_1").await.is_empty(),
        "nothing invalid was saved"
    );
    let (_, roles, _) = api.conversation(&token, &id).await;
    assert_eq!(roles, ["assistant"]);

    // At the limits, everything is accepted.
    let reply = api.enhance("org_1", &id, &"é".repeat(10_000)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = api
        .reply_as_operator("org_1", &id, &"é".repeat(10_000))
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let reply = api
        .upload_file("org_1", &"é".repeat(200), &"x".repeat(mib))
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    // Control characters are escaped to six bytes each in JSON: the body is
    // far larger than the content, and still accepted.
    let reply = api
        .upload_file("org_1", "control.bin", &"\u{1}".repeat(mib))
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let reply = api.put_greeting("org_1", &"é".repeat(10_000)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}
