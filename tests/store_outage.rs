//! The stores against real servers that stop and start again mid-run.
//!
//! Each test runs its own server, never the machine's shared ones: a
//! private `redis-server` on a free loopback port (AOF with `appendfsync
//! always`, so what it acknowledged survives), killed with SIGKILL and
//! started again on the same port; a private PostgreSQL cluster in a
//! temporary directory (as the `postgres` user when the tests run as root),
//! stopped with `pg_ctl stop -m immediate` and started again. Both are
//! stopped and their directories removed when the test ends, also when it
//! fails.
//!
//! While a server is down, every request is answered within the store
//! timeout (plus slack for a busy machine), as documented: a cached session
//! is served until its cache TTL, a renewal that falls due fails without
//! losing the session (the old expiry is kept and announced), a cache miss
//! or a read past the TTL is `503 store_unavailable`, creating and revoking
//! report an error; the subscription gate fails closed, serves the last
//! answer for its stale window or fails open, as configured. After the
//! restart the stores come back by themselves: what was stored before the
//! outage is accepted again, nothing was written during it (expiries did
//! not move, the failed creation and billing event left nothing), a due
//! renewal goes through, new sessions and revocations work, and the
//! invalidation channel carries revocations again.
//!
//! Two tests pin down bugs found this way, now fixed: a migration cut off
//! by the store timeout kept PostgreSQL's migration lock, and the first
//! invalidation published after a Redis restart was lost.
//!
//! Time for expiry and renewal is a [`ManualClock`]; the tests wait only
//! for servers to stop and start. Without `redis-server`, the PostgreSQL
//! binaries (`/usr/lib/postgresql/*/bin`) or, as root, `runuser` and a
//! `postgres` user, a test is skipped with a printed reason, except under
//! `CI=true`, where it fails.
#![cfg(any(feature = "postgres", feature = "redis"))]

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{header, Request, Response, StatusCode};
use serde_json::json;
use tower::{service_fn, Layer};
use tower_saas_guard::invalidation::InvalidationChannel;
use tower_saas_guard::session::{
    PageRequest, Session, SessionId, SessionOwner, SessionRefreshLayer, SessionStore, SessionToken,
    SESSION_EXPIRES_AT,
};
use tower_saas_guard::{rfc3339_millis, unix_millis, Clock, ManualClock};

use support::{send, Answer, Echo};

/// The layers' store timeout, short so that an outage costs little.
const STORE_TIMEOUT: Duration = Duration::from_millis(300);
/// Every request must be answered within this, store down or not: the
/// store timeout plus slack for a busy two-core machine.
const ANSWER_WITHIN: Duration = STORE_TIMEOUT.saturating_add(Duration::from_secs(2));
/// How long a server may take to come back, and the stores and channels
/// to reconnect to it.
const RECOVER_WITHIN: Duration = Duration::from_secs(20);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// The wall clock to the second, where the manual clocks start: Redis
/// expiries are real times.
fn start_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_millis(SystemTime::now()) / 1000)
}

/// Reports a missing prerequisite: fails under `CI=true`, else prints why
/// the test is skipped.
fn missing(test: &str, what: &str) {
    let reason = format!("{test}: {what}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}; CI=true requires it");
    }
    eprintln!("skipped {reason}");
}

/// `program` in a directory of `PATH`.
fn on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The last lines of a server's log file, for failure messages.
fn log_tail(path: &std::path::Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A server the test stops and starts.
trait Server {
    /// Stops it abruptly (no clean shutdown, clients are cut off).
    async fn stop(&mut self);
    /// Starts it again on the same port and data, and waits until it
    /// accepts connections.
    async fn start(&mut self);
}

/// Times what the layers and handles answer: each must answer within
/// [`ANSWER_WITHIN`] (nothing hangs); the slowest is reported.
#[derive(Default)]
struct Watch {
    slowest: Mutex<(Duration, String)>,
}

impl Watch {
    async fn within<T>(&self, what: &str, future: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let answer = tokio::time::timeout(ANSWER_WITHIN, future)
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_WITHIN:?}"));
        let took = started.elapsed();
        let mut slowest = self.slowest.lock().unwrap();
        if took > slowest.0 {
            *slowest = (took, what.to_owned());
        }
        answer
    }

    async fn send(&self, what: &str, service: &Echo, request: Request<()>) -> Answer {
        self.within(what, send(service, request)).await
    }

    fn report(&self, test: &str) {
        let (took, what) = &*self.slowest.lock().unwrap();
        eprintln!("{test}: slowest answer {took:?} ({what})");
    }
}

