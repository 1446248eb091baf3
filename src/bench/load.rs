//! `imagio-gateway bench load`: the server under load, as a site and the sponsor use it.
//!
//! The bench starts the same binary's `serve` as a child process on a free port, over a
//! fresh store (a temporary SQLite file, or a new PostgreSQL database it drops afterwards),
//! so the server's memory is measured alone; the load generator runs in this process on
//! the same machine. Three phases:
//! - ingest: the transaction Bundles of the data folder posted `--concurrency` at a time
//!   (validation on, base mode), again and again with their UUIDs rewritten per round so
//!   every round makes new resources, until `--resources` are stored;
//! - reads by id of stored resources, then `Observation?subject=Patient/x&date=ge2020-01-01`
//!   over the stored patients, each on `--connections` keep-alive connections for
//!   `--duration`;
//! - the server's VmRSS sampled from `/proc/PID/status` through every phase, and its VmHWM.
//!
//! With authentication on (the default) the bench registers a site client (ingest) and a
//! sponsor client (reads) in the fresh store, signs their client assertions and gets one
//! token for each, reused for the whole run.

use crate::auth::keys::{Alg, SigningKey};
use crate::auth::Role;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The settings of a load run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Folder of transaction Bundles (the Synthea samples).
    pub data: PathBuf,
    /// `postgres://...` to run on PostgreSQL (a new database is made and dropped); a
    /// temporary SQLite file when absent.
    pub database_url: Option<String>,
    /// Bundles in flight during ingest.
    pub concurrency: usize,
    /// Keep-alive connections during reads and searches.
    pub connections: usize,
    /// Resources to store before reads and searches.
    pub resources: usize,
    /// How long each of the read and search phases runs.
    pub duration: Duration,
    /// Run the server with `--no-auth` instead of registered clients and tokens.
    pub no_auth: bool,
    /// Keep the SQLite store in this file (with its client key and list of stored
    /// resources beside it); when an earlier run left it there, skip the ingest and
    /// measure reads and searches on it.
    pub store: Option<PathBuf>,
}

/// What stops a load run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Files: the data folder, the work folder, the server log.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The input is not usable.
    #[error("{0}")]
    Input(String),
    /// The server did not start or answered unexpectedly.
    #[error("{0}")]
    Server(String),
    /// HTTP to the server.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The store (registering clients, making or dropping the PostgreSQL database).
    #[error("database: {0}")]
    Database(String),
}

/// Parses a duration such as `10s`, `500ms`, `2m` or `3` (seconds).
///
/// # Errors
/// When the text is not a number with one of those units.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (10s, 500ms, 2m)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("{text:?} is not a positive duration"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Runs the load benchmark and prints its table and JSON lines; exit 1 when requests
/// failed, 2 when the run could not be made.
pub fn run(options: &Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(load(options)) {
        Ok(report) => {
            print!("{}", report.table());
            for line in report.json_lines() {
                println!("{line}");
            }
            if report.errors() == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: {} requests failed", report.errors());
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: bench load: {e}");
            ExitCode::from(2)
        }
    }
}

/// A transaction Bundle of the data folder.
struct Sample {
    text: String,
    entries: usize,
}

/// Reads the transaction Bundles of `dir`, in file-name order.
fn samples(dir: &Path) -> Result<Vec<Sample>, LoadError> {
    let io = |e| LoadError::Io(dir.display().to_string(), e);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).map_err(|e| LoadError::Io(f.display().to_string(), e))?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if v.get("resourceType").and_then(|t| t.as_str()) != Some("Bundle")
            || v.get("type").and_then(|t| t.as_str()) != Some("transaction")
        {
            continue;
        }
        let entries = v
            .get("entry")
            .and_then(|e| e.as_array())
            .map_or(0, Vec::len);
        if entries > 0 {
            out.push(Sample { text, entries });
        }
    }
    if out.is_empty() {
        return Err(LoadError::Input(format!(
            "no transaction Bundles in {}",
            dir.display()
        )));
    }
    Ok(out)
}

