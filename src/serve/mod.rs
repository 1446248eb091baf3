//! The FHIR REST server (`imagio-gateway serve`): the `serve` stage of the pipeline
//! (… ──> store ──> **serve**). Sites push to it and the sponsor reads from it.
//!
//! - [`error`]: [`ApiError`], the only place failures become OperationOutcomes.
//! - `body`: the request body extractor (media type, size limit).
//! - `rest`: the interactions on `/fhir` (read, vread, create, update, conditional create
//!   and update, delete and conditional delete, patch and conditional patch, history,
//!   `$validate`).
//! - `patch`: JSON Patch (RFC 6902); `fhirpath_patch`: FHIRPath Patch.
//! - `ledger`: the ledger admin API (`/admin/submissions`).
//! - `endpoints`: the sponsor's endpoint datasets (`/sponsor/endpoints`).
//! - `bundle`: `batch` and `transaction` Bundles on `POST /fhir`.
//! - `write`: what every write shares: checking and validating a resource, applying
//!   operations in one store transaction with retries, the ledger entry.
//! - `capability`: the CapabilityStatement on `/fhir/metadata`.
//! - [`ingest`]: `POST /fhir/ingest/{mapping}`, site exports through a mapping.
//!
//! Routes (the server's API boundary): `/health`, `/ready`, and under `/fhir`:
//! `metadata`, `_history`, `{type}` (create, search, conditional update, delete and
//! patch), `{type}/_history`, `{type}/$validate`, `{type}/{id}` (read, update, delete,
//! patch), `{type}/{id}/_history`, `{type}/{id}/_history/{vid}`, `{type}/{id}/$validate`,
//! and `POST /fhir` for Bundles; the ledger admin API under `/admin/submissions`. The
//! server keeps no state between requests beyond caches of immutable definitions:
//! everything another replica needs is in the database.

mod body;
mod bundle;
mod capability;
mod endpoints;
pub mod error;
mod fhirpath_patch;
pub mod ingest;
mod ledger;
mod patch;
mod rest;
mod views;
mod write;

pub use error::ApiError;

use crate::store::Store;
use crate::validate::Validator;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument as _;

/// Which definitions writes are validated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ValidationMode {
    /// The R4 base definitions only (generic data, load tests).
    Base,
    /// The R4 base plus the study profiles: a resource is checked against the profiles it
    /// claims in `meta.profile`, and, claiming none, against the study profile for its type
    /// when the study has exactly one for that type.
    Study,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `postgres://...`, `sqlite:PATH` or a SQLite file path.
    pub database_url: String,
    /// What writes are validated against.
    pub validation: ValidationMode,
    /// A folder of study definitions replacing the embedded ones.
    pub profiles_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Deepest JSON nesting accepted.
    pub max_depth: usize,
    /// Authentication (SMART Backend Services, or `--no-auth`).
    pub auth: crate::auth::AuthConfig,
    /// The folder of mapping folders `/fhir/ingest/{mapping}` offers; `None`: `mappings/`
    /// of the working directory when it exists (none offered otherwise).
    pub mappings_dir: Option<PathBuf>,
    /// The AES-256-GCM key file ledger payloads are sealed with (`--ledger-key`); `None`
    /// in [`run`] means the demo key `./imagio-demo/ledger.key`, elsewhere a random key
    /// for this process only.
    pub ledger_key: Option<PathBuf>,
    /// How long ledger payloads are kept before they are purged (`None`: forever).
    pub ledger_retention: Option<std::time::Duration>,
    /// De-identification of every write before validation (`None`: resources are stored
    /// as sent; the library's generic FHIR tests only, the CLI always sets it).
    pub pseudonymize: Option<crate::pseudonymize::Pseudonymizer>,
    /// Bulk Data export (`$export`): files, retention, the worker.
    pub export: crate::export::ExportConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "imagio.sqlite".into(),
            validation: ValidationMode::Study,
            profiles_dir: None,
            max_body: 64 * 1024 * 1024,
            max_depth: 128,
            auth: crate::auth::AuthConfig::default(),
            mappings_dir: None,
            ledger_key: None,
            ledger_retention: None,
            pseudonymize: None,
            export: crate::export::ExportConfig::default(),
        }
    }
}

/// What `serve` could not start with.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The study definitions.
    #[error(transparent)]
    Profiles(#[from] crate::profiles::ProfilesError),
    /// Binding or serving.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Authentication set-up (`--no-auth` on a public address, the demo client).
    #[error("{0}")]
    Auth(String),
    /// The mappings offered for ingest.
    #[error("mappings: {0}")]
    Mappings(String),
    /// The ledger key (unreadable, malformed, or not the key the ledger was sealed with).
    #[error(transparent)]
    Ledger(#[from] crate::store::sealed::SealError),
}

/// What every handler shares: built once in [`run`], cloned per request.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    store: Store,
    validator: Validator,
    config: Config,
    /// The study profile URLs by resource type (empty in base mode), for the
    /// CapabilityStatement.
    profiles: Vec<(String, String)>,
    /// The CapabilityStatement, made on first request.
    capability: std::sync::OnceLock<String>,
    /// The authorization server.
    auth: crate::auth::Auth,
    /// The mappings of `/fhir/ingest/{mapping}`.
    mappings: crate::ingest::Mappings,
    /// The audit events waiting for the writer task.
    auditor: crate::audit::Auditor,
    /// Wakes this replica's export worker when a job is accepted here.
    export_wake: tokio::sync::Notify,
}

