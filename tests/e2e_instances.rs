//! Two reference-server processes behind one set of stores, over real
//! HTTP: everything in one PostgreSQL database (`LISTEN/NOTIFY` between
//! them), and again with the sessions in Redis (pub/sub between them).
//!
//! Each story runs on both (`<story>::postgres`, `<story>::postgres_and_redis`),
//! each time in a database and a Redis key prefix of its own, removed at
//! the end. Where PostgreSQL or Redis cannot be reached the test is skipped
//! with a printed reason, except under `CI=true`, where it fails.
//!
//! "Within a second" is measured from the answer of the instance that made
//! the change; the other instance has the old state cached first, so only
//! the invalidation channel can make it change its answer that soon (its
//! caches would otherwise trust it for 30 s, or 10 s for "not entitled").
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use std::time::Instant;

use e2e_support::*;

/// Runs `$story` (an `async fn(&Instances)`) on two instances started with
/// `$args`, once per way of sharing the stores.
macro_rules! on_both {
    ($story:ident, $args:expr) => {
        mod $story {
            use super::*;

            #[tokio::test]
            async fn postgres() {
                let Some(instances) = Instances::start(Shared::Postgres, $args).await else {
                    return;
                };
                super::$story(&instances).await;
                instances.finish().await;
            }

            #[tokio::test]
            async fn postgres_and_redis() {
                let Some(instances) = Instances::start(Shared::PostgresAndRedis, $args).await
                else {
                    return;
                };
                super::$story(&instances).await;
                instances.finish().await;
            }
        }
    };
}

/// `GET /contact-sessions/current` with `token`.
async fn current(api: &Api, token: &str) -> Reply {
    api.get("/contact-sessions/current", Some(token)).await
}

/// The token is refused as unknown (revoked) by `api`.
async fn refused(api: &Api, token: &str) -> bool {
    let reply = current(api, token).await;
    if reply.status == 200 {
        return false;
    }
    reply.assert_session_rejected("session_not_found");
    true
}

on_both!(session_made_on_one_works_on_the_other, &[]);
async fn session_made_on_one_works_on_the_other(instances: &Instances) {
    let (first, second) = (&instances.first, &instances.second);
    let token = first.start_session().await;
    if let Some(redis) = &instances.redis {
        assert!(
            !redis.keys().await.is_empty(),
            "the session is kept in Redis, under the test's prefix"
        );
    }
    let on_first = current(first, &token).await;
    let on_second = current(second, &token).await;
    assert_eq!(on_second.status, 200, "{on_second:?}");
    assert_eq!(on_second.body, on_first.body);
    assert_eq!(
        on_second.session_expires_at(),
        on_first.session_expires_at()
    );

    // What the session does on one, the other sees.
    let conversation = second.start_conversation(&token).await;
    let reply = first.send_message(&token, &conversation, "hello").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let (_, roles, _) = second.conversation(&token, &conversation).await;
    assert_eq!(roles, ["assistant", "user"]);
    let listed = first.contact_sessions("org_1", "").await;
    assert_eq!(
        ids(&listed["sessions"], "session_ref"),
        [session_ref(&token)]
    );
}

on_both!(logout_on_one_is_refused_by_the_other_within_a_second, &[]);
async fn logout_on_one_is_refused_by_the_other_within_a_second(instances: &Instances) {
    let (first, second) = (&instances.first, &instances.second);
    let token = first.start_session().await;
    // The other instance has it cached.
    for _ in 0..2 {
        assert_eq!(current(second, &token).await.status, 200);
    }

    let reply = first.logout(Some(&token)).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let logged_out = Instant::now();
    assert!(refused(first, &token).await);
    let took = eventually(logged_out, SECOND, "the other instance refuses", || {
        refused(second, &token)
    })
    .await;
    eprintln!("logout seen by the other instance after {took:?}");
}

