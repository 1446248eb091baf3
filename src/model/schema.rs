//! Type information derived from the R4 StructureDefinitions: for each resource, data type and
//! backbone element, its child elements, their cardinality, their types and the JSON property
//! names they take (`value[x]` gives `valueQuantity`, `valueString`, ...).
//!
//! A [`TypeInfo`] is built the first time a type is needed and then lives for the whole
//! process (`&'static`): there are at most a few thousand of them, and handing out plain
//! references keeps the parser and FHIRPath free of reference counting. Child types are
//! resolved lazily too, so loading `Patient` does not load every type reachable from it.

use crate::definitions::{self, Kind};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// What kind of type a [`TypeInfo`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    /// A primitive type (`string`, `date`, ...): a JSON scalar plus optional id/extensions.
    Primitive(PrimitiveKind),
    /// A complex data type (`HumanName`, `Quantity`, ...).
    Complex,
    /// A resource (`Patient`, ...).
    Resource,
    /// An element defined inline in another type (`Patient.contact`, `Timing.repeat`).
    Backbone,
}

/// The JSON representation of a primitive type's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimitiveKind {
    /// JSON `true` / `false` (`boolean`).
    Boolean,
    /// A JSON number without fraction or exponent (`integer`, `positiveInt`, `unsignedInt`).
    Integer,
    /// Any JSON number (`decimal`), kept as written.
    Decimal,
    /// A JSON string (every other primitive).
    String,
}

/// Upper bound of an element's cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Max {
    /// A number of repetitions (`0`, `1`, ...).
    Count(u32),
    /// `*`
    Unbounded,
}

/// One type an element may take.
#[derive(Debug)]
pub struct ElementType {
    /// The type code as the definitions give it, with FHIRPath system types turned into their
    /// FHIR primitive (`Element.id` is `string`); for inline elements, the defining path
    /// (`Patient.contact`), and `Resource` for any resource.
    pub code: Box<str>,
    /// Profiles the type must conform to (`type.profile`).
    pub profiles: Vec<Box<str>>,
    /// Allowed reference targets (`type.targetProfile`).
    pub target_profiles: Vec<Box<str>>,
    resolved: OnceLock<Option<&'static TypeInfo>>,
}

impl ElementType {
    /// The type's information, built on first use; `None` for `Resource` (the concrete type
    /// comes from the instance) or a code the definitions do not know.
    pub fn info(&self) -> Option<&'static TypeInfo> {
        *self.resolved.get_or_init(|| type_info(&self.code))
    }
}

/// One child element of a type.
#[derive(Debug)]
pub struct ElementInfo {
    /// The element name without `[x]` (`value`).
    pub name: Box<str>,
    /// The full path in its defining StructureDefinition (`Observation.value[x]`).
    pub path: Box<str>,
    /// Minimum cardinality.
    pub min: u32,
    /// Maximum cardinality.
    pub max: Max,
    /// Whether the element repeats (base max above 1), so JSON holds an array.
    pub array: bool,
    /// Whether this is a choice element (`[x]`).
    pub choice: bool,
    /// The types it may take, in definition order.
    pub types: Vec<ElementType>,
    /// The JSON property name for each type (one entry unless this is a choice element).
    json_names: Vec<Box<str>>,
}

impl ElementInfo {
    /// The JSON property name for type number `type_index` (`valueQuantity` for a choice).
    pub fn json_name(&self, type_index: usize) -> &str {
        self.json_names.get(type_index).map_or(&self.name, |n| n)
    }
}

/// Where a JSON property name leads within a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child {
    /// Index into [`TypeInfo::elements`].
    pub element: u16,
    /// Index into that element's [`ElementInfo::types`].
    pub type_index: u16,
}

/// Everything the model needs to know about one type.
#[derive(Debug)]
pub struct TypeInfo {
    /// The name: the type or resource name, or the defining path for inline elements.
    pub name: Box<str>,
    /// What kind of type this is.
    pub kind: TypeKind,
    /// The name of the type this one specialises (`DomainResource` for `Patient`, `string`
    /// for `code`, `BackboneElement` for inline elements), if any.
    pub base: Option<Box<str>>,
    /// The child elements, in the definition's (canonical JSON) order.
    pub elements: Vec<ElementInfo>,
    json_names: HashMap<Box<str>, Child, FastHash>,
    /// The information of `base`, resolved on first use (`is_a` walks these pointers).
    base_info: OnceLock<Option<&'static TypeInfo>>,
}