impl AppState {
    /// Builds the state: the validator for `config.validation` over `store`.
    ///
    /// # Errors
    /// When the study definitions cannot be loaded.
    pub fn new(store: Store, config: Config) -> Result<AppState, ServeError> {
        let (validator, profiles) = match config.validation {
            ValidationMode::Base => (
                Validator::new(crate::definitions::Registry::core()),
                Vec::new(),
            ),
            ValidationMode::Study => {
                let registry = crate::profiles::study_registry(config.profiles_dir.as_deref())?;
                let profiles = study_profiles(&registry);
                let mut validator = Validator::new(registry);
                let mut per_type: std::collections::HashMap<&str, Vec<&str>> =
                    std::collections::HashMap::new();
                for (t, url) in &profiles {
                    per_type.entry(t).or_default().push(url);
                }
                for (t, urls) in per_type {
                    if let [only] = urls.as_slice() {
                        validator.set_default_profile(t, only);
                    }
                }
                (validator, profiles)
            }
        };
        let key = match &config.ledger_key {
            Some(path) => crate::store::sealed::LedgerKey::from_file(path)?,
            None => crate::store::sealed::LedgerKey::generate(),
        };
        store.set_ledger_key(key);
        let auditor = crate::audit::Auditor::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            auditor.start(&store);
        }
        let auth = crate::auth::Auth::new(store.clone(), config.auth.clone());
        let mappings = match &config.mappings_dir {
            Some(dir) => crate::ingest::Mappings::load(dir),
            None if std::path::Path::new("mappings").is_dir() => {
                crate::ingest::Mappings::load(std::path::Path::new("mappings"))
            }
            None => Ok(crate::ingest::Mappings::default()),
        }
        .map_err(|e| ServeError::Mappings(e.to_string()))?;
        Ok(AppState {
            inner: Arc::new(Shared {
                auditor,
                auth,
                store,
                validator,
                config,
                profiles,
                capability: std::sync::OnceLock::new(),
                mappings,
                export_wake: tokio::sync::Notify::new(),
            }),
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn validator(&self) -> &Validator {
        &self.inner.validator
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Wakes this replica's export worker (a job was accepted here), so it claims the job
    /// at once instead of at its next poll; a wake with no worker waiting is kept for its
    /// next wait.
    pub(crate) fn export_wake(&self) -> &tokio::sync::Notify {
        &self.inner.export_wake
    }

    /// The authorization server.
    pub fn auth(&self) -> &crate::auth::Auth {
        &self.inner.auth
    }

    /// The mappings offered for ingest.
    pub fn mappings(&self) -> &crate::ingest::Mappings {
        &self.inner.mappings
    }

    /// The audit events' queue ([`crate::audit::record`]).
    pub fn auditor(&self) -> &crate::audit::Auditor {
        &self.inner.auditor
    }
}

/// The (type, URL) of every resource profile among the loaded study definitions.
fn study_profiles(registry: &crate::definitions::Registry) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = registry
        .loaded(crate::definitions::Kind::StructureDefinition)
        .filter(|sd| {
            sd.get("kind").and_then(|k| k.as_str()) == Some("resource")
                && sd.get("derivation").and_then(|k| k.as_str()) == Some("constraint")
        })
        .filter_map(|sd| {
            Some((
                sd.get("type")?.as_str()?.to_string(),
                sd.get("url")?.as_str()?.to_string(),
            ))
        })
        .collect();
    out.sort();
    out
}

/// The request id of a request (taken from a sane `X-Request-Id`, or made up).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let fhir = Router::new()
        .route("/", post(bundle::bundle))
        .route("/metadata", get(capability::metadata))
        .route("/_history", get(rest::history_system))
        .route(
            "/{type}",
            post(rest::create)
                .put(rest::conditional_update)
                .delete(rest::conditional_delete)
                .patch(rest::conditional_patch)
                .get(rest::search),
        )
        .route("/{type}/_history", get(rest::history_type))
        .route("/{type}/_search", post(rest::search_post))
        .route("/{type}/$validate", post(rest::validate_type))
        .route("/ViewDefinition/$run", post(views::run))
        .route(
            "/{type}/{id}",
            get(rest::read)
                .put(rest::update)
                .delete(rest::delete)
                .patch(rest::patch),
        )
        .route("/{type}/{id}/_history", get(rest::history_instance))
        .route("/{type}/{id}/_history/{vid}", get(rest::vread))
        .route("/{type}/{id}/$validate", post(rest::validate_instance))
        .route("/ingest/{mapping}", post(ingest::ingest))
        .merge(crate::export::http::routes());
    Router::new()
        .nest("/fhir", fhir)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(crate::auth::routes())
        .merge(ledger::routes())
        .merge(endpoints::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::enforce,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::layer,
        ))
        .layer(axum::middleware::from_fn(request_context))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; the FHIR API is under /fhir".into())
}

