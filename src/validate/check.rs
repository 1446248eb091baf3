//! The walk: one resource against one compiled profile, element by element, collecting
//! [`Issue`]s. Cardinality, types, fixed and pattern values, bindings, invariants, primitive
//! formats, extensions, slices and references are checked here; the rules for choosing
//! profiles live in [`super::Validator`].

use super::issue::{Issue, IssueType, Severity};
use super::primitive;
use super::profile::{Constraint, Node, Profile, TypeRef};
use super::slicing;
use super::terminology::Membership;
use super::Validator;
use crate::fhirpath::value::Item;
use crate::fhirpath::Context;
use crate::model::json::{line_col, LineIndex};
use crate::model::schema::TypeKind;
use crate::model::{Element, Primitive, Scalar, Value};
use std::fmt::Write as _;
use std::sync::Arc;

/// Appends `[i]` to a location without the formatting machinery (this runs for every
/// repeating element of every resource).
pub(crate) fn push_index(s: &mut String, i: usize) {
    let mut digits = [0u8; 20];
    let mut n = i;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.push('[');
    for &d in &digits[at..] {
        s.push(char::from(d));
    }
    s.push(']');
}

/// FHIR limits primitive string values to 1 MB.
const MAX_STRING_BYTES: usize = 1024 * 1024;

/// The state of one validation: where we are, in which resources, and what was found.
pub(crate) struct Walk<'v, 'a> {
    pub validator: &'v Validator,
    /// The submitted JSON, for `line:column`.
    pub source: Option<&'a str>,
    /// The FHIRPath location of the element being checked.
    pub location: String,
    /// The resources enclosing the current element, innermost last.
    pub resources: Vec<&'a Element>,
    /// The findings.
    pub issues: Vec<Issue>,
    /// `%rootResource` for each enclosing resource: the container of a contained resource,
    /// otherwise the resource itself (a Bundle entry is its own root).
    pub roots: Vec<&'a Element>,
    /// The types of the elements being walked, innermost last (for extension contexts).
    pub types: Vec<&'static crate::model::schema::TypeInfo>,
    /// The definition paths of the elements being walked, innermost last (for extension
    /// contexts: a nested `Questionnaire.item` is defined by `Questionnaire.item`).
    pub def_paths: Vec<(Arc<Profile>, usize)>,
    /// Where in `location` the path inside each enclosing resource starts.
    pub resource_starts: Vec<usize>,
    /// Entries of the Bundle being checked (fullUrl, resource), for reference resolution.
    pub bundle_entries: Vec<(String, &'a Element)>,
    /// The lines of `source`, indexed at the first issue far into it.
    lines: std::cell::OnceCell<LineIndex<'a>>,
    /// The least serious issues kept: less serious ones are not recorded, and checks that
    /// can only find such issues are skipped ([`Severity::Information`] keeps all).
    pub least: Severity,
    /// The core definitions looked up in this walk, by the address of the instance type
    /// they were looked up for (a resource has a handful of types).
    cores: Vec<(usize, Option<Arc<Profile>>)>,
}

/// Below this offset an issue's line is found by scanning the text; beyond it, through the
/// line index (built once per validation; a large Bundle may have thousands of issues).
const SCAN_LIMIT: usize = 4096;

impl<'v, 'a> Walk<'v, 'a> {
    pub fn new(validator: &'v Validator, source: Option<&'a str>) -> Self {
        Walk {
            validator,
            source,
            // Room for a usual resource's depth, so the walk does not grow them step by step.
            location: String::with_capacity(96),
            resources: Vec::with_capacity(4),
            resource_starts: Vec::with_capacity(4),
            roots: Vec::with_capacity(4),
            types: Vec::with_capacity(8),
            def_paths: Vec::with_capacity(8),
            issues: Vec::new(),
            bundle_entries: Vec::new(),
            lines: std::cell::OnceCell::new(),
            least: Severity::Information,
            cores: Vec::new(),
        }
    }

    /// Records an issue at the current location and the given byte offset.
    pub fn report(
        &mut self,
        severity: Severity,
        kind: IssueType,
        pos: u32,
        message: String,
        rule: Option<&str>,
    ) {
        if severity > self.least {
            return;
        }
        let (line, column) = match self.source {
            Some(src) if pos > 0 || !src.is_empty() => {
                let at = pos as usize;
                let (l, c) = if at < SCAN_LIMIT {
                    line_col(src, at)
                } else {
                    self.lines.get_or_init(|| LineIndex::new(src)).line_col(at)
                };
                (Some(l), Some(c))
            }
            _ => (None, None),
        };
        self.issues.push(Issue {
            severity,
            kind,
            message,
            location: self.location.clone(),
            line,
            column,
            rule: rule.map(str::to_string),
        });
    }

    /// Checks a resource against one profile (or its core definition).
    pub fn resource(&mut self, el: &'a Element, profile: &Arc<Profile>) {
        let contained = self.location.ends_with(']')
            && self
                .location
                .rsplit('.')
                .next()
                .is_some_and(|s| s.starts_with("contained["));
        let root = match (contained, self.resources.last()) {
            (true, Some(&container)) => container,
            _ => el,
        };
        self.resources.push(el);
        self.roots.push(root);
        self.resource_starts.push(self.location.len());
        self.typed(el, profile, &[]);
        self.resource_starts.pop();
        self.roots.pop();
        self.resources.pop();
    }

