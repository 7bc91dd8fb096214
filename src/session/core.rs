//! The state one `SessionRefreshLayer` shares with its clones and with its
//! [`SessionHandle`]: store, cache, single-flight maps, configuration, clock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use http::HeaderValue;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::signing::TokenKeys;
use super::store::{PageRequest, SessionOwner, SessionPage, SessionRecord, SessionStore};
use super::token::{SessionId, SessionToken, WholeToken};
use crate::cache::generations::{Confirmed, Generations};
use crate::cache::hot::{HotFront, HotTable};
use crate::cache::single_flight::SingleFlight;
use crate::clock::{rfc3339_millis, truncate_to_millis, Clock};
use crate::error::{ConfigError, StoreError, STORE_RETRY_INTERVAL};
use crate::invalidation::{
    ChannelLink, ChannelStatus, Invalidation, InvalidationChannel, InvalidationTarget,
};
use crate::metrics::LayerMetrics;
use crate::rejection::{ErrorCode, Rejection};

/// The settings every clone of one layer shares.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub(crate) duration: Duration,
    pub(crate) refresh_threshold: Duration,
    pub(crate) absolute_lifetime: Option<Duration>,
    pub(crate) cache_capacity: u64,
    pub(crate) cache_ttl: Duration,
    /// How long a cached session is trusted while the invalidation channel
    /// is connected (revocations then arrive as messages); at least
    /// `cache_ttl`.
    pub(crate) channel_cache_ttl: Duration,
    pub(crate) expired_retention: Duration,
    pub(crate) store_timeout: Duration,
    /// Distinct tokens whose load or renewal may wait on the store at once.
    pub(crate) max_in_flight: usize,
    /// With keys, tokens are minted signed and unsigned ones refused
    /// before any store read.
    pub(crate) token_keys: Option<TokenKeys>,
    /// How long an unknown session id is remembered; `None`: not at all.
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) negative_capacity: u64,
}

impl SessionConfig {
    /// The TTL while the invalidation channel is connected.
    pub(crate) fn connected_ttl(&self) -> Duration {
        self.channel_cache_ttl.max(self.cache_ttl)
    }
}

/// A response extension saying the handler ended the request's session
/// (a logout): the session layer then adds no `x-session-expires-at` to
/// the response. [`SessionHandle::logout`] answers one; with the `axum`
/// feature it is also a response part (`(ended, StatusCode::NO_CONTENT)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionEnded;

/// A session, as handlers see it in the request extensions.
///
/// `SessionRefreshLayer` puts one into every request it lets through; with
/// the `axum` feature it is also an extractor (`Session` or
/// `Option<Session>`). Cloning is cheap.
#[derive(Clone)]
pub struct Session {
    data: Arc<SessionData>,
    renewed: bool,
}

impl Session {
    pub(crate) fn new(data: Arc<SessionData>, renewed: bool) -> Self {
        Self { data, renewed }
    }

    /// The session's stable id (SHA-256 of its token; safe to log).
    pub fn id(&self) -> SessionId {
        self.data.id
    }

    /// The organization the session belongs to, if any.
    pub fn organization_id(&self) -> Option<&str> {
        self.data.texts.organization_id()
    }

    /// The user or visitor the session belongs to, if the application named one.
    pub fn subject(&self) -> Option<&str> {
        self.data.texts.subject()
    }

    /// When the session was created.
    pub fn created_at(&self) -> SystemTime {
        self.data.created_at
    }

    /// When the session expires, after any renewal by this request.
    pub fn expires_at(&self) -> SystemTime {
        self.data.expires_at
    }

    /// Whether the session was extended while this request was handled
    /// (by this request, or by a concurrent one it waited for).
    pub fn renewed(&self) -> bool {
        self.renewed
    }

    /// The application payload stored with the session.
    ///
    /// The cache keeps a payload as its JSON text (a fraction of the memory
    /// of a `Value` tree); the first call on a cached copy decodes it, and
    /// later calls reuse that. [`payload_as`](Self::payload_as) decodes
    /// from the text directly.
    pub fn payload(&self) -> &Value {
        self.data.texts.value()
    }

    /// The payload decoded as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.data.texts.decode()
    }
}

/// A cached record's text in one allocation: its organization id, its
/// subject and its payload's JSON, one after the other; and the `Value` the
/// payload decodes to, once a handler asked for one.
///
/// One allocation instead of four (two `String`s, the JSON text and a
/// shared payload) saves about 130 bytes per cached session
/// (`benches/memory.rs`).
#[derive(Clone)]
pub(crate) struct Texts {
    text: Box<str>,
    /// Where the organization id ends in `text` ([`ABSENT`]: no organization)...
    organization_end: usize,
    /// ...and where the subject ends ([`ABSENT`]: no subject); the payload's
    /// JSON follows.
    subject_end: usize,
    value: OnceLock<Box<Value>>,
}

/// `Texts`' mark for a field the record does not have (`text` is never
/// that long).
const ABSENT: usize = usize::MAX;

/// Payloads nested deeper than this keep their `Value` too: decoding their
/// text again would meet `serde_json`'s recursion limit (128).
const TEXT_ONLY_DEPTH: usize = 100;

