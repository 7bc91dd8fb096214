//! Verification of Stripe-style signed webhooks.
//!
//! The sender signs every webhook with a secret it shares with us and sends
//! `webhook-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
//! [`WebhookVerifier`] checks that header against the raw body bytes, before
//! anything parses them, and refuses a `t` too far from now in either
//! direction, so a captured webhook cannot be replayed later.
//!
//! * Hex is case-insensitive, and whitespace around entries, keys and
//!   values is tolerated.
//! * Several `v1` entries may be present; any one matching passes, so the
//!   sender can rotate its secret by signing with both for a while.
//! * Other entries (`v0=…`, unknown keys, entries without `=`) are ignored.
//! * The comparison with the expected MAC is constant-time.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//!
//! use tower_saas_guard::billing::{SignatureError, WebhookVerifier};
//!
//! let verifier = WebhookVerifier::new("whsec_test");
//! let body = br#"{"organization_id":"org_1","subscription_id":"sub_1","status":"active","plan":"pro"}"#;
//! let now = SystemTime::now();
//! let header = verifier.sign(body, now);
//!
//! assert_eq!(verifier.verify(header.as_bytes(), body, now), Ok(()));
//! assert_eq!(
//!     verifier.verify(header.as_bytes(), br#"{"plan":"free"}"#, now),
//!     Err(SignatureError::Mismatch),
//! );
//! let ten_minutes_later = now + Duration::from_secs(600);
//! assert_eq!(
//!     verifier.verify(header.as_bytes(), body, ten_minutes_later),
//!     Err(SignatureError::OutsideTolerance),
//! );
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far `t` may be from now, in either direction, unless configured.
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Verifies Stripe-style signed webhooks (`t=…,v1=…`).
///
/// Build one per secret with [`new`](Self::new) and share it (it is cheap to
/// clone); [`verify`](Self::verify) checks a request's raw
/// `webhook-signature` header and raw body. `Debug` never prints the secret.
#[derive(Clone)]
pub struct WebhookVerifier {
    signatures: Signatures,
}

/// How many `,`-separated entries a header may have unless configured.
const DEFAULT_MAX_ENTRIES: usize = 16;

/// The `t=…,v1=…` scheme both verifiers check ([`WebhookVerifier`] with one
/// secret, Stripe's with several): keys, tolerance, entry cap.
#[derive(Clone)]
pub(super) struct Signatures {
    /// One HMAC-SHA256 per secret, already keyed; cloned per message.
    keyed_macs: std::sync::Arc<[Hmac<Sha256>]>,
    /// How far `t` may be from now, in either direction.
    pub(super) tolerance: Duration,
    /// How many `,`-separated entries a header may carry.
    pub(super) max_entries: usize,
}

