//! The audit trail: an `AuditEvent` (IHE BALP shape) for every interaction, and a
//! `Provenance` for every accepted write, both stored as FHIR resources in the normal store
//! (so `AuditEvent?agent=...&date=...&entity=...` is an ordinary search, filtered by site for
//! site clients like any other resource) and append-only through the API.
//!
//! - [`event`]: the pure part: [`AuditEvent`], its JSON, [`event::classify`] (which
//!   interaction a request is), [`event::provenance`].
//! - [`layer`]: the middleware around [`crate::auth::enforce`]: it sees every request
//!   (401/403 answers included), gives the handlers a [`RequestScope`] (peer address,
//!   request id) and, unless a write already recorded its event in its own transaction,
//!   records one through the [`Auditor`].
//! - [`Auditor`]: a bounded channel to one writer task that commits events in batches
//!   (reads and searches, refusals, token requests); [`Auditor::flush`] on shutdown.
//! - [`in_transaction`]: what a write adds to its own store transaction: Provenance per
//!   activity and its AuditEvent, so an accepted write never exists without both.
//! - [`record`]: the public entry for other code (`$export`) to record an event.

pub mod event;

pub use event::{AuditEvent, Entity, Kind, Origin, Who};

use crate::model::json::Json;
use crate::search::IndexRow;
use crate::serve::AppState;
use crate::store::{Fresh, Store, StoreError, Stored, Tx};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// How many events the channel holds before requests wait for the writer.
const CHANNEL: usize = 4096;
/// The most events one writer transaction commits.
const BATCH: usize = 512;
/// How long the writer gathers events before it commits them.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

tokio::task_local! {
    static SCOPE: Arc<RequestScope>;
}

/// What the audit layer knows of the request being handled.
#[derive(Debug)]
pub struct RequestScope {
    /// The peer's IP address.
    pub peer: Option<String>,
    /// The request id.
    pub request_id: String,
    /// `METHOD path?query`.
    pub request: String,
    recorded: AtomicBool,
    subtype: Mutex<Option<&'static str>>,
}

/// The scope of the request being handled on this task, if any.
pub fn scope() -> Option<Arc<RequestScope>> {
    SCOPE.try_with(Arc::clone).ok()
}

/// Tells the audit layer the event of this request was recorded (in a write's transaction).
pub fn mark_recorded() {
    if let Some(s) = scope() {
        s.recorded.store(true, Ordering::SeqCst);
    }
}

/// Sets the `restful-interaction` code the audit layer records for this request (a Bundle
/// posted to the base is a `batch` or a `transaction`).
pub fn set_subtype(code: &'static str) {
    if let Some(s) = scope() {
        if let Ok(mut slot) = s.subtype.lock() {
            *slot = Some(code);
        }
    }
}

/// The caller of the request being handled ([`crate::auth::current`]), or `anonymous`.
pub fn current_who() -> Who {
    crate::auth::current().map_or_else(
        || Who {
            client: "anonymous".into(),
            site: String::new(),
            role: String::new(),
            verified: false,
        },
        |p| Who::of(&p),
    )
}

/// An event of the request being handled: who, peer and request id from the request's
/// scope and caller, recorded now.
pub fn for_request(
    kind: Kind,
    action: &'static str,
    status: u16,
    entities: Vec<Entity>,
) -> AuditEvent {
    let scope = scope();
    AuditEvent {
        kind,
        action,
        recorded: crate::store::time::now(),
        status,
        who: Some(current_who()),
        peer: scope.as_ref().and_then(|s| s.peer.clone()),
        request_id: scope
            .as_ref()
            .map(|s| s.request_id.clone())
            .unwrap_or_default(),
        request: scope
            .as_ref()
            .map(|s| s.request.clone())
            .unwrap_or_default(),
        entities,
    }
}

/// Records `event` through the server's [`Auditor`] (committed by its writer task, in a
/// batch, shortly after). For code other than the request path (e.g. `$export` jobs).
pub async fn record(state: &AppState, event: AuditEvent) {
    state.auditor().record(event).await;
}

