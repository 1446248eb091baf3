//! A snapshot compiled for checking: the element definitions of one StructureDefinition as a
//! tree of [`Node`]s (children and slices by index), with cardinalities parsed, constraints
//! ready to evaluate and fixed/pattern values kept as JSON.

use serde_json::Value;
use std::collections::HashMap;

/// A type an element may take, with its profiles.
#[derive(Debug, Clone)]
pub struct TypeRef {
    /// The type code (`Quantity`, `string`, `Reference`, `Extension`).
    pub code: String,
    /// Profiles the value must conform to (`type.profile`).
    pub profiles: Vec<String>,
    /// Allowed reference targets (`type.targetProfile`).
    pub target_profiles: Vec<String>,
}

/// A terminology binding.
#[derive(Debug, Clone)]
pub struct Binding {
    /// `required`, `extensible`, `preferred` or `example`.
    pub strength: String,
    /// The ValueSet's canonical URL (empty when the binding names none).
    pub value_set: String,
    /// Additional bindings that are checked too (purpose `required` or `extensible`).
    pub additional: Vec<Binding>,
}

/// The additional bindings of a binding (the R5 `additional` element, carried in R4 by
/// its cross-version extension or the tools extension), for purposes that are checked.
fn additional_bindings(b: &Value) -> Vec<Binding> {
    b.get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|x| {
            let url = str_at(x, "url");
            url.ends_with("ElementDefinition.binding.additional")
                || url == "http://hl7.org/fhir/tools/StructureDefinition/additional-binding"
        })
        .filter_map(|x| {
            let parts = x.get("extension")?.as_array()?;
            let part = |name: &str| {
                parts
                    .iter()
                    .find(|p| str_at(p, "url") == name)
                    .and_then(|p| {
                        p.as_object()?
                            .iter()
                            .find(|(k, _)| k.starts_with("value"))
                            .and_then(|(_, v)| v.as_str())
                    })
            };
            let strength = match part("purpose")? {
                "required" => "required",
                "extensible" => "extensible",
                _ => return None,
            };
            Some(Binding {
                strength: strength.to_string(),
                value_set: part("valueSet")?.to_string(),
                additional: Vec::new(),
            })
        })
        .collect()
}

/// An invariant.
#[derive(Debug, Clone)]
pub struct Constraint {
    /// Its key (`ele-1`).
    pub key: String,
    /// `error` or `warning`.
    pub severity: String,
    /// Its description.
    pub human: String,
    /// The FHIRPath expression.
    pub expression: String,
    /// The compiled expression, made on first use (shared through the validator's cache of
    /// expressions, so each distinct text is compiled once).
    pub compiled: std::sync::OnceLock<
        Result<std::sync::Arc<crate::fhirpath::Expression>, crate::fhirpath::Error>,
    >,
    /// Whether the walk decides this invariant on the element tree (ele-1, ext-1, and
    /// dom-2 to dom-6 and ref-1 where the tree makes them plain), found once from the
    /// expression's text.
    pub native: Option<super::check::NativeInvariant>,
    /// The message reported when it fails (`constraint failed: {human} ({key})`), made once.
    pub failure: String,
    /// `severity` as an issue severity.
    pub level: super::issue::Severity,
}

/// How to tell slices apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discriminator {
    /// `value`, `pattern`, `type`, `profile` or `exists`.
    pub kind: String,
    /// FHIRPath-like path from the sliced element (`code`, `url`, `$this`).
    pub path: String,
}

/// Slicing of an element.
#[derive(Debug, Clone)]
pub struct Slicing {
    /// The discriminators.
    pub discriminators: Vec<Discriminator>,
    /// Whether slices must appear in order.
    pub ordered: bool,
    /// `closed`, `open` or `openAtEnd`.
    pub rules: String,
}

