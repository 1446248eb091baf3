//! Snapshot generation: a StructureDefinition that carries only a differential (as the study
//! profiles and most hand-written profiles do) is expanded into the full list of element
//! definitions by overlaying its differential on its base's snapshot.
//!
//! The rules, from the FHIR R4 "Profiling" and "ElementDefinition" pages:
//! - elements are matched by `id` (`Observation.component:systolic.code`); a differential
//!   without ids gets them from `path` and the slice names in force;
//! - a differential element below what the base lists (`Observation.code.coding`) pulls in
//!   the children of its parent's type (or of the type's profile);
//! - a new slice copies the sliced element and its children, then takes the differential's
//!   constraints;
//! - a type-named choice (`valueQuantity`) constrains `value[x]` to that type;
//! - constraints (`constraint`, `condition`) add to the base; everything else replaces.
//!
//! A base that cannot be found is an error, never a silent pass.

use crate::definitions::{Kind, Registry};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Why a snapshot could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The profile (or a base, or a type profile) is not in the registry.
    #[error("unknown StructureDefinition '{0}'")]
    UnknownProfile(String),
    /// A StructureDefinition has neither a snapshot nor a differential and base.
    #[error("StructureDefinition '{0}' has no snapshot and no differential with a base")]
    Incomplete(String),
    /// A differential element names something the base does not have.
    #[error("{profile}: differential element '{id}' does not match anything in the base")]
    Unmatched {
        /// The profile's URL.
        profile: String,
        /// The element id or path.
        id: String,
    },
    /// A profile derives from itself.
    #[error("StructureDefinition '{0}' derives from itself")]
    Cycle(String),
}

/// A cache of generated snapshots, by profile URL.
#[derive(Debug, Default)]
pub struct Snapshots {
    done: RwLock<HashMap<String, Arc<Vec<Value>>>>,
}

type Elements = Vec<Map<String, Value>>;

impl Snapshots {
    /// The snapshot elements of the StructureDefinition `url`, generated on first use.
    ///
    /// # Errors
    /// When the profile or a base or type it needs is unknown, or its differential does not
    /// fit its base.
    pub fn get(&self, registry: &Registry, url: &str) -> Result<Arc<Vec<Value>>, SnapshotError> {
        self.get_inner(registry, url, &mut Vec::new())
    }

    fn get_inner(
        &self,
        registry: &Registry,
        url: &str,
        stack: &mut Vec<String>,
    ) -> Result<Arc<Vec<Value>>, SnapshotError> {
        let url = url.split('|').next().unwrap_or(url);
        if let Ok(done) = self.done.read() {
            if let Some(s) = done.get(url) {
                return Ok(s.clone());
            }
        }
        if stack.iter().any(|s| s == url) {
            return Err(SnapshotError::Cycle(url.to_string()));
        }
        let sd = registry
            .get(Kind::StructureDefinition, url)
            .ok_or_else(|| SnapshotError::UnknownProfile(url.to_string()))?;
        stack.push(url.to_string());
        let result = self.build(registry, url, &sd, stack);
        stack.pop();
        let elements = Arc::new(result?);
        if let Ok(mut done) = self.done.write() {
            done.insert(url.to_string(), elements.clone());
        }
        Ok(elements)
    }

    fn build(
        &self,
        registry: &Registry,
        url: &str,
        sd: &Value,
        stack: &mut Vec<String>,
    ) -> Result<Vec<Value>, SnapshotError> {
        let given = sd.pointer("/snapshot/element").and_then(Value::as_array);
        let diff = sd
            .pointer("/differential/element")
            .and_then(Value::as_array);
        let base_url = sd.get("baseDefinition").and_then(Value::as_str);
        let (diff, base_url) = match (given, diff, base_url) {
            (Some(s), _, _) if !s.is_empty() => return Ok(with_ids(s.clone())),
            (_, Some(d), Some(b)) => (d, b),
            _ => return Err(SnapshotError::Incomplete(url.to_string())),
        };
        let base = self.get_inner(registry, base_url, stack)?;
        let mut elements: Elements = base.iter().filter_map(|e| e.as_object().cloned()).collect();
        let mut gen = Generator {
            snapshots: self,
            registry,
            stack,
            profile: url,
        };
        let mut slice_context: Vec<(String, String)> = Vec::new();
        for d in diff {
            let Some(d) = d.as_object() else { continue };
            let id = differential_id(d, &mut slice_context);
            gen.apply(&mut elements, &id, d)?;
        }
        Ok(elements.into_iter().map(Value::Object).collect())
    }
}

