//! The in-memory form of FHIR data: a tree of [`Element`]s whose every node knows its type.
//!
//! A resource, a complex data type and an inline (backbone) element are all [`Element`]s: a
//! type plus properties in canonical order. A primitive is a [`Primitive`]: its JSON scalar
//! (exact text for numbers) plus the `id` and extensions that FHIR JSON carries in the
//! `_name` twin property. Every node records the byte offset of its JSON value in the
//! source, so later stages can report `line:column`.

use super::schema::{ElementInfo, ElementType, TypeInfo};

/// A resource, complex data type value or backbone element.
#[derive(Debug, Clone)]
pub struct Element {
    /// The element's type.
    pub info: &'static TypeInfo,
    /// Its properties, ordered by element definition order; each appears once.
    pub props: Vec<Property>,
    /// Byte offset of the JSON object in the source (0 for built values).
    pub pos: u32,
}

/// The values of one child element.
#[derive(Debug, Clone)]
pub struct Property {
    /// Index of the element in the parent's [`TypeInfo::elements`].
    pub element: u16,
    /// Index of the type taken, in the element's [`ElementInfo::types`] (non-zero only for
    /// choice elements).
    pub type_index: u16,
    /// The values: exactly one for single-valued elements, one or more for repeating ones.
    pub values: Values,
}

/// The values of a property: inline storage for the common single value, so most
/// properties cost no allocation of their own.
pub type Values = smallvec::SmallVec<[Value; 1]>;

/// A value of an element: primitive or complex.
#[derive(Debug, Clone)]
pub enum Value {
    /// A primitive value.
    Primitive(Primitive),
    /// A complex value, backbone element or resource.
    Element(Element),
}

/// The JSON scalar of a primitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    /// `true` / `false`
    Bool(bool),
    /// A number, as written in the source.
    Number(Box<str>),
    /// A string.
    String(Box<str>),
}

/// The rarely present parts of a primitive: its `id` and extensions.
#[derive(Debug, Clone, Default)]
pub struct PrimitiveExtras {
    /// `id` of the primitive element.
    pub id: Option<Box<str>>,
    /// Extensions on the primitive.
    pub extension: Vec<Element>,
}

/// A primitive value with its type.
#[derive(Debug, Clone)]
pub struct Primitive {
    /// The primitive type (`date`, `code`, ...).
    pub info: &'static TypeInfo,
    /// The value; `None` when only extensions are present.
    pub value: Option<Scalar>,
    /// `id` and extensions, from the `_name` property.
    pub extras: Option<Box<PrimitiveExtras>>,
    /// Byte offset of the value (or of its `_name` part) in the source.
    pub pos: u32,
}

impl Primitive {
    /// The value as a string slice: the string, the number's text, or `true`/`false`.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Some(Scalar::String(s) | Scalar::Number(s)) => Some(s),
            Some(Scalar::Bool(true)) => Some("true"),
            Some(Scalar::Bool(false)) => Some("false"),
            None => None,
        }
    }

    /// Extensions on the primitive (empty when it has none).
    pub fn extensions(&self) -> &[Element] {
        self.extras.as_ref().map_or(&[], |e| &e.extension)
    }
}

impl Value {
    /// The element's type.
    pub fn info(&self) -> &'static TypeInfo {
        match self {
            Value::Primitive(p) => p.info,
            Value::Element(e) => e.info,
        }
    }

    /// Byte offset in the source.
    pub fn pos(&self) -> u32 {
        match self {
            Value::Primitive(p) => p.pos,
            Value::Element(e) => e.pos,
        }
    }

    /// The complex element, if this is one.
    pub fn as_element(&self) -> Option<&Element> {
        match self {
            Value::Element(e) => Some(e),
            Value::Primitive(_) => None,
        }
    }

    /// The primitive, if this is one.
    pub fn as_primitive(&self) -> Option<&Primitive> {
        match self {
            Value::Primitive(p) => Some(p),
            Value::Element(_) => None,
        }
    }
}

impl Element {
    /// The definition of a property of this element.
    pub fn definition(&self, prop: &Property) -> &'static ElementInfo {
        &self.info.elements[usize::from(prop.element)]
    }

    /// The type a property took.
    pub fn element_type(&self, prop: &Property) -> &'static ElementType {
        &self.definition(prop).types[usize::from(prop.type_index)]
    }

    /// The property for an element name (`value` finds `valueQuantity`), if present.
    pub fn get(&self, name: &str) -> Option<&Property> {
        self.props
            .iter()
            .find(|p| &*self.info.elements[usize::from(p.element)].name == name)
    }

    /// The values of an element by name; empty when absent.
    pub fn values(&self, name: &str) -> &[Value] {
        self.get(name).map_or(&[], |p| &p.values)
    }

    /// The first value of a primitive element as a string (`id`, `status`, ...).
    pub fn str(&self, name: &str) -> Option<&str> {
        self.values(name)
            .first()
            .and_then(Value::as_primitive)
            .and_then(Primitive::as_str)
    }

    /// The resource type, for a resource (its type name); for other elements, the type name.
    pub fn type_name(&self) -> &str {
        self.info.fhir_type_name()
    }

    /// The logical id of a resource.
    pub fn id(&self) -> Option<&str> {
        self.str("id")
    }
}