impl TypeInfo {
    /// Looks up a JSON property name (`valueQuantity`, `birthDate`; without the `_` prefix).
    #[inline]
    pub fn child(&self, json_name: &str) -> Option<Child> {
        self.json_names.get(json_name).copied()
    }

    /// Looks up an element by its name (`value` for `value[x]`).
    pub fn element(&self, name: &str) -> Option<(usize, &ElementInfo)> {
        self.elements
            .iter()
            .enumerate()
            .find(|(_, e)| &*e.name == name)
    }

    /// The primitive kind, when this is a primitive type.
    pub fn primitive(&self) -> Option<PrimitiveKind> {
        match self.kind {
            TypeKind::Primitive(p) => Some(p),
            _ => None,
        }
    }

    /// The FHIR type name FHIRPath reports for instances: the name, or `BackboneElement` /
    /// `Element` for inline elements.
    pub fn fhir_type_name(&self) -> &str {
        match (self.kind, self.base.as_deref()) {
            (TypeKind::Backbone, Some(b)) => b,
            _ => &self.name,
        }
    }

    /// Whether this type is `name` or derives from it (`Patient` is a `DomainResource` and
    /// a `Resource`; `code` is a `string`; `Age` is a `Quantity`).
    pub fn is_a(&self, name: &str) -> bool {
        if &*self.name == name || self.fhir_type_name() == name {
            return true;
        }
        let mut info = self;
        while let Some(b) = info.base.as_deref() {
            if b == name {
                return true;
            }
            match info.base_type() {
                Some(t) => info = t,
                None => return false,
            }
        }
        false
    }

    /// The information of the type this one specialises, resolved once.
    fn base_type(&self) -> Option<&'static TypeInfo> {
        *self
            .base_info
            .get_or_init(|| self.base.as_deref().and_then(type_info))
    }
}

/// A fast, non-cryptographic hasher for the small, trusted key sets of element names (the
/// standard SipHash costs more than the rest of a property lookup).
#[derive(Debug, Clone, Copy, Default)]
pub struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

/// The hasher of [`FastHash`]: a multiply-rotate mix over 8-byte words.
#[derive(Debug, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Capitalises the first letter of a type code, as choice element names do.
pub fn capitalize(code: &str) -> String {
    let mut c = code.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

const PRIMITIVES: &[(&str, PrimitiveKind)] = &[
    ("boolean", PrimitiveKind::Boolean),
    ("integer", PrimitiveKind::Integer),
    ("positiveInt", PrimitiveKind::Integer),
    ("unsignedInt", PrimitiveKind::Integer),
    ("decimal", PrimitiveKind::Decimal),
    ("string", PrimitiveKind::String),
    ("code", PrimitiveKind::String),
    ("id", PrimitiveKind::String),
    ("markdown", PrimitiveKind::String),
    ("uri", PrimitiveKind::String),
    ("url", PrimitiveKind::String),
    ("canonical", PrimitiveKind::String),
    ("oid", PrimitiveKind::String),
    ("uuid", PrimitiveKind::String),
    ("base64Binary", PrimitiveKind::String),
    ("instant", PrimitiveKind::String),
    ("date", PrimitiveKind::String),
    ("dateTime", PrimitiveKind::String),
    ("time", PrimitiveKind::String),
    ("xhtml", PrimitiveKind::String),
];

/// The primitive kind of a primitive type code, or `None` when the code is not primitive.
pub fn primitive_kind(code: &str) -> Option<PrimitiveKind> {
    PRIMITIVES.iter().find(|(c, _)| *c == code).map(|(_, k)| *k)
}

/// Type information by name, as built so far.
type TypeCache = HashMap<String, Option<&'static TypeInfo>, FastHash>;

fn cache() -> &'static RwLock<TypeCache> {
    static CACHE: OnceLock<RwLock<TypeCache>> = OnceLock::new();
    CACHE.get_or_init(|| RwLock::new(HashMap::with_hasher(FastHash)))
}

/// The information of a type by name (`Patient`, `HumanName`, `date`) or, for inline
/// elements, by defining path (`Patient.contact`). Built on first use; `None` when the R4
/// definitions have no such type.
pub fn type_info(name: &str) -> Option<&'static TypeInfo> {
    if let Ok(c) = cache().read() {
        if let Some(t) = c.get(name) {
            return *t;
        }
    }
    let built = build(name).map(|t| &*Box::leak(Box::new(t)));
    let Ok(mut c) = cache().write() else {
        return built;
    };
    // Another thread may have built it meanwhile: keep the first, so references stay unique.
    *c.entry(name.to_string()).or_insert(built)
}

