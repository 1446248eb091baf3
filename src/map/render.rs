//! Resource rules compiled once per run into rendering plans: the produced JSON text is
//! written directly, member by member, in the layout of [`super::out::write_at`] (two
//! spaces per level, the resource [`super::ENTRY_DEPTH`] levels deep), without building a
//! value tree first. Every part of a rule that does not depend on the row (constants,
//! objects and arrays of constants, member keys and indentation) is rendered once here;
//! a row only adds its values and their escaping. A member whose value cannot be made is
//! cut off the text again, so a resource lacks it exactly as before.

use super::out::Prov;
use super::spec::{ColumnSpec, Cond, Lit, Node, Part, ResourceRule, Spec, Template};
use crate::fhirpath::Expression;
use crate::model::json::write_str;
use std::collections::{BTreeMap, HashMap};

/// The mapping's `[constants]`.
type Constants = BTreeMap<String, String>;

/// Text rendered once: a value the same for every row, and the provenance of each line
/// it adds after its first.
#[derive(Debug, Clone)]
pub(super) struct Fixed {
    /// The value's JSON text (its first line not indented).
    pub text: String,
    /// The provenance of each further line.
    pub lines: Vec<Prov>,
    /// The provenance of the value.
    pub prov: Prov,
}

/// An object or array: its items, each with the text before it (new line, indentation
/// and, for an object, the quoted key).
///
/// An object or array whose only item is an object or array is one group: its text
/// opens both and closes both (they are there or not together).
#[derive(Debug)]
pub(super) struct Group<'m> {
    /// `{` or `[`, or, for groups folded into one, the text up to the inner group's
    /// items.
    pub open: String,
    /// The provenance of each line `open` starts.
    pub open_lines: Vec<Prov>,
    /// The items in order.
    pub items: Vec<Item<'m>>,
    /// New line, indentation and the closing bracket (for groups folded into one, each
    /// closing line).
    pub close: String,
    /// The provenance of each line `close` starts.
    pub close_lines: Vec<Prov>,
    /// The provenance of the group (its closing line).
    pub prov: Prov,
    /// The resource itself: each item is a content member (for diagnostics).
    pub top: bool,
}

/// An item of a [`Group`].
#[derive(Debug)]
pub(super) struct Item<'m> {
    /// A comma, then new line, indentation and `"key": ` (objects); the first item written
    /// skips the comma.
    pub prefix: String,
    /// Its value.
    pub plan: Plan<'m>,
    /// For the resource's items: the content member it is (`None` for the head).
    pub member: Option<&'m str>,
}

