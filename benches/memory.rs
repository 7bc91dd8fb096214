//! Bytes per cached session and per cached entitlement, from the process's
//! resident memory.
//!
//! `cargo bench --bench memory --all-features` (or the built binary with
//! `sessions [N]` or `entitlements [N]`, defaults 200 000 and 100 000; each
//! kind runs in a process of its own). Records are
//! first written to a memory store through one layer; then a second layer
//! on the same store, with a cold cache, reads every one of them once
//! (each a cache miss that fills its cache). The growth of the resident
//! set over those reads, divided by their number, is what one cached
//! entry costs: the cache's entry, the key, the record as cached, and the
//! allocator's overhead.
//!
//! Sessions carry the reference server's payload: a visitor's name and
//! e-mail.
//!
//! Two more kinds measure parts of a cached session alone: `moka` (moka's
//! entry with the session cache's key and settings and an 8-byte value)
//! and `id-index` (an index of the session layer's shape, id to token).
//!
//! Without a kind, each kind is measured `ROUNDS` times (default 3), each
//! time in a new process, the kinds taking turns; the median and min–max
//! are printed and drawn in `benches/plots/memory.svg`, against the
//! targets of 600 bytes per session and 400 per entitlement.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::svg::{self, Bars, Row, Section, Spread};

use http::{HeaderName, HeaderValue, Request, Response};
use serde_json::json;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_saas_guard::session::{MemorySessionStore, SessionId, SessionRefreshLayer, SessionToken};
use tower_saas_guard::subscription::{
    EntitlementPolicy, Entitlements, FromHeader, MemorySubscriptionStore, RequireSubscriptionLayer,
    Subscription, SubscriptionChange, SubscriptionStatus,
};

/// The resident set size, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn main() {
    // `cargo bench` passes `--bench`; otherwise `sessions N` or
    // `entitlements N` measures one kind in this process. Without a kind,
    // each is measured in a process of its own, so memory freed by one
    // cannot hide the growth of the other.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let count = |default: usize| args.get(1).and_then(|n| n.parse().ok()).unwrap_or(default);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match args.first().map(String::as_str) {
        Some("sessions") => runtime.block_on(cached_sessions(count(200_000))),
        Some("entitlements") => runtime.block_on(cached_entitlements(count(100_000))),
        Some("moka") => moka_alone(count(200_000)),
        Some("id-index") => id_index_alone(count(200_000)),
        Some(other) => panic!("unknown kind `{other}`: sessions [N] or entitlements [N]"),
        None => measure_all(),
    }
}

/// Each kind, what it is called in the results, and its target in bytes
/// (the last two are parts of a cached session, measured alone).
const KINDS: [(&str, &str, Option<f64>); 4] = [
    ("sessions", "per cached session", Some(600.0)),
    ("entitlements", "per cached entitlement", Some(400.0)),
    ("moka", "of a session: moka's entry alone", None),
    ("id-index", "of a session: the id index alone", None),
];

/// Every kind `ROUNDS` times, each in a process of its own, then the
/// table and the plot.
fn measure_all() {
    let rounds = common::rounds();
    let me = std::env::current_exe().expect("this program's path");
    let mut bytes: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    for round in 1..=rounds {
        for (n, (kind, _, _)) in KINDS.iter().enumerate() {
            let output = std::process::Command::new(&me)
                .arg(kind)
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("runs itself");
            let stdout = String::from_utf8_lossy(&output.stdout);
            print!("round {round}: {stdout}");
            assert!(output.status.success(), "{kind}: {}", output.status);
            bytes[n].push(per_entry(&stdout).unwrap_or_else(|| {
                panic!("{kind}: no `N bytes per cached …` in its output: {stdout}")
            }));
        }
    }

    println!();
    println!("{rounds} process(es) per kind: median (min–max)");
    println!("| bytes | measured | target |");
    println!("|---|---|---|");
    let spreads: Vec<Spread> = bytes
        .iter()
        .map(|values| Spread::of(values).expect("at least one round"))
        .collect();
    for ((_, what, target), spread) in KINDS.iter().zip(&spreads) {
        let measured = if rounds > 1 {
            format!("{:.0} ({:.0}–{:.0})", spread.median, spread.min, spread.max)
        } else {
            format!("{:.0}", spread.median)
        };
        match target {
            Some(target) => println!("| {what} | {measured} | ≤ {target:.0} |"),
            None => println!("| {what} | {measured} | — |"),
        }
    }

    let chart = Bars {
        title: "Memory per cached entry (resident set growth)".to_owned(),
        notes: vec![
            format!(
                "Bars: median of {rounds} process(es) per kind, whiskers: min–max; dashed red: target."
            ),
            "200 000 sessions (name and e-mail payload) or 100 000 entitlements, each read once into a cold cache."
                .to_owned(),
        ],
        unit: "bytes per cached entry".to_owned(),
        legend: Vec::new(),
        sections: vec![Section {
            heading: None,
            rows: KINDS
                .iter()
                .zip(&spreads)
                .map(|((_, what, target), spread)| Row {
                    label: what.to_string(),
                    spread: *spread,
                    color: svg::OURS,
                    target: target.map(|target| (target, format!("target ≤ {target:.0}"))),
                })
                .collect(),
        }],
        reference: None,
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/plots/memory.svg");
    if let Err(error) = svg::write(&path, &chart.render()) {
        eprintln!("could not write {}: {error}", path.display());
        std::process::exit(1);
    }
}

/// The `N` of `… N bytes per cached …` in a child's output.
fn per_entry(output: &str) -> Option<f64> {
    let (before, _) = output.split_once(" bytes per cached")?;
    before.rsplit(' ').next()?.parse().ok()
}

async fn cached_sessions(count: usize) {
    let long = Duration::from_secs(3600);
    let store = MemorySessionStore::new();
    let writer = SessionRefreshLayer::builder(store.clone())
        .cache_capacity(1)
        .build()
        .expect("valid settings");
    let mut tokens: Vec<SessionToken> = Vec::with_capacity(count);
    for n in 0..count {
        let created = writer
            .handle()
            .create(
                Some("org_1"),
                json!({ "name": format!("Visitor {n}"), "email": format!("visitor{n}@example.com") }),
            )
            .await
            .expect("a session");
        tokens.push(created.token);
    }
    let reader = SessionRefreshLayer::builder(store)
        .cache_capacity(count as u64 + 1)
        .cache_ttl(long)
        .build()
        .expect("valid settings");
    let mut service = reader
        .validate_only()
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
    let header = HeaderName::from_static("x-session-id");
    let before = rss();
    for token in &tokens {
        let mut request = Request::new(());
        request.headers_mut().insert(
            header.clone(),
            HeaderValue::from_str(&token.to_string()).expect("a header"),
        );
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), 200);
    }
    let grown = rss().saturating_sub(before);
    println!(
        "cached sessions: {count}, resident set grew {:.1} MiB: {} bytes per cached session",
        grown as f64 / (1024.0 * 1024.0),
        grown / count as u64
    );
}