on_both!(
    organization_revocation_on_one_is_refused_by_the_other_within_a_second,
    &[]
);
async fn organization_revocation_on_one_is_refused_by_the_other_within_a_second(
    instances: &Instances,
) {
    let (first, second) = (&instances.first, &instances.second);
    let made_on_first = first.start_session().await;
    let made_on_second = second.start_session().await;
    let other_organization = second.start_session_in("org_2").await;
    for token in [&made_on_first, &made_on_second, &other_organization] {
        assert_eq!(current(second, token).await.status, 200);
    }

    let reply = first.revoke_contact_sessions("org_1").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, json!({ "revoked": 2 }));
    let revoked = Instant::now();
    let took = eventually(
        revoked,
        SECOND,
        "the other instance refuses both",
        || async {
            refused(second, &made_on_first).await && refused(second, &made_on_second).await
        },
    )
    .await;
    eprintln!("organization revocation seen by the other instance after {took:?}");
    assert_eq!(current(second, &other_organization).await.status, 200);
    assert_eq!(current(first, &other_organization).await.status, 200);
}

on_both!(
    billing_webhook_on_one_changes_the_others_next_answer_within_a_second,
    &[]
);
async fn billing_webhook_on_one_changes_the_others_next_answer_within_a_second(
    instances: &Instances,
) {
    let (first, second) = (&instances.first, &instances.second);
    // "Not entitled" is cached on the other instance.
    for _ in 0..2 {
        assert_eq!(second.subscription("org_1").await["entitled"], false);
    }
    let mut upgrade = event("org_1", "sub_1", "active", "pro");
    upgrade["event_id"] = json!("evt_1");
    let reply = post_signed(first, &upgrade).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["entitled"], true, "{reply:?}");
    let upgraded = Instant::now();
    let took = eventually(upgraded, SECOND, "the other sees the upgrade", || async {
        second.subscription("org_1").await["entitled"] == true
    })
    .await;
    eprintln!("upgrade seen by the other instance after {took:?}");

    // And back: "entitled" is cached there now; a cancellation sent to the
    // other instance this time.
    let mut cancel = event("org_1", "sub_1", "canceled", "pro");
    cancel["event_id"] = json!("evt_2");
    let reply = post_signed(second, &cancel).await;
    assert_eq!(reply.body["entitled"], false, "{reply:?}");
    let canceled = Instant::now();
    let took = eventually(
        canceled,
        SECOND,
        "the first sees the cancellation",
        || async { first.subscription("org_1").await["entitled"] == false },
    )
    .await;
    eprintln!("cancellation seen by the other instance after {took:?}");
}

on_both!(
    session_renewed_on_one_is_not_rejected_by_the_other_after_its_first_expiry,
    &["--session-duration", "4s", "--refresh-threshold", "3s"]
);
async fn session_renewed_on_one_is_not_rejected_by_the_other_after_its_first_expiry(
    instances: &Instances,
) {
    let (first, second) = (&instances.first, &instances.second);
    let created = first
        .post_json(
            "/contact-sessions",
            None,
            &visitor("Ada", "ada@example.com", "org_1"),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let token = created.body["session_id"].as_str().expect("a token");
    let first_expiry = timestamp(&created.body, "expires_at");
    // The other instance caches it with its first expiry.
    let cached = current(second, token).await;
    assert_eq!(cached.session_expires_at(), Some(first_expiry));

    // Activity on the first instance once less than 3 s are left.
    sleep_until(first_expiry - Duration::from_millis(2_500)).await;
    let renewed = send(first.request(Method::POST, "/conversations", Some(token))).await;
    assert_eq!(renewed.status, 201, "{renewed:?}");
    let new_expiry = renewed.session_expires_at().expect("an expiry");
    assert!(new_expiry > first_expiry, "renewed: {renewed:?}");

    // Past the first expiry, the other instance must not trust its copy.
    sleep_until(first_expiry + Duration::from_millis(300)).await;
    let after = current(second, token).await;
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.session_expires_at(), Some(new_expiry));
}

/// Sleeps until the wall clock (which the binaries read) reaches `at`.
async fn sleep_until(at: SystemTime) {
    if let Ok(left) = at.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}
