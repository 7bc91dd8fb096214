//! Checks on what clients send: required text, limits, e-mail addresses,
//! JSON bodies; and fresh ids.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::Json;
use serde::de::DeserializeOwned;
use tower_saas_guard::session::SessionToken;

use super::problem::ApiError;

/// Field limits, in characters.
pub(crate) const MAX_ID_CHARS: usize = 128;
pub(crate) const MAX_NAME_CHARS: usize = 200;
pub(crate) const MAX_EMAIL_CHARS: usize = 320;
/// For `content`, `draft` and `greeting`.
pub(crate) const MAX_CONTENT_CHARS: usize = 10_000;
/// An uploaded file's `content`, in bytes of UTF-8 (1 MiB).
pub(crate) const MAX_FILE_BYTES: usize = 1024 * 1024;
/// The body of an upload may be larger than its content: JSON escapes a
/// control character in six bytes. Anything past this is a 400.
pub(crate) const MAX_FILE_BODY_BYTES: usize = 6 * MAX_FILE_BYTES + 64 * 1024;

/// A billing webhook's body, signed and read whole (1 MiB); a larger one
/// is 413 `payload_too_large` before anything is verified.
pub(crate) const MAX_WEBHOOK_BODY_BYTES: usize = 1024 * 1024;

/// `value` trimmed; 400 when that is empty, or when `value` as sent is
/// longer than `max_chars` characters.
pub(crate) fn required_text(
    field: &str,
    value: &str,
    max_chars: usize,
) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ApiError::invalid_request(format!(
            "`{field}` must not be empty."
        )));
    }
    if value.chars().count() > max_chars {
        return Err(ApiError::invalid_request(format!(
            "`{field}` must be at most {max_chars} characters."
        )));
    }
    Ok(trimmed.to_owned())
}

/// `value` trimmed; 400 unless it has exactly one `@` with text on both sides.
pub(crate) fn email_address(value: &str) -> Result<String, ApiError> {
    let email = required_text("email", value, MAX_EMAIL_CHARS)?;
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(email)
        }
        _ => Err(ApiError::invalid_request(
            "`email` must have one `@` with text on both sides.".to_owned(),
        )),
    }
}

/// `Json<T>`, except that every way a body can be wrong (not JSON, wrong
/// `content-type`, a missing or mistyped field) is a 400 `invalid_request`
/// problem. Unknown fields are ignored, as serde does by default.
pub(crate) struct ValidJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::invalid_request(describe(&rejection))),
        }
    }
}

pub(crate) fn describe(rejection: &JsonRejection) -> String {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "The body must be JSON, sent with `content-type: application/json`.".to_owned()
        }
        other => other.body_text(),
    }
}

/// An id in the path (`/conversations/{id}/…`): like axum's `Path<String>`,
/// except that a segment that is not UTF-8 once percent-decoded is a 400
/// `invalid_request` problem, not axum's plain-text answer.
pub(crate) struct PathId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(rejection) => Err(ApiError::invalid_request(format!(
                "The id in the path is not valid: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// A fresh opaque id such as `conv_5pZt0y2a9QeVb1xW` (96 random bits).
pub(crate) fn new_id(prefix: &str) -> Result<String, ApiError> {
    let random = SessionToken::generate()
        .map_err(|error| ApiError::internal(format!("no randomness for an id: {error}")))?;
    Ok(format!("{prefix}_{}", &random.to_string()[..16]))
}
