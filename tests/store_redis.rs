//! `RedisSessionStore` against a real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`): every operation, the key layout and Redis
//! expiries, malformed values, and no token in clear. Each test works under
//! its own key prefix and removes its keys; without Redis the tests skip
//! (and fail under `CI=true`).
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tower_saas_guard::session::{
    MemorySessionStore, PageRequest, SessionId, SessionOwner, SessionRecord, SessionRefreshLayer,
    SessionStore, SessionToken,
};
use tower_saas_guard::stores::redis::RedisSessionStore;
use tower_saas_guard::{unix_millis, StoreErrorKind};

use support::redis_service::{base64url_decode, contains, redis_fixture, RedisFixture};

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The wall clock to the millisecond: Redis expiries are real times.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_millis(SystemTime::now()))
}

fn fresh_id() -> SessionId {
    SessionToken::generate().expect("randomness").id()
}

fn record(
    organization: Option<&str>,
    subject: Option<&str>,
    created_at: SystemTime,
    expires_at: SystemTime,
) -> SessionRecord {
    SessionRecord {
        id: fresh_id(),
        organization_id: organization.map(str::to_owned),
        subject: subject.map(str::to_owned),
        created_at,
        expires_at,
        payload: json!({ "name": "Ada", "email": "ada@example.com", "tags": [] }),
    }
}

/// The key's Redis expiry as a time (`PEXPIRETIME`); `None` without one.
async fn redis_expiry(redis: &RedisFixture, key: &str) -> Option<SystemTime> {
    let millis: i64 = redis.query(redis::cmd("PEXPIRETIME").arg(key)).await;
    u64::try_from(millis)
        .ok()
        .map(|millis| UNIX_EPOCH + Duration::from_millis(millis))
}

async fn exists(redis: &RedisFixture, key: &str) -> bool {
    redis.query::<i64>(redis::cmd("EXISTS").arg(key)).await == 1
}

async fn members(redis: &RedisFixture, key: &str) -> Vec<String> {
    redis
        .query(redis::cmd("ZRANGE").arg(key).arg(0).arg(-1))
        .await
}

macro_rules! redis_or_skip {
    () => {
        match redis_fixture(concat!(module_path!(), "::", line!())).await {
            Some(redis) => redis,
            None => return,
        }
    };
}

#[tokio::test]
async fn create_then_load_round_trips_every_field() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    let full = SessionRecord {
        payload: json!({ "name": "Ada", "nested": { "list": [1, 2.5, "three", null], "empty": [] }, "unicode": "é✓" }),
        ..record(Some("org:1 {odd}"), Some("user\n42"), start, start + HOUR)
    };
    let bare = SessionRecord {
        payload: json!(null),
        ..record(None, None, start - SECOND, start + 2 * HOUR)
    };
    store.create(&full).await.expect("create");
    store.create(&bare).await.expect("create");

    assert_eq!(
        store.load(&full.id).await.expect("load"),
        Some(full.clone())
    );
    assert_eq!(
        store.load(&bare.id).await.expect("load"),
        Some(bare.clone())
    );
    assert_eq!(store.load(&fresh_id()).await.expect("load"), None);
    assert!(exists(&redis, &redis.session_key(&full.id)).await);
    redis.finish().await;
}

#[tokio::test]
async fn redis_expiry_follows_expires_at_plus_retention() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    let session = record(Some("acme"), None, start, start + HOUR);
    store.create(&session).await.expect("create");
    let key = redis.session_key(&session.id);
    assert_eq!(redis_expiry(&redis, &key).await, Some(start + HOUR + DAY));

    // A renewal moves the Redis expiry with it; a refused one does not.
    let renewed = store
        .extend(&session.id, start + 3 * HOUR, start + SECOND)
        .await
        .expect("extend");
    assert_eq!(renewed, Some(start + 3 * HOUR));
    assert_eq!(
        redis_expiry(&redis, &key).await,
        Some(start + 3 * HOUR + DAY)
    );
    store
        .extend(&session.id, start + 2 * HOUR, start + SECOND)
        .await
        .expect("extend");
    assert_eq!(
        redis_expiry(&redis, &key).await,
        Some(start + 3 * HOUR + DAY)
    );

    // The retention is the store's setting.
    let short = RedisSessionStore::new(redis.connection.clone())
        .key_prefix(&redis.prefix)
        .expired_retention(10 * SECOND);
    let other = record(None, Some("u"), start, start + HOUR);
    short.create(&other).await.expect("create");
    assert_eq!(
        redis_expiry(&redis, &redis.session_key(&other.id)).await,
        Some(start + HOUR + 10 * SECOND)
    );
    let ttl: i64 = redis
        .query(redis::cmd("PTTL").arg(redis.session_key(&other.id)))
        .await;
    assert!(ttl > 0 && ttl <= (HOUR + 10 * SECOND).as_millis() as i64);
    redis.finish().await;
}

