//! Signed tokens: an option that lets the layer tell a token it minted from
//! one it did not, without a store read.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::token::{SessionToken, TOKEN_BYTES};
use crate::error::ConfigError;

/// Random bytes in a signed token; the rest of its 32 bytes is the tag.
const RANDOM_BYTES: usize = 24;
/// Bytes of HMAC-SHA256 a signed token carries.
const TAG_BYTES: usize = TOKEN_BYTES - RANDOM_BYTES;
/// The shortest key accepted: 256 bits.
pub const MIN_TOKEN_KEY_BYTES: usize = 32;

/// Keys that sign the session tokens a layer mints, so that a token the
/// server never minted is refused as `session_invalid` **before** any
/// store read, cache entry or negative-cache entry: a flood of random
/// well-formed tokens costs the database nothing.
///
/// A signed token keeps the shape of every token (43 characters of
/// base64url); its 32 bytes are 24 random bytes (192 bits from the OS
/// CSPRNG) followed by the first 8 bytes of HMAC-SHA256 of those 24 bytes
/// under the current key. Tokens are checked against the current key and
/// every previous one, so keys can be rotated without logging anyone out:
/// add the new key as current, keep the old one as previous until the
/// tokens it signed have expired (the session duration, or the absolute
/// lifetime), then drop it.
///
/// Off by default: tokens must outlive restarts, so the key is
/// configuration the application keeps (from its secret store, the same
/// on every instance), not something the crate can make up. Turning it on
/// for a store that already holds unsigned sessions ends those sessions
/// (their tokens are refused as `session_invalid`). The check runs only
/// when the cache does not know the token, so a cache hit costs the same
/// with or without keys.
///
/// ```
/// use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer, TokenKeys};
///
/// let keys = TokenKeys::new(b"a 32-byte or longer secret key!!".to_vec())?
///     .previous(b"the key before, kept while its tokens live".to_vec())?;
/// let sessions = SessionRefreshLayer::builder(MemorySessionStore::new())
///     .token_keys(keys)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct TokenKeys {
    /// Already keyed: the first signs, every one verifies.
    keys: Vec<Hmac<Sha256>>,
}

impl TokenKeys {
    /// Signs with `current` (at least [`MIN_TOKEN_KEY_BYTES`] bytes;
    /// otherwise [`ConfigError::TokenKeyTooShort`]).
    pub fn new(current: impl Into<Vec<u8>>) -> Result<Self, ConfigError> {
        Ok(Self {
            keys: vec![keyed(current.into())?],
        })
    }

    /// Also accepts tokens signed with `previous` (for rotation); may be
    /// called several times.
    pub fn previous(mut self, previous: impl Into<Vec<u8>>) -> Result<Self, ConfigError> {
        self.keys.push(keyed(previous.into())?);
        Ok(self)
    }

    /// A new token signed with the current key.
    pub(crate) fn mint(&self) -> Result<SessionToken, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes[..RANDOM_BYTES])?;
        let tag = self.keys[0]
            .clone()
            .chain_update(&bytes[..RANDOM_BYTES])
            .finalize();
        bytes[RANDOM_BYTES..].copy_from_slice(&tag.into_bytes()[..TAG_BYTES]);
        Ok(SessionToken::from_bytes(&bytes))
    }

    /// Whether one of the keys signed `token` (each tag compared in
    /// constant time).
    pub(crate) fn signed(&self, token: &SessionToken) -> bool {
        let bytes = token.to_bytes();
        let (random, tag) = bytes.split_at(RANDOM_BYTES);
        let mut signed = false;
        for key in &self.keys {
            // No early exit: every key costs the same whichever matched.
            signed |= key
                .clone()
                .chain_update(random)
                .verify_truncated_left(tag)
                .is_ok();
        }
        signed
    }
}

fn keyed(key: Vec<u8>) -> Result<Hmac<Sha256>, ConfigError> {
    if key.len() < MIN_TOKEN_KEY_BYTES {
        return Err(ConfigError::TokenKeyTooShort {
            length: key.len(),
            minimum: MIN_TOKEN_KEY_BYTES,
        });
    }
    Ok(Hmac::new_from_slice(&key).expect("HMAC accepts keys of any length"))
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD: &[u8] = b"fedcba9876543210fedcba9876543210";

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let keys = TokenKeys::new(KEY).expect("a long enough key");
        let token = keys.mint().expect("os randomness");
        assert!(keys.signed(&token));
        assert_eq!(SessionToken::parse(&token.to_string()), Ok(token));
        let unsigned = SessionToken::generate().expect("os randomness");
        assert!(!keys.signed(&unsigned));
        // One character changed (keeping the shape) breaks the tag.
        let text = token.to_string();
        let flipped = if text.starts_with('A') { 'B' } else { 'A' };
        let tampered = format!("{flipped}{}", &text[1..]);
        let tampered = SessionToken::parse(&tampered).expect("same shape");
        assert!(!keys.signed(&tampered));
    }

    #[test]
    fn previous_keys_verify_but_never_sign() {
        let before = TokenKeys::new(OLD).expect("a long enough key");
        let old_token = before.mint().expect("os randomness");
        let rotated = TokenKeys::new(KEY)
            .and_then(|keys| keys.previous(OLD))
            .expect("long enough keys");
        assert!(rotated.signed(&old_token));
        let new_token = rotated.mint().expect("os randomness");
        assert!(!before.signed(&new_token), "signed with the new key");
        let dropped = TokenKeys::new(KEY).expect("a long enough key");
        assert!(!dropped.signed(&old_token));
        assert!(dropped.signed(&new_token));
    }

    #[test]
    fn short_keys_are_refused_and_debug_hides_keys() {
        assert_eq!(
            TokenKeys::new(&KEY[..31]).err(),
            Some(ConfigError::TokenKeyTooShort {
                length: 31,
                minimum: 32
            })
        );
        let keys = TokenKeys::new(KEY).expect("a long enough key");
        assert!(keys.clone().previous(b"short".to_vec()).is_err());
        let printed = format!("{keys:?}");
        assert!(!printed.contains("0123"), "{printed}");
    }

    #[test]
    fn token_bytes_round_trip_through_the_text() {
        for _ in 0..64 {
            let token = SessionToken::generate().expect("os randomness");
            assert_eq!(SessionToken::from_bytes(&token.to_bytes()), token);
        }
    }
}
