//! Rejections: every refusal is an `Ok(response)`, as RFC 9457 problem+json
//! for HTTP callers or a trailers-only response for gRPC callers.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::request::RequestHead;

/// Why a request was refused; each has a fixed HTTP status and gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No session token was presented.
    SessionMissing,
    /// The presented token does not have a token's shape.
    SessionInvalid,
    /// No session exists for the token (never created, revoked or purged).
    SessionNotFound,
    /// The session existed but has expired.
    SessionExpired,
    /// No organization could be resolved for the request.
    OrganizationMissing,
    /// The organization holds no entitling subscription.
    SubscriptionRequired,
    /// A store failed or did not answer in time.
    StoreUnavailable,
    /// The layers are wired wrongly for this route (a server bug, such as a
    /// subscription layer that reads the organization from the session
    /// placed outside the session layer). The detail says how to fix it.
    Misconfigured,
}

impl ErrorCode {
    /// The machine-readable code (`session_expired`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionMissing => "session_missing",
            Self::SessionInvalid => "session_invalid",
            Self::SessionNotFound => "session_not_found",
            Self::SessionExpired => "session_expired",
            Self::OrganizationMissing => "organization_missing",
            Self::SubscriptionRequired => "subscription_required",
            Self::StoreUnavailable => "store_unavailable",
            Self::Misconfigured => "server_misconfigured",
        }
    }

    /// The HTTP status a problem+json rejection carries.
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::SessionMissing
            | Self::SessionInvalid
            | Self::SessionNotFound
            | Self::SessionExpired
            | Self::OrganizationMissing => StatusCode::UNAUTHORIZED,
            Self::SubscriptionRequired => StatusCode::FORBIDDEN,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Misconfigured => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code a gRPC rejection carries.
    pub fn grpc_status(self) -> u16 {
        match self {
            Self::SessionMissing
            | Self::SessionInvalid
            | Self::SessionNotFound
            | Self::SessionExpired
            | Self::OrganizationMissing => 16,
            Self::SubscriptionRequired => 7,
            Self::StoreUnavailable => 14,
            Self::Misconfigured => 13,
        }
    }

    /// A short human-readable summary (the problem's `title`).
    pub fn title(self) -> &'static str {
        match self {
            Self::SessionMissing => "Session missing",
            Self::SessionInvalid => "Session invalid",
            Self::SessionNotFound => "Session not found",
            Self::SessionExpired => "Session expired",
            Self::OrganizationMissing => "Organization missing",
            Self::SubscriptionRequired => "Subscription required",
            Self::StoreUnavailable => "Store unavailable",
            Self::Misconfigured => "Server misconfigured",
        }
    }

    fn default_detail(self) -> &'static str {
        match self {
            Self::SessionMissing => "No session token was presented.",
            Self::SessionInvalid => "The presented session token is malformed.",
            Self::SessionNotFound => "No session exists for the presented token.",
            Self::SessionExpired => "The session has expired; start a new one.",
            Self::OrganizationMissing => "No organization could be determined for this request.",
            Self::SubscriptionRequired => {
                "This feature requires an active subscription for the organization."
            }
            Self::StoreUnavailable => {
                "The session or subscription store is unavailable; retry later."
            }
            Self::Misconfigured => "The server's middleware is misconfigured for this route.",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `WWW-Authenticate` challenge of a 401 whose layer did not name one.
pub const DEFAULT_CHALLENGE: HeaderValue = HeaderValue::from_static("Session");

/// A refusal decided by a layer, before it becomes a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    code: ErrorCode,
    detail: Cow<'static, str>,
    challenge: Option<HeaderValue>,
}

impl Rejection {
    /// A rejection with the code's default detail.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            detail: Cow::Borrowed(code.default_detail()),
            challenge: None,
        }
    }

    /// Replaces the human-readable detail.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = detail.into();
        self
    }

    /// Sets the `WWW-Authenticate` challenge a 401 answer carries (the
    /// session layer sets its token source's, such as `Bearer` or
    /// `Session header="x-session-id"`).
    #[must_use]
    pub fn with_challenge(mut self, challenge: HeaderValue) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// The challenge set with [`with_challenge`](Self::with_challenge).
    pub fn challenge(&self) -> Option<&HeaderValue> {
        self.challenge.as_ref()
    }

    /// The machine-readable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The human-readable detail.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// Turns a [`Rejection`] into the response the client gets.
