//! Storage of resources, their versions and the submission ledger: the `store` stage of the
//! pipeline (… ──> pseudonymize ──> **store** ──> serve), on SQLite ([`sqlite`]) or
//! PostgreSQL ([`postgres`]) behind one [`Store`].
//!
//! The model (same tables on both databases, `migrations/`):
//! - `resource_version`: one row per version of a resource (id, type, `version_id`,
//!   `last_updated`, a `deleted` flag, the JSON text with `id` and `meta` stamped in, and
//!   the validation warnings kept with it). A delete is a version without content.
//! - `resource`: which version is current for each (type, id).
//! - `resource_identifier`: the `identifier` system|value pairs of current resources, for
//!   conditional interactions.
//! - `submission`: the ledger, one row per write request, accepted or not (see
//!   [`Submission`]).
//!
//! Writes go through a [`Tx`]: [`Store::begin`] opens it, [`Tx::commit`] ends it, and
//! dropping it rolls back. Concurrency rules, identical in meaning on both databases:
//! - the current-version row is changed by compare-and-set on its `version_id`, so two
//!   writers of one resource cannot both win ([`StoreError::Conflict`], retried by callers);
//! - conditional interactions take [`Tx::lock`] on their criteria before they look for
//!   matches: a transaction-scoped advisory lock on PostgreSQL, and on SQLite all writes go
//!   through one connection in `BEGIN IMMEDIATE` transactions, which already serializes them.
//!
//! Every query text is shared by both databases (`$n` placeholders, standard SQL); the two
//! back ends differ only in how they connect and migrate.

pub mod postgres;
pub mod sealed;
pub mod sqlite;
pub mod time;

use crate::model::json::{write_str, Json};
use crate::search::IndexRow;
use std::io::{Read as _, Write as _};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused a statement or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be migrated.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Another writer changed the same resource (or claimed the same id) first; running the
    /// whole transaction again resolves it.
    #[error("a concurrent write touched the same resource")]
    Conflict,
    /// The database URL is not one the store understands.
    #[error(
        "unsupported database URL {0:?} (expected sqlite:PATH, a file path, or postgres://...)"
    )]
    Url(String),
    /// A stored payload could not be compressed or decompressed.
    #[error("ledger payload: {0}")]
    Payload(#[from] std::io::Error),
    /// A sealed ledger payload could not be opened (wrong or missing key, altered data).
    #[error(transparent)]
    Seal(#[from] sealed::SealError),
}

impl StoreError {
    /// Whether running the transaction again may succeed (a lost compare-and-set, a unique
    /// key claimed by a concurrent transaction, a serialization failure or deadlock).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Conflict => true,
            StoreError::Database(sqlx::Error::Database(db)) => {
                db.is_unique_violation()
                    || matches!(db.code().as_deref(), Some("40001" | "40P01" | "5" | "517"))
            }
            _ => false,
        }
    }
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One version of a resource as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Resource type.
    pub res_type: String,
    /// Logical id.
    pub id: String,
    /// Version (1, 2, ...).
    pub version_id: i64,
    /// `meta.lastUpdated` of this version.
    pub last_updated: String,
    /// Whether this version records a delete.
    pub deleted: bool,
    /// The resource JSON, with `id` and `meta.versionId`/`meta.lastUpdated` set; `None` for
    /// a delete.
    pub content: Option<String>,
    /// The validation warnings kept with this version (an OperationOutcome), if any.
    pub issues: Option<String>,
    /// The owning site: the code of the content's site label (`auth::tenancy`), `""` when
    /// it has none; a delete keeps the site of the version it deletes.
    pub site: String,
}

/// The version a write expects to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (or nothing).
    Any,
    /// Exactly this current version (`If-Match`).
    Version(i64),
}

/// What the ledger records of one write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// When it arrived (instant text).
    pub received: String,
    /// The request id (`X-Request-Id`).
    pub request_id: String,
    /// The client (`anonymous` until authentication exists).
    pub client: String,
    /// The site the client belongs to (`anonymous` until authentication exists).
    pub site: String,
    /// HTTP method.
    pub method: String,
    /// Request path and query.
    pub url: String,
    /// The request's `Content-Type`.
    pub content_type: Option<String>,
    /// The body exactly as sent.
    pub payload: Vec<u8>,
    /// `accepted`, `rejected` (4xx) or `failed` (5xx).
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The OperationOutcome answered or kept (errors, warnings), if any.
    pub operation_outcome: Option<String>,
    /// The versions the request produced (`Patient/1/_history/2`).
    pub versions: Vec<String>,
}

/// A ledger row as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Row id, increasing.
    pub id: i64,
    /// The size of the payload as sent, in bytes.
    pub payload_size: i64,
    /// The submission, payload decrypted and decompressed (empty in listings:
    /// [`Store::ledger`], and once purged).
    pub submission: Submission,
    /// When the retention period ended and the payload was purged, if it was.
    pub purged: Option<String>,
}

/// Which ledger entries to list ([`Store::ledger`]): every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerQuery {
    /// Only this site's submissions.
    pub site: Option<String>,
    /// Only those received at or after this instant (store instant text).
    pub since: Option<String>,
    /// Only this outcome (`accepted`, `rejected`, `failed`).
    pub outcome: Option<String>,
    /// Only rows older than this id (keyset paging: the last id of the previous page).
    pub before: Option<i64>,
    /// At most this many.
    pub count: i64,
}

/// Builds a [`LedgerEntry`] from a `submission` row; `$payload` is the payload to keep.
macro_rules! ledger_entry {
    ($row:expr, $payload:expr) => {{
        use sqlx::Row as _;
        let r = $row;
        let versions: String = r.try_get("versions")?;
        let status: i64 = r.try_get("status")?;
        LedgerEntry {
            purged: r.try_get("purged")?,
            id: r.try_get("id")?,
            payload_size: r.try_get("payload_size")?,
            submission: Submission {
                received: r.try_get("received")?,
                request_id: r.try_get("request_id")?,
                client: r.try_get("client")?,
                site: r.try_get("site")?,
                method: r.try_get("method")?,
                url: r.try_get("url")?,
                content_type: r.try_get("content_type")?,
                payload: $payload,
                outcome: r.try_get("outcome")?,
                status: u16::try_from(status).unwrap_or(0),
                operation_outcome: r.try_get("operation_outcome")?,
                versions: versions
                    .split(' ')
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .collect(),
            },
        }
    }};
}

/// The `submission` columns every ledger read selects (the payload apart).
const LEDGER_COLUMNS: &str = "id, received, request_id, client, site, method, url, \
     content_type, payload_size, outcome, status, operation_outcome, versions, purged";

/// The database behind the server: SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    planner: std::sync::Arc<Planner>,
    /// The key ledger payloads are sealed with (shared by every clone of the store).
    ledger_key: LedgerKeySlot,
}

/// The ledger key of a store and its clones ([`Store::set_ledger_key`]).
pub(crate) type LedgerKeySlot = std::sync::Arc<std::sync::RwLock<Option<sealed::LedgerKey>>>;

/// Keeps the query planner's statistics in step with the data. Without them SQLite guesses
/// index selectivity and, for a search such as `subject=Patient/x&date=ge2020`, probes each
/// candidate's dates through the `(res_type, param, high)` index, which visits every dated
/// resource of the type, instead of the owner index (seen at 100,000 resources: 76.8 ms of
/// server CPU per search without statistics, 2.8 ms with); PostgreSQL's autovacuum gathers
/// them, but only a minute or more after a bulk load. So each time the versions written
/// through this store reach a threshold that doubles (1,000, 2,000, 4,000, ...), the store
/// runs `ANALYZE` in the background: on SQLite with a sampling limit, on PostgreSQL on the
/// gateway's tables (both sample, so the cost stays bounded whatever the data size).
#[derive(Debug, Default)]
pub struct Planner {
    written: std::sync::atomic::AtomicU64,
    next: std::sync::atomic::AtomicU64,
}