impl Texts {
    pub(crate) fn new(
        organization_id: Option<&str>,
        subject: Option<&str>,
        payload: Value,
    ) -> Self {
        let value_kept = OnceLock::new();
        let json = match serde_json::to_string(&payload) {
            Ok(json) if depth(&payload, 0) <= TEXT_ONLY_DEPTH => json,
            // Kept as a `Value` (and its text, for `payload_as`'s sake).
            Ok(json) => {
                let _ = value_kept.set(Box::new(payload));
                json
            }
            // A `Value` always serializes; should it not, it is kept whole.
            Err(_) => {
                let _ = value_kept.set(Box::new(payload));
                "null".to_owned()
            }
        };
        let length = |field: Option<&str>| field.map_or(0, str::len);
        let mut text =
            String::with_capacity(length(organization_id) + length(subject) + json.len());
        let mut append = |field: Option<&str>| match field {
            Some(field) => {
                text.push_str(field);
                text.len()
            }
            None => ABSENT,
        };
        let organization_end = append(organization_id);
        let subject_end = append(subject);
        text.push_str(&json);
        Self {
            text: text.into_boxed_str(),
            organization_end,
            subject_end,
            value: value_kept,
        }
    }

    pub(crate) fn organization_id(&self) -> Option<&str> {
        (self.organization_end != ABSENT).then(|| &self.text[..self.organization_end])
    }

    fn subject_start(&self) -> usize {
        match self.organization_end {
            ABSENT => 0,
            end => end,
        }
    }

    pub(crate) fn subject(&self) -> Option<&str> {
        (self.subject_end != ABSENT).then(|| &self.text[self.subject_start()..self.subject_end])
    }

    /// The payload's JSON text.
    fn json(&self) -> &str {
        match self.subject_end {
            ABSENT => &self.text[self.subject_start()..],
            end => &self.text[end..],
        }
    }

    fn value(&self) -> &Value {
        self.value.get_or_init(|| {
            Box::new(
                serde_json::from_str(self.json()).expect("the text of a `Value`, not too deep"),
            )
        })
    }

    fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match self.value.get() {
            Some(value) => T::deserialize(&**value),
            None => serde_json::from_str(self.json()),
        }
    }
}

/// How deeply `value` nests arrays and objects, counted to at most
/// `TEXT_ONLY_DEPTH + 1`.
fn depth(value: &Value, at: usize) -> usize {
    if at > TEXT_ONLY_DEPTH {
        return at;
    }
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| depth(item, at + 1))
            .max()
            .unwrap_or(at + 1),
        Value::Object(fields) => fields
            .values()
            .map(|field| depth(field, at + 1))
            .max()
            .unwrap_or(at + 1),
        _ => at,
    }
}

impl fmt::Debug for Texts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Texts")
            .field("organization_id", &self.organization_id())
            .field("subject", &self.subject())
            // The payload is the application's (often personal data).
            .field("payload", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.data.id)
            .field("organization_id", &self.data.texts.organization_id())
            .field("subject", &self.data.texts.subject())
            .field("created_at", &self.data.created_at)
            .field("expires_at", &self.data.expires_at)
            .field("renewed", &self.renewed)
            // The payload is the application's (often personal data).
            .field("payload", &"<redacted>")
            .finish()
    }
}

/// A record as the cache holds it, with its response header pre-rendered.
#[derive(Debug)]
pub(crate) struct SessionData {
    pub(crate) id: SessionId,
    pub(crate) created_at: SystemTime,
    pub(crate) expires_at: SystemTime,
    /// The organization id, the subject and the payload.
    pub(crate) texts: Texts,
    /// `x-session-expires-at` for this `expires_at`, rendered once.
    pub(crate) expires_header: HeaderValue,
    /// `expires_at - refresh_threshold`: activity after this renews.
    pub(crate) renew_after: SystemTime,
    /// Past this instant the cached copy is re-read from the store (the
    /// cache TTL, on the layer's clock)...
    pub(crate) fresh_until: SystemTime,
    /// ...or past this one while the invalidation channel is connected
    /// (the channel's cache TTL).
    pub(crate) fresh_while_connected: SystemTime,
    /// Set once no revocation raced the insert; until then readers treat
    /// the entry as stale (see `SessionCore::cache_insert`).
    pub(crate) confirmed: AtomicBool,
}

impl SessionData {
    fn from_record(record: SessionRecord, config: &SessionConfig, now: SystemTime) -> Self {
        Self {
            fresh_until: now + config.cache_ttl,
            fresh_while_connected: now + config.connected_ttl(),
            confirmed: AtomicBool::new(false),
            renew_after: renew_after(record.expires_at, config),
            id: record.id,
            texts: Texts::new(
                record.organization_id.as_deref(),
                record.subject.as_deref(),
                record.payload,
            ),
            created_at: record.created_at,
            expires_header: expires_header(record.expires_at),
            expires_at: record.expires_at,
        }
    }

    /// The same copy, not due for renewal before `retry_at`.
    fn with_renewal_deferred(&self, retry_at: SystemTime) -> Self {
        Self {
            id: self.id,
            texts: self.texts.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            expires_header: self.expires_header.clone(),
            renew_after: retry_at.max(self.renew_after),
            fresh_until: self.fresh_until,
            fresh_while_connected: self.fresh_while_connected,
            confirmed: AtomicBool::new(false),
        }
    }

    fn with_expiry(&self, expires_at: SystemTime, config: &SessionConfig, now: SystemTime) -> Self {
        Self {
            fresh_until: now + config.cache_ttl,
            fresh_while_connected: now + config.connected_ttl(),
            confirmed: AtomicBool::new(false),
            renew_after: renew_after(expires_at, config),
            id: self.id,
            texts: self.texts.clone(),
            created_at: self.created_at,
            expires_at,
            expires_header: expires_header(expires_at),
        }
    }
}

impl Confirmed for SessionData {
    fn confirmed(&self) -> &AtomicBool {
        &self.confirmed
    }

    /// Stores only ever move `expires_at` forward, so a copy with an
    /// earlier one was read before a renewal that the cache already holds.
    fn is_older_than(&self, cached: &Self) -> bool {
        self.expires_at < cached.expires_at
    }
}

