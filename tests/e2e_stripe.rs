//! `POST /billing/stripe` over real HTTP: Stripe's own events, signed with
//! `Stripe-Signature`, drive the reference server's subscriptions; a retry
//! of an older event never undoes a newer one; a refused webhook changes
//! nothing; and the 1 MiB limit of both billing routes.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;
mod stripe_events;

use e2e_support::*;
use stripe_events::{basil_subscription, event as stripe_event, legacy_subscription};

const STRIPE_SECRET: &str = "whsec_stripe_e2e";
const STRIPE_OLD_SECRET: &str = "whsec_stripe_e2e_previous";
const WITH_STRIPE: [&str; 2] = ["--stripe-webhook-secret", STRIPE_SECRET];
const DAY_S: u64 = 86_400;
const MIB: usize = 1024 * 1024;

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// `org_1`'s subscription as Stripe sends it before API 2025-03-31: the
/// period (ending `period_end`) on the subscription.
fn legacy(status: &str, period_end: u64) -> Value {
    legacy_subscription(status, period_end, json!({ "organization_id": "org_1" }))
}

/// An event body exactly as it goes on the wire.
fn body(id: &str, event_type: &str, created: u64, object: Value) -> String {
    stripe_event(id, event_type, created, object).to_string()
}

/// Posts `body` signed with `secret` at the server clock's now.
async fn deliver(server: &Server, secret: &str, body: &str) -> Reply {
    let signed = stripe_signature(secret, body, server.clock.now());
    server.api.post_stripe(body, Some(&signed)).await
}

fn decision(entitled: bool, applied: bool) -> Value {
    json!({ "received": true, "organization_id": "org_1", "entitled": entitled, "applied": applied })
}

#[tokio::test]
async fn an_older_event_retried_and_resigned_later_does_not_undo_a_cancellation() {
    let server = serve(&WITH_STRIPE).await;
    let now = unix(server.clock.now());
    let period_end = now + 30 * DAY_S;

    let created = body(
        "evt_1Created",
        "customer.subscription.created",
        now - 120,
        legacy("active", period_end),
    );
    let reply = deliver(&server, STRIPE_SECRET, &created).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(true, true)),
        "{reply:?}"
    );
    let active = server.api.subscription("org_1").await;
    assert_eq!(active["entitled"], true, "{active}");
    assert_eq!(active["plan"], "pro_monthly", "{active}");

    let deleted = body(
        "evt_3Deleted",
        "customer.subscription.deleted",
        now,
        legacy("canceled", period_end),
    );
    let reply = deliver(&server, STRIPE_SECRET, &deleted).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(false, true)),
        "{reply:?}"
    );
    let canceled = server.api.subscription("org_1").await;
    assert_eq!(canceled["entitled"], false, "{canceled}");
    assert_eq!(canceled["status"], "canceled", "{canceled}");

    // An hour later Stripe retries the creation (same event, same body),
    // signed afresh, so its signature is perfectly valid now.
    server.clock.advance(HOUR);
    let reply = deliver(&server, STRIPE_SECRET, &created).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(false, false)),
        "{reply:?}"
    );
    // An update produced between the two, delivered only now, is older
    // than the deletion too.
    let late = body(
        "evt_2Updated",
        "customer.subscription.updated",
        now - 60,
        legacy("active", period_end),
    );
    let reply = deliver(&server, STRIPE_SECRET, &late).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(false, false)),
        "{reply:?}"
    );
    // And the deletion retried is applied once only.
    let reply = deliver(&server, STRIPE_SECRET, &deleted).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(false, false)),
        "{reply:?}"
    );

    assert_eq!(server.api.subscription("org_1").await, canceled);
    let token = server.api.start_session_in("org_1").await;
    let conversation = server.api.start_conversation(&token).await;
    let reply = server
        .api
        .send_message(&token, &conversation, "hello")
        .await;
    assert_eq!(reply.body["ai_replied"], false, "{reply:?}");
}

