//! [`Element`] to FHIR R4 JSON: `resourceType` first, then properties in canonical order,
//! primitives' ids and extensions in `_name` twins, numbers exactly as they were read.

use super::element::{Element, Scalar, Value};
use super::json::write_str;
use super::schema::TypeKind;

/// Serializes an element (usually a resource) as compact JSON.
pub fn to_json(el: &Element) -> String {
    let mut out = String::with_capacity(1024);
    write_element(&mut out, el, None);
    out
}

/// Serializes an element as indented JSON (two spaces), for people to read.
pub fn to_json_pretty(el: &Element) -> String {
    let mut out = String::with_capacity(1024);
    write_element(&mut out, el, Some(0));
    out
}

fn newline(out: &mut String, indent: Option<usize>) {
    if let Some(n) = indent {
        out.push('\n');
        for _ in 0..n {
            out.push_str("  ");
        }
    }
}

fn key(out: &mut String, first: &mut bool, indent: Option<usize>, prefix: &str, name: &str) {
    if !*first {
        out.push(',');
    }
    *first = false;
    newline(out, indent);
    out.push('"');
    out.push_str(prefix);
    out.push_str(name);
    out.push_str(if indent.is_some() { "\": " } else { "\":" });
}

fn write_element(out: &mut String, el: &Element, indent: Option<usize>) {
    let inner = indent.map(|n| n + 1);
    out.push('{');
    let mut first = true;
    if el.info.kind == TypeKind::Resource {
        key(out, &mut first, inner, "", "resourceType");
        write_str(out, &el.info.name);
    }
    for prop in &el.props {
        let def = el.definition(prop);
        let name = def.json_name(usize::from(prop.type_index));
        let values = &prop.values;
        if matches!(values.first(), Some(Value::Element(_))) {
            key(out, &mut first, inner, "", name);
            list(out, def.array, values, inner, |out, v, i| {
                if let Value::Element(e) = v {
                    write_element(out, e, i);
                }
            });
            continue;
        }
        if values
            .iter()
            .any(|v| v.as_primitive().is_some_and(|p| p.value.is_some()))
        {
            key(out, &mut first, inner, "", name);
            list(out, def.array, values, inner, |out, v, _| {
                match v.as_primitive().and_then(|p| p.value.as_ref()) {
                    Some(s) => scalar(out, s),
                    None => out.push_str("null"),
                }
            });
        }
        if values
            .iter()
            .any(|v| v.as_primitive().is_some_and(|p| p.extras.is_some()))
        {
            key(out, &mut first, inner, "_", name);
            list(out, def.array, values, inner, |out, v, ind| {
                match v.as_primitive().and_then(|p| p.extras.as_ref()) {
                    Some(x) => {
                        let ind2 = ind.map(|n| n + 1);
                        out.push('{');
                        let mut f = true;
                        if let Some(id) = &x.id {
                            key(out, &mut f, ind2, "", "id");
                            write_str(out, id);
                        }
                        if !x.extension.is_empty() {
                            key(out, &mut f, ind2, "", "extension");
                            list(out, true, &x.extension, ind2, write_element);
                        }
                        newline(out, ind);
                        out.push('}');
                    }
                    None => out.push_str("null"),
                }
            });
        }
    }
    newline(out, indent);
    out.push('}');
}

fn list<T>(
    out: &mut String,
    array: bool,
    items: &[T],
    indent: Option<usize>,
    mut each: impl FnMut(&mut String, &T, Option<usize>),
) {
    if !array {
        if let Some(item) = items.first() {
            each(out, item, indent);
        }
        return;
    }
    let inner = indent.map(|n| n + 1);
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        newline(out, inner);
        each(out, item, inner);
    }
    newline(out, indent);
    out.push(']');
}

fn scalar(out: &mut String, s: &Scalar) {
    match s {
        Scalar::Bool(true) => out.push_str("true"),
        Scalar::Bool(false) => out.push_str("false"),
        Scalar::Number(n) => out.push_str(n),
        Scalar::String(s) => write_str(out, s),
    }
}