/// Liveness: the process answers.
async fn health() -> Response {
    (
        [("content-type", "application/json")],
        "{\"status\":\"ok\"}",
    )
        .into_response()
}

/// Readiness: the database answers.
async fn ready(State(state): State<AppState>) -> Response {
    match state.store().ping().await {
        Ok(()) => (
            [("content-type", "application/json")],
            "{\"status\":\"ready\"}",
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "database not reachable");
            ApiError::Unavailable(e.to_string()).into_response()
        }
    }
}

/// Gives every request an id (kept from a sane `X-Request-Id`), a tracing span carrying it,
/// a log line when it ends, and the id back in the response; logs the detail of 5xx errors.
async fn request_context(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let started = std::time::Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let _enter = span.enter();
    let status = response.status();
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    if let Some(detail) = response.extensions().get::<error::ErrorDetail>() {
        tracing::error!(status = status.as_u16(), millis, error = %detail.0, "request failed");
    } else if status == StatusCode::SERVICE_UNAVAILABLE || status.is_server_error() {
        tracing::error!(status = status.as_u16(), millis, "request failed");
    } else if response.extensions().get::<crate::auth::NoAuth>().is_some() {
        tracing::warn!(
            status = status.as_u16(),
            millis,
            auth = "DISABLED (--no-auth)",
            "request"
        );
    } else {
        tracing::info!(status = status.as_u16(), millis, "request");
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    response
}

/// Resolves when the process is asked to stop (Ctrl-C, or SIGTERM on unix).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing requests in flight");
}

/// Opens the store, builds the state and serves on `listener` until `shutdown` resolves,
/// then lets requests in flight finish and closes the database.
///
/// # Errors
/// When the server fails.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = state.store().clone();
    state.auth().set_listen_addr(listener.local_addr()?);
    state.auditor().start(&store);
    let purge = state
        .config()
        .ledger_retention
        .map(|r| tokio::spawn(purge_periodically(store.clone(), r)));
    // The export worker stops (giving up its job's claim) when the server does.
    let (stop_worker, stopping) = tokio::sync::watch::channel(false);
    let worker = state
        .config()
        .export
        .worker
        .then(|| tokio::spawn(crate::export::run::worker(state.clone(), stopping)));
    let kept = state.clone();
    let served = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    let _ = stop_worker.send(true);
    if let Some(w) = worker {
        let _ = w.await;
    }
    // Events of the last requests are still queued: commit them before closing.
    kept.auditor().flush().await;
    if let Some(p) = purge {
        p.abort();
    }
    served?;
    store.close().await;
    Ok(())
}

/// `imagio-gateway serve`: opens (creating and migrating) the database, loads the
/// definitions, listens, and serves until Ctrl-C or SIGTERM. Prints `listening on ADDR` on
/// standard output once it accepts connections.
///
/// # Errors
/// When the database, the definitions or the listening address fail.
pub async fn run(config: Config) -> Result<(), ServeError> {
    if config.auth.disabled && !config.listen.ip().is_loopback() {
        return Err(ServeError::Auth(format!(
            "--no-auth is accepted only with a loopback listen address, not {}",
            config.listen
        )));
    }
    let mut config = config;
    if config.ledger_key.is_none() {
        let demo = PathBuf::from("imagio-demo").join("ledger.key");
        crate::store::sealed::LedgerKey::load_or_create(&demo)?;
        tracing::warn!(key = %demo.display(), "no --ledger-key: ledger payloads are sealed with the demo key");
        eprintln!(
            "WARNING: no --ledger-key given; ledger payloads are sealed with the demo key {}",
            demo.display()
        );
        config.ledger_key = Some(demo);
    }
    let store = Store::open(&config.database_url).await?;
    tracing::info!(database = store.kind(), "database open and migrated");
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let state = AppState::new(store, config)?;
    state.store().check_ledger_key().await?;
    let addr = listener.local_addr()?;
    state.auth().set_listen_addr(addr);
    crate::auth::clients::start(&state).await?;
    tracing::info!(%addr, validation = ?state.config().validation, "listening");
    println!("listening on {addr}");
    serve_on(listener, state, shutdown_signal()).await
}

/// Purges expired ledger payloads now and then every hour (`serve --ledger-retention`).
async fn purge_periodically(store: Store, retention: std::time::Duration) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let cutoff = crate::store::sealed::cutoff(now_ms, retention);
        match store
            .purge_payloads(&cutoff, &crate::store::time::instant(now_ms))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, before = %cutoff, "ledger payloads purged"),
            Err(e) => tracing::error!(error = %e, "purging ledger payloads failed"),
        }
    }
}
