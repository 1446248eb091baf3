//! QuestionnaireResponse against its Questionnaire: the part of the validate stage that
//! checks the answers of a form, after the structural checks of the resource itself.
//!
//! The Questionnaire named by `QuestionnaireResponse.questionnaire` is looked up among the
//! resources the response contains (`#id`) and in the [`Registry`](crate::definitions::Registry).
//! Against it, following the R4 Questionnaire and QuestionnaireResponse pages:
//!
//! - items: every `linkId` must name an item at the same place in the Questionnaire's tree, in
//!   the Questionnaire's order; a group's children sit in `item.item`, a question's children
//!   in `item.answer.item`; an item that does not repeat appears once;
//! - answers: their type follows the item type (`choice` takes a Coding or the type of its
//!   `answerOption`s, `open-choice` also a string); groups, display items and the abstract
//!   `question` type take none; a question that does not repeat takes one;
//! - `required` (and the `questionnaire-minOccurs` extension) in a `completed` or `amended`
//!   response; `questionnaire-maxOccurs` always; enabled state from `enableWhen` and
//!   `enableBehavior` (a disabled item must not be answered, nor is it required);
//! - values: `answerOption` and `optionExclusive`, `answerValueSet` (membership and display),
//!   `maxLength` and the `minLength`, `regex`, `minValue`, `maxValue`, `maxDecimalPlaces`,
//!   `mimeType`, `maxSize`, `questionnaire-unitOption`, `questionnaire-unitValueSet`,
//!   `questionnaire-referenceResource` and SDC `minQuantity`/`maxQuantity` extensions.
//!
//! Comparisons use FHIRPath semantics ([`crate::fhirpath::temporal`],
//! [`crate::fhirpath::quantity`]): a date compared at a precision it does not have is
//! reported as uncertain (a warning), and quantities compare only through UCUM codes.

use super::check::Walk;
use super::issue::{IssueType, Severity};
use super::terminology::Membership;
use crate::definitions::Kind;
use crate::fhirpath::quantity::Quantity;
use crate::fhirpath::temporal::{Date, DateTime, Time};
use crate::model::{Element, Value};
use rust_decimal::Decimal;
use serde_json::Value as Json;
use std::cmp::Ordering;
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;

/// Extensions read from Questionnaire items.
mod ext {
    const CORE: &str = "http://hl7.org/fhir/StructureDefinition/";
    const SDC: &str = "http://hl7.org/fhir/uv/sdc/StructureDefinition/";

    /// Whether `url` is the core extension `name`.
    pub fn core(url: &str, name: &str) -> bool {
        url.strip_prefix(CORE) == Some(name)
    }

    /// Whether `url` is the SDC extension `name`.
    pub fn sdc(url: &str, name: &str) -> bool {
        url.strip_prefix(SDC) == Some(name)
    }

    pub const MIN_VALUE: &str = "minValue";
    pub const MAX_VALUE: &str = "maxValue";
    pub const MAX_DECIMAL_PLACES: &str = "maxDecimalPlaces";
    pub const MIN_LENGTH: &str = "minLength";
    pub const REGEX: &str = "regex";
    pub const ENTRY_FORMAT: &str = "entryFormat";
    pub const MAX_SIZE: &str = "maxSize";
    pub const MIME_TYPE: &str = "mimeType";
    pub const MIN_OCCURS: &str = "questionnaire-minOccurs";
    pub const MAX_OCCURS: &str = "questionnaire-maxOccurs";
    pub const UNIT_OPTION: &str = "questionnaire-unitOption";
    pub const UNIT_VALUE_SET: &str = "questionnaire-unitValueSet";
    pub const REFERENCE_RESOURCE: &str = "questionnaire-referenceResource";
    pub const OPTION_EXCLUSIVE: &str = "questionnaire-optionExclusive";
    pub const MIN_QUANTITY: &str = "sdc-questionnaire-minQuantity";
    pub const MAX_QUANTITY: &str = "sdc-questionnaire-maxQuantity";
}

const UCUM: &str = "http://unitsofmeasure.org";

/// Checks a QuestionnaireResponse against the Questionnaire it names, reporting into `walk`
/// at the response's location. Nothing is checked when the response names no Questionnaire;
/// one that cannot be found is a warning (or an error when the URL names another kind of
/// resource).
pub(crate) fn check<'a>(walk: &mut Walk<'_, 'a>, qr: &'a Element) {
    let Some(canonical) = qr.str("questionnaire") else {
        return;
    };
    let pos = qr
        .values("questionnaire")
        .first()
        .map_or(qr.pos, Value::pos);
    let Some(q) = resolve(walk, qr, canonical, pos) else {
        return;
    };
    let status = qr.str("status").unwrap_or_default();
    let mut form = Form {
        walk,
        completed: matches!(status, "completed" | "amended"),
        ancestors: vec![qr],
    };
    form.questionnaire_status(&q, qr);
    form.items(array(&q, "item"), qr.values("item"), qr.pos);
}

/// The Questionnaire for a canonical URL: a contained one for `#id`, else the registry's.
fn resolve(walk: &mut Walk<'_, '_>, qr: &Element, canonical: &str, pos: u32) -> Option<Arc<Json>> {
    if let Some(id) = canonical.strip_prefix('#') {
        let found = contained_questionnaire(qr, id);
        if found.is_none() {
            walk.report(
                Severity::Error,
                IssueType::NotFound,
                pos,
                format!("the contained Questionnaire '{canonical}' is not in the response"),
                None,
            );
        }
        return found;
    }
    let registry = walk.validator.registry();
    if let Some(q) = registry.get(Kind::Questionnaire, canonical) {
        return Some(q);
    }
    if let Some(q) = relative_questionnaire(walk, canonical) {
        return Some(q);
    }
    let known = [
        (Kind::ValueSet, "ValueSet"),
        (Kind::CodeSystem, "CodeSystem"),
        (Kind::StructureDefinition, "StructureDefinition"),
        (Kind::SearchParameter, "SearchParameter"),
        (Kind::ConceptMap, "ConceptMap"),
    ]
    .into_iter()
    .find(|(kind, _)| registry.get(*kind, canonical).is_some())
    .map(|(_, name)| name);
    match known.or_else(|| canonical_type(canonical)) {
        Some(name) => walk.report(
            Severity::Error,
            IssueType::Invalid,
            pos,
            format!("'{canonical}' refers to a {name}, not a Questionnaire"),
            None,
        ),
        None => walk.report(
            Severity::Warning,
            IssueType::NotFound,
            pos,
            format!("the Questionnaire '{canonical}' cannot be found, so the answers are not checked against it"),
            None,
        ),
    }
    None
}

/// For a relative reference `Questionnaire/[id]` (seen in place of a canonical URL), the one
/// loaded Questionnaire whose canonical URL ends with it.
fn relative_questionnaire(walk: &Walk<'_, '_>, reference: &str) -> Option<Arc<Json>> {
    let id = reference.strip_prefix("Questionnaire/")?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    let tail = format!("/{reference}");
    let mut found = walk
        .validator
        .registry()
        .loaded(Kind::Questionnaire)
        .filter(|q| text(q, "url").is_some_and(|u| u.ends_with(&tail)));
    let first = found.next()?;
    found.next().is_none().then(|| first.clone())
}

/// The resource type other than Questionnaire that an unresolved canonical URL of the
/// `[base]/[type]/[id]` form names (`http://hl7.org/fhir/ValueSet/x` names a ValueSet).
fn canonical_type(canonical: &str) -> Option<&str> {
    let url = canonical.split('|').next().unwrap_or(canonical);
    match reference_type(url) {
        Target::Type(t) if t != "Questionnaire" => Some(t),
        _ => None,
    }
}

/// A contained Questionnaire by id, as JSON.
fn contained_questionnaire(qr: &Element, id: &str) -> Option<Arc<Json>> {
    let q = qr
        .values("contained")
        .iter()
        .filter_map(Value::as_element)
        .find(|c| c.type_name() == "Questionnaire" && c.id() == Some(id))?;
    serde_json::from_str(&crate::model::to_json(q))
        .ok()
        .map(Arc::new)
}