#[tokio::test]
async fn expired_session_loads_during_retention_then_vanishes() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    // Expired an hour ago: still there for the layer to answer
    // `session_expired`.
    let expired = record(Some("acme"), None, start - 2 * HOUR, start - HOUR);
    store.create(&expired).await.expect("create");
    assert_eq!(
        store.load(&expired.id).await.expect("load"),
        Some(expired.clone())
    );
    // Expired longer ago than the retention: Redis has dropped it already.
    let gone = record(Some("acme"), None, start - 3 * DAY, start - 2 * DAY);
    store.create(&gone).await.expect("create");
    assert_eq!(store.load(&gone.id).await.expect("load"), None);
    assert!(!exists(&redis, &redis.session_key(&gone.id)).await);
    redis.finish().await;
}

#[tokio::test]
async fn extend_moves_forward_only_and_never_revives() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    let session = record(Some("acme"), None, start, start + HOUR);
    store.create(&session).await.expect("create");
    let id = session.id;

    // Forward while alive.
    assert_eq!(
        store
            .extend(&id, start + 2 * HOUR, start)
            .await
            .expect("extend"),
        Some(start + 2 * HOUR)
    );
    // Never backwards, never equal-as-write: the stored value comes back.
    assert_eq!(
        store
            .extend(&id, start + HOUR, start)
            .await
            .expect("extend"),
        Some(start + 2 * HOUR)
    );
    assert_eq!(
        store
            .extend(&id, start + 2 * HOUR, start)
            .await
            .expect("extend"),
        Some(start + 2 * HOUR)
    );
    // Not once expired at `now`, however far the new value.
    assert_eq!(
        store
            .extend(&id, start + 10 * HOUR, start + 2 * HOUR)
            .await
            .expect("extend"),
        Some(start + 2 * HOUR)
    );
    assert_eq!(
        store
            .extend(&id, start + 10 * HOUR, start + 3 * HOUR)
            .await
            .expect("extend"),
        Some(start + 2 * HOUR)
    );
    assert_eq!(
        store
            .load(&id)
            .await
            .expect("load")
            .map(|record| record.expires_at),
        Some(start + 2 * HOUR)
    );
    // Unknown: nothing, and nothing created.
    let unknown = fresh_id();
    assert_eq!(
        store
            .extend(&unknown, start + HOUR, start)
            .await
            .expect("extend"),
        None
    );
    assert!(!exists(&redis, &redis.session_key(&unknown)).await);
    // The purge's expiry set follows.
    let score: f64 = redis
        .query(
            redis::cmd("ZSCORE")
                .arg(redis.key("expiry"))
                .arg(id.to_string()),
        )
        .await;
    assert_eq!(score as u64, unix_millis(start + 2 * HOUR));
    redis.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_extends_end_at_the_maximum() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    let session = record(Some("acme"), None, start, start + HOUR);
    store.create(&session).await.expect("create");

    let targets: Vec<SystemTime> = (0..64u64)
        .map(|i| start + HOUR + Duration::from_millis((i * 7919) % 1000 * 1000))
        .collect();
    let tasks: Vec<_> = targets
        .iter()
        .map(|&target| {
            let store = store.clone();
            let id = session.id;
            tokio::spawn(async move { store.extend(&id, target, start).await })
        })
        .collect();
    for (task, target) in tasks.into_iter().zip(&targets) {
        let stored = task.await.expect("task").expect("extend").expect("exists");
        // What comes back is never less than what was asked.
        assert!(stored >= *target);
    }
    let max = *targets.iter().max().expect("targets");
    let loaded = store
        .load(&session.id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(loaded.expires_at, max);
    assert_eq!(
        redis_expiry(&redis, &redis.session_key(&session.id)).await,
        Some(max + DAY)
    );
    redis.finish().await;
}

