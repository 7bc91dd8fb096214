//! Where a request carries its session token.

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE, SET_COOKIE};

use super::token::{MalformedToken, SessionToken};
use crate::rejection::{ErrorCode, DEFAULT_CHALLENGE};
use crate::request::RequestHead;

/// Why no token could be taken from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The request carries no token (`session_missing`).
    #[error("no session token was presented")]
    Missing,
    /// The request carries something that is not a token (`session_invalid`).
    #[error("the presented session token is malformed")]
    Malformed,
}

impl From<MalformedToken> for TokenError {
    fn from(_: MalformedToken) -> Self {
        Self::Malformed
    }
}

/// Takes the session token from a request.
///
/// Implemented by [`HeaderSource`] (the default, `x-session-id`),
/// [`BearerSource`], [`CookieSource`], [`FallbackSource`] (one, else
/// another), and any
/// `Fn(&RequestHead<'_>) -> Result<SessionToken, TokenError>` closure.
pub trait TokenSource: Send + Sync + 'static {
    /// The token the request presents.
    fn token(&self, head: &RequestHead<'_>) -> Result<SessionToken, TokenError>;

    /// A header to add to the response when the session was renewed (a
    /// cookie source re-sends its cookie with the new `Max-Age`).
    fn on_renewal(
        &self,
        token: &SessionToken,
        max_age: Duration,
    ) -> Option<(HeaderName, HeaderValue)> {
        let _ = (token, max_age);
        None
    }

    /// The `WWW-Authenticate` challenge of a 401 with `code`: it names where
    /// this source reads the token (RFC 9110 asks every 401 for one).
    /// Default: `Session`.
    fn challenge(&self, code: ErrorCode) -> HeaderValue {
        let _ = code;
        DEFAULT_CHALLENGE
    }
}

impl<F> TokenSource for F
where
    F: Fn(&RequestHead<'_>) -> Result<SessionToken, TokenError> + Send + Sync + 'static,
{
    fn token(&self, head: &RequestHead<'_>) -> Result<SessionToken, TokenError> {
        self(head)
    }
}

/// Reads the token from a header (default `x-session-id`); works for gRPC
/// metadata too. When the header appears several times, the first counts.
/// Its 401s challenge with `Session header="<name>"`.
#[derive(Debug, Clone)]
pub struct HeaderSource {
    name: HeaderName,
    challenge: HeaderValue,
}

impl HeaderSource {
    /// Reads the token from the header `name`.
    pub fn new(name: HeaderName) -> Self {
        let challenge = HeaderValue::from_str(&format!("Session header=\"{name}\""))
            .expect("a header name is a valid quoted string");
        Self { name, challenge }
    }
}

impl Default for HeaderSource {
    fn default() -> Self {
        Self::new(HeaderName::from_static("x-session-id"))
    }
}

impl TokenSource for HeaderSource {
    fn token(&self, head: &RequestHead<'_>) -> Result<SessionToken, TokenError> {
        let value = head.headers().get(&self.name).ok_or(TokenError::Missing)?;
        Ok(SessionToken::parse_bytes(value.as_bytes())?)
    }

    fn challenge(&self, _: ErrorCode) -> HeaderValue {
        self.challenge.clone()
    }
}

/// Reads the token from `Authorization: Bearer <token>`.
///
/// A missing `Authorization` header is `Missing`; any other scheme, or a
/// bearer credential that is not a token, is `Malformed`. Its 401s
/// challenge as RFC 6750 says: `Bearer` without a token,
/// `Bearer error="invalid_token"` for a token refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct BearerSource;

impl TokenSource for BearerSource {
    fn token(&self, head: &RequestHead<'_>) -> Result<SessionToken, TokenError> {
        let value = head
            .headers()
            .get(AUTHORIZATION)
            .ok_or(TokenError::Missing)?
            .as_bytes();
        let (scheme, credential) = match value.iter().position(|&b| b == b' ') {
            Some(space) => (&value[..space], &value[space + 1..]),
            None => return Err(TokenError::Malformed),
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err(TokenError::Malformed);
        }
        Ok(SessionToken::parse_bytes(trim_spaces(credential))?)
    }

    fn challenge(&self, code: ErrorCode) -> HeaderValue {
        match code {
            ErrorCode::SessionMissing => HeaderValue::from_static("Bearer"),
            _ => HeaderValue::from_static("Bearer error=\"invalid_token\""),
        }
    }
}

/// Reads the token from `primary`, and from `fallback` when the request
/// carries none there: for clients that send either header, such as gRPC
/// clients that put the token in `x-session-id` or in `authorization:
/// Bearer`.
///
/// A malformed token in `primary` is `Malformed`, whatever `fallback`
/// holds (a client that sent a broken token is told so, not judged by
/// another header). After a renewal, `primary`'s header is re-sent if it
/// has one, else `fallback`'s.
///
/// ```
/// use tower_saas_guard::session::{
///     BearerSource, FallbackSource, HeaderSource, SessionToken, TokenError, TokenSource,
/// };
/// use tower_saas_guard::RequestHead;
///
/// let either = FallbackSource::new(HeaderSource::default(), BearerSource);
/// let token = SessionToken::generate()?;
/// let bearer = http::Request::post("/support.v1.Support/SendMessage")
///     .header("authorization", format!("Bearer {token}"))
///     .body(())?;
/// assert_eq!(either.token(&RequestHead::of(&bearer))?, token);
///
/// let broken = http::Request::post("/support.v1.Support/SendMessage")
///     .header("x-session-id", "not a token")
///     .header("authorization", format!("Bearer {token}"))
///     .body(())?;
/// assert_eq!(either.token(&RequestHead::of(&broken)), Err(TokenError::Malformed));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct FallbackSource<Primary, Fallback> {
    primary: Primary,
    fallback: Fallback,
}

