//! End-to-end tests of the reference server (`examples/widget_server/`),
//! over real HTTP on 127.0.0.1: the visitor (widget) side, the operator
//! (dashboard) side, and the signed billing webhook that moves an
//! organization between the two worlds.
//!
//! Two ways in:
//! * the built example binary, for what only a process shows: the
//!   `listening on` line, exit status 2 on bad flags, a smoke run;
//! * the example included as a module, served in-process with a
//!   `ManualClock`, so expiry and renewal are driven by hand and no test
//!   sleeps.
#![cfg(feature = "axum")]

#[path = "../examples/widget_server/main.rs"]
#[allow(dead_code)]
mod widget_server;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};
use tower_saas_guard::billing::WebhookVerifier;
use tower_saas_guard::session::SessionToken;
use tower_saas_guard::{rfc3339_millis, unix_millis, Clock, ManualClock};

use widget_server::{build_app, parse_args, Config, ParsedArgs, StartError, StoreUrl};

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const MINUTE: Duration = Duration::from_secs(60);

/// The webhook secret the in-process servers and the binary are given.
const SECRET: &str = "whsec_e2e_test";
const WITH_SECRET: [&str; 2] = ["--webhook-secret", SECRET];

/// How long a spawned binary may take to start or to exit (the machine may
/// be busy compiling).
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Where every `ManualClock` starts: a whole millisecond, in 2025.
fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_750_000_000_000)
}

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

/// A client for one running server.
struct Api {
    base: String,
    http: reqwest::Client,
}

/// A response, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Api {
    fn new(addr: SocketAddr) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client builds");
        Self {
            base: format!("http://{addr}"),
            http,
        }
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => request.header("x-session-id", token),
            None => request,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        send(self.request(Method::GET, path, token)).await
    }

    async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        send(self.request(Method::POST, path, token).json(body)).await
    }

    /// A POST with `body` as is, and `content_type` if any.
    async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: &str,
    ) -> Reply {
        let mut request = self
            .request(Method::POST, path, token)
            .body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        send(request).await
    }

    /// Creates a contact session (of `org_1`) and returns its token.
    async fn start_session(&self) -> String {
        self.start_session_in("org_1").await
    }

    /// Creates a contact session of `organization_id` and returns its token.
    async fn start_session_in(&self, organization_id: &str) -> String {
        let reply = self
            .post_json(
                "/contact-sessions",
                None,
                &visitor("Ada", "ada@example.com", organization_id),
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        reply.body["session_id"]
            .as_str()
            .expect("session_id is a string")
            .to_owned()
    }

    /// Starts a conversation and returns its id.
    async fn start_conversation(&self, token: &str) -> String {
        let reply = send(self.request(Method::POST, "/conversations", Some(token))).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        reply.body["conversation_id"]
            .as_str()
            .expect("conversation_id is a string")
            .to_owned()
    }

    async fn send_message(&self, token: &str, conversation_id: &str, content: &str) -> Reply {
        self.post_json(
            &format!("/conversations/{conversation_id}/messages"),
            Some(token),
            &json!({ "content": content }),
        )
        .await
    }

    /// The conversation as its visitor sees it: (status, roles, contents).
    async fn conversation(
        &self,
        token: &str,
        conversation_id: &str,
    ) -> (String, Vec<String>, Vec<String>) {
        let reply = self
            .get(
                &format!("/conversations/{conversation_id}/messages"),
                Some(token),
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let messages = reply.body["messages"].as_array().expect("messages");
        let field = |name: &str| -> Vec<String> {
            messages
                .iter()
                .map(|message| message[name].as_str().expect("a string").to_owned())
                .collect()
        };
        (
            reply.body["status"].as_str().expect("status").to_owned(),
            field("role"),
            field("content"),
        )
    }

    /// A request of an operator of `organization` (`None`: no header).
    fn operator(&self, method: Method, path: &str, organization: Option<&str>) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match organization {
            Some(organization) => request.header("x-organization-id", organization),
            None => request,
        }
    }

    async fn operator_get(&self, path: &str, organization: &str) -> Reply {
        send(self.operator(Method::GET, path, Some(organization))).await
    }

    async fn operator_json(
        &self,
        method: Method,
        path: &str,
        organization: &str,
        body: &Value,
    ) -> Reply {
        send(self.operator(method, path, Some(organization)).json(body)).await
    }

    /// `GET /operator/subscription`, which must answer 200.
    async fn subscription(&self, organization: &str) -> Value {
        let reply = self
            .operator_get("/operator/subscription", organization)
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body
    }

    async fn reply_as_operator(
        &self,
        organization: &str,
        conversation_id: &str,
        content: &str,
    ) -> Reply {
        self.operator_json(
            Method::POST,
            &format!("/operator/conversations/{conversation_id}/messages"),
            organization,
            &json!({ "content": content }),
        )
        .await
    }

    async fn enhance(&self, organization: &str, conversation_id: &str, draft: &str) -> Reply {
        self.operator_json(
            Method::POST,
            &format!("/operator/conversations/{conversation_id}/enhance"),
            organization,
            &json!({ "draft": draft }),
        )
        .await
    }

    async fn upload_file(&self, organization: &str, name: &str, content: &str) -> Reply {
        self.operator_json(
            Method::POST,
            "/operator/files",
            organization,
            &json!({ "name": name, "content": content }),
        )
        .await
    }

    /// The ids of the organization's files, oldest first.
    async fn file_ids(&self, organization: &str) -> Vec<String> {
        let reply = self.operator_get("/operator/files", organization).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        ids(&reply.body["files"], "file_id")
    }

    /// The ids of the organization's conversations, oldest first.
    async fn conversation_ids(&self, organization: &str) -> Vec<String> {
        let reply = self
            .operator_get("/operator/conversations", organization)
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        ids(&reply.body["conversations"], "conversation_id")
    }

    async fn delete_file(&self, organization: &str, file_id: &str) -> Reply {
        send(self.operator(
            Method::DELETE,
            &format!("/operator/files/{file_id}"),
            Some(organization),
        ))
        .await
    }

    async fn put_greeting(&self, organization: &str, greeting: &str) -> Reply {
        self.operator_json(
            Method::PUT,
            "/operator/widget-settings",
            organization,
            &json!({ "greeting": greeting }),
        )
        .await
    }

    /// `POST /billing/webhook` with `body` as is and `signature`, if any.
    async fn post_webhook(&self, body: &str, signature: Option<&str>) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/billing/webhook", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("webhook-signature", signature);
        }
        send(request).await
    }
}

