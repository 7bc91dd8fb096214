//! The session store behaviours.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::future::{join_all, poll_fn};
use http::{Request, Response};
use serde_json::json;
use tower_layer::Layer;
use tower_service::Service;

use super::{at, run, unique};
use crate::clock::{Clock, ManualClock};
use crate::error::{StoreError, StoreErrorKind};
use crate::session::{
    PageRequest, SessionId, SessionOwner, SessionPage, SessionRecord, SessionRefreshLayer,
    SessionStore, SessionToken, SESSION_EXPIRES_AT,
};

/// Every session store behaviour of the kit, each on a fresh store from
/// `make`. Panics (naming the behaviour) at the first one that fails.
pub async fn session_store_suite<S, Make, MakeFuture>(make: Make)
where
    S: SessionStore,
    Make: Fn() -> MakeFuture,
    MakeFuture: Future<Output = S>,
{
    run(
        "create_then_load_round_trips",
        &make,
        create_then_load_round_trips,
    )
    .await;
    run(
        "unknown_sessions_are_none",
        &make,
        unknown_sessions_are_none,
    )
    .await;
    run(
        "extend_moves_expiry_forward_only",
        &make,
        extend_moves_expiry_forward_only,
    )
    .await;
    run(
        "extend_never_revives_an_expired_session",
        &make,
        extend_never_revives_an_expired_session,
    )
    .await;
    run(
        "concurrent_extends_never_move_expiry_backwards",
        &make,
        concurrent_extends_never_move_expiry_backwards,
    )
    .await;
    run(
        "delete_removes_a_session_once",
        &make,
        delete_removes_a_session_once,
    )
    .await;
    run(
        "delete_all_by_organization_returns_exactly_its_ids",
        &make,
        delete_all_by_organization_returns_exactly_its_ids,
    )
    .await;
    run(
        "delete_all_by_subject_returns_exactly_its_ids",
        &make,
        delete_all_by_subject_returns_exactly_its_ids,
    )
    .await;
    run(
        "list_pages_through_live_sessions_oldest_first",
        &make,
        list_pages_through_live_sessions_oldest_first,
    )
    .await;
    run(
        "list_by_subject_sees_only_that_subject",
        &make,
        list_by_subject_sees_only_that_subject,
    )
    .await;
    run(
        "expired_sessions_load_until_purged",
        &make,
        expired_sessions_load_until_purged,
    )
    .await;
    run(
        "two_layers_on_one_store_write_once_per_window_and_never_backwards",
        &make,
        two_layers_on_one_store_write_once_per_window_and_never_backwards,
    )
    .await;
}

fn new_id() -> SessionId {
    SessionToken::generate().expect("os randomness").id()
}

fn record(
    organization_id: Option<&str>,
    subject: Option<&str>,
    created_at: SystemTime,
    expires_at: SystemTime,
) -> SessionRecord {
    SessionRecord {
        id: new_id(),
        organization_id: organization_id.map(str::to_owned),
        subject: subject.map(str::to_owned),
        created_at,
        expires_at,
        payload: json!({ "name": "Ada", "email": "ada@example.com" }),
    }
}

async fn create(store: &impl SessionStore, record: &SessionRecord) {
    store
        .create(record)
        .await
        .unwrap_or_else(|error| panic!("create failed: {error} ({error:?})"));
}

async fn load(store: &impl SessionStore, id: &SessionId) -> Option<SessionRecord> {
    store
        .load(id)
        .await
        .unwrap_or_else(|error| panic!("load failed: {error} ({error:?})"))
}

async fn extend(
    store: &impl SessionStore,
    id: &SessionId,
    expires_at: SystemTime,
    now: SystemTime,
) -> Option<SystemTime> {
    store
        .extend(id, expires_at, now)
        .await
        .unwrap_or_else(|error| panic!("extend failed: {error} ({error:?})"))
}

