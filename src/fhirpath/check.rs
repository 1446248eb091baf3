//! Strict-mode checks at compile time: with the type of the context known, follow the
//! possible FHIR types through the expression and report, as semantic errors, what cannot
//! mean anything in strict FHIRPath: element names a type does not define, choice elements
//! named with their type suffix (`valueQuantity`), a leading type name that is not the
//! context's type, order-dependent functions (`first()`, `skip()`, `[0]`, ...) applied to the
//! unordered results of `children()` and `descendants()`, and `iif` criteria that are not
//! Boolean.
//!
//! The analysis is deliberately partial: where a type cannot be known statically (after
//! `resolve()`, `repeat()`, a `Resource`-typed element, ...) it gives up on that branch
//! rather than guess, so it never rejects an expression the evaluator could run correctly.

use super::ast::BinaryOp;
use super::compile::{Const, Extra, Func, Node, NodeKind, Var};
use super::error::Error;
use super::value::SystemType;
use crate::model::schema::TypeInfo;

/// What is statically known about a node's result.
#[derive(Debug, Clone)]
struct Shape {
    ty: Ty,
    /// The order of the items is undefined (results of `children()`, `descendants()`).
    unordered: bool,
}

#[derive(Debug, Clone)]
enum Ty {
    /// Anything.
    Any,
    /// One of these FHIR types.
    Fhir(Vec<&'static TypeInfo>),
    /// A System value.
    System(SystemType),
}

impl Shape {
    fn any() -> Self {
        Shape {
            ty: Ty::Any,
            unordered: false,
        }
    }

    fn system(t: SystemType) -> Self {
        Shape {
            ty: Ty::System(t),
            unordered: false,
        }
    }
}

/// Checks a compiled expression in strict mode against the context type (when known).
pub(crate) fn check(
    src: &str,
    root: &Node,
    context: Option<&'static TypeInfo>,
) -> Result<(), Error> {
    let this = Shape {
        ty: context.map_or(Ty::Any, |t| Ty::Fhir(vec![t])),
        unordered: false,
    };
    Checker { src, context }.node(root, &this).map(|_| ())
}

struct Checker<'s> {
    src: &'s str,
    context: Option<&'static TypeInfo>,
}

