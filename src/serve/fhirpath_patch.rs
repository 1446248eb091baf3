//! FHIRPath Patch (R4 fhirpatch.html): a Parameters resource whose `operation` parameters
//! each `add`, `insert`, `delete`, `replace` or `move` what a FHIRPath expression selects.
//!
//! The project's FHIRPath engine evaluates over the typed `model` tree, whose nodes are
//! borrowed by the result: each selected node is found again in the tree by address, which
//! gives its path as JSON members and array indexes (the model knows each element's JSON
//! name, choice suffix included, and whether it repeats); the change is then made to the
//! JSON, which is parsed again before the next operation. Limits: a path must select
//! elements of the resource (not values computed by functions), `insert` and `move` need
//! the list to exist (`add` starts one), and nodes inside a primitive's extensions cannot be
//! selected.

use super::error::ApiError;
use crate::fhirpath::{Context, Expression, Item};
use crate::model::json::Json;
use crate::model::schema::{ElementInfo, TypeInfo};
use crate::model::{Element, Value};

/// A value given to `add`, `insert` or `replace`.
#[derive(Debug, Clone)]
pub enum PatchValue {
    /// `value[x]`: the type suffix (`Code`, `HumanName`) and the JSON value.
    Typed {
        /// The part after `value` in the member name.
        suffix: String,
        /// The value as JSON.
        json: Json,
    },
    /// A backbone element given as parts, each named by its child element.
    Parts(Vec<(String, PatchValue)>),
}

/// One operation of a FHIRPath Patch.
#[derive(Debug, Clone)]
pub enum Operation {
    /// Adds child `name` with `value` to the one element `path` selects.
    Add {
        /// Where.
        path: String,
        /// The child element's name.
        name: String,
        /// The value.
        value: PatchValue,
    },
    /// Inserts `value` at `index` into the list `path` selects.
    Insert {
        /// The list.
        path: String,
        /// Position (0 is first).
        index: usize,
        /// The value.
        value: PatchValue,
    },
    /// Deletes the one element `path` selects (nothing when it selects none).
    Delete {
        /// What.
        path: String,
    },
    /// Replaces the one element `path` selects.
    Replace {
        /// What.
        path: String,
        /// The new value.
        value: PatchValue,
    },
    /// Moves an item of the list `path` selects from `source` to `destination`.
    Move {
        /// The list.
        path: String,
        /// From.
        source: usize,
        /// To.
        destination: usize,
    },
}

/// A FHIRPath Patch: its operations in order.
#[derive(Debug, Clone)]
pub struct FhirPathPatch {
    /// The operations.
    pub operations: Vec<Operation>,
}

fn malformed(m: String) -> ApiError {
    ApiError::BadRequest(format!("the FHIRPath Patch is malformed: {m}"))
}

/// The `value[x]` member of a Parameters part, as (suffix, value).
fn value_member(part: &Json) -> Option<(String, Json)> {
    let Json::Object(members) = part else {
        return None;
    };
    members.iter().find_map(|(k, v)| {
        k.strip_prefix("value")
            .filter(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
            .map(|s| (s.to_string(), v.clone()))
    })
}

fn read_value(part: &Json) -> Result<PatchValue, ApiError> {
    if let Some((suffix, json)) = value_member(part) {
        return Ok(PatchValue::Typed { suffix, json });
    }
    let parts = part.get("part").map(Json::items).unwrap_or_default();
    if parts.is_empty() {
        return Err(malformed(
            "a value part has neither value[x] nor parts".into(),
        ));
    }
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let name = p
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| malformed("a part of a value has no name".into()))?;
        out.push((name.to_string(), read_value(p)?));
    }
    Ok(PatchValue::Parts(out))
}

