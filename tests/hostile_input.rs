//! Hostile input (issue 10): arbitrary header values, bearer credentials,
//! cookie strings, gRPC metadata, request paths, webhook signature headers
//! and bodies. Whatever a client sends, the answer is the documented
//! rejection, with its exact code, never a panic: each property states the
//! code it expects, computed from how the input was built (or, for raw
//! bytes, from an independent shape check), so each can fail.
//!
//! Everything goes through the public API: the session layer over
//! `tower::ServiceExt::oneshot`, the verifiers, and the webhooks' `handle`.
//! The fuzz targets in `fuzz/` push on the same surfaces for longer.

mod support;

use std::convert::Infallible;
use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseResult, TestRunner};
use serde_json::{json, Value};
use tower::{service_fn, Layer};
use tower_saas_guard::billing::stripe::{StripeVerifier, StripeWebhook};
use tower_saas_guard::billing::{BillingWebhook, SignatureError, WebhookVerifier};
use tower_saas_guard::session::{
    BearerSource, CookieSource, Session, SessionRefreshLayer, SESSION_EXPIRES_AT,
};
use tower_saas_guard::subscription::{
    Entitlement, EntitlementPolicy, EntitlementReason, Entitlements, FromHeader,
    MemorySubscriptionStore, RequireSubscriptionLayer, Subscription, SubscriptionChange,
    SubscriptionStatus,
};
use tower_saas_guard::{rfc3339_millis, ManualClock, RequestHead, StoreError};

use support::{epoch, send, Answer, Echo, ProbeStore};

const HOUR: Duration = Duration::from_secs(3600);

/// Runs `property` over `cases` values of `strategy` and fails the test
/// with proptest's shrunk input. (A runner of our own, rather than the
/// `proptest!` macro, so one runtime and one layer serve every case.)
fn check<S>(cases: u32, strategy: S, property: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(failure) = runner.run(&strategy, property) {
        panic!("{failure}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------
// What a token looks like, checked independently of the crate.

/// A base64url character's 6-bit value.
fn sextet(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Whether `text` has a token's exact shape (SPEC §1): 32 bytes as
/// canonical unpadded base64url, 43 characters whose last one leaves its
/// two spare bits zero.
fn token_shaped(text: &[u8]) -> bool {
    text.len() == 43
        && text.iter().all(|&byte| sextet(byte).is_some())
        && sextet(text[42]).is_some_and(|last| last & 0b11 == 0)
}

/// The code the layer answers for a presented credential: well-shaped
/// tokens are unknown to the (empty) store, others never reach it.
fn code_for(credential: &[u8]) -> &'static str {
    if token_shaped(credential) {
        "session_not_found"
    } else {
        "session_invalid"
    }
}

/// A well-shaped token (random, so unknown to any store).
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]"
}

/// A byte a header value may hold that is neither a base64url character
/// nor a space: wherever it lands in a token, the token is malformed.
fn foreign_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(b'\t'),
        (0x21u8..=0x7e).prop_filter("not base64url", |b| sextet(*b).is_none()),
        0x80u8..=0xff,
    ]
}

/// Header-valid bytes that are a token, a damaged token, or anything.
fn credential() -> impl Strategy<Value = Vec<u8>> {
    let damaged =
        (token(), any::<prop::sample::Index>(), foreign_byte()).prop_map(|(token, at, byte)| {
            let mut bytes = token.into_bytes();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            bytes
        });
    prop_oneof![
        token().prop_map(String::into_bytes),
        damaged,
        // Wrong length, wrong last character, padded, surrounded by blanks.
        "[A-Za-z0-9_-]{0,42}|[A-Za-z0-9_-]{44,60}".prop_map(String::into_bytes),
        "[A-Za-z0-9_-]{42}[B-DF-HJ-LN-PR-TV-XZabd-fh-jl-np-rt-vx-z1-35-79_-]"
            .prop_map(String::into_bytes),
        (token(), "[ \t]{1,2}|=|==").prop_map(|(token, pad)| format!("{pad}{token}").into_bytes()),
        (token(), "[ \t]{1,2}|=|==").prop_map(|(token, pad)| format!("{token}{pad}").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..80),
    ]
    .prop_filter("a header value", |bytes| {
        HeaderValue::from_bytes(bytes).is_ok()
    })
}

// ---------------------------------------------------------------------------
// The session layer under test.

/// An inner service that answers 200 with whether the session was renewed.
fn echo_service(layer: SessionRefreshLayer) -> Echo {
    let inner = service_fn(|request: Request<()>| async move {
        let renewed = request.extensions().get::<Session>().map(Session::renewed);
        Ok::<_, Infallible>(Response::new(json!({ "renewed": renewed }).to_string()))
    });
    tower::util::BoxCloneSyncService::new(layer.layer(inner))
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    store: ProbeStore,
    clock: ManualClock,
    layer: SessionRefreshLayer,
}

