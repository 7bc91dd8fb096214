//! Throughput under contention: a Tokio runtime of 2 worker threads, 64
//! tasks sending requests as fast as they go for a fixed time, spread over
//! 1, 1 000, 10 000 or 100 000 distinct sessions (or organizations). The session
//! layer, the subscription layer, tower-sessions 0.15 (memory store,
//! reading one value) and the bare service run one after the other in one
//! process, so their figures compare. Store reads during the measured
//! time are counted: on a warm cache there should be none.
//!
//! Every row runs in `ROUNDS` rounds (default 3) in the one process, each
//! round going through all rows in turn, so that a drift of the machine's
//! load hits every variant alike; the table gives the median of the rounds
//! and their min–max, and `benches/plots/throughput.svg` draws it.
//!
//! `cargo bench --bench contention --all-features` (or the built binary
//! with the seconds per row, default 2; `ROUNDS=5` for more rounds).

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::svg::{self, Grouped, Series, Spread};
use common::{active_subscription, tower_sessions_reader};
use http::header::COOKIE;
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
use tower_saas_guard::subscription::{
    EntitlementPolicy, Entitlements, FromHeader, MemorySubscriptionStore, RequireSubscriptionLayer,
};
use tower_saas_guard::test_kit::faults::{Faults, FaultySessionStore, FaultySubscriptionStore, Op};

const TASKS: usize = 64;
const DISTINCT: [usize; 4] = [1, 1_000, 10_000, 100_000];

/// Requests per second of `service` from `TASKS` tasks for `duration`,
/// task `t` cycling through `keys[t], keys[t + TASKS], …` in `header`.
async fn throughput<S, B>(
    service: S,
    header: HeaderName,
    keys: Arc<Vec<HeaderValue>>,
    duration: Duration,
) -> f64
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (mut service, header, keys) = (service.clone(), header.clone(), Arc::clone(&keys));
            let (stop, total) = (Arc::clone(&stop), Arc::clone(&total));
            tokio::spawn(async move {
                let mut sent = 0u64;
                let mut next = task % keys.len();
                while !stop.load(Ordering::Relaxed) {
                    let mut request = Request::new(());
                    request
                        .headers_mut()
                        .insert(header.clone(), keys[next].clone());
                    let response = service
                        .ready()
                        .await
                        .expect("infallible")
                        .call(request)
                        .await
                        .expect("infallible");
                    assert_eq!(response.status(), 200);
                    sent += 1;
                    next = (next + TASKS) % keys.len();
                    if sent % 64 == 0 {
                        // Let the timer and the other tasks in.
                        tokio::task::yield_now().await;
                    }
                }
                total.fetch_add(sent, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a task panicked");
    }
    total.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn inner() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(2);
    let rounds = common::rounds();
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(duration, rounds));
}

/// One measured run of a row: requests per second.
type Measure = Box<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = f64>>>>;

/// A row of the table, set up once and measured once per round.
struct Row {
    variant: &'static str,
    /// Distinct sessions or organizations (`None`: the bare service).
    distinct: Option<usize>,
    /// The service under test; dropped once measured.
    measure: Option<Measure>,
    /// Store reads so far (`None`: not counted).
    reads: Option<Box<dyn Fn() -> usize>>,
    /// Whether store reads are counted.
    counted: bool,
    rates: Vec<f64>,
    reads_while_measured: usize,
}

impl Row {
    fn new<S, B>(
        variant: &'static str,
        distinct: Option<usize>,
        service: S,
        header: HeaderName,
        keys: Arc<Vec<HeaderValue>>,
        reads: Option<Box<dyn Fn() -> usize>>,
    ) -> Row
    where
        S: Service<Request<()>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
        B: Send + 'static,
    {
        // Boxed per measurement, not per request: the measured loop is
        // `throughput` on the concrete service, as before.
        let measure: Measure = Box::new(move |duration| {
            Box::pin(throughput(
                service.clone(),
                header.clone(),
                Arc::clone(&keys),
                duration,
            ))
        });
        Row {
            variant,
            distinct,
            measure: Some(measure),
            counted: reads.is_some(),
            reads,
            rates: Vec::new(),
            reads_while_measured: 0,
        }
    }

