//! Paginated listings: `?limit=` (default 50, at most 200) and `?cursor=`
//! (opaque, from the previous page's `next_cursor`, which is `null` on the
//! last page). A bad `limit` or `cursor` is 400 `invalid_request`.
//!
//! Every listing is oldest first. The application's own listings
//! (conversations, messages, files) page by the row's position in creation
//! order; the session listing pages by the library's `SessionCursor`.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::Value;
use tower_saas_guard::session::{PageRequest, SessionCursor};

use super::problem::ApiError;

/// A page's size when the client names none.
pub(crate) const DEFAULT_LIMIT: u32 = 50;
/// The largest page a client may ask for.
pub(crate) const MAX_LIMIT: u32 = 200;

/// `?limit=` and `?cursor=` as sent; a listing handler turns them into the
/// page it needs ([`PageParams::page`], [`PageParams::session_page`]).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageParams {
    limit: Option<String>,
    cursor: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for PageParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<Self>::try_from_uri(&parts.uri)
            .map(|Query(params)| params)
            .map_err(|rejection| ApiError::invalid_request(rejection.body_text()))
    }
}

impl PageParams {
    /// The page size: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
    fn limit(&self) -> Result<u32, ApiError> {
        let Some(text) = &self.limit else {
            return Ok(DEFAULT_LIMIT);
        };
        match text.parse::<u32>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
            _ => Err(ApiError::invalid_request(format!(
                "`limit` must be a whole number from 1 to {MAX_LIMIT} (got `{text}`)."
            ))),
        }
    }

    /// The page of an application listing (conversations, messages, files).
    pub(crate) fn page(&self) -> Result<Page, ApiError> {
        let limit = self.limit()?;
        let after = match &self.cursor {
            None => None,
            Some(text) => Some(
                Position::decode(text)
                    .ok_or_else(|| invalid_cursor(text))?
                    .0,
            ),
        };
        Ok(Page { after, limit })
    }

    /// The page of a session listing, for `SessionHandle::list`.
    pub(crate) fn session_page(&self) -> Result<PageRequest, ApiError> {
        let limit = self.limit()?;
        Ok(match &self.cursor {
            None => PageRequest::first(limit),
            Some(text) => {
                let cursor: SessionCursor = text.parse().map_err(|_| invalid_cursor(text))?;
                PageRequest::after(cursor, limit)
            }
        })
    }
}

fn invalid_cursor(text: &str) -> ApiError {
    let shown: String = text.chars().take(80).collect();
    ApiError::invalid_request(format!(
        "`cursor` `{shown}` is not one this server handed out: pass back the previous \
         page's `next_cursor` unchanged."
    ))
}

/// One page of an application listing: rows strictly after `after` (a
/// position in creation order), at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) after: Option<i64>,
    pub(crate) limit: u32,
}

impl Page {
    /// How many rows a backend reads: one more than the page, to tell
    /// whether another page follows.
    pub(crate) fn fetch(&self) -> usize {
        self.limit as usize + 1
    }

    /// The position to read after (0: from the start; positions start at 1).
    pub(crate) fn after_position(&self) -> i64 {
        self.after.unwrap_or(0)
    }

    /// The listing made of `rows` (each with its position, in order, up to
    /// [`fetch`](Self::fetch) of them).
    pub(crate) fn listing<T>(&self, mut rows: Vec<(i64, T)>) -> Listing<T> {
        let limit = self.limit as usize;
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|(position, _)| *position)
        } else {
            None
        };
        Listing {
            items: rows.into_iter().map(|(_, item)| item).collect(),
            next,
        }
    }
}

/// One page of a listing, and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Listing<T> {
    pub(crate) items: Vec<T>,
    /// The position of the page's last row, when another page follows.
    pub(crate) next: Option<i64>,
}

impl<T> Listing<T> {
    /// The `next_cursor` field: opaque text, or `null` on the last page.
    pub(crate) fn next_cursor(&self) -> Value {
        self.next
            .map_or(Value::Null, |position| Position(position).encode().into())
    }
}

/// A position as clients see it: `p` and the number in base 36, so it
/// reads as a token rather than a count to do arithmetic on.
struct Position(i64);

impl Position {
    fn encode(&self) -> String {
        let mut digits = Vec::new();
        let mut rest = self.0.unsigned_abs();
        loop {
            digits.push(char::from_digit((rest % 36) as u32, 36).expect("a base-36 digit"));
            rest /= 36;
            if rest == 0 {
                break;
            }
        }
        digits.push('p');
        digits.iter().rev().collect()
    }

    fn decode(text: &str) -> Option<Self> {
        let digits = text.strip_prefix('p')?;
        if digits.is_empty() || digits.len() > 13 {
            return None;
        }
        let position = i64::from_str_radix(digits, 36).ok()?;
        (position > 0
            && digits
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        .then_some(Self(position))
    }
}

/// The `next_cursor` of a session listing.
pub(crate) fn session_next_cursor(next: Option<SessionCursor>) -> Value {
    next.map_or(Value::Null, |cursor| cursor.to_string().into())
}