/// The state of checking one response: where the walk reports, whether the response claims
/// to be complete, and the response elements enclosing the current item (for `enableWhen`).
struct Form<'w, 'v, 'a> {
    walk: &'w mut Walk<'v, 'a>,
    completed: bool,
    ancestors: Vec<&'a Element>,
}

impl<'a> Form<'_, '_, 'a> {
    fn report(&mut self, severity: Severity, kind: IssueType, pos: u32, message: String) {
        self.walk.report(severity, kind, pos, message, None);
    }

    fn error(&mut self, kind: IssueType, pos: u32, message: String) {
        self.report(Severity::Error, kind, pos, message);
    }

    /// Runs `f` with `segment` appended to the location.
    fn at<R>(&mut self, segment: fmt::Arguments<'_>, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.walk.location.len();
        let _ = self.walk.location.write_fmt(segment);
        let r = f(self);
        self.walk.location.truncate(len);
        r
    }

    /// Runs `f` with `el` as the innermost enclosing response element.
    fn within<R>(&mut self, el: &'a Element, f: impl FnOnce(&mut Self) -> R) -> R {
        self.ancestors.push(el);
        let r = f(self);
        self.ancestors.pop();
        r
    }

    /// Questionnaire status and effective period, against the response's `authored`.
    fn questionnaire_status(&mut self, q: &Json, qr: &'a Element) {
        let url = text(q, "url").unwrap_or("(contained)");
        match text(q, "status") {
            Some("retired") => self.report(
                Severity::Warning,
                IssueType::BusinessRule,
                qr.pos,
                format!("the Questionnaire {url} is retired"),
            ),
            Some("draft") => self.report(
                Severity::Information,
                IssueType::Informational,
                qr.pos,
                format!("the Questionnaire {url} is a draft"),
            ),
            _ => {}
        }
        let Some(authored) = qr
            .str("authored")
            .and_then(|a| DateTime::parse_fhir(a).ok())
        else {
            return;
        };
        let Some(period) = q.get("effectivePeriod") else {
            return;
        };
        let pos = qr.values("authored").first().map_or(qr.pos, Value::pos);
        for (key, outside, word) in [
            ("start", Ordering::Less, "before the start"),
            ("end", Ordering::Greater, "after the end"),
        ] {
            let bound = text(period, key).and_then(|t| DateTime::parse_fhir(t).ok());
            if bound.and_then(|b| authored.compare(&b)) == Some(outside) {
                self.at(format_args!(".authored"), |s| {
                    s.report(
                        Severity::Warning,
                        IssueType::BusinessRule,
                        pos,
                        format!("the response was authored {word} of the Questionnaire's effective period"),
                    );
                });
            }
        }
    }

    /// Matches sibling response items against sibling Questionnaire items: known linkIds in
    /// Questionnaire order, then presence, repetition and enabled state per Questionnaire item.
    fn items(&mut self, q_items: &[Json], r_items: &'a [Value], parent_pos: u32) {
        let mut last = 0;
        for (i, r) in r_items.iter().enumerate() {
            let Some(r) = r.as_element() else { continue };
            self.at(format_args!(".item[{i}]"), |s| {
                let link = r.str("linkId").unwrap_or_default();
                match q_items.iter().position(|q| text(q, "linkId") == Some(link)) {
                    None => s.unknown_link(q_items, link, r.pos),
                    Some(qi) => {
                        if qi < last {
                            s.error(
                                IssueType::Structure,
                                r.pos,
                                format!("item '{link}' is out of order: the Questionnaire puts it before the previous item"),
                            );
                        }
                        last = last.max(qi);
                        s.item(&q_items[qi], r);
                    }
                }
            });
        }
        for q in q_items {
            self.presence(q, r_items, parent_pos);
        }
    }

    fn unknown_link(&mut self, q_items: &[Json], link: &str, pos: u32) {
        let message = if q_items.iter().any(|q| defines_link(q, link)) {
            format!("linkId '{link}' belongs to an item nested deeper in the Questionnaire, not at this level")
        } else {
            format!("linkId '{link}' is not an item of the Questionnaire at this level")
        };
        self.error(IssueType::Structure, pos, message);
    }

    /// The response items for one Questionnaire item among siblings: enabled state,
    /// required, repetition.
    fn presence(&mut self, q: &Json, r_items: &'a [Value], parent_pos: u32) {
        let link = text(q, "linkId").unwrap_or_default();
        let present: Vec<(usize, &'a Element)> = r_items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_element().map(|e| (i, e)))
            .filter(|(_, e)| e.str("linkId") == Some(link))
            .collect();
        if !self.enabled(q) {
            for &(i, e) in &present {
                if !e.values("answer").is_empty() || !e.values("item").is_empty() {
                    self.at(format_args!(".item[{i}]"), |s| {
                        s.error(
                            IssueType::BusinessRule,
                            e.pos,
                            format!("item '{link}' is answered although its enableWhen conditions do not enable it"),
                        );
                    });
                }
            }
            return;
        }
        let is_group = text(q, "type") == Some("group");
        let min = ext_integer(q, ext::MIN_OCCURS)
            .filter(|_| is_group)
            .unwrap_or(0);
        let required = q.get("required").and_then(Json::as_bool) == Some(true) || min > 0;
        if present.is_empty() {
            if required {
                self.required_missing(parent_pos, format!("required item '{link}' is missing"));
            }
            return;
        }
        let repeats = q.get("repeats").and_then(Json::as_bool) == Some(true);
        if present.len() > 1 && !(is_group && repeats) {
            let (i, e) = present[1];
            let message = if is_group {
                format!(
                    "group '{link}' does not repeat, but appears {} times",
                    present.len()
                )
            } else {
                format!("item '{link}' appears {} times; a question is given once, with one answer per repetition", present.len())
            };
            self.at(format_args!(".item[{i}]"), |s| {
                s.error(IssueType::Structure, e.pos, message);
            });
        }
        if is_group {
            self.occurrences(q, present.len(), present[0].1.pos, "repetitions");
        }
    }

    /// Reports a missing required item or answer: an error in a completed response, else
    /// information (the response may still be filled in).
    fn required_missing(&mut self, pos: u32, message: String) {
        let severity = if self.completed {
            Severity::Error
        } else {
            Severity::Information
        };
        self.report(severity, IssueType::Required, pos, message);
    }

    /// `questionnaire-minOccurs` / `questionnaire-maxOccurs` against a count.
    fn occurrences(&mut self, q: &Json, count: usize, pos: u32, what: &str) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        if let Some(min) = ext_integer(q, ext::MIN_OCCURS) {
            if count < min {
                self.required_missing(
                    pos,
                    format!("at least {min} {what} are needed, but there are {count}"),
                );
            }
        }
        if let Some(max) = ext_integer(q, ext::MAX_OCCURS) {
            if count > max {
                self.error(
                    IssueType::Structure,
                    pos,
                    format!("at most {max} {what} are allowed, but there are {count}"),
                );
            }
        }
    }

    /// One response item against its Questionnaire item.
    fn item(&mut self, q: &Json, r: &'a Element) {
        let link = text(q, "linkId").unwrap_or_default();
        let item_type = text(q, "type").unwrap_or_default();
        let answers = r.values("answer");
        match item_type {
            "group" => {
                self.no_answers(answers, &format!("group '{link}'"));
                let children = r.values("item");
                if children.is_empty() && q.get("required").and_then(Json::as_bool) == Some(true) {
                    self.required_missing(r.pos, format!("required group '{link}' has no items"));
                }
                self.within(r, |s| s.items(array(q, "item"), children, r.pos));
            }
            "display" => self.no_answers(answers, &format!("display item '{link}'")),
            "question" => self.no_answers(
                answers,
                &format!("item '{link}' of the abstract type 'question'"),
            ),
            _ => self.question(q, r, item_type),
        }
    }

    fn no_answers(&mut self, answers: &[Value], what: &str) {
        if let Some(first) = answers.first() {
            self.at(format_args!(".answer[0]"), |s| {
                s.error(
                    IssueType::Structure,
                    first.pos(),
                    format!("{what} cannot have answers"),
                );
            });
        }
    }

