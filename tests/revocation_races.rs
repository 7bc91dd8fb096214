//! Revocations racing loads, failing stores and a flapping channel: each
//! case was found by a review and failed before its fix.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::FutureExt;
use tokio::sync::Notify;
use tower_saas_guard::invalidation::{InvalidationChannel, InvalidationStream};
use tower_saas_guard::session::{
    MemorySessionStore, PageRequest, SessionId, SessionOwner, SessionPage, SessionRecord,
    SessionRefreshLayer, SessionStore,
};
use tower_saas_guard::StoreError;

/// A memory store whose next `load` (once armed) reads the record, says
/// so, then waits to be released before answering: a read that happened
/// before a delete and answers after it.
#[derive(Clone)]
struct GatedStore {
    inner: MemorySessionStore,
    armed: Arc<AtomicBool>,
    read: Arc<Notify>,
    release: Arc<Notify>,
    loads: Arc<AtomicUsize>,
    fail_deletes: Arc<AtomicBool>,
    stall_delete_all: Arc<AtomicBool>,
}

impl GatedStore {
    fn new(inner: MemorySessionStore) -> Self {
        Self {
            inner,
            armed: Arc::default(),
            read: Arc::default(),
            release: Arc::default(),
            loads: Arc::default(),
            fail_deletes: Arc::default(),
            stall_delete_all: Arc::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("injected failure")]
struct Injected;

#[async_trait]
impl SessionStore for GatedStore {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.inner.create(record).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let record = self.inner.load(id).await;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.read.notify_one();
            self.release.notified().await;
        }
        record
    }
    async fn extend(
        &self,
        id: &SessionId,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        self.inner.extend(id, expires_at, now).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        if self.fail_deletes.load(Ordering::SeqCst) {
            return Err(StoreError::backend(Injected));
        }
        self.inner.delete(id).await
    }
    async fn delete_all(&self, owner: SessionOwner<'_>) -> Result<Vec<SessionId>, StoreError> {
        let deleted = self.inner.delete_all(owner).await;
        if self.stall_delete_all.load(Ordering::SeqCst) {
            // Committed, but the answer is late (a slow network, many
            // Redis batches): the layer's store timeout fires.
            std::future::pending::<()>().await;
        }
        deleted
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

/// A request that starts after `revoke_id` returned joins a load flight
/// that read the store before the delete, and is answered with the
/// revoked session (the id was not in this instance's index, so the
/// flight was not forgotten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_revoke_id_is_not_answered_by_an_older_load() {
    let inner = MemorySessionStore::new();
    let store = GatedStore::new(inner.clone());
    let layer = SessionRefreshLayer::builder(store.clone()).build().unwrap();
    let handle = layer.handle();
    // Created by another instance: not cached here.
    let other = SessionRefreshLayer::builder(inner.clone()).build().unwrap();
    let created = other.handle().create(None, ()).await.unwrap();
    let token = created.token;

    store.armed.store(true, Ordering::SeqCst);
    let h1 = handle.clone();
    let first = tokio::spawn(async move { h1.get(&token).await });
    store.read.notified().await; // the load read the record

    assert!(handle.revoke_id(&created.id).await.unwrap());

    // A request that starts after the revocation returned.
    let mut second = Box::pin(handle.get(&token));
    // Polled once: it joins the running flight (or, fixed, starts its own).
    let early = (&mut second).now_or_never();
    store.release.notify_one();
    let _ = first.await.unwrap();
    let answer = match early {
        Some(answer) => answer.unwrap(),
        None => second.await.unwrap(),
    };
    assert!(
        answer.is_none(),
        "a request started after revoke_id returned was served the revoked session \
         ({} store loads)",
        store.loads.load(Ordering::SeqCst)
    );
}

/// A load that read the store before a delete caches (confirmed) what it
/// read if its insert lands between `forget_ids`' index lookup (a miss)
/// and its `bump_all`; the moka entry then outlives `revoke_id` and keeps
/// answering for the cache TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_id_leaves_no_cached_copy_of_a_load_that_raced_it() {
    struct Trap {
        thread: Mutex<Option<ThreadId>>,
        reached: Notify,
        release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    }
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let trap = Arc::new(Trap {
        thread: Mutex::new(None),
        reached: Notify::new(),
        release: Mutex::new(Some(release_rx)),
    });
    let start = SystemTime::now();
    let clock = {
        let trap = Arc::clone(&trap);
        move || {
            let mine = {
                let mut thread = trap.thread.lock().unwrap();
                if *thread == Some(std::thread::current().id()) {
                    *thread = None;
                    true
                } else {
                    false
                }
            };
            if mine {
                trap.reached.notify_one();
                let release = trap.release.lock().unwrap().take().unwrap();
                release.recv().unwrap();
            }
            start
        }
    };
    let inner = MemorySessionStore::new();
    let store = GatedStore::new(inner.clone());
    let layer = SessionRefreshLayer::builder(store.clone())
        .clock(clock)
        .build()
        .unwrap();
    let handle = layer.handle();
    let other = SessionRefreshLayer::builder(inner.clone()).build().unwrap();
    let created = other.handle().create(None, ()).await.unwrap();
    let token = created.token;

