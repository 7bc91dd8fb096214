//! Store behaviours every persistent store must show, as plain async
//! functions over a store, so the SQLite and PostgreSQL test files are
//! lists of calls.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use serde_json::json;
use tower_saas_guard::session::{
    PageRequest, SessionCursor, SessionId, SessionOwner, SessionRecord, SessionStore, SessionToken,
};
use tower_saas_guard::subscription::{Subscription, SubscriptionStatus, SubscriptionStore};

use super::epoch;

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// A random session id.
pub fn random_id() -> SessionId {
    SessionToken::generate().expect("OS randomness").id()
}

/// A record created at `created_at`, expiring an hour later.
pub fn record(
    organization: Option<&str>,
    subject: Option<&str>,
    created_at: SystemTime,
) -> SessionRecord {
    SessionRecord {
        id: random_id(),
        organization_id: organization.map(str::to_owned),
        subject: subject.map(str::to_owned),
        created_at,
        expires_at: created_at + HOUR,
        payload: json!({ "name": "Ada", "email": "ada@example.com" }),
    }
}

pub async fn create_and_load_round_trip(store: &impl SessionStore) {
    let mut full = record(Some("acme"), Some("user-7"), epoch() + 123 * MS);
    full.payload = json!({
        "name": "Zoë 😀",
        "nested": { "list": [1, 2.5, -3, null, true], "empty": {} },
        "big": 18_446_744_073_709_551_615u64,
        "nul": "a\u{0}b",
        "quote": "it's \"quoted\"",
    });
    store.create(&full).await.expect("create");
    assert_eq!(
        store.load(&full.id).await.expect("load"),
        Some(full.clone())
    );

    let bare = SessionRecord {
        payload: json!(null),
        ..record(None, None, epoch())
    };
    store.create(&bare).await.expect("create without owner");
    assert_eq!(store.load(&bare.id).await.expect("load"), Some(bare));

    assert_eq!(store.load(&random_id()).await.expect("load unknown"), None);

    // An expired record still loads (it answers `session_expired`).
    let expired = SessionRecord {
        expires_at: epoch(),
        ..record(Some("acme"), None, epoch() - HOUR)
    };
    store.create(&expired).await.expect("create expired");
    assert_eq!(
        store.load(&expired.id).await.expect("load expired"),
        Some(expired)
    );
}

pub async fn extend_moves_only_forward_and_never_revives(store: &impl SessionStore) {
    let now = epoch();
    let session = SessionRecord {
        expires_at: now + HOUR,
        ..record(Some("acme"), None, now)
    };
    store.create(&session).await.expect("create");

    let later = now + 2 * HOUR;
    assert_eq!(
        store.extend(&session.id, later, now).await.expect("extend"),
        Some(later)
    );
    // Earlier or equal: nothing moves, the stored value is reported.
    assert_eq!(
        store
            .extend(&session.id, now + HOUR, now)
            .await
            .expect("extend backwards"),
        Some(later)
    );
    assert_eq!(
        store
            .extend(&session.id, later, now)
            .await
            .expect("extend same"),
        Some(later)
    );
    // Expired at `now` (stored <= now): never revived.
    let at_expiry = later;
    assert_eq!(
        store
            .extend(&session.id, later + HOUR, at_expiry)
            .await
            .expect("extend expired"),
        Some(later)
    );
    assert_eq!(
        store
            .load(&session.id)
            .await
            .expect("load")
            .map(|r| r.expires_at),
        Some(later)
    );
    assert_eq!(
        store
            .extend(&random_id(), later, now)
            .await
            .expect("extend unknown"),
        None
    );
}

