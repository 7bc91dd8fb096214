//! `RedisSessionStore`: one hash per session, owner indexes, Lua scripts.

use std::fmt;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::keys::Keys;
use super::record::{self, MalformedRecord, Problem};
use super::redis_error;
use crate::error::StoreError;
use crate::session::{
    PageRequest, SessionId, SessionOwner, SessionPage, SessionRecord, SessionStore,
};

/// The key prefix when none is set.
pub const DEFAULT_KEY_PREFIX: &str = "tsg:";

/// The expired-retention window when none is set: the layer's default.
pub const DEFAULT_EXPIRED_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Sessions removed per `delete_all` script call (each call is atomic).
const DELETE_BATCH: usize = 500;
/// Index members a `list` script call examines at most.
const LIST_BUDGET: usize = 512;
/// Sessions examined per `purge_expired` script call.
const PURGE_BATCH: usize = 500;

/// The store's Lua scripts, each with the shared helpers in front.
struct Scripts {
    extend: Script,
    delete: Script,
    delete_all: Script,
    list: Script,
    purge: Script,
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("scripts/common.lua"),
            include_str!(concat!("scripts/", $file))
        ))
    };
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    extend: script!("extend.lua"),
    delete: script!("delete.lua"),
    delete_all: script!("delete_all.lua"),
    list: script!("list.lua"),
    purge: script!("purge.lua"),
});

/// A [`SessionStore`] in Redis, for several instances sharing sessions.
///
/// * **One hash per session**, `{prefix}session:<id>`, keyed by the hex of
///   the [`SessionId`] (the token's SHA-256; the token never reaches
///   Redis). Its Redis expiry is `expires_at` + the
///   [expired retention](Self::expired_retention), so an expired session
///   still loads (and answers `session_expired`) during that window, then
///   Redis drops it by itself.
/// * **The extend-only renewal** is one Lua script, atomic on the server:
///   it moves `expires_at` (and the key's expiry) only forward, and only
///   while the session is alive.
/// * **Owner indexes**: a sorted set per organization and per subject, ids
///   scored by `created_at`, so listing reads them in order (Redis orders
///   equal scores by the id's bytes) and revoking everything of an owner
///   reads its index. No `KEYS`, no keyspace `SCAN`, ever. Index members
///   whose session expired out of Redis are dropped when a listing or a
///   revocation meets them, and by the purge.
/// * **The purge** reads a sorted set of every id scored by `expires_at`
///   and deletes the sessions that expired before the given time, with
///   their index entries. Redis expires the session hashes itself; the
///   purge is what keeps the indexes, the expiry set and the index
///   registry from growing, so start the layer's purge task
///   ([`SessionHandle::spawn_purge`](crate::session::SessionHandle::spawn_purge))
///   as with every store.
///
/// The key layout (all keys share the hash tag `{prefix}`):
///
/// | key | type | holds |
/// |---|---|---|
/// | `{prefix}session:<id hex>` | hash | `created_at`, `expires_at` (Unix ms), `organization_id`, `subject` (when set), `payload` (JSON) |
/// | `{prefix}org:<organization>` | sorted set | the organization's session ids by `created_at` |
/// | `{prefix}subject:<subject>` | sorted set | the subject's session ids by `created_at` |
/// | `{prefix}expiry` | sorted set | every session id by `expires_at` |
/// | `{prefix}indexes` | hash | session id → JSON list of the index keys holding it |
///
/// **Redis Cluster**: the braces make the prefix a hash tag, so every key
/// of one store lives in one slot and each script or transaction stays
/// within it (one store is then one shard; give stores different prefixes
/// to spread them). The store works over any [`ConnectionLike`]: pass a
/// cluster connection (the `redis` crate's `cluster-async` feature) to
/// [`new`](Self::new). Needs Redis 6.2 or later (`ZRANGE … BYSCORE`).
///
/// **Retention must match the layer's**: set
/// [`expired_retention`](Self::expired_retention) to the same value as
/// [`SessionRefreshBuilder::expired_retention`](crate::session::SessionRefreshBuilder::expired_retention)
/// (both default to 24 h). A shorter one here makes expired sessions
/// answer `session_not_found` early; a longer one only keeps them longer.
///
/// Clones share the connection. Values this store did not write (bad JSON,
/// missing fields, negative or fractional times, a key of another type)
/// are [`StoreErrorKind::Serialization`](crate::StoreErrorKind::Serialization)
/// errors, never panics; connection failures are
/// [`StoreErrorKind::Backend`](crate::StoreErrorKind::Backend).
#[derive(Clone)]
pub struct RedisSessionStore<C = ConnectionManager> {
    connection: C,
    keys: Keys,
    retention: Duration,
}

