//! The SQLite stores against real database files: every store operation,
//! malformed rows, migrations, and no token in clear on disk.
#![cfg(feature = "sqlite")]

mod support;

use serde_json::json;
use sqlx::SqlitePool;
use tower_saas_guard::session::{SessionOwner, SessionRefreshLayer, SessionStore};
use tower_saas_guard::stores::sqlite::{self, SqliteSessionStore, SqliteSubscriptionStore};
use tower_saas_guard::stores::RowError;
use tower_saas_guard::subscription::SubscriptionStore;
use tower_saas_guard::{StoreError, StoreErrorKind};

use support::services::{contains, decode_base64url, sqlite_file, SqliteFile};
use support::store_cases::{self as cases, random_id};

/// A session store on a fresh file (kept alive by the returned guard).
async fn session_store() -> (SqliteFile, SqliteSessionStore) {
    let file = sqlite_file();
    let store = SqliteSessionStore::connect(&file.url)
        .await
        .expect("connect");
    (file, store)
}

fn row_error(error: &StoreError) -> &RowError {
    assert_eq!(error.kind(), StoreErrorKind::Serialization, "{error:?}");
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<RowError>())
        .expect("a RowError source")
}

async fn count(pool: &SqlitePool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn create_and_load_round_trip() {
    let (_file, store) = session_store().await;
    cases::create_and_load_round_trip(&store).await;
}

#[tokio::test]
async fn extend_moves_only_forward_and_never_revives() {
    let (_file, store) = session_store().await;
    cases::extend_moves_only_forward_and_never_revives(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_extends_keep_the_maximum() {
    let (_file, store) = session_store().await;
    cases::concurrent_extends_keep_the_maximum(store).await;
}

#[tokio::test]
async fn delete_reports_whether_it_existed() {
    let (_file, store) = session_store().await;
    cases::delete_reports_whether_it_existed(&store).await;
}

#[tokio::test]
async fn delete_all_returns_exactly_the_owners_ids() {
    let (_file, store) = session_store().await;
    cases::delete_all_returns_exactly_the_owners_ids(&store).await;
}

#[tokio::test]
async fn list_pages_in_order_with_ties_and_skips_expired() {
    let (_file, store) = session_store().await;
    cases::list_pages_in_order_with_ties_and_skips_expired(&store).await;
}

#[tokio::test]
async fn purge_deletes_only_what_expired_before() {
    let (_file, store) = session_store().await;
    cases::purge_deletes_only_what_expired_before(&store).await;
}

#[tokio::test]
async fn subscriptions_upsert_replace_and_keep_several() {
    let file = sqlite_file();
    let store = SqliteSubscriptionStore::connect(&file.url)
        .await
        .expect("connect");
    cases::subscriptions_upsert_replace_and_keep_several(&store).await;
}

#[tokio::test]
async fn connect_creates_a_missing_file_in_wal_mode() {
    let file = sqlite_file();
    assert!(!file.path.exists());
    let store = SqliteSessionStore::connect(&file.url)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    assert!(file.path.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .expect("journal_mode");
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn sessions_and_subscriptions_survive_reopening_the_file() {
    let file = sqlite_file();
    let session = cases::record(Some("acme"), Some("ada"), support::epoch());
    {
        let sessions = SqliteSessionStore::connect(&file.url)
            .await
            .expect("connect");
        sessions.create(&session).await.expect("create");
        let subscriptions = SqliteSubscriptionStore::new(sessions.pool().clone());
        cases::subscriptions_upsert_replace_and_keep_several(&subscriptions).await;
        sessions.pool().close().await;
    }
    let sessions = SqliteSessionStore::connect(&file.url)
        .await
        .expect("reopen");
    assert_eq!(
        sessions.load(&session.id).await.expect("load"),
        Some(session)
    );
    let subscriptions = SqliteSubscriptionStore::connect(&file.url)
        .await
        .expect("reopen");
    assert_eq!(
        subscriptions
            .subscriptions("acme")
            .await
            .expect("read")
            .len(),
        2
    );
}

#[tokio::test]
async fn an_in_memory_database_keeps_its_data_while_the_store_lives() {
    let store = SqliteSessionStore::connect("sqlite::memory:")
        .await
        .expect("connect");
    let session = cases::record(Some("acme"), None, support::epoch());
    store.create(&session).await.expect("create");
    for _ in 0..3 {
        assert_eq!(
            store.load(&session.id).await.expect("load"),
            Some(session.clone())
        );
    }
    // Another in-memory store is another database.
    let other = SqliteSessionStore::connect("sqlite::memory:")
        .await
        .expect("connect");
    assert_eq!(other.load(&session.id).await.expect("load"), None);
}

#[tokio::test]
async fn malformed_rows_are_serialization_errors_not_panics() {
    let (_file, store) = session_store().await;
    store.migrate().await.expect("migrate");
    let pool = store.pool();
    let insert = "INSERT INTO tower_saas_guard_sessions \
         (id, organization_id, subject, created_at, expires_at, payload) \
         VALUES (?1, ?2, NULL, ?3, ?4, ?5)";
    let far = 4_000_000_000_000i64;

    let short_id = sqlx::query(insert)
        .bind(vec![1u8, 2, 3, 4, 5])
        .bind("bad-id")
        .bind(1i64)
        .bind(far)
        .bind("{}");
    short_id.execute(pool).await.expect("insert");
    let error = store
        .list(
            SessionOwner::Organization("bad-id"),
            support::epoch(),
            tower_saas_guard::session::PageRequest::first(10),
        )
        .await
        .unwrap_err();
    assert!(matches!(row_error(&error), RowError::IdLength(5)));

    let negative = random_id();
    sqlx::query(insert)
        .bind(negative.as_bytes().to_vec())
        .bind("acme")
        .bind(1i64)
        .bind(-5i64)
        .bind("{}")
        .execute(pool)
        .await
        .expect("insert");
    let error = store.load(&negative).await.unwrap_err();
    assert!(matches!(
        row_error(&error),
        RowError::Timestamp {
            column: "expires_at",
            value: -5
        }
    ));
    // The extend of a row with a broken expiry is an error, too.
    let error = store
        .extend(&negative, support::epoch(), support::epoch())
        .await
        .unwrap_err();
    assert!(matches!(row_error(&error), RowError::Timestamp { .. }));

    let not_json = random_id();
    sqlx::query(insert)
        .bind(not_json.as_bytes().to_vec())
        .bind("acme")
        .bind(1i64)
        .bind(far)
        .bind("{\"name\": ")
        .execute(pool)
        .await
        .expect("insert");
    let error = store.load(&not_json).await.unwrap_err();
    assert!(matches!(row_error(&error), RowError::Payload(_)));

    // SQLite stores what it is given: text where a number belongs.
    let text_time = random_id();
    sqlx::query(insert)
        .bind(text_time.as_bytes().to_vec())
        .bind("acme")
        .bind("yesterday")
        .bind(far)
        .bind("{}")
        .execute(pool)
        .await
        .expect("insert");
    let error = store.load(&text_time).await.unwrap_err();
    assert!(matches!(row_error(&error), RowError::Column(_)));

    // A revocation still removes every row of its owner and reports the
    // ids that decode (a malformed id was never cached anywhere).
    let good = cases::record(Some("bad-id"), None, support::epoch());
    store.create(&good).await.expect("create");
    let deleted = store
        .delete_all(SessionOwner::Organization("bad-id"))
        .await
        .expect("delete_all");
    assert_eq!(deleted, [good.id]);
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM tower_saas_guard_sessions WHERE organization_id = 'bad-id'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn an_unknown_subscription_status_is_a_serialization_error() {
    let file = sqlite_file();
    let store = SqliteSubscriptionStore::connect(&file.url)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    sqlx::query(
        "INSERT INTO tower_saas_guard_subscriptions \
         (organization_id, subscription_id, status, plan) VALUES ('acme', 'sub_1', 'lifetime', 'pro')",
    )
    .execute(store.pool())
    .await
    .expect("insert");
    let error = store.subscriptions("acme").await.unwrap_err();
    assert!(matches!(row_error(&error), RowError::Status(_)));

    sqlx::query("UPDATE tower_saas_guard_subscriptions SET status = 'active', trial_end = -1")
        .execute(store.pool())
        .await
        .expect("update");
    let error = store.subscriptions("acme").await.unwrap_err();
    assert!(matches!(
        row_error(&error),
        RowError::Timestamp {
            column: "trial_end",
            ..
        }
    ));
}

/// Every value of every row of every table, as bytes.
async fn every_value(pool: &SqlitePool) -> Vec<Vec<u8>> {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(pool)
            .await
            .expect("tables");
    let mut values = Vec::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
            .bind(&table)
            .fetch_all(pool)
            .await
            .expect("columns");
        for column in columns {
            let sql = format!("SELECT CAST(\"{column}\" AS BLOB) FROM \"{table}\"");
            let column_values: Vec<Option<Vec<u8>>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .expect("values");
            values.extend(column_values.into_iter().flatten());
        }
    }
    values
}

#[tokio::test]
async fn no_token_in_clear_in_any_row_or_in_the_files() {
    let file = sqlite_file();
    let store = SqliteSessionStore::connect(&file.url)
        .await
        .expect("connect");
    let subscriptions = SqliteSubscriptionStore::new(store.pool().clone());
    cases::subscriptions_upsert_replace_and_keep_several(&subscriptions).await;
    let layer = SessionRefreshLayer::new(store.clone());
    let handle = layer.handle();
    let mut tokens = Vec::new();
    for i in 0..5 {
        let created = handle
            .create_for(Some("acme"), Some(&format!("user-{i}")), json!({ "i": i }))
            .await
            .expect("create");
        tokens.push(created.token);
    }

    let values = every_value(store.pool()).await;
    let rows = values.concat();
    let mut on_disk = std::fs::read(&file.path).expect("database file");
    if let Ok(wal) = std::fs::read(file.path.with_extension("db-wal")) {
        on_disk.extend(wal);
    }
    for token in &tokens {
        let text = token.to_string();
        let raw = decode_base64url(&text);
        assert_eq!(raw.len(), 32);
        // The reading works: the id (the token's hash) is found.
        assert!(contains(&rows, token.id().as_bytes()));
        assert!(contains(&on_disk, token.id().as_bytes()));
        for haystack in [&rows, &on_disk] {
            assert!(!contains(haystack, text.as_bytes()), "token text stored");
            assert!(!contains(haystack, &raw), "token bytes stored");
        }
    }
}

#[tokio::test]
async fn migrations_run_once_per_store() {
    let (_file, store) = session_store().await;
    store.load(&random_id()).await.expect("first use migrates");
    let pool = store.pool().clone();
    let tracked = "SELECT count(*) FROM sqlite_master WHERE name = '_tower_saas_guard_migrations'";
    assert_eq!(count(&pool, tracked).await, 1);
    sqlx::query("DROP TABLE _tower_saas_guard_migrations")
        .execute(&pool)
        .await
        .expect("drop");
    store.load(&random_id()).await.expect("second use");
    store
        .clone()
        .load(&random_id())
        .await
        .expect("a clone's use");
    assert_eq!(count(&pool, tracked).await, 0, "migrations ran again");
    // A new store runs them (again: the tables exist, IF NOT EXISTS).
    let again = SqliteSubscriptionStore::new(pool.clone());
    again.subscriptions("acme").await.expect("new store");
    assert_eq!(count(&pool, tracked).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_starting_together_on_one_file_migrate_once() {
    let file = sqlite_file();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let url = file.url.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let store = SqliteSessionStore::connect(&url).await?;
                store.load(&random_id()).await.map(drop)
            } else {
                let store = SqliteSubscriptionStore::connect(&url).await?;
                store.subscriptions("acme").await.map(drop)
            }
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("first use");
    }
    let store = SqliteSessionStore::connect(&file.url)
        .await
        .expect("connect");
    let applied: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT version, success FROM _tower_saas_guard_migrations ORDER BY version",
    )
    .fetch_all(store.pool())
    .await
    .expect("applied");
    assert_eq!(applied, [(1, true), (2, true), (3, true)]);
}

#[tokio::test]
async fn skipped_migrations_leave_the_schema_alone() {
    let file = sqlite_file();
    let store = SqliteSessionStore::connect(&file.url)
        .await
        .expect("connect")
        .skip_migrations();
    let error = store.load(&random_id()).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend);
    assert_eq!(
        count(store.pool(), "SELECT count(*) FROM sqlite_master").await,
        0
    );
    store.migrate().await.expect("explicit migrate");
    assert_eq!(store.load(&random_id()).await.expect("load"), None);
}

#[tokio::test]
async fn migrations_are_tracked_apart_from_the_applications_own() {
    let file = sqlite_file();
    let store = SqliteSessionStore::connect(&file.url)
        .await
        .expect("connect");
    // The application's own sqlx migration 1, in sqlx's default table.
    let own = sqlx::migrate::Migrator::with_migrations(vec![sqlx::migrate::Migration::new(
        1,
        "conversations".into(),
        sqlx::migrate::MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str("CREATE TABLE conversations (id INTEGER PRIMARY KEY)"),
        false,
    )]);
    own.run(store.pool())
        .await
        .expect("the application's migrations");
    store.migrate().await.expect("the crate's migrations");
    own.run(store.pool())
        .await
        .expect("the application's, again");
    assert_eq!(
        count(store.pool(), "SELECT count(*) FROM _sqlx_migrations").await,
        1
    );
    assert_eq!(
        count(
            store.pool(),
            "SELECT count(*) FROM _tower_saas_guard_migrations"
        )
        .await,
        3
    );
}

#[test]
fn the_embedded_migrations_are_the_files_in_migrations_sqlite() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .expect("migrations/sqlite")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    let migrator = sqlite::migrator();
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

#[tokio::test]
async fn a_store_error_keeps_the_driver_error_as_source() {
    let file = sqlite_file();
    let store = SqliteSessionStore::connect(&file.url)
        .await
        .expect("connect");
    store.pool().close().await;
    let error = store.load(&random_id()).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend);
    let source = std::error::Error::source(&error).expect("a source");
    assert!(source.downcast_ref::<sqlx::Error>().is_some());
}

// ---- The conformance kit ----

#[cfg(feature = "test-kit")]
mod conformance {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower_saas_guard::stores::sqlite::{SqliteSessionStore, SqliteSubscriptionStore};
    use tower_saas_guard::test_kit;

    use super::session_store;
    use crate::support::services::sqlite_file;

    /// Store constructors on fresh files of one temporary directory.
    struct Files {
        dir: tempfile::TempDir,
        made: AtomicUsize,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("a temporary directory"),
                made: AtomicUsize::new(0),
            }
        }

        fn next_url(&self) -> String {
            let n = self.made.fetch_add(1, Ordering::SeqCst);
            format!(
                "sqlite://{}",
                self.dir.path().join(format!("{n}.db")).display()
            )
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_session_store_passes_the_conformance_suite() {
        let files = Files::new();
        test_kit::session_store_suite(|| async {
            SqliteSessionStore::connect(&files.next_url())
                .await
                .expect("connect")
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_subscription_store_passes_the_conformance_suite() {
        let files = Files::new();
        test_kit::subscription_store_suite(|| async {
            SqliteSubscriptionStore::connect(&files.next_url())
                .await
                .expect("connect")
        })
        .await;
    }

    #[tokio::test]
    async fn applied_event_times_survive_a_new_pool_on_the_same_file() {
        let files = Files::new();
        let url = files.next_url();
        let store = SqliteSubscriptionStore::connect(&url)
            .await
            .expect("connect");
        test_kit::applied_event_times_survive_a_new_store(store, || async {
            SqliteSubscriptionStore::connect(&url)
                .await
                .expect("reopen")
        })
        .await;
    }

    #[tokio::test]
    async fn damaged_session_rows_fail_the_kits_malformed_check() {
        for damage in [
            "UPDATE tower_saas_guard_sessions SET payload = '{\"name\":' WHERE id = ?1",
            "UPDATE tower_saas_guard_sessions SET expires_at = -1 WHERE id = ?1",
            "UPDATE tower_saas_guard_sessions SET created_at = 'yesterday' WHERE id = ?1",
        ] {
            let (_file, store) = session_store().await;
            let pool = store.pool().clone();
            test_kit::malformed_session_is_an_error(store, |session| async move {
                let damaged = sqlx::query(damage)
                    .bind(session.id.as_bytes().to_vec())
                    .execute(&pool)
                    .await
                    .expect("damage");
                assert_eq!(damaged.rows_affected(), 1);
            })
            .await;
        }
    }

    #[tokio::test]
    async fn damaged_subscription_rows_fail_the_kits_malformed_check() {
        for damage in [
            "UPDATE tower_saas_guard_subscriptions SET status = 'lifetime' WHERE organization_id = ?1",
            "UPDATE tower_saas_guard_subscriptions SET current_period_end = -7 WHERE organization_id = ?1",
        ] {
            let file = sqlite_file();
            let store = SqliteSubscriptionStore::connect(&file.url)
                .await
                .expect("connect");
            let pool = store.pool().clone();
            test_kit::malformed_subscription_is_an_error(store, |subscription| async move {
                let damaged = sqlx::query(damage)
                    .bind(subscription.organization_id)
                    .execute(&pool)
                    .await
                    .expect("damage");
                assert_eq!(damaged.rows_affected(), 1);
            })
            .await;
        }
    }
}
