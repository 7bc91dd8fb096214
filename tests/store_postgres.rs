//! The PostgreSQL stores and the `LISTEN/NOTIFY` channel against a real
//! server, each test in its own schema: every store operation, malformed
//! rows, migrations, no token in clear, and invalidation between two
//! instances across a killed listener connection.
#![cfg(feature = "postgres")]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use tower_saas_guard::invalidation::{InvalidationChannel, InvalidationStream};
use tower_saas_guard::session::{
    PageRequest, SessionHandle, SessionOwner, SessionRefreshLayer, SessionStore, SessionToken,
};
use tower_saas_guard::stores::postgres::{
    self, PostgresInvalidationChannel, PostgresSessionStore, PostgresSubscriptionStore,
};
use tower_saas_guard::stores::RowError;
use tower_saas_guard::subscription::SubscriptionStore;
use tower_saas_guard::{StoreError, StoreErrorKind};

use support::services::{contains, decode_base64url, hex, unique, with_pg_schema, PgSchema};
use support::store_cases::{self as cases, random_id};

fn row_error(error: &StoreError) -> &RowError {
    assert_eq!(error.kind(), StoreErrorKind::Serialization, "{error:?}");
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<RowError>())
        .expect("a RowError source")
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn create_and_load_round_trip() {
    with_pg_schema(|schema| async move {
        let store = PostgresSessionStore::new(schema.pool);
        cases::create_and_load_round_trip(&store).await;
    })
    .await;
}

