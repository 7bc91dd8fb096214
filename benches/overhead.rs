//! Per-request overhead of the layers over a bare service, in one run.
//!
//! `cargo bench --bench overhead`. Every variant builds the same request
//! (one `x-session-id` header) and polls the service's future to
//! completion; only the middleware differs, so the difference in time per
//! iteration is the middleware's cost.

use std::convert::Infallible;

mod common;

use common::{active_subscription, ready_now, request, tower_sessions_reader};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::header::COOKIE;
use http::{HeaderValue, Request, Response};
use tower::{service_fn, Layer, Service};
use tower_saas_guard::session::{MemorySessionStore, SessionRefreshLayer};
use tower_saas_guard::subscription::{
    EntitlementPolicy, Entitlements, FromHeader, MemorySubscriptionStore, RequireSubscriptionLayer,
};

fn call<S>(service: &mut S, token: &HeaderValue, organization: &HeaderValue) -> S::Response
where
    S: Service<Request<()>, Error = Infallible>,
{
    ready_now(service.call(request(token, organization))).unwrap_or_else(|never| match never {})
}

/// Sessions and organizations the `*_4096_*` variants cycle through: more
/// than a thread's hot table holds (64), so nearly every call is a moka hit
/// and a hot-table miss.
const MANY: usize = 4096;

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let inner = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    // Cache TTLs longer than the run: every measured call is a cache hit
    // (with the defaults, one call in 30 s / 60 s would re-read the store).
    let long = std::time::Duration::from_secs(3600);
    let layer = SessionRefreshLayer::builder(MemorySessionStore::new())
        .cache_ttl(long)
        .build()
        .expect("valid settings");
    let created = runtime
        .block_on(layer.handle().create(Some("org_1"), ()))
        .expect("create session");
    let token = HeaderValue::from_str(&created.token.to_string()).expect("token is a header");
    let org_1 = HeaderValue::from_static("org_1");
    let many_tokens: Vec<HeaderValue> = (0..MANY)
        .map(|_| {
            let created = runtime
                .block_on(layer.handle().create(Some("org_1"), ()))
                .expect("create session");
            HeaderValue::from_str(&created.token.to_string()).expect("token is a header")
        })
        .collect();

    let entitlements = Entitlements::builder(MemorySubscriptionStore::new())
        .positive_ttl(long)
        .build()
        .expect("valid settings");
    let many_organizations: Vec<HeaderValue> = (1..=MANY)
        .map(|n| {
            runtime
                .block_on(entitlements.apply(&active_subscription(format!("org_{n}"))))
                .expect("store subscription");
            HeaderValue::from_str(&format!("org_{n}")).expect("organization is a header")
        })
        .collect();
    let gate_by_header =
        RequireSubscriptionLayer::new(entitlements.clone(), EntitlementPolicy::new()).organization(
            FromHeader::new(http::HeaderName::from_static("x-organization-id")),
        );
    let gate_by_session = RequireSubscriptionLayer::new(entitlements, EntitlementPolicy::new());

    let mut bare = inner;
    let mut sessions = layer.layer(inner);
    let mut validate_only = layer.clone().validate_only().layer(inner);
    let mut subscription = gate_by_header.layer(inner);
    let mut both = layer.layer(gate_by_session.layer(inner));
    // Warm: the first call through each layer may load (on the runtime);
    // every measured call below is a cache hit, ready on its first poll.
    let mut statuses = vec![
        warm(&runtime, &mut sessions, &token, &org_1),
        warm(&runtime, &mut validate_only, &token, &org_1),
        warm(&runtime, &mut subscription, &token, &org_1),
        warm(&runtime, &mut both, &token, &org_1),
    ];
    for many_token in &many_tokens {
        statuses.push(warm(&runtime, &mut sessions, many_token, &org_1));
    }
    for organization in &many_organizations {
        statuses.push(warm(&runtime, &mut subscription, &token, organization));
    }
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    let _entered = runtime.enter();

    let mut group = c.benchmark_group("overhead");
    group.bench_function("bare", |b| {
        b.iter(|| black_box(call(&mut bare, &token, &org_1)))
    });
    group.bench_function("session_refresh_cache_hit", |b| {
        b.iter(|| black_box(call(&mut sessions, &token, &org_1)))
    });
    group.bench_function("session_validate_only_cache_hit", |b| {
        b.iter(|| black_box(call(&mut validate_only, &token, &org_1)))
    });
    group.bench_function("require_subscription_cache_hit", |b| {
        b.iter(|| black_box(call(&mut subscription, &token, &org_1)))
    });
    group.bench_function("session_and_subscription_cache_hit", |b| {
        b.iter(|| black_box(call(&mut both, &token, &org_1)))
    });
    let mut next = 0;
    group.bench_function("session_refresh_cache_hit_4096_sessions", |b| {
        b.iter(|| {
            next = (next + 1) % MANY;
            black_box(call(&mut sessions, &many_tokens[next], &org_1))
        })
    });
    group.bench_function("require_subscription_cache_hit_4096_organizations", |b| {
        b.iter(|| {
            next = (next + 1) % MANY;
            black_box(call(&mut subscription, &token, &many_organizations[next]))
        })
    });
    drop(_entered);
    store_round_trips(&mut group, &runtime);
    tower_sessions_baseline(&mut group, &runtime);
    // Ours, driven the same way as tower-sessions, for a like-for-like ratio.
    let session_header = http::HeaderName::from_static("x-session-id");
    group.bench_function("session_refresh_cache_hit_block_on", |b| {
        b.iter(|| black_box(block_call(&runtime, &mut sessions, &session_header, &token)))
    });
    group.finish();
}

