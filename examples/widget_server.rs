//! The reference server: the support-widget backend tower-saas-guard was
//! extracted from, in axum, built only on the library's public API.
//!
//! **Visitors** (the widget) open a contact session (name, e-mail,
//! organization), get a token back, and send it in the `x-session-id`
//! header to start conversations and send messages. Sessions are sliding:
//! creating a conversation and sending a message renew the session when it
//! is close to expiring; reading never does.
//!
//! **Operators** (the dashboard) act for the organization named in the
//! `x-organization-id` header. That header **stands in for the
//! application's own authentication**: a real dashboard would take the
//! organization from its login (for example with `FromExtension` after its
//! auth middleware), never from a header the client chooses. Operators
//! list and answer their organization's conversations (all visitors'),
//! polish drafts, manage files and set the widget's greeting.
//!
//! **Billing** posts signed webhooks to `POST /billing/webhook` (enabled by
//! `--webhook-secret`; without it the route answers 503
//! `webhook_not_configured`). The signature is checked on the raw body
//! before it is parsed; a valid webhook upserts the subscription, keyed by
//! organization and subscription id, and takes effect on the very next
//! request. (A command line is visible to other users of the machine: a
//! real deployment would read the secret from its environment.)
//!
//! # What a subscription buys
//!
//! One `Entitlements` cache over one subscription store decides for every
//! route, with the default [`EntitlementPolicy`]: an organization is
//! entitled while it holds an `active` or `trialing` subscription whose
//! current period (when given) has not ended; every plan counts the same.
//!
//! | feature | without a subscription |
//! |---|---|
//! | AI reply to a visitor message (soft) | the message is saved and the conversation is `escalated` |
//! | `POST /operator/conversations/{id}/enhance` (required) | 403 `subscription_required` |
//! | `POST /operator/files` (required) | 403 `subscription_required` |
//! | creating widget settings (required to create only) | 403 `subscription_required`; updating existing settings is always allowed |
//!
//! Everything else (reading, replying, listing and deleting files) is open
//! to every organization. The AI reply and the draft enhancement are
//! deterministic stand-ins (`stand_in_ai_reply`, `stand_in_enhance`):
//! no model, no network. Subscriptions, like everything else in this build,
//! live in memory (`--store memory`).
//!
//! ```text
//! cargo run --example widget_server --features axum
//! cargo run --example widget_server --features axum -- --session-duration 10s --refresh-threshold 5s
//! cargo run --example widget_server --features axum -- --webhook-secret whsec_demo
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
//!
//! Upgrade `org_1` with a signed webhook (`t=<unix seconds>,v1=<hex
//! HMAC-SHA256(secret, "<t>.<raw body>")>`), then look:
//!
//! ```text
//! body='{"organization_id":"org_1","subscription_id":"sub_1","status":"active","plan":"pro"}'
//! t=$(date +%s)
//! v1=$(printf '%s.%s' "$t" "$body" | openssl dgst -sha256 -hmac whsec_demo -hex | sed 's/^.* //')
//! curl -si localhost:3000/billing/webhook -H "webhook-signature: t=$t,v1=$v1" -d "$body"
//! curl -si localhost:3000/operator/subscription -H 'x-organization-id: org_1'
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower_saas_guard::billing::{BillingWebhook, WebhookError, WebhookVerifier, WEBHOOK_SIGNATURE};
use tower_saas_guard::rejection::DefaultResponder;
use tower_saas_guard::session::{
    MemorySessionStore, Session, SessionHandle, SessionId, SessionRefreshLayer, SessionToken,
};
use tower_saas_guard::subscription::{
    Entitlement, EntitlementLayer, EntitlementPolicy, EntitlementReason, Entitlements, FromHeader,
    MemorySubscriptionStore, OrganizationResolver, RequireSubscriptionLayer,
};
use tower_saas_guard::{
    problem_json, rfc3339_millis, unix_millis, Clock, ErrorCode, Rejection, RejectionResponder,
    RequestHead, SystemClock,
};

// ---------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------

