//! The `fhirpath` subcommand: evaluate one expression, optionally on a FHIR JSON resource, and
//! print the result as JSON, `[{"type": "date", "value": "1974-12-25"}, ...]`.
//!
//! Exit codes: 0 success; 1 the expression is wrong (syntax or semantic error, with its
//! `line:column`) or fails to evaluate; 2 the input file cannot be read or is not FHIR JSON.

use std::path::Path;
use std::process::ExitCode;

use super::value::{Item, SystemValue};
use super::{Context, Expression};
use crate::model::json::write_str;
use crate::model::{self, Scalar};

/// Runs the subcommand: compiles `expression`, evaluates it on the resource in `input` (or on
/// nothing), prints the result to stdout and errors to stderr.
pub fn run(expression: &str, input: Option<&Path>) -> ExitCode {
    let resource = match input.map(load).transpose() {
        Ok(r) => r,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let expr = match Expression::compile(expression) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let ctx = resource.as_ref().map_or_else(Context::empty, Context::new);
    let outcome = match expr.evaluate(&ctx) {
        Ok(result) => {
            println!("{}", to_json(&result));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    };
    outcome
}

/// Reads and parses a FHIR JSON file.
fn load(path: &Path) -> Result<model::Element, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    model::parse(&text).map_err(|e| format!("{} is not a FHIR resource: {e}", path.display()))
}

/// A result as a JSON array of `{"type": T, "value": V}`: `T` is the FHIR type of a node or
/// the System type name (`boolean`, `integer`, `decimal`, `string`, `date`, `dateTime`,
/// `time`, `Quantity`); `V` is the node's JSON (numbers with their exact text), the System
/// value, or for a System quantity `{"value": n, "unit": "u"}`.
pub fn to_json(items: &[Item<'_>]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"type\":");
        write_str(&mut out, item.output_type());
        out.push_str(",\"value\":");
        write_value(&mut out, item);
        out.push('}');
    }
    out.push(']');
    out
}

fn write_value(out: &mut String, item: &Item<'_>) {
    match item {
        Item::Element(e) => out.push_str(&model::to_json(e)),
        Item::Primitive(p) => match &p.value {
            Some(Scalar::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
            Some(Scalar::Number(n)) => out.push_str(n),
            Some(Scalar::String(s)) => write_str(out, s),
            None => out.push_str("null"),
        },
        Item::Type(t) => {
            out.push_str("{\"namespace\":");
            write_str(out, t.namespace);
            out.push_str(",\"name\":");
            write_str(out, t.name);
            out.push('}');
        }
        other => match other.to_system() {
            Some(SystemValue::Boolean(b)) => out.push_str(if b { "true" } else { "false" }),
            Some(SystemValue::Integer(i)) => out.push_str(&i.to_string()),
            Some(SystemValue::Decimal(d)) => out.push_str(&d.to_string()),
            Some(SystemValue::Quantity(q)) => {
                out.push_str("{\"value\":");
                out.push_str(&q.value.to_string());
                out.push_str(",\"unit\":");
                write_str(out, &q.unit);
                out.push('}');
            }
            Some(v) => write_str(out, &v.to_string()),
            None => out.push_str("null"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_print_with_types() {
        let patient = model::parse(
            r#"{"resourceType":"Patient","birthDate":"1974-12-25","multipleBirthInteger":2}"#,
        )
        .unwrap();
        let expr = Expression::compile(
            "birthDate | multipleBirth | 1.50 | 'a\"b' | 4 'mg' | (birthDate + 1 day)",
        )
        .unwrap();
        let result = expr.evaluate(&Context::new(&patient)).unwrap();
        assert_eq!(
            to_json(&result),
            r#"[{"type":"date","value":"1974-12-25"},{"type":"integer","value":2},{"type":"decimal","value":1.50},{"type":"string","value":"a\"b"},{"type":"Quantity","value":{"value":4,"unit":"mg"}},{"type":"date","value":"1974-12-26"}]"#
        );
    }
}
