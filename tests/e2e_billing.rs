//! Subscriptions end to end: the soft-gated AI reply, the signed billing
//! webhook, `GET /operator/subscription`.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use e2e_support::*;

// ---------------------------------------------------------------------------
// Soft gating: AI replies to visitors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn entitled_organizations_visitor_gets_an_ai_reply_and_the_conversation_stays_unresolved() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    server.upgrade("org_1").await;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;

    for round in 1..=2 {
        server.clock.advance(SECOND);
        let reply = api.send_message(&token, &id, "Where is my invoice?").await;
        assert_eq!(reply.status, 201, "round {round}: {reply:?}");
        assert_eq!(reply.body["ai_replied"], true, "round {round}");
        assert_eq!(reply.body["status"], "unresolved", "round {round}");
        assert!(reply.body["message_id"].is_string(), "{reply:?}");
    }
    let (status, roles, contents) = api.conversation(&token, &id).await;
    assert_eq!(status, "unresolved");
    assert_eq!(
        roles,
        ["assistant", "user", "assistant", "user", "assistant"]
    );
    assert_eq!(contents[1], "Where is my invoice?");
    assert!(!contents[2].trim().is_empty(), "{contents:?}");
    assert_eq!(contents[2], contents[4], "the stand-in AI is deterministic");
}

#[tokio::test]
async fn ai_does_not_reply_to_an_escalated_conversation_even_after_an_upgrade() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;
    let escalated = api.start_conversation(&token).await;
    let reply = api.send_message(&token, &escalated, "hello?").await;
    assert_eq!(
        (&reply.body["ai_replied"], &reply.body["status"]),
        (&json!(false), &json!("escalated"))
    );

    server.upgrade("org_1").await;
    let reply = api.send_message(&token, &escalated, "anyone?").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["ai_replied"], false, "an operator has it now");
    assert_eq!(reply.body["status"], "escalated");
    let (_, roles, _) = api.conversation(&token, &escalated).await;
    assert_eq!(roles, ["assistant", "user", "user"]);

    // A new conversation of the same visitor gets the AI.
    let fresh = api.start_conversation(&token).await;
    let reply = api.send_message(&token, &fresh, "hello?").await;
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");
    assert_eq!(reply.body["status"], "unresolved");
}

#[tokio::test]
async fn operator_reply_leaves_the_status_unchanged() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;

    // Escalated (free organization) stays escalated.
    let escalated = api.start_conversation(&token).await;
    api.send_message(&token, &escalated, "help").await;
    let reply = api.reply_as_operator("org_1", &escalated, "On it!").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["status"], "escalated");
    assert!(reply.body["message_id"].is_string(), "{reply:?}");

    // Unresolved stays unresolved, and the AI keeps answering it.
    server.upgrade("org_1").await;
    let unresolved = api.start_conversation(&token).await;
    let reply = api
        .reply_as_operator("org_1", &unresolved, "Hello from a human")
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["status"], "unresolved");
    let reply = api.send_message(&token, &unresolved, "thanks").await;
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");

    let (status, roles, contents) = api.conversation(&token, &escalated).await;
    assert_eq!(status, "escalated");
    assert_eq!(roles, ["assistant", "user", "operator"]);
    assert_eq!(contents[2], "On it!");
    let (status, roles, _) = api.conversation(&token, &unresolved).await;
    assert_eq!(status, "unresolved");
    assert_eq!(roles, ["assistant", "operator", "user", "assistant"]);
}

// ---------------------------------------------------------------------------
// The story: free, upgraded by a webhook, canceled by a webhook
// ---------------------------------------------------------------------------

#[tokio::test]
async fn free_operator_is_refused_enhance_and_upload_but_can_list_reply_and_list_files() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    api.send_message(&token, &id, "hello").await;

    api.enhance("org_1", &id, "thanks for waiting")
        .await
        .assert_problem(403, "subscription_required");
    api.upload_file("org_1", "faq.md", "# FAQ")
        .await
        .assert_problem(403, "subscription_required");

    let reply = api.operator_get("/operator/conversations", "org_1").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let conversations = reply.body["conversations"].as_array().unwrap();
    assert_eq!(conversations.len(), 1, "{reply:?}");
    assert_eq!(conversations[0]["conversation_id"], id.as_str());
    assert_eq!(conversations[0]["status"], "escalated");
    assert_eq!(timestamp(&conversations[0], "created_at"), epoch());

    let reply = api.operator_get("/operator/files", "org_1").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, json!({ "files": [], "next_cursor": null }));
    api.delete_file("org_1", "file_unknown")
        .await
        .assert_problem(404, "not_found");

    let reply = api.reply_as_operator("org_1", &id, "A human here.").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let (_, roles, _) = api.conversation(&token, &id).await;
    assert_eq!(roles, ["assistant", "user", "operator"]);
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": false, "plan": null, "status": null })
    );
}

