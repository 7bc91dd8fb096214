//! What every end-to-end test of the reference server
//! (`examples/widget_server/`) shares: a client for its HTTP API, the
//! in-process server with a `ManualClock`, and the built binary.
//!
//! Two ways in:
//! * the built example binary, for what only a process shows: the
//!   `listening on` line, exit status 2 on bad flags, restarts, several
//!   instances on one database;
//! * the example included as a module, served in-process with a
//!   `ManualClock`, so expiry and renewal are driven by hand and no test
//!   sleeps.
#![allow(dead_code, unused_imports)]

#[path = "../../examples/widget_server/main.rs"]
pub mod widget_server;

pub use std::ffi::OsStr;
pub use std::net::SocketAddr;
pub use std::path::{Path, PathBuf};
pub use std::process::Stdio;
pub use std::sync::OnceLock;
pub use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use reqwest::header::HeaderMap;
pub use reqwest::{Method, RequestBuilder};
pub use serde_json::{json, Value};
pub use tokio::io::{AsyncBufReadExt, BufReader};
pub use tokio::net::TcpListener;
pub use tokio::process::{Child, ChildStdout, Command};
pub use tower_saas_guard::billing::stripe::StripeVerifier;
pub use tower_saas_guard::billing::WebhookVerifier;
pub use tower_saas_guard::session::SessionToken;
pub use tower_saas_guard::{rfc3339_millis, unix_millis, Clock, ManualClock};

pub use widget_server::{build_app, parse_args, Config, ParsedArgs, StartError, StoreUrl};

pub const SECOND: Duration = Duration::from_secs(1);
pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(24 * 3600);
pub const MINUTE: Duration = Duration::from_secs(60);

/// The webhook secret the in-process servers and the binary are given.
pub const SECRET: &str = "whsec_e2e_test";
pub const WITH_SECRET: [&str; 2] = ["--webhook-secret", SECRET];

/// How long a spawned binary may take to start or to exit (the machine may
/// be busy compiling).
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Where every `ManualClock` starts: a whole millisecond, in 2025.
pub fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_750_000_000_000)
}

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