impl Harness {
    /// Default settings (24 h sessions renewed within 4 h) over an empty
    /// store, on a clock the test moves.
    fn new() -> Self {
        let store = ProbeStore::default();
        let clock = ManualClock::new(epoch());
        let layer = SessionRefreshLayer::builder(store.clone())
            .clock(clock.clone())
            .build()
            .expect("valid configuration");
        Self {
            runtime: runtime(),
            store,
            clock,
            layer,
        }
    }

    fn send(&self, service: &Echo, request: Request<()>) -> Answer {
        self.runtime.block_on(send(service, request))
    }
}

/// A problem+json 401 with exactly `code`, its challenge, `no-store`, and
/// no expiry header.
fn assert_http_rejection(answer: &Answer, code: &str, challenge: &str) -> TestCaseResult {
    prop_assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    prop_assert_eq!(
        &answer.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    prop_assert_eq!(answer.body["code"].as_str(), Some(code));
    prop_assert_eq!(answer.body["status"].as_u64(), Some(401));
    prop_assert_eq!(&answer.headers[header::CACHE_CONTROL], "no-store");
    prop_assert_eq!(&answer.headers[header::WWW_AUTHENTICATE], challenge);
    prop_assert!(!answer.headers.contains_key(SESSION_EXPIRES_AT));
    Ok(())
}

/// A gRPC trailers-only UNAUTHENTICATED with a `grpc-message` naming `code`.
fn assert_grpc_rejection(answer: &Answer, code: &str) -> TestCaseResult {
    prop_assert_eq!(answer.status, StatusCode::OK);
    prop_assert_eq!(&answer.headers[header::CONTENT_TYPE], "application/grpc");
    prop_assert_eq!(&answer.headers["grpc-status"], "16");
    let message = answer.headers["grpc-message"].to_str();
    prop_assert!(
        message.is_ok_and(|message| message.starts_with(&format!("{code}:"))),
        "grpc-message {:?}",
        answer.headers["grpc-message"]
    );
    prop_assert_eq!(&answer.headers[header::CACHE_CONTROL], "no-store");
    prop_assert_eq!(&answer.body, &Value::Null);
    Ok(())
}

#[test]
fn any_x_session_id_value_is_session_invalid_unless_token_shaped() {
    let harness = Harness::new();
    let service = echo_service(harness.layer.clone());
    check(512, credential(), |value| {
        let loads_before = harness.store.loads();
        let request = Request::builder()
            .header("x-session-id", value.as_slice())
            .body(())
            .expect("a header value");
        let answer = harness.send(&service, request);
        let code = code_for(&value);
        assert_http_rejection(&answer, code, r#"Session header="x-session-id""#)?;
        if code == "session_invalid" {
            prop_assert_eq!(
                harness.store.loads(),
                loads_before,
                "a malformed token read the store"
            );
        }
        Ok(())
    });
}

/// `Authorization` values: the bearer scheme in any case, then spaces and
/// a credential; other schemes; raw bytes.
fn authorization() -> impl Strategy<Value = Vec<u8>> {
    let scheme = prop_oneof![
        "[bB][eE][aA][rR][eE][rR]",
        Just("Basic".to_owned()),
        Just("Bearer:".to_owned()),
        Just("Bearer\t".to_owned()),
        Just("Token".to_owned()),
        Just(String::new()),
    ];
    prop_oneof![
        3 => (scheme, " {1,3}", credential(), " {0,2}").prop_map(|(scheme, before, credential, after)| {
            [scheme.as_bytes(), before.as_bytes(), &credential, after.as_bytes()].concat()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..80),
    ]
    .prop_filter("a header value", |bytes| {
        HeaderValue::from_bytes(bytes).is_ok()
    })
}

/// RFC 6750 as documented on `BearerSource`: the scheme `Bearer` (any
/// case), one space, the token (surrounding spaces tolerated).
fn bearer_credential(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    if !value[..space].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let credential = &value[space + 1..];
    let start = credential.iter().position(|&b| b != b' ')?;
    let end = credential.iter().rposition(|&b| b != b' ')? + 1;
    Some(&credential[start..end])
}

#[test]
fn any_authorization_value_is_session_invalid_unless_a_bearer_token() {
    let harness = Harness::new();
    let service = echo_service(harness.layer.clone().token_source(BearerSource));
    check(512, authorization(), |value| {
        let request = Request::builder()
            .header(header::AUTHORIZATION, value.as_slice())
            .body(())
            .expect("a header value");
        let answer = harness.send(&service, request);
        let code = bearer_credential(&value).map_or("session_invalid", code_for);
        assert_http_rejection(&answer, code, r#"Bearer error="invalid_token""#)
    });
}

/// A cookie pair: the session cookie's name, a name that is close but not
/// it, or another cookie; the value a token (maybe quoted) or junk.
fn cookie_pair() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        3 => Just("__Host-session".to_owned()),
        1 => prop::sample::select(vec![
            "__host-session", "__Host-Session", "__Host-sessio", "x__Host-session",
            "__Host-session2", "session", "__Secure-session",
        ]).prop_map(str::to_owned),
        2 => "[A-Za-z0-9_-]{1,12}",
    ];
    let value = prop_oneof![
        token(),
        token().prop_map(|token| format!("\"{token}\"")),
        "[!#-+\\--:<-~]{0,20}",
        Just(String::new()),
    ];
    (name, value)
}

/// What the layer must answer for these Cookie header lines: none of the
/// session cookie → missing; two or more → invalid (fixation); one → its
/// (unquoted) value's shape.
fn cookie_code(pairs: &[(String, String)]) -> &'static str {
    let values: Vec<&String> = pairs
        .iter()
        .filter(|(name, _)| name == "__Host-session")
        .map(|(_, value)| value)
        .collect();
    match values.as_slice() {
        [] => "session_missing",
        [value] => {
            let value = value.as_bytes();
            let unquoted = match value {
                [b'"', inner @ .., b'"'] => inner,
                _ => value,
            };
            code_for(unquoted)
        }
        _ => "session_invalid",
    }
}

#[test]
fn any_cookie_header_answers_missing_invalid_or_the_tokens_code() {
    let harness = Harness::new();
    let service = echo_service(harness.layer.clone().token_source(CookieSource::default()));
    let lines = prop::collection::vec(
        (prop::collection::vec(cookie_pair(), 0..5), prop::bool::ANY),
        0..3,
    );
    check(512, lines, |lines| {
        let mut request = Request::builder();
        let mut all_pairs = Vec::new();
        for (pairs, tight) in &lines {
            let separator = if *tight { ";" } else { "; " };
            let line = pairs
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join(separator);
            request = request.header(header::COOKIE, line);
            all_pairs.extend(pairs.iter().cloned());
        }
        let answer = harness.send(&service, request.body(()).expect("valid cookie lines"));
        assert_http_rejection(
            &answer,
            cookie_code(&all_pairs),
            r#"Session cookie="__Host-session""#,
        )
    });
}

#[test]
fn raw_cookie_bytes_are_session_missing_or_invalid() {
    let harness = Harness::new();
    let service = echo_service(harness.layer.clone().token_source(CookieSource::default()));
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..120),
        (credential(), credential()).prop_map(|(before, after)| {
            [&before[..], b"; __Host-session=", &after[..]].concat()
        }),
    ]
    .prop_filter("a header value", |bytes| {
        HeaderValue::from_bytes(bytes).is_ok()
    });
    check(512, bytes, |bytes| {
        let request = Request::builder()
            .header(header::COOKIE, bytes.as_slice())
            .body(())
            .expect("a header value");
        let answer = harness.send(&service, request);
        let named = bytes
            .windows(b"__Host-session=".len())
            .any(|window| window == b"__Host-session=");
        let code = answer.body["code"].as_str().unwrap_or_default().to_owned();
        if named {
            prop_assert!(
                ["session_missing", "session_invalid", "session_not_found"]
                    .contains(&code.as_str()),
                "{}",
                code
            );
        } else {
            prop_assert_eq!(code.as_str(), "session_missing");
        }
        assert_http_rejection(&answer, &code, r#"Session cookie="__Host-session""#)
    });
}