    /// A question item: answer count, required, each answer, exclusive options.
    fn question(&mut self, q: &Json, r: &'a Element, item_type: &str) {
        let link = text(q, "linkId").unwrap_or_default();
        let answers = r.values("answer");
        if !r.values("item").is_empty() {
            self.error(
                IssueType::Structure,
                r.pos,
                format!(
                    "the items nested in question '{link}' belong inside its answers (answer.item)"
                ),
            );
        }
        let repeats = q.get("repeats").and_then(Json::as_bool) == Some(true);
        if answers.len() > 1 && !repeats {
            self.error(
                IssueType::Structure,
                r.pos,
                format!(
                    "question '{link}' does not repeat, but has {} answers",
                    answers.len()
                ),
            );
        }
        if answers.is_empty() && q.get("required").and_then(Json::as_bool) == Some(true) {
            self.required_missing(r.pos, format!("required question '{link}' has no answer"));
        }
        if !answers.is_empty() || ext_integer(q, ext::MIN_OCCURS).is_some() {
            self.occurrences(q, answers.len(), r.pos, "answers");
        }
        let mut exclusive = None;
        for (i, a) in answers.iter().enumerate() {
            let Some(a) = a.as_element() else { continue };
            self.at(format_args!(".answer[{i}]"), |s| {
                if s.answer(q, item_type, a) {
                    exclusive.get_or_insert((i, a.pos));
                }
                s.within(a, |s| s.items(array(q, "item"), a.values("item"), a.pos));
            });
        }
        if let (Some((i, pos)), true) = (exclusive, answers.len() > 1) {
            self.at(format_args!(".answer[{i}]"), |s| {
                s.error(
                    IssueType::BusinessRule,
                    pos,
                    "this answer is an exclusive option: no other answer may be given with it"
                        .to_string(),
                );
            });
        }
    }

    /// One answer: its type, then the rules for that type. Returns whether it selected an
    /// exclusive option.
    fn answer(&mut self, q: &Json, item_type: &str, a: &'a Element) -> bool {
        let Some(prop) = a.get("value") else {
            return false;
        };
        let Some(v) = prop.values.first() else {
            return false;
        };
        let ty: &str = &a.element_type(prop).code;
        let Some(allowed) = answer_types(item_type, q) else {
            return false;
        };
        let segment = format!(".value.ofType({ty})");
        self.at(format_args!("{segment}"), |s| {
            if !allowed.contains(&ty) {
                s.error(
                    IssueType::Structure,
                    v.pos(),
                    format!(
                        "answers to items of type {item_type} must be of type {}, not {ty}",
                        allowed.join(" or ")
                    ),
                );
                return false;
            }
            s.value(q, item_type, ty, v)
        })
    }

    /// The rules for one answer value of an allowed type.
    fn value(&mut self, q: &Json, item_type: &str, ty: &str, v: &'a Value) -> bool {
        let pos = v.pos();
        match (v, ty) {
            (Value::Primitive(p), "string" | "uri") => {
                if let Some(t) = p.as_str() {
                    self.string_rules(q, t, pos);
                }
            }
            (Value::Element(e), "Attachment") => self.attachment(q, e, pos),
            (Value::Element(e), "Reference") => self.reference(q, e, pos),
            (Value::Element(e), "Quantity") => self.quantity(q, e, pos),
            (Value::Element(e), "Coding") => {
                if let Some(vs) = text(q, "answerValueSet") {
                    self.value_set(vs, e, pos, "the answer value set");
                }
            }
            _ => {}
        }
        let datum = Datum::of_answer(ty, v);
        if let (Some(d), Value::Primitive(p)) = (&datum, v) {
            self.bounds(q, d, pos);
            if ty == "decimal" {
                self.decimal_places(q, p.as_str().unwrap_or_default(), pos);
            }
        }
        match datum {
            Some(d) if !(item_type == "open-choice" && ty == "string") => self.option(q, &d, pos),
            _ => false,
        }
    }

    /// `maxLength`, `minLength` and `regex` on a string answer.
    fn string_rules(&mut self, q: &Json, t: &str, pos: u32) {
        let len = t.chars().count();
        let len64 = i64::try_from(len).unwrap_or(i64::MAX);
        if let Some(max) = q.get("maxLength").and_then(Json::as_i64) {
            if len64 > max {
                self.error(
                    IssueType::Value,
                    pos,
                    format!(
                        "the answer is {len} characters long, more than the maximum length {max}"
                    ),
                );
            }
        }
        if let Some(min) = ext_integer(q, ext::MIN_LENGTH) {
            if len64 < min {
                self.error(
                    IssueType::Value,
                    pos,
                    format!(
                        "the answer is {len} characters long, less than the minimum length {min}"
                    ),
                );
            }
        }
        let Some(pattern) = ext_json(q, ext::core, ext::REGEX).and_then(Json::as_str) else {
            return;
        };
        match regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
        {
            Ok(re) if !re.is_match(t) => {
                let format_hint = ext_json(q, ext::core, ext::ENTRY_FORMAT)
                    .and_then(Json::as_str)
                    .map(|f| format!(" (expected format: {f})"))
                    .unwrap_or_default();
                self.error(
                    IssueType::Value,
                    pos,
                    format!("the answer '{t}' does not match the pattern {pattern}{format_hint}"),
                );
            }
            Ok(_) => {}
            Err(err) => self.report(
                Severity::Warning,
                IssueType::Processing,
                pos,
                format!("the item's regex {pattern} cannot be used: {err}"),
            ),
        }
    }

    /// `minValue` / `maxValue` on integer, decimal, date, dateTime and time answers.
    fn bounds(&mut self, q: &Json, d: &Datum, pos: u32) {
        for (name, outside, word, bound_name) in [
            (
                ext::MIN_VALUE,
                Ordering::Less,
                "less than the minimum",
                "minimum",
            ),
            (
                ext::MAX_VALUE,
                Ordering::Greater,
                "greater than the maximum",
                "maximum",
            ),
        ] {
            let Some((ty, j)) = ext_typed(q, ext::core, name) else {
                continue;
            };
            let Some(bound) = Datum::of_json(&ty, j) else {
                continue;
            };
            match compare(d, &bound) {
                Some(o) if o == outside => self.error(
                    IssueType::Value,
                    pos,
                    format!("the value {d} is {word} {bound}"),
                ),
                Some(_) => {}
                None => self.report(
                    Severity::Warning,
                    IssueType::Value,
                    pos,
                    format!("the value {d} cannot be compared with the {bound_name} {bound} (different types or precisions)"),
                ),
            }
        }
    }

    /// `maxDecimalPlaces` on a decimal (or a Quantity's value), from its text.
    fn decimal_places(&mut self, q: &Json, number: &str, pos: u32) {
        let Some(max) = ext_integer(q, ext::MAX_DECIMAL_PLACES) else {
            return;
        };
        let places = decimal_places(number);
        if i64::try_from(places).unwrap_or(i64::MAX) > max {
            self.error(
                IssueType::Value,
                pos,
                format!(
                    "the value {number} has {places} decimal places, more than the allowed {max}"
                ),
            );
        }
    }

    /// The `answerOption`s: a value must equal one of them. Returns whether the option it
    /// matched is exclusive.
    fn option(&mut self, q: &Json, d: &Datum, pos: u32) -> bool {
        let options = array(q, "answerOption");
        if options.is_empty() {
            return false;
        }
        let found = options.iter().find(|o| {
            typed(o, "value")
                .and_then(|(t, j)| Datum::of_json(&t, j))
                .is_some_and(|od| equals(&od, d) == Some(true))
        });
        match found {
            Some(o) => {
                ext_json(o, ext::core, ext::OPTION_EXCLUSIVE).and_then(Json::as_bool) == Some(true)
            }
            None => {
                self.error(
                    IssueType::CodeInvalid,
                    pos,
                    format!("the answer {d} is not one of the item's answer options"),
                );
                false
            }
        }
    }