/// A client for one running server.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client builds");
        Self {
            base: format!("http://{addr}"),
            http,
        }
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => request.header("x-session-id", token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        send(self.request(Method::GET, path, token)).await
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        send(self.request(Method::POST, path, token).json(body)).await
    }

    /// A POST with `body` as is, and `content_type` if any.
    pub async fn post_raw(
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
    pub async fn start_session(&self) -> String {
        self.start_session_in("org_1").await
    }

    /// Creates a contact session of `organization_id` and returns its token.
    pub async fn start_session_in(&self, organization_id: &str) -> String {
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
    pub async fn start_conversation(&self, token: &str) -> String {
        let reply = send(self.request(Method::POST, "/conversations", Some(token))).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        reply.body["conversation_id"]
            .as_str()
            .expect("conversation_id is a string")
            .to_owned()
    }

    pub async fn send_message(&self, token: &str, conversation_id: &str, content: &str) -> Reply {
        self.post_json(
            &format!("/conversations/{conversation_id}/messages"),
            Some(token),
            &json!({ "content": content }),
        )
        .await
    }

    /// The conversation as its visitor sees it: (status, roles, contents).
    pub async fn conversation(
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
    pub fn operator(
        &self,
        method: Method,
        path: &str,
        organization: Option<&str>,
    ) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match organization {
            Some(organization) => request.header("x-organization-id", organization),
            None => request,
        }
    }

    pub async fn operator_get(&self, path: &str, organization: &str) -> Reply {
        send(self.operator(Method::GET, path, Some(organization))).await
    }

    pub async fn operator_json(
        &self,
        method: Method,
        path: &str,
        organization: &str,
        body: &Value,
    ) -> Reply {
        send(self.operator(method, path, Some(organization)).json(body)).await
    }

    /// `GET /operator/subscription`, which must answer 200.
    pub async fn subscription(&self, organization: &str) -> Value {
        let reply = self
            .operator_get("/operator/subscription", organization)
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body
    }

    pub async fn reply_as_operator(
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

    pub async fn enhance(&self, organization: &str, conversation_id: &str, draft: &str) -> Reply {
        self.operator_json(
            Method::POST,
            &format!("/operator/conversations/{conversation_id}/enhance"),
            organization,
            &json!({ "draft": draft }),
        )
        .await
    }

    pub async fn upload_file(&self, organization: &str, name: &str, content: &str) -> Reply {
        self.operator_json(
            Method::POST,
            "/operator/files",
            organization,
            &json!({ "name": name, "content": content }),
        )
        .await
    }

    /// The ids of the organization's files, oldest first.
    pub async fn file_ids(&self, organization: &str) -> Vec<String> {
        let reply = self.operator_get("/operator/files", organization).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        ids(&reply.body["files"], "file_id")
    }

    /// The ids of the organization's conversations, oldest first.
    pub async fn conversation_ids(&self, organization: &str) -> Vec<String> {
        let reply = self
            .operator_get("/operator/conversations", organization)
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        ids(&reply.body["conversations"], "conversation_id")
    }

    pub async fn delete_file(&self, organization: &str, file_id: &str) -> Reply {
        send(self.operator(
            Method::DELETE,
            &format!("/operator/files/{file_id}"),
            Some(organization),
        ))
        .await
    }

    pub async fn put_greeting(&self, organization: &str, greeting: &str) -> Reply {
        self.operator_json(
            Method::PUT,
            "/operator/widget-settings",
            organization,
            &json!({ "greeting": greeting }),
        )
        .await
    }

    /// `DELETE /contact-sessions/current` (logout).
    pub async fn logout(&self, token: Option<&str>) -> Reply {
        send(self.request(Method::DELETE, "/contact-sessions/current", token)).await
    }

    /// `GET /operator/contact-sessions{query}`, which must answer 200.
    pub async fn contact_sessions(&self, organization: &str, query: &str) -> Value {
        let reply = self
            .operator_get(&format!("/operator/contact-sessions{query}"), organization)
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body
    }

    /// `DELETE /operator/contact-sessions/{session_ref}`.
    pub async fn revoke_contact_session(&self, organization: &str, session_ref: &str) -> Reply {
        send(self.operator(
            Method::DELETE,
            &format!("/operator/contact-sessions/{session_ref}"),
            Some(organization),
        ))
        .await
    }

    /// `DELETE /operator/contact-sessions`.
    pub async fn revoke_contact_sessions(&self, organization: &str) -> Reply {
        send(self.operator(
            Method::DELETE,
            "/operator/contact-sessions",
            Some(organization),
        ))
        .await
    }

    /// `POST /billing/webhook` with `body` as is and `signature`, if any.
    pub async fn post_webhook(&self, body: &str, signature: Option<&str>) -> Reply {
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

    /// `POST /billing/stripe` with `body` as is and a `Stripe-Signature`,
    /// if any.
    pub async fn post_stripe(&self, body: &str, signature: Option<&str>) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/billing/stripe", self.base))
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        send(request).await
    }
}

/// The `session_ref` operators see for `token`: its id, the hex of its
/// SHA-256.
pub fn session_ref(token: &str) -> String {
    SessionToken::parse(token)
        .expect("a token the server minted")
        .id()
        .to_string()
}

/// The `field` of every object in the JSON array `list`.
pub fn ids(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("an array: {list}"))
        .iter()
        .map(|item| item[field].as_str().expect("an id").to_owned())
        .collect()
}

pub async fn send(request: RequestBuilder) -> Reply {
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

pub fn visitor(name: &str, email: &str, organization_id: &str) -> Value {
    json!({ "name": name, "email": email, "organization_id": organization_id })
}

/// A billing webhook body without period dates.
pub fn event(organization_id: &str, subscription_id: &str, status: &str, plan: &str) -> Value {
    json!({
        "organization_id": organization_id,
        "subscription_id": subscription_id,
        "status": status,
        "plan": plan,
    })
}

/// A billing webhook body whose period ends at `period_end`.
pub fn event_until(
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
pub fn signature(secret: &str, body: &str, at: SystemTime) -> String {
    WebhookVerifier::new(secret).sign(body.as_bytes(), at)
}

/// The `Stripe-Signature` Stripe sends for `body` at `at` when the
/// endpoint's secret is `secret`.
pub fn stripe_signature(secret: &str, body: &str, at: SystemTime) -> String {
    StripeVerifier::try_new([secret])
        .expect("a non-empty secret")
        .sign(body.as_bytes(), at)
}

impl Reply {
    /// `x-session-expires-at`, parsed; `None` when absent.
    pub fn session_expires_at(&self) -> Option<SystemTime> {
        self.headers.get("x-session-expires-at").map(|value| {
            let text = value.to_str().expect("x-session-expires-at is ASCII");
            assert_rfc3339_millis(text);
            humantime::parse_rfc3339(text).expect("x-session-expires-at is RFC 3339")
        })
    }

    /// Asserts an RFC 9457 problem+json with `status` and `code`.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
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
    pub fn assert_session_rejected(&self, code: &str) {
        self.assert_problem(401, code);
        assert!(
            !self.headers.contains_key("x-session-expires-at"),
            "a session rejection carries no expiry: {self:?}"
        );
    }
}

/// `2025-06-15T15:06:40.000Z`: UTC, with exactly three decimals.
#[track_caller]
pub fn assert_rfc3339_millis(text: &str) {
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
pub fn timestamp(body: &Value, field: &str) -> SystemTime {
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
pub struct Server {
    pub api: Api,
    pub clock: ManualClock,
    pub task: tokio::task::JoinHandle<()>,
    /// Where its SQLite file lives, for [`serve_sqlite`].
    pub dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Posts `event`, signed with the server's secret at the clock's now.
    pub async fn webhook(&self, event: &Value) -> Reply {
        let body = event.to_string();
        let signed = signature(SECRET, &body, self.clock.now());
        self.api.post_webhook(&body, Some(&signed)).await
    }

    /// Applies `event` and asserts the answer.
    pub async fn apply(&self, event: &Value, entitled: bool) {
        let reply = self.webhook(event).await;
        assert_eq!(reply.status, 200, "{event}: {reply:?}");
        assert_eq!(
            reply.body,
            json!({ "organization_id": event["organization_id"], "entitled": entitled, "applied": true }),
            "{event}"
        );
    }

    /// `organization` subscribes to `pro` (subscription `sub_pro`).
    pub async fn upgrade(&self, organization: &str) {
        self.apply(&event(organization, "sub_pro", "active", "pro"), true)
            .await;
    }

    /// `organization` cancels `sub_pro`.
    pub async fn cancel(&self, organization: &str) {
        self.apply(&event(organization, "sub_pro", "canceled", "pro"), false)
            .await;
    }
}

pub fn parsed_config(args: &[&str]) -> Config {
    match parse_args(args.iter().map(|arg| (*arg).to_owned())) {
        Ok(ParsedArgs::Run(config)) => *config,
        other => panic!("{args:?} should parse to a config, got {other:?}"),
    }
}

/// Serves the app configured by `args` (as on the command line).
pub async fn serve(args: &[&str]) -> Server {
    // In memory unless the test names a store (a later flag wins).
    let mut all_args = vec!["--store", "memory"];
    all_args.extend_from_slice(args);
    serve_with(&all_args, None).await
}

/// Serves the app configured by `args` with its store in a fresh SQLite
/// file (in a temporary directory, removed with the server).
pub async fn serve_sqlite(args: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("widget.db").display());
    let mut all_args = vec!["--store", url.as_str()];
    all_args.extend_from_slice(args);
    serve_with(&all_args, Some(dir)).await
}

async fn serve_with(args: &[&str], dir: Option<tempfile::TempDir>) -> Server {
    let clock = ManualClock::new(epoch());
    let app = build_app(&parsed_config(args), clock.clone())
        .await
        .expect("valid settings");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port on 127.0.0.1");
    let addr = listener.local_addr().expect("bound address");
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("the server runs");
    });
    Server {
        api: Api::new(addr),
        clock,
        task,
        dir,
    }
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
pub fn example_binary() -> &'static Path {
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
        // The package's Cargo.toml is not a source: cargo relinks only when
        // what it declares changes, not when its mtime does.
        sources.retain(|source| source.file_name() != Some(OsStr::new("Cargo.toml")));
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

/// `cargo build --example widget_server` for the profile this test runs in
/// (the example of the `widget-server` package, a default member of the
/// workspace, so the command works from the root as the README has it).
pub fn build_example(cargo: &OsStr, manifest_dir: &Path, profile_dir: &Path) {
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

pub fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
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
pub struct RunningBinary {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its own working directory (where the default `sqlite://widget.db`
    /// goes), unless the test chose one.
    pub _dir: Option<tempfile::TempDir>,
    /// Kept open so the server never writes to a closed pipe.
    pub _stdout: BufReader<ChildStdout>,
    /// Everything the server wrote to stderr so far (also echoed to the
    /// test's stderr).
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl RunningBinary {
    /// Kills the process and waits until it is gone (its port and files
    /// are free afterwards).
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait()).await;
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts the binary with `args` and waits for its `listening on` line.
pub async fn spawn_binary(args: &[&str]) -> (RunningBinary, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (mut running, line) = spawn_binary_in(dir.path(), args).await;
    running._dir = Some(dir);
    (running, line)
}

/// Starts the binary with `args` in the working directory `dir`.
pub async fn spawn_binary_in(working_dir: &Path, args: &[&str]) -> (RunningBinary, String) {
    let dir = None;
    let mut child = Command::new(example_binary())
        .current_dir(working_dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the example binary starts");
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let collected = std::sync::Arc::clone(&stderr);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[widget_server] {line}");
            let mut text = collected.lock().unwrap_or_else(|e| e.into_inner());
            text.push_str(&line);
            text.push('\n');
        }
    });
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
        stderr,
    };
    (running, line)
}

/// Runs the binary with `args` to completion: (status, stdout, stderr).
pub async fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
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

// ---------------------------------------------------------------------------
// A PostgreSQL database of its own
// ---------------------------------------------------------------------------

/// Where the tests' PostgreSQL server is (`DATABASE_URL`, or the loopback
/// default); each test creates a database of its own there.
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A service a test needs cannot be reached: under `CI=true` that fails
/// the test; elsewhere the test is skipped with the reason printed.
pub fn skip_or_fail(service: &str, reason: &dyn std::fmt::Display) {
    let message = format!("{service} is unreachable ({reason})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}; CI=true requires it");
    }
    eprintln!("skipped: {message}");
}

/// A fresh database `tsg_e2e_<random>` on the tests' PostgreSQL server,
/// dropped (with any connection still open to it) when this is dropped.
pub struct TestDatabase {
    /// Its URL, for `--store` / `--session-store`.
    pub url: String,
    /// Its name (`datname` in `pg_stat_activity`).
    pub name: String,
}

impl TestDatabase {
    /// Creates the database; `None` (after [`skip_or_fail`]) when the
    /// server cannot be reached.
    pub async fn create() -> Option<Self> {
        use sqlx::Connection;
        let admin_url = postgres_admin_url();
        let mut admin = match tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::PgConnection::connect(&admin_url),
        )
        .await
        {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                skip_or_fail("PostgreSQL", &error);
                return None;
            }
            Err(_) => {
                skip_or_fail("PostgreSQL", &"no answer within 5 s");
                return None;
            }
        };
        let token = SessionToken::generate().expect("os randomness").to_string();
        let name = format!("tsg_e2e_{}", &session_ref(&token)[..16]);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("the test user may create databases");
        let _ = admin.close().await;
        let (base, query) = match admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin_url.as_str(), String::new()),
        };
        let authority_end = base
            .find("://")
            .map(|scheme| scheme + 3)
            .and_then(|start| base[start..].find('/').map(|slash| start + slash))
            .unwrap_or(base.len());
        let url = format!("{}/{name}{query}", &base[..authority_end]);
        Some(Self { url, name })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for dropping the test database");
            runtime.block_on(async move {
                use sqlx::Connection;
                let mut admin = sqlx::PgConnection::connect(&postgres_admin_url()).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

impl TestDatabase {
    /// Terminates the backends on this database whose `application_name`
    /// is `application_name` (through an administrative connection, not
    /// a restart of the shared server); returns how many.
    pub async fn terminate_backends_of(&self, application_name: &str) -> i64 {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
            .await
            .expect("the admin connection opens");
        // The backends first, then one `pg_terminate_backend` each: in one
        // statement the server may call it before the filter has run.
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
        )
        .bind(application_name)
        .bind(&self.name)
        .fetch_all(&mut admin)
        .await
        .expect("pg_stat_activity is readable");
        let mut terminated = 0;
        for pid in pids {
            let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&mut admin)
                .await
                .expect("pg_terminate_backend runs");
            terminated += i64::from(done);
        }
        let _ = admin.close().await;
        terminated
    }

    /// Lets new connections to this database in, or keeps them out
    /// (`ALLOW_CONNECTIONS`); open connections stay.
    pub async fn allow_connections(&self, allowed: bool) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
            .await
            .expect("the admin connection opens");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {allowed}",
            self.name
        )))
        .execute(&mut admin)
        .await
        .expect("ALTER DATABASE runs");
        let _ = admin.close().await;
    }

    /// How many backends on this database named `application_name` have
    /// run `LISTEN` and wait (a listener ready to receive).
    pub async fn listening_backends_of(&self, application_name: &str) -> i64 {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
            .await
            .expect("the admin connection opens");
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = $2 \
               AND state = 'idle' AND query ILIKE 'LISTEN%'",
        )
        .bind(application_name)
        .bind(&self.name)
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_activity is readable");
        let _ = admin.close().await;
        listening
    }
}

