//! Typed errors: configuration mistakes caught when a layer is built, and
//! store failures reported with their driver's error as the source.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A layer's configuration cannot work; returned by `build()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `duration` is zero, so every session would be born expired.
    #[error("session duration must be greater than zero")]
    ZeroDuration,
    /// The refresh threshold is longer than the session duration, so every
    /// request would renew.
    #[error(
        "refresh threshold ({}) must not exceed the session duration ({})",
        humantime::format_duration(*threshold),
        humantime::format_duration(*duration)
    )]
    ThresholdExceedsDuration {
        /// The configured refresh threshold.
        threshold: Duration,
        /// The configured session duration.
        duration: Duration,
    },
    /// The absolute lifetime is shorter than one session duration, so new
    /// sessions would be cut short at creation.
    #[error(
        "absolute lifetime ({}) must be at least the session duration ({}); disable it instead of shortening it",
        humantime::format_duration(*absolute_lifetime),
        humantime::format_duration(*duration)
    )]
    AbsoluteLifetimeShorterThanDuration {
        /// The configured absolute lifetime.
        absolute_lifetime: Duration,
        /// The configured session duration.
        duration: Duration,
    },
    /// The cache capacity is zero; use a capacity of at least one entry.
    #[error("cache capacity must be at least 1")]
    ZeroCacheCapacity,
    /// The cache time-to-live is zero; use at least one millisecond.
    #[error("cache time-to-live must be greater than zero")]
    ZeroCacheTtl,
    /// A token-signing key is shorter than 256 bits.
    #[error("a token key must be at least {minimum} bytes (got {length}); use 32 random bytes")]
    TokenKeyTooShort {
        /// The key's length in bytes.
        length: usize,
        /// The shortest key accepted.
        minimum: usize,
    },
    /// `max_in_flight` is zero, so no request could ever reach the store.
    #[error("max_in_flight must be at least 1")]
    ZeroMaxInFlight,
    /// The store timeout is zero, so every store call would time out.
    #[error("store timeout must be greater than zero")]
    ZeroStoreTimeout,
    /// A duration is longer than 100 years: use the setting's "off" switch
    /// (for example `no_absolute_lifetime`) instead of a huge value.
    #[error("{setting} ({}) is longer than 100 years", humantime::format_duration(*value))]
    DurationTooLong {
        /// The setting's name.
        setting: &'static str,
        /// The configured value.
        value: Duration,
    },
    /// The webhook secret is empty, so anyone could sign webhooks.
    #[error("the webhook secret must not be empty")]
    EmptyWebhookSecret,
    /// No webhook secret was given, so no webhook could ever verify.
    #[error("at least one webhook secret is required")]
    NoWebhookSecret,
    /// An invalidation channel or a background task needs a Tokio runtime:
    /// build the layer inside one (for example in `#[tokio::main]`).
    #[error("an invalidation channel needs a Tokio runtime: build the layer inside one")]
    NoRuntime,
    /// The purge interval is zero.
    #[error("the purge interval must be greater than zero")]
    ZeroPurgeInterval,
}

/// After a store failure, how long a stale answer (or a deferred renewal) is
/// kept before the store is tried again.
pub(crate) const STORE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The longest duration any setting accepts.
pub(crate) const MAX_SETTING: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Checks that every `(name, value)` is at most 100 years.
pub(crate) fn check_durations(settings: &[(&'static str, Duration)]) -> Result<(), ConfigError> {
    match settings.iter().find(|(_, value)| *value > MAX_SETTING) {
        Some(&(setting, value)) => Err(ConfigError::DurationTooLong { setting, value }),
        None => Ok(()),
    }
}

/// What went wrong in a store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store did not answer within the configured timeout.
    Timeout,
    /// The backend (database, network, driver) failed.
    Backend,
    /// A record could not be encoded or decoded.
    Serialization,
    /// The operating system had no randomness to mint a token.
    Randomness,
    /// Too many store operations were already in progress in this process
    /// (the layer's `max_in_flight`): refused without asking the store.
    Overloaded,
}

/// A store operation failed. Cheap to clone (the source is shared).
#[derive(Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: &'static str,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl StoreError {
    /// A backend failure, wrapping the driver's error as the source.
    pub fn backend(source: impl StdError + Send + Sync + 'static) -> Self {
        Self {
            kind: StoreErrorKind::Backend,
            message: "session or subscription store failed",
            source: Some(Arc::new(source)),
        }
    }

    /// A record that could not be encoded or decoded.
    pub fn serialization(source: impl StdError + Send + Sync + 'static) -> Self {
        Self {
            kind: StoreErrorKind::Serialization,
            message: "stored record could not be encoded or decoded",
            source: Some(Arc::new(source)),
        }
    }

    /// The store did not answer within the configured timeout.
    pub fn timeout() -> Self {
        Self {
            kind: StoreErrorKind::Timeout,
            message: "store did not answer within the configured timeout",
            source: None,
        }
    }

    /// Refused before reaching the store: `max_in_flight` operations were
    /// already waiting on it.
    pub fn overloaded() -> Self {
        Self {
            kind: StoreErrorKind::Overloaded,
            message: "too many store operations in progress",
            source: None,
        }
    }

    pub(crate) fn randomness(source: getrandom::Error) -> Self {
        Self {
            kind: StoreErrorKind::Randomness,
            message: "the operating system had no randomness to mint a session token",
            source: Some(Arc::new(source)),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for StoreError {
    /// The message alone; the driver's error is the [`source`](StdError::source).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

/// [`with_timeout`], traced: one `trace` event per store call with its
/// latency, one `debug` event per failure (the callers warn once they
/// decide what the failure means). Never a token or a full id: store
/// calls are named by operation only.
pub(crate) async fn timed_store_call<T>(
    store: &'static str,
    op: &'static str,
    timeout: Duration,
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let outcome = with_timeout(timeout, operation).await;
    let elapsed = started.elapsed();
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    crate::metrics::store_call(
        store,
        op,
        elapsed,
        outcome.as_ref().err().map(StoreError::kind),
    );
    match &outcome {
        Ok(_) => tracing::trace!(store, op, elapsed_us, "store call"),
        Err(error) => {
            tracing::debug!(store, op, elapsed_us, kind = ?error.kind(), %error, "store call failed");
        }
    }
    outcome
}

/// Runs a store `operation`, cut off after `timeout` as
/// [`StoreErrorKind::Timeout`]. Without a Tokio runtime to time it with (a
/// non-Tokio executor), it runs without the cut-off rather than panic.
pub(crate) async fn with_timeout<T>(
    timeout: Duration,
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    if tokio::runtime::Handle::try_current().is_err() {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!("no Tokio runtime: store calls run without their timeout");
        });
        return operation.await;
    }
    tokio::time::timeout(timeout, operation)
        .await
        .unwrap_or_else(|_| Err(StoreError::timeout()))
}