impl<Primary, Fallback> FallbackSource<Primary, Fallback> {
    /// Reads `primary` first, then `fallback`.
    pub fn new(primary: Primary, fallback: Fallback) -> Self {
        Self { primary, fallback }
    }
}

impl<Primary, Fallback> TokenSource for FallbackSource<Primary, Fallback>
where
    Primary: TokenSource,
    Fallback: TokenSource,
{
    fn token(&self, head: &RequestHead<'_>) -> Result<SessionToken, TokenError> {
        match self.primary.token(head) {
            Err(TokenError::Missing) => self.fallback.token(head),
            found => found,
        }
    }

    fn on_renewal(
        &self,
        token: &SessionToken,
        max_age: Duration,
    ) -> Option<(HeaderName, HeaderValue)> {
        self.primary
            .on_renewal(token, max_age)
            .or_else(|| self.fallback.on_renewal(token, max_age))
    }
}

fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax` (the default).
    Lax,
    /// `SameSite=None` (requires `Secure`).
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::Lax => "Lax",
            Self::None => "None",
        }
    }
}

/// Reads the token from a cookie and re-sends the cookie, with the new
/// `Max-Age`, whenever the session is renewed.
///
/// [`CookieSource::default()`] reads `__Host-session`: the `__Host-`
/// prefix makes browsers accept the cookie only from this very host, with
/// `Secure`, `Path=/` and no `Domain`, so a sibling subdomain cannot plant
/// a session cookie of its choosing (session fixation). Prefer a
/// `__Host-` name with [`new`](Self::new) too. Attributes default to
/// `Path=/`, `HttpOnly`, `Secure`, `SameSite=Lax`, no `Domain`.
///
/// A request that carries the cookie more than once is `session_invalid`:
/// browsers send every cookie whose domain and path match, so a duplicate
/// means another site or path planted one. Its 401s challenge with
/// `Session cookie="<name>"`; [`clear_cookie`](Self::clear_cookie) is the
/// logout's `Set-Cookie`.
///
/// ```
/// use std::time::Duration;
/// use tower_saas_guard::session::{CookieSource, SessionToken};
///
/// let cookies = CookieSource::new("sid");
/// let token = SessionToken::generate()?;
/// let header = cookies.set_cookie(&token, Duration::from_secs(3600));
/// assert_eq!(
///     header.to_str()?,
///     format!("sid={token}; Max-Age=3600; Path=/; HttpOnly; Secure; SameSite=Lax")
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct CookieSource {
    name: String,
    challenge: HeaderValue,
    path: String,
    domain: Option<String>,
    secure: bool,
    same_site: SameSite,
}

/// The cookie name [`CookieSource::default()`] reads.
pub const DEFAULT_COOKIE_NAME: &str = "__Host-session";

