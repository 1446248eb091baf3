//! The mapping format: a TOML file read into [`Mapping`], every construct keeping the line
//! it was written on so diagnostics can name `mapping.toml:LINE`. `mappings/README.md` is
//! the reference for authors; this module is its implementation.
//!
//! The file is walked by hand over `toml`'s spanned tree (rather than derived with serde)
//! so that every unknown key, wrong type and bad value is reported with its line.

use super::conceptmap::ConceptMap;
use super::convert::{known_unit, DateFormat};
use super::MapError;
use crate::fhirpath::Expression;
use crate::model::schema::FastHash;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A loaded mapping.
#[derive(Debug)]
pub struct Mapping {
    /// The mapping file.
    pub path: PathBuf,
    /// Its file name, as diagnostics show it.
    pub file_name: String,
    /// `[mapping] name`.
    pub name: String,
    /// The base of `fullUrl`s in the Bundle.
    pub base: String,
    /// `[constants]`, usable as `{const.NAME}`.
    pub constants: BTreeMap<String, String>,
    /// `[sources.*]`, in file order.
    pub sources: Vec<Source>,
    /// `[lookups.*]`: local value (lower-cased) to output value, per table.
    pub lookups: HashMap<String, Lookup, FastHash>,
    /// `[conceptmaps]`: loaded ConceptMaps by their local name.
    pub conceptmaps: HashMap<String, ConceptMap, FastHash>,
    /// `[[resources]]`, in file order.
    pub resources: Vec<ResourceRule>,
}

/// A lookup table.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Line of its table.
    pub line: usize,
    /// Lower-cased trimmed key to value.
    pub entries: HashMap<String, String, FastHash>,
}

/// The text encoding of a CSV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8; a byte-order mark is skipped.
    Utf8,
    /// Latin-1 (ISO-8859-1) or Windows-1252, decoded as Windows-1252 (its superset for
    /// printable text, as the WHATWG Encoding Standard does).
    Windows1252,
}

/// How a CSV source is written.
#[derive(Debug, Clone)]
pub struct Dialect {
    /// Field separator.
    pub delimiter: u8,
    /// Quote character.
    pub quote: u8,
    /// Text encoding.
    pub encoding: Encoding,
    /// Decimal separator of numbers.
    pub decimal: char,
    /// Date formats tried in order.
    pub dates: Vec<DateFormat>,
    /// Two-digit years below this are 20yy, others 19yy.
    pub yy_pivot: u32,
    /// Values meaning "no value" (lower-cased); blank cells always are.
    pub empty: Vec<String>,
}

/// A declared column: its name in the mapping and the headers it may have in files.
#[derive(Debug, Clone)]
pub struct Column {
    /// The name rules use.
    pub name: String,
    /// Header spellings (compared trimmed, case- and space-insensitively).
    pub aliases: Vec<String>,
    /// Line of the declaration.
    pub line: usize,
}

/// A join: each row of the source looks up the row of `source` with equal `on` columns.
#[derive(Debug, Clone)]
pub struct Join {
    /// The joined source (an index into [`Mapping::sources`]).
    pub source: usize,
    /// Column names present in both sources.
    pub on: Vec<String>,
    /// Line of the declaration.
    pub line: usize,
}

/// A CSV source layout.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its name in the mapping.
    pub name: String,
    /// Line of `[sources.NAME]`.
    pub line: usize,
    /// File-name pattern (`*` matches any run of characters) the inputs are matched with.
    pub files: String,
    /// How the files are written.
    pub dialect: Dialect,
    /// Declared columns.
    pub columns: Vec<Column>,
    /// Columns that identify a row (rows with equal keys are reported).
    pub key: Vec<String>,
    /// Joins to other sources.
    pub joins: Vec<Join>,
    /// For a FHIR source (`format = "fhir"`): what selects its rows and its columns.
    /// `None` for a CSV source.
    pub fhir: Option<FhirSource>,
}

/// What makes a FHIR source (a Bundle, a resource or NDJSON): the resources it reads and
/// its columns as FHIRPath expressions over each resource.
#[derive(Debug, Clone)]
pub struct FhirSource {
    /// `select`: a FHIRPath predicate; the resources for which it is true are the rows.
    pub select: Option<(Arc<Expression>, String, usize)>,
    /// `[sources.NAME.columns]`: named FHIRPath columns.
    pub columns: Vec<FhirColumn>,
}

/// A column of a FHIR source: a FHIRPath expression over the selected resource, its
/// value optionally re-keyed through a lookup table.
#[derive(Debug, Clone)]
pub struct FhirColumn {
    /// The name rules use.
    pub name: String,
    /// The expression's text (shown in diagnostics as the cell's location).
    pub text: String,
    /// The compiled expression.
    pub expr: Arc<Expression>,
    /// A lookup table the value is translated through (`{ path = ..., lookup = ... }`).
    pub lookup: Option<String>,
    /// Line of the declaration.
    pub line: usize,
}

/// A `{name}` template: literal text and column references.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The pieces in order.
    pub parts: Vec<Part>,
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// A column (or `const.NAME`, or `n`).
    Column(String),
}