    store.armed.store(true, Ordering::SeqCst);
    let h1 = handle.clone();
    let first = tokio::spawn(async move { h1.get(&token).await });
    store.read.notified().await;

    // Revoke on a thread of its own; its first clock read (in
    // `remember_unknown`, after the index miss) stops it.
    let revoker = {
        let handle = handle.clone();
        let trap = Arc::clone(&trap);
        let id = created.id;
        std::thread::spawn(move || {
            *trap.thread.lock().unwrap() = Some(std::thread::current().id());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(handle.revoke_id(&id))
        })
    };
    trap.reached.notified().await;
    // Now the load finishes and caches what it read.
    store.release.notify_one();
    let _ = first.await.unwrap();
    release_tx.send(()).unwrap();
    assert!(revoker.join().unwrap().unwrap(), "the session existed");

    assert!(inner.load(&created.id).await.unwrap().is_none(), "deleted");
    assert!(
        handle.get(&token).await.unwrap().is_none(),
        "revoke_id returned, yet the revoked session is served from the cache"
    );
}

/// A revocation that fails in the store still puts the id into the
/// negative cache: the live session is refused as unknown.
#[tokio::test]
async fn a_failed_revoke_does_not_hide_a_live_session() {
    let inner = MemorySessionStore::new();
    let store = GatedStore::new(inner.clone());
    let layer = SessionRefreshLayer::builder(store.clone()).build().unwrap();
    let handle = layer.handle();
    let created = handle.create(None, ()).await.unwrap();
    store.fail_deletes.store(true, Ordering::SeqCst);
    assert!(handle.revoke(&created.token).await.is_err());
    assert!(
        inner.load(&created.id).await.unwrap().is_some(),
        "still stored"
    );
    assert!(
        handle.get(&created.token).await.unwrap().is_some(),
        "the negative cache hides a session the store still holds"
    );
}

/// `revoke_all` whose store call deleted but answered too late (the store
/// timeout) leaves the deleted sessions in the cache.
#[tokio::test(start_paused = true)]
async fn revoke_all_that_times_out_after_deleting_leaves_no_cached_copy() {
    let inner = MemorySessionStore::new();
    let store = GatedStore::new(inner.clone());
    let layer = SessionRefreshLayer::builder(store.clone()).build().unwrap();
    let handle = layer.handle();
    let created = handle.create(Some("org"), ()).await.unwrap();
    store.stall_delete_all.store(true, Ordering::SeqCst);
    assert!(handle.revoke_organization("org").await.is_err());
    assert!(inner.load(&created.id).await.unwrap().is_none(), "deleted");
    assert!(
        handle.get(&created.token).await.unwrap().is_none(),
        "a deleted session is still served from the cache"
    );
}

/// A channel whose subscriptions open and end at once (a server that
/// accepts SUBSCRIBE then drops the connection).
#[derive(Clone, Default)]
struct FlappingChannel {
    subscriptions: Arc<AtomicUsize>,
}

#[async_trait]
impl InvalidationChannel for FlappingChannel {
    async fn publish(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn subscribe(&self) -> Result<InvalidationStream, StoreError> {
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
        Ok(Box::pin(futures_util::stream::empty()))
    }
}

/// The docs: "the listener reconnects with exponential backoff (100 ms
/// doubling up to 10 s) when the connection is lost". After a lost
/// connection it re-subscribes at once, in a loop that never yields.
#[test]
fn a_lost_connection_is_retried_with_backoff() {
    let channel = FlappingChannel::default();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let counted = channel.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let _layer = SessionRefreshLayer::builder(MemorySessionStore::new())
                .invalidation_channel(channel)
                .build()
                .unwrap();
            // Give the listener 300 ms of a current-thread runtime.
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let _ = done_tx.send(());
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(5)).is_ok();
    let subscriptions = counted.subscriptions.load(Ordering::SeqCst);
    assert!(
        finished,
        "the runtime never got control back from the listener ({subscriptions} subscriptions)"
    );
    assert!(
        subscriptions <= 5,
        "{subscriptions} subscriptions in 300 ms: no backoff after a lost connection"
    );
}