/// What the cache saves: a request whose cached copy is stale (one store
/// read), and a request due for renewal (one store write), against each
/// store this build has, in the same run as the cache hits.
///
/// The layer's clock is a `ManualClock` moved 1 ms per request: with a
/// 1 ms cache TTL every request re-reads; with a 1 h duration and a 1 h
/// refresh threshold every request renews (the cache stays fresh).
fn store_round_trips(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
) {
    round_trips(group, runtime, "memory", MemorySessionStore::new());
    let (stores, cleanup) = bench_stores::available(runtime);
    for (name, store) in stores {
        round_trips(group, runtime, name, store);
    }
    cleanup.run(runtime);
}

fn round_trips(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    store: impl tower_saas_guard::session::SessionStore + Clone,
) {
    use std::time::Duration;
    use tower_saas_guard::ManualClock;

    let _entered = runtime.enter();
    let inner = reader_free();
    let session_header = http::HeaderName::from_static("x-session-id");
    let clock = ManualClock::starting_now();
    let reading = SessionRefreshLayer::builder(store.clone())
        .cache_ttl(Duration::from_millis(1))
        .clock(clock.clone())
        .build()
        .expect("valid settings");
    let renewing = SessionRefreshLayer::builder(store)
        .duration(Duration::from_secs(3600))
        .refresh_threshold(Duration::from_secs(3600))
        .no_absolute_lifetime()
        .cache_ttl(Duration::from_secs(3600))
        .clock(clock.clone())
        .build()
        .expect("valid settings");
    for (variant, layer) in [
        ("store_miss", reading.validate_only()),
        ("store_renewal", renewing),
    ] {
        let created = runtime
            .block_on(layer.handle().create(Some("org_bench"), ()))
            .expect("create session");
        let token = HeaderValue::from_str(&created.token.to_string()).expect("token is a header");
        let mut service = layer.layer(inner.clone());
        group.bench_function(format!("{variant}_{name}"), |b| {
            b.iter(|| {
                clock.advance(Duration::from_millis(1));
                let response = block_call(runtime, &mut service, &session_header, &token);
                assert_eq!(response.status(), 200, "{variant} on {name}");
                black_box(response)
            })
        });
    }
}

/// The persistent stores this build has features for, each reachable at
/// `DATABASE_URL` / `REDIS_URL` (loopback defaults) in a schema or key
/// prefix of its own; unreachable ones are left out with a line on stderr.
/// `cleanup` removes what the run wrote.
mod bench_stores {
    use std::sync::Arc;

    use tower_saas_guard::session::SessionStore;

