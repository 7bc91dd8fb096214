//! Real services for store tests: a SQLite file per test, a PostgreSQL
//! schema per test (dropped afterwards, also when the test fails).
//!
//! An unreachable PostgreSQL skips the test with a printed reason, except
//! under `CI=true`, where it fails.
#![allow(dead_code)]

use tower_saas_guard::session::SessionToken;

/// A random lowercase-hex name starting with `prefix`, for schemas,
/// channels and application names that no other test uses.
pub fn unique(prefix: &str) -> String {
    let token = SessionToken::generate().expect("OS randomness");
    format!("{prefix}{}", &token.id().to_string()[..16])
}

/// Whether an unreachable service must fail the run.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// Reports `service` unreachable: panics under `CI=true`, else prints why
/// the test is skipped.
pub fn unreachable(service: &str, reason: &dyn std::fmt::Display) {
    assert!(
        !required(),
        "{service} is unreachable under CI=true: {reason}"
    );
    eprintln!("skipping: {service} is unreachable ({reason})");
}

/// base64url (no padding) decoding, to look for a token's raw bytes.
pub fn decode_base64url(text: &str) -> Vec<u8> {
    let sextet = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c}"),
        }
    };
    let mut bytes = Vec::new();
    let (mut bits, mut count) = (0u32, 0u32);
    for c in text.bytes() {
        bits = (bits << 6) | sextet(c);
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    bytes
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

#[cfg(feature = "sqlite")]
#[allow(unused_imports)]
pub use self::sqlite::*;

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::path::PathBuf;

    /// A SQLite database file of one test, deleted with the directory.
    pub struct SqliteFile {
        pub dir: tempfile::TempDir,
        pub path: PathBuf,
        pub url: String,
    }

    /// A fresh, not yet created, database file in a temporary directory.
    pub fn sqlite_file() -> SqliteFile {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("guard.db");
        let url = format!("sqlite://{}", path.display());
        SqliteFile { dir, path, url }
    }
}

#[cfg(feature = "postgres")]
#[allow(unused_imports)]
pub use self::postgres::*;

#[cfg(feature = "postgres")]
mod postgres {
    use std::future::Future;
    use std::panic::AssertUnwindSafe;
    use std::str::FromStr;
    use std::time::Duration;

    use futures_util::FutureExt;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sqlx::{ConnectOptions, Connection, PgPool};

    use super::{unique, unreachable};

    /// `DATABASE_URL`, or the local default.
    pub fn database_url() -> String {
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    /// A schema of one test and a pool whose connections use it.
    #[derive(Clone)]
    pub struct PgSchema {
        /// The schema's name (`tsg_<random>`).
        pub name: String,
        /// Connections with `search_path` set to the schema.
        pub pool: PgPool,
        /// Connections without it, for looking at the server as a whole.
        pub admin: PgPool,
    }

    impl PgSchema {
        /// Another pool on the schema (a second "instance").
        pub async fn new_pool(&self) -> PgPool {
            PgPoolOptions::new()
                .max_connections(5)
                .connect_with(schema_options(&self.name).expect("a valid DATABASE_URL"))
                .await
                .expect("a pool on the test schema")
        }

        /// Terminates the backends whose `application_name` is `name`;
        /// returns how many.
        pub async fn terminate(&self, application_name: &str) -> i64 {
            sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1",
            )
            .bind(application_name)
            .fetch_one(&self.admin)
            .await
            .expect("pg_terminate_backend")
        }
    }

    fn schema_options(schema: &str) -> Result<PgConnectOptions, sqlx::Error> {
        Ok(PgConnectOptions::from_str(&database_url())?.options([("search_path", schema)]))
    }

    /// Runs `test` with a fresh schema, then drops the schema (CASCADE),
    /// whether the test passed or panicked. Skips (or fails under
    /// `CI=true`) when PostgreSQL cannot be reached.
    pub async fn with_pg_schema<F, Fut>(test: F)
    where
        F: FnOnce(PgSchema) -> Fut,
        Fut: Future<Output = ()>,
    {
        // One direct connection first: its error says why (a pool's says
        // only that it timed out).
        let probe = tokio::time::timeout(Duration::from_secs(5), async {
            PgConnectOptions::from_str(&database_url())?.connect().await
        })
        .await;
        match probe {
            Ok(Ok(connection)) => drop(connection.close().await),
            Ok(Err(error)) => return unreachable("PostgreSQL", &error),
            Err(_) => return unreachable("PostgreSQL", &"no answer within 5 s"),
        }
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(&database_url())
            .await
            .expect("an admin pool");
        let name = unique("tsg_");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&admin)
            .await
            .expect("CREATE SCHEMA");
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect_with(schema_options(&name).expect("a valid DATABASE_URL"))
            .await
            .expect("a pool on the test schema");
        let schema = PgSchema {
            name: name.clone(),
            pool: pool.clone(),
            admin: admin.clone(),
        };
        let outcome = AssertUnwindSafe(test(schema)).catch_unwind().await;
        pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
            .execute(&admin)
            .await
            .expect("DROP SCHEMA");
        admin.close().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}
