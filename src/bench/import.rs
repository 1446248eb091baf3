//! `imagio-gateway bench import`: the bulk import end to end. Generates a retrospective
//! registry export in the layout of `mappings/nl01-retrospective` (Latin-1, `;`, decimal
//! commas, mixed date formats, one to three lesions per row, a complication on every third
//! row), of `--rows` rows and of ten times as many, and imports each into a fresh store (a
//! temporary SQLite file, or a PostgreSQL database made and dropped on the server of
//! `--database-url`) with the same binary's `import` as a child process, so its `VmHWM` is
//! the import's own peak memory. Reports rows/s end to end, resources written and the peak
//! memory for both sizes: streaming shows as a peak that stays flat from N to 10N.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// The mapping the generated input is made for.
pub const MAPPING: &str = "mappings/nl01-retrospective/mapping.toml";

/// A deterministic generator (64-bit LCG): the same rows on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let i = usize::try_from(self.next(items.len() as u64)).unwrap_or(0);
        items.get(i).copied().unwrap_or_default()
    }
}

/// The header of the generated export (as the site's spreadsheet writes it).
const HEADER: &str = "Studiënummer;Geslacht;Geboortejaar;Diagnose;Datum diagnose;Datum ablatie;Techniek;Benadering;Methode marge;Complicatie;CTCAE graad;Relatie met ablatie;L1 segment;L1 diameter (cm);L1 marge (mm);L2 segment;L2 diameter (cm);L2 marge (mm);L3 segment;L3 diameter (cm);L3 marge (mm);";

/// Row `i` (0-based) of the generated export, as text (encoded to Latin-1 on writing).
pub fn row(i: u64) -> String {
    let mut g = Lcg(i.wrapping_mul(2_654_435_761).wrapping_add(12_345));
    let mut s = String::with_capacity(160);
    let day = 1 + g.next(28);
    let month = 1 + g.next(12);
    let year = 2015 + g.next(9);
    let dx_date = if g.next(2) == 0 {
        format!("{day:02}-{month:02}-{year}")
    } else {
        format!("{year}-{month:02}-{day:02}")
    };
    let abl_date = match g.next(3) {
        0 => format!("{:02}-{:02}-{}", 1 + g.next(28), 1 + g.next(12), year + 1),
        1 => format!("{}-{:02}-{:02}", year + 1, 1 + g.next(12), 1 + g.next(28)),
        // An Excel serial day in 2016..2024.
        _ => (42_370 + g.next(3_200)).to_string(),
    };
    let _ = write!(
        s,
        "{i:07};{};{};{};{dx_date};{abl_date};{};{};{};",
        g.pick(&["M", "V", "m", "v"]),
        1930 + g.next(60),
        g.pick(&["HCC", "CRLM", "colorectaal", "overige metastase"]),
        g.pick(&[
            "RFA",
            "micro",
            "Microgolf",
            "MWA",
            "radiofrequentie",
            "laser"
        ]),
        g.pick(&["percutaan", "laparoscopisch", "open"]),
        g.pick(&["3D", "software", "visueel", "-"]),
    );
    if i % 3 == 0 {
        let _ = write!(
            s,
            "{};{};{};",
            g.pick(&[
                "Leverbloeding",
                "Pijn, geïnduceerd door ablatie",
                "Koorts",
                "Abces"
            ]),
            1 + g.next(4),
            g.pick(&["zeker", "waarschijnlijk", "mogelijk", "onwaarschijnlijk"]),
        );
    } else {
        s.push_str("NA;NA;NA;");
    }
    let lesions = 1 + g.next(3);
    for l in 0..3 {
        if l < lesions {
            let _ = write!(
                s,
                "{};{},{};{};",
                g.pick(&["1", "2", "3", "4a", "4b", "5", "6", "7", "8"]),
                1 + g.next(4),
                g.next(10),
                g.pick(&["2", "4,5", "5", "10", "onbekend"]),
            );
        } else {
            s.push_str("NA;NA;NA;");
        }
    }
    s
}

/// Writes an export of `rows` rows to `path` (Latin-1, CRLF as a spreadsheet writes it).
///
/// # Errors
/// When the file cannot be written.
pub fn generate(path: &Path, rows: u64) -> std::io::Result<u64> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut line = String::with_capacity(200);
    let mut bytes = 0u64;
    let mut put = |out: &mut std::io::BufWriter<std::fs::File>, text: &str| {
        let (encoded, _, _) = encoding_rs::WINDOWS_1252.encode(text);
        bytes += encoded.len() as u64;
        out.write_all(&encoded)
    };
    put(&mut out, &format!("{HEADER}\r\n"))?;
    for i in 0..rows {
        line.clear();
        line.push_str(&row(i + 1));
        line.push_str("\r\n");
        put(&mut out, &line)?;
    }
    out.flush()?;
    Ok(bytes)
}