    /// Checks the children of `el` against `node` of `profile`.
    pub fn element(&mut self, el: &'a Element, profile: &Arc<Profile>, node: usize) {
        self.types.push(el.info);
        self.def_paths.push((profile.clone(), node));
        self.children(el, profile, node);
        self.def_paths.pop();
        self.types.pop();
    }

    fn children(&mut self, el: &'a Element, profile: &Arc<Profile>, node: usize) {
        let children = profile.children_of(node);
        if children.is_empty() {
            // `contentReference`: the children are those of the referenced element as the
            // base definition has them (a profile's constraints on that element do not
            // repeat at each level of recursion).
            if let Some(target) = &profile.nodes[node].content_reference {
                let base = self.validator.core_profile(&profile.type_name);
                if let Some((core, idx)) = base.and_then(|c| c.node_by_path(target).map(|i| (c, i)))
                {
                    self.element(el, &core, idx);
                }
                return;
            }
            // The profile does not describe the inside of this type: its base definition does.
            let type_name = el.info.name.to_string();
            if profile.nodes.len() > 1 && node == 0 {
                return;
            }
            match self.validator.core_profile(&type_name) {
                Some(core) if !Arc::ptr_eq(&core, profile) => self.element(el, &core, 0),
                _ => {}
            }
            return;
        }
        let index = profile.nodes[node].child_index(children, &profile.nodes, el.info);
        match index {
            Some(idx) if !idx.by_element.is_empty() => {
                // Only the children with a value or a minimum need a visit: those of the
                // properties present and the required ones, in the definition's order.
                let mut visit: smallvec::SmallVec<[(u16, Option<&'a crate::model::Property>); 16]> =
                    smallvec::SmallVec::new();
                for p in &el.props {
                    if let Some(&k) = idx.by_element.get(usize::from(p.element)) {
                        if k != u16::MAX && !visit.iter().any(|(v, _)| *v == k) {
                            visit.push((k, Some(p)));
                        }
                    }
                }
                for &k in &idx.required {
                    if !visit.iter().any(|(v, _)| *v == k) {
                        let prop = idx
                            .elements
                            .get(usize::from(k))
                            .copied()
                            .flatten()
                            .and_then(|i| el.props.iter().find(|p| p.element == i));
                        visit.push((k, prop));
                    }
                }
                visit.sort_unstable_by_key(|(k, _)| *k);
                for (k, prop) in visit {
                    self.child(el, profile, children[usize::from(k)], prop);
                }
            }
            Some(idx) => {
                for (k, &c) in children.iter().enumerate() {
                    let prop =
                        idx.elements[k].and_then(|i| el.props.iter().find(|p| p.element == i));
                    self.child(el, profile, c, prop);
                }
            }
            None => {
                for &c in children {
                    let prop = el.get(&profile.nodes[c].name);
                    self.child(el, profile, c, prop);
                }
            }
        }
    }

    /// Checks child `c` (a node of `profile`) of `el`, whose values are those of `prop`.
    fn child(
        &mut self,
        el: &'a Element,
        profile: &Arc<Profile>,
        c: usize,
        prop: Option<&'a crate::model::Property>,
    ) {
        let n = &profile.nodes[c];
        let values: &'a [Value] = match prop {
            Some(p) => &p.values,
            None => &[],
        };
        // Most elements of a definition are absent from an instance: with nothing to
        // check (no value, nothing required of it or of its slices), skip it quickly.
        if values.is_empty() && n.min == 0 && n.slices.iter().all(|&sl| profile.nodes[sl].min == 0)
        {
            return;
        }
        let base_len = self.location.len();
        self.location.push('.');
        self.location.push_str(&n.name);
        if let (true, Some(p)) = (n.choice, prop) {
            let _ = write!(self.location, ".ofType({})", el.element_type(p).code);
        }
        if let Some(p) = prop {
            if n.choice && !n.types.is_empty() {
                let taken = el.element_type(p);
                if !n.types.iter().any(|t| t.code == *taken.code) {
                    let allowed: Vec<&str> = n.types.iter().map(|t| t.code.as_str()).collect();
                    let pos = values.first().map_or(el.pos, Value::pos);
                    self.report(
                        Severity::Error,
                        IssueType::Structure,
                        pos,
                        format!(
                            "type {} is not allowed for {} (allowed: {})",
                            taken.code,
                            n.path,
                            allowed.join(", ")
                        ),
                        None,
                    );
                }
            }
        }
        self.cardinality(n, values.len(), values.first().map_or(el.pos, Value::pos));
        if n.slicing.is_some() && !n.slices.is_empty() {
            slicing::check(self, el, values, profile, c);
        } else {
            let repeats = match prop.and_then(|p| el.info.elements.get(usize::from(p.element))) {
                // The property's own element, when it is the one named (names are unique in
                // a type): no search by name.
                Some(d) if *d.name == *n.name => d.array,
                _ => self.repeats(el, n),
            };
            for (i, v) in values.iter().enumerate() {
                let len = self.location.len();
                if repeats {
                    push_index(&mut self.location, i);
                }
                self.value(v, profile, c);
                self.location.truncate(len);
            }
        }
        self.location.truncate(base_len);
    }

    /// A walk at the same place that records its own issues, to try a profile silently.
    pub fn fork(&self) -> Walk<'v, 'a> {
        Walk {
            validator: self.validator,
            source: None,
            location: self.location.clone(),
            resources: self.resources.clone(),
            resource_starts: self.resource_starts.clone(),
            roots: self.roots.clone(),
            types: self.types.clone(),
            def_paths: self.def_paths.clone(),
            issues: Vec::new(),
            bundle_entries: self.bundle_entries.clone(),
            lines: std::cell::OnceCell::new(),
            least: self.least,
            cores: Vec::new(),
        }
    }

    /// The first of `urls` for which `run` reports no error, tried silently.
    pub fn first_conforming(
        &self,
        urls: &[String],
        run: impl Fn(&mut Walk<'v, 'a>, &str),
    ) -> Option<String> {
        urls.iter()
            .find(|url| {
                let mut probe = self.fork();
                run(&mut probe, url);
                !super::issue::has_errors(&probe.issues)
            })
            .cloned()
    }

    /// Whether an element repeats in JSON (so locations carry an index).
    pub fn repeats(&self, el: &Element, n: &Node) -> bool {
        el.info.element(&n.name).is_some_and(|(_, info)| info.array)
    }

    /// Min/max of an element given how many values it has.
    pub fn cardinality(&mut self, n: &Node, count: usize, pos: u32) {
        let count32 = u32::try_from(count).unwrap_or(u32::MAX);
        if count32 < n.min {
            let what = match &n.slice_name {
                Some(s) => format!("slice '{s}' of {}", n.path),
                None => n.path.clone(),
            };
            self.report(
                Severity::Error,
                IssueType::Required,
                pos,
                format!(
                    "{what}: minimum required = {}, but only found {count}",
                    n.min
                ),
                None,
            );
        }
        if let Some(max) = n.max {
            if count32 > max {
                let what = match &n.slice_name {
                    Some(s) => format!("slice '{s}' of {}", n.path),
                    None => n.path.clone(),
                };
                let message = if max == 0 {
                    format!("{what} is not allowed (max = 0), but found {count}")
                } else {
                    format!("{what}: maximum allowed = {max}, but found {count}")
                };
                self.report(Severity::Error, IssueType::Required, pos, message, None);
            }
        }
    }

    /// Checks one value against `node` of `profile`.
    pub fn value(&mut self, v: &'a Value, profile: &Arc<Profile>, node: usize) {
        let n = &profile.nodes[node];
        let info = v.info();
        let type_ref = self.type_ref(n, v);
        // Choice elements had their type checked with the property (see `element`).
        if type_ref.is_none() && !n.choice && !n.types.is_empty() && info.kind != TypeKind::Backbone
        {
            let allowed: Vec<&str> = n.types.iter().map(|t| t.code.as_str()).collect();
            self.report(
                Severity::Error,
                IssueType::Structure,
                v.pos(),
                format!(
                    "type {} is not allowed here (allowed: {})",
                    info.fhir_type_name(),
                    allowed.join(", ")
                ),
                None,
            );
        }
        if let Some(fixed) = &n.fixed {
            if !super::pattern::equals(v, fixed) {
                self.report(
                    Severity::Error,
                    IssueType::Value,
                    v.pos(),
                    format!("value must be exactly {fixed}"),
                    None,
                );
            }
        }
        if let Some(pattern) = &n.pattern {
            if !super::pattern::matches(v, pattern) {
                self.report(
                    Severity::Error,
                    IssueType::Value,
                    v.pos(),
                    format!("value does not match the required pattern {pattern}"),
                    None,
                );
            }
        }
        if let Value::Primitive(p) = v {
            self.primitive(p, n);
        }
        if n.min_value.is_some() || n.max_value.is_some() {
            self.bounds(v, n);
        }
        if let Value::Element(e) = v {
            if e.info.is_a("Attachment") {
                self.attachment(e);
            }
        }
        if let Some(b) = &n.binding {
            if !b.value_set.is_empty() {
                self.binding(v, &b.strength, &b.value_set);
            }
            for extra in &b.additional {
                self.binding(v, &extra.strength, &extra.value_set);
            }
        }
        self.invariants(v, n);
        match v {
            Value::Element(e) if e.info.kind == TypeKind::Resource => {
                let profiles = type_ref.map(|t| &t.profiles[..]).unwrap_or(&[]);
                let validator = self.validator;
                // Several type profiles: conforming to any one of them suffices.
                let chosen = if profiles.len() > 1 {
                    self.first_conforming(profiles, |w, url| {
                        validator.check_resource(w, e, Some(&[url.to_string()]));
                    })
                } else {
                    None
                };
                match chosen {
                    Some(u) => validator.check_resource(self, e, Some(std::slice::from_ref(&u))),
                    None => validator.check_resource(self, e, Some(profiles)),
                }
            }
            Value::Element(e) => {
                if matches!(&*e.info.name, "Reference") {
                    self.reference(e, type_ref);
                }
                let has_children =
                    !profile.children_of(node).is_empty() || n.content_reference.is_some();
                let type_profiles = type_ref.map(|t| t.profiles.as_slice()).unwrap_or(&[]);
                let done = &n.constraints;
                if has_children {
                    self.element(e, profile, node);
                } else if &*e.info.name == "Extension" {
                    self.extension(e, type_profiles, done);
                } else if !type_profiles.is_empty() {
                    // Several type profiles: conforming to any one of them suffices.
                    let chosen = self.first_conforming(type_profiles, |w, url| {
                        if let Ok(p) = w.validator.profile(url) {
                            w.typed(e, &p, done);
                        }
                    });
                    let urls = match &chosen {
                        Some(u) => std::slice::from_ref(u),
                        None => type_profiles,
                    };
                    for url in urls {
                        match self.validator.profile(url) {
                            Ok(p) => self.typed(e, &p, done),
                            Err(err) => self.report(
                                Severity::Error,
                                IssueType::NotSupported,
                                e.pos,
                                format!("profile {url} cannot be used: {err}"),
                                None,
                            ),
                        }
                    }
                } else if let Some(core) = self.core_of(e.info) {
                    if e.info.kind != TypeKind::Backbone {
                        self.typed(e, &core, done);
                    }
                }
            }
            Value::Primitive(p) => {
                let base = self.location.len();
                self.types.push(p.info);
                self.def_paths.push((profile.clone(), node));
                for (i, ext) in p.extensions().iter().enumerate() {
                    let _ = write!(self.location, ".extension[{i}]");
                    self.extension(ext, &[], &[]);
                    self.location.truncate(base);
                }
                self.def_paths.pop();
                self.types.pop();
            }
        }
    }

    /// The core definition of an instance's type (that of `BackboneElement` for an inline
    /// element), looked up once per walk.
    fn core_of(&mut self, info: &'static crate::model::schema::TypeInfo) -> Option<Arc<Profile>> {
        let key = std::ptr::from_ref(info) as usize;
        if let Some((_, p)) = self.cores.iter().find(|(k, _)| *k == key) {
            return p.clone();
        }
        let p = self.validator.core_profile(info.fhir_type_name());
        self.cores.push((key, p.clone()));
        p
    }

    /// The type reference of `n` that `v` takes, if any.
    fn type_ref<'n>(&self, n: &'n Node, v: &Value) -> Option<&'n TypeRef> {
        let info = v.info();
        n.types.iter().find(|t| {
            t.code == *info.name
                || info.is_a(&t.code)
                || (t.code == "Resource" && info.kind == TypeKind::Resource)
                || (info.kind == TypeKind::Backbone
                    && (t.code == "BackboneElement" || t.code == "Element"))
        })
    }