#[tokio::test]
async fn delete_removes_the_record_and_its_index_entries() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    let session = record(Some("acme"), Some("ada"), start, start + HOUR);
    let kept = record(Some("acme"), Some("ada"), start, start + HOUR);
    store.create(&session).await.expect("create");
    store.create(&kept).await.expect("create");

    assert!(store.delete(&session.id).await.expect("delete"));
    assert!(!store.delete(&session.id).await.expect("delete"));
    assert_eq!(store.load(&session.id).await.expect("load"), None);
    let hex = session.id.to_string();
    for index in ["org:acme", "subject:ada", "expiry"] {
        assert!(
            !members(&redis, &redis.key(index)).await.contains(&hex),
            "{index}"
        );
    }
    let entry: Option<String> = redis
        .query(redis::cmd("HGET").arg(redis.key("indexes")).arg(&hex))
        .await;
    assert_eq!(entry, None);

    // The last one out leaves no key behind.
    assert!(store.delete(&kept.id).await.expect("delete"));
    assert!(
        redis.keys().await.is_empty(),
        "keys left: {:?}",
        redis.keys().await
    );
    redis.finish().await;
}

#[tokio::test]
async fn delete_all_by_organization_or_subject_returns_exactly_their_ids() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    let acme_ada = record(Some("acme"), Some("ada"), start, start + HOUR);
    let acme_bob = record(Some("acme"), Some("bob"), start, start + HOUR);
    // Expired but within retention: revoked too.
    let acme_expired = record(Some("acme"), None, start - 2 * HOUR, start - HOUR);
    let globex_ada = record(Some("globex"), Some("ada"), start, start + HOUR);
    let lone_ada = record(None, Some("ada"), start, start + HOUR);
    for session in [&acme_ada, &acme_bob, &acme_expired, &globex_ada, &lone_ada] {
        store.create(session).await.expect("create");
    }

    let mut deleted = store
        .delete_all(SessionOwner::Organization("acme"))
        .await
        .expect("delete_all");
    deleted.sort();
    let mut expected = vec![acme_ada.id, acme_bob.id, acme_expired.id];
    expected.sort();
    assert_eq!(deleted, expected);
    assert!(!exists(&redis, &redis.key("org:acme")).await);
    assert!(!exists(&redis, &redis.key("subject:bob")).await);
    // Ada's subject index lost only her acme session.
    let mut ada = members(&redis, &redis.key("subject:ada")).await;
    ada.sort();
    let mut expected_ada = vec![globex_ada.id.to_string(), lone_ada.id.to_string()];
    expected_ada.sort();
    assert_eq!(ada, expected_ada);

    let mut deleted = store
        .delete_all(SessionOwner::Subject("ada"))
        .await
        .expect("delete_all");
    deleted.sort();
    let mut expected = vec![globex_ada.id, lone_ada.id];
    expected.sort();
    assert_eq!(deleted, expected);
    assert_eq!(
        store
            .delete_all(SessionOwner::Subject("ada"))
            .await
            .expect("delete_all"),
        Vec::<SessionId>::new()
    );
    for session in [&acme_ada, &acme_bob, &acme_expired, &globex_ada, &lone_ada] {
        assert_eq!(store.load(&session.id).await.expect("load"), None);
    }
    assert!(
        redis.keys().await.is_empty(),
        "keys left: {:?}",
        redis.keys().await
    );
    redis.finish().await;
}

#[tokio::test]
async fn delete_all_spans_several_batches_and_skips_sessions_gone_from_redis() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    let mut expected = Vec::new();
    for _ in 0..1100 {
        let session = record(Some("big"), None, start, start + HOUR);
        store.create(&session).await.expect("create");
        expected.push(session.id);
    }
    // Gone from Redis already (expired past retention): not returned.
    let gone = record(Some("big"), None, start - 3 * DAY, start - 2 * DAY);
    store.create(&gone).await.expect("create");

    let mut deleted = store
        .delete_all(SessionOwner::Organization("big"))
        .await
        .expect("delete_all");
    deleted.sort();
    expected.sort();
    assert_eq!(deleted, expected);
    assert!(redis.keys().await.is_empty(), "keys left");
    redis.finish().await;
}