    fn spread(&self) -> Spread {
        Spread::of(&self.rates).expect("at least one round")
    }
}

async fn run(duration: Duration, rounds: usize) {
    // Each row is set up, measured and dropped in turn, so only its own
    // layer and sessions are in memory while it is measured.
    let mut rows: Vec<Row> = Vec::new();
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}");
        for index in 0..ROWS {
            let mut row = setup(index).await;
            let before = row.reads.as_ref().map(|reads| reads());
            let measure = row.measure.take().expect("a row is measured once");
            let rate = measure(duration).await;
            drop(measure);
            let reads = match (before, row.reads.take()) {
                (Some(before), Some(reads)) => reads() - before,
                _ => 0,
            };
            if round == 1 {
                rows.push(row);
            }
            rows[index].rates.push(rate);
            rows[index].reads_while_measured += reads;
        }
    }

    println!(
        "{TASKS} tasks on 2 worker threads, {} s per row, {rounds} round(s): \
         median (min–max) of the rounds",
        duration.as_secs()
    );
    println!("| variant | distinct keys | requests/s | store reads while measured (all rounds) |");
    println!("|---|---|---|---|");
    for row in &rows {
        let spread = row.spread();
        let rate = if rounds > 1 {
            format!("{:.0} ({:.0}–{:.0})", spread.median, spread.min, spread.max)
        } else {
            format!("{:.0}", spread.median)
        };
        let distinct = row
            .distinct
            .map_or_else(|| "—".to_owned(), |distinct| distinct.to_string());
        let reads = if row.counted {
            row.reads_while_measured.to_string()
        } else {
            "—".to_owned()
        };
        println!("| {} | {distinct} | {rate} | {reads} |", row.variant);
    }

    let series = |variant: &str, name: &str, color| Series {
        name: name.to_owned(),
        color,
        points: DISTINCT
            .iter()
            .map(|distinct| {
                rows.iter()
                    .find(|row| row.variant == variant && row.distinct == Some(*distinct))
                    .map(|row| row.spread().scaled(1000.0))
            })
            .collect(),
    };
    let bare = rows
        .iter()
        .find(|row| row.distinct.is_none())
        .expect("the bare row")
        .spread()
        .scaled(1000.0);
    let chart = Grouped {
        title: "Throughput against the number of distinct sessions".to_owned(),
        notes: vec![
            format!(
                "{TASKS} tasks on 2 worker threads, {} s per row; bars: median of {rounds} round(s), whiskers: min–max.",
                duration.as_secs()
            ),
            format!(
                "Bare service (no layer): {} thousand requests/s. Warm caches: every request a cache hit.",
                bare.text()
            ),
        ],
        unit: "thousand requests per second".to_owned(),
        x_label: "distinct sessions (tower-sessions, session layer) or organizations (subscription layer)"
            .to_owned(),
        categories: DISTINCT.iter().map(|distinct| svg::number(*distinct as f64)).collect(),
        series: vec![
            series(SESSION, "SessionRefreshLayer", svg::OURS),
            series(SUBSCRIPTION, "RequireSubscriptionLayer", svg::OURS_2),
            series(TOWER_SESSIONS, "tower-sessions 0.15, read one value", svg::THEIRS),
        ],
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/plots/throughput.svg");
    if let Err(error) = svg::write(&path, &chart.render()) {
        eprintln!("could not write {}: {error}", path.display());
        std::process::exit(1);
    }
}

const SESSION: &str = "`SessionRefreshLayer`";
const SUBSCRIPTION: &str = "`RequireSubscriptionLayer`";
const TOWER_SESSIONS: &str = "tower-sessions, read one value";

/// Every row, its store filled and its cache warm.
/// Rows of the table: the bare service, then each layer and tower-sessions
/// at every number of distinct keys.
const ROWS: usize = 1 + 3 * DISTINCT.len();