    fn primitive(&mut self, p: &Primitive, n: &Node) {
        let Some(value) = &p.value else { return };
        let code = &*p.info.name;
        let text = match value {
            Scalar::String(s) | Scalar::Number(s) => &**s,
            Scalar::Bool(_) => return,
        };
        if text.len() > MAX_STRING_BYTES {
            self.report(
                Severity::Error,
                IssueType::Value,
                p.pos,
                format!(
                    "value is longer than the permitted maximum of {MAX_STRING_BYTES} bytes (1 MB)"
                ),
                None,
            );
        }
        if code == "markdown" && self.validator.options.no_html_in_markdown {
            if let Some(at) = html_tag_at(text) {
                self.report(
                    Severity::Error,
                    IssueType::Value,
                    p.pos,
                    format!("the markdown contains what looks like an HTML tag at character {at}"),
                    None,
                );
            }
        }
        if code == "xhtml" {
            for problem in super::xhtml::check(text) {
                self.report(
                    Severity::Error,
                    IssueType::Value,
                    p.pos,
                    problem,
                    Some("txt-1"),
                );
            }
        }
        if let Some(problem) = primitive::check(code, text) {
            self.report(Severity::Error, IssueType::Value, p.pos, problem, None);
        }
        if let Some(max) = n.max_length {
            let len = text.chars().count() as u64;
            if len > max {
                self.report(
                    Severity::Error,
                    IssueType::Value,
                    p.pos,
                    format!("value is {len} characters long, more than the maximum of {max}"),
                    None,
                );
            }
        }
    }

