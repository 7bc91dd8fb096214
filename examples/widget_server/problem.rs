//! Error answers: RFC 9457 problem+json with a `code`, like the library's
//! own rejections.

use std::fmt;

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tower_saas_guard::billing::WebhookError;
use tower_saas_guard::{problem_json, ErrorCode, StoreError};

use super::log;
use super::storage::WriteError;

/// An error answer: RFC 9457 problem+json with a `code`, like the library's
/// own rejections.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) title: &'static str,
    pub(crate) detail: String,
    /// `Retry-After`, in seconds, when retrying later can succeed.
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn invalid_request(detail: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            title: "Invalid request",
            detail,
            retry_after: None,
        }
    }

    pub(crate) fn not_found(detail: String) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            title: "Not found",
            detail,
            retry_after: None,
        }
    }

    /// The same answer as the library's `subscription_required`, for a
    /// decision a handler makes itself.
    pub(crate) fn subscription_required(detail: String) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: ErrorCode::SubscriptionRequired.as_str(),
            title: ErrorCode::SubscriptionRequired.title(),
            detail,
            retry_after: None,
        }
    }

    /// `which` store (`session`, `subscription`) failed with `error`.
    pub(crate) fn store_unavailable(which: &'static str, error: &dyn fmt::Display) -> Self {
        log::line(format!("widget_server: {which} store failed: {error}"));
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::StoreUnavailable.as_str(),
            title: ErrorCode::StoreUnavailable.title(),
            detail: format!("The {which} store is unavailable; retry later."),
            // Worth retrying soon.
            retry_after: Some(1),
        }
    }

    /// Beyond a rate limit: 429 `rate_limited`, retry after `wait`
    /// (rounded up to whole seconds, at least 1).
    pub(crate) fn rate_limited(wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            title: "Too many requests",
            detail: format!("Too many requests; retry in {} s.", seconds.max(1)),
            retry_after: Some(seconds.max(1)),
        }
    }

    /// The request took longer than `limit` (`--request-timeout`).
    pub(crate) fn request_timeout(limit: std::time::Duration) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "request_timeout",
            title: "Request timeout",
            detail: format!(
                "The request took longer than {}; send it again.",
                humantime::format_duration(limit)
            ),
            retry_after: None,
        }
    }

    /// The application's own store (conversations, files, settings) failed.
    pub(crate) fn app_store(error: StoreError) -> Self {
        Self::store_unavailable("application", &error)
    }

    /// A capped write: 409 `limit_reached` when the count is at its cap
    /// (retrying will not help; nothing was saved), or the store's failure.
    pub(crate) fn app_write(error: WriteError) -> Self {
        match error {
            WriteError::Full(limit) => Self {
                status: StatusCode::CONFLICT,
                code: "limit_reached",
                title: "Limit reached",
                detail: limit.detail(),
                retry_after: None,
            },
            WriteError::Store(error) => Self::app_store(error),
        }
    }

    /// The route's webhook has no secret: `flag` names the one to set.
    pub(crate) fn webhook_not_configured(flag: &str) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "webhook_not_configured",
            title: "Webhook not configured",
            detail: format!(
                "This server has no webhook secret ({flag}), so it cannot verify these \
                 billing webhooks."
            ),
            retry_after: None,
        }
    }

    /// A body the route could not read whole: too large (413
    /// `payload_too_large`, with the limit) or cut short (400).
    pub(crate) fn unreadable_body(rejection: &BytesRejection, limit: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "payload_too_large",
                title: "Payload too large",
                detail: format!("The body must be at most {limit} bytes."),
                retry_after: None,
            };
        }
        Self::invalid_request(rejection.body_text())
    }

    /// A refused webhook, with the library's code and status (nothing was
    /// applied).
    pub(crate) fn webhook(error: WebhookError) -> Self {
        if matches!(error, WebhookError::Store(_)) {
            return Self::store_unavailable("subscription", &error);
        }
        log_refusal(&error);
        Self {
            status: error.status(),
            code: error.code(),
            title: error.title(),
            detail: error.to_string(),
            retry_after: None,
        }
    }

    pub(crate) fn internal(detail: String) -> Self {
        log::line(format!("widget_server: internal error: {detail}"));
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error",
            title: "Internal server error",
            detail: "The server failed to answer this request.".to_owned(),
            retry_after: None,
        }
    }
}

/// Logs a refused webhook, at most one line a second: a sender flooding
/// the route with bad signatures cannot flood the log. The next line says
/// how many were not logged.
fn log_refusal(error: &WebhookError) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static LAST_SECOND: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let last = LAST_SECOND.load(Ordering::Relaxed);
    if second > last
        && LAST_SECOND
            .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        log::line(format!(
            "widget_server: billing webhook refused: {error} ({suppressed} more refused since the last line)"
        ));
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            problem_json(self.status, self.code, self.title, &self.detail).map(Body::from);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