// ---------------------------------------------------------------------------
// A share of the tests' Redis server
// ---------------------------------------------------------------------------

/// Where the tests' Redis server is (`REDIS_URL`, or the loopback default).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// One test's share of Redis: a key prefix of its own (`--redis-prefix`)
/// and a Redis user per server instance, so the test can kill exactly one
/// instance's pub/sub connection. Its keys and users are removed by
/// [`finish`](Self::finish), or on drop when the test panicked.
pub struct TestRedis {
    /// The prefix, for `--redis-prefix`.
    pub prefix: String,
    client: redis::Client,
    users: Vec<String>,
    finished: bool,
}

impl TestRedis {
    /// Connects; `None` (after [`skip_or_fail`]) when Redis cannot be reached.
    pub async fn create() -> Option<Self> {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).expect("REDIS_URL is a Redis URL");
        let connected = tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await;
        match connected {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                skip_or_fail("Redis", &error);
                return None;
            }
            Err(_) => {
                skip_or_fail("Redis", &"no answer within 3 s");
                return None;
            }
        }
        let token = SessionToken::generate().expect("os randomness").to_string();
        let prefix = format!("tsg-e2e-{}:", &session_ref(&token)[..16]);
        Some(Self {
            prefix,
            client,
            users: Vec::new(),
            finished: false,
        })
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let mut connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        command
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{command:?} failed: {error}"))
    }

    /// The Redis user of `instance`: `<prefix>-<instance>` without the
    /// prefix's colon, which a URL's user name cannot hold.
    fn user(&self, instance: &str) -> String {
        format!("{}-{instance}", self.prefix.trim_end_matches(':'))
    }

    /// A Redis URL for `--session-store` that connects as a Redis user of
    /// its own (made now, deleted at the end).
    pub async fn url_as(&mut self, instance: &str) -> String {
        let user = self.user(instance);
        let password = format!("pw-{}", &self.prefix[8..24]);
        self.query::<()>(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&user)
                .arg("on")
                .arg(format!(">{password}"))
                .arg("~*")
                .arg("&*")
                .arg("+@all"),
        )
        .await;
        self.users.push(user.clone());
        let url = redis_url();
        let (scheme, rest) = url.split_once("://").expect("REDIS_URL has a scheme");
        // Any credentials in REDIS_URL give way to the instance's own.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let rest = match rest[..authority_end].rsplit_once('@') {
            Some((_, host)) => format!("{host}{}", &rest[authority_end..]),
            None => rest.to_owned(),
        };
        format!("{scheme}://{user}:{password}@{rest}")
    }

    /// Lets instance `instance`'s user authenticate, or not (`ACL SETUSER
    /// on/off`); connections already open stay.
    pub async fn allow_logins_of(&self, instance: &str, allowed: bool) {
        self.query::<()>(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(self.user(instance))
                .arg(if allowed { "on" } else { "off" }),
        )
        .await;
    }

    /// How many pub/sub connections instance `instance`'s user has open.
    pub async fn pubsub_connections_of(&self, instance: &str) -> usize {
        let user = self.user(instance);
        let list: String = self.query(redis::cmd("CLIENT").arg("LIST")).await;
        list.lines()
            .filter(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                fields.contains(&format!("user={user}").as_str())
                    && fields
                        .iter()
                        .any(|field| field.strip_prefix("sub=").is_some_and(|count| count != "0"))
            })
            .count()
    }

    /// Kills instance `instance`'s pub/sub connections (`CLIENT KILL`, not
    /// a restart of the shared server); returns how many.
    pub async fn kill_pubsub_of(&self, instance: &str) -> i64 {
        let user = self.user(instance);
        self.query(
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("USER")
                .arg(user)
                .arg("TYPE")
                .arg("pubsub"),
        )
        .await
    }

    /// The keys holding the prefix (a `SCAN`, which a test may use).
    pub async fn keys(&self) -> Vec<String> {
        let mut connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        let mut keys = Vec::new();
        let mut cursor = 0_u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("*{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .expect("SCAN");
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                return keys;
            }
        }
    }

    /// Deletes the prefix's keys and the instances' users, and checks
    /// nothing is left.
    pub async fn finish(mut self) {
        for key in self.keys().await {
            self.query::<i64>(redis::cmd("DEL").arg(key)).await;
        }
        for user in std::mem::take(&mut self.users) {
            self.query::<i64>(redis::cmd("ACL").arg("DELUSER").arg(user))
                .await;
        }
        assert!(
            self.keys().await.is_empty(),
            "keys left under {}",
            self.prefix
        );
        self.finished = true;
    }
}