/// `content-type` values: `application/grpc` in any case with a suffix
/// that keeps it gRPC or not, or raw bytes.
fn content_type() -> impl Strategy<Value = Vec<u8>> {
    let cased = (
        prop::collection::vec(prop::bool::ANY, 16),
        prop_oneof![
            Just(String::new()),
            "\\+[a-z]{1,8}",
            ";[ -~]{0,12}",
            "-web(\\+proto|-text)?",
            "[a-z]{1,5}",
            " ",
        ],
    )
        .prop_map(|(upper, suffix)| {
            let mut text: Vec<u8> = b"application/grpc"
                .iter()
                .zip(upper)
                .map(|(&byte, upper)| {
                    if upper {
                        byte.to_ascii_uppercase()
                    } else {
                        byte
                    }
                })
                .collect();
            text.extend_from_slice(suffix.as_bytes());
            text
        });
    prop_oneof![
        3 => cased,
        1 => prop::collection::vec(any::<u8>(), 0..40),
        1 => Just(b"application/json".to_vec()),
    ]
    .prop_filter("a header value", |bytes| {
        HeaderValue::from_bytes(bytes).is_ok()
    })
}

/// SPEC §6: gRPC is a POST whose content-type is `application/grpc`,
/// optionally followed by `+…` or `;…` (case-insensitive).
fn is_grpc(method: &Method, content_type: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    method == Method::POST
        && content_type.len() >= GRPC.len()
        && content_type[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(content_type.get(GRPC.len()), None | Some(b'+' | b';'))
}

#[test]
fn grpc_metadata_gets_trailers_only_answers_and_anything_else_http() {
    let harness = Harness::new();
    let service = echo_service(harness.layer.clone());
    let method = prop::sample::select(vec![Method::POST, Method::GET, Method::PUT]);
    let strategy = (method, content_type(), prop::option::of(credential()));
    check(512, strategy, |(method, content_type, token)| {
        let mut request = Request::builder()
            .method(method.clone())
            .uri("/support.v1.Support/SendMessage")
            .header(header::CONTENT_TYPE, content_type.as_slice());
        if let Some(token) = &token {
            request = request.header("x-session-id", token.as_slice());
        }
        let answer = harness.send(&service, request.body(()).expect("valid metadata"));
        let code = token.as_deref().map_or("session_missing", code_for);
        if is_grpc(&method, &content_type) {
            assert_grpc_rejection(&answer, code)
        } else {
            assert_http_rejection(&answer, code, r#"Session header="x-session-id""#)
        }
    });
}

/// The gRPC method the seed product validates without renewing.
const LIST_MESSAGES: &str = "/support.v1.Support/ListMessages";

/// Request paths: the validate-only method, near misses of it, and any
/// path (with an optional query).
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(LIST_MESSAGES.to_owned()),
        1 => prop::sample::select(vec![
            "/support.v1.Support/listmessages", "/support.v1.Support/ListMessages/",
            "//support.v1.Support/ListMessages", "/support.v1.Support/ListMessage",
            "/support.v1.Support/SendMessage", "/",
        ]).prop_map(str::to_owned),
        1 => Just(format!("{LIST_MESSAGES}?page=2")),
        4 => (
            "(/[A-Za-z0-9._~!$&'()*+,;=:@-]{0,16}|/%[0-9A-F]{2}){1,4}",
            "(\\?[A-Za-z0-9=&%]{0,12})?",
        ).prop_map(|(path, query)| format!("{path}{query}")),
    ]
}