#[tokio::test]
async fn signed_webhook_upgrade_takes_effect_on_the_very_next_request() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    // Warm the negative cache on every path that reads it.
    api.enhance("org_1", &id, "draft")
        .await
        .assert_problem(403, "subscription_required");
    assert_eq!(api.subscription("org_1").await["entitled"], false);

    server.upgrade("org_1").await;

    // No time passes: the cache was invalidated, not waited out.
    let reply = api.send_message(&token, &id, "hello").await;
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");
    assert_eq!(reply.body["status"], "unresolved");
    let reply = api.enhance("org_1", &id, "  thanks   for waiting ").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, json!({ "enhanced": "Thanks for waiting." }));
    let reply = api.upload_file("org_1", " faq.md ", "# FAQ").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["name"], "faq.md");
    assert_eq!(timestamp(&reply.body, "created_at"), epoch());
    let file_id = reply.body["file_id"].as_str().expect("file_id").to_owned();
    assert_eq!(api.file_ids("org_1").await, [file_id]);
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": true, "plan": "pro", "status": "active" })
    );
}

#[tokio::test]
async fn cancellation_webhook_takes_the_subscription_back_at_once_but_files_can_still_be_deleted() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let token = api.start_session().await;
    server.upgrade("org_1").await;
    let id = api.start_conversation(&token).await;
    // Warm the positive cache.
    assert_eq!(api.enhance("org_1", &id, "hi").await.status, 200);
    let mut files = Vec::new();
    for name in ["faq.md", "pricing.md"] {
        server.clock.advance(SECOND);
        let reply = api.upload_file("org_1", name, "some text").await;
        assert_eq!(reply.status, 201, "{reply:?}");
        files.push(reply.body["file_id"].as_str().unwrap().to_owned());
    }

    server.cancel("org_1").await;

    api.enhance("org_1", &id, "hi")
        .await
        .assert_problem(403, "subscription_required");
    api.upload_file("org_1", "more.md", "text")
        .await
        .assert_problem(403, "subscription_required");
    let reply = api.send_message(&token, &id, "hello again").await;
    assert_eq!(
        (&reply.body["ai_replied"], &reply.body["status"]),
        (&json!(false), &json!("escalated")),
        "{reply:?}"
    );
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": false, "plan": "pro", "status": "canceled" })
    );

    // What was uploaded while subscribed stays listed and deletable.
    let reply = api.operator_get("/operator/files", "org_1").await;
    let listed = reply.body["files"].as_array().unwrap();
    assert_eq!(ids(&reply.body["files"], "file_id"), files, "oldest first");
    assert_eq!(listed[0]["name"], "faq.md");
    assert_eq!(timestamp(&listed[0], "created_at"), epoch() + SECOND);
    assert_eq!(timestamp(&listed[1], "created_at"), epoch() + 2 * SECOND);
    let reply = api.delete_file("org_1", &files[0]).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.body, Value::Null, "204 has no body");
    assert_eq!(api.file_ids("org_1").await, [files[1].clone()]);
    api.delete_file("org_1", &files[0])
        .await
        .assert_problem(404, "not_found");
}

// ---------------------------------------------------------------------------
// Billing webhook
// ---------------------------------------------------------------------------

/// Asserts `reply` is a 401 `invalid_signature` and `org_1` is unchanged.
async fn assert_refused_without_change(server: &Server, reply: Reply, before: &Value, case: &str) {
    assert_eq!(reply.status, 401, "{case}: {reply:?}");
    reply.assert_problem(401, "invalid_signature");
    assert_eq!(&server.api.subscription("org_1").await, before, "{case}");
}