/// Whether `name` is an R4 resource type (concrete or abstract).
pub fn is_resource_type(name: &str) -> bool {
    type_info(name).is_some_and(|t| t.kind == TypeKind::Resource)
}

fn build(name: &str) -> Option<TypeInfo> {
    let (sd_name, root) = match name.split_once('.') {
        Some((sd, _)) => (sd, name),
        None => (name, name),
    };
    let sd = definitions::get(Kind::StructureDefinition, &definitions::core_url(sd_name))?;
    let elements = sd.pointer("/snapshot/element")?.as_array()?;
    let sd_kind = sd.get("kind").and_then(Value::as_str).unwrap_or_default();
    // Definitions of profiled types (Age, SimpleQuantity) have paths rooted at the base type.
    let root_path = elements
        .first()
        .and_then(|e| e.get("path"))
        .and_then(Value::as_str)?;
    let root = if root == sd_name {
        root_path.to_string()
    } else {
        format!("{root_path}{}", &root[sd_name.len()..])
    };
    let kind;
    let base;
    if root != root_path {
        // An inline element: find its own definition to tell BackboneElement from Element.
        let def = elements
            .iter()
            .find(|e| e.get("path").and_then(Value::as_str) == Some(&root))?;
        let code = def
            .pointer("/type/0/code")
            .and_then(Value::as_str)
            .unwrap_or("BackboneElement");
        kind = TypeKind::Backbone;
        base = Some(code.into());
    } else {
        kind = match (sd_kind, primitive_kind(sd_name)) {
            (_, Some(p)) if sd_kind == "primitive-type" => TypeKind::Primitive(p),
            ("resource", _) => TypeKind::Resource,
            _ => TypeKind::Complex,
        };
        base = match sd.get("derivation").and_then(Value::as_str) {
            // A constraint on a type (Age on Quantity) is that type for FHIRPath purposes.
            Some("constraint") => sd.get("type").and_then(Value::as_str).map(Into::into),
            _ => sd
                .get("baseDefinition")
                .and_then(Value::as_str)
                .and_then(|u| u.rsplit('/').next())
                .map(Into::into),
        };
    }
    let prefix = format!("{root}.");
    let mut infos = Vec::new();
    let mut json_names = HashMap::with_hasher(FastHash);
    for (i, el) in elements.iter().enumerate() {
        let Some(path) = el.get("path").and_then(Value::as_str) else {
            continue;
        };
        let Some(rest) = path.strip_prefix(&prefix) else {
            continue;
        };
        if rest.contains('.') || el.get("sliceName").is_some() {
            continue;
        }
        let has_children = elements
            .get(i + 1)
            .and_then(|n| n.get("path"))
            .and_then(Value::as_str)
            .is_some_and(|p| p.starts_with(path) && p.as_bytes().get(path.len()) == Some(&b'.'));
        let inline_name = format!("{name}.{rest}");
        let mut info = element_info(
            el,
            path,
            rest,
            has_children,
            &inline_name,
            sd_name,
            root_path,
        );
        // R4 types `Resource.id` as a plain string in its definitions, but its text (and
        // every FHIRPath engine) makes it an `id`.
        if kind == TypeKind::Resource && rest == "id" {
            if let Some(t) = info.types.first_mut() {
                t.code = "id".into();
            }
        }
        if matches!(kind, TypeKind::Primitive(_)) && rest == "value" {
            continue;
        }
        let element = u16::try_from(infos.len()).ok()?;
        for (t, _) in info.types.iter().enumerate() {
            let type_index = u16::try_from(t).ok()?;
            json_names.insert(
                info.json_name(t).into(),
                Child {
                    element,
                    type_index,
                },
            );
        }
        infos.push(info);
    }
    Some(TypeInfo {
        name: name.into(),
        kind,
        base,
        elements: infos,
        json_names,
        base_info: OnceLock::new(),
    })
}