#[test]
fn any_request_path_reaches_the_activity_rule_and_never_changes_a_rejection() {
    let harness = Harness::new();
    let layer = harness
        .layer
        .activity(|head: &RequestHead<'_>| head.uri().path() != LIST_MESSAGES);
    let service = echo_service(layer);
    let handle = harness.layer.handle();
    check(256, path(), |path| {
        let uri: http::Uri = path.parse().map_err(|error| {
            TestCaseError::fail(format!(
                "the strategy made an invalid URI {path:?}: {error}"
            ))
        })?;
        // A fresh session, 21 h old: 3 h left, inside the 4 h threshold.
        let token = harness
            .runtime
            .block_on(handle.create(None, ()))
            .expect("memory store")
            .token;
        harness.clock.advance(21 * HOUR);
        let request = Request::builder()
            .uri(uri.clone())
            .header("x-session-id", token.to_string())
            .body(())
            .expect("valid request");
        let answer = harness.send(&service, request);
        prop_assert_eq!(answer.status, StatusCode::OK);
        let renews = uri.path() != LIST_MESSAGES;
        prop_assert_eq!(answer.body["renewed"].as_bool(), Some(renews), "{}", path);
        // Missing and malformed tokens answer the same on every path.
        for (token, code) in [(None, "session_missing"), (Some("x"), "session_invalid")] {
            let mut request = Request::builder().uri(uri.clone());
            if let Some(token) = token {
                request = request.header("x-session-id", token);
            }
            let answer = harness.send(&service, request.body(()).expect("valid request"));
            assert_http_rejection(&answer, code, r#"Session header="x-session-id""#)?;
        }
        Ok(())
    });
}

/// An inner service that answers 200 with the entitlement it saw.
fn entitlement_echo(layer: RequireSubscriptionLayer) -> Echo {
    let inner = service_fn(|request: Request<()>| async move {
        let entitled = request
            .extensions()
            .get::<Entitlement>()
            .map(Entitlement::is_entitled);
        Ok::<_, Infallible>(Response::new(json!({ "entitled": entitled }).to_string()))
    });
    tower::util::BoxCloneSyncService::new(layer.layer(inner))
}

/// `x-organization-id` values: absent, a known organization (padded with
/// blanks), text at and over the 128-character limit, or any bytes.
fn organization_header() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        2 => ("[ \t]{0,2}", prop::sample::select(vec!["org_pro", "org_free"]), "[ \t]{0,2}")
            .prop_map(|(before, id, after)| Some(format!("{before}{id}{after}").into_bytes())),
        1 => "[\u{e9}a]{126,130}".prop_map(|text| Some(text.into_bytes())),
        2 => credential().prop_map(Some),
    ]
}

/// What `FromHeader` documents: UTF-8, trimmed, non-empty, at most 128
/// characters; anything else counts as missing.
fn organization_named(value: Option<&[u8]>) -> Option<&str> {
    let text = std::str::from_utf8(value?).ok()?.trim();
    (!text.is_empty() && text.chars().count() <= 128).then_some(text)
}

