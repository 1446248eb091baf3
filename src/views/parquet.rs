//! A minimal Apache Parquet writer (and the reader its tests use): flat schema, every column
//! `OPTIONAL`, one uncompressed v1 data page per column per row group, `PLAIN` values and
//! RLE definition levels, the footer in the Thrift compact protocol.
//!
//! Column types from the declared FHIR type: `boolean` is BOOLEAN, `integer`,
//! `positiveInt`, `unsignedInt` and `integer64` are INT64, `decimal` is DOUBLE, everything
//! else (strings, codes, dates, undeclared, collections as JSON arrays) is a UTF-8
//! BYTE_ARRAY. A row group is written every [`ROW_GROUP_ROWS`] rows, so memory is bounded
//! by one row group whatever the number of rows.

use std::io::Write;

use super::definition::ColumnInfo;
use super::output::text;
use super::run::{Cell, Row};

/// Rows per row group.
pub const ROW_GROUP_ROWS: usize = 50_000;

const MAGIC: &[u8] = b"PAR1";

/// Parquet physical types (the `Type` enum of parquet.thrift).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Physical {
    /// BOOLEAN = 0
    Boolean = 0,
    /// INT64 = 2
    Int64 = 2,
    /// DOUBLE = 5
    Double = 5,
    /// BYTE_ARRAY = 6 (with converted type UTF8)
    Utf8 = 6,
}

/// The physical type a column is written with.
pub fn physical(c: &ColumnInfo) -> Physical {
    if c.collection {
        return Physical::Utf8;
    }
    match c.fhir_type.as_deref() {
        Some("boolean") => Physical::Boolean,
        Some("integer" | "positiveInt" | "unsignedInt" | "integer64") => Physical::Int64,
        Some("decimal") => Physical::Double,
        _ => Physical::Utf8,
    }
}

struct ColumnBuf {
    physical: Physical,
    defined: Vec<bool>,
    values: Vec<u8>,
    bools: Vec<bool>,
}

struct ChunkMeta {
    offset: u64,
    size: u64,
    values: u64,
}

/// Writes rows to a Parquet file.
pub struct ParquetWriter<W: Write> {
    out: W,
    pos: u64,
    columns: Vec<ColumnInfo>,
    bufs: Vec<ColumnBuf>,
    buffered: usize,
    groups: Vec<(u64, Vec<ChunkMeta>)>,
    total: u64,
}