    /// A Coding checked against a ValueSet: membership, then its display.
    fn value_set(&mut self, vs: &str, c: &Element, pos: u32, what: &str) {
        let Some(code) = c.str("code") else {
            return;
        };
        if vs.starts_with('#') {
            self.report(
                Severity::Information,
                IssueType::NotSupported,
                pos,
                format!("{what} {vs} is contained in the Questionnaire and is not checked"),
            );
            return;
        }
        let (system, display) = (c.str("system"), c.str("display"));
        let tx = self.walk.validator.terminology();
        let answer = tx.validate_code(vs, system, code, display);
        let shown = match system {
            Some(s) => format!("{s}#{code}"),
            None => code.to_string(),
        };
        match answer {
            Err(err) => self.report(
                Severity::Warning,
                IssueType::NotSupported,
                pos,
                format!("{what} {vs} cannot be used: {err}"),
            ),
            Ok(Membership::NotMember { reason }) => self.error(
                IssueType::CodeInvalid,
                pos,
                format!("{shown} is not in {what} {vs} ({reason})"),
            ),
            Ok(Membership::Unverifiable { reason }) => self.report(
                Severity::Information,
                IssueType::NotSupported,
                pos,
                format!("{shown} cannot be verified against {what} {vs}: {reason}"),
            ),
            Ok(Membership::Member) => {
                let mismatch = display.and_then(|d| tx.display_mismatch(vs, system, code, d));
                if let Some(message) = mismatch {
                    // The display is what the respondent saw: a wrong one leaves the answer
                    // ambiguous, so it is not a valid answer from the set.
                    self.at(format_args!(".display"), |s| {
                        s.error(IssueType::CodeInvalid, pos, message);
                    });
                }
            }
        }
    }

    /// Quantity answers: unit options, unit value set, decimal places, SDC bounds.
    fn quantity(&mut self, q: &Json, e: &Element, pos: u32) {
        let system = e.str("system");
        let code = e.str("code");
        let options: Vec<&Json> = extensions(q, ext::core, ext::UNIT_OPTION)
            .filter_map(|x| x.get("valueCoding"))
            .collect();
        if !options.is_empty() {
            let unit = e.str("unit");
            let ok = options.iter().any(|o| match code {
                Some(c) => text(o, "code") == Some(c) && text(o, "system") == system,
                None => unit
                    .is_some_and(|u| text(o, "code") == Some(u) || text(o, "display") == Some(u)),
            });
            if !ok {
                let allowed: Vec<&str> = options.iter().filter_map(|o| text(o, "code")).collect();
                self.error(
                    IssueType::CodeInvalid,
                    pos,
                    format!(
                        "the unit {} is not one of the item's unit options ({})",
                        code.or(unit).unwrap_or("(none)"),
                        allowed.join(", ")
                    ),
                );
            }
        }
        if let Some(vs) = ext_json(q, ext::core, ext::UNIT_VALUE_SET).and_then(Json::as_str) {
            self.value_set(vs, e, pos, "the unit value set");
        }
        if let Some(value) = e.str("value") {
            self.decimal_places(q, value, pos);
        }
        let answer = Qty::of_element(e);
        for (name, outside, word) in [
            (ext::MIN_QUANTITY, Ordering::Less, "minimum"),
            (ext::MAX_QUANTITY, Ordering::Greater, "maximum"),
        ] {
            let Some(bound) = ext_json(q, ext::sdc, name) else {
                continue;
            };
            let bound = Qty::of_json(bound);
            match answer.compare(&bound) {
                Ok(o) if o == outside => self.error(
                    IssueType::Value,
                    pos,
                    format!(
                        "the quantity {answer} is {} the {word} {bound}",
                        if outside == Ordering::Less {
                            "less than"
                        } else {
                            "greater than"
                        }
                    ),
                ),
                Ok(_) => {}
                Err(why) => self.error(
                    IssueType::Value,
                    pos,
                    format!(
                        "the quantity {answer} cannot be checked against the {word} {bound}: {why}"
                    ),
                ),
            }
        }
    }

    /// Attachment answers: `mimeType` and `maxSize`.
    fn attachment(&mut self, q: &Json, e: &Element, pos: u32) {
        let types: Vec<&str> = extensions(q, ext::core, ext::MIME_TYPE)
            .filter_map(|x| text(x, "valueCode"))
            .collect();
        if !types.is_empty() {
            let ct = e.str("contentType").unwrap_or_default();
            if !types.iter().any(|t| mime_matches(t, ct)) {
                self.error(
                    IssueType::Value,
                    pos,
                    format!(
                        "the content type '{ct}' is not allowed for this answer (allowed: {})",
                        types.join(", ")
                    ),
                );
            }
        }
        let max = ext_json(q, ext::core, ext::MAX_SIZE).and_then(json_decimal);
        if let (Some(max), Some(size)) = (max, attachment_size(e)) {
            if Decimal::from(size) > max {
                self.error(
                    IssueType::Value,
                    pos,
                    format!("the attachment is {size} bytes, more than the allowed {max}"),
                );
            }
        }
    }

    /// Reference answers: the target's resource type, and `questionnaire-referenceResource`.
    fn reference(&mut self, q: &Json, e: &Element, pos: u32) {
        let allowed: Vec<&str> = extensions(q, ext::core, ext::REFERENCE_RESOURCE)
            .filter_map(|x| text(x, "valueCode"))
            .collect();
        let target = match e.str("reference") {
            Some(r) if r.starts_with('#') => self.contained_type(&r[1..]),
            Some(r) => match reference_type(r) {
                Target::Type(t) => Some(t.to_string()),
                Target::Unknown => e.str("type").map(str::to_string),
                Target::NotAResource(t) => {
                    self.error(
                        IssueType::Value,
                        pos,
                        format!("'{t}' in the reference {r} is not a resource type"),
                    );
                    return;
                }
            },
            None => e.str("type").map(str::to_string),
        };
        let Some(target) = target else { return };
        if !allowed.is_empty() && !allowed.iter().any(|a| *a == target || *a == "Resource") {
            self.error(
                IssueType::Value,
                pos,
                format!(
                    "a reference to {target} is not allowed here (allowed: {})",
                    allowed.join(", ")
                ),
            );
        }
    }

    /// The type of a resource contained in the response.
    fn contained_type(&self, id: &str) -> Option<String> {
        let root = self.ancestors.first()?;
        root.values("contained")
            .iter()
            .filter_map(Value::as_element)
            .find(|c| c.id() == Some(id))
            .map(|c| c.type_name().to_string())
    }

    /// Whether an item is enabled by its `enableWhen` conditions and `enableBehavior`.
    fn enabled(&self, q: &Json) -> bool {
        let conditions = array(q, "enableWhen");
        if conditions.is_empty() {
            return true;
        }
        let mut results = conditions.iter().map(|c| self.condition(c));
        if text(q, "enableBehavior") == Some("any") {
            results.any(|b| b)
        } else {
            results.all(|b| b)
        }
    }

    /// One `enableWhen`: the answers to its question, found in the nearest enclosing
    /// response element that holds that question, against its operator and answer.
    fn condition(&self, cond: &Json) -> bool {
        let Some(question) = text(cond, "question") else {
            return true;
        };
        let values: Vec<Datum> = self
            .answers_to(question)
            .into_iter()
            .filter_map(|a| {
                let prop = a.get("value")?;
                Datum::of_answer(&a.element_type(prop).code, prop.values.first()?)
            })
            .collect();
        let op = text(cond, "operator").unwrap_or("=");
        if op == "exists" {
            let wanted = cond
                .get("answerBoolean")
                .and_then(Json::as_bool)
                .unwrap_or(true);
            return values.is_empty() != wanted;
        }
        let Some(expected) = typed(cond, "answer").and_then(|(t, j)| Datum::of_json(&t, j)) else {
            return false;
        };
        values.iter().any(|v| match op {
            "=" => equals(v, &expected) == Some(true),
            "!=" => equals(v, &expected) == Some(false),
            ">" => compare(v, &expected) == Some(Ordering::Greater),
            "<" => compare(v, &expected) == Some(Ordering::Less),
            ">=" => matches!(
                compare(v, &expected),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            "<=" => matches!(
                compare(v, &expected),
                Some(Ordering::Less | Ordering::Equal)
            ),
            _ => false,
        })
    }

    /// The answers given to `link`, from the innermost enclosing element that holds it.
    fn answers_to(&self, link: &str) -> Vec<&'a Element> {
        for scope in self.ancestors.iter().rev() {
            let mut found = false;
            let mut out = Vec::new();
            collect_answers(scope, link, &mut found, &mut out);
            if found {
                return out;
            }
        }
        Vec::new()
    }
}