impl Drop for TestRedis {
    /// A test that panicked still removes its keys and users (best effort).
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(mut connection) = self.client.get_connection() else {
            eprintln!("could not remove the Redis keys under {}", self.prefix);
            return;
        };
        let mut cursor = 0_u64;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("*{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut connection)
            else {
                break;
            };
            for key in keys {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(key).query(&mut connection);
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for user in &self.users {
            let _: redis::RedisResult<i64> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(user)
                .query(&mut connection);
        }
    }
}

// ---------------------------------------------------------------------------
// Two server processes sharing their stores
// ---------------------------------------------------------------------------

/// What two instances share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// Everything in one PostgreSQL database; `LISTEN/NOTIFY` between them.
    Postgres,
    /// App data and subscriptions in PostgreSQL, sessions in Redis (under
    /// a prefix of the test's own); Redis pub/sub between them.
    PostgresAndRedis,
}

/// Two running example binaries on one set of stores: `one` and `two`,
/// each with its own process, port and caches.
pub struct Instances {
    pub one: RunningBinary,
    pub two: RunningBinary,
    /// Clients for `one` and `two`.
    pub first: Api,
    pub second: Api,
    pub database: TestDatabase,
    pub redis: Option<TestRedis>,
}

impl Instances {
    /// Starts both (one after the other) with `args` besides the stores,
    /// the address and the webhook secret; `None` (after [`skip_or_fail`])
    /// when a service cannot be reached.
    pub async fn start(shared: Shared, args: &[&str]) -> Option<Self> {
        let database = TestDatabase::create().await?;
        let mut redis = match shared {
            Shared::Postgres => None,
            Shared::PostgresAndRedis => Some(TestRedis::create().await?),
        };
        let mut spawned = Vec::new();
        for instance in ["one", "two"] {
            let mut all = vec![
                "--addr".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--store".to_owned(),
                database.url.clone(),
                "--webhook-secret".to_owned(),
                SECRET.to_owned(),
            ];
            if let Some(redis) = &mut redis {
                all.extend([
                    "--session-store".to_owned(),
                    redis.url_as(instance).await,
                    "--redis-prefix".to_owned(),
                    redis.prefix.clone(),
                ]);
            }
            all.extend(args.iter().map(|arg| (*arg).to_owned()));
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            spawned.push(spawn_binary(&all).await.0);
        }
        let two = spawned.pop().expect("two instances");
        let one = spawned.pop().expect("two instances");
        Some(Self {
            first: Api::new(one.addr),
            second: Api::new(two.addr),
            one,
            two,
            database,
            redis,
        })
    }

