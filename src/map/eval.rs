//! Applying the rules of a mapping to the rows of its inputs: joins, conditions, value
//! rules, ids and references. Every problem becomes a [`Diagnostic`] naming the cell and
//! the mapping line; a value that cannot be made is left out of the resource.

use super::convert::{self, number_text};
use super::out::{CellRef, Out, Prov, Val};
use super::render::{compile_rule, push_json_str, Group, Plan, Sink};
use super::source::Table;
use super::spec::{As, ColumnSpec, Cond, Mapping, Part, ResourceRule, Template};
use super::{cell_pos, row_pos, Diagnostic, Made};
use crate::fhirpath::{Collection, Context, Expression, Item, SystemValue};
use crate::validate::Severity;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

/// A resolved column value.
enum Cell<'t> {
    /// A value, and the cell it was read from (none for constants and `n`).
    Value(std::borrow::Cow<'t, str>, Option<CellRef>),
    /// The column exists but the cell is empty.
    Empty(Option<CellRef>),
    /// The column is not in the file (already reported).
    Missing,
}

/// A row of a table: (table index, row index).
type RowRef = (usize, usize);

/// Every cell of a table as [`Table::value`] gives it, row after row: each cell is
/// trimmed and checked for empty-value markers once per run, not at every use.
struct Values<'m> {
    /// Per row, where its cells start in `cells`, and the end of the last row.
    starts: Vec<usize>,
    /// The cells' values.
    cells: Vec<Option<&'m str>>,
}

impl<'m> Values<'m> {
    /// The values of a table's cells.
    fn of(t: &'m Table) -> Values<'m> {
        let mut starts = Vec::with_capacity(t.rows.len() + 1);
        let width = t.rows.first().map_or(0, |r| r.cells.len());
        let mut cells = Vec::with_capacity(t.rows.len().saturating_mul(width));
        for row in &t.rows {
            starts.push(cells.len());
            cells.extend(row.cells.iter().map(|c| t.clean(c)));
        }
        starts.push(cells.len());
        Values { starts, cells }
    }

    /// The value of a cell, as [`Table::value`] gives it.
    #[inline]
    fn get(&self, row: usize, col: usize) -> Option<&'m str> {
        let start = *self.starts.get(row)?;
        let end = *self.starts.get(row + 1)?;
        if col >= end - start {
            return None;
        }
        self.cells.get(start + col).copied().flatten()
    }
}

/// Per table, per row, the joined row of each join of its source (`None`: no match).
type Joined = Vec<Vec<Vec<Option<RowRef>>>>;

/// Rows of a source by key values.
type KeyIndex = HashMap<Vec<String>, RowRef>;

/// What a column name comes to in a table, the same for every row (cached per run).
#[derive(Clone, Copy)]
enum Resolved<'m> {
    /// A cell of the row's own table, by index.
    Own(usize),
    /// A constant.
    Const(&'m str),
    /// The repeat number `n`.
    N,
}

/// Which bytes an id holds as they are: ASCII letters and digits, `-` and `.`.
const ID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        i += 1;
    }
    table
};

/// The digits of 0 to 99, one after the other (`n` is read without allocating).
const SMALL_NUMBERS: &str = "0123456789101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// The value of `n`: its digits, borrowed for the common small numbers.
fn n_cell<'t>(n: Option<u32>) -> Cell<'t> {
    match n {
        Some(n) if n < 10 => {
            let i = n as usize;
            Cell::Value(SMALL_NUMBERS[i..=i].into(), None)
        }
        Some(n) if n < 100 => {
            let i = 10 + (n as usize - 10) * 2;
            Cell::Value(SMALL_NUMBERS[i..i + 2].into(), None)
        }
        Some(n) => Cell::Value(n.to_string().into(), None),
        None => Cell::Empty(None),
    }
}

/// The key of a resolved column name: the name's address and length in the mapping, the
/// `{n}` it is read for, and the table.
type ResolvedKey = (usize, usize, u32, usize);

/// The row being mapped.
#[derive(Clone, Copy, PartialEq, Eq)]
struct At {
    table: usize,
    row: usize,
    n: Option<u32>,
}

/// The resources made so far, by type and id, and where each was first made: every id's
/// text sits in one arena, found through a table of hashes (no allocation per id).
#[derive(Default)]
struct Ids {
    /// The ids' text, one after the other.
    text: String,
    /// Per id: its type (index into `types`), its span in `text`, the rule and row that
    /// made it first, and the next entry of equal hash (`u32::MAX`: none).
    entries: Vec<(u32, u32, u32, usize, At, u32)>,
    /// Hash of (type, id) to the first entry of that hash.
    by_hash: HashMap<u64, u32, IdHash>,
    /// Type names seen.
    types: Vec<String>,
}

/// The hasher of [`Ids::by_hash`]: its keys are hashes already.
#[derive(Default, Clone, Copy)]
struct IdHash;

/// See [`IdHash`].
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Ids {
    /// The type's index.
    fn type_index(&mut self, type_name: &str) -> u32 {
        let i = match self.types.iter().position(|t| t == type_name) {
            Some(i) => i,
            None => {
                self.types.push(type_name.to_string());
                self.types.len() - 1
            }
        };
        u32::try_from(i).unwrap_or(u32::MAX)
    }

    /// The rule and row that first made (type, id), or records them as its first (`kind`:
    /// the type's [`Ids::type_index`]).
    fn first_or_insert(&mut self, kind: u32, id: &str, rule: usize, at: At) -> Option<(usize, At)> {
        // The type and the id, a word at a time, then a final mix for the table's upper
        // bits.
        let mut hasher = std::hash::BuildHasher::build_hasher(&crate::model::schema::FastHash);
        std::hash::Hasher::write_u32(&mut hasher, kind);
        std::hash::Hasher::write(&mut hasher, id.as_bytes());
        let mut h = std::hash::Hasher::finish(&hasher);
        h ^= h >> 29;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 32;
        let head = self.by_hash.get(&h).copied();
        let mut next = head.unwrap_or(u32::MAX);
        while let Some(e) = self.entries.get(next as usize) {
            let (k, start, end, r, a, n) = *e;
            if k == kind && self.text.get(start as usize..end as usize) == Some(id) {
                return Some((r, a));
            }
            next = n;
        }
        let start = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        self.text.push_str(id);
        let end = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        let index = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.entries
            .push((kind, start, end, rule, at, head.unwrap_or(u32::MAX)));
        self.by_hash.insert(h, index);
        None
    }
}