/// The id of a differential element: its own, or one made from its path and the slices in
/// force (`slice_context` holds `(path, id)` of the slices met so far).
fn differential_id(d: &Map<String, Value>, slice_context: &mut Vec<(String, String)>) -> String {
    if let Some(id) = d.get("id").and_then(Value::as_str) {
        return id.to_string();
    }
    let path = d.get("path").and_then(Value::as_str).unwrap_or_default();
    // The innermost slice whose path is a prefix of this path gives the id's prefix.
    let mut id = path.to_string();
    for (slice_path, slice_id) in slice_context.iter().rev() {
        if path == slice_path {
            continue;
        }
        if let Some(rest) = path.strip_prefix(slice_path.as_str()) {
            if rest.starts_with('.') {
                id = format!("{slice_id}{rest}");
                break;
            }
        }
    }
    if let Some(name) = d.get("sliceName").and_then(Value::as_str) {
        id = format!("{id}:{name}");
        slice_context.retain(|(p, _)| p != path);
        slice_context.push((path.to_string(), id.clone()));
    }
    id
}

fn with_ids(elements: Vec<Value>) -> Vec<Value> {
    let mut slice_context = Vec::new();
    elements
        .into_iter()
        .map(|mut e| {
            if let Some(o) = e.as_object_mut() {
                if !o.contains_key("id") {
                    let id = differential_id(o, &mut slice_context);
                    o.insert("id".into(), Value::String(id));
                }
            }
            e
        })
        .collect()
}

fn id_of(e: &Map<String, Value>) -> &str {
    e.get("id").and_then(Value::as_str).unwrap_or_default()
}

fn path_of(e: &Map<String, Value>) -> &str {
    e.get("path").and_then(Value::as_str).unwrap_or_default()
}

/// The id with its last segment removed (`A.b:s.c` -> `A.b:s`), if it has a parent.
fn parent_id(id: &str) -> Option<&str> {
    last_dot(id).map(|i| &id[..i])
}

/// Position of the last `.` that separates path segments (not one inside a slice name such
/// as `:http://example.org/ext` in older ids, which we do not split on).
fn last_dot(id: &str) -> Option<usize> {
    let mut depth_in_slice = false;
    let mut last = None;
    for (i, c) in id.char_indices() {
        match c {
            ':' => depth_in_slice = true,
            '.' if depth_in_slice => {
                // A dot after a slice name ends the slice name unless the name is a URL;
                // R4 slice names are tokens, so a dot here ends it.
                depth_in_slice = false;
                last = Some(i);
            }
            '.' => last = Some(i),
            _ => {}
        }
    }
    last
}

/// Whether `id` is `ancestor` or lies below it.
fn within(id: &str, ancestor: &str) -> bool {
    id == ancestor
        || (id.starts_with(ancestor)
            && matches!(id.as_bytes().get(ancestor.len()), Some(b'.' | b':')))
}

struct Generator<'a> {
    snapshots: &'a Snapshots,
    registry: &'a Registry,
    stack: &'a mut Vec<String>,
    profile: &'a str,
}