/// A record comes back exactly as written: ids, organization, subject,
/// times to the millisecond, and a nested JSON payload.
pub async fn create_then_load_round_trips(store: impl SessionStore) {
    let mut full = record(Some(&unique("org")), Some(&unique("user")), at(0), at(3600));
    full.created_at += Duration::from_millis(123);
    full.expires_at += Duration::from_millis(456);
    full.payload = json!({
        "name": "Zoë \"Ada\" O'Brien", "email": "z@example.com",
        "nested": { "list": [1, 2.5, null, true], "empty": {} }, "unicode": "日本語 🎉"
    });
    let bare = SessionRecord {
        organization_id: None,
        subject: None,
        payload: serde_json::Value::Null,
        ..record(None, None, at(10), at(20))
    };
    for written in [&full, &bare] {
        create(&store, written).await;
    }
    for written in [full, bare] {
        let read = load(&store, &written.id).await;
        assert_eq!(
            read.as_ref(),
            Some(&written),
            "create_then_load_round_trips: the record read back differs from the one written"
        );
    }
}

/// Loading, extending or deleting an id the store never saw: `None`/`false`.
pub async fn unknown_sessions_are_none(store: impl SessionStore) {
    let id = new_id();
    assert_eq!(
        load(&store, &id).await,
        None,
        "unknown_sessions_are_none: load"
    );
    assert_eq!(
        extend(&store, &id, at(100), at(0)).await,
        None,
        "unknown_sessions_are_none: extend must not create a record"
    );
    assert_eq!(
        load(&store, &id).await,
        None,
        "unknown_sessions_are_none: extend created one"
    );
    let deleted = store.delete(&id).await.expect("delete");
    assert!(
        !deleted,
        "unknown_sessions_are_none: delete reported a record"
    );
}

/// `extend` moves `expires_at` to a later value, and leaves it alone for
/// an equal or earlier one; it always answers the stored value.
pub async fn extend_moves_expiry_forward_only(store: impl SessionStore) {
    let session = record(None, None, at(0), at(100));
    create(&store, &session).await;
    let now = at(50);
    let name = "extend_moves_expiry_forward_only";
    assert_eq!(
        extend(&store, &session.id, at(200), now).await,
        Some(at(200)),
        "{name}: later"
    );
    assert_eq!(
        extend(&store, &session.id, at(150), now).await,
        Some(at(200)),
        "{name}: earlier"
    );
    assert_eq!(
        extend(&store, &session.id, at(200), now).await,
        Some(at(200)),
        "{name}: equal"
    );
    let read = load(&store, &session.id).await.expect("the record exists");
    assert_eq!(read.expires_at, at(200), "{name}: stored value");
    assert_eq!(read.created_at, at(0), "{name}: created_at must not change");
    assert_eq!(
        read.payload, session.payload,
        "{name}: payload must not change"
    );
}

/// A record whose `expires_at` is not after `now` stays expired, however
/// far `extend` asks to move it.
pub async fn extend_never_revives_an_expired_session(store: impl SessionStore) {
    let session = record(None, None, at(0), at(100));
    create(&store, &session).await;
    let name = "extend_never_revives_an_expired_session";
    assert_eq!(
        extend(&store, &session.id, at(500), at(100)).await,
        Some(at(100)),
        "{name}: expired exactly at now"
    );
    assert_eq!(
        extend(&store, &session.id, at(500), at(101)).await,
        Some(at(100)),
        "{name}: expired before now"
    );
    let read = load(&store, &session.id)
        .await
        .expect("expired records still load");
    assert_eq!(read.expires_at, at(100), "{name}: stored value");
}