impl Signatures {
    /// The scheme over `secrets`: [`ConfigError::EmptyWebhookSecret`](crate::ConfigError::EmptyWebhookSecret)
    /// for an empty one, [`ConfigError::NoWebhookSecret`](crate::ConfigError::NoWebhookSecret)
    /// for none.
    pub(super) fn try_new<S: Into<Vec<u8>>>(
        secrets: impl IntoIterator<Item = S>,
    ) -> Result<Self, crate::ConfigError> {
        let keyed_macs = secrets
            .into_iter()
            .map(|secret| {
                let secret = secret.into();
                if secret.is_empty() {
                    return Err(crate::ConfigError::EmptyWebhookSecret);
                }
                Ok(Hmac::new_from_slice(&secret).expect("HMAC accepts keys of any length"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keyed_macs.is_empty() {
            return Err(crate::ConfigError::NoWebhookSecret);
        }
        Ok(Self {
            keyed_macs: keyed_macs.into(),
            tolerance: DEFAULT_TOLERANCE,
            max_entries: DEFAULT_MAX_ENTRIES,
        })
    }

    /// How many secrets are active.
    pub(super) fn secrets(&self) -> usize {
        self.keyed_macs.len()
    }

    /// Checks `header` against the raw `body` at `now`; returns the signed
    /// `t` (whole seconds). Errors, in the order checked:
    /// [`SignatureError::TooManyEntries`], [`SignatureError::Malformed`] (no
    /// single `t` of decimal digits, or no `v1` entry that is hex),
    /// [`SignatureError::Mismatch`], [`SignatureError::OutsideTolerance`].
    /// Every `v1` entry is compared with every secret, each comparison in
    /// constant time, with no early exit.
    pub(super) fn verify(
        &self,
        header: &[u8],
        body: &[u8],
        now: SystemTime,
    ) -> Result<SystemTime, SignatureError> {
        if header
            .split(|&byte| byte == b',')
            .nth(self.max_entries)
            .is_some()
        {
            return Err(SignatureError::TooManyEntries);
        }
        let (timestamp_digits, timestamp) = signed_timestamp(header)?;
        let expected: Vec<Hmac<Sha256>> = self
            .keyed_macs
            .iter()
            .map(|keyed| mac_for(keyed, timestamp_digits, body))
            .collect();
        let mut any_hex = false;
        let mut matched = false;
        for value in entries(header).filter_map(|(key, value)| (key == b"v1").then_some(value)) {
            let Some(tag) = crate::decode_hex(value) else {
                continue;
            };
            any_hex = true;
            for mac in &expected {
                // `verify_slice` compares in constant time (and refuses a
                // wrong length); `|` so every secret is tried.
                matched |= mac.clone().verify_slice(&tag).is_ok();
            }
        }
        if !any_hex {
            return Err(SignatureError::Malformed);
        }
        if !matched {
            return Err(SignatureError::Mismatch);
        }
        if !within_tolerance(timestamp, now, self.tolerance) {
            return Err(SignatureError::OutsideTolerance);
        }
        UNIX_EPOCH
            .checked_add(Duration::from_secs(timestamp))
            .ok_or(SignatureError::Malformed)
    }

    /// `t=<seconds>,v1=<hex>` with one `v1` per secret, in order;
    /// `timestamp` truncated to whole seconds (`t=0` before the epoch).
    pub(super) fn sign(&self, body: &[u8], timestamp: SystemTime) -> String {
        let seconds = timestamp
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since_epoch| since_epoch.as_secs())
            .to_string();
        let mut header = format!("t={seconds}");
        for keyed in self.keyed_macs.iter() {
            let tag = mac_for(keyed, seconds.as_bytes(), body)
                .finalize()
                .into_bytes();
            header.push_str(",v1=");
            header.push_str(&lower_hex(&tag));
        }
        header
    }
}

/// The MAC of `"<timestamp_digits>.<body>"` under `keyed`, ready to
/// finalize or verify.
fn mac_for(keyed: &Hmac<Sha256>, timestamp_digits: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = keyed.clone();
    mac.update(timestamp_digits);
    mac.update(b".");
    mac.update(body);
    mac
}

impl WebhookVerifier {
    /// A verifier for webhooks signed with `secret`, accepting a `t` up to
    /// 5 minutes from now in either direction.
    ///
    /// # Panics
    /// When `secret` is empty (anyone could sign): use
    /// [`try_new`](Self::try_new) for a secret read from configuration.
    #[must_use]
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self::try_new(secret).expect("the webhook secret must not be empty")
    }

    /// A verifier for webhooks signed with `secret`, or
    /// [`ConfigError::EmptyWebhookSecret`](crate::ConfigError::EmptyWebhookSecret).
    pub fn try_new(secret: impl Into<Vec<u8>>) -> Result<Self, crate::ConfigError> {
        Ok(Self {
            signatures: Signatures::try_new([secret])?,
        })
    }

    /// Sets how far the signed timestamp `t` may be from now, in either
    /// direction, before the webhook is refused (default 5 minutes).
    ///
    /// The bound is inclusive: a `t` exactly `tolerance` away is accepted.
    #[must_use]
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.signatures.tolerance = tolerance;
        self
    }

    /// Sets how many `,`-separated entries a header may carry (default 16;
    /// at least 2, a `t` and a `v1`): a header with more is refused
    /// ([`SignatureError::TooManyEntries`]) before any MAC is computed.
    #[must_use]
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.signatures.max_entries = max_entries.max(2);
        self
    }

