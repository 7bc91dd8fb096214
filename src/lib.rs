//! Tower middleware for SaaS backends: sliding sessions and pro-only routes.
//!
//! * [`SessionRefreshLayer`](session::SessionRefreshLayer) validates the
//!   session of every request and renews it only when it is close to
//!   expiring, so active users are never logged out and the store is
//!   written once per renewal window, not once per request.
//! * [`RequireSubscriptionLayer`](subscription::RequireSubscriptionLayer)
//!   lets a request through only when its organization holds an entitling
//!   subscription; [`EntitlementLayer`](subscription::EntitlementLayer)
//!   only attaches the decision, for handlers that degrade softly.
//! * [`BillingWebhook`](billing::BillingWebhook) verifies Stripe-style
//!   signed webhooks and applies subscription changes to the store and the
//!   cache in one call.
//!
//! It works with any `tower` stack over `http` requests: axum, plain hyper,
//! and tonic (rejections of gRPC calls are gRPC trailers-only responses;
//! [`grpc`] names calls by method path and explains the tonic wiring).
//! Sessions live in a pluggable [`SessionStore`](session::SessionStore)
//! behind a moka cache; time comes from a [`Clock`] that tests can drive.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//!
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = SessionRefreshLayer::new(MemorySessionStore::new());
//! let handle = sessions.handle();
//! let service = ServiceBuilder::new()
//!     .layer(sessions)
//!     .service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::from("hi"))) });
//!
//! let created = handle.create(None, ()).await?;
//! let request = Request::builder().header("x-session-id", created.token.to_string()).body(())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! # Cargo features
//!
//! | feature | what it adds |
//! |---|---|
//! | `axum` | [`Session`](session::Session), [`Entitlement`](subscription::Entitlement) and their `Option`s as axum extractors |
//! | `sqlite` | `stores::sqlite`: SQLite session and subscription stores (sqlx) |
//! | `postgres` | `stores::postgres`: PostgreSQL session and subscription stores and the `LISTEN/NOTIFY` invalidation channel (sqlx) |
//! | `redis` | `stores::redis`: `RedisSessionStore` and `RedisInvalidationChannel` (pub/sub), on the `redis` crate |
//! | `metrics` | counters, gauges and histograms through the `metrics` facade (requests by outcome, cache hits, renewals, store calls and their latency) |
//! | `tonic` | `tonic::server::NamedService` for the middleware's services, so a layered service goes to tonic's `Server::add_service` (see [`grpc`]) |
//! | `test-kit` | `test_kit`: the conformance suites every store and channel of the crate passes, for authors of other stores |
//!
//! Without features the crate depends on tower, http, moka, serde and
//! serde_json, futures-util, pin-project-lite, async-trait, Tokio's timer
//! and sync primitives,
//! sha2/hmac/getrandom (tokens and webhook signatures), humantime,
//! coarsetime, foldhash and tracing.
#![deny(missing_docs, unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod billing;
mod body;
mod cache;
mod clock;
mod error;
mod future;
pub mod grpc;
pub mod invalidation;
mod metrics;
pub mod rejection;
mod request;
pub mod session;
mod skip;
pub mod stores;
pub mod subscription;
#[cfg(feature = "test-kit")]
pub mod test_kit;

#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "tonic")]
mod tonic;

pub use crate::body::GuardBody;
pub use crate::clock::{
    parse_rfc3339, rfc3339_millis, unix_millis, Clock, CoarseClock, InvalidTimestamp, ManualClock,
    SystemClock,
};
pub use crate::error::{ConfigError, StoreError, StoreErrorKind};
pub use crate::rejection::{
    grpc_response, problem_json, problem_response, ErrorCode, Rejection, RejectionResponder,
};
pub use crate::request::RequestHead;
pub use crate::skip::SkipRule;
/// The attribute [`SessionStore`](session::SessionStore) and
/// [`SubscriptionStore`](subscription::SubscriptionStore) are declared
/// with: put it on your `impl` of either (see "Write your own store").
pub use async_trait::async_trait;

#[cfg(feature = "axum")]
pub use crate::axum::MissingExtension;

/// Every Rust block of the README, compiled (and run, unless marked
/// `no_run`) by `cargo test --all-features`, so the quick start a user
/// pastes keeps working.
#[cfg(all(doctest, feature = "axum", feature = "postgres", feature = "tonic"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The type name of a value, for `Debug` of pluggable behaviour (closures).
pub(crate) fn type_name_of<T>(_: &T) -> &'static str {
    std::any::type_name::<T>()
}

/// Writes `bytes` as lowercase hex, a `write_str` per 32 bytes rather
/// than a formatted `write!` per byte (session ids make Redis keys and SQL
/// parameters on every store call).
pub(crate) fn write_lower_hex(out: &mut impl std::fmt::Write, bytes: &[u8]) -> std::fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buffer = [0u8; 64];
    for chunk in bytes.chunks(32) {
        for (pair, &byte) in buffer.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        let hex = std::str::from_utf8(&buffer[..2 * chunk.len()]).map_err(|_| std::fmt::Error)?;
        out.write_str(hex)?;
    }
    Ok(())
}

/// Case-insensitive hex to bytes; `None` for empty, odd-length or non-hex input.
pub(crate) fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            b'A'..=b'F' => Some(digit - b'A' + 10),
            _ => None,
        }
    }
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{decode_hex, write_lower_hex};

    #[test]
    fn lower_hex_matches_formatting_each_byte_and_decodes_back() {
        // Lengths around the 32-byte chunk, and every byte value.
        let bytes: Vec<u8> = (0..=255u8).chain(0..=255).collect();
        for length in [0, 1, 31, 32, 33, 64, 65, 512] {
            let bytes = &bytes[..length];
            let mut hex = String::new();
            write_lower_hex(&mut hex, bytes).expect("a String takes any text");
            let expected: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            assert_eq!(hex, expected, "{length} bytes");
            if length > 0 {
                assert_eq!(decode_hex(hex.as_bytes()).as_deref(), Some(bytes));
            }
        }
    }
}