#[tokio::test]
async fn extend_moves_only_forward_and_never_revives() {
    with_pg_schema(|schema| async move {
        let store = PostgresSessionStore::new(schema.pool);
        cases::extend_moves_only_forward_and_never_revives(&store).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_extends_keep_the_maximum() {
    with_pg_schema(|schema| async move {
        cases::concurrent_extends_keep_the_maximum(PostgresSessionStore::new(schema.pool)).await;
    })
    .await;
}

#[tokio::test]
async fn delete_reports_whether_it_existed() {
    with_pg_schema(|schema| async move {
        let store = PostgresSessionStore::new(schema.pool);
        cases::delete_reports_whether_it_existed(&store).await;
    })
    .await;
}

#[tokio::test]
async fn delete_all_returns_exactly_the_owners_ids() {
    with_pg_schema(|schema| async move {
        let store = PostgresSessionStore::new(schema.pool);
        cases::delete_all_returns_exactly_the_owners_ids(&store).await;
    })
    .await;
}

#[tokio::test]
async fn list_pages_in_order_with_ties_and_skips_expired() {
    with_pg_schema(|schema| async move {
        let store = PostgresSessionStore::new(schema.pool);
        cases::list_pages_in_order_with_ties_and_skips_expired(&store).await;
    })
    .await;
}

#[tokio::test]
async fn purge_deletes_only_what_expired_before() {
    with_pg_schema(|schema| async move {
        let store = PostgresSessionStore::new(schema.pool);
        cases::purge_deletes_only_what_expired_before(&store).await;
    })
    .await;
}

#[tokio::test]
async fn subscriptions_upsert_replace_and_keep_several() {
    with_pg_schema(|schema| async move {
        let store = PostgresSubscriptionStore::new(schema.pool);
        cases::subscriptions_upsert_replace_and_keep_several(&store).await;
    })
    .await;
}

#[tokio::test]
async fn the_tables_live_in_the_schema_of_the_search_path() {
    with_pg_schema(|schema| async move {
        PostgresSessionStore::new(schema.pool.clone())
            .migrate()
            .await
            .expect("migrate");
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = $1 ORDER BY table_name",
        )
        .bind(&schema.name)
        .fetch_all(&schema.admin)
        .await
        .expect("tables");
        assert_eq!(
            tables,
            [
                "_tower_saas_guard_migrations",
                "tower_saas_guard_sessions",
                "tower_saas_guard_subscription_event_times",
                "tower_saas_guard_subscription_events",
                "tower_saas_guard_subscriptions"
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn malformed_rows_are_serialization_errors_not_panics() {
    with_pg_schema(|schema| async move {
        let store = PostgresSessionStore::new(schema.pool.clone());
        store.migrate().await.expect("migrate");
        let insert = "INSERT INTO tower_saas_guard_sessions \
             (id, organization_id, subject, created_at, expires_at, payload) \
             VALUES ($1, $2, NULL, $3, $4, $5)";
        let far = 4_000_000_000_000i64;

        sqlx::query(insert)
            .bind(vec![1u8, 2, 3, 4, 5])
            .bind("bad-id")
            .bind(1i64)
            .bind(far)
            .bind("{}")
            .execute(&schema.pool)
            .await
            .expect("insert");
        let error = store
            .list(
                SessionOwner::Organization("bad-id"),
                support::epoch(),
                PageRequest::first(10),
            )
            .await
            .unwrap_err();
        assert!(matches!(row_error(&error), RowError::IdLength(5)));

        let negative = random_id();
        sqlx::query(insert)
            .bind(negative.as_bytes().to_vec())
            .bind("acme")
            .bind(-1i64)
            .bind(far)
            .bind("{}")
            .execute(&schema.pool)
            .await
            .expect("insert");
        let error = store.load(&negative).await.unwrap_err();
        assert!(matches!(
            row_error(&error),
            RowError::Timestamp {
                column: "created_at",
                value: -1
            }
        ));

        let not_json = random_id();
        sqlx::query(insert)
            .bind(not_json.as_bytes().to_vec())
            .bind("acme")
            .bind(1i64)
            .bind(far)
            .bind("[1, 2")
            .execute(&schema.pool)
            .await
            .expect("insert");
        let error = store.load(&not_json).await.unwrap_err();
        assert!(matches!(row_error(&error), RowError::Payload(_)));

        let good = cases::record(Some("bad-id"), None, support::epoch());
        store.create(&good).await.expect("create");
        let deleted = store
            .delete_all(SessionOwner::Organization("bad-id"))
            .await
            .expect("delete_all");
        assert_eq!(deleted, [good.id]);
        assert_eq!(
            count(
                &schema.pool,
                "SELECT count(*) FROM tower_saas_guard_sessions WHERE organization_id = 'bad-id'"
            )
            .await,
            0
        );

        let subscriptions = PostgresSubscriptionStore::new(schema.pool.clone());
        sqlx::query(
            "INSERT INTO tower_saas_guard_subscriptions \
             (organization_id, subscription_id, status, plan) VALUES ('acme', 'sub_1', 'lifetime', 'pro')",
        )
        .execute(&schema.pool)
        .await
        .expect("insert");
        let error = subscriptions.subscriptions("acme").await.unwrap_err();
        assert!(matches!(row_error(&error), RowError::Status(_)));
    })
    .await;
}

#[tokio::test]
async fn no_token_in_clear_in_any_row() {
    with_pg_schema(|schema| async move {
        let store = PostgresSessionStore::new(schema.pool.clone());
        let subscriptions = PostgresSubscriptionStore::new(schema.pool.clone());
        cases::subscriptions_upsert_replace_and_keep_several(&subscriptions).await;
        let layer = SessionRefreshLayer::new(store);
        let mut tokens = Vec::new();
        for i in 0..5 {
            let created = layer
                .handle()
                .create_for(Some("acme"), Some(&format!("user-{i}")), json!({ "i": i }))
                .await
                .expect("create");
            tokens.push(created.token);
        }
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
        )
        .bind(&schema.name)
        .fetch_all(&schema.admin)
        .await
        .expect("tables");
        assert_eq!(tables.len(), 5);
        let mut rows = String::new();
        for table in tables {
            // Each row as text (bytea in hex, `\x…`).
            let sql = format!("SELECT t::text FROM \"{}\".\"{table}\" t", schema.name);
            let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(&schema.admin)
                .await
                .expect("rows");
            rows.extend(texts);
        }
        let rows = rows.to_lowercase();
        for token in &tokens {
            let text = token.to_string();
            let raw = decode_base64url(&text);
            assert_eq!(raw.len(), 32);
            // The reading works: the id (the token's hash) is found.
            assert!(rows.contains(&hex(token.id().as_bytes())));
            assert!(!rows.contains(&text.to_lowercase()), "token text stored");
            assert!(!rows.contains(&hex(&raw)), "token bytes stored");
            assert!(
                !rows.contains(&hex(text.as_bytes())),
                "token text stored as bytes"
            );
            assert!(!contains(rows.as_bytes(), &raw));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_starting_together_migrate_once() {
    with_pg_schema(|schema| async move {
        let mut tasks = Vec::new();
        for i in 0..6 {
            let pool = schema.new_pool().await;
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    PostgresSessionStore::new(pool)
                        .load(&random_id())
                        .await
                        .map(drop)
                } else {
                    PostgresSubscriptionStore::new(pool)
                        .subscriptions("acme")
                        .await
                        .map(drop)
                }
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("first use");
        }
        let applied: Vec<(i64, bool)> = sqlx::query_as(
            "SELECT version, success FROM _tower_saas_guard_migrations ORDER BY version",
        )
        .fetch_all(&schema.pool)
        .await
        .expect("applied");
        assert_eq!(applied, [(1, true), (2, true), (3, true)]);
    })
    .await;
}

#[tokio::test]
async fn migrations_run_once_per_store() {
    with_pg_schema(|schema| async move {
        let store = PostgresSessionStore::new(schema.pool.clone());
        store.load(&random_id()).await.expect("first use migrates");
        let tracked = "SELECT count(*) FROM pg_tables \
             WHERE tablename = '_tower_saas_guard_migrations' AND schemaname = current_schema()";
        assert_eq!(count(&schema.pool, tracked).await, 1);
        sqlx::query("DROP TABLE _tower_saas_guard_migrations")
            .execute(&schema.pool)
            .await
            .expect("drop");
        store.load(&random_id()).await.expect("second use");
        store
            .clone()
            .load(&random_id())
            .await
            .expect("a clone's use");
        assert_eq!(
            count(&schema.pool, tracked).await,
            0,
            "migrations ran again"
        );
        PostgresSubscriptionStore::new(schema.pool.clone())
            .subscriptions("acme")
            .await
            .expect("a new store migrates");
        assert_eq!(count(&schema.pool, tracked).await, 1);
    })
    .await;
}

#[tokio::test]
async fn skipped_migrations_leave_the_schema_alone() {
    with_pg_schema(|schema| async move {
        let store = PostgresSessionStore::new(schema.pool.clone()).skip_migrations();
        let error = store.load(&random_id()).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Backend);
        assert_eq!(
            count(
                &schema.pool,
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
            )
            .await,
            0
        );
        store.migrate().await.expect("explicit migrate");
        assert_eq!(store.load(&random_id()).await.expect("load"), None);
    })
    .await;
}

#[test]
fn the_embedded_migrations_are_the_files_in_migrations_postgres() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .expect("migrations/postgres")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    let migrator = postgres::migrator();
    let embedded: Vec<_> = migrator.iter().collect();
    assert_eq!(embedded.len(), files.len());
    assert!(files.len() >= 2);
    for (migration, path) in embedded.into_iter().zip(files) {
        let name = path.file_stem().expect("name").to_str().expect("UTF-8");
        let (version, description) = name.split_once('_').expect("VERSION_DESCRIPTION");
        assert_eq!(migration.version, version.parse::<i64>().expect("version"));
        assert_eq!(migration.description, description.replace('_', " "));
        assert_eq!(
            migration.sql.as_str(),
            std::fs::read_to_string(&path).expect("file")
        );
    }
}

// ---- The LISTEN/NOTIFY channel ----

/// How long a message or a reconnection may take before a test fails.
const PATIENCE: Duration = Duration::from_secs(10);

async fn next_message(stream: &mut InvalidationStream) -> Option<String> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the stream neither yielded nor ended in time")
}

/// Terminates the backends named `application_name`, waiting for one to
/// exist.
async fn kill_listener(schema: &PgSchema, application_name: &str) {
    let deadline = Instant::now() + PATIENCE;
    while schema.terminate(application_name).await == 0 {
        assert!(
            Instant::now() < deadline,
            "no backend named {application_name}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_message_published_by_one_channel_reaches_the_other() {
    with_pg_schema(|schema| async move {
        let name = unique("tsg_test_channel_");
        let listening = unique("tsg_listener_");
        let receiver = PostgresInvalidationChannel::new(schema.pool.clone())
            .channel_name(name.as_str())
            .listener_application_name(listening.as_str());
        let sender =
            PostgresInvalidationChannel::new(schema.new_pool().await).channel_name(name.as_str());
        let other_channel = PostgresInvalidationChannel::new(schema.pool.clone())
            .channel_name(unique("tsg_test_channel_"));

        let mut stream = receiver.subscribe().await.expect("subscribe");
        other_channel.publish("not for you").await.expect("publish");
        sender.publish("first").await.expect("publish");
        sender.publish("second").await.expect("publish");
        assert_eq!(next_message(&mut stream).await.as_deref(), Some("first"));
        assert_eq!(next_message(&mut stream).await.as_deref(), Some("second"));
        let longest = "x".repeat(tower_saas_guard::invalidation::MAX_MESSAGE_BYTES);
        sender.publish(&longest).await.expect("publish the longest");
        assert_eq!(next_message(&mut stream).await, Some(longest));
    })
    .await;
}

#[tokio::test]
async fn the_stream_ends_when_the_listening_backend_is_killed_and_a_new_one_receives() {
    with_pg_schema(|schema| async move {
        let name = unique("tsg_test_channel_");
        let listening = unique("tsg_listener_");
        let receiver = PostgresInvalidationChannel::new(schema.pool.clone())
            .channel_name(name.as_str())
            .listener_application_name(listening.as_str());
        let sender =
            PostgresInvalidationChannel::new(schema.pool.clone()).channel_name(name.as_str());

        let mut stream = receiver.subscribe().await.expect("subscribe");
        sender.publish("before").await.expect("publish");
        assert_eq!(next_message(&mut stream).await.as_deref(), Some("before"));

        kill_listener(&schema, &listening).await;
        assert_eq!(next_message(&mut stream).await, None, "the stream must end");
        // It stays ended: no silent reconnection.
        sender.publish("lost").await.expect("publish");
        assert_eq!(next_message(&mut stream).await, None);

        let mut again = receiver.subscribe().await.expect("subscribe again");
        sender.publish("after").await.expect("publish");
        assert_eq!(next_message(&mut again).await.as_deref(), Some("after"));
    })
    .await;
}

// ---- Two instances end to end ----

/// One "instance": a session layer on the shared store, with a channel
/// whose listener has its own application_name.
fn instance(schema: &PgSchema, channel: &str, listening: &str) -> SessionHandle {
    let channel = PostgresInvalidationChannel::new(schema.pool.clone())
        .channel_name(channel)
        .listener_application_name(listening);
    SessionRefreshLayer::builder(PostgresSessionStore::new(schema.pool.clone()))
        .cache_ttl(Duration::from_secs(3600))
        .invalidation_channel(channel)
        .build()
        .expect("a valid configuration")
        .handle()
}

async fn wait_for_connections(handle: &SessionHandle, at_least: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = handle.channel_status().expect("a channel");
        if status.connected && status.connections >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "listener not (re)connected: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits up to 1 s for `handle` to refuse `token`.
async fn refused_within_a_second(handle: &SessionHandle, token: &SessionToken) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while handle.get(token).await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "the other instance still accepts a revoked session after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_instance_reaches_the_other_across_a_killed_listener() {
    with_pg_schema(|schema| async move {
        let channel = unique("tsg_test_channel_");
        let second_listener = unique("tsg_listener_");
        let first = instance(&schema, &channel, &unique("tsg_listener_"));
        let second = instance(&schema, &channel, &second_listener);
        wait_for_connections(&first, 1).await;
        wait_for_connections(&second, 1).await;

        // Cached by the second, revoked by the first.
        let created = first.create(Some("acme"), ()).await.expect("create");
        assert!(second.get(&created.token).await.expect("get").is_some());
        first.revoke(&created.token).await.expect("revoke");
        refused_within_a_second(&second, &created.token).await;

        // An organization-wide revocation, likewise.
        let created = first.create(Some("globex"), ()).await.expect("create");
        assert!(second.get(&created.token).await.expect("get").is_some());
        first
            .revoke_organization("globex")
            .await
            .expect("revoke all");
        refused_within_a_second(&second, &created.token).await;

        // The second's listener is killed. A session it cached before the
        // gap is deleted meanwhile without any message (as one published
        // during the gap would be lost): it must not be trusted afterwards.
        let cached = first.create(Some("acme"), ()).await.expect("create");
        assert!(second.get(&cached.token).await.expect("get").is_some());
        let connections = second.channel_status().expect("a channel").connections;
        kill_listener(&schema, &second_listener).await;
        PostgresSessionStore::new(schema.pool.clone())
            .delete(&cached.token.id())
            .await
            .expect("delete behind the caches");
        wait_for_connections(&second, connections + 1).await;
        assert!(
            second.get(&cached.token).await.expect("get").is_none(),
            "an entry cached before the gap was trusted after it"
        );

        // After the reconnection, revocations propagate again.
        let created = first.create(Some("acme"), ()).await.expect("create");
        assert!(second.get(&created.token).await.expect("get").is_some());
        first.revoke(&created.token).await.expect("revoke");
        refused_within_a_second(&second, &created.token).await;
    })
    .await;
}

#[tokio::test]
async fn a_store_error_keeps_the_driver_error_as_source() {
    with_pg_schema(|schema| async move {
        let pool = schema.new_pool().await;
        let store = PostgresSessionStore::new(pool.clone());
        pool.close().await;
        let error = store.load(&random_id()).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Backend);
        let source = std::error::Error::source(&error).expect("a source");
        assert!(source.downcast_ref::<sqlx::Error>().is_some());
    })
    .await;
}

// ---- The conformance kit ----

#[cfg(feature = "test-kit")]
mod conformance {
    use tower_saas_guard::stores::postgres::{
        PostgresInvalidationChannel, PostgresSessionStore, PostgresSubscriptionStore,
    };
    use tower_saas_guard::test_kit;

    use super::kill_listener;
    use crate::support::services::{unique, with_pg_schema};

    // The kit's behaviours use distinct organizations and subjects, so the
    // stores of one test share its schema.

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_postgres_session_store_passes_the_conformance_suite() {
        with_pg_schema(|schema| async move {
            test_kit::session_store_suite(|| async {
                PostgresSessionStore::new(schema.pool.clone())
            })
            .await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_postgres_subscription_store_passes_the_conformance_suite() {
        with_pg_schema(|schema| async move {
            test_kit::subscription_store_suite(|| async {
                PostgresSubscriptionStore::new(schema.pool.clone())
            })
            .await;
        })
        .await;
    }

    #[tokio::test]
    async fn applied_event_times_survive_a_new_store_on_the_same_schema() {
        with_pg_schema(|schema| async move {
            test_kit::applied_event_times_survive_a_new_store(
                PostgresSubscriptionStore::new(schema.pool.clone()),
                || async { PostgresSubscriptionStore::new(schema.pool.clone()) },
            )
            .await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_postgres_channel_passes_the_conformance_suite() {
        with_pg_schema(|schema| async move {
            let channel = unique("tsg_test_channel_");
            let listening = unique("tsg_listener_");
            test_kit::invalidation_channel_suite(
                || async {
                    PostgresInvalidationChannel::new(schema.pool.clone())
                        .channel_name(channel.as_str())
                        .listener_application_name(listening.as_str())
                },
                || kill_listener(&schema, &listening),
            )
            .await;
        })
        .await;
    }

    #[tokio::test]
    async fn damaged_session_rows_fail_the_kits_malformed_check() {
        with_pg_schema(|schema| async move {
            // (A wrong-length id cannot be loaded by its id at all; listing
            // finds it: see `malformed_rows_are_serialization_errors_not_panics`.)
            for damage in [
                "UPDATE tower_saas_guard_sessions SET payload = '{\"name\":' WHERE id = $1",
                "UPDATE tower_saas_guard_sessions SET expires_at = -1 WHERE id = $1",
                "UPDATE tower_saas_guard_sessions SET created_at = -5 WHERE id = $1",
            ] {
                let pool = schema.pool.clone();
                test_kit::malformed_session_is_an_error(
                    PostgresSessionStore::new(schema.pool.clone()),
                    |session| async move {
                        let damaged = sqlx::query(damage)
                            .bind(session.id.as_bytes().to_vec())
                            .execute(&pool)
                            .await
                            .expect("damage");
                        assert_eq!(damaged.rows_affected(), 1);
                    },
                )
                .await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn damaged_subscription_rows_fail_the_kits_malformed_check() {
        with_pg_schema(|schema| async move {
            for damage in [
                "UPDATE tower_saas_guard_subscriptions SET status = 'lifetime' WHERE organization_id = $1",
                "UPDATE tower_saas_guard_subscriptions SET trial_end = -7 WHERE organization_id = $1",
            ] {
                let pool = schema.pool.clone();
                test_kit::malformed_subscription_is_an_error(
                    PostgresSubscriptionStore::new(schema.pool.clone()),
                    |subscription| async move {
                        let damaged = sqlx::query(damage)
                            .bind(subscription.organization_id)
                            .execute(&pool)
                            .await
                            .expect("damage");
                        assert_eq!(damaged.rows_affected(), 1);
                    },
                )
                .await;
            }
        })
        .await;
    }
}

/// A TCP proxy to PostgreSQL that can go silent: it stops forwarding
/// without closing either side, as a cut network does (no reset).
async fn freezable_proxy() -> (u16, Arc<AtomicBool>) {
    use std::str::FromStr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = sqlx::postgres::PgConnectOptions::from_str(&support::services::database_url())
        .expect("a valid DATABASE_URL");
    let upstream = format!("{}:{}", upstream.get_host(), upstream.get_port());
    let frozen = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let flag = Arc::clone(&frozen);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(server_read) as _, Box::new(client_write) as _),
            ] {
                let flag = Arc::clone(&flag);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 8192];
                    loop {
                        let Ok(read) = from.read(&mut buffer).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        if flag.load(Ordering::SeqCst) {
                            // Silent from now on; both sockets stay open.
                            std::future::pending::<()>().await;
                        }
                        if to.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (port, frozen)
}

#[tokio::test]
async fn a_listener_connection_that_goes_silent_ends_the_stream_by_heartbeat() {
    with_pg_schema(|schema| async move {
        use std::str::FromStr;

        let (port, frozen) = freezable_proxy().await;
        let through_proxy =
            sqlx::postgres::PgConnectOptions::from_str(&support::services::database_url())
                .expect("a valid DATABASE_URL")
                .host("127.0.0.1")
                .port(port);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(through_proxy)
            .await
            .expect("a pool through the proxy");
        let name = unique("tsg_test_channel_");
        let receiver = PostgresInvalidationChannel::new(pool)
            .channel_name(name.as_str())
            .heartbeat(Duration::from_millis(200));
        let sender =
            PostgresInvalidationChannel::new(schema.pool.clone()).channel_name(name.as_str());
        let mut stream = receiver.subscribe().await.expect("subscribe");
        // Healthy: heartbeats pass, messages arrive.
        tokio::time::sleep(Duration::from_millis(700)).await;
        sender.publish("alive").await.expect("publish");
        assert_eq!(next_message(&mut stream).await.as_deref(), Some("alive"));
        frozen.store(true, Ordering::SeqCst);
        let started = Instant::now();
        assert_eq!(
            next_message(&mut stream).await,
            None,
            "the stream should end"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "ended after {:?}",
            started.elapsed()
        );
    })
    .await;
}
