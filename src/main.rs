//! `imagio-gateway`: the command line. Each subcommand parses its arguments and calls one
//! library function; nothing else lives here.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "imagio-gateway",
    version,
    about = "A-IMAGIO study data gateway (FHIR R4)"
)]
struct Cli {
    /// Folder of study definitions (the layout of `profiles/`) to use instead of the
    /// embedded study profiles.
    #[arg(long = "profiles", global = true, value_name = "DIR")]
    profiles_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Purge the payloads of ledger entries older than the retention period (the entries
    /// stay, marked purged).
    Purge {
        /// Database: postgres://..., sqlite:PATH, or a SQLite file path.
        #[arg(
            long,
            env = "IMAGIO_DATABASE_URL",
            default_value = "imagio.sqlite",
            value_name = "URL"
        )]
        database_url: String,
        /// Payloads received longer ago than this are purged (30d, 12h, 90m, 45s).
        #[arg(long, env = "IMAGIO_LEDGER_RETENTION", value_name = "DURATION", value_parser = imagio_gateway::store::sealed::parse_retention)]
        retention: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR REST server until Ctrl-C or SIGTERM.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Database: postgres://..., sqlite:PATH, or a SQLite file path.
        #[arg(
            long,
            env = "IMAGIO_DATABASE_URL",
            default_value = "imagio.sqlite",
            value_name = "URL"
        )]
        database_url: String,
        /// What writes are validated against.
        #[arg(long, value_enum, default_value = "study")]
        validation: imagio_gateway::serve::ValidationMode,
        /// Largest request body accepted, in bytes.
        #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
        max_body: usize,
        /// Deepest JSON nesting accepted.
        #[arg(long, default_value_t = 128, value_name = "LEVELS")]
        max_depth: usize,
        /// Accept every request as an admin of site `local`, without tokens (local testing
        /// only: refused unless --listen is a loopback address).
        #[arg(long)]
        no_auth: bool,
        /// The public base URL of the gateway (the `aud` of client assertions); default
        /// http:// plus the listening address.
        #[arg(long, env = "IMAGIO_PUBLIC_URL", value_name = "URL")]
        public_url: Option<String>,
        /// Lifetime of access tokens, in seconds.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        token_lifetime: u64,
        /// PEM certificates of a private CA to trust, besides the system's roots, when
        /// fetching clients' JWKS URLs over HTTPS.
        #[arg(long, env = "IMAGIO_JWKS_CA_CERT", value_name = "FILE")]
        jwks_ca_cert: Option<PathBuf>,
        /// The folder of mapping folders `POST /fhir/ingest/{mapping}` offers (default:
        /// ./mappings when it exists).
        #[arg(long, value_name = "DIR")]
        mappings: Option<PathBuf>,
        /// The AES-256-GCM key (64 hex digits) ledger payloads are encrypted with; without
        /// it, the demo key ./imagio-demo/ledger.key (made when missing).
        #[arg(long, env = "IMAGIO_LEDGER_KEY", value_name = "FILE")]
        ledger_key: Option<PathBuf>,
        /// Purge ledger payloads older than this (30d, 12h, 90m, 45s; a bare number is
        /// days), checked every hour; default: kept forever.
        #[arg(long, env = "IMAGIO_LEDGER_RETENTION", value_name = "DURATION", value_parser = imagio_gateway::store::sealed::parse_retention)]
        ledger_retention: Option<std::time::Duration>,
        /// The study secret keying pseudonyms (at least 32 bytes). Required unless --listen
        /// is a loopback address (demo mode), where ./imagio-demo/pseudonym.key is made
        /// on first start and reused.
        #[arg(long, env = "IMAGIO_PSEUDONYM_KEY_FILE", value_name = "FILE")]
        pseudonym_key: Option<PathBuf>,
        /// The de-identification policy (default: the embedded profiles/deidentify/default.toml).
        #[arg(long, env = "IMAGIO_DEIDENTIFY_POLICY", value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Bulk export: the folder of job files (shared by replicas).
        #[arg(long, default_value = "imagio-export", value_name = "DIR")]
        export_dir: PathBuf,
        /// Bulk export: seconds the files of a finished job are kept.
        #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
        export_retention: u64,
        /// Bulk export: resources read per database page.
        #[arg(long, default_value_t = 5000, value_name = "N")]
        export_page: i64,
        /// Bulk export: accept and answer jobs but leave running them to other replicas.
        #[arg(long)]
        no_export_worker: bool,
    },
    /// De-identify FHIR JSON (Bundles, resources) and NDJSON files at the site, with the
    /// policy and key the gateway uses: the output carries the same pseudonyms the gateway
    /// would give. Exit 0 when every file was written, 1 when the policy refused some.
    Deidentify {
        /// The policy (default: the embedded one).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// The study secret keying pseudonyms.
        #[arg(long, env = "IMAGIO_PSEUDONYM_KEY_FILE", value_name = "FILE")]
        key: PathBuf,
        /// The site code the gateway knows this site by (the site of its client).
        #[arg(long, value_name = "CODE")]
        site: String,
        /// Folder for the de-identified files (same names); standard output without it.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Files or folders (walked for *.json and *.ndjson).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// The submission ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Make key pairs for SMART Backend Services clients.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage the clients allowed to call the gateway (SMART Backend Services).
    Clients {
        /// Database: postgres://..., sqlite:PATH, or a SQLite file path.
        #[arg(
            long,
            env = "IMAGIO_DATABASE_URL",
            default_value = "imagio.sqlite",
            value_name = "URL",
            global = true
        )]
        database_url: String,
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// The reference site client: push FHIR data to a gateway, pull it back.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Validate FHIR JSON files against the R4 definitions and the study profiles; a resource
    /// is checked against the profiles it claims in `meta.profile`.
    Validate {
        /// Definitions to load first (StructureDefinition, ValueSet, CodeSystem, or a Bundle).
        #[arg(long = "load", value_name = "FILE")]
        loads: Vec<PathBuf>,
        /// Profile (canonical URL) to check every input against.
        #[arg(long = "profile", value_name = "URL")]
        profiles: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "json")]
        format: imagio_gateway::validate::cli::Format,
        /// The files to validate.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Work with the study profiles (the A-IMAGIO canonical model).
    Profiles {
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// Work with the embedded FHIR R4 definitions.
    Definitions {
        #[command(subcommand)]
        command: DefinitionsCommand,
    },
    /// Evaluate a FHIRPath expression, optionally on a FHIR JSON resource, and print the
    /// result as JSON (`[{"type": ..., "value": ...}]`).
    Fhirpath {
        /// The FHIRPath expression.
        expression: String,
        /// A FHIR JSON resource to evaluate it on.
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Run the built-in benchmarks and print their figures.
    Bench {
        /// What to measure.
        #[arg(value_enum, default_value = "all")]
        what: imagio_gateway::bench::Suite,
        /// Folder of FHIR JSON files to measure on (default: ../shared/samples/synthea).
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Compute the study's endpoint datasets (LTP per lesion; time to recurrence,
    /// disease-free and overall survival per patient; safety), their Kaplan-Meier estimates
    /// and pictures, into a folder (rules: profiles/ENDPOINTS.md).
    Endpoints {
        /// Read the current resources of this store (postgres://..., sqlite:PATH or a
        /// SQLite file path).
        #[arg(
            long,
            value_name = "URL",
            conflicts_with = "ndjson",
            required_unless_present = "ndjson"
        )]
        database_url: Option<String>,
        /// Read these NDJSON files (one resource per line) instead.
        #[arg(long, value_name = "FILE", num_args = 1..)]
        ndjson: Vec<PathBuf>,
        /// The folder to write the CSV, SVG and FHIR Parameters files into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    // --- mappings (issue 7) ---
    /// Map site CSV exports into a transaction Bundle of study resources, with a report of
    /// every problem by source file:row:column and mapping file:line.
    Map {
        /// The mapping file (TOML; see mappings/README.md).
        #[arg(long, value_name = "FILE")]
        mapping: PathBuf,
        /// Write the Bundle here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Also write the report as JSON here (per row and per produced resource, with
        /// source file:row:column and mapping file:line); the readable report always goes
        /// to standard error.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Also report validation warnings.
        #[arg(long)]
        warnings: bool,
        /// Do not validate the produced resources against the study profiles.
        #[arg(long)]
        no_validate: bool,
        /// The input files (each matched to a source by its files pattern).
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
    },
    /// SQL on FHIR v2 views: run a ViewDefinition over NDJSON files or the store.
    View {
        #[command(subcommand)]
        command: ViewCommand,
    },
    /// Check and test mapping files.
    Mapping {
        #[command(subcommand)]
        command: MappingCommand,
    },
    /// Bulk import of site exports through a mapping straight into the database: streamed,
    /// committed in batches through the server's write path, rows that fail reported.
    Import {
        /// The mapping file (TOML; see mappings/README.md).
        #[arg(long, value_name = "FILE")]
        mapping: PathBuf,
        /// The database (`postgres://...`, `sqlite:PATH` or a SQLite file path).
        #[arg(
            long,
            env = "IMAGIO_DATABASE_URL",
            default_value = "imagio.sqlite",
            value_name = "URL"
        )]
        database_url: String,
        /// Write the rows that did not load, and why, here (NDJSON) instead of standard
        /// error.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Rows per batch (one transaction each).
        #[arg(long, default_value_t = 500, value_name = "N")]
        batch: usize,
        /// Label the resources as this site's (as a site client of it would).
        #[arg(long, value_name = "CODE")]
        site: Option<String>,
        /// Print the summary as one JSON line (with the peak memory).
        #[arg(long)]
        json: bool,
        /// No progress display.
        #[arg(long)]
        quiet: bool,
        /// The study secret keying pseudonyms (the server's --pseudonym-key). Required for
        /// PostgreSQL; a SQLite file without it uses the demo key ./imagio-demo/pseudonym.key.
        #[arg(long, env = "IMAGIO_PSEUDONYM_KEY_FILE", value_name = "FILE")]
        pseudonym_key: Option<PathBuf>,
        /// The de-identification policy (default: the embedded one).
        #[arg(long, env = "IMAGIO_DEIDENTIFY_POLICY", value_name = "FILE")]
        policy: Option<PathBuf>,
        /// The ledger key (the server's --ledger-key). Required for PostgreSQL; a SQLite
        /// file without it uses the demo key ./imagio-demo/ledger.key.
        #[arg(long, env = "IMAGIO_LEDGER_KEY", value_name = "FILE")]
        ledger_key: Option<PathBuf>,
        /// The input files (each matched to a source by its files pattern).
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ViewCommand {
    /// Run a ViewDefinition and write its rows.
    Run {
        /// The ViewDefinition (JSON).
        view: PathBuf,
        /// Output format.
        #[arg(long, default_value = "csv", value_parser = ["csv", "ndjson", "json", "parquet"])]
        format: String,
        /// Write here instead of standard output (only when the run succeeds).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// NDJSON files of resources to run on.
        #[arg(long, num_args = 1.., value_name = "FILE", conflicts_with = "database_url")]
        ndjson: Vec<PathBuf>,
        /// The store to run on (its current resources of the view's type).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Check a mapping without data (and its columns against sample files).
    Check {
        /// The mapping file.
        file: PathBuf,
        /// A sample input file (repeatable).
        #[arg(long = "sample", value_name = "CSV")]
        samples: Vec<PathBuf>,
    },
    /// Run the fixtures of a mapping folder (DIR/fixtures/NAME/ with inputs and expected.json).
    Test {
        /// The mapping folder.
        dir: PathBuf,
        /// Write the current output as the expected files instead of comparing.
        #[arg(long)]
        update: bool,
    },
}

/// The options of `bench load`.
#[derive(clap::Args)]
struct LoadArgs {
    /// load: run on PostgreSQL (a new database is made on this server and dropped
    /// afterwards); default a temporary SQLite file.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// load: transaction Bundles in flight during ingest.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// load: keep-alive connections during reads and searches.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// load: resources to store (re-posting the Bundles with new UUIDs) before reads and
    /// searches (default 100,000); export: resources to load and export (default
    /// 1,000,000).
    #[arg(long)]
    resources: Option<usize>,
    /// load: how long the read phase and the search phase each run (10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = imagio_gateway::bench::load::parse_duration)]
    duration: std::time::Duration,
    /// load: start the server with --no-auth instead of registered clients and tokens.
    #[arg(long)]
    no_auth: bool,
    /// load: keep the SQLite store in FILE; when an earlier run with the same FILE
    /// finished its ingest, skip the ingest and measure reads and searches on that store.
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    /// map: rows of the generated export (default 1,000,000); import: rows of the first
    /// generated input, the second having ten times as many (default 1,000).
    #[arg(long)]
    rows: Option<usize>,
    /// endpoints: simulated patients.
    #[arg(long, default_value_t = 5000)]
    patients: usize,
    /// export: resources per database page (the server's --export-page; default its
    /// default).
    #[arg(long, value_name = "N")]
    export_page: Option<i64>,
    /// map: write the generated batches into this folder (for comparing outputs) and stop.
    #[arg(long, value_name = "DIR", hide = true)]
    dump: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new private key (PEM) and its public JWKS (to register) into a folder.
    Generate {
        /// Signature algorithm.
        #[arg(long, value_enum, default_value = "ES384")]
        alg: imagio_gateway::auth::keys::Alg,
        /// Folder to write into.
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Register a client with its public keys and the scopes it may be granted; prints its id.
    Add {
        /// The client id (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
        /// The site it belongs to.
        #[arg(long)]
        site: String,
        /// What it is.
        #[arg(long, value_enum)]
        role: imagio_gateway::auth::Role,
        /// Its public keys: a JWKS file.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "jwks_url",
            required_unless_present = "jwks_url"
        )]
        jwks: Option<PathBuf>,
        /// Its public keys: the URL where it publishes its JWKS.
        #[arg(long, value_name = "URL")]
        jwks_url: Option<String>,
        /// The scopes it may be granted, space-separated (system/Procedure.cruds, system/*.rs, ...).
        #[arg(long)]
        scope: String,
    },
    /// List the registered clients as JSON.
    List,
    /// Revoke a client: its next token request is refused.
    Revoke {
        /// The client id.
        id: String,
    },
    /// Make a new token-signing key for the gateway; the old one verifies its tokens until
    /// they expire.
    RotateGatewayKey,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Send FHIR JSON files (Bundles to the base, resources to their type) and report each.
    Push {
        /// Files or folders (walked for *.json).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The gateway (its base URL or its FHIR base).
        #[arg(long, value_name = "URL")]
        server: String,
        /// The registered client id.
        #[arg(long)]
        client_id: String,
        /// The private key (PEM).
        #[arg(long, value_name = "KEY.pem")]
        key: PathBuf,
        /// The registered key id (default: the key's RFC 7638 thumbprint).
        #[arg(long)]
        kid: Option<String>,
        /// The scopes to ask for.
        #[arg(long, default_value = "system/*.cruds")]
        scope: String,
        /// PEM certificates of a private CA to trust for an https:// server, besides the
        /// system's roots.
        #[arg(long, env = "IMAGIO_CA_CERT", value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        /// Map the PATHS (site CSV exports) with this mapping file here, validate the result
        /// against the study profiles, and push the Bundle only when the mapping reports no
        /// error (see mappings/README.md).
        #[arg(long, value_name = "FILE")]
        mapping: Option<PathBuf>,
        /// De-identify every file here before sending it (see `deidentify`); needs
        /// --pseudonym-key and --site.
        #[arg(long, requires_all = ["pseudonym_key", "site"])]
        deidentify: bool,
        /// The study secret keying pseudonyms, for --deidentify.
        #[arg(long, env = "IMAGIO_PSEUDONYM_KEY_FILE", value_name = "FILE")]
        pseudonym_key: Option<PathBuf>,
        /// The de-identification policy, for --deidentify (default: the embedded one).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// This site's code at the gateway, for --deidentify.
        #[arg(long, value_name = "CODE")]
        site: Option<String>,
    },
    /// Search resource types into one NDJSON file per type (Type.ndjson in --out).
    ///
    /// Each search follows its `next` links to the end; each file is written under a
    /// temporary name and renamed when complete. `--query` belongs to the `--type` before
    /// it (several combine with AND); a `--query` before any `--type` applies to every type,
    /// e.g. `--query _lastUpdated=gt2026-01-01T00:00:00Z` for an incremental pull. Without
    /// `--type`, every study type the token may search is pulled. Prints one line per type;
    /// exit 0 when every type was written, 1 when some failed, 2 when nothing could start.
    /// `pull` searches; for everything at once the gateway offers Bulk Data `$export`.
    Pull {
        /// The gateway (its base URL or its FHIR base).
        #[arg(long, value_name = "URL")]
        server: String,
        /// The registered client id.
        #[arg(long)]
        client_id: String,
        /// The private key (PEM).
        #[arg(long, value_name = "KEY.pem")]
        key: PathBuf,
        /// The registered key id (default: the key's RFC 7638 thumbprint).
        #[arg(long)]
        kid: Option<String>,
        /// The scopes to ask for.
        #[arg(long, default_value = "system/*.rs")]
        scope: String,
        /// PEM certificates of a private CA to trust for an https:// server, besides the
        /// system's roots.
        #[arg(long, env = "IMAGIO_CA_CERT", value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        /// The folder to write Type.ndjson files into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A resource type to pull (repeatable).
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Search parameters, `name=value` or `a=b&c=d` (repeatable; see above).
        #[arg(long = "query", value_name = "NAME=VALUE")]
        queries: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ProfilesCommand {
    /// Render the data dictionary: one table per profile, the extensions and the code lists.
    Doc {
        /// Output format.
        #[arg(long, value_enum, default_value = "markdown")]
        format: imagio_gateway::profiles::doc::Format,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DefinitionsCommand {
    /// Rebuild the compact pack (definitions/r4) from the official R4 definition bundles.
    Pack {
        /// Folder with profiles-resources.json, valuesets.json, ...
        #[arg(long, default_value = "../shared/fhir-r4/definitions")]
        source: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "definitions/r4")]
        out: PathBuf,
    },
    /// Print how many definitions of each kind the binary carries.
    List,
}

/// Caps glibc's malloc at two arenas. By default it makes up to eight per core, one per
/// thread that allocates at the same time as another (tokio workers, SQLite connection
/// threads); memory freed in one arena is not reused by the others, so a server that
/// parsed large Bundles on several threads kept 20-35 MB more resident (`bench load`,
/// 40,000 resources: VmHWM 215 MB with the default, 180 MB with two arenas, the same CPU).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    /// glibc's `M_ARENA_MAX` (malloc.h).
    const M_ARENA_MAX: i32 = -8;
    // SAFETY: mallopt only sets a tuning parameter of the C allocator; it is called once,
    // before any other thread exists.
    unsafe {
        mallopt(M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Serve {
            listen,
            database_url,
            validation,
            max_body,
            max_depth,
            no_auth,
            public_url,
            token_lifetime,
            jwks_ca_cert,
            mappings,
            ledger_key,
            ledger_retention,
            pseudonym_key,
            policy,
            export_dir,
            export_retention,
            export_page,
            no_export_worker,
        } => {
            if let Some(f) = &jwks_ca_cert {
                if let Err(e) = imagio_gateway::client::ca_certificates(f) {
                    eprintln!("error: --jwks-ca-cert: {e}");
                    return ExitCode::from(2);
                }
            }
            let pseudonymizer = match server_pseudonymizer(listen, pseudonym_key, policy) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            serve(imagio_gateway::serve::Config {
                pseudonymize: Some(pseudonymizer),
                listen,
                database_url,
                validation,
                profiles_dir: cli.profiles_dir,
                max_body,
                max_depth,
                auth: imagio_gateway::auth::AuthConfig {
                    disabled: no_auth,
                    public_url,
                    token_lifetime,
                    jwks_ca_cert,
                },
                mappings_dir: mappings,
                ledger_key,
                ledger_retention,
                export: imagio_gateway::export::ExportConfig {
                    dir: export_dir,
                    retention: std::time::Duration::from_secs(export_retention),
                    page: export_page,
                    worker: !no_export_worker,
                    ..Default::default()
                },
            })
        }
        Command::Ledger {
            command:
                LedgerCommand::Purge {
                    database_url,
                    retention,
                },
        } => with_runtime(async move {
            match imagio_gateway::audit::purge(&database_url, retention).await {
                Ok((n, cutoff)) => {
                    println!("purged {n} ledger payloads received before {cutoff}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {database_url}: {e}");
                    ExitCode::from(2)
                }
            }
        }),
        Command::Keys {
            command: KeysCommand::Generate { alg, out },
        } => match imagio_gateway::auth::keys::generate_files(alg, &out) {
            Ok(g) => {
                println!("private key: {}", g.private_path.display());
                println!("public JWKS: {} (kid {})", g.jwks_path.display(), g.key.kid);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Clients {
            database_url,
            command,
        } => with_runtime(imagio_gateway::auth::clients::cli(
            database_url,
            match command {
                ClientsCommand::Add {
                    id,
                    site,
                    role,
                    jwks,
                    jwks_url,
                    scope,
                } => imagio_gateway::auth::clients::Cli::Add {
                    id,
                    site,
                    role,
                    jwks,
                    jwks_url,
                    scope,
                },
                ClientsCommand::List => imagio_gateway::auth::clients::Cli::List,
                ClientsCommand::Revoke { id } => imagio_gateway::auth::clients::Cli::Revoke(id),
                ClientsCommand::RotateGatewayKey => {
                    imagio_gateway::auth::clients::Cli::RotateGatewayKey
                }
            },
        )),
        Command::Client {
            command:
                ClientCommand::Push {
                    paths,
                    server,
                    client_id,
                    key,
                    kid,
                    scope,
                    ca_cert,
                    mapping,
                    deidentify,
                    pseudonym_key,
                    policy,
                    site,
                },
        } => with_runtime(push(
            mapping,
            match (deidentify, pseudonym_key, site) {
                (true, Some(k), Some(s)) => match pseudonymizer(policy, &k) {
                    Ok(p) => Some((p, s)),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
                _ => None,
            },
            imagio_gateway::client::Settings {
                server,
                client_id,
                key,
                kid,
                scope,
                ca_cert,
            },
            paths,
        )),
        Command::Client {
            command:
                ClientCommand::Pull {
                    server,
                    client_id,
                    key,
                    kid,
                    scope,
                    ca_cert,
                    out,
                    types,
                    queries,
                },
        } => {
            // The positions of --type and --query among the arguments pair them.
            let pull_matches = matches
                .subcommand_matches("client")
                .and_then(|m| m.subcommand_matches("pull"));
            let positioned = |id: &str, values: Vec<String>| -> Vec<(usize, String)> {
                let at: Vec<usize> = pull_matches
                    .and_then(|m| m.indices_of(id))
                    .map(|i| i.collect())
                    .unwrap_or_default();
                at.into_iter().zip(values).collect()
            };
            let plan = match imagio_gateway::client::Plan::from_args(
                &positioned("types", types),
                &positioned("queries", queries),
            ) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            with_runtime(pull(
                imagio_gateway::client::Settings {
                    server,
                    client_id,
                    key,
                    kid,
                    scope,
                    ca_cert,
                },
                plan,
                out,
            ))
        }
        Command::Profiles { command } => match command {
            ProfilesCommand::Doc { format, out } => imagio_gateway::profiles::doc::run(
                cli.profiles_dir.as_deref(),
                format,
                out.as_deref(),
            ),
        },
        Command::Definitions { command } => match command {
            DefinitionsCommand::Pack { source, out } => {
                match imagio_gateway::definitions::pack::pack(&source, &out) {
                    Ok(r) => {
                        println!(
                            "packed {} StructureDefinitions, {} ValueSets, {} CodeSystems, {} SearchParameters ({} bytes) into {}",
                            r.structure_definitions,
                            r.value_sets,
                            r.code_systems,
                            r.search_parameters,
                            r.bytes,
                            out.display()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::from(2)
                    }
                }
            }
            DefinitionsCommand::List => {
                imagio_gateway::definitions::report(&mut std::io::stdout());
                ExitCode::SUCCESS
            }
        },
        Command::Validate {
            loads,
            profiles,
            format,
            files,
        } => match imagio_gateway::profiles::study_registry(cli.profiles_dir.as_deref()) {
            Ok(registry) => {
                imagio_gateway::validate::cli::run(registry, &loads, &profiles, &files, format)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Deidentify {
            policy,
            key,
            site,
            out,
            inputs,
        } => match pseudonymizer(policy, &key) {
            Ok(p) => imagio_gateway::pseudonymize::cli::run(&p, &site, &inputs, out.as_deref()),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Fhirpath { expression, input } => {
            imagio_gateway::fhirpath::cli::run(&expression, input.as_deref())
        }
        Command::Bench {
            what: imagio_gateway::bench::Suite::Load,
            data,
            load,
            ..
        } => imagio_gateway::bench::load::run(&imagio_gateway::bench::load::Options {
            data: data.unwrap_or_else(|| PathBuf::from(imagio_gateway::bench::DEFAULT_DATA)),
            database_url: load.database_url,
            concurrency: load.concurrency,
            connections: load.connections,
            resources: load.resources.unwrap_or(100_000),
            duration: load.duration,
            no_auth: load.no_auth,
            store: load.store,
        }),
        Command::Bench {
            what: imagio_gateway::bench::Suite::Map,
            load,
            ..
        } => match load.dump {
            Some(dir) => imagio_gateway::bench::map::dump(load.rows.unwrap_or(1_000_000), &dir),
            None => imagio_gateway::bench::map::run(load.rows.unwrap_or(1_000_000)),
        },
        Command::Bench {
            what: imagio_gateway::bench::Suite::Import,
            load,
            ..
        } => imagio_gateway::bench::import::run(
            load.rows.unwrap_or(1_000),
            load.database_url.as_deref(),
        ),
        Command::Bench {
            what: imagio_gateway::bench::Suite::Endpoints,
            load,
            ..
        } => imagio_gateway::bench::endpoints::run(load.patients, load.database_url),
        Command::Bench {
            what: imagio_gateway::bench::Suite::Export,
            load,
            ..
        } => imagio_gateway::bench::export::run(&imagio_gateway::bench::export::Options {
            database_url: load.database_url,
            resources: load.resources.unwrap_or(1_000_000),
            page: load.export_page,
        }),
        Command::Bench { what, data, .. } => imagio_gateway::bench::run(what, data.as_deref()),
        Command::Import {
            mapping,
            database_url,
            report,
            batch,
            site,
            json,
            quiet,
            pseudonym_key,
            policy,
            ledger_key,
            inputs,
        } => {
            let secrets = match import_secrets(&database_url, pseudonym_key, policy, ledger_key) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let options = imagio_gateway::ingest::import::Options {
                mapping,
                inputs,
                report,
                batch,
                site,
                progress: !quiet,
            };
            with_runtime(import(
                database_url,
                cli.profiles_dir,
                options,
                secrets,
                json,
            ))
        }
        Command::Endpoints {
            database_url,
            ndjson,
            out,
        } => imagio_gateway::endpoints::cli(database_url, &ndjson, &out),
        // --- mappings (issue 7) ---
        Command::Map {
            mapping,
            out,
            report,
            warnings,
            no_validate,
            inputs,
        } => imagio_gateway::map::cli::map(
            cli.profiles_dir.as_deref(),
            &mapping,
            &inputs,
            out.as_deref(),
            report.as_deref(),
            warnings,
            no_validate,
        ),
        Command::View {
            command:
                ViewCommand::Run {
                    view,
                    format,
                    out,
                    ndjson,
                    database_url,
                },
        } => imagio_gateway::views::cli::run(&imagio_gateway::views::cli::RunArgs {
            view,
            format: imagio_gateway::views::Format::from_name(&format)
                .unwrap_or(imagio_gateway::views::Format::Csv),
            out,
            ndjson,
            database_url,
        }),
        Command::Mapping {
            command: MappingCommand::Check { file, samples },
        } => imagio_gateway::map::cli::check(cli.profiles_dir.as_deref(), &file, &samples),
        Command::Mapping {
            command: MappingCommand::Test { dir, update },
        } => imagio_gateway::map::cli::test(cli.profiles_dir.as_deref(), &dir, update),
    }
}

/// Runs `f` on a new async runtime.
fn with_runtime(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(2)
        }
    }
}

/// `import`: the summary on standard output; exit 0 when every row loaded, 1 when some did
/// not (they are in the report), 2 when the import could not run or stopped.
/// The keys `import` writes with: those given, or for a SQLite file the demo keys of
/// `./imagio-demo/` (made when missing, as `serve` in demo mode does).
fn import_secrets(
    database_url: &str,
    pseudonym_key: Option<PathBuf>,
    policy: Option<PathBuf>,
    ledger_key: Option<PathBuf>,
) -> Result<imagio_gateway::ingest::import::Secrets, String> {
    let postgres = database_url.starts_with("postgres:") || database_url.starts_with("postgresql:");
    let demo = std::path::Path::new("imagio-demo");
    let key_path = match pseudonym_key {
        Some(k) => k,
        None if postgres => {
            return Err(
                "import into PostgreSQL needs the study's pseudonym key (--pseudonym-key FILE)"
                    .into(),
            )
        }
        None => {
            let (_, path, _) =
                imagio_gateway::pseudonymize::Key::demo(demo).map_err(|e| e.to_string())?;
            eprintln!("demo mode: pseudonyms keyed by {}", path.display());
            path
        }
    };
    let ledger_key = match ledger_key {
        Some(k) => k,
        None if postgres => {
            return Err("import into PostgreSQL needs the ledger key (--ledger-key FILE)".into())
        }
        None => {
            let path = demo.join("ledger.key");
            imagio_gateway::store::sealed::LedgerKey::load_or_create(&path)
                .map_err(|e| e.to_string())?;
            eprintln!("demo mode: ledger payloads sealed with {}", path.display());
            path
        }
    };
    Ok(imagio_gateway::ingest::import::Secrets {
        pseudonymize: pseudonymizer(policy, &key_path)?,
        ledger_key,
    })
}

async fn import(
    database_url: String,
    profiles_dir: Option<PathBuf>,
    options: imagio_gateway::ingest::import::Options,
    secrets: imagio_gateway::ingest::import::Secrets,
    json: bool,
) -> ExitCode {
    let report = options.report.clone();
    match imagio_gateway::ingest::import::run(
        &database_url,
        profiles_dir.as_deref(),
        &options,
        secrets,
    )
    .await
    {
        Ok(s) => {
            if json {
                println!("{}", s.to_json());
            } else {
                println!(
                    "{} rows read, {} loaded, {} failed{}; resources: {} created, {} updated, {} unchanged; {} batches in {:.1} s ({:.0} rows/s)",
                    s.rows,
                    s.rows - s.failed_rows,
                    s.failed_rows,
                    report
                        .map(|r| format!(" (report: {})", r.display()))
                        .unwrap_or_default(),
                    s.created,
                    s.updated,
                    s.unchanged,
                    s.batches,
                    s.seconds,
                    s.rows_per_second()
                );
            }
            if s.failed_rows == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `client push`: one line per file (`accepted`/`rejected`, status, summary); exit 0 when
/// all were accepted, 1 when some were not, 2 when nothing could be sent.
async fn push(
    mapping: Option<PathBuf>,
    deidentify: Option<(imagio_gateway::pseudonymize::Pseudonymizer, String)>,
    settings: imagio_gateway::client::Settings,
    paths: Vec<PathBuf>,
) -> ExitCode {
    let deid = deidentify.as_ref().map(|(p, s)| (p, s.as_str()));
    let reports = match mapping {
        Some(m) => imagio_gateway::client::push_mapped_with(settings, &m, &paths, deid)
            .await
            .map(|r| vec![r]),
        None => imagio_gateway::client::push_with(settings, &paths, deid).await,
    };
    match reports {
        Ok(reports) => {
            let mut rejected = 0;
            for r in &reports {
                let verdict = if r.accepted() {
                    "accepted"
                } else {
                    rejected += 1;
                    "rejected"
                };
                let status = r.status.map_or_else(|| "-".to_string(), |s| s.to_string());
                println!("{verdict} {status} {}: {}", r.path.display(), r.summary);
            }
            println!(
                "{} files: {} accepted, {rejected} rejected",
                reports.len(),
                reports.len() - rejected
            );
            if rejected == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `client pull`: one line per type (`written` with the count and file, or `failed` with
/// why); exit 0 when every type was written, 1 when some failed, 2 when nothing could start.
async fn pull(
    settings: imagio_gateway::client::Settings,
    plan: imagio_gateway::client::Plan,
    out: PathBuf,
) -> ExitCode {
    match imagio_gateway::client::pull(settings, &plan, &out).await {
        Ok(reports) => {
            let mut failed = 0;
            for r in &reports {
                match (&r.file, &r.error) {
                    (Some(f), None) => println!(
                        "written {} {}: {} resources in {} pages",
                        r.res_type,
                        f.display(),
                        r.count,
                        r.pages
                    ),
                    (_, e) => {
                        failed += 1;
                        println!(
                            "failed {}: {}",
                            r.res_type,
                            e.as_deref().unwrap_or("no file written")
                        );
                    }
                }
            }
            let total: usize = reports.iter().map(|r| r.count).sum();
            println!(
                "{} types: {} written ({total} resources), {failed} failed",
                reports.len(),
                reports.len() - failed
            );
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Sets up logging (`RUST_LOG`, default `info`) and the async runtime, and runs the server.
/// The policy (`--policy` or the embedded default) with the key file.
fn pseudonymizer(
    policy: Option<PathBuf>,
    key: &std::path::Path,
) -> Result<imagio_gateway::pseudonymize::Pseudonymizer, String> {
    use imagio_gateway::pseudonymize::{Key, Policy, Pseudonymizer};
    let policy = match policy {
        Some(p) => Policy::load(&p),
        None => Policy::default_policy(),
    }
    .map_err(|e| e.to_string())?;
    let key = Key::load(key).map_err(|e| e.to_string())?;
    Ok(Pseudonymizer::new(policy, key))
}

/// What `serve` de-identifies with: the key file given, or, in demo mode (a loopback
/// `--listen`), `./imagio-demo/pseudonym.key`, made on first start.
fn server_pseudonymizer(
    listen: std::net::SocketAddr,
    key: Option<PathBuf>,
    policy: Option<PathBuf>,
) -> Result<imagio_gateway::pseudonymize::Pseudonymizer, String> {
    if let Some(k) = key {
        return pseudonymizer(policy, &k);
    }
    if !listen.ip().is_loopback() {
        return Err(format!(
            "serve on {listen} needs the study's pseudonym key: --pseudonym-key FILE or \
             IMAGIO_PSEUDONYM_KEY_FILE (only a loopback --listen runs in demo mode with a \
             generated key)"
        ));
    }
    let (_, path, made) =
        imagio_gateway::pseudonymize::Key::demo(std::path::Path::new("imagio-demo"))
            .map_err(|e| e.to_string())?;
    let shown = std::fs::canonicalize(&path).unwrap_or(path.clone());
    if made {
        println!(
            "demo mode: no --pseudonym-key given; made a pseudonym key in {} (pseudonyms \
             depend on it: keep it, or give the study's key with --pseudonym-key)",
            shown.display()
        );
    } else {
        eprintln!("demo mode: pseudonyms keyed by {}", shown.display());
    }
    pseudonymizer(policy, &path)
}

fn serve(config: imagio_gateway::serve::Config) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    match runtime.block_on(imagio_gateway::serve::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "serve failed");
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
