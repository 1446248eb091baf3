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
        /// Write the report here instead of standard error.
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
    /// Check and test mapping files.
    Mapping {
        #[command(subcommand)]
        command: MappingCommand,
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

fn main() -> ExitCode {
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
            serve(imagio_gateway::serve::Config {
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
                export: imagio_gateway::export::ExportConfig {
                    dir: export_dir,
                    retention: std::time::Duration::from_secs(export_retention),
                    page: export_page,
                    worker: !no_export_worker,
                    ..Default::default()
                },
            })
        }
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
                },
        } => with_runtime(push(
            mapping,
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
        Command::Fhirpath { expression, input } => {
            imagio_gateway::fhirpath::cli::run(&expression, input.as_deref())
        }
        Command::Bench {
            what: imagio_gateway::bench::Suite::Load,
            data,
            load,
        } => imagio_gateway::bench::load::run(&imagio_gateway::bench::load::Options {
            data: data.unwrap_or_else(|| PathBuf::from(imagio_gateway::bench::DEFAULT_DATA)),
            database_url: load.database_url,
            concurrency: load.concurrency,
            connections: load.connections,
            resources: load.resources.unwrap_or(100_000),
            duration: load.duration,
            no_auth: load.no_auth,
        }),
        Command::Bench {
            what: imagio_gateway::bench::Suite::Export,
            load,
            ..
        } => imagio_gateway::bench::export::run(&imagio_gateway::bench::export::Options {
            database_url: load.database_url,
            resources: load.resources.unwrap_or(1_000_000),
        }),
        Command::Bench { what, data, .. } => imagio_gateway::bench::run(what, data.as_deref()),
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

/// `client push`: one line per file (`accepted`/`rejected`, status, summary); exit 0 when
/// all were accepted, 1 when some were not, 2 when nothing could be sent.
async fn push(
    mapping: Option<PathBuf>,
    settings: imagio_gateway::client::Settings,
    paths: Vec<PathBuf>,
) -> ExitCode {
    let reports = match mapping {
        Some(m) => imagio_gateway::client::push_mapped(settings, &m, &paths)
            .await
            .map(|r| vec![r]),
        None => imagio_gateway::client::push(settings, &paths).await,
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