/// How a node of a rule is rendered.
#[derive(Debug)]
pub(super) enum Plan<'m> {
    /// Always the same text.
    Fixed(Fixed),
    /// Consecutive items of a group that are always there, written as one: a comma, then
    /// each item's prefix and value, with the commas between them (the first item written
    /// skips the leading comma); `lines` holds the line of each item followed by the
    /// further lines of its value.
    Run(Fixed),
    /// Never anything (an empty object or array, a reference to no rule).
    Nothing,
    /// An object or array with items that depend on the row.
    Group(Box<Group<'m>>),
    /// The resource's own id.
    Id(Prov),
    /// A template with column references.
    Template(&'m Template, usize, Prov),
    /// A column value, with the plan of its default (at the same depth).
    Column {
        /// The rule.
        spec: &'m ColumnSpec,
        /// Its mapping line.
        line: usize,
        /// Its provenance (without the cell).
        prov: Prov,
        /// The depth of the value.
        depth: usize,
        /// The default's plan.
        default: Option<Box<Plan<'m>>>,
    },
    /// A conditional value.
    If(&'m Cond, usize, Box<Plan<'m>>, Option<Box<Plan<'m>>>),
    /// A reference to another rule's resource of the row (rule index, line, provenance,
    /// and the text around its value).
    Ref(usize, usize, Prov, Box<RefText>),
    /// A FHIRPath value (line, provenance, depth).
    FhirPath(&'m Expression, usize, Prov, usize),
}

/// The text around a reference's value, the same for every row.
#[derive(Debug)]
pub(super) struct RefText {
    /// `{`, a new line, the indentation and `"reference": `; when `direct`, followed by
    /// `"`, the target's type and `/`.
    pub open: String,
    /// A new line, the indentation and `}`; when `direct`, led by `"`.
    pub close: String,
    /// Whether the id goes between `open` and `close` as it is: the type needs no
    /// escaping, and an id holds letters, digits, `-` and `.` only.
    pub direct: bool,
}

/// Where a resource's text is written: the text, and the provenance of each of its lines
/// when `keep` (validation needs them; the Bundle alone does not).
#[derive(Debug, Default)]
pub(super) struct Sink {
    /// The text.
    pub text: String,
    /// The provenance of each line (when `keep`).
    pub lines: Vec<Prov>,
    /// Whether lines are recorded.
    pub keep: bool,
}

impl Sink {
    /// An empty sink.
    pub fn new(keep: bool) -> Sink {
        Sink {
            text: String::with_capacity(4096),
            lines: Vec::with_capacity(64),
            keep,
        }
    }

    /// Empties it, keeping its allocations.
    pub fn clear(&mut self) {
        self.text.clear();
        self.lines.clear();
    }

    /// The current end (text, lines), to cut back to.
    pub fn mark(&self) -> (usize, usize) {
        (self.text.len(), self.lines.len())
    }

    /// Cuts back to a mark.
    pub fn reset(&mut self, (text, lines): (usize, usize)) {
        self.text.truncate(text);
        self.lines.truncate(lines);
    }

    /// Records the provenance of a new line; returns its index.
    pub fn line(&mut self, prov: Prov) -> usize {
        if self.keep {
            self.lines.push(prov);
        }
        self.lines.len().wrapping_sub(1)
    }

    /// Sets the provenance of a recorded line.
    pub fn set(&mut self, index: usize, prov: Prov) {
        if self.keep {
            if let Some(l) = self.lines.get_mut(index) {
                *l = prov;
            }
        }
    }

    /// Records the provenance of new lines.
    pub fn lines(&mut self, provs: &[Prov]) {
        if self.keep {
            self.lines.extend_from_slice(provs);
        }
    }

    /// Appends fixed text.
    pub fn fixed(&mut self, f: &Fixed) {
        self.fixed_from(f, 0);
    }

    /// Appends fixed text from byte `skip` on (a run's leading comma skipped).
    pub fn fixed_from(&mut self, f: &Fixed, skip: usize) {
        self.text.push_str(f.text.get(skip..).unwrap_or_default());
        if self.keep {
            self.lines.extend_from_slice(&f.lines);
        }
    }

    /// A new line indented `depth` levels, with its provenance.
    pub fn newline(&mut self, depth: usize, prov: Prov) {
        indent(&mut self.text, depth);
        self.line(prov);
    }
}

/// Appends `s` as a JSON string, as [`write_str`] does (checking the common case of
/// nothing to escape first).
#[inline]
pub(super) fn push_json_str(out: &mut String, s: &str) {
    if json_plain(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        write_str(out, s);
    }
}

/// Whether text goes into a JSON string as it is: no control character, `"` or `\`.
/// Eight bytes at a time: a byte below 0x20, and a byte equal to `"` or `\` (a zero byte
/// after the XOR), set their high bit in the words tested.
#[inline]
pub(crate) fn json_plain(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w);
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let special = zero_byte(x ^ (ONES * 0x22)) | zero_byte(x ^ (ONES * 0x5c));
        if (control | special) & HIGH != 0 {
            return false;
        }
    }
    let rest = chunks.remainder();
    match s.len().checked_sub(8) {
        // The last eight bytes again, as one word.
        Some(from) if !rest.is_empty() => {
            let mut w = [0u8; 8];
            w.copy_from_slice(&s[from..]);
            let x = u64::from_le_bytes(w);
            let control = x.wrapping_sub(ONES * 0x20) & !x;
            let special = zero_byte(x ^ (ONES * 0x22)) | zero_byte(x ^ (ONES * 0x5c));
            (control | special) & HIGH == 0
        }
        _ => rest.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\'),
    }
}

/// Appends a new line and `depth` levels of indentation (two spaces each).
pub(super) fn indent(out: &mut String, depth: usize) {
    const SPACES: &str = "                                                                ";
    // A new line and up to 32 levels, appended in one piece.
    const LINE: &str = "\n                                                                ";
    if let Some(s) = depth.checked_mul(2).and_then(|n| LINE.get(..n + 1)) {
        out.push_str(s);
        return;
    }
    out.push('\n');
    let mut n = depth * 2;
    while n > 0 {
        let k = n.min(SPACES.len());
        out.push_str(&SPACES[..k]);
        n -= k;
    }
}

/// The provenance of a mapping line.
fn at_line(line: usize) -> Prov {
    Prov {
        line: u32::try_from(line).unwrap_or(0),
        cell: None,
    }
}

/// Compiles a rule into the plan of its resource, `depth` levels deep: `resourceType`,
/// `id`, `meta.profile`, then the content members.
pub(super) fn compile_rule<'m>(
    rule: &'m ResourceRule,
    depth: usize,
    by_name: &HashMap<&str, usize>,
    types: &[&str],
    consts: &Constants,
) -> Group<'m> {
    let key = |k: &str| {
        let mut s = String::new();
        indent(&mut s, depth + 1);
        write_str(&mut s, k);
        s.push_str(": ");
        s
    };
    let mut type_text = String::new();
    write_str(&mut type_text, &rule.type_name);
    let profile_line = rule.profile_line;
    let meta = Node::Object(
        vec![(
            "profile".to_string(),
            Node::Array(
                vec![Node::Value(
                    Spec::Const(Lit::Str(rule.profile.clone())),
                    profile_line,
                )],
                profile_line,
            ),
        )],
        profile_line,
    );
    let mut items = vec![
        Item {
            prefix: key("resourceType"),
            plan: Plan::Fixed(Fixed {
                text: type_text,
                lines: Vec::new(),
                prov: at_line(rule.line),
            }),
            member: None,
        },
        Item {
            prefix: key("id"),
            plan: Plan::Id(at_line(rule.id_line)),
            member: None,
        },
    ];
    if let Plan::Fixed(f) = compile(&meta, depth + 1, by_name, types, consts) {
        items.push(Item {
            prefix: key("meta"),
            plan: Plan::Fixed(f),
            member: None,
        });
    }
    for (k, n) in &rule.content {
        let plan = compile(n, depth + 1, by_name, types, consts);
        if !matches!(plan, Plan::Nothing) {
            items.push(Item {
                prefix: key(k),
                plan,
                member: Some(k.as_str()),
            });
        }
    }
    let mut close = String::new();
    indent(&mut close, depth);
    close.push('}');
    Group {
        open: "{".to_string(),
        open_lines: Vec::new(),
        items: runs(items),
        close,
        close_lines: vec![at_line(rule.line)],
        prov: at_line(rule.line),
        top: true,
    }
}

