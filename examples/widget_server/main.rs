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
//! before it is parsed; a valid webhook applies the subscription change, keyed by
//! organization and subscription id, and takes effect on the very next
//! request. Stripe itself posts its events to `POST /billing/stripe`
//! (enabled by `--stripe-webhook-secret`, repeated while a secret is
//! rolled), with the organization in the subscription's
//! `metadata.organization_id`. Both are ordered by the time the change was
//! made and deduplicated by event id, so a retried or late older event
//! answers `applied: false` and changes nothing. (A command line is visible to other users of the machine: a
//! real deployment would read the secret from its environment.)
//!
//! **gRPC** is served on the same address, HTTP/2 without TLS (prior
//! knowledge) beside HTTP/1: `support.v1.Support`
//! (`examples/proto/support.proto`) behind the same layers, stores and
//! sessions, and the standard `grpc.health.v1.Health` outside the session
//! layer. A session made over REST works over gRPC (token in the
//! `x-session-id` metadata), and conversations are shared both ways;
//! `x-session-expires-at` comes back as response metadata. See `grpc.rs`.
//!
//! | method | session | organization / gating |
//! |---|---|---|
//! | `CreateConversation` | renews | none |
//! | `SendMessage` | renews | soft (the AI reply) |
//! | `ListMessages` (the first 200 messages) | validate only | none |
//! | `Enhance` | none | metadata `x-organization-id`, required |
//!
//! Rejections are gRPC statuses (`UNAUTHENTICATED`, `PERMISSION_DENIED`,
//! `UNAVAILABLE`), and the handlers' errors `INVALID_ARGUMENT` (an empty
//! `content`, `draft` or `conversation_id`) and `NOT_FOUND` (a
//! conversation that is not the caller's). The Rust code generated from
//! the proto is committed (`grpc/support.v1.rs`), so building needs no
//! `protoc`; after changing the proto, regenerate it with
//!
//! ```text
//! cargo run --manifest-path tools/protogen/Cargo.toml
//! ```
//!
//! (a standalone tool on the pure-Rust `protox` compiler, outside the
//! crate's build). With `grpcurl`, which needs the proto as there is no
//! reflection service:
//!
//! ```text
//! grpcurl -plaintext -import-path examples/proto -proto support.proto \
//!     -H 'x-session-id: <session_id>' localhost:3000 support.v1.Support/CreateConversation
//! ```
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
//! deterministic stand-ins (`stand_in_ai_reply`, `stand_in_enhance` in
//! `ai.rs`): no model, no network.
//!
//! # Stores
//!
//! `--store` (default `sqlite://widget.db`, created in the working
//! directory) holds conversations, messages, files, widget settings and
//! subscriptions; `--session-store` (default: the same) holds sessions.
//!
//! | `--store` / `--session-store` | for |
//! |---|---|
//! | `memory` | a demo; everything is lost on exit |
//! | `sqlite://PATH` | one machine; survives a restart |
//! | `postgres://USER@HOST:PORT/DB` | several instances on one database |
//! | `redis://HOST:PORT` (`--session-store` only) | sessions shared by several instances |
//!
//! Sessions are the library's `SqliteSessionStore`, `PostgresSessionStore`
//! or `RedisSessionStore` (keys under `--redis-prefix`, default `tsg:`),
//! subscriptions its `SqliteSubscriptionStore` or
//! `PostgresSubscriptionStore`; a SQLite file or PostgreSQL database named
//! by both flags is one connection pool. The library's migrations run at
//! start-up; the app's own tables (`widget_*`) are created then too, by
//! plain idempotent DDL in `storage/sqlite.rs` and `storage/postgres.rs`.
//! Restarted on the same SQLite file, the server keeps its sessions,
//! conversations, files, settings and subscriptions.
//!
//! # Several instances
//!
//! Instances on one PostgreSQL database (sessions there or in one Redis)
//! share everything, and each keeps its own caches. An invalidation
//! channel tells the others at once when a session is revoked (logout, the
//! operator's revocations) or a billing webhook changes a subscription:
//! Redis pub/sub (channel `<prefix>invalidation`) when sessions are in
//! Redis, otherwise PostgreSQL `LISTEN/NOTIFY`, whose listening connection
//! shows in `pg_stat_activity` as `widget_server listener <pid>`. A change
//! is seen everywhere within a second; while the channel is down (it is
//! retried with backoff, and caches are dropped when it comes back), a
//! cached answer is stale for at most the caches' TTL (30 s for a session,
//! 60 s for an entitlement). `backends.rs` holds the choice.
//! Expired sessions are purged in the background every 10 minutes, once
//! they are 24 h past their expiry.
//!
//! ```text
//! cargo run --example widget_server --features axum,sqlite,postgres,redis,tonic
//! cargo run --example widget_server --features axum,sqlite,postgres,redis,tonic -- --store memory --session-duration 10s --refresh-threshold 5s
//! cargo run --example widget_server --features axum,sqlite,postgres,redis,tonic -- --webhook-secret whsec_demo
//! cargo run --example widget_server --features axum,sqlite,postgres,redis,tonic -- --store postgres://postgres@127.0.0.1:5432/widget
//! cargo run --example widget_server --features axum,sqlite,postgres,redis,tonic -- --store postgres://postgres@127.0.0.1:5432/widget --session-store redis://127.0.0.1:6379
//! cargo run --example widget_server --features axum,sqlite,postgres,redis,tonic -- --help
//! ```
//!
//! # Routes
//!
//! | route | session | organization / gating |
//! |---|---|---|
//! | `POST /contact-sessions` | none | none |
//! | `GET /contact-sessions/current` | validate only | none |
//! | `DELETE /contact-sessions/current` (logout, 204) | validate only | none |
//! | `POST /conversations` | renews | none |
//! | `GET /conversations/{id}/messages` (paginated) | validate only | none |
//! | `POST /conversations/{id}/messages` | renews | soft |
//! | `GET /operator/subscription` | none | header, soft |
//! | `GET /operator/conversations` (paginated) | none | header |
//! | `POST /operator/conversations/{id}/messages` | none | header |
//! | `POST /operator/conversations/{id}/enhance` | none | header, required |
//! | `POST /operator/files`, `GET` (paginated), `DELETE /operator/files/{id}` | none | header; required to upload |
//! | `PUT /operator/widget-settings` | none | header; required to create |
//! | `GET /operator/contact-sessions` (paginated) | none | header |
//! | `DELETE /operator/contact-sessions/{session_ref}` (204) | none | header |
//! | `DELETE /operator/contact-sessions` (`{revoked}`) | none | header |
//! | `POST /billing/webhook` | none | signature (`webhook-signature`) |
//! | `POST /billing/stripe` | none | signature (`Stripe-Signature`) |
//!
//! Listings are oldest first: `?limit=` (default 50, at most 200) and
//! `?cursor=` (the previous page's `next_cursor`, `null` on the last page);
//! a bad one is 400 `invalid_request` (`pagination.rs`).
//!
//! # Where things are
//!
//! `cli.rs` (flags, `--help`), `app.rs` (state, layers, the router),
//! `grpc.rs` (`support.v1.Support` and health, and the generated code in
//! `grpc/`),
//! `backends.rs` (opening the stores the flags name), `routes/` (`visitor.rs`,
//! `operator.rs`, `billing.rs`), `storage/` (the app's store trait and its
//! `memory.rs`, `sqlite.rs`, `postgres.rs`), `pagination.rs`, `input.rs`
//! (checks on what clients send), `problem.rs` (error answers), `ai.rs`.
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