/// The first number of written versions after which statistics are gathered.
const FIRST_ANALYZE: u64 = 1000;

/// The gateway's tables, for PostgreSQL's `ANALYZE` (unqualified: the store's schema).
const PG_ANALYZE: &str = "ANALYZE resource, resource_version, resource_identifier, \
     search_token, search_string, search_date, search_reference, search_token_text, \
     search_reference_identifier, search_quantity, search_uri";

impl Planner {
    /// A planner for a store that already holds `rows` versions: the next run is due when
    /// they have doubled.
    fn starting_at(rows: u64) -> Planner {
        Planner {
            written: rows.into(),
            next: rows.saturating_mul(2).into(),
        }
    }

    /// Counts `n` committed versions; past the threshold, gathers statistics in the
    /// background (one run per threshold: it moves before the run starts).
    fn wrote(&self, n: u64, backend: &Backend) {
        use std::sync::atomic::Ordering;
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
        let backend = backend.clone();
        tokio::spawn(async move {
            let run = match &backend {
                Backend::Sqlite(p) => sqlx::raw_sql(sqlite::ANALYZE)
                    .execute(&p.write)
                    .await
                    .map(drop),
                Backend::Postgres(p) => sqlx::raw_sql(PG_ANALYZE).execute(p).await.map(drop),
            };
            match run {
                Ok(_) => tracing::debug!(written = total, "planner statistics gathered"),
                Err(e) => tracing::warn!(error = %e, "ANALYZE failed"),
            }
        });
    }
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(sqlite::Pools),
    Postgres(sqlx::PgPool),
}

/// A resource for [`Tx::create_fresh`]: its type, a fresh id, its JSON and its index rows.
#[derive(Debug)]
pub struct Fresh<'a> {
    /// Resource type.
    pub res_type: &'a str,
    /// A fresh id (a UUID).
    pub id: String,
    /// The JSON, without `id` and `meta.versionId`/`lastUpdated` (stamped into the stored
    /// text; the tree itself is not changed).
    pub content: &'a Json,
    /// Its search index rows.
    pub index: &'a [IndexRow],
    /// The validation warnings stored with the version (an OperationOutcome).
    pub issues: Option<String>,
}

/// An open write transaction; dropping it rolls back.
pub struct Tx {
    inner: TxInner,
    /// The planner statistics to keep current (and the store to gather them on), and the
    /// versions this transaction wrote.
    planner: (std::sync::Arc<Planner>, Backend),
    written: u64,
    ledger_key: Option<sealed::LedgerKey>,
}

