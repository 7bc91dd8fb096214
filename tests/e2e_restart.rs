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

/// A webhook body signed now with [`SECRET`] (the binary reads the system
/// clock).
async fn post_signed(api: &Api, event: &Value) -> Reply {
    let body = event.to_string();
    api.post_webhook(&body, Some(&signature(SECRET, &body, SystemTime::now())))
        .await
}

#[tokio::test]
async fn restart_on_the_same_sqlite_file_keeps_conversations_files_and_settings() {
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
    let reply = post_signed(&api, &event("org_1", "sub_1", "active", "pro")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
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