impl Generator<'_> {
    fn unmatched(&self, id: &str) -> SnapshotError {
        SnapshotError::Unmatched {
            profile: self.profile.to_string(),
            id: id.to_string(),
        }
    }

    fn apply(
        &mut self,
        elements: &mut Elements,
        id: &str,
        d: &Map<String, Value>,
    ) -> Result<(), SnapshotError> {
        let (idx, implied_type) = self.locate(elements, id)?;
        if let Some(path) = d.get("path").and_then(Value::as_str) {
            if !path_fits(path_of(&elements[idx]), path, &elements[idx]) {
                return Err(SnapshotError::Unmatched {
                    profile: self.profile.to_string(),
                    id: format!("{id} (path {path})"),
                });
            }
        }
        merge(&mut elements[idx], d);
        if let Some(code) = implied_type {
            if !d.contains_key("type") {
                restrict_type(&mut elements[idx], &code);
            }
        }
        Ok(())
    }

    /// Finds (creating where needed) the element for `id`; also returns the type implied by a
    /// type-named choice (`valueQuantity` -> `Quantity`).
    fn locate(
        &mut self,
        elements: &mut Elements,
        id: &str,
    ) -> Result<(usize, Option<String>), SnapshotError> {
        if let Some(i) = elements.iter().position(|e| id_of(e) == id) {
            return Ok((i, None));
        }
        let root_only = !id.contains('.');
        if root_only {
            // The root of a profile on another type's base is the base root.
            return Ok((0, None));
        }
        let (head, last) = match last_dot(id) {
            Some(i) => (&id[..i], &id[i + 1..]),
            None => return Err(self.unmatched(id)),
        };
        // A new slice of an existing element.
        if let Some((name, slice)) = last.split_once(':') {
            let sliced_id = format!("{head}.{name}");
            let (sliced, implied) = self.locate(elements, &sliced_id)?;
            let sliced_id = id_of(&elements[sliced]).to_string();
            let end = subtree_end(elements, sliced, &sliced_id);
            let mut copies: Elements = Vec::new();
            for e in &elements[sliced..end] {
                let eid = id_of(e);
                // Copy the element itself and its children, but not other slices.
                if eid != sliced_id && !eid.starts_with(&format!("{sliced_id}.")) {
                    continue;
                }
                let mut c = e.clone();
                let new_id = format!("{id}{}", &eid[sliced_id.len()..]);
                c.insert("id".into(), Value::String(new_id));
                if eid == sliced_id {
                    c.remove("slicing");
                    c.insert("sliceName".into(), Value::String(slice.to_string()));
                }
                copies.push(c);
            }
            if let (Some(code), Some(first)) = (implied, copies.first_mut()) {
                restrict_type(first, &code);
            }
            elements.splice(end..end, copies);
            return Ok((end, None));
        }
        // A type-named choice: `valueQuantity` for `value[x]`.
        let parent = self.locate(elements, head)?.0;
        let parent_id = id_of(&elements[parent]).to_string();
        self.expand_children(elements, parent, &parent_id)?;
        if let Some(i) = elements.iter().position(|e| id_of(e) == id) {
            return Ok((i, None));
        }
        for (i, e) in elements.iter().enumerate() {
            let eid = id_of(e);
            if parent_id_of(eid) != Some(parent_id.as_str()) {
                continue;
            }
            let Some(stem) = eid.rsplit('.').next().and_then(|s| s.strip_suffix("[x]")) else {
                continue;
            };
            if let Some(type_name) = last.strip_prefix(stem) {
                let types = e.get("type").and_then(Value::as_array);
                let hit = types.into_iter().flatten().find_map(|t| {
                    let code = t.get("code").and_then(Value::as_str)?;
                    (crate::model::schema::capitalize(code) == type_name).then(|| code.to_string())
                });
                if let Some(code) = hit {
                    return Ok((i, Some(code)));
                }
            }
        }
        Err(self.unmatched(id))
    }

    /// Makes sure the element at `idx` has its children listed, taking them from its type
    /// (or type profile, or content reference) when the snapshot does not list them yet.
    fn expand_children(
        &mut self,
        elements: &mut Elements,
        idx: usize,
        parent_id: &str,
    ) -> Result<(), SnapshotError> {
        let has_children = elements
            .get(idx + 1)
            .is_some_and(|n| parent_id_of(id_of(n)) == Some(parent_id));
        if has_children {
            return Ok(());
        }
        let parent = &elements[idx];
        let parent_path = path_of(parent).to_string();
        let children: Vec<Map<String, Value>> =
            if let Some(cr) = parent.get("contentReference").and_then(Value::as_str) {
                // The referenced element as the base definition has it, not as this
                // profile has constrained it so far.
                let target = cr.trim_start_matches('#');
                let root_type = target.split('.').next().unwrap_or(target);
                let base = self.snapshots.get_inner(
                    self.registry,
                    &crate::definitions::core_url(root_type),
                    self.stack,
                )?;
                let base: Elements = base.iter().filter_map(|e| e.as_object().cloned()).collect();
                let Some(start) = base.iter().position(|e| path_of(e) == target) else {
                    return Err(self.unmatched(cr));
                };
                let end = subtree_end(&base, start, target);
                base[start + 1..end]
                    .iter()
                    .filter(|e| !id_of(e).contains(':'))
                    .cloned()
                    .map(|mut e| {
                        rebase(&mut e, target, parent_id, target, &parent_path);
                        e
                    })
                    .collect()
            } else {
                let types = parent.get("type").and_then(Value::as_array);
                let Some(t) = types.and_then(|t| t.first()) else {
                    return Ok(());
                };
                let url = match t.pointer("/profile/0").and_then(Value::as_str) {
                    Some(p) => p.to_string(),
                    None => {
                        let code = t.get("code").and_then(Value::as_str).unwrap_or_default();
                        crate::definitions::core_url(code)
                    }
                };
                let snap = self.snapshots.get_inner(self.registry, &url, self.stack)?;
                let Some(root) = snap.first().and_then(Value::as_object) else {
                    return Ok(());
                };
                let root_id = id_of(root).to_string();
                let root_path = path_of(root).to_string();
                snap.iter()
                    .skip(1)
                    .filter_map(Value::as_object)
                    .map(|e| {
                        let mut e = e.clone();
                        rebase(&mut e, &root_id, parent_id, &root_path, &parent_path);
                        e
                    })
                    .collect()
            };
        elements.splice(idx + 1..idx + 1, children);
        Ok(())
    }
}

