//! A session record as a Redis hash, and reading replies back strictly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use crate::error::StoreError;
use crate::session::{SessionId, SessionRecord};

const CREATED_AT: &str = "created_at";
const EXPIRES_AT: &str = "expires_at";
const ORGANIZATION_ID: &str = "organization_id";
const SUBJECT: &str = "subject";
const PAYLOAD: &str = "payload";

/// What Redis handed back is not what this store wrote: the source of a
/// [`StoreErrorKind::Serialization`](crate::StoreErrorKind::Serialization)
/// error, naming the key (which holds an id, never a token).
#[derive(Debug, thiserror::Error)]
#[error("Redis key `{key}` does not hold what the session store wrote there")]
pub struct MalformedRecord {
    key: String,
    #[source]
    problem: Problem,
}

impl MalformedRecord {
    pub(super) fn new(key: impl Into<String>, problem: Problem) -> Self {
        Self {
            key: key.into(),
            problem,
        }
    }

    /// The key that holds the unreadable value.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub(super) fn into_store_error(self) -> StoreError {
        StoreError::serialization(self)
    }
}

/// What exactly could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum Problem {
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{0}` is not a whole, non-negative number of milliseconds")]
    NotATime(&'static str),
    #[error("field `{0}` is not UTF-8 text")]
    NotText(&'static str),
    #[error("the payload is not JSON")]
    Payload(#[source] serde_json::Error),
    #[error("`{0}` is not a session id (64 lowercase hex digits)")]
    NotAnId(String),
    #[error("the reply has an unexpected shape")]
    Shape,
}

/// The hash fields of `record`, for `HSET`.
pub(super) fn encode(record: &SessionRecord) -> Result<Vec<(&'static str, Vec<u8>)>, StoreError> {
    let payload = serde_json::to_vec(&record.payload).map_err(StoreError::serialization)?;
    let mut fields = vec![
        (
            CREATED_AT,
            crate::unix_millis(record.created_at)
                .to_string()
                .into_bytes(),
        ),
        (
            EXPIRES_AT,
            crate::unix_millis(record.expires_at)
                .to_string()
                .into_bytes(),
        ),
        (PAYLOAD, payload),
    ];
    if let Some(organization) = &record.organization_id {
        fields.push((ORGANIZATION_ID, organization.clone().into_bytes()));
    }
    if let Some(subject) = &record.subject {
        fields.push((SUBJECT, subject.clone().into_bytes()));
    }
    Ok(fields)
}

/// The fields this version knows, in the order a load asks for them
/// (`HMGET`, a reply of five values rather than `HGETALL`'s names and
/// values) and [`Fields`] keeps them.
pub(super) const LOADED: [&str; 5] = [CREATED_AT, EXPIRES_AT, ORGANIZATION_ID, SUBJECT, PAYLOAD];

/// A session hash's known fields as stored, in [`LOADED`]'s order.
type Fields = [Option<Vec<u8>>; 5];

/// The record of session `id` from an `HMGET` of [`LOADED`]; `None` when
/// none of them is set (there is no such hash).
pub(super) fn decode_loaded(id: SessionId, reply: Value) -> Result<Option<SessionRecord>, Problem> {
    let values: [Value; 5] = items(reply)?.try_into().map_err(|_| Problem::Shape)?;
    if values.iter().all(|value| matches!(value, Value::Nil)) {
        return Ok(None);
    }
    let mut fields = Fields::default();
    for (field, value) in fields.iter_mut().zip(values) {
        if !matches!(value, Value::Nil) {
            *field = Some(bytes(value)?);
        }
    }
    record(id, fields).map(Some)
}

/// The record of session `id` from its hash's fields (an `HGETALL` reply).
/// Fields it does not know are ignored (a later version may add some).
pub(super) fn decode(id: SessionId, fields: Value) -> Result<SessionRecord, Problem> {
    let mut known = Fields::default();
    for (name, value) in pairs(fields)? {
        if let Some(at) = LOADED.iter().position(|field| field.as_bytes() == name) {
            known[at] = Some(value);
        }
    }
    record(id, known)
}

fn record(id: SessionId, fields: Fields) -> Result<SessionRecord, Problem> {
    let [created_at, expires_at, organization_id, subject, payload] = fields;
    let created_at = created_at.ok_or(Problem::Missing(CREATED_AT))?;
    let expires_at = expires_at.ok_or(Problem::Missing(EXPIRES_AT))?;
    let payload = payload.ok_or(Problem::Missing(PAYLOAD))?;
    Ok(SessionRecord {
        id,
        organization_id: organization_id
            .map(|value| text(value, ORGANIZATION_ID))
            .transpose()?,
        subject: subject.map(|value| text(value, SUBJECT)).transpose()?,
        created_at: time(&created_at, CREATED_AT)?,
        expires_at: time(&expires_at, EXPIRES_AT)?,
        payload: serde_json::from_slice(&payload).map_err(Problem::Payload)?,
    })
}

/// A hash field's name and value, as bytes.
type Field = (Vec<u8>, Vec<u8>);

/// A hash reply as (field, value) pairs: a flat array (RESP2) or a map (RESP3).
fn pairs(value: Value) -> Result<Vec<Field>, Problem> {
    match value {
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(Problem::Shape);
            }
            let mut items = items.into_iter();
            let mut pairs = Vec::with_capacity(items.len() / 2);
            while let (Some(name), Some(value)) = (items.next(), items.next()) {
                pairs.push((bytes(name)?, bytes(value)?));
            }
            Ok(pairs)
        }
        Value::Map(entries) => entries
            .into_iter()
            .map(|(name, value)| Ok((bytes(name)?, bytes(value)?)))
            .collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err(Problem::Shape),
    }
}

/// A string reply's bytes.
pub(super) fn bytes(value: Value) -> Result<Vec<u8>, Problem> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        Value::VerbatimString { text, .. } => Ok(text.into_bytes()),
        _ => Err(Problem::Shape),
    }
}

/// An array reply's items.
pub(super) fn items(value: Value) -> Result<Vec<Value>, Problem> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(Problem::Shape),
    }
}

/// An integer reply.
pub(super) fn integer(value: &Value) -> Result<i64, Problem> {
    match value {
        Value::Int(number) => Ok(*number),
        _ => Err(Problem::Shape),
    }
}

/// A session id as stored in an index (its lowercase hex).
pub(super) fn id(value: Value) -> Result<SessionId, Problem> {
    let hex = bytes(value)?;
    std::str::from_utf8(&hex)
        .ok()
        .filter(|hex| !hex.bytes().any(|digit| digit.is_ascii_uppercase()))
        .and_then(SessionId::from_hex)
        .ok_or_else(|| Problem::NotAnId(String::from_utf8_lossy(&hex).into_owned()))
}

/// A stored time: decimal Unix milliseconds.
pub(super) fn time(value: &[u8], field: &'static str) -> Result<SystemTime, Problem> {
    let millis = std::str::from_utf8(value)
        .ok()
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|digit| digit.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u64>().ok())
        .ok_or(Problem::NotATime(field))?;
    UNIX_EPOCH
        .checked_add(Duration::from_millis(millis))
        .ok_or(Problem::NotATime(field))
}

fn text(value: Vec<u8>, field: &'static str) -> Result<String, Problem> {
    String::from_utf8(value).map_err(|_| Problem::NotText(field))
}

/// `expires_at` as stored (for replies of the extend script).
pub(super) fn expires_at(value: &[u8]) -> Result<SystemTime, Problem> {
    time(value, EXPIRES_AT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn id() -> SessionId {
        SessionId::from_bytes([7; 32])
    }

    fn hash(fields: &[(&str, &str)]) -> Value {
        Value::Array(
            fields
                .iter()
                .flat_map(|(name, value)| [bulk(name), bulk(value)])
                .collect(),
        )
    }

    #[test]
    fn encoded_fields_decode_to_the_same_record() {
        let record = SessionRecord {
            id: id(),
            organization_id: Some("acme".into()),
            subject: None,
            created_at: UNIX_EPOCH + Duration::from_millis(1_800_000_000_123),
            expires_at: UNIX_EPOCH + Duration::from_millis(1_800_086_400_123),
            payload: serde_json::json!({ "name": "Ada", "tags": [] }),
        };
        let fields = encode(&record).expect("encode");
        let reply = Value::Map(
            fields
                .into_iter()
                .map(|(name, value)| (bulk(name), Value::BulkString(value)))
                .collect(),
        );
        assert_eq!(decode(id(), reply).expect("decode"), record);
    }

    /// An `HMGET` reply of [`LOADED`] for `fields` (the others unset).
    fn loaded(fields: &[(&str, Vec<u8>)]) -> Value {
        Value::Array(
            LOADED
                .iter()
                .map(|name| {
                    fields
                        .iter()
                        .find(|(field, _)| field == name)
                        .map_or(Value::Nil, |(_, value)| Value::BulkString(value.clone()))
                })
                .collect(),
        )
    }

    #[test]
    fn a_load_reads_the_fields_it_asked_for_in_their_order() {
        for (organization_id, subject) in [(None, None), (Some("acme"), Some("user_1"))] {
            let record = SessionRecord {
                id: id(),
                organization_id: organization_id.map(str::to_owned),
                subject: subject.map(str::to_owned),
                created_at: UNIX_EPOCH + Duration::from_millis(1_800_000_000_123),
                expires_at: UNIX_EPOCH + Duration::from_millis(1_800_086_400_123),
                payload: serde_json::json!({ "name": "Ada" }),
            };
            let fields = encode(&record).expect("encode");
            let read = decode_loaded(id(), loaded(&fields)).expect("decode");
            assert_eq!(read, Some(record));
        }
        // No such hash: every field nil.
        assert!(matches!(decode_loaded(id(), loaded(&[])), Ok(None)));
        // A hash missing a field it needs, or holding a bad one.
        let partial = loaded(&[("created_at", b"1".to_vec()), ("payload", b"null".to_vec())]);
        assert!(matches!(
            decode_loaded(id(), partial),
            Err(Problem::Missing("expires_at"))
        ));
        let bad = loaded(&[
            ("created_at", b"1".to_vec()),
            ("expires_at", b"soon".to_vec()),
            ("payload", b"null".to_vec()),
        ]);
        assert!(matches!(
            decode_loaded(id(), bad),
            Err(Problem::NotATime("expires_at"))
        ));
        // Replies of another shape.
        assert!(matches!(
            decode_loaded(id(), Value::Array(vec![Value::Nil; 4])),
            Err(Problem::Shape)
        ));
        let mut not_bulk = vec![Value::Nil; 5];
        not_bulk[1] = Value::Int(2);
        assert!(matches!(
            decode_loaded(id(), Value::Array(not_bulk)),
            Err(Problem::Shape)
        ));
        assert!(matches!(
            decode_loaded(id(), Value::Int(3)),
            Err(Problem::Shape)
        ));
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_reported() {
        let record = decode(
            id(),
            hash(&[
                ("created_at", "1"),
                ("expires_at", "2"),
                ("payload", "null"),
                ("added_later", "x"),
            ]),
        )
        .expect("decode");
        assert_eq!(record.expires_at, UNIX_EPOCH + Duration::from_millis(2));
        for missing in ["created_at", "expires_at", "payload"] {
            let fields: Vec<_> = [
                ("created_at", "1"),
                ("expires_at", "2"),
                ("payload", "null"),
            ]
            .into_iter()
            .filter(|(name, _)| *name != missing)
            .collect();
            assert!(matches!(
                decode(id(), hash(&fields)),
                Err(Problem::Missing(field)) if field == missing
            ));
        }
    }

    #[test]
    fn times_are_whole_non_negative_milliseconds() {
        for bad in [
            "",
            "-5",
            "1.5",
            "1e3",
            "0x10",
            " 12",
            "99999999999999999999999",
        ] {
            assert!(time(bad.as_bytes(), EXPIRES_AT).is_err(), "{bad:?}");
        }
        assert_eq!(time(b"0", EXPIRES_AT).ok(), Some(UNIX_EPOCH));
    }

    #[test]
    fn replies_of_another_shape_are_errors() {
        assert!(matches!(decode(id(), Value::Int(3)), Err(Problem::Shape)));
        assert!(matches!(
            decode(id(), Value::Array(vec![bulk("created_at")])),
            Err(Problem::Shape)
        ));
        assert!(matches!(
            decode(
                id(),
                hash(&[("created_at", "1"), ("expires_at", "2"), ("payload", "{")])
            ),
            Err(Problem::Payload(_))
        ));
        assert!(matches!(super::id(bulk("ABCD")), Err(Problem::NotAnId(_))));
        let upper = "AB".repeat(32);
        assert!(matches!(super::id(bulk(&upper)), Err(Problem::NotAnId(_))));
        assert_eq!(super::id(bulk(&"07".repeat(32))).ok(), Some(id()));
    }
}
