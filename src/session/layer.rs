//! `SessionRefreshLayer` and its builder.

use std::any::type_name;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::activity::{ActivityRule, EveryRequest, ValidateOnly};
use super::core::{SessionConfig, SessionCore, SessionHandle};
use super::service::SessionRefresh;
use super::source::{HeaderSource, TokenSource};
use super::store::SessionStore;
use crate::clock::{Clock, CoarseClock};
use crate::error::{check_durations, ConfigError};
use crate::invalidation::InvalidationChannel;
use crate::rejection::{DefaultResponder, RejectionResponder};
use crate::skip::SkipRule;
use crate::type_name_of;

const HOUR: Duration = Duration::from_secs(3600);

/// Builds a [`SessionRefreshLayer`]; the settings are checked by
/// [`build`](Self::build).
///
/// | setting | default |
/// |---|---|
/// | [`duration`](Self::duration) | 24 h |
/// | [`refresh_threshold`](Self::refresh_threshold) | 4 h |
/// | [`absolute_lifetime`](Self::absolute_lifetime) | 30 days ([`no_absolute_lifetime`](Self::no_absolute_lifetime) disables it) |
/// | [`cache_capacity`](Self::cache_capacity) | 100 000 sessions |
/// | [`cache_ttl`](Self::cache_ttl) | 30 s |
/// | [`channel_cache_ttl`](Self::channel_cache_ttl) | 1 h, while an invalidation channel is connected |
/// | [`expired_retention`](Self::expired_retention) | 24 h |
/// | [`store_timeout`](Self::store_timeout) | 2 s |
/// | [`max_in_flight`](Self::max_in_flight) | 10 000 store calls |
/// | [`token_keys`](Self::token_keys) | none (tokens unsigned) |
/// | [`negative_cache_ttl`](Self::negative_cache_ttl) / [`negative_cache_capacity`](Self::negative_cache_capacity) | 5 s / 10 000 ids ([`no_negative_cache`](Self::no_negative_cache) disables it) |
/// | [`invalidation_channel`](Self::invalidation_channel) | none |
/// | [`clock`](Self::clock) | [`CoarseClock`] |
#[must_use = "a builder does nothing until `build` is called"]
pub struct SessionRefreshBuilder {
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
    clock: Arc<dyn Clock>,
    channel: Option<Arc<dyn InvalidationChannel>>,
}

impl SessionRefreshBuilder {
    /// The lifetime given to a session at creation and at each renewal.
    pub fn duration(mut self, duration: Duration) -> Self {
        self.config.duration = duration;
        self
    }

    /// Renew only when less than this is left before `expires_at`.
    pub fn refresh_threshold(mut self, threshold: Duration) -> Self {
        self.config.refresh_threshold = threshold;
        self
    }

