//! `SessionToken::parse_bytes`, the shape check every request goes through
//! before any cache or store: it must never panic, accept exactly the
//! canonical 43-character base64url form (checked here by an independent
//! decoder), and give back the very text it was handed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_saas_guard::session::SessionToken;

/// A base64url character's 6-bit value.
fn sextet(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Whether `text` is 32 bytes in canonical unpadded base64url: 43
/// characters of the alphabet whose last one leaves its 2 spare bits zero.
fn canonical(text: &[u8]) -> bool {
    text.len() == 43
        && text.iter().all(|&byte| sextet(byte).is_some())
        && sextet(text[42]).is_some_and(|last| last & 0b11 == 0)
}

fuzz_target!(|data: &[u8]| {
    let parsed = SessionToken::parse_bytes(data);
    assert_eq!(parsed.is_ok(), canonical(data), "shape check disagrees");
    if let Ok(token) = parsed {
        assert_eq!(
            token.to_string().as_bytes(),
            data,
            "a token prints as it was presented"
        );
        let text = std::str::from_utf8(data).expect("a canonical token is ASCII");
        assert_eq!(SessionToken::parse(text), Ok(token));
        assert_eq!(
            token.id(),
            SessionToken::parse(text).expect("parsed above").id()
        );
        assert_eq!(token.id().to_string().len(), 64);
    }
});