/// Waits until `check` holds, trying every 50 ms for at most `within`;
/// returns how long it took.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_unavailable(answer: &Answer, case: &str) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{case}: {:?}",
        answer.body
    );
    assert_eq!(answer.body["code"], "store_unavailable", "{case}");
    assert!(
        answer.headers.contains_key(header::RETRY_AFTER),
        "{case}: Retry-After"
    );
    assert!(!answer.headers.contains_key(SESSION_EXPIRES_AT), "{case}");
}

// ----------------------------------------------------------------- sessions

/// The inner service answers what the layer put into the request.
fn session_echo(layer: &SessionRefreshLayer) -> Echo {
    let inner = service_fn(|request: Request<()>| async move {
        let session = request.extensions().get::<Session>();
        let body = json!({ "renewed": session.map(Session::renewed) });
        Ok::<_, Infallible>(Response::new(body.to_string()))
    });
    tower::util::BoxCloneSyncService::new(layer.layer(inner))
}

fn with_token(token: &SessionToken) -> Request<()> {
    Request::builder()
        .header("x-session-id", token.to_string())
        .body(())
        .expect("valid request")
}

/// A 200 on the session's `expires_at` (`renewed` or not).
fn assert_admitted(answer: &Answer, expires_at: SystemTime, renewed: bool, case: &str) {
    assert_eq!(answer.status, StatusCode::OK, "{case}: {:?}", answer.body);
    assert_eq!(answer.body["renewed"], renewed, "{case}");
    assert_eq!(
        answer.headers[SESSION_EXPIRES_AT],
        rfc3339_millis(expires_at).as_str(),
        "{case}"
    );
}

fn assert_rejected(answer: &Answer, code: &str, case: &str) {
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "{case}: {:?}",
        answer.body
    );
    assert_eq!(answer.body["code"], code, "{case}");
}

/// `expires_at` as the store holds it (read directly, not through a layer).
async fn stored_expiry(store: &impl SessionStore, id: &SessionId) -> Option<SystemTime> {
    store
        .load(id)
        .await
        .expect("the store answers")
        .map(|record| record.expires_at)
}