fn renew_after(expires_at: SystemTime, config: &SessionConfig) -> SystemTime {
    expires_at
        .checked_sub(config.refresh_threshold)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn expires_header(at: SystemTime) -> HeaderValue {
    HeaderValue::from_str(&rfc3339_millis(at)).expect("an RFC 3339 timestamp is a valid header")
}

/// What a cached record means for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Valid, nothing to write.
    Valid,
    /// Valid, and this request should renew it.
    Renew,
    /// `expires_at <= now`: re-read from the store before rejecting.
    LooksExpired,
    /// Older than the cache TTL: re-read from the store.
    Stale,
}

/// Hashes a session token by its first eight bytes.
///
/// Tokens are 256 CSPRNG bits and only tokens of existing sessions enter
/// the cache, so the prefix is already a uniform hash that a client cannot
/// steer; this saves SipHash on every request.
///
/// The prefix's multiplicative mix leaves its low bits depending on the
/// first characters only (about 13 random bits in the low 17), and moka's
/// table picks a bucket from the low bits: `finish` folds the high half
/// into the low one, so buckets spread evenly.
#[derive(Default)]
pub(crate) struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if a key other than a token is hashed: FNV-1a.
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type SessionCache =
    moka::sync::Cache<SessionToken, Arc<SessionData>, BuildHasherDefault<TokenHasher>>;
type LoadOutcome = Result<Option<Arc<SessionData>>, StoreError>;
type Loaded = Option<Arc<SessionData>>;

pub(crate) struct SessionCore {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) cache: SessionCache,
    /// Requests by outcome, cache hits and misses, renewals.
    pub(crate) metrics: LayerMetrics,
    loads: SingleFlight<WholeToken, Loaded>,
    renewals: SingleFlight<WholeToken, Loaded>,
    pub(crate) config: SessionConfig,
    pub(crate) clock: Arc<dyn Clock>,
    /// Bumped by revocations (per stripe of tokens), so a load that raced
    /// one does not put the revoked record back into the cache, and no
    /// thread's hot table keeps answering with it.
    revocations: Generations,
    /// This cache's per-thread hot tables.
    hot: HotFront<SessionToken, SessionData>,
    /// When (on `clock`, Unix ms) the invalidation channel's subscription
    /// last ended; 0 before it ever did.
    channel_lost_at_ms: AtomicU64,
    /// The token of every cached session, by id: revocations by id (a
    /// handler's `Session`, a listing, another instance) find the entry.
    ids: IdIndex,
    /// Ids the store did not know, and when that was learned.
    negative: Option<NegativeCache>,
    /// The invalidation channel, when other instances share the store.
    channel: Option<ChannelLink>,
}

type NegativeCache = moka::sync::Cache<SessionId, SystemTime, foldhash::fast::RandomState>;

const ID_SHARDS: usize = 16;

/// Session id → token for every session in the cache (a superset: entries
/// whose session left the cache are swept out now and then).
///
/// Every cache insert holds the id's shard lock across the insert and the
/// index update, and so does every lookup by id, so an id is never missing
/// while its session is cached.
struct IdIndex {
    shards: [Mutex<HashMap<SessionId, SessionToken>>; ID_SHARDS],
    /// A shard is swept when it grows past this.
    sweep_at: usize,
}