/// The `field` of every object in the JSON array `list`.
fn ids(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("an array: {list}"))
        .iter()
        .map(|item| item[field].as_str().expect("an id").to_owned())
        .collect()
}

async fn send(request: RequestBuilder) -> Reply {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("the body arrives");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn visitor(name: &str, email: &str, organization_id: &str) -> Value {
    json!({ "name": name, "email": email, "organization_id": organization_id })
}

/// A billing webhook body without period dates.
fn event(organization_id: &str, subscription_id: &str, status: &str, plan: &str) -> Value {
    json!({
        "organization_id": organization_id,
        "subscription_id": subscription_id,
        "status": status,
        "plan": plan,
    })
}

/// A billing webhook body whose period ends at `period_end`.
fn event_until(
    organization_id: &str,
    subscription_id: &str,
    status: &str,
    plan: &str,
    period_end: SystemTime,
) -> Value {
    let mut event = event(organization_id, subscription_id, status, plan);
    event["current_period_end"] = json!(rfc3339_millis(period_end));
    event
}

/// The `webhook-signature` a sender holding `secret` sends for `body` at `at`.
fn signature(secret: &str, body: &str, at: SystemTime) -> String {
    WebhookVerifier::new(secret).sign(body.as_bytes(), at)
}

impl Reply {
    /// `x-session-expires-at`, parsed; `None` when absent.
    fn session_expires_at(&self) -> Option<SystemTime> {
        self.headers.get("x-session-expires-at").map(|value| {
            let text = value.to_str().expect("x-session-expires-at is ASCII");
            assert_rfc3339_millis(text);
            humantime::parse_rfc3339(text).expect("x-session-expires-at is RFC 3339")
        })
    }

    /// Asserts an RFC 9457 problem+json with `status` and `code`.
    #[track_caller]
    fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{self:?}"
        );
        assert_eq!(self.body["code"], code, "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        assert!(self.body["title"].is_string(), "{self:?}");
        assert!(self.body["detail"].is_string(), "{self:?}");
        assert!(self.body["type"].is_string(), "{self:?}");
    }

    /// Asserts a session-layer rejection: 401, `code`, no expiry header.
    #[track_caller]
    fn assert_session_rejected(&self, code: &str) {
        self.assert_problem(401, code);
        assert!(
            !self.headers.contains_key("x-session-expires-at"),
            "a session rejection carries no expiry: {self:?}"
        );
    }
}

/// `2025-06-15T15:06:40.000Z`: UTC, with exactly three decimals.
#[track_caller]
fn assert_rfc3339_millis(text: &str) {
    let bytes = text.as_bytes();
    assert!(
        bytes.len() == 24
            && bytes[10] == b'T'
            && bytes[19] == b'.'
            && bytes[20..23].iter().all(u8::is_ascii_digit)
            && bytes[23] == b'Z',
        "{text:?} is not RFC 3339 UTC with milliseconds"
    );
}

