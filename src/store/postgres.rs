//! The PostgreSQL back end: one pool; conditional interactions serialize on
//! transaction-scoped advisory locks keyed by their criteria, so replicas sharing the
//! database need no coordination of their own.

use super::sqlite::migrator;
use super::{Backend, Result, Store};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::ConnectOptions as _;
use std::str::FromStr as _;
use std::time::Duration;

/// The embedded PostgreSQL migrations, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "resources",
        include_str!("migrations/postgres/0001_resources.sql"),
    ),
    (
        2,
        "search",
        include_str!("migrations/postgres/0002_search.sql"),
    ),
    (3, "auth", include_str!("migrations/postgres/0003_auth.sql")),
    (
        4,
        "search_types",
        include_str!("migrations/postgres/0004_search_types.sql"),
    ),
    (5, "site", include_str!("migrations/postgres/0005_site.sql")),
    (
        6,
        "export",
        include_str!("migrations/postgres/0006_export.sql"),
    ),
    (
        7,
        "ledger_seal",
        include_str!("migrations/postgres/0007_ledger_seal.sql"),
    ),
    (
        8,
        "search_locality",
        include_str!("migrations/postgres/0008_search_locality.sql"),
    ),
    (
        9,
        "owner_first",
        include_str!("migrations/postgres/0009_owner_first.sql"),
    ),
];

/// Connects to `url` and migrates the database. With `schema`, every connection works in
/// that schema (created when missing): how tests get a fresh, independent database.
///
/// # Errors
/// When the server cannot be reached or the migrations fail.
pub async fn open(url: &str, schema: Option<&str>) -> Result<Store> {
    let mut options = PgConnectOptions::from_str(url)?;
    if let Some(schema) = schema {
        let mut conn = options.connect().await?;
        let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
            .execute(&mut conn)
            .await?;
        options = options.options([("search_path", schema)]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await?;
    migrator(MIGRATIONS).run(&pool).await?;
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM resource_version")
        .fetch_one(&pool)
        .await?;
    Ok(Store {
        planner: std::sync::Arc::new(super::Planner::starting_at(
            u64::try_from(rows).unwrap_or(0),
        )),
        backend: Backend::Postgres(pool),
        ledger_key: std::sync::Arc::default(),
    })
}

/// Drops a schema made by [`open`] with `schema` (test clean-up).
///
/// # Errors
/// When the server cannot be reached or refuses.
pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    let mut conn = PgConnectOptions::from_str(url)?.connect().await?;
    let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {quoted} CASCADE"))
        .execute(&mut conn)
        .await?;
    Ok(())
}