impl IdIndex {
    fn new(cache_capacity: u64) -> Self {
        let per_shard = usize::try_from(cache_capacity).unwrap_or(usize::MAX) / ID_SHARDS;
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            sweep_at: per_shard.saturating_mul(2).max(64),
        }
    }

    fn shard(&self, id: &SessionId) -> MutexGuard<'_, HashMap<SessionId, SessionToken>> {
        self.shards[usize::from(id.as_bytes()[0]) % ID_SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

thread_local! {
    /// Sessions this thread used last, in front of the moka cache.
    static HOT_SESSIONS: RefCell<HotTable<SessionToken, SessionData>> =
        const { RefCell::new(HotTable::new()) };
}

impl SessionCore {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        config: SessionConfig,
        clock: Arc<dyn Clock>,
        channel: Option<Arc<dyn InvalidationChannel>>,
    ) -> Result<Arc<Self>, ConfigError> {
        let longest_ttl = if channel.is_some() {
            config.connected_ttl()
        } else {
            config.cache_ttl
        };
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_capacity)
            // Housekeeping in real time; freshness is judged by `clock`.
            .time_to_live(longest_ttl)
            .build_with_hasher(BuildHasherDefault::<TokenHasher>::default());
        let negative = config.negative_ttl.map(|ttl| {
            moka::sync::Cache::builder()
                .max_capacity(config.negative_capacity)
                .time_to_live(ttl)
                .build_with_hasher(foldhash::fast::RandomState::default())
        });
        let (link, listener) = match channel {
            Some(channel) => {
                let (link, listener) =
                    ChannelLink::new(channel, config.store_timeout, config.connected_ttl())?;
                (Some(link), Some(listener))
            }
            None => (None, None),
        };
        let core = Arc::new(Self {
            store,
            cache,
            loads: SingleFlight::new(config.max_in_flight, "session"),
            renewals: SingleFlight::new(config.max_in_flight, "session"),
            metrics: LayerMetrics::new("session"),
            ids: IdIndex::new(config.cache_capacity),
            negative,
            channel: link,
            config,
            clock,
            revocations: Generations::new(),
            hot: HotFront::new(&HOT_SESSIONS),
            channel_lost_at_ms: AtomicU64::new(0),
        });
        if let Some(listener) = listener {
            let target: Arc<dyn InvalidationTarget> = Arc::clone(&core) as _;
            listener.start(Arc::downgrade(&target));
        }
        Ok(core)
    }

    /// The hot path's lookup: a copy that answers `token` at `now` as is
    /// (`Ok`), from this thread's hot table or else the moka cache, or
    /// whatever the cache holds for the slow path to deal with (`Err`).
    #[inline]
    pub(crate) fn cached(
        &self,
        token: &SessionToken,
        now: SystemTime,
        activity: bool,
    ) -> Result<Arc<SessionData>, Option<Arc<SessionData>>> {
        self.hot.lookup(
            &self.cache,
            &self.revocations,
            token.hash_prefix(),
            token,
            |_| *token,
            |data| self.classify(data, now, activity) == Verdict::Valid,
        )
    }

    /// What `data` means at `now` for a request that is (or is not) activity.
    #[inline]
    pub(crate) fn classify(&self, data: &SessionData, now: SystemTime, activity: bool) -> Verdict {
        if now >= data.expires_at {
            Verdict::LooksExpired
        } else if now >= self.fresh_until(data) || !data.confirmed.load(Ordering::Acquire) {
            Verdict::Stale
        } else if activity
            && now > data.renew_after
            && self.renewal_target(data, now) > data.expires_at
        {
            // `now > expires_at - threshold`: less than the threshold is left.
            Verdict::Renew
        } else {
            Verdict::Valid
        }
    }

    /// Whether a cached copy may answer without a store read: confirmed,
    /// and younger than the cache TTL.
    fn is_trusted(&self, data: &SessionData, now: SystemTime) -> bool {
        now < self.fresh_until(data) && data.confirmed.load(Ordering::Acquire)
    }

    /// Until when `data` is trusted: the channel's longer TTL while the
    /// invalidation channel is connected (a revocation elsewhere arrives as
    /// a message), the cache TTL otherwise. Judged at each lookup: once the
    /// connection is lost, what was revoked before it arrived, and what is
    /// revoked after it may not, so an entry cached before the loss is
    /// trusted for at most the cache TTL past the loss (and the cache is
    /// dropped when the connection is back).
    #[inline]
    fn fresh_until(&self, data: &SessionData) -> SystemTime {
        match &self.channel {
            Some(link) if link.connected() => data.fresh_while_connected,
            Some(_) => {
                let lost = UNIX_EPOCH
                    + Duration::from_millis(self.channel_lost_at_ms.load(Ordering::Acquire));
                let since_loss = lost.checked_add(self.config.cache_ttl).unwrap_or(lost);
                data.fresh_until
                    .max(data.fresh_while_connected.min(since_loss))
            }
            None => data.fresh_until,
        }
    }

    /// `min(now + duration, created_at + absolute_lifetime)`, in whole ms.
    fn renewal_target(&self, data: &SessionData, now: SystemTime) -> SystemTime {
        let target = now + self.config.duration;
        let capped = match self.config.absolute_lifetime {
            // A stored `created_at` too far out to add to means no cap.
            Some(lifetime) => data
                .created_at
                .checked_add(lifetime)
                .map_or(target, |cap| target.min(cap)),
            None => target,
        };
        truncate_to_millis(capped)
    }

    async fn with_timeout<T>(
        &self,
        op: &'static str,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        crate::error::timed_store_call("session", op, self.config.store_timeout, operation).await
    }

    /// Caches `data` unless a revocation of its token happened since
    /// `revocations_seen` or the cache holds a later expiry; returns the
    /// copy to answer with (that later one, if confirmed, else `data`).
    fn cache_insert(
        &self,
        token: SessionToken,
        data: Arc<SessionData>,
        revocations_seen: u64,
    ) -> Arc<SessionData> {
        let mut ids = self.ids.shard(&data.id);
        let id = data.id;
        let answer = self.revocations.insert_unless_changed(
            &self.cache,
            token,
            token.hash_prefix(),
            data,
            revocations_seen,
        );
        ids.insert(id, token);
        if ids.len() > self.ids.sweep_at {
            ids.retain(|_, token| self.cache.contains_key(token));
        }
        answer
    }

    /// Forgets the sessions `ids` (revoked here or by another instance):
    /// their cache entries, hot copies and flights. With `gone` (the store
    /// confirmed the deletion), the negative cache answers for them.
    fn forget_ids(&self, ids: &[SessionId], gone: bool) {
        let mut missed = false;
        for id in ids {
            let mut shard = self.ids.shard(id);
            match shard.remove(id) {
                Some(token) => {
                    drop(shard);
                    self.forget_token(&token);
                }
                None if !missed => {
                    // Not cached here, but a load of it may be under way
                    // (its token is unknown), or a thread's hot table may
                    // hold a copy moka has already evicted. Bumped while the
                    // shard is locked: a cache insert of this id (or of any
                    // id looked up later in this call) either came before
                    // the lookup, and is found in the index, or checks its
                    // generation after the bump and is not confirmed. New
                    // requests must not join a flight that read the store
                    // before the deletion.
                    self.revocations.bump_all();
                    drop(shard);
                    self.loads.forget_all();
                    self.renewals.forget_all();
                    missed = true;
                }
                None => {}
            }
        }
        if gone {
            self.remember_unknown(ids);
        }
    }

    /// Forgets every cached session of `owner` by walking the cache: only
    /// when the store deleted an unknown set of them (a bulk revocation
    /// that failed or timed out part-way).
    fn forget_owner(&self, owner: SessionOwner<'_>) {
        self.revocations.bump_all();
        self.loads.forget_all();
        self.renewals.forget_all();
        let owned: Vec<SessionToken> = self
            .cache
            .iter()
            .filter(|(_, data)| {
                owner.owns_session(data.texts.organization_id(), data.texts.subject())
            })
            .map(|(token, _)| *token)
            .collect();
        for token in owned {
            self.ids.shard(&token.id()).remove(&token.id());
            self.cache.invalidate(&token);
        }
        self.revocations.bump_all();
    }

    /// The store no longer has `ids`: the negative cache answers for them.
    fn remember_unknown(&self, ids: &[SessionId]) {
        if let Some(negative) = &self.negative {
            let now = self.clock.now();
            for id in ids {
                negative.insert(*id, now);
            }
        }
    }

    fn forget_token(&self, token: &SessionToken) {
        self.loads.forget(&WholeToken(*token));
        self.renewals.forget(&WholeToken(*token));
        self.revocations
            .remove(&self.cache, token, token.hash_prefix());
    }

    /// Whether the store said recently (within the negative TTL, on the
    /// layer's clock) that it has no session `id`.
    fn known_unknown(&self, id: &SessionId) -> bool {
        let (Some(negative), Some(ttl)) = (&self.negative, self.config.negative_ttl) else {
            return false;
        };
        negative
            .get(id)
            .is_some_and(|learned| self.clock.now() < learned + ttl)
    }

    fn publish(&self, invalidation: Invalidation) {
        if let Some(channel) = &self.channel {
            channel.publish(&invalidation);
        }
    }

    /// Whether `token` may be one of ours: always without token keys, else
    /// when one of them signed it.
    pub(crate) fn minted_here(&self, token: &SessionToken) -> bool {
        self.config
            .token_keys
            .as_ref()
            .is_none_or(|keys| keys.signed(token))
    }

    /// The slow path: load (unless `seen` is fresh and only needs a
    /// renewal), reject what is unknown or expired, renew when due.
    ///
    /// Traced (the hit path is not): a `debug` event with the outcome, the
    /// session's [`log_ref`](SessionId::log_ref) or the rejection's code,
    /// whether it was cached, and the time taken.
    pub(crate) async fn resolve(
        self: Arc<Self>,
        token: SessionToken,
        seen: Option<Arc<SessionData>>,
        activity: bool,
    ) -> Result<(Arc<SessionData>, bool), Rejection> {
        let cached = seen.is_some();
        let started = std::time::Instant::now();
        let outcome = Arc::clone(&self).decide(token, seen, activity).await;
        let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match &outcome {
            Ok((_, renewed)) => {
                self.metrics.admitted();
                if *renewed {
                    self.metrics.renewed();
                }
            }
            Err(rejection) => self.metrics.rejected(rejection.code()),
        }
        match &outcome {
            Ok((data, true)) => tracing::debug!(
                session = %data.id.log_ref(),
                expires_at = %rfc3339_millis(data.expires_at),
                elapsed_us,
                "session renewed"
            ),
            Ok((data, false)) => tracing::debug!(
                session = %data.id.log_ref(),
                cached,
                elapsed_us,
                "session admitted after a cache miss"
            ),
            Err(rejection) => tracing::debug!(
                code = %rejection.code(),
                cached,
                elapsed_us,
                "session rejected"
            ),
        }
        outcome
    }

    async fn decide(
        self: Arc<Self>,
        token: SessionToken,
        seen: Option<Arc<SessionData>>,
        activity: bool,
    ) -> Result<(Arc<SessionData>, bool), Rejection> {
        if seen.is_none() && !self.minted_here(&token) {
            // Never minted under our keys: no store read, nothing cached.
            return Err(Rejection::new(ErrorCode::SessionInvalid));
        }
        let now = self.clock.now();
        let data = match seen {
            Some(data) if self.classify(&data, now, activity) == Verdict::Renew => data,
            stale => match self.load(token, stale).await {
                Ok(Some(data)) => data,
                Ok(None) => return Err(Rejection::new(ErrorCode::SessionNotFound)),
                Err(error) => return Err(store_unavailable(&error)),
            },
        };
        let now = self.clock.now();
        match self.classify(&data, now, activity) {
            Verdict::Valid | Verdict::Stale => Ok((data, false)),
            Verdict::LooksExpired => {
                self.cache.invalidate(&token);
                Err(Rejection::new(ErrorCode::SessionExpired))
            }
            Verdict::Renew => match self.renew(token, Arc::clone(&data)).await {
                Ok(Some(renewed)) if renewed.expires_at <= self.clock.now() => {
                    // It expired before the write landed: expired stays expired.
                    self.cache.invalidate(&token);
                    Err(Rejection::new(ErrorCode::SessionExpired))
                }
                Ok(Some(renewed)) => {
                    let moved = renewed.expires_at > data.expires_at;
                    Ok((renewed, moved))
                }
                Ok(None) => Err(Rejection::new(ErrorCode::SessionNotFound)),
                Err(error) => {
                    // The session is still valid: let the request through on
                    // its current expiry, and retry the write in a second
                    // rather than on every request while the store is down.
                    tracing::warn!(session = %data.id.log_ref(), %error, "session renewal failed");
                    let revocations_seen = self.revocations.current(token.hash_prefix());
                    match self.cache.get(&token) {
                        Some(current) => {
                            if Arc::ptr_eq(&current, &data) {
                                let retry_at = self.clock.now() + STORE_RETRY_INTERVAL;
                                let deferred = Arc::new(data.with_renewal_deferred(retry_at));
                                // Same expiry: copies of `data` elsewhere stay right.
                                self.cache_insert(token, deferred, revocations_seen);
                            }
                            Ok((data, false))
                        }
                        // Gone from the cache while the write failed: revoked
                        // meanwhile (or evicted). Nothing vouches for it now.
                        None => Err(store_unavailable(&error)),
                    }
                }
            },
        }
    }

    /// Loads a session through the single-flight map. With `stale`, the
    /// caller saw that cached entry look expired and wants the store's word.
    async fn load(
        self: &Arc<Self>,
        token: SessionToken,
        stale: Option<Arc<SessionData>>,
    ) -> LoadOutcome {
        let core = Arc::clone(self);
        let flight = self.loads.run(WholeToken(token), move || {
            async move {
                if let Some(current) = core.cache.get(&token) {
                    let seen_stale = stale.is_some_and(|stale| Arc::ptr_eq(&stale, &current));
                    if !seen_stale && core.is_trusted(&current, core.clock.now()) {
                        return Ok(Some(current));
                    }
                }
                let id = token.id();
                if core.known_unknown(&id) {
                    return Ok(None);
                }
                let revocations_seen = core.revocations.current(token.hash_prefix());
                let record = core.with_timeout("load", core.store.load(&id)).await?;
                if record.is_none() {
                    if let Some(negative) = &core.negative {
                        negative.insert(id, core.clock.now());
                    }
                }
                Ok(record.map(|record| {
                    let now = core.clock.now();
                    let data = Arc::new(SessionData::from_record(record, &core.config, now));
                    // A renewal that landed while this read was under way
                    // cached a later expiry: that copy stays and answers.
                    let answer = core.cache_insert(token, data, revocations_seen);
                    if answer.expires_at <= now {
                        // Expired: resolve rejects it; nothing to keep.
                        core.cache.invalidate(&token);
                    }
                    answer
                }))
            }
            .boxed()
        });
        flight.await
    }

    /// Renews through the single-flight map: one store write however many
    /// requests on this session are due at once. `None`: the record is gone.
    async fn renew(self: &Arc<Self>, token: SessionToken, data: Arc<SessionData>) -> LoadOutcome {
        let core = Arc::clone(self);
        let flight = self.renewals.run(WholeToken(token), move || {
            async move {
                if let Some(current) = core.cache.get(&token) {
                    if current.expires_at > data.expires_at {
                        return Ok(Some(current));
                    }
                }
                let now = core.clock.now();
                let target = core.renewal_target(&data, now);
                if target <= data.expires_at {
                    return Ok(Some(data));
                }
                let revocations_seen = core.revocations.current(token.hash_prefix());
                match core
                    .with_timeout("extend", core.store.extend(&data.id, target, now))
                    .await?
                {
                    None => {
                        // Gone from the store (revoked elsewhere): no
                        // thread may keep using its copy.
                        core.revocations
                            .remove(&core.cache, &token, token.hash_prefix());
                        Ok(None)
                    }
                    Some(stored) => {
                        let now = core.clock.now();
                        let renewed = Arc::new(data.with_expiry(stored, &core.config, now));
                        let renewed = core.cache_insert(token, renewed, revocations_seen);
                        // Copies with the old expiry may sit in hot tables
                        // (not only `data`: a load may have replaced it
                        // meanwhile): none of them may answer any more.
                        core.revocations.replaced(token.hash_prefix());
                        Ok(Some(renewed))
                    }
                }
            }
            .boxed()
        });
        flight.await
    }
}

