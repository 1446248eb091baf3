//! Reading CSV inputs: decoding (UTF-8 with or without BOM, Latin-1/Windows-1252), the
//! declared dialect, header aliases, empty-value markers, and the join index.
//!
//! A file is read whole into memory (one pass; streaming is the bulk import's job). Blank
//! lines and rows whose cells are all empty are skipped; rows may have fewer or more cells
//! than the header (trailing separators are common), missing cells are empty.

use super::spec::{Dialect, Encoding, Source};
use std::collections::HashMap;

/// The highest number a numbered column declaration (`lesion{n}_size`) is looked up for.
pub const MAX_NUMBERED: u32 = 50;

/// One data row.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line of the row in its file.
    pub line: u32,
    /// The cells, as decoded (not trimmed), in one buffer.
    pub cells: csv::StringRecord,
}

/// A CSV file read for a source.
#[derive(Debug)]
pub struct Table {
    /// The source (index into the mapping's sources).
    pub source: usize,
    /// The file name, as diagnostics show it.
    pub file: String,
    /// The header cells, trimmed.
    pub headers: Vec<String>,
    /// Column name (declared name or header) to cell index.
    exact: HashMap<String, usize>,
    /// Normalized column name to cell index.
    normalized: HashMap<String, usize>,
    /// Data rows.
    pub rows: Vec<Row>,
    /// Empty-value markers (lower-cased).
    empty: Vec<String>,
    /// Their lengths (see [`length_mask`]): a cell of no such length is no marker.
    empty_lens: u64,
    /// For a FHIR source: the resources behind the rows.
    pub fhir: Option<Box<super::fhir::FhirRows>>,
}

/// Lower-cased, trimmed, inner runs of white space as one space.
pub fn normalize_header(h: &str) -> String {
    h.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Decodes file bytes in the declared encoding.
///
/// # Errors
/// For UTF-8, a message naming the line of the first invalid byte.
pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<String, String> {
    match encoding {
        Encoding::Utf8 => {
            let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            match std::str::from_utf8(body) {
                Ok(s) => Ok(s.to_string()),
                Err(e) => {
                    let line = body[..e.valid_up_to()]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1;
                    Err(format!(
                        "line {line}: not UTF-8 (declare encoding = \"latin-1\" or \"windows-1252\" for this source)"
                    ))
                }
            }
        }
        Encoding::Windows1252 => {
            let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(body);
            Ok(text.into_owned())
        }
    }
}

impl Table {
    /// Reads CSV text (already decoded) for `source`.
    ///
    /// # Errors
    /// A message when the text has no header row or the CSV is malformed (an unclosed
    /// quote), naming the line.
    pub fn read(
        text: &str,
        file: &str,
        source_index: usize,
        source: &Source,
    ) -> Result<Table, String> {
        let d: &Dialect = &source.dialect;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(d.delimiter)
            .quote(d.quote)
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut headers: Option<Vec<String>> = None;
        let mut rows = Vec::new();
        let mut record = csv::StringRecord::new();
        // Lines are counted from byte offsets: the reader's own line numbers do not skip
        // the blank lines before a record.
        let bytes = text.as_bytes();
        let (mut counted_to, mut line) = (0usize, 1u32);
        loop {
            let mut start = usize::try_from(reader.position().byte()).unwrap_or(usize::MAX);
            while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
                start += 1;
            }
            if start < bytes.len() && start >= counted_to {
                let newlines = bytes[counted_to..start]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count();
                line = line.saturating_add(u32::try_from(newlines).unwrap_or(u32::MAX));
                counted_to = start;
            }
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    let line = e.position().map_or(0, csv::Position::line);
                    return Err(format!("line {line}: {e}"));
                }
            }
            if record.iter().all(|c| c.trim().is_empty()) {
                continue;
            }
            if headers.is_none() {
                headers = Some(record.iter().map(|h| h.trim().to_string()).collect());
                continue;
            }
            rows.push(Row {
                line,
                cells: record.clone(),
            });
        }
        let headers = headers.ok_or_else(|| "the file has no header row".to_string())?;
        let mut exact = HashMap::new();
        let mut normalized = HashMap::new();
        for (i, h) in headers.iter().enumerate() {
            exact.entry(h.clone()).or_insert(i);
            normalized.entry(normalize_header(h)).or_insert(i);
        }
        for c in &source.columns {
            // A numbered column (`lesion{n}_size`) stands for lesion1_size, lesion2_size, ...
            let ns: Vec<Option<String>> = if c.name.contains("{n}") {
                (1..=MAX_NUMBERED).map(|n| Some(n.to_string())).collect()
            } else {
                vec![None]
            };
            for n in ns {
                let subst = |s: &str| match &n {
                    Some(n) => s.replace("{n}", n),
                    None => s.to_string(),
                };
                let name = subst(&c.name);
                let found = std::iter::once(&name)
                    .chain(
                        c.aliases
                            .iter()
                            .map(|a| subst(a))
                            .collect::<Vec<_>>()
                            .iter(),
                    )
                    .find_map(|a| normalized.get(&normalize_header(a)).copied());
                if let Some(i) = found {
                    normalized.insert(normalize_header(&name), i);
                    exact.insert(name, i);
                }
            }
        }
        Ok(Table {
            source: source_index,
            file: file.to_string(),
            headers,
            exact,
            normalized,
            rows,
            empty: d.empty.clone(),
            empty_lens: length_mask(&d.empty),
            fhir: None,
        })
    }

    /// A table from named columns (`names`, shown as `headers`) and rows: how FHIR sources
    /// become tables.
    pub fn from_columns(
        source: usize,
        file: &str,
        names: Vec<String>,
        headers: Vec<String>,
        rows: Vec<Row>,
    ) -> Table {
        let mut exact = HashMap::new();
        for (i, n) in names.into_iter().enumerate() {
            exact.entry(n).or_insert(i);
        }
        Table {
            source,
            file: file.to_string(),
            headers,
            exact,
            normalized: HashMap::new(),
            rows,
            empty: Vec::new(),
            empty_lens: 0,
            fhir: None,
        }
    }

    /// The cell index of a column (declared name, alias or header).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.exact
            .get(name)
            .or_else(|| self.normalized.get(&normalize_header(name)))
            .copied()
    }

    /// The trimmed value of a cell, `None` when blank or an empty-value marker.
    pub fn value(&self, row: usize, col: usize) -> Option<&str> {
        self.clean(self.rows.get(row)?.cells.get(col)?)
    }

    /// A cell's text as [`Table::value`] gives it: trimmed, `None` when blank or an
    /// empty-value marker of this table.
    pub fn clean<'c>(&self, cell: &'c str) -> Option<&'c str> {
        let cell = trim(cell);
        if cell.is_empty()
            || (self.empty_lens >> cell.len().min(63)) & 1 == 1
                && self.empty.iter().any(|e| e.eq_ignore_ascii_case(cell))
        {
            return None;
        }
        Some(cell)
    }
}