fn element_info(
    el: &Value,
    path: &str,
    rest: &str,
    has_children: bool,
    inline_name: &str,
    sd_name: &str,
    root_path: &str,
) -> ElementInfo {
    let (name, choice) = match rest.strip_suffix("[x]") {
        Some(n) => (n, true),
        None => (rest, false),
    };
    let min = el
        .get("min")
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0);
    let max = parse_max(el.get("max").and_then(Value::as_str));
    // The JSON shape follows the base definition's cardinality.
    let base_max = el
        .pointer("/base/max")
        .and_then(Value::as_str)
        .map_or(max, |m| parse_max(Some(m)));
    let array = !matches!(base_max, Max::Count(0 | 1));
    let mut types = Vec::new();
    if let Some(cr) = el.get("contentReference").and_then(Value::as_str) {
        // `#Questionnaire.item`: the same structure as that element, named by its path in
        // the namespace of the type being built.
        let target = cr.trim_start_matches('#');
        let code = match target.strip_prefix(root_path) {
            Some(tail) => format!("{sd_name}{tail}"),
            None => target.to_string(),
        };
        types.push(element_type(code, el));
    } else {
        for t in el
            .get("type")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let code = t.get("code").and_then(Value::as_str).unwrap_or_default();
            let code = if let Some(sys) = code.strip_prefix("http://hl7.org/fhirpath/System.") {
                t.pointer("/extension/0/valueUrl")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| system_to_fhir(sys).to_string())
            } else if has_children && (code == "BackboneElement" || code == "Element") {
                inline_name.to_string()
            } else {
                code.to_string()
            };
            types.push(element_type(code, t));
        }
    }
    let json_names = types
        .iter()
        .map(|t| {
            if choice {
                format!("{name}{}", capitalize(&t.code)).into_boxed_str()
            } else {
                name.into()
            }
        })
        .collect();
    ElementInfo {
        name: name.into(),
        path: path.into(),
        min,
        max,
        array,
        choice,
        types,
        json_names,
    }
}

fn element_type(code: String, t: &Value) -> ElementType {
    let list = |key: &str| -> Vec<Box<str>> {
        t.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(Into::into)
            .collect()
    };
    ElementType {
        code: code.into_boxed_str(),
        profiles: list("profile"),
        target_profiles: list("targetProfile"),
        resolved: OnceLock::new(),
    }
}

fn parse_max(m: Option<&str>) -> Max {
    match m {
        Some("*") | None => Max::Unbounded,
        Some(n) => n.parse().map_or(Max::Unbounded, Max::Count),
    }
}

fn system_to_fhir(sys: &str) -> &'static str {
    match sys {
        "Boolean" => "boolean",
        "Integer" => "integer",
        "Decimal" => "decimal",
        "Date" => "date",
        "DateTime" => "dateTime",
        "Time" => "time",
        _ => "string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_elements() {
        let p = type_info("Patient").unwrap();
        assert_eq!(p.kind, TypeKind::Resource);
        let c = p.child("birthDate").unwrap();
        let el = &p.elements[usize::from(c.element)];
        assert!(!el.array);
        assert_eq!(&*el.types[0].code, "date");
        let name = &p.elements[usize::from(p.child("name").unwrap().element)];
        assert!(name.array);
        let deceased = p.child("deceasedDateTime").unwrap();
        assert_eq!(usize::from(deceased.type_index), 1);
        let contact = p.child("contact").unwrap();
        let ct = p.elements[usize::from(contact.element)].types[0]
            .info()
            .unwrap();
        assert_eq!(&*ct.name, "Patient.contact");
        assert_eq!(ct.fhir_type_name(), "BackboneElement");
        assert!(ct.child("relationship").is_some());
        assert!(p.is_a("DomainResource") && p.is_a("Resource") && !p.is_a("Observation"));
    }

    #[test]
    fn primitives_and_recursion() {
        let code = type_info("code").unwrap();
        assert_eq!(code.kind, TypeKind::Primitive(PrimitiveKind::String));
        assert!(code.is_a("string"));
        assert!(code.child("extension").is_some() && code.child("value").is_none());
        let q = type_info("Questionnaire").unwrap();
        let item = q.elements[usize::from(q.child("item").unwrap().element)].types[0]
            .info()
            .unwrap();
        let nested = item.elements[usize::from(item.child("item").unwrap().element)].types[0]
            .info()
            .unwrap();
        assert!(std::ptr::eq(item, nested));
        let ext = type_info("Extension").unwrap();
        let url = &ext.elements[usize::from(ext.child("url").unwrap().element)];
        assert_eq!(&*url.types[0].code, "uri");
        assert!(type_info("Age").unwrap().is_a("Quantity"));
    }
}