    /// `minValue[x]` / `maxValue[x]` on numbers, dates, times and quantities.
    fn bounds(&mut self, v: &Value, n: &Node) {
        for (limit, is_min) in [(&n.min_value, true), (&n.max_value, false)] {
            let Some(limit) = limit else { continue };
            let Some(ord) = super::pattern::compare_to(v, limit) else {
                continue;
            };
            let bad = if is_min { ord.is_lt() } else { ord.is_gt() };
            if bad {
                let which = if is_min { "minimum" } else { "maximum" };
                self.report(
                    Severity::Error,
                    IssueType::Value,
                    v.pos(),
                    format!("value is beyond the {which} allowed value {limit}"),
                    None,
                );
            }
        }
    }

    /// An Attachment's stated `size` must match its inline `data`.
    fn attachment(&mut self, e: &Element) {
        let (Some(data), Some(size)) = (e.str("data"), e.str("size")) else {
            return;
        };
        let Ok(size) = size.parse::<u64>() else {
            return;
        };
        let chars: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let pad = chars.iter().rev().take_while(|&&b| b == b'=').count() as u64;
        let actual = (chars.len() as u64 / 4) * 3 - pad.min(2);
        if actual != size {
            self.report(
                Severity::Error,
                IssueType::Value,
                e.pos,
                format!("stated attachment size {size} does not match the size of its data ({actual} bytes)"),
                None,
            );
        }
    }

