//! A real Redis for the Redis store and channel tests.
//!
//! Each test gets its own key prefix, channel name and pub/sub users, and
//! removes its keys and users at the end ([`RedisFixture::finish`], or on
//! drop if the test panicked). Where Redis cannot be reached the test is
//! skipped with a printed reason, except under `CI=true`, where it fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::FromRedisValue;
use tower_saas_guard::session::SessionId;
use tower_saas_guard::stores::redis::{RedisInvalidationChannel, RedisSessionStore};

/// `REDIS_URL`, or the loopback default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// One test's share of the Redis server.
pub struct RedisFixture {
    /// This test's key prefix (the store wraps it in braces).
    pub prefix: String,
    /// A client for the server.
    pub client: redis::Client,
    /// A connection for the test's own commands.
    pub connection: ConnectionManager,
    users: Mutex<Vec<String>>,
    finished: bool,
}

/// Connects to Redis, or returns `None` (test skipped) when it is not
/// there; panics instead under `CI=true`.
pub async fn redis_fixture(test: &str) -> Option<RedisFixture> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let url = redis_url();
    let connected = async {
        let client = redis::Client::open(url.as_str())?;
        // A plain connection first: it fails at once where nothing listens
        // (the manager would retry for seconds).
        tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
        let connection =
            tokio::time::timeout(Duration::from_secs(3), client.get_connection_manager())
                .await
                .map_err(|_| {
                    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
                })??;
        Ok::<_, redis::RedisError>((client, connection))
    }
    .await;
    let (client, connection) = match connected {
        Ok(connected) => connected,
        Err(error) => {
            let reason = format!("{test}: Redis at {url} unreachable ({error})");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{reason}; CI=true requires it");
            }
            eprintln!("skipped {reason}");
            return None;
        }
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    let prefix = format!(
        "tsg-test-{}-{}-{nanos:x}:",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    Some(RedisFixture {
        prefix,
        client,
        connection,
        users: Mutex::new(Vec::new()),
        finished: false,
    })
}

impl RedisFixture {
    /// A store under this test's prefix, with the default 24 h retention.
    pub fn store(&self) -> RedisSessionStore {
        RedisSessionStore::new(self.connection.clone()).key_prefix(&self.prefix)
    }

    /// This test's channel name.
    pub fn channel_name(&self) -> String {
        format!("{}invalidation", self.prefix)
    }

    /// A channel on this test's channel name, connecting as its own user
    /// `name` (so a test can kill exactly its pub/sub connections).
    pub async fn channel_as(&self, name: &str) -> RedisInvalidationChannel {
        RedisInvalidationChannel::new(self.client_as(name).await).channel_name(self.channel_name())
    }