impl<W: Write> ParquetWriter<W> {
    /// Starts a file with these columns.
    ///
    /// # Errors
    /// On write failure.
    pub fn new(mut out: W, columns: &[ColumnInfo]) -> std::io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(ParquetWriter {
            out,
            pos: 4,
            columns: columns.to_vec(),
            bufs: columns
                .iter()
                .map(|c| ColumnBuf {
                    physical: physical(c),
                    defined: Vec::new(),
                    values: Vec::new(),
                    bools: Vec::new(),
                })
                .collect(),
            buffered: 0,
            groups: Vec::new(),
            total: 0,
        })
    }

    /// Adds a row (writing a row group when enough are buffered).
    ///
    /// # Errors
    /// On write failure.
    pub fn row(&mut self, row: &Row) -> std::io::Result<()> {
        for (buf, cell) in self.bufs.iter_mut().zip(row) {
            let value = match (buf.physical, cell) {
                (_, Cell::Null) => None,
                (Physical::Boolean, Cell::Bool(b)) => {
                    buf.bools.push(*b);
                    Some(())
                }
                (Physical::Int64, Cell::Int(i)) => {
                    buf.values.extend_from_slice(&i.to_le_bytes());
                    Some(())
                }
                (Physical::Double, Cell::Int(i)) => {
                    #[allow(clippy::cast_precision_loss)]
                    let d = *i as f64;
                    buf.values.extend_from_slice(&d.to_le_bytes());
                    Some(())
                }
                (Physical::Double, Cell::Number(n)) => match n.parse::<f64>() {
                    Ok(d) => {
                        buf.values.extend_from_slice(&d.to_le_bytes());
                        Some(())
                    }
                    Err(_) => None,
                },
                (Physical::Utf8, c) => {
                    let s = text(c);
                    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                    buf.values.extend_from_slice(&len.to_le_bytes());
                    buf.values.extend_from_slice(s.as_bytes());
                    Some(())
                }
                // A value that does not fit the declared type is written as null.
                _ => None,
            };
            buf.defined.push(value.is_some());
        }
        self.buffered += 1;
        if self.buffered >= ROW_GROUP_ROWS {
            self.flush_group()?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn flush_group(&mut self) -> std::io::Result<()> {
        if self.buffered == 0 {
            return Ok(());
        }
        let rows = self.buffered;
        let mut chunks = Vec::with_capacity(self.bufs.len());
        let bufs = std::mem::take(&mut self.bufs);
        let mut fresh = Vec::with_capacity(bufs.len());
        for buf in bufs {
            let mut body = Vec::new();
            let levels = rle_levels(&buf.defined);
            body.extend_from_slice(&u32::try_from(levels.len()).unwrap_or(0).to_le_bytes());
            body.extend_from_slice(&levels);
            if buf.physical == Physical::Boolean {
                let mut byte = 0u8;
                for (i, b) in buf.bools.iter().enumerate() {
                    if *b {
                        byte |= 1 << (i % 8);
                    }
                    if i % 8 == 7 {
                        body.push(byte);
                        byte = 0;
                    }
                }
                if buf.bools.len() % 8 != 0 {
                    body.push(byte);
                }
            } else {
                body.extend_from_slice(&buf.values);
            }
            let size = i32::try_from(body.len()).unwrap_or(i32::MAX);
            let mut header = Compact::default();
            header.begin();
            header.i32(1, 0); // DATA_PAGE
            header.i32(2, size);
            header.i32(3, size);
            header.field(5, STRUCT);
            header.begin();
            header.i32(1, i32::try_from(rows).unwrap_or(i32::MAX));
            header.i32(2, 0); // PLAIN
            header.i32(3, 3); // RLE
            header.i32(4, 3); // RLE
            header.end();
            header.end();
            let offset = self.pos;
            self.write(&header.buf)?;
            self.write(&body)?;
            chunks.push(ChunkMeta {
                offset,
                size: self.pos - offset,
                values: rows as u64,
            });
            fresh.push(ColumnBuf {
                physical: buf.physical,
                defined: Vec::with_capacity(rows),
                values: Vec::new(),
                bools: Vec::new(),
            });
        }
        self.bufs = fresh;
        self.groups.push((rows as u64, chunks));
        self.total += rows as u64;
        self.buffered = 0;
        Ok(())
    }

    /// Writes the last row group and the footer; returns the writer.
    ///
    /// # Errors
    /// On write failure.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.flush_group()?;
        let mut m = Compact::default();
        m.begin();
        m.i32(1, 1);
        m.list(2, STRUCT, self.columns.len() + 1);
        m.begin();
        m.binary(4, b"schema");
        m.i32(5, i32::try_from(self.columns.len()).unwrap_or(i32::MAX));
        m.end();
        for (c, buf) in self.columns.iter().zip(&self.bufs) {
            m.begin();
            m.i32(1, buf.physical as i32);
            m.i32(3, 1); // OPTIONAL
            m.binary(4, c.name.as_bytes());
            if buf.physical == Physical::Utf8 {
                m.i32(6, 0); // UTF8
            }
            m.end();
        }
        m.i64(3, i64::try_from(self.total).unwrap_or(i64::MAX));
        m.list(4, STRUCT, self.groups.len());
        for (rows, chunks) in &self.groups {
            m.begin();
            m.list(1, STRUCT, chunks.len());
            let mut total = 0u64;
            for ((chunk, c), buf) in chunks.iter().zip(&self.columns).zip(&self.bufs) {
                total += chunk.size;
                m.begin();
                m.i64(2, i64::try_from(chunk.offset).unwrap_or(0));
                m.field(3, STRUCT);
                m.begin();
                m.i32(1, buf.physical as i32);
                m.list(2, I32, 2);
                m.varint_zz(0);
                m.varint_zz(3);
                m.list(3, BINARY, 1);
                m.bytes(c.name.as_bytes());
                m.i32(4, 0); // UNCOMPRESSED
                m.i64(5, i64::try_from(chunk.values).unwrap_or(0));
                m.i64(6, i64::try_from(chunk.size).unwrap_or(0));
                m.i64(7, i64::try_from(chunk.size).unwrap_or(0));
                m.i64(9, i64::try_from(chunk.offset).unwrap_or(0));
                m.end();
                m.end();
            }
            m.i64(2, i64::try_from(total).unwrap_or(0));
            m.i64(3, i64::try_from(*rows).unwrap_or(0));
            m.end();
        }
        m.binary(6, b"imagio-gateway views");
        m.end();
        let footer = m.buf;
        self.write(&footer)?;
        self.write(&u32::try_from(footer.len()).unwrap_or(0).to_le_bytes())?;
        self.write(MAGIC)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Definition levels (bit width 1) in the RLE/bit-packing hybrid, as RLE runs.
fn rle_levels(defined: &[bool]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < defined.len() {
        let v = defined[i];
        let mut n = 1;
        while i + n < defined.len() && defined[i + n] == v {
            n += 1;
        }
        varint(&mut out, (n as u64) << 1);
        out.push(u8::from(v));
        i += n;
    }
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

const I32: u8 = 5;
const I64: u8 = 6;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const STRUCT: u8 = 12;

/// A Thrift compact-protocol encoder (just what the footer and page headers need).
#[derive(Default)]
struct Compact {
    buf: Vec<u8>,
    last: Vec<i16>,
}

impl Compact {
    fn begin(&mut self) {
        self.last.push(0);
    }
    fn end(&mut self) {
        self.buf.push(0);
        self.last.pop();
    }
    fn field(&mut self, id: i16, ty: u8) {
        let last = self.last.last().copied().unwrap_or(0);
        let delta = id - last;
        if (1..=15).contains(&delta) {
            self.buf.push((u8::try_from(delta).unwrap_or(0) << 4) | ty);
        } else {
            self.buf.push(ty);
            self.varint_zz(i64::from(id));
        }
        if let Some(l) = self.last.last_mut() {
            *l = id;
        }
    }
    fn varint_zz(&mut self, v: i64) {
        #[allow(clippy::cast_sign_loss)]
        let z = ((v << 1) ^ (v >> 63)) as u64;
        varint(&mut self.buf, z);
    }
    fn i32(&mut self, id: i16, v: i32) {
        self.field(id, I32);
        self.varint_zz(i64::from(v));
    }
    fn i64(&mut self, id: i16, v: i64) {
        self.field(id, I64);
        self.varint_zz(v);
    }
    fn bytes(&mut self, b: &[u8]) {
        varint(&mut self.buf, b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    fn binary(&mut self, id: i16, b: &[u8]) {
        self.field(id, BINARY);
        self.bytes(b);
    }
    fn list(&mut self, id: i16, elem: u8, n: usize) {
        self.field(id, LIST);
        if n < 15 {
            self.buf.push((u8::try_from(n).unwrap_or(0) << 4) | elem);
        } else {
            self.buf.push(0xf0 | elem);
            varint(&mut self.buf, n as u64);
        }
    }
}

/// A decoded Thrift compact value (for the reader).
#[derive(Debug, Clone)]
enum TValue {
    /// A Boolean or double: read past, never needed by the reader.
    Skipped,
    Int(i64),
    Binary(Vec<u8>),
    List(Vec<TValue>),
    Struct(Vec<(i16, TValue)>),
}

impl TValue {
    fn get(&self, id: i16) -> Option<&TValue> {
        match self {
            TValue::Struct(fields) => fields.iter().find(|(i, _)| *i == id).map(|(_, v)| v),
            _ => None,
        }
    }
    fn int(&self, id: i16) -> Option<i64> {
        match self.get(id)? {
            TValue::Int(i) => Some(*i),
            _ => None,
        }
    }
    fn list(&self, id: i16) -> &[TValue] {
        match self.get(id) {
            Some(TValue::List(l)) => l,
            _ => &[],
        }
    }
}

struct Decoder<'b> {
    b: &'b [u8],
    p: usize,
}

impl Decoder<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let v = *self.b.get(self.p).ok_or("truncated thrift data")?;
        self.p += 1;
        Ok(v)
    }
    fn uvarint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err("varint too long".into());
            }
        }
    }
    fn zz(&mut self) -> Result<i64, String> {
        let u = self.uvarint()?;
        #[allow(clippy::cast_possible_wrap)]
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    fn value(&mut self, ty: u8) -> Result<TValue, String> {
        Ok(match ty {
            1 | 2 => TValue::Skipped,
            3 => TValue::Int(i64::from(self.byte()?)),
            4..=6 => TValue::Int(self.zz()?),
            7 => {
                self.b.get(self.p..self.p + 8).ok_or("truncated double")?;
                self.p += 8;
                TValue::Skipped
            }
            8 => {
                let n = usize::try_from(self.uvarint()?).map_err(|e| e.to_string())?;
                let s = self.b.get(self.p..self.p + n).ok_or("truncated binary")?;
                self.p += n;
                TValue::Binary(s.to_vec())
            }
            9 | 10 => {
                let h = self.byte()?;
                let n = if h >> 4 == 15 {
                    usize::try_from(self.uvarint()?).map_err(|e| e.to_string())?
                } else {
                    usize::from(h >> 4)
                };
                let et = h & 0x0f;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(if et == 1 || et == 2 {
                        self.byte()?;
                        TValue::Skipped
                    } else {
                        self.value(et)?
                    });
                }
                TValue::List(items)
            }
            12 => {
                let mut fields = Vec::new();
                let mut last = 0i16;
                loop {
                    let h = self.byte()?;
                    if h == 0 {
                        break;
                    }
                    let ft = h & 0x0f;
                    let delta = h >> 4;
                    let id = if delta == 0 {
                        i16::try_from(self.zz()?).map_err(|e| e.to_string())?
                    } else {
                        last + i16::from(delta)
                    };
                    last = id;
                    fields.push((id, self.value(ft)?));
                }
                TValue::Struct(fields)
            }
            other => return Err(format!("unsupported thrift type {other}")),
        })
    }
}