/// Many tasks extend one session to different times at once: the final
/// value is the largest, every answer is at least what its caller asked
/// for, and a reader never sees the value go down.
pub async fn concurrent_extends_keep_the_maximum<S>(store: S)
where
    S: SessionStore + Clone,
{
    let now = epoch();
    let session = record(Some("acme"), None, now);
    store.create(&session).await.expect("create");
    // Odd tasks ask for earlier values than even ones started before them.
    let wanted: Vec<SystemTime> = (0..24u32)
        .map(|i| {
            session.expires_at
                + (if i % 2 == 0 {
                    i * 1000
                } else {
                    24_000 - i * 900
                }) * MS
        })
        .collect();
    let maximum = *wanted.iter().max().expect("non-empty");

    let reader = {
        let (store, id) = (store.clone(), session.id);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..60 {
                let expires_at = store
                    .load(&id)
                    .await
                    .expect("load")
                    .expect("exists")
                    .expires_at;
                seen.push(expires_at);
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    let writers: Vec<_> = wanted
        .iter()
        .map(|&expires_at| {
            let (store, id) = (store.clone(), session.id);
            tokio::spawn(async move {
                let stored = store.extend(&id, expires_at, now).await.expect("extend");
                (expires_at, stored.expect("exists"))
            })
        })
        .collect();
    for writer in writers {
        let (asked, stored) = writer.await.expect("writer");
        assert!(
            stored >= asked,
            "answered {stored:?} below the asked {asked:?}"
        );
    }
    let seen = reader.await.expect("reader");
    assert!(
        seen.windows(2).all(|pair| pair[0] <= pair[1]),
        "expires_at went down: {seen:?}"
    );
    assert_eq!(
        store
            .load(&session.id)
            .await
            .expect("load")
            .map(|r| r.expires_at),
        Some(maximum)
    );
}

pub async fn delete_reports_whether_it_existed(store: &impl SessionStore) {
    let session = record(Some("acme"), Some("u"), epoch());
    store.create(&session).await.expect("create");
    assert!(store.delete(&session.id).await.expect("delete"));
    assert_eq!(store.load(&session.id).await.expect("load"), None);
    assert!(!store.delete(&session.id).await.expect("delete again"));
}

pub async fn delete_all_returns_exactly_the_owners_ids(store: &impl SessionStore) {
    let now = epoch();
    let acme_ada = record(Some("acme"), Some("ada"), now);
    let acme_bob = record(Some("acme"), Some("bob"), now + MS);
    let acme_expired = SessionRecord {
        expires_at: now - HOUR,
        ..record(Some("acme"), None, now - 2 * HOUR)
    };
    let globex_ada = record(Some("globex"), Some("ada"), now);
    let nobody = record(None, None, now);
    for session in [&acme_ada, &acme_bob, &acme_expired, &globex_ada, &nobody] {
        store.create(session).await.expect("create");
    }

    let mut by_subject = store
        .delete_all(SessionOwner::Subject("ada"))
        .await
        .expect("delete_all subject");
    by_subject.sort();
    let mut expected = vec![acme_ada.id, globex_ada.id];
    expected.sort();
    assert_eq!(by_subject, expected);

    let mut by_organization = store
        .delete_all(SessionOwner::Organization("acme"))
        .await
        .expect("delete_all organization");
    by_organization.sort();
    let mut expected = vec![acme_bob.id, acme_expired.id];
    expected.sort();
    assert_eq!(by_organization, expected);

    assert!(store
        .delete_all(SessionOwner::Organization("acme"))
        .await
        .expect("again")
        .is_empty());
    assert!(store.load(&nobody.id).await.expect("load").is_some());
    for gone in [acme_ada, acme_bob, acme_expired, globex_ada] {
        assert_eq!(store.load(&gone.id).await.expect("load"), None);
    }
}

/// Lists `owner` page by page (`limit` at a time, the cursor passed
/// through its text form as a client would), checking every page.
async fn list_all(
    store: &impl SessionStore,
    owner: SessionOwner<'_>,
    now: SystemTime,
    limit: u32,
) -> Vec<SessionRecord> {
    let mut listed = Vec::new();
    let mut page = PageRequest::first(limit);
    loop {
        let answer = store.list(owner, now, page).await.expect("list");
        assert!(answer.sessions.len() <= limit as usize);
        listed.extend(answer.sessions.iter().cloned());
        match answer.next {
            Some(next) => {
                assert_eq!(
                    Some(&next),
                    answer.sessions.last().map(SessionCursor::after).as_ref()
                );
                let cursor: SessionCursor = next.to_string().parse().expect("cursor text");
                page = PageRequest::after(cursor, limit);
            }
            None => return listed,
        }
    }
}

pub async fn list_pages_in_order_with_ties_and_skips_expired(store: &impl SessionStore) {
    let now = epoch();
    let mut acme = Vec::new();
    // Ties on created_at: ordered by id.
    for offset in [0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 5] {
        acme.push(record(
            Some("acme"),
            Some("ada"),
            now - HOUR / 2 + offset * MS,
        ));
    }
    let expired = SessionRecord {
        expires_at: now,
        ..record(Some("acme"), Some("ada"), now - HOUR / 2)
    };
    let other_org = record(Some("globex"), Some("bob"), now - HOUR / 2);
    for session in acme.iter().chain([&expired, &other_org]) {
        store.create(session).await.expect("create");
    }
    let mut expected = acme.clone();
    expected.sort_by_key(|session| (session.created_at, session.id));

    for limit in [1, 2, 3, 11, 50] {
        assert_eq!(
            list_all(store, SessionOwner::Organization("acme"), now, limit).await,
            expected,
            "organization, limit {limit}"
        );
        assert_eq!(
            list_all(store, SessionOwner::Subject("ada"), now, limit).await,
            expected,
            "subject, limit {limit}"
        );
    }
    let first = store
        .list(
            SessionOwner::Organization("acme"),
            now,
            PageRequest::first(11),
        )
        .await
        .expect("list");
    assert_eq!(first.next, None, "exactly `limit` left: no next page");

    // A cursor from the middle of a tie continues right after it.
    let cursor = SessionCursor::after(&expected[1]);
    let rest = store
        .list(
            SessionOwner::Organization("acme"),
            now,
            PageRequest::after(cursor, 100),
        )
        .await
        .expect("list after");
    assert_eq!(rest.sessions, expected[2..]);
    assert_eq!(
        list_all(store, SessionOwner::Subject("bob"), now, 5).await,
        [other_org]
    );
    assert!(
        list_all(store, SessionOwner::Organization("nobody"), now, 5)
            .await
            .is_empty()
    );
    // Later, everything has expired.
    assert!(
        list_all(store, SessionOwner::Organization("acme"), now + HOUR, 5)
            .await
            .is_empty()
    );
}

pub async fn purge_deletes_only_what_expired_before(store: &impl SessionStore) {
    let now = epoch();
    let old = SessionRecord {
        expires_at: now - HOUR,
        ..record(Some("acme"), None, now - 2 * HOUR)
    };
    let boundary = SessionRecord {
        expires_at: now,
        ..record(Some("acme"), None, now - HOUR)
    };
    let live = record(Some("acme"), None, now);
    for session in [&old, &boundary, &live] {
        store.create(session).await.expect("create");
    }
    assert_eq!(store.purge_expired(now).await.expect("purge"), 1);
    assert_eq!(store.load(&old.id).await.expect("load"), None);
    assert!(store.load(&boundary.id).await.expect("load").is_some());
    assert_eq!(store.purge_expired(now).await.expect("purge again"), 0);
    assert_eq!(
        store
            .purge_expired(now + 2 * HOUR)
            .await
            .expect("purge all"),
        2
    );
}

fn subscription(organization: &str, id: &str, status: SubscriptionStatus) -> Subscription {
    Subscription {
        organization_id: organization.to_owned(),
        subscription_id: id.to_owned(),
        status,
        plan: "pro".to_owned(),
        current_period_end: Some(epoch() + 30 * 24 * HOUR + 7 * MS),
        trial_end: None,
    }
}

pub async fn subscriptions_upsert_replace_and_keep_several(store: &impl SubscriptionStore) {
    assert!(store
        .subscriptions("acme")
        .await
        .expect("none yet")
        .is_empty());
    let first = subscription("acme", "sub_1", SubscriptionStatus::Trialing);
    store.upsert(&first).await.expect("insert");
    assert_eq!(
        store.subscriptions("acme").await.expect("read"),
        std::slice::from_ref(&first)
    );

    let replaced = Subscription {
        status: SubscriptionStatus::Active,
        plan: "enterprise".to_owned(),
        current_period_end: None,
        trial_end: Some(epoch() + HOUR),
        ..first
    };
    store.upsert(&replaced).await.expect("replace");
    assert_eq!(
        store.subscriptions("acme").await.expect("read"),
        std::slice::from_ref(&replaced)
    );

    let second = subscription("acme", "sub_2", SubscriptionStatus::PastDue);
    let other = subscription("globex", "sub_1", SubscriptionStatus::Canceled);
    store.upsert(&second).await.expect("second");
    store.upsert(&other).await.expect("other org");
    let mut both = store.subscriptions("acme").await.expect("read");
    both.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
    assert_eq!(both, [replaced, second]);
    assert_eq!(store.subscriptions("globex").await.expect("read"), [other]);

    for status in SubscriptionStatus::ALL {
        let each = subscription("statuses", status.as_str(), status);
        store.upsert(&each).await.expect("every status");
    }
    let statuses = store.subscriptions("statuses").await.expect("read");
    assert_eq!(statuses.len(), SubscriptionStatus::ALL.len());
    assert!(statuses
        .iter()
        .all(|each| each.status.as_str() == each.subscription_id));
}