/// Whether a differential element's `path` names snapshot element `target`: the same path,
/// or for a choice element the type-named form (`Observation.valueQuantity` for
/// `Observation.value[x]` when Quantity is one of its types).
fn path_fits(target: &str, path: &str, element: &Map<String, Value>) -> bool {
    if target == path {
        return true;
    }
    let Some(stem) = target.strip_suffix("[x]") else {
        return false;
    };
    let Some(type_name) = path.strip_prefix(stem) else {
        return false;
    };
    element
        .get("type")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("code").and_then(Value::as_str))
        .any(|code| crate::model::schema::capitalize(code) == type_name)
}

fn parent_id_of(id: &str) -> Option<&str> {
    parent_id(id)
}

/// The index just past the element at `idx` and everything below it (its children and
/// slices).
fn subtree_end(elements: &Elements, idx: usize, id: &str) -> usize {
    let mut end = idx + 1;
    while end < elements.len() && within(id_of(&elements[end]), id) {
        end += 1;
    }
    end
}

fn rebase(e: &mut Map<String, Value>, from_id: &str, to_id: &str, from_path: &str, to_path: &str) {
    let id = id_of(e);
    let new_id = match id.strip_prefix(from_id) {
        Some(rest) => format!("{to_id}{rest}"),
        None => id.to_string(),
    };
    let path = path_of(e);
    let new_path = match path.strip_prefix(from_path) {
        Some(rest) => format!("{to_path}{rest}"),
        None => path.to_string(),
    };
    e.insert("id".into(), Value::String(new_id));
    e.insert("path".into(), Value::String(new_path));
}

fn restrict_type(e: &mut Map<String, Value>, code: &str) {
    if let Some(types) = e.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t.get("code").and_then(Value::as_str) == Some(code));
    }
}