/// Many concurrent extends to random targets end at the greatest target,
/// and no call ever sees the stored value below one it saw before.
pub async fn concurrent_extends_never_move_expiry_backwards(store: impl SessionStore) {
    let store = Arc::new(store);
    let session = record(None, None, at(0), at(100));
    create(&*store, &session).await;
    let mut targets = Vec::new();
    for task in 0..48u64 {
        // 100..=10_000 ms past at(100), in a scrambled order.
        targets.push(at(100) + Duration::from_millis(100 + (task * 7919) % 9_900));
    }
    let calls = targets.iter().map(|&target| {
        let store = Arc::clone(&store);
        let id = session.id;
        async move {
            // Spawned, so a multi-threaded runtime runs them in parallel.
            let task = tokio::spawn(async move { store.extend(&id, target, at(50)).await });
            task.await.expect("extend task")
        }
    });
    let answers = join_all(calls).await;
    let name = "concurrent_extends_never_move_expiry_backwards";
    for (answer, target) in answers.iter().zip(&targets) {
        let stored = answer
            .as_ref()
            .unwrap_or_else(|error| panic!("{name}: extend failed: {error}"))
            .unwrap_or_else(|| panic!("{name}: the record vanished"));
        assert!(
            stored >= *target,
            "{name}: answered {stored:?} below its own target {target:?}"
        );
    }
    let greatest = *targets.iter().max().expect("targets");
    let read = load(&*store, &session.id).await.expect("the record exists");
    assert_eq!(
        read.expires_at, greatest,
        "{name}: final value is not the greatest target"
    );
}

/// `delete` removes a record and reports it; a second delete reports none.
pub async fn delete_removes_a_session_once(store: impl SessionStore) {
    let session = record(Some(&unique("org")), None, at(0), at(100));
    let other = record(None, None, at(0), at(100));
    create(&store, &session).await;
    create(&store, &other).await;
    let name = "delete_removes_a_session_once";
    assert!(
        store.delete(&session.id).await.expect("delete"),
        "{name}: first delete"
    );
    assert!(
        !store.delete(&session.id).await.expect("delete"),
        "{name}: second delete"
    );
    assert_eq!(load(&store, &session.id).await, None, "{name}: still loads");
    assert!(
        load(&store, &other.id).await.is_some(),
        "{name}: deleted another record"
    );
}

async fn check_delete_all(store: impl SessionStore, by_subject: bool) {
    let name = if by_subject {
        "delete_all_by_subject_returns_exactly_its_ids"
    } else {
        "delete_all_by_organization_returns_exactly_its_ids"
    };
    let (mine, theirs) = (unique("owner"), unique("owner"));
    let of = |owner: &str, created: u64, expires: u64| {
        if by_subject {
            record(Some("org_shared"), Some(owner), at(created), at(expires))
        } else {
            record(Some(owner), Some("user_shared"), at(created), at(expires))
        }
    };
    // Live, expired and long-expired records of the owner; others kept.
    let owned = [
        of(&mine, 0, 100),
        of(&mine, 5, 50),
        of(&mine, 10, 1_000_000),
    ];
    let kept = [of(&theirs, 0, 100), record(None, None, at(0), at(100))];
    for session in owned.iter().chain(&kept) {
        create(&store, session).await;
    }
    let owner = if by_subject {
        SessionOwner::Subject(&mine)
    } else {
        SessionOwner::Organization(&mine)
    };
    let deleted: BTreeSet<SessionId> = store
        .delete_all(owner)
        .await
        .unwrap_or_else(|error| panic!("{name}: {error}"))
        .into_iter()
        .collect();
    let expected: BTreeSet<SessionId> = owned.iter().map(|session| session.id).collect();
    assert_eq!(deleted, expected, "{name}: returned ids");
    for session in &owned {
        assert_eq!(
            load(&store, &session.id).await,
            None,
            "{name}: an owned record remains"
        );
    }
    for session in &kept {
        assert!(
            load(&store, &session.id).await.is_some(),
            "{name}: deleted another's record"
        );
    }
    let again = store.delete_all(owner).await.expect("delete_all");
    assert!(again.is_empty(), "{name}: a second call deleted {again:?}");
}

/// `delete_all(Organization)` deletes every record of the organization,
/// expired ones included, returns exactly their ids and nothing else's.
pub async fn delete_all_by_organization_returns_exactly_its_ids(store: impl SessionStore) {
    check_delete_all(store, false).await;
}

