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
#[derive(Clone, Copy, Eq)]
pub struct SessionToken([u8; TOKEN_CHARS]);

impl PartialEq for SessionToken {
    /// Looks at every byte whatever the first difference, so the time a
    /// cache lookup takes tells nothing about how much of a presented token
    /// matched a cached one.
    fn eq(&self, other: &Self) -> bool {
        let difference = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

impl std::hash::Hash for SessionToken {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // 48 random bits of the first 8 characters, mixed: plenty for a
        // hash table.
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
        Ok(Self(encode(&bytes)))
    }

    /// Parses a token's text form, checking its exact shape.
    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        Self::parse_bytes(text.as_bytes())
    }

    /// Parses a token from raw header bytes, checking its exact shape:
    /// 43 characters of the base64url alphabet, canonically encoded.
    pub fn parse_bytes(text: &[u8]) -> Result<Self, MalformedToken> {
        let text: [u8; TOKEN_CHARS] = text.try_into().map_err(|_| MalformedToken)?;
        // Runs on every request, ahead of the cache lookup: a branch-free
        // check of every byte, no decoding.
        let all_in_alphabet = text.iter().fold(true, |ok, &byte| {
            ok & (byte.is_ascii_alphanumeric() | (byte == b'-') | (byte == b'_'))
        });
        // The last character carries 4 bits of the 32nd byte and 2 spare
        // bits, which a canonical encoding leaves at zero.
        let canonical = DECODE[usize::from(text[TOKEN_CHARS - 1])] & 0b11 == 0;
        if all_in_alphabet && canonical {
            Ok(Self(text))
        } else {
            Err(MalformedToken)
        }
    }

    /// The identifier stores key this session by: SHA-256 of the token's
    /// text (the 43 characters the client presents).
    pub fn id(&self) -> SessionId {
        SessionId(Sha256::digest(self.0).into())
    }

    /// The in-process cache's hash: the first eight characters (48 random
    /// bits), spread over all 64 bits by a Fibonacci multiplication.
    pub(crate) fn hash_prefix(&self) -> u64 {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(prefix).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// A token as a key of maps that client input fills (the single-flight
/// maps): hashed over all of its characters, unlike [`SessionToken`]'s
/// own `Hash`, which takes the first eight and suits only the caches that
/// hold tokens of existing sessions.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct WholeToken(pub(crate) SessionToken);

impl std::hash::Hash for WholeToken {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0 .0);
    }
}

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.0).expect("a parsed token is ASCII"))
    }
}

impl SessionToken {
    /// A token whose 32 bytes are `bytes` (for minting signed tokens).
    pub(crate) fn from_bytes(bytes: &[u8; TOKEN_BYTES]) -> Self {
        Self(encode(bytes))
    }

    /// The 32 bytes the token's text encodes.
    pub(crate) fn to_bytes(self) -> [u8; TOKEN_BYTES] {
        decode(&self.0)
    }
}

/// The 32 bytes of a token's text (which `parse_bytes` checked: every
/// character is in the alphabet).
fn decode(text: &[u8; TOKEN_CHARS]) -> [u8; TOKEN_BYTES] {
    let value = |at: usize| u32::from(DECODE[usize::from(text[at])] & 0x3f);
    let mut bytes = [0u8; TOKEN_BYTES];
    for group in 0..10 {
        let at = group * 4;
        let bits = (value(at) << 18) | (value(at + 1) << 12) | (value(at + 2) << 6) | value(at + 3);
        bytes[group * 3] = (bits >> 16) as u8;
        bytes[group * 3 + 1] = (bits >> 8) as u8;
        bytes[group * 3 + 2] = bits as u8;
    }
    let bits = (value(40) << 12) | (value(41) << 6) | value(42);
    bytes[30] = (bits >> 10) as u8;
    bytes[31] = (bits >> 2) as u8;
    bytes
}

/// base64url without padding of 32 bytes: 43 characters.
fn encode(bytes: &[u8; TOKEN_BYTES]) -> [u8; TOKEN_CHARS] {
    let mut text = [0u8; TOKEN_CHARS];
    let sextet = |bits: u32, shift: u32| ALPHABET[((bits >> shift) & 0x3f) as usize];
    for group in 0..10 {
        let at = group * 3;
        let bits = (u32::from(bytes[at]) << 16)
            | (u32::from(bytes[at + 1]) << 8)
            | u32::from(bytes[at + 2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            text[group * 4 + i] = sextet(bits, shift);
        }
    }
    let bits = (u32::from(bytes[30]) << 10) | (u32::from(bytes[31]) << 2);
    text[40] = sextet(bits, 12);
    text[41] = sextet(bits, 6);
    text[42] = sextet(bits, 0);
    text
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
        let bytes = crate::decode_hex(text.as_bytes())?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl SessionId {
    /// The first 8 hex digits (32 of its 256 bits), for logs: enough to
    /// follow one session through them, too little to look it up or to
    /// stand for it. The crate's own log events carry only this.
    pub fn log_ref(&self) -> impl fmt::Display {
        LogRef([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
}

struct LogRef([u8; 4]);

impl fmt::Display for LogRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::write_lower_hex(f, &self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::write_lower_hex(f, &self.0)
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
    fn tokens_differing_in_any_one_character_are_unequal() {
        let token = SessionToken::generate().expect("os randomness");
        assert_eq!(
            token,
            SessionToken::parse(&token.to_string()).expect("a minted token parses")
        );
        for position in 0..TOKEN_CHARS {
            let mut text = token.to_string().into_bytes();
            // `A` (0) and `E` (4) both leave the last character's two
            // padding bits zero, so either is valid at every position.
            text[position] = if text[position] == b'A' { b'E' } else { b'A' };
            let text = String::from_utf8(text).expect("base64url stays ASCII");
            let other = SessionToken::parse(&text).expect("A and E are valid at every position");
            assert_ne!(token, other, "differing at {position}");
        }
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
        let token = SessionToken(encode(&bytes));
        let text = token.to_string();
        assert!(text.starts_with("Zm9vYmFy"), "{text}");
        assert!(text.ends_with("AP8"), "{text}");
        let all_ones = SessionToken(encode(&[0xff; TOKEN_BYTES])).to_string();
        assert_eq!(all_ones, format!("{}8", "_".repeat(42)));
        assert_eq!(
            SessionToken::parse(&all_ones).map(|t| t.to_string()),
            Ok(all_ones.clone())
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
        // Of the token as the client presents it (its 43 characters).
        let expected: [u8; 32] = Sha256::digest(token.to_string().as_bytes()).into();
        assert_eq!(id.as_bytes(), &expected);
        let hex = id.to_string();
        let lowercase: String = id.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, lowercase);
        assert_eq!(id.log_ref().to_string(), hex[..8]);
        assert_eq!(format!("{id:?}"), format!("SessionId({hex})"));
        assert_eq!(SessionId::from_hex(&hex), Some(id));
        assert_eq!(SessionId::from_hex(&hex.to_uppercase()), Some(id));
        assert_eq!(SessionId::from_hex("zz"), None);
        assert!(!format!("{token:?}").contains(&token.to_string()));
    }
}
