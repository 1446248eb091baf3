//! `bench map`: mapping throughput of the example CSV mapping
//! (`mappings/nl01-retrospective`), single thread, storage excluded.
//!
//! The generator makes `--rows` export rows (default 1,000,000) in the registry's layout:
//! Latin-1, `;`, decimal commas, `dd-mm-yyyy` dates, one to three lesions per row and a
//! complication on one row in five; every value is valid, so every row maps. The rows are
//! mapped in batches of [`BATCH`] rows (one input file each, as the streaming import
//! feeds the mapper), the transaction Bundle is written to a sink, and two figures are
//! printed: rows/s mapped, and rows/s mapped and validated against the study profiles.
//! Generating the rows is not timed.

use crate::map::{self, Input, Mapping};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Rows per mapped batch.
pub const BATCH: usize = 10_000;

/// The registry header (Latin-1: `ë` is 0xEB).
const HEADER: &[u8] = b"Studi\xebnummer;Geslacht;Geboortejaar;Diagnose;Datum diagnose;Datum ablatie;Techniek;Benadering;Methode marge;Complicatie;CTCAE graad;Relatie met ablatie;L1 segment;L1 diameter (cm);L1 marge (mm);L2 segment;L2 diameter (cm);L2 marge (mm);L3 segment;L3 diameter (cm);L3 marge (mm)\n";

/// A small deterministic generator (xorshift64*): the same rows on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Appends export row number `i` (its subject number is `i + 1`).
fn row(rng: &mut Rng, i: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let year = 2019 + rng.below(5);
    let (month, day) = (1 + rng.below(12), 1 + rng.below(28));
    let dx_month = 1 + rng.below(month);
    let complication = rng.below(5) == 0;
    let _ = write!(
        out,
        "{:06};{};{};{};{:02}-{:02}-{year};{:02}-{:02}-{year};{};{};{};",
        i + 1,
        rng.pick(&["M", "V"]),
        1930 + rng.below(60),
        rng.pick(&["HCC", "colorectaal", "CRLM"]),
        1 + rng.below(28),
        dx_month,
        day,
        month,
        rng.pick(&["RFA", "micro", "MWA", "radiofrequentie", "microgolf"]),
        rng.pick(&["percutaan", "percutaan", "laparoscopisch", "open"]),
        rng.pick(&["3D", "visueel", "-"]),
    );
    if complication {
        let grade = 1 + rng.below(4);
        let _ = write!(
            out,
            "{};{grade};{};",
            rng.pick(&["Leverbloeding", "Pijn", "Abces", "Koorts"]),
            rng.pick(&["zeker", "waarschijnlijk", "mogelijk", "onwaarschijnlijk"]),
        );
    } else {
        out.extend_from_slice(b"NA;NA;NA;");
    }
    let lesions = 1 + rng.below(3);
    for l in 0..3 {
        if l < lesions {
            let _ = write!(
                out,
                "{};{},{};{},{}",
                rng.pick(&["1", "2", "3", "4a", "4b", "5", "6", "7", "8"]),
                1 + rng.below(4),
                rng.below(10),
                rng.below(10),
                rng.below(10),
            );
        } else {
            out.extend_from_slice(b"NA;NA;NA");
        }
        out.push(if l < 2 { b';' } else { b'\n' });
    }
}

/// The generated export in batches of [`BATCH`] rows, each a complete file.
pub fn generate(rows: usize) -> Vec<Input> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    let mut i = 0;
    while i < rows {
        let n = BATCH.min(rows - i);
        let mut bytes = Vec::with_capacity(HEADER.len() + n * 160);
        bytes.extend_from_slice(HEADER);
        for k in i..i + n {
            row(&mut rng, k, &mut bytes);
        }
        out.push(Input {
            name: format!("registry-export-{:04}.csv", out.len()),
            bytes,
        });
        i += n;
    }
    out
}

/// Writes the generated batches of `rows` rows into `dir` (one file per batch, named as
/// the benchmark names them), to compare the mapper's output on them.
pub fn dump(rows: usize, dir: &std::path::Path) -> ExitCode {
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        generate(rows)
            .iter()
            .try_for_each(|b| std::fs::write(dir.join(&b.name), &b.bytes))
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}: {e}", dir.display());
            ExitCode::from(2)
        }
    }
}

/// The example mapping, from the source tree.
fn mapping_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mappings/nl01-retrospective/mapping.toml")
}

/// Maps every batch; returns the time spent mapping, the resources made and the errors.
fn pass(
    m: &Mapping,
    batches: &[Input],
    validator: Option<&crate::validate::Validator>,
) -> Result<(Duration, usize, usize), map::MapError> {
    let mut spent = Duration::ZERO;
    let (mut resources, mut errors) = (0, 0);
    for b in batches {
        let t = Instant::now();
        let outcome = map::run(
            m,
            std::slice::from_ref(b),
            validator,
            false,
            &mut std::io::sink(),
        )?;
        spent += t.elapsed();
        resources += outcome.resources;
        errors += outcome
            .diagnostics
            .iter()
            .filter(|d| d.severity.is_error())
            .count();
    }
    Ok((spent, resources, errors))
}

/// Runs the benchmark on `rows` generated rows and prints its figures.
pub fn run(rows: usize) -> ExitCode {
    let path = mapping_path();
    let m = match map::load(&path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let validator = match map::study_validator(None) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let t = Instant::now();
    let batches = generate(rows);
    let bytes: usize = batches.iter().map(|b| b.bytes.len()).sum();
    println!(
        "map: {} ({rows} generated rows, {:.1} MB, generated in {:.1} s); batches of {BATCH} rows, single thread, Bundle to a sink",
        path.display(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let report = |label: &str, v: Option<&crate::validate::Validator>| match pass(&m, &batches, v) {
        Ok((spent, resources, errors)) => {
            let s = spent.as_secs_f64();
            println!(
                    "  {label:<22} {:>10.0} rows/s   {:>10.0} resources/s   ({resources} resources, {errors} errors, {s:.2} s)",
                    rows as f64 / s,
                    resources as f64 / s,
                );
            true
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    };
    if !report("mapped", None) || !report("mapped + validated", Some(&validator)) {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