impl<C> fmt::Debug for RedisSessionStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("connection", &std::any::type_name::<C>())
            .field("key_prefix", &self.keys.tag())
            .field("expired_retention", &self.retention)
            .finish()
    }
}

impl RedisSessionStore<ConnectionManager> {
    /// Connects to the Redis at `url` (`redis://host:port/db`) with a
    /// [`ConnectionManager`], which reconnects by itself after a lost
    /// connection (see [`from_client`](Self::from_client)). Fails when the
    /// URL is invalid or the server cannot be reached now.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::backend)?;
        Self::from_client(client).await
    }

    /// A store on a [`ConnectionManager`] made from `client` (connecting
    /// now). Fails when the server cannot be reached.
    ///
    /// The manager tries a connection three times (100 ms, then up to 1 s
    /// apart) before it reports a failure, at start-up and after a lost
    /// connection; the next command tries again. Build your own manager and
    /// pass it to [`new`](RedisSessionStore::new) for other settings.
    pub async fn from_client(client: redis::Client) -> Result<Self, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(StoreError::backend)?;
        Ok(Self::new(connection))
    }
}

impl<C> RedisSessionStore<C> {
    /// A store over `connection`: a [`ConnectionManager`] (reconnecting,
    /// what [`connect`](Self::connect) makes), a multiplexed connection,
    /// or a cluster connection. Keys start with the
    /// [default prefix](DEFAULT_KEY_PREFIX) `{tsg:}`.
    pub fn new(connection: C) -> Self {
        Self {
            connection,
            keys: Keys::new(DEFAULT_KEY_PREFIX),
            retention: DEFAULT_EXPIRED_RETENTION,
        }
    }

    /// Puts the store's keys under `prefix` (default `tsg:`), to share a
    /// Redis with other data or other stores. The keys are
    /// `{<prefix>}session:…` and so on: the braces make it a Cluster hash
    /// tag.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.keys = Keys::new(prefix.as_ref());
        self
    }

    /// How long an expired session stays in Redis, answering
    /// `session_expired`, before Redis drops it (default 24 h). Set it to
    /// the layer's
    /// [`expired_retention`](crate::session::SessionRefreshBuilder::expired_retention).
    #[must_use]
    pub fn expired_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The connection the store sends its commands on.
    pub fn connection(&self) -> &C {
        &self.connection
    }

    /// When Redis should drop a session that expires at `expires_at`.
    fn redis_expiry(&self, expires_at: SystemTime) -> u64 {
        crate::unix_millis(expires_at)
            .saturating_add(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX))
    }

    fn malformed(key: impl Into<String>) -> impl FnOnce(Problem) -> StoreError {
        let key = key.into();
        move |problem| MalformedRecord::new(key, problem).into_store_error()
    }
}