pub(crate) fn store_unavailable(error: &StoreError) -> Rejection {
    tracing::warn!(%error, "session store unavailable");
    Rejection::new(ErrorCode::StoreUnavailable)
}

/// A session just created: hand `token` to the client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CreatedSession {
    /// The bearer token; shown to the client once, never stored.
    pub token: SessionToken,
    /// The session's stable id (what stores key it by).
    pub id: SessionId,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it expires unless renewed.
    pub expires_at: SystemTime,
}

/// Creates and revokes sessions; shares the layer's store, cache and clock.
///
/// Get one from [`SessionRefreshLayer::handle`](super::SessionRefreshLayer::handle).
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) core: Arc<SessionCore>,
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

impl SessionHandle {
    /// Creates a session for `organization_id` carrying `payload`, and
    /// returns its token and expiry.
    pub async fn create(
        &self,
        organization_id: Option<&str>,
        payload: impl Serialize,
    ) -> Result<CreatedSession, StoreError> {
        self.create_for(organization_id, None, payload).await
    }

    /// Creates a session for `organization_id` and `subject` (the user or
    /// visitor it belongs to, for [`list`](Self::list) and
    /// [`revoke_all`](Self::revoke_all) by subject) carrying `payload`.
    pub async fn create_for(
        &self,
        organization_id: Option<&str>,
        subject: Option<&str>,
        payload: impl Serialize,
    ) -> Result<CreatedSession, StoreError> {
        let core = &self.core;
        let payload = serde_json::to_value(payload).map_err(StoreError::serialization)?;
        let token = match &core.config.token_keys {
            Some(keys) => keys.mint(),
            None => SessionToken::generate(),
        }
        .map_err(StoreError::randomness)?;
        let created_at = truncate_to_millis(core.clock.now());
        let expires_at = created_at + core.config.duration;
        let record = SessionRecord {
            id: token.id(),
            organization_id: organization_id.map(str::to_owned),
            subject: subject.map(str::to_owned),
            created_at,
            expires_at,
            payload,
        };
        let revocations_seen = core.revocations.current(token.hash_prefix());
        core.with_timeout("create", core.store.create(&record))
            .await?;
        let created = CreatedSession {
            token,
            id: record.id,
            created_at,
            expires_at,
        };
        core.cache_insert(
            token,
            Arc::new(SessionData::from_record(record, &core.config, created_at)),
            revocations_seen,
        );
        Ok(created)
    }

