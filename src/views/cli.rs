//! `imagio-gateway view run VIEW.json [--format csv|ndjson|parquet] [--out FILE]
//! (--ndjson FILE... | --database-url URL)`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::output::{Format, RowWriter};
use super::{parse_view, source, View, ViewError};

/// The arguments of `view run`.
#[derive(Debug)]
pub struct RunArgs {
    /// The ViewDefinition file.
    pub view: PathBuf,
    /// Output format.
    pub format: Format,
    /// Output file (standard output when absent).
    pub out: Option<PathBuf>,
    /// NDJSON input files.
    pub ndjson: Vec<PathBuf>,
    /// The store to read instead.
    pub database_url: Option<String>,
}

/// Runs `view run`: exit 0 with the rows written, 1 when the view or the data is refused
/// (the message names the place), 2 on I/O or store failure. An `--out` file appears only
/// when the run succeeded.
pub fn run(args: &RunArgs) -> ExitCode {
    match execute(args) {
        Ok(n) => {
            eprintln!("{n} rows");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                ViewError::Io(_) | ViewError::Store(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn load(path: &Path) -> Result<View, ViewError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ViewError::Input(format!("{}: {e}", path.display())))?;
    parse_view(&text).map_err(|e| ViewError::Input(format!("{}: {e}", path.display())))
}

fn execute(args: &RunArgs) -> Result<u64, ViewError> {
    let view = load(&args.view)?;
    if args.ndjson.is_empty() == args.database_url.is_none() {
        return Err(ViewError::Input(
            "give either --ndjson FILE... or --database-url URL".into(),
        ));
    }
    match &args.out {
        Some(path) => {
            let part = path.with_extension(format!("part.{}", std::process::id()));
            let file = std::io::BufWriter::new(std::fs::File::create(&part)?);
            let result = produce(&view, args, file);
            match result {
                Ok(n) => {
                    std::fs::rename(&part, path)?;
                    Ok(n)
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    Err(e)
                }
            }
        }
        None => produce(&view, args, std::io::BufWriter::new(std::io::stdout())),
    }
}

fn produce<W: Write + Send>(view: &View, args: &RunArgs, out: W) -> Result<u64, ViewError> {
    let mut writer = RowWriter::new(out, args.format, &view.columns)?;
    let mut emit = |row: &super::Row| writer.row(row).map_err(ViewError::from);
    if let Some(url) = &args.database_url {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let store = crate::store::Store::open(url).await?;
            let r = source::store(view, &store, None, &mut emit).await;
            store.close().await;
            r
        })?;
    } else {
        for path in &args.ndjson {
            source::ndjson_file(view, path, &mut emit)?;
        }
    }
    let n = writer.count();
    writer.finish()?;
    Ok(n)
}