const USAGE: &str = "\
Usage: widget_server [FLAGS]

The tower-saas-guard reference server (support-widget backend).

Flags (`--flag value` or `--flag=value`):
  --addr ADDR                  address to listen on [default: 127.0.0.1:3000]
                               (127.0.0.1:0 picks a free port)
  --session-duration DURATION  lifetime of a session at creation and at each
                               renewal [default: 24h]
  --refresh-threshold DURATION renew only when less than this is left
                               [default: 4h]
  --absolute-lifetime DURATION|off
                               hard cap on a session's life [default: 30d]
  --store URL                  conversation and subscription store
                               [default: memory]
                               (only `memory` is available in this build)
  --session-store URL          session store [default: same as --store]
                               (only `memory` is available in this build)
  --webhook-secret SECRET      the secret billing webhooks are signed with;
                               without it POST /billing/webhook answers 503
                               webhook_not_configured
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
    /// The secret billing webhooks are signed with; `None` disables
    /// `POST /billing/webhook` (503 `webhook_not_configured`).
    pub webhook_secret: Option<WebhookSecret>,
}

/// The secret a billing webhook's signature is keyed with. `Debug` never
/// prints it, so a logged `Config` leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// The secret, for keying the verifier (and for tests signing webhooks).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
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
            webhook_secret: None,
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
            "--webhook-secret" => {
                let secret = value()?;
                if secret.trim().is_empty() {
                    return Err("--webhook-secret must not be empty".to_owned());
                }
                config.webhook_secret = Some(WebhookSecret(secret));
            }
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

/// The greeting a new conversation starts with while its organization has
/// not set one (`PUT /operator/widget-settings`).
const DEFAULT_GREETING: &str = "Hi! How can we help you today?";

/// The header operators name their organization in: a stand-in for the
/// application's own authentication (see the top of this file).
const ORGANIZATION_HEADER: HeaderName = HeaderName::from_static("x-organization-id");

/// Field limits, in characters.
const MAX_ID_CHARS: usize = 128;
const MAX_NAME_CHARS: usize = 200;
const MAX_EMAIL_CHARS: usize = 320;
/// For `content`, `draft` and `greeting`.
const MAX_CONTENT_CHARS: usize = 10_000;
/// An uploaded file's `content`, in bytes of UTF-8 (1 MiB).
const MAX_FILE_BYTES: usize = 1024 * 1024;
/// The body of an upload may be larger than its content: JSON escapes a
/// control character in six bytes. Anything past this is a 400.
const MAX_FILE_BODY_BYTES: usize = 6 * MAX_FILE_BYTES + 64 * 1024;