/// The prefix that binds a cookie to its host (RFC 6265bis).
const HOST_PREFIX: &str = "__Host-";

impl Default for CookieSource {
    fn default() -> Self {
        Self::new(DEFAULT_COOKIE_NAME)
    }
}

impl CookieSource {
    /// Reads the cookie `name`.
    ///
    /// # Panics
    /// When `name` is not a valid cookie name (empty, or holding separators
    /// or controls): a programming error, caught at start-up.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)),
            "cookie name {name:?} is not a valid cookie token"
        );
        let challenge = HeaderValue::from_str(&format!("Session cookie=\"{name}\""))
            .expect("a cookie name is a valid quoted string");
        Self {
            name,
            challenge,
            path: "/".to_owned(),
            domain: None,
            secure: true,
            same_site: SameSite::Lax,
        }
    }

    /// Sets the cookie's `Path` (default `/`).
    ///
    /// # Panics
    /// When `path` holds `;`, `,`, whitespace or control characters (it
    /// could not be sent, or would inject attributes): a programming error.
    ///
    /// A `__Host-` cookie must have `Path=/`: any other path panics.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = cookie_attribute("path", path.into());
        assert!(
            !self.host_bound() || self.path == "/",
            "a {HOST_PREFIX} cookie must have Path=/ (browsers refuse it otherwise)"
        );
        self
    }

    fn host_bound(&self) -> bool {
        self.name.starts_with(HOST_PREFIX)
    }

    /// Sets the cookie's `Domain` (default: none, host-only).
    ///
    /// # Panics
    /// As [`path`](Self::path), for the domain; and for a `__Host-` cookie,
    /// which must not have a `Domain`.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        assert!(
            !self.host_bound(),
            "a {HOST_PREFIX} cookie cannot have a Domain; use another name to share it with subdomains"
        );
        self.domain = Some(cookie_attribute("domain", domain.into()));
        self
    }

    /// Turns `Secure` off, for plain-HTTP local development only.
    ///
    /// # Panics
    /// For a `__Host-` cookie, which browsers accept only with `Secure`
    /// (they do over `http://localhost`, so local development keeps it).
    pub fn insecure(mut self) -> Self {
        assert!(
            !self.host_bound(),
            "a {HOST_PREFIX} cookie must be Secure; browsers send Secure cookies to http://localhost"
        );
        self.secure = false;
        self
    }

    /// Sets `SameSite` (default `Lax`).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// The `Set-Cookie` value that hands `token` to a browser for `max_age`
    /// (for the response that creates a session).
    pub fn set_cookie(&self, token: &SessionToken, max_age: Duration) -> HeaderValue {
        self.cookie(&token.to_string(), max_age)
    }

    /// The `Set-Cookie` value that removes the cookie from the browser
    /// (empty, `Max-Age=0`, same `Path` and `Domain`), for the response
    /// that logs out; revoke the session itself with
    /// [`SessionHandle::revoke_id`](super::SessionHandle::revoke_id).
    ///
    /// ```
    /// use tower_saas_guard::session::CookieSource;
    ///
    /// let header = CookieSource::new("sid").clear_cookie();
    /// assert_eq!(header, "sid=; Max-Age=0; Path=/; HttpOnly; Secure; SameSite=Lax");
    /// ```
    pub fn clear_cookie(&self) -> HeaderValue {
        self.cookie("", Duration::ZERO)
    }

    fn cookie(&self, value: &str, max_age: Duration) -> HeaderValue {
        let mut cookie = format!(
            "{}={}; Max-Age={}; Path={}",
            self.name,
            value,
            max_age.as_secs(),
            self.path
        );
        if let Some(domain) = &self.domain {
            cookie.push_str("; Domain=");
            cookie.push_str(domain);
        }
        cookie.push_str("; HttpOnly");
        if self.secure {
            cookie.push_str("; Secure");
        }
        cookie.push_str("; SameSite=");
        cookie.push_str(self.same_site.as_str());
        HeaderValue::from_str(&cookie)
            .expect("name, path and domain were checked; token and numbers are header-safe")
    }
}

fn cookie_attribute(what: &str, value: String) -> String {
    assert!(
        value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b','),
        "cookie {what} {value:?} holds characters a Set-Cookie attribute cannot carry"
    );
    value
}

impl fmt::Debug for CookieSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieSource")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("secure", &self.secure)
            .field("same_site", &self.same_site)
            .finish()
    }
}

