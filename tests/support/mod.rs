//! Shared test doubles: a store that counts, gates, fails or hangs.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;
use tower_saas_guard::session::{MemorySessionStore, SessionId, SessionRecord, SessionStore};
use tower_saas_guard::StoreError;

/// A fixed, round starting time for manual clocks.
pub fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[derive(Debug, thiserror::Error)]
#[error("injected backend failure")]
pub struct InjectedFailure;

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
    gate: watch::Sender<bool>,
    extend_gate: watch::Sender<bool>,
    load_gate: watch::Sender<bool>,
}

impl Default for ProbeStore {
    fn default() -> Self {
        Self::new(MemorySessionStore::new())
    }
}

impl ProbeStore {
    pub fn new(inner: MemorySessionStore) -> Self {
        let (gate, _) = watch::channel(true);
        let (extend_gate, _) = watch::channel(true);
        let (load_gate, _) = watch::channel(true);
        Self {
            inner,
            loads: Arc::default(),
            extends: Arc::default(),
            creates: Arc::default(),
            fail: Arc::default(),
            fail_extend: Arc::default(),
            hang: Arc::default(),
            gate,
            extend_gate,
            load_gate,
        }
    }

    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    pub fn extends(&self) -> usize {
        self.extends.load(Ordering::SeqCst)
    }

    /// Loads and extends wait until [`open_gate`](Self::open_gate).
    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Only extends wait, until [`open_extend_gate`](Self::open_extend_gate).
    pub fn close_extend_gate(&self) {
        self.extend_gate.send_replace(false);
    }

    pub fn open_extend_gate(&self) {
        self.extend_gate.send_replace(true);
    }

    /// Only loads wait (after reading), until [`open_load_gate`](Self::open_load_gate).
    pub fn close_load_gate(&self) {
        self.load_gate.send_replace(false);
    }

    pub fn open_load_gate(&self) {
        self.load_gate.send_replace(true);
    }

    async fn pass(&self) -> Result<(), StoreError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
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
        let _ = self.load_gate.subscribe().wait_for(|open| *open).await;
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
        let _ = self.extend_gate.subscribe().wait_for(|open| *open).await;
        self.pass().await?;
        if self.fail_extend.load(Ordering::SeqCst) {
            return Err(StoreError::backend(InjectedFailure));
        }
        self.inner.extend(id, expires_at, now).await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }

    async fn delete_by_organization(&self, organization_id: &str) -> Result<u64, StoreError> {
        self.inner.delete_by_organization(organization_id).await
    }

    async fn purge_expired(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.inner.purge_expired(before).await
    }
}

/// Wraps a memory subscription store; counts reads; can gate, fail or hang.
#[derive(Clone)]
pub struct ProbeSubscriptions {
    pub inner: tower_saas_guard::subscription::MemorySubscriptionStore,
    pub reads: Arc<AtomicUsize>,
    pub fail: Arc<AtomicBool>,
    pub hang: Arc<AtomicBool>,
    gate: watch::Sender<bool>,
}

impl Default for ProbeSubscriptions {
    fn default() -> Self {
        let (gate, _) = watch::channel(true);
        Self {
            inner: Default::default(),
            reads: Arc::default(),
            fail: Arc::default(),
            hang: Arc::default(),
            gate,
        }
    }
}

impl ProbeSubscriptions {
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
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
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
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
