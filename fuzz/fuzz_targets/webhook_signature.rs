//! The two signature-header parsers, `WebhookVerifier::verify` and
//! `StripeVerifier::verify`, on (header, body) split from the input at the
//! first `\n`.
//!
//! A header passes only when it carries a genuine MAC for its `t`, and
//! both verifiers (one secret in common) agree on every header. The fuzzed
//! header's entries are then put after a genuine signature, which must
//! still pass unless they push the header past 16 entries
//! (`TooManyEntries`) or bring a second `t` (`Malformed`): junk never
//! hides a matching `v1`.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use tower_saas_guard::billing::stripe::StripeVerifier;
use tower_saas_guard::billing::{SignatureError, WebhookVerifier};

/// Whether the header holds an entry whose key is `t` (whitespace around
/// the key tolerated, as documented).
fn has_timestamp_entry(header: &[u8]) -> bool {
    header.split(|&byte| byte == b',').any(|entry| {
        entry
            .iter()
            .position(|&byte| byte == b'=')
            .is_some_and(|equals| entry[..equals].trim_ascii() == b"t")
    })
}

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&byte| byte == b'\n') {
        Some(newline) => (&data[..newline], &data[newline + 1..]),
        None => (data, &b""[..]),
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let simple = WebhookVerifier::new("whsec_fuzz");
    let stripe = StripeVerifier::try_new(["whsec_fuzz", "whsec_old"]).expect("two secrets");
    let old = StripeVerifier::try_new(["whsec_old"]).expect("one secret");

    // As sent: a header passes only when it carries the MAC of the body
    // at its own `t` under a secret of the verifier (a seed does; a fuzzer
    // cannot forge one).
    let answer = simple.verify(header, body, now);
    let stripe_answer = stripe.verify(header, body, now);
    let lowercase = header.to_ascii_lowercase();
    let carries = |verifier_sign: String| {
        let tag = &verifier_sign[verifier_sign.find("v1=").expect("a v1 entry") + 3..];
        lowercase
            .windows(tag.len())
            .any(|window| window == tag.as_bytes())
    };
    if let Ok(signed_at) = stripe_answer {
        assert!(
            carries(simple.sign(body, signed_at)) || carries(old.sign(body, signed_at)),
            "a header without a genuine MAC passed"
        );
    }
    if header.split(|&byte| byte == b',').count() > 16 {
        assert_eq!(answer, Err(SignatureError::TooManyEntries));
    }
    // The same header parser behind both: the same verdict, except that
    // the Stripe verifier also knows the old secret.
    match (&answer, &stripe_answer) {
        (Ok(()), Ok(_)) => {}
        (Err(SignatureError::Mismatch), Ok(signed_at)) => {
            assert!(
                carries(old.sign(body, *signed_at)),
                "passed without a MAC of either secret"
            );
        }
        (Err(simple_error), Err(stripe_error)) => assert_eq!(simple_error, stripe_error),
        _ => panic!("verdicts differ: {answer:?} and {stripe_answer:?}"),
    }

    // Genuine, with the fuzzed entries after it.
    let signed = simple.sign(body, now);
    assert_eq!(simple.verify(signed.as_bytes(), body, now), Ok(()));
    assert_eq!(stripe.verify(signed.as_bytes(), body, now), Ok(now));
    let mut padded = signed.into_bytes();
    padded.push(b',');
    padded.extend_from_slice(header);
    let expected = if padded.split(|&byte| byte == b',').count() > 16 {
        Err(SignatureError::TooManyEntries)
    } else if has_timestamp_entry(header) {
        Err(SignatureError::Malformed)
    } else {
        Ok(())
    };
    assert_eq!(simple.verify(&padded, body, now), expected);
    assert_eq!(stripe.verify(&padded, body, now).map(|_| ()), expected);

    // Genuine but replayed later: refused only for its age.
    if expected.is_ok() {
        let later = now + Duration::from_secs(301);
        assert_eq!(
            simple.verify(&padded, body, later),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            stripe.verify(&padded, body, later),
            Err(SignatureError::OutsideTolerance)
        );
    }
});