    /// Evaluates the element definition's invariants on `v`.
    fn invariants(&mut self, v: &'a Value, n: &Node) {
        if n.constraints.is_empty() {
            return;
        }
        let item = Item::from_value(v);
        for c in &n.constraints {
            self.invariant(item.clone(), v.pos(), c);
        }
    }

    /// Checks an element against a type's (or type profile's) definition: the root
    /// invariants first (except those already evaluated from the element's own definition,
    /// `done`), then the children.
    pub fn typed(&mut self, el: &'a Element, profile: &Arc<Profile>, done: &[Constraint]) {
        if let Some(root) = profile.nodes.first() {
            for c in &root.constraints {
                if !done.iter().any(|d| d.key == c.key) {
                    self.invariant(Item::Element(el), el.pos, c);
                }
            }
        }
        self.element(el, profile, 0);
    }

    /// Reports that constraint `c` failed at `pos`, with the constraint's severity.
    fn invariant_failed(&mut self, pos: u32, c: &Constraint) {
        self.report(
            c.level,
            IssueType::Invariant,
            pos,
            c.failure.clone(),
            Some(&c.key),
        );
    }

    fn invariant(&mut self, focus: Item<'a>, pos: u32, c: &Constraint) {
        // Whatever it finds (its failure, or a warning that it cannot be evaluated) would
        // not be kept.
        if c.level > self.least && Severity::Warning > self.least {
            return;
        }
        // The two invariants on nearly every element, decided without the evaluator (with
        // the evaluator's result on the element tree; see `native_invariant`).
        if let Some(ok) = native_invariant(c.native, &focus) {
            if !ok {
                self.invariant_failed(pos, c);
            }
            return;
        }
        let compiled = c
            .compiled
            .get_or_init(|| self.validator.expression(&c.expression));
        let expr = match compiled {
            Ok(e) => e.clone(),
            Err(err) => {
                self.report(
                    Severity::Warning,
                    IssueType::Processing,
                    pos,
                    format!("invariant {} cannot be evaluated: {err}", c.key),
                    Some(&c.key),
                );
                return;
            }
        };
        let (Some(&resource), Some(&root)) = (self.resources.last(), self.roots.last()) else {
            return;
        };
        let ctx = Context::new(resource)
            .with_root_resource(root)
            .with_focus(focus);
        // A constraint fails when it evaluates to false; an empty result (the expression
        // could not be decided, e.g. dates of different precision) does not fail it.
        match expr.evaluate_predicate(&ctx) {
            Ok(Some(false)) => self.invariant_failed(pos, c),
            Ok(_) => {}
            Err(err) => self.report(
                Severity::Warning,
                IssueType::Processing,
                pos,
                format!("invariant {} could not be evaluated: {err}", c.key),
                Some(&c.key),
            ),
        }
    }

    /// Checks a coded value against a binding.
    fn binding(&mut self, v: &'a Value, strength: &str, value_set: &str) {
        let severity = match strength {
            "required" => Severity::Error,
            "extensible" => Severity::Warning,
            _ => return,
        };
        // Every issue of an extensible binding is a warning or less.
        if severity > self.least {
            return;
        }
        let codes = coded(v);
        if codes.is_empty() {
            // A CodeableConcept with only text cannot meet a required binding.
            let text_only = v.as_element().is_some_and(|e| {
                e.info.fhir_type_name() == "CodeableConcept" && e.get("coding").is_none()
            });
            if text_only && strength == "required" {
                self.report(
                    Severity::Error,
                    IssueType::CodeInvalid,
                    v.pos(),
                    format!("no code provided, and a code from the required value set {value_set} is needed"),
                    None,
                );
            }
            return;
        }
        let tx = self.validator.terminology();
        let mut member = false;
        let mut unverifiable: Option<String> = None;
        let mut not_member: Option<String> = None;
        for (system, code, display) in &codes {
            match tx.validate_code(value_set, *system, code, *display) {
                Ok(Membership::Member) => member = true,
                Ok(Membership::NotMember { reason }) => {
                    not_member.get_or_insert(reason);
                }
                Ok(Membership::Unverifiable { reason }) => {
                    unverifiable.get_or_insert(reason);
                }
                Err(err) => {
                    // Reported, never passed silently; not an error, as the fault is in
                    // the profile's references rather than in the instance.
                    self.report(
                        Severity::Warning,
                        IssueType::NotSupported,
                        v.pos(),
                        format!("binding to {value_set} cannot be checked: {err}"),
                        None,
                    );
                    return;
                }
            }
        }
        if member {
            return;
        }
        if let Some(reason) = unverifiable {
            self.report(
                Severity::Information,
                IssueType::NotSupported,
                v.pos(),
                format!("code cannot be verified against {value_set}: {reason}"),
                None,
            );
            return;
        }
        let what: Vec<String> = codes
            .iter()
            .map(|(s, c, _)| match s {
                Some(s) => format!("{s}#{c}"),
                None => (*c).to_string(),
            })
            .collect();
        let reason = not_member.unwrap_or_default();
        self.report(
            severity,
            IssueType::CodeInvalid,
            v.pos(),
            format!(
                "{} is not in the {strength} value set {value_set} ({reason})",
                what.join(", ")
            ),
            None,
        );
    }

