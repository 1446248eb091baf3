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
    /// Start the gateway (until the REST server lands: load the definitions, report, exit).
    Serve,
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
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            imagio_gateway::definitions::report(&mut std::io::stdout());
            match imagio_gateway::profiles::report(
                cli.profiles_dir.as_deref(),
                &mut std::io::stdout(),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
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
        Command::Bench { what, data } => imagio_gateway::bench::run(what, data.as_deref()),
    }
}