/// The response items directly below an item, answer or response: `item` and
/// `answer.item`.
fn child_items(el: &Element) -> impl Iterator<Item = &Element> {
    let direct = el.values("item").iter();
    let nested = el
        .values("answer")
        .iter()
        .filter_map(Value::as_element)
        .flat_map(|a| a.values("item").iter());
    direct.chain(nested).filter_map(Value::as_element)
}

fn collect_answers<'a>(el: &'a Element, link: &str, found: &mut bool, out: &mut Vec<&'a Element>) {
    for item in child_items(el) {
        if item.str("linkId") == Some(link) {
            *found = true;
            out.extend(item.values("answer").iter().filter_map(Value::as_element));
        }
        collect_answers(item, link, found, out);
    }
}

/// Whether a Questionnaire item or one of its descendants has `linkId` `link`.
fn defines_link(q: &Json, link: &str) -> bool {
    text(q, "linkId") == Some(link) || array(q, "item").iter().any(|c| defines_link(c, link))
}

/// The answer types an item type takes (`None`: an unknown type, not checked). A `choice`
/// item takes a Coding or the type of its answer options; with neither options nor a value
/// set, any type an answer option may have.
fn answer_types(item_type: &str, q: &Json) -> Option<Vec<&'static str>> {
    const OPTION_TYPES: [&str; 6] = ["integer", "date", "time", "string", "Coding", "Reference"];
    let single = |t: &'static str| Some(vec![t]);
    match item_type {
        "boolean" => single("boolean"),
        "decimal" => single("decimal"),
        "integer" => single("integer"),
        "date" => single("date"),
        "dateTime" => single("dateTime"),
        "time" => single("time"),
        "string" | "text" => single("string"),
        "url" => single("uri"),
        "attachment" => single("Attachment"),
        "reference" => single("Reference"),
        "quantity" => single("Quantity"),
        "group" | "display" | "question" => Some(Vec::new()),
        "choice" | "open-choice" => {
            let options = array(q, "answerOption");
            let mut types: Vec<&'static str> =
                if options.is_empty() && q.get("answerValueSet").is_none() {
                    OPTION_TYPES.to_vec()
                } else {
                    let mut t = vec!["Coding"];
                    for o in options {
                        if let Some((ty, _)) = typed(o, "value") {
                            if let Some(known) = OPTION_TYPES.iter().find(|k| **k == ty) {
                                t.push(known);
                            }
                        }
                    }
                    t
                };
            if item_type == "open-choice" {
                types.push("string");
            }
            types.sort_unstable();
            types.dedup();
            Some(types)
        }
        _ => None,
    }
}

/// A value from an answer or a Questionnaire, in comparable form.
#[derive(Debug, Clone)]
enum Datum {
    Bool(bool),
    Number(Decimal),
    Date(Date),
    DateTime(DateTime),
    Time(Time),
    Text(String),
    Coding(Option<String>, Option<String>),
    Quantity(Qty),
    Reference(String),
}

impl Datum {
    /// A primitive of FHIR type `ty` from its text.
    fn primitive(ty: &str, t: &str) -> Option<Datum> {
        Some(match ty {
            "boolean" => Datum::Bool(t == "true"),
            "integer" | "decimal" | "positiveInt" | "unsignedInt" => {
                Datum::Number(parse_decimal(t)?)
            }
            "date" => Datum::Date(Date::parse_fhir(t).ok()?),
            "dateTime" | "instant" => Datum::DateTime(DateTime::parse_fhir(t).ok()?),
            "time" => Datum::Time(Time::parse_fhir(t).ok()?),
            _ => Datum::Text(t.to_string()),
        })
    }

    /// An answer value of type `ty`; `None` for types without a comparable form.
    fn of_answer(ty: &str, v: &Value) -> Option<Datum> {
        match v {
            Value::Primitive(p) => Datum::primitive(ty, p.as_str()?),
            Value::Element(e) => match ty {
                "Coding" => Some(Datum::Coding(
                    e.str("system").map(str::to_string),
                    e.str("code").map(str::to_string),
                )),
                "Quantity" => Some(Datum::Quantity(Qty::of_element(e))),
                "Reference" => e.str("reference").map(|r| Datum::Reference(r.to_string())),
                _ => None,
            },
        }
    }

    /// A Questionnaire value (`valueX`, `answerX`) of type `ty`.
    fn of_json(ty: &str, j: &Json) -> Option<Datum> {
        match ty {
            "Coding" => Some(Datum::Coding(
                text(j, "system").map(str::to_string),
                text(j, "code").map(str::to_string),
            )),
            "Quantity" => Some(Datum::Quantity(Qty::of_json(j))),
            "Reference" => text(j, "reference").map(|r| Datum::Reference(r.to_string())),
            _ => match j {
                Json::String(s) => Datum::primitive(ty, s),
                Json::Number(n) => Datum::primitive(ty, &n.to_string()),
                Json::Bool(b) => Some(Datum::Bool(*b)),
                _ => None,
            },
        }
    }
}

impl fmt::Display for Datum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Datum::Bool(b) => write!(f, "{b}"),
            Datum::Number(n) => write!(f, "{n}"),
            Datum::Date(d) => write!(f, "{d}"),
            Datum::DateTime(d) => write!(f, "{d}"),
            Datum::Time(t) => write!(f, "{t}"),
            Datum::Text(t) => write!(f, "'{t}'"),
            Datum::Coding(s, c) => write!(
                f,
                "{}#{}",
                s.as_deref().unwrap_or(""),
                c.as_deref().unwrap_or("")
            ),
            Datum::Quantity(q) => write!(f, "{q}"),
            Datum::Reference(r) => write!(f, "{r}"),
        }
    }
}

/// FHIRPath-style ordering of two values; `None` when they cannot be ordered (different
/// types, a precision only one has, units that do not convert).
fn compare(a: &Datum, b: &Datum) -> Option<Ordering> {
    match (a, b) {
        (Datum::Number(x), Datum::Number(y)) => Some(x.cmp(y)),
        (Datum::Date(x), Datum::Date(y)) => x.compare(y),
        (Datum::DateTime(x), Datum::DateTime(y)) => x.compare(y),
        (Datum::Date(x), Datum::DateTime(y)) => DateTime::from(*x).compare(y),
        (Datum::DateTime(x), Datum::Date(y)) => x.compare(&DateTime::from(*y)),
        (Datum::Time(x), Datum::Time(y)) => x.compare(y),
        (Datum::Text(x), Datum::Text(y)) => Some(x.cmp(y)),
        (Datum::Bool(x), Datum::Bool(y)) => Some(x.cmp(y)),
        (Datum::Quantity(x), Datum::Quantity(y)) => x.compare(y).ok(),
        _ => None,
    }
}

/// Equality: Codings by system and code, references by their text, others by [`compare`].
fn equals(a: &Datum, b: &Datum) -> Option<bool> {
    match (a, b) {
        (Datum::Coding(s1, c1), Datum::Coding(s2, c2)) => Some(s1 == s2 && c1 == c2),
        (Datum::Reference(x), Datum::Reference(y)) => Some(x == y),
        (Datum::Coding(..) | Datum::Reference(_), _)
        | (_, Datum::Coding(..) | Datum::Reference(_)) => Some(false),
        _ => compare(a, b).map(|o| o == Ordering::Equal),
    }
}

/// A FHIR Quantity as written.
#[derive(Debug, Clone, Default)]
struct Qty {
    value: Option<String>,
    unit: Option<String>,
    system: Option<String>,
    code: Option<String>,
}

impl Qty {
    fn of_element(e: &Element) -> Qty {
        let get = |k: &str| e.str(k).map(str::to_string);
        Qty {
            value: get("value"),
            unit: get("unit"),
            system: get("system"),
            code: get("code"),
        }
    }

    fn of_json(j: &Json) -> Qty {
        let get = |k: &str| text(j, k).map(str::to_string);
        Qty {
            value: j.get("value").and_then(|v| match v {
                Json::Number(n) => Some(n.to_string()),
                Json::String(s) => Some(s.clone()),
                _ => None,
            }),
            unit: get("unit"),
            system: get("system"),
            code: get("code"),
        }
    }

