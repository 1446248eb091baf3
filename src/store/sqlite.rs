//! The SQLite back end: one file, in WAL mode, a pool of readers and a single writer
//! connection whose transactions start with `BEGIN IMMEDIATE`, so write transactions run
//! one after another and never meet `SQLITE_BUSY` half-way.

use super::{Backend, Result, Store};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
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
];

/// The two pools of a SQLite store.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Readers (several connections; WAL lets them run beside the writer).
    pub read: SqlitePool,
    /// The one writer connection.
    pub write: SqlitePool,
    /// When to gather the planner's statistics again.
    pub planner: Arc<Planner>,
}

/// Keeps SQLite's planner statistics (`sqlite_stat1`) in step with the data. Without them
/// SQLite guesses index selectivity and, for a search such as
/// `subject=Patient/x&date=ge2020`, probes each candidate's dates through the
/// `(res_type, param, high)` index, which visits every dated resource of the type, instead
/// of the owner index; with them it picks the right index (seen: 76 ms of CPU per search at
/// 100,000 resources without, about 1 ms with). So each time the versions written since
/// start reach a threshold that doubles (1,000, 2,000, 4,000, ...), `ANALYZE` runs on the
/// writer connection with a sampling limit, which bounds its cost whatever the data size.
#[derive(Debug, Default)]
pub struct Planner {
    written: AtomicU64,
    next: AtomicU64,
}

/// The first number of written versions after which statistics are gathered.
const FIRST_ANALYZE: u64 = 1000;

/// Statistics from a sample (`analysis_limit` rows per index): milliseconds, at any size.
const ANALYZE: &str = "PRAGMA analysis_limit = 1000; ANALYZE;";

impl Planner {
    /// Counts `n` committed versions; past the threshold, gathers statistics in the
    /// background (one run per threshold: it moves before the run starts).
    pub fn wrote(&self, n: u64, write: &SqlitePool) {
        let total = self.written.fetch_add(n, Ordering::Relaxed) + n;
        let next = self.next.load(Ordering::Relaxed);
        if total < next.max(FIRST_ANALYZE)
            || self
                .next
                .compare_exchange(
                    next,
                    total.saturating_mul(2),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let pool = write.clone();
        tokio::spawn(async move {
            match sqlx::raw_sql(ANALYZE).execute(&pool).await {
                Ok(_) => tracing::debug!(written = total, "SQLite statistics gathered"),
                Err(e) => tracing::warn!(error = %e, "SQLite ANALYZE failed"),
            }
        });
    }
}

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
        .connect_with(options.clone())
        .await?;
    migrator(MIGRATIONS).run(&write).await?;
    let read = SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.read_only(true))
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
    if analyzed.is_none() && rows >= FIRST_ANALYZE {
        sqlx::raw_sql(ANALYZE).execute(&write).await?;
    }
    let planner = Arc::new(Planner {
        written: AtomicU64::new(rows),
        next: AtomicU64::new(rows.saturating_mul(2)),
    });
    Ok(Store {
        backend: Backend::Sqlite(Pools {
            read,
            write,
            planner,
        }),
    })
}