    /// The hard cap: `expires_at` never goes past `created_at + lifetime`.
    pub fn absolute_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.absolute_lifetime = Some(lifetime);
        self
    }

    /// Lets an active session be renewed forever.
    pub fn no_absolute_lifetime(mut self) -> Self {
        self.config.absolute_lifetime = None;
        self
    }

    /// How many sessions the in-process cache holds at most.
    pub fn cache_capacity(mut self, capacity: u64) -> Self {
        self.config.cache_capacity = capacity;
        self
    }

    /// How long a cached session is trusted before it is re-read: the bound
    /// on how late a revocation done by another process is seen, when no
    /// [`invalidation_channel`](Self::invalidation_channel) is connected
    /// (see [`channel_cache_ttl`](Self::channel_cache_ttl)). Measured on
    /// the layer's [`clock`](Self::clock).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.cache_ttl = ttl;
        self
    }

    /// How long a cached session is trusted while the
    /// [`invalidation_channel`](Self::invalidation_channel) is connected
    /// (default 1 h; never less than [`cache_ttl`](Self::cache_ttl)).
    /// Revocations done elsewhere then arrive as messages, so the cache
    /// TTL's bounded staleness is not needed, and an active session is
    /// read from the store about once an hour instead of twice a minute.
    /// While the connection is down every entry falls back to `cache_ttl`
    /// at once, and when it comes back the cache is dropped. A message
    /// that fails to publish is tried again for this long.
    pub fn channel_cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.channel_cache_ttl = ttl;
        self
    }

    /// How long an expired record keeps answering `session_expired` before
    /// [`SessionHandle::purge_expired`] may delete it.
    pub fn expired_retention(mut self, retention: Duration) -> Self {
        self.config.expired_retention = retention;
        self
    }

    /// How long a store call may take before it counts as
    /// `store_unavailable`.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.config.store_timeout = timeout;
        self
    }

    /// How many store reads (and, for sessions, renewals) may wait on the
    /// store at once in this process, each for a distinct key (10 000 by
    /// default; at least 1). Requests for a key already in flight join it;
    /// past the cap a new key is answered `store_unavailable` without a
    /// store call, so a flood of distinct tokens or organizations while the
    /// store lags cannot pile up unbounded work.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.config.max_in_flight = max;
        self
    }

    /// Signs the tokens this layer mints with `keys`, and refuses tokens
    /// none of them signed as `session_invalid` without a store read (see
    /// [`TokenKeys`](super::TokenKeys) for the token format and rotation).
    /// Off by default.
    pub fn token_keys(mut self, keys: super::TokenKeys) -> Self {
        self.config.token_keys = Some(keys);
        self
    }

    /// The clock expiry decisions read (tests pass a [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long an unknown session id is remembered (5 s by default), so a
    /// client repeating an unknown or revoked token costs one store read,
    /// not one per request. Tokens are minted with their record, so a
    /// remembered id can never hide a session created afterwards.
    pub fn negative_cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.negative_ttl = Some(ttl);
        self
    }

    /// How many unknown session ids are remembered at most (10 000).
    pub fn negative_cache_capacity(mut self, capacity: u64) -> Self {
        self.config.negative_capacity = capacity;
        self
    }

    /// Reads the store for every unknown token (no negative cache).
    pub fn no_negative_cache(mut self) -> Self {
        self.config.negative_ttl = None;
        self
    }

    /// Shares revocations with other instances through `channel` (see
    /// [`crate::invalidation`]): revocations here are published, and
    /// those published elsewhere drop this layer's cached copies on
    /// receipt. `build()` then needs a Tokio runtime.
    pub fn invalidation_channel(mut self, channel: impl InvalidationChannel) -> Self {
        self.channel = Some(Arc::new(channel));
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<SessionRefreshLayer, ConfigError> {
        let config = &self.config;
        check_durations(&[
            ("duration", config.duration),
            ("refresh_threshold", config.refresh_threshold),
            (
                "absolute_lifetime",
                config.absolute_lifetime.unwrap_or_default(),
            ),
            ("cache_ttl", config.cache_ttl),
            ("channel_cache_ttl", config.channel_cache_ttl),
            ("expired_retention", config.expired_retention),
            ("store_timeout", config.store_timeout),
            (
                "negative_cache_ttl",
                config.negative_ttl.unwrap_or_default(),
            ),
        ])?;
        if config.negative_ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(ConfigError::ZeroCacheTtl);
        }
        if config.negative_ttl.is_some() && config.negative_capacity == 0 {
            return Err(ConfigError::ZeroCacheCapacity);
        }
        if config.duration.is_zero() {
            return Err(ConfigError::ZeroDuration);
        }
        if config.refresh_threshold > config.duration {
            return Err(ConfigError::ThresholdExceedsDuration {
                threshold: config.refresh_threshold,
                duration: config.duration,
            });
        }
        if let Some(lifetime) = config.absolute_lifetime {
            if lifetime < config.duration {
                return Err(ConfigError::AbsoluteLifetimeShorterThanDuration {
                    absolute_lifetime: lifetime,
                    duration: config.duration,
                });
            }
        }
        if config.max_in_flight == 0 {
            return Err(ConfigError::ZeroMaxInFlight);
        }
        if config.cache_capacity == 0 {
            return Err(ConfigError::ZeroCacheCapacity);
        }
        if config.cache_ttl.is_zero() {
            return Err(ConfigError::ZeroCacheTtl);
        }
        if config.store_timeout.is_zero() {
            return Err(ConfigError::ZeroStoreTimeout);
        }
        let core = SessionCore::new(self.store, self.config, self.clock, self.channel)?;
        Ok(SessionRefreshLayer {
            state: Arc::new(LayerState {
                core,
                source: Arc::new(HeaderSource::default()),
                source_name: type_name::<HeaderSource>(),
                activity: Arc::new(EveryRequest),
                activity_name: type_name::<EveryRequest>(),
                responder: Arc::new(DefaultResponder::new()),
                responder_name: type_name::<DefaultResponder>(),
                skip: None,
                skip_name: None,
            }),
        })
    }
}

impl fmt::Debug for SessionRefreshBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRefreshBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What every service of one layer shares: the session core and this
/// layer's pluggable behaviour.
#[derive(Clone)]
pub(crate) struct LayerState {
    pub(crate) core: Arc<SessionCore>,
    pub(crate) source: Arc<dyn TokenSource>,
    source_name: &'static str,
    pub(crate) activity: Arc<dyn ActivityRule>,
    activity_name: &'static str,
    pub(crate) responder: Arc<dyn RejectionResponder>,
    responder_name: &'static str,
    /// Requests that pass untouched; `None` (the default) costs one branch.
    pub(crate) skip: Option<Arc<dyn SkipRule>>,
    skip_name: Option<&'static str>,
}

impl fmt::Debug for LayerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRefreshLayer")
            .field("config", &self.core.config)
            .field("token_source", &self.source_name)
            .field("activity", &self.activity_name)
            .field("responder", &self.responder_name)
            .field("skip_when", &self.skip_name)
            .finish()
    }
}