#[test]
fn any_path_method_and_organization_header_gets_the_gate_predicates_answer() {
    let runtime = runtime();
    let entitlements = entitlements();
    let pro = Subscription {
        organization_id: "org_pro".to_owned(),
        subscription_id: "sub_1".to_owned(),
        status: SubscriptionStatus::Active,
        plan: "pro".to_owned(),
        current_period_end: Some(at(NOW) + 30 * 24 * HOUR),
        trial_end: None,
    };
    runtime
        .block_on(entitlements.apply(&SubscriptionChange::new(pro, at(NOW))))
        .expect("memory store");
    // Reads are open to all; writes need a subscription, except /public/.
    let gate = |head: &RequestHead<'_>| {
        head.method() != Method::GET && !head.uri().path().starts_with("/public/")
    };
    let layer = RequireSubscriptionLayer::new(entitlements, EntitlementPolicy::new())
        .organization(FromHeader::new(HeaderName::from_static(
            "x-organization-id",
        )))
        .gate_when(gate);
    let service = entitlement_echo(layer);
    let method = prop::sample::select(vec![Method::GET, Method::POST, Method::DELETE]);
    let path = prop_oneof![path(), "/public/[a-z]{0,8}"];
    check(
        512,
        (method, path, organization_header()),
        |(method, path, organization)| {
            let mut request = Request::builder().method(method.clone()).uri(path.as_str());
            if let Some(value) = &organization {
                request = request.header("x-organization-id", value.as_slice());
            }
            let answer = runtime.block_on(send(&service, request.body(()).expect("valid request")));
            let gated = method != Method::GET && !path.starts_with("/public/");
            let (status, code) = match organization_named(organization.as_deref()) {
                None => (StatusCode::UNAUTHORIZED, Some("organization_missing")),
                Some("org_pro") => (StatusCode::OK, None),
                Some(_) if gated => (StatusCode::FORBIDDEN, Some("subscription_required")),
                Some(_) => (StatusCode::OK, None),
            };
            prop_assert_eq!(answer.status, status, "{:?}", answer.body);
            match code {
                Some(code) => {
                    prop_assert_eq!(answer.body["code"].as_str(), Some(code));
                    prop_assert_eq!(
                        &answer.headers[header::CONTENT_TYPE],
                        "application/problem+json"
                    );
                    prop_assert_eq!(&answer.headers[header::CACHE_CONTROL], "no-store");
                }
                None => {
                    let entitled = organization_named(organization.as_deref()) == Some("org_pro");
                    prop_assert_eq!(answer.body["entitled"].as_bool(), Some(entitled));
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// Webhook signatures.

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

const NOW: u64 = 1_800_000_000;

/// An entry a sender might add beside its signature: other schemes, non-hex
/// or wrong `v1` values, unknown keys, bare words, blanks; never a `t`.
fn extra_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ \t]{0,2}v0[ \t]{0,2}=[0-9a-f]{0,64}",
        "v1=[0-9a-fA-F]{0,66}",
        "v1=[g-z+/ ]{0,10}",
        "[a-su-z][a-z0-9]{0,4}=[ -+\\--~]{0,10}",
        "[a-z]{0,6}",
        "T=[0-9]{1,10}",
    ]
}

#[test]
fn arbitrary_signature_headers_are_refused_with_the_documented_kind() {
    let simple = WebhookVerifier::new("whsec_test");
    let stripe = StripeVerifier::try_new(["whsec_test", "whsec_old"]).expect("two secrets");
    let header = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        prop::collection::vec(extra_entry(), 0..24)
            .prop_map(|entries| entries.join(",").into_bytes()),
        (1u64..u64::MAX, prop::collection::vec(extra_entry(), 0..20))
            .prop_map(|(t, entries)| format!("t={t},{}", entries.join(",")).into_bytes()),
    ];
    let body = prop::collection::vec(any::<u8>(), 0..64);
    check(512, (header, body), |(header, body)| {
        let simple_answer = simple.verify(&header, &body, at(NOW));
        let stripe_answer = stripe.verify(&header, &body, at(NOW)).map(|_| ());
        if header.split(|&b| b == b',').count() > 16 {
            prop_assert_eq!(&simple_answer, &Err(SignatureError::TooManyEntries));
        } else {
            prop_assert!(
                matches!(
                    simple_answer,
                    Err(SignatureError::Malformed | SignatureError::Mismatch)
                ),
                "{:?}",
                simple_answer
            );
        }
        prop_assert_eq!(simple_answer, stripe_answer, "one parser, one verdict");
        Ok(())
    });
}

#[test]
fn a_genuine_signature_passes_beside_any_junk_unless_over_the_cap_or_a_second_t() {
    let simple = WebhookVerifier::new("whsec_test");
    let stripe = StripeVerifier::try_new(["whsec_new", "whsec_test"]).expect("two secrets");
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..128),
        prop::collection::vec(extra_entry(), 0..18),
        any::<prop::sample::Index>(),
        prop::bool::weighted(0.1),
    );
    check(512, strategy, |(body, mut extra, position, second_t)| {
        if second_t {
            extra.push("t=1".to_owned());
        }
        let signed = simple.sign(&body, at(NOW));
        let mut entries: Vec<String> = signed.split(',').map(str::to_owned).collect();
        for (offset, entry) in extra.into_iter().enumerate() {
            let at = position.index(entries.len() + 1);
            entries.insert((at + offset) % (entries.len() + 1), entry);
        }
        let header = entries.join(",");
        let expected = if entries.len() > 16 {
            Err(SignatureError::TooManyEntries)
        } else if second_t {
            Err(SignatureError::Malformed)
        } else {
            Ok(())
        };
        prop_assert_eq!(
            simple.verify(header.as_bytes(), &body, at(NOW)),
            expected.clone(),
            "{}",
            header
        );
        prop_assert_eq!(
            stripe.verify(header.as_bytes(), &body, at(NOW)).map(|_| ()),
            expected,
            "{}",
            header
        );
        Ok(())
    });
}