/// The Bundle for ingest round `round`: every UUID in the text (`fullUrl`s, ids,
/// references, identifier values) gets its first group XORed with the round, so each
/// round's resources, identifiers and references are new but consistent within the
/// Bundle, and the same on every run. Round 0 is the text as it is.
pub fn rewrite_round(text: &str, round: u32) -> String {
    if round == 0 {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i + 36 <= bytes.len() {
        let boundary = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let after = bytes.get(i + 36).is_none_or(|b| !b.is_ascii_alphanumeric());
        if boundary && after && is_uuid(&bytes[i..i + 36]) {
            if let Some(first) = text
                .get(i..i + 8)
                .and_then(|h| u32::from_str_radix(h, 16).ok())
            {
                out.push_str(&text[copied..i]);
                let lower = bytes[i..i + 8].iter().all(|b| !b.is_ascii_uppercase());
                if lower {
                    out.push_str(&format!("{:08x}", first ^ round));
                } else {
                    out.push_str(&format!("{:08X}", first ^ round));
                }
                copied = i + 8;
                i += 36;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Where the server stores, and how to clean it up.
pub(super) enum Database {
    Sqlite(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl Database {
    pub(super) fn url(&self) -> Result<String, LoadError> {
        match self {
            Database::Sqlite(p) => Ok(p.display().to_string()),
            Database::Postgres { admin_url, name } => {
                let mut u = reqwest::Url::parse(admin_url)
                    .map_err(|e| LoadError::Input(format!("--database-url: {e}")))?;
                u.set_path(&format!("/{name}"));
                Ok(u.to_string())
            }
        }
    }

    pub(super) fn label(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres { .. } => "postgres",
        }
    }

    pub(super) async fn create(url: Option<&str>, work: &Path) -> Result<Database, LoadError> {
        let Some(url) = url else {
            return Ok(Database::Sqlite(work.join("bench.sqlite")));
        };
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(LoadError::Input(
                "--database-url must be postgres://... (SQLite runs on a temporary file)".into(),
            ));
        }
        let name = format!(
            "imagio_bench_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        pg_execute(url, &format!("CREATE DATABASE \"{name}\"")).await?;
        Ok(Database::Postgres {
            admin_url: url.to_string(),
            name,
        })
    }

    pub(super) async fn drop_it(&self) -> Result<(), LoadError> {
        match self {
            Database::Sqlite(_) => Ok(()),
            Database::Postgres { admin_url, name } => {
                pg_execute(
                    admin_url,
                    &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                )
                .await
            }
        }
    }
}

async fn pg_execute(url: &str, sql: &str) -> Result<(), LoadError> {
    use sqlx::ConnectOptions as _;
    use std::str::FromStr as _;
    let db = |e: sqlx::Error| LoadError::Database(e.to_string());
    let mut conn = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(db)?
        .connect()
        .await
        .map_err(db)?;
    sqlx::query(sql).execute(&mut conn).await.map_err(db)?;
    Ok(())
}

/// The two clients of an authenticated run.
pub(super) struct Clients {
    pub(super) site: crate::client::Settings,
    pub(super) sponsor: crate::client::Settings,
}

/// Registers a site client (ingest) and a sponsor client (reads) sharing one new ES384 key.
pub(super) async fn register(url: &str, work: &Path) -> Result<Clients, LoadError> {
    register_with_key(url, &work.join("bench.key.pem")).await
}

/// [`register`], the private key written to `key_path`.
async fn register_with_key(url: &str, key_path: &Path) -> Result<Clients, LoadError> {
    let db = |e: String| LoadError::Database(e);
    let key = SigningKey::generate(Alg::Es384).map_err(|e| db(e.to_string()))?;
    let key_path = key_path.to_path_buf();
    crate::auth::keys::write_private(&key_path, &key.private_pem).map_err(|e| db(e.to_string()))?;
    let store = crate::store::Store::open(url)
        .await
        .map_err(|e| db(e.to_string()))?;
    for (id, role, scope) in [SITE_CLIENT, SPONSOR_CLIENT] {
        crate::auth::clients::add(
            &store,
            &crate::auth::clients::NewClient {
                id: Some(id.into()),
                site: "bench".into(),
                role,
                scope: scope.into(),
                jwks: Some(key.public_jwks()),
                jwks_url: None,
            },
        )
        .await
        .map_err(|e| db(e.to_string()))?;
    }
    store.close().await;
    Ok(Clients::signed_with(&key_path))
}

/// The site client of an authenticated run: id, role, scope.
const SITE_CLIENT: (&str, Role, &str) = ("bench-site", Role::Site, "system/*.cruds");
/// The sponsor client of an authenticated run: id, role, scope.
const SPONSOR_CLIENT: (&str, Role, &str) = ("bench-sponsor", Role::Sponsor, "system/*.rs");

impl Clients {
    /// The settings of the two registered clients, signing with the key at `key`.
    fn signed_with(key: &Path) -> Clients {
        let settings = |(id, _, scope): (&str, Role, &str)| crate::client::Settings {
            server: String::new(),
            client_id: id.into(),
            key: key.to_path_buf(),
            kid: None,
            scope: scope.into(),
            ca_cert: None,
        };
        Clients {
            site: settings(SITE_CLIENT),
            sponsor: settings(SPONSOR_CLIENT),
        }
    }
}

/// A free port on the loopback interface (bound, read, released).
fn free_port() -> Result<u16, LoadError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LoadError::Io("127.0.0.1:0".into(), e))?;
    let port = l
        .local_addr()
        .map_err(|e| LoadError::Io("127.0.0.1:0".into(), e))?
        .port();
    Ok(port)
}

/// The server child process; killed when dropped.
pub(super) struct ServerProcess {
    child: Child,
    log: PathBuf,
    pub(super) base: String,
}

impl ServerProcess {
    fn spawn(
        db_url: &str,
        work: &Path,
        no_auth: bool,
        token_lifetime: u64,
    ) -> Result<ServerProcess, LoadError> {
        Self::spawn_with(db_url, work, no_auth, token_lifetime, &[])
    }

    /// [`ServerProcess::spawn`] with more `serve` arguments.
    pub(super) fn spawn_with(
        db_url: &str,
        work: &Path,
        no_auth: bool,
        token_lifetime: u64,
        extra: &[String],
    ) -> Result<ServerProcess, LoadError> {
        let exe = std::env::current_exe().map_err(|e| LoadError::Io("current_exe".into(), e))?;
        let port = free_port()?;
        let log = work.join("server.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| LoadError::Io(log.display().to_string(), e))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(db_url)
            .arg("--validation")
            .arg("base")
            .arg("--token-lifetime")
            .arg(token_lifetime.to_string())
            .current_dir(work)
            .env_remove("IMAGIO_DATABASE_URL")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_file);
        if no_auth {
            cmd.arg("--no-auth");
        }
        cmd.args(extra);
        let child = cmd
            .spawn()
            .map_err(|e| LoadError::Io("spawning serve".into(), e))?;
        Ok(ServerProcess {
            child,
            log,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Waits until `/health` answers (at most a minute).
    pub(super) async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<(), LoadError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/ready", self.base);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LoadError::Server(format!(
                    "the server exited ({status}):\n{}",
                    self.log_tail()
                )));
            }
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(LoadError::Server(format!(
                    "the server did not become ready within a minute:\n{}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident memory of a process, sampled every 50 ms into the current phase's maximum.
struct Sampler {
    phase: Arc<AtomicUsize>,
    max_kb: Arc<[AtomicU64; PHASES]>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pid: u32,
}

const PHASES: usize = 3;
const INGEST: usize = 0;
const READ: usize = 1;
const SEARCH: usize = 2;

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`).
pub(super) fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU seconds a process has used (`/proc/PID/stat`, USER_HZ = 100);
/// `None` where `/proc` is not available.
pub(super) fn cpu_seconds(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// CPU seconds of the server and of this process (the load generator) since `start`.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    server: f64,
    bench: f64,
}

impl Cpu {
    fn now(server_pid: u32) -> Cpu {
        Cpu {
            server: cpu_seconds(&server_pid.to_string()).unwrap_or(0.0),
            bench: cpu_seconds("self").unwrap_or(0.0),
        }
    }

    fn since(self, start: Cpu) -> Cpu {
        Cpu {
            server: self.server - start.server,
            bench: self.bench - start.bench,
        }
    }
}

/// The machine's 1-minute load average at the start (other work competing for the CPUs).
pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let phase = Arc::new(AtomicUsize::new(INGEST));
        let max_kb: Arc<[AtomicU64; PHASES]> = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, m, s) = (phase.clone(), max_kb.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let (Some(kb), Some(slot)) =
                    (status_kb(pid, "VmRSS"), m.get(p.load(Ordering::Relaxed)))
                {
                    slot.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            phase,
            max_kb,
            stop,
            thread: Some(thread),
            pid,
        }
    }

    fn enter(&self, phase: usize) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// Stops sampling; returns the maximum VmRSS per phase and the VmHWM, in kB.
    fn finish(mut self) -> Memory {
        let hwm = status_kb(self.pid, "VmHWM");
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let get = |i: usize| {
            self.max_kb
                .get(i)
                .map(|a| a.load(Ordering::Relaxed))
                .filter(|v| *v > 0)
        };
        Memory {
            ingest_kb: get(INGEST),
            read_kb: get(READ),
            search_kb: get(SEARCH),
            hwm_kb: hwm,
        }
    }
}

/// The server's memory, in kB (`None` where `/proc` is not available).
#[derive(Debug, Clone, Copy)]
struct Memory {
    ingest_kb: Option<u64>,
    read_kb: Option<u64>,
    search_kb: Option<u64>,
    hwm_kb: Option<u64>,
}

/// The ingest figures.
#[derive(Debug, Default)]
struct Ingest {
    bundles: usize,
    rounds: usize,
    resources: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
    cpu: Cpu,
}

/// The figures of a read or search phase.
#[derive(Debug, Default)]
struct Phase {
    requests: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
    /// Search matches over all requests (search only).
    matches: usize,
    cpu: Cpu,
}

/// Everything a run measured.
struct Report {
    store: &'static str,
    auth: bool,
    concurrency: usize,
    connections: usize,
    ingest: Ingest,
    read: Phase,
    search: Phase,
    memory: Memory,
    patients: usize,
    load_average: Option<f64>,
}

/// The value at quantile `q` of sorted values (nearest rank).
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or_else(|| "n/a".into(), |k| format!("{:.0} MB", k as f64 / 1024.0))
}

fn mb_json(kb: Option<u64>) -> String {
    kb.map_or_else(|| "null".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

const SEARCH_LABEL: &str = "Observation?subject=Patient/x&date=ge2020-01-01";

impl Report {
    fn errors(&self) -> usize {
        self.ingest.errors + self.read.errors + self.search.errors
    }

    fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "load: {} (fresh), authentication {}, validation base; server a separate process, load generator in this one; {} CPUs, load average {} at the start",
            self.store,
            if self.auth {
                "ON (site client ingests, sponsor client reads; one token each)"
            } else {
                "OFF (--no-auth)"
            },
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            self.load_average
                .map_or_else(|| "n/a".into(), |l| format!("{l:.1}"))
        );
        let i = &self.ingest;
        let mut lat = i.latencies_us.clone();
        lat.sort_unstable();
        if i.bundles == 0 {
            let _ = writeln!(
                s,
                "  ingest: skipped (--store kept {} resources from an earlier run)",
                i.resources
            );
        } else {
            let _ = writeln!(
            s,
            "  ingest: {} resources in {} transaction Bundles ({} rounds), concurrency {}: {:.1} s, {:.0} resources/s; Bundle p50 {:.0} ms, p99 {:.0} ms; {} errors\n    CPU: server {:.1} s ({:.3} ms per resource), load generator {:.1} s",
            i.resources,
            i.bundles,
            i.rounds,
            self.concurrency,
            i.seconds,
            i.resources as f64 / i.seconds.max(1e-9),
            ms(quantile(&lat, 0.5)),
            ms(quantile(&lat, 0.99)),
            i.errors,
            i.cpu.server,
            i.cpu.server * 1000.0 / i.resources.max(1) as f64,
            i.cpu.bench
        );
        }
        let _ = writeln!(
            s,
            "  at {} resources ({} patients), {} connections:",
            i.resources, self.patients, self.connections
        );
        let _ = writeln!(
            s,
            "    {:<50} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>14}",
            "request",
            "requests",
            "req/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "errors",
            "server CPU/req"
        );
        for (name, p) in [("read by id", &self.read), (SEARCH_LABEL, &self.search)] {
            let mut lat = p.latencies_us.clone();
            lat.sort_unstable();
            let _ = writeln!(
                s,
                "    {:<50} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>11.3} ms",
                name,
                p.requests,
                p.requests as f64 / p.seconds.max(1e-9),
                ms(quantile(&lat, 0.5)),
                ms(quantile(&lat, 0.99)),
                ms(lat.last().copied().unwrap_or(0)),
                p.errors,
                p.cpu.server * 1000.0 / p.requests.max(1) as f64
            );
        }
        if self.search.requests > 0 {
            let _ = writeln!(
                s,
                "    (searches matched {:.1} Observations on average)",
                self.search.matches as f64 / self.search.requests as f64
            );
        }
        let m = &self.memory;
        let _ = writeln!(
            s,
            "  server memory: VmRSS max during ingest {}, reads {}, searches {}; VmHWM (peak of the whole run) {}",
            mb(m.ingest_kb),
            mb(m.read_kb),
            mb(m.search_kb),
            mb(m.hwm_kb)
        );
        for e in [
            &i.first_error,
            &self.read.first_error,
            &self.search.first_error,
        ]
        .into_iter()
        .flatten()
        {
            let _ = writeln!(s, "  first error: {e}");
        }
        s
    }

    fn json_lines(&self) -> Vec<String> {
        let head = format!(
            "\"bench\":\"load\",\"store\":\"{}\",\"auth\":{},\"load_average\":{}",
            self.store,
            self.auth,
            self.load_average
                .map_or_else(|| "null".into(), |l| format!("{l:.2}"))
        );
        let i = &self.ingest;
        let mut lat = i.latencies_us.clone();
        lat.sort_unstable();
        let mut out = vec![format!(
            "{{{head},\"figure\":\"ingest\",\"resources\":{},\"bundles\":{},\"concurrency\":{},\"seconds\":{:.3},\"resources_per_s\":{:.1},\"bundle_p50_ms\":{:.1},\"bundle_p99_ms\":{:.1},\"errors\":{},\"server_cpu_s\":{:.2},\"bench_cpu_s\":{:.2}}}",
            i.resources,
            i.bundles,
            self.concurrency,
            i.seconds,
            // A kept store's skipped ingest has no rate.
            if i.bundles == 0 {
                0.0
            } else {
                i.resources as f64 / i.seconds.max(1e-9)
            },
            ms(quantile(&lat, 0.5)),
            ms(quantile(&lat, 0.99)),
            i.errors,
            i.cpu.server,
            i.cpu.bench
        )];
        for (name, p) in [("read", &self.read), ("search", &self.search)] {
            let mut lat = p.latencies_us.clone();
            lat.sort_unstable();
            let query = if name == "search" {
                format!(
                    ",\"query\":\"{SEARCH_LABEL}\",\"mean_matches\":{:.2}",
                    p.matches as f64 / p.requests.max(1) as f64
                )
            } else {
                String::new()
            };
            out.push(format!(
                "{{{head},\"figure\":\"{name}\"{query},\"stored\":{},\"connections\":{},\"requests\":{},\"seconds\":{:.3},\"requests_per_s\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"errors\":{},\"server_cpu_s\":{:.2},\"bench_cpu_s\":{:.2}}}",
                i.resources,
                self.connections,
                p.requests,
                p.seconds,
                p.requests as f64 / p.seconds.max(1e-9),
                ms(quantile(&lat, 0.5)),
                ms(quantile(&lat, 0.99)),
                ms(lat.last().copied().unwrap_or(0)),
                p.errors,
                p.cpu.server,
                p.cpu.bench
            ));
        }
        let m = &self.memory;
        out.push(format!(
            "{{{head},\"figure\":\"memory\",\"ingest_rss_max_mb\":{},\"read_rss_max_mb\":{},\"search_rss_max_mb\":{},\"hwm_mb\":{}}}",
            mb_json(m.ingest_kb),
            mb_json(m.read_kb),
            mb_json(m.search_kb),
            mb_json(m.hwm_kb)
        ));
        out
    }
}

/// Runs the whole benchmark: store, clients, server, the three phases, clean-up.
async fn load(options: &Options) -> Result<Report, LoadError> {
    let samples = samples(&options.data)?;
    // A kept store keeps its work folder too (the server's demo keys live there).
    let work = match &options.store {
        Some(file) => Kept::beside(file).work,
        None => std::env::temp_dir().join(format!(
            "imagio-bench-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        )),
    };
    std::fs::create_dir_all(&work).map_err(|e| LoadError::Io(work.display().to_string(), e))?;
    let result = async {
        let db = match &options.store {
            Some(_) if options.database_url.is_some() => {
                return Err(LoadError::Input(
                    "--store keeps a SQLite file: not with --database-url".into(),
                ))
            }
            Some(file) => Database::Sqlite(file.clone()),
            None => Database::create(options.database_url.as_deref(), &work).await?,
        };
        let measured = measure(options, &samples, &db, &work).await;
        let dropped = db.drop_it().await;
        let report = measured?;
        dropped?;
        Ok(report)
    }
    .await;
    if options.store.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

async fn measure(
    options: &Options,
    samples: &[Sample],
    db: &Database,
    work: &Path,
) -> Result<Report, LoadError> {
    let url = db.url()?;
    let kept = options.store.as_ref().map(|f| Kept::beside(f));
    let reuse = kept.as_ref().is_some_and(Kept::exists);
    let clients = match (&kept, options.no_auth) {
        (_, true) => None,
        (Some(k), false) if reuse => Some(k.clients()),
        (Some(k), false) => Some(register_with_key(&url, &k.key).await?),
        (None, false) => Some(register(&url, work).await?),
    };
    let mut server = ServerProcess::spawn(&url, work, options.no_auth, 3600)?;
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    server.wait_ready(&probe).await?;
    let (site_token, sponsor_token) = match clients {
        Some(c) => (
            Some(token(c.site, &server.base).await?),
            Some(token(c.sponsor, &server.base).await?),
        ),
        None => (None, None),
    };
    let load_average = load_average();
    let pid = server.pid();
    let sampler = Sampler::start(pid);
    let cpu = Cpu::now(pid);
    let (mut ingest, stored) = match &kept {
        Some(k) if reuse => {
            let stored = k.stored()?;
            let i = Ingest {
                resources: stored.len(),
                ..Ingest::default()
            };
            (i, stored)
        }
        _ => {
            let (ingest, stored) =
                ingest(options, samples, &server.base, site_token.as_deref()).await;
            let ingest = ingest?;
            if let Some(k) = &kept {
                k.keep(&stored)?;
            }
            (ingest, stored)
        }
    };
    ingest.cpu = Cpu::now(pid).since(cpu);
    let patients: Vec<String> = stored
        .iter()
        .filter_map(|l| l.strip_prefix("Patient/"))
        .map(str::to_string)
        .collect();
    sampler.enter(READ);
    let cpu = Cpu::now(pid);
    let read_targets: Arc<Vec<String>> = Arc::new(stored);
    let read = drive(options, sponsor_token.as_deref(), {
        let base = server.base.clone();
        let targets = read_targets.clone();
        move |n| {
            let t = targets
                .get(n % targets.len().max(1))
                .map_or("Patient/none", String::as_str);
            format!("{base}/fhir/{t}")
        }
    })
    .await?;
    let mut read = read;
    read.cpu = Cpu::now(pid).since(cpu);
    sampler.enter(SEARCH);
    let cpu = Cpu::now(pid);
    let patient_ids = Arc::new(patients);
    let search = drive(options, sponsor_token.as_deref(), {
        let base = server.base.clone();
        let ids = patient_ids.clone();
        move |n| {
            let p = ids.get(n % ids.len().max(1)).map_or("none", String::as_str);
            format!("{base}/fhir/Observation?subject=Patient/{p}&date=ge2020-01-01")
        }
    })
    .await?;
    let mut search = search;
    search.cpu = Cpu::now(pid).since(cpu);
    let memory = sampler.finish();
    drop(server);
    Ok(Report {
        store: db.label(),
        auth: !options.no_auth,
        concurrency: options.concurrency,
        connections: options.connections,
        ingest,
        read,
        search,
        memory,
        patients: patient_ids.len(),
        load_average,
    })
}

/// What `--store FILE` keeps beside the store: the work folder (the server's demo keys,
/// its log), the clients' private key and the list of stored resources (`Type/id` per
/// line).
struct Kept {
    work: PathBuf,
    key: PathBuf,
    list: PathBuf,
}

impl Kept {
    fn beside(store: &Path) -> Kept {
        let with = |suffix: &str| {
            let mut name = store.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        Kept {
            work: with(".work"),
            key: with(".key.pem"),
            list: with(".stored"),
        }
    }

    /// Whether an earlier run finished its ingest into the store.
    fn exists(&self) -> bool {
        self.list.is_file() && self.key.is_file()
    }

    fn keep(&self, stored: &[String]) -> Result<(), LoadError> {
        std::fs::write(&self.list, stored.join("\n"))
            .map_err(|e| LoadError::Io(self.list.display().to_string(), e))
    }

    fn stored(&self) -> Result<Vec<String>, LoadError> {
        let text = std::fs::read_to_string(&self.list)
            .map_err(|e| LoadError::Io(self.list.display().to_string(), e))?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// The clients [`register_with_key`] made in the kept store.
    fn clients(&self) -> Clients {
        Clients::signed_with(&self.key)
    }
}

/// An access token for `settings` from the server at `base`.
pub(super) async fn token(
    mut settings: crate::client::Settings,
    base: &str,
) -> Result<String, LoadError> {
    settings.server = base.to_string();
    let mut session = crate::client::Session::connect(settings)
        .await
        .map_err(|e| LoadError::Server(e.to_string()))?;
    session
        .token()
        .await
        .map_err(|e| LoadError::Server(e.to_string()))
}

/// The Bundles to post (sample index, round), in order, until `resources` are reached.
fn ingest_plan(samples: &[Sample], resources: usize) -> Vec<(usize, u32)> {
    let mut plan = Vec::new();
    let mut total = 0;
    let mut round = 0u32;
    while total < resources {
        for (i, s) in samples.iter().enumerate() {
            if total >= resources {
                break;
            }
            plan.push((i, round));
            total += s.entries;
        }
        round += 1;
    }
    plan
}

/// Posts the planned Bundles `concurrency` at a time; returns the figures and the
/// `Type/id` of every stored resource.
async fn ingest(
    options: &Options,
    samples: &[Sample],
    base: &str,
    token: Option<&str>,
) -> (Result<Ingest, LoadError>, Vec<String>) {
    let plan = Arc::new(ingest_plan(samples, options.resources));
    let texts: Arc<Vec<String>> = Arc::new(samples.iter().map(|s| s.text.clone()).collect());
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
    {
        Ok(h) => h,
        Err(e) => return (Err(e.into()), Vec::new()),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Mutex::new((Ingest::default(), Vec::<String>::new())));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.concurrency.max(1) {
        let (plan, texts, next, shared, http) = (
            plan.clone(),
            texts.clone(),
            next.clone(),
            shared.clone(),
            http.clone(),
        );
        let url = format!("{base}/fhir");
        let bearer = token.map(|t| format!("Bearer {t}"));
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(sample, round)) = plan.get(k) else {
                    break;
                };
                let Some(text) = texts.get(sample) else {
                    break;
                };
                let body = rewrite_round(text, round);
                let t = Instant::now();
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(body);
                if let Some(b) = &bearer {
                    req = req.header("authorization", b);
                }
                let outcome = match req.send().await {
                    Ok(r) => {
                        let status = r.status();
                        match r.bytes().await {
                            Ok(b) if status.is_success() => Ok(locations(&b)),
                            Ok(b) => Err(format!(
                                "Bundle {k}: status {status}: {}",
                                String::from_utf8_lossy(&b)
                                    .chars()
                                    .take(400)
                                    .collect::<String>()
                            )),
                            Err(e) => Err(format!("Bundle {k}: {e}")),
                        }
                    }
                    Err(e) => Err(format!("Bundle {k}: {e}")),
                };
                let elapsed = t.elapsed();
                let Ok(mut g) = shared.lock() else { break };
                let (figures, stored) = &mut *g;
                figures.latencies_us.push(elapsed.as_micros() as u64);
                figures.bundles += 1;
                match outcome {
                    Ok(locs) => {
                        figures.resources += locs.len();
                        stored.extend(locs);
                    }
                    Err(e) => {
                        figures.errors += 1;
                        figures.first_error.get_or_insert(e);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let Ok(mut g) = shared.lock() else {
        return (
            Err(LoadError::Server("ingest workers failed".into())),
            Vec::new(),
        );
    };
    let (mut figures, stored) = std::mem::take(&mut *g);
    figures.seconds = seconds;
    figures.rounds = plan.last().map_or(0, |(_, r)| *r as usize + 1);
    // Deterministic order for the read phase, whatever order the Bundles finished in.
    let mut stored = stored;
    stored.sort_unstable();
    (Ok(figures), stored)
}

/// The `Type/id` of each entry of a transaction-response that made a resource (`201`).
fn locations(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    v.get("entry")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let r = e.get("response")?;
            if !r.get("status")?.as_str()?.starts_with("201") {
                return None;
            }
            let loc = r.get("location")?.as_str()?;
            let (t, rest) = loc.split_once('/')?;
            let id = rest.split('/').next()?;
            Some(format!("{t}/{id}"))
        })
        .collect()
}

/// Runs GETs of `url(n)` on `connections` keep-alive connections for the set duration;
/// the n-th request of a connection asks for a pseudo-random (fixed-seed) target.
async fn drive(
    options: &Options,
    token: Option<&str>,
    url: impl Fn(usize) -> String + Send + Sync + 'static,
) -> Result<Phase, LoadError> {
    let url = Arc::new(url);
    let deadline = Instant::now() + options.duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..options.connections.max(1) {
        // One client per connection, one idle connection kept: a fixed number of
        // keep-alive connections.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1)
            .build()?;
        let url = url.clone();
        let bearer = token.map(|t| format!("Bearer {t}"));
        tasks.push(tokio::spawn(async move {
            let mut phase = Phase::default();
            // A 64-bit LCG per connection, seeded by its number: the same targets every run.
            let mut state: u64 =
                0x9E37_79B9_7F4A_7C15 ^ (c as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            while Instant::now() < deadline {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let target = url((state >> 33) as usize);
                let t = Instant::now();
                let mut req = http.get(&target).header("accept", "application/fhir+json");
                if let Some(b) = &bearer {
                    req = req.header("authorization", b);
                }
                let result = match req.send().await {
                    Ok(r) => {
                        let status = r.status();
                        match r.bytes().await {
                            Ok(b) if status.is_success() => Ok(b),
                            Ok(b) => Err(format!(
                                "GET {target}: status {status}: {}",
                                String::from_utf8_lossy(&b)
                                    .chars()
                                    .take(300)
                                    .collect::<String>()
                            )),
                            Err(e) => Err(format!("GET {target}: {e}")),
                        }
                    }
                    Err(e) => Err(format!("GET {target}: {e}")),
                };
                phase.latencies_us.push(t.elapsed().as_micros() as u64);
                phase.requests += 1;
                match result {
                    Ok(b) => phase.matches += count(&b, b"\"mode\":\"match\""),
                    Err(e) => {
                        phase.errors += 1;
                        phase.first_error.get_or_insert(e);
                    }
                }
            }
            phase
        }));
    }
    let mut all = Phase::default();
    for t in tasks {
        if let Ok(p) = t.await {
            all.requests += p.requests;
            all.errors += p.errors;
            all.matches += p.matches;
            all.latencies_us.extend(p.latencies_us);
            if all.first_error.is_none() {
                all.first_error = p.first_error;
            }
        }
    }
    all.seconds = started.elapsed().as_secs_f64();
    Ok(all)
}

/// Occurrences of `needle` in `hay`.
fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rewrite_every_uuid_consistently() {
        let text = r#"{"fullUrl":"urn:uuid:9afe28dc-7ad5-4e90-b6a6-16123eae98c3","reference":"urn:uuid:9afe28dc-7ad5-4e90-b6a6-16123eae98c3","value":"x9afe28dc-7ad5-4e90-b6a6-16123eae98c3"}"#;
        assert_eq!(rewrite_round(text, 0), text);
        let one = rewrite_round(text, 1);
        assert_eq!(
            one.matches("9afe28dd-7ad5-4e90-b6a6-16123eae98c3").count(),
            2
        );
        // Not a UUID on its own (preceded by a letter): left as it is.
        assert!(one.contains("x9afe28dc-7ad5"));
        assert_eq!(rewrite_round(text, 1), one);
        assert_ne!(rewrite_round(text, 2), one);
    }

    #[test]
    fn plan_stops_at_the_resource_count() {
        let s = |n| Sample {
            text: String::new(),
            entries: n,
        };
        let samples = [s(100), s(50)];
        assert_eq!(ingest_plan(&samples, 120), vec![(0, 0), (1, 0)]);
        assert_eq!(ingest_plan(&samples, 151), vec![(0, 0), (1, 0), (0, 1)]);
    }

    #[test]
    fn durations_and_quantiles() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