    /// A client that connects as a Redis user of its own, made for this
    /// test (and deleted at the end).
    pub async fn client_as(&self, name: &str) -> redis::Client {
        let user = format!("{}{name}", self.prefix);
        let password = format!("pw-{user}");
        self.query::<()>(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&user)
                .arg("on")
                .arg(format!(">{password}"))
                .arg("~*")
                .arg("&*")
                .arg("+@all"),
        )
        .await;
        self.users.lock().unwrap().push(user.clone());
        let info = self.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_username(&user)
            .set_password(&password);
        redis::Client::open(info.set_redis_settings(settings)).expect("client for a test user")
    }

    /// Kills the pub/sub connections of user `name`; returns how many.
    pub async fn kill_pubsub_of(&self, name: &str) -> i64 {
        self.kill_connections_of(name, "pubsub").await
    }

    /// Kills the connections of type `kind` (`normal`, `pubsub`) of user
    /// `name`; returns how many.
    pub async fn kill_connections_of(&self, name: &str, kind: &str) -> i64 {
        let user = format!("{}{name}", self.prefix);
        self.query(
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("USER")
                .arg(user)
                .arg("TYPE")
                .arg(kind),
        )
        .await
    }

    /// Runs a command on the test's connection; panics on a Redis error.
    pub async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let mut connection = self.connection.clone();
        command
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{command:?} failed: {error}"))
    }

    /// The store's key of session `id` (see the documented layout).
    pub fn session_key(&self, id: &SessionId) -> String {
        format!("{{{}}}session:{id}", self.prefix)
    }

    /// The store's key of another kind (`org:acme`, `expiry`, `indexes`).
    pub fn key(&self, rest: &str) -> String {
        format!("{{{}}}{rest}", self.prefix)
    }

    /// Every key under this test's prefix (a `SCAN`, which tests may use).
    pub async fn keys(&self) -> Vec<Vec<u8>> {
        let connection = self.connection.clone();
        scan(&self.prefix, |command| {
            let mut connection = connection.clone();
            async move { command.query_async(&mut connection).await }
        })
        .await
        .expect("SCAN")
    }

    /// Every key under the prefix with its contents, whatever its type:
    /// (key, [values…]) with hash fields, set members and scores included.
    pub async fn dump(&self) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        let mut dump = Vec::new();
        for key in self.keys().await {
            let kind: String = self.query(redis::cmd("TYPE").arg(&key)).await;
            let contents: Vec<Vec<u8>> = match kind.as_str() {
                "string" => vec![self.query(redis::cmd("GET").arg(&key)).await],
                "hash" => self.query(redis::cmd("HGETALL").arg(&key)).await,
                "zset" => {
                    self.query(
                        redis::cmd("ZRANGE")
                            .arg(&key)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES"),
                    )
                    .await
                }
                "set" => self.query(redis::cmd("SMEMBERS").arg(&key)).await,
                "list" => {
                    self.query(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1))
                        .await
                }
                "none" => Vec::new(),
                other => panic!("unexpected key type {other}"),
            };
            dump.push((key, contents));
        }
        dump
    }

    /// Removes this test's keys and users, then checks that none is left.
    pub async fn finish(mut self) {
        for key in self.keys().await {
            self.query::<i64>(redis::cmd("DEL").arg(key)).await;
        }
        let users = std::mem::take(&mut *self.users.lock().unwrap());
        for user in users {
            self.query::<i64>(redis::cmd("ACL").arg("DELUSER").arg(user))
                .await;
        }
        assert!(
            self.keys().await.is_empty(),
            "keys left under {}",
            self.prefix
        );
        self.finished = true;
    }
}

impl Drop for RedisFixture {
    /// A test that panicked still removes its keys and users (blocking,
    /// best effort).
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(mut connection) = self.client.get_connection() else {
            return;
        };
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<Vec<u8>>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern(&self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut connection)
            else {
                break;
            };
            for key in keys {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(key).query(&mut connection);
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for user in self.users.lock().unwrap().drain(..) {
            let _: redis::RedisResult<i64> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(user)
                .query(&mut connection);
        }
    }
}

/// The `SCAN MATCH` pattern of a prefix's keys (`{prefix}*`).
fn pattern(prefix: &str) -> String {
    format!("{{{prefix}}}*")
}

async fn scan<F, Fut>(prefix: &str, query: F) -> redis::RedisResult<Vec<Vec<u8>>>
where
    F: Fn(redis::Cmd) -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<(u64, Vec<Vec<u8>>)>>,
{
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern(prefix))
            .arg("COUNT")
            .arg(1000);
        let (next, found) = query(command).await?;
        keys.extend(found);
        cursor = next;
        if cursor == 0 {
            keys.sort();
            keys.dedup();
            return Ok(keys);
        }
    }
}

/// The bytes a base64url text (no padding) encodes.
pub fn base64url_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut count = 0;
    let mut bytes = Vec::new();
    for character in text.bytes() {
        let value = ALPHABET
            .iter()
            .position(|&letter| letter == character)
            .expect("base64url character") as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    bytes
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
