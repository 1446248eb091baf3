//! Writing rows as CSV, NDJSON, a JSON array or Parquet, one row at a time (Parquet keeps
//! one row group in memory).

use std::io::Write;

use super::definition::ColumnInfo;
use super::parquet::ParquetWriter;
use super::run::{Cell, Row};

/// An output format of `view run` and `$run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
    /// One JSON array of objects.
    Json,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The format named `name` (`csv`, `ndjson`, `json`, `parquet`, or a media type).
    pub fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "csv" | "text/csv" => Format::Csv,
            "ndjson"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/fhir+ndjson" => Format::Ndjson,
            "json" | "application/json" | "application/fhir+json" => Format::Json,
            "parquet" | "application/vnd.apache.parquet" => Format::Parquet,
            _ => return None,
        })
    }

    /// The media type of the format.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Ndjson => "application/x-ndjson",
            Format::Json => "application/json",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// Writes rows in one format to `W`.
pub struct RowWriter<W: Write> {
    inner: Inner<W>,
    columns: Vec<ColumnInfo>,
    rows: u64,
}

enum Inner<W: Write> {
    Text(W, Format),
    Parquet(ParquetWriter<W>),
}

impl<W: Write> RowWriter<W> {
    /// Starts the output (the CSV header, the `[` of a JSON array).
    ///
    /// # Errors
    /// On write failure.
    pub fn new(mut out: W, format: Format, columns: &[ColumnInfo]) -> std::io::Result<Self> {
        let inner = match format {
            Format::Parquet => Inner::Parquet(ParquetWriter::new(out, columns)?),
            Format::Csv => {
                let header: Vec<String> = columns.iter().map(|c| csv_field(&c.name)).collect();
                out.write_all(header.join(",").as_bytes())?;
                out.write_all(b"\r\n")?;
                Inner::Text(out, format)
            }
            Format::Json => {
                out.write_all(b"[")?;
                Inner::Text(out, format)
            }
            Format::Ndjson => Inner::Text(out, format),
        };
        Ok(RowWriter {
            inner,
            columns: columns.to_vec(),
            rows: 0,
        })
    }

    /// Writes one row.
    ///
    /// # Errors
    /// On write failure.
    pub fn row(&mut self, row: &Row) -> std::io::Result<()> {
        match &mut self.inner {
            Inner::Parquet(p) => p.row(row)?,
            Inner::Text(out, Format::Csv) => {
                let fields: Vec<String> = row.iter().map(|c| csv_field(&text(c))).collect();
                out.write_all(fields.join(",").as_bytes())?;
                out.write_all(b"\r\n")?;
            }
            Inner::Text(out, format) => {
                let mut s = String::new();
                if *format == Format::Json && self.rows > 0 {
                    s.push(',');
                }
                object(&mut s, &self.columns, row);
                if *format == Format::Ndjson {
                    s.push('\n');
                }
                out.write_all(s.as_bytes())?;
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Number of rows written.
    pub fn count(&self) -> u64 {
        self.rows
    }

    /// Ends the output (the `]` of a JSON array, the Parquet footer) and returns the writer.
    ///
    /// # Errors
    /// On write failure.
    pub fn finish(self) -> std::io::Result<W> {
        match self.inner {
            Inner::Parquet(p) => p.finish(),
            Inner::Text(mut out, format) => {
                if format == Format::Json {
                    out.write_all(b"]")?;
                }
                out.flush()?;
                Ok(out)
            }
        }
    }
}

/// A row as one JSON object (`{"name":value,...}`).
pub fn object(s: &mut String, columns: &[ColumnInfo], row: &Row) {
    s.push('{');
    for (i, (c, v)) in columns.iter().zip(row).enumerate() {
        if i > 0 {
            s.push(',');
        }
        json_string(s, &c.name);
        s.push(':');
        json_cell(s, v);
    }
    s.push('}');
}

fn json_string(s: &mut String, v: &str) {
    s.push_str(&serde_json::Value::from(v).to_string());
}

/// A cell as JSON.
fn json_cell(s: &mut String, c: &Cell) {
    match c {
        Cell::Null => s.push_str("null"),
        Cell::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Cell::Int(i) => s.push_str(&i.to_string()),
        Cell::Number(n) | Cell::Json(n) => s.push_str(n),
        Cell::Str(v) => json_string(s, v),
        Cell::List(items) => {
            s.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                json_cell(s, item);
            }
            s.push(']');
        }
    }
}

/// A cell as text: empty for null, a collection or complex value as its JSON.
pub fn text(c: &Cell) -> String {
    match c {
        Cell::Null => String::new(),
        Cell::Bool(b) => b.to_string(),
        Cell::Int(i) => i.to_string(),
        Cell::Number(n) | Cell::Str(n) | Cell::Json(n) => n.clone(),
        Cell::List(_) => {
            let mut s = String::new();
            json_cell(&mut s, c);
            s
        }
    }
}

/// A CSV field, quoted when it holds a comma, quote, or line break.
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}