/// `delete_all(Subject)` deletes every record of the subject ("log out
/// everywhere"), returns exactly their ids and nothing else's.
pub async fn delete_all_by_subject_returns_exactly_its_ids(store: impl SessionStore) {
    check_delete_all(store, true).await;
}

async fn all_pages(
    store: &impl SessionStore,
    owner: SessionOwner<'_>,
    now: SystemTime,
    limit: u32,
    name: &str,
) -> Vec<SessionPage> {
    let mut pages = Vec::new();
    let mut page = PageRequest::first(limit);
    loop {
        let read = store
            .list(owner, now, page)
            .await
            .unwrap_or_else(|error| panic!("{name}: list failed: {error}"));
        assert!(
            read.sessions.len() <= limit as usize,
            "{name}: a page of {} for a limit of {limit}",
            read.sessions.len()
        );
        let next = read.next;
        pages.push(read);
        match next {
            Some(cursor) => {
                assert!(pages.len() < 100, "{name}: the listing does not end");
                // Cursors survive their text form, as clients carry them.
                let cursor = cursor.to_string().parse().expect("a cursor parses back");
                page = PageRequest::after(cursor, limit);
            }
            None => return pages,
        }
    }
}

/// `list` returns the live sessions of the owner oldest first (ties by id),
/// page by page through cursors, skipping expired sessions and everyone
/// else's; the last page has no `next`.
pub async fn list_pages_through_live_sessions_oldest_first(store: impl SessionStore) {
    let name = "list_pages_through_live_sessions_oldest_first";
    let organization = unique("org");
    let now = at(1_000);
    let mut live = Vec::new();
    for created in [30, 10, 20, 20, 20, 40, 10] {
        live.push(record(Some(&organization), None, at(created), at(5_000)));
    }
    let expired = [
        record(Some(&organization), None, at(15), at(1_000)),
        record(Some(&organization), None, at(25), at(999)),
    ];
    let elsewhere = record(Some(&unique("org")), None, at(10), at(5_000));
    for session in live.iter().chain(&expired).chain([&elsewhere]) {
        create(&store, session).await;
    }
    live.sort_by_key(|session| (session.created_at, session.id));
    let expected: Vec<SessionId> = live.iter().map(|session| session.id).collect();
    for limit in [1, 3, 7, 50] {
        let pages = all_pages(
            &store,
            SessionOwner::Organization(&organization),
            now,
            limit,
            name,
        )
        .await;
        let listed: Vec<SessionId> = pages
            .iter()
            .flat_map(|page| page.sessions.iter().map(|session| session.id))
            .collect();
        assert_eq!(listed, expected, "{name}: limit {limit}");
        let expected_pages = expected.len().div_ceil(limit as usize).max(1);
        assert_eq!(
            pages.len(),
            expected_pages,
            "{name}: pages for limit {limit}"
        );
    }
    let first = store
        .list(
            SessionOwner::Organization(&organization),
            now,
            PageRequest::first(50),
        )
        .await
        .expect("list");
    assert_eq!(
        first.sessions, live,
        "{name}: listed records differ from those written"
    );
    let none = store
        .list(
            SessionOwner::Organization(&unique("org")),
            now,
            PageRequest::first(10),
        )
        .await
        .expect("list");
    assert!(
        none.sessions.is_empty() && none.next.is_none(),
        "{name}: unknown owner"
    );
}

/// `list(Subject)` sees that subject's live sessions across organizations.
pub async fn list_by_subject_sees_only_that_subject(store: impl SessionStore) {
    let name = "list_by_subject_sees_only_that_subject";
    let subject = unique("user");
    let mine = [
        record(Some("org_a"), Some(&subject), at(1), at(500)),
        record(None, Some(&subject), at(2), at(500)),
    ];
    let others = [
        record(Some("org_a"), Some(&unique("user")), at(1), at(500)),
        record(Some("org_a"), Some(&subject), at(3), at(99)),
    ];
    for session in mine.iter().chain(&others) {
        create(&store, session).await;
    }
    let page = store
        .list(
            SessionOwner::Subject(&subject),
            at(100),
            PageRequest::first(10),
        )
        .await
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    assert_eq!(page.sessions, mine.to_vec(), "{name}");
    assert_eq!(page.next, None, "{name}: next");
}