    /// Checks `header` (the raw `webhook-signature` value) against `body` at `now`.
    ///
    /// `body` must be the bytes exactly as received, before any parsing.
    /// The shape of the header is checked first ([`SignatureError::Malformed`]),
    /// then the signatures ([`SignatureError::Mismatch`]), then the timestamp
    /// ([`SignatureError::OutsideTolerance`]), so a timestamp error is only
    /// reported for a webhook that our secret really signed.
    ///
    /// A `v1` value that is not hex cannot match, but does not hide another
    /// `v1` entry that does; the header is malformed only when no `v1` entry
    /// is hex at all. A `t` must be unsigned decimal digits that fit in a
    /// `u64`, and the signature covers those digits exactly as sent.
    pub fn verify(
        &self,
        header: &[u8],
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), SignatureError> {
        self.signatures.verify(header, body, now).map(drop)
    }

    /// [`verify_header`](Self::verify_header), returning the signed `t`
    /// (the time the change was made, for ordering changes).
    pub(crate) fn verified_at(
        &self,
        header: Option<&http::HeaderValue>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<SystemTime, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        self.signatures.verify(header.as_bytes(), body, now)
    }

    /// Checks an optional `webhook-signature` header against `body` at `now`;
    /// an absent header is [`SignatureError::Missing`].
    ///
    /// Pass `request.headers().get("webhook-signature")` straight in.
    pub fn verify_header(
        &self,
        header: Option<&http::HeaderValue>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        self.verify(header.as_bytes(), body, now)
    }

    /// The header value a sender would send for `body` at `timestamp` (for tests and clients).
    ///
    /// `timestamp` is truncated to whole seconds; one before the Unix epoch
    /// is signed as `t=0`. The hex is lowercase, with a single `v1` entry.
    #[must_use]
    pub fn sign(&self, body: &[u8], timestamp: SystemTime) -> String {
        self.signatures.sign(body, timestamp)
    }

    /// The MAC of `"<timestamp_digits>.<body>"` (for the tests' `t` values
    /// that `sign` cannot produce).
    #[cfg(test)]
    fn mac_for(&self, timestamp_digits: &[u8], body: &[u8]) -> Hmac<Sha256> {
        mac_for(&self.signatures.keyed_macs[0], timestamp_digits, body)
    }
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("secret", &"[redacted]")
            .field("tolerance", &self.signatures.tolerance)
            .field("max_entries", &self.signatures.max_entries)
            .finish()
    }
}

/// Whether `timestamp` (Unix seconds) is at most `tolerance` from `now`,
/// in either direction.
fn within_tolerance(timestamp: u64, now: SystemTime, tolerance: Duration) -> bool {
    // Nanoseconds as i128: |u64 seconds × 10⁹| < 2⁹⁴, so nothing overflows,
    // whatever `t` a client sends and even for a `now` before the epoch.
    fn nanos(duration: Duration) -> i128 {
        i128::try_from(duration.as_nanos()).expect("a Duration holds fewer than 2^127 nanoseconds")
    }
    let signed_at = nanos(Duration::from_secs(timestamp));
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => nanos(since_epoch),
        Err(before_epoch) => -nanos(before_epoch.duration()),
    };
    (signed_at - now).unsigned_abs() <= tolerance.as_nanos()
}

