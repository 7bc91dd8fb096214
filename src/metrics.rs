//! Counters, gauges and histograms through the `metrics` facade (feature
//! `metrics`); without the feature every call here is an empty inline
//! function.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `tower_saas_guard_requests_total` | counter | `layer` (`session`, `subscription`), `outcome` (`admitted`, `rejected`), `code` (rejections) |
//! | `tower_saas_guard_cache_lookups_total` | counter | `layer`, `result` (`hit`, `miss`) |
//! | `tower_saas_guard_renewals_total` | counter | |
//! | `tower_saas_guard_store_calls_total` | counter | `store` (`session`, `subscription`), `op`, `result` (`ok`, `timeout`, `backend`, `serialization`, `overloaded`, …) |
//! | `tower_saas_guard_store_call_seconds` | histogram | `store`, `op` |
//! | `tower_saas_guard_store_flights` | gauge | `store`: store calls in progress |
//!
//! The per-request counters are registered when a layer is built, so
//! install the recorder (a Prometheus exporter, …) before building the
//! layers; a request then costs one atomic add per counter.

use std::time::Duration;

use crate::error::StoreErrorKind;
use crate::rejection::ErrorCode;

#[cfg(feature = "metrics")]
mod imp {
    use super::*;
    use metrics::{counter, gauge, histogram, Counter};

    /// Every code a layer may answer, in a fixed order (for the counters).
    const CODES: [ErrorCode; 8] = [
        ErrorCode::SessionMissing,
        ErrorCode::SessionInvalid,
        ErrorCode::SessionNotFound,
        ErrorCode::SessionExpired,
        ErrorCode::OrganizationMissing,
        ErrorCode::SubscriptionRequired,
        ErrorCode::StoreUnavailable,
        ErrorCode::Misconfigured,
    ];

    fn index(code: ErrorCode) -> usize {
        CODES
            .iter()
            .position(|known| *known == code)
            .unwrap_or(CODES.len() - 1)
    }

    /// One layer's per-request counters, registered once.
    pub(crate) struct LayerMetrics {
        admitted: Counter,
        rejected: [Counter; CODES.len()],
        hits: Counter,
        misses: Counter,
        renewals: Counter,
    }

    impl LayerMetrics {
        pub(crate) fn new(layer: &'static str) -> Self {
            Self {
                admitted: counter!(
                    "tower_saas_guard_requests_total",
                    "layer" => layer,
                    "outcome" => "admitted"
                ),
                rejected: CODES.map(|code| {
                    counter!(
                        "tower_saas_guard_requests_total",
                        "layer" => layer,
                        "outcome" => "rejected",
                        "code" => code.as_str()
                    )
                }),
                hits: counter!(
                    "tower_saas_guard_cache_lookups_total",
                    "layer" => layer,
                    "result" => "hit"
                ),
                misses: counter!(
                    "tower_saas_guard_cache_lookups_total",
                    "layer" => layer,
                    "result" => "miss"
                ),
                renewals: counter!("tower_saas_guard_renewals_total"),
            }
        }

        #[inline]
        pub(crate) fn lookup(&self, hit: bool) {
            if hit {
                self.hits.increment(1);
            } else {
                self.misses.increment(1);
            }
        }

        #[inline]
        pub(crate) fn admitted(&self) {
            self.admitted.increment(1);
        }

        pub(crate) fn rejected(&self, code: ErrorCode) {
            self.rejected[index(code)].increment(1);
        }

        pub(crate) fn renewed(&self) {
            self.renewals.increment(1);
        }
    }

    pub(crate) fn store_call(
        store: &'static str,
        op: &'static str,
        elapsed: Duration,
        error: Option<StoreErrorKind>,
    ) {
        let result = match error {
            None => "ok",
            Some(StoreErrorKind::Timeout) => "timeout",
            Some(StoreErrorKind::Backend) => "backend",
            Some(StoreErrorKind::Serialization) => "serialization",
            Some(StoreErrorKind::Randomness) => "randomness",
            Some(StoreErrorKind::Overloaded) => "overloaded",
        };
        counter!(
            "tower_saas_guard_store_calls_total",
            "store" => store,
            "op" => op,
            "result" => result
        )
        .increment(1);
        histogram!("tower_saas_guard_store_call_seconds", "store" => store, "op" => op)
            .record(elapsed.as_secs_f64());
    }

    pub(crate) fn flights(store: &'static str, delta: f64) {
        gauge!("tower_saas_guard_store_flights", "store" => store).increment(delta);
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use super::*;

    pub(crate) struct LayerMetrics;

    impl LayerMetrics {
        pub(crate) fn new(_: &'static str) -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn lookup(&self, _: bool) {}

        #[inline(always)]
        pub(crate) fn admitted(&self) {}

        #[inline(always)]
        pub(crate) fn rejected(&self, _: ErrorCode) {}

        #[inline(always)]
        pub(crate) fn renewed(&self) {}
    }

    #[inline(always)]
    pub(crate) fn store_call(
        _: &'static str,
        _: &'static str,
        _: Duration,
        _: Option<StoreErrorKind>,
    ) {
    }

    #[inline(always)]
    pub(crate) fn flights(_: &'static str, _: f64) {}
}

pub(crate) use imp::{flights, store_call, LayerMetrics};