enum TxInner {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Runs the same statement code on either transaction type (`$c` is the connection).
macro_rules! on_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match &mut $tx.inner {
            TxInner::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            TxInner::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// Runs the same statement code on either read pool (`$c` is the pool).
macro_rules! on_pool {
    ($store:expr, |$c:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite(p) => {
                let $c = &p.read;
                $body
            }
            Backend::Postgres(p) => {
                let $c = p;
                $body
            }
        }
    };
}

/// Builds a [`Stored`] from a row of the version columns (`VERSION_COLUMNS`).
macro_rules! stored {
    ($row:expr) => {{
        use sqlx::Row as _;
        let r = $row;
        Stored {
            res_type: r.try_get("res_type")?,
            id: r.try_get("res_id")?,
            version_id: r.try_get("version_id")?,
            last_updated: r.try_get("last_updated")?,
            deleted: r.try_get("deleted")?,
            content: r.try_get("content")?,
            issues: r.try_get("issues")?,
            site: r.try_get("site")?,
        }
    }};
}

pub mod auth;
pub mod export;

/// The search index tables (migrations 0002 and 0004).
const SEARCH_TABLES: [&str; 8] = [
    "search_token",
    "search_string",
    "search_date",
    "search_reference",
    "search_token_text",
    "search_reference_identifier",
    "search_quantity",
    "search_uri",
];

const VERSION_COLUMNS: &str =
    "v.res_type, v.res_id, v.version_id, v.last_updated, v.deleted, v.content, v.issues, v.site";

impl Store {
    /// Opens (creating and migrating as needed) the database at `url`: `postgres://...` or
    /// `postgresql://...` for PostgreSQL, `sqlite:PATH` or a plain file path for SQLite.
    ///
    /// # Errors
    /// When the database cannot be reached, created or migrated.
    pub async fn open(url: &str) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::open(url, None).await
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            sqlite::open(std::path::Path::new(path)).await
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            sqlite::open(std::path::Path::new(path)).await
        } else if url.contains("://") {
            Err(StoreError::Url(url.to_string()))
        } else {
            sqlite::open(std::path::Path::new(url)).await
        }
    }

    /// `sqlite` or `postgresql`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgresql",
        }
    }

    /// Checks the database answers.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, |c| sqlx::query("SELECT 1")
            .execute(c)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Closes the connections (waits for those in use to come back).
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(p) => {
                p.read.close().await;
                p.write.close().await;
            }
            Backend::Postgres(p) => p.close().await,
        }
    }

    /// Starts a write transaction.
    ///
    /// # Errors
    /// When no connection can be had or `BEGIN` fails.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match &self.backend {
            Backend::Sqlite(p) => Tx {
                inner: TxInner::Sqlite(p.write.begin_with("BEGIN IMMEDIATE").await?),
                planner: (self.planner.clone(), self.backend.clone()),
                written: 0,
                ledger_key: self.ledger_key(),
            },
            Backend::Postgres(p) => Tx {
                inner: TxInner::Postgres(p.begin().await?),
                planner: (self.planner.clone(), self.backend.clone()),
                written: 0,
                ledger_key: self.ledger_key(),
            },
        })
    }

    /// The current version of a resource (a delete included), if it ever existed.
    ///
    /// # Errors
    /// On database failure.
    pub async fn read(&self, res_type: &str, id: &str) -> Result<Option<Stored>> {
        let sql = current_sql();
        let row = on_pool!(self, |c| match sqlx::query(&sql)
            .bind(res_type)
            .bind(id)
            .fetch_optional(c)
            .await?
        {
            Some(r) => Some(stored!(r)),
            None => None,
        });
        Ok(row)
    }

    /// A page of the current (not deleted) resources of one type, in `id` order after
    /// `after` (keyset paging: each page is one bounded query, so a reader's memory does not
    /// grow with the data); `site` limits it to one site's resources. Returns `(id, JSON)`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn current_page(
        &self,
        res_type: &str,
        site: Option<&str>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>> {
        let mut sql = String::from(
            "SELECT r.res_id, v.content FROM resource r JOIN resource_version v \
             ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version_id = r.version_id \
             WHERE r.res_type = $1 AND NOT r.deleted AND r.res_id > $2",
        );
        if site.is_some() {
            sql.push_str(" AND r.site = $4");
        }
        sql.push_str(" ORDER BY r.res_id LIMIT $3");
        let rows = on_pool!(self, |c| {
            let mut q = sqlx::query(&sql).bind(res_type).bind(after).bind(limit);
            if let Some(site) = site {
                q = q.bind(site);
            }
            let mut out = Vec::new();
            for r in q.fetch_all(c).await? {
                use sqlx::Row as _;
                let content: Option<String> = r.try_get("content")?;
                out.push((r.try_get("res_id")?, content.unwrap_or_default()));
            }
            out
        });
        Ok(rows)
    }

    /// One version of a resource.
    ///
    /// # Errors
    /// On database failure.
    pub async fn vread(&self, res_type: &str, id: &str, version: i64) -> Result<Option<Stored>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM resource_version v \
             WHERE v.res_type = $1 AND v.res_id = $2 AND v.version_id = $3"
        );
        let row = on_pool!(self, |c| match sqlx::query(&sql)
            .bind(res_type)
            .bind(id)
            .bind(version)
            .fetch_optional(c)
            .await?
        {
            Some(r) => Some(stored!(r)),
            None => None,
        });
        Ok(row)
    }

    /// Versions, newest first: of one resource (`res_type` and `id`), of a type (`id`
    /// `None`), or of every type but the gateway's own audit records (`res_type` `None`:
    /// `AuditEvent` and `Provenance` are asked for by type); only those updated at or after
    /// `since` (instant text) when given, and those of `site` when given (tenancy); at
    /// most `count`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn history(
        &self,
        res_type: Option<&str>,
        id: Option<&str>,
        since: Option<&str>,
        count: i64,
        site: Option<&str>,
    ) -> Result<Vec<Stored>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM resource_version v \
             WHERE (($1 = '' AND v.res_type NOT IN ('AuditEvent', 'Provenance')) \
                    OR v.res_type = $1) AND ($2 = '' OR v.res_id = $2) \
             AND v.last_updated >= $3 AND ($5 OR (v.site = $6 AND v.site <> '')) \
             ORDER BY v.seq DESC LIMIT $4"
        );
        let rows = on_pool!(self, |c| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql)
                .bind(res_type.unwrap_or(""))
                .bind(id.unwrap_or(""))
                .bind(since.unwrap_or(""))
                .bind(count)
                .bind(site.is_none())
                .bind(site.unwrap_or(""))
                .fetch_all(c)
                .await?
            {
                out.push(stored!(r));
            }
            out
        });
        Ok(rows)
    }

    /// One page of the current (not deleted) resources of `res_type` matching `parsed`, of
    /// `site` only when given (tenancy), at most `limit`, in the order and from the position
    /// `parsed` asks for (`search::page_sql`); each with its position in that order. A
    /// page before a cursor comes in reverse order.
    ///
    /// # Errors
    /// On database failure.
    pub async fn search(
        &self,
        res_type: &str,
        parsed: &crate::search::Parsed,
        site: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(Stored, crate::search::Position)>> {
        let pieces = crate::search::page_sql(res_type, parsed, site, limit, VERSION_COLUMNS);
        let keys = parsed.shape.sort.len();
        let read = |r: &dyn RowAccess| -> Result<(Stored, crate::search::Position)> {
            let stored = r.stored()?;
            let mut values = Vec::with_capacity(keys);
            for i in 0..keys {
                values.push(r.text(&format!("k{i}"))?);
            }
            let id = stored.id.clone();
            Ok((stored, crate::search::Position { keys: values, id }))
        };
        let mut out = Vec::new();
        match &self.backend {
            Backend::Sqlite(p) => {
                for r in build_query::<sqlx::Sqlite>(&pieces)
                    .build()
                    .fetch_all(&p.read)
                    .await?
                {
                    out.push(read(&r)?);
                }
            }
            Backend::Postgres(p) => {
                for r in build_query::<sqlx::Postgres>(&pieces)
                    .build()
                    .fetch_all(p)
                    .await?
                {
                    out.push(read(&r)?);
                }
            }
        }
        Ok(out)
    }

    /// How many current resources of `res_type` match `parsed` (of `site` only, when
    /// given).
    ///
    /// # Errors
    /// On database failure.
    pub async fn search_count(
        &self,
        res_type: &str,
        parsed: &crate::search::Parsed,
        site: Option<&str>,
    ) -> Result<i64> {
        use sqlx::Row as _;
        let pieces = crate::search::count_sql(res_type, parsed, site);
        let n: i64 = match &self.backend {
            Backend::Sqlite(p) => build_query::<sqlx::Sqlite>(&pieces)
                .build()
                .fetch_one(&p.read)
                .await?
                .try_get("n")?,
            Backend::Postgres(p) => build_query::<sqlx::Postgres>(&pieces)
                .build()
                .fetch_one(p)
                .await?
                .try_get("n")?,
        };
        Ok(n)
    }

    /// The current resources (of `site` only, when given) that the resources `ids` of
    /// `inc.source` refer to in `inc.param`, as relative references (`Type/id`; of type
    /// `inc.target` when given): one level of `_include`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn included(
        &self,
        inc: &crate::search::Include,
        ids: &[&str],
        site: Option<&str>,
    ) -> Result<Vec<Stored>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pieces = crate::search::include_targets_sql(inc, ids);
        let mut targets: Vec<String> = Vec::new();
        match &self.backend {
            Backend::Sqlite(p) => {
                for r in build_query::<sqlx::Sqlite>(&pieces)
                    .build()
                    .fetch_all(&p.read)
                    .await?
                {
                    targets.push(RowAccess::text(&r, "target")?.unwrap_or_default());
                }
            }
            Backend::Postgres(p) => {
                for r in build_query::<sqlx::Postgres>(&pieces)
                    .build()
                    .fetch_all(p)
                    .await?
                {
                    targets.push(RowAccess::text(&r, "target")?.unwrap_or_default());
                }
            }
        }
        let refs: Vec<(String, String)> = targets
            .iter()
            .filter_map(|t| crate::search::relative_target(t, inc.target.as_deref()))
            .map(|(t, id)| (t.to_string(), id.to_string()))
            .collect();
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        self.fetch(&crate::search::resources_sql(&refs, site, VERSION_COLUMNS))
            .await
    }

    /// The current resources of `inc.source` (of `site` only, when given) that refer in
    /// `inc.param` to one of `targets` (`Type/id`): one level of `_revinclude`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn revincluded(
        &self,
        inc: &crate::search::Include,
        targets: &[String],
        site: Option<&str>,
    ) -> Result<Vec<Stored>> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        self.fetch(&crate::search::revinclude_sql(
            inc,
            targets,
            site,
            VERSION_COLUMNS,
        ))
        .await
    }

    /// Runs a query of the version columns.
    async fn fetch(&self, pieces: &[crate::search::Piece]) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        match &self.backend {
            Backend::Sqlite(p) => {
                for r in build_query::<sqlx::Sqlite>(pieces)
                    .build()
                    .fetch_all(&p.read)
                    .await?
                {
                    out.push(RowAccess::stored(&r)?);
                }
            }
            Backend::Postgres(p) => {
                for r in build_query::<sqlx::Postgres>(pieces)
                    .build()
                    .fetch_all(p)
                    .await?
                {
                    out.push(RowAccess::stored(&r)?);
                }
            }
        }
        Ok(out)
    }

    /// Records a submission outside any write transaction (for rejected or failed
    /// requests, whose transaction was rolled back). Returns the ledger row id.
    ///
    /// # Errors
    /// On database failure.
    pub async fn record(&self, submission: &Submission) -> Result<i64> {
        let mut tx = self.begin().await?;
        let id = tx.record(submission).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Ledger entries, newest first, at most `count`; only those of `site` when given.
    ///
    /// # Errors
    /// On database failure or a payload that does not decompress.
    pub async fn submissions(&self, site: Option<&str>, count: i64) -> Result<Vec<LedgerEntry>> {
        let sql = format!(
            "SELECT {LEDGER_COLUMNS}, payload, payload_key FROM submission \
             WHERE ($1 = '' OR site = $1) ORDER BY id DESC LIMIT $2"
        );
        let rows = on_pool!(self, |c| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql)
                .bind(site.unwrap_or(""))
                .bind(count)
                .fetch_all(c)
                .await?
            {
                let payload = self.payload_of(&r)?;
                out.push(ledger_entry!(r, payload));
            }
            out
        });
        Ok(rows)
    }

    /// Ledger entries matching `q`, newest first, without their payloads (see
    /// [`Store::submission`]).
    ///
    /// # Errors
    /// On database failure.
    pub async fn ledger(&self, q: &LedgerQuery) -> Result<Vec<LedgerEntry>> {
        let sql = format!(
            "SELECT {LEDGER_COLUMNS} FROM submission \
             WHERE ($1 = '' OR site = $1) AND ($2 = '' OR received >= $2) \
             AND ($3 = '' OR outcome = $3) AND ($4 = 0 OR id < $4) \
             ORDER BY id DESC LIMIT $5"
        );
        let rows = on_pool!(self, |c| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql)
                .bind(q.site.as_deref().unwrap_or(""))
                .bind(q.since.as_deref().unwrap_or(""))
                .bind(q.outcome.as_deref().unwrap_or(""))
                .bind(q.before.unwrap_or(0))
                .bind(q.count)
                .fetch_all(c)
                .await?
            {
                out.push(ledger_entry!(r, Vec::new()));
            }
            out
        });
        Ok(rows)
    }

    /// One ledger entry with its payload exactly as it was sent.
    ///
    /// # Errors
    /// On database failure or a payload that does not decompress.
    pub async fn submission(&self, id: i64) -> Result<Option<LedgerEntry>> {
        let sql =
            format!("SELECT {LEDGER_COLUMNS}, payload, payload_key FROM submission WHERE id = $1");
        let row = on_pool!(
            self,
            |c| match sqlx::query(&sql).bind(id).fetch_optional(c).await? {
                Some(r) => {
                    let payload = self.payload_of(&r)?;
                    Some(ledger_entry!(r, payload))
                }
                None => None,
            }
        );
        Ok(row)
    }
}