/// Builds the router: checks the session settings (through the library's
/// builder) and the stores, and wires every route to its session and
/// subscription layers.
///
/// `clock` is the time the sessions, the subscription decisions, the
/// webhook's signature check and the timestamps of conversations, messages
/// and files all read (tests pass a `ManualClock`).
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

    // Subscriptions: one cache over one store, on the same clock, shared by
    // every subscription layer and by the billing webhook, so a webhook's
    // change is what the very next request of any route sees.
    let entitlements = Entitlements::builder(MemorySubscriptionStore::new())
        .clock(Arc::clone(&clock))
        .build()
        .map_err(|error| format!("invalid subscription settings: {error}"))?;
    let policy = EntitlementPolicy::new();
    let billing = match &config.webhook_secret {
        Some(secret) => {
            let verifier = WebhookVerifier::try_new(secret.expose())
                .map_err(|error| format!("invalid --webhook-secret: {error}"))?;
            Some(BillingWebhook::new(verifier, entitlements.clone()))
        }
        None => None,
    };

    // The visitor's organization is its session's (`FromSession`, the
    // default): the soft layer sits inside the session layer.
    let visitor_entitlement = EntitlementLayer::new(entitlements.clone(), policy.clone());
    // The operator's organization is the `x-organization-id` header. Every
    // operator route resolves it through a subscription layer, so a missing
    // header is the library's `organization_missing` everywhere: the soft
    // layer on routes any organization may use, the rejecting one on the
    // routes only subscribers may use.
    let operator = EntitlementLayer::new(entitlements.clone(), policy.clone())
        .organization(OperatorOrganization::new())
        .responder(operator_rejection);
    let subscribers_only = RequireSubscriptionLayer::new(entitlements.clone(), policy.clone())
        .organization(OperatorOrganization::new())
        .responder(operator_rejection);

    let state = AppState {
        sessions: sessions.handle(),
        clock,
        entitlements,
        policy,
        billing,
        records: Arc::default(),
    };

    Ok(Router::new()
        // Visitor (widget) side.
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
            // The last `route_layer` is the outermost: session, then the
            // entitlement, then the handler.
            post(send_message)
                .route_layer(visitor_entitlement)
                .route_layer(renewing),
        )
        // Operator (dashboard) side.
        .route(
            "/operator/subscription",
            get(operator_subscription).route_layer(operator.clone()),
        )
        .route(
            "/operator/conversations",
            get(operator_conversations).route_layer(operator.clone()),
        )
        .route(
            "/operator/conversations/{id}/messages",
            post(operator_reply).route_layer(operator.clone()),
        )
        .route(
            "/operator/conversations/{id}/enhance",
            post(enhance_draft).route_layer(subscribers_only.clone()),
        )
        .route(
            "/operator/files",
            get(list_files).route_layer(operator.clone()),
        )
        .route(
            "/operator/files",
            post(upload_file)
                .route_layer(DefaultBodyLimit::max(MAX_FILE_BODY_BYTES))
                .route_layer(subscribers_only),
        )
        .route(
            "/operator/files/{id}",
            delete(delete_file).route_layer(operator.clone()),
        )
        .route(
            "/operator/widget-settings",
            put(put_widget_settings).route_layer(operator),
        )
        // Billing: no session, no organization; the signature is the check.
        .route("/billing/webhook", post(billing_webhook))
        .fallback(route_not_found)
        // After the routes: it applies to the routes registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state))
}

/// The organization an operator acts for: the `x-organization-id` header
/// (trimmed; empty or not UTF-8 counts as missing, as with the library's
/// `FromHeader`), refused as missing when it is longer than an id may be.
///
/// The header stands in for the application's own authentication.
#[derive(Debug, Clone)]
struct OperatorOrganization(FromHeader);

impl OperatorOrganization {
    fn new() -> Self {
        Self(FromHeader::new(ORGANIZATION_HEADER))
    }
}

impl OrganizationResolver for OperatorOrganization {
    fn organization<'a>(&self, head: &RequestHead<'a>) -> Option<Cow<'a, str>> {
        self.0
            .organization(head)
            .filter(|id| id.chars().count() <= MAX_ID_CHARS)
    }
}

/// The library's rejections for operator routes, with a hint about the
/// header on `organization_missing`.
fn operator_rejection(
    rejection: &Rejection,
    head: &RequestHead<'_>,
) -> axum::http::Response<Bytes> {
    let rejection = match rejection.code() {
        ErrorCode::OrganizationMissing => rejection.clone().with_detail(
            "Operator routes need the organization in the `x-organization-id` header \
             (at most 128 characters).",
        ),
        _ => rejection.clone(),
    };
    DefaultResponder::new().respond(&rejection, head)
}

#[derive(Clone)]
struct AppState {
    /// Creates sessions; shares the layers' store, cache and clock.
    sessions: SessionHandle,
    clock: Arc<dyn Clock>,
    /// The subscription cache every subscription layer reads.
    entitlements: Entitlements,
    /// The policy every subscription layer decides with.
    policy: EntitlementPolicy,
    /// `None` without `--webhook-secret`.
    billing: Option<BillingWebhook>,
    records: Arc<Mutex<Records>>,
}

impl AppState {
    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        self.records
            .lock()
            .expect("no handler panics while holding the records lock")
    }
}

