//! The command line: flags, their defaults and `--help`.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use axum::http::HeaderValue;
use std::time::Duration;

pub const USAGE: &str = "\
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
  --store URL                  where conversations, messages, files, widget
                               settings and subscriptions live
                               [default: sqlite://widget.db]
                               memory | sqlite://PATH (the file is created)
                               | postgres://USER@HOST:PORT/DATABASE
  --session-store URL          where sessions live [default: same as --store]
                               memory | sqlite://PATH | postgres://… | redis://…
  --redis-prefix PREFIX        with --session-store redis://…: the prefix of
                               the sessions' keys and of the pub/sub channel
                               (PREFIX + \"invalidation\"); instances sharing
                               sessions use the same one [default: tsg:]
  --webhook-secret SECRET      the secret billing webhooks are signed with;
                               without it POST /billing/webhook answers 503
                               webhook_not_configured
  --stripe-webhook-secret SECRET
                               a Stripe endpoint's signing secret (whsec_…);
                               repeat it while rotating. Without any,
                               POST /billing/stripe answers 503
                               webhook_not_configured
  --cors-origin ORIGIN         an origin allowed to call the visitor routes
                               from a browser (repeat for several; `*` for
                               any) [default: *]
  --rate-burst N               requests a client may make at once before the
                               rate limits apply: new sessions per client
                               address, writes per session and per
                               organization; beyond it 429 rate_limited
                               [default: 100]
  --rate-per-second N          how fast that allowance refills [default: 10]
  --max-conversations-per-session N
                               conversations one session may start; beyond
                               it 409 limit_reached [default: 100]
  --max-messages-per-conversation N
                               messages one conversation may hold (greeting
                               and replies included) [default: 1000]
  --max-files-per-organization N
                               files one organization may keep [default: 1000]
  --max-connections N          connections served at once; more are closed
                               when accepted [default: 1024]
  --header-timeout DURATION    how long a request's headers may take to
                               arrive (slow clients are cut off) [default: 10s]
  --idle-timeout DURATION      how long a connection may stay open with no
                               request in progress [default: 60s] (a new
                               connection's first request must start within
                               --header-timeout)
  --request-timeout DURATION   how long a request may take, body included;
                               beyond it 408 request_timeout [default: 30s]
  -h, --help                   print this help and exit

Durations use humantime syntax: 500ms, 10s, 4h, 30d.

Expired sessions keep answering `session_expired` for 24h after they
expire; a background task purges older ones every 10 minutes (and
billing event ids applied more than 30 days ago).

Routes (JSON bodies; errors are problem+json with a `code`):
  visitor, token in x-session-id (CORS):
    POST   /contact-sessions {name, email, organization_id} -> 201 token
    GET    /contact-sessions/current             DELETE (logout) -> 204
    POST   /conversations                        GET/POST /conversations/ID/messages
  operator, organization in x-organization-id:
    GET    /operator/subscription | /operator/conversations | /operator/files
    POST   /operator/conversations/ID/messages | /operator/conversations/ID/enhance
    POST   /operator/files   DELETE /operator/files/ID   PUT /operator/widget-settings
    GET    /operator/contact-sessions   DELETE /operator/contact-sessions[/REF]
  billing: POST /billing/webhook (webhook-signature), POST /billing/stripe
The README lists every body and answer.

gRPC is served on the same address (HTTP/2 without TLS, prior knowledge):
support.v1.Support (examples/proto/support.proto; the session token in
x-session-id metadata, the operator's organization in x-organization-id)
and grpc.health.v1.Health, which needs no session.

Several instances share sessions and subscriptions through PostgreSQL
(and Redis for sessions); a logout, a revocation or a billing change on one
reaches the others' caches within a second over PostgreSQL LISTEN/NOTIFY,
or Redis pub/sub when sessions are in Redis.
";

/// The database `--store` names when none is given.
pub const DEFAULT_STORE: &str = "sqlite://widget.db";

/// The prefix of Redis keys and of the pub/sub channel when
/// `--redis-prefix` is not given (the library's default key prefix).
pub const DEFAULT_REDIS_PREFIX: &str = "tsg:";

/// Where records live, as named by `--store` / `--session-store`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// In this process's memory; lost on exit.
    Memory,
    /// `sqlite://PATH` (or `sqlite:PATH`); the file is created if missing.
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
    /// `redis://…` or `rediss://…`, sessions only.
    Redis(String),
}

impl StoreUrl {
    /// Parses `text` as given to `flag`; the URL's syntax is checked here,
    /// so a typo exits with status 2 before anything connects or listens.
    pub(crate) fn parse(flag: &str, text: &str) -> Result<Self, String> {
        let invalid = |error: &dyn fmt::Display| format!("{flag}: `{text}` is not usable: {error}");
        let store =
            if text == "memory" {
                Self::Memory
            } else if text.starts_with("sqlite:") {
                let path = text
                    .strip_prefix("sqlite://")
                    .or_else(|| text.strip_prefix("sqlite:"))
                    .unwrap_or_default();
                if path.is_empty() {
                    return Err(invalid(&"the path of the database file is missing"));
                }
                text.parse::<sqlx::sqlite::SqliteConnectOptions>()
                    .map_err(|error| invalid(&error))?;
                Self::Sqlite(text.to_owned())
            } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
                text.parse::<sqlx::postgres::PgConnectOptions>()
                    .map_err(|error| invalid(&error))?;
                Self::Postgres(text.to_owned())
            } else if text.starts_with("redis://") || text.starts_with("rediss://") {
                redis::Client::open(text).map_err(|error| invalid(&error))?;
                Self::Redis(text.to_owned())
            } else {
                return Err(format!(
                "{flag}: unknown store `{text}` (expected memory, sqlite://PATH, postgres://…{})",
                if flag == "--session-store" { " or redis://…" } else { "" }
            ));
            };
        if matches!(store, Self::Redis(_)) && flag == "--store" {
            return Err(format!(
                "--store: redis holds sessions only; use it with --session-store (got `{text}`)"
            ));
        }
        Ok(store)
    }

    /// The URL with any password replaced by `***`, for messages and logs.
    pub fn redacted(&self) -> String {
        match self {
            Self::Memory => "memory".to_owned(),
            Self::Sqlite(url) => url.clone(),
            Self::Postgres(url) | Self::Redis(url) => redact_password(url),
        }
    }
}

/// `scheme://user:secret@host…` → `scheme://user:***@host…`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Sqlite(_) => write!(f, "Sqlite({:?})", self.redacted()),
            Self::Postgres(_) => write!(f, "Postgres({:?})", self.redacted()),
            Self::Redis(_) => write!(f, "Redis({:?})", self.redacted()),
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
    /// Where conversations, messages, files, widget settings and
    /// subscriptions live.
    pub store: StoreUrl,
    /// Where sessions live; `None` means the same as `store`.
    pub session_store: Option<StoreUrl>,
    /// With sessions in Redis: the prefix of their keys and of the pub/sub
    /// channel's name, the same on every instance sharing them.
    pub redis_prefix: String,
    /// The secret billing webhooks are signed with; `None` disables
    /// `POST /billing/webhook` (503 `webhook_not_configured`).
    pub webhook_secret: Option<WebhookSecret>,
    /// The signing secrets of the Stripe endpoint (several while one is
    /// being rotated); empty disables `POST /billing/stripe` (503
    /// `webhook_not_configured`).
    pub stripe_webhook_secrets: Vec<WebhookSecret>,
    /// The origins allowed to call the visitor routes from a browser;
    /// empty allows any (`*`, the default).
    pub cors_origins: Vec<HeaderValue>,
    /// Requests a client may make at once before the rate limits apply
    /// (per client address for new sessions, per session and per
    /// organization for writes).
    pub rate_burst: NonZeroU32,
    /// How fast a client's allowance refills, per second.
    pub rate_per_second: NonZeroU32,
    /// Conversations one session may start (409 `limit_reached` beyond).
    pub max_conversations_per_session: NonZeroU32,
    /// Messages one conversation may hold, greeting and replies included.
    pub max_messages_per_conversation: NonZeroU32,
    /// Files one organization may keep.
    pub max_files_per_organization: NonZeroU32,
    /// Connections served at once; more are closed when accepted.
    pub max_connections: usize,
    /// How long a request's headers may take to arrive.
    pub header_timeout: Duration,
    /// How long a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    /// How long a request may take, body included (408 beyond).
    pub request_timeout: Duration,
}