impl FhirPathPatch {
    /// Reads a Parameters resource of `operation` parameters.
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] for anything that is not a FHIRPath Patch.
    pub fn from_parameters(params: &Json) -> Result<FhirPathPatch, ApiError> {
        let mut operations = Vec::new();
        for (i, p) in params
            .get("parameter")
            .map(Json::items)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if p.get("name").and_then(Json::as_str) != Some("operation") {
                return Err(malformed(format!("parameter {i} is not named operation")));
            }
            let parts = p.get("part").map(Json::items).unwrap_or_default();
            let part = |name: &str| {
                parts
                    .iter()
                    .find(|x| x.get("name").and_then(Json::as_str) == Some(name))
            };
            let text = |name: &str| -> Result<String, ApiError> {
                part(name)
                    .and_then(value_member)
                    .and_then(|(_, v)| v.as_str().map(str::to_string))
                    .ok_or_else(|| malformed(format!("operation {i} has no {name}")))
            };
            let number = |name: &str| -> Result<usize, ApiError> {
                match part(name).and_then(value_member) {
                    Some((_, Json::Number(n))) => n.parse::<usize>().ok(),
                    _ => None,
                }
                .ok_or_else(|| {
                    malformed(format!("operation {i} has no {name} (an integer from 0)"))
                })
            };
            let value = || -> Result<PatchValue, ApiError> {
                read_value(
                    part("value")
                        .ok_or_else(|| malformed(format!("operation {i} has no value")))?,
                )
            };
            let op = match text("type")?.as_str() {
                "add" => Operation::Add {
                    path: text("path")?,
                    name: text("name")?,
                    value: value()?,
                },
                "insert" => Operation::Insert {
                    path: text("path")?,
                    index: number("index")?,
                    value: value()?,
                },
                "delete" => Operation::Delete {
                    path: text("path")?,
                },
                "replace" => Operation::Replace {
                    path: text("path")?,
                    value: value()?,
                },
                "move" => Operation::Move {
                    path: text("path")?,
                    source: number("source")?,
                    destination: number("destination")?,
                },
                other => {
                    return Err(malformed(format!(
                        "operation {i} has the unknown type {other:?}"
                    )))
                }
            };
            operations.push(op);
        }
        if operations.is_empty() {
            return Err(malformed("no operation".into()));
        }
        Ok(FhirPathPatch { operations })
    }

    /// The JSON of every value the patch carries (for rewriting references).
    pub fn values_mut(&mut self) -> Vec<&mut Json> {
        fn walk<'a>(v: &'a mut PatchValue, out: &mut Vec<&'a mut Json>) {
            match v {
                PatchValue::Typed { json, .. } => out.push(json),
                PatchValue::Parts(parts) => parts.iter_mut().for_each(|(_, p)| walk(p, out)),
            }
        }
        let mut out = Vec::new();
        for op in &mut self.operations {
            match op {
                Operation::Add { value, .. }
                | Operation::Insert { value, .. }
                | Operation::Replace { value, .. } => walk(value, &mut out),
                Operation::Delete { .. } | Operation::Move { .. } => {}
            }
        }
        out
    }

    /// Applies every operation to `resource` (JSON of a stored resource), in order.
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] for a path that is not FHIRPath;
    /// [`ApiError::Unprocessable`] for an operation that does not apply.
    pub fn apply(&self, resource: &mut Json) -> Result<(), ApiError> {
        for (i, op) in self.operations.iter().enumerate() {
            apply_one(resource, op).map_err(|e| {
                let text = format!("FHIRPath Patch operation {i}: {e}");
                match e {
                    OpError::Syntax(_) => ApiError::BadRequest(text),
                    OpError::Path(_) | OpError::Apply(_) => ApiError::Unprocessable(text),
                }
            })?;
        }
        Ok(())
    }
}

/// One step down from a node: a JSON member, and the index when the element repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    key: String,
    index: Option<usize>,
}

/// A selected node: where it is, and what it is.
#[derive(Debug, Clone)]
struct Found {
    trail: Vec<Step>,
    /// The node's type.
    info: &'static TypeInfo,
    /// The element definition it is a value of (`None` for the resource itself).
    def: Option<&'static ElementInfo>,
}

/// Errors while applying one operation (made into 400/422 by the caller).
#[derive(Debug)]
enum OpError {
    /// The path is not FHIRPath (400).
    Syntax(String),
    /// The path selects what cannot be patched (422).
    Path(String),
    /// The operation does not apply to the resource (422).
    Apply(String),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::Syntax(m) | OpError::Path(m) | OpError::Apply(m) => f.write_str(m),
        }
    }
}