/// Everything the server keeps besides sessions and subscriptions.
#[derive(Default)]
struct Records {
    conversations: HashMap<String, Conversation>,
    files: HashMap<String, StoredFile>,
    /// Each organization's widget greeting, once an operator created it.
    greetings: HashMap<String, String>,
    /// Numbers conversations and files in creation order, for listings.
    next_sequence: u64,
}

impl Records {
    fn next_sequence(&mut self) -> u64 {
        self.next_sequence += 1;
        self.next_sequence
    }
}

/// The entries of `organization_id` (conversations, files), oldest first,
/// rendered by `to_json`; `owner` tells an entry's organization and
/// sequence number.
fn oldest_first<T>(
    entries: &HashMap<String, T>,
    organization_id: &str,
    owner: impl Fn(&T) -> (&String, u64),
    to_json: impl Fn(&T, &str) -> Value,
) -> Vec<Value> {
    let mut owned: Vec<(u64, &String, &T)> = entries
        .iter()
        .filter_map(|(id, entry)| {
            let (organization, sequence) = owner(entry);
            (organization == organization_id).then_some((sequence, id, entry))
        })
        .collect();
    owned.sort_by_key(|(sequence, _, _)| *sequence);
    owned
        .into_iter()
        .map(|(_, id, entry)| to_json(entry, id))
        .collect()
}

/// What a session's payload holds: who the visitor is.
#[derive(Debug, Serialize, Deserialize)]
struct Visitor {
    name: String,
    email: String,
}

struct Conversation {
    /// The session that started it: the only one of the visitors that may
    /// see it.
    session_id: SessionId,
    /// Its session's organization: the operators that may see it.
    organization_id: String,
    sequence: u64,
    status: Status,
    created_at: SystemTime,
    messages: Vec<Message>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    /// Every conversation starts here; the AI replies only while it is.
    Unresolved,
    /// A visitor message got no AI reply: an operator has to answer.
    Escalated,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Role {
    /// The visitor.
    User,
    /// The greeting and AI replies.
    Assistant,
    /// A person on the dashboard.
    Operator,
}

struct Message {
    id: String,
    role: Role,
    content: String,
    created_at: SystemTime,
}

impl Message {
    fn new(role: Role, content: String, created_at: SystemTime) -> Result<Self, ApiError> {
        Ok(Self {
            id: new_id("msg")?,
            role,
            content,
            created_at,
        })
    }

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

    /// The conversation `id`, if it exists and belongs to `organization_id`;
    /// anything else is the same 404.
    fn of_organization<'a>(
        conversations: &'a mut HashMap<String, Conversation>,
        id: &str,
        organization_id: &str,
    ) -> Result<&'a mut Conversation, ApiError> {
        conversations
            .get_mut(id)
            .filter(|conversation| conversation.organization_id == organization_id)
            .ok_or_else(|| ApiError::not_found(format!("No conversation `{id}`.")))
    }

    fn summary_json(&self, id: &str) -> Value {
        json!({
            "conversation_id": id,
            "status": self.status,
            "created_at": rfc3339_millis(self.created_at),
            "created_at_ms": unix_millis(self.created_at),
        })
    }
}

/// An uploaded file (in a real server, the AI's knowledge base).
struct StoredFile {
    organization_id: String,
    sequence: u64,
    name: String,
    content: String,
    created_at: SystemTime,
}

impl StoredFile {
    fn to_json(&self, id: &str) -> Value {
        json!({
            "file_id": id,
            "name": self.name,
            "size_bytes": self.content.len(),
            "created_at": rfc3339_millis(self.created_at),
            "created_at_ms": unix_millis(self.created_at),
        })
    }
}

// ---------------------------------------------------------------------------
// Stand-ins for the AI
// ---------------------------------------------------------------------------

/// A deterministic **stand-in** for the AI's answer to a visitor's message:
/// no model, no network. The product called a language model here.
fn stand_in_ai_reply(visitor_message: &str) -> String {
    let words = visitor_message.split_whitespace().count();
    format!(
        "Thanks for your message ({words} word{}). This is the example's stand-in \
         for an AI reply; an operator can step in at any time.",
        if words == 1 { "" } else { "s" }
    )
}

