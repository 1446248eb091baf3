//! The SQLite back end: one file, in WAL mode, a pool of readers and a single writer
//! connection whose transactions start with `BEGIN IMMEDIATE`, so write transactions run
//! one after another and never meet `SQLITE_BUSY` half-way.

use super::{Backend, Result, Store};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The embedded SQLite migrations, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "resources",
        include_str!("migrations/sqlite/0001_resources.sql"),
    ),
    (
        2,
        "search",
        include_str!("migrations/sqlite/0002_search.sql"),
    ),
    (3, "auth", include_str!("migrations/sqlite/0003_auth.sql")),
    (
        4,
        "search_types",
        include_str!("migrations/sqlite/0004_search_types.sql"),
    ),
    (5, "site", include_str!("migrations/sqlite/0005_site.sql")),
    (
        6,
        "export",
        include_str!("migrations/sqlite/0006_export.sql"),
    ),
    (
        7,
        "ledger_seal",
        include_str!("migrations/sqlite/0007_ledger_seal.sql"),
    ),
    (
        8,
        "search_locality",
        include_str!("migrations/sqlite/0008_search_locality.sql"),
    ),
    (
        9,
        "owner_first",
        include_str!("migrations/sqlite/0009_owner_first.sql"),
    ),
];

/// The two pools of a SQLite store.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Readers (several connections; WAL lets them run beside the writer).
    pub read: SqlitePool,
    /// The one writer connection.
    pub write: SqlitePool,
}

/// Reader connections: SQLite work is CPU-bound, so more readers than a few per core only
/// split the page caches (each connection has its own).
const READERS: u32 = 4;

/// Page cache of each reader, as SQLite's negative `cache_size` (KiB). Every commit empties
/// it (another connection changed the file), so what counts is that one request's pages
/// (a search's index pages, a page of results) stay in it between commits.
const READER_CACHE_KIB: i64 = -4096;

/// Page cache of the writer (KiB, as [`READER_CACHE_KIB`]). Its own commits leave it
/// valid, and an ingest inserts into every index B-tree at scattered places, so a larger
/// cache than SQLite's 2 MiB default saves re-reading their interior and hot leaf pages
/// with a system call each.
const WRITER_CACHE_KIB: i64 = -16384;

/// Statistics from a sample (`analysis_limit` rows per index): milliseconds, at any size.
pub(super) const ANALYZE: &str = "PRAGMA analysis_limit = 1000; ANALYZE;";

/// The migrations as a sqlx [`Migrator`] (what `sqlx::migrate!` would build, without the
/// proc-macro and its second copy of the database drivers at compile time).
pub(super) fn migrator(list: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            list.iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

/// Opens the SQLite file at `path`, creating and migrating it as needed.
///
/// # Errors
/// When the file cannot be opened or created, or the migrations fail.
pub async fn open(path: &Path) -> Result<Store> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        // Statement journals (multi-row INSERTs inside a transaction) and sort trees in
        // memory, not in temporary files written with a system call per page.
        .pragma("temp_store", "memory")
        .foreign_keys(true);
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(
            options
                .clone()
                .pragma("cache_size", WRITER_CACHE_KIB.to_string()),
        )
        .await?;
    migrator(MIGRATIONS).run(&write).await?;
    let read = SqlitePoolOptions::new()
        .max_connections(READERS)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(
            options
                .read_only(true)
                .pragma("cache_size", READER_CACHE_KIB.to_string()),
        )
        .await?;
    // A file that already holds data gets statistics now if it has none (a store made by an
    // earlier version, or one never past the first threshold); the next run is due when
    // the data has doubled.
    let analyzed: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'")
            .fetch_optional(&write)
            .await?;
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM resource_version")
        .fetch_one(&write)
        .await?;
    let rows = u64::try_from(rows).unwrap_or(0);
    if analyzed.is_none() && rows >= super::FIRST_ANALYZE {
        sqlx::raw_sql(ANALYZE).execute(&write).await?;
    }
    Ok(Store {
        backend: Backend::Sqlite(Pools { read, write }),
        planner: Arc::new(super::Planner::starting_at(rows)),
        ledger_key: std::sync::Arc::default(),
    })
}