impl Store {
    /// Sets the key ledger payloads are sealed with from now on (for this store and its
    /// clones).
    pub fn set_ledger_key(&self, key: sealed::LedgerKey) {
        if let Ok(mut slot) = self.ledger_key.write() {
            *slot = Some(key);
        }
    }

    /// `s`'s payload compressed and sealed as [`Tx::record_sealed`] stores it, under the
    /// ledger key set now.
    ///
    /// # Errors
    /// When compression fails.
    pub fn seal_payload(&self, s: &Submission) -> Result<SealedPayload> {
        SealedPayload::new(self.ledger_key().as_ref(), s)
    }

    /// The key ledger payloads are sealed with, if one is set.
    pub fn ledger_key(&self) -> Option<sealed::LedgerKey> {
        self.ledger_key.read().ok().and_then(|k| k.clone())
    }

    /// The payload of a ledger row (`payload`, `payload_key`, `purged`, `id`, `received`,
    /// `request_id` selected): opened with the ledger key when sealed, decompressed.
    fn payload_of(&self, r: &dyn RowAccess) -> Result<Vec<u8>> {
        if r.text("purged")?.is_some() {
            return Ok(Vec::new());
        }
        let stored = r.bytes("payload")?;
        let packed = match r.text("payload_key")? {
            None => stored,
            Some(sealed_with) => {
                let row = r.int("id")?;
                let key = self.ledger_key().ok_or(sealed::SealError::NoKey(row))?;
                if key.fingerprint() != sealed_with {
                    return Err(sealed::SealError::WrongKey {
                        row,
                        sealed_with,
                        configured: key.fingerprint().to_string(),
                    }
                    .into());
                }
                let received = r.text("received")?.unwrap_or_default();
                let request_id = r.text("request_id")?.unwrap_or_default();
                key.open(&stored, &sealed::aad(&received, &request_id), row)?
            }
        };
        Ok(decompress(&packed)?)
    }

    /// Checks that the ledger key opens the ledger: the newest sealed payload must have been
    /// sealed with it.
    ///
    /// # Errors
    /// [`sealed::SealError::WrongKey`] (as [`StoreError::Seal`]) naming both fingerprints;
    /// database failures.
    pub async fn check_ledger_key(&self) -> Result<()> {
        let Some(key) = self.ledger_key() else {
            return Ok(());
        };
        let sql = "SELECT id, payload_key FROM submission \
                   WHERE payload_key IS NOT NULL ORDER BY id DESC LIMIT 1";
        let found: Option<(i64, String)> =
            on_pool!(self, |c| sqlx::query_as(sql).fetch_optional(c).await?);
        match found {
            Some((row, sealed_with)) if sealed_with != key.fingerprint() => {
                Err(sealed::SealError::WrongKey {
                    row,
                    sealed_with,
                    configured: key.fingerprint().to_string(),
                }
                .into())
            }
            _ => Ok(()),
        }
    }

    /// Purges the payloads of ledger entries received before `cutoff` (instant text, see
    /// [`sealed::cutoff`]): the payload is emptied and `purged` set to `now`; the entries
    /// stay. Returns how many were purged.
    ///
    /// # Errors
    /// On database failure.
    pub async fn purge_payloads(&self, cutoff: &str, now: &str) -> Result<u64> {
        let mut tx = self.begin().await?;
        let sql = "UPDATE submission SET payload = $1, purged = $2 \
                   WHERE received < $3 AND purged IS NULL";
        let empty: Vec<u8> = Vec::new();
        let n = on_tx!(tx, |c| sqlx::query(sql)
            .bind(&empty)
            .bind(now)
            .bind(cutoff)
            .execute(c)
            .await?
            .rows_affected());
        tx.commit().await?;
        Ok(n)
    }
}

/// Reading the columns of a row of either database.
trait RowAccess {
    /// The version columns (`VERSION_COLUMNS`) as a [`Stored`].
    fn stored(&self) -> Result<Stored>;
    /// A nullable text column.
    fn text(&self, column: &str) -> Result<Option<String>>;
    /// A blob column.
    fn bytes(&self, column: &str) -> Result<Vec<u8>>;
    /// An integer column.
    fn int(&self, column: &str) -> Result<i64>;
}

impl RowAccess for sqlx::sqlite::SqliteRow {
    fn stored(&self) -> Result<Stored> {
        Ok(stored!(self))
    }
    fn text(&self, column: &str) -> Result<Option<String>> {
        use sqlx::Row as _;
        Ok(self.try_get(column)?)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>> {
        use sqlx::Row as _;
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        use sqlx::Row as _;
        Ok(self.try_get(column)?)
    }
}

impl RowAccess for sqlx::postgres::PgRow {
    fn stored(&self) -> Result<Stored> {
        Ok(stored!(self))
    }
    fn text(&self, column: &str) -> Result<Option<String>> {
        use sqlx::Row as _;
        Ok(self.try_get(column)?)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>> {
        use sqlx::Row as _;
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        use sqlx::Row as _;
        Ok(self.try_get(column)?)
    }
}

/// A query of SQL pieces, the values bound in the database's own placeholder syntax.
fn build_query<'a, DB: sqlx::Database>(
    pieces: &'a [crate::search::Piece],
) -> sqlx::QueryBuilder<'a, DB>
where
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut qb = sqlx::QueryBuilder::new("");
    for p in pieces {
        match p {
            crate::search::Piece::Sql(s) => {
                qb.push(s);
            }
            crate::search::Piece::Bind(v) => {
                qb.push_bind(v.as_str());
            }
        }
    }
    qb
}

/// `head` followed by `VALUES (...), (...)` with every value bound.
fn values_query<'a, DB: sqlx::Database, const N: usize>(
    head: &str,
    rows: &'a [[&'a str; N]],
) -> sqlx::QueryBuilder<'a, DB>
where
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut qb = sqlx::QueryBuilder::new(head);
    qb.push_values(rows, |mut b, row| {
        for v in row {
            b.push_bind(*v);
        }
    });
    qb
}

fn current_sql() -> String {
    format!(
        "SELECT {VERSION_COLUMNS} FROM resource r JOIN resource_version v \
         ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version_id = r.version_id \
         WHERE r.res_type = $1 AND r.res_id = $2"
    )
}