    /// The `application_name` of `instance`'s `LISTEN` connections.
    pub fn listener_name(instance: &RunningBinary) -> String {
        widget_server::listener_application_name(instance.child.id().expect("still running"))
    }

    /// Stops both, removes the Redis keys and users, drops the database.
    pub async fn finish(self) {
        self.one.stop().await;
        self.two.stop().await;
        if let Some(redis) = self.redis {
            redis.finish().await;
        }
        drop(self.database);
    }
}

/// A billing webhook body signed now with [`SECRET`] (the binaries read
/// the system clock).
pub async fn post_signed(api: &Api, event: &Value) -> Reply {
    let body = event.to_string();
    api.post_webhook(&body, Some(&signature(SECRET, &body, SystemTime::now())))
        .await
}

/// Asks `check` again every 20 ms until it holds; fails when it still does
/// not `within` after `since`. Returns how long it took from `since`.
pub async fn eventually<F, Fut>(
    since: std::time::Instant,
    within: Duration,
    what: &str,
    mut check: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        let held = check().await;
        let elapsed = since.elapsed();
        if held {
            assert!(
                elapsed <= within,
                "{what}: only after {elapsed:?}, not within {within:?}"
            );
            return elapsed;
        }
        assert!(elapsed < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// gRPC (`support.v1.Support` and `grpc.health.v1.Health` on the same address)
// ---------------------------------------------------------------------------

pub use tonic::metadata::MetadataValue;
pub use tonic::{Code, Status};
pub use widget_server::pb;

/// A `support.v1.Support` client.
pub type SupportClient = pb::support_client::SupportClient<tonic::transport::Channel>;

impl Api {
    /// An HTTP/2 (prior knowledge) channel to the same address as the REST
    /// API.
    pub async fn grpc_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.base.clone())
            .expect("a valid URI")
            .connect()
            .await
            .expect("the server accepts HTTP/2 connections")
    }

    /// A `support.v1.Support` client on the same address as the REST API.
    pub async fn grpc(&self) -> SupportClient {
        SupportClient::new(self.grpc_channel().await)
    }
}