/// Compiles a content node whose value sits `depth` levels deep.
pub(super) fn compile<'m>(
    node: &'m Node,
    depth: usize,
    by_name: &HashMap<&str, usize>,
    types: &[&str],
    consts: &Constants,
) -> Plan<'m> {
    let prov = at_line(node.line());
    match node {
        Node::Object(members, _) => {
            let items = members
                .iter()
                .map(|(k, n)| {
                    let mut prefix = String::new();
                    indent(&mut prefix, depth + 1);
                    write_str(&mut prefix, k);
                    prefix.push_str(": ");
                    (prefix, compile(n, depth + 1, by_name, types, consts))
                })
                .collect();
            group('{', '}', items, depth, prov)
        }
        Node::Array(list, _) => {
            let items = list
                .iter()
                .map(|n| {
                    let mut prefix = String::new();
                    indent(&mut prefix, depth + 1);
                    (prefix, compile(n, depth + 1, by_name, types, consts))
                })
                .collect();
            group('[', ']', items, depth, prov)
        }
        Node::Value(spec, line) => value(spec, *line, depth, prov, by_name, types, consts),
    }
}

/// The plan of a rule at a leaf.
fn value<'m>(
    spec: &'m Spec,
    line: usize,
    depth: usize,
    prov: Prov,
    by_name: &HashMap<&str, usize>,
    types: &[&str],
    consts: &Constants,
) -> Plan<'m> {
    let fixed = |text: String| {
        Plan::Fixed(Fixed {
            text,
            lines: Vec::new(),
            prov,
        })
    };
    match spec {
        Spec::Const(Lit::Str(s)) => {
            let mut text = String::new();
            write_str(&mut text, s);
            fixed(text)
        }
        Spec::Const(Lit::Num(n)) => fixed(n.clone()),
        Spec::Const(Lit::Bool(b)) => fixed(b.to_string()),
        Spec::Template(t) => match constant_text(t, consts) {
            Some(joined) => {
                let mut text = String::new();
                write_str(&mut text, &joined);
                fixed(text)
            }
            None => Plan::Template(t, line, prov),
        },
        Spec::Column(c) => Plan::Column {
            spec: c,
            line,
            prov,
            depth,
            default: c
                .default
                .as_ref()
                .map(|d| Box::new(compile(d, depth, by_name, types, consts))),
        },
        Spec::If(c, then, els) => Plan::If(
            c,
            line,
            Box::new(compile(then, depth, by_name, types, consts)),
            els.as_ref()
                .map(|e| Box::new(compile(e, depth, by_name, types, consts))),
        ),
        Spec::Ref(name) => match by_name.get(name.as_str()) {
            Some(&target) => {
                let mut open = String::from("{");
                indent(&mut open, depth + 1);
                open.push_str("\"reference\": ");
                let mut close = String::new();
                let direct = types.get(target).is_some_and(|t| json_plain(t.as_bytes()));
                if let (true, Some(t)) = (direct, types.get(target)) {
                    open.push('"');
                    open.push_str(t);
                    open.push('/');
                    close.push('"');
                }
                indent(&mut close, depth);
                close.push('}');
                Plan::Ref(
                    target,
                    line,
                    prov,
                    Box::new(RefText {
                        open,
                        close,
                        direct,
                    }),
                )
            }
            None => Plan::Nothing,
        },
        Spec::FhirPath(e, _) => Plan::FhirPath(e, line, prov, depth),
    }
}

