//! The real-store comparison: this crate's session layer against
//! tower-sessions 0.14 with its published stores, on the PostgreSQL and
//! Redis of this machine.
//!
//! ```text
//! cargo bench --manifest-path benches/store_comparison/Cargo.toml --target-dir target
//! ```
//!
//! Settings (environment): `ROUNDS` (3), `LATENCY_REQUESTS` (1 000),
//! `HERD_SESSIONS` (10 000), `SECONDS` (3), `WORKERS` (2), `STORES`
//! (`postgres,redis`); `DATABASE_URL` and `REDIS_URL` as for the tests.
//!
//! Variants, each behind the same small handler that reads one value of
//! its session:
//!
//! * **ours, hit**: a cached session (the steady state of an active user);
//! * **ours, miss**: the first request for a session on a layer that has
//!   not cached it (one store read);
//! * **ours, renewal**: the first request for a cached session that is due
//!   for renewal (one extend-only write);
//! * **tower-sessions, read**: the handler reads one value (the store is
//!   read on every request; nothing is written);
//! * **tower-sessions, `always_save`**: the same, with the record saved on
//!   every request (its only way to slide an expiry).
//!
//! The hit row sends 64 cached sessions again and again (one per task);
//! every other row sends each of its sessions once (a miss or a renewal
//! of ours happens once per session; tower-sessions reads its store on
//! every request, and reads a different record each time here, as ours
//! does).
//!
//! For each: latency of requests sent one after the other (p50, p99),
//! requests per second from 64 concurrent tasks on a runtime of 2 worker
//! threads, and database statements per request. Statements are counted
//! on the wire: every store's connections go through a counting proxy on
//! loopback (PostgreSQL: `Query` and `Execute` messages; Redis: commands).
//! Both sides get a pool of 10 PostgreSQL connections, and one multiplexed
//! Redis connection.
//!
//! Every round runs every variant, so a drift in the machine's load hits
//! all of them; the tables give the median of the rounds and their
//! min–max. Data goes to a schema (PostgreSQL) or key prefix (Redis) of
//! this run, removed at the end.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::COOKIE;
use http::{HeaderName, HeaderValue, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_saas_guard::session::{Session, SessionRefreshLayer, SessionStore};
use tower_saas_guard::stores::postgres::PostgresSessionStore;
use tower_saas_guard::stores::redis::RedisSessionStore;

const TASKS: usize = 64;
const POOL: u32 = 10;

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

struct Settings {
    rounds: usize,
    /// Requests sent one after the other per latency measurement.
    latency_requests: usize,
    /// Distinct sessions the 64 tasks consume in the miss and renewal
    /// throughput runs (each is missed or renewed once).
    herd_sessions: usize,
    /// Length of the hit and tower-sessions throughput runs.
    seconds: f64,
}

// ------------------------------------------------------------------ proxy

#[derive(Clone, Copy)]
enum Wire {
    Postgres,
    Redis,
}

/// A loopback TCP proxy to `upstream` that counts the statements (or
/// commands) clients send through it.
struct CountingProxy {
    port: u16,
    statements: Arc<AtomicU64>,
}

impl CountingProxy {
    async fn start(upstream: String, wire: Wire) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let statements = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&statements);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let server = TcpStream::connect(&upstream)
                    .await
                    .unwrap_or_else(|error| panic!("proxy to {upstream}: {error}"));
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut parser = Parser::new(wire);
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let read = match client_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(read) => read,
                        };
                        counter.fetch_add(parser.feed(&buffer[..read]), Ordering::Relaxed);
                        if server_write.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_write.shutdown().await;
                });
            }
        });
        Self { port, statements }
    }

    fn count(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

/// Splits a client's byte stream into messages and counts statements.
struct Parser {
    wire: Wire,
    pending: Vec<u8>,
    /// PostgreSQL: the next message has no type byte (start-up, or what
    /// follows an SSL or GSS encryption request).
    untyped: bool,
}

impl Parser {
    fn new(wire: Wire) -> Self {
        Self {
            wire,
            pending: Vec::new(),
            untyped: true,
        }
    }

    /// Takes the next bytes; returns how many statements they completed.
    fn feed(&mut self, bytes: &[u8]) -> u64 {
        self.pending.extend_from_slice(bytes);
        let mut counted = 0;
        let mut at = 0;
        loop {
            let step = match self.wire {
                Wire::Postgres => postgres_message(&mut self.untyped, &self.pending[at..]),
                Wire::Redis => redis_command(&self.pending[at..]).map(|length| (length, 1)),
            };
            match step {
                Some((length, statements)) => {
                    at += length;
                    counted += statements;
                }
                None => break,
            }
        }
        self.pending.drain(..at);
        counted
    }
}

/// The length of the first complete PostgreSQL frontend message and
/// whether it is a statement (`Query` or `Execute`); `untyped` says the
/// message has no type byte (start-up, or what follows an SSL or GSS
/// encryption request).
fn postgres_message(untyped: &mut bool, bytes: &[u8]) -> Option<(usize, u64)> {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSS_REQUEST: u32 = 80_877_104;
    if *untyped {
        let length = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        if bytes.len() < length || length < 8 {
            return None;
        }
        let code = u32::from_be_bytes(bytes[4..8].try_into().ok()?);
        *untyped = code == SSL_REQUEST || code == GSS_REQUEST;
        return Some((length, 0));
    }
    let kind = *bytes.first()?;
    let length = u32::from_be_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
    if bytes.len() < length + 1 {
        return None;
    }
    Some((length + 1, u64::from(kind == b'Q' || kind == b'E')))
}

/// The length of the first complete RESP command (an array of bulk
/// strings, as clients send them).
fn redis_command(bytes: &[u8]) -> Option<usize> {
    fn line(bytes: &[u8], at: usize, marker: u8) -> Option<(usize, usize)> {
        if *bytes.get(at)? != marker {
            panic!("unexpected RESP byte {:?}", bytes[at] as char);
        }
        let end = at + bytes[at..].windows(2).position(|pair| pair == b"\r\n")?;
        let value = std::str::from_utf8(&bytes[at + 1..end])
            .ok()?
            .parse()
            .expect("a RESP length");
        Some((value, end + 2))
    }
    let (items, mut at) = line(bytes, 0, b'*')?;
    for _ in 0..items {
        let (length, start) = line(bytes, at, b'$')?;
        at = start + length + 2;
        if bytes.len() < at {
            return None;
        }
    }
    Some(at)
}

// --------------------------------------------------------------- services

/// Our handler: reads one value of the session's payload.
async fn our_handler(request: Request<()>) -> Result<Response<()>, Infallible> {
    let session = request
        .extensions()
        .get::<Session>()
        .expect("the layer admitted the request");
    assert_eq!(session.payload()["name"], "Ada");
    Ok(Response::new(()))
}

/// tower-sessions' handler: reads one value of its session.
async fn their_handler(request: Request<()>) -> Result<Response<()>, Infallible> {
    let session = request
        .extensions()
        .get::<tower_sessions::Session>()
        .cloned()
        .expect("tower-sessions session");
    let name: Option<String> = session.get("name").await.expect("store read");
    assert_eq!(name.as_deref(), Some("Ada"));
    Ok(Response::new(()))
}

fn our_request(token: &HeaderValue) -> Request<()> {
    let mut request = Request::new(());
    request
        .headers_mut()
        .insert(HeaderName::from_static("x-session-id"), token.clone());
    request
}

fn their_request(cookie: &HeaderValue) -> Request<()> {
    let mut request = Request::new(());
    request.headers_mut().insert(COOKIE, cookie.clone());
    request
}

// ------------------------------------------------------------ measurement

#[derive(Clone, Copy, Default)]
struct Sample {
    p50_us: f64,
    p99_us: f64,
    per_second: f64,
    statements: f64,
}

/// Sends `requests` one after the other; p50 and p99 in µs.
async fn latency<S, B>(
    mut service: S,
    requests: impl IntoIterator<Item = Request<()>>,
) -> (f64, f64)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let mut times = Vec::new();
    for request in requests {
        let started = Instant::now();
        let response = service
            .ready()
            .await
            .expect("infallible")
            .call(request)
            .await
            .expect("infallible");
        times.push(started.elapsed());
        assert_eq!(response.status(), 200, "a request was refused");
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

/// Requests per second from `TASKS` tasks: task `t` sends `make(t, i)`
/// for its `i`-th request, until `stop` says so (time) or `make` returns
/// `None` (the sessions ran out).
async fn throughput<S, B, M>(service: S, make: M, duration: Option<Duration>) -> (f64, u64)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    M: Fn(usize, usize) -> Option<Request<()>> + Send + Sync + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let make = Arc::new(make);
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (mut service, make) = (service.clone(), Arc::clone(&make));
            let (stop, total) = (Arc::clone(&stop), Arc::clone(&total));
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Some(request) = make(task, sent) else {
                        break;
                    };
                    let response = service
                        .ready()
                        .await
                        .expect("infallible")
                        .call(request)
                        .await
                        .expect("infallible");
                    assert_eq!(response.status(), 200, "a request was refused");
                    sent += 1;
                }
                total.fetch_add(sent as u64, Ordering::Relaxed);
            })
        })
        .collect();
    if let Some(duration) = duration {
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
    }
    for task in tasks {
        task.await.expect("a sender task panicked");
    }
    let requests = total.load(Ordering::Relaxed);
    (requests as f64 / started.elapsed().as_secs_f64(), requests)
}

