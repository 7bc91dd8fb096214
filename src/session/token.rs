//! Session tokens: minted from the OS CSPRNG, checked for shape before any
//! store access, and hashed before they reach a store.

use std::fmt;

use sha2::{Digest, Sha256};

/// Random bytes in a token: 256 bits from the operating system's CSPRNG.
pub(crate) const TOKEN_BYTES: usize = 32;
/// Length of a token's text form (base64url without padding).
pub(crate) const TOKEN_CHARS: usize = 43;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url character → its 6-bit value; 0xff for every other byte.
static DECODE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// A session token, the bearer secret a client presents.
///
/// Its text form is 43 URL-safe base64 characters (256 random bits). A string
/// of any other shape never parses, so malformed input is rejected as
/// `session_invalid` without touching a store. `Debug` does not print the
/// secret.
///
/// ```
/// use tower_saas_guard::session::SessionToken;
///
/// let token = SessionToken::generate()?;
/// let text = token.to_string();
/// assert_eq!(text.len(), 43);
/// assert_eq!(SessionToken::parse(&text)?, token);
/// assert!(SessionToken::parse("not-a-token").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionToken([u8; TOKEN_BYTES]);

impl std::hash::Hash for SessionToken {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // 64 of the 256 random bits are plenty for a hash table.
        state.write_u64(self.hash_prefix());
    }
}

/// A presented token did not have a token's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a session token is 43 characters of URL-safe base64")]
pub struct MalformedToken;

impl SessionToken {
    /// Mints a new token from the operating system's CSPRNG.
    ///
    /// Fails only when the OS has no randomness to give.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Parses a token's text form, checking its exact shape.
    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        Self::parse_bytes(text.as_bytes())
    }

    /// Parses a token from raw header bytes, checking its exact shape.
    pub fn parse_bytes(text: &[u8]) -> Result<Self, MalformedToken> {
        let text: &[u8; TOKEN_CHARS] = text.try_into().map_err(|_| MalformedToken)?;
        // Hand-rolled base64url decoding of a fixed 43-character shape:
        // this runs on every request, ahead of the cache lookup.
        let (groups, tail) = text.split_at(40);
        let mut bytes = [0u8; TOKEN_BYTES];
        let mut invalid = 0u8;
        for (out, chunk) in bytes.chunks_exact_mut(3).zip(groups.chunks_exact(4)) {
            let [a, b, c, d] =
                [chunk[0], chunk[1], chunk[2], chunk[3]].map(|ch| DECODE[usize::from(ch)]);
            invalid |= a | b | c | d;
            let bits =
                (u32::from(a) << 18) | (u32::from(b) << 12) | (u32::from(c) << 6) | u32::from(d);
            out.copy_from_slice(&bits.to_be_bytes()[1..]);
        }
        let [a, b, c] = [tail[0], tail[1], tail[2]].map(|ch| DECODE[usize::from(ch)]);
        invalid |= a | b | c;
        let bits = (u32::from(a) << 12) | (u32::from(b) << 6) | u32::from(c);
        bytes[30] = (bits >> 10) as u8;
        bytes[31] = (bits >> 2) as u8;
        // Any byte outside the alphabet maps to 0xff; a canonical encoding
        // leaves the last character's two spare bits at zero.
        if invalid & 0xc0 != 0 || bits & 0b11 != 0 {
            return Err(MalformedToken);
        }
        Ok(Self(bytes))
    }

    /// The identifier stores key this session by: SHA-256 of the token.
    pub fn id(&self) -> SessionId {
        SessionId(Sha256::digest(self.0).into())
    }

    /// The first eight bytes, used as the in-process cache's hash.
    pub(crate) fn hash_prefix(&self) -> u64 {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(prefix)
    }
}

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; TOKEN_CHARS];
        let sextet = |bits: u32, shift: u32| ALPHABET[((bits >> shift) & 0x3f) as usize];
        for group in 0..10 {
            let at = group * 3;
            let bits = (u32::from(self.0[at]) << 16)
                | (u32::from(self.0[at + 1]) << 8)
                | u32::from(self.0[at + 2]);
            for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
                text[group * 4 + i] = sextet(bits, shift);
            }
        }
        let bits = (u32::from(self.0[30]) << 10) | (u32::from(self.0[31]) << 2);
        text[40] = sextet(bits, 12);
        text[41] = sextet(bits, 6);
        text[42] = sextet(bits, 0);
        f.write_str(std::str::from_utf8(&text).expect("the base64url alphabet is ASCII"))
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

impl std::str::FromStr for SessionToken {
    type Err = MalformedToken;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// The stable identifier of a session: SHA-256 of its token.
///
/// Stores key records by this, so a leaked database holds no usable token.
/// It is safe to log. Its text form is 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 32]);

impl SessionId {
    /// The raw 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds an id from raw hash bytes (as a store read them back).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the 64-hex-digit text form (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(Self(bytes))
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_round_trip_and_differ() {
        let first = SessionToken::generate().expect("os randomness");
        let second = SessionToken::generate().expect("os randomness");
        assert_ne!(first, second);
        let text = first.to_string();
        assert_eq!(text.len(), TOKEN_CHARS);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(SessionToken::parse(&text), Ok(first));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let good = SessionToken::generate().expect("os randomness").to_string();
        let cases = [
            String::new(),
            "short".to_owned(),
            format!("{good}A"),
            good[..42].to_owned(),
            format!("{}+", &good[..42]),
            format!("{}=", &good[..42]),
            format!("{} ", &good[..42]),
            "é".repeat(21) + "a",
        ];
        for case in cases {
            assert_eq!(SessionToken::parse(&case), Err(MalformedToken), "{case:?}");
        }
    }

    #[test]
    fn encoding_matches_rfc4648_base64url_without_padding() {
        // RFC 4648 test vector, extended to 32 bytes.
        let mut bytes = [0u8; TOKEN_BYTES];
        bytes[..6].copy_from_slice(b"foobar");
        bytes[31] = 0xff;
        let token = SessionToken(bytes);
        let text = token.to_string();
        assert!(text.starts_with("Zm9vYmFy"), "{text}");
        assert!(text.ends_with("AP8"), "{text}");
        let all_ones = SessionToken([0xff; TOKEN_BYTES]).to_string();
        assert_eq!(all_ones, format!("{}8", "_".repeat(42)));
        assert_eq!(
            SessionToken::parse(&all_ones),
            Ok(SessionToken([0xff; TOKEN_BYTES]))
        );
        // The same bits with a spare bit set in the last character are not canonical.
        assert_eq!(
            SessionToken::parse(&format!("{}9", "_".repeat(42))),
            Err(MalformedToken)
        );
        for _ in 0..1000 {
            let token = SessionToken::generate().expect("os randomness");
            assert_eq!(SessionToken::parse(&token.to_string()), Ok(token));
        }
    }

    #[test]
    fn session_id_is_sha256_of_the_token_and_round_trips_as_hex() {
        let token = SessionToken::generate().expect("os randomness");
        let id = token.id();
        let expected: [u8; 32] = Sha256::digest(token.0).into();
        assert_eq!(id.as_bytes(), &expected);
        let hex = id.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(SessionId::from_hex(&hex), Some(id));
        assert_eq!(SessionId::from_hex(&hex.to_uppercase()), Some(id));
        assert_eq!(SessionId::from_hex("zz"), None);
        assert!(!format!("{token:?}").contains(&token.to_string()));
    }
}