/// Two instances (two layers with their own caches) on one store and
/// channel, through an outage of the server behind both.
///
/// Sessions last an hour and are renewed in their last 30 minutes; the
/// cache trusts a copy for 10 minutes (all on a manual clock).
async fn sessions_through_an_outage<S, C>(
    test: &str,
    server: &mut impl Server,
    store: S,
    channel: C,
) where
    S: SessionStore + Clone,
    C: InvalidationChannel + Clone,
{
    let watch = Watch::default();
    let t0 = start_time();
    let clock = ManualClock::new(t0);
    let instance = || {
        SessionRefreshLayer::builder(store.clone())
            .duration(HOUR)
            .refresh_threshold(30 * MINUTE)
            .cache_ttl(10 * MINUTE)
            .store_timeout(STORE_TIMEOUT)
            .clock(clock.clone())
            .invalidation_channel(channel.clone())
            .build()
            .expect("valid configuration")
    };
    let (first, second) = (instance(), instance());
    // A first subscription drops what was cached before it: let both
    // listen before anything is cached.
    eventually("both instances listen", RECOVER_WITHIN, || async {
        [&first, &second].iter().all(|layer| {
            layer
                .handle()
                .channel_status()
                .is_some_and(|status| status.connected)
        })
    })
    .await;
    let one = session_echo(&first);
    let one_validating = session_echo(&first.validate_only());
    let two = session_echo(&second);
    let two_validating = session_echo(&second.validate_only());
    let (handle, other_handle) = (first.handle(), second.handle());

    let due = handle
        .create(Some("org_1"), json!({ "name": "due" }))
        .await
        .expect("create");
    let doomed = handle
        .create(Some("org_1"), json!({ "name": "doomed" }))
        .await
        .expect("create");
    clock.advance(31 * MINUTE);
    // Read again without renewing (its cached copy was older than the
    // TTL): the first instance now holds it fresh, and it is due for
    // renewal (29 minutes left).
    let answer = watch
        .send("validate", &one_validating, with_token(&due.token))
        .await;
    assert_admitted(&answer, due.expires_at, false, "read before the outage");
    let kept = handle
        .create(Some("org_1"), json!({ "name": "kept" }))
        .await
        .expect("create");

    server.stop().await;
    let outage = Instant::now();

    // A cached session is served as long as its copy is fresh.
    for round in 0..3 {
        let answer = watch.send("cache hit", &one, with_token(&kept.token)).await;
        assert_admitted(&answer, kept.expires_at, false, &format!("hit {round}"));
    }
    // A renewal that falls due fails, but the session goes on, on its old
    // expiry; a second later the next request tries again, and fails the
    // same way.
    for round in 0..3 {
        let answer = watch
            .send("renewal due", &one, with_token(&due.token))
            .await;
        assert_admitted(&answer, due.expires_at, false, &format!("due {round}"));
        clock.advance(SECOND + SECOND / 10);
    }
    // A cache miss cannot be answered, for a known or an unknown token.
    let answer = watch
        .send("cache miss", &two, with_token(&kept.token))
        .await;
    assert_unavailable(&answer, "cache miss");
    let stranger = SessionToken::generate().expect("OS randomness");
    let answer = watch
        .send("unknown token", &two, with_token(&stranger))
        .await;
    assert_unavailable(&answer, "unknown token");
    // Creating, revoking and listing report the error.
    let created = watch
        .within(
            "create",
            other_handle.create(Some("org_1"), json!({ "name": "lost" })),
        )
        .await;
    assert!(created.is_err(), "a login while the store is down");
    let revoked = watch
        .within("revoke", other_handle.revoke(&doomed.token))
        .await;
    assert!(revoked.is_err(), "a logout while the store is down");
    let listed = watch
        .within(
            "list",
            handle.list(SessionOwner::Organization("org_1"), PageRequest::first(10)),
        )
        .await;
    assert!(listed.is_err(), "a listing while the store is down");
    // Past the cache TTL a copy is no longer trusted, and the store cannot
    // confirm it.
    clock.set(t0 + 42 * MINUTE);
    for (token, case) in [
        (&kept.token, "kept past the TTL"),
        (&due.token, "due past the TTL"),
    ] {
        let answer = watch.send(case, &one, with_token(token)).await;
        assert_unavailable(&answer, case);
    }

    server.start().await;
    let down_for = outage.elapsed();
    let took = eventually("the store answers again", RECOVER_WITHIN, || async {
        matches!(
            tokio::time::timeout(SECOND, store.load(&due.id)).await,
            Ok(Ok(_))
        )
    })
    .await;
    eprintln!("{test}: down for {down_for:?}; the store answered {took:?} after the restart");

    // Nothing was written during the outage: no expiry moved, and the
    // failed login left no session.
    assert_eq!(
        stored_expiry(&store, &due.id).await,
        Some(due.expires_at),
        "the session due for renewal is stored, on its old expiry"
    );
    assert_eq!(
        stored_expiry(&store, &kept.id).await,
        Some(kept.expires_at),
        "the cached session is stored, on its expiry"
    );
    let page = store
        .list(
            SessionOwner::Organization("org_1"),
            clock.now(),
            PageRequest::first(10),
        )
        .await
        .expect("the store answers");
    let mut stored: Vec<SessionId> = page.sessions.iter().map(|record| record.id).collect();
    let mut expected = vec![due.id, doomed.id, kept.id];
    stored.sort_by_key(SessionId::to_string);
    expected.sort_by_key(SessionId::to_string);
    assert_eq!(stored, expected, "exactly the sessions created before");

    // The session whose renewal failed is renewed by the next request.
    let renewed_to = clock.now() + HOUR;
    let answer = watch
        .send("renewal after", &one, with_token(&due.token))
        .await;
    assert_admitted(&answer, renewed_to, true, "renewal after the restart");
    assert_eq!(stored_expiry(&store, &due.id).await, Some(renewed_to));
    // What was stored before is accepted by both instances.
    for (service, case) in [(&one, "kept, first"), (&two, "kept, second")] {
        let answer = watch.send(case, service, with_token(&kept.token)).await;
        assert_admitted(&answer, kept.expires_at, false, case);
    }
    // The unknown token is unknown (the failed read was not remembered as
    // "unknown"), and a new login works.
    let answer = watch
        .send("unknown after", &two, with_token(&stranger))
        .await;
    assert_rejected(&answer, "session_not_found", "unknown token after");
    let fresh = other_handle
        .create(Some("org_1"), json!({ "name": "fresh" }))
        .await
        .expect("a login after the restart");
    let answer = watch
        .send("new login", &one, with_token(&fresh.token))
        .await;
    assert_admitted(&answer, fresh.expires_at, false, "new login");

    // The channel is back: a logout on one instance reaches the other,
    // which holds the session in its cache, within a second, by a message
    // (not by the cache drop that follows a reconnection). The failed
    // logout during the outage removed nothing.
    let took = eventually("both channels reconnect", RECOVER_WITHIN, || async {
        [&first, &second].iter().all(|layer| {
            layer
                .handle()
                .channel_status()
                .is_some_and(|status| status.connected && status.connections >= 2)
        })
    })
    .await;
    eprintln!("{test}: both channels listening again {took:?} after the store answered");
    let heard = || {
        second
            .handle()
            .channel_status()
            .map_or(0, |status| status.received)
    };
    // Wait until the second instance hears a logout again (its
    // subscription is back), so the logout below checks the one-second
    // propagation and not the reconnection. The first message after the
    // restart is not lost (see
    // `the_first_revocation_after_a_restart_reaches_the_other_instance`).
    eventually("a logout is heard again", RECOVER_WITHIN, || async {
        let before = heard();
        let spare = handle
            .create(Some("org_1"), json!({ "name": "spare" }))
            .await
            .expect("a login");
        assert!(handle.revoke(&spare.token).await.expect("a logout"));
        let heard_of_it = async {
            while heard() == before {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(SECOND, heard_of_it).await.is_ok()
    })
    .await;
    let answer = watch
        .send("doomed", &two_validating, with_token(&doomed.token))
        .await;
    assert_admitted(&answer, doomed.expires_at, false, "doomed, cached");
    let heard_before = heard();
    assert!(handle.revoke(&doomed.token).await.expect("a logout"));
    // Validate-only requests: a renewal would ask the store and learn of
    // the logout without the channel.
    for (service, case) in [
        (&one_validating, "revoked, first"),
        (&two_validating, "revoked, second"),
    ] {
        let took = eventually(case, SECOND, || async {
            send(service, with_token(&doomed.token)).await.status == StatusCode::UNAUTHORIZED
        })
        .await;
        let answer = send(service, with_token(&doomed.token)).await;
        assert_rejected(&answer, "session_not_found", case);
        eprintln!("{test}: {case} after {took:?}");
    }
    assert!(
        heard() > heard_before,
        "the second instance heard of the logout through the channel"
    );
    watch.report(test);
}

// -------------------------------------------------------------------- Redis

#[cfg(feature = "redis")]
mod redis_outage {
    use super::*;

    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    use tower_saas_guard::stores::redis::{RedisInvalidationChannel, RedisSessionStore};

    /// `/usr/bin/redis-server`, else `redis-server` on `PATH`.
    fn redis_server() -> Option<PathBuf> {
        let packaged = PathBuf::from("/usr/bin/redis-server");
        if packaged.is_file() {
            return Some(packaged);
        }
        on_path("redis-server")
    }

    /// A private `redis-server`; killed (and its directory removed) on drop.
    struct RedisServer {
        binary: PathBuf,
        port: u16,
        child: Option<Child>,
        log: PathBuf,
        dir: tempfile::TempDir,
    }

    impl RedisServer {
        /// Starts one on a free port, or `None` (skipped) without the binary.
        async fn start(test: &str) -> Option<Self> {
            let Some(binary) = redis_server() else {
                missing(test, "no redis-server in /usr/bin or on PATH");
                return None;
            };
            let dir = tempfile::Builder::new()
                .prefix("tsg-outage-redis-")
                .tempdir()
                .expect("a temporary directory");
            let mut server = Self {
                binary,
                port: free_port(),
                child: None,
                log: dir.path().join("redis.log"),
                dir,
            };
            server.start().await;
            Some(server)
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        /// Answers a command that needs the data loaded (not `LOADING`).
        async fn ready(&self) -> bool {
            let attempt = async {
                let client = redis::Client::open(self.url())?;
                let mut connection = client.get_multiplexed_async_connection().await?;
                redis::cmd("DBSIZE")
                    .query_async::<i64>(&mut connection)
                    .await
            };
            matches!(tokio::time::timeout(SECOND, attempt).await, Ok(Ok(_)))
        }
    }

    impl Server for RedisServer {
        async fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                child.kill().expect("SIGKILL to redis-server");
                child.wait().expect("redis-server reaped");
            }
        }

        async fn start(&mut self) {
            let child = Command::new(&self.binary)
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "yes"])
                .args(["--appendfsync", "always", "--daemonize", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--logfile")
                .arg(&self.log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            self.child = Some(child);
            let started = Instant::now();
            while !self.ready().await {
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten());
                assert!(
                    exited.is_none() && started.elapsed() < RECOVER_WITHIN,
                    "redis-server on port {} not ready ({exited:?}):\n{}",
                    self.port,
                    log_tail(&self.log)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Regression: the first invalidation published after Redis restarted
    /// reaches the other instances. `RedisInvalidationChannel::publish`
    /// used to send `PUBLISH` once on its `ConnectionManager`, which answers
    /// the first command after a lost connection with the dead
    /// connection's error and only then reconnects: the message was lost,
    /// and other instances kept accepting the revoked session until their
    /// cache TTL. It now sends it again after a connection error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_revocation_after_a_restart_reaches_the_other_instance() {
        let test = "first_revocation_after_restart";
        let Some(mut server) = RedisServer::start(test).await else {
            return;
        };
        let store = RedisSessionStore::connect(&server.url())
            .await
            .expect("a store on the private Redis");
        let channel = RedisInvalidationChannel::connect(&server.url())
            .await
            .expect("a channel on the private Redis");
        let clock = ManualClock::new(start_time());
        let instance = || {
            SessionRefreshLayer::builder(store.clone())
                .store_timeout(STORE_TIMEOUT)
                .clock(clock.clone())
                .invalidation_channel(channel.clone())
                .build()
                .expect("valid configuration")
        };
        let (first, second) = (instance(), instance());
        let listening = |connections: u64| {
            [&first, &second].iter().all(|layer| {
                layer
                    .handle()
                    .channel_status()
                    .is_some_and(|status| status.connected && status.connections >= connections)
            })
        };
        eventually("both instances listen", RECOVER_WITHIN, || async {
            listening(1)
        })
        .await;
        // A logout on the first instance reaches the second, which holds
        // the session in its cache (fresh on the manual clock).
        let logout_reaches_second = || async {
            let created = first.handle().create(None, ()).await.expect("create");
            let cached = second.handle().get(&created.token).await.expect("get");
            assert!(cached.is_some(), "the second instance caches it");
            assert!(first.handle().revoke(&created.token).await.expect("revoke"));
            let started = Instant::now();
            while started.elapsed() < SECOND {
                if second
                    .handle()
                    .get(&created.token)
                    .await
                    .expect("get")
                    .is_none()
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        };
        assert!(logout_reaches_second().await, "before the restart");

        server.stop().await;
        server.start().await;
        eventually("both instances listen again", RECOVER_WITHIN, || async {
            listening(2)
        })
        .await;
        eventually("the store answers again", RECOVER_WITHIN, || async {
            let probe = SessionToken::generate().expect("OS randomness").id();
            matches!(
                tokio::time::timeout(SECOND, store.load(&probe)).await,
                Ok(Ok(_))
            )
        })
        .await;
        assert!(
            logout_reaches_second().await,
            "the first logout after the restart reaches the other instance"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_killed_mid_run_sessions_get_documented_answers_and_recover_after_restart() {
        let test = "redis_killed_mid_run";
        let Some(mut server) = RedisServer::start(test).await else {
            return;
        };
        let store = RedisSessionStore::connect(&server.url())
            .await
            .expect("a store on the private Redis");
        let channel = RedisInvalidationChannel::connect(&server.url())
            .await
            .expect("a channel on the private Redis");
        sessions_through_an_outage(test, &mut server, store, channel).await;
    }
}

// --------------------------------------------------------------- PostgreSQL

#[cfg(feature = "postgres")]
mod postgres_outage {
    use super::*;

    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use sqlx::migrate::Migrate;
    use sqlx::postgres::PgPoolOptions;
    use sqlx::{Connection, PgConnection, PgPool};
    use tower_saas_guard::stores::postgres::{
        PostgresInvalidationChannel, PostgresSessionStore, PostgresSubscriptionStore,
    };
    use tower_saas_guard::subscription::{
        Entitlement, EntitlementLayer, EntitlementPolicy, Entitlements, FromHeader, OnStoreError,
        RequireSubscriptionLayer, Subscription, SubscriptionChange, SubscriptionStatus,
        SubscriptionStore,
    };

    /// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` and
    /// `pg_ctl` (Debian's layout), else the directory of `initdb` on
    /// `PATH`.
    fn postgres_bin() -> Option<PathBuf> {
        let usable = |bin: &Path| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file();
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                usable(&bin).then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin).or_else(|| {
            let bin = on_path("initdb")?.parent()?.to_owned();
            usable(&bin).then_some(bin)
        })
    }

    /// Whether this process runs as root (the owner of `/proc/self`).
    fn running_as_root() -> bool {
        std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
    }

    fn user_exists(name: &str) -> bool {
        Command::new("id")
            .arg("-u")
            .arg(name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// A private PostgreSQL cluster; stopped (and its directory removed)
    /// on drop.
    struct PgCluster {
        bin: PathBuf,
        /// Run the binaries as `postgres` (PostgreSQL refuses root).
        as_postgres: bool,
        port: u16,
        data: PathBuf,
        log: PathBuf,
        running: bool,
        dir: tempfile::TempDir,
    }

    impl PgCluster {
        /// `initdb` and start one on a free port, or `None` (skipped) when
        /// the binaries or the means to run them are missing.
        async fn start(test: &str) -> Option<Self> {
            let Some(bin) = postgres_bin() else {
                missing(
                    test,
                    "no initdb and pg_ctl in /usr/lib/postgresql/*/bin or on PATH",
                );
                return None;
            };
            let as_postgres = running_as_root();
            if as_postgres && !has_runuser() {
                missing(test, "running as root and runuser not found");
                return None;
            }
            if as_postgres && !user_exists("postgres") {
                missing(test, "running as root and no postgres user");
                return None;
            }
            let dir = tempfile::Builder::new()
                .prefix("tsg-outage-pg-")
                .tempdir()
                .expect("a temporary directory");
            if as_postgres {
                let status = Command::new("chown")
                    .arg("postgres:")
                    .arg(dir.path())
                    .status()
                    .expect("chown runs");
                assert!(status.success(), "chown postgres {:?}", dir.path());
            }
            let mut cluster = Self {
                bin,
                as_postgres,
                port: free_port(),
                data: dir.path().join("data"),
                log: dir.path().join("postgres.log"),
                running: false,
                dir,
            };
            let started = Instant::now();
            let mut initdb = cluster.command("initdb");
            initdb.arg("-D").arg(&cluster.data).args([
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "-N",
            ]);
            run(initdb, "initdb").await;
            eprintln!("{test}: initdb took {:?}", started.elapsed());
            cluster.start().await;
            Some(cluster)
        }

        fn url(&self) -> String {
            format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
        }

        /// `program` of the cluster's binaries, as `postgres` when needed.
        fn command(&self, program: &str) -> Command {
            let mut command = if self.as_postgres {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]);
                command.arg(self.bin.join(program));
                command
            } else {
                Command::new(self.bin.join(program))
            };
            command.stdin(Stdio::null());
            command
        }

        fn pg_ctl_stop(&self) -> Command {
            let mut stop = self.command("pg_ctl");
            stop.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"]);
            stop
        }
    }

    fn has_runuser() -> bool {
        Command::new("runuser")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Runs `command` to the end; panics with its output when it fails.
    async fn run(command: Command, what: &str) {
        let output = tokio::process::Command::from(command)
            .output()
            .await
            .unwrap_or_else(|error| panic!("{what} did not run: {error}"));
        assert!(
            output.status.success(),
            "{what} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    impl Server for PgCluster {
        async fn stop(&mut self) {
            run(self.pg_ctl_stop(), "pg_ctl stop -m immediate").await;
            self.running = false;
        }

        async fn start(&mut self) {
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c shared_buffers=16MB -c max_connections=40",
                self.port,
                self.dir.path().display()
            );
            let mut start = self.command("pg_ctl");
            start
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-o", &options, "start"]);
            let output = tokio::process::Command::from(start)
                .output()
                .await
                .expect("pg_ctl runs");
            assert!(
                output.status.success(),
                "pg_ctl start failed ({}):\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                log_tail(&self.log)
            );
            self.running = true;
        }
    }

    impl Drop for PgCluster {
        fn drop(&mut self) {
            if self.running {
                let _ = self
                    .pg_ctl_stop()
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// The crate's default pool (what `PostgresSessionStore::connect`
    /// makes).
    async fn pool(cluster: &PgCluster) -> PgPool {
        PgPool::connect(&cluster.url())
            .await
            .expect("a pool on the private cluster")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_stopped_mid_run_sessions_get_documented_answers_and_recover_after_restart() {
        let test = "postgres_sessions_stopped_mid_run";
        let Some(mut cluster) = PgCluster::start(test).await else {
            return;
        };
        let pool = pool(&cluster).await;
        let store = PostgresSessionStore::new(pool.clone());
        store.migrate().await.expect("migrations");
        let channel = PostgresInvalidationChannel::new(pool);
        sessions_through_an_outage(test, &mut cluster, store, channel).await;
    }

    /// Advisory locks held by connections that are idle (no migration
    /// running on them).
    async fn idle_advisory_locks(admin: &PgPool) -> Vec<i32> {
        sqlx::query_scalar(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE l.locktype = 'advisory' AND l.granted AND a.state = 'idle'",
        )
        .fetch_all(admin)
        .await
        .expect("pg_locks")
    }

    /// Regression: the automatic migration takes sqlx's session-level
    /// advisory lock (`pg_advisory_lock`) on a
    /// pooled connection and releases it at the end
    /// (`stores::sql::apply_pending`). When the layer's store timeout drops
    /// that future between the two (here: while it waits for the lock
    /// another instance holds, as when instances start together or a
    /// server comes back), the lock request stays queued on the server,
    /// is granted once the other instance finishes. The connection used
    /// to go back to the pool holding it, and every other instance's
    /// migration then waited for that connection to close (sqlx's idle
    /// timeout, 10 min; for a connection in use, its max lifetime, 30 min),
    /// all their requests answering `store_unavailable` meanwhile. The
    /// migration's connection is now closed afterwards
    /// (`PoolConnection::close_on_drop`), never returned to the pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_migration_cut_off_by_the_store_timeout_leaves_no_migration_lock_behind() {
        let test = "migration_cut_off";
        let Some(cluster) = PgCluster::start(test).await else {
            return;
        };
        let admin = pool(&cluster).await;
        // Another instance is migrating: it holds the migration lock.
        let mut other = PgConnection::connect(&cluster.url())
            .await
            .expect("a connection");
        other.lock().await.expect("the migration lock");
        // This instance's first request runs the migration, which waits
        // for the lock and is cut off by the store timeout.
        let sessions =
            SessionRefreshLayer::builder(PostgresSessionStore::new(pool(&cluster).await))
                .store_timeout(STORE_TIMEOUT)
                .build()
                .expect("valid configuration");
        let service = session_echo(&sessions);
        let stranger = SessionToken::generate().expect("OS randomness");
        let watch = Watch::default();
        let answer = watch
            .send("while another migrates", &service, with_token(&stranger))
            .await;
        assert_unavailable(&answer, "while another instance migrates");
        // The other instance is done: nothing may keep the lock now.
        other.unlock().await.expect("unlock");
        other.close().await.expect("close");
        // The cut-off backend exits once granted the lock and told its
        // client is gone, which may take a moment on a busy machine (the
        // bug kept it for as long as the pool kept the connection: minutes).
        eventually(
            "no idle connection holds the migration lock",
            Duration::from_secs(5),
            || async { idle_advisory_locks(&admin).await.is_empty() },
        )
        .await;
        let answer = watch.send("after", &service, with_token(&stranger)).await;
        assert_rejected(&answer, "session_not_found", "after the other migrated");
        // A third instance starting now must be able to migrate.
        let third = PgPoolOptions::new()
            .max_connections(2)
            .connect(&cluster.url())
            .await
            .expect("a pool");
        let migrated =
            tokio::time::timeout(5 * SECOND, PostgresSessionStore::new(third).migrate()).await;
        assert!(
            matches!(migrated, Ok(Ok(()))),
            "a third instance migrates: {migrated:?}"
        );
    }

    // ------------------------------------------------------ subscriptions

    fn active(organization_id: &str, period_end: SystemTime) -> Subscription {
        Subscription {
            organization_id: organization_id.to_owned(),
            subscription_id: format!("sub_{organization_id}"),
            status: SubscriptionStatus::Active,
            plan: "pro".to_owned(),
            current_period_end: Some(period_end),
            trial_end: None,
        }
    }

    /// A gate over `entitlements` (hard: `RequireSubscriptionLayer`; soft:
    /// `EntitlementLayer`) whose inner service answers the decision.
    fn gate(entitlements: &Entitlements, hard: bool) -> Echo {
        let inner = service_fn(|request: Request<()>| async move {
            let decision = request.extensions().get::<Entitlement>();
            let body = json!({
                "entitled": decision.map(Entitlement::is_entitled),
                "reason": decision.map(|decision| decision.reason().as_str()),
            });
            Ok::<_, Infallible>(Response::new(body.to_string()))
        });
        let organization = FromHeader::new(http::HeaderName::from_static("x-organization-id"));
        let policy = EntitlementPolicy::new();
        if hard {
            let layer = RequireSubscriptionLayer::new(entitlements.clone(), policy)
                .organization(organization);
            tower::util::BoxCloneSyncService::new(layer.layer(inner))
        } else {
            let layer =
                EntitlementLayer::new(entitlements.clone(), policy).organization(organization);
            tower::util::BoxCloneSyncService::new(layer.layer(inner))
        }
    }

    fn for_org(organization_id: &str) -> Request<()> {
        Request::builder()
            .header("x-organization-id", organization_id)
            .body(())
            .expect("valid request")
    }

    fn assert_decision(answer: &Answer, entitled: bool, reason: &str, case: &str) {
        assert_eq!(answer.status, StatusCode::OK, "{case}: {:?}", answer.body);
        assert_eq!(
            answer.body,
            json!({ "entitled": entitled, "reason": reason }),
            "{case}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_stopped_mid_run_subscription_gates_fail_closed_stale_or_open_and_recover() {
        let test = "postgres_subscriptions_stopped_mid_run";
        let Some(mut cluster) = PgCluster::start(test).await else {
            return;
        };
        let watch = Watch::default();
        let store = PostgresSubscriptionStore::new(pool(&cluster).await);
        store.migrate().await.expect("migrations");
        let t0 = start_time();
        let clock = ManualClock::new(t0);
        let period_end = t0 + 30 * 24 * HOUR;
        for organization in ["org_pro", "org_cold"] {
            store
                .upsert(&active(organization, period_end))
                .await
                .expect("upsert");
        }
        // Positive TTL 60 s, negative 10 s (the defaults).
        let entitlements = |on_error: OnStoreError| {
            Entitlements::builder(store.clone())
                .store_timeout(STORE_TIMEOUT)
                .on_store_error(on_error)
                .clock(clock.clone())
                .build()
                .expect("valid configuration")
        };
        let closed = entitlements(OnStoreError::FailClosed);
        let stale = entitlements(OnStoreError::ServeStale(5 * MINUTE));
        let open = entitlements(OnStoreError::FailOpen);
        let (closed_gate, closed_soft) = (gate(&closed, true), gate(&closed, false));
        let (stale_gate, open_gate) = (gate(&stale, true), gate(&open, true));
        let gates = [
            (&closed_gate, "fail closed"),
            (&stale_gate, "serve stale"),
            (&open_gate, "fail open"),
        ];
        for (gate, case) in gates {
            let answer = watch.send(case, gate, for_org("org_pro")).await;
            assert_decision(&answer, true, "active", case);
        }
        let answer = watch.send("free", &closed_gate, for_org("org_free")).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        let upgrade = SubscriptionChange::new(active("org_upgrade", period_end), t0);

        cluster.stop().await;
        let outage = Instant::now();

        // Cached answers, positive or negative, hold within their TTL.
        for (gate, case) in gates {
            let answer = watch.send(case, gate, for_org("org_pro")).await;
            assert_decision(&answer, true, "active", &format!("{case}, cached"));
        }
        let answer = watch
            .send("free, cached", &closed_gate, for_org("org_free"))
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{:?}", answer.body);
        assert_eq!(answer.body["code"], "subscription_required");
        // An organization never read: each policy answers its way.
        let answer = watch
            .send("cold, closed", &closed_gate, for_org("org_cold"))
            .await;
        assert_unavailable(&answer, "cold, fail closed");
        let answer = watch
            .send("cold, soft", &closed_soft, for_org("org_cold"))
            .await;
        assert_decision(&answer, false, "store_unavailable", "cold, soft gate");
        let answer = watch
            .send("cold, stale", &stale_gate, for_org("org_cold"))
            .await;
        assert_unavailable(&answer, "cold, nothing stale to serve");
        let answer = watch
            .send("cold, open", &open_gate, for_org("org_cold"))
            .await;
        assert_decision(&answer, true, "fail_open", "cold, fail open");
        // A billing event cannot be applied.
        let applied = watch.within("apply", closed.apply(&upgrade)).await;
        assert!(applied.is_err(), "a billing event while the store is down");
        // Past the positive TTL: closed refuses, stale serves the last
        // answer, open lets through.
        clock.advance(61 * SECOND);
        let answer = watch
            .send("pro, closed", &closed_gate, for_org("org_pro"))
            .await;
        assert_unavailable(&answer, "past the TTL, fail closed");
        let answer = watch
            .send("pro, soft", &closed_soft, for_org("org_pro"))
            .await;
        assert_decision(&answer, false, "store_unavailable", "past the TTL, soft");
        for _ in 0..2 {
            let answer = watch
                .send("pro, stale", &stale_gate, for_org("org_pro"))
                .await;
            assert_decision(&answer, true, "active", "past the TTL, serve stale");
            clock.advance(SECOND + SECOND / 10);
        }
        let answer = watch
            .send("pro, open", &open_gate, for_org("org_pro"))
            .await;
        assert_decision(&answer, true, "fail_open", "past the TTL, fail open");
        // Past the stale window, serve-stale closes too.
        clock.set(t0 + 60 * SECOND + 5 * MINUTE + SECOND);
        let answer = watch
            .send("pro, too stale", &stale_gate, for_org("org_pro"))
            .await;
        assert_unavailable(&answer, "past the stale window");

        cluster.start().await;
        let down_for = outage.elapsed();
        let took = eventually("the store answers again", RECOVER_WITHIN, || async {
            matches!(
                tokio::time::timeout(SECOND, store.subscriptions("org_pro")).await,
                Ok(Ok(_))
            )
        })
        .await;
        eprintln!("{test}: down for {down_for:?}; the store answered {took:?} after the restart");

        // The failed billing event wrote nothing; every policy decides
        // from the store again.
        let stored = store.subscriptions("org_upgrade").await.expect("read");
        assert!(stored.is_empty(), "{stored:?}");
        for (gate, case) in gates {
            let answer = watch.send(case, gate, for_org("org_pro")).await;
            assert_decision(&answer, true, "active", &format!("{case}, after"));
            let answer = watch.send(case, gate, for_org("org_cold")).await;
            assert_decision(&answer, true, "active", &format!("{case}, cold after"));
        }
        let answer = watch
            .send("upgrade, before", &closed_gate, for_org("org_upgrade"))
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{:?}", answer.body);
        assert!(closed
            .apply(&upgrade)
            .await
            .expect("a billing event after the restart")
            .is_applied());
        let answer = watch
            .send("upgrade, after", &closed_gate, for_org("org_upgrade"))
            .await;
        assert_decision(&answer, true, "active", "the upgrade is seen at once");
        watch.report(test);
    }
}