fn apply_one(resource: &mut Json, op: &Operation) -> Result<(), OpError> {
    let tree = crate::model::parse(&resource.to_text())
        .map_err(|e| OpError::Apply(format!("the resource does not read as FHIR: {e}")))?;
    match op {
        Operation::Add { path, name, value } => {
            let target = single(select(&tree, path)?, path)?;
            let Some((_, def)) = target.info.element(name) else {
                return Err(OpError::Apply(format!(
                    "{} has no element {name}",
                    target.info.fhir_type_name()
                )));
            };
            let key = json_key(def, value)?;
            let built = build(def, value)?;
            let Json::Object(members) = node_mut(resource, &target.trail)? else {
                return Err(OpError::Apply(format!(
                    "{path} is not an element with children"
                )));
            };
            match (members.iter_mut().find(|(k, _)| *k == key), def.array) {
                (Some((_, Json::Array(items))), true) => items.push(built),
                (None, true) => members.push((key, Json::Array(vec![built]))),
                (Some(_), _) => {
                    return Err(OpError::Apply(format!(
                        "{path} already has {name}; use replace"
                    )))
                }
                (None, false) => members.push((key, built)),
            }
            Ok(())
        }
        Operation::Insert { path, index, value } => {
            let (parent, key, def) = list(&tree, path)?;
            let len = array_mut(resource, &parent, &key)?.len();
            if *index > len {
                return Err(OpError::Apply(format!(
                    "index {index} is past the end of {path} ({len} items)"
                )));
            }
            let built = build(def, value)?;
            array_mut(resource, &parent, &key)?.insert(*index, built);
            Ok(())
        }
        Operation::Delete { path } => {
            let found = select(&tree, path)?;
            if found.is_empty() {
                return Ok(());
            }
            let target = single(found, path)?;
            let Some((last, parent)) = target.trail.split_last() else {
                return Err(OpError::Apply(
                    "the resource itself cannot be deleted".into(),
                ));
            };
            let Json::Object(members) = node_mut(resource, parent)? else {
                return Err(OpError::Apply(format!(
                    "the parent of {path} is not an element"
                )));
            };
            let twin = format!("_{}", last.key);
            for key in [&last.key, &twin] {
                let Some(at) = members.iter().position(|(k, _)| k == key) else {
                    continue;
                };
                match (last.index, &mut members[at].1) {
                    (Some(i), Json::Array(items)) if i < items.len() => {
                        items.remove(i);
                        if items.is_empty() || items.iter().all(|v| matches!(v, Json::Null)) {
                            members.remove(at);
                        }
                    }
                    (Some(_), _) => {}
                    (None, _) => {
                        members.remove(at);
                    }
                }
            }
            Ok(())
        }
        Operation::Replace { path, value } => {
            let target = single(select(&tree, path)?, path)?;
            let (Some(def), Some((last, parent))) = (target.def, target.trail.split_last()) else {
                return Err(OpError::Apply(
                    "the resource itself cannot be replaced".into(),
                ));
            };
            let key = json_key(def, value)?;
            let built = build(def, value)?;
            let Json::Object(members) = node_mut(resource, parent)? else {
                return Err(OpError::Apply(format!(
                    "the parent of {path} is not an element"
                )));
            };
            match last.index {
                Some(i) => {
                    let slot = members
                        .iter_mut()
                        .find(|(k, _)| *k == last.key)
                        .and_then(|(_, v)| match v {
                            Json::Array(items) => items.get_mut(i),
                            _ => None,
                        })
                        .ok_or_else(|| OpError::Apply(format!("{path} is not in the resource")))?;
                    *slot = built;
                }
                None => {
                    // A choice element may change type: its member is renamed.
                    let at = members
                        .iter()
                        .position(|(k, _)| *k == last.key)
                        .ok_or_else(|| OpError::Apply(format!("{path} is not in the resource")))?;
                    members[at] = (key.clone(), built);
                    if key != last.key {
                        members.retain(|(k, _)| *k != format!("_{}", last.key));
                    }
                }
            }
            Ok(())
        }
        Operation::Move {
            path,
            source,
            destination,
        } => {
            let (parent, key, _) = list(&tree, path)?;
            let len = array_mut(resource, &parent, &key)?.len();
            if *source >= len || *destination >= len {
                return Err(OpError::Apply(format!(
                    "move {source} to {destination} is outside {path} ({len} items)"
                )));
            }
            let items = array_mut(resource, &parent, &key)?;
            let moved = items.remove(*source);
            items.insert(*destination, moved);
            Ok(())
        }
    }
}