/// Why a webhook signature was refused.
///
/// Every kind answers `invalid_signature` (401); the kind says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The request carries no signature header (`webhook-signature`, or
    /// `Stripe-Signature` for Stripe).
    #[error("the signature header is missing; the sender must sign every webhook")]
    Missing,
    /// The header has more entries than the verifier accepts (a header
    /// built to make verification expensive).
    #[error("the signature header has too many entries")]
    TooManyEntries,
    /// The header is not shaped `t=<unix seconds>,v1=<hex>`: no `t`, a `t`
    /// that is not unsigned decimal seconds or is given twice, or no `v1`
    /// entry that is hex.
    #[error(
        "the webhook-signature header is malformed; expected `t=<unix seconds>,v1=<hex HMAC-SHA256>` with exactly one `t`"
    )]
    Malformed,
    /// The signature is genuine but its `t` is further from now than the
    /// verifier's tolerance allows.
    #[error(
        "the webhook timestamp is further from now than the verifier's tolerance (300 s by default); check the sender's clock, or this is a replay of an old webhook"
    )]
    OutsideTolerance,
    /// No `v1` entry matches the body signed with our secret.
    #[error(
        "no webhook signature matches; check that the webhook secret is the sender's and that the body is verified exactly as received, before parsing"
    )]
    Mismatch,
}

/// `bytes` as lowercase hex.
fn lower_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(2 * bytes.len());
    // Writing to a `String` does not fail.
    let _ = crate::write_lower_hex(&mut hex, bytes);
    hex
}

/// The `key=value` entries of a signature header, with surrounding ASCII
/// whitespace trimmed; entries without `=` are skipped.
fn entries(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&byte| byte == b',').filter_map(|entry| {
        let equals = entry.iter().position(|&byte| byte == b'=')?;
        let (key, value) = entry.split_at(equals);
        Some((key.trim_ascii(), value[1..].trim_ascii()))
    })
}