/// Statements per request over `requests`, from the proxy's count.
fn per_request(before: u64, after: u64, requests: u64) -> f64 {
    (after - before) as f64 / requests as f64
}

/// A row whose requests each go to a session no earlier request of the
/// row touched: latency over `latency` one after the other, then
/// throughput from 64 tasks over `herd`; statements over both.
async fn each_once<S, B>(
    service: S,
    latency_keys: &[HeaderValue],
    herd: Arc<Vec<HeaderValue>>,
    request: fn(&HeaderValue) -> Request<()>,
    proxy: &CountingProxy,
) -> Sample
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    let before = proxy.count();
    let (p50_us, p99_us) = latency(service.clone(), latency_keys.iter().map(request)).await;
    let next = AtomicUsize::new(0);
    let herd_len = herd.len();
    let (per_second, requests) = throughput(
        service,
        move |_, _| herd.get(next.fetch_add(1, Ordering::Relaxed)).map(request),
        None,
    )
    .await;
    assert_eq!(requests as usize, herd_len);
    Sample {
        p50_us,
        p99_us,
        per_second,
        statements: per_request(before, proxy.count(), requests + latency_keys.len() as u64),
    }
}

// ----------------------------------------------------------------- ours

/// Creates `count` sessions through `layer` (so they are in its cache),
/// 64 at a time; returns their tokens as header values.
async fn create_sessions(layer: &SessionRefreshLayer, count: usize) -> Arc<Vec<HeaderValue>> {
    let handle = layer.handle();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (handle, next) = (handle.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut made = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let created = handle
                        .create(
                            Some("org_1"),
                            serde_json::json!({"name": "Ada", "email": "ada@example.com"}),
                        )
                        .await
                        .expect("create a session");
                    made.push(HeaderValue::from_str(&created.token.to_string()).expect("a token"));
                }
                made
            })
        })
        .collect();
    let mut tokens = Vec::with_capacity(count);
    for task in tasks {
        tokens.extend(task.await.expect("a creating task panicked"));
    }
    Arc::new(tokens)
}

