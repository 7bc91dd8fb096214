//! `examples/hyper_server.rs` (both layers on plain hyper) run as a process
//! and called over a real socket.

mod example_binary;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use tower_saas_guard::parse_rfc3339;

use example_binary::{example_binary, run_to_exit, spawn_listening, RunningExample};

fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| example_binary("hyper_server"))
}

async fn start() -> (RunningExample, String) {
    let running = spawn_listening(binary(), &["--addr", "127.0.0.1:0"]).await;
    assert_ne!(
        running.addr.port(),
        0,
        "the printed address names the bound port"
    );
    let base = format!("http://{}", running.addr);
    (running, base)
}

async fn login(client: &Client, base: &str, organization: &str) -> String {
    let response = client
        .post(format!("{base}/login"))
        .body(organization.to_owned())
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status(), StatusCode::CREATED);
    response.text().await.expect("a token")
}

async fn call(
    client: &Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
) -> Response {
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.header("x-session-id", token);
    }
    request.send().await.expect("the server answers")
}

/// Asserts a problem+json rejection with `status` and `code`.
async fn assert_problem(response: Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["code"], code);
    assert_eq!(body["status"], status.as_u16());
}

#[tokio::test]
async fn hyper_example_rejects_without_token_and_admits_a_created_session() {
    let (_running, base) = start().await;
    let client = Client::new();

    let anonymous = call(&client, reqwest::Method::GET, format!("{base}/me"), None).await;
    assert_problem(anonymous, StatusCode::UNAUTHORIZED, "session_missing").await;

    let token = login(&client, &base, "org_free").await;
    let me = call(
        &client,
        reqwest::Method::GET,
        format!("{base}/me"),
        Some(&token),
    )
    .await;
    assert_eq!(me.status(), StatusCode::OK);
    let expires_at = me.headers()["x-session-expires-at"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    parse_rfc3339(&expires_at).expect("x-session-expires-at is RFC 3339");
    let body = me.text().await.expect("a body");
    assert_eq!(
        body,
        format!("organization org_free, session expires at {expires_at}")
    );

    let malformed = call(
        &client,
        reqwest::Method::GET,
        format!("{base}/me"),
        Some("nope"),
    )
    .await;
    assert_problem(malformed, StatusCode::UNAUTHORIZED, "session_invalid").await;

    let unknown_route = call(
        &client,
        reqwest::Method::GET,
        format!("{base}/nowhere"),
        None,
    )
    .await;
    assert_eq!(unknown_route.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn hyper_example_gates_the_pro_route_by_the_session_organization() {
    let (_running, base) = start().await;
    let client = Client::new();
    let report = || format!("{base}/pro/report");

    let free = login(&client, &base, "org_free").await;
    let denied = call(&client, reqwest::Method::GET, report(), Some(&free)).await;
    assert!(
        denied.headers().contains_key("x-session-expires-at"),
        "the session layer passed, the subscription layer rejected"
    );
    assert_problem(denied, StatusCode::FORBIDDEN, "subscription_required").await;

    let pro = login(&client, &base, "org_pro").await;
    let admitted = call(&client, reqwest::Method::GET, report(), Some(&pro)).await;
    assert_eq!(admitted.status(), StatusCode::OK);
    assert_eq!(
        admitted.text().await.expect("a body"),
        "pro report (plan pro)"
    );

    let anonymous = call(&client, reqwest::Method::GET, report(), None).await;
    assert_problem(anonymous, StatusCode::UNAUTHORIZED, "session_missing").await;
}

#[tokio::test]
async fn hyper_example_logout_ends_the_session_on_every_route() {
    let (_running, base) = start().await;
    let client = Client::new();
    let token = login(&client, &base, "org_pro").await;
    let other = login(&client, &base, "org_pro").await;

    let logout = call(
        &client,
        reqwest::Method::POST,
        format!("{base}/logout"),
        Some(&token),
    )
    .await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert!(!logout.headers().contains_key("x-session-expires-at"));

    for path in ["/me", "/pro/report"] {
        let after = call(
            &client,
            reqwest::Method::GET,
            format!("{base}{path}"),
            Some(&token),
        )
        .await;
        assert_problem(after, StatusCode::UNAUTHORIZED, "session_not_found").await;
    }
    let again = call(
        &client,
        reqwest::Method::POST,
        format!("{base}/logout"),
        Some(&token),
    )
    .await;
    assert_problem(again, StatusCode::UNAUTHORIZED, "session_not_found").await;

    let untouched = call(
        &client,
        reqwest::Method::GET,
        format!("{base}/me"),
        Some(&other),
    )
    .await;
    assert_eq!(
        untouched.status(),
        StatusCode::OK,
        "only that session ended"
    );
}

#[tokio::test]
async fn hyper_example_exits_2_on_a_bad_addr_before_listening() {
    let (status, stdout, stderr) = run_to_exit(binary(), &["--addr", "not-an-address"]).await;
    assert_eq!(status, Some(2));
    assert!(stdout.is_empty(), "nothing listened: {stdout:?}");
    assert!(
        stderr.contains("--addr"),
        "stderr names the flag: {stderr:?}"
    );
}

#[test]
fn readme_hyper_section_is_the_example_without_its_flag() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let example =
        std::fs::read_to_string(root.join("examples/hyper_server.rs")).expect("the example");
    let section = readme
        .split_once("## With hyper\n")
        .expect("README has a \"With hyper\" section")
        .1;
    let code = section
        .split_once("```rust,ignore\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("the section has a rust block")
        .0;
    let fixed_addr = r#"TcpListener::bind("127.0.0.1:3001")"#;
    assert!(code.contains(fixed_addr), "the README binds 127.0.0.1:3001");
    let mut example_lines = example.lines();
    for line in code.lines().filter(|line| !line.contains(fixed_addr)) {
        assert!(
            example_lines.any(|candidate| candidate == line),
            "README line {line:?} is not in examples/hyper_server.rs (in this order)"
        );
    }
}