/// Overlays a differential element on a snapshot element.
fn merge(target: &mut Map<String, Value>, d: &Map<String, Value>) {
    for (k, v) in d {
        match k.as_str() {
            "id" | "path" | "extension" => {}
            "constraint" => {
                let list = target
                    .entry("constraint")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let (Some(list), Some(new)) = (list.as_array_mut(), v.as_array()) {
                    for c in new {
                        let key = c.get("key");
                        if let Some(pos) = list.iter().position(|x| x.get("key") == key) {
                            list[pos] = c.clone();
                        } else {
                            list.push(c.clone());
                        }
                    }
                }
            }
            "condition" => {
                let list = target
                    .entry("condition")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let (Some(list), Some(new)) = (list.as_array_mut(), v.as_array()) {
                    list.extend(
                        new.iter()
                            .filter(|c| !list.contains(c))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                }
            }
            _ => {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(elements: &[Value]) -> Vec<&str> {
        elements
            .iter()
            .filter_map(|e| e.get("id").and_then(Value::as_str))
            .collect()
    }

    fn find<'a>(elements: &'a [Value], id: &str) -> &'a Value {
        elements
            .iter()
            .find(|e| e.get("id").and_then(Value::as_str) == Some(id))
            .unwrap_or_else(|| panic!("no {id} in {:?}", ids(elements)))
    }

    #[test]
    fn differential_overlays_base_expands_types_and_slices() {
        let mut reg = Registry::core();
        reg.add(json!({
            "resourceType": "StructureDefinition",
            "url": "http://example.org/sd/bp",
            "name": "BP", "status": "draft", "kind": "resource", "abstract": false,
            "type": "Observation",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
            "derivation": "constraint",
            "differential": {"element": [
                {"id": "Observation.code.coding", "path": "Observation.code.coding", "min": 1},
                {"id": "Observation.code.coding.system", "path": "Observation.code.coding.system", "fixedUri": "http://loinc.org"},
                {"id": "Observation.component", "path": "Observation.component",
                 "slicing": {"discriminator": [{"type": "pattern", "path": "code"}], "rules": "open"}},
                {"id": "Observation.component:systolic", "path": "Observation.component", "sliceName": "systolic", "min": 1, "max": "1"},
                {"id": "Observation.component:systolic.code", "path": "Observation.component.code",
                 "patternCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}},
                {"path": "Observation.valueQuantity", "min": 1,
                 "constraint": [{"key": "bp-1", "severity": "error", "human": "x", "expression": "value > 0"}]}
            ]}
        }))
        .unwrap();
        let snaps = Snapshots::default();
        let s = snaps.get(&reg, "http://example.org/sd/bp").unwrap();
        assert_eq!(find(&s, "Observation.code.coding")["min"], 1);
        assert_eq!(
            find(&s, "Observation.code.coding.system")["fixedUri"],
            "http://loinc.org"
        );
        assert_eq!(
            find(&s, "Observation.code.coding.system")["path"],
            "Observation.code.coding.system"
        );
        let slice = find(&s, "Observation.component:systolic");
        assert_eq!(slice["sliceName"], "systolic");
        assert!(slice.get("slicing").is_none());
        // The slice's children come after it, copied from the sliced element.
        let order = ids(&s);
        let at = |id: &str| order.iter().position(|x| *x == id).unwrap();
        assert!(at("Observation.component:systolic") > at("Observation.component.interpretation"));
        assert!(at("Observation.component:systolic.code") > at("Observation.component:systolic"));
        assert!(find(&s, "Observation.component:systolic.code")
            .get("patternCodeableConcept")
            .is_some());
        // A type-named choice restricts the type and adds its constraint to the base ones.
        let value = find(&s, "Observation.value[x]");
        assert_eq!(value["type"], json!([{"code": "Quantity"}]));
        let keys: Vec<_> = value["constraint"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["key"].as_str().unwrap())
            .collect();
        assert!(
            keys.contains(&"ele-1") && keys.contains(&"bp-1"),
            "{keys:?}"
        );
    }

    #[test]
    fn unknown_base_and_unmatched_elements_are_errors() {
        let mut reg = Registry::core();
        reg.add(
            json!({"resourceType": "StructureDefinition", "url": "http://x/a",
            "baseDefinition": "http://x/missing", "type": "Patient",
            "differential": {"element": [{"path": "Patient"}]}}),
        )
        .unwrap();
        reg.add(
            json!({"resourceType": "StructureDefinition", "url": "http://x/b",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient", "type": "Patient",
            "differential": {"element": [{"path": "Patient.nonsense"}]}}),
        )
        .unwrap();
        let snaps = Snapshots::default();
        assert_eq!(
            snaps.get(&reg, "http://x/a").unwrap_err(),
            SnapshotError::UnknownProfile("http://x/missing".into())
        );
        assert!(matches!(
            snaps.get(&reg, "http://x/b"),
            Err(SnapshotError::Unmatched { .. })
        ));
        assert_eq!(
            snaps.get(&reg, "http://x/none").unwrap_err(),
            SnapshotError::UnknownProfile("http://x/none".into())
        );
    }

    #[test]
    fn extension_profiles_and_core_snapshots() {
        let reg = Registry::core();
        let snaps = Snapshots::default();
        let s = snaps
            .get(
                &reg,
                "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
            )
            .unwrap();
        assert_eq!(
            find(&s, "Extension.url")["fixedUri"],
            "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
        );
        let p = snaps
            .get(&reg, "http://hl7.org/fhir/StructureDefinition/Patient")
            .unwrap();
        assert_eq!(p.first().unwrap()["id"], "Patient");
    }
}