/// One element definition in the compiled tree.
#[derive(Debug, Clone)]
pub struct Node {
    /// Element id (`Observation.component:systolic.code`).
    pub id: String,
    /// Element path (`Observation.component.code`).
    pub path: String,
    /// Last path segment without `[x]` (`value`), or the type name for the root.
    pub name: String,
    /// Whether this is a choice element.
    pub choice: bool,
    /// Slice name, for a slice.
    pub slice_name: Option<String>,
    /// Minimum cardinality.
    pub min: u32,
    /// Maximum cardinality (`None` = `*`).
    pub max: Option<u32>,
    /// Allowed types.
    pub types: Vec<TypeRef>,
    /// `fixed[x]`.
    pub fixed: Option<Value>,
    /// `pattern[x]`.
    pub pattern: Option<Value>,
    /// The binding.
    pub binding: Option<Binding>,
    /// The invariants.
    pub constraints: Vec<Constraint>,
    /// Maximum string length.
    pub max_length: Option<u64>,
    /// `minValue[x]`, as JSON.
    pub min_value: Option<Value>,
    /// `maxValue[x]`, as JSON.
    pub max_value: Option<Value>,
    /// Slicing, when this element is sliced.
    pub slicing: Option<Slicing>,
    /// Children (not slices), by index.
    pub children: Vec<usize>,
    /// Slices of this element, by index.
    pub slices: Vec<usize>,
    /// For `contentReference`: the path of the element (in the base definition of the
    /// resource) whose children apply.
    pub content_reference: Option<String>,
    /// `mustSupport`.
    pub must_support: bool,
    /// `isModifier`: for an extension definition's root, that it is a modifier extension.
    pub is_modifier: bool,
    /// For each child, the index of its element in the instance type (computed on first
    /// use, with the type it was computed for), so the walk matches properties by number.
    child_index: std::sync::OnceLock<ChildIndex>,
}

/// How the children of a node meet the properties of an instance of one type.
#[derive(Debug, Clone)]
pub struct ChildIndex {
    /// The type it was made for (its address).
    key: usize,
    /// The element index in that type of each child.
    pub elements: Vec<Option<u16>>,
    /// For each element index of the type, the child it belongs to (`u16::MAX`: none).
    /// Empty when two children share an element (then properties are matched child by
    /// child).
    pub by_element: Vec<u16>,
    /// The children the walk must visit even without a value: those with a minimum
    /// cardinality, or with a slice that has one.
    pub required: Vec<u16>,
}

impl Node {
    /// The element index in `info` of each of `children` (this node's children or those of
    /// its content reference), when `info` is the type the cache was made for.
    pub fn child_elements(
        &self,
        children: &[usize],
        nodes: &[Node],
        info: &'static crate::model::schema::TypeInfo,
    ) -> Option<&[Option<u16>]> {
        self.child_index(children, nodes, info)
            .map(|c| c.elements.as_slice())
    }

    /// The index of `children` (this node's children or those of its content reference)
    /// by element of `info`, when `info` is the type the cache was made for.
    pub fn child_index(
        &self,
        children: &[usize],
        nodes: &[Node],
        info: &'static crate::model::schema::TypeInfo,
    ) -> Option<&ChildIndex> {
        let key = std::ptr::from_ref(info) as usize;
        let index = self.child_index.get_or_init(|| {
            let elements: Vec<Option<u16>> = children
                .iter()
                .map(|&c| {
                    info.element(&nodes[c].name)
                        .and_then(|(i, _)| u16::try_from(i).ok())
                })
                .collect();
            let mut by_element = vec![u16::MAX; info.elements.len()];
            let mut shared = u16::try_from(children.len()).is_err();
            for (k, e) in elements.iter().enumerate() {
                if let (Some(e), Ok(k)) = (e, u16::try_from(k)) {
                    match by_element.get_mut(usize::from(*e)) {
                        Some(slot) if *slot == u16::MAX => *slot = k,
                        _ => shared = true,
                    }
                }
            }
            if shared {
                by_element.clear();
            }
            let required = children
                .iter()
                .enumerate()
                .filter(|(_, &c)| {
                    nodes[c].min > 0 || nodes[c].slices.iter().any(|&sl| nodes[sl].min > 0)
                })
                .filter_map(|(k, _)| u16::try_from(k).ok())
                .collect();
            ChildIndex {
                key,
                elements,
                by_element,
                required,
            }
        });
        (index.key == key && index.elements.len() == children.len()).then_some(index)
    }
}