/// How many values of `n` the ids of a rule whose id reads `n` are kept for (no `n`, and
/// `n` from 1 to 7); ids for other values are made each time.
const MEMO_NS: usize = 8;

/// The ids made per rule and row (and `n`, when the rule's id reads it), all in one text:
/// a reference to a rule's resource from a row uses the id made for that row again.
struct IdMemo {
    /// The ids' text, one after the other.
    text: String,
    /// Per rule, per table: per row (times the rule's stride) and `n`, the id's span in
    /// `text` (empty: none kept); allocated when the first id is kept.
    spans: Vec<Vec<Vec<(u32, u32)>>>,
    /// Per rule: 1, or [`MEMO_NS`] when its id reads `n`.
    stride: Vec<usize>,
    /// Per table, its rows.
    rows: Vec<usize>,
}

impl IdMemo {
    /// An empty memo for the rules of `m` and the tables.
    fn new(m: &Mapping, tables: &[Table]) -> IdMemo {
        IdMemo {
            text: String::new(),
            spans: vec![vec![Vec::new(); tables.len()]; m.resources.len()],
            stride: m
                .resources
                .iter()
                .map(|r| if reads_n(&r.id) { MEMO_NS } else { 1 })
                .collect(),
            rows: tables.iter().map(|t| t.rows.len()).collect(),
        }
    }

    /// Where the id of `rule` for the row sits in a table's spans, if it is kept.
    fn slot(&self, rule: usize, at: At) -> Option<usize> {
        let stride = *self.stride.get(rule)?;
        let n = match at.n {
            _ if stride == 1 => 0,
            None => 0,
            Some(n) => usize::try_from(n).ok().filter(|&n| n + 1 < stride)? + 1,
        };
        Some(at.row * stride + n)
    }

    /// The id kept for `rule` and the row.
    fn get(&self, rule: usize, at: At) -> Option<&str> {
        let slot = self.slot(rule, at)?;
        let &(start, end) = self.spans.get(rule)?.get(at.table)?.get(slot)?;
        if end == 0 {
            return None;
        }
        self.text.get(start as usize..end as usize)
    }

    /// Keeps the id of `rule` for the row (nothing when the text would pass 4 GiB).
    fn put(&mut self, rule: usize, at: At, id: &str) {
        let Some(slot) = self.slot(rule, at) else {
            return;
        };
        let start = self.text.len();
        let (Ok(s), Ok(e)) = (u32::try_from(start), u32::try_from(start + id.len())) else {
            return;
        };
        let (Some(stride), Some(&rows)) = (self.stride.get(rule), self.rows.get(at.table)) else {
            return;
        };
        let size = rows * stride;
        let Some(spans) = self.spans.get_mut(rule).and_then(|t| t.get_mut(at.table)) else {
            return;
        };
        if spans.is_empty() {
            *spans = vec![(0, 0); size];
        }
        if let Some(span) = spans.get_mut(slot) {
            if span.1 == 0 {
                self.text.push_str(id);
                *span = (s, e);
            }
        }
    }
}

/// The state of one run.
pub(super) struct Engine<'m> {
    m: &'m Mapping,
    tables: &'m [Table],
    /// Per table, per row, the joined (table, row) of each join of its source.
    joined: Joined,
    diagnostics: Vec<Diagnostic>,
    /// (table, column name) already reported as missing.
    missing: HashSet<(usize, String)>,
    /// Resource name to rule index.
    by_name: HashMap<&'m str, usize>,
    /// The rule being applied, and whether its resource (of id [`Engine::id`]) is being
    /// made (for diagnostics).
    rule: usize,
    in_resource: bool,
    /// The id of the resource being made.
    id: String,
    /// Scratch text for templates and references (kept for its allocation).
    scratch: String,
    /// Scratch text for lower-cased lookup keys.
    lower: String,
    /// Per rule, its compiled plan.
    plans: Vec<Group<'m>>,
    /// The content member being made, and the members of this resource that failed.
    member: Option<&'m str>,
    failed: Vec<String>,
    /// Column names already resolved (see [`Resolved`]).
    resolved: HashMap<ResolvedKey, Resolved<'m>, crate::model::schema::FastHash>,
    /// The most recent of them, by [`recent_slot`] (checked before `resolved`).
    recent: Vec<(ResolvedKey, Resolved<'m>)>,
    /// The ids made per rule and row, for references to them; see [`Engine::ref_id`].
    ids_made: IdMemo,
    /// Per table, its cells' values.
    values: Vec<Values<'m>>,
    /// The cell last written as a date (without a lookup), the table of the row it was
    /// read for (whose dialect read it), and its JSON text: a row's date is written by
    /// several rules.
    last_date: Option<(CellRef, usize, String)>,
}

/// Whether a template reads the repeat number `n` (as `{n}` or inside a column name).
fn reads_n(t: &Template) -> bool {
    t.parts
        .iter()
        .any(|p| matches!(p, Part::Column(c) if c == "n" || c.contains("{n}")))
}

/// Slots of [`Engine::recent`].
const RECENT: usize = 256;

/// A key no column name has (its address and length would pass the end of memory).
const NO_KEY: ResolvedKey = (usize::MAX, usize::MAX, 0, 0);

/// The slot of a resolved column name in [`Engine::recent`].
fn recent_slot(key: ResolvedKey) -> usize {
    let (ptr, len, n, table) = key;
    let h = (ptr as u64) ^ ((len as u64) << 40) ^ (u64::from(n) << 20) ^ ((table as u64) << 52);
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % RECENT
}