    pub type Named = (&'static str, Arc<dyn SessionStore>);

    #[derive(Default)]
    pub struct Cleanup {
        #[cfg(feature = "postgres")]
        postgres: Option<sqlx::PgPool>,
        #[cfg(feature = "redis")]
        redis: Option<(redis::aio::ConnectionManager, String)>,
        #[cfg(feature = "sqlite")]
        _sqlite_dir: Option<tempfile::TempDir>,
    }

    pub fn available(runtime: &tokio::runtime::Runtime) -> (Vec<Named>, Cleanup) {
        #[allow(unused_mut)]
        let mut stores: Vec<Named> = Vec::new();
        #[allow(unused_mut)]
        let mut cleanup = Cleanup::default();
        #[cfg(feature = "sqlite")]
        {
            let dir = tempfile::tempdir().expect("temporary directory");
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            let store = runtime
                .block_on(tower_saas_guard::stores::sqlite::SqliteSessionStore::connect(&url))
                .expect("a SQLite file in a temporary directory");
            stores.push(("sqlite", Arc::new(store)));
            cleanup._sqlite_dir = Some(dir);
        }
        #[cfg(feature = "postgres")]
        {
            let url = std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
            match runtime.block_on(postgres_in_own_schema(&url)) {
                Ok(pool) => {
                    let store =
                        tower_saas_guard::stores::postgres::PostgresSessionStore::new(pool.clone());
                    stores.push(("postgres", Arc::new(store)));
                    cleanup.postgres = Some(pool);
                }
                Err(error) => eprintln!("PostgreSQL rows left out ({url}): {error}"),
            }
        }
        #[cfg(feature = "redis")]
        {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
            let prefix = format!("tsg_bench_{}:", std::process::id());
            match runtime.block_on(tower_saas_guard::stores::redis::RedisSessionStore::connect(
                &url,
            )) {
                Ok(store) => {
                    let store = store.key_prefix(&prefix);
                    cleanup.redis = Some((store.connection().clone(), prefix));
                    stores.push(("redis", Arc::new(store)));
                }
                Err(error) => eprintln!("Redis rows left out ({url}): {error}"),
            }
        }
        let _ = runtime;
        (stores, cleanup)
    }

    #[cfg(feature = "postgres")]
    async fn postgres_in_own_schema(url: &str) -> Result<sqlx::PgPool, sqlx::Error> {
        use std::str::FromStr;

        let schema = format!("tsg_bench_{}", std::process::id());
        let admin = sqlx::PgPool::connect(url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .execute(&admin)
        .await?;
        admin.close().await;
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?
            .options([("search_path", schema.as_str())]);
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
    }

    impl Cleanup {
        pub fn run(self, runtime: &tokio::runtime::Runtime) {
            #[cfg(feature = "postgres")]
            if let Some(pool) = self.postgres {
                let schema = format!("tsg_bench_{}", std::process::id());
                let dropped = runtime.block_on(
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE"
                    )))
                    .execute(&pool),
                );
                if let Err(error) = dropped {
                    eprintln!("could not drop schema {schema}: {error}");
                }
            }
            #[cfg(feature = "redis")]
            if let Some((mut connection, prefix)) = self.redis {
                runtime.block_on(async {
                    let pattern = format!("{{{prefix}}}*");
                    let mut cursor = 0u64;
                    loop {
                        let scanned: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut connection)
                            .await;
                        let Ok((next, keys)) = scanned else { break };
                        if !keys.is_empty() {
                            let _: Result<(), _> = redis::cmd("DEL")
                                .arg(&keys)
                                .query_async(&mut connection)
                                .await;
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                });
            }
            let _ = runtime;
        }
    }
}

/// tower-sessions 0.15 with its memory store, in the same run: a request
/// carrying the session cookie whose handler reads one value (no slide),
/// and the same with `always_save` (a sliding expiry, written every request).
fn tower_sessions_baseline(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
) {
    use tower_sessions::{MemoryStore, SessionManagerLayer};

    let _entered = runtime.enter();
    for (name, always_save) in [
        ("tower_sessions_read", false),
        ("tower_sessions_always_save", true),
    ] {
        let layer = SessionManagerLayer::new(MemoryStore::default())
            .with_secure(false)
            .with_always_save(always_save);
        let mut service = layer.layer(tower_sessions_reader());
        let first = runtime
            .block_on(tower::ServiceExt::oneshot(
                service.clone(),
                Request::new(()),
            ))
            .expect("infallible");
        let cookie = first.headers()[http::header::SET_COOKIE]
            .to_str()
            .expect("ascii cookie")
            .split(';')
            .next()
            .expect("name=value")
            .to_owned();
        let cookie = HeaderValue::from_str(&cookie).expect("cookie is a header");
        group.bench_function(name, |b| {
            b.iter(|| black_box(block_call(runtime, &mut service, &COOKIE, &cookie)))
        });
    }
    // tower-sessions' future needs a runtime: its baseline is the bare
    // service driven the same way.
    let mut bare = reader_free();
    let cookie = HeaderValue::from_static("id=unused");
    group.bench_function("bare_block_on", |b| {
        b.iter(|| black_box(block_call(runtime, &mut bare, &COOKIE, &cookie)))
    });
}

fn reader_free(
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

/// One call driven on the runtime (a cache miss may wait for the store).
fn warm<S, B>(
    runtime: &tokio::runtime::Runtime,
    service: &mut S,
    token: &HeaderValue,
    organization: &HeaderValue,
) -> http::StatusCode
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    runtime
        .block_on(service.call(request(token, organization)))
        .unwrap_or_else(|never| match never {})
        .status()
}