///
/// [`DefaultResponder`] is the default; any
/// `Fn(&Rejection, &RequestHead<'_>) -> Response<Bytes>` closure works too.
pub trait RejectionResponder: Send + Sync + 'static {
    /// Builds the response for `rejection` of the request `head`.
    fn respond(&self, rejection: &Rejection, head: &RequestHead<'_>) -> Response<Bytes>;
}

impl<F> RejectionResponder for F
where
    F: Fn(&Rejection, &RequestHead<'_>) -> Response<Bytes> + Send + Sync + 'static,
{
    fn respond(&self, rejection: &Rejection, head: &RequestHead<'_>) -> Response<Bytes> {
        self(rejection, head)
    }
}

impl<T: RejectionResponder + ?Sized> RejectionResponder for Arc<T> {
    fn respond(&self, rejection: &Rejection, head: &RequestHead<'_>) -> Response<Bytes> {
        (**self).respond(rejection, head)
    }
}

/// The default rejection builder: gRPC trailers-only responses for gRPC
/// callers ([`grpc_response`]), RFC 9457 problem+json for everyone else
/// ([`problem_response`]: `WWW-Authenticate` on 401s), `Cache-Control:
/// no-store` on both; `Retry-After` on 503.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct DefaultResponder {
    retry_after: Duration,
}

impl DefaultResponder {
    /// A responder whose `store_unavailable` answers say `Retry-After: 1`.
    pub fn new() -> Self {
        Self {
            retry_after: Duration::from_secs(1),
        }
    }

    /// Sets the `Retry-After` of `store_unavailable` answers (whole seconds,
    /// at least 1).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }
}

impl Default for DefaultResponder {
    fn default() -> Self {
        Self::new()
    }
}