/// A secret a billing webhook's signature is keyed with. `Debug` never
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

impl Config {
    /// Where sessions live: `--session-store`, or else `--store`.
    pub fn session_store(&self) -> &StoreUrl {
        self.session_store.as_ref().unwrap_or(&self.store)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            session_duration: Duration::from_secs(24 * 3600),
            refresh_threshold: Duration::from_secs(4 * 3600),
            absolute_lifetime: Some(Duration::from_secs(30 * 24 * 3600)),
            store: StoreUrl::Sqlite(DEFAULT_STORE.to_owned()),
            session_store: None,
            redis_prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            webhook_secret: None,
            stripe_webhook_secrets: Vec::new(),
            cors_origins: Vec::new(),
            rate_burst: NonZeroU32::new(100).expect("not zero"),
            rate_per_second: NonZeroU32::new(10).expect("not zero"),
            max_conversations_per_session: NonZeroU32::new(100).expect("not zero"),
            max_messages_per_conversation: NonZeroU32::new(1000).expect("not zero"),
            max_files_per_organization: NonZeroU32::new(1000).expect("not zero"),
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedArgs {
    /// `--help`: print the usage and exit.
    Help,
    /// Run the server with these settings.
    Run(Box<Config>),
}

/// Parses the command line (without the program name).
///
/// Only the syntax is checked here; whether the session settings fit
/// together is the library's call, made by [`build_app`].
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<ParsedArgs, String> {
    let mut config = Config::default();
    let mut any_origin = false;
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
            "--redis-prefix" => {
                let prefix = value()?;
                if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(format!(
                        "--redis-prefix: `{prefix}` must be non-empty, without spaces"
                    ));
                }
                config.redis_prefix = prefix;
            }
            "--webhook-secret" => {
                let secret = value()?;
                if secret.trim().is_empty() {
                    return Err("--webhook-secret must not be empty".to_owned());
                }
                config.webhook_secret = Some(WebhookSecret(secret));
            }
            "--stripe-webhook-secret" => {
                let secret = value()?;
                if secret.trim().is_empty() {
                    return Err("--stripe-webhook-secret must not be empty".to_owned());
                }
                config.stripe_webhook_secrets.push(WebhookSecret(secret));
            }
            "--rate-burst" => config.rate_burst = parse_positive(&flag, &value()?)?,
            "--max-connections" => {
                config.max_connections = parse_positive(&flag, &value()?)?.get() as usize;
            }
            "--header-timeout" => config.header_timeout = parse_timeout(&flag, &value()?)?,
            "--idle-timeout" => config.idle_timeout = parse_timeout(&flag, &value()?)?,
            "--request-timeout" => config.request_timeout = parse_timeout(&flag, &value()?)?,
            "--rate-per-second" => config.rate_per_second = parse_positive(&flag, &value()?)?,
            "--max-conversations-per-session" => {
                config.max_conversations_per_session = parse_positive(&flag, &value()?)?;
            }
            "--max-messages-per-conversation" => {
                config.max_messages_per_conversation = parse_positive(&flag, &value()?)?;
            }
            "--max-files-per-organization" => {
                config.max_files_per_organization = parse_positive(&flag, &value()?)?;
            }
            "--cors-origin" => {
                let origin = value()?;
                if origin == "*" {
                    any_origin = true;
                } else {
                    config.cors_origins.push(parse_origin(&origin)?);
                }
            }
            unknown if unknown.starts_with("--") => {
                return Err(format!("unknown flag `{unknown}`"))
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    if any_origin {
        config.cors_origins.clear();
    }
    Ok(ParsedArgs::Run(Box::new(config)))
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after.
fn parse_origin(text: &str) -> Result<HeaderValue, String> {
    let invalid = || {
        format!(
            "--cors-origin: `{text}` is not an origin (scheme://host[:port], e.g. \
             https://shop.example, or * for any)"
        )
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(invalid)?;
    let host_port_ok = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !matches!(scheme, "http" | "https") || !host_port_ok {
        return Err(invalid());
    }
    HeaderValue::from_str(text).map_err(|_| invalid())
}

fn parse_timeout(flag: &str, text: &str) -> Result<Duration, String> {
    let duration = parse_duration(flag, text)?;
    if duration.is_zero() {
        return Err(format!("{flag} must be longer than zero"));
    }
    Ok(duration)
}

fn parse_positive(flag: &str, text: &str) -> Result<NonZeroU32, String> {
    text.parse()
        .map_err(|_| format!("{flag}: `{text}` is not a whole number from 1 to 4294967295"))
}

fn parse_duration(flag: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{flag}: `{text}` is not a duration ({error}; e.g. 10s, 4h, 30d)"))
}
