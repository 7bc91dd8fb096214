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

    /// Whether this is a gRPC call (SPEC §6): a `POST` whose `content-type`
    /// is `application/grpc`, `application/grpc+<subtype>` or
    /// `application/grpc;<parameters>` (case-insensitive). Anything else,
    /// gRPC-Web and `application/grpcfoo` included, gets HTTP answers, so
    /// a client cannot turn a 401 into a `200 OK` by claiming gRPC.
    pub fn is_grpc(&self) -> bool {
        is_grpc(self.method, self.headers)
    }
}

/// Whether a request with `method` and `headers` is a gRPC call.
fn is_grpc(method: &Method, headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    if method != Method::POST {
        return false;
    }
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    match value.get(..GRPC.len()) {
        Some(head) if head.eq_ignore_ascii_case(GRPC) => {
            matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request};

    use super::RequestHead;

    fn grpc(method: Method, content_type: Option<&str>) -> bool {
        let mut request = Request::builder().method(method);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request.body(()).expect("a valid request");
        RequestHead::of(&request).is_grpc()
    }

    #[test]
    fn only_a_post_with_a_grpc_content_type_is_grpc() {
        for content_type in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "application/grpc;charset=utf-8",
            "Application/GRPC+proto",
        ] {
            assert!(grpc(Method::POST, Some(content_type)), "{content_type}");
            for method in [Method::GET, Method::PUT, Method::DELETE, Method::OPTIONS] {
                assert!(
                    !grpc(method.clone(), Some(content_type)),
                    "{method} {content_type}"
                );
            }
        }
        for content_type in [
            "application/grpcfoo",
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/json",
            "application/gr",
            "",
        ] {
            assert!(!grpc(Method::POST, Some(content_type)), "{content_type:?}");
        }
        assert!(!grpc(Method::POST, None));
    }
}