/// Validates the session of every request and renews it while its holder
/// is active; see the [module docs](super) for the whole behaviour.
///
/// Clones share one store, cache and configuration; the per-route methods
/// ([`validate_only`](Self::validate_only), [`activity`](Self::activity),
/// [`token_source`](Self::token_source), [`responder`](Self::responder),
/// [`skip_when`](Self::skip_when)) borrow the layer and return another
/// that still shares them, so one layer serves every route:
///
/// ```
/// use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
///
/// let sessions = SessionRefreshLayer::new(MemorySessionStore::new());
/// let reads = sessions.validate_only(); // validates, never renews
/// let writes = &sessions; // renews when close to expiry
/// # let _ = (reads, writes);
/// ```
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct SessionRefreshLayer {
    state: Arc<LayerState>,
}

impl SessionRefreshLayer {
    /// A layer over `store` with the default settings (24 h sessions,
    /// renewed within 4 h of expiry, 30-day cap, token in `x-session-id`).
    pub fn new(store: impl SessionStore) -> Self {
        Self::builder(store)
            .build()
            .expect("the default session settings are valid")
    }

    /// A builder over `store`, to change the settings.
    pub fn builder(store: impl SessionStore) -> SessionRefreshBuilder {
        SessionRefreshBuilder {
            store: Arc::new(store),
            config: SessionConfig {
                duration: 24 * HOUR,
                refresh_threshold: 4 * HOUR,
                absolute_lifetime: Some(30 * 24 * HOUR),
                cache_capacity: 100_000,
                cache_ttl: Duration::from_secs(30),
                channel_cache_ttl: HOUR,
                expired_retention: 24 * HOUR,
                store_timeout: Duration::from_secs(2),
                negative_ttl: Some(Duration::from_secs(5)),
                negative_capacity: 10_000,
                max_in_flight: 10_000,
                token_keys: None,
            },
            clock: Arc::new(CoarseClock::new()),
            channel: None,
        }
    }

    /// The handle that creates and revokes this layer's sessions.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle {
            core: Arc::clone(&self.state.core),
        }
    }

    /// Where requests carry their token (default: the `x-session-id` header).
    pub fn token_source(&self, source: impl TokenSource) -> Self {
        let mut state = LayerState::clone(&self.state);
        state.source_name = type_name_of(&source);
        state.source = Arc::new(source);
        Self {
            state: Arc::new(state),
        }
    }

    /// Which requests count as activity (default: every request).
    pub fn activity(&self, rule: impl ActivityRule) -> Self {
        let mut state = LayerState::clone(&self.state);
        state.activity_name = type_name_of(&rule);
        state.activity = Arc::new(rule);
        Self {
            state: Arc::new(state),
        }
    }

    /// Validates sessions but never renews them (for reads that should not
    /// keep a session alive).
    pub fn validate_only(&self) -> Self {
        self.activity(ValidateOnly)
    }

    /// Replaces the builder of rejection responses.
    pub fn responder(&self, responder: impl RejectionResponder) -> Self {
        let mut state = LayerState::clone(&self.state);
        state.responder_name = type_name_of(&responder);
        state.responder = Arc::new(responder);
        Self {
            state: Arc::new(state),
        }
    }

    /// Lets the requests `rule` selects pass straight to the inner service,
    /// untouched: no token is read, no [`Session`](super::Session) is
    /// attached, no `x-session-expires-at` is added. For health checks and
    /// reflection behind a layer that wraps a whole server; a later call
    /// replaces an earlier rule.
    ///
    /// ```
    /// use std::convert::Infallible;
    ///
    /// use http::{Request, Response};
    /// use tower::{Layer, ServiceExt};
    /// use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
    /// use tower_saas_guard::RequestHead;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sessions = SessionRefreshLayer::new(MemorySessionStore::new())
    ///     .skip_when(|head: &RequestHead<'_>| head.uri().path() == "/healthz");
    /// let service = sessions.layer(tower::service_fn(|_: Request<()>| async {
    ///     Ok::<_, Infallible>(Response::new("ok"))
    /// }));
    /// let health = service.clone().oneshot(Request::get("/healthz").body(())?).await?;
    /// assert_eq!(health.status(), 200);
    /// assert!(!health.headers().contains_key("x-session-expires-at"));
    /// let other = service.oneshot(Request::get("/account").body(())?).await?;
    /// assert_eq!(other.status(), 401);
    /// # Ok(())
    /// # }
    /// ```
    pub fn skip_when(&self, rule: impl SkipRule) -> Self {
        let mut state = LayerState::clone(&self.state);
        state.skip_name = Some(type_name_of(&rule));
        state.skip = Some(Arc::new(rule));
        Self {
            state: Arc::new(state),
        }
    }
}

impl fmt::Debug for SessionRefreshLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.state.fmt(f)
    }
}

impl<S> Layer<S> for SessionRefreshLayer {
    type Service = SessionRefresh<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionRefresh::new(inner, Arc::clone(&self.state))
    }
}