async fn cached_entitlements(count: usize) {
    let long = Duration::from_secs(3600);
    let store = MemorySubscriptionStore::new();
    let writer = Entitlements::builder(store.clone())
        .cache_capacity(1)
        .build()
        .expect("valid settings");
    let at = SystemTime::now();
    for n in 0..count {
        writer
            .apply(&SubscriptionChange::new(
                Subscription {
                    organization_id: format!("org_{n}"),
                    subscription_id: format!("sub_{n}"),
                    status: SubscriptionStatus::Active,
                    plan: "pro".into(),
                    current_period_end: None,
                    trial_end: None,
                },
                at,
            ))
            .await
            .expect("a subscription");
    }
    let reader = Entitlements::builder(store)
        .cache_capacity(count as u64 + 1)
        .positive_ttl(long)
        .build()
        .expect("valid settings");
    let mut service = RequireSubscriptionLayer::new(reader, EntitlementPolicy::new())
        .organization(FromHeader::new(HeaderName::from_static(
            "x-organization-id",
        )))
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
    let before = rss();
    for n in 0..count {
        let mut request = Request::new(());
        request.headers_mut().insert(
            "x-organization-id",
            HeaderValue::from_str(&format!("org_{n}")).expect("a header"),
        );
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), 200);
    }
    let grown = rss().saturating_sub(before);
    println!(
        "cached entitlements: {count}, resident set grew {:.1} MiB: {} bytes per cached entitlement",
        grown as f64 / (1024.0 * 1024.0),
        grown / count as u64
    );
}

/// The breakdown's first part: moka's own cost per entry, with the session
/// cache's key (a token) and builder settings (capacity, time to live) and
/// the smallest value (an `Arc<u64>`, where the layer keeps an
/// `Arc<SessionData>`).
fn moka_alone(count: usize) {
    let tokens: Vec<SessionToken> = (0..count)
        .map(|_| SessionToken::generate().expect("randomness"))
        .collect();
    let cache: moka::sync::Cache<SessionToken, Arc<u64>> = moka::sync::Cache::builder()
        .max_capacity(count as u64 + 1)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let before = rss();
    for (n, token) in tokens.iter().enumerate() {
        cache.insert(*token, Arc::new(n as u64));
    }
    cache.run_pending_tasks();
    let grown = rss().saturating_sub(before);
    println!(
        "moka alone: {} entries, resident set grew {:.1} MiB: {} bytes per cached entry",
        cache.entry_count(),
        grown as f64 / (1024.0 * 1024.0),
        grown / count as u64
    );
}

/// The breakdown's second part: an index of the session layer's shape (16
/// `HashMap<SessionId, SessionToken>` shards), which lets a revocation by
/// id find the cached entry.
fn id_index_alone(count: usize) {
    let tokens: Vec<SessionToken> = (0..count)
        .map(|_| SessionToken::generate().expect("randomness"))
        .collect();
    let before = rss();
    let mut shards: Vec<HashMap<SessionId, SessionToken>> =
        (0..16).map(|_| HashMap::new()).collect();
    for token in &tokens {
        let id = token.id();
        shards[usize::from(id.as_bytes()[0]) % 16].insert(id, *token);
    }
    let grown = rss().saturating_sub(before);
    println!(
        "id index alone: {} entries, resident set grew {:.1} MiB: {} bytes per cached entry",
        shards.iter().map(HashMap::len).sum::<usize>(),
        grown as f64 / (1024.0 * 1024.0),
        grown / count as u64
    );
}