    /// An extension: its definition, found by URL, decides what it may hold.
    fn extension(&mut self, e: &'a Element, profiles: &[String], done: &[Constraint]) {
        let url = e.str("url").unwrap_or_default();
        let in_modifier = self
            .location
            .rsplit('.')
            .next()
            .is_some_and(|seg| seg.starts_with("modifierExtension"));
        if profiles.is_empty() {
            self.extension_as(e, url, in_modifier, done);
        } else {
            for u in profiles {
                self.extension_as(e, u, in_modifier, done);
            }
        }
    }

    /// An extension checked against the definition at `u`.
    fn extension_as(&mut self, e: &'a Element, u: &str, in_modifier: bool, done: &[Constraint]) {
        // A relative url names a part of a complex extension: its parent's definition
        // (when known) describes it, so it is not looked up on its own.
        if !u.contains(':') {
            if let Some(core) = self.validator.core_profile("Extension") {
                self.typed(e, &core, done);
            }
            return;
        }
        // A compiled definition is in the registry; only an unknown one needs the look-up.
        let cached = self.validator.cached_profile(u);
        if cached.is_none()
            && self
                .validator
                .registry()
                .get(crate::definitions::Kind::StructureDefinition, u)
                .is_none()
        {
            let severity = self.validator.options.unknown_extension;
            self.report(
                severity,
                IssueType::Extension,
                e.pos,
                format!("unknown extension {u}"),
                None,
            );
            // Still check the structure against the base Extension definition.
            if let Some(core) = self.validator.core_profile("Extension") {
                self.typed(e, &core, done);
            }
            return;
        }
        match cached.map_or_else(|| self.validator.profile(u), Ok) {
            Ok(p) => {
                let is_modifier = p.nodes.first().is_some_and(|r| r.is_modifier);
                if is_modifier != in_modifier {
                    let (wrong, right) = if is_modifier {
                        ("an extension", "a modifierExtension")
                    } else {
                        ("a modifierExtension", "an extension")
                    };
                    self.report(
                        Severity::Error,
                        IssueType::Structure,
                        e.pos,
                        format!("{u} must not be used as {wrong} (it is {right})"),
                        None,
                    );
                }
                self.extension_context(e, &p);
                self.typed(e, &p, done);
            }
            Err(err) => self.report(
                Severity::Error,
                IssueType::NotSupported,
                e.pos,
                format!("extension definition {u} cannot be used: {err}"),
                None,
            ),
        }
    }

    /// Checks where an extension is used against its definition's `context`.
    fn extension_context(&mut self, e: &Element, p: &Profile) {
        if p.contexts.is_empty() {
            return;
        }
        let Some(host) = self.extension_host() else {
            return;
        };
        let ok = p.contexts.iter().any(|(kind, expr)| {
            kind != "element"
                || expr == "Element"
                || expr == "Resource"
                || (expr == "DomainResource" && !host.contains('.'))
                || host == *expr
                || self
                    .def_paths
                    .last()
                    .is_some_and(|(p, n)| p.nodes[*n].path == *expr)
                || self.host_type_matches(&host, expr)
                || !context_type_known(expr)
        });
        if !ok {
            let allowed: Vec<&str> = p.contexts.iter().map(|(_, e)| e.as_str()).collect();
            self.report(
                Severity::Error,
                IssueType::Extension,
                e.pos,
                format!(
                    "extension {} is not allowed on {host} (allowed contexts: {})",
                    p.url,
                    allowed.join(", ")
                ),
                None,
            );
        }
    }

    /// Whether the element an extension sits on is what a context naming a data type
    /// describes: `HumanName` (any element of that type) or `HumanName.family` (that
    /// element of an element of that type). `types` holds the types of the elements
    /// enclosing the extension, the host last.
    fn host_type_matches(&self, host: &str, expr: &str) -> bool {
        let (ty, rest) = match expr.split_once('.') {
            Some((t, r)) => (t, Some(r)),
            None => (expr, None),
        };
        match rest {
            None => self.types.last().is_some_and(|t| t.is_a(ty)),
            Some(r) => {
                let tail_ok = host.strip_suffix(r).is_some_and(|h| h.ends_with('.'));
                let levels = r.split('.').count();
                let holder = self
                    .types
                    .len()
                    .checked_sub(1 + levels)
                    .and_then(|i| self.types.get(i));
                tail_ok && holder.is_some_and(|t| t.is_a(ty))
            }
        }
    }

    /// The path of the element the current extension sits on (`Patient`, `Patient.name`):
    /// the current resource's type plus the location since that resource, without indexes.
    fn extension_host(&self) -> Option<String> {
        let start = *self.resource_starts.last()?;
        let rt = self.resources.last()?.type_name();
        let loc = self.location.get(start..)?;
        let cut = loc
            .rfind(".extension")
            .or_else(|| loc.rfind(".modifierExtension"))?;
        let mut host = rt.to_string();
        let mut depth = 0;
        let trimmed = strip_of_type(&loc[..cut]);
        for ch in trimmed.chars() {
            match ch {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ if depth == 0 => host.push(ch),
                _ => {}
            }
        }
        Some(host)
    }