impl RejectionResponder for DefaultResponder {
    fn respond(&self, rejection: &Rejection, head: &RequestHead<'_>) -> Response<Bytes> {
        let mut response = if head.is_grpc() {
            grpc_response(rejection)
        } else {
            problem_response(rejection)
        };
        if rejection.code() == ErrorCode::StoreUnavailable && !head.is_grpc() {
            let seconds = self.retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// An RFC 9457 problem+json response for `rejection`, with
/// `Cache-Control: no-store` and, on a 401, `WWW-Authenticate`: the
/// rejection's [challenge](Rejection::challenge), else
/// [`DEFAULT_CHALLENGE`] (RFC 9110 asks every 401 for one).
///
/// ```
/// use tower_saas_guard::{problem_response, ErrorCode, Rejection};
///
/// let response = problem_response(&Rejection::new(ErrorCode::SessionExpired));
/// assert_eq!(response.status(), 401);
/// assert_eq!(response.headers()["www-authenticate"], "Session");
/// assert_eq!(response.headers()["cache-control"], "no-store");
/// ```
pub fn problem_response(rejection: &Rejection) -> Response<Bytes> {
    let status = rejection.code().http_status();
    let mut response = problem_json(
        status,
        rejection.code().as_str(),
        rejection.code().title(),
        rejection.detail(),
    );
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        let challenge = rejection.challenge().cloned().unwrap_or(DEFAULT_CHALLENGE);
        headers.insert(WWW_AUTHENTICATE, challenge);
    }
    response
}

/// An RFC 9457 `application/problem+json` response with a `code` member.
///
/// `type` is a stable URN built from the code
/// (`urn:tower-saas-guard:problem:<code>`), so clients can match on either.
///
/// ```
/// use http::StatusCode;
/// use tower_saas_guard::problem_json;
///
/// let response = problem_json(StatusCode::NOT_FOUND, "not_found", "Not found", "No such route.");
/// assert_eq!(response.status(), 404);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// let body: serde_json::Value = serde_json::from_slice(response.body())?;
/// assert_eq!(body["code"], "not_found");
/// assert_eq!(body["status"], 404);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn problem_json(status: StatusCode, code: &str, title: &str, detail: &str) -> Response<Bytes> {
    let body = serde_json::json!({
        "type": format!("urn:tower-saas-guard:problem:{code}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    });
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// A gRPC trailers-only response for `rejection`: HTTP 200,
/// `content-type: application/grpc`, `grpc-status`, a percent-encoded
/// `grpc-message` (`<code>: <detail>`) and `Cache-Control: no-store`.
pub fn grpc_response(rejection: &Rejection) -> Response<Bytes> {
    let message = format!("{}: {}", rejection.code().as_str(), rejection.detail());
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "grpc-status",
        HeaderValue::from(rejection.code().grpc_status()),
    );
    headers.insert(
        "grpc-message",
        HeaderValue::from_str(&percent_encode_grpc(&message))
            .expect("percent-encoded text is visible ASCII"),
    );
    response
}

/// Percent-encodes a gRPC message as the gRPC HTTP/2 spec asks: every byte
/// outside printable ASCII, and `%` itself.
fn percent_encode_grpc(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn respond(code: ErrorCode, content_type: Option<&str>) -> Response<Bytes> {
        let mut request = Request::new(());
        *request.method_mut() = http::Method::POST;
        if let Some(content_type) = content_type {
            request.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_str(content_type).expect("valid header"),
            );
        }
        DefaultResponder::new().respond(&Rejection::new(code), &RequestHead::of(&request))
    }

    #[test]
    fn every_code_maps_to_its_http_status_and_problem_body() {
        let table = [
            (ErrorCode::SessionMissing, 401, 16),
            (ErrorCode::SessionInvalid, 401, 16),
            (ErrorCode::SessionNotFound, 401, 16),
            (ErrorCode::SessionExpired, 401, 16),
            (ErrorCode::OrganizationMissing, 401, 16),
            (ErrorCode::SubscriptionRequired, 403, 7),
            (ErrorCode::StoreUnavailable, 503, 14),
            (ErrorCode::Misconfigured, 500, 13),
        ];
        for (code, http, grpc) in table {
            let response = respond(code, Some("application/json"));
            assert_eq!(response.status().as_u16(), http, "{code}");
            assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
            let body: serde_json::Value =
                serde_json::from_slice(response.body()).expect("problem body is JSON");
            assert_eq!(body["code"], code.as_str());
            assert_eq!(body["status"], http);
            assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
            assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()));
            assert!(body["type"]
                .as_str()
                .is_some_and(|t| t.ends_with(code.as_str())));
            assert_eq!(
                response.headers().contains_key(RETRY_AFTER),
                code == ErrorCode::StoreUnavailable
            );
            assert_eq!(response.headers()[CACHE_CONTROL], "no-store", "{code}");
            assert_eq!(
                response.headers().get(WWW_AUTHENTICATE),
                (http == 401).then_some(&DEFAULT_CHALLENGE),
                "{code}"
            );

            let response = respond(code, Some("application/grpc+proto"));
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
            assert_eq!(response.headers()["grpc-status"], grpc.to_string().as_str());
            assert_eq!(response.headers()[CACHE_CONTROL], "no-store", "{code}");
            assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
            assert!(!response.headers().contains_key(RETRY_AFTER));
            assert!(response.body().is_empty());
        }
    }

    #[test]
    fn grpc_web_gets_problem_json_not_trailers_only() {
        let response = respond(
            ErrorCode::SessionMissing,
            Some("application/grpc-web+proto"),
        );
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    }

    #[test]
    fn a_401_carries_the_rejections_challenge() {
        let rejection = Rejection::new(ErrorCode::SessionNotFound)
            .with_challenge(HeaderValue::from_static("Bearer error=\"invalid_token\""));
        let response = problem_response(&rejection);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        // Only 401s challenge, whatever the rejection carries.
        let forbidden = Rejection::new(ErrorCode::SubscriptionRequired)
            .with_challenge(HeaderValue::from_static("Bearer"));
        assert!(!problem_response(&forbidden)
            .headers()
            .contains_key(WWW_AUTHENTICATE));
    }

    #[test]
    fn a_get_claiming_grpc_gets_an_http_401_not_a_200() {
        for content_type in ["application/grpc", "application/grpcfoo"] {
            let mut request = Request::new(());
            request.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_str(content_type).expect("valid header"),
            );
            let response = DefaultResponder::new().respond(
                &Rejection::new(ErrorCode::SessionMissing),
                &RequestHead::of(&request),
            );
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{content_type}"
            );
            assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        let rejection = Rejection::new(ErrorCode::SessionExpired).with_detail("100% expirée\n");
        let response = grpc_response(&rejection);
        assert_eq!(
            response.headers()["grpc-message"],
            "session_expired: 100%25 expir%C3%A9e%0A"
        );
    }
}