impl Template {
    /// Parses `AIM-{const.site}-{patient_id}`; `{{` and `}}` are literal braces.
    ///
    /// # Errors
    /// A message on an unclosed or empty `{}`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    let name = name.trim().to_string();
                    if !closed || name.is_empty() {
                        return Err(format!("template '{text}': unclosed or empty {{}}"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Column(name));
                }
                '}' => return Err(format!("template '{text}': '}}' without '{{'")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Template { parts })
    }

    /// The column names referenced (without `const.` ones and `n`).
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) => Some(c.as_str()),
            Part::Text(_) => None,
        })
    }
}

/// A condition on the row.
#[derive(Debug, Clone)]
pub enum Cond {
    /// `{ present = "col" }`: the column has a value.
    Present(String),
    /// `{ column = "col", equals = "x" }` / `in = [...]`: the value is one of these
    /// (trimmed, case-insensitive).
    In(String, Vec<String>),
    /// `{ all = [...] }`.
    All(Vec<Cond>),
    /// `{ any = [...] }`.
    Any(Vec<Cond>),
    /// `{ not = cond }`.
    Not(Box<Cond>),
    /// `{ fhirpath = "..." }`: a Boolean FHIRPath expression over `%column` variables.
    FhirPath(Arc<Expression>),
}

/// What a column value becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    /// The trimmed text.
    String,
    /// A whole number.
    Integer,
    /// A decimal number (the source's decimal separator).
    Decimal,
    /// A date (`YYYY-MM-DD`) read in the source's date formats.
    Date,
    /// The year of a date, or a four-digit year (`YYYY`).
    Year,
    /// `true`/`false` from yes/no words.
    Boolean,
}

/// `{ column = ... }` and its options.
#[derive(Debug, Clone)]
pub struct ColumnSpec {
    /// The column (may contain `{n}`).
    pub column: String,
    /// Conversion.
    pub as_: As,
    /// Unit conversion: from this unit ...
    pub unit: Option<String>,
    /// ... to this one.
    pub to: Option<String>,
    /// A lookup table name.
    pub lookup: Option<String>,
    /// A ConceptMap name: the value becomes a Coding.
    pub translate: Option<String>,
    /// Missing value is an error.
    pub required: bool,
    /// Value when the cell is empty.
    pub default: Option<Box<Node>>,
    /// `{ path = "EXPR" }` in a rule of a FHIR source: the value is this FHIRPath over the
    /// row's resource (`column` then holds the expression's text).
    pub path: Option<Arc<Expression>>,
}

/// A value rule.
#[derive(Debug, Clone)]
pub enum Spec {
    /// A literal.
    Const(Lit),
    /// A column value.
    Column(ColumnSpec),
    /// A string from a template.
    Template(Template),
    /// A FHIRPath expression over `%column` variables (and `%n`).
    FhirPath(Arc<Expression>, String),
    /// A conditional.
    If(Cond, Box<Node>, Option<Box<Node>>),
    /// A reference to the resource another rule produces for this row.
    Ref(String),
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// String.
    Str(String),
    /// Number, as written.
    Num(String),
    /// Boolean.
    Bool(bool),
}

/// A node of a resource's content: mirrors FHIR JSON, with rules at the leaves.
#[derive(Debug, Clone)]
pub enum Node {
    /// A JSON object: members in file order.
    Object(Vec<(String, Node)>, usize),
    /// A JSON array.
    Array(Vec<Node>, usize),
    /// A rule.
    Value(Spec, usize),
}

impl Node {
    /// The mapping line of the node.
    pub fn line(&self) -> usize {
        match self {
            Node::Object(_, l) | Node::Array(_, l) | Node::Value(_, l) => *l,
        }
    }
}

/// A `[[resources]]` rule: which resource each row (or each numbered group) produces.
#[derive(Debug, Clone)]
pub struct ResourceRule {
    /// Its name (for `{ ref = ... }`).
    pub name: String,
    /// Line of `[[resources]]`.
    pub line: usize,
    /// Index of the source whose rows produce it.
    pub from: usize,
    /// Resource type.
    pub type_name: String,
    /// The study profile it claims (canonical URL).
    pub profile: String,
    /// Line of `profile`.
    pub profile_line: usize,
    /// The id template.
    pub id: Template,
    /// Line of `id`.
    pub id_line: usize,
    /// Values of `{n}` (empty: produced once per row).
    pub repeat: Vec<u32>,
    /// Produced only when this holds.
    pub when: Option<Cond>,
    /// The content (an object node).
    pub content: Vec<(String, Node)>,
}

