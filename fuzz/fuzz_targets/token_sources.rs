//! The header, bearer and cookie token sources over a request whose
//! `x-session-id`, `Authorization` and `Cookie` headers carry the fuzz input
//! (split at `\n` into several header lines, as HTTP/2 sends cookies), and
//! the gRPC test on its `content-type`.
//!
//! Besides never panicking: a token a source returns is written, as is, in
//! the header it reads; a missing header is `Missing`, never `Malformed`;
//! and a `GET` is never gRPC.
#![no_main]

use http::{HeaderValue, Method, Request};
use libfuzzer_sys::fuzz_target;
use tower_saas_guard::session::{
    BearerSource, CookieSource, HeaderSource, SessionToken, TokenError, TokenSource,
};
use tower_saas_guard::{ErrorCode, RequestHead};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn check(source: &dyn TokenSource, head: &RequestHead<'_>, lines: &[&[u8]], prefix: &[u8]) {
    let answer = source.token(head);
    match answer {
        Ok(token) => {
            let mut needle = prefix.to_vec();
            needle.extend_from_slice(token.to_string().as_bytes());
            let found = lines.iter().any(|line| {
                contains(line, &needle)
                    || contains(
                        line,
                        &[&prefix[..], b"\"", token.to_string().as_bytes()].concat(),
                    )
            });
            assert!(found, "a source returned a token its header does not carry");
            let (_, cookie) = source
                .on_renewal(&token, std::time::Duration::from_secs(60))
                .unwrap_or((http::header::SET_COOKIE, HeaderValue::from_static("")));
            assert!(cookie.to_str().is_ok(), "a Set-Cookie is ASCII");
        }
        Err(TokenError::Missing) => {}
        Err(TokenError::Malformed) => assert!(!lines.is_empty(), "malformed without a header"),
        Err(other) => panic!("unexpected token error {other:?}"),
    }
    let _ = source.challenge(ErrorCode::SessionMissing);
    let _ = source.challenge(ErrorCode::SessionInvalid);
}

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data
        .split(|&byte| byte == b'\n')
        .filter(|line| HeaderValue::from_bytes(line).is_ok())
        .collect();
    let mut builder = Request::builder().method(Method::POST);
    for line in &lines {
        builder = builder
            .header("x-session-id", *line)
            .header("authorization", *line)
            .header("cookie", *line)
            .header("content-type", *line);
    }
    let request = builder
        .body(())
        .expect("every line is a valid header value");
    let head = RequestHead::of(&request);

    // The header source reads the first line exactly: its answer is the
    // shape check's.
    let from_header = HeaderSource::default().token(&head);
    match lines.first() {
        None => assert_eq!(from_header, Err(TokenError::Missing)),
        Some(first) => assert_eq!(
            from_header,
            SessionToken::parse_bytes(first).map_err(TokenError::from)
        ),
    }
    check(&HeaderSource::default(), &head, &lines, b"");
    check(&BearerSource, &head, &lines, b" ");
    if let Ok(token) = BearerSource.token(&head) {
        let first = lines[0];
        assert!(first.len() > 7 && first[..7].eq_ignore_ascii_case(b"bearer "));
        let _ = token;
    }
    check(&CookieSource::default(), &head, &lines, b"__Host-session=");
    check(&CookieSource::new("sid"), &head, &lines, b"sid=");

    let grpc = head.is_grpc();
    if grpc {
        let first = lines[0];
        assert!(first.len() >= 16 && first[..16].eq_ignore_ascii_case(b"application/grpc"));
    }
    let mut get = Request::new(());
    *get.headers_mut() = request.headers().clone();
    assert!(!RequestHead::of(&get).is_grpc(), "a GET is never gRPC");
});