/// The text of a template that is the same for every row: only text and constants
/// (`{const.NAME}` of a constant that exists, as a row would read it); `None` otherwise.
fn constant_text(t: &Template, consts: &Constants) -> Option<String> {
    let mut joined = String::new();
    for p in &t.parts {
        match p {
            Part::Text(x) => joined.push_str(x),
            Part::Column(c) if !c.contains("{n}") => {
                joined.push_str(consts.get(c.strip_prefix("const.")?)?);
            }
            Part::Column(_) => return None,
        }
    }
    Some(joined)
}

/// An object or array of compiled items: fixed text when every item is, nothing when no
/// item can ever be present.
fn group<'m>(
    open: char,
    close_char: char,
    items: Vec<(String, Plan<'m>)>,
    depth: usize,
    prov: Prov,
) -> Plan<'m> {
    let items: Vec<(String, Plan<'m>)> = items
        .into_iter()
        .filter(|(_, p)| !matches!(p, Plan::Nothing))
        .collect();
    if items.is_empty() {
        return Plan::Nothing;
    }
    let mut close = String::new();
    indent(&mut close, depth);
    close.push(close_char);
    if items.iter().all(|(_, p)| matches!(p, Plan::Fixed(_))) {
        let mut text = String::new();
        let mut lines = Vec::new();
        text.push(open);
        for (i, (prefix, p)) in items.iter().enumerate() {
            if let Plan::Fixed(f) = p {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(prefix);
                lines.push(f.prov);
                text.push_str(&f.text);
                lines.extend_from_slice(&f.lines);
            }
        }
        text.push_str(&close);
        lines.push(prov);
        return Plan::Fixed(Fixed { text, lines, prov });
    }
    Plan::Group(Box::new(fold(Group {
        open: open.to_string(),
        open_lines: Vec::new(),
        items: runs(
            items
                .into_iter()
                .map(|(prefix, plan)| Item {
                    prefix,
                    plan,
                    member: None,
                })
                .collect(),
        ),
        close,
        close_lines: vec![prov],
        prov,
        top: false,
    })))
}

