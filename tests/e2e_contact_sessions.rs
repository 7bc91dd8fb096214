//! Session management end to end: the visitor's logout, and the operator's
//! list of the organization's visitor sessions, revoking one and revoking
//! all. In memory and on SQLite (the app's store; see `backends.rs` for
//! where sessions live).
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use e2e_support::*;

#[tokio::test]
async fn logout_answers_204_without_expiry_and_the_token_is_then_not_found() {
    for server in [serve(&[]).await, serve_sqlite(&[]).await] {
        let api = &server.api;
        let token = api.start_session().await;
        let other = api.start_session().await;
        let id = api.start_conversation(&token).await;

        let reply = api.logout(Some(&token)).await;
        assert_eq!(reply.status, 204, "{reply:?}");
        assert_eq!(reply.body, Value::Null, "no body: {reply:?}");
        assert!(
            !reply.headers.contains_key("x-session-expires-at"),
            "a logout names no expiry: {reply:?}"
        );

        for reply in [
            api.get("/contact-sessions/current", Some(&token)).await,
            api.get(&format!("/conversations/{id}/messages"), Some(&token))
                .await,
            api.logout(Some(&token)).await,
        ] {
            reply.assert_session_rejected("session_not_found");
        }
        // Other sessions are untouched.
        let reply = api.get("/contact-sessions/current", Some(&other)).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
}

#[tokio::test]
async fn logout_needs_a_live_session() {
    let server = serve(&["--session-duration", "1h", "--refresh-threshold", "10m"]).await;
    let api = &server.api;
    api.logout(None)
        .await
        .assert_session_rejected("session_missing");
    api.logout(Some("not-a-token"))
        .await
        .assert_session_rejected("session_invalid");
    let unknown = SessionToken::generate().expect("os randomness").to_string();
    api.logout(Some(&unknown))
        .await
        .assert_session_rejected("session_not_found");

    let token = api.start_session().await;
    server.clock.advance(HOUR);
    api.logout(Some(&token))
        .await
        .assert_session_rejected("session_expired");
}

#[tokio::test]
async fn operator_lists_the_organizations_live_sessions_by_ref_never_by_token() {
    for server in [serve(&[]).await, serve_sqlite(&[]).await] {
        let api = &server.api;
        let first = api.start_session_in("org_1").await;
        server.clock.advance(SECOND);
        let reply = api
            .post_json(
                "/contact-sessions",
                None,
                &visitor("Grace", "grace@example.com", "org_1"),
            )
            .await;
        let second = reply.body["session_id"].as_str().unwrap().to_owned();
        let _elsewhere = api.start_session_in("org_2").await;

        let listing = api.contact_sessions("org_1", "").await;
        assert_eq!(listing["next_cursor"], Value::Null, "{listing}");
        let sessions = listing["sessions"].as_array().expect("sessions");
        assert_eq!(
            ids(&listing["sessions"], "session_ref"),
            [session_ref(&first), session_ref(&second)],
            "oldest first, org_1's only"
        );
        assert_eq!(sessions[1]["name"], "Grace");
        assert_eq!(sessions[1]["email"], "grace@example.com");
        assert_eq!(timestamp(&sessions[0], "created_at"), epoch());
        assert_eq!(timestamp(&sessions[0], "expires_at"), epoch() + 24 * HOUR);
        let text = listing.to_string();
        assert!(
            !text.contains(&first) && !text.contains(&second),
            "no token in the listing: {text}"
        );

        // Logged out sessions leave the listing.
        api.logout(Some(&first)).await;
        let listing = api.contact_sessions("org_1", "").await;
        assert_eq!(
            ids(&listing["sessions"], "session_ref"),
            [session_ref(&second)]
        );
        assert_eq!(
            api.contact_sessions("org_3", "").await,
            json!({ "sessions": [], "next_cursor": null })
        );
    }
}

#[tokio::test]
async fn expired_sessions_leave_the_operators_listing() {
    let server = serve(&["--session-duration", "1h", "--refresh-threshold", "10m"]).await;
    let api = &server.api;
    let token = api.start_session().await;
    server.clock.advance(HOUR - SECOND);
    assert_eq!(
        ids(
            &api.contact_sessions("org_1", "").await["sessions"],
            "session_ref"
        ),
        [session_ref(&token)]
    );
    server.clock.advance(SECOND);
    assert_eq!(
        api.contact_sessions("org_1", "").await["sessions"],
        json!([])
    );
}

#[tokio::test]
async fn operator_revokes_one_of_its_sessions_and_anything_else_is_404() {
    for server in [serve(&[]).await, serve_sqlite(&[]).await] {
        let api = &server.api;
        let mine = api.start_session_in("org_1").await;
        let theirs = api.start_session_in("org_2").await;
        // Cached here before the revocation.
        assert_eq!(
            api.get("/contact-sessions/current", Some(&mine))
                .await
                .status,
            200
        );

        for (organization, reference) in [
            ("org_1", session_ref(&theirs)),
            ("org_1", "0".repeat(64)),
            ("org_1", "not-hex".to_owned()),
            ("org_1", mine.clone()),
        ] {
            api.revoke_contact_session(organization, &reference)
                .await
                .assert_problem(404, "not_found");
        }
        assert_eq!(
            api.get("/contact-sessions/current", Some(&theirs))
                .await
                .status,
            200,
            "another organization's session survives"
        );

        let reply = api
            .revoke_contact_session("org_1", &session_ref(&mine))
            .await;
        assert_eq!(reply.status, 204, "{reply:?}");
        api.get("/contact-sessions/current", Some(&mine))
            .await
            .assert_session_rejected("session_not_found");
        api.revoke_contact_session("org_1", &session_ref(&mine))
            .await
            .assert_problem(404, "not_found");
        api.revoke_contact_session("org_2", &session_ref(&theirs))
            .await;
        api.get("/contact-sessions/current", Some(&theirs))
            .await
            .assert_session_rejected("session_not_found");
    }
}

#[tokio::test]
async fn operator_revokes_every_session_of_its_organization_and_only_those() {
    for server in [serve(&[]).await, serve_sqlite(&[]).await] {
        let api = &server.api;
        let mine = [
            api.start_session_in("org_1").await,
            api.start_session_in("org_1").await,
            api.start_session_in("org_1").await,
        ];
        let theirs = api.start_session_in("org_2").await;
        for token in &mine {
            api.start_conversation(token).await;
        }

        let reply = api.revoke_contact_sessions("org_1").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, json!({ "revoked": 3 }));
        for token in &mine {
            api.get("/contact-sessions/current", Some(token))
                .await
                .assert_session_rejected("session_not_found");
        }
        assert_eq!(
            api.get("/contact-sessions/current", Some(&theirs))
                .await
                .status,
            200
        );
        assert_eq!(
            api.revoke_contact_sessions("org_1").await.body,
            json!({ "revoked": 0 })
        );
        // The conversations stay for the operators.
        assert_eq!(api.conversation_ids("org_1").await.len(), 3);
    }
}

#[tokio::test]
async fn contact_session_routes_need_the_organization_header() {
    let server = serve(&[]).await;
    let api = &server.api;
    let token = api.start_session().await;
    for method in [Method::GET, Method::DELETE] {
        send(api.operator(method.clone(), "/operator/contact-sessions", None))
            .await
            .assert_problem(401, "organization_missing");
    }
    send(api.operator(
        Method::DELETE,
        &format!("/operator/contact-sessions/{}", session_ref(&token)),
        None,
    ))
    .await
    .assert_problem(401, "organization_missing");
    assert_eq!(
        api.get("/contact-sessions/current", Some(&token))
            .await
            .status,
        200
    );
}
