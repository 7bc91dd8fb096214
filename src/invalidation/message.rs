//! The text carried by a channel: `{"v":1,"from":"…","sessions":[…]}` or
//! `{"v":1,"from":"…","subscriptions":"org"}`.

use serde::{Deserialize, Serialize};

use super::MAX_MESSAGE_BYTES;
use crate::session::SessionId;

/// What a message tells the other instances to forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalidation {
    /// These sessions were revoked.
    Sessions(Vec<SessionId>),
    /// This organization's subscriptions changed.
    Subscriptions(String),
}

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    v: u32,
    /// The publishing cache's instance id, so it skips its own messages.
    from: String,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    sessions: Option<Vec<&'a str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subscriptions: Option<String>,
}

/// Session ids per message: 64 hex digits and 3 bytes of JSON each, so
/// a message stays far below [`MAX_MESSAGE_BYTES`].
const IDS_PER_MESSAGE: usize = 64;

impl Invalidation {
    /// The messages that carry this invalidation from instance `from`
    /// (several when many sessions are revoked at once).
    pub(crate) fn encode(&self, from: u64) -> Vec<String> {
        let from = format!("{from:016x}");
        let messages: Vec<String> = match self {
            Self::Sessions(ids) => ids
                .chunks(IDS_PER_MESSAGE)
                .map(|chunk| {
                    let hex: Vec<String> = chunk.iter().map(ToString::to_string).collect();
                    let wire = Wire {
                        v: 1,
                        from: from.clone(),
                        sessions: Some(hex.iter().map(String::as_str).collect()),
                        subscriptions: None,
                    };
                    serde_json::to_string(&wire).expect("a message serializes")
                })
                .collect(),
            Self::Subscriptions(organization_id) => {
                let wire = Wire {
                    v: 1,
                    from,
                    sessions: None,
                    subscriptions: Some(organization_id.clone()),
                };
                vec![serde_json::to_string(&wire).expect("a message serializes")]
            }
        };
        messages
            .into_iter()
            .filter(|message| {
                let fits = message.len() <= MAX_MESSAGE_BYTES;
                if !fits {
                    tracing::warn!(
                        bytes = message.len(),
                        "invalidation message too long to publish (organization id over ~6 KB?); \
                         other instances will see the change within their cache TTL"
                    );
                }
                fits
            })
            .collect()
    }

    /// Reads a message: the publisher's instance id and what to forget.
    /// `None` for anything this version does not understand.
    pub(crate) fn decode(message: &str) -> Option<(u64, Self)> {
        let wire: Wire<'_> = serde_json::from_str(message).ok()?;
        if wire.v != 1 {
            return None;
        }
        let from = u64::from_str_radix(&wire.from, 16).ok()?;
        let invalidation = match (wire.sessions, wire.subscriptions) {
            (Some(ids), None) => Self::Sessions(
                ids.into_iter()
                    .map(SessionId::from_hex)
                    .collect::<Option<Vec<_>>>()?,
            ),
            (None, Some(organization_id)) => Self::Subscriptions(organization_id),
            _ => return None,
        };
        Some((from, invalidation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> SessionId {
        SessionId::from_bytes([byte; 32])
    }

    #[test]
    fn messages_round_trip() {
        let sessions = Invalidation::Sessions(vec![id(1), id(2)]);
        let [message] = sessions.encode(0xabc).try_into().expect("one message");
        assert_eq!(Invalidation::decode(&message), Some((0xabc, sessions)));
        let subscriptions = Invalidation::Subscriptions("org \"1\"".into());
        let [message] = subscriptions.encode(7).try_into().expect("one message");
        assert_eq!(Invalidation::decode(&message), Some((7, subscriptions)));
    }

    #[test]
    fn many_sessions_are_split_into_messages_under_the_limit() {
        let ids: Vec<SessionId> = (0..=200u8).map(id).collect();
        let messages = Invalidation::Sessions(ids.clone()).encode(1);
        assert_eq!(messages.len(), 4);
        let mut decoded = Vec::new();
        for message in &messages {
            assert!(
                message.len() <= MAX_MESSAGE_BYTES,
                "{} bytes",
                message.len()
            );
            match Invalidation::decode(message) {
                Some((1, Invalidation::Sessions(chunk))) => decoded.extend(chunk),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(decoded, ids);
    }

    #[test]
    fn anything_else_is_ignored_not_a_panic() {
        for message in [
            "",
            "not json",
            "{}",
            r#"{"v":2,"from":"1","subscriptions":"o"}"#,
            r#"{"v":1,"from":"zz","subscriptions":"o"}"#,
            r#"{"v":1,"from":"1","sessions":["00"]}"#,
            r#"{"v":1,"from":"1","sessions":[],"subscriptions":"o"}"#,
            r#"{"v":1,"from":"1"}"#,
        ] {
            assert_eq!(Invalidation::decode(message), None, "{message}");
        }
    }
}