impl Tx {
    /// Commits.
    ///
    /// # Errors
    /// When the commit fails (nothing of the transaction is kept then).
    pub async fn commit(self) -> Result<()> {
        match self.inner {
            TxInner::Sqlite(t) => t.commit().await?,
            TxInner::Postgres(t) => t.commit().await?,
        }
        let (planner, backend) = &self.planner;
        planner.wrote(self.written, backend);
        Ok(())
    }

    /// Serializes, until the end of this transaction, against every other transaction that
    /// locks the same `key` (the normalized criteria of a conditional interaction).
    ///
    /// # Errors
    /// On database failure (a deadlock among such locks is [`StoreError::is_retryable`]).
    pub async fn lock(&mut self, key: &str) -> Result<()> {
        if let TxInner::Postgres(t) = &mut self.inner {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .execute(&mut **t)
                .await?;
        }
        // SQLite: this transaction began with BEGIN IMMEDIATE on the single writer
        // connection, so no other write transaction runs until it ends.
        Ok(())
    }

    /// The current version of a resource (a delete included), read inside the transaction.
    ///
    /// # Errors
    /// On database failure.
    pub async fn read(&mut self, res_type: &str, id: &str) -> Result<Option<Stored>> {
        let sql = current_sql();
        let row = on_tx!(self, |c| match sqlx::query(&sql)
            .bind(res_type)
            .bind(id)
            .fetch_optional(c)
            .await?
        {
            Some(r) => Some(stored!(r)),
            None => None,
        });
        Ok(row)
    }

    /// Ids of the current (not deleted) resources of `res_type` with an identifier of this
    /// `value` (and this `system`, when given; `Some("")` means an identifier without a
    /// system), in id order.
    ///
    /// # Errors
    /// On database failure.
    pub async fn find_by_identifier(
        &mut self,
        res_type: &str,
        system: Option<&str>,
        value: &str,
    ) -> Result<Vec<String>> {
        let sql = "SELECT DISTINCT res_id FROM resource_identifier \
                   WHERE res_type = $1 AND value = $2 AND ($3 OR system = $4) \
                   ORDER BY res_id";
        let ids = on_tx!(self, |c| {
            let mut out = Vec::new();
            for r in sqlx::query(sql)
                .bind(res_type)
                .bind(value)
                .bind(system.is_none())
                .bind(system.unwrap_or(""))
                .fetch_all(c)
                .await?
            {
                use sqlx::Row as _;
                out.push(r.try_get::<String, _>("res_id")?);
            }
            out
        });
        Ok(ids)
    }

    /// Stores a new version of `res_type/id` with `content` (its `id`, `meta.versionId` and
    /// `meta.lastUpdated` set here), `issues` kept beside it and `index` as its search
    /// index rows. Creates the resource when
    /// it does not exist (or was deleted).
    ///
    /// Returns the version stored and the version it replaced (`None` when the resource
    /// was created, or re-created after a delete). When `content` equals the current
    /// version (apart from `meta.versionId` and `meta.lastUpdated`), nothing is written and
    /// both are the current version.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when `expect` names a version that is not current, or a
    /// concurrent transaction wrote the resource first; database failures.
    pub async fn put(
        &mut self,
        res_type: &str,
        id: &str,
        content: &mut Json,
        expect: Expect,
        issues: Option<&str>,
        index: &[IndexRow],
    ) -> Result<(Stored, Option<Stored>)> {
        let previous = self.read(res_type, id).await?;
        if let Expect::Version(v) = expect {
            if previous.as_ref().map(|p| p.version_id) != Some(v) {
                return Err(StoreError::Conflict);
            }
        }
        if let Some(p) = previous.as_ref().filter(|p| !p.deleted) {
            // A resubmission of what is stored (sites resend their data) makes no new
            // version: the same content stamped with the current version is the same text.
            let mut same = content.clone();
            stamp(&mut same, id, p.version_id, &p.last_updated);
            if p.content.as_deref() == Some(same.to_text().as_str()) {
                *content = same;
                return Ok((p.clone(), previous));
            }
        }
        let version_id = previous.as_ref().map_or(1, |p| p.version_id + 1);
        let last_updated = time::now();
        stamp(content, id, version_id, &last_updated);
        let text = content.to_text();
        let stored = Stored {
            res_type: res_type.to_string(),
            id: id.to_string(),
            version_id,
            last_updated,
            deleted: false,
            content: Some(text),
            issues: issues.map(str::to_string),
            site: crate::auth::tenancy::owner_of(content).unwrap_or_default(),
        };
        self.write_version(&stored, previous.as_ref().map(|p| p.version_id))
            .await?;
        // A resource never stored before has no index rows to replace.
        let fresh = previous.is_none();
        self.index_identifiers(res_type, id, identifiers(content), fresh)
            .await?;
        // A resource whose current version is live has index rows to replace; a new one,
        // or one re-created after a delete, has none.
        let live = previous.as_ref().is_some_and(|p| !p.deleted);
        self.index_search(res_type, id, index, live).await?;
        let replaced = previous.filter(|p| !p.deleted);
        Ok((stored, replaced))
    }