impl Checker<'_> {
    fn error(&self, pos: u32, message: impl Into<String>) -> Error {
        Error::semantic(self.src, pos, message)
    }

    fn node(&self, node: &Node, this: &Shape) -> Result<Shape, Error> {
        let pos = node.pos;
        Ok(match &node.kind {
            NodeKind::Empty => Shape::any(),
            NodeKind::Const(c) => Shape::system(const_type(c)),
            NodeKind::This => this.clone(),
            NodeKind::Index => Shape::system(SystemType::Integer),
            NodeKind::Total => Shape::any(),
            NodeKind::Var(v) => match v {
                Var::Resource | Var::RootResource | Var::Context => Shape {
                    ty: self.context.map_or(Ty::Any, |t| Ty::Fhir(vec![t])),
                    unordered: false,
                },
                Var::Text(_) => Shape::system(SystemType::String),
                Var::User(_) => Shape::any(),
            },
            NodeKind::Member {
                base,
                name,
                type_filter,
            } => {
                let input = match base {
                    Some(b) => self.node(b, this)?,
                    None => this.clone(),
                };
                match (base, type_filter) {
                    (None, Some(t)) => {
                        if let Ty::Fhir(types) = &input.ty {
                            if !types.iter().any(|c| c.is_a(&t.name) || t.is_a(&c.name)) {
                                let names: Vec<&str> =
                                    types.iter().map(|c| c.fhir_type_name()).collect();
                                return Err(self.error(
                                    pos,
                                    format!(
                                        "'{name}' does not match the type of the context ({})",
                                        names.join(" | ")
                                    ),
                                ));
                            }
                        }
                        Shape {
                            ty: Ty::Fhir(vec![t]),
                            unordered: false,
                        }
                    }
                    _ => self.member(&input, name, pos)?,
                }
            }
            NodeKind::Call {
                base,
                func,
                args,
                extra,
            } => {
                let input = match base {
                    Some(b) => self.node(b, this)?,
                    None => this.clone(),
                };
                self.call(*func, &input, args, extra, this, pos)?
            }
            NodeKind::Indexer { base, index } => {
                let input = self.node(base, this)?;
                self.node(index, this)?;
                if input.unordered {
                    return Err(self.error(
                        pos,
                        "indexing an unordered collection (children() or descendants())",
                    ));
                }
                input
            }
            NodeKind::Unary { operand, .. } => self.node(operand, this)?,
            NodeKind::Binary { op, lhs, rhs } => {
                let l = self.node(lhs, this)?;
                let r = self.node(rhs, this)?;
                match op {
                    BinaryOp::Union => Shape {
                        ty: union(l.ty, r.ty),
                        unordered: l.unordered || r.unordered,
                    },
                    BinaryOp::Eq
                    | BinaryOp::Ne
                    | BinaryOp::Equiv
                    | BinaryOp::NotEquiv
                    | BinaryOp::Lt
                    | BinaryOp::Gt
                    | BinaryOp::Le
                    | BinaryOp::Ge
                    | BinaryOp::In
                    | BinaryOp::Contains
                    | BinaryOp::And
                    | BinaryOp::Or
                    | BinaryOp::Xor
                    | BinaryOp::Implies => Shape::system(SystemType::Boolean),
                    BinaryOp::Concat => Shape::system(SystemType::String),
                    _ => Shape::any(),
                }
            }
            NodeKind::Is { operand, .. } => {
                self.node(operand, this)?;
                Shape::system(SystemType::Boolean)
            }
            NodeKind::As { operand, test } => {
                self.node(operand, this)?;
                type_shape(test.fhir, test.system)
            }
        })
    }

    /// The element `name` of the input's types.
    fn member(&self, input: &Shape, name: &str, pos: u32) -> Result<Shape, Error> {
        let Ty::Fhir(types) = &input.ty else {
            return Ok(Shape {
                ty: Ty::Any,
                unordered: input.unordered,
            });
        };
        let mut result = Vec::new();
        let mut unknown = false;
        let mut found = false;
        for t in types {
            if let Some(c) = t.child(name) {
                if t.elements
                    .get(usize::from(c.element))
                    .is_some_and(|e| e.choice)
                {
                    return Err(self.error(
                        pos,
                        format!(
                            "'{name}' is not an element of {}: a choice element is named without its type suffix",
                            t.fhir_type_name()
                        ),
                    ));
                }
            }
            let Some((_, element)) = t.element(name) else {
                continue;
            };
            found = true;
            for et in &element.types {
                match et.info() {
                    Some(info) => result.push(info),
                    None => unknown = true,
                }
            }
        }
        if !found {
            let names: Vec<&str> = types.iter().map(|t| t.fhir_type_name()).collect();
            return Err(self.error(
                pos,
                format!("'{name}' is not an element of {}", names.join(" | ")),
            ));
        }
        Ok(Shape {
            ty: if unknown || result.is_empty() {
                Ty::Any
            } else {
                Ty::Fhir(result)
            },
            unordered: input.unordered,
        })
    }

    fn call(
        &self,
        func: Func,
        input: &Shape,
        args: &[Node],
        extra: &Extra,
        this: &Shape,
        pos: u32,
    ) -> Result<Shape, Error> {
        if input.unordered && func.needs_order() {
            return Err(self.error(
                pos,
                format!(
                    "{}() depends on order, but its input (children() or descendants()) has none",
                    func.name()
                ),
            ));
        }
        // Arguments see each input item (iterating functions, iif) or the caller's `$this`.
        let item = Shape {
            ty: input.ty.clone(),
            unordered: false,
        };
        let arg_this = if func.iterates() || func == Func::Iif {
            &item
        } else {
            this
        };
        let mut arg_shapes = Vec::with_capacity(args.len());
        for arg in args {
            arg_shapes.push(self.node(arg, arg_this)?);
        }
        if func == Func::Iif {
            if let Some(Shape {
                ty: Ty::System(t), ..
            }) = arg_shapes.first()
            {
                if *t != SystemType::Boolean {
                    return Err(self.error(args[0].pos, "the criterion of iif() must be a Boolean"));
                }
            }
        }
        let same = || input.clone();
        Ok(match func {
            Func::Where
            | Func::Distinct
            | Func::Trace
            | Func::Intersect
            | Func::Exclude
            | Func::Single
            | Func::Sort => same(),
            Func::First | Func::Last | Func::Tail | Func::Skip | Func::Take => same(),
            Func::OfType | Func::As => match extra {
                Extra::Type(test) => Shape {
                    unordered: input.unordered,
                    ..type_shape(test.fhir, test.system)
                },
                _ => Shape::any(),
            },
            Func::Select => Shape {
                ty: arg_shapes.first().map_or(Ty::Any, |s| s.ty.clone()),
                unordered: input.unordered || arg_shapes.first().is_some_and(|s| s.unordered),
            },
            Func::Children | Func::Descendants => Shape {
                ty: Ty::Any,
                unordered: true,
            },
            Func::Extension => type_shape(crate::model::schema::type_info("Extension"), None),
            Func::Empty
            | Func::Exists
            | Func::All
            | Func::AllTrue
            | Func::AnyTrue
            | Func::AllFalse
            | Func::AnyFalse
            | Func::SubsetOf
            | Func::SupersetOf
            | Func::IsDistinct
            | Func::Is
            | Func::Not
            | Func::HasValue
            | Func::StartsWith
            | Func::EndsWith
            | Func::Contains
            | Func::Matches
            | Func::MatchesFull
            | Func::ConvertsToBoolean
            | Func::ConvertsToInteger
            | Func::ConvertsToDecimal
            | Func::ConvertsToString
            | Func::ConvertsToDate
            | Func::ConvertsToDateTime
            | Func::ConvertsToTime
            | Func::ConvertsToQuantity
            | Func::HtmlChecks
            | Func::ConformsTo => Shape::system(SystemType::Boolean),
            Func::Count | Func::Length | Func::IndexOf => Shape::system(SystemType::Integer),
            Func::ToString
            | Func::Upper
            | Func::Lower
            | Func::Substring
            | Func::Replace
            | Func::ReplaceMatches => Shape::system(SystemType::String),
            _ => Shape::any(),
        })
    }
}