/// The same records in Redis and in the memory store (the reference).
async fn both(
    redis: &RedisFixture,
    records: &[SessionRecord],
) -> (RedisSessionStore, MemorySessionStore) {
    let store = redis.store();
    let reference = MemorySessionStore::new();
    for record in records {
        store.create(record).await.expect("create");
        reference.create(record).await.expect("create");
    }
    (store, reference)
}

#[tokio::test]
async fn list_pages_in_created_order_with_ties_skipping_expired() {
    let redis = redis_or_skip!();
    let start = now();
    let mut records = Vec::new();
    // Four creation instants with four sessions each (ties broken by id);
    // every third one expired (but still in Redis), another org's mixed in.
    for (i, created) in [0u64, 5, 5, 5, 9, 9, 9, 9, 12, 12, 20, 20, 20, 20, 31, 31]
        .into_iter()
        .enumerate()
    {
        let created_at = start - HOUR + Duration::from_millis(created);
        let expires_at = if i % 3 == 2 {
            start - SECOND
        } else {
            start + HOUR
        };
        records.push(record(
            Some("acme"),
            Some(if i % 2 == 0 { "ada" } else { "bob" }),
            created_at,
            expires_at,
        ));
    }
    records.push(record(
        Some("globex"),
        Some("ada"),
        start - HOUR,
        start + HOUR,
    ));
    let (store, reference) = both(&redis, &records).await;

    for owner in [
        SessionOwner::Organization("acme"),
        SessionOwner::Subject("ada"),
        SessionOwner::Subject("bob"),
        SessionOwner::Organization("nobody"),
    ] {
        for limit in [1, 2, 3, 4, 50] {
            let mut page = PageRequest::first(limit);
            let mut listed = Vec::new();
            loop {
                let got = store.list(owner, start, page).await.expect("list");
                let want = reference.list(owner, start, page).await.expect("list");
                assert_eq!(got, want, "{owner:?} limit {limit}");
                listed.extend(got.sessions.iter().map(|record| record.id));
                match got.next {
                    Some(cursor) => page = PageRequest::after(cursor, limit),
                    None => break,
                }
            }
            let live = records
                .iter()
                .filter(|record| owner.owns(record) && record.expires_at > start)
                .count();
            assert_eq!(listed.len(), live, "{owner:?} limit {limit}");
        }
    }
    redis.finish().await;
}

#[tokio::test]
async fn list_continues_after_a_cursor_whose_session_was_deleted() {
    let redis = redis_or_skip!();
    let start = now();
    let records: Vec<_> = [0u64, 0, 0, 0, 1, 1, 2]
        .into_iter()
        .map(|created| {
            record(
                Some("acme"),
                None,
                start - HOUR + Duration::from_millis(created),
                start + HOUR,
            )
        })
        .collect();
    let (store, reference) = both(&redis, &records).await;
    let owner = SessionOwner::Organization("acme");

    let first = store
        .list(owner, start, PageRequest::first(2))
        .await
        .expect("list");
    let cursor = first.next.expect("more pages");
    // The page's last session goes away before the next page is read.
    store.delete(&cursor.id).await.expect("delete");
    reference.delete(&cursor.id).await.expect("delete");
    let second = store
        .list(owner, start, PageRequest::after(cursor, 2))
        .await
        .expect("list");
    assert_eq!(
        second,
        reference
            .list(owner, start, PageRequest::after(cursor, 2))
            .await
            .expect("list")
    );
    assert_eq!(second.sessions.len(), 2);
    assert!(second.sessions.iter().all(|record| cursor.precedes(record)));
    redis.finish().await;
}

