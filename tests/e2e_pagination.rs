//! Paginated listings (SPEC §5 Conventions), in memory and on SQLite:
//! oldest first, `?limit=` (default 50, at most 200), `?cursor=` from the
//! previous page's `next_cursor` (`null` on the last page); a bad limit or
//! cursor is 400 `invalid_request`.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use e2e_support::*;

/// Follows `next_cursor` from the first page of `path` (with `limit`)
/// until it is `null`; returns the ids (`field` of the items in `list`) of
/// every page.
async fn all_pages(
    api: &Api,
    path: &str,
    token: Option<&str>,
    organization: Option<&str>,
    list: &str,
    field: &str,
    limit: u32,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{path}{separator}limit={limit}");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let reply = match organization {
            Some(organization) => api.operator_get(&url, organization).await,
            None => api.get(&url, token).await,
        };
        assert_eq!(reply.status, 200, "{url}: {reply:?}");
        pages.push(ids(&reply.body[list], field));
        match &reply.body["next_cursor"] {
            Value::Null => return pages,
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("next_cursor is a string or null, got {other}"),
        }
        assert!(pages.len() <= 100, "{path}: the cursor never ends");
    }
}

#[tokio::test]
async fn every_listing_pages_oldest_first_until_next_cursor_is_null() {
    for server in [serve(&WITH_SECRET).await, serve_sqlite(&WITH_SECRET).await] {
        let api = &server.api;
        server.upgrade("org_1").await;
        let token = api.start_session().await;
        let mut conversations = Vec::new();
        let mut files = Vec::new();
        for n in 0..5 {
            conversations.push(api.start_conversation(&token).await);
            let reply = api.upload_file("org_1", &format!("f{n}.md"), "text").await;
            files.push(reply.body["file_id"].as_str().unwrap().to_owned());
            server.clock.advance(SECOND);
        }
        let conversation = &conversations[0];
        for n in 0..3 {
            api.send_message(&token, conversation, &format!("message {n}"))
                .await;
        }
        let messages: Vec<String> = {
            let reply = api
                .get(
                    &format!("/conversations/{conversation}/messages"),
                    Some(&token),
                )
                .await;
            assert_eq!(reply.body["next_cursor"], Value::Null, "{reply:?}");
            ids(&reply.body["messages"], "message_id")
        };
        assert_eq!(
            messages.len(),
            7,
            "a greeting, then 3 messages and 3 replies"
        );
        let mut sessions = vec![session_ref(&token)];
        for _ in 0..2 {
            server.clock.advance(SECOND);
            sessions.push(session_ref(&api.start_session().await));
        }

        let pages = all_pages(
            api,
            "/operator/conversations",
            None,
            Some("org_1"),
            "conversations",
            "conversation_id",
            2,
        )
        .await;
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        assert_eq!(pages.concat(), conversations);

        let pages = all_pages(
            api,
            "/operator/files",
            None,
            Some("org_1"),
            "files",
            "file_id",
            5,
        )
        .await;
        assert_eq!(pages, [files.clone()], "exactly one full page");

        let pages = all_pages(
            api,
            &format!("/conversations/{conversation}/messages"),
            Some(&token),
            None,
            "messages",
            "message_id",
            3,
        )
        .await;
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
        assert_eq!(pages.concat(), messages);

        let pages = all_pages(
            api,
            "/operator/contact-sessions",
            None,
            Some("org_1"),
            "sessions",
            "session_ref",
            1,
        )
        .await;
        assert_eq!(pages.len(), 3);
        assert_eq!(pages.concat(), sessions);
    }
}

#[tokio::test]
async fn limit_defaults_to_50_and_may_be_at_most_200() {
    // 201 conversations from one session: past the default write burst and
    // the default cap of conversations per session.
    let server = serve(&[
        "--rate-burst",
        "1000",
        "--max-conversations-per-session",
        "1000",
    ])
    .await;
    let api = &server.api;
    let token = api.start_session().await;
    for _ in 0..201 {
        api.start_conversation(&token).await;
    }
    let reply = api.operator_get("/operator/conversations", "org_1").await;
    assert_eq!(reply.body["conversations"].as_array().unwrap().len(), 50);
    assert!(
        reply.body["next_cursor"].is_string(),
        "{}",
        reply.body["next_cursor"]
    );

    let reply = api
        .operator_get("/operator/conversations?limit=200", "org_1")
        .await;
    assert_eq!(reply.body["conversations"].as_array().unwrap().len(), 200);
    let cursor = reply.body["next_cursor"].as_str().unwrap().to_owned();
    let reply = api
        .operator_get(
            &format!("/operator/conversations?limit=200&cursor={cursor}"),
            "org_1",
        )
        .await;
    assert_eq!(reply.body["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(reply.body["next_cursor"], Value::Null);
}

#[tokio::test]
async fn bad_limits_and_cursors_are_400_invalid_request() {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    let conversation = api.start_conversation(&token).await;
    // A cursor of another kind of listing is refused too.
    let session_cursor = {
        api.start_session().await;
        let reply = api
            .operator_get("/operator/contact-sessions?limit=1", "org_1")
            .await;
        reply.body["next_cursor"].as_str().unwrap().to_owned()
    };
    let queries = [
        "?limit=0".to_owned(),
        "?limit=201".to_owned(),
        "?limit=-1".to_owned(),
        "?limit=ten".to_owned(),
        "?limit=".to_owned(),
        "?cursor=".to_owned(),
        "?cursor=garbage".to_owned(),
        "?cursor=12".to_owned(),
        format!("?cursor={session_cursor}"),
    ];
    for query in &queries {
        for path in [
            "/operator/conversations",
            "/operator/files",
            "/operator/contact-sessions",
        ] {
            if path == "/operator/contact-sessions" && query.contains(&session_cursor) {
                continue;
            }
            api.operator_get(&format!("{path}{query}"), "org_1")
                .await
                .assert_problem(400, "invalid_request");
        }
        api.get(
            &format!("/conversations/{conversation}/messages{query}"),
            Some(&token),
        )
        .await
        .assert_problem(400, "invalid_request");
    }
    // Checks run session first: a bad query does not hide a missing one.
    api.get(
        &format!("/conversations/{conversation}/messages?limit=0"),
        None,
    )
    .await
    .assert_session_rejected("session_missing");
    send(api.operator(Method::GET, "/operator/files?limit=0", None))
        .await
        .assert_problem(401, "organization_missing");
}
