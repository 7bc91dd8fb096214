//! The reference server: the support-widget backend tower-saas-guard was
//! extracted from, in axum, built only on the library's public API.
//!
//! This is the **visitor (widget) half**. A visitor opens a contact session
//! (name, e-mail, organization), gets a token back, and sends it in the
//! `x-session-id` header to start conversations and send messages. Sessions
//! are sliding: creating a conversation and sending a message renew the
//! session when it is close to expiring; reading never does. The operator
//! (dashboard) side, billing and AI replies come in later versions.
//!
//! ```text
//! cargo run --example widget_server --features axum
//! cargo run --example widget_server --features axum -- --session-duration 10s --refresh-threshold 5s
//! cargo run --example widget_server --features axum -- --help
//! ```
//!
//! The first line on stdout is `listening on http://ADDR`; `--addr 127.0.0.1:0`
//! picks a free port. Invalid flags exit with status 2 before anything
//! listens. Try the 10 s / 5 s demonstration with curl:
//!
//! ```text
//! curl -si localhost:3000/contact-sessions -H 'content-type: application/json' \
//!      -d '{"name":"Ada","email":"ada@example.com","organization_id":"org_1"}'
//! curl -si -X POST localhost:3000/conversations -H 'x-session-id: <session_id>'
//! ```
//!
//! Every response that went through the session layer carries
//! `x-session-expires-at`; watch it move forward only when less than the
//! refresh threshold was left.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower_saas_guard::session::{
    MemorySessionStore, Session, SessionHandle, SessionId, SessionRefreshLayer, SessionToken,
};
use tower_saas_guard::{problem_json, rfc3339_millis, unix_millis, Clock, StoreError, SystemClock};

// ---------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------

const USAGE: &str = "\
Usage: widget_server [FLAGS]

The tower-saas-guard reference server (support-widget backend, visitor side).

Flags (`--flag value` or `--flag=value`):
  --addr ADDR                  address to listen on [default: 127.0.0.1:3000]
                               (127.0.0.1:0 picks a free port)
  --session-duration DURATION  lifetime of a session at creation and at each
                               renewal [default: 24h]
  --refresh-threshold DURATION renew only when less than this is left
                               [default: 4h]
  --absolute-lifetime DURATION|off
                               hard cap on a session's life [default: 30d]
  --store URL                  conversation store [default: memory]
                               (only `memory` is available in this build)
  --session-store URL          session store [default: same as --store]
                               (only `memory` is available in this build)
  -h, --help                   print this help and exit

Durations use humantime syntax: 500ms, 10s, 4h, 30d.
";

/// Where records live, as named by `--store` / `--session-store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// In this process's memory; lost on exit.
    Memory,
    /// `sqlite://PATH` (not available in this build yet).
    Sqlite(String),
    /// `postgres://…` (not available in this build yet).
    Postgres(String),
    /// `redis://…`, sessions only (not available in this build yet).
    Redis(String),
}

impl StoreUrl {
    fn parse(flag: &str, text: &str) -> Result<Self, String> {
        let store = if text == "memory" {
            Self::Memory
        } else if text.starts_with("sqlite:") {
            Self::Sqlite(text.to_owned())
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Self::Postgres(text.to_owned())
        } else if text.starts_with("redis://") || text.starts_with("rediss://") {
            Self::Redis(text.to_owned())
        } else {
            return Err(format!(
                "{flag}: unknown store `{text}` (expected memory, sqlite://PATH, postgres://…)"
            ));
        };
        if matches!(store, Self::Redis(_)) && flag == "--store" {
            return Err(format!(
                "--store: redis holds sessions only; use it with --session-store (got `{text}`)"
            ));
        }
        Ok(store)
    }

    /// Fails for the stores this build cannot open yet.
    fn check_available(&self, flag: &str) -> Result<(), String> {
        match self {
            Self::Memory => Ok(()),
            Self::Sqlite(url) | Self::Postgres(url) | Self::Redis(url) => Err(format!(
                "{flag}: the store `{url}` is not available in this build yet; use `{flag} memory`"
            )),
        }
    }
}

/// The server's settings, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Lifetime given to a session at creation and at each renewal.
    pub session_duration: Duration,
    /// Renew only when less than this is left.
    pub refresh_threshold: Duration,
    /// Hard cap on a session's life; `None` disables it.
    pub absolute_lifetime: Option<Duration>,
    /// Where conversations live.
    pub store: StoreUrl,
    /// Where sessions live; `None` means the same as `store`.
    pub session_store: Option<StoreUrl>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            session_duration: Duration::from_secs(24 * 3600),
            refresh_threshold: Duration::from_secs(4 * 3600),
            absolute_lifetime: Some(Duration::from_secs(30 * 24 * 3600)),
            store: StoreUrl::Memory,
            session_store: None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedArgs {
    /// `--help`: print the usage and exit.
    Help,
    /// Run the server with these settings.
    Run(Config),
}