#[tokio::test]
async fn list_drops_index_members_whose_session_left_redis() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    // 600 sessions gone from Redis (more than one script call examines),
    // then two live ones.
    for _ in 0..600 {
        store
            .create(&record(
                Some("acme"),
                Some("ada"),
                start - 3 * DAY,
                start - 2 * DAY,
            ))
            .await
            .expect("create");
    }
    let live: Vec<_> = (0..2)
        .map(|_| record(Some("acme"), Some("ada"), start - HOUR, start + HOUR))
        .collect();
    for session in &live {
        store.create(session).await.expect("create");
    }

    let page = store
        .list(
            SessionOwner::Organization("acme"),
            start,
            PageRequest::first(10),
        )
        .await
        .expect("list");
    let mut listed: Vec<_> = page.sessions.iter().map(|record| record.id).collect();
    listed.sort();
    let mut expected: Vec<_> = live.iter().map(|record| record.id).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(page.next, None);
    // The dead members went from both indexes, the expiry set and the
    // registry.
    assert_eq!(members(&redis, &redis.key("org:acme")).await.len(), 2);
    assert_eq!(members(&redis, &redis.key("subject:ada")).await.len(), 2);
    assert_eq!(members(&redis, &redis.key("expiry")).await.len(), 2);
    let registry: i64 = redis
        .query(redis::cmd("HLEN").arg(redis.key("indexes")))
        .await;
    assert_eq!(registry, 2);
    redis.finish().await;
}

#[tokio::test]
async fn purge_deletes_what_expired_before_the_time_with_its_index_entries() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    let long_expired = record(
        Some("acme"),
        Some("ada"),
        start - 3 * HOUR,
        start - 2 * HOUR,
    );
    let just_expired = record(Some("acme"), None, start - 2 * HOUR, start - SECOND);
    let live = record(Some("acme"), Some("ada"), start, start + HOUR);
    // Gone from Redis already: its bookkeeping is purged too.
    let gone = record(Some("globex"), Some("cy"), start - 3 * DAY, start - 2 * DAY);
    for session in [&long_expired, &just_expired, &live, &gone] {
        store.create(session).await.expect("create");
    }

    assert_eq!(store.purge_expired(start - HOUR).await.expect("purge"), 2);
    assert_eq!(store.load(&long_expired.id).await.expect("load"), None);
    assert_eq!(
        store.load(&just_expired.id).await.expect("load"),
        Some(just_expired.clone())
    );
    assert!(!exists(&redis, &redis.key("org:globex")).await);
    assert!(!exists(&redis, &redis.key("subject:cy")).await);
    assert_eq!(
        members(&redis, &redis.key("subject:ada")).await,
        vec![live.id.to_string()]
    );
    // `before` is exclusive.
    assert_eq!(store.purge_expired(start - SECOND).await.expect("purge"), 0);
    assert_eq!(store.purge_expired(start).await.expect("purge"), 1);
    assert_eq!(store.purge_expired(start).await.expect("purge"), 0);
    assert_eq!(
        store.load(&live.id).await.expect("load"),
        Some(live.clone())
    );

    // Everything purged: nothing left under the prefix.
    assert_eq!(
        store.purge_expired(start + 2 * HOUR).await.expect("purge"),
        1
    );
    assert!(
        redis.keys().await.is_empty(),
        "keys left: {:?}",
        redis.keys().await
    );
    redis.finish().await;
}

#[tokio::test]
async fn purge_spans_several_batches() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    for _ in 0..1234 {
        store
            .create(&record(Some("acme"), None, start - 2 * HOUR, start - HOUR))
            .await
            .expect("create");
    }
    assert_eq!(store.purge_expired(start).await.expect("purge"), 1234);
    assert!(redis.keys().await.is_empty(), "keys left");
    redis.finish().await;
}

fn assert_serialization<T: std::fmt::Debug>(
    result: Result<T, tower_saas_guard::StoreError>,
    what: &str,
) {
    match result {
        Err(error) => assert_eq!(
            error.kind(),
            StoreErrorKind::Serialization,
            "{what}: {error:?}"
        ),
        Ok(value) => panic!("{what}: expected a serialization error, got {value:?}"),
    }
}