impl TokenSource for CookieSource {
    fn token(&self, head: &RequestHead<'_>) -> Result<SessionToken, TokenError> {
        // Exactly one cookie of this name: a second one was planted by a
        // sibling subdomain or for another path, and which one the client
        // means cannot be told, so neither is trusted.
        let mut found: Option<&[u8]> = None;
        for header in head.headers().get_all(COOKIE) {
            for pair in header.as_bytes().split(|&b| b == b';') {
                let pair = trim_spaces(pair);
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if &pair[..eq] == self.name.as_bytes() {
                    if found.is_some() {
                        return Err(TokenError::Malformed);
                    }
                    found = Some(&pair[eq + 1..]);
                }
            }
        }
        let mut value = found.ok_or(TokenError::Missing)?;
        if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
            value = &value[1..value.len() - 1];
        }
        Ok(SessionToken::parse_bytes(value)?)
    }

    fn on_renewal(
        &self,
        token: &SessionToken,
        max_age: Duration,
    ) -> Option<(HeaderName, HeaderValue)> {
        Some((SET_COOKIE, self.set_cookie(token, max_age)))
    }

    fn challenge(&self, _: ErrorCode) -> HeaderValue {
        self.challenge.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn token_from(
        source: &dyn TokenSource,
        name: &str,
        value: &str,
    ) -> Result<SessionToken, TokenError> {
        let request = Request::builder()
            .header(name, value)
            .body(())
            .expect("valid request");
        source.token(&RequestHead::of(&request))
    }

    #[test]
    fn header_source_reads_the_named_header() {
        let token = SessionToken::generate().expect("os randomness");
        let source = HeaderSource::default();
        assert_eq!(
            token_from(&source, "x-session-id", &token.to_string()),
            Ok(token)
        );
        assert_eq!(
            token_from(&source, "x-other", "x"),
            Err(TokenError::Missing)
        );
        assert_eq!(
            token_from(&source, "x-session-id", "nope"),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn bearer_source_needs_the_bearer_scheme() {
        let token = SessionToken::generate().expect("os randomness");
        let source = BearerSource;
        assert_eq!(
            token_from(&source, "authorization", &format!("Bearer {token}")),
            Ok(token)
        );
        assert_eq!(
            token_from(&source, "authorization", &format!("bearer  {token}")),
            Ok(token)
        );
        assert_eq!(
            token_from(&source, "authorization", &format!("Basic {token}")),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            token_from(&source, "authorization", "Bearer"),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            token_from(&source, "x-session-id", &token.to_string()),
            Err(TokenError::Missing)
        );
    }

    #[test]
    fn fallback_source_reads_the_fallback_only_when_the_primary_is_missing() {
        let (first, second) = (
            SessionToken::generate().expect("os randomness"),
            SessionToken::generate().expect("os randomness"),
        );
        let source = FallbackSource::new(HeaderSource::default(), BearerSource);
        let request = |headers: &[(&str, String)]| {
            let mut builder = Request::builder();
            for (name, value) in headers {
                builder = builder.header(*name, value);
            }
            let request = builder.body(()).expect("valid request");
            source.token(&RequestHead::of(&request))
        };
        let bearer = ("authorization", format!("Bearer {second}"));
        assert_eq!(request(&[("x-session-id", first.to_string())]), Ok(first));
        assert_eq!(request(std::slice::from_ref(&bearer)), Ok(second));
        // Both present: the primary wins.
        assert_eq!(
            request(&[("x-session-id", first.to_string()), bearer.clone()]),
            Ok(first)
        );
        // A broken primary is not rescued by the fallback.
        assert_eq!(
            request(&[("x-session-id", "nope".to_owned()), bearer]),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            request(&[("authorization", "Basic x".to_owned())]),
            Err(TokenError::Malformed)
        );
        assert_eq!(request(&[]), Err(TokenError::Missing));
    }

    #[test]
    fn fallback_source_re_sends_the_cookie_of_either_side() {
        let token = SessionToken::generate().expect("os randomness");
        let max_age = Duration::from_secs(60);
        let cookie_first = FallbackSource::new(CookieSource::new("sid"), HeaderSource::default());
        let cookie_second = FallbackSource::new(HeaderSource::default(), CookieSource::new("sid"));
        let headers_only = FallbackSource::new(HeaderSource::default(), BearerSource);
        for source in [&cookie_first as &dyn TokenSource, &cookie_second] {
            let (name, value) = source
                .on_renewal(&token, max_age)
                .expect("the cookie is re-sent");
            assert_eq!(name, SET_COOKIE);
            assert!(value.to_str().expect("ASCII").starts_with("sid="));
        }
        assert!(headers_only.on_renewal(&token, max_age).is_none());
    }

    #[test]
    fn cookie_source_finds_its_cookie_among_others() {
        let token = SessionToken::generate().expect("os randomness");
        let source = CookieSource::new("sid");
        assert_eq!(
            token_from(&source, "cookie", &format!("a=1; sid={token}; b=2")),
            Ok(token)
        );
        assert_eq!(
            token_from(&source, "cookie", &format!("sid=\"{token}\"")),
            Ok(token)
        );
        assert_eq!(
            token_from(&source, "cookie", "a=1; sidx=2"),
            Err(TokenError::Missing)
        );
        assert_eq!(
            token_from(&source, "cookie", "sid=garbage"),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn cookie_is_resent_with_secure_defaults_on_renewal() {
        let token = SessionToken::generate().expect("os randomness");
        let (name, value) = CookieSource::new("sid")
            .on_renewal(&token, Duration::from_secs(86_400))
            .expect("cookie source re-sends its cookie");
        assert_eq!(name, SET_COOKIE);
        assert_eq!(
            value.to_str().expect("ascii"),
            format!("sid={token}; Max-Age=86400; Path=/; HttpOnly; Secure; SameSite=Lax")
        );
        let value = CookieSource::new("sid")
            .insecure()
            .same_site(SameSite::Strict)
            .domain("example.com")
            .path("/app")
            .set_cookie(&token, Duration::from_secs(5));
        assert_eq!(
            value.to_str().expect("ascii"),
            format!(
                "sid={token}; Max-Age=5; Path=/app; Domain=example.com; HttpOnly; SameSite=Strict"
            )
        );
    }

    #[test]
    fn a_duplicate_cookie_is_malformed_whichever_comes_first() {
        let mine = SessionToken::generate().expect("os randomness");
        let planted = SessionToken::generate().expect("os randomness");
        let source = CookieSource::default();
        let cookie = |value: String| {
            let request = Request::builder()
                .header("cookie", value)
                .body(())
                .expect("valid request");
            source.token(&RequestHead::of(&request))
        };
        assert_eq!(cookie(format!("__Host-session={mine}")), Ok(mine));
        for header in [
            format!("__Host-session={mine}; __Host-session={planted}"),
            format!("__Host-session={planted}; a=1; __Host-session={mine}"),
            format!("__Host-session=junk; __Host-session={mine}"),
        ] {
            assert_eq!(
                cookie(header.clone()),
                Err(TokenError::Malformed),
                "{header}"
            );
        }
        // Split over two Cookie headers (HTTP/2 sends one per cookie).
        let request = Request::builder()
            .header("cookie", format!("__Host-session={mine}"))
            .header("cookie", format!("__Host-session={planted}"))
            .body(())
            .expect("valid request");
        assert_eq!(
            source.token(&RequestHead::of(&request)),
            Err(TokenError::Malformed)
        );
        // Another name is not this cookie, nor is the unprefixed one.
        assert_eq!(
            cookie(format!("session={planted}; __Host-session={mine}")),
            Ok(mine)
        );
    }

    #[test]
    fn the_default_cookie_is_host_bound() {
        let token = SessionToken::generate().expect("os randomness");
        assert_eq!(
            CookieSource::default().set_cookie(&token, Duration::from_secs(60)),
            format!("__Host-session={token}; Max-Age=60; Path=/; HttpOnly; Secure; SameSite=Lax")
                .as_str()
        );
        for (what, configure) in [
            (
                "domain",
                (|c| c.domain("example.com")) as fn(CookieSource) -> CookieSource,
            ),
            ("path", |c| c.path("/app")),
            ("insecure", |c| c.insecure()),
        ] {
            let refused = std::panic::catch_unwind(|| configure(CookieSource::default()));
            assert!(refused.is_err(), "a __Host- cookie refuses {what}");
        }
        // Path=/ stays allowed.
        let _ = CookieSource::default().path("/");
    }
}