fn const_type(c: &Const) -> SystemType {
    match c {
        Const::Boolean(_) => SystemType::Boolean,
        Const::Integer(_) => SystemType::Integer,
        Const::Decimal(_) => SystemType::Decimal,
        Const::String(_) => SystemType::String,
        Const::Date(_) => SystemType::Date,
        Const::DateTime(_) => SystemType::DateTime,
        Const::Time(_) => SystemType::Time,
        Const::Quantity(_) => SystemType::Quantity,
    }
}

fn type_shape(fhir: Option<&'static TypeInfo>, system: Option<SystemType>) -> Shape {
    let ty = match (fhir, system) {
        (Some(t), None) => Ty::Fhir(vec![t]),
        (None, Some(s)) => Ty::System(s),
        _ => Ty::Any,
    };
    Shape {
        ty,
        unordered: false,
    }
}

fn union(a: Ty, b: Ty) -> Ty {
    match (a, b) {
        (Ty::Fhir(mut x), Ty::Fhir(y)) => {
            for t in y {
                if !x.iter().any(|s| std::ptr::eq(*s, t)) {
                    x.push(t);
                }
            }
            Ty::Fhir(x)
        }
        _ => Ty::Any,
    }
}

#[cfg(test)]
mod tests {
    use crate::fhirpath::eval::{Expression, Options};
    use crate::fhirpath::Error;
    use crate::model::schema::type_info;

    fn strict(src: &str, context: &str) -> Result<Expression, Error> {
        Expression::compile_with(
            src,
            &Options {
                strict: true,
                context_type: type_info(context),
            },
        )
    }

    #[test]
    fn strict_mode_rejects_what_cannot_mean_anything() {
        assert!(strict("name.given1", "Patient").is_err());
        assert!(strict("Encounter.name.given", "Patient").is_err());
        assert!(strict("Observation.valueQuantity.unit", "Observation").is_err());
        assert!(strict("(Observation.value as Period).unit", "Observation").is_err());
        assert!(strict("Patient.children().skip(1)", "Patient").is_err());
        assert!(strict("iif('x', 1, 2)", "Patient").is_err());
    }

    #[test]
    fn strict_mode_accepts_valid_paths() {
        for src in [
            "Patient.name.given",
            "name.where(use = 'official').family",
            "Observation.value.as(Quantity).unit",
            "Observation.value.ofType(Quantity).value > 5",
            "contained.id",
            "Patient.birthDate.extension('x').value",
            "Patient.children().count()",
            "Resource.id",
            "Patient.contact.name.given.first()",
        ] {
            let context = if src.starts_with("Observation") {
                "Observation"
            } else {
                "Patient"
            };
            assert!(
                strict(src, context).is_ok(),
                "{src}: {:?}",
                strict(src, context).err()
            );
        }
    }
}