/// The nodes `path` selects in `tree`.
fn select(tree: &Element, path: &str) -> Result<Vec<Found>, OpError> {
    let expr = Expression::compile(path)
        .map_err(|e| OpError::Syntax(format!("the path {path:?} is not FHIRPath: {e}")))?;
    let result = expr
        .evaluate(&Context::new(tree))
        .map_err(|e| OpError::Path(format!("the path {path:?} fails: {e}")))?;
    let mut out = Vec::with_capacity(result.len());
    for item in &result {
        let addr = match item {
            Item::Element(e) => std::ptr::from_ref::<Element>(e).cast::<u8>(),
            Item::Primitive(p) => std::ptr::from_ref(*p).cast::<u8>(),
            _ => {
                return Err(OpError::Path(format!(
                    "the path {path:?} selects a computed value, not an element of the resource"
                )))
            }
        };
        if std::ptr::eq(addr, std::ptr::from_ref(tree).cast::<u8>()) {
            out.push(Found {
                trail: Vec::new(),
                info: tree.info,
                def: None,
            });
            continue;
        }
        let mut trail = Vec::new();
        match find(tree, addr, &mut trail) {
            Some((info, def)) => out.push(Found { trail, info, def: Some(def) }),
            None => {
                return Err(OpError::Path(format!(
                    "the path {path:?} selects something that cannot be patched (inside a primitive's extensions?)"
                )))
            }
        }
    }
    Ok(out)
}

/// Looks for the node at `addr` below `el`, filling `trail` with the way there.
fn find(
    el: &Element,
    addr: *const u8,
    trail: &mut Vec<Step>,
) -> Option<(&'static TypeInfo, &'static ElementInfo)> {
    for prop in &el.props {
        let def: &'static ElementInfo = &el.info.elements[usize::from(prop.element)];
        let key = def.json_name(usize::from(prop.type_index)).to_string();
        for (i, v) in prop.values.iter().enumerate() {
            trail.push(Step {
                key: key.clone(),
                index: def.array.then_some(i),
            });
            match v {
                Value::Element(child) => {
                    if std::ptr::eq(std::ptr::from_ref(child).cast::<u8>(), addr) {
                        return Some((child.info, def));
                    }
                    if let Some(found) = find(child, addr, trail) {
                        return Some(found);
                    }
                }
                Value::Primitive(p) => {
                    if std::ptr::eq(std::ptr::from_ref(p).cast::<u8>(), addr) {
                        return Some((p.info, def));
                    }
                }
            }
            trail.pop();
        }
    }
    None
}

fn single(found: Vec<Found>, path: &str) -> Result<Found, OpError> {
    let n = found.len();
    let mut it = found.into_iter();
    match (it.next(), n) {
        (Some(one), 1) => Ok(one),
        (_, 0) => Err(OpError::Apply(format!("{path} selects nothing"))),
        _ => Err(OpError::Apply(format!(
            "{path} selects {n} elements; the operation needs exactly one"
        ))),
    }
}

/// The list `path` selects: its parent's trail, its JSON member and its definition. Every
/// selected node must be an item of the same repeating element.
fn list(tree: &Element, path: &str) -> Result<(Vec<Step>, String, &'static ElementInfo), OpError> {
    let found = select(tree, path)?;
    let Some(first) = found.first() else {
        return Err(OpError::Apply(format!(
            "{path} selects no list (insert and move need existing items; add starts a list)"
        )));
    };
    let (Some(def), Some((last, parent))) = (first.def, first.trail.split_last()) else {
        return Err(OpError::Apply(format!("{path} is not a list")));
    };
    if !def.array {
        return Err(OpError::Apply(format!("{path} does not repeat")));
    }
    let same = found.iter().all(|f| {
        f.trail
            .split_last()
            .is_some_and(|(l, p)| l.key == last.key && p == parent)
    });
    if !same {
        return Err(OpError::Apply(format!(
            "{path} selects items of several lists"
        )));
    }
    Ok((parent.to_vec(), last.key.clone(), def))
}

