//! CORS on the reference server (SPEC §5): the visitor routes answer a
//! browser's preflight for the allowed origins and expose
//! `x-session-expires-at`; operator routes are not cross-origin. Also the
//! headers every rejection carries (`WWW-Authenticate`, `Cache-Control`)
//! and a GET that claims to be gRPC, over real HTTP.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use e2e_support::*;

const SHOP: &str = "https://shop.example";

/// A browser's preflight for `method` on `path` from `origin`, asking to
/// send the widget's two headers.
async fn preflight(server: &Server, path: &str, origin: &str, method: &str) -> Reply {
    send(
        server
            .api
            .request(Method::OPTIONS, path, None)
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header(
                "access-control-request-headers",
                "x-session-id,content-type",
            ),
    )
    .await
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .get(name)
        .map(|value| value.to_str().expect("ASCII header"))
}

fn lists(value: Option<&str>, wanted: &str) -> bool {
    value.is_some_and(|list| {
        list.split(',')
            .any(|item| item.trim().eq_ignore_ascii_case(wanted))
    })
}

#[tokio::test]
async fn a_preflight_from_another_origin_passes_and_the_expiry_is_exposed() {
    let server = serve(&[]).await;
    for (path, method) in [
        ("/contact-sessions", "POST"),
        ("/conversations", "POST"),
        ("/conversations/conv_1/messages", "GET"),
        ("/contact-sessions/current", "DELETE"),
    ] {
        let reply = preflight(&server, path, SHOP, method).await;
        assert!(
            reply.status == 200 || reply.status == 204,
            "{path}: {reply:?}"
        );
        assert_eq!(
            header(&reply, "access-control-allow-origin"),
            Some("*"),
            "{path}"
        );
        let methods = header(&reply, "access-control-allow-methods");
        assert!(lists(methods, method), "{path}: {methods:?}");
        let headers = header(&reply, "access-control-allow-headers");
        assert!(lists(headers, "x-session-id"), "{path}: {headers:?}");
        assert!(lists(headers, "content-type"), "{path}: {headers:?}");
    }

    // The actual cross-origin calls: the widget can read the expiry...
    let token = server.api.start_session().await;
    let reply = send(
        server
            .api
            .request(Method::POST, "/conversations", Some(&token))
            .header("origin", SHOP),
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(header(&reply, "access-control-allow-origin"), Some("*"));
    assert!(lists(
        header(&reply, "access-control-expose-headers"),
        "x-session-expires-at"
    ));
    assert!(reply.session_expires_at().is_some());
    // ...and a rejection's problem body too.
    let reply = send(
        server
            .api
            .request(Method::POST, "/conversations", None)
            .header("origin", SHOP),
    )
    .await;
    reply.assert_problem(401, "session_missing");
    assert_eq!(header(&reply, "access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn only_the_configured_origins_are_allowed() {
    let server = serve(&[
        "--cors-origin",
        SHOP,
        "--cors-origin",
        "http://localhost:8080",
    ])
    .await;
    for origin in [SHOP, "http://localhost:8080"] {
        let reply = preflight(&server, "/conversations", origin, "POST").await;
        assert_eq!(
            header(&reply, "access-control-allow-origin"),
            Some(origin),
            "{reply:?}"
        );
    }
    let reply = preflight(&server, "/conversations", "https://evil.example", "POST").await;
    assert_eq!(
        header(&reply, "access-control-allow-origin"),
        None,
        "{reply:?}"
    );
}

#[tokio::test]
async fn operator_routes_are_not_cross_origin() {
    let server = serve(&[]).await;
    let reply = preflight(&server, "/operator/conversations", SHOP, "GET").await;
    assert_eq!(
        header(&reply, "access-control-allow-origin"),
        None,
        "{reply:?}"
    );
    reply.assert_problem(405, "method_not_allowed");
}

#[tokio::test]
async fn rejections_challenge_and_are_never_cached_even_for_a_get_claiming_grpc() {
    let server = serve(&[]).await;
    let missing = server.api.get("/contact-sessions/current", None).await;
    let unknown = server
        .api
        .get(
            "/contact-sessions/current",
            Some(&SessionToken::generate().expect("randomness").to_string()),
        )
        .await;
    for (reply, code) in [(missing, "session_missing"), (unknown, "session_not_found")] {
        reply.assert_problem(401, code);
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some(r#"Session header="x-session-id""#)
        );
        assert_eq!(header(&reply, "cache-control"), Some("no-store"));
    }
    let token = server.api.start_session().await;
    let conversation = server.api.start_conversation(&token).await;
    let refused = server
        .api
        .operator_json(
            Method::POST,
            &format!("/operator/conversations/{conversation}/enhance"),
            "org_1",
            &json!({ "draft": "hello" }),
        )
        .await;
    refused.assert_problem(403, "subscription_required");
    assert_eq!(header(&refused, "cache-control"), Some("no-store"));
    assert_eq!(header(&refused, "www-authenticate"), None);

    // Claiming gRPC on a GET does not turn a 401 into a 200.
    for content_type in ["application/grpc", "application/grpcfoo"] {
        let reply = send(
            server
                .api
                .request(Method::GET, "/contact-sessions/current", None)
                .header("content-type", content_type),
        )
        .await;
        reply.assert_problem(401, "session_missing");
    }
}