mod ai;
mod app;
mod backends;
mod cli;
mod grpc;
mod input;
mod limits;
mod log;
mod pagination;
mod problem;
mod routes;
mod serve;
mod storage;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use tower_saas_guard::SystemClock;

pub use app::{build_app, StartError};
pub use backends::listener_application_name;
use cli::USAGE;
pub use cli::{parse_args, Config, ParsedArgs, StoreUrl};
pub use grpc::pb;
pub use limits::client_network;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(ParsedArgs::Run(config)) => *config,
        Ok(ParsedArgs::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => return usage_error(&message),
    };
    let app = match build_app(&config, SystemClock).await {
        Ok(app) => app,
        Err(StartError::Usage(message)) => return usage_error(&message),
        Err(StartError::Store(message)) => {
            eprintln!("widget_server: {message}");
            return ExitCode::FAILURE;
        }
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
    let limits = serve::ConnectionLimits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        request_timeout: config.request_timeout,
    };
    serve::serve(listener, app, limits, shutdown).await;
    log::flush(Duration::from_secs(2));
    ExitCode::SUCCESS
}

/// Invalid flags: a message on stderr and exit status 2.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("widget_server: {message}");
    eprintln!("Run `widget_server --help` for the flags.");
    ExitCode::from(2)
}