    /// Reference checks: target type against `targetProfile`, and resolution inside a Bundle.
    fn reference(&mut self, r: &'a Element, type_ref: Option<&TypeRef>) {
        let Some(reference) = r.str("reference") else {
            return;
        };
        if reference.starts_with('#') {
            return;
        }
        let target_type = reference_type(reference);
        if let (Some(t), Some(tr)) = (target_type, type_ref) {
            if !tr.target_profiles.is_empty() {
                // Target profiles are resolved, never assumed: an unknown one is an error.
                let mut ok = false;
                let mut all_known = true;
                for p in &tr.target_profiles {
                    let known = self.validator.with_profile_type(p, |ty| match ty {
                        Some(pt) => {
                            ok |= pt == t || pt == "Resource";
                            true
                        }
                        None => false,
                    });
                    if !known {
                        all_known = false;
                        self.report(
                            Severity::Error,
                            IssueType::NotSupported,
                            r.pos,
                            format!("unable to resolve the target profile {p}"),
                            None,
                        );
                    }
                }
                if !ok && all_known {
                    let allowed: Vec<&str> = tr
                        .target_profiles
                        .iter()
                        .map(|p| p.rsplit('/').next().unwrap_or(p))
                        .collect();
                    self.report(
                        Severity::Error,
                        IssueType::Structure,
                        r.pos,
                        format!(
                            "reference to {t} is not allowed here (allowed: {})",
                            allowed.join(", ")
                        ),
                        None,
                    );
                }
            }
        }
        if !self.bundle_entries.is_empty() && !reference.contains('?') {
            let unversioned = reference.split("/_history/").next().unwrap_or(reference);
            let resolved = self.bundle_entries.iter().any(|(full, res)| {
                full == unversioned
                    || full
                        .strip_suffix(unversioned)
                        .is_some_and(|head| head.ends_with('/'))
                    || (target_type.is_some()
                        && res.id().is_some_and(|id| {
                            unversioned
                                .strip_suffix(id)
                                .and_then(|s| s.strip_suffix('/'))
                                .is_some_and(|s| s.ends_with(res.type_name()))
                        }))
            });
            let absolute = reference.starts_with("http://") || reference.starts_with("https://");
            if !resolved && !absolute {
                self.report(
                    Severity::Warning,
                    IssueType::NotFound,
                    r.pos,
                    format!("reference {reference} does not resolve to an entry of the Bundle"),
                    None,
                );
            }
        }
    }
}

/// ele-1, on every element of every type.
const ELE_1: &str = "hasValue() or (children().count() > id.count())";
/// ext-1, on every extension.
const EXT_1: &str = "extension.exists() != value.exists()";
/// dom-2, on every DomainResource.
const DOM_2: &str = "contained.contained.empty()";
/// dom-3, on every DomainResource.
const DOM_3: &str = "contained.where((('#'+id in (%resource.descendants().reference | %resource.descendants().as(canonical) | %resource.descendants().as(uri) | %resource.descendants().as(url))) or descendants().where(reference = '#').exists() or descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = '#').exists()).not()).trace('unmatched', id).empty()";
/// dom-4, on every DomainResource.
const DOM_4: &str = "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()";
/// dom-5, on every DomainResource.
const DOM_5: &str = "contained.meta.security.empty()";
/// dom-6, on every DomainResource (a warning).
const DOM_6: &str = "text.`div`.exists()";
/// ref-1, on every Reference.
const REF_1: &str = "reference.startsWith('#').not() or (reference.substring(1).trace('url') in %rootResource.contained.id.trace('ids'))";

/// An invariant the walk decides on the element tree, as the FHIRPath evaluator would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeInvariant {
    /// [`ELE_1`].
    Ele1,
    /// [`EXT_1`].
    Ext1,
    /// [`DOM_2`], [`DOM_3`], [`DOM_4`] and [`DOM_5`]: each is about contained resources,
    /// and holds when there are none (otherwise the evaluator decides).
    Contained,
    /// [`DOM_6`].
    Dom6,
    /// [`REF_1`]: holds when the reference is absent or not local (otherwise the
    /// evaluator decides).
    Ref1,
}

impl NativeInvariant {
    /// The native form of an invariant's expression, if it has one.
    pub fn of(expression: &str) -> Option<NativeInvariant> {
        match expression {
            ELE_1 => Some(NativeInvariant::Ele1),
            EXT_1 => Some(NativeInvariant::Ext1),
            DOM_2 | DOM_3 | DOM_4 | DOM_5 => Some(NativeInvariant::Contained),
            DOM_6 => Some(NativeInvariant::Dom6),
            REF_1 => Some(NativeInvariant::Ref1),
            _ => None,
        }
    }
}

/// The property of `e` whose element is named `name`, as navigation finds it.
fn named<'e>(e: &'e Element, name: &str) -> Option<&'e crate::model::Property> {
    e.props.iter().find(|p| {
        e.info
            .elements
            .get(usize::from(p.element))
            .is_some_and(|d| &*d.name == name)
    })
}

/// Values of the property of `e` whose element is named `name`, as navigation finds them.
fn count(e: &Element, name: &str) -> usize {
    named(e, name).map_or(0, |p| p.values.len())
}