/// A deterministic **stand-in** for the AI's polish of an operator's draft:
/// runs of whitespace become one space, the first letter is capitalised and
/// the text ends with punctuation. No model, no network.
fn stand_in_enhance(draft: &str) -> String {
    let mut enhanced = draft.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(first) = enhanced.chars().next() {
        let upper: String = first.to_uppercase().collect();
        enhanced.replace_range(..first.len_utf8(), &upper);
    }
    if !enhanced.ends_with(['.', '!', '?']) {
        enhanced.push('.');
    }
    enhanced
}

// ---------------------------------------------------------------------------
// Visitor handlers
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
        .map_err(|error| ApiError::store_unavailable("session", &error))?;

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

/// The organization of a contact session (every one has one).
fn session_organization(session: &Session) -> Result<&str, ApiError> {
    session
        .organization_id()
        .ok_or_else(|| ApiError::internal("a contact session without an organization".to_owned()))
}

/// `POST /conversations`: renews; the body is ignored. Opens with the
/// organization's greeting, or the default one.
async fn create_conversation(
    State(state): State<AppState>,
    session: Session,
) -> Result<impl IntoResponse, ApiError> {
    let organization_id = session_organization(&session)?;
    let now = state.now();
    let conversation_id = new_id("conv")?;

    let mut records = state.records();
    let greeting = records
        .greetings
        .get(organization_id)
        .map_or(DEFAULT_GREETING, String::as_str)
        .to_owned();
    let conversation = Conversation {
        session_id: session.id(),
        organization_id: organization_id.to_owned(),
        sequence: records.next_sequence(),
        status: Status::Unresolved,
        created_at: now,
        messages: vec![Message::new(Role::Assistant, greeting, now)?],
    };
    let body = conversation.summary_json(&conversation_id);
    records.conversations.insert(conversation_id, conversation);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /conversations/{id}/messages`: validate only; oldest first.
async fn list_messages(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut records = state.records();
    let conversation = Conversation::of_session(&mut records.conversations, &id, &session)?;
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

/// `POST /conversations/{id}/messages`: renews; soft-gated. When the
/// organization is entitled and the conversation is `unresolved`, the AI
/// (stand-in) answers at once; otherwise the message waits for an operator
/// and the conversation becomes `escalated`.
///
/// The body is checked before the id, so an invalid body on an unknown
/// conversation is a 400.
async fn send_message(
    State(state): State<AppState>,
    session: Session,
    entitlement: Entitlement,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<NewMessage>,
) -> Result<impl IntoResponse, ApiError> {
    required_text("content", &body.content, MAX_CONTENT_CHARS)?;
    let now = state.now();

    let mut records = state.records();
    let conversation = Conversation::of_session(&mut records.conversations, &id, &session)?;
    let ai_replies = entitlement.is_entitled() && conversation.status == Status::Unresolved;
    let reply = ai_replies.then(|| stand_in_ai_reply(&body.content));
    let message = Message::new(Role::User, body.content, now)?;
    let message_id = message.id.clone();
    conversation.messages.push(message);
    match reply {
        Some(reply) => conversation
            .messages
            .push(Message::new(Role::Assistant, reply, now)?),
        None => conversation.status = Status::Escalated,
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "message_id": message_id,
            "ai_replied": ai_replies,
            "status": conversation.status,
        })),
    ))
}

// ---------------------------------------------------------------------------
// Operator handlers
//
// Each gets the organization from the `Entitlement` its subscription layer
// attached (`Entitlement::organization_id`).
// ---------------------------------------------------------------------------

/// `GET /operator/subscription` (soft): the decision, with the deciding
/// subscription's plan and status (`null`s when there is none).
async fn operator_subscription(entitlement: Entitlement) -> Result<Json<Value>, ApiError> {
    refuse_if_store_failed(&entitlement)?;
    Ok(Json(json!({
        "entitled": entitlement.is_entitled(),
        "plan": entitlement.plan(),
        "status": entitlement.status(),
    })))
}

/// `GET /operator/conversations`: the organization's conversations (every
/// visitor's), oldest first.
async fn operator_conversations(
    State(state): State<AppState>,
    entitlement: Entitlement,
) -> Json<Value> {
    let records = state.records();
    let conversations = oldest_first(
        &records.conversations,
        entitlement.organization_id(),
        |conversation| (&conversation.organization_id, conversation.sequence),
        Conversation::summary_json,
    );
    Json(json!({ "conversations": conversations }))
}

/// `POST /operator/conversations/{id}/messages`: an operator's reply; the
/// conversation's status stays as it is.
async fn operator_reply(
    State(state): State<AppState>,
    entitlement: Entitlement,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<NewMessage>,
) -> Result<impl IntoResponse, ApiError> {
    required_text("content", &body.content, MAX_CONTENT_CHARS)?;
    let now = state.now();

    let mut records = state.records();
    let conversation = Conversation::of_organization(
        &mut records.conversations,
        &id,
        entitlement.organization_id(),
    )?;
    let message = Message::new(Role::Operator, body.content, now)?;
    let message_id = message.id.clone();
    conversation.messages.push(message);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "message_id": message_id,
            "status": conversation.status,
        })),
    ))
}

#[derive(Deserialize)]
struct Draft {
    draft: String,
}

/// `POST /operator/conversations/{id}/enhance` (subscribers only): the
/// draft, polished by the stand-in. Nothing is saved.
async fn enhance_draft(
    State(state): State<AppState>,
    entitlement: Entitlement,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<Draft>,
) -> Result<Json<Value>, ApiError> {
    required_text("draft", &body.draft, MAX_CONTENT_CHARS)?;
    Conversation::of_organization(
        &mut state.records().conversations,
        &id,
        entitlement.organization_id(),
    )?;
    Ok(Json(json!({ "enhanced": stand_in_enhance(&body.draft) })))
}

#[derive(Deserialize)]
struct NewFile {
    name: String,
    content: String,
}

/// `POST /operator/files` (subscribers only).
async fn upload_file(
    State(state): State<AppState>,
    entitlement: Entitlement,
    ValidJson(body): ValidJson<NewFile>,
) -> Result<impl IntoResponse, ApiError> {
    let name = required_text("name", &body.name, MAX_NAME_CHARS)?;
    if body.content.trim().is_empty() {
        return Err(ApiError::invalid_request(
            "`content` must not be empty.".to_owned(),
        ));
    }
    if body.content.len() > MAX_FILE_BYTES {
        return Err(ApiError::invalid_request(format!(
            "`content` must be at most 1 MiB ({MAX_FILE_BYTES} bytes of UTF-8)."
        )));
    }
    let file_id = new_id("file")?;

    let mut records = state.records();
    let file = StoredFile {
        organization_id: entitlement.organization_id().to_owned(),
        sequence: records.next_sequence(),
        name,
        content: body.content,
        created_at: state.now(),
    };
    let body = file.to_json(&file_id);
    records.files.insert(file_id, file);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /operator/files`: the organization's files, oldest first.
async fn list_files(State(state): State<AppState>, entitlement: Entitlement) -> Json<Value> {
    let records = state.records();
    let files = oldest_first(
        &records.files,
        entitlement.organization_id(),
        |file| (&file.organization_id, file.sequence),
        StoredFile::to_json,
    );
    Json(json!({ "files": files }))
}

/// `DELETE /operator/files/{id}`: open to every organization, so a
/// downgraded one can still clean up.
async fn delete_file(
    State(state): State<AppState>,
    entitlement: Entitlement,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut records = state.records();
    let owned = records
        .files
        .get(&id)
        .is_some_and(|file| file.organization_id == entitlement.organization_id());
    if !owned {
        return Err(ApiError::not_found(format!("No file `{id}`.")));
    }
    records.files.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct WidgetSettings {
    greeting: String,
}

/// `PUT /operator/widget-settings` (soft): creating the settings needs a
/// subscription, updating them never does. The subscription check comes
/// before the body's, as a layer's would.
async fn put_widget_settings(
    State(state): State<AppState>,
    entitlement: Entitlement,
    body: Result<ValidJson<WidgetSettings>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let organization_id = entitlement.organization_id();
    let mut records = state.records();
    let created = !records.greetings.contains_key(organization_id);
    if created && !entitlement.is_entitled() {
        refuse_if_store_failed(&entitlement)?;
        return Err(ApiError::subscription_required(
            "Creating widget settings requires an active subscription; \
             existing settings can always be updated."
                .to_owned(),
        ));
    }
    let ValidJson(body) = body?;
    let greeting = required_text("greeting", &body.greeting, MAX_CONTENT_CHARS)?;
    records
        .greetings
        .insert(organization_id.to_owned(), greeting.clone());
    Ok(Json(json!({ "greeting": greeting, "created": created })))
}

/// A soft layer that could not read the store decides "not entitled"
/// (reason `store_unavailable`); where that would be a wrong answer rather
/// than a degraded one, say 503 instead.
fn refuse_if_store_failed(entitlement: &Entitlement) -> Result<(), ApiError> {
    if entitlement.reason() == EntitlementReason::StoreUnavailable {
        return Err(ApiError::store_unavailable(
            "subscription",
            &"no answer from the subscription store",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Billing
// ---------------------------------------------------------------------------

/// `POST /billing/webhook`: verifies the `webhook-signature` over the raw
/// body (before anything parses it), upserts the subscription and
/// invalidates the organization's cached entitlement, then answers with the
/// organization's decision as the next request will see it.
async fn billing_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Some(billing) = &state.billing else {
        return Err(ApiError::webhook_not_configured());
    };
    let body = body.map_err(|rejection| ApiError::invalid_request(rejection.body_text()))?;
    let applied = billing
        .handle(headers.get(WEBHOOK_SIGNATURE), &body)
        .await
        .map_err(ApiError::webhook)?;
    let entitlement = state
        .entitlements
        .entitlement(&applied.organization_id, &state.policy)
        .await
        .map_err(|error| ApiError::store_unavailable("subscription", &error))?;
    Ok(Json(json!({
        "organization_id": applied.organization_id,
        "entitled": entitlement.is_entitled(),
    })))
}

// ---------------------------------------------------------------------------
// Fallbacks
// ---------------------------------------------------------------------------

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

    /// The same answer as the library's `subscription_required`, for a
    /// decision a handler makes itself.
    fn subscription_required(detail: String) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: ErrorCode::SubscriptionRequired.as_str(),
            title: ErrorCode::SubscriptionRequired.title(),
            detail,
        }
    }

    /// `which` store (`session`, `subscription`) failed with `error`.
    fn store_unavailable(which: &'static str, error: &dyn fmt::Display) -> Self {
        eprintln!("widget_server: {which} store failed: {error}");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::StoreUnavailable.as_str(),
            title: ErrorCode::StoreUnavailable.title(),
            detail: format!("The {which} store is unavailable; retry later."),
        }
    }

    fn webhook_not_configured() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "webhook_not_configured",
            title: "Webhook not configured",
            detail: "This server has no webhook secret (--webhook-secret), so it cannot \
                     verify billing webhooks."
                .to_owned(),
        }
    }

    /// A refused webhook, with the library's code and status (nothing was
    /// applied).
    fn webhook(error: WebhookError) -> Self {
        if matches!(error, WebhookError::Store(_)) {
            return Self::store_unavailable("subscription", &error);
        }
        eprintln!("widget_server: billing webhook refused: {error}");
        let title = match error.code() {
            "invalid_signature" => "Invalid signature",
            "invalid_request" => "Invalid request",
            _ => "Webhook refused",
        };
        Self {
            status: error.status(),
            code: error.code(),
            title,
            detail: error.to_string(),
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
        // Worth retrying soon; a missing webhook secret is not.
        if self.code == ErrorCode::StoreUnavailable.as_str() {
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