/// The one `t` entry: its digits as sent and their value in Unix seconds.
fn signed_timestamp(header: &[u8]) -> Result<(&[u8], u64), SignatureError> {
    let mut timestamps = entries(header).filter_map(|(key, value)| (key == b"t").then_some(value));
    let digits = timestamps.next().ok_or(SignatureError::Malformed)?;
    if timestamps.next().is_some() || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(SignatureError::Malformed);
    }
    let seconds = std::str::from_utf8(digits)
        .ok()
        .and_then(|digits| digits.parse::<u64>().ok())
        .ok_or(SignatureError::Malformed)?;
    Ok((digits, seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "whsec_test";
    const BODY: &[u8] = br#"{"a":1}"#;
    /// HMAC-SHA256("whsec_test", "1700000000.{\"a\":1}"), computed with
    /// Python's `hmac` module, not with this code.
    const KNOWN_TAG: &str = "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn verifier() -> WebhookVerifier {
        WebhookVerifier::new(SECRET)
    }

    /// The lowercase hex signature of `"<t>.<body>"`, for `t` values `sign`
    /// cannot produce.
    fn tag_for(verifier: &WebhookVerifier, t: &str, body: &[u8]) -> String {
        let tag = verifier.mac_for(t.as_bytes(), body).finalize().into_bytes();
        tag.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn a_header_with_too_many_entries_is_refused_before_any_mac() {
        let now = at(1_700_000_000);
        let valid = format!("t=1700000000,v1={KNOWN_TAG}");
        let junk = |count: usize| vec!["v1=00"; count].join(",");
        // 16 entries (t, 14 junk v1, the valid v1) pass; 17 do not.
        let sixteen = format!("{},{valid}", junk(14));
        assert_eq!(verifier().verify(sixteen.as_bytes(), BODY, now), Ok(()));
        let seventeen = format!("{},{valid}", junk(15));
        assert_eq!(
            verifier().verify(seventeen.as_bytes(), BODY, now),
            Err(SignatureError::TooManyEntries)
        );
        let thousands = format!("{valid},{}", junk(10_000));
        assert_eq!(
            verifier().verify(thousands.as_bytes(), BODY, now),
            Err(SignatureError::TooManyEntries)
        );
        let strict = verifier().max_entries(2);
        assert_eq!(strict.verify(valid.as_bytes(), BODY, now), Ok(()));
        let three = format!("{valid},v0=ab");
        assert_eq!(
            strict.verify(three.as_bytes(), BODY, now),
            Err(SignatureError::TooManyEntries)
        );
    }

    #[test]
    fn known_answer_matches_an_independent_hmac() {
        let header = format!("t=1700000000,v1={KNOWN_TAG}");
        assert_eq!(verifier().sign(BODY, at(1_700_000_000)), header);
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Ok(())
        );
    }

    #[test]
    fn signature_made_by_sign_verifies() {
        let header = verifier().sign(BODY, at(1_700_000_000));
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Ok(())
        );
    }

    #[test]
    fn sign_truncates_to_whole_seconds() {
        let header = verifier().sign(BODY, at(1_700_000_000) + Duration::from_millis(999));
        assert_eq!(header, format!("t=1700000000,v1={KNOWN_TAG}"));
    }

    #[test]
    fn tampered_body_is_a_mismatch() {
        let header = verifier().sign(BODY, at(1_700_000_000));
        assert_eq!(
            verifier().verify(header.as_bytes(), br#"{"a":2}"#, at(1_700_000_000)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn signature_from_another_secret_is_a_mismatch() {
        let header = WebhookVerifier::new("whsec_other").sign(BODY, at(1_700_000_000));
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn timestamp_is_covered_by_the_signature() {
        let header = format!("t=1700000001,v1={KNOWN_TAG}");
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn timestamp_ten_minutes_old_is_outside_tolerance() {
        let header = verifier().sign(BODY, at(1_700_000_000));
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_600)),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn timestamp_ten_minutes_in_the_future_is_outside_tolerance() {
        let header = verifier().sign(BODY, at(1_700_000_600));
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn timestamp_exactly_at_the_tolerance_edge_is_accepted() {
        let header = verifier().sign(BODY, at(1_700_000_000));
        for now in [at(1_700_000_300), at(1_699_999_700)] {
            assert_eq!(
                verifier().verify(header.as_bytes(), BODY, now),
                Ok(()),
                "now = {now:?}"
            );
        }
    }

    #[test]
    fn timestamp_one_second_past_the_tolerance_edge_is_rejected() {
        let header = verifier().sign(BODY, at(1_700_000_000));
        for now in [at(1_700_000_301), at(1_699_999_699)] {
            assert_eq!(
                verifier().verify(header.as_bytes(), BODY, now),
                Err(SignatureError::OutsideTolerance),
                "now = {now:?}"
            );
        }
    }

    #[test]
    fn configured_tolerance_replaces_the_default() {
        let verifier = verifier().tolerance(Duration::from_secs(60));
        let header = verifier.sign(BODY, at(1_700_000_000));
        assert_eq!(
            verifier.verify(header.as_bytes(), BODY, at(1_700_000_060)),
            Ok(())
        );
        assert_eq!(
            verifier.verify(header.as_bytes(), BODY, at(1_700_000_061)),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let header = format!("t=1700000000,v1={}", KNOWN_TAG.to_ascii_uppercase());
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Ok(())
        );
    }

    #[test]
    fn any_matching_v1_entry_passes() {
        let old_secret_tag = tag_for(&WebhookVerifier::new("whsec_old"), "1700000000", BODY);
        let header = format!("t=1700000000,v1={old_secret_tag},v1={KNOWN_TAG}");
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Ok(())
        );
    }

    #[test]
    fn non_hex_v1_entry_does_not_hide_a_matching_one() {
        let header = format!("t=1700000000,v1=zz,v1=abc,v1=,v1={KNOWN_TAG}");
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Ok(())
        );
    }

    #[test]
    fn unknown_entries_are_ignored() {
        let header = format!("v0=deadbeef,foo=bar,t=1700000000,junk,v1={KNOWN_TAG},V1=zz,x=\u{e9}");
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Ok(())
        );
    }

    #[test]
    fn non_utf8_bytes_in_an_unknown_entry_are_ignored() {
        let mut header = format!("t=1700000000,v1={KNOWN_TAG},x=").into_bytes();
        header.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(verifier().verify(&header, BODY, at(1_700_000_000)), Ok(()));
    }

    #[test]
    fn whitespace_around_entries_keys_and_values_is_tolerated() {
        let header = format!(" t = 1700000000 ,\tv1 =\t{KNOWN_TAG} ");
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Ok(())
        );
    }

    #[test]
    fn missing_timestamp_is_malformed() {
        let header = format!("v1={KNOWN_TAG}");
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn missing_v1_is_malformed() {
        for header in ["t=1700000000", "t=1700000000,v0=abcd", "t=1700000000,v1"] {
            assert_eq!(
                verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
                Err(SignatureError::Malformed),
                "header = {header:?}"
            );
        }
    }

    #[test]
    fn duplicate_timestamp_is_malformed() {
        for header in [
            format!("t=1700000000,t=1700000000,v1={KNOWN_TAG}"),
            format!("t=1700000000,v1={KNOWN_TAG},t=1"),
        ] {
            assert_eq!(
                verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
                Err(SignatureError::Malformed),
                "header = {header:?}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        for header in [
            "",
            ",,,",
            "garbage",
            "=",
            "t",
            "t=",
            "t=abc,v1=00",
            "t=-1,v1=00",
            "t=+1,v1=00",
            "t=1.5,v1=00",
            "t=1 2,v1=00",
            "t=0x10,v1=00",
        ] {
            assert_eq!(
                verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
                Err(SignatureError::Malformed),
                "header = {header:?}"
            );
        }
    }

    #[test]
    fn non_utf8_bytes_are_malformed() {
        let mut in_timestamp = b"t=17000".to_vec();
        in_timestamp.extend_from_slice(&[0xc3, 0x28]);
        in_timestamp.extend_from_slice(format!(",v1={KNOWN_TAG}").as_bytes());
        let mut in_signature = b"t=1700000000,v1=".to_vec();
        in_signature.extend_from_slice(&[0xff; 64]);
        for header in [
            &[0xff, 0xfe, 0x00][..],
            &[0x80; 200][..],
            &in_timestamp,
            &in_signature,
        ] {
            assert_eq!(
                verifier().verify(header, BODY, at(1_700_000_000)),
                Err(SignatureError::Malformed),
                "header = {header:?}"
            );
        }
    }

    #[test]
    fn odd_length_or_non_hex_signature_is_malformed() {
        let odd = &KNOWN_TAG[1..];
        let non_hex = KNOWN_TAG.replacen('3', "g", 1);
        for header in [
            format!("t=1700000000,v1={odd}"),
            format!("t=1700000000,v1={non_hex}"),
            "t=1700000000,v1=".to_owned(),
            format!("t=1700000000,v1=0x{KNOWN_TAG}"),
        ] {
            assert_eq!(
                verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
                Err(SignatureError::Malformed),
                "header = {header:?}"
            );
        }
    }

    #[test]
    fn hex_of_the_wrong_length_is_a_mismatch() {
        for header in [
            "t=1700000000,v1=abcd",
            &format!("t=1700000000,v1={KNOWN_TAG}00"),
        ] {
            assert_eq!(
                verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
                Err(SignatureError::Mismatch),
                "header = {header:?}"
            );
        }
    }

    #[test]
    fn overflowing_timestamp_is_malformed() {
        for t in [
            "18446744073709551616",
            "99999999999999999999999999999999999999999",
        ] {
            let header = format!("t={t},v1={}", tag_for(&verifier(), t, BODY));
            assert_eq!(
                verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
                Err(SignatureError::Malformed),
                "t = {t}"
            );
        }
    }

    #[test]
    fn extreme_timestamps_are_outside_tolerance_not_a_panic() {
        for t in ["0", "9223372036854775808", "18446744073709551615"] {
            let header = format!("t={t},v1={}", tag_for(&verifier(), t, BODY));
            assert_eq!(
                verifier().verify(header.as_bytes(), BODY, at(1_700_000_000)),
                Err(SignatureError::OutsideTolerance),
                "t = {t}"
            );
        }
    }

    #[test]
    fn now_before_the_epoch_is_outside_tolerance_not_a_panic() {
        let header = verifier().sign(BODY, UNIX_EPOCH);
        let before_epoch = UNIX_EPOCH - Duration::from_secs(301);
        assert_eq!(
            verifier().verify(header.as_bytes(), BODY, before_epoch),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            verifier().verify(
                header.as_bytes(),
                BODY,
                UNIX_EPOCH - Duration::from_secs(300)
            ),
            Ok(())
        );
    }

    #[test]
    fn missing_header_is_reported_as_missing() {
        assert_eq!(
            verifier().verify_header(None, BODY, at(1_700_000_000)),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn present_header_value_is_verified() {
        let header = http::HeaderValue::from_str(&verifier().sign(BODY, at(1_700_000_000)))
            .expect("a signature header is a valid header value");
        assert_eq!(
            verifier().verify_header(Some(&header), BODY, at(1_700_000_000)),
            Ok(())
        );
        assert_eq!(
            verifier().verify_header(Some(&header), b"{}", at(1_700_000_000)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn an_empty_secret_is_refused() {
        assert_eq!(
            WebhookVerifier::try_new("").err(),
            Some(crate::ConfigError::EmptyWebhookSecret)
        );
        assert!(WebhookVerifier::try_new("s").is_ok());
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let debug = format!("{:?}", WebhookVerifier::new("whsec_supersecret"));
        assert!(!debug.contains("supersecret"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever bytes a client puts in the header, verification answers
        /// with an error instead of panicking.
        #[test]
        fn arbitrary_header_bytes_never_panic(
            header in prop::collection::vec(any::<u8>(), 0..300),
            body in prop::collection::vec(any::<u8>(), 0..64),
            now in 0u64..4_000_000_000,
        ) {
            prop_assert!(verifier().verify(&header, &body, at(now)).is_err());
        }

        /// Headers shaped almost like real ones reach the deeper checks, and
        /// still never panic or pass.
        #[test]
        fn header_shaped_input_never_panics(
            entries in prop::collection::vec(
                "[ \t]{0,2}(t|v1|v0|T|x)?[ \t]{0,2}=?[ \t]{0,2}[0-9a-fA-F+g-]{0,70}[ \t]{0,2}",
                0..6,
            ),
            now in 0u64..4_000_000_000,
        ) {
            let header = entries.join(",");
            prop_assert!(verifier().verify(header.as_bytes(), BODY, at(now)).is_err());
        }

        /// What `sign` produces verifies at the same instant, and flipping
        /// any bit of the body makes it a mismatch.
        #[test]
        fn signed_body_verifies_and_any_bit_flip_is_a_mismatch(
            body in prop::collection::vec(any::<u8>(), 1..256),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            timestamp in 0u64..4_000_000_000,
        ) {
            let header = verifier().sign(&body, at(timestamp));
            prop_assert_eq!(verifier().verify(header.as_bytes(), &body, at(timestamp)), Ok(()));
            let mut tampered = body.clone();
            tampered[flip.index(body.len())] ^= 1 << bit;
            prop_assert_eq!(
                verifier().verify(header.as_bytes(), &tampered, at(timestamp)),
                Err(SignatureError::Mismatch)
            );
        }
    }
}