/// The three rows of ours, on `store` (whose statements `proxy` counts).
async fn ours<T>(store: T, proxy: &CountingProxy, settings: &Settings) -> [Sample; 3]
where
    T: SessionStore + Clone,
{
    let layer = |threshold: Option<Duration>| {
        let mut builder = SessionRefreshLayer::builder(store.clone());
        if let Some(threshold) = threshold {
            builder = builder.refresh_threshold(threshold).duration(threshold);
        }
        builder.build().expect("a valid configuration")
    };
    let mut samples = [Sample::default(); 3];

    // Hit: 64 cached sessions, one per task.
    let warm = layer(None);
    let tokens = create_sessions(&warm, TASKS).await;
    let service = warm.layer(service_fn(our_handler));
    let before = proxy.count();
    let (p50, p99) = latency(
        service.clone(),
        (0..settings.latency_requests * 10).map(|i| our_request(&tokens[i % TASKS])),
    )
    .await;
    let tokens_for = Arc::clone(&tokens);
    let (per_second, requests) = throughput(
        service,
        move |task, _| Some(our_request(&tokens_for[task])),
        Some(Duration::from_secs_f64(settings.seconds)),
    )
    .await;
    samples[0] = Sample {
        p50_us: p50,
        p99_us: p99,
        per_second,
        statements: per_request(
            before,
            proxy.count(),
            requests + (settings.latency_requests * 10) as u64,
        ),
    };

    // Miss: sessions made through one layer, read through a new one.
    // Renewal: sessions made through a layer that renews whatever is
    // touched (threshold = duration), each touched once.
    for (row, threshold) in [(1, None), (2, Some(Duration::from_secs(24 * 3600)))] {
        let maker = layer(threshold);
        let latency_tokens = create_sessions(&maker, settings.latency_requests).await;
        let herd_tokens = create_sessions(&maker, settings.herd_sessions).await;
        // The renewal rows go through the layer that cached them; the miss
        // rows through one that has never seen them.
        let reader = if threshold.is_some() {
            maker
        } else {
            layer(None)
        };
        let service = reader.layer(service_fn(our_handler));
        samples[row] = each_once(service, &latency_tokens, herd_tokens, our_request, proxy).await;
    }
    samples
}