/// Sets up row `wanted` of the table (see [`ROWS`]) only.
async fn setup(wanted: usize) -> Row {
    let long = Duration::from_secs(3600);
    let any = Arc::new(vec![HeaderValue::from_static("unused")]);
    let mut index = 0;
    if wanted == index {
        return Row::new(
            "bare service",
            None,
            inner(),
            HeaderName::from_static("x-any"),
            any,
            None,
        );
    }

    for distinct in DISTINCT {
        index += 1;
        if index != wanted {
            continue;
        }
        let faults = Faults::new(1);
        let store = FaultySessionStore::new(MemorySessionStore::new(), faults.clone());
        let layer = SessionRefreshLayer::builder(store)
            .cache_ttl(long)
            .cache_capacity(2 * distinct as u64)
            .build()
            .expect("valid settings");
        let mut tokens = Vec::with_capacity(distinct);
        for _ in 0..distinct {
            let created = layer
                .handle()
                .create(Some("org_1"), ())
                .await
                .expect("a session");
            tokens.push(HeaderValue::from_str(&created.token.to_string()).expect("a header"));
        }
        let tokens = Arc::new(tokens);
        let header = HeaderName::from_static("x-session-id");
        let service = layer.layer(inner());
        // Warm: every session cached once.
        for token in tokens.iter() {
            let mut request = Request::new(());
            request.headers_mut().insert(header.clone(), token.clone());
            let response = service.clone().oneshot(request).await.expect("infallible");
            assert_eq!(response.status(), 200);
        }
        let reads = Box::new(move || faults.calls(Op::Load));
        return Row::new(
            SESSION,
            Some(distinct),
            service,
            header,
            tokens,
            Some(reads),
        );
    }

    for distinct in DISTINCT {
        index += 1;
        if index != wanted {
            continue;
        }
        let faults = Faults::new(1);
        let store = FaultySubscriptionStore::new(MemorySubscriptionStore::new(), faults.clone());
        let entitlements = Entitlements::builder(store)
            .positive_ttl(long)
            .cache_capacity(2 * distinct as u64)
            .build()
            .expect("valid settings");
        let mut organizations = Vec::with_capacity(distinct);
        for n in 0..distinct {
            entitlements
                .apply(&active_subscription(format!("org_{n}")))
                .await
                .expect("a subscription");
            organizations.push(HeaderValue::from_str(&format!("org_{n}")).expect("a header"));
        }
        let organizations = Arc::new(organizations);
        let header = HeaderName::from_static("x-organization-id");
        let service = RequireSubscriptionLayer::new(entitlements, EntitlementPolicy::new())
            .organization(FromHeader::new(header.clone()))
            .layer(inner());
        for organization in organizations.iter() {
            let mut request = Request::new(());
            request
                .headers_mut()
                .insert(header.clone(), organization.clone());
            let response = service.clone().oneshot(request).await.expect("infallible");
            assert_eq!(response.status(), 200);
        }
        let reads = Box::new(move || faults.calls(Op::Subscriptions));
        return Row::new(
            SUBSCRIPTION,
            Some(distinct),
            service,
            header,
            organizations,
            Some(reads),
        );
    }

    for distinct in DISTINCT {
        index += 1;
        if index != wanted {
            continue;
        }
        use tower_sessions::{MemoryStore, SessionManagerLayer};
        let reader = tower_sessions_reader();
        let service = SessionManagerLayer::new(MemoryStore::default())
            .with_secure(false)
            .layer(reader);
        let mut cookies = Vec::with_capacity(distinct);
        for _ in 0..distinct {
            let first = service
                .clone()
                .oneshot(Request::new(()))
                .await
                .expect("infallible");
            let cookie = first.headers()[http::header::SET_COOKIE]
                .to_str()
                .expect("ascii cookie")
                .split(';')
                .next()
                .expect("name=value")
                .to_owned();
            cookies.push(HeaderValue::from_str(&cookie).expect("a header"));
        }
        return Row::new(
            TOWER_SESSIONS,
            Some(distinct),
            service,
            COOKIE,
            Arc::new(cookies),
            None,
        );
    }
    unreachable!("row {wanted} of {ROWS}")
}