/// What [`read`] returns: column names and physical types, and the rows.
pub type ReadBack = (Vec<(String, Physical)>, Vec<Vec<Cell>>);

/// Reads a file written by [`ParquetWriter`] (flat, optional columns, PLAIN, uncompressed
/// v1 pages): the footer, then every page of every row group.
///
/// # Errors
/// A message when the file is not such a Parquet file.
pub fn read(file: &[u8]) -> Result<ReadBack, String> {
    let n = file.len();
    if n < 12 || &file[..4] != MAGIC || &file[n - 4..] != MAGIC {
        return Err("not a Parquet file (magic bytes)".into());
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&file[n - 8..n - 4]);
    let len = u32::from_le_bytes(len) as usize;
    let start = (n - 8)
        .checked_sub(len)
        .ok_or("footer length out of range")?;
    let meta = Decoder {
        b: &file[start..n - 8],
        p: 0,
    }
    .value(STRUCT)?;
    let schema = meta.list(2);
    let mut cols = Vec::new();
    for el in schema.iter().skip(1) {
        let name = match el.get(4) {
            Some(TValue::Binary(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => return Err("schema element without name".into()),
        };
        let ty = match el.int(1) {
            Some(0) => Physical::Boolean,
            Some(2) => Physical::Int64,
            Some(5) => Physical::Double,
            Some(6) => Physical::Utf8,
            other => return Err(format!("column {name}: unsupported type {other:?}")),
        };
        cols.push((name, ty));
    }
    let mut rows: Vec<Vec<Cell>> = Vec::new();
    for rg in meta.list(4) {
        let nrows = usize::try_from(rg.int(3).ok_or("row group without num_rows")?)
            .map_err(|e| e.to_string())?;
        let base = rows.len();
        rows.extend((0..nrows).map(|_| Vec::with_capacity(cols.len())));
        for (chunk, (name, ty)) in rg.list(1).iter().zip(&cols) {
            let cm = chunk.get(3).ok_or("column chunk without metadata")?;
            let off = usize::try_from(cm.int(9).ok_or("no data_page_offset")?)
                .map_err(|e| e.to_string())?;
            let mut d = Decoder { b: file, p: off };
            let header = d.value(STRUCT)?;
            let size = usize::try_from(header.int(3).ok_or("page without size")?)
                .map_err(|e| e.to_string())?;
            let page = file.get(d.p..d.p + size).ok_or("page out of range")?;
            let cells = decode_page(page, *ty, nrows).map_err(|e| format!("column {name}: {e}"))?;
            for (i, c) in cells.into_iter().enumerate() {
                rows[base + i].push(c);
            }
        }
    }
    Ok((cols, rows))
}

fn decode_page(page: &[u8], ty: Physical, nrows: usize) -> Result<Vec<Cell>, String> {
    let mut l = [0u8; 4];
    l.copy_from_slice(page.get(..4).ok_or("short page")?);
    let llen = u32::from_le_bytes(l) as usize;
    let mut d = Decoder {
        b: page.get(4..4 + llen).ok_or("levels out of range")?,
        p: 0,
    };
    let mut defined = Vec::with_capacity(nrows);
    while defined.len() < nrows {
        let h = d.uvarint()?;
        if h & 1 == 1 {
            let groups = usize::try_from(h >> 1).map_err(|e| e.to_string())?;
            for _ in 0..groups {
                let b = d.byte()?;
                for bit in 0..8 {
                    defined.push(b >> bit & 1 == 1);
                }
            }
        } else {
            let n = usize::try_from(h >> 1).map_err(|e| e.to_string())?;
            let v = d.byte()? == 1;
            defined.extend(std::iter::repeat_n(v, n));
        }
    }
    defined.truncate(nrows);
    let values = &page[4 + llen..];
    let mut p = 0usize;
    let mut bit = 0usize;
    let mut out = Vec::with_capacity(nrows);
    for def in defined {
        if !def {
            out.push(Cell::Null);
            continue;
        }
        let take8 = |p: &mut usize| -> Result<[u8; 8], String> {
            let s = values.get(*p..*p + 8).ok_or("value out of range")?;
            *p += 8;
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(a)
        };
        out.push(match ty {
            Physical::Boolean => {
                let b = values.get(bit / 8).ok_or("boolean out of range")?;
                let v = b >> (bit % 8) & 1 == 1;
                bit += 1;
                Cell::Bool(v)
            }
            Physical::Int64 => Cell::Int(i64::from_le_bytes(take8(&mut p)?)),
            Physical::Double => Cell::Number(f64::from_le_bytes(take8(&mut p)?).to_string()),
            Physical::Utf8 => {
                let mut l = [0u8; 4];
                l.copy_from_slice(values.get(p..p + 4).ok_or("length out of range")?);
                let n = u32::from_le_bytes(l) as usize;
                let s = values.get(p + 4..p + 4 + n).ok_or("string out of range")?;
                p += 4 + n;
                Cell::Str(String::from_utf8(s.to_vec()).map_err(|e| e.to_string())?)
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: Option<&str>) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            fhir_type: ty.map(Into::into),
            collection: false,
        }
    }

    #[test]
    fn round_trips_through_the_minimal_reader() {
        let cols = vec![
            col("id", Some("id")),
            col("n", Some("integer")),
            col("x", Some("decimal")),
            col("b", Some("boolean")),
            col("s", None),
        ];
        let mut w = ParquetWriter::new(Vec::new(), &cols).unwrap();
        let mut expected = Vec::new();
        for i in 0..(ROW_GROUP_ROWS + 17) {
            let row = vec![
                Cell::Str(format!("r{i}")),
                if i % 3 == 0 {
                    Cell::Null
                } else {
                    Cell::Int(i as i64 - 5)
                },
                Cell::Number("2.5".into()),
                if i % 5 == 0 {
                    Cell::Null
                } else {
                    Cell::Bool(i % 2 == 0)
                },
                Cell::List(vec![Cell::Str("a".into())]),
            ];
            w.row(&row).unwrap();
            let mut back = row.clone();
            back[4] = Cell::Str("[\"a\"]".into());
            expected.push(back);
        }
        let bytes = w.finish().unwrap();
        let (names, rows) = read(&bytes).unwrap();
        assert_eq!(
            names
                .iter()
                .map(|(n, t)| (n.as_str(), *t))
                .collect::<Vec<_>>(),
            vec![
                ("id", Physical::Utf8),
                ("n", Physical::Int64),
                ("x", Physical::Double),
                ("b", Physical::Boolean),
                ("s", Physical::Utf8)
            ]
        );
        assert_eq!(rows.len(), expected.len());
        assert_eq!(rows, expected);
    }

    #[test]
    fn empty_file_has_schema_and_no_rows() {
        let bytes = ParquetWriter::new(Vec::new(), &[col("a", None)])
            .unwrap()
            .finish()
            .unwrap();
        let (names, rows) = read(&bytes).unwrap();
        assert_eq!(names.len(), 1);
        assert!(rows.is_empty());
        assert!(read(b"PAR1nonsense").is_err());
    }
}