/// Expired records still load (the layer answers `session_expired` during
/// the retention), until `purge_expired(before)` deletes exactly those
/// that expired before `before` and reports how many.
pub async fn expired_sessions_load_until_purged(store: impl SessionStore) {
    let name = "expired_sessions_load_until_purged";
    let old = record(None, None, at(0), at(100));
    let boundary = record(None, None, at(0), at(150));
    let recent = record(None, None, at(0), at(200));
    let live = record(None, None, at(0), at(10_000));
    for session in [&old, &boundary, &recent, &live] {
        create(&store, session).await;
    }
    assert!(
        load(&store, &old.id).await.is_some(),
        "{name}: an expired record must load"
    );
    let purged = store.purge_expired(at(150)).await.expect("purge");
    assert!(
        purged >= 1,
        "{name}: purged {purged}, expected the record expired at 100"
    );
    assert_eq!(
        load(&store, &old.id).await,
        None,
        "{name}: expired before the cut-off"
    );
    assert!(
        load(&store, &recent.id).await.is_some(),
        "{name}: expired after the cut-off"
    );
    assert!(
        load(&store, &boundary.id).await.is_some(),
        "{name}: expired exactly at the cut-off (only `expires_at < before` is purged)"
    );
    assert!(
        load(&store, &live.id).await.is_some(),
        "{name}: live record purged"
    );
    let again = store.purge_expired(at(150)).await.expect("purge");
    // Stores shared with other tests may purge others' records; never ours again.
    assert!(
        load(&store, &recent.id).await.is_some(),
        "{name}: second purge ({again})"
    );
}

/// Counts `extend` calls on the store it wraps.
struct CountingStore<S> {
    inner: S,
    extends: AtomicUsize,
}

#[async_trait]
impl<S: SessionStore> SessionStore for CountingStore<S> {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.inner.create(record).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.load(id).await
    }
    async fn extend(
        &self,
        id: &SessionId,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        self.extends.fetch_add(1, Ordering::SeqCst);
        self.inner.extend(id, expires_at, now).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }
    async fn delete_all(&self, owner: SessionOwner<'_>) -> Result<Vec<SessionId>, StoreError> {
        self.inner.delete_all(owner).await
    }
    async fn list(
        &self,
        owner: SessionOwner<'_>,
        now: SystemTime,
        page: PageRequest,
    ) -> Result<SessionPage, StoreError> {
        self.inner.list(owner, now, page).await
    }
    async fn purge_expired(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.inner.purge_expired(before).await
    }
}

/// The inner service of the layer checks: answers 200.
#[derive(Clone)]
struct Ok200;

impl Service<Request<()>> for Ok200 {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}

/// Sends one request with `token` through `layer`; the status and the
/// `x-session-expires-at` it answered.
async fn send(layer: &SessionRefreshLayer, token: &SessionToken) -> (u16, Option<String>) {
    let mut service = layer.layer(Ok200);
    poll_fn(|cx| service.poll_ready(cx)).await.expect("ready");
    let request = Request::builder()
        .header("x-session-id", token.to_string())
        .body(())
        .expect("request");
    let response = service.call(request).await.expect("infallible");
    let expires = response
        .headers()
        .get(SESSION_EXPIRES_AT)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    (response.status().as_u16(), expires)
}