#[async_trait]
impl<C> SessionStore for RedisSessionStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn create(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let key = self.keys.session(&record.id);
        let id = record.id.to_string();
        let owners: Vec<String> = [
            record
                .organization_id
                .as_deref()
                .map(SessionOwner::Organization),
            record.subject.as_deref().map(SessionOwner::Subject),
        ]
        .into_iter()
        .flatten()
        .map(|owner| self.keys.owner(owner))
        .collect();

        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        for (field, value) in record::encode(record)? {
            hset.arg(field).arg(value);
        }
        let mut transaction = redis::pipe();
        transaction
            .atomic()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .add_command(hset)
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(self.redis_expiry(record.expires_at))
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.expiry())
            .arg(crate::unix_millis(record.expires_at))
            .arg(&id)
            .ignore();
        if !owners.is_empty() {
            let names = serde_json::to_string(&owners).map_err(StoreError::serialization)?;
            transaction
                .cmd("HSET")
                .arg(self.keys.registry())
                .arg(&id)
                .arg(names)
                .ignore();
            for owner in &owners {
                transaction
                    .cmd("ZADD")
                    .arg(owner)
                    .arg(crate::unix_millis(record.created_at))
                    .arg(&id)
                    .ignore();
            }
        }
        let mut connection = self.connection.clone();
        transaction
            .query_async::<()>(&mut connection)
            .await
            .map_err(redis_error)
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let key = self.keys.session(id);
        let mut connection = self.connection.clone();
        let reply: Value = redis::cmd("HMGET")
            .arg(&key)
            .arg(&record::LOADED[..])
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        match record::decode_loaded(*id, reply) {
            // None of the fields: no such hash, or a hash with only fields
            // this version does not know, which is as unreadable as one
            // missing a field. Telling them apart takes a second round trip,
            // paid only by loads that find nothing (an unknown or purged
            // token, then remembered by the negative cache); a load that
            // finds the record makes one. (Nothing else creates this id's
            // hash while its token is being presented.)
            Ok(None) => {
                let exists: bool = redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .map_err(redis_error)?;
                if exists {
                    Err(Self::malformed(key)(record::Problem::Missing(
                        record::LOADED[0],
                    )))
                } else {
                    Ok(None)
                }
            }
            loaded => loaded.map_err(Self::malformed(key)),
        }
    }

    async fn extend(
        &self,
        id: &SessionId,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        let key = self.keys.session(id);
        let mut connection = self.connection.clone();
        let stored: Value = SCRIPTS
            .extend
            .key(&key)
            .key(self.keys.expiry())
            .arg(id.to_string())
            .arg(crate::unix_millis(expires_at))
            .arg(crate::unix_millis(now))
            .arg(self.redis_expiry(expires_at))
            .invoke_async(&mut connection)
            .await
            .map_err(redis_error)?;
        if stored == Value::Nil {
            return Ok(None);
        }
        record::bytes(stored)
            .and_then(|stored| record::expires_at(&stored))
            .map(Some)
            .map_err(Self::malformed(key))
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let key = self.keys.session(id);
        let mut connection = self.connection.clone();
        let existed: Value = SCRIPTS
            .delete
            .key(&key)
            .key(self.keys.expiry())
            .key(self.keys.registry())
            .arg(id.to_string())
            .invoke_async(&mut connection)
            .await
            .map_err(redis_error)?;
        record::integer(&existed)
            .map(|existed| existed == 1)
            .map_err(Self::malformed(key))
    }

    async fn delete_all(&self, owner: SessionOwner<'_>) -> Result<Vec<SessionId>, StoreError> {
        let index = self.keys.owner(owner);
        let mut connection = self.connection.clone();
        let mut deleted = Vec::new();
        loop {
            let reply: Value = SCRIPTS
                .delete_all
                .key(&index)
                .key(self.keys.expiry())
                .key(self.keys.registry())
                .arg(self.keys.session_prefix())
                .arg(DELETE_BATCH)
                .invoke_async(&mut connection)
                .await
                .map_err(redis_error)?;
            let left = (|| {
                let [ids, left]: [Value; 2] = record::items(reply)?
                    .try_into()
                    .map_err(|_| Problem::Shape)?;
                for id in record::items(ids)? {
                    // Already deleted by the script: a junk index member is
                    // left out (it can never have been cached) rather than
                    // failing and hiding the valid ids caches must drop.
                    match record::id(id) {
                        Ok(id) => deleted.push(id),
                        Err(problem) => tracing::warn!(
                            index = %index,
                            ?problem,
                            "skipped a malformed session id in a Redis index"
                        ),
                    }
                }
                record::integer(&left)
            })()
            .map_err(Self::malformed(index.as_str()))?;
            if left == 0 {
                return Ok(deleted);
            }
        }
    }

    async fn list(
        &self,
        owner: SessionOwner<'_>,
        now: SystemTime,
        page: PageRequest,
    ) -> Result<SessionPage, StoreError> {
        let index = self.keys.owner(owner);
        let session_prefix = self.keys.session_prefix();
        let wanted = page.limit.max(1) as usize + 1;
        let mut after = page.after.map(|cursor| {
            (
                crate::unix_millis(cursor.created_at)
                    .to_string()
                    .into_bytes(),
                cursor.id.to_string().into_bytes(),
            )
        });
        let mut connection = self.connection.clone();
        let mut found = Vec::with_capacity(wanted.min(LIST_BUDGET));
        loop {
            let (after_score, after_id) = after.clone().unwrap_or_default();
            let reply: Value = SCRIPTS
                .list
                .key(&index)
                .key(self.keys.expiry())
                .key(self.keys.registry())
                .arg(&session_prefix)
                .arg(crate::unix_millis(now))
                .arg(wanted - found.len())
                .arg(LIST_BUDGET)
                .arg(after_score)
                .arg(after_id)
                .invoke_async(&mut connection)
                .await
                .map_err(redis_error)?;
            let [records, last_score, last_id, finished]: [Value; 4] = record::items(reply)
                .and_then(|items| items.try_into().map_err(|_| Problem::Shape))
                .map_err(Self::malformed(index.as_str()))?;
            for entry in record::items(records).map_err(Self::malformed(index.as_str()))? {
                let [id, fields]: [Value; 2] = record::items(entry)
                    .and_then(|items| items.try_into().map_err(|_| Problem::Shape))
                    .map_err(Self::malformed(index.as_str()))?;
                let id = record::id(id).map_err(Self::malformed(index.as_str()))?;
                let record =
                    record::decode(id, fields).map_err(Self::malformed(self.keys.session(&id)))?;
                found.push(record);
            }
            let finished = record::integer(&finished).map_err(Self::malformed(index.as_str()))?;
            let last = record::bytes(last_score)
                .and_then(|score| Ok((score, record::bytes(last_id)?)))
                .map_err(Self::malformed(index.as_str()))?;
            if found.len() >= wanted || finished == 1 || last.1.is_empty() {
                break;
            }
            after = Some(last);
        }
        Ok(SessionPage::from_sorted(found, page.limit))
    }

    async fn purge_expired(&self, before: SystemTime) -> Result<u64, StoreError> {
        let expiry = self.keys.expiry();
        let mut connection = self.connection.clone();
        let mut purged = 0;
        loop {
            let reply: Value = SCRIPTS
                .purge
                .key(&expiry)
                .key(self.keys.registry())
                .arg(self.keys.session_prefix())
                .arg(crate::unix_millis(before))
                .arg(PURGE_BATCH)
                .invoke_async(&mut connection)
                .await
                .map_err(redis_error)?;
            let (count, examined) = record::items(reply)
                .and_then(|items| {
                    let [count, examined]: [Value; 2] =
                        items.try_into().map_err(|_| Problem::Shape)?;
                    Ok((record::integer(&count)?, record::integer(&examined)?))
                })
                .map_err(Self::malformed(expiry.as_str()))?;
            purged += u64::try_from(count).unwrap_or(0);
            if examined < PURGE_BATCH as i64 {
                return Ok(purged);
            }
        }
    }
}
