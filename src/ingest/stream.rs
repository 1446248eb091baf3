//! A CSV file cut into batches of whole records, read line by line: memory holds one batch,
//! whatever the file's size.
//!
//! A record ends at a line end outside quotes (the quote character toggles; a doubled quote
//! inside a quoted field toggles twice), which is how the `csv` reader of `map::source`
//! splits records in the dialects mappings declare. Delimiters, quotes and line ends are
//! ASCII, so cutting bytes there is safe in UTF-8 and in Windows-1252. Each batch is read
//! with the file's header record in front of it, so the mapping's own reader
//! ([`crate::map::source::Table::read`]) does the parsing; the line numbers it gives are
//! moved to the batch's place in the file.

use crate::map::source::Row;
use std::io::BufRead;

/// A batch of records: the raw bytes (header record first) and where its records start.
#[derive(Debug)]
pub struct Batch {
    /// The header record followed by the batch's records, as in the file.
    pub bytes: Vec<u8>,
    /// 1-based line in the file of the batch's first record.
    pub first_line: u32,
    /// Lines the header record takes (usually 1) in `bytes`.
    pub header_lines: u32,
    /// Records in the batch (blank lines included).
    pub records: usize,
}

impl Batch {
    /// Moves rows read from [`Batch::bytes`] (lines counted from its start) to their lines
    /// in the file.
    pub fn place(&self, rows: &mut [Row]) {
        let shift = self.first_line.saturating_sub(self.header_lines + 1);
        for r in rows {
            r.line = r.line.saturating_add(shift);
        }
    }
}

/// Reads a CSV file batch by batch.
pub struct Batches<R> {
    reader: R,
    quote: u8,
    delimiter: u8,
    header: Option<Vec<u8>>,
    header_lines: u32,
    /// The line the next record starts on.
    line: u32,
    /// Bytes read so far.
    consumed: u64,
    done: bool,
}

impl<R: BufRead> Batches<R> {
    /// A reader of `reader` in the dialect's quote and delimiter.
    pub fn new(reader: R, quote: u8, delimiter: u8) -> Batches<R> {
        Batches {
            reader,
            quote,
            delimiter,
            header: None,
            header_lines: 0,
            line: 1,
            consumed: 0,
            done: false,
        }
    }

    /// Bytes of the file read so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// One record (possibly several lines), appended to `out`; `Ok(0)` at the end.
    fn record(&mut self, out: &mut Vec<u8>) -> std::io::Result<u32> {
        let mut lines = 0;
        let mut in_quote = false;
        loop {
            let start = out.len();
            let n = self.reader.read_until(b'\n', out)?;
            if n == 0 {
                return Ok(lines);
            }
            self.consumed += n as u64;
            lines += 1;
            let quotes = out[start..].iter().filter(|b| **b == self.quote).count();
            if quotes % 2 == 1 {
                in_quote = !in_quote;
            }
            if !in_quote || out.last() != Some(&b'\n') {
                return Ok(lines);
            }
        }
    }

    /// Whether a record holds anything but separators, quotes and white space.
    fn has_content(&self, record: &[u8]) -> bool {
        record
            .iter()
            .any(|b| !b.is_ascii_whitespace() && *b != self.delimiter && *b != self.quote)
    }

    /// The next batch of at most `max` records, `None` at the end of the file (a file
    /// with a header and no records gives no batch).
    ///
    /// # Errors
    /// When reading fails.
    pub fn next_batch(&mut self, max: usize) -> std::io::Result<Option<Batch>> {
        if self.done {
            return Ok(None);
        }
        if self.header.is_none() {
            let mut header = Vec::new();
            loop {
                header.clear();
                let lines = self.record(&mut header)?;
                if lines == 0 {
                    self.done = true;
                    return Ok(None);
                }
                self.line += lines;
                if self.has_content(&header) {
                    if header.last() != Some(&b'\n') {
                        header.push(b'\n');
                    }
                    self.header_lines = lines;
                    self.header = Some(header);
                    break;
                }
            }
        }
        let mut bytes = self.header.clone().unwrap_or_default();
        let first_line = self.line;
        let mut records = 0;
        while records < max.max(1) {
            let lines = self.record(&mut bytes)?;
            if lines == 0 {
                self.done = true;
                break;
            }
            self.line += lines;
            records += 1;
        }
        if records == 0 {
            return Ok(None);
        }
        Ok(Some(Batch {
            bytes,
            first_line,
            header_lines: self.header_lines,
            records,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::source::Table;
    use crate::map::spec::{Dialect, Encoding, Source};

    fn source() -> Source {
        Source {
            name: "s".into(),
            line: 1,
            files: "*".into(),
            dialect: Dialect {
                delimiter: b';',
                quote: b'"',
                encoding: Encoding::Utf8,
                decimal: ',',
                dates: vec![],
                yy_pivot: 50,
                empty: vec![],
            },
            columns: vec![],
            fhir: None,
            key: vec![],
            joins: vec![],
        }
    }

    #[test]
    fn batches_keep_file_lines_and_quoted_newlines() {
        let text = "\n;;\nid;note\r\n1;a\r\n\r\n2;\"two\nlines\"\n3;\"x\"\"y\"\n4;d";
        let mut b = Batches::new(text.as_bytes(), b'"', b';');
        let mut lines = Vec::new();
        let mut notes = Vec::new();
        while let Some(batch) = b.next_batch(2).expect("read") {
            let decoded = String::from_utf8(batch.bytes.clone()).expect("utf-8");
            let mut t = Table::read(&decoded, "f.csv", 0, &source()).expect("table");
            batch.place(&mut t.rows);
            for (i, r) in t.rows.iter().enumerate() {
                lines.push(r.line);
                notes.push(t.value(i, 1).unwrap_or_default().to_string());
            }
        }
        assert_eq!(lines, vec![4, 6, 8, 9]);
        assert_eq!(notes, vec!["a", "two\nlines", "x\"y", "d"]);
        assert_eq!(b.consumed(), text.len() as u64);
    }

    #[test]
    fn header_only_gives_nothing() {
        let mut b = Batches::new("id;x\n".as_bytes(), b'"', b';');
        assert!(b.next_batch(10).expect("read").is_none());
    }
}