#[tokio::test]
async fn newer_api_events_take_the_period_end_from_the_items() {
    let server = serve(&WITH_STRIPE).await;
    let now = unix(server.clock.now());
    // Two items; the subscription is paid until the later period end.
    let object = basil_subscription(
        "active",
        &[now + DAY_S, now + 2 * DAY_S],
        json!({ "organization_id": "org_1" }),
    );
    let mut envelope = stripe_event("evt_basil", "customer.subscription.updated", now, object);
    envelope["api_version"] = json!("2025-03-31.basil");
    let reply = deliver(&server, STRIPE_SECRET, &envelope.to_string()).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(true, true)),
        "{reply:?}"
    );
    let subscription = server.api.subscription("org_1").await;
    assert_eq!(subscription["plan"], "team_yearly", "{subscription}");

    // Past the first item's period it is still paid; without any further
    // event, the entitlement ends with the later one.
    server.clock.advance(DAY + SECOND);
    assert_eq!(server.api.subscription("org_1").await["entitled"], true);
    server.clock.advance(DAY);
    assert_eq!(server.api.subscription("org_1").await["entitled"], false);
}

#[tokio::test]
async fn refused_stripe_webhooks_answer_their_code_and_change_nothing() {
    let server = serve(&WITH_STRIPE).await;
    let now = unix(server.clock.now());
    let created = body(
        "evt_active",
        "customer.subscription.created",
        now - 60,
        legacy("active", now + 30 * DAY_S),
    );
    let reply = deliver(&server, STRIPE_SECRET, &created).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let before = server.api.subscription("org_1").await;
    assert_eq!(before["entitled"], true, "{before}");

    // Every refusal below carries a cancellation that, applied, would show.
    let cancel = body(
        "evt_cancel",
        "customer.subscription.deleted",
        now,
        legacy("canceled", now + 30 * DAY_S),
    );
    let at_now = server.clock.now();
    let unsigned = server.api.post_stripe(&cancel, None).await;
    let forged = server
        .api
        .post_stripe(
            &cancel,
            Some(&stripe_signature("whsec_attacker", &cancel, at_now)),
        )
        .await;
    let stale = server
        .api
        .post_stripe(
            &cancel,
            Some(&stripe_signature(
                STRIPE_SECRET,
                &cancel,
                at_now - 301 * SECOND,
            )),
        )
        .await;
    let future = server
        .api
        .post_stripe(
            &cancel,
            Some(&stripe_signature(
                STRIPE_SECRET,
                &cancel,
                at_now + 301 * SECOND,
            )),
        )
        .await;
    // Signed for the active event, sent with the cancellation's body.
    let swapped = server
        .api
        .post_stripe(
            &cancel,
            Some(&stripe_signature(STRIPE_SECRET, &created, at_now)),
        )
        .await;
    // The simplified webhook's header is not Stripe's.
    let simplified = server
        .api
        .post_webhook(&cancel, Some(&signature(STRIPE_SECRET, &cancel, at_now)))
        .await;
    for (case, reply) in [
        ("no header", unsigned),
        ("another secret", forged),
        ("301 s old", stale),
        ("301 s ahead", future),
        ("another body's signature", swapped),
    ] {
        reply.assert_problem(401, "invalid_signature");
        assert_eq!(server.api.subscription("org_1").await, before, "{case}");
    }
    simplified.assert_problem(503, "webhook_not_configured");

    // Signed, but not something to apply.
    let no_organization = body(
        "evt_orphan",
        "customer.subscription.deleted",
        now,
        legacy_subscription("canceled", now + 30 * DAY_S, json!({})),
    );
    let reply = deliver(&server, STRIPE_SECRET, &no_organization).await;
    reply.assert_problem(422, "organization_unknown");
    assert_eq!(server.api.subscription("org_1").await, before);
    let not_an_event = json!({ "organization_id": "org_1", "status": "canceled" }).to_string();
    for (case, text) in [
        ("not an event", not_an_event.as_str()),
        ("not JSON", "status=canceled"),
        ("truncated", &cancel[..cancel.len() / 2]),
    ] {
        let reply = deliver(&server, STRIPE_SECRET, text).await;
        reply.assert_problem(400, "invalid_request");
        assert_eq!(server.api.subscription("org_1").await, before, "{case}");
    }

    // The refusals left no trace: the same cancellation, properly signed,
    // is still new and applies.
    let reply = deliver(&server, STRIPE_SECRET, &cancel).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(false, true)),
        "{reply:?}"
    );
}