/// Parses the command line (without the program name).
///
/// Only the syntax is checked here; whether the session settings fit
/// together is the library's call, made by [`build_app`].
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<ParsedArgs, String> {
    let mut config = Config::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(ParsedArgs::Help);
        }
        let (flag, mut inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        // `--flag=value`, or else the next argument (unless it is a flag).
        let mut value = || match inline_value.take() {
            Some(value) => Ok(value),
            None => args
                .next()
                .filter(|value| !value.starts_with("--"))
                .ok_or_else(|| format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--addr" => {
                let value = value()?;
                config.addr = value.parse().map_err(|_| {
                    format!("--addr: `{value}` is not an IP:PORT address (e.g. 127.0.0.1:3000)")
                })?;
            }
            "--session-duration" => config.session_duration = parse_duration(&flag, &value()?)?,
            "--refresh-threshold" => config.refresh_threshold = parse_duration(&flag, &value()?)?,
            "--absolute-lifetime" => {
                config.absolute_lifetime = match value()?.as_str() {
                    "off" => None,
                    duration => Some(parse_duration(&flag, duration)?),
                };
            }
            "--store" => config.store = StoreUrl::parse(&flag, &value()?)?,
            "--session-store" => config.session_store = Some(StoreUrl::parse(&flag, &value()?)?),
            unknown if unknown.starts_with("--") => {
                return Err(format!("unknown flag `{unknown}`"))
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    Ok(ParsedArgs::Run(config))
}

fn parse_duration(flag: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{flag}: `{text}` is not a duration ({error}; e.g. 10s, 4h, 30d)"))
}

// ---------------------------------------------------------------------------
// The application
// ---------------------------------------------------------------------------

/// The greeting every new conversation starts with (per-organization
/// greetings arrive with the operator side).
const DEFAULT_GREETING: &str = "Hi! How can we help you today?";

/// Field limits, in characters.
const MAX_ID_CHARS: usize = 128;
const MAX_NAME_CHARS: usize = 200;
const MAX_EMAIL_CHARS: usize = 320;
const MAX_CONTENT_CHARS: usize = 10_000;

/// Builds the router: checks the session settings (through the library's
/// builder) and the stores, and wires every route to its session layer.
///
/// `clock` is the time both the sessions and the timestamps of
/// conversations and messages read (tests pass a `ManualClock`).
pub fn build_app(config: &Config, clock: impl Clock) -> Result<Router, String> {
    config.store.check_available("--store")?;
    if let Some(session_store) = &config.session_store {
        session_store.check_available("--session-store")?;
    }

    // Sessions and handlers read the same clock; any closure is a `Clock`.
    let clock: Arc<dyn Clock> = Arc::new(clock);
    let session_clock = Arc::clone(&clock);
    let builder = SessionRefreshLayer::builder(MemorySessionStore::new())
        .duration(config.session_duration)
        .refresh_threshold(config.refresh_threshold)
        .clock(move || session_clock.now());
    let builder = match config.absolute_lifetime {
        Some(lifetime) => builder.absolute_lifetime(lifetime),
        None => builder.no_absolute_lifetime(),
    };
    let sessions = builder
        .build()
        .map_err(|error| format!("invalid session settings: {error}"))?;

    // One session core, two behaviours: sending counts as activity and
    // renews a session close to expiry; reading only validates it. They are
    // `route_layer`s on each method, so a wrong method is the router's 405
    // and an unknown route its 404, before any session check.
    let renewing = sessions.clone();
    let validate_only = sessions.clone().validate_only();

    let state = AppState {
        sessions: sessions.handle(),
        clock,
        conversations: Arc::default(),
    };

    Ok(Router::new()
        .route("/contact-sessions", post(create_contact_session))
        .route(
            "/contact-sessions/current",
            get(current_contact_session).route_layer(validate_only.clone()),
        )
        .route(
            "/conversations",
            post(create_conversation).route_layer(renewing.clone()),
        )
        .route(
            "/conversations/{id}/messages",
            get(list_messages).route_layer(validate_only),
        )
        .route(
            "/conversations/{id}/messages",
            post(send_message).route_layer(renewing),
        )
        .fallback(route_not_found)
        // After the routes: it applies to the routes registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state))
}

#[derive(Clone)]
struct AppState {
    /// Creates sessions; shares the layers' store, cache and clock.
    sessions: SessionHandle,
    clock: Arc<dyn Clock>,
    conversations: Arc<Mutex<HashMap<String, Conversation>>>,
}

impl AppState {
    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn conversations(&self) -> MutexGuard<'_, HashMap<String, Conversation>> {
        self.conversations
            .lock()
            .expect("no handler panics while holding the conversations lock")
    }
}

/// What a session's payload holds: who the visitor is.
#[derive(Debug, Serialize, Deserialize)]
struct Visitor {
    name: String,
    email: String,
}

struct Conversation {
    /// The session that started it: the only one that may see it.
    session_id: SessionId,
    status: Status,
    created_at: SystemTime,
    messages: Vec<Message>,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    /// Every conversation starts here; escalation arrives with AI replies.
    Unresolved,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Role {
    /// The visitor.
    User,
    /// The greeting (and, later, AI replies).
    Assistant,
}

struct Message {
    id: String,
    role: Role,
    content: String,
    created_at: SystemTime,
}

impl Message {
    fn to_json(&self) -> Value {
        json!({
            "message_id": self.id,
            "role": self.role,
            "content": self.content,
            "created_at": rfc3339_millis(self.created_at),
            "created_at_ms": unix_millis(self.created_at),
        })
    }
}

impl Conversation {
    /// The conversation `id`, if it exists and belongs to `session`;
    /// anything else is the same 404, so ids of others leak nothing.
    fn of_session<'a>(
        conversations: &'a mut HashMap<String, Conversation>,
        id: &str,
        session: &Session,
    ) -> Result<&'a mut Conversation, ApiError> {
        conversations
            .get_mut(id)
            .filter(|conversation| conversation.session_id == session.id())
            .ok_or_else(|| ApiError::not_found(format!("No conversation `{id}`.")))
    }
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct NewContactSession {
    name: String,
    email: String,
    organization_id: String,
}

/// `POST /contact-sessions`: no session yet; creates one.
async fn create_contact_session(
    State(state): State<AppState>,
    ValidJson(body): ValidJson<NewContactSession>,
) -> Result<impl IntoResponse, ApiError> {
    let name = required_text("name", &body.name, MAX_NAME_CHARS)?;
    let email = email_address(&body.email)?;
    let organization_id = required_text("organization_id", &body.organization_id, MAX_ID_CHARS)?;

    let created = state
        .sessions
        .create(Some(organization_id.as_str()), Visitor { name, email })
        .await
        .map_err(ApiError::store_unavailable)?;

    Ok((
        StatusCode::CREATED,
        Json(json!({
            "session_id": created.token.to_string(),
            "organization_id": organization_id,
            "created_at": rfc3339_millis(created.created_at),
            "created_at_ms": unix_millis(created.created_at),
            "expires_at": rfc3339_millis(created.expires_at),
            "expires_at_ms": unix_millis(created.expires_at),
        })),
    ))
}

/// `GET /contact-sessions/current`: validate only, never renews.
async fn current_contact_session(session: Session) -> Result<Json<Value>, ApiError> {
    let visitor: Visitor = session
        .payload_as()
        .map_err(|error| ApiError::internal(format!("unreadable session payload: {error}")))?;
    Ok(Json(json!({
        "organization_id": session.organization_id(),
        "name": visitor.name,
        "email": visitor.email,
        "created_at": rfc3339_millis(session.created_at()),
        "created_at_ms": unix_millis(session.created_at()),
        "expires_at": rfc3339_millis(session.expires_at()),
        "expires_at_ms": unix_millis(session.expires_at()),
    })))
}

/// `POST /conversations`: renews; the body is ignored.
async fn create_conversation(
    State(state): State<AppState>,
    session: Session,
) -> Result<impl IntoResponse, ApiError> {
    let now = state.now();
    let conversation_id = new_id("conv")?;
    let greeting = Message {
        id: new_id("msg")?,
        role: Role::Assistant,
        content: DEFAULT_GREETING.to_owned(),
        created_at: now,
    };
    let conversation = Conversation {
        session_id: session.id(),
        status: Status::Unresolved,
        created_at: now,
        messages: vec![greeting],
    };
    let body = json!({
        "conversation_id": conversation_id,
        "status": conversation.status,
        "created_at": rfc3339_millis(conversation.created_at),
        "created_at_ms": unix_millis(conversation.created_at),
    });
    state.conversations().insert(conversation_id, conversation);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /conversations/{id}/messages`: validate only; oldest first.
async fn list_messages(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut conversations = state.conversations();
    let conversation = Conversation::of_session(&mut conversations, &id, &session)?;
    let messages: Vec<Value> = conversation.messages.iter().map(Message::to_json).collect();
    Ok(Json(json!({
        "conversation_id": id,
        "status": conversation.status,
        "messages": messages,
    })))
}

#[derive(Deserialize)]
struct NewMessage {
    content: String,
}

/// `POST /conversations/{id}/messages`: renews. The body is checked before
/// the id, so an invalid body on an unknown conversation is a 400.
async fn send_message(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<NewMessage>,
) -> Result<impl IntoResponse, ApiError> {
    required_text("content", &body.content, MAX_CONTENT_CHARS)?;
    let message_id = new_id("msg")?;
    let now = state.now();

    let mut conversations = state.conversations();
    let conversation = Conversation::of_session(&mut conversations, &id, &session)?;
    conversation.messages.push(Message {
        id: message_id.clone(),
        role: Role::User,
        content: body.content,
        created_at: now,
    });
    // AI replies (and escalation when there is none) arrive with billing.
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "message_id": message_id,
            "ai_replied": false,
            "status": conversation.status,
        })),
    ))
}

async fn route_not_found() -> ApiError {
    ApiError::not_found("No route matches this path.".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        title: "Method not allowed",
        detail: "This route does not accept this method; see the Allow header.".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Request checks
// ---------------------------------------------------------------------------

/// `value` trimmed; 400 when that is empty, or when `value` as sent is
/// longer than `max_chars` characters.
fn required_text(field: &str, value: &str, max_chars: usize) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ApiError::invalid_request(format!(
            "`{field}` must not be empty."
        )));
    }
    if value.chars().count() > max_chars {
        return Err(ApiError::invalid_request(format!(
            "`{field}` must be at most {max_chars} characters."
        )));
    }
    Ok(trimmed.to_owned())
}

/// `value` trimmed; 400 unless it has exactly one `@` with text on both sides.
fn email_address(value: &str) -> Result<String, ApiError> {
    let email = required_text("email", value, MAX_EMAIL_CHARS)?;
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(email)
        }
        _ => Err(ApiError::invalid_request(
            "`email` must have one `@` with text on both sides.".to_owned(),
        )),
    }
}

/// `Json<T>`, except that every way a body can be wrong (not JSON, wrong
/// `content-type`, a missing or mistyped field) is a 400 `invalid_request`
/// problem. Unknown fields are ignored, as serde does by default.
struct ValidJson<T>(T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::invalid_request(describe(&rejection))),
        }
    }
}

fn describe(rejection: &JsonRejection) -> String {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "The body must be JSON, sent with `content-type: application/json`.".to_owned()
        }
        other => other.body_text(),
    }
}

/// A fresh opaque id such as `conv_5pZt0y2a9QeVb1xW` (96 random bits).
fn new_id(prefix: &str) -> Result<String, ApiError> {
    let random = SessionToken::generate()
        .map_err(|error| ApiError::internal(format!("no randomness for an id: {error}")))?;
    Ok(format!("{prefix}_{}", &random.to_string()[..16]))
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// An error answer: RFC 9457 problem+json with a `code`, like the library's
/// own rejections.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
}

impl ApiError {
    fn invalid_request(detail: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            title: "Invalid request",
            detail,
        }
    }

    fn not_found(detail: String) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            title: "Not found",
            detail,
        }
    }

    fn store_unavailable(error: StoreError) -> Self {
        eprintln!("widget_server: session store failed: {error}");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "store_unavailable",
            title: "Store unavailable",
            detail: "The session store is unavailable; retry later.".to_owned(),
        }
    }

    fn internal(detail: String) -> Self {
        eprintln!("widget_server: internal error: {detail}");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error",
            title: "Internal server error",
            detail: "The server failed to answer this request.".to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            problem_json(self.status, self.code, self.title, &self.detail).map(Body::from);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(ParsedArgs::Run(config)) => config,
        Ok(ParsedArgs::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => return usage_error(&message),
    };
    let app = match build_app(&config, SystemClock) {
        Ok(app) => app,
        Err(message) => return usage_error(&message),
    };

    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("widget_server: cannot listen on {}: {error}", config.addr);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("widget_server: cannot read the bound address: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on http://{addr}");
    // Whoever started us waits for this line: do not leave it in a buffer.
    let _ = std::io::stdout().flush();

    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("widget_server: server failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Invalid flags: a message on stderr and exit status 2.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("widget_server: {message}");
    eprintln!("Run `widget_server --help` for the flags.");
    ExitCode::from(2)
}