/// Reads `field` (RFC 3339 with ms) and checks `field_ms` agrees with it.
#[track_caller]
fn timestamp(body: &Value, field: &str) -> SystemTime {
    let text = body[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is a string in {body}"));
    assert_rfc3339_millis(text);
    let at = humantime::parse_rfc3339(text).expect("an RFC 3339 timestamp");
    let millis = body[format!("{field}_ms")]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}_ms` is an integer in {body}"));
    assert_eq!(
        millis,
        unix_millis(at),
        "`{field}_ms` agrees with `{field}`"
    );
    at
}

// ---------------------------------------------------------------------------
// In-process server with a ManualClock
// ---------------------------------------------------------------------------

/// The example's app, served on a free port, its time in the test's hands.
struct Server {
    api: Api,
    clock: ManualClock,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Posts `event`, signed with the server's secret at the clock's now.
    async fn webhook(&self, event: &Value) -> Reply {
        let body = event.to_string();
        let signed = signature(SECRET, &body, self.clock.now());
        self.api.post_webhook(&body, Some(&signed)).await
    }

    /// Applies `event` and asserts the answer.
    async fn apply(&self, event: &Value, entitled: bool) {
        let reply = self.webhook(event).await;
        assert_eq!(reply.status, 200, "{event}: {reply:?}");
        assert_eq!(
            reply.body,
            json!({ "organization_id": event["organization_id"], "entitled": entitled }),
            "{event}"
        );
    }

    /// `organization` subscribes to `pro` (subscription `sub_pro`).
    async fn upgrade(&self, organization: &str) {
        self.apply(&event(organization, "sub_pro", "active", "pro"), true)
            .await;
    }

    /// `organization` cancels `sub_pro`.
    async fn cancel(&self, organization: &str) {
        self.apply(&event(organization, "sub_pro", "canceled", "pro"), false)
            .await;
    }
}

fn parsed_config(args: &[&str]) -> Config {
    match parse_args(args.iter().map(|arg| (*arg).to_owned())) {
        Ok(ParsedArgs::Run(config)) => config,
        other => panic!("{args:?} should parse to a config, got {other:?}"),
    }
}

/// Serves the app configured by `args` (as on the command line).
async fn serve(args: &[&str]) -> Server {
    let clock = ManualClock::new(epoch());
    // In memory unless the test names a store (a later flag wins).
    let mut all_args = vec!["--store", "memory"];
    all_args.extend_from_slice(args);
    let app = build_app(&parsed_config(&all_args), clock.clone())
        .await
        .expect("valid settings");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port on 127.0.0.1");
    let addr = listener.local_addr().expect("bound address");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("the server runs");
    });
    Server {
        api: Api::new(addr),
        clock,
        task,
    }
}

// ---------------------------------------------------------------------------
// Flags, without a process
// ---------------------------------------------------------------------------

#[test]
fn no_flags_give_the_documented_defaults() {
    let config = parsed_config(&[]);
    assert_eq!(config.addr, "127.0.0.1:3000".parse::<SocketAddr>().unwrap());
    assert_eq!(config.session_duration, 24 * HOUR);
    assert_eq!(config.refresh_threshold, 4 * HOUR);
    assert_eq!(config.absolute_lifetime, Some(30 * DAY));
    assert_eq!(
        config.store,
        StoreUrl::Sqlite("sqlite://widget.db".to_owned())
    );
    assert_eq!(config.session_store, None);
    assert_eq!(config.webhook_secret, None);
}

#[test]
fn flags_are_accepted_as_separate_or_inline_values() {
    let config = parsed_config(&[
        "--addr=127.0.0.1:0",
        "--session-duration",
        "10s",
        "--refresh-threshold=5s",
        "--absolute-lifetime",
        "off",
        "--store=memory",
        "--session-store",
        "memory",
    ]);
    assert_eq!(config.addr, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
    assert_eq!(config.session_duration, 10 * SECOND);
    assert_eq!(config.refresh_threshold, 5 * SECOND);
    assert_eq!(config.absolute_lifetime, None);
    assert_eq!(config.session_store, Some(StoreUrl::Memory));

    let with_spaces = parsed_config(&["--absolute-lifetime=2h 30m"]);
    assert_eq!(
        with_spaces.absolute_lifetime,
        Some(2 * HOUR + 30 * 60 * SECOND)
    );
}

#[test]
fn webhook_secret_flag_is_kept_as_given_and_never_printed() {
    for args in [
        &["--webhook-secret", "whsec_Top Secret"][..],
        &["--webhook-secret=whsec_Top Secret"][..],
    ] {
        let config = parsed_config(args);
        let secret = config.webhook_secret.as_ref().expect("a secret");
        assert_eq!(secret.expose(), "whsec_Top Secret", "{args:?}");
        let printed = format!("{config:?}");
        assert!(!printed.contains("Top Secret"), "{printed}");
    }
    // A secret that starts with `--` needs the inline form.
    let config = parsed_config(&["--webhook-secret=--dashes"]);
    assert_eq!(config.webhook_secret.unwrap().expose(), "--dashes");
}

#[test]
fn help_flag_asks_for_usage_wherever_it_is() {
    for args in [
        vec!["--help"],
        vec!["-h"],
        vec!["--session-duration", "10s", "--help"],
    ] {
        let parsed = parse_args(args.iter().map(|arg| (*arg).to_owned()));
        assert_eq!(parsed, Ok(ParsedArgs::Help), "{args:?}");
    }
}

#[test]
fn malformed_command_lines_are_errors_naming_the_problem() {
    let cases: [(&[&str], &str); 13] = [
        (&["--verbose"], "--verbose"),
        (&["--webhook-secret"], "--webhook-secret needs a value"),
        (&["--webhook-secret="], "--webhook-secret must not be empty"),
        (
            &["--webhook-secret", "  "],
            "--webhook-secret must not be empty",
        ),
        (&["--addr"], "--addr needs a value"),
        (&["--addr", "--store", "memory"], "--addr needs a value"),
        (&["--addr", "localhost"], "--addr"),
        (&["--session-duration", "soon"], "--session-duration"),
        (&["--refresh-threshold=5"], "--refresh-threshold"),
        (&["--absolute-lifetime", "forever"], "--absolute-lifetime"),
        (&["serve"], "serve"),
        (&["--store", "mysql://db"], "--store"),
        (&["--store", "redis://cache"], "--session-store"),
    ];
    for (args, expected) in cases {
        match parse_args(args.iter().map(|arg| (*arg).to_owned())) {
            Err(message) => assert!(
                message.contains(expected),
                "{args:?}: {message:?} should mention {expected:?}"
            ),
            Ok(parsed) => panic!("{args:?} should be an error, got {parsed:?}"),
        }
    }
}

#[tokio::test]
async fn build_app_rejects_session_settings_the_library_rejects() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--session-duration", "10s", "--refresh-threshold", "11s"],
            "refresh threshold",
        ),
        (&["--absolute-lifetime", "23h"], "absolute lifetime"),
        (&["--session-duration", "0s"], "duration"),
    ];
    for (args, expected) in cases {
        let mut config = parsed_config(args);
        config.store = StoreUrl::Memory;
        match build_app(&config, ManualClock::new(epoch())).await {
            Err(StartError::Usage(message)) => assert!(
                message.contains(expected),
                "{args:?}: {message:?} should mention {expected:?}"
            ),
            Err(other) => panic!("{args:?}: a usage error, got {other:?}"),
            Ok(_) => panic!("{args:?} should be rejected"),
        }
    }
    // The edges are allowed.
    for args in [
        &["--session-duration", "10s", "--refresh-threshold", "10s"][..],
        &["--absolute-lifetime", "24h"][..],
    ] {
        let mut config = parsed_config(args);
        config.store = StoreUrl::Memory;
        assert!(
            build_app(&config, ManualClock::new(epoch())).await.is_ok(),
            "{args:?}"
        );
    }
}

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

// ---------------------------------------------------------------------------
// Soft gating: AI replies to visitors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn entitled_organizations_visitor_gets_an_ai_reply_and_the_conversation_stays_unresolved() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    server.upgrade("org_1").await;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;

    for round in 1..=2 {
        server.clock.advance(SECOND);
        let reply = api.send_message(&token, &id, "Where is my invoice?").await;
        assert_eq!(reply.status, 201, "round {round}: {reply:?}");
        assert_eq!(reply.body["ai_replied"], true, "round {round}");
        assert_eq!(reply.body["status"], "unresolved", "round {round}");
        assert!(reply.body["message_id"].is_string(), "{reply:?}");
    }
    let (status, roles, contents) = api.conversation(&token, &id).await;
    assert_eq!(status, "unresolved");
    assert_eq!(
        roles,
        ["assistant", "user", "assistant", "user", "assistant"]
    );
    assert_eq!(contents[1], "Where is my invoice?");
    assert!(!contents[2].trim().is_empty(), "{contents:?}");
    assert_eq!(contents[2], contents[4], "the stand-in AI is deterministic");
}

#[tokio::test]
async fn ai_does_not_reply_to_an_escalated_conversation_even_after_an_upgrade() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;
    let escalated = api.start_conversation(&token).await;
    let reply = api.send_message(&token, &escalated, "hello?").await;
    assert_eq!(
        (&reply.body["ai_replied"], &reply.body["status"]),
        (&json!(false), &json!("escalated"))
    );

    server.upgrade("org_1").await;
    let reply = api.send_message(&token, &escalated, "anyone?").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["ai_replied"], false, "an operator has it now");
    assert_eq!(reply.body["status"], "escalated");
    let (_, roles, _) = api.conversation(&token, &escalated).await;
    assert_eq!(roles, ["assistant", "user", "user"]);

    // A new conversation of the same visitor gets the AI.
    let fresh = api.start_conversation(&token).await;
    let reply = api.send_message(&token, &fresh, "hello?").await;
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");
    assert_eq!(reply.body["status"], "unresolved");
}

#[tokio::test]
async fn operator_reply_leaves_the_status_unchanged() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;

    // Escalated (free organization) stays escalated.
    let escalated = api.start_conversation(&token).await;
    api.send_message(&token, &escalated, "help").await;
    let reply = api.reply_as_operator("org_1", &escalated, "On it!").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["status"], "escalated");
    assert!(reply.body["message_id"].is_string(), "{reply:?}");

    // Unresolved stays unresolved, and the AI keeps answering it.
    server.upgrade("org_1").await;
    let unresolved = api.start_conversation(&token).await;
    let reply = api
        .reply_as_operator("org_1", &unresolved, "Hello from a human")
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["status"], "unresolved");
    let reply = api.send_message(&token, &unresolved, "thanks").await;
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");

    let (status, roles, contents) = api.conversation(&token, &escalated).await;
    assert_eq!(status, "escalated");
    assert_eq!(roles, ["assistant", "user", "operator"]);
    assert_eq!(contents[2], "On it!");
    let (status, roles, _) = api.conversation(&token, &unresolved).await;
    assert_eq!(status, "unresolved");
    assert_eq!(roles, ["assistant", "operator", "user", "assistant"]);
}

// ---------------------------------------------------------------------------
// The story: free, upgraded by a webhook, canceled by a webhook
// ---------------------------------------------------------------------------

#[tokio::test]
async fn free_operator_is_refused_enhance_and_upload_but_can_list_reply_and_list_files() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    api.send_message(&token, &id, "hello").await;

    api.enhance("org_1", &id, "thanks for waiting")
        .await
        .assert_problem(403, "subscription_required");
    api.upload_file("org_1", "faq.md", "# FAQ")
        .await
        .assert_problem(403, "subscription_required");

    let reply = api.operator_get("/operator/conversations", "org_1").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let conversations = reply.body["conversations"].as_array().unwrap();
    assert_eq!(conversations.len(), 1, "{reply:?}");
    assert_eq!(conversations[0]["conversation_id"], id.as_str());
    assert_eq!(conversations[0]["status"], "escalated");
    assert_eq!(timestamp(&conversations[0], "created_at"), epoch());

    let reply = api.operator_get("/operator/files", "org_1").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, json!({ "files": [], "next_cursor": null }));
    api.delete_file("org_1", "file_unknown")
        .await
        .assert_problem(404, "not_found");

    let reply = api.reply_as_operator("org_1", &id, "A human here.").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let (_, roles, _) = api.conversation(&token, &id).await;
    assert_eq!(roles, ["assistant", "user", "operator"]);
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": false, "plan": null, "status": null })
    );
}

#[tokio::test]
async fn signed_webhook_upgrade_takes_effect_on_the_very_next_request() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    // Warm the negative cache on every path that reads it.
    api.enhance("org_1", &id, "draft")
        .await
        .assert_problem(403, "subscription_required");
    assert_eq!(api.subscription("org_1").await["entitled"], false);

    server.upgrade("org_1").await;

    // No time passes: the cache was invalidated, not waited out.
    let reply = api.send_message(&token, &id, "hello").await;
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");
    assert_eq!(reply.body["status"], "unresolved");
    let reply = api.enhance("org_1", &id, "  thanks   for waiting ").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, json!({ "enhanced": "Thanks for waiting." }));
    let reply = api.upload_file("org_1", " faq.md ", "# FAQ").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["name"], "faq.md");
    assert_eq!(timestamp(&reply.body, "created_at"), epoch());
    let file_id = reply.body["file_id"].as_str().expect("file_id").to_owned();
    assert_eq!(api.file_ids("org_1").await, [file_id]);
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": true, "plan": "pro", "status": "active" })
    );
}

#[tokio::test]
async fn cancellation_webhook_takes_the_subscription_back_at_once_but_files_can_still_be_deleted() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;
    server.upgrade("org_1").await;
    let id = api.start_conversation(&token).await;
    // Warm the positive cache.
    assert_eq!(api.enhance("org_1", &id, "hi").await.status, 200);
    let mut files = Vec::new();
    for name in ["faq.md", "pricing.md"] {
        server.clock.advance(SECOND);
        let reply = api.upload_file("org_1", name, "some text").await;
        assert_eq!(reply.status, 201, "{reply:?}");
        files.push(reply.body["file_id"].as_str().unwrap().to_owned());
    }

    server.cancel("org_1").await;

    api.enhance("org_1", &id, "hi")
        .await
        .assert_problem(403, "subscription_required");
    api.upload_file("org_1", "more.md", "text")
        .await
        .assert_problem(403, "subscription_required");
    let reply = api.send_message(&token, &id, "hello again").await;
    assert_eq!(
        (&reply.body["ai_replied"], &reply.body["status"]),
        (&json!(false), &json!("escalated")),
        "{reply:?}"
    );
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": false, "plan": "pro", "status": "canceled" })
    );

    // What was uploaded while subscribed stays listed and deletable.
    let reply = api.operator_get("/operator/files", "org_1").await;
    let listed = reply.body["files"].as_array().unwrap();
    assert_eq!(ids(&reply.body["files"], "file_id"), files, "oldest first");
    assert_eq!(listed[0]["name"], "faq.md");
    assert_eq!(timestamp(&listed[0], "created_at"), epoch() + SECOND);
    assert_eq!(timestamp(&listed[1], "created_at"), epoch() + 2 * SECOND);
    let reply = api.delete_file("org_1", &files[0]).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.body, Value::Null, "204 has no body");
    assert_eq!(api.file_ids("org_1").await, [files[1].clone()]);
    api.delete_file("org_1", &files[0])
        .await
        .assert_problem(404, "not_found");
}

// ---------------------------------------------------------------------------
// Billing webhook
// ---------------------------------------------------------------------------

/// Asserts `reply` is a 401 `invalid_signature` and `org_1` is unchanged.
async fn assert_refused_without_change(server: &Server, reply: Reply, before: &Value, case: &str) {
    assert_eq!(reply.status, 401, "{case}: {reply:?}");
    reply.assert_problem(401, "invalid_signature");
    assert_eq!(&server.api.subscription("org_1").await, before, "{case}");
}

#[tokio::test]
async fn webhook_with_a_tampered_body_is_401_invalid_signature_and_changes_nothing() {
    let server = serve(&WITH_SECRET).await;
    let before = server.api.subscription("org_1").await;
    let signed_body = event("org_1", "sub_1", "canceled", "pro").to_string();
    let signed = signature(SECRET, &signed_body, server.clock.now());
    let tampered = signed_body.replace("canceled", "active");
    assert_ne!(tampered, signed_body);

    let reply = server.api.post_webhook(&tampered, Some(&signed)).await;
    assert_refused_without_change(&server, reply, &before, "tampered body").await;
    // Even re-serialising the same JSON differently breaks the signature.
    let spaced = signed_body.replace(',', ", ");
    let reply = server.api.post_webhook(&spaced, Some(&signed)).await;
    assert_refused_without_change(&server, reply, &before, "re-serialised body").await;
}

#[tokio::test]
async fn webhook_signed_with_another_secret_is_401_invalid_signature_and_changes_nothing() {
    let server = serve(&WITH_SECRET).await;
    server.upgrade("org_1").await;
    let before = server.api.subscription("org_1").await;
    let body = event("org_1", "sub_pro", "canceled", "pro").to_string();
    let forged = signature("whsec_someone_else", &body, server.clock.now());

    let reply = server.api.post_webhook(&body, Some(&forged)).await;
    assert_refused_without_change(&server, reply, &before, "another secret").await;
    assert_eq!(before["entitled"], true);
}

#[tokio::test]
async fn webhook_signed_ten_minutes_away_is_401_invalid_signature_and_changes_nothing() {
    let server = serve(&WITH_SECRET).await;
    let before = server.api.subscription("org_1").await;
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let now = server.clock.now();
    for (case, at) in [
        ("ten minutes old", now - 10 * MINUTE),
        ("ten minutes ahead", now + 10 * MINUTE),
        ("301 s old", now - 301 * SECOND),
    ] {
        let signed = signature(SECRET, &body, at);
        let reply = server.api.post_webhook(&body, Some(&signed)).await;
        assert_refused_without_change(&server, reply, &before, case).await;
    }
    // A capture replayed later is refused too.
    let captured = signature(SECRET, &body, now);
    server.clock.advance(10 * MINUTE);
    let reply = server.api.post_webhook(&body, Some(&captured)).await;
    assert_refused_without_change(&server, reply, &before, "replayed").await;

    // 300 s is still within tolerance.
    let edge = signature(SECRET, &body, server.clock.now() - 300 * SECOND);
    let reply = server.api.post_webhook(&body, Some(&edge)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["entitled"], true);
}

#[tokio::test]
async fn webhook_without_a_usable_signature_header_is_401_invalid_signature() {
    let server = serve(&WITH_SECRET).await;
    let before = server.api.subscription("org_1").await;
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let reply = server.api.post_webhook(&body, None).await;
    assert_refused_without_change(&server, reply, &before, "no header").await;
    for header in ["", "garbage", "t=abc,v1=00", "v1=00", "t=1750000000"] {
        let reply = server.api.post_webhook(&body, Some(header)).await;
        assert_refused_without_change(&server, reply, &before, header).await;
    }
}

#[tokio::test]
async fn webhook_with_several_v1_entries_passes_when_one_matches() {
    let server = serve(&WITH_SECRET).await;
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let now = server.clock.now();
    let good = signature(SECRET, &body, now);
    let (timestamp_entry, good_v1) = good.split_once(",v1=").expect("t=…,v1=…");
    let old_secret = signature("whsec_rotated_out", &body, now);
    let (_, old_v1) = old_secret.split_once(",v1=").unwrap();
    // A rotation: the old secret's signature first, ours (in upper case)
    // after, with an entry this server does not know.
    let header = format!(
        "{timestamp_entry},v1={old_v1},v0=ignored,v1={}",
        good_v1.to_uppercase()
    );

    let reply = server.api.post_webhook(&body, Some(&header)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({ "organization_id": "org_1", "entitled": true })
    );
    assert_eq!(server.api.subscription("org_1").await["entitled"], true);

    // None matching is still refused.
    let header = format!("{timestamp_entry},v1={old_v1},v1={old_v1}");
    let reply = server.api.post_webhook(&body, Some(&header)).await;
    reply.assert_problem(401, "invalid_signature");
}

#[tokio::test]
async fn webhook_without_a_configured_secret_is_503_webhook_not_configured() {
    let server = serve(&[]).await;
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    for signed in [
        Some(signature(SECRET, &body, server.clock.now())),
        Some(signature("another_secret", &body, server.clock.now())),
        None,
    ] {
        let reply = server.api.post_webhook(&body, signed.as_deref()).await;
        reply.assert_problem(503, "webhook_not_configured");
    }
    assert_eq!(
        server.api.subscription("org_1").await,
        json!({ "entitled": false, "plan": null, "status": null })
    );
}

#[tokio::test]
async fn validly_signed_but_invalid_webhook_bodies_are_400_invalid_request_and_change_nothing() {
    let server = serve(&WITH_SECRET).await;
    let before = server.api.subscription("org_1").await;
    let mut unknown_status = event("org_1", "sub_1", "active", "pro");
    unknown_status["status"] = json!("gold");
    let mut missing_plan = event("org_1", "sub_1", "active", "pro");
    missing_plan.as_object_mut().unwrap().remove("plan");
    let mut missing_organization = event("org_1", "sub_1", "active", "pro");
    missing_organization
        .as_object_mut()
        .unwrap()
        .remove("organization_id");
    let mut bad_period_end = event("org_1", "sub_1", "active", "pro");
    bad_period_end["current_period_end"] = json!("next tuesday");
    let cases: Vec<(&str, String)> = vec![
        (
            "malformed JSON",
            r#"{"organization_id": "org_1","#.to_owned(),
        ),
        ("empty body", String::new()),
        ("not an object", "[1, 2]".to_owned()),
        ("unknown status", unknown_status.to_string()),
        (
            "status in capitals",
            unknown_status.to_string().replace("gold", "ACTIVE"),
        ),
        ("missing plan", missing_plan.to_string()),
        ("missing organization_id", missing_organization.to_string()),
        ("bad current_period_end", bad_period_end.to_string()),
        (
            "empty organization_id",
            event(" ", "sub_1", "active", "pro").to_string(),
        ),
    ];
    for (case, body) in cases {
        let signed = signature(SECRET, &body, server.clock.now());
        let reply = server.api.post_webhook(&body, Some(&signed)).await;
        assert_eq!(reply.status, 400, "{case}: {reply:?}");
        reply.assert_problem(400, "invalid_request");
        assert_eq!(server.api.subscription("org_1").await, before, "{case}");
    }
}

#[tokio::test]
async fn webhook_ignores_unknown_fields_and_needs_neither_session_nor_organization() {
    let server = serve(&WITH_SECRET).await;
    let mut body = event("org_1", "sub_1", "trialing", "pro");
    body["livemode"] = json!(false);
    body["items"] = json!([{ "price": "price_123" }]);
    body["trial_end"] = json!(rfc3339_millis(epoch() + 14 * DAY));
    // `Server::webhook` sends neither `x-session-id` nor `x-organization-id`.
    let reply = server.webhook(&body).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        server.api.subscription("org_1").await,
        json!({ "entitled": true, "plan": "pro", "status": "trialing" })
    );
}

#[tokio::test]
async fn webhooks_upsert_per_subscription_so_an_old_canceled_and_a_new_active_one_entitle_in_either_order(
) {
    let server = serve(&WITH_SECRET).await;
    let old = |organization: &str| {
        event_until(
            organization,
            "sub_old",
            "canceled",
            "starter",
            epoch() - 30 * DAY,
        )
    };
    let new = |organization: &str| event(organization, "sub_new", "active", "pro");

    // Old first, then new.
    server.apply(&old("org_a"), false).await;
    server.apply(&new("org_a"), true).await;
    // New first, then old: the old one does not replace the new one.
    server.apply(&new("org_b"), true).await;
    server.apply(&old("org_b"), true).await;
    for organization in ["org_a", "org_b"] {
        assert_eq!(
            server.api.subscription(organization).await,
            json!({ "entitled": true, "plan": "pro", "status": "active" }),
            "{organization}"
        );
    }

    // The same subscription id replaces its previous state (shown, as the
    // one with the latest period end: the old one ended a month ago).
    server
        .apply(
            &event_until("org_a", "sub_new", "past_due", "pro", epoch() + DAY),
            false,
        )
        .await;
    assert_eq!(
        server.api.subscription("org_a").await,
        json!({ "entitled": false, "plan": "pro", "status": "past_due" })
    );
    // Another organization's webhooks never touch this one.
    assert_eq!(server.api.subscription("org_b").await["entitled"], true);
}

// ---------------------------------------------------------------------------
// GET /operator/subscription
// ---------------------------------------------------------------------------

#[tokio::test]
async fn operator_subscription_is_null_plan_and_status_without_any_subscription() {
    let server = serve(&WITH_SECRET).await;
    let reply = server
        .api
        .operator_get("/operator/subscription", "org_nobody")
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({ "entitled": false, "plan": null, "status": null })
    );
}

#[tokio::test]
async fn operator_subscription_shows_the_deciding_subscription_deterministically() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let in_days = |days: u32| epoch() + days * DAY;

    // Entitled: the entitling one decides, even when a canceled one's
    // period ends later.
    server
        .apply(
            &event_until("org_1", "sub_a", "canceled", "starter", in_days(90)),
            false,
        )
        .await;
    server
        .apply(
            &event_until("org_1", "sub_b", "active", "pro", in_days(30)),
            true,
        )
        .await;
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": true, "plan": "pro", "status": "active" })
    );

    // Not entitled: the latest current_period_end is shown...
    server
        .apply(
            &event_until("org_2", "sub_a", "canceled", "starter", in_days(10)),
            false,
        )
        .await;
    server
        .apply(
            &event_until("org_2", "sub_b", "past_due", "pro", in_days(20)),
            false,
        )
        .await;
    assert_eq!(
        api.subscription("org_2").await,
        json!({ "entitled": false, "plan": "pro", "status": "past_due" })
    );
    // ...ties broken by subscription id (the greater), whatever the order
    // they arrived in.
    server
        .apply(
            &event_until("org_3", "sub_z", "unpaid", "enterprise", in_days(5)),
            false,
        )
        .await;
    server
        .apply(
            &event_until("org_3", "sub_m", "canceled", "starter", in_days(5)),
            false,
        )
        .await;
    assert_eq!(
        api.subscription("org_3").await,
        json!({ "entitled": false, "plan": "enterprise", "status": "unpaid" })
    );
}

#[tokio::test]
async fn entitlement_ends_with_the_current_period_without_any_webhook() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    server
        .apply(
            &event_until("org_1", "sub_1", "active", "pro", epoch() + HOUR),
            true,
        )
        .await;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    assert_eq!(api.enhance("org_1", &id, "hi").await.status, 200);

    server.clock.advance(HOUR);
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": false, "plan": "pro", "status": "active" })
    );
    api.enhance("org_1", &id, "hi")
        .await
        .assert_problem(403, "subscription_required");
    let reply = api.send_message(&token, &id, "hello").await;
    assert_eq!(reply.body["ai_replied"], false, "{reply:?}");
}

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

// ---------------------------------------------------------------------------
// The example binary
// ---------------------------------------------------------------------------

/// `target/<profile>/examples/widget_server`, built from the current sources.
///
/// `cargo test` builds the examples before the tests, but `cargo test --test
/// widget_server_e2e` does not, so this runs `cargo build --example` once
/// (a no-op when the binary is up to date), then checks the binary is newer
/// than every source it is built from.
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let test_binary = std::env::current_exe().expect("the test binary's path");
        let profile_dir = test_binary
            .parent()
            .and_then(Path::parent)
            .expect("test binaries live in target/<profile>/deps");
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        if let Some(cargo) = std::env::var_os("CARGO") {
            build_example(&cargo, manifest_dir, profile_dir);
        }

        let binary = profile_dir
            .join("examples")
            .join(format!("widget_server{}", std::env::consts::EXE_SUFFIX));
        let how = "run `cargo build --example widget_server --all-features` first";
        let built = std::fs::metadata(&binary)
            .and_then(|metadata| metadata.modified())
            .unwrap_or_else(|_| panic!("{} does not exist: {how}", binary.display()));
        let mut sources = Vec::new();
        collect_files(&manifest_dir.join("examples/widget_server"), &mut sources);
        collect_files(&manifest_dir.join("src"), &mut sources);
        for source in sources {
            let changed = std::fs::metadata(&source)
                .and_then(|metadata| metadata.modified())
                .expect("source files are readable");
            assert!(
                changed <= built,
                "{} is older than {}: {how}",
                binary.display(),
                source.display()
            );
        }
        binary
    })
}

