//! Shared test doubles: a store that counts, gates, fails or hangs.
#![allow(dead_code)]

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod services;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod store_cases;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;
use tower_saas_guard::session::{
    MemorySessionStore, PageRequest, SessionId, SessionOwner, SessionPage, SessionRecord,
    SessionStore,
};
use tower_saas_guard::StoreError;

/// A fixed, round starting time for manual clocks.
pub fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[derive(Debug, thiserror::Error)]
#[error("injected backend failure")]
pub struct InjectedFailure;

/// Holds store calls that reach it while closed, until it is opened.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(watch::channel(true).0))
    }
}

impl Gate {
    pub fn close(&self) {
        self.0.send_replace(false);
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Waits while the gate is closed.
    pub async fn pass(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

/// Wraps a memory store; counts calls; can hold loads and extends behind a
/// gate, fail them, or hang forever.
#[derive(Clone)]
pub struct ProbeStore {
    pub inner: MemorySessionStore,
    pub loads: Arc<AtomicUsize>,
    pub extends: Arc<AtomicUsize>,
    pub creates: Arc<AtomicUsize>,
    pub fail: Arc<AtomicBool>,
    pub fail_extend: Arc<AtomicBool>,
    pub hang: Arc<AtomicBool>,
    /// Holds loads (after they read) and extends.
    pub gate: Gate,
    /// Holds only extends.
    pub extend_gate: Gate,
    /// Holds only loads (after they read).
    pub load_gate: Gate,
}

impl Default for ProbeStore {
    fn default() -> Self {
        Self::new(MemorySessionStore::new())
    }
}

impl ProbeStore {
    pub fn new(inner: MemorySessionStore) -> Self {
        Self {
            inner,
            loads: Arc::default(),
            extends: Arc::default(),
            creates: Arc::default(),
            fail: Arc::default(),
            fail_extend: Arc::default(),
            hang: Arc::default(),
            gate: Gate::default(),
            extend_gate: Gate::default(),
            load_gate: Gate::default(),
        }
    }

    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    pub fn extends(&self) -> usize {
        self.extends.load(Ordering::SeqCst)
    }

    async fn pass(&self) -> Result<(), StoreError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.gate.pass().await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::backend(InjectedFailure));
        }
        Ok(())
    }
}

#[async_trait]
impl SessionStore for ProbeStore {
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        self.inner.create(record).await
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        // Read first, then wait at the gate: a closed gate holds an answer
        // that may go stale meanwhile.
        let answer = self.inner.load(id).await;
        self.load_gate.pass().await;
        self.pass().await?;
        answer
    }

    async fn extend(
        &self,
        id: &SessionId,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        self.extends.fetch_add(1, Ordering::SeqCst);
        self.extend_gate.pass().await;
        self.pass().await?;
        if self.fail_extend.load(Ordering::SeqCst) {
            return Err(StoreError::backend(InjectedFailure));
        }
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

/// Wraps a memory subscription store; counts reads; can gate, fail or hang.
#[derive(Clone, Default)]
pub struct ProbeSubscriptions {
    pub inner: tower_saas_guard::subscription::MemorySubscriptionStore,
    pub reads: Arc<AtomicUsize>,
    pub fail: Arc<AtomicBool>,
    pub hang: Arc<AtomicBool>,
    /// Holds reads (after they read).
    pub gate: Gate,
}

impl ProbeSubscriptions {
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    pub fn set_failing(&self, failing: bool) {
        self.fail.store(failing, Ordering::SeqCst);
    }
}

#[async_trait]
impl tower_saas_guard::subscription::SubscriptionStore for ProbeSubscriptions {
    async fn subscriptions(
        &self,
        organization_id: &str,
    ) -> Result<Vec<tower_saas_guard::subscription::Subscription>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        // Read first, then wait at the gate: a closed gate holds an answer
        // that may go stale meanwhile.
        let answer = tower_saas_guard::subscription::SubscriptionStore::subscriptions(
            &self.inner,
            organization_id,
        )
        .await;
        self.gate.pass().await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::backend(InjectedFailure));
        }
        answer
    }

    async fn upsert(
        &self,
        subscription: &tower_saas_guard::subscription::Subscription,
    ) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::backend(InjectedFailure));
        }
        tower_saas_guard::subscription::SubscriptionStore::upsert(&self.inner, subscription).await
    }

    async fn apply(
        &self,
        change: &tower_saas_guard::subscription::SubscriptionChange,
    ) -> Result<tower_saas_guard::subscription::ApplyOutcome, StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::backend(InjectedFailure));
        }
        tower_saas_guard::subscription::SubscriptionStore::apply(&self.inner, change).await
    }

    async fn purge_event_ids(&self, before: std::time::SystemTime) -> Result<u64, StoreError> {
        tower_saas_guard::subscription::SubscriptionStore::purge_event_ids(&self.inner, before)
            .await
    }
}

/// A boxed service under test, answering `Response<GuardBody<String>>`.
pub type Echo = tower::util::BoxCloneSyncService<
    http::Request<()>,
    http::Response<tower_saas_guard::GuardBody<String>>,
    std::convert::Infallible,
>;

/// A response taken apart: status, headers and JSON body (`Null` if empty).
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
}

/// Sends `request` through a clone of `service` and reads the answer.
pub async fn send(service: &Echo, request: http::Request<()>) -> Answer {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let response = service.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        },
    }
}

/// 200 concurrent tasks (spread over the runtime's workers) each send three
/// requests made by `request`; every answer must have the `expected` status.
pub async fn burst(
    service: &Echo,
    request: impl Fn() -> http::Request<()> + Clone + Send + 'static,
    expected: http::StatusCode,
) {
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (service, request) = (service.clone(), request.clone());
            tokio::spawn(async move {
                for _ in 0..3 {
                    assert_eq!(send(&service, request()).await.status, expected);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("every request answered as expected");
    }
}

#[cfg(feature = "redis")]
pub mod redis_service;