/// One measured import.
struct Measured {
    rows: u64,
    bytes: u64,
    summary: serde_json::Value,
}

fn run_one(work: &Path, rows: u64, database_url: &str) -> Result<Measured, String> {
    let input = work.join(format!("registry-{rows}.csv"));
    let bytes = generate(&input, rows).map_err(|e| format!("{}: {e}", input.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .args([
            "import",
            "--mapping",
            MAPPING,
            "--database-url",
            database_url,
        ])
        .arg("--report")
        .arg(work.join(format!("report-{rows}.ndjson")))
        .args(["--json", "--quiet"])
        .arg(&input)
        .output()
        .map_err(|e| format!("cannot run import: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(line).map_err(|_| {
        format!(
            "import failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let _ = std::fs::remove_file(&input);
    Ok(Measured {
        rows,
        bytes,
        summary,
    })
}

/// Runs the benchmark: `rows` and `10 * rows`, on SQLite or on the PostgreSQL server of
/// `database_url`.
pub fn run(rows: usize, database_url: Option<&str>) -> ExitCode {
    if !Path::new(MAPPING).is_file() {
        eprintln!("error: {MAPPING} not found; run from the repository's root");
        return ExitCode::from(2);
    }
    let work = std::env::temp_dir().join(format!("imagio_bench_import_{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("error: {}: {e}", work.display());
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let label = if database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!(
        "bench import: {MAPPING} on {label}, generated inputs of {rows} and {} rows, batches of 500",
        rows * 10
    );
    let mut results = Vec::new();
    let mut status = ExitCode::SUCCESS;
    for n in [rows as u64, rows as u64 * 10] {
        let db = match database_url {
            None => Ok((
                work.join(format!("bench-{n}.sqlite")).display().to_string(),
                None,
            )),
            Some(url) => runtime.block_on(pg_database(url)),
        };
        let (url, pg) = match db {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e}");
                status = ExitCode::from(2);
                break;
            }
        };
        let result = run_one(&work, n, &url);
        if let Some((admin, name)) = pg {
            let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            if let Err(e) = runtime.block_on(pg_execute(&admin, &drop)) {
                eprintln!("warning: could not drop database {name}: {e}");
            }
        }
        match result {
            Ok(m) => {
                report(label, &m);
                results.push(m);
            }
            Err(e) => {
                eprintln!("error: {e}");
                status = ExitCode::from(1);
                break;
            }
        }
    }
    if let [a, b] = results.as_slice() {
        let kb = |m: &Measured| m.summary["vmhwm_kb"].as_f64().unwrap_or(0.0);
        println!(
            "  peak memory {:.1} MB at {} rows, {:.1} MB at {} rows ({:+.1}%)",
            kb(a) / 1024.0,
            a.rows,
            kb(b) / 1024.0,
            b.rows,
            (kb(b) / kb(a).max(1.0) - 1.0) * 100.0
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    status
}

fn report(label: &str, m: &Measured) {
    let s = &m.summary;
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    println!(
        "  {:>8} rows ({:.1} MB): {:.1} s, {:.0} rows/s end to end, {} resources ({} created), {} failed rows, peak memory (VmHWM) {:.1} MB",
        m.rows,
        m.bytes as f64 / 1e6,
        f("seconds"),
        f("rows_per_second"),
        f("created") + f("updated") + f("unchanged"),
        f("created"),
        f("failed_rows"),
        f("vmhwm_kb") / 1024.0
    );
    println!(
        "{{\"bench\":\"import\",\"database\":\"{label}\",\"rows\":{},\"input_bytes\":{},\"seconds\":{},\"rows_per_second\":{},\"resources\":{},\"failed_rows\":{},\"vmhwm_kb\":{}}}",
        m.rows,
        m.bytes,
        f("seconds"),
        f("rows_per_second"),
        f("created") + f("updated") + f("unchanged"),
        f("failed_rows"),
        f("vmhwm_kb")
    );
}

/// A new database on the PostgreSQL server of `url`: (its URL, (admin URL, name)).
async fn pg_database(url: &str) -> Result<(String, Option<(String, String)>), String> {
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Err(
            "--database-url must be postgres://... (SQLite runs on a temporary file)".into(),
        );
    }
    let name = format!(
        "imagio_bench_import_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    pg_execute(url, &format!("CREATE DATABASE \"{name}\"")).await?;
    let mut parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    parsed.set_path(&format!("/{name}"));
    Ok((parsed.to_string(), Some((url.to_string(), name))))
}

async fn pg_execute(url: &str, sql: &str) -> Result<(), String> {
    use sqlx::ConnectOptions as _;
    use std::str::FromStr as _;
    let mut conn = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(sql)
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_rows_are_deterministic_and_wide() {
        let a = super::row(7);
        let b = super::row(7);
        assert_eq!(a, b);
        assert_eq!(a.matches(';').count(), 21, "{a}");
        assert!(a.starts_with("0000007;"), "{a}");
    }
}