#[tokio::test]
async fn webhook_with_a_tampered_body_is_401_invalid_signature_and_changes_nothing() {
    let server = serve(&WITH_SECRET).await;
    let before = server.api.subscription("org_1").await;
    let signed_body = event("org_1", "sub_1", "canceled", "pro").to_string();
    let signed = signature(SECRET, &signed_body, server.clock.now());
    let tampered = signed_body.replace("canceled", "active");
    assert_ne!(tampered, signed_body);

    let reply = server.api.post_webhook(&tampered, Some(&signed)).await;
    assert_refused_without_change(&server, reply, &before, "tampered body").await;
    // Even re-serialising the same JSON differently breaks the signature.
    let spaced = signed_body.replace(',', ", ");
    let reply = server.api.post_webhook(&spaced, Some(&signed)).await;
    assert_refused_without_change(&server, reply, &before, "re-serialised body").await;
}

#[tokio::test]
async fn webhook_signed_with_another_secret_is_401_invalid_signature_and_changes_nothing() {
    let server = serve(&WITH_SECRET).await;
    server.upgrade("org_1").await;
    let before = server.api.subscription("org_1").await;
    let body = event("org_1", "sub_pro", "canceled", "pro").to_string();
    let forged = signature("whsec_someone_else", &body, server.clock.now());

    let reply = server.api.post_webhook(&body, Some(&forged)).await;
    assert_refused_without_change(&server, reply, &before, "another secret").await;
    assert_eq!(before["entitled"], true);
}

#[tokio::test]
async fn webhook_signed_ten_minutes_away_is_401_invalid_signature_and_changes_nothing() {
    let server = serve(&WITH_SECRET).await;
    let before = server.api.subscription("org_1").await;
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let now = server.clock.now();
    for (case, at) in [
        ("ten minutes old", now - 10 * MINUTE),
        ("ten minutes ahead", now + 10 * MINUTE),
        ("301 s old", now - 301 * SECOND),
    ] {
        let signed = signature(SECRET, &body, at);
        let reply = server.api.post_webhook(&body, Some(&signed)).await;
        assert_refused_without_change(&server, reply, &before, case).await;
    }
    // A capture replayed later is refused too.
    let captured = signature(SECRET, &body, now);
    server.clock.advance(10 * MINUTE);
    let reply = server.api.post_webhook(&body, Some(&captured)).await;
    assert_refused_without_change(&server, reply, &before, "replayed").await;

    // 300 s is still within tolerance.
    let edge = signature(SECRET, &body, server.clock.now() - 300 * SECOND);
    let reply = server.api.post_webhook(&body, Some(&edge)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["entitled"], true);
}

#[tokio::test]
async fn webhook_without_a_usable_signature_header_is_401_invalid_signature() {
    let server = serve(&WITH_SECRET).await;
    let before = server.api.subscription("org_1").await;
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let reply = server.api.post_webhook(&body, None).await;
    assert_refused_without_change(&server, reply, &before, "no header").await;
    for header in ["", "garbage", "t=abc,v1=00", "v1=00", "t=1750000000"] {
        let reply = server.api.post_webhook(&body, Some(header)).await;
        assert_refused_without_change(&server, reply, &before, header).await;
    }
}

#[tokio::test]
async fn webhook_with_several_v1_entries_passes_when_one_matches() {
    let server = serve(&WITH_SECRET).await;
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let now = server.clock.now();
    let good = signature(SECRET, &body, now);
    let (timestamp_entry, good_v1) = good.split_once(",v1=").expect("t=…,v1=…");
    let old_secret = signature("whsec_rotated_out", &body, now);
    let (_, old_v1) = old_secret.split_once(",v1=").unwrap();
    // A rotation: the old secret's signature first, ours (in upper case)
    // after, with an entry this server does not know.
    let header = format!(
        "{timestamp_entry},v1={old_v1},v0=ignored,v1={}",
        good_v1.to_uppercase()
    );

    let reply = server.api.post_webhook(&body, Some(&header)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({ "organization_id": "org_1", "entitled": true, "applied": true })
    );
    assert_eq!(server.api.subscription("org_1").await["entitled"], true);

    // None matching is still refused.
    let header = format!("{timestamp_entry},v1={old_v1},v1={old_v1}");
    let reply = server.api.post_webhook(&body, Some(&header)).await;
    reply.assert_problem(401, "invalid_signature");
}

#[tokio::test]
async fn webhook_without_a_configured_secret_is_503_webhook_not_configured() {
    let server = serve(&[]).await;
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    for signed in [
        Some(signature(SECRET, &body, server.clock.now())),
        Some(signature("another_secret", &body, server.clock.now())),
        None,
    ] {
        let reply = server.api.post_webhook(&body, signed.as_deref()).await;
        reply.assert_problem(503, "webhook_not_configured");
    }
    assert_eq!(
        server.api.subscription("org_1").await,
        json!({ "entitled": false, "plan": null, "status": null })
    );
}

