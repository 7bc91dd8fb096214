//! The application's data in PostgreSQL: two instances on one database
//! (each test in a database of its own, dropped at the end). Skipped with
//! a printed reason when PostgreSQL cannot be reached, except under
//! `CI=true`.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use e2e_support::*;

#[tokio::test]
async fn two_instances_on_one_postgres_database_share_conversations_files_and_settings() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let store = database.url.as_str();
    let args = ["--store", store, "--webhook-secret", SECRET];
    let (one, two) = (serve(&args).await, serve(&args).await);
    // Subscriptions are shared too: one webhook, received by one instance.
    one.upgrade("org_1").await;
    assert_eq!(two.api.subscription("org_1").await["entitled"], true);

    let token = one.api.start_session().await;
    let mut conversations = Vec::new();
    for _ in 0..3 {
        conversations.push(one.api.start_conversation(&token).await);
        one.clock.advance(SECOND);
    }
    let reply = one
        .api
        .send_message(&token, &conversations[0], "hello")
        .await;
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");
    let file = one.api.upload_file("org_1", "faq.md", "# FAQ").await;
    let file_id = file.body["file_id"].as_str().unwrap().to_owned();
    assert_eq!(
        one.api.put_greeting("org_1", "Hello from one").await.body["created"],
        true
    );

    // The other instance sees all of it.
    assert_eq!(two.api.conversation_ids("org_1").await, conversations);
    let reply = two
        .api
        .operator_get("/operator/conversations?limit=2", "org_1")
        .await;
    assert_eq!(
        ids(&reply.body["conversations"], "conversation_id"),
        conversations[..2]
    );
    let cursor = reply.body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let reply = two
        .api
        .operator_get(
            &format!("/operator/conversations?limit=2&cursor={cursor}"),
            "org_1",
        )
        .await;
    assert_eq!(
        ids(&reply.body["conversations"], "conversation_id"),
        conversations[2..]
    );
    assert_eq!(reply.body["next_cursor"], Value::Null);
    assert_eq!(
        two.api.file_ids("org_1").await,
        std::slice::from_ref(&file_id)
    );
    let greeting = two.api.put_greeting("org_1", "Hello from two").await;
    assert_eq!(greeting.body["created"], false, "{greeting:?}");
    let reply = two
        .api
        .reply_as_operator("org_1", &conversations[0], "an operator here")
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");

    // And the first sees the second's changes.
    let (status, roles, contents) = one.api.conversation(&token, &conversations[0]).await;
    assert_eq!(status, "unresolved");
    assert_eq!(roles, ["assistant", "user", "assistant", "operator"]);
    assert_eq!(contents[3], "an operator here");
    let fresh = one.api.start_conversation(&token).await;
    let (_, _, contents) = one.api.conversation(&token, &fresh).await;
    assert_eq!(contents, ["Hello from two"]);
    assert_eq!(two.api.delete_file("org_1", &file_id).await.status, 204);
    assert!(one.api.file_ids("org_1").await.is_empty());
    // Another organization sees none of it.
    assert!(two.api.conversation_ids("org_2").await.is_empty());
    two.api
        .reply_as_operator("org_2", &conversations[0], "not mine")
        .await
        .assert_problem(404, "not_found");
}