    /// Stores resources the caller made and gave fresh ids (UUIDs: no resource of that id
    /// exists) as their first versions, all stamped with one `lastUpdated`: one multi-row
    /// `INSERT` per table for the whole slice instead of a round of statements per
    /// resource. For the creates of transaction Bundles and the records the gateway writes
    /// itself (audit events, provenance). Returns the versions, in order.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when an id exists after all; database failures.
    pub async fn create_fresh(&mut self, resources: &mut [Fresh<'_>]) -> Result<Vec<Stored>> {
        let last_updated = time::now();
        let mut stored = Vec::with_capacity(resources.len());
        for r in resources.iter_mut() {
            stored.push(Stored {
                res_type: r.res_type.to_string(),
                id: r.id.clone(),
                version_id: 1,
                last_updated: last_updated.clone(),
                deleted: false,
                content: Some(stamped_text(r.content, &r.id, 1, &last_updated)),
                issues: r.issues.take(),
                site: crate::auth::tenancy::owner_of(r.content).unwrap_or_default(),
            });
        }
        self.written += stored.len() as u64;
        for chunk in stored.chunks(200) {
            macro_rules! insert {
                ($db:ty, $c:expr) => {{
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO resource \
                         (res_type, res_id, version_id, last_updated, deleted, site) ",
                    );
                    qb.push_values(chunk, |mut b, v| {
                        b.push_bind(v.res_type.as_str())
                            .push_bind(v.id.as_str())
                            .push_bind(v.version_id)
                            .push_bind(v.last_updated.as_str())
                            .push_bind(false)
                            .push_bind(v.site.as_str());
                    });
                    qb.build()
                        .execute(&mut **$c)
                        .await
                        .map_err(conflict_on_unique)?;
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO resource_version \
                         (res_type, res_id, version_id, last_updated, deleted, content, issues, \
                         site) ",
                    );
                    qb.push_values(chunk, |mut b, v| {
                        b.push_bind(v.res_type.as_str())
                            .push_bind(v.id.as_str())
                            .push_bind(v.version_id)
                            .push_bind(v.last_updated.as_str())
                            .push_bind(false)
                            .push_bind(v.content.as_deref())
                            .push_bind(v.issues.as_deref())
                            .push_bind(v.site.as_str());
                    });
                    qb.build()
                        .execute(&mut **$c)
                        .await
                        .map_err(conflict_on_unique)?;
                }};
            }
            match &mut self.inner {
                TxInner::Sqlite(t) => insert!(sqlx::Sqlite, t),
                TxInner::Postgres(t) => insert!(sqlx::Postgres, t),
            }
        }
        let identified: Vec<(usize, Vec<(String, String)>)> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| (i, identifiers(r.content)))
            .filter(|(_, ids)| !ids.is_empty())
            .collect();
        let rows: Vec<[&str; 4]> = identified
            .iter()
            .flat_map(|(i, ids)| {
                let r = &resources[*i];
                ids.iter()
                    .map(move |(system, value)| [r.res_type, r.id.as_str(), system, value])
            })
            .collect();
        self.insert_rows(
            "INSERT INTO resource_identifier (res_type, res_id, system, value) ",
            &rows,
        )
        .await?;
        let index: Vec<(&str, &str, &[IndexRow])> = resources
            .iter()
            .map(|r| (r.res_type, r.id.as_str(), r.index))
            .collect();
        self.insert_index(&index).await?;
        Ok(stored)
    }

    /// Records the delete of a resource as a new version. Returns that version, or `None`
    /// when the resource does not exist or is already deleted.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a concurrent transaction wrote it first; database
    /// failures.
    pub async fn delete(&mut self, res_type: &str, id: &str) -> Result<Option<Stored>> {
        let Some(previous) = self.read(res_type, id).await? else {
            return Ok(None);
        };
        if previous.deleted {
            return Ok(None);
        }
        let stored = Stored {
            res_type: res_type.to_string(),
            id: id.to_string(),
            version_id: previous.version_id + 1,
            last_updated: time::now(),
            deleted: true,
            content: None,
            issues: None,
            site: previous.site.clone(),
        };
        self.write_version(&stored, Some(previous.version_id))
            .await?;
        self.index_identifiers(res_type, id, Vec::new(), false)
            .await?;
        self.index_search(res_type, id, &[], true).await?;
        Ok(Some(stored))
    }

    /// Writes the version row and moves the current pointer by compare-and-set from
    /// `previous` (or inserts it when there was none).
    async fn write_version(&mut self, v: &Stored, previous: Option<i64>) -> Result<()> {
        self.written += 1;
        let changed = match previous {
            Some(p) => on_tx!(self, |c| sqlx::query(
                "UPDATE resource SET version_id = $3, last_updated = $4, deleted = $5, \
                 site = $7 WHERE res_type = $1 AND res_id = $2 AND version_id = $6"
            )
            .bind(&v.res_type)
            .bind(&v.id)
            .bind(v.version_id)
            .bind(&v.last_updated)
            .bind(v.deleted)
            .bind(p)
            .bind(&v.site)
            .execute(c)
            .await?
            .rows_affected()),
            None => on_tx!(self, |c| sqlx::query(
                "INSERT INTO resource (res_type, res_id, version_id, last_updated, deleted, \
                 site) VALUES ($1, $2, $3, $4, $5, $6)"
            )
            .bind(&v.res_type)
            .bind(&v.id)
            .bind(v.version_id)
            .bind(&v.last_updated)
            .bind(v.deleted)
            .bind(&v.site)
            .execute(c)
            .await
            .map_err(conflict_on_unique)?
            .rows_affected()),
        };
        if changed != 1 {
            return Err(StoreError::Conflict);
        }
        on_tx!(self, |c| sqlx::query(
            "INSERT INTO resource_version \
             (res_type, res_id, version_id, last_updated, deleted, content, issues, site) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )
        .bind(&v.res_type)
        .bind(&v.id)
        .bind(v.version_id)
        .bind(&v.last_updated)
        .bind(v.deleted)
        .bind(v.content.as_deref())
        .bind(v.issues.as_deref())
        .bind(&v.site)
        .execute(c)
        .await
        .map_err(conflict_on_unique)?
        .rows_affected());
        Ok(())
    }

    /// Replaces the identifier rows of a resource (`fresh`: it has none yet).
    async fn index_identifiers(
        &mut self,
        res_type: &str,
        id: &str,
        identifiers: Vec<(String, String)>,
        fresh: bool,
    ) -> Result<()> {
        if !fresh {
            on_tx!(self, |c| sqlx::query(
                "DELETE FROM resource_identifier WHERE res_type = $1 AND res_id = $2"
            )
            .bind(res_type)
            .bind(id)
            .execute(c)
            .await?
            .rows_affected());
        }
        let rows: Vec<[&str; 4]> = identifiers
            .iter()
            .map(|(system, value)| [res_type, id, system.as_str(), value.as_str()])
            .collect();
        self.insert_rows(
            "INSERT INTO resource_identifier (res_type, res_id, system, value) ",
            &rows,
        )
        .await
    }

    /// Replaces the search index rows of a resource (`existing`: it may have some; a new
    /// resource, or one re-created after a delete, has none, which saves a statement per
    /// index table): one multi-row `INSERT` per table.
    async fn index_search(
        &mut self,
        res_type: &str,
        id: &str,
        rows: &[IndexRow],
        existing: bool,
    ) -> Result<()> {
        let tables: &[&str] = if existing { &SEARCH_TABLES } else { &[] };
        for table in tables {
            let sql = format!("DELETE FROM {table} WHERE res_type = $1 AND res_id = $2");
            on_tx!(self, |c| sqlx::query(&sql)
                .bind(res_type)
                .bind(id)
                .execute(c)
                .await?
                .rows_affected());
        }
        self.insert_index(&[(res_type, id, rows)]).await
    }

    /// Inserts the search index rows of several resources (which have none yet): one
    /// multi-row `INSERT` per table and 200 rows, whatever the number of resources.
    async fn insert_index(&mut self, resources: &[(&str, &str, &[IndexRow])]) -> Result<()> {
        let (mut tokens, mut strings, mut dates, mut references) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut texts, mut ref_ids, mut uris) = (Vec::new(), Vec::new(), Vec::new());
        let mut quantities = Vec::new();
        for &(res_type, id, rows) in resources {
            for row in rows {
                match row {
                    IndexRow::Quantity { .. } => quantities.push((res_type, id, row)),
                    IndexRow::TokenText { param, text } => {
                        texts.push([res_type, id, param.as_str(), text.as_str()]);
                    }
                    IndexRow::ReferenceIdentifier {
                        param,
                        system,
                        value,
                    } => ref_ids.push([
                        res_type,
                        id,
                        param.as_str(),
                        system.as_str(),
                        value.as_str(),
                    ]),
                    IndexRow::Uri { param, uri } => {
                        uris.push([res_type, id, param.as_str(), uri.as_str()]);
                    }
                    IndexRow::Token {
                        param,
                        system,
                        code,
                    } => {
                        tokens.push([res_type, id, param.as_str(), system.as_str(), code.as_str()])
                    }
                    IndexRow::String { param, value } => {
                        strings.push([res_type, id, param.as_str(), value.as_str()]);
                    }
                    IndexRow::Date { param, low, high } => {
                        dates.push([res_type, id, param.as_str(), low.as_str(), high.as_str()]);
                    }
                    IndexRow::Reference { param, target } => {
                        references.push([res_type, id, param.as_str(), target.as_str()]);
                    }
                }
            }
        }
        for (res_type, id, row) in quantities {
            if let IndexRow::Quantity {
                param,
                system,
                code,
                unit,
                low,
                high,
                canon,
            } = row
            {
                self.index_quantity(
                    res_type,
                    id,
                    param,
                    [system, code, unit],
                    *low,
                    *high,
                    canon,
                )
                .await?;
            }
        }
        self.insert_rows(
            "INSERT INTO search_token (res_type, res_id, param, system, code) ",
            &tokens,
        )
        .await?;
        self.insert_rows(
            "INSERT INTO search_string (res_type, res_id, param, value) ",
            &strings,
        )
        .await?;
        self.insert_rows(
            "INSERT INTO search_date (res_type, res_id, param, low, high) ",
            &dates,
        )
        .await?;
        self.insert_rows(
            "INSERT INTO search_reference (res_type, res_id, param, target) ",
            &references,
        )
        .await?;
        self.insert_rows(
            "INSERT INTO search_token_text (res_type, res_id, param, text) ",
            &texts,
        )
        .await?;
        self.insert_rows(
            "INSERT INTO search_reference_identifier (res_type, res_id, param, system, value) ",
            &ref_ids,
        )
        .await?;
        self.insert_rows(
            "INSERT INTO search_uri (res_type, res_id, param, uri) ",
            &uris,
        )
        .await
    }

    /// Inserts text rows with `head` (`INSERT INTO t (columns) `), up to 200 rows per
    /// statement: each statement is a round trip (to the SQLite worker thread or the
    /// PostgreSQL server), so one per row made index writes the bulk of a write's cost.
    async fn insert_rows<const N: usize>(&mut self, head: &str, rows: &[[&str; N]]) -> Result<()> {
        for chunk in rows.chunks(200) {
            match &mut self.inner {
                TxInner::Sqlite(t) => {
                    values_query::<sqlx::Sqlite, N>(head, chunk)
                        .build()
                        .execute(&mut **t)
                        .await?;
                }
                TxInner::Postgres(t) => {
                    values_query::<sqlx::Postgres, N>(head, chunk)
                        .build()
                        .execute(&mut **t)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Inserts a quantity (or number) index row; values are stored as floating point.
    #[allow(clippy::too_many_arguments)]
    async fn index_quantity(
        &mut self,
        res_type: &str,
        id: &str,
        param: &str,
        [system, code, unit]: [&String; 3],
        low: rust_decimal::Decimal,
        high: rust_decimal::Decimal,
        canon: &Option<(String, rust_decimal::Decimal, rust_decimal::Decimal)>,
    ) -> Result<()> {
        use rust_decimal::prelude::ToPrimitive as _;
        let f = |d: rust_decimal::Decimal| d.to_f64().unwrap_or(0.0);
        let (canon_code, canon_low, canon_high) = match canon {
            Some((c, l, h)) => (c.as_str(), f(*l), f(*h)),
            None => ("", f(low), f(high)),
        };
        let sql = "INSERT INTO search_quantity (res_type, res_id, param, system, code, unit, \
                   low, high, canon_code, canon_low, canon_high) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
        on_tx!(self, |c| sqlx::query(sql)
            .bind(res_type)
            .bind(id)
            .bind(param)
            .bind(system)
            .bind(code)
            .bind(unit)
            .bind(f(low))
            .bind(f(high))
            .bind(canon_code)
            .bind(canon_low)
            .bind(canon_high)
            .execute(c)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Search index rows of a current resource, sorted (for tests and diagnostics).
    ///
    /// # Errors
    /// On database failure.
    pub async fn index_rows(&mut self, res_type: &str, id: &str) -> Result<Vec<IndexRow>> {
        let mut out = Vec::new();
        let sql = "SELECT 't' AS kind, param, system AS a, code AS b FROM search_token \
                   WHERE res_type = $1 AND res_id = $2 \
                   UNION ALL SELECT 's', param, value, '' FROM search_string \
                   WHERE res_type = $1 AND res_id = $2 \
                   UNION ALL SELECT 'd', param, low, high FROM search_date \
                   WHERE res_type = $1 AND res_id = $2 \
                   UNION ALL SELECT 'r', param, target, '' FROM search_reference \
                   WHERE res_type = $1 AND res_id = $2 \
                   UNION ALL SELECT 'x', param, text, '' FROM search_token_text \
                   WHERE res_type = $1 AND res_id = $2 \
                   UNION ALL SELECT 'i', param, system, value FROM search_reference_identifier \
                   WHERE res_type = $1 AND res_id = $2 \
                   UNION ALL SELECT 'u', param, uri, '' FROM search_uri \
                   WHERE res_type = $1 AND res_id = $2";
        let rows = on_tx!(self, |c| {
            let mut rows = Vec::new();
            for r in sqlx::query(sql)
                .bind(res_type)
                .bind(id)
                .fetch_all(c)
                .await?
            {
                use sqlx::Row as _;
                let kind: String = r.try_get("kind")?;
                let param: String = r.try_get("param")?;
                let a: String = r.try_get("a")?;
                let b: String = r.try_get("b")?;
                rows.push((kind, param, a, b));
            }
            rows
        });
        for (kind, param, a, b) in rows {
            out.push(match kind.as_str() {
                "t" => IndexRow::Token {
                    param,
                    system: a,
                    code: b,
                },
                "s" => IndexRow::String { param, value: a },
                "d" => IndexRow::Date {
                    param,
                    low: a,
                    high: b,
                },
                "x" => IndexRow::TokenText { param, text: a },
                "i" => IndexRow::ReferenceIdentifier {
                    param,
                    system: a,
                    value: b,
                },
                "u" => IndexRow::Uri { param, uri: a },
                _ => IndexRow::Reference { param, target: a },
            });
        }
        let sql = "SELECT param, system, code, unit, low, high, canon_code, canon_low, \
                   canon_high FROM search_quantity WHERE res_type = $1 AND res_id = $2";
        let dec = |f: f64| rust_decimal::Decimal::try_from(f).unwrap_or_default();
        on_tx!(self, |c| {
            for r in sqlx::query(sql)
                .bind(res_type)
                .bind(id)
                .fetch_all(c)
                .await?
            {
                use sqlx::Row as _;
                let canon_code: String = r.try_get("canon_code")?;
                let (low, high): (f64, f64) = (r.try_get("low")?, r.try_get("high")?);
                let (canon_low, canon_high): (f64, f64) =
                    (r.try_get("canon_low")?, r.try_get("canon_high")?);
                out.push(IndexRow::Quantity {
                    param: r.try_get("param")?,
                    system: r.try_get("system")?,
                    code: r.try_get("code")?,
                    unit: r.try_get("unit")?,
                    low: dec(low),
                    high: dec(high),
                    canon: (!canon_code.is_empty())
                        .then(|| (canon_code, dec(canon_low), dec(canon_high))),
                });
            }
        });
        out.sort();
        Ok(out)
    }

    /// Adds a submission to the ledger (its payload compressed). Returns the row id.
    ///
    /// # Errors
    /// On database failure.
    pub async fn record(&mut self, s: &Submission) -> Result<i64> {
        let sealed = SealedPayload::new(self.ledger_key.as_ref(), s)?;
        self.record_sealed(s, &sealed).await
    }

    /// Records `s` with its payload as `sealed` ([`Store::seal_payload`], made before the
    /// transaction began so that a large payload is not compressed while the transaction
    /// holds the write lock); `s.payload` itself is not read.
    ///
    /// # Errors
    /// On database failure.
    pub async fn record_sealed(&mut self, s: &Submission, sealed: &SealedPayload) -> Result<i64> {
        let (payload, key, size) = (&sealed.bytes, &sealed.key, sealed.size);
        let versions = s.versions.join(" ");
        let sql = "INSERT INTO submission (received, request_id, client, site, method, url, \
                   content_type, payload, payload_size, outcome, status, operation_outcome, \
                   versions, payload_key) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                   RETURNING id";
        let id = on_tx!(self, |c| {
            use sqlx::Row as _;
            sqlx::query(sql)
                .bind(&s.received)
                .bind(&s.request_id)
                .bind(&s.client)
                .bind(&s.site)
                .bind(&s.method)
                .bind(&s.url)
                .bind(s.content_type.as_deref())
                .bind(payload)
                .bind(size)
                .bind(&s.outcome)
                .bind(i64::from(s.status))
                .bind(s.operation_outcome.as_deref())
                .bind(&versions)
                .bind(key.as_deref())
                .fetch_one(c)
                .await?
                .try_get::<i64, _>("id")?
        });
        Ok(id)
    }
}

/// A submission's payload as the ledger row keeps it: gzip-compressed and, under a ledger
/// key, sealed with the row's `received` and `request_id` as associated data.
#[derive(Debug, Clone)]
pub struct SealedPayload {
    bytes: Vec<u8>,
    key: Option<String>,
    size: i64,
}

impl SealedPayload {
    fn new(key: Option<&sealed::LedgerKey>, s: &Submission) -> Result<SealedPayload> {
        let packed = compress(&s.payload)?;
        let (bytes, key) = match key {
            Some(k) => (
                k.seal(&packed, &sealed::aad(&s.received, &s.request_id)),
                Some(k.fingerprint().to_string()),
            ),
            None => (packed, None),
        };
        Ok(SealedPayload {
            bytes,
            key,
            size: i64::try_from(s.payload.len()).unwrap_or(i64::MAX),
        })
    }
}

/// A unique-key violation while claiming a (type, id) means a concurrent writer won.
fn conflict_on_unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Database(e),
    }
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated` of a resource (other `meta` members
/// are kept); `id` and `meta` go right after `resourceType` when they are new.
pub fn stamp(resource: &mut Json, id: &str, version_id: i64, last_updated: &str) {
    let Json::Object(members) = resource else {
        return;
    };
    let after_type = usize::from(members.first().is_some_and(|(k, _)| k == "resourceType"));
    match members.iter_mut().find(|(k, _)| k == "id") {
        Some((_, v)) => *v = Json::String(id.to_string()),
        None => members.insert(after_type, ("id".into(), Json::String(id.to_string()))),
    }
    let version = Json::String(version_id.to_string());
    let updated = Json::String(last_updated.to_string());
    match members.iter_mut().find(|(k, _)| k == "meta") {
        Some((_, Json::Object(meta))) => {
            meta.retain(|(k, _)| k != "versionId" && k != "lastUpdated");
            meta.insert(0, ("lastUpdated".into(), updated));
            meta.insert(0, ("versionId".into(), version));
        }
        _ => {
            members.retain(|(k, _)| k != "meta");
            let at = members
                .iter()
                .position(|(k, _)| k == "id")
                .map_or(0, |p| p + 1);
            members.insert(
                at,
                (
                    "meta".into(),
                    Json::Object(vec![
                        ("versionId".into(), version),
                        ("lastUpdated".into(), updated),
                    ]),
                ),
            );
        }
    }
}

/// The text of `resource` as [`stamp`] would leave it, without changing or copying the
/// tree: `id` in place or after `resourceType`, `meta.versionId` and `meta.lastUpdated`
/// first in `meta` (a `meta` that is not an object replaced, a missing one added after
/// `id`).
pub fn stamped_text(resource: &Json, id: &str, version_id: i64, last_updated: &str) -> String {
    /// One member of the stamped object.
    enum Part<'a> {
        Member(&'a str, &'a Json),
        Id,
        Meta(&'a [(String, Json)]),
    }
    let Json::Object(members) = resource else {
        return resource.to_text();
    };
    let after_type = usize::from(members.first().is_some_and(|(k, _)| k == "resourceType"));
    let has_id = members.iter().any(|(k, _)| k == "id");
    let meta = members.iter().find(|(k, _)| k == "meta").map(|(_, v)| v);
    let mut parts: Vec<Part<'_>> = Vec::with_capacity(members.len() + 2);
    for (i, (k, v)) in members.iter().enumerate() {
        if i == after_type && !has_id {
            parts.push(Part::Id);
        }
        match (k.as_str(), v) {
            ("id", _) => parts.push(Part::Id),
            // Keys are unique, so this is the one `meta`; one that is not an object is
            // replaced by a new one after `id`.
            ("meta", Json::Object(m)) => parts.push(Part::Meta(m)),
            ("meta", _) => {}
            _ => parts.push(Part::Member(k, v)),
        }
    }
    if !has_id && after_type >= members.len() {
        parts.push(Part::Id);
    }
    if !matches!(meta, Some(Json::Object(_))) {
        let at = parts
            .iter()
            .position(|p| matches!(p, Part::Id))
            .map_or(0, |p| p + 1);
        parts.insert(at, Part::Meta(&[]));
    }
    let mut out = String::with_capacity(256);
    out.push('{');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match part {
            Part::Member(k, v) => {
                write_str(&mut out, k);
                out.push(':');
                v.write_to(&mut out);
            }
            Part::Id => {
                out.push_str("\"id\":");
                write_str(&mut out, id);
            }
            Part::Meta(rest) => {
                out.push_str("\"meta\":{\"versionId\":");
                write_str(&mut out, &version_id.to_string());
                out.push_str(",\"lastUpdated\":");
                write_str(&mut out, last_updated);
                for (k, v) in rest.iter() {
                    if k == "versionId" || k == "lastUpdated" {
                        continue;
                    }
                    out.push(',');
                    write_str(&mut out, k);
                    out.push(':');
                    v.write_to(&mut out);
                }
                out.push('}');
            }
        }
    }
    out.push('}');
    out
}

/// The (system, value) pairs of a resource's top-level `identifier`s (system `""` when
/// absent); identifiers without a value are skipped.
pub fn identifiers(resource: &Json) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = resource
        .get("identifier")
        .map(Json::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|i| {
            let value = i.get("value")?.as_str()?;
            let system = i.get("system").and_then(Json::as_str).unwrap_or("");
            Some((system.to_string(), value.to_string()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn compress(payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(payload)?;
    enc.finish()
}

fn decompress(payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(payload).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_sets_id_and_meta_in_place() {
        let mut r = Json::parse(
            r#"{"resourceType":"Patient","meta":{"profile":["x"],"versionId":"9"},"active":true}"#,
            16,
        )
        .expect("json");
        stamp(&mut r, "p1", 2, "2026-01-01T00:00:00.000Z");
        assert_eq!(
            r.to_text(),
            r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"2","lastUpdated":"2026-01-01T00:00:00.000Z","profile":["x"]},"active":true}"#
        );
        let mut bare = Json::parse(r#"{"resourceType":"Patient"}"#, 16).expect("json");
        stamp(&mut bare, "p2", 1, "t");
        assert_eq!(
            bare.to_text(),
            r#"{"resourceType":"Patient","id":"p2","meta":{"versionId":"1","lastUpdated":"t"}}"#
        );
    }

    #[test]
    fn stamped_text_is_the_text_of_the_stamped_tree() {
        for text in [
            r#"{"resourceType":"Patient","meta":{"profile":["x"],"versionId":"9"},"active":true}"#,
            r#"{"resourceType":"Patient"}"#,
            r#"{}"#,
            r#"{"active":true}"#,
            r#"{"resourceType":"Observation","id":"old","status":"final"}"#,
            r#"{"resourceType":"Observation","status":"final","id":"old","meta":{"lastUpdated":"x","tag":[{"code":"t"}]}}"#,
            r#"{"resourceType":"Observation","status":"final","meta":"not an object","code":{}}"#,
            r#"{"status":"final","resourceType":"Observation","meta":{}}"#,
            r#"{"resourceType":"Observation","meta":{"security":[{"code":"s"}]},"id":"x"}"#,
        ] {
            let json = Json::parse(text, 16).expect("json");
            let mut tree = json.clone();
            stamp(&mut tree, "n\"ew", 3, "2026-01-01T00:00:00.000Z");
            assert_eq!(
                stamped_text(&json, "n\"ew", 3, "2026-01-01T00:00:00.000Z"),
                tree.to_text(),
                "{text}"
            );
        }
    }

    #[test]
    fn payloads_round_trip_through_compression() {
        let data = b"{\"resourceType\":\"Bundle\"}".repeat(100);
        let packed = compress(&data).expect("compress");
        assert!(packed.len() < data.len() / 5);
        assert_eq!(decompress(&packed).expect("decompress"), data);
    }
}