    /// Revokes the session of `token` in the store, this process's cache
    /// and (with an invalidation channel) every other instance's; returns
    /// whether it existed.
    pub async fn revoke(&self, token: &SessionToken) -> Result<bool, StoreError> {
        let core = &self.core;
        let id = token.id();
        let existed = core.with_timeout("delete", core.store.delete(&id)).await;
        // The token is known: only its stripe moves (`forget_ids` would
        // move every stripe for an id that is not cached).
        core.ids.shard(&id).remove(&id);
        core.forget_token(token);
        if existed.is_ok() {
            // Only a deletion the store confirmed may make it "unknown":
            // the negative cache must never hide a session that is stored.
            core.remember_unknown(&[id]);
        }
        core.publish(Invalidation::Sessions(vec![id]));
        existed
    }

    /// Revokes the session with id `id` (from a [`Session`] a handler
    /// holds, or a listing) like [`revoke`](Self::revoke); returns whether
    /// it existed.
    pub async fn revoke_id(&self, id: &SessionId) -> Result<bool, StoreError> {
        let core = &self.core;
        let existed = core.with_timeout("delete", core.store.delete(id)).await;
        core.forget_ids(&[*id], existed.is_ok());
        core.publish(Invalidation::Sessions(vec![*id]));
        existed
    }