fn block_call<S>(
    runtime: &tokio::runtime::Runtime,
    service: &mut S,
    name: &http::HeaderName,
    value: &HeaderValue,
) -> S::Response
where
    S: Service<Request<()>, Error = Infallible>,
{
    let mut request = Request::new(());
    request.headers_mut().insert(name, value.clone());
    runtime
        .block_on(service.call(request))
        .unwrap_or_else(|never| match never {})
}

/// What the cache-hit path is made of, each measured alone, to say where
/// the layer's time goes.
fn parts(c: &mut Criterion) {
    use std::sync::Arc;
    use tower_saas_guard::session::SessionToken;

    let token = SessionToken::generate().expect("os randomness");
    let text = token.to_string();
    let cache: moka::sync::Cache<SessionToken, Arc<u64>> = moka::sync::Cache::new(100_000);
    cache.insert(token, Arc::new(7));
    let header = HeaderValue::from_static("2026-11-24T01:16:06.123Z");

    let mut group = c.benchmark_group("parts");
    group.bench_function("token_parse", |b| {
        b.iter(|| black_box(SessionToken::parse_bytes(black_box(text.as_bytes()))))
    });
    group.bench_function("system_time_now", |b| {
        b.iter(|| black_box(std::time::SystemTime::now()))
    });
    let coarse = tower_saas_guard::CoarseClock::new();
    group.bench_function("coarse_clock_now", |b| {
        b.iter(|| black_box(tower_saas_guard::Clock::now(&coarse)))
    });
    group.bench_function("moka_sync_get_hit", |b| {
        b.iter(|| black_box(cache.get(black_box(&token))))
    });
    group.bench_function("request_new_alone", |b| {
        b.iter(|| black_box(Request::new(())))
    });
    group.bench_function("request_new_and_first_extension_insert", |b| {
        b.iter(|| {
            let mut request = Request::new(());
            request.extensions_mut().insert(Arc::new(7u64));
            black_box(request)
        })
    });
    // CookieSource's own parser against the `cookie` crate (what
    // tower-cookies and axum-extra use), same header, same rules: exactly
    // one cookie of the name, then the token's shape. Five cookies, the
    // session's third.
    {
        use tower_saas_guard::session::{CookieSource, TokenSource};
        use tower_saas_guard::RequestHead;
        let source = CookieSource::default();
        let request = Request::builder()
            .header(
                COOKIE,
                format!("_ga=GA1.2.3; theme=dark; __Host-session={text}; csrf=abc; lang=en"),
            )
            .body(())
            .expect("a valid request");
        group.bench_function("cookie_find_hand", |b| {
            b.iter(|| black_box(source.token(&RequestHead::of(black_box(&request)))))
        });
        group.bench_function("cookie_find_cookie_crate", |b| {
            b.iter(|| {
                let mut found = None;
                for header in black_box(&request).headers().get_all(COOKIE) {
                    let Ok(header) = header.to_str() else {
                        continue;
                    };
                    for cookie in cookie::Cookie::split_parse(header).flatten() {
                        if cookie.name() == "__Host-session" {
                            if found.is_some() {
                                return black_box(None);
                            }
                            found = Some(SessionToken::parse(cookie.value()));
                        }
                    }
                }
                black_box(found)
            })
        });
        let max_age = std::time::Duration::from_secs(24 * 3600);
        group.bench_function("cookie_render_hand", |b| {
            b.iter(|| black_box(source.set_cookie(black_box(&token), max_age)))
        });
        group.bench_function("cookie_render_cookie_crate", |b| {
            b.iter(|| {
                let cookie =
                    cookie::Cookie::build(("__Host-session", black_box(&token).to_string()))
                        .max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64))
                        .path("/")
                        .http_only(true)
                        .secure(true)
                        .same_site(cookie::SameSite::Lax)
                        .build();
                black_box(HeaderValue::from_str(&cookie.to_string()))
            })
        });
    }
    group.bench_function("response_new_alone", |b| {
        b.iter(|| black_box(Response::new(())))
    });
    group.bench_function("response_new_and_header_insert", |b| {
        b.iter(|| {
            let mut response = Response::new(());
            response.headers_mut().insert(
                tower_saas_guard::session::SESSION_EXPIRES_AT,
                header.clone(),
            );
            black_box(response)
        })
    });
    group.finish();
}

criterion_group!(benches, overhead, parts);
criterion_main!(benches);