fn node_mut<'a>(json: &'a mut Json, trail: &[Step]) -> Result<&'a mut Json, OpError> {
    let mut at = json;
    for step in trail {
        at = at
            .get_mut(&step.key)
            .ok_or_else(|| OpError::Apply(format!("no member {}", step.key)))?;
        if let Some(i) = step.index {
            at = match at {
                Json::Array(items) => items
                    .get_mut(i)
                    .ok_or_else(|| OpError::Apply(format!("no item {i} of {}", step.key)))?,
                _ => return Err(OpError::Apply(format!("{} is not a list", step.key))),
            };
        }
    }
    Ok(at)
}

fn array_mut<'a>(
    json: &'a mut Json,
    parent: &[Step],
    key: &str,
) -> Result<&'a mut Vec<Json>, OpError> {
    match node_mut(json, parent)?.get_mut(key) {
        Some(Json::Array(items)) => Ok(items),
        _ => Err(OpError::Apply(format!("{key} is not a list"))),
    }
}

/// The JSON member name of `def` for `value` (`valueQuantity` for a choice element).
fn json_key(def: &ElementInfo, value: &PatchValue) -> Result<String, OpError> {
    if !def.choice {
        return Ok(def.name.to_string());
    }
    match value {
        PatchValue::Typed { suffix, .. } => Ok(format!("{}{suffix}", def.name)),
        PatchValue::Parts(_) => Err(OpError::Apply(format!(
            "{}[x] needs a typed value (value[x]), not parts",
            def.name
        ))),
    }
}