    /// Logs out the session a handler holds: revokes it like
    /// [`revoke_id`](Self::revoke_id) and answers the [`SessionEnded`]
    /// marker to put into the response, so the layer does not announce an
    /// expiry for a session that no longer exists. Returns whether it
    /// existed, with the marker.
    ///
    /// With a [`CookieSource`](super::CookieSource), also send its
    /// [`clear_cookie`](super::CookieSource::clear_cookie) so the browser
    /// forgets the token.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use http::{Response, StatusCode};
    /// use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
    /// # let sessions = SessionRefreshLayer::new(MemorySessionStore::new());
    /// # let handle = sessions.handle();
    /// # let created = handle.create(None, ()).await?;
    /// # let session = handle.get(&created.token).await?.expect("just created");
    /// // In the handler, with the `Session` the layer put into the request:
    /// let (existed, ended) = handle.logout(&session).await?;
    /// let mut response = Response::new(String::new());
    /// *response.status_mut() = StatusCode::NO_CONTENT;
    /// response.extensions_mut().insert(ended);
    /// assert!(existed);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn logout(&self, session: &Session) -> Result<(bool, SessionEnded), StoreError> {
        let existed = self.revoke_id(&session.id()).await?;
        Ok((existed, SessionEnded))
    }

    /// Revokes every session of `owner` (an organization's, or a subject's:
    /// "log out everywhere") through the store's index, here and on every
    /// instance listening; returns how many the store held.
    pub async fn revoke_all(&self, owner: SessionOwner<'_>) -> Result<u64, StoreError> {
        let core = &self.core;
        let ids = match core
            .with_timeout("delete_all", core.store.delete_all(owner))
            .await
        {
            Ok(ids) => ids,
            Err(error) => {
                // The store may have deleted some or all of them before
                // failing (or answering too late): drop what this process
                // holds of the owner's sessions. Other instances see the
                // deletions within their cache TTL.
                core.forget_owner(owner);
                return Err(error);
            }
        };
        core.forget_ids(&ids, true);
        if !ids.is_empty() {
            core.publish(Invalidation::Sessions(ids.clone()));
        }
        Ok(ids.len() as u64)
    }

    /// Revokes every session of `organization_id`; returns how many the
    /// store held. Short for `revoke_all(SessionOwner::Organization(..))`.
    pub async fn revoke_organization(&self, organization_id: &str) -> Result<u64, StoreError> {
        self.revoke_all(SessionOwner::Organization(organization_id))
            .await
    }

    /// One page of the live sessions of `owner`, oldest first, read from
    /// the store (not the cache).
    pub async fn list(
        &self,
        owner: SessionOwner<'_>,
        page: PageRequest,
    ) -> Result<SessionPage, StoreError> {
        let core = &self.core;
        let now = core.clock.now();
        core.with_timeout("list", core.store.list(owner, now, page))
            .await
    }

    /// Deletes records that expired longer ago than the expired-retention
    /// setting (24 h by default); until then they answer `session_expired`.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.core.purge_expired().await
    }

    /// Starts a background task that calls [`purge_expired`](Self::purge_expired)
    /// every `interval` (the first time after one interval; failures are
    /// logged and retried at the next). It stops when the returned
    /// [`PurgeTask`] is dropped, when every layer and handle of this store
    /// is gone, or when the runtime shuts down. Needs a Tokio runtime.
    pub fn spawn_purge(&self, interval: Duration) -> Result<PurgeTask, ConfigError> {
        PurgeTask::spawn(
            Arc::downgrade(&self.core),
            interval,
            "expired sessions",
            |core: Arc<SessionCore>| async move { core.purge_expired().await },
        )
    }

    /// What the invalidation channel's listener has done so far; `None`
    /// without a channel.
    pub fn channel_status(&self) -> Option<ChannelStatus> {
        self.core.channel.as_ref().map(ChannelLink::status)
    }

    /// Looks a session up without counting it as activity: `None` when it
    /// is unknown or expired.
    pub async fn get(&self, token: &SessionToken) -> Result<Option<Session>, StoreError> {
        let core = &self.core;
        let cached = core.cache.get(token);
        let data = match cached {
            Some(data) if core.classify(&data, core.clock.now(), false) == Verdict::Valid => {
                Some(data)
            }
            None if !core.minted_here(token) => None,
            stale => core.load(*token, stale).await?,
        };
        Ok(data
            .filter(|data| data.expires_at > core.clock.now())
            .map(|data| Session::new(data, false)))
    }
}

impl SessionCore {
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let before = self
            .clock
            .now()
            .checked_sub(self.config.expired_retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.with_timeout("purge_expired", self.store.purge_expired(before))
            .await
    }
}