/// A group whose only item is a group, folded into one: the outer opening, the item's
/// prefix (without its comma: it is always the first item) and the inner opening, then
/// the inner items, then both closings. Other groups as they are.
fn fold(mut g: Group<'_>) -> Group<'_> {
    if g.top || g.items.len() != 1 {
        return g;
    }
    let Some(item) = g.items.pop() else {
        return g;
    };
    let inner = match item.plan {
        Plan::Group(inner) if !inner.top => inner,
        plan => {
            g.items.push(Item { plan, ..item });
            return g;
        }
    };
    let inner = *inner;
    let mut open = g.open;
    open.push_str(item.prefix.get(1..).unwrap_or_default());
    open.push_str(&inner.open);
    let mut open_lines = g.open_lines;
    open_lines.push(inner.prov);
    open_lines.extend(inner.open_lines);
    let mut close = inner.close;
    close.push_str(&g.close);
    let mut close_lines = inner.close_lines;
    close_lines.extend(g.close_lines);
    Group {
        open,
        open_lines,
        items: inner.items,
        close,
        close_lines,
        prov: g.prov,
        top: false,
    }
}

/// The items of a group with each run of consecutive fixed items folded into one
/// [`Plan::Run`] (written with one append instead of one per item), every item's text
/// led by a comma (skipped for the first item written).
fn runs(items: Vec<Item<'_>>) -> Vec<Item<'_>> {
    let mut out: Vec<Item<'_>> = Vec::with_capacity(items.len());
    for item in items {
        let f = match item.plan {
            Plan::Fixed(f) => f,
            plan => {
                let mut prefix = String::with_capacity(item.prefix.len() + 1);
                prefix.push(',');
                prefix.push_str(&item.prefix);
                out.push(Item {
                    plan,
                    prefix,
                    ..item
                });
                continue;
            }
        };
        if let Some(Item {
            plan: Plan::Run(run),
            ..
        }) = out.last_mut()
        {
            run.text.push(',');
            run.text.push_str(&item.prefix);
            run.text.push_str(&f.text);
            run.lines.push(f.prov);
            run.lines.extend_from_slice(&f.lines);
            run.prov = f.prov;
            continue;
        }
        let mut text = String::with_capacity(1 + item.prefix.len() + f.text.len());
        text.push(',');
        text.push_str(&item.prefix);
        text.push_str(&f.text);
        let mut lines = Vec::with_capacity(f.lines.len() + 1);
        lines.push(f.prov);
        lines.extend_from_slice(&f.lines);
        out.push(Item {
            prefix: String::new(),
            plan: Plan::Run(Fixed {
                text,
                lines,
                prov: f.prov,
            }),
            member: item.member,
        });
    }
    out
}