// -------------------------------------------------------- tower-sessions

/// Creates `count` tower-sessions records holding `name`, 64 at a time;
/// returns their cookies.
async fn create_records<T>(store: &T, count: usize) -> Arc<Vec<HeaderValue>>
where
    T: tower_sessions::SessionStore + Clone,
{
    use tower_sessions::cookie::time::{Duration as TimeDuration, OffsetDateTime};
    use tower_sessions::session::{Id, Record};
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, next) = (store.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut made = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let mut record = Record {
                        id: Id::default(),
                        data: HashMap::from([("name".to_owned(), serde_json::json!("Ada"))]),
                        expiry_date: OffsetDateTime::now_utc() + TimeDuration::hours(1),
                    };
                    store.create(&mut record).await.expect("create a record");
                    made.push(
                        HeaderValue::from_str(&format!("id={}", record.id)).expect("a cookie"),
                    );
                }
                made
            })
        })
        .collect();
    let mut cookies = Vec::with_capacity(count);
    for task in tasks {
        cookies.extend(task.await.expect("a creating task panicked"));
    }
    Arc::new(cookies)
}

/// The two rows of tower-sessions, on `store`: like our miss and renewal
/// rows, every request is for a record no earlier request of the row
/// touched. Returns the records' ids (their Redis keys).
async fn theirs<T>(
    store: T,
    proxy: &CountingProxy,
    settings: &Settings,
) -> ([Sample; 2], Vec<String>)
where
    T: tower_sessions::SessionStore + Clone,
{
    let mut samples = [Sample::default(); 2];
    let mut ids = Vec::new();
    for (row, always_save) in [(0, false), (1, true)] {
        let latency_cookies = create_records(&store, settings.latency_requests).await;
        let herd_cookies = create_records(&store, settings.herd_sessions).await;
        ids.extend(
            latency_cookies
                .iter()
                .chain(herd_cookies.iter())
                .map(|cookie| cookie.to_str().expect("ascii")["id=".len()..].to_owned()),
        );
        let service = tower_sessions::SessionManagerLayer::new(store.clone())
            .with_secure(false)
            .with_always_save(always_save)
            .layer(service_fn(their_handler));
        samples[row] = each_once(
            service,
            &latency_cookies,
            herd_cookies,
            their_request,
            proxy,
        )
        .await;
    }
    (samples, ids)
}

// ----------------------------------------------------------------- stores

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `host:port` of a `scheme://[user@]host:port/...` URL.
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

/// `url` with its host and port (given or implied) replaced by the proxy's.
fn through(url: &str, proxy: &CountingProxy) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("{url:?}: a URL with a scheme and a TCP host"));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}127.0.0.1:{}{tail}", proxy.port)
}

struct Postgres {
    schema: String,
    admin: sqlx::PgPool,
    /// Holds this run's advisory lock until the schemas are dropped.
    _alive: sqlx::pool::PoolConnection<sqlx::Postgres>,
}

/// The advisory-lock class by which a running comparison marks its schemas
/// as in use: each run holds `(RUN_LOCK_CLASS, its pid)` on a connection of
/// its own for as long as it runs, and PostgreSQL releases it when that
/// connection ends, however the process ends.
const RUN_LOCK_CLASS: i32 = 0x7453_4743;