#[test]
fn a_genuine_signature_is_judged_by_its_age_and_any_changed_digit_is_a_mismatch() {
    let simple = WebhookVerifier::new("whsec_test");
    let stripe = StripeVerifier::try_new(["whsec_test"]).expect("one secret");
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..128),
        -900i64..900,
        any::<prop::sample::Index>(),
    );
    check(512, strategy, |(body, skew, digit)| {
        let signed_at = NOW.checked_add_signed(skew).expect("near NOW");
        let header = simple.sign(&body, at(signed_at));
        let expected = if skew.unsigned_abs() <= 300 {
            Ok(())
        } else {
            Err(SignatureError::OutsideTolerance)
        };
        prop_assert_eq!(
            simple.verify(header.as_bytes(), &body, at(NOW)),
            expected.clone()
        );
        prop_assert_eq!(
            stripe.verify(header.as_bytes(), &body, at(NOW)),
            expected.map(|()| at(signed_at))
        );
        // Change one hex digit of the MAC (after "v1=").
        let tag_start = header.find("v1=").expect("a v1 entry") + 3;
        let at_digit = tag_start + digit.index(header.len() - tag_start);
        let mut tampered = header.into_bytes();
        tampered[at_digit] = if tampered[at_digit] == b'0' {
            b'1'
        } else {
            b'0'
        };
        prop_assert_eq!(
            simple.verify(&tampered, &body, at(NOW)),
            Err(SignatureError::Mismatch)
        );
        prop_assert_eq!(
            stripe.verify(&tampered, &body, at(NOW)),
            Err(SignatureError::Mismatch)
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// The webhooks end to end: signed arbitrary bodies.

fn entitlements() -> Entitlements {
    Entitlements::builder(MemorySubscriptionStore::new())
        .clock(ManualClock::new(at(NOW)))
        .build()
        .expect("valid settings")
}

/// A string field of a webhook body and whether it is acceptable: an id
/// (maybe padded with blanks), blank, longer than 128 characters, absent,
/// or not a string.
fn id_field() -> impl Strategy<Value = (Option<Value>, bool)> {
    prop_oneof![
        4 => ("[ \t]{0,2}", "[a-z0-9_]{1,20}|[\u{e9}\u{4e2d}]{1,128}", "[ \t]{0,2}")
            .prop_map(|(before, id, after)| (Some(json!(format!("{before}{id}{after}"))), true)),
        1 => "[ \t\n]{0,3}".prop_map(|blank| (Some(json!(blank)), false)),
        1 => "[a-z]{129,140}|[\u{e9}]{129,130}".prop_map(|long| (Some(json!(long)), false)),
        1 => Just((None, false)),
        1 => any::<i64>().prop_map(|number| (Some(json!(number)), false)),
    ]
}

/// A status field: a known one, or something that is not one.
fn status_field() -> impl Strategy<Value = (Option<Value>, bool)> {
    prop_oneof![
        4 => prop::sample::select(SubscriptionStatus::ALL.to_vec())
            .prop_map(|status| (Some(json!(status.as_str())), true)),
        1 => prop::sample::select(vec!["Active", "gold", "", " active", "past-due"])
            .prop_map(|status| (Some(json!(status)), false)),
        1 => Just((None, false)),
    ]
}

/// An optional RFC 3339 timestamp: absent or null (fine), a real instant
/// from 1970 to 9999, or text that cannot be one.
fn time_field() -> impl Strategy<Value = (Option<Value>, bool)> {
    prop_oneof![
        2 => Just((None, true)),
        1 => Just((Some(Value::Null), true)),
        3 => (0u64..253_402_300_799_999)
            .prop_map(|millis| {
                let instant = SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
                (Some(json!(rfc3339_millis(instant))), true)
            }),
        1 => prop::sample::select(vec![
            "2026-02-30T00:00:00Z", "2026-01-01T00:00:00", "2026-01-01 00:00:00Z",
            "2026-13-01T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+24:00", "tomorrow", "",
        ]).prop_map(|text| (Some(json!(text)), false)),
        1 => any::<u32>().prop_map(|number| (Some(json!(number)), false)),
    ]
}

/// An optional event id: absent (fine), an id, or a bad one.
fn event_id_field() -> impl Strategy<Value = (Option<Value>, bool)> {
    prop_oneof![
        2 => Just((None, true)),
        1 => id_field().prop_filter("present", |(value, _)| value.is_some()),
    ]
}

#[test]
fn signed_billing_bodies_are_applied_exactly_when_valid_else_invalid_request() {
    let verifier = WebhookVerifier::new("whsec_test");
    let runtime = runtime();
    let fields = (
        id_field(),
        id_field(),
        status_field(),
        id_field(),
        time_field(),
        time_field(),
        event_id_field(),
        prop::collection::vec(("[a-z]{1,8}", any::<i32>()), 0..3),
    );
    check(512, fields, |fields| {
        let (organization, subscription, status, plan, period_end, trial_end, event_id, extra) =
            fields;
        let named = [
            ("organization_id", organization),
            ("subscription_id", subscription),
            ("status", status),
            ("plan", plan),
            ("current_period_end", period_end),
            ("trial_end", trial_end),
            ("event_id", event_id),
        ];
        let valid = named.iter().all(|(_, (_, ok))| *ok);
        let mut body = serde_json::Map::new();
        // Unknown fields are ignored (added first: a known one wins).
        for (key, number) in extra {
            body.insert(format!("x_{key}"), json!(number));
        }
        for (key, (value, _)) in &named {
            if let Some(value) = value {
                body.insert((*key).to_owned(), value.clone());
            }
        }
        let body = serde_json::to_vec(&Value::Object(body)).expect("JSON");
        let entitlements = entitlements();
        let webhook = BillingWebhook::new(verifier.clone(), entitlements.clone());
        let signature =
            HeaderValue::from_str(&verifier.sign(&body, at(NOW))).expect("a header value");
        let answer = runtime.block_on(webhook.handle(Some(&signature), &body));
        match answer {
            Ok(receipt) => {
                prop_assert!(
                    valid,
                    "accepted an invalid body {}",
                    String::from_utf8_lossy(&body)
                );
                prop_assert!(receipt.applied());
                let organization = named[0].1 .0.as_ref().and_then(Value::as_str);
                prop_assert_eq!(
                    Some(receipt.subscription.organization_id.as_str()),
                    organization.map(str::trim)
                );
            }
            Err(error) => {
                prop_assert!(
                    !valid,
                    "refused a valid body {}: {}",
                    String::from_utf8_lossy(&body),
                    error
                );
                prop_assert_eq!(error.code(), "invalid_request");
                prop_assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            }
        }
        Ok(())
    });
}

#[test]
fn signed_arbitrary_bytes_are_invalid_request_for_both_webhooks() {
    let simple = WebhookVerifier::new("whsec_test");
    let stripe = StripeVerifier::try_new(["whsec_test"]).expect("one secret");
    let runtime = runtime();
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "[{}\\[\\]\":,0-9a-z ]{0,64}".prop_map(String::into_bytes),
    ];
    check(512, body, |body| {
        let billing = BillingWebhook::new(simple.clone(), entitlements());
        let signature = HeaderValue::from_str(&simple.sign(&body, at(NOW))).expect("header");
        let answer = runtime.block_on(billing.handle(Some(&signature), &body));
        prop_assert_eq!(
            answer.map_err(|error| error.code()).err(),
            Some("invalid_request")
        );
        let webhook = StripeWebhook::new(stripe.clone(), entitlements());
        let signature = HeaderValue::from_str(&stripe.sign(&body, at(NOW))).expect("header");
        let answer = runtime.block_on(webhook.handle(Some(&signature), &body));
        prop_assert_eq!(
            answer.map_err(|error| error.code()).err(),
            Some("invalid_request")
        );
        Ok(())
    });
}

#[test]
fn a_bad_or_missing_signature_is_invalid_signature_and_changes_nothing() {
    let verifier = WebhookVerifier::new("whsec_test");
    let runtime = runtime();
    let body =
        br#"{"organization_id":"org_1","subscription_id":"sub_1","status":"active","plan":"pro"}"#;
    let header = prop_oneof![
        Just(None),
        credential().prop_map(Some),
        // Genuine but stale or early, or signed with another secret.
        (
            prop_oneof![-100_000i64..-301, 301i64..100_000],
            prop::bool::ANY
        )
            .prop_map(|(skew, other_secret)| {
                let secret = if other_secret {
                    "whsec_other"
                } else {
                    "whsec_test"
                };
                let signed_at = at(NOW.checked_add_signed(skew).expect("near NOW"));
                let signed_at = if other_secret { at(NOW) } else { signed_at };
                Some(
                    WebhookVerifier::new(secret)
                        .sign(body, signed_at)
                        .into_bytes(),
                )
            }),
    ];
    check(256, header, |header| {
        let entitlements = entitlements();
        let webhook = BillingWebhook::new(verifier.clone(), entitlements.clone());
        let header = header.map(|bytes| HeaderValue::from_bytes(&bytes).expect("a header value"));
        let answer = runtime.block_on(webhook.handle(header.as_ref(), body));
        let error = answer.err();
        prop_assert_eq!(error.as_ref().map(|e| e.code()), Some("invalid_signature"));
        prop_assert_eq!(error.map(|e| e.status()), Some(StatusCode::UNAUTHORIZED));
        let decision = runtime
            .block_on(entitlements.entitlement("org_1", &EntitlementPolicy::new()))
            .expect("memory store");
        prop_assert_eq!(decision.reason(), EntitlementReason::NoSubscription);
        Ok(())
    });
}

/// The Stripe event types the webhook applies.
const SUBSCRIPTION_EVENTS: [&str; 6] = [
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
];

/// Codes a Stripe event may be refused with, by the defects built into it.
#[derive(Debug, Default)]
struct Defects {
    invalid_request: bool,
    organization_unknown: bool,
}

#[test]
fn signed_stripe_events_are_applied_ignored_or_refused_with_the_right_code() {
    let verifier = StripeVerifier::try_new(["whsec_test", "whsec_old"]).expect("two secrets");
    let runtime = runtime();
    let event_type = prop_oneof![
        3 => prop::sample::select(SUBSCRIPTION_EVENTS.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "invoice.paid", "customer.subscription", "customer.subscription.Created",
            "customer.subscription.pending_update_applied", "",
        ]).prop_map(str::to_owned),
    ];
    let created = prop_oneof![
        4 => (0u64..4_000_000_000).prop_map(|created| (json!(created), true)),
        1 => (i64::MAX as u64 + 1..=u64::MAX).prop_map(|created| (json!(created), false)),
    ];
    let organization = id_field().prop_filter("a string or absent", |(value, _)| {
        value.as_ref().is_none_or(Value::is_string)
    });
    let customer = prop_oneof![Just("cus_known"), Just("cus_other"), Just(" ")];
    let items = prop_oneof![
        4 => (prop::option::of("[a-z]{1,10}|[ ]{1,2}"), "prod_[A-Za-z0-9]{1,10}", prop::option::of(0u64..4_000_000_000))
            .prop_map(|(lookup_key, product, period_end)| {
                let mut price = json!({ "id": "price_1", "product": product });
                if let Some(key) = lookup_key {
                    price["lookup_key"] = json!(key);
                }
                let mut item = json!({ "id": "si_1", "price": price });
                if let Some(end) = period_end {
                    item["current_period_end"] = json!(end);
                }
                (json!([item]), true)
            }),
        1 => Just((json!([]), false)),
    ];
    let strategy = (
        id_field(),
        event_type,
        created,
        id_field(),
        status_field(),
        organization,
        customer,
        items,
    );
    check(512, strategy, |fields| {
        let (event_id, event_type, created, subscription_id, status, organization, customer, items) =
            fields;
        let mut defects = Defects::default();
        let applies = SUBSCRIPTION_EVENTS.contains(&event_type.as_str());
        let mut metadata = serde_json::Map::new();
        let organization_given = matches!(
            &organization.0,
            Some(Value::String(text)) if !text.trim().is_empty()
        );
        if let Some(value) = organization.0 {
            metadata.insert("organization_id".to_owned(), value);
        }
        let mut subscription = json!({
            "object": "subscription",
            "customer": customer,
            "metadata": metadata,
            "items": { "object": "list", "data": items.0 },
        });
        if let Some(id) = subscription_id.0 {
            subscription["id"] = id;
        }
        if let Some(status) = status.0 {
            subscription["status"] = status;
        }
        let mut event = json!({
            "object": "event",
            "type": event_type,
            "created": created.0,
            "data": { "object": subscription },
        });
        if let Some(id) = event_id.0 {
            event["id"] = id;
        }
        defects.invalid_request |= !event_id.1;
        if applies {
            defects.invalid_request |= !subscription_id.1 || !status.1 || !items.1 || !created.1;
            if organization_given {
                defects.invalid_request |= !organization.1;
            } else {
                defects.organization_unknown |= customer != "cus_known";
            }
        }
        let body = serde_json::to_vec(&event).expect("JSON");
        let entitlements = entitlements();
        let webhook = StripeWebhook::new(verifier.clone(), entitlements).customer_organizations(
            |customer: String| async move {
                Ok::<_, StoreError>((customer == "cus_known").then(|| "org_known".to_owned()))
            },
        );
        let signature = HeaderValue::from_str(&verifier.sign(&body, at(NOW))).expect("header");
        let answer = runtime.block_on(webhook.handle(Some(&signature), &body));
        let shown = String::from_utf8_lossy(&body).into_owned();
        match answer {
            Ok(receipt) => {
                prop_assert!(
                    !defects.invalid_request && !defects.organization_unknown,
                    "accepted {} despite {:?}",
                    shown,
                    defects
                );
                prop_assert_eq!(receipt.ignored(), !applies);
                prop_assert_eq!(receipt.applied(), applies);
            }
            Err(error) => {
                let allowed = match error.code() {
                    "invalid_request" => defects.invalid_request,
                    "organization_unknown" => defects.organization_unknown,
                    _ => false,
                };
                prop_assert!(
                    allowed,
                    "refused {} as {} ({:?}): {}",
                    shown,
                    error.code(),
                    defects,
                    error
                );
                let status = if error.code() == "invalid_request" {
                    400
                } else {
                    422
                };
                prop_assert_eq!(error.status().as_u16(), status);
            }
        }
        Ok(())
    });
}