/// Two independent layers (two processes) on one store, bursts of
/// concurrent due requests through each: at most one store write per
/// layer and renewal window, `expires_at` never moves backwards, and the
/// absolute lifetime caps it.
pub async fn two_layers_on_one_store_write_once_per_window_and_never_backwards(
    store: impl SessionStore,
) {
    let name = "two_layers_on_one_store_write_once_per_window_and_never_backwards";
    let store = Arc::new(CountingStore {
        inner: store,
        extends: AtomicUsize::new(0),
    });
    let clock = ManualClock::new(at(0));
    let layer = || {
        SessionRefreshLayer::builder(Arc::clone(&store))
            .duration(Duration::from_secs(100))
            .refresh_threshold(Duration::from_secs(40))
            .absolute_lifetime(Duration::from_secs(250))
            .clock(clock.clone())
            .build()
            .expect("valid settings")
    };
    let (first, second) = (layer(), layer());
    let created = first
        .handle()
        .create(Some("org_kit"), ())
        .await
        .expect("create");
    let token = created.token;
    let mut last_stored = created.expires_at;
    // Each window: move into the threshold, then 16 concurrent requests
    // through each layer.
    for step in 1..=6u64 {
        clock.set(at(step * 70));
        let before = store.extends.load(Ordering::SeqCst);
        let burst = (0..16).flat_map(|_| [send(&first, &token), send(&second, &token)]);
        let answers = join_all(burst).await;
        let writes = store.extends.load(Ordering::SeqCst) - before;
        let stored = load(&store.inner, &created.id)
            .await
            .map(|record| record.expires_at);
        let Some(stored) = stored else {
            panic!("{name}: the session vanished at step {step}");
        };
        assert!(
            stored >= last_stored,
            "{name}: expires_at moved backwards at step {step}"
        );
        assert!(
            stored <= at(250),
            "{name}: expires_at {stored:?} past created_at + absolute_lifetime"
        );
        let alive = clock.now() < last_stored;
        if alive {
            assert!(
                answers.iter().all(|(status, _)| *status == 200),
                "{name}: a live session was refused at step {step}: {answers:?}"
            );
            assert!(
                writes <= 2,
                "{name}: {writes} store writes in one window (two layers)"
            );
        } else {
            assert!(
                answers.iter().all(|(status, _)| *status == 401),
                "{name}: an expired session was let through at step {step}"
            );
        }
        last_stored = stored;
    }
    assert_eq!(
        last_stored,
        at(250),
        "{name}: renewals should reach the absolute cap"
    );
}

/// A malformed record the store reads back (written by `corrupt`, which
/// only your backend knows how to do: bad JSON, a negative time, a
/// wrong-length id…) is a [`StoreError`] of kind
/// [`Serialization`](StoreErrorKind::Serialization) from `load` (and from
/// `list` when it reads the record), never a panic.
///
/// `corrupt` receives a session just created (organization `org`) and
/// must damage its stored form.
pub async fn malformed_session_is_an_error<S, Corrupt, CorruptFuture>(store: S, corrupt: Corrupt)
where
    S: SessionStore,
    Corrupt: FnOnce(SessionRecord) -> CorruptFuture,
    CorruptFuture: Future<Output = ()>,
{
    let organization = unique("org");
    let session = record(Some(&organization), None, at(0), at(100));
    create(&store, &session).await;
    corrupt(session.clone()).await;
    let name = "malformed_session_is_an_error";
    match store.load(&session.id).await {
        Err(error) => assert_eq!(error.kind(), StoreErrorKind::Serialization, "{name}: load"),
        Ok(read) => panic!("{name}: load read a damaged record as {read:?}"),
    }
    match store
        .list(
            SessionOwner::Organization(&organization),
            at(10),
            PageRequest::first(10),
        )
        .await
    {
        Err(error) => assert_eq!(error.kind(), StoreErrorKind::Serialization, "{name}: list"),
        // A damage that takes the row out of the listing's range (say an
        // `expires_at` in the past) may leave it unread.
        Ok(page) => assert!(
            page.sessions.iter().all(|listed| listed.id != session.id),
            "{name}: list returned the damaged record as if it were whole"
        ),
    }
}
