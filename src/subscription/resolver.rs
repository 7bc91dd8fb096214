//! Which organization a request acts for.

use std::borrow::Cow;

use http::HeaderName;

use crate::rejection::{ErrorCode, Rejection};
use crate::request::RequestHead;
use crate::session::Session;

/// Finds the organization a request acts for; `None` is answered with
/// `organization_missing`.
///
/// Implemented by [`FromSession`] (the default: the `Session` that
/// `SessionRefreshLayer`, placed outside, validated), [`FromHeader`],
/// [`FromExtension`] (an [`OrganizationId`] your own auth middleware put
/// there), and any `Fn(&RequestHead<'_>) -> Option<String>` closure.
pub trait OrganizationResolver: Send + Sync + 'static {
    /// The organization of the request, if it can be told.
    fn organization<'a>(&self, head: &RequestHead<'a>) -> Option<Cow<'a, str>>;

    /// Why [`organization`](Self::organization) found none, as the
    /// rejection to answer (default: `organization_missing`). A resolver
    /// that can tell a client's omission from a wiring mistake answers the
    /// latter with [`ErrorCode::Misconfigured`] and a detail that says how
    /// to fix it, as [`FromSession`] does.
    fn missing(&self, head: &RequestHead<'_>) -> Rejection {
        let _ = head;
        Rejection::new(ErrorCode::OrganizationMissing)
    }
}

impl<F> OrganizationResolver for F
where
    F: Fn(&RequestHead<'_>) -> Option<String> + Send + Sync + 'static,
{
    fn organization<'a>(&self, head: &RequestHead<'a>) -> Option<Cow<'a, str>> {
        self(head).map(Cow::Owned)
    }
}

/// The organization of the request's [`Session`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FromSession;

impl OrganizationResolver for FromSession {
    fn organization<'a>(&self, head: &RequestHead<'a>) -> Option<Cow<'a, str>> {
        head.extensions()
            .get::<Session>()
            .and_then(Session::organization_id)
            .map(Cow::Borrowed)
    }

    /// A session without an organization is `organization_missing`; no
    /// session at all means no `SessionRefreshLayer` ran before this
    /// layer, a wiring mistake: `server_misconfigured` (500), logged at
    /// `error` level, with the fix in the detail.
    fn missing(&self, head: &RequestHead<'_>) -> Rejection {
        if head.extensions().get::<Session>().is_some() {
            return Rejection::new(ErrorCode::OrganizationMissing);
        }
        tracing::error!(path = head.uri().path(), "{MISORDERED}");
        Rejection::new(ErrorCode::Misconfigured).with_detail(MISORDERED)
    }
}

const MISORDERED: &str = "A subscription layer (RequireSubscriptionLayer or EntitlementLayer) \
    takes the organization from the session, but no SessionRefreshLayer ran before it on this \
    route. Put the session layer outside the subscription layer: in axum the last \
    `.route_layer(..)` / `.layer(..)` is the outermost, in tower's ServiceBuilder the first \
    `.layer(..)`. Or give the subscription layer another resolver with `.organization(..)`.";

/// The organization named by a request header (for example
/// `x-organization-id` set by a trusted gateway). Empty, non-UTF-8 and
/// over-long (128 characters by default) values count as missing.
#[derive(Debug, Clone)]
#[must_use]
pub struct FromHeader {
    name: HeaderName,
    max_length: usize,
}

impl FromHeader {
    /// Reads the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self {
            name,
            max_length: 128,
        }
    }

    /// Values longer than `max_length` characters count as missing.
    pub fn max_length(mut self, max_length: usize) -> Self {
        self.max_length = max_length;
        self
    }
}

impl OrganizationResolver for FromHeader {
    fn organization<'a>(&self, head: &RequestHead<'a>) -> Option<Cow<'a, str>> {
        // UTF-8, not only visible ASCII: organization ids may be any text
        // (within the limit, counted in characters).
        head.headers()
            .get(&self.name)
            .and_then(|value| std::str::from_utf8(value.as_bytes()).ok())
            .map(str::trim)
            .filter(|value| {
                !value.is_empty()
                    && (value.len() <= self.max_length
                        || value.chars().nth(self.max_length).is_none())
            })
            .map(Cow::Borrowed)
    }
}

/// The organization your own authentication put into the request
/// extensions; read by [`FromExtension`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrganizationId(pub String);

/// The [`OrganizationId`] in the request extensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct FromExtension;

impl OrganizationResolver for FromExtension {
    fn organization<'a>(&self, head: &RequestHead<'a>) -> Option<Cow<'a, str>> {
        head.extensions()
            .get::<OrganizationId>()
            .map(|id| Cow::Borrowed(id.0.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Request};

    use super::*;

    fn organization(resolver: &FromHeader, value: &[u8]) -> Option<String> {
        let mut request = Request::new(());
        request.headers_mut().insert(
            "x-organization-id",
            HeaderValue::from_bytes(value).expect("a header value"),
        );
        resolver
            .organization(&RequestHead::of(&request))
            .map(Cow::into_owned)
    }

    #[test]
    fn from_header_takes_utf8_and_counts_its_limit_in_characters() {
        let resolver = FromHeader::new(HeaderName::from_static("x-organization-id"));
        assert_eq!(
            organization(&resolver, "  société-1 ".as_bytes()).as_deref(),
            Some("société-1")
        );
        let at_limit = "é".repeat(128); // 256 bytes, 128 characters
        assert_eq!(
            organization(&resolver, at_limit.as_bytes()),
            Some(at_limit.clone())
        );
        let over = "é".repeat(129);
        assert_eq!(organization(&resolver, over.as_bytes()), None);
        assert_eq!(
            organization(&resolver, &[b'o', 0xff, b'g']),
            None,
            "not UTF-8"
        );
        assert_eq!(organization(&resolver, b"   "), None, "blank");
        let short = resolver.max_length(3);
        assert_eq!(
            organization(&short, "ééé".as_bytes()).as_deref(),
            Some("ééé")
        );
        assert_eq!(organization(&short, b"abcd"), None);
    }
}