/// `cargo build --example widget_server` for the profile this test runs in.
fn build_example(cargo: &OsStr, manifest_dir: &Path, profile_dir: &Path) {
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(manifest_dir)
        .args(["build", "--example", "widget_server", "--all-features"]);
    match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") | None => {}
        Some(profile) => {
            build.args(["--profile", profile]);
        }
    }
    let output = build.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build --example widget_server failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the source directories are readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// A running example binary; killed when dropped.
struct RunningBinary {
    child: Child,
    addr: SocketAddr,
    /// Its working directory, where the default `sqlite://widget.db` goes.
    _dir: tempfile::TempDir,
    /// Kept open so the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts the binary with `args` and waits for its `listening on` line.
async fn spawn_binary(args: &[&str]) -> (RunningBinary, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(example_binary())
        .current_dir(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the example binary starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    let read = tokio::time::timeout(PROCESS_TIMEOUT, stdout.read_line(&mut line))
        .await
        .expect("the binary prints its first line in time")
        .expect("stdout is readable");
    assert!(read > 0, "the binary closed stdout without printing a line");
    let line = line.trim_end().to_owned();
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap_or_else(|error| panic!("{line:?} does not end in an address: {error}"));
    let running = RunningBinary {
        child,
        addr,
        _dir: dir,
        _stdout: stdout,
    };
    (running, line)
}

/// Runs the binary with `args` to completion: (status, stdout, stderr).
async fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(example_binary())
        .current_dir(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROCESS_TIMEOUT, output)
        .await
        .unwrap_or_else(|_| panic!("{args:?}: the binary did not exit (is it listening?)"))
        .expect("the example binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn binary_prints_the_bound_address_first_and_serves_the_visitor_routes() {
    let (running, line) = spawn_binary(&[
        "--addr",
        "127.0.0.1:0",
        "--session-duration=1h",
        "--refresh-threshold=10m",
    ])
    .await;
    assert!(running.addr.ip().is_loopback(), "{line}");
    assert_ne!(running.addr.port(), 0, "the real port is printed: {line}");
    assert_eq!(line, format!("listening on http://{}", running.addr));

    let api = Api::new(running.addr);
    let reply = api
        .post_json(
            "/contact-sessions",
            None,
            &visitor("Ada", "ada@example.com", "org_1"),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let lifetime = timestamp(&reply.body, "expires_at")
        .duration_since(timestamp(&reply.body, "created_at"))
        .expect("expires after creation");
    assert_eq!(lifetime, HOUR, "--session-duration=1h reached the server");
    let token = reply.body["session_id"].as_str().unwrap().to_owned();

    let reply = api.get("/contact-sessions/current", Some(&token)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["name"], "Ada");
    assert!(reply.session_expires_at().is_some(), "{reply:?}");

    let id = api.start_conversation(&token).await;
    let reply = api.send_message(&token, &id, "hello").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let reply = api
        .get(&format!("/conversations/{id}/messages"), Some(&token))
        .await;
    let roles: Vec<&str> = reply.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| message["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["assistant", "user"]);

    api.get("/contact-sessions/current", None)
        .await
        .assert_session_rejected("session_missing");
    api.get("/nowhere", None)
        .await
        .assert_problem(404, "not_found");
    // Started without --webhook-secret.
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let signed = signature(SECRET, &body, SystemTime::now());
    api.post_webhook(&body, Some(&signed))
        .await
        .assert_problem(503, "webhook_not_configured");
}

#[tokio::test]
async fn binary_with_a_webhook_secret_applies_signed_webhooks_to_every_route() {
    let (running, _) = spawn_binary(&["--addr", "127.0.0.1:0", "--webhook-secret", SECRET]).await;
    let api = Api::new(running.addr);
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    api.enhance("org_1", &id, "hi")
        .await
        .assert_problem(403, "subscription_required");

    // The binary reads the system clock: sign at the current time.
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let forged = signature("whsec_wrong", &body, SystemTime::now());
    api.post_webhook(&body, Some(&forged))
        .await
        .assert_problem(401, "invalid_signature");
    let stale = signature(SECRET, &body, SystemTime::now() - 10 * MINUTE);
    api.post_webhook(&body, Some(&stale))
        .await
        .assert_problem(401, "invalid_signature");
    api.post_webhook("{", Some(&signature(SECRET, "{", SystemTime::now())))
        .await
        .assert_problem(400, "invalid_request");
    assert_eq!(api.subscription("org_1").await["entitled"], false);

    let reply = api
        .post_webhook(&body, Some(&signature(SECRET, &body, SystemTime::now())))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({ "organization_id": "org_1", "entitled": true })
    );
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": true, "plan": "pro", "status": "active" })
    );
    assert_eq!(api.enhance("org_1", &id, "hi").await.status, 200);
    let reply = api.send_message(&token, &id, "hello").await;
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");
    api.get("/operator/files", None)
        .await
        .assert_problem(401, "organization_missing");
}

#[tokio::test]
async fn binary_exits_2_with_a_message_on_invalid_flags_before_listening() {
    let db = std::env::temp_dir().join(format!("widget-e2e-{}.db", std::process::id()));
    let sqlite = format!("sqlite://{}", db.display());
    let cases: [(&[&str], &str); 9] = [
        (&["--session-duration", "soon"], "--session-duration"),
        (
            &["--session-duration", "10s", "--refresh-threshold", "20s"],
            "refresh threshold",
        ),
        (&["--absolute-lifetime", "1h"], "absolute lifetime"),
        (&["--store", &sqlite, "--session-duration=0s"], "duration"),
        (&["--verbose"], "--verbose"),
        (&["--addr"], "--addr"),
        (&["--store", "mysql://localhost/widget"], "unknown store"),
        (&["--store", "postgres://localhost:port/widget"], "--store"),
        (
            &["--session-store", "redis://localhost:port"],
            "--session-store",
        ),
    ];
    for (flags, expected) in cases {
        // A port of its own, so a binary that wrongly starts never clashes.
        let mut args = vec!["--addr", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let (status, stdout, stderr) = run_binary(&args).await;
        assert_eq!(status, Some(2), "{args:?}: stderr {stderr:?}");
        assert!(
            stdout.is_empty(),
            "{args:?}: nothing on stdout, got {stdout:?}"
        );
        assert!(
            stderr.contains(expected),
            "{args:?}: stderr {stderr:?} should mention {expected:?}"
        );
    }
    assert!(!db.exists(), "bad flags create no database file");
}

#[tokio::test]
async fn binary_prints_usage_on_help_and_exits_0() {
    let (status, stdout, stderr) = run_binary(&["--help"]).await;
    assert_eq!(status, Some(0), "stderr {stderr:?}");
    for flag in [
        "--addr",
        "--session-duration",
        "--refresh-threshold",
        "--absolute-lifetime",
        "--store",
        "--session-store",
        "--webhook-secret",
    ] {
        assert!(stdout.contains(flag), "usage mentions {flag}: {stdout}");
    }
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr:?}");
}