#[tokio::test]
async fn validly_signed_but_invalid_webhook_bodies_are_400_invalid_request_and_change_nothing() {
    let server = serve(&WITH_SECRET).await;
    let before = server.api.subscription("org_1").await;
    let mut unknown_status = event("org_1", "sub_1", "active", "pro");
    unknown_status["status"] = json!("gold");
    let mut missing_plan = event("org_1", "sub_1", "active", "pro");
    missing_plan.as_object_mut().unwrap().remove("plan");
    let mut missing_organization = event("org_1", "sub_1", "active", "pro");
    missing_organization
        .as_object_mut()
        .unwrap()
        .remove("organization_id");
    let mut bad_period_end = event("org_1", "sub_1", "active", "pro");
    bad_period_end["current_period_end"] = json!("next tuesday");
    let cases: Vec<(&str, String)> = vec![
        (
            "malformed JSON",
            r#"{"organization_id": "org_1","#.to_owned(),
        ),
        ("empty body", String::new()),
        ("not an object", "[1, 2]".to_owned()),
        ("unknown status", unknown_status.to_string()),
        (
            "status in capitals",
            unknown_status.to_string().replace("gold", "ACTIVE"),
        ),
        ("missing plan", missing_plan.to_string()),
        ("missing organization_id", missing_organization.to_string()),
        ("bad current_period_end", bad_period_end.to_string()),
        (
            "empty organization_id",
            event(" ", "sub_1", "active", "pro").to_string(),
        ),
    ];
    for (case, body) in cases {
        let signed = signature(SECRET, &body, server.clock.now());
        let reply = server.api.post_webhook(&body, Some(&signed)).await;
        assert_eq!(reply.status, 400, "{case}: {reply:?}");
        reply.assert_problem(400, "invalid_request");
        assert_eq!(server.api.subscription("org_1").await, before, "{case}");
    }
}

#[tokio::test]
async fn webhook_ignores_unknown_fields_and_needs_neither_session_nor_organization() {
    let server = serve(&WITH_SECRET).await;
    let mut body = event("org_1", "sub_1", "trialing", "pro");
    body["livemode"] = json!(false);
    body["items"] = json!([{ "price": "price_123" }]);
    body["trial_end"] = json!(rfc3339_millis(epoch() + 14 * DAY));
    // `Server::webhook` sends neither `x-session-id` nor `x-organization-id`.
    let reply = server.webhook(&body).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        server.api.subscription("org_1").await,
        json!({ "entitled": true, "plan": "pro", "status": "trialing" })
    );
}

#[tokio::test]
async fn webhooks_upsert_per_subscription_so_an_old_canceled_and_a_new_active_one_entitle_in_either_order(
) {
    let server = serve(&WITH_SECRET).await;
    let old = |organization: &str| {
        event_until(
            organization,
            "sub_old",
            "canceled",
            "starter",
            epoch() - 30 * DAY,
        )
    };
    let new = |organization: &str| event(organization, "sub_new", "active", "pro");

    // Old first, then new.
    server.apply(&old("org_a"), false).await;
    server.apply(&new("org_a"), true).await;
    // New first, then old: the old one does not replace the new one.
    server.apply(&new("org_b"), true).await;
    server.apply(&old("org_b"), true).await;
    for organization in ["org_a", "org_b"] {
        assert_eq!(
            server.api.subscription(organization).await,
            json!({ "entitled": true, "plan": "pro", "status": "active" }),
            "{organization}"
        );
    }

    // The same subscription id replaces its previous state (shown, as the
    // one with the latest period end: the old one ended a month ago).
    server
        .apply(
            &event_until("org_a", "sub_new", "past_due", "pro", epoch() + DAY),
            false,
        )
        .await;
    assert_eq!(
        server.api.subscription("org_a").await,
        json!({ "entitled": false, "plan": "pro", "status": "past_due" })
    );
    // Another organization's webhooks never touch this one.
    assert_eq!(server.api.subscription("org_b").await["entitled"], true);
}

// ---------------------------------------------------------------------------
// GET /operator/subscription
// ---------------------------------------------------------------------------

