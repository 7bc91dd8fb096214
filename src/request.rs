//! A borrowed view of a request's head, handed to pluggable behaviour
//! (token sources, activity rules, rejection builders).

use http::{Extensions, HeaderMap, Method, Request, Uri};

/// The head of a request (method, URI, headers, extensions), borrowed.
///
/// Pluggable behaviour sees the request through this view, so it works the
/// same whatever the request's body type is.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// Borrows the head of `request`.
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }

    /// Builds a view from its parts (for example from `http::request::Parts`).
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request headers (gRPC metadata included).
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request extensions.
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }

    /// Whether this is a gRPC call: `content-type` starts with
    /// `application/grpc` but is not gRPC-Web.
    pub fn is_grpc(&self) -> bool {
        is_grpc(self.headers)
    }
}

/// Whether `headers` mark a gRPC call (not gRPC-Web).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .map(|value| {
            // Media types are case-insensitive.
            let starts = |prefix: &[u8]| {
                value
                    .as_bytes()
                    .get(..prefix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
            };
            starts(b"application/grpc") && !starts(b"application/grpc-web")
        })
        .unwrap_or(false)
}
