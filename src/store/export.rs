//! The tables of Bulk Data export jobs (migration `0006_export`) and the keyset-paged read of
//! current resources an export streams from. Only SQL lives here; what the rows mean is
//! `crate::export`'s business.
//!
//! A job is claimed by one replica at a time: a claim sets `claimed_by` and a lease
//! (`lease_until`, instant text) on a job that is queued, or running with a lease that has
//! expired; on PostgreSQL the candidate row is picked `FOR UPDATE SKIP LOCKED`, on SQLite the
//! one writer connection makes the `UPDATE` atomic. Every later write of the owner (a
//! checkpoint, the end) names it and the job: when another replica took the job over, or it
//! was cancelled, the write changes nothing and the owner stops.

use super::{build_query, Backend, Result, Store, TxInner};
use crate::search::Piece;
use sqlx::Row as _;

/// An export job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportJobRow {
    /// The job id (in the status URL).
    pub id: String,
    /// The client that asked for it (only it may poll, cancel and download).
    pub client: String,
    /// That client's site.
    pub site: String,
    /// That client's role (`site`, `sponsor`, `admin`).
    pub role: String,
    /// The scopes its token granted, space-separated.
    pub scope: String,
    /// The kick-off request URL, as the manifest's `request`.
    pub request: String,
    /// The parsed kick-off parameters (JSON, `crate::export`'s format).
    pub params: String,
    /// `queued`, `running`, `done` or `failed`.
    pub status: String,
    /// The manifest's `transactionTime` (instant text).
    pub transaction_time: String,
    /// When it was asked for.
    pub created: String,
    /// The replica running it.
    pub claimed_by: Option<String>,
    /// Until when that replica's claim holds.
    pub lease_until: Option<String>,
    /// When it ended.
    pub finished: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One output file of a job, with how far it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOutputRow {
    /// The job.
    pub job_id: String,
    /// The resource type of its lines.
    pub res_type: String,
    /// `output` (resources) or `error` (OperationOutcomes).
    pub kind: String,
    /// The file name in the job's folder.
    pub file: String,
    /// The id of the last resource written (keyset position; `''` before the first).
    pub position: String,
    /// The file's length at that position.
    pub bytes: i64,
    /// Lines written up to that position.
    pub count: i64,
    /// Whether the type is complete.
    pub done: bool,
}

/// How PostgreSQL runs a keyset page (`stream_rows`): in a read-only transaction whose
/// planner walks the type's index in id order and stops after the page. Its row estimate for
/// `res_type = $1 AND res_id > $2` multiplies the two selectivities, which is far too low
/// when ids are correlated with the type (ids with a type prefix, as in `bench export`):
/// believing the page needs every remaining row, it chose a hash join and a sort of all the
/// remaining rows of the type on every page (the 30,000 Patients of a 300,000-resource store
/// shaped like the bench, in pages of 5,000: 674 ms with those plans, 82 ms with these), and
/// for small ranges a parallel plan whose workers cost more than the page.
const PG_PAGE_BEGIN: &str = "BEGIN READ ONLY; SET LOCAL enable_sort = off; \
     SET LOCAL enable_hashjoin = off; SET LOCAL max_parallel_workers_per_gather = 0";

const JOB_COLUMNS: &str = "id, client, site, role, scope, request, params, status, \
     transaction_time, created, claimed_by, lease_until, finished, error";
const OUTPUT_COLUMNS: &str = "job_id, res_type, kind, file, position, bytes, count, done";

macro_rules! job_row {
    ($r:expr) => {{
        let r = $r;
        ExportJobRow {
            id: r.try_get("id")?,
            client: r.try_get("client")?,
            site: r.try_get("site")?,
            role: r.try_get("role")?,
            scope: r.try_get("scope")?,
            request: r.try_get("request")?,
            params: r.try_get("params")?,
            status: r.try_get("status")?,
            transaction_time: r.try_get("transaction_time")?,
            created: r.try_get("created")?,
            claimed_by: r.try_get("claimed_by")?,
            lease_until: r.try_get("lease_until")?,
            finished: r.try_get("finished")?,
            error: r.try_get("error")?,
        }
    }};
}