#[tokio::test]
async fn operator_subscription_is_null_plan_and_status_without_any_subscription() {
    let server = serve(&WITH_SECRET).await;
    let reply = server
        .api
        .operator_get("/operator/subscription", "org_nobody")
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({ "entitled": false, "plan": null, "status": null })
    );
}

#[tokio::test]
async fn operator_subscription_shows_the_deciding_subscription_deterministically() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    let in_days = |days: u32| epoch() + days * DAY;

    // Entitled: the entitling one decides, even when a canceled one's
    // period ends later.
    server
        .apply(
            &event_until("org_1", "sub_a", "canceled", "starter", in_days(90)),
            false,
        )
        .await;
    server
        .apply(
            &event_until("org_1", "sub_b", "active", "pro", in_days(30)),
            true,
        )
        .await;
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": true, "plan": "pro", "status": "active" })
    );

    // Not entitled: the latest current_period_end is shown...
    server
        .apply(
            &event_until("org_2", "sub_a", "canceled", "starter", in_days(10)),
            false,
        )
        .await;
    server
        .apply(
            &event_until("org_2", "sub_b", "past_due", "pro", in_days(20)),
            false,
        )
        .await;
    assert_eq!(
        api.subscription("org_2").await,
        json!({ "entitled": false, "plan": "pro", "status": "past_due" })
    );
    // ...ties broken by subscription id (the greater), whatever the order
    // they arrived in.
    server
        .apply(
            &event_until("org_3", "sub_z", "unpaid", "enterprise", in_days(5)),
            false,
        )
        .await;
    server
        .apply(
            &event_until("org_3", "sub_m", "canceled", "starter", in_days(5)),
            false,
        )
        .await;
    assert_eq!(
        api.subscription("org_3").await,
        json!({ "entitled": false, "plan": "enterprise", "status": "unpaid" })
    );
}

#[tokio::test]
async fn entitlement_ends_with_the_current_period_without_any_webhook() {
    let server = serve(&WITH_SECRET).await;
    let api = &server.api;
    server
        .apply(
            &event_until("org_1", "sub_1", "active", "pro", epoch() + HOUR),
            true,
        )
        .await;
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    assert_eq!(api.enhance("org_1", &id, "hi").await.status, 200);

    server.clock.advance(HOUR);
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": false, "plan": "pro", "status": "active" })
    );
    api.enhance("org_1", &id, "hi")
        .await
        .assert_problem(403, "subscription_required");
    let reply = api.send_message(&token, &id, "hello").await;
    assert_eq!(reply.body["ai_replied"], false, "{reply:?}");
}

#[tokio::test]
async fn an_older_webhook_replayed_after_a_cancellation_answers_applied_false_and_changes_nothing()
{
    let server = serve(&WITH_SECRET).await;
    let now = server.clock.now();
    let answer = |entitled: bool, applied: bool| json!({ "organization_id": "org_1", "entitled": entitled, "applied": applied });
    let active = event("org_1", "sub_1", "active", "pro").to_string();
    let captured = signature(SECRET, &active, now - std::time::Duration::from_secs(200));
    let reply = server.api.post_webhook(&active, Some(&captured)).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &answer(true, true)),
        "{reply:?}"
    );
    let canceled = event("org_1", "sub_1", "canceled", "pro").to_string();
    let reply = server
        .api
        .post_webhook(&canceled, Some(&signature(SECRET, &canceled, now)))
        .await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &answer(false, true)),
        "{reply:?}"
    );

    // The captured "active" webhook, replayed within the tolerance.
    let reply = server.api.post_webhook(&active, Some(&captured)).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &answer(false, false)),
        "{reply:?}"
    );
    assert_eq!(server.api.subscription("org_1").await["entitled"], false);

    // A duplicate event id, later and with another body, changes nothing.
    let mut first = event("org_1", "sub_2", "active", "pro");
    first["event_id"] = json!("evt_1");
    let first = first.to_string();
    let reply = server
        .api
        .post_webhook(&first, Some(&signature(SECRET, &first, now)))
        .await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &answer(true, true)),
        "{reply:?}"
    );
    server.clock.advance(std::time::Duration::from_secs(10));
    let mut again = event("org_1", "sub_2", "canceled", "pro");
    again["event_id"] = json!("evt_1");
    let again = again.to_string();
    let reply = server
        .api
        .post_webhook(&again, Some(&signature(SECRET, &again, server.clock.now())))
        .await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &answer(true, false)),
        "{reply:?}"
    );
    assert_eq!(server.api.subscription("org_1").await["entitled"], true);
}