async fn postgres_rows(settings: &Settings, rows: &mut Vec<[Sample; 5]>) -> Postgres {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
    let url = database_url();
    let schema = format!("tsg_compare_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL at {url}: {error}"));
    let mut alive = admin
        .acquire()
        .await
        .expect("a connection for the run's lock");
    run_lock(
        "pg_advisory_lock",
        std::process::id().try_into().expect("a pid fits an int"),
    )
    .execute(&mut *alive)
    .await
    .expect("take the run's lock");
    drop_leftover_schemas(&admin).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create the schema");
    let cleanup = Postgres {
        schema: schema.clone(),
        admin,
        _alive: alive,
    };

    let ours_proxy = CountingProxy::start(host_port(&url, 5432), Wire::Postgres).await;
    let ours_options = PgConnectOptions::from_str(&through(&url, &ours_proxy))
        .expect("DATABASE_URL")
        .ssl_mode(PgSslMode::Disable)
        .options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(POOL)
        .connect_with(ours_options)
        .await
        .expect("our pool");
    let ours_store = PostgresSessionStore::new(pool);
    ours_store.migrate().await.expect("our migrations");

    let their_proxy = CountingProxy::start(host_port(&url, 5432), Wire::Postgres).await;
    let their_options = sqlx08::postgres::PgConnectOptions::from_str(&through(&url, &their_proxy))
        .expect("DATABASE_URL")
        .ssl_mode(sqlx08::postgres::PgSslMode::Disable);
    let their_pool = sqlx08::postgres::PgPoolOptions::new()
        .max_connections(POOL)
        .connect_with(their_options)
        .await
        .expect("tower-sessions' pool");
    let their_store = tower_sessions_sqlx_store::PostgresStore::new(their_pool)
        .with_schema_name(format!("{schema}_ts"))
        .expect("a schema name");
    their_store
        .migrate()
        .await
        .expect("tower-sessions' migration");

    for round in 0..settings.rounds {
        eprintln!("PostgreSQL, round {}", round + 1);
        let [hit, miss, renewal] = ours(ours_store.clone(), &ours_proxy, settings).await;
        let ([read, save], _) = theirs(their_store.clone(), &their_proxy, settings).await;
        rows.push([hit, miss, renewal, read, save]);
    }
    cleanup
}

/// Drops the schemas of earlier runs that stopped before their cleanup (a
/// panic, an interrupt): those whose run's advisory lock nobody holds,
/// whichever host or container the run was on. (Redis keys need no such
/// sweep: both stores' keys expire.)
async fn drop_leftover_schemas(admin: &sqlx::PgPool) {
    use sqlx::Row;
    // One connection, so that each lock taken to check it is released on
    // the same session.
    let mut probe = admin.acquire().await.expect("a connection");
    let schemas: Vec<String> = sqlx::query_scalar(
        r"SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tsg\_compare\_%'",
    )
    .fetch_all(&mut *probe)
    .await
    .expect("list the schemas");
    for schema in schemas {
        let Ok(pid) = schema["tsg_compare_".len()..]
            .trim_end_matches("_ts")
            .parse::<i32>()
        else {
            continue;
        };
        let free = run_lock("pg_try_advisory_lock", pid)
            .fetch_one(&mut *probe)
            .await
            .expect("try a run's lock")
            .get::<bool, _>(0);
        if free {
            eprintln!("dropping {schema}, left behind by an interrupted run");
            drop_schema(&mut *probe, &schema).await;
            run_lock("pg_advisory_unlock", pid)
                .execute(&mut *probe)
                .await
                .expect("release a run's lock");
        }
    }
}

/// `SELECT function(RUN_LOCK_CLASS, pid)`, for PostgreSQL's two-key
/// advisory-lock functions.
fn run_lock(
    function: &'static str,
    pid: i32,
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {function}($1, $2)")))
        .bind(RUN_LOCK_CLASS)
        .bind(pid)
}

async fn drop_schema<'c>(executor: impl sqlx::PgExecutor<'c>, schema: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(executor)
    .await
    .unwrap_or_else(|error| panic!("drop schema {schema}: {error}"));
}

impl Postgres {
    async fn drop_schemas(self) {
        for schema in [self.schema.clone(), format!("{}_ts", self.schema)] {
            drop_schema(&self.admin, &schema).await;
        }
    }
}