/// A compiled StructureDefinition.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Canonical URL.
    pub url: String,
    /// The type it constrains (`Observation`, `Extension`).
    pub type_name: String,
    /// The nodes; `nodes[0]` is the root.
    pub nodes: Vec<Node>,
    /// `context` of an extension definition: where it may be used.
    pub contexts: Vec<(String, String)>,
}

impl Profile {
    /// Compiles snapshot elements. `sd` is the StructureDefinition (for url, type, context).
    pub fn compile(sd: &Value, elements: &[Value]) -> Profile {
        let mut nodes: Vec<Node> = Vec::with_capacity(elements.len());
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for e in elements {
            let id = str_at(e, "id").to_string();
            let path = str_at(e, "path").to_string();
            let idx = nodes.len();
            let last = path.rsplit('.').next().unwrap_or(&path);
            let (name, choice) = match last.strip_suffix("[x]") {
                Some(n) => (n.to_string(), true),
                None => (last.to_string(), false),
            };
            let slice_name = e
                .get("sliceName")
                .and_then(Value::as_str)
                .map(str::to_string);
            let node = Node {
                id: id.clone(),
                path: path.clone(),
                name,
                choice,
                slice_name: slice_name.clone(),
                min: e.get("min").and_then(Value::as_u64).map_or(0, |m| m as u32),
                max: match e.get("max").and_then(Value::as_str) {
                    Some("*") | None => None,
                    Some(n) => n.parse().ok(),
                },
                types: e
                    .get("type")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|t| TypeRef {
                        code: type_code(t),
                        profiles: strings(t.get("profile")),
                        target_profiles: strings(t.get("targetProfile")),
                    })
                    .collect(),
                fixed: prefixed(e, "fixed"),
                pattern: prefixed(e, "pattern"),
                binding: e.get("binding").map(|b| Binding {
                    strength: str_at(b, "strength").to_string(),
                    value_set: str_at(b, "valueSet").to_string(),
                    additional: additional_bindings(b),
                }),
                constraints: e
                    .get("constraint")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        let expression = c.get("expression")?.as_str()?;
                        let key = c.get("key")?.as_str()?;
                        let human = str_at(c, "human");
                        Some(Constraint {
                            key: key.to_string(),
                            severity: str_at(c, "severity").to_string(),
                            human: human.to_string(),
                            failure: format!("constraint failed: {human} ({key})"),
                            level: super::issue::Severity::from_code(str_at(c, "severity")),
                            expression: expression.to_string(),
                            compiled: std::sync::OnceLock::new(),
                            native: super::check::NativeInvariant::of(expression),
                        })
                    })
                    .collect(),
                max_length: e.get("maxLength").and_then(Value::as_u64),
                min_value: prefixed(e, "minValue"),
                max_value: prefixed(e, "maxValue"),
                slicing: e.get("slicing").map(|s| Slicing {
                    discriminators: s
                        .get("discriminator")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|d| Discriminator {
                            kind: str_at(d, "type").to_string(),
                            path: str_at(d, "path").to_string(),
                        })
                        .collect(),
                    ordered: s.get("ordered").and_then(Value::as_bool).unwrap_or(false),
                    rules: s
                        .get("rules")
                        .and_then(Value::as_str)
                        .unwrap_or("open")
                        .to_string(),
                }),
                children: Vec::new(),
                slices: Vec::new(),
                content_reference: None,
                must_support: e
                    .get("mustSupport")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                is_modifier: e
                    .get("isModifier")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                child_index: std::sync::OnceLock::new(),
            };
            let mut node = node;
            node.content_reference = e
                .get("contentReference")
                .and_then(Value::as_str)
                .map(|cr| cr.trim_start_matches('#').to_string());
            nodes.push(node);
            // Attach to the parent: a slice to its sliced element, others to the parent id.
            if idx > 0 {
                let (parent_key, is_slice) = parent_of(&id, slice_name.as_deref());
                if let Some(&p) = by_id.get(parent_key) {
                    if is_slice {
                        nodes[p].slices.push(idx);
                    } else {
                        nodes[p].children.push(idx);
                    }
                }
            }
            by_id.insert(id, idx);
        }
        if let Some(root) = nodes.first_mut() {
            root.name = str_at(sd, "type").to_string();
        }
        Profile {
            url: str_at(sd, "url").to_string(),
            type_name: str_at(sd, "type").to_string(),
            nodes,
            contexts: sd
                .get("context")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        str_at(c, "type").to_string(),
                        str_at(c, "expression").to_string(),
                    )
                })
                .collect(),
        }
    }

    /// The children of a node.
    pub fn children_of(&self, node: usize) -> &[usize] {
        &self.nodes[node].children
    }

    /// The first node (not a slice) with this path.
    pub fn node_by_path(&self, path: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.path == path && n.slice_name.is_none())
    }
}