    /// The FHIRPath quantity: the UCUM code as unit, or `'1'` when no unit is given at all.
    /// `None` when the unit is not a UCUM code.
    fn formal(&self) -> Option<Quantity> {
        let value = parse_decimal(self.value.as_deref()?)?;
        match (&self.system, &self.code, &self.unit) {
            (Some(s), Some(c), _) if s == UCUM => Some(Quantity::new(value, c.clone())),
            (None, None, None) => Some(Quantity::new(value, "1")),
            _ => None,
        }
    }

    fn compare(&self, other: &Qty) -> Result<Ordering, &'static str> {
        let (Some(a), Some(b)) = (self.formal(), other.formal()) else {
            return Err("no UCUM units are given to compare them");
        };
        a.compare(&b).ok_or("their units do not convert")
    }
}

impl fmt::Display for Qty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.value.as_deref().unwrap_or("?"))?;
        if let Some(u) = self.unit.as_deref().or(self.code.as_deref()) {
            write!(f, " {u}")?;
        }
        if let (Some(s), Some(c)) = (&self.system, &self.code) {
            let s = if s == UCUM { "UCUM" } else { s };
            write!(f, " ({s}#{c})")?;
        }
        Ok(())
    }
}

/// What a literal reference says about its target's type.
enum Target<'r> {
    /// `[base/]Type/id[/_history/v]` with a known resource type.
    Type(&'r str),
    /// The `Type/id` shape with a name that is no resource type.
    NotAResource(&'r str),
    /// Another form (URN, opaque URL): the type is not given.
    Unknown,
}

fn reference_type(reference: &str) -> Target<'_> {
    let path = reference.split(['?', '#']).next().unwrap_or(reference);
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    let at = if n >= 4 && parts[n - 2] == "_history" {
        n - 4
    } else if n >= 2 {
        n - 2
    } else {
        return Target::Unknown;
    };
    let t = parts[at];
    if crate::model::schema::is_resource_type(t) {
        Target::Type(t)
    } else if looks_like_type(t) && !parts[n - 1].is_empty() {
        Target::NotAResource(t)
    } else {
        Target::Unknown
    }
}

/// A capitalised alphanumeric name, as resource types are.
fn looks_like_type(t: &str) -> bool {
    t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Whether a content type matches an allowed MIME type (`image/*` wildcards; parameters and
/// case ignored).
fn mime_matches(allowed: &str, content_type: &str) -> bool {
    let base = |m: &str| m.split(';').next().unwrap_or(m).trim().to_ascii_lowercase();
    let (allowed, actual) = (base(allowed), base(content_type));
    match allowed.strip_suffix("/*") {
        Some(top) => actual.split('/').next() == Some(top),
        None => allowed == actual,
    }
}

/// The size of an attachment: the larger of its stated `size` and its decoded `data`.
fn attachment_size(e: &Element) -> Option<u64> {
    let stated = e.str("size").and_then(|s| s.parse::<u64>().ok());
    let decoded = e.str("data").map(base64_len);
    stated.into_iter().chain(decoded).max()
}

/// The decoded length of base64 text.
fn base64_len(data: &str) -> u64 {
    let chars = data.bytes().filter(|b| !b.is_ascii_whitespace()).count() as u64;
    let padding = data
        .bytes()
        .rev()
        .filter(|b| !b.is_ascii_whitespace())
        .take_while(|b| *b == b'=')
        .count() as u64;
    (chars / 4 * 3).saturating_sub(padding)
}

/// Digits after the decimal point of a number as written.
fn decimal_places(number: &str) -> usize {
    let mantissa = number.split(['e', 'E']).next().unwrap_or(number);
    mantissa.split_once('.').map_or(0, |(_, f)| f.len())
}

fn parse_decimal(t: &str) -> Option<Decimal> {
    Decimal::from_str_exact(t)
        .or_else(|_| Decimal::from_scientific(t))
        .ok()
}

fn json_decimal(j: &Json) -> Option<Decimal> {
    match j {
        Json::Number(n) => parse_decimal(&n.to_string()),
        Json::String(s) => parse_decimal(s),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Reading the Questionnaire's JSON.

fn text<'q>(j: &'q Json, key: &str) -> Option<&'q str> {
    j.get(key)?.as_str()
}

fn array<'q>(j: &'q Json, key: &str) -> &'q [Json] {
    j.get(key)
        .and_then(Json::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The extensions of `j` whose URL `is(url, name)` accepts.
fn extensions<'q>(
    j: &'q Json,
    is: fn(&str, &str) -> bool,
    name: &'q str,
) -> impl Iterator<Item = &'q Json> {
    array(j, "extension")
        .iter()
        .filter(move |x| text(x, "url").is_some_and(|u| is(u, name)))
}

/// The value of the first such extension.
fn ext_json<'q>(j: &'q Json, is: fn(&str, &str) -> bool, name: &'q str) -> Option<&'q Json> {
    ext_typed(j, is, name).map(|(_, v)| v)
}

/// The first such extension's value with its type.
fn ext_typed<'q>(
    j: &'q Json,
    is: fn(&str, &str) -> bool,
    name: &'q str,
) -> Option<(String, &'q Json)> {
    typed(extensions(j, is, name).next()?, "value")
}

/// A core extension's integer value.
fn ext_integer(j: &Json, name: &str) -> Option<i64> {
    ext_json(j, ext::core, name).and_then(Json::as_i64)
}