#[tokio::test]
async fn malformed_values_are_serialization_errors() {
    let redis = redis_or_skip!();
    let store = redis.store();
    let start = now();
    let good = |field: &str, value: &str| {
        let mut fields = vec![
            ("created_at", unix_millis(start).to_string()),
            ("expires_at", unix_millis(start + HOUR).to_string()),
            ("organization_id", "acme".to_owned()),
            ("payload", "{}".to_owned()),
        ];
        fields.retain(|(name, _)| *name != field);
        if !value.is_empty() {
            fields.push((
                Box::leak(field.to_owned().into_boxed_str()),
                value.to_owned(),
            ));
        }
        fields
    };
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("payload not JSON", good("payload", "{not json")),
        ("no payload", good("payload", "")),
        ("no expires_at", good("expires_at", "")),
        ("no created_at", good("created_at", "")),
        ("negative expires_at", good("expires_at", "-5")),
        ("fractional created_at", good("created_at", "1.5")),
        ("hex expires_at", good("expires_at", "0x10")),
        (
            "huge expires_at",
            good("expires_at", "99999999999999999999999"),
        ),
        ("wrong fields only", vec![("foo", "bar".to_owned())]),
    ];
    for (what, fields) in cases {
        let id = fresh_id();
        let key = redis.session_key(&id);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        for (name, value) in &fields {
            hset.arg(*name).arg(value);
        }
        redis.query::<i64>(&hset).await;
        assert_serialization(store.load(&id).await, what);
        if fields
            .iter()
            .all(|(name, value)| *name != "expires_at" || value.parse::<u64>().is_err())
        {
            // The renewal cannot read the stored expiry either.
            assert_serialization(store.extend(&id, start + 2 * HOUR, start).await, what);
        }
        redis.query::<i64>(redis::cmd("DEL").arg(&key)).await;
    }

    // A key of another type altogether.
    let id = fresh_id();
    redis
        .query::<()>(
            redis::cmd("SET")
                .arg(redis.session_key(&id))
                .arg("raw junk"),
        )
        .await;
    assert_serialization(store.load(&id).await, "a string key");
    assert_serialization(
        store.extend(&id, start + 2 * HOUR, start).await,
        "a string key",
    );

    // Listing meets a junk record, or a junk index member.
    redis
        .query::<i64>(
            redis::cmd("ZADD")
                .arg(redis.key("org:acme"))
                .arg(unix_millis(start))
                .arg(id.to_string()),
        )
        .await;
    assert_serialization(
        store
            .list(
                SessionOwner::Organization("acme"),
                start,
                PageRequest::first(10),
            )
            .await,
        "listing a string key",
    );
    redis
        .query::<i64>(
            redis::cmd("ZADD")
                .arg(redis.key("org:junk"))
                .arg(unix_millis(start))
                .arg("not-an-id"),
        )
        .await;
    redis
        .query::<()>(
            redis::cmd("SET")
                .arg(redis.key("session:not-an-id"))
                .arg("x"),
        )
        .await;
    // The script has deleted by then: the junk member is skipped (it can
    // never have been cached), not an error that would hide the real ids.
    assert_eq!(
        store
            .delete_all(SessionOwner::Organization("junk"))
            .await
            .expect("an index member that is no id is skipped"),
        Vec::<tower_saas_guard::session::SessionId>::new(),
    );
    // An index key of the wrong type.
    redis
        .query::<()>(redis::cmd("SET").arg(redis.key("subject:ada")).arg("x"))
        .await;
    assert_serialization(
        store
            .list(SessionOwner::Subject("ada"), start, PageRequest::first(10))
            .await,
        "an index of the wrong type",
    );
    redis.finish().await;
}

#[tokio::test]
async fn unreachable_redis_is_a_backend_error() {
    // Port 1 on loopback: nothing listens there.
    let error = RedisSessionStore::connect("redis://127.0.0.1:1")
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(error.kind(), StoreErrorKind::Backend);
    assert!(std::error::Error::source(&error).is_some());
    let error = RedisSessionStore::connect("not a url")
        .await
        .expect_err("not a URL");
    assert_eq!(error.kind(), StoreErrorKind::Backend);
}

