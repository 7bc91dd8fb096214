//! The reference server restarted on the same SQLite file: the binary is
//! started, used, killed, and started again on the file in a temporary
//! directory.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use e2e_support::*;

#[tokio::test]
async fn restart_on_the_same_sqlite_file_keeps_sessions_conversations_files_settings_and_subscriptions(
) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = format!("sqlite://{}", dir.path().join("widget.db").display());
    let args = [
        "--addr",
        "127.0.0.1:0",
        "--store",
        store.as_str(),
        "--webhook-secret",
        SECRET,
    ];

    let (first, _) = spawn_binary_in(dir.path(), &args).await;
    let api = Api::new(first.addr);
    assert_eq!(api.subscription("org_1").await["entitled"], false);
    let reply = post_signed(&api, &event("org_1", "sub_1", "active", "pro")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["entitled"], true, "{reply:?}");
    let greeting = api.put_greeting("org_1", "Welcome back!").await;
    assert_eq!(greeting.body["created"], true, "{greeting:?}");
    let token = api.start_session().await;
    let conversation = api.start_conversation(&token).await;
    assert_eq!(
        api.send_message(&token, &conversation, "hello")
            .await
            .status,
        201
    );
    let file = api.upload_file("org_1", "faq.md", "# FAQ").await;
    assert_eq!(file.status, 201, "{file:?}");
    let session_before = api.get("/contact-sessions/current", Some(&token)).await;
    assert_eq!(session_before.status, 200, "{session_before:?}");
    let messages_before = api.conversation(&token, &conversation).await;
    let sessions_before = api.contact_sessions("org_1", "").await;
    let files_before = api.operator_get("/operator/files", "org_1").await.body;
    let conversations_before = api
        .operator_get("/operator/conversations", "org_1")
        .await
        .body;
    first.stop().await;
    assert!(
        dir.path().join("widget.db").exists(),
        "the file was created"
    );

    let (second, _) = spawn_binary_in(dir.path(), &args).await;
    let api = Api::new(second.addr);
    // The visitor is still logged in, with the same session, and sees its
    // conversation as it was.
    let session_after = api.get("/contact-sessions/current", Some(&token)).await;
    assert_eq!(session_after.status, 200, "{session_after:?}");
    assert_eq!(session_after.body, session_before.body);
    assert_eq!(
        api.conversation(&token, &conversation).await,
        messages_before
    );
    assert_eq!(api.contact_sessions("org_1", "").await, sessions_before);
    // The subscription too: still entitled, with no webhook since.
    let subscription = api.subscription("org_1").await;
    assert_eq!(
        (
            &subscription["entitled"],
            &subscription["plan"],
            &subscription["status"]
        ),
        (&json!(true), &json!("pro"), &json!("active")),
        "{subscription}"
    );
    let reply = api.send_message(&token, &conversation, "still here").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");
    assert_eq!(
        api.operator_get("/operator/conversations", "org_1")
            .await
            .body,
        conversations_before
    );
    assert_eq!(
        api.operator_get("/operator/files", "org_1").await.body,
        files_before
    );
    // The settings exist: this is an update, which needs no subscription.
    let greeting = api.put_greeting("org_1", "Welcome back!").await;
    assert_eq!(greeting.status, 200, "{greeting:?}");
    assert_eq!(greeting.body["created"], false, "{greeting:?}");
    let file = api.upload_file("org_1", "notes.md", "# Notes").await;
    assert_eq!(file.status, 201, "subscribers may upload: {file:?}");
    // New conversations open with the saved greeting.
    let token = api.start_session().await;
    let conversation = api.start_conversation(&token).await;
    let (_, roles, contents) = api.conversation(&token, &conversation).await;
    assert_eq!(
        (roles, contents),
        (
            vec!["assistant".to_owned()],
            vec!["Welcome back!".to_owned()]
        )
    );
    second.stop().await;
}

#[tokio::test]
async fn default_store_is_a_sqlite_file_in_the_working_directory() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (running, _) = spawn_binary_in(dir.path(), &["--addr", "127.0.0.1:0"]).await;
    assert!(
        dir.path().join("widget.db").exists(),
        "sqlite://widget.db is created where the server runs"
    );
    let api = Api::new(running.addr);
    let token = api.start_session().await;
    api.start_conversation(&token).await;
    running.stop().await;
}

#[tokio::test]
async fn unreachable_database_exits_1_with_a_message_before_listening() {
    let (status, stdout, stderr) = run_binary(&[
        "--addr",
        "127.0.0.1:0",
        "--store",
        // Nothing listens on port 1.
        "postgres://nobody:hunter2@127.0.0.1:1/widget",
    ])
    .await;
    assert_eq!(status, Some(1), "stderr {stderr:?}");
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(stderr.contains("--store"), "{stderr:?}");
    assert!(
        !stderr.contains("hunter2"),
        "the password is not printed: {stderr:?}"
    );
}

#[tokio::test]
async fn unreachable_redis_exits_1_with_a_message_before_listening() {
    let (status, stdout, stderr) = run_binary(&[
        "--addr",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--session-store",
        // Nothing listens on port 1.
        "redis://nobody:hunter2@127.0.0.1:1",
    ])
    .await;
    assert_eq!(status, Some(1), "stderr {stderr:?}");
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(stderr.contains("--session-store"), "{stderr:?}");
    assert!(
        !stderr.contains("hunter2"),
        "the password is not printed: {stderr:?}"
    );
}