async fn redis_rows(settings: &Settings, rows: &mut Vec<[Sample; 5]>) {
    use tower_sessions_redis_store::fred::prelude::{ClientLike, Config};
    let url = redis_url();
    let prefix = format!("tsg_compare_{}:", std::process::id());

    let ours_proxy = CountingProxy::start(host_port(&url, 6379), Wire::Redis).await;
    let ours_store = RedisSessionStore::connect(&through(&url, &ours_proxy))
        .await
        .unwrap_or_else(|error| panic!("Redis at {url}: {error}"))
        .key_prefix(&prefix);

    let their_proxy = CountingProxy::start(host_port(&url, 6379), Wire::Redis).await;
    let config = Config::from_url(&through(&url, &their_proxy)).expect("REDIS_URL for fred");
    let client = tower_sessions_redis_store::fred::clients::Client::new(config, None, None, None);
    client.init().await.expect("fred connects");
    let their_store = tower_sessions_redis_store::RedisStore::new(client.clone());

    let mut their_keys = Vec::new();
    for round in 0..settings.rounds {
        eprintln!("Redis, round {}", round + 1);
        let [hit, miss, renewal] = ours(ours_store.clone(), &ours_proxy, settings).await;
        let ([read, save], ids) = theirs(their_store.clone(), &their_proxy, settings).await;
        their_keys.extend(ids);
        rows.push([hit, miss, renewal, read, save]);
    }

    // Remove this run's keys (tower-sessions' are bare session ids).
    let cleanup = redis::Client::open(url.as_str()).expect("REDIS_URL");
    let mut connection = cleanup
        .get_multiplexed_async_connection()
        .await
        .expect("a cleanup connection");
    let mut ours: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{prefix}}}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .expect("SCAN");
        ours.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for keys in ours.chunks(500).chain(their_keys.chunks(500)) {
        let _: u64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .expect("DEL");
    }
    let _ = client.quit().await;
}

// ----------------------------------------------------------------- report

const ROWS: [&str; 5] = [
    "ours, cache hit",
    "ours, miss (one store read)",
    "ours, renewal (one store write)",
    "tower-sessions 0.14, read one value",
    "tower-sessions 0.14, `always_save`",
];

fn spread(values: impl Iterator<Item = f64>, format: fn(f64) -> String) -> String {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    format!(
        "{} ({}–{})",
        format(median),
        format(values[0]),
        format(values[values.len() - 1])
    )
}

fn micros(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.1} µs")
    } else {
        format!("{value:.0} µs")
    }
}

fn rate(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2} M", value / 1e6)
    } else {
        format!("{:.1} k", value / 1e3)
    }
}

fn table(store: &str, rounds: &[[Sample; 5]]) -> String {
    let mut out = format!(
        "\n{store}: median of {} rounds (min–max)\n\n\
         | variant | p50 | p99 | requests/s (64 tasks) | statements per request |\n\
         |---|---|---|---|---|\n",
        rounds.len()
    );
    for (index, name) in ROWS.iter().enumerate() {
        let column = |pick: fn(&Sample) -> f64| rounds.iter().map(move |round| pick(&round[index]));
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            spread(column(|s| s.p50_us), micros),
            spread(column(|s| s.p99_us), micros),
            spread(column(|s| s.per_second), rate),
            spread(column(|s| s.statements), |v| format!("{v:.2}")),
        );
    }
    out
}

fn main() {
    let settings = Settings {
        rounds: env_or("ROUNDS", 3),
        latency_requests: env_or("LATENCY_REQUESTS", 1_000),
        herd_sessions: env_or("HERD_SESSIONS", 10_000),
        seconds: env_or("SECONDS", 3.0),
    };
    assert!(settings.rounds > 0 && settings.latency_requests > 0 && settings.herd_sessions > 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_or("WORKERS", 2))
        .enable_all()
        .build()
        .expect("a runtime");
    let stores: String = env_or("STORES", "postgres,redis".to_owned());
    runtime.block_on(async {
        for store in stores.split(',') {
            let mut rounds = Vec::new();
            match store {
                "postgres" => {
                    let cleanup = postgres_rows(&settings, &mut rounds).await;
                    cleanup.drop_schemas().await;
                    println!("{}", table("PostgreSQL", &rounds));
                }
                "redis" => {
                    redis_rows(&settings, &mut rounds).await;
                    println!("{}", table("Redis", &rounds));
                }
                other => panic!("STORES: unknown store {other:?} (postgres, redis)"),
            }
        }
    });
}