/// `message` with `token` in the `x-session-id` metadata.
pub fn with_session<T>(message: T, token: &str) -> tonic::Request<T> {
    with_metadata(message, "x-session-id", token)
}

/// `message` with `organization` in the `x-organization-id` metadata.
pub fn as_operator<T>(message: T, organization: &str) -> tonic::Request<T> {
    with_metadata(message, "x-organization-id", organization)
}

pub fn with_metadata<T>(message: T, key: &'static str, value: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(key, MetadataValue::try_from(value).expect("ASCII metadata"));
    request
}

/// `x-session-expires-at` of a gRPC response (its header metadata), parsed;
/// `None` when absent.
pub fn grpc_expires_at(metadata: &tonic::metadata::MetadataMap) -> Option<SystemTime> {
    metadata.get("x-session-expires-at").map(|value| {
        let text = value.to_str().expect("x-session-expires-at is ASCII");
        assert_rfc3339_millis(text);
        humantime::parse_rfc3339(text).expect("x-session-expires-at is RFC 3339")
    })
}

/// Asserts a failed call ended with `code`, and (for a rejection) without
/// `x-session-expires-at`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    let status = result.expect_err("the call fails");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

impl TestDatabase {
    /// Terminates every backend on this database (the server's pool and
    /// its listener); with [`allow_connections`](Self::allow_connections)
    /// `false` first, the database is down for the server.
    pub async fn terminate_all_backends(&self) -> i64 {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
            .await
            .expect("the admin connection opens");
        let terminated: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_one(&mut admin)
        .await
        .expect("pg_terminate_backend runs");
        let _ = admin.close().await;
        terminated
    }
}