impl<'m> Engine<'m> {
    pub(super) fn new(
        m: &'m Mapping,
        tables: &'m [Table],
        diagnostics: Vec<Diagnostic>,
    ) -> Engine<'m> {
        let mut e = Engine {
            m,
            tables,
            joined: Vec::new(),
            diagnostics,
            missing: HashSet::new(),
            by_name: m
                .resources
                .iter()
                .enumerate()
                .map(|(i, r)| (r.name.as_str(), i))
                .collect(),
            rule: 0,
            in_resource: false,
            id: String::new(),
            scratch: String::new(),
            lower: String::new(),
            plans: Vec::new(),
            member: None,
            failed: Vec::new(),
            resolved: HashMap::with_hasher(crate::model::schema::FastHash),
            recent: vec![(NO_KEY, Resolved::N); RECENT],
            ids_made: IdMemo::new(m, tables),
            values: tables.iter().map(Values::of).collect(),
            last_date: None,
        };
        let types: Vec<&str> = m.resources.iter().map(|r| r.type_name.as_str()).collect();
        e.plans = m
            .resources
            .iter()
            .map(|r| compile_rule(r, super::ENTRY_DEPTH, &e.by_name, &types, &m.constants))
            .collect();
        e.check_keys();
        e.joined = e.join_all();
        e
    }

    /// The resource being made (`Patient/nl01-p001`), for diagnostics.
    fn resource_name(&self) -> Option<String> {
        self.in_resource.then(|| {
            let t = &self.m.resources[self.rule].type_name;
            let mut s = String::with_capacity(t.len() + 1 + self.id.len());
            s.push_str(t);
            s.push('/');
            s.push_str(&self.id);
            s
        })
    }

    pub(super) fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.diagnostics
    }

    fn mapping_at(&self, line: usize) -> Option<(String, usize)> {
        Some((self.m.file_name.clone(), line))
    }

    fn report(
        &mut self,
        severity: Severity,
        at: Option<(usize, usize)>,
        cell: Option<CellRef>,
        line: usize,
        message: String,
    ) {
        if let Some(m) = self.member {
            if severity.is_error() && !self.failed.iter().any(|f| f == m) {
                self.failed.push(m.to_string());
            }
        }
        let source = cell
            .and_then(|c| cell_pos(self.tables, c))
            .or_else(|| at.and_then(|(t, r)| row_pos(self.tables, t, r)));
        self.diagnostics.push(Diagnostic {
            severity,
            source,
            mapping: self.mapping_at(line),
            resource: self.resource_name(),
            location: None,
            message,
        });
    }

    /// The key values of a row (trimmed, compared exactly as ids are made from them),
    /// `None` when a key cell is empty or missing.
    fn key_of(&self, table: usize, row: usize, cols: &[String]) -> Option<Vec<String>> {
        let t = &self.tables[table];
        cols.iter()
            .map(|c| {
                t.column(c)
                    .and_then(|i| t.value(row, i))
                    .map(str::to_string)
            })
            .collect()
    }

    /// Reports rows whose declared key repeats another row's.
    fn check_keys(&mut self) {
        for (ti, t) in self.tables.iter().enumerate() {
            let src = &self.m.sources[t.source];
            if src.key.is_empty() {
                continue;
            }
            self.require_columns(ti, &src.key.clone(), src.line);
            let mut seen: HashMap<Vec<String>, u32, crate::model::schema::FastHash> =
                HashMap::with_capacity_and_hasher(t.rows.len(), crate::model::schema::FastHash);
            for r in 0..t.rows.len() {
                let Some(k) = self.key_of(ti, r, &src.key) else {
                    self.report(
                        Severity::Error,
                        Some((ti, r)),
                        None,
                        src.line,
                        format!("key column(s) {} empty", src.key.join(", ")),
                    );
                    continue;
                };
                let mut entry = match seen.entry(k) {
                    Entry::Vacant(v) => {
                        v.insert(t.rows[r].line);
                        continue;
                    }
                    Entry::Occupied(o) => o,
                };
                // The line reported for a later repeat is the latest before it.
                let first = entry.insert(t.rows[r].line);
                let message = format!(
                    "duplicate key {} = {} (also on line {first})",
                    src.key.join(", "),
                    entry.key().join(", ")
                );
                self.report(Severity::Error, Some((ti, r)), None, src.line, message);
            }
        }
    }

    /// Reports columns of `cols` the table's header lacks.
    fn require_columns(&mut self, table: usize, cols: &[String], line: usize) {
        for c in cols {
            if self.tables[table].column(c).is_none() {
                self.missing_column(table, c, line);
            }
        }
    }

    fn missing_column(&mut self, table: usize, name: &str, line: usize) {
        if !self.missing.insert((table, name.to_string())) {
            return;
        }
        let t = &self.tables[table];
        let src = &self.m.sources[t.source];
        let aliases = src
            .columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.aliases.join("\", \""))
            .unwrap_or_default();
        let message = if aliases.is_empty() {
            format!("column '{name}' is not in the header of {}", t.file)
        } else {
            format!(
                "column '{name}' is not in the header of {} (looked for \"{aliases}\")",
                t.file
            )
        };
        self.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            source: Some(super::SourcePos {
                file: t.file.clone(),
                row: 1,
                column: None,
                fhir: None,
            }),
            mapping: self.mapping_at(line),
            resource: None,
            location: None,
            message,
        });
    }

    /// For every row of every table, the rows it joins to.
    fn join_all(&mut self) -> Joined {
        // One index per (joined source, key columns), built once.
        let mut indexes: HashMap<(usize, Vec<String>), KeyIndex> = HashMap::new();
        let mut all = Vec::with_capacity(self.tables.len());
        for ti in 0..self.tables.len() {
            let src = &self.m.sources[self.tables[ti].source];
            let joins = src.joins.clone();
            let mut per_row = vec![Vec::with_capacity(joins.len()); self.tables[ti].rows.len()];
            for j in &joins {
                self.require_columns(ti, &j.on, j.line);
                let key = (j.source, j.on.clone());
                if !indexes.contains_key(&key) {
                    let index = self.index(j.source, &j.on, j.line);
                    indexes.insert(key.clone(), index);
                }
                let index = &indexes[&key];
                for (r, joined) in per_row.iter_mut().enumerate() {
                    let found = self
                        .key_of(ti, r, &j.on)
                        .and_then(|k| index.get(&k).copied());
                    if found.is_none() {
                        let shown: Vec<String> =
                            j.on.iter()
                                .map(|c| {
                                    let t = &self.tables[ti];
                                    let v = t.column(c).and_then(|i| t.value(r, i)).unwrap_or("");
                                    format!("{c} = '{v}'")
                                })
                                .collect();
                        let other = self.m.sources[j.source].name.clone();
                        self.report(
                            Severity::Error,
                            Some((ti, r)),
                            None,
                            j.line,
                            format!("no row in source '{other}' with {}", shown.join(", ")),
                        );
                    }
                    joined.push(found);
                }
            }
            all.push(per_row);
        }
        all
    }

    /// The rows of a source by key, reporting keys that repeat.
    fn index(&mut self, source: usize, on: &[String], line: usize) -> KeyIndex {
        let mut index = HashMap::new();
        for ti in 0..self.tables.len() {
            if self.tables[ti].source != source {
                continue;
            }
            self.require_columns(ti, on, line);
            for r in 0..self.tables[ti].rows.len() {
                if let Some(k) = self.key_of(ti, r, on) {
                    if let Some((pt, pr)) = index.insert(k.clone(), (ti, r)) {
                        let first = self.tables[pt].rows[pr].line;
                        self.report(
                            Severity::Error,
                            Some((ti, r)),
                            None,
                            line,
                            format!(
                                "joined source has two rows with {} = {} (also line {first}); the last one is used",
                                on.join(", "),
                                k.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        index
    }

    /// Applies every rule to every row of its source and hands each produced resource,
    /// serialized, to `emit`, without duplicates: the same id from two rows must have the
    /// same content. Only the first row of each id is kept; when the id comes again, the
    /// first resource is made again (quietly) and the two texts are compared, so nothing
    /// but the ids is kept. `lines` records the provenance of each line (for validation).
    pub(super) fn produce(&mut self, lines: bool, emit: &mut dyn FnMut(&Made<'_>)) -> usize {
        let mut ids = Ids::default();
        // About one resource per rule and row (more with repeats).
        let rows: usize = self.tables.iter().map(|t| t.rows.len()).sum();
        ids.by_hash
            .reserve(rows.saturating_mul(self.m.resources.len()));
        ids.entries
            .reserve(rows.saturating_mul(self.m.resources.len()));
        let mut sink = Sink::new(lines);
        let mut again = Sink::new(false);
        let mut count = 0;
        let m = self.m;
        for ri in 0..m.resources.len() {
            self.rule = ri;
            let rule = &m.resources[ri];
            let kind = ids.type_index(&rule.type_name);
            let ns: Vec<Option<u32>> = if rule.repeat.is_empty() {
                vec![None]
            } else {
                rule.repeat.iter().map(|n| Some(*n)).collect()
            };
            for ti in 0..self.tables.len() {
                if self.tables[ti].source != rule.from {
                    continue;
                }
                for r in 0..self.tables[ti].rows.len() {
                    for &n in &ns {
                        let at = At {
                            table: ti,
                            row: r,
                            n,
                        };
                        self.in_resource = false;
                        if let Some(c) = &rule.when {
                            if !self.cond(c, at, rule.line) {
                                continue;
                            }
                        }
                        sink.clear();
                        if !self.one(ri, at, &mut sink) {
                            continue;
                        }
                        match ids.first_or_insert(kind, &self.id, ri, at) {
                            None => {
                                count += 1;
                                emit(&Made {
                                    type_name: &rule.type_name,
                                    id: &self.id,
                                    profile: &rule.profile,
                                    text: &sink.text,
                                    lines: &sink.lines,
                                    root: self.plans[ri].prov,
                                    row: (ti, r),
                                    failed: &self.failed,
                                });
                            }
                            Some((first_rule, first)) => {
                                if !self.same_as(first_rule, first, &sink.text, &mut again) {
                                    let first = row_pos(self.tables, first.table, first.row)
                                        .map(|s| format!("{}:{}", s.file, s.row))
                                        .unwrap_or_default();
                                    self.report(
                                        Severity::Error,
                                        Some((ti, r)),
                                        None,
                                        rule.id_line,
                                        format!(
                                            "this id is produced again with different content (first from {first}); make the id unique or the rows agree"
                                        ),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        self.in_resource = false;
        count
    }

    /// Whether the resource of rule `rule` for row `at` (made before, so without new
    /// problems) has the text `text`. Makes it again quietly: the state of the resource
    /// being made and the diagnostics are as they were.
    fn same_as(&mut self, rule: usize, at: At, text: &str, sink: &mut Sink) -> bool {
        let saved = (
            self.rule,
            self.in_resource,
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.failed),
            self.member,
            self.diagnostics.len(),
        );
        self.rule = rule;
        self.in_resource = false;
        sink.clear();
        let same = self.one(rule, at, sink) && sink.text == text;
        let (r, inside, id, failed, member, count) = saved;
        self.rule = r;
        self.in_resource = inside;
        self.id = id;
        self.failed = failed;
        self.member = member;
        self.diagnostics.truncate(count);
        same
    }

    /// Makes the resource of rule `ri` for the row into `sink` (its id in [`Engine::id`],
    /// its failed members in `failed`); false when it has no id.
    fn one(&mut self, ri: usize, at: At, sink: &mut Sink) -> bool {
        let m = self.m;
        let rule = &m.resources[ri];
        let mut id = std::mem::take(&mut self.id);
        id.clear();
        let ok = self.id_into(rule, at, rule.id_line, &mut id);
        self.id = id;
        if !ok {
            return false;
        }
        self.ids_made.put(ri, at, &self.id);
        self.in_resource = true;
        self.failed.clear();
        let plans = std::mem::take(&mut self.plans);
        let group = &plans[ri];
        sink.line(group.prov);
        let made = self.group(group, at, sink);
        self.plans = plans;
        self.member = None;
        sink.text.push('\n');
        made.is_some()
    }

    /// The id of rule `ti`'s resource for a reference from the row, appended to `out`, as
    /// [`Engine::id_into`] makes it; an id already made for the rule and row (and `n`, if
    /// the id reads it) is used again.
    fn ref_id(&mut self, ti: usize, at: At, line: usize, out: &mut String) -> bool {
        if let Some(id) = self.ids_made.get(ti, at) {
            out.push_str(id);
            return true;
        }
        let m = self.m;
        let start = out.len();
        let made = self.id_into(&m.resources[ti], at, line, out);
        // Only an id made without problems is kept (a problem is reported each time).
        if made {
            self.ids_made.put(ti, at, &out[start..]);
        }
        made
    }

    /// The id of `rule`'s resource for the row, appended to `out`: its template, with
    /// characters a FHIR id cannot hold replaced by `-`. False (and `out` as it was)
    /// when there is none.
    fn id_into(&mut self, rule: &'m ResourceRule, at: At, line: usize, out: &mut String) -> bool {
        let start = out.len();
        match self.template_into(&rule.id, at, line, out) {
            Ok(()) => {}
            Err(None) => {
                out.truncate(start);
                return false;
            }
            Err(Some(col)) => {
                out.truncate(start);
                self.report(
                    Severity::Error,
                    Some((at.table, at.row)),
                    None,
                    line,
                    format!(
                        "no id for {} '{}': column '{col}' is empty",
                        rule.type_name, rule.name
                    ),
                );
                return false;
            }
        }
        let fits = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        // Byte by byte first: a byte that fits is a whole character.
        if !out.as_bytes()[start..]
            .iter()
            .all(|&b| ID_BYTES[usize::from(b)])
        {
            let fixed: String = out[start..]
                .chars()
                .map(|c| if fits(c) { c } else { '-' })
                .collect();
            out.truncate(start);
            out.push_str(&fixed);
        }
        let len = out.len() - start;
        if len == 0 || len > 64 {
            let id = out[start..].to_string();
            out.truncate(start);
            self.report(
                Severity::Error,
                Some((at.table, at.row)),
                None,
                line,
                format!("id '{id}' must have 1 to 64 characters"),
            );
            return false;
        }
        true
    }

    /// Resolves a column name in the row: `n`, `const.NAME`, `SOURCE.COLUMN` (the row or a
    /// joined row) or a column of the row's own file; `{n}` inside the name is replaced.
    fn cell(&mut self, name: &'m str, at: At, line: usize) -> Cell<'m> {
        let key = (
            name.as_ptr() as usize,
            name.len(),
            at.n.unwrap_or(u32::MAX),
            at.table,
        );
        let slot = recent_slot(key);
        let mut known = self
            .recent
            .get(slot)
            .filter(|(k, _)| *k == key)
            .map(|&(_, r)| r);
        if known.is_none() {
            known = self.resolved.get(&key).copied();
            if let (Some(r), Some(e)) = (known, self.recent.get_mut(slot)) {
                *e = (key, r);
            }
        }
        match known {
            Some(Resolved::Own(ci)) => return self.read(at.table, at.row, ci),
            Some(Resolved::Const(v)) => return Cell::Value(v.into(), None),
            Some(Resolved::N) => return n_cell(at.n),
            None => {}
        }
        let name: std::borrow::Cow<str> = match at.n {
            Some(n) if name.contains("{n}") => name.replace("{n}", &n.to_string()).into(),
            _ => name.into(),
        };
        if name == "n" {
            self.resolved.insert(key, Resolved::N);
            return n_cell(at.n);
        }
        if let Some(c) = name.strip_prefix("const.") {
            let m = self.m;
            return match m.constants.get(c) {
                Some(v) => {
                    self.resolved.insert(key, Resolved::Const(v.as_str()));
                    Cell::Value(v.as_str().into(), None)
                }
                None => {
                    self.report(
                        Severity::Error,
                        None,
                        None,
                        line,
                        format!("no constant '{c}' in [constants]"),
                    );
                    Cell::Missing
                }
            };
        }
        let mut table = at.table;
        let mut row = at.row;
        let mut col = name.as_ref();
        // A FHIR source's own columns (named or inline FHIRPath) are matched first: an
        // expression's dots are not `SOURCE.COLUMN`.
        let own_fhir =
            self.tables[at.table].fhir.is_some() && self.tables[at.table].column(&name).is_some();
        let split = if own_fhir { None } else { name.split_once('.') };
        if let Some((src, rest)) = split {
            if let Some(si) = self.m.sources.iter().position(|s| s.name == src) {
                col = rest;
                if si != self.tables[at.table].source {
                    let own = &self.m.sources[self.tables[at.table].source];
                    let Some(j) = own.joins.iter().position(|j| j.source == si) else {
                        self.report(
                            Severity::Error,
                            None,
                            None,
                            line,
                            format!("'{name}': source '{}' does not join '{src}'", own.name),
                        );
                        return Cell::Missing;
                    };
                    match self.joined[at.table][at.row].get(j).copied().flatten() {
                        Some((t, r)) => {
                            table = t;
                            row = r;
                        }
                        // No joined row: reported by the join.
                        None => return Cell::Missing,
                    }
                }
            }
        }
        let t = &self.tables[table];
        let Some(ci) = t.column(col) else {
            self.missing_column(table, col, line);
            return Cell::Missing;
        };
        if table == at.table {
            self.resolved.insert(key, Resolved::Own(ci));
        }
        self.read(table, row, ci)
    }

    /// The value of a cell.
    #[inline(always)]
    fn read(&self, table: usize, row: usize, ci: usize) -> Cell<'m> {
        let cref = CellRef {
            table: u32::try_from(table).unwrap_or(u32::MAX),
            row: u32::try_from(row).unwrap_or(u32::MAX),
            col: u32::try_from(ci).unwrap_or(u32::MAX),
        };
        match self.values.get(table).and_then(|v| v.get(row, ci)) {
            Some(v) => Cell::Value(v.into(), Some(cref)),
            None if self.tables[table]
                .fhir
                .as_ref()
                .is_some_and(|f| f.failed.contains(&(cref.row, cref.col))) =>
            {
                // A FHIR value that could not be read: reported when the file was read.
                Cell::Missing
            }
            None => Cell::Empty(Some(cref)),
        }
    }

    /// Keeps the JSON text a cell was written as a date for a row of `table` (`keep`), or
    /// forgets the last one.
    fn remember_date(&mut self, cell: Option<CellRef>, table: usize, keep: bool, written: &str) {
        match (cell, keep) {
            (Some(cell), true) => {
                let mut kept = self.last_date.take().map(|(_, _, s)| s).unwrap_or_default();
                kept.clear();
                kept.push_str(written);
                self.last_date = Some((cell, table, kept));
            }
            _ => self.last_date = None,
        }
    }

    /// Marks the content member being made as failed (its problem is already reported).
    fn mark_failed(&mut self) {
        if let Some(m) = self.member {
            if !self.failed.iter().any(|f| f == m) {
                self.failed.push(m.to_string());
            }
        }
    }

    /// Appends a template's text to `out`; `Err(Some(column))` when a referenced column
    /// has no value, `Err(None)` when its absence was already reported (a missing column,
    /// a row without its joined row, a FHIR value that could not be read). On an error,
    /// `out` may hold part of the text.
    fn template_into(
        &mut self,
        t: &'m Template,
        at: At,
        line: usize,
        out: &mut String,
    ) -> Result<(), Option<String>> {
        for p in &t.parts {
            match p {
                Part::Text(x) => out.push_str(x),
                Part::Column(c) => match self.cell(c, at, line) {
                    Cell::Value(v, _) => out.push_str(&v),
                    Cell::Empty(_) => return Err(Some(c.clone())),
                    Cell::Missing => return Err(None),
                },
            }
        }
        Ok(())
    }

    fn cond(&mut self, c: &'m Cond, at: At, line: usize) -> bool {
        match c {
            Cond::Present(col) => matches!(self.cell(col, at, line), Cell::Value(..)),
            Cond::In(col, values) => match self.cell(col, at, line) {
                Cell::Value(v, _) => values.contains(&v.trim().to_lowercase()),
                _ => false,
            },
            Cond::All(list) => list.iter().all(|c| self.cond(c, at, line)),
            Cond::Any(list) => list.iter().any(|c| self.cond(c, at, line)),
            Cond::Not(c) => !self.cond(c, at, line),
            Cond::FhirPath(e) => {
                let vars = self.variables(at);
                let tables = self.tables;
                let result = {
                    let mut ctx = context(tables, at);
                    for (k, v) in &vars {
                        ctx = ctx.with_variable(
                            k,
                            v.as_deref()
                                .map_or_else(Collection::new, |v| Collection::one(Item::str(v))),
                        );
                    }
                    e.evaluate_predicate(&ctx).map_err(|e| e.to_string())
                };
                match result {
                    Ok(b) => b.unwrap_or(false),
                    Err(msg) => {
                        self.report(
                            Severity::Error,
                            Some((at.table, at.row)),
                            None,
                            line,
                            format!("fhirpath: {msg}"),
                        );
                        false
                    }
                }
            }
        }
    }

    /// The row's values as FHIRPath variables: declared column names and headers, of the
    /// row and its joined rows (as `SOURCE.COLUMN` too), constants as `const.NAME`, and `n`.
    fn variables(&self, at: At) -> Vec<(String, Option<String>)> {
        let mut vars = Vec::new();
        let add = |vars: &mut Vec<(String, Option<String>)>,
                   table: usize,
                   row: usize,
                   prefix: Option<&str>| {
            let t = &self.tables[table];
            let src = &self.m.sources[t.source];
            let names = src
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .chain(t.headers.iter().map(String::as_str));
            for name in names {
                // Empty cells are empty collections: FHIRPath propagates them.
                let v = t
                    .column(name)
                    .and_then(|i| t.value(row, i))
                    .map(str::to_string);
                let key = prefix.map_or_else(|| name.to_string(), |p| format!("{p}.{name}"));
                vars.push((key, v));
            }
        };
        add(&mut vars, at.table, at.row, None);
        let own = &self.m.sources[self.tables[at.table].source];
        for (j, join) in own.joins.iter().enumerate() {
            let name = &self.m.sources[join.source].name;
            match self.joined[at.table][at.row].get(j).copied().flatten() {
                Some((t, r)) => add(&mut vars, t, r, Some(name)),
                None => {
                    // No joined row: its declared columns are there, and empty.
                    for c in &self.m.sources[join.source].columns {
                        vars.push((format!("{name}.{}", c.name), None));
                    }
                }
            }
        }
        for (k, v) in &self.m.constants {
            vars.push((format!("const.{k}"), Some(v.clone())));
        }
        vars.push(("n".into(), at.n.map(|n| n.to_string())));
        vars
    }

    /// Writes a compiled node for the row; returns the provenance of what it wrote, or
    /// `None` (and nothing written) when it has no value.
    fn render(&mut self, plan: &Plan<'m>, at: At, out: &mut Sink) -> Option<Prov> {
        match plan {
            Plan::Nothing => None,
            Plan::Fixed(f) => {
                out.fixed(f);
                Some(f.prov)
            }
            Plan::Run(f) => {
                // Its leading comma is for a group to write.
                out.fixed_from(f, 1);
                Some(f.prov)
            }
            Plan::Group(g) => self.group(g, at, out),
            Plan::Id(prov) => {
                // An id holds letters, digits, `-` and `.` only: nothing to escape.
                out.text.reserve(self.id.len() + 2);
                out.text.push('"');
                out.text.push_str(&self.id);
                out.text.push('"');
                Some(*prov)
            }
            Plan::Template(t, line, prov) => {
                let mut s = std::mem::take(&mut self.scratch);
                s.clear();
                let made = match self.template_into(t, at, *line, &mut s) {
                    Ok(()) => {
                        push_json_str(&mut out.text, &s);
                        Some(*prov)
                    }
                    Err(Some(_)) => None,
                    Err(None) => {
                        // Already reported: the element's absence is not news.
                        self.mark_failed();
                        None
                    }
                };
                self.scratch = s;
                made
            }
            Plan::Column {
                spec,
                line,
                prov,
                depth,
                default,
            } => self.column(spec, at, *line, *prov, *depth, default.as_deref(), out),
            Plan::If(c, line, then, els) => {
                if self.cond(c, at, *line) {
                    self.render(then, at, out)
                } else {
                    els.as_ref().and_then(|e| self.render(e, at, out))
                }
            }
            Plan::Ref(target, line, prov, text) if text.direct => {
                // `"reference": "Type/` is in the opening text, the closing `"` in the
                // closing text.
                let mark = out.mark();
                out.text.push_str(&text.open);
                out.line(*prov);
                if !self.ref_id(*target, at, *line, &mut out.text) {
                    out.reset(mark);
                    return None;
                }
                out.text.push_str(&text.close);
                out.line(*prov);
                Some(*prov)
            }
            Plan::Ref(target, line, prov, text) => {
                let m = self.m;
                let ti = *target;
                let target = &m.resources[ti];
                let mut s = std::mem::take(&mut self.scratch);
                s.clear();
                s.push_str(&target.type_name);
                s.push('/');
                let made = self.ref_id(ti, at, *line, &mut s);
                if made {
                    out.text.push_str(&text.open);
                    out.line(*prov);
                    push_json_str(&mut out.text, &s);
                    out.text.push_str(&text.close);
                    out.line(*prov);
                }
                self.scratch = s;
                made.then_some(*prov)
            }
            Plan::FhirPath(e, line, prov, depth) => {
                let v = self.fhirpath(e, at, *line, *prov)?;
                let mut lines = std::mem::take(&mut out.lines);
                let kept = lines.len();
                super::out::write_value(&v, *depth, &mut out.text, &mut lines);
                if !out.keep {
                    lines.truncate(kept);
                }
                out.lines = lines;
                Some(v.prov)
            }
        }
    }

    /// Writes an object or array: its items that have a value, nothing when none has.
    fn group(&mut self, g: &Group<'m>, at: At, out: &mut Sink) -> Option<Prov> {
        let start = out.mark();
        out.text.push_str(&g.open);
        out.lines(&g.open_lines);
        let mut any = false;
        for item in &g.items {
            // The comma leading the item's text is skipped for the first item written.
            let skip = usize::from(!any);
            if let Plan::Run(run) = &item.plan {
                // Always there: no mark to cut back to, no provenance to set.
                out.fixed_from(run, skip);
                any = true;
                continue;
            }
            if g.top {
                self.member = item.member;
            }
            let mark = out.mark();
            out.text
                .push_str(item.prefix.get(skip..).unwrap_or_default());
            let slot = out.line(Prov::default());
            let made = match &item.plan {
                Plan::Group(inner) => self.group(inner, at, out),
                plan => self.render(plan, at, out),
            };
            match made {
                Some(prov) => {
                    out.set(slot, prov);
                    any = true;
                }
                None => out.reset(mark),
            }
        }
        if g.top {
            self.member = None;
        }
        if !any {
            out.reset(start);
            return None;
        }
        out.text.push_str(&g.close);
        out.lines(&g.close_lines);
        Some(g.prov)
    }
    fn fhirpath(&mut self, e: &Expression, at: At, line: usize, prov: Prov) -> Option<Val<'m>> {
        let vars = self.variables(at);
        let tables = self.tables;
        let result: Result<Option<Out<'m>>, String> = {
            let mut ctx = context(tables, at);
            for (k, v) in &vars {
                ctx = ctx.with_variable(
                    k,
                    v.as_deref()
                        .map_or_else(Collection::new, |v| Collection::one(Item::str(v))),
                );
            }
            match e.evaluate(&ctx) {
                Err(e) => Err(e.to_string()),
                Ok(items) if items.len() > 1 => {
                    Err(format!("gave {} values where one is expected", items.len()))
                }
                Ok(items) => Ok(items.first().and_then(|i| match i.to_system()? {
                    SystemValue::Boolean(b) => Some(Out::Bool(b)),
                    SystemValue::Integer(n) => Some(Out::Num(n.to_string().into())),
                    SystemValue::Decimal(d) => Some(Out::Num(number_text(d).into())),
                    SystemValue::String(s) => Some(Out::Str(s.to_string().into())),
                    SystemValue::Date(d) => Some(Out::Str(d.to_string().into())),
                    SystemValue::DateTime(d) => Some(Out::Str(d.to_string().into())),
                    SystemValue::Time(t) => Some(Out::Str(t.to_string().into())),
                    SystemValue::Quantity(q) => Some(Out::Obj(vec![
                        (
                            "value".into(),
                            Val::new(Out::Num(number_text(q.value).into()), prov),
                        ),
                        ("unit".into(), Val::str(q.unit.to_string(), prov)),
                        ("system".into(), Val::str("http://unitsofmeasure.org", prov)),
                        ("code".into(), Val::str(q.unit.to_string(), prov)),
                    ])),
                })),
            }
        };
        match result {
            Ok(v) => v.map(|v| Val::new(v, prov)),
            Err(msg) => {
                self.report(
                    Severity::Error,
                    Some((at.table, at.row)),
                    None,
                    line,
                    format!("fhirpath: {msg}"),
                );
                None
            }
        }
    }

    /// Writes a column value (converted, looked up or translated) at `depth`; its
    /// provenance carries the cell.
    #[allow(clippy::too_many_arguments)]
    fn column(
        &mut self,
        c: &'m ColumnSpec,
        at: At,
        line: usize,
        prov: Prov,
        depth: usize,
        default: Option<&Plan<'m>>,
        out: &mut Sink,
    ) -> Option<Prov> {
        let (value, cell) = match self.cell(&c.column, at, line) {
            Cell::Value(v, cell) => (v, cell),
            Cell::Missing => {
                // Already reported: the element's absence is not news.
                self.mark_failed();
                return None;
            }
            Cell::Empty(cell) => {
                if c.default.is_some() {
                    return default.and_then(|d| self.render(d, at, out));
                }
                if c.required {
                    self.report(
                        Severity::Error,
                        Some((at.table, at.row)),
                        cell,
                        line,
                        format!("'{}' has no value and is required", c.column),
                    );
                }
                return None;
            }
        };
        let prov = Prov { cell, ..prov };
        let fail = |e: &mut Self, message: String| {
            e.report(
                Severity::Error,
                Some((at.table, at.row)),
                cell,
                line,
                message,
            );
            None
        };
        if let Some(name) = &c.translate {
            let cm = self.m.conceptmaps.get(name)?;
            let Some(coding) = cm.translate_key(lower_key(&value, &mut self.lower)) else {
                let known = cm.local_codes().join(", ");
                return fail(
                    self,
                    format!("code '{value}' is not mapped by ConceptMap '{name}' (maps: {known})"),
                );
            };
            let members = [
                ("\"system\": ", Some(&coding.system)),
                ("\"code\": ", Some(&coding.code)),
                ("\"display\": ", coding.display.as_ref()),
            ];
            out.text.push('{');
            for (i, (key, v)) in members.iter().enumerate() {
                let Some(v) = v else { continue };
                if i > 0 {
                    out.text.push(',');
                }
                out.newline(depth + 1, prov);
                out.text.push_str(key);
                push_json_str(&mut out.text, v);
            }
            out.newline(depth, prov);
            out.text.push('}');
            return Some(prov);
        }
        let value = match &c.lookup {
            Some(name) => {
                let table = self.m.lookups.get(name)?;
                let key = lower_key(&value, &mut self.lower);
                match table.entries.get(key) {
                    Some(v) => std::borrow::Cow::Borrowed(v.as_str()),
                    None => {
                        return fail(
                            self,
                            format!(
                                "value '{value}' is not in lookup table '{name}' (line {})",
                                table.line
                            ),
                        )
                    }
                }
            }
            None => value,
        };
        let m = self.m;
        let tables = self.tables;
        let dialect = &m.sources[tables[at.table].source].dialect;
        let text = &mut out.text;
        let done = match c.as_ {
            As::String => {
                push_json_str(text, &value);
                Ok(())
            }
            As::Boolean => convert::parse_boolean(&value)
                .map(|b| text.push_str(if b { "true" } else { "false" })),
            As::Integer => convert::parse_number(&value, dialect.decimal).and_then(|d| {
                if d.fract().is_zero() {
                    convert::write_number(d, text);
                    Ok(())
                } else {
                    Err(format!("'{value}' is not a whole number"))
                }
            }),
            As::Decimal => convert::parse_number(&value, dialect.decimal).and_then(|d| {
                match (&c.unit, &c.to) {
                    (Some(from), Some(to)) => convert::convert_unit(d, from, to),
                    _ => Ok(d),
                }
                .map(|d| convert::write_number(d, text))
            }),
            As::Date => {
                // The same cell read as a date again (by another rule): the same text.
                let again = match (&self.last_date, cell) {
                    (Some((last, table, written)), Some(cell))
                        if *last == cell && *table == at.table && c.lookup.is_none() =>
                    {
                        Some(written.as_str())
                    }
                    _ => None,
                };
                if let Some(written) = again {
                    text.push_str(written);
                    Ok(())
                } else {
                    // A FHIR dateTime (`2022-03-14T09:30:00+01:00`) gives its date.
                    let value: &str = if tables[at.table].fhir.is_some() {
                        value.split_once('T').map_or(&*value, |(d, _)| d)
                    } else {
                        &value
                    };
                    let start = text.len();
                    let done =
                        convert::parse_date(value, &dialect.dates, dialect.yy_pivot).map(|d| {
                            text.push('"');
                            d.write(text);
                            text.push('"');
                        });
                    self.remember_date(
                        cell,
                        at.table,
                        c.lookup.is_none() && done.is_ok(),
                        &text[start..],
                    );
                    done
                }
            }
            As::Year => {
                if value.len() == 4 && value.bytes().all(|b| b.is_ascii_digit()) {
                    push_json_str(text, &value);
                    Ok(())
                } else {
                    convert::parse_date(&value, &dialect.dates, dialect.yy_pivot).map(|d| {
                        text.push('"');
                        convert::write_year(d.year, text);
                        text.push('"');
                    })
                }
            }
        };
        match done {
            Ok(()) => Some(prov),
            Err(message) => fail(self, message),
        }
    }
}

/// The lookup key of a value: trimmed and lower-cased (in `buf`, reused).
fn lower_key<'b>(value: &str, buf: &'b mut String) -> &'b str {
    let v = value.trim();
    buf.clear();
    if v.is_ascii() {
        buf.push_str(v);
        buf.make_ascii_lowercase();
    } else {
        buf.push_str(&v.to_lowercase());
    }
    buf.as_str()
}

/// The FHIRPath context of a row: its resource for a FHIR source, none for CSV.
fn context(tables: &[Table], at: At) -> Context<'_> {
    tables[at.table]
        .fhir
        .as_ref()
        .and_then(|f| f.resources.get(at.row))
        .map_or_else(Context::empty, Context::new)
}