macro_rules! output_row {
    ($r:expr) => {{
        let r = $r;
        ExportOutputRow {
            job_id: r.try_get("job_id")?,
            res_type: r.try_get("res_type")?,
            kind: r.try_get("kind")?,
            file: r.try_get("file")?,
            position: r.try_get("position")?,
            bytes: r.try_get("bytes")?,
            count: r.try_get("count")?,
            done: r.try_get("done")?,
        }
    }};
}

impl Store {
    /// Records a new job (its status as given, normally `queued`).
    ///
    /// # Errors
    /// On database failure.
    pub async fn export_insert(&self, j: &ExportJobRow) -> Result<()> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO export_job ({JOB_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        );
        on_tx!(tx, |c| sqlx::query(&sql)
            .bind(&j.id)
            .bind(&j.client)
            .bind(&j.site)
            .bind(&j.role)
            .bind(&j.scope)
            .bind(&j.request)
            .bind(&j.params)
            .bind(&j.status)
            .bind(&j.transaction_time)
            .bind(&j.created)
            .bind(&j.claimed_by)
            .bind(&j.lease_until)
            .bind(&j.finished)
            .bind(&j.error)
            .execute(c)
            .await?
            .rows_affected());
        tx.commit().await
    }

    /// One job by id.
    ///
    /// # Errors
    /// On database failure.
    pub async fn export_job(&self, id: &str) -> Result<Option<ExportJobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM export_job WHERE id = $1");
        let row = on_pool!(
            self,
            |c| match sqlx::query(&sql).bind(id).fetch_optional(c).await? {
                Some(r) => Some(job_row!(&r)),
                None => None,
            }
        );
        Ok(row)
    }

    /// The output rows of a job, by kind and type.
    ///
    /// # Errors
    /// On database failure.
    pub async fn export_outputs(&self, id: &str) -> Result<Vec<ExportOutputRow>> {
        let sql = format!(
            "SELECT {OUTPUT_COLUMNS} FROM export_output WHERE job_id = $1 ORDER BY kind DESC, res_type"
        );
        let rows = on_pool!(self, |c| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql).bind(id).fetch_all(c).await? {
                out.push(output_row!(&r));
            }
            out
        });
        Ok(rows)
    }

    /// Claims the oldest job that is queued, or running under a lease that ended before
    /// `now`, for `owner` until `lease_until`. Returns it, or `None` when there is none.
    ///
    /// # Errors
    /// On database failure.
    pub async fn export_claim(
        &self,
        owner: &str,
        now: &str,
        lease_until: &str,
    ) -> Result<Option<ExportJobRow>> {
        // PostgreSQL: the candidate is locked, and rows locked by another replica's claim
        // are skipped; SQLite: the statement runs on the one writer connection, atomically.
        let lock = match self.backend {
            Backend::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite(_) => "",
        };
        let open = "(status = 'queued' OR (status = 'running' AND \
                    (lease_until IS NULL OR lease_until < $3)))";
        let sql = format!(
            "UPDATE export_job SET status = 'running', claimed_by = $1, lease_until = $2 \
             WHERE id = (SELECT id FROM export_job WHERE {open} ORDER BY created, id LIMIT 1{lock}) \
             AND {open} RETURNING {JOB_COLUMNS}"
        );
        let mut tx = self.begin().await?;
        let row = on_tx!(tx, |c| match sqlx::query(&sql)
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .fetch_optional(c)
            .await?
        {
            Some(r) => Some(job_row!(&r)),
            None => None,
        });
        tx.commit().await?;
        Ok(row)
    }

    /// Saves how far `owner` got with one output file of a running job it holds and
    /// renews its lease, in one transaction. Returns `false` (and changes nothing) when the
    /// job is no longer `owner`'s running job (cancelled, or taken over).
    ///
    /// # Errors
    /// On database failure.
    pub async fn export_checkpoint(
        &self,
        owner: &str,
        lease_until: &str,
        out: Option<&ExportOutputRow>,
        job_id: &str,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let held = on_tx!(tx, |c| sqlx::query(
            "UPDATE export_job SET lease_until = $1 \
             WHERE id = $2 AND claimed_by = $3 AND status = 'running'"
        )
        .bind(lease_until)
        .bind(job_id)
        .bind(owner)
        .execute(c)
        .await?
        .rows_affected());
        if held != 1 {
            return Ok(false);
        }
        if let Some(o) = out {
            let sql = format!(
                "INSERT INTO export_output ({OUTPUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (job_id, kind, res_type) DO UPDATE SET file = excluded.file, \
                 position = excluded.position, bytes = excluded.bytes, count = excluded.count, \
                 done = excluded.done"
            );
            on_tx!(tx, |c| sqlx::query(&sql)
                .bind(&o.job_id)
                .bind(&o.res_type)
                .bind(&o.kind)
                .bind(&o.file)
                .bind(&o.position)
                .bind(o.bytes)
                .bind(o.count)
                .bind(o.done)
                .execute(c)
                .await?
                .rows_affected());
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Ends `owner`'s running job as `status` (`done` or `failed`, with `error`) at
    /// `finished`. Returns `false` when it was no longer `owner`'s running job.
    ///
    /// # Errors
    /// On database failure.
    pub async fn export_finish(
        &self,
        id: &str,
        owner: &str,
        status: &str,
        error: Option<&str>,
        finished: &str,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = on_tx!(tx, |c| sqlx::query(
            "UPDATE export_job SET status = $1, error = $2, finished = $3, claimed_by = NULL, \
             lease_until = NULL WHERE id = $4 AND claimed_by = $5 AND status = 'running'"
        )
        .bind(status)
        .bind(error)
        .bind(finished)
        .bind(id)
        .bind(owner)
        .execute(c)
        .await?
        .rows_affected());
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Gives up `owner`'s claim on a running job (a replica shutting down), so another
    /// replica takes it at once.
    ///
    /// # Errors
    /// On database failure.
    pub async fn export_release(&self, id: &str, owner: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        on_tx!(tx, |c| sqlx::query(
            "UPDATE export_job SET claimed_by = NULL, lease_until = NULL \
             WHERE id = $1 AND claimed_by = $2 AND status = 'running'"
        )
        .bind(id)
        .bind(owner)
        .execute(c)
        .await?
        .rows_affected());
        tx.commit().await
    }

    /// Deletes a job and its output rows. Returns whether it existed.
    ///
    /// # Errors
    /// On database failure.
    pub async fn export_delete(&self, id: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        on_tx!(tx, |c| sqlx::query(
            "DELETE FROM export_output WHERE job_id = $1"
        )
        .bind(id)
        .execute(c)
        .await?
        .rows_affected());
        let n = on_tx!(tx, |c| sqlx::query("DELETE FROM export_job WHERE id = $1")
            .bind(id)
            .execute(c)
            .await?
            .rows_affected());
        tx.commit().await?;
        Ok(n == 1)
    }

    /// The ids of jobs that ended before `cutoff` (instant text).
    ///
    /// # Errors
    /// On database failure.
    pub async fn export_expired(&self, cutoff: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = on_pool!(self, |c| sqlx::query_as(
            "SELECT id FROM export_job WHERE status IN ('done', 'failed') AND finished < $1"
        )
        .bind(cutoff)
        .fetch_all(c)
        .await?);
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// The types that have current resources (of `site` only, when given), sorted.
    ///
    /// # Errors
    /// On database failure.
    pub async fn resource_types(&self, site: Option<&str>) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = on_pool!(self, |c| sqlx::query_as(
            "SELECT DISTINCT res_type FROM resource \
             WHERE NOT deleted AND ($1 OR site = $2) ORDER BY res_type"
        )
        .bind(site.is_none())
        .bind(site.unwrap_or(""))
        .fetch_all(c)
        .await?);
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// Stores new resources of one type as version 1, current, without search index rows
    /// or identifiers, in one transaction: the bulk load of `bench export` (the content
    /// must already carry its `id` and `meta`).
    ///
    /// # Errors
    /// On database failure (an id already stored is a unique violation).
    pub async fn bulk_insert(
        &self,
        res_type: &str,
        rows: &[(String, String)],
        last_updated: &str,
        site: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        for chunk in rows.chunks(1000) {
            macro_rules! insert {
                ($db:ty, $c:expr) => {{
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO resource_version \
                         (res_type, res_id, version_id, last_updated, deleted, content, site) ",
                    );
                    qb.push_values(chunk, |mut b, (id, content)| {
                        b.push_bind(res_type)
                            .push_bind(id.as_str())
                            .push_bind(1i64)
                            .push_bind(last_updated)
                            .push_bind(false)
                            .push_bind(content.as_str())
                            .push_bind(site);
                    });
                    qb.build().execute(&mut **$c).await?;
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO resource \
                         (res_type, res_id, version_id, last_updated, deleted, site) ",
                    );
                    qb.push_values(chunk, |mut b, (id, _)| {
                        b.push_bind(res_type)
                            .push_bind(id.as_str())
                            .push_bind(1i64)
                            .push_bind(last_updated)
                            .push_bind(false)
                            .push_bind(site);
                    });
                    qb.build().execute(&mut **$c).await?;
                }};
            }
            match &mut tx.inner {
                TxInner::Sqlite(t) => insert!(sqlx::Sqlite, t),
                TxInner::Postgres(t) => insert!(sqlx::Postgres, t),
            }
        }
        tx.commit().await
    }

    /// Gathers planner statistics now (after a bulk load: without them PostgreSQL plans a
    /// keyset page as a bitmap scan and a sort of every remaining row).
    ///
    /// # Errors
    /// On database failure.
    pub async fn analyze(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(p) => sqlx::raw_sql(super::sqlite::ANALYZE)
                .execute(&p.write)
                .await
                .map(drop)?,
            Backend::Postgres(p) => sqlx::raw_sql(super::PG_ANALYZE)
                .execute(p)
                .await
                .map(drop)?,
        }
        Ok(())
    }

    /// Runs a query of `(res_id, content)` rows built from `pieces` and hands each row to
    /// `row` as it arrives from the database (nothing is collected); stops at the first
    /// error `row` returns. Returns the rows seen. Meant for keyset pages in id order: on
    /// PostgreSQL the query runs with the planner settings of [`PG_PAGE_BEGIN`].
    ///
    /// # Errors
    /// On database failure, or `row`'s error.
    pub async fn stream_rows<E: From<super::StoreError>>(
        &self,
        pieces: &[Piece],
        mut row: impl FnMut(&str, &str) -> std::result::Result<(), E>,
    ) -> std::result::Result<u64, E> {
        use futures_core::Stream;
        use std::pin::Pin;
        async fn drain<'a, S, E>(
            mut stream: Pin<Box<S>>,
            row: &mut impl FnMut(&str, &str) -> std::result::Result<(), E>,
        ) -> std::result::Result<u64, E>
        where
            S: Stream<Item = std::result::Result<(String, String), sqlx::Error>> + ?Sized + 'a,
            E: From<super::StoreError>,
        {
            let mut n = 0;
            while let Some(next) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
                let (id, content) = next.map_err(|e| E::from(super::StoreError::from(e)))?;
                row(&id, &content)?;
                n += 1;
            }
            Ok(n)
        }
        match &self.backend {
            Backend::Sqlite(p) => {
                let mut qb = build_query::<sqlx::Sqlite>(pieces);
                let q = qb.build_query_as::<(String, String)>();
                drain(Box::pin(q.fetch(&p.read)), &mut row).await
            }
            Backend::Postgres(p) => {
                let mut tx = p
                    .begin_with(PG_PAGE_BEGIN)
                    .await
                    .map_err(|e| E::from(super::StoreError::from(e)))?;
                let mut qb = build_query::<sqlx::Postgres>(pieces);
                let q = qb.build_query_as::<(String, String)>();
                let n = drain(Box::pin(q.fetch(&mut *tx)), &mut row).await?;
                tx.commit()
                    .await
                    .map_err(|e| E::from(super::StoreError::from(e)))?;
                Ok(n)
            }
        }
    }
}