/// `ledger purge`: purges the payloads of `database_url`'s ledger received longer than
/// `retention` ago. Returns how many and the cutoff instant.
///
/// # Errors
/// When the database cannot be opened or updated.
pub async fn purge(
    database_url: &str,
    retention: std::time::Duration,
) -> Result<(u64, String), StoreError> {
    let store = Store::open(database_url).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let cutoff = crate::store::sealed::cutoff(now_ms, retention);
    let n = store
        .purge_payloads(&cutoff, &crate::store::time::instant(now_ms))
        .await;
    store.close().await;
    Ok((n?, cutoff))
}

/// A resource the gateway writes itself, ready for [`Tx::create_fresh`].
struct Prepared {
    res_type: &'static str,
    json: Json,
    index: Vec<IndexRow>,
}

impl Prepared {
    /// An audit event: its JSON and its index rows, made from the event itself.
    fn event(event: &AuditEvent) -> Prepared {
        let json = event.to_json();
        let index = event
            .index_rows()
            .unwrap_or_else(|| index_json("AuditEvent", &json));
        Prepared {
            res_type: "AuditEvent",
            json,
            index,
        }
    }

    /// A Provenance, indexed through its JSON.
    fn provenance(json: Json) -> Prepared {
        let index = index_json("Provenance", &json);
        Prepared {
            res_type: "Provenance",
            json,
            index,
        }
    }
}

/// The index rows of a record through the generic path (JSON text, element tree,
/// SearchParameter expressions).
fn index_json(res_type: &str, json: &Json) -> Vec<IndexRow> {
    match crate::model::parse(&json.to_text()) {
        Ok(element) => crate::search::index(&element),
        Err(e) => {
            tracing::warn!(res_type, error = %e, "an audit record did not parse for indexing");
            Vec::new()
        }
    }
}

/// Writes prepared records in `tx` under fresh ids, in one round of bulk inserts. The
/// records are not changed (`create_fresh` stamps the stored text), so a batch that lost a
/// race can be written again from the same records.
async fn create_prepared(tx: &mut Tx, prepared: &[Prepared]) -> Result<Vec<Stored>, StoreError> {
    let mut fresh: Vec<Fresh<'_>> = prepared
        .iter()
        .map(|p| Fresh {
            res_type: p.res_type,
            id: uuid::Uuid::now_v7().to_string(),
            content: &p.json,
            index: &p.index,
            issues: None,
        })
        .collect();
    tx.create_fresh(&mut fresh).await
}

/// One version a write touched, for [`in_transaction`].
#[derive(Debug, Clone, Copy)]
pub struct Touched<'a> {
    /// The version.
    pub stored: &'a Stored,
    /// The entry's HTTP status (201 marks a creation).
    pub status: u16,
    /// Whether this request wrote it (not found by a conditional create, not a no-op).
    pub written: bool,
}

/// What a write adds to its own transaction: a Provenance per activity (`CREATE`,
/// `UPDATE`, `DELETE`) targeting the versions written, linked to the ledger entry
/// `submission`, the request and the `mapping`; and, with `event` (`restful-interaction`
/// code and action), the request's AuditEvent naming every version touched.
///
/// # Errors
/// Store failures (the write fails with them: no write without its records).
pub async fn in_transaction(
    tx: &mut Tx,
    event: Option<(&'static str, &'static str)>,
    status: u16,
    touched: &[Touched<'_>],
    submission: Option<i64>,
    mapping: Option<&str>,
) -> Result<(), StoreError> {
    let recorded = crate::store::time::now();
    let who = current_who();
    let origin = Origin {
        who,
        submission,
        request_id: scope().map(|s| s.request_id.clone()).unwrap_or_default(),
        mapping: mapping.map(str::to_string),
    };
    let mut records = Vec::new();
    for activity in ["CREATE", "UPDATE", "DELETE"] {
        let targets: Vec<String> = touched
            .iter()
            .filter(|t| t.written && event::activity(t.stored, t.status) == activity)
            .map(|t| {
                format!(
                    "{}/{}/_history/{}",
                    t.stored.res_type, t.stored.id, t.stored.version_id
                )
            })
            .collect();
        if !targets.is_empty() {
            let json = event::provenance(&targets, activity, &recorded, &origin);
            records.push(Prepared::provenance(json));
        }
    }
    if let Some((code, action)) = event {
        let entities = touched
            .iter()
            .map(|t| Entity::Resource {
                res_type: t.stored.res_type.clone(),
                id: t.stored.id.clone(),
                version: Some(t.stored.version_id),
            })
            .collect();
        let e = for_request(Kind::Rest(code), action, status, entities);
        records.push(Prepared::event(&e));
    }
    create_prepared(tx, &records).await?;
    Ok(())
}

enum Msg {
    Event(Box<Prepared>),
    Flush(oneshot::Sender<()>),
}

/// The queue of events not recorded in a write's transaction, and its writer task.
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    rx: Mutex<Option<mpsc::Receiver<Msg>>>,
}