/// The `prefix[x]` property of an object (`valueInteger`), with its FHIR type (`integer`).
fn typed<'q>(j: &'q Json, prefix: &str) -> Option<(String, &'q Json)> {
    j.as_object()?.iter().find_map(|(k, v)| {
        let rest = k.strip_prefix(prefix)?;
        let first = rest.chars().next()?;
        if !first.is_ascii_uppercase() {
            return None;
        }
        let lower = format!("{}{}", first.to_ascii_lowercase(), &rest[1..]);
        let ty = if crate::model::schema::primitive_kind(&lower).is_some() {
            lower
        } else {
            rest.to_string()
        };
        Some((ty, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::Registry;
    use crate::validate::{Issue, Validator};
    use serde_json::json;

    const URL: &str = "http://example.org/Questionnaire/q";

    fn questionnaire(items: Json) -> Json {
        json!({"resourceType": "Questionnaire", "url": URL, "status": "active", "item": items})
    }

    fn response(status: &str, items: Json) -> Json {
        let mut qr = json!({"resourceType": "QuestionnaireResponse", "questionnaire": URL, "status": status});
        if items.as_array().is_some_and(|a| !a.is_empty()) {
            qr["item"] = items;
        }
        qr
    }

    /// Runs the check alone (no structural validation) and returns all issues.
    fn run_with(q: Option<Json>, qr: &Json) -> Vec<Issue> {
        let mut registry = Registry::core();
        if let Some(q) = q {
            registry.add(q).expect("a Questionnaire");
        }
        let validator = Validator::new(registry);
        let text = qr.to_string();
        let parsed = crate::model::parse(&text).expect("a valid response");
        let mut walk = Walk::new(&validator, None);
        walk.location = "QuestionnaireResponse".to_string();
        check(&mut walk, &parsed);
        walk.issues
    }

    /// The error messages for a response to a questionnaire with `q_items`.
    fn errors(q_items: Json, status: &str, r_items: Json) -> Vec<String> {
        let issues = run_with(Some(questionnaire(q_items)), &response(status, r_items));
        issues
            .into_iter()
            .filter(|i| i.severity.is_error())
            .map(|i| format!("{}: {}", i.location, i.message))
            .collect()
    }

    fn completed(q_items: Json, r_items: Json) -> Vec<String> {
        errors(q_items, "completed", r_items)
    }

    fn one_error(found: &[String], needle: &str) {
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains(needle), "{found:?}");
    }

    #[test]
    fn link_ids_must_name_items_at_the_same_level() {
        let q =
            json!([{"linkId": "g", "type": "group", "item": [{"linkId": "a", "type": "string"}]}]);
        let good =
            json!([{"linkId": "g", "item": [{"linkId": "a", "answer": [{"valueString": "x"}]}]}]);
        assert!(completed(q.clone(), good).is_empty());
        let unknown = json!([{"linkId": "zz"}]);
        one_error(&completed(q.clone(), unknown), "'zz' is not an item");
        let wrong_level = json!([{"linkId": "a", "answer": [{"valueString": "x"}]}]);
        one_error(&completed(q, wrong_level), "nested deeper");
    }

    #[test]
    fn items_follow_questionnaire_order() {
        let q = json!([{"linkId": "a", "type": "string"}, {"linkId": "b", "type": "string"}]);
        let ordered = json!([{"linkId": "a"}, {"linkId": "b"}]);
        assert!(completed(q.clone(), ordered).is_empty());
        let reversed = json!([{"linkId": "b"}, {"linkId": "a"}]);
        one_error(&completed(q, reversed), "out of order");
    }

    #[test]
    fn answer_type_follows_item_type() {
        let q = json!([{"linkId": "a", "type": "boolean"}]);
        assert!(completed(
            q.clone(),
            json!([{"linkId": "a", "answer": [{"valueBoolean": true}]}])
        )
        .is_empty());
        let coding = json!([{"linkId": "a", "answer": [{"valueCoding": {"code": "x"}}]}]);
        one_error(&completed(q, coding), "must be of type boolean, not Coding");
        let url = json!([{"linkId": "u", "type": "url"}]);
        assert!(completed(
            url,
            json!([{"linkId": "u", "answer": [{"valueUri": "http://x"}]}])
        )
        .is_empty());
    }

    #[test]
    fn choice_answers_take_coding_or_the_option_type() {
        let free = json!([{"linkId": "c", "type": "choice"}]);
        assert!(completed(
            free,
            json!([{"linkId": "c", "answer": [{"valueString": "x"}]}])
        )
        .is_empty());
        let coded = json!([{"linkId": "c", "type": "choice", "answerOption": [{"valueCoding": {"code": "x"}}]}]);
        let string = json!([{"linkId": "c", "answer": [{"valueString": "x"}]}]);
        one_error(&completed(coded.clone(), string), "must be of type Coding");
        let open = json!([{"linkId": "c", "type": "open-choice", "answerOption": [{"valueCoding": {"code": "x"}}]}]);
        assert!(completed(
            open,
            json!([{"linkId": "c", "answer": [{"valueString": "other"}]}])
        )
        .is_empty());
        assert!(completed(
            coded,
            json!([{"linkId": "c", "answer": [{"valueCoding": {"code": "x"}}]}])
        )
        .is_empty());
    }

    #[test]
    fn groups_display_and_abstract_questions_take_no_answers() {
        for ty in ["group", "display", "question"] {
            let q = json!([{"linkId": "a", "type": ty}]);
            let answered = json!([{"linkId": "a", "answer": [{"valueString": "x"}]}]);
            one_error(&completed(q.clone(), answered), "cannot have answers");
            assert!(completed(q, json!([{"linkId": "a"}])).is_empty() || ty == "group");
        }
    }

    #[test]
    fn question_children_sit_in_answers() {
        let q = json!([{"linkId": "a", "type": "boolean", "item": [{"linkId": "b", "type": "string"}]}]);
        let nested = json!([{"linkId": "a", "answer": [{"valueBoolean": true, "item": [{"linkId": "b", "answer": [{"valueString": "x"}]}]}]}]);
        assert!(completed(q.clone(), nested).is_empty());
        let beside = json!([{"linkId": "a", "item": [{"linkId": "b"}]}]);
        one_error(&completed(q, beside), "belong inside its answers");
    }

    #[test]
    fn required_items_in_completed_responses() {
        let q = json!([{"linkId": "a", "type": "string", "required": true}]);
        one_error(
            &completed(q.clone(), json!([])),
            "required item 'a' is missing",
        );
        one_error(
            &completed(q.clone(), json!([{"linkId": "a"}])),
            "has no answer",
        );
        assert!(errors(q.clone(), "in-progress", json!([])).is_empty());
        assert!(completed(
            q,
            json!([{"linkId": "a", "answer": [{"valueString": "x"}]}])
        )
        .is_empty());
        let group = json!([{"linkId": "g", "type": "group", "required": true, "item": [{"linkId": "a", "type": "string"}]}]);
        one_error(
            &completed(group.clone(), json!([{"linkId": "g"}])),
            "has no items",
        );
        assert!(completed(group, json!([{"linkId": "g", "item": [{"linkId": "a"}]}])).is_empty());
    }

    #[test]
    fn repeats_and_occurrence_extensions() {
        let single = json!([{"linkId": "a", "type": "string"}]);
        let two = json!([{"linkId": "a", "answer": [{"valueString": "x"}, {"valueString": "y"}]}]);
        one_error(
            &errors(single.clone(), "in-progress", two.clone()),
            "does not repeat",
        );
        let twice = json!([{"linkId": "a"}, {"linkId": "a"}]);
        one_error(&completed(single, twice), "appears 2 times");
        let max = json!([{"linkId": "a", "type": "string", "repeats": true, "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/questionnaire-maxOccurs", "valueInteger": 1}]}]);
        one_error(&completed(max, two.clone()), "at most 1 answers");
        let min = json!([{"linkId": "a", "type": "string", "repeats": true, "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/questionnaire-minOccurs", "valueInteger": 2}]}]);
        assert!(completed(min.clone(), two).is_empty());
        one_error(
            &completed(min, json!([{"linkId": "a"}])),
            "at least 2 answers",
        );
        let groups = json!([{"linkId": "g", "type": "group", "repeats": true}]);
        assert!(completed(groups, json!([{"linkId": "g"}, {"linkId": "g"}])).is_empty());
    }

    #[test]
    fn enable_when_controls_answers_and_required() {
        let q = json!([
            {"linkId": "a", "type": "boolean"},
            {"linkId": "b", "type": "string", "required": true,
             "enableWhen": [{"question": "a", "operator": "=", "answerBoolean": true}]}
        ]);
        let off = json!([{"linkId": "a", "answer": [{"valueBoolean": false}]}]);
        assert!(completed(q.clone(), off).is_empty());
        let off_answered = json!([{"linkId": "a", "answer": [{"valueBoolean": false}]}, {"linkId": "b", "answer": [{"valueString": "x"}]}]);
        one_error(&completed(q.clone(), off_answered), "enableWhen");
        let on = json!([{"linkId": "a", "answer": [{"valueBoolean": true}]}]);
        one_error(&completed(q, on), "required item 'b' is missing");
    }

    #[test]
    fn enable_behavior_any_and_operators() {
        let q = json!([
            {"linkId": "n", "type": "integer"},
            {"linkId": "b", "type": "string", "enableBehavior": "any", "enableWhen": [
                {"question": "n", "operator": ">", "answerInteger": 5},
                {"question": "missing", "operator": "exists", "answerBoolean": true}]}
        ]);
        let enabled = json!([{"linkId": "n", "answer": [{"valueInteger": 6}]}, {"linkId": "b", "answer": [{"valueString": "x"}]}]);
        assert!(completed(q.clone(), enabled).is_empty());
        let disabled = json!([{"linkId": "n", "answer": [{"valueInteger": 5}]}, {"linkId": "b", "answer": [{"valueString": "x"}]}]);
        one_error(&completed(q, disabled), "enableWhen");
    }

    #[test]
    fn answer_options_and_exclusive_options() {
        let q = json!([{"linkId": "i", "type": "integer", "repeats": true, "answerOption": [{"valueInteger": 1}, {"valueInteger": 2}]}]);
        assert!(completed(
            q.clone(),
            json!([{"linkId": "i", "answer": [{"valueInteger": 2}]}])
        )
        .is_empty());
        one_error(
            &completed(q, json!([{"linkId": "i", "answer": [{"valueInteger": 3}]}])),
            "not one of the item's answer options",
        );
        let exclusive = json!([{"linkId": "c", "type": "choice", "repeats": true, "answerOption": [
            {"valueCoding": {"system": "http://s", "code": "a"}},
            {"valueCoding": {"system": "http://s", "code": "none"}, "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/questionnaire-optionExclusive", "valueBoolean": true}]}]}]);
        let alone = json!([{"linkId": "c", "answer": [{"valueCoding": {"system": "http://s", "code": "none"}}]}]);
        assert!(completed(exclusive.clone(), alone).is_empty());
        let both = json!([{"linkId": "c", "answer": [{"valueCoding": {"system": "http://s", "code": "a"}}, {"valueCoding": {"system": "http://s", "code": "none"}}]}]);
        one_error(&completed(exclusive, both), "exclusive option");
    }

    #[test]
    fn answer_value_set_membership_and_display() {
        let q = json!([{"linkId": "g", "type": "choice", "answerValueSet": "http://hl7.org/fhir/ValueSet/administrative-gender"}]);
        let answer = |code: &str, display: &str| json!([{"linkId": "g", "answer": [{"valueCoding": {"system": "http://hl7.org/fhir/administrative-gender", "code": code, "display": display}}]}]);
        assert!(completed(q.clone(), answer("male", "Male")).is_empty());
        one_error(
            &completed(q.clone(), answer("xyz", "Xyz")),
            "is not in the answer value set",
        );
        one_error(&completed(q, answer("male", "Female")), "Female");
        let unknown = json!([{"linkId": "g", "type": "choice", "answerValueSet": "http://example.org/no-such-vs"}]);
        assert!(completed(unknown, answer("male", "Male")).is_empty());
    }

    #[test]
    fn string_length_and_regex() {
        let q = json!([{"linkId": "s", "type": "string", "maxLength": 5, "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/minLength", "valueInteger": 2},
            {"url": "http://hl7.org/fhir/StructureDefinition/regex", "valueString": "[a-z]+"}]}]);
        let s = |v: &str| json!([{"linkId": "s", "answer": [{"valueString": v}]}]);
        assert!(completed(q.clone(), s("abc")).is_empty());
        one_error(&completed(q.clone(), s("abcdef")), "maximum length 5");
        one_error(&completed(q.clone(), s("a")), "minimum length 2");
        one_error(&completed(q, s("ab1")), "does not match the pattern");
    }

    #[test]
    fn min_and_max_values() {
        let q = json!([{"linkId": "d", "type": "decimal", "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/minValue", "valueDecimal": 1},
            {"url": "http://hl7.org/fhir/StructureDefinition/maxValue", "valueDecimal": 10}]}]);
        let d = |v: f64| json!([{"linkId": "d", "answer": [{"valueDecimal": v}]}]);
        assert!(completed(q.clone(), d(10.0)).is_empty());
        one_error(&completed(q.clone(), d(0.5)), "less than the minimum");
        one_error(&completed(q, d(10.5)), "greater than the maximum");
        let dates = json!([{"linkId": "t", "type": "date", "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/maxValue", "valueDate": "2022-06"}]}]);
        let t = |v: &str| json!([{"linkId": "t", "answer": [{"valueDate": v}]}]);
        assert!(completed(dates.clone(), t("2022-05-31")).is_empty());
        one_error(
            &completed(dates.clone(), t("2022-07")),
            "greater than the maximum",
        );
        // Within the maximum's month: uncertain at day precision, a warning only.
        let issues = run_with(
            Some(questionnaire(dates)),
            &response("completed", t("2022-06-30")),
        );
        assert!(
            issues.iter().all(|i| i.severity == Severity::Warning),
            "{issues:?}"
        );
        assert_eq!(issues.len(), 1);
    }

    #[test]
    fn max_decimal_places() {
        let q = json!([{"linkId": "d", "type": "decimal", "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/maxDecimalPlaces", "valueInteger": 2}]}]);
        assert!(completed(
            q.clone(),
            json!([{"linkId": "d", "answer": [{"valueDecimal": 1.25}]}])
        )
        .is_empty());
        one_error(
            &completed(
                q,
                json!([{"linkId": "d", "answer": [{"valueDecimal": 1.255}]}]),
            ),
            "3 decimal places",
        );
    }

    #[test]
    fn quantity_bounds_and_units() {
        let ucum = |v: u32, c: &str| json!({"value": v, "unit": c, "system": "http://unitsofmeasure.org", "code": c});
        let q = json!([{"linkId": "q", "type": "quantity", "extension": [
            {"url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-minQuantity", "valueQuantity": ucum(1, "km")},
            {"url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-maxQuantity", "valueQuantity": ucum(5, "km")}]}]);
        let a = |qty: Json| json!([{"linkId": "q", "answer": [{"valueQuantity": qty}]}]);
        assert!(completed(q.clone(), a(ucum(2000, "m"))).is_empty());
        one_error(
            &completed(q.clone(), a(ucum(500, "m"))),
            "less than the minimum",
        );
        let informal = completed(q.clone(), a(json!({"value": 2, "unit": "km"})));
        assert_eq!(informal.len(), 2, "{informal:?}");
        assert!(informal.iter().all(|e| e.contains("no UCUM units")));
        let options = json!([{"linkId": "q", "type": "quantity", "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/questionnaire-unitOption", "valueCoding": {"system": "http://unitsofmeasure.org", "code": "km"}}]}]);
        assert!(completed(options.clone(), a(ucum(2, "km"))).is_empty());
        one_error(
            &completed(options, a(ucum(2, "m"))),
            "not one of the item's unit options",
        );
    }

    #[test]
    fn attachment_type_and_size() {
        let q = json!([{"linkId": "f", "type": "attachment", "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/mimeType", "valueCode": "image/*"},
            {"url": "http://hl7.org/fhir/StructureDefinition/maxSize", "valueDecimal": 10}]}]);
        let a = |ct: &str, data: &str| json!([{"linkId": "f", "answer": [{"valueAttachment": {"contentType": ct, "data": data}}]}]);
        assert!(completed(q.clone(), a("image/png", "AAAA")).is_empty());
        one_error(
            &completed(q.clone(), a("application/pdf", "AAAA")),
            "content type",
        );
        one_error(
            &completed(q, a("image/png", "AAAAAAAAAAAAAAAA")),
            "12 bytes",
        );
    }

    #[test]
    fn reference_targets() {
        let q = json!([{"linkId": "r", "type": "reference", "repeats": true, "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/questionnaire-referenceResource", "valueCode": "Patient"}]}]);
        let a =
            |r: &str| json!([{"linkId": "r", "answer": [{"valueReference": {"reference": r}}]}]);
        assert!(completed(q.clone(), a("Patient/1")).is_empty());
        assert!(completed(q.clone(), a("https://x.org/fhir/Patient/1/_history/2")).is_empty());
        one_error(
            &completed(q.clone(), a("Organization/1")),
            "reference to Organization",
        );
        one_error(
            &completed(q, a("https://x.org/Chicken/1")),
            "not a resource type",
        );
    }

    #[test]
    fn questionnaire_resolution() {
        let qr = response("completed", json!([{"linkId": "zz"}]));
        let missing = run_with(None, &qr);
        assert!(
            missing.iter().all(|i| i.severity == Severity::Warning),
            "{missing:?}"
        );
        let mut wrong = qr.clone();
        wrong["questionnaire"] = json!("http://hl7.org/fhir/ValueSet/anything");
        let issues = run_with(None, &wrong);
        assert!(issues
            .iter()
            .any(|i| i.severity.is_error() && i.message.contains("ValueSet")));
        let mut contained = qr;
        contained["questionnaire"] = json!("#q1");
        contained["contained"] = json!([{"resourceType": "Questionnaire", "id": "q1", "status": "active",
            "item": [{"linkId": "a", "type": "string"}]}]);
        let issues = run_with(None, &contained);
        assert!(
            issues
                .iter()
                .any(|i| i.message.contains("'zz' is not an item")),
            "{issues:?}"
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(decimal_places("-5.12340"), 5);
        assert_eq!(decimal_places("12"), 0);
        assert_eq!(decimal_places("1.5e3"), 1);
        assert_eq!(base64_len("YWJj"), 3);
        assert_eq!(base64_len("YQ=="), 1);
        assert!(mime_matches("text/plain", "TEXT/plain; charset=utf-8"));
        assert!(!mime_matches("image/gif", "image/png"));
        assert!(matches!(reference_type("urn:uuid:1234"), Target::Unknown));
        assert!(matches!(
            reference_type("Patient/1"),
            Target::Type("Patient")
        ));
    }
}