#[tokio::test]
async fn no_token_in_clear_in_any_key_or_value() {
    let redis = redis_or_skip!();
    let sessions = SessionRefreshLayer::builder(redis.store())
        .build()
        .expect("valid configuration");
    let handle = sessions.handle();
    let mut tokens = Vec::new();
    for i in 0..8 {
        let created = handle
            .create_for(
                Some("acme"),
                Some(&format!("user-{i}")),
                json!({ "name": "Ada", "n": i }),
            )
            .await
            .expect("create");
        tokens.push(created.token);
    }
    // A revocation writes too.
    handle.revoke(&tokens[7]).await.expect("revoke");

    let dump = redis.dump().await;
    assert!(!dump.is_empty());
    for token in &tokens {
        let text = token.to_string();
        let decoded = base64url_decode(&text);
        assert_eq!(decoded.len(), 32);
        for (key, values) in &dump {
            for haystack in std::iter::once(key).chain(values) {
                assert!(
                    !contains(haystack, text.as_bytes()),
                    "token text in {key:?}"
                );
                assert!(!contains(haystack, &decoded), "token bytes in {key:?}");
            }
        }
    }
    // What is there is the id (SHA-256 of the token).
    assert!(dump
        .iter()
        .any(|(key, _)| *key == redis.session_key(&tokens[0].id()).into_bytes()));
    redis.finish().await;
}

#[tokio::test]
async fn a_lost_connection_is_a_backend_error_and_the_manager_recovers() {
    let redis = redis_or_skip!();
    let start = now();
    let session = record(Some("acme"), None, start, start + HOUR);
    redis.store().create(&session).await.expect("create");

    // Any async connection works; a multiplexed one does not reconnect.
    let client = redis.client_as("plain").await;
    let plain = RedisSessionStore::new(
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect"),
    )
    .key_prefix(&redis.prefix);
    assert_eq!(
        plain.load(&session.id).await.expect("load"),
        Some(session.clone())
    );
    // The connection manager reconnects after the failure it meets.
    let managed = RedisSessionStore::from_client(redis.client_as("managed").await)
        .await
        .expect("connect")
        .key_prefix(&redis.prefix);
    assert_eq!(
        managed.load(&session.id).await.expect("load"),
        Some(session.clone())
    );

    assert_eq!(redis.kill_connections_of("plain", "normal").await, 1);
    assert_eq!(redis.kill_connections_of("managed", "normal").await, 1);
    let error = plain.load(&session.id).await.expect_err("connection lost");
    assert_eq!(error.kind(), StoreErrorKind::Backend);
    assert!(std::error::Error::source(&error).is_some());
    let started = tokio::time::Instant::now();
    loop {
        match managed.load(&session.id).await {
            Ok(loaded) => {
                assert_eq!(loaded, Some(session.clone()));
                break;
            }
            Err(error) => assert_eq!(error.kind(), StoreErrorKind::Backend),
        }
        assert!(
            started.elapsed() < 2 * SECOND,
            "the manager did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.finish().await;
}

/// The conformance kit's session behaviours, and its malformed-record check
/// with two kinds of damage only Redis can do.
#[cfg(feature = "test-kit")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_kit_passes() {
    use tower_saas_guard::test_kit;

    let fixture = redis_or_skip!();
    let redis = &fixture;
    // The kit's records sit at fixed times in early 2027; a century of
    // retention keeps Redis from expiring them by the wall clock, whatever
    // the date the test runs (expiry itself is covered above).
    let kit_store = || {
        redis
            .store()
            .expired_retention(Duration::from_secs(100 * 365 * 24 * 3600))
    };
    test_kit::session_store_suite(|| async { kit_store() }).await;

    test_kit::malformed_session_is_an_error(kit_store(), |session| async move {
        redis
            .query::<i64>(
                redis::cmd("HSET")
                    .arg(redis.session_key(&session.id))
                    .arg("payload")
                    .arg("{not json"),
            )
            .await;
    })
    .await;
    test_kit::malformed_session_is_an_error(kit_store(), |session| async move {
        redis
            .query::<i64>(
                redis::cmd("HSET")
                    .arg(redis.session_key(&session.id))
                    .arg("created_at")
                    .arg("-5"),
            )
            .await;
    })
    .await;
    test_kit::malformed_session_is_an_error(kit_store(), |session| async move {
        let key = redis.session_key(&session.id);
        redis.query::<i64>(redis::cmd("DEL").arg(&key)).await;
        redis
            .query::<()>(redis::cmd("SET").arg(&key).arg("raw junk"))
            .await;
    })
    .await;
    fixture.finish().await;
}