/// Bit `n` set when some marker has `n` bytes (bit 63: 63 or more).
fn length_mask(markers: &[String]) -> u64 {
    markers.iter().fold(0, |m, e| m | 1 << e.len().min(63))
}

/// `str::trim`, without its character decoding when the ends are plain ASCII.
#[inline]
pub(crate) fn trim(s: &str) -> &str {
    let plain = |b: u8| b.is_ascii() && !b.is_ascii_whitespace() && b != 0x0b;
    match s.as_bytes() {
        [first, .., last] if plain(*first) && plain(*last) => s,
        [only] if plain(*only) => s,
        _ => s.trim(),
    }
}

/// Whether a file name matches a pattern where `*` matches any run of characters
/// (case-insensitive).
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    // Iterative wildcard matching with backtracking to the last star: linear in practice.
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == n[ni] || p[pi] == '?') {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ni;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::spec::{Column, Dialect};

    fn source() -> Source {
        Source {
            name: "s".into(),
            line: 1,
            files: "*".into(),
            dialect: Dialect {
                delimiter: b';',
                quote: b'"',
                encoding: Encoding::Windows1252,
                decimal: ',',
                dates: vec![],
                yy_pivot: 50,
                empty: vec!["na".into(), "-".into(), "onbekend".into()],
            },
            columns: vec![Column {
                name: "ablation_date".into(),
                aliases: vec!["Datum ablatie".into()],
                line: 3,
            }],
            key: vec![],
            joins: vec![],
            fhir: None,
        }
    }

    #[test]
    fn latin1_with_aliases_markers_and_blank_lines() {
        let bytes = b"Pati\xebnt;Datum  Ablatie ;Grootte;\r\n\r\nP1;12-01-2022;4,5;\r\n;;;\r\nP2;\"NA\";onbekend\r\nP3; - ;\"3;5\"\r\n";
        let text = decode(bytes, Encoding::Windows1252).unwrap();
        let t = Table::read(&text, "f.csv", 0, &source()).unwrap();
        assert_eq!(t.headers[0], "Patiënt");
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[0].line, 3);
        assert_eq!(t.rows[2].line, 6);
        let date = t.column("ablation_date").unwrap();
        assert_eq!(date, 1);
        assert_eq!(t.column("patiënt"), Some(0));
        assert_eq!(t.value(0, date), Some("12-01-2022"));
        assert_eq!(t.value(1, date), None);
        assert_eq!(t.value(1, 2), None);
        assert_eq!(t.value(2, date), None);
        assert_eq!(t.value(2, 2), Some("3;5"));
        assert_eq!(t.value(1, 3), None);
        assert_eq!(t.column("nope"), None);
    }

    #[test]
    fn utf8_bom_is_skipped_and_bad_utf8_is_named() {
        assert_eq!(
            decode(b"\xEF\xBB\xBFa;b\n", Encoding::Utf8).unwrap(),
            "a;b\n"
        );
        let e = decode(b"a;b\nP\xebt;1\n", Encoding::Utf8).unwrap_err();
        assert!(e.starts_with("line 2: not UTF-8"), "{e}");
    }

    #[test]
    fn file_patterns() {
        assert!(matches_pattern(
            "*patient*.csv",
            "export_Patienten_2024.CSV"
        ));
        assert!(!matches_pattern("*patient*.csv", "ablaties.csv"));
        assert!(matches_pattern("*", "anything"));
        assert!(matches_pattern("a*b*c", "aXbYbZc"));
    }
}