impl InvalidationTarget for SessionCore {
    fn invalidate(&self, invalidation: &Invalidation) -> bool {
        match invalidation {
            Invalidation::Sessions(ids) => {
                // Not remembered as unknown: whether the other instance's
                // deletion succeeded is not known here; the next request
                // reads the store once and learns it.
                self.forget_ids(ids, false);
                true
            }
            Invalidation::Subscriptions(_) => false,
        }
    }

    fn disconnected(&self) {
        let now = crate::unix_millis(self.clock.now());
        self.channel_lost_at_ms.store(now, Ordering::Release);
    }

    fn resync(&self) {
        self.revocations.bump_all();
        self.loads.forget_all();
        self.renewals.forget_all();
        self.cache.invalidate_all();
        // Again after the removal: hot slots filled from the dropped copies
        // meanwhile no longer match.
        self.revocations.bump_all();
    }
}

/// The background purge started by [`SessionHandle::spawn_purge`]; dropping
/// it stops the task.
#[derive(Debug)]
#[must_use = "the purge task stops when this is dropped"]
pub struct PurgeTask {
    task: tokio::task::JoinHandle<()>,
}

impl PurgeTask {
    /// Runs `purge` every `interval` (the first time after one interval)
    /// while `owner` lives; needs a Tokio runtime.
    pub(crate) fn spawn<T, F>(
        owner: std::sync::Weak<T>,
        interval: Duration,
        what: &'static str,
        purge: impl Fn(Arc<T>) -> F + Send + 'static,
    ) -> Result<Self, ConfigError>
    where
        T: Send + Sync + 'static,
        F: Future<Output = Result<u64, StoreError>> + Send,
    {
        if interval.is_zero() {
            return Err(ConfigError::ZeroPurgeInterval);
        }
        crate::error::check_durations(&[("purge interval", interval)])?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let task = runtime.spawn(async move {
            let start = tokio::time::Instant::now() + interval;
            let mut ticks = tokio::time::interval_at(start, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(owner) = owner.upgrade() else { return };
                match purge(owner).await {
                    Ok(purged) => tracing::debug!(purged, what, "purged"),
                    Err(error) => tracing::warn!(%error, what, "purge failed"),
                }
            }
        });
        Ok(Self { task })
    }
}

impl Drop for PurgeTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_hashes_spread_over_the_low_bits_moka_picks_buckets_with() {
        use std::hash::BuildHasher;
        let hasher = BuildHasherDefault::<TokenHasher>::default();
        let buckets = 1u64 << 12;
        let tokens = 4096;
        let used: std::collections::HashSet<u64> = (0..tokens)
            .map(|_| {
                let token = SessionToken::generate().expect("randomness");
                hasher.hash_one(token) & (buckets - 1)
            })
            .collect();
        // 4 096 random keys in 4 096 buckets fill about 63 % of them
        // (1 - 1/e); the unfolded prefix reaches at most 1 024 (64 first
        // characters times 16 values of the second's low bits).
        assert!(
            used.len() > 2_300,
            "{} of {buckets} buckets used by {tokens} tokens",
            used.len()
        );
    }

    #[test]
    fn a_payload_is_kept_as_text_and_decoded_only_when_asked() {
        let payload = Texts::new(
            None,
            None,
            json!({ "name": "Ada", "email": "ada@example.com" }),
        );
        assert!(payload.value.get().is_none(), "no Value tree until asked");
        #[derive(serde::Deserialize, PartialEq, Debug)]
        struct Visitor {
            name: String,
            email: String,
        }
        let visitor: Visitor = payload.decode().expect("decodes from the text");
        assert_eq!(visitor.name, "Ada");
        assert!(payload.value.get().is_none(), "payload_as reads the text");
        assert_eq!(payload.value()["email"], "ada@example.com");
        assert!(payload.value.get().is_some(), "decoded once, then kept");
    }

    #[test]
    fn texts_give_back_each_field_whichever_are_present() {
        let payload = json!({ "name": "Zoë", "tags": ["a", "b"] });
        for organization_id in [None, Some(""), Some("org_ü")] {
            for subject in [None, Some(""), Some("user_42")] {
                let texts = Texts::new(organization_id, subject, payload.clone());
                assert_eq!(texts.organization_id(), organization_id);
                assert_eq!(texts.subject(), subject);
                assert_eq!(texts.value(), &payload);
                let copy = texts.clone();
                assert_eq!(copy.organization_id(), organization_id);
                assert_eq!(copy.subject(), subject);
                assert_eq!(copy.decode::<Value>().expect("decodes"), payload);
            }
        }
        // A payload that is itself a string or `null`.
        let texts = Texts::new(Some("org"), Some("sub"), json!("text"));
        assert_eq!(texts.value(), &json!("text"));
        let texts = Texts::new(Some("org"), Some("sub"), Value::Null);
        assert_eq!(texts.decode::<Option<u8>>().expect("null"), None);
    }

    #[test]
    fn a_payload_too_deep_to_decode_again_keeps_its_value() {
        let mut deep = json!(1);
        for _ in 0..200 {
            deep = json!([deep]);
        }
        let payload = Texts::new(Some("org_1"), None, deep.clone());
        assert_eq!(payload.value(), &deep);
        let decoded: Value = payload.decode().expect("from the kept Value");
        assert_eq!(decoded, deep);
        // Just under the line, the text alone is kept and decodes.
        let mut shallow = json!(1);
        for _ in 0..TEXT_ONLY_DEPTH {
            shallow = json!([shallow]);
        }
        let payload = Texts::new(None, Some("visitor"), shallow.clone());
        assert!(payload.value.get().is_none());
        assert_eq!(payload.value(), &shallow);
    }
}