/// Values of the `id` property of `e`: the first element of every complex type and
/// resource is `id` (properties are in element order), else it is looked up by name.
fn id_count(e: &Element) -> usize {
    match e.info.elements.first() {
        Some(d) if &*d.name == "id" => e
            .props
            .first()
            .filter(|p| p.element == 0)
            .map_or(0, |p| p.values.len()),
        _ => count(e, "id"),
    }
}

/// The result of a natively decided invariant on `focus`, computed on the element tree as
/// the FHIRPath evaluator computes it (an empty result, which fails nothing, counts as
/// `true`); `None` for other expressions and for the foci left to the evaluator.
fn native_invariant(kind: Option<NativeInvariant>, focus: &Item<'_>) -> Option<bool> {
    match kind? {
        NativeInvariant::Ele1 => match focus {
            // hasValue(): a primitive with a value. children(): a primitive's extensions;
            // its id is in the `_name` part.
            Item::Primitive(p) => Some(
                p.value.is_some()
                    || p.extensions().len()
                        > usize::from(p.extras.as_ref().is_some_and(|x| x.id.is_some())),
            ),
            // hasValue() is false for a complex value; children() is every value of every
            // property.
            Item::Element(e) => {
                let children: usize = e.props.iter().map(|p| p.values.len()).sum();
                Some(children > id_count(e))
            }
            _ => None,
        },
        NativeInvariant::Ext1 => match focus {
            Item::Element(e) if &*e.info.name == "Extension" => {
                Some((count(e, "extension") > 0) != (count(e, "value") > 0))
            }
            _ => None,
        },
        // `contained` empty: every one of these expressions is true.
        NativeInvariant::Contained => match focus {
            Item::Element(e) if count(e, "contained") == 0 => Some(true),
            _ => None,
        },
        // Navigation yields every value of `text`, then of each one's `div`.
        NativeInvariant::Dom6 => match focus {
            Item::Element(e) => Some(named(e, "text").is_some_and(|t| {
                t.values
                    .iter()
                    .any(|v| v.as_element().is_some_and(|n| count(n, "div") > 0))
            })),
            _ => None,
        },
        // No reference: the expression is empty. A reference not starting with `#`: the
        // left side of `or` is true.
        NativeInvariant::Ref1 => match focus {
            Item::Element(e) => match named(e, "reference").map(|p| &p.values[..]) {
                None => Some(true),
                Some(
                    [Value::Primitive(Primitive {
                        value: Some(Scalar::String(s)),
                        ..
                    })],
                ) if !s.starts_with('#') => Some(true),
                _ => None,
            },
            _ => None,
        },
    }
}

/// Where a markdown text has `<` followed by a letter or `/` (the start of an HTML tag).
fn html_tag_at(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    bytes
        .windows(2)
        .position(|w| w[0] == b'<' && (w[1].is_ascii_alphabetic() || w[1] == b'/'))
}

/// A location without its `.ofType(T)` steps (`Observation.value.ofType(Quantity).code`
/// becomes `Observation.value.code`).
fn strip_of_type(loc: &str) -> String {
    let mut out = String::with_capacity(loc.len());
    let mut rest = loc;
    while let Some(i) = rest.find(".ofType(") {
        out.push_str(&rest[..i]);
        rest = rest[i..].find(')').map_or("", |j| &rest[i + j + 1..]);
    }
    out.push_str(rest);
    out
}

/// Whether the first segment of a context expression is an R4 type; contexts naming types
/// of later FHIR versions (`CanonicalResource`) cannot be judged here and are accepted.
fn context_type_known(expr: &str) -> bool {
    let first = expr.split('.').next().unwrap_or(expr);
    crate::model::schema::type_info(first).is_some()
}

/// The resource type named by a relative or absolute literal reference
/// (`Patient/1`, `http://x/fhir/Patient/1/_history/2`).
fn reference_type(reference: &str) -> Option<&str> {
    // The second and the fourth segment from the end, as `split('/')` gives them.
    let mut parts = reference.rsplit('/');
    let _ = parts.next()?;
    let second = parts.next();
    let _ = parts.next();
    let fourth = parts.next();
    [second, fourth]
        .into_iter()
        .flatten()
        .find(|t| crate::model::schema::is_resource_type(t))
}

/// The (system, code, display) triples a coded value carries: `code`, `Coding`,
/// `CodeableConcept`, `Quantity` (its unit code), `string` and `uri`.
fn coded(v: &Value) -> Vec<(Option<&str>, &str, Option<&str>)> {
    let mut out = Vec::new();
    match v {
        Value::Primitive(p) => {
            if let Some(s) = p.as_str() {
                out.push((None, s, None));
            }
        }
        Value::Element(e) => match e.info.fhir_type_name() {
            "Coding" => out.extend(coding(e)),
            "CodeableConcept" => {
                for c in e.values("coding") {
                    if let Some(c) = c.as_element() {
                        out.extend(coding(c));
                    }
                }
            }
            _ if e.info.is_a("Quantity") => {
                if let Some(code) = e.str("code") {
                    out.push((e.str("system"), code, None));
                }
            }
            _ => {}
        },
    }
    out
}

fn coding(c: &Element) -> Option<(Option<&str>, &str, Option<&str>)> {
    Some((c.str("system"), c.str("code")?, c.str("display")))
}