/// For element id `A.b:s` (a slice) the sliced element `A.b`; otherwise the parent id.
fn parent_of<'a>(id: &'a str, slice_name: Option<&str>) -> (&'a str, bool) {
    let last_dot = id.rfind('.');
    let last_seg = last_dot.map_or(id, |i| &id[i + 1..]);
    if let (Some(name), Some(colon)) = (slice_name, last_seg.rfind(':')) {
        if &last_seg[colon + 1..] == name {
            let cut = id.len() - (last_seg.len() - colon);
            return (&id[..cut], true);
        }
    }
    (last_dot.map_or("", |i| &id[..i]), false)
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// The type code, with FHIRPath system types turned into their FHIR primitive.
fn type_code(t: &Value) -> String {
    let code = str_at(t, "code");
    match code.strip_prefix("http://hl7.org/fhirpath/System.") {
        Some(sys) => t
            .pointer("/extension/0/valueUrl")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| sys.to_lowercase()),
        None => code.to_string(),
    }
}

/// The value of the first property named `prefix` + a type (`fixedUri`, `patternCoding`).
fn prefixed(e: &Value, prefix: &str) -> Option<Value> {
    e.as_object()?.iter().find_map(|(k, v)| {
        let rest = k.strip_prefix(prefix)?;
        rest.starts_with(|c: char| c.is_ascii_uppercase())
            .then(|| v.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tree_with_slices_and_content_references() {
        let sd = json!({"url": "u", "type": "Observation"});
        let els = vec![
            json!({"id": "Observation", "path": "Observation", "min": 0, "max": "*"}),
            json!({"id": "Observation.component", "path": "Observation.component", "min": 0, "max": "*",
                   "slicing": {"discriminator": [{"type": "pattern", "path": "code"}], "rules": "closed"}}),
            json!({"id": "Observation.component.code", "path": "Observation.component.code", "min": 1, "max": "1"}),
            json!({"id": "Observation.component:sys", "path": "Observation.component", "sliceName": "sys", "min": 1, "max": "1"}),
            json!({"id": "Observation.component:sys.code", "path": "Observation.component.code", "min": 1, "max": "1",
                   "patternCodeableConcept": {"text": "x"}}),
            json!({"id": "Observation.value[x]", "path": "Observation.value[x]", "min": 0, "max": "1",
                   "type": [{"code": "Quantity"}, {"code": "string"}]}),
        ];
        let p = Profile::compile(&sd, &els);
        assert_eq!(p.nodes[0].children, vec![1, 5]);
        assert_eq!(p.nodes[1].children, vec![2]);
        assert_eq!(p.nodes[1].slices, vec![3]);
        assert_eq!(p.nodes[3].children, vec![4]);
        assert!(p.nodes[4].pattern.is_some());
        assert_eq!(p.nodes[1].slicing.as_ref().unwrap().rules, "closed");
        assert_eq!(p.node_by_path("Observation.component.code"), Some(2));
        assert!(p.nodes[5].choice && p.nodes[5].name == "value");
    }
}