/// Reads a mapping file and the ConceptMaps it names.
///
/// # Errors
/// When the file cannot be read or is not a valid mapping; the error names the line.
pub fn load(path: &Path) -> Result<Mapping, MapError> {
    let text = std::fs::read_to_string(path).map_err(|source| MapError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses mapping text; `path` names the file and anchors relative ConceptMap paths.
///
/// # Errors
/// The first problem, with its line.
pub fn parse(text: &str, path: &Path) -> Result<Mapping, MapError> {
    let file_name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    let r = Reader {
        lines: LineIndex::new(text),
        file: file_name.clone(),
    };
    let root = DeTable::parse(text).map_err(|e| MapError::Mapping {
        file: file_name.clone(),
        line: e.span().map_or(1, |s| r.lines.line(s.start)),
        message: e.message().to_string(),
    })?;
    let root_line = r.lines.line(root.span().start);
    let top = Table {
        r: &r,
        t: root.get_ref(),
        line: root_line,
    };
    top.only(&[
        "mapping",
        "constants",
        "sources",
        "lookups",
        "conceptmaps",
        "resources",
    ])?;

    let head = top.req_table("mapping")?;
    head.only(&["name", "description", "base"])?;
    let name = head.req_str("name")?.0;
    let base = head
        .opt_str("base")?
        .map_or_else(|| "https://gateway.a-imagio.eu/fhir".to_string(), |s| s.0);

    let mut constants = BTreeMap::new();
    if let Some(c) = top.opt_table("constants")? {
        for (k, _) in c.entries() {
            constants.insert(k.to_string(), c.req_str(k)?.0);
        }
    }

    let Some(src_table) = top.opt_table("sources")? else {
        return Err(r.err(
            top.line,
            "no [sources.NAME] table: a mapping needs a source",
        ));
    };
    let src_entries = src_table.entries();
    let source_names: Vec<String> = src_entries.iter().map(|(k, _)| k.to_string()).collect();
    let mut sources = Vec::new();
    for (k, _) in &src_entries {
        sources.push(r.source(k, &src_table.req_table(k)?, &source_names)?);
    }

    let mut lookups = HashMap::default();
    if let Some(l) = top.opt_table("lookups")? {
        for (k, _) in l.entries() {
            let t = l.req_table(k)?;
            let mut entries = HashMap::default();
            for (key, _) in t.entries() {
                entries.insert(key.trim().to_lowercase(), t.req_str(key)?.0);
            }
            lookups.insert(
                k.to_string(),
                Lookup {
                    line: t.line,
                    entries,
                },
            );
        }
    }

    let mut conceptmaps = HashMap::default();
    if let Some(c) = top.opt_table("conceptmaps")? {
        let dir = path.parent().unwrap_or(Path::new("."));
        for (k, _) in c.entries() {
            let (file, line) = c.req_str(k)?;
            let mut cm = ConceptMap::load(&dir.join(&file)).map_err(|m| r.err(line, &m))?;
            cm.line = line;
            conceptmaps.insert(k.to_string(), cm);
        }
    }

    let mut resources = Vec::new();
    let Some(list) = top.get("resources") else {
        return Err(r.err(
            top.line,
            "no [[resources]]: a mapping must produce something",
        ));
    };
    let DeValue::Array(items) = list.get_ref() else {
        return Err(r.err(
            r.lines.line(list.span().start),
            "resources must be an array of tables ([[resources]])",
        ));
    };
    for item in items {
        let line = r.lines.line(item.span().start);
        let t = r.table(item.get_ref(), line)?;
        resources.push(r.resource(&t, &sources)?);
    }
    let mapping = Mapping {
        path: path.to_path_buf(),
        file_name,
        name,
        base,
        constants,
        sources,
        lookups,
        conceptmaps,
        resources,
    };
    check_references(&mapping, &r)?;
    Ok(mapping)
}

/// Checks what can only be checked once everything is read: rule names unique, refs,
/// lookups and ConceptMaps known.
fn check_references(m: &Mapping, r: &Reader) -> Result<(), MapError> {
    let mut seen = HashMap::new();
    for res in &m.resources {
        if let Some(first) = seen.insert(res.name.as_str(), res.line) {
            return Err(r.err(
                res.line,
                &format!(
                    "resource name '{}' is used twice (first on line {first})",
                    res.name
                ),
            ));
        }
    }
    for src in &m.sources {
        for c in src.fhir.iter().flat_map(|f| &f.columns) {
            if let Some(l) = c.lookup.as_ref().filter(|l| !m.lookups.contains_key(*l)) {
                return Err(r.err(c.line, &format!("lookup '{l}': no [lookups.{l}] table")));
            }
        }
    }
    for res in &m.resources {
        let mut problem = None;
        visit_specs(&res.content, &mut |spec, line| {
            if problem.is_some() {
                return;
            }
            match spec {
                Spec::Ref(name) if !seen.contains_key(name.as_str()) => {
                    problem = Some((line, format!("ref '{name}': no resource of that name")));
                }
                Spec::Column(c) => {
                    if c.path.is_some() && m.sources[res.from].fhir.is_none() {
                        problem = Some((
                            line,
                            format!(
                                "'path' reads a FHIR resource, but source '{}' is CSV (use 'column')",
                                m.sources[res.from].name
                            ),
                        ));
                    }
                    if let Some(l) = c.lookup.as_ref().filter(|l| !m.lookups.contains_key(*l)) {
                        problem = Some((line, format!("lookup '{l}': no [lookups.{l}] table")));
                    }
                    if let Some(t) = c
                        .translate
                        .as_ref()
                        .filter(|t| !m.conceptmaps.contains_key(*t))
                    {
                        problem = Some((
                            line,
                            format!("translate '{t}': no such entry in [conceptmaps]"),
                        ));
                    }
                }
                _ => {}
            }
        });
        if let Some((line, msg)) = problem {
            return Err(r.err(line, &msg));
        }
    }
    Ok(())
}

/// Calls `f` on every rule in `content`, descending into conditionals and defaults.
pub fn visit_specs<'a>(content: &'a [(String, Node)], f: &mut impl FnMut(&'a Spec, usize)) {
    fn node<'a>(n: &'a Node, f: &mut impl FnMut(&'a Spec, usize)) {
        match n {
            Node::Object(members, _) => members.iter().for_each(|(_, n)| node(n, f)),
            Node::Array(items, _) => items.iter().for_each(|n| node(n, f)),
            Node::Value(spec, line) => {
                f(spec, *line);
                match spec {
                    Spec::If(_, a, b) => {
                        node(a, f);
                        if let Some(b) = b {
                            node(b, f);
                        }
                    }
                    Spec::Column(c) => {
                        if let Some(d) = &c.default {
                            node(d, f);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    content.iter().for_each(|(_, n)| node(n, f));
}

/// Byte offset to line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }
}

/// Walks the spanned tree and makes errors with lines.
struct Reader {
    lines: LineIndex,
    file: String,
}

/// A TOML table with its line, entries in file order.
struct Table<'r, 'i> {
    r: &'r Reader,
    t: &'r DeTable<'i>,
    line: usize,
}

type Entry<'r, 'i> = (&'r str, &'r Spanned<DeValue<'i>>);

impl<'r, 'i> Table<'r, 'i> {
    fn entries(&self) -> Vec<Entry<'r, 'i>> {
        let mut v: Vec<(usize, Entry<'r, 'i>)> = self
            .t
            .iter()
            .map(|(k, v)| (k.span().start, (k.get_ref().as_ref(), v)))
            .collect();
        v.sort_by_key(|(s, _)| *s);
        v.into_iter().map(|(_, e)| e).collect()
    }

    fn get(&self, key: &str) -> Option<&'r Spanned<DeValue<'i>>> {
        self.t
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    fn key_line(&self, key: &str) -> usize {
        self.t
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map_or(self.line, |(k, _)| self.r.lines.line(k.span().start))
    }

    fn only(&self, allowed: &[&str]) -> Result<(), MapError> {
        for (k, v) in self.entries() {
            if !allowed.contains(&k) {
                return Err(self.r.err(
                    self.r.lines.line(v.span().start),
                    &format!(
                        "unknown key '{k}' (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn opt_str(&self, key: &str) -> Result<Option<(String, usize)>, MapError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref() {
                DeValue::String(s) => Ok(Some((s.to_string(), self.key_line(key)))),
                other => Err(self.r.err(
                    self.key_line(key),
                    &format!("'{key}' must be a string, not a {}", other.type_str()),
                )),
            },
        }
    }

    fn req_str(&self, key: &str) -> Result<(String, usize), MapError> {
        self.opt_str(key)?
            .ok_or_else(|| self.r.err(self.line, &format!("'{key}' is required here")))
    }

    fn opt_table(&self, key: &str) -> Result<Option<Table<'r, 'i>>, MapError> {
        self.get(key)
            .map(|v| self.r.table(v.get_ref(), self.key_line(key)))
            .transpose()
    }

    fn req_table(&self, key: &str) -> Result<Table<'r, 'i>, MapError> {
        self.opt_table(key)?
            .ok_or_else(|| self.r.err(self.line, &format!("[{key}] is required")))
    }

    /// A string or an array of strings.
    fn str_list(&self, key: &str) -> Result<Option<(Vec<String>, usize)>, MapError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let line = self.key_line(key);
        let list = match v.get_ref() {
            DeValue::String(s) => vec![s.to_string()],
            DeValue::Array(items) => items
                .iter()
                .map(|i| match i.get_ref() {
                    DeValue::String(s) => Ok(s.to_string()),
                    other => Err(self.r.err(
                        line,
                        &format!("'{key}' must list strings, not a {}", other.type_str()),
                    )),
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(self.r.err(
                    line,
                    &format!(
                        "'{key}' must be a string or a list of strings, not a {}",
                        other.type_str()
                    ),
                ))
            }
        };
        Ok(Some((list, line)))
    }
}

impl Reader {
    fn err(&self, line: usize, message: &str) -> MapError {
        MapError::Mapping {
            file: self.file.clone(),
            line,
            message: message.to_string(),
        }
    }

    fn table<'r, 'i>(&'r self, v: &'r DeValue<'i>, line: usize) -> Result<Table<'r, 'i>, MapError> {
        match v {
            DeValue::Table(t) => Ok(Table { r: self, t, line }),
            other => Err(self.err(
                line,
                &format!("expected a table, found a {}", other.type_str()),
            )),
        }
    }

    fn char_option(&self, t: &Table, key: &str, default: char) -> Result<char, MapError> {
        match t.opt_str(key)? {
            None => Ok(default),
            Some((s, line)) => {
                let s = if s == "\\t" || s == "tab" {
                    "\t".into()
                } else {
                    s
                };
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Ok(c),
                    _ => Err(self.err(line, &format!("'{key}' must be one character"))),
                }
            }
        }
    }

    fn source(&self, name: &str, t: &Table, names: &[String]) -> Result<Source, MapError> {
        let fhir = match t.opt_str("format")? {
            None => false,
            Some((f, line)) => match f.to_lowercase().as_str() {
                "csv" => false,
                "fhir" => true,
                _ => return Err(self.err(line, &format!("format '{f}' is not one of csv, fhir"))),
            },
        };
        let fhir = if fhir {
            Some(self.fhir_source(t)?)
        } else {
            None
        };
        let csv_keys: &[&str] = if fhir.is_some() {
            &["files", "format", "select", "key", "columns", "join"]
        } else {
            &[
                "format",
                "files",
                "delimiter",
                "quote",
                "encoding",
                "decimal",
                "dates",
                "yy-pivot",
                "empty",
                "key",
                "columns",
                "join",
            ]
        };
        t.only(csv_keys)?;
        let files = t.opt_str("files")?.map_or_else(|| "*".to_string(), |s| s.0);
        let ascii = |c: char, key: &str| -> Result<u8, MapError> {
            u8::try_from(c)
                .ok()
                .filter(u8::is_ascii)
                .ok_or_else(|| self.err(t.key_line(key), &format!("'{key}' must be ASCII")))
        };
        let delimiter = ascii(self.char_option(t, "delimiter", ',')?, "delimiter")?;
        let quote = ascii(self.char_option(t, "quote", '"')?, "quote")?;
        let decimal = self.char_option(t, "decimal", '.')?;
        if decimal != '.' && decimal != ',' {
            return Err(self.err(t.key_line("decimal"), "'decimal' must be \".\" or \",\""));
        }
        let encoding = match t.opt_str("encoding")? {
            None => Encoding::Utf8,
            Some((e, line)) => match e.to_lowercase().replace('_', "-").as_str() {
                "utf-8" | "utf8" | "utf-8-bom" | "utf-8-sig" => Encoding::Utf8,
                "latin-1" | "latin1" | "iso-8859-1" | "windows-1252" | "cp1252" => {
                    Encoding::Windows1252
                }
                _ => {
                    return Err(self.err(
                        line,
                        &format!(
                            "encoding '{e}' is not one of utf-8, utf-8-bom, latin-1, windows-1252"
                        ),
                    ))
                }
            },
        };
        let dates = match t.str_list("dates")? {
            None => vec![DateFormat::parse("yyyy-mm-dd").map_err(|m| self.err(t.line, &m))?],
            Some((list, line)) => list
                .iter()
                .map(|f| DateFormat::parse(f).map_err(|m| self.err(line, &m)))
                .collect::<Result<_, _>>()?,
        };
        let yy_pivot = match t.get("yy-pivot").map(|v| v.get_ref()) {
            None => 50,
            Some(DeValue::Integer(i)) => i
                .as_str()
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| self.err(t.key_line("yy-pivot"), "'yy-pivot' must be 0-100"))?,
            Some(_) => return Err(self.err(t.key_line("yy-pivot"), "'yy-pivot' must be a number")),
        };
        let empty = t
            .str_list("empty")?
            .map(|(l, _)| l.iter().map(|s| s.trim().to_lowercase()).collect())
            .unwrap_or_default();
        let mut columns = Vec::new();
        if fhir.is_some() {
            // FHIR columns are expressions, read by `fhir_source`.
        } else if let Some(c) = t.opt_table("columns")? {
            for (k, _) in c.entries() {
                let (aliases, line) = c.str_list(k)?.unwrap_or_default();
                columns.push(Column {
                    name: k.to_string(),
                    aliases,
                    line,
                });
            }
        }
        let key = t.str_list("key")?.map(|(k, _)| k).unwrap_or_default();
        let mut joins = Vec::new();
        if let Some(j) = t.opt_table("join")? {
            for (other, _) in j.entries() {
                let line = j.key_line(other);
                let idx = names
                    .iter()
                    .position(|n| n == other)
                    .ok_or_else(|| self.err(line, &format!("join: no source named '{other}'")))?;
                if other == name {
                    return Err(self.err(line, "a source cannot join itself"));
                }
                let on = j.str_list(other)?.map(|(l, _)| l).unwrap_or_default();
                if on.is_empty() {
                    return Err(self.err(line, "join needs at least one column"));
                }
                joins.push(Join {
                    source: idx,
                    on,
                    line,
                });
            }
        }
        Ok(Source {
            name: name.to_string(),
            line: t.line,
            files,
            dialect: Dialect {
                delimiter,
                quote,
                encoding,
                decimal,
                dates,
                yy_pivot,
                empty,
            },
            columns,
            key,
            joins,
            fhir,
        })
    }

    /// `select` and the FHIRPath `columns` of a FHIR source.
    fn fhir_source(&self, t: &Table) -> Result<FhirSource, MapError> {
        let compile = |text: &str, line: usize| {
            Expression::compile(text)
                .map(Arc::new)
                .map_err(|e| self.err(line, &format!("fhirpath: {e}")))
        };
        let select = match t.opt_str("select")? {
            None => None,
            Some((text, line)) => Some((compile(&text, line)?, text, line)),
        };
        let mut columns = Vec::new();
        if let Some(c) = t.opt_table("columns")? {
            for (k, v) in c.entries() {
                let line = c.key_line(k);
                let (text, lookup) = match v.get_ref() {
                    DeValue::String(s) => (s.to_string(), None),
                    DeValue::Table(_) => {
                        let ct = self.table(v.get_ref(), line)?;
                        ct.only(&["path", "lookup"])?;
                        (ct.req_str("path")?.0, ct.opt_str("lookup")?.map(|l| l.0))
                    }
                    other => {
                        return Err(self.err(
                            line,
                            &format!(
                                "a FHIR column is a FHIRPath string or {{ path = \"...\", lookup = \"...\" }}, not a {}",
                                other.type_str()
                            ),
                        ))
                    }
                };
                columns.push(FhirColumn {
                    name: k.to_string(),
                    expr: compile(&text, line)?,
                    text,
                    lookup,
                    line,
                });
            }
        }
        Ok(FhirSource { select, columns })
    }

    fn resource(&self, t: &Table, sources: &[Source]) -> Result<ResourceRule, MapError> {
        t.only(&[
            "name", "from", "type", "profile", "id", "repeat", "when", "content",
        ])?;
        let (type_name, type_line) = t.req_str("type")?;
        if !crate::model::schema::is_resource_type(&type_name) {
            return Err(self.err(
                type_line,
                &format!("'{type_name}' is not an R4 resource type"),
            ));
        }
        let name = t
            .opt_str("name")?
            .map_or_else(|| type_name.to_lowercase(), |s| s.0);
        let from = match t.opt_str("from")? {
            Some((f, line)) => sources
                .iter()
                .position(|s| s.name == f)
                .ok_or_else(|| self.err(line, &format!("from: no source named '{f}'")))?,
            None if sources.len() == 1 => 0,
            None => {
                return Err(self.err(
                    t.line,
                    "'from' is required when the mapping has several sources",
                ))
            }
        };
        let (profile, profile_line) = t.req_str("profile")?;
        let profile = if profile.contains('/') {
            profile
        } else {
            format!(
                "{}/StructureDefinition/{profile}",
                crate::profiles::CANONICAL_BASE
            )
        };
        let (id, id_line) = t.req_str("id")?;
        let id = Template::parse(&id).map_err(|m| self.err(id_line, &m))?;
        let repeat = match t.get("repeat").map(|v| v.get_ref()) {
            None => Vec::new(),
            Some(DeValue::Integer(i)) => {
                let n: u32 = i.as_str().parse().map_err(|_| {
                    self.err(t.key_line("repeat"), "'repeat' must be a positive number")
                })?;
                (1..=n).collect()
            }
            Some(DeValue::Array(items)) => items
                .iter()
                .map(|i| match i.get_ref() {
                    DeValue::Integer(n) => n.as_str().parse::<u32>().ok(),
                    _ => None,
                })
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| {
                    self.err(t.key_line("repeat"), "'repeat' must list whole numbers")
                })?,
            Some(_) => {
                return Err(self.err(
                    t.key_line("repeat"),
                    "'repeat' must be a count or a list of numbers",
                ))
            }
        };
        let when = t
            .get("when")
            .map(|v| self.cond(v.get_ref(), t.key_line("when")))
            .transpose()?;
        let content = match t.opt_table("content")? {
            Some(c) => self.members(&c)?,
            None => Vec::new(),
        };
        if let Some((k, n)) = content
            .iter()
            .find(|(k, _)| matches!(k.as_str(), "resourceType" | "id" | "meta"))
        {
            return Err(self.err(
                n.line(),
                &format!("'{k}' is set from type, id and profile; remove it from the content"),
            ));
        }
        Ok(ResourceRule {
            name,
            line: t.line,
            from,
            type_name,
            profile,
            profile_line,
            id,
            id_line,
            repeat,
            when,
            content,
        })
    }

    fn members(&self, t: &Table) -> Result<Vec<(String, Node)>, MapError> {
        let mut out = Vec::new();
        for (k, v) in t.entries() {
            let line = t.key_line(k);
            out.push((k.to_string(), self.node(v, line)?));
        }
        Ok(out)
    }

    fn node(&self, v: &Spanned<DeValue>, line: usize) -> Result<Node, MapError> {
        let line = self.lines.line(v.span().start).max(line);
        Ok(match v.get_ref() {
            DeValue::String(s) => Node::Value(Spec::Const(Lit::Str(s.to_string())), line),
            DeValue::Integer(i) => Node::Value(Spec::Const(Lit::Num(i.as_str().into())), line),
            DeValue::Float(f) => Node::Value(Spec::Const(Lit::Num(f.as_str().into())), line),
            DeValue::Boolean(b) => Node::Value(Spec::Const(Lit::Bool(*b)), line),
            DeValue::Datetime(d) => Node::Value(Spec::Const(Lit::Str(d.to_string())), line),
            DeValue::Array(items) => Node::Array(
                items
                    .iter()
                    .map(|i| self.node(i, line))
                    .collect::<Result<_, _>>()?,
                line,
            ),
            DeValue::Table(t) => {
                let t = Table { r: self, t, line };
                match self.spec(&t)? {
                    Some(spec) => Node::Value(spec, line),
                    None => Node::Object(self.members(&t)?, line),
                }
            }
        })
    }

    /// A table is a rule when it has one of the rule keys; otherwise it is a JSON object.
    fn spec(&self, t: &Table) -> Result<Option<Spec>, MapError> {
        let line = t.line;
        if t.get("column").is_some() || t.get("path").is_some() {
            t.only(&[
                if t.get("column").is_some() {
                    "column"
                } else {
                    "path"
                },
                "as",
                "unit",
                "to",
                "lookup",
                "translate",
                "required",
                "default",
            ])?;
            let as_ = match t.opt_str("as")? {
                None => As::String,
                Some((a, l)) => match a.as_str() {
                    "string" => As::String,
                    "integer" => As::Integer,
                    "decimal" => As::Decimal,
                    "date" => As::Date,
                    "year" => As::Year,
                    "boolean" => As::Boolean,
                    _ => {
                        return Err(self.err(
                            l,
                            &format!(
                            "as = '{a}': expected string, integer, decimal, date, year or boolean"
                        ),
                        ))
                    }
                },
            };
            let unit = t.opt_str("unit")?;
            let to = t.opt_str("to")?;
            for (u, l) in unit.iter().chain(to.iter()) {
                if !known_unit(u) {
                    return Err(self.err(
                        *l,
                        &format!(
                            "unknown unit '{u}' (known: mm cm m mg g kg s min h d W kW J kJ mL L)"
                        ),
                    ));
                }
            }
            if unit.is_some() != to.is_some() {
                return Err(self.err(line, "'unit' and 'to' go together"));
            }
            let required = match t.get("required").map(|v| v.get_ref()) {
                None => false,
                Some(DeValue::Boolean(b)) => *b,
                Some(_) => return Err(self.err(line, "'required' must be true or false")),
            };
            let default = t
                .get("default")
                .map(|v| self.node(v, t.key_line("default")).map(Box::new))
                .transpose()?;
            let (column, path) = match t.opt_str("path")? {
                Some((text, l)) => {
                    let e = Expression::compile(&text)
                        .map_err(|e| self.err(l, &format!("fhirpath: {e}")))?;
                    (text, Some(Arc::new(e)))
                }
                None => (t.req_str("column")?.0, None),
            };
            return Ok(Some(Spec::Column(ColumnSpec {
                column,
                path,
                as_: if unit.is_some() && as_ == As::String {
                    As::Decimal
                } else {
                    as_
                },
                unit: unit.map(|u| u.0),
                to: to.map(|u| u.0),
                lookup: t.opt_str("lookup")?.map(|s| s.0),
                translate: t.opt_str("translate")?.map(|s| s.0),
                required,
                default,
            })));
        }
        if let Some(v) = t.get("const") {
            t.only(&["const"])?;
            return Ok(Some(match self.node(v, line)? {
                Node::Value(Spec::Const(l), _) => Spec::Const(l),
                _ => return Err(self.err(line, "'const' must be a string, number or boolean")),
            }));
        }
        if t.get("template").is_some() {
            t.only(&["template"])?;
            let (s, l) = t.req_str("template")?;
            return Ok(Some(Spec::Template(
                Template::parse(&s).map_err(|m| self.err(l, &m))?,
            )));
        }
        if t.get("fhirpath").is_some() {
            t.only(&["fhirpath"])?;
            let (s, l) = t.req_str("fhirpath")?;
            let e = Expression::compile(&s).map_err(|e| self.err(l, &format!("fhirpath: {e}")))?;
            return Ok(Some(Spec::FhirPath(Arc::new(e), s)));
        }
        if let Some(c) = t.get("if") {
            t.only(&["if", "then", "else"])?;
            let cond = self.cond(c.get_ref(), t.key_line("if"))?;
            let then = t
                .get("then")
                .ok_or_else(|| self.err(line, "'if' needs 'then'"))?;
            let then = Box::new(self.node(then, t.key_line("then"))?);
            let els = t
                .get("else")
                .map(|v| self.node(v, t.key_line("else")).map(Box::new))
                .transpose()?;
            return Ok(Some(Spec::If(cond, then, els)));
        }
        if t.get("ref").is_some() {
            t.only(&["ref"])?;
            return Ok(Some(Spec::Ref(t.req_str("ref")?.0)));
        }
        // Options without their rule key are a typo, not FHIR content: no FHIR element
        // is called so.
        if let Some(k) = ["lookup", "translate", "as", "to", "then", "else"]
            .iter()
            .find(|k| t.get(k).is_some())
        {
            return Err(self.err(
                t.key_line(k),
                &format!(
                    "'{k}' belongs to a rule, but this table has no column, template, const, fhirpath, if or ref key"
                ),
            ));
        }
        Ok(None)
    }

    fn cond(&self, v: &DeValue, line: usize) -> Result<Cond, MapError> {
        let t = self.table(v, line)?;
        let list = |key: &str| -> Result<Vec<Cond>, MapError> {
            match t.get(key).map(|v| v.get_ref()) {
                Some(DeValue::Array(items)) => items
                    .iter()
                    .map(|i| self.cond(i.get_ref(), self.lines.line(i.span().start)))
                    .collect(),
                _ => Err(self.err(line, &format!("'{key}' must list conditions"))),
            }
        };
        if t.get("present").is_some() {
            t.only(&["present"])?;
            return Ok(Cond::Present(t.req_str("present")?.0));
        }
        if t.get("column").is_some() {
            t.only(&["column", "equals", "in"])?;
            let values = match (t.opt_str("equals")?, t.str_list("in")?) {
                (Some((v, _)), None) => vec![v],
                (None, Some((l, _))) => l,
                _ => {
                    return Err(self.err(line, "a column condition needs 'equals' or 'in'"));
                }
            };
            return Ok(Cond::In(
                t.req_str("column")?.0,
                values.iter().map(|v| v.trim().to_lowercase()).collect(),
            ));
        }
        if t.get("all").is_some() {
            t.only(&["all"])?;
            return Ok(Cond::All(list("all")?));
        }
        if t.get("any").is_some() {
            t.only(&["any"])?;
            return Ok(Cond::Any(list("any")?));
        }
        if let Some(n) = t.get("not") {
            t.only(&["not"])?;
            return Ok(Cond::Not(Box::new(self.cond(n.get_ref(), line)?)));
        }
        if t.get("fhirpath").is_some() {
            t.only(&["fhirpath"])?;
            let (s, l) = t.req_str("fhirpath")?;
            let e = Expression::compile(&s).map_err(|e| self.err(l, &format!("fhirpath: {e}")))?;
            return Ok(Cond::FhirPath(Arc::new(e)));
        }
        Err(self.err(
            line,
            "a condition is one of { present = COL }, { column = COL, equals = V | in = [...] }, { all = [...] }, { any = [...] }, { not = ... }, { fhirpath = EXPR }",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Mapping, MapError> {
        parse(text, Path::new("/nowhere/m.toml"))
    }

    const MINIMAL: &str = r#"
[mapping]
name = "t"

[sources.rows]
delimiter = ";"
decimal = ","
dates = ["dd-mm-yyyy"]
empty = ["NA"]
columns = { pid = ["Patientnummer", "pid"] }

[[resources]]
type = "Patient"
profile = "imagio-subject"
id = "p-{pid}"
[resources.content]
gender = { column = "sex", lookup = "sex" }
identifier = [{ system = "https://a-imagio.eu/fhir/sid/subject", value = { template = "AIM-{pid}" } }]

[lookups.sex]
M = "male"
"#;

    #[test]
    fn a_minimal_mapping_reads_with_lines() {
        let m = parse_str(MINIMAL).unwrap();
        assert_eq!(m.sources[0].dialect.delimiter, b';');
        assert_eq!(m.sources[0].columns[0].aliases, ["Patientnummer", "pid"]);
        let r = &m.resources[0];
        assert_eq!(r.name, "patient");
        assert_eq!(
            r.profile,
            "https://a-imagio.eu/fhir/StructureDefinition/imagio-subject"
        );
        assert_eq!(r.content[0].0, "gender");
        assert_eq!(r.content[0].1.line(), 17);
        assert_eq!(r.content[1].0, "identifier");
        assert!(
            matches!(&r.content[1].1, Node::Array(items, 18) if matches!(&items[0], Node::Object(m, _) if m.len() == 2))
        );
    }

    #[test]
    fn mistakes_name_their_line() {
        let bad = MINIMAL.replace("gender = { column", "gender = { colum");
        let e = parse_str(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("m.toml:17: 'lookup' belongs to a rule"),
            "{e}"
        );
        let bad = MINIMAL.replace("lookup = \"sex\"", "lookup = \"sex\", as = \"dat\"");
        let e = parse_str(&bad).unwrap_err().to_string();
        assert_eq!(
            e,
            "m.toml:17: as = 'dat': expected string, integer, decimal, date, year or boolean"
        );
        let bad = MINIMAL.replace("delimiter = \";\"", "delimiter = \";\"\nseparator = \";\"");
        let e = parse_str(&bad).unwrap_err().to_string();
        assert!(e.starts_with("m.toml:7: unknown key 'separator'"), "{e}");
        let bad = MINIMAL.replace("lookup = \"sex\"", "lookup = \"gender\"");
        let e = parse_str(&bad).unwrap_err().to_string();
        assert_eq!(e, "m.toml:17: lookup 'gender': no [lookups.gender] table");
        let bad = MINIMAL.replace("type = \"Patient\"", "type = \"Patiënt\"");
        assert!(parse_str(&bad)
            .unwrap_err()
            .to_string()
            .contains("not an R4 resource type"));
        let bad = MINIMAL.replace("gender = {", "id = \"x\"\ngender = {");
        let e = parse_str(&bad).unwrap_err().to_string();
        assert!(e.starts_with("m.toml:17: 'id' is set from type"), "{e}");
        let bad = MINIMAL.replace("dates = [\"dd-mm-yyyy\"]", "dates = [\"dd-mm\"]");
        assert!(parse_str(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("m.toml:8:"));
    }

    #[test]
    fn templates() {
        let t = Template::parse("AIM-{const.site}-{pid}{{x}}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Text("AIM-".into()),
                Part::Column("const.site".into()),
                Part::Text("-".into()),
                Part::Column("pid".into()),
                Part::Text("{x}".into()),
            ]
        );
        assert!(Template::parse("a{b").is_err());
        assert!(Template::parse("a{}").is_err());
    }
}