#[tokio::test]
async fn an_endpoints_previous_and_new_secrets_are_both_accepted_while_rotating() {
    let server = serve(&[
        "--stripe-webhook-secret",
        STRIPE_OLD_SECRET,
        "--stripe-webhook-secret",
        STRIPE_SECRET,
    ])
    .await;
    let now = unix(server.clock.now());
    let created = body(
        "evt_old_secret",
        "customer.subscription.created",
        now - 10,
        legacy("active", now + 30 * DAY_S),
    );
    let reply = deliver(&server, STRIPE_OLD_SECRET, &created).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(true, true)),
        "{reply:?}"
    );
    let canceled = body(
        "evt_new_secret",
        "customer.subscription.deleted",
        now,
        legacy("canceled", now + 30 * DAY_S),
    );
    let reply = deliver(&server, STRIPE_SECRET, &canceled).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(false, true)),
        "{reply:?}"
    );
    // During a rotation Stripe signs with both: one `v1` per secret.
    let both = server.clock.now();
    let header = format!(
        "{},{}",
        stripe_signature(STRIPE_OLD_SECRET, &created, both),
        stripe_signature("whsec_unknown", &created, both)
            .split(',')
            .nth(1)
            .expect("a v1 entry")
    );
    let reply = server.api.post_stripe(&created, Some(&header)).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(false, false)),
        "{reply:?}"
    );
}

#[tokio::test]
async fn event_types_it_does_not_act_on_are_acknowledged_and_change_nothing() {
    let server = serve(&WITH_STRIPE).await;
    let before = server.api.subscription("org_1").await;
    let now = unix(server.clock.now());
    let invoice = json!({
        "id": "in_1MtHbELkdIwHu7ixl4OzzPMv",
        "object": "invoice",
        "customer": "cus_NffrFeUfNV2Hib",
        "status": "paid",
        "subscription": "sub_1MowQVLkdIwHu7ixeRlqHVzs"
    });
    for event_type in [
        "invoice.paid",
        "customer.created",
        "checkout.session.completed",
    ] {
        let text = body("evt_other", event_type, now, invoice.clone());
        let reply = deliver(&server, STRIPE_SECRET, &text).await;
        assert_eq!(
            (reply.status, &reply.body),
            (200, &json!({ "received": true, "applied": false })),
            "{event_type}: {reply:?}"
        );
    }
    assert_eq!(server.api.subscription("org_1").await, before);
}

#[tokio::test]
async fn without_a_stripe_secret_the_route_is_503_webhook_not_configured() {
    let server = serve(&WITH_SECRET).await;
    let now = unix(server.clock.now());
    let text = body(
        "evt_x",
        "customer.subscription.created",
        now,
        legacy("active", now + 30 * DAY_S),
    );
    let reply = deliver(&server, STRIPE_SECRET, &text).await;
    reply.assert_problem(503, "webhook_not_configured");
    let detail = reply.body["detail"].as_str().expect("a detail");
    assert!(detail.contains("--stripe-webhook-secret"), "{detail}");
    assert!(reply.headers.get("retry-after").is_none(), "{reply:?}");
    assert_eq!(server.api.subscription("org_1").await["entitled"], false);
}

/// A body of exactly `len` bytes: `json` padded with trailing spaces (which
/// JSON allows), so that it still parses.
fn padded(json: &str, len: usize) -> String {
    assert!(json.len() <= len);
    format!("{json}{}", " ".repeat(len - json.len()))
}

#[tokio::test]
async fn both_billing_routes_take_1_mib_and_answer_413_above_it() {
    let mut args = WITH_STRIPE.to_vec();
    args.extend_from_slice(&WITH_SECRET);
    let server = serve(&args).await;
    let now = unix(server.clock.now());
    let at_now = server.clock.now();

    let stripe = body(
        "evt_big",
        "customer.subscription.created",
        now,
        legacy("active", now + 30 * DAY_S),
    );
    let too_big = padded(&stripe, MIB + 1);
    let reply = server
        .api
        .post_stripe(
            &too_big,
            Some(&stripe_signature(STRIPE_SECRET, &too_big, at_now)),
        )
        .await;
    reply.assert_problem(413, "payload_too_large");
    assert_eq!(server.api.subscription("org_1").await["entitled"], false);
    let just_fits = padded(&stripe, MIB);
    let reply = deliver(&server, STRIPE_SECRET, &just_fits).await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &decision(true, true)),
        "{reply:?}"
    );

    let simplified = event("org_2", "sub_1", "active", "pro").to_string();
    let too_big = padded(&simplified, MIB + 1);
    let reply = server
        .api
        .post_webhook(&too_big, Some(&signature(SECRET, &too_big, at_now)))
        .await;
    reply.assert_problem(413, "payload_too_large");
    assert_eq!(server.api.subscription("org_2").await["entitled"], false);
    let just_fits = padded(&simplified, MIB);
    let reply = server
        .api
        .post_webhook(&just_fits, Some(&signature(SECRET, &just_fits, at_now)))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(server.api.subscription("org_2").await["entitled"], true);
}