impl Default for Auditor {
    fn default() -> Self {
        Auditor::new()
    }
}

impl Auditor {
    /// A queue whose writer is not started yet.
    pub fn new() -> Auditor {
        let (tx, rx) = mpsc::channel(CHANNEL);
        Auditor {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Starts the writer task on `store` (once; later calls do nothing). Needs a Tokio
    /// runtime.
    pub fn start(&self, store: &Store) {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        if let Some(rx) = rx {
            tokio::spawn(writer(store.clone(), rx));
        }
    }

    /// Queues `event` (waits while the queue is full). Its JSON and index rows are made
    /// here, on the caller's task, so the writer task only writes.
    pub async fn record(&self, event: AuditEvent) {
        let prepared = Prepared::event(&event);
        if self.tx.send(Msg::Event(Box::new(prepared))).await.is_err() {
            tracing::error!("audit writer stopped; an audit event was lost");
        }
    }

    /// Waits until every event queued before this call is committed.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// The writer task: takes what is queued (up to [`BATCH`] events), commits it in one
/// transaction, answers flushes, and waits for more.
async fn writer(store: Store, mut rx: mpsc::Receiver<Msg>) {
    let mut events: Vec<Prepared> = Vec::new();
    let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        // Events are gathered for up to LINGER (fewer, larger commits: each commit also
        // empties the page cache of every SQLite reader) unless a flush is waiting.
        let until = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => events.push(*e),
                Msg::Flush(a) => acks.push(a),
            }
            if events.len() < BATCH {
                next = match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(_) if acks.is_empty() => tokio::time::timeout_at(until, rx.recv())
                        .await
                        .ok()
                        .flatten(),
                    Err(_) => None,
                };
            }
        }
        if !events.is_empty() {
            write_batch(&store, std::mem::take(&mut events)).await;
        }
        for a in acks.drain(..) {
            let _ = a.send(());
        }
    }
}

async fn write_batch(store: &Store, prepared: Vec<Prepared>) {
    let n = prepared.len();
    for attempt in 1..=5 {
        let result = async {
            let mut tx = store.begin().await?;
            create_prepared(&mut tx, &prepared).await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) if e.is_retryable() && attempt < 5 => {
                tracing::debug!(attempt, "audit batch lost a race; running it again");
            }
            Err(e) => {
                tracing::error!(error = %e, events = n, "audit events could not be stored; lost");
                return;
            }
        }
    }
}

/// The audit middleware (outside [`crate::auth::enforce`], so refusals are seen): runs the
/// request in a [`RequestScope`] and, unless its event was recorded in a write's
/// transaction, queues one with the caller (from the response: `enforce` and the token
/// endpoint put it there), the peer address, what the request was about and the outcome.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let Some(class) = event::classify(&method, &path, &query) else {
        return next.run(req).await;
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let request_id = req
        .extensions()
        .get::<crate::serve::RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let request = if query.is_empty() {
        format!("{method} {path}")
    } else {
        format!("{method} {path}?{query}")
    };
    let scope = Arc::new(RequestScope {
        peer,
        request_id,
        request,
        recorded: AtomicBool::new(false),
        subtype: Mutex::new(None),
    });
    let response = SCOPE.scope(scope.clone(), next.run(req)).await;
    if scope.recorded.load(Ordering::SeqCst) {
        return response;
    }
    let who = response
        .extensions()
        .get::<crate::auth::Principal>()
        .map(Who::of)
        .or_else(|| response.extensions().get::<Who>().cloned());
    let kind = match scope.subtype.lock().ok().and_then(|s| *s) {
        Some(code) => Kind::Rest(code),
        None => class.kind,
    };
    let event = AuditEvent {
        kind,
        action: class.action,
        recorded: crate::store::time::now(),
        status: response.status().as_u16(),
        who,
        peer: scope.peer.clone(),
        request_id: scope.request_id.clone(),
        request: scope.request.clone(),
        entities: class.entities,
    };
    state.auditor().record(event).await;
    response
}