/// The JSON of `value` for an element of `def`.
fn build(def: &ElementInfo, value: &PatchValue) -> Result<Json, OpError> {
    match value {
        PatchValue::Typed { json, .. } => Ok(json.clone()),
        PatchValue::Parts(parts) => {
            let Some(info) = def.types.first().and_then(|t| t.info()) else {
                return Err(OpError::Apply(format!(
                    "{} cannot be given as parts",
                    def.name
                )));
            };
            let mut members: Vec<(String, Json)> = Vec::new();
            for (name, v) in parts {
                let Some((_, child)) = info.element(name) else {
                    return Err(OpError::Apply(format!(
                        "{} has no element {name}",
                        def.name
                    )));
                };
                let key = json_key(child, v)?;
                let built = build(child, v)?;
                match (members.iter_mut().find(|(k, _)| *k == key), child.array) {
                    (Some((_, Json::Array(items))), true) => items.push(built),
                    (None, true) => members.push((key, Json::Array(vec![built]))),
                    (Some(_), _) => return Err(OpError::Apply(format!("{name} is given twice"))),
                    (None, false) => members.push((key, built)),
                }
            }
            Ok(Json::Object(members))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Json {
        Json::parse(text, 64).expect("json")
    }

    fn op(kind: &str, parts: &str) -> String {
        format!(r#"{{"name":"operation","part":[{{"name":"type","valueCode":"{kind}"}},{parts}]}}"#)
    }

    fn patched(resource: &str, ops: &[String]) -> Result<Json, ApiError> {
        let params = json(&format!(
            r#"{{"resourceType":"Parameters","parameter":[{}]}}"#,
            ops.join(",")
        ));
        let mut r = json(resource);
        FhirPathPatch::from_parameters(&params)?.apply(&mut r)?;
        Ok(r)
    }

    const PATIENT: &str = r#"{"resourceType":"Patient","id":"p","name":[{"family":"A","given":["x","y","z"]},{"family":"B"}],"gender":"female","birthDate":"1950-03-02","_birthDate":{"id":"b"}}"#;

    #[test]
    fn each_operation() {
        let r = patched(
            PATIENT,
            &[
                op("replace", r#"{"name":"path","valueString":"Patient.gender"},{"name":"value","valueCode":"male"}"#),
                op("delete", r#"{"name":"path","valueString":"Patient.birthDate"}"#),
                op("add", r#"{"name":"path","valueString":"Patient"},{"name":"name","valueString":"deceased"},{"name":"value","valueBoolean":false}"#),
                op("insert", r#"{"name":"path","valueString":"Patient.name[0].given"},{"name":"index","valueInteger":1},{"name":"value","valueString":"w"}"#),
                op("move", r#"{"name":"path","valueString":"Patient.name[0].given"},{"name":"source","valueInteger":3},{"name":"destination","valueInteger":0}"#),
                op("delete", r#"{"name":"path","valueString":"Patient.name.where(family='B')"}"#),
                op("add", r#"{"name":"path","valueString":"Patient"},{"name":"name","valueString":"contact"},{"name":"value","part":[{"name":"gender","valueCode":"male"},{"name":"name","valueHumanName":{"family":"C"}}]}"#),
                op("delete", r#"{"name":"path","valueString":"Patient.telecom"}"#),
            ],
        )
        .expect("patched");
        assert_eq!(
            r.to_text(),
            r#"{"resourceType":"Patient","id":"p","name":[{"family":"A","given":["z","x","w","y"]}],"gender":"male","deceasedBoolean":false,"contact":[{"gender":"male","name":{"family":"C"}}]}"#
        );
    }

    #[test]
    fn a_choice_element_changes_type_in_place() {
        let r = patched(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1},"note":[{"text":"n"}]}"#,
            &[op(
                "replace",
                r#"{"name":"path","valueString":"Observation.value"},{"name":"value","valueString":"high"}"#,
            )],
        )
        .expect("patched");
        assert_eq!(
            r.to_text(),
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueString":"high","note":[{"text":"n"}]}"#
        );
    }

    #[test]
    fn failures() {
        for (ops, bad_request) in [
            (
                vec![op(
                    "replace",
                    r#"{"name":"path","valueString":"Patient.name"},{"name":"value","valueString":"x"}"#,
                )],
                false,
            ),
            (
                vec![op(
                    "replace",
                    r#"{"name":"path","valueString":"Patient.telecom"},{"name":"value","valueString":"x"}"#,
                )],
                false,
            ),
            (
                vec![op(
                    "add",
                    r#"{"name":"path","valueString":"Patient"},{"name":"name","valueString":"gender"},{"name":"value","valueCode":"male"}"#,
                )],
                false,
            ),
            (
                vec![op(
                    "add",
                    r#"{"name":"path","valueString":"Patient"},{"name":"name","valueString":"colour"},{"name":"value","valueCode":"red"}"#,
                )],
                false,
            ),
            (
                vec![op(
                    "insert",
                    r#"{"name":"path","valueString":"Patient.name[0].given"},{"name":"index","valueInteger":9},{"name":"value","valueString":"w"}"#,
                )],
                false,
            ),
            (
                vec![op(
                    "replace",
                    r#"{"name":"path","valueString":"Patient.gender.count()"},{"name":"value","valueCode":"male"}"#,
                )],
                false,
            ),
            (
                vec![op(
                    "replace",
                    r#"{"name":"path","valueString":"Patient.(("},{"name":"value","valueCode":"male"}"#,
                )],
                true,
            ),
            (
                vec![op("jump", r#"{"name":"path","valueString":"Patient"}"#)],
                true,
            ),
            (
                vec![op(
                    "insert",
                    r#"{"name":"path","valueString":"Patient.name"},{"name":"value","valueString":"w"}"#,
                )],
                true,
            ),
        ] {
            match patched(PATIENT, &ops) {
                Err(ApiError::BadRequest(_)) => assert!(bad_request, "{ops:?}"),
                Err(ApiError::Unprocessable(_)) => assert!(!bad_request, "{ops:?}"),
                other => panic!("{ops:?}: {other:?}"),
            }
        }
    }
}
