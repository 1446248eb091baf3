//! The FHIRPath functions (N1 §5, the FHIR additions of R4 §2.1.9, and the FHIRPath 2.1
//! functions the HL7 R4 suite exercises: `sort`, `lowBoundary`, `highBoundary`, `precision`,
//! `comparable`, `matchesFull`, `trim`, `split`, `join`, `encode`, `decode`, `escape`,
//! `unescape`).
//!
//! [`call`] receives the input collection and the unevaluated arguments: functions whose
//! arguments are expressions over each item (`where`, `select`, `all`, ...) evaluate them once
//! per item with that item as `$this`; the others evaluate them once, in the caller's scope.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::rc::Rc;

use regex::Regex;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::{Decimal, RoundingStrategy};

use super::compile::{build_regex, Extra, Func, Node};
use super::error::{fail, Res};
use super::eval::{
    cast, contains_item, eval, eval_into, is_of_type, navigate, single_integer, singleton, truth,
    union, Run, Scope,
};
use super::ops;
use super::quantity::Quantity;
use super::temporal::{Date, DateTime, Precision, Time};
use super::value::{Collection, Item, Shared, SystemValue, Text};
use crate::definitions::{self, Kind};
use crate::model::{Element, Value};

/// Most items `repeat()` and `descendants()` may produce before giving up (a projection
/// that keeps making new values would otherwise never end).
const MAX_ITEMS: usize = 1_000_000;

/// Calls a function on its input, appending the result to `out`.
///
/// The functions met on every path (`where`, `exists`, `ofType`, `empty`, `count`, `first`)
/// write straight into `out`; the others build their result and hand it over.
#[allow(clippy::too_many_arguments)]
pub(crate) fn call<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    extra: &'a Extra,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
    out: &mut Collection<'a>,
) -> Res<()> {
    match (func, extra) {
        (Func::Where, _) => {
            for (i, item) in input.into_iter().enumerate() {
                if matches_criteria(&args[0], &item, i, scope, run)? {
                    out.push(item);
                }
            }
        }
        (Func::Exists, _) => match args.first() {
            None => out.push(Item::Boolean(!input.is_empty())),
            Some(criteria) => {
                let mut any = false;
                for (i, item) in input.iter().enumerate() {
                    if matches_criteria(criteria, item, i, scope, run)? {
                        any = true;
                        break;
                    }
                }
                out.push(Item::Boolean(any));
            }
        },
        (Func::Empty, _) => out.push(Item::Boolean(input.is_empty())),
        (Func::Count, _) => out.push(Item::Integer(
            i64::try_from(input.len()).unwrap_or(i64::MAX),
        )),
        (Func::OfType, Extra::Type(test)) => {
            for item in input {
                if is_of_type(&item, test, true) {
                    out.push(item);
                }
            }
        }
        (Func::First, _) => out.extend(input.into_iter().next()),
        _ => {
            let result = call_general(func, input, args, extra, scope, run, pos)?;
            if out.is_empty() {
                *out = result;
            } else {
                out.extend(result);
            }
        }
    }
    Ok(())
}

/// Every function, by family ([`call`] short-cuts the hottest ones before coming here).
/// Each family is its own function so that no single stack frame holds the locals of all of
/// them: nested expressions recurse through here, and unoptimised builds keep every local of
/// a function in its frame.
fn call_general<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    extra: &'a Extra,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    match func {
        Func::Empty
        | Func::Exists
        | Func::All
        | Func::AllTrue
        | Func::AnyTrue
        | Func::AllFalse
        | Func::AnyFalse
        | Func::SubsetOf
        | Func::SupersetOf
        | Func::Count
        | Func::Distinct
        | Func::IsDistinct => existence(func, input, args, scope, run, pos),
        Func::Where | Func::Select | Func::Repeat | Func::OfType => {
            filtering(func, input, args, extra, scope, run, pos)
        }
        Func::Single
        | Func::First
        | Func::Last
        | Func::Tail
        | Func::Skip
        | Func::Take
        | Func::Intersect
        | Func::Exclude
        | Func::Union
        | Func::Combine => subsetting(func, input, args, scope, run, pos),
        Func::Iif
        | Func::ToBoolean
        | Func::ConvertsToBoolean
        | Func::ToInteger
        | Func::ConvertsToInteger
        | Func::ToDecimal
        | Func::ConvertsToDecimal
        | Func::ToString
        | Func::ConvertsToString
        | Func::ToDate
        | Func::ConvertsToDate
        | Func::ToDateTime
        | Func::ConvertsToDateTime
        | Func::ToTime
        | Func::ConvertsToTime
        | Func::ToQuantity
        | Func::ConvertsToQuantity => conversion(func, input, args, scope, run, pos),
        Func::IndexOf
        | Func::Substring
        | Func::StartsWith
        | Func::EndsWith
        | Func::Contains
        | Func::Upper
        | Func::Lower
        | Func::Replace
        | Func::Matches
        | Func::MatchesFull
        | Func::ReplaceMatches
        | Func::Length
        | Func::ToChars
        | Func::Trim
        | Func::Split
        | Func::Encode
        | Func::Decode
        | Func::Escape
        | Func::Unescape
        | Func::Join => strings(func, input, args, extra, scope, run, pos),
        Func::Abs
        | Func::Ceiling
        | Func::Exp
        | Func::Floor
        | Func::Ln
        | Func::Log
        | Func::Power
        | Func::Round
        | Func::Sqrt
        | Func::Truncate => math_functions(func, input, args, scope, run, pos),
        Func::Children | Func::Descendants => tree(func, input, run, pos),
        Func::Trace | Func::Now | Func::Today | Func::TimeOfDay => {
            utility(func, input, args, scope, run, pos)
        }
        Func::Is | Func::As | Func::Type | Func::Not | Func::Aggregate | Func::Sort => {
            types(func, input, args, extra, scope, run, pos)
        }
        Func::Extension
        | Func::HasValue
        | Func::GetValue
        | Func::Resolve
        | Func::ConformsTo
        | Func::MemberOf
        | Func::Subsumes
        | Func::SubsumedBy
        | Func::HtmlChecks
        | Func::LowBoundary
        | Func::HighBoundary
        | Func::Precision
        | Func::Comparable => fhir(func, input, args, scope, run, pos),
        Func::GetResourceKey | Func::GetReferenceKey => Ok(keys(func, &input, extra)),
    }
}

/// Existence functions.
fn existence<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    let arg = |i: usize| -> Res<Collection<'a>> {
        match args.get(i) {
            Some(node) => eval(node, scope, run),
            None => Ok(Collection::new()),
        }
    };
    let name = func.name();
    Ok(match func {
        Func::Empty => Collection::boolean(input.is_empty()),
        Func::Exists => match args.first() {
            None => Collection::boolean(!input.is_empty()),
            Some(criteria) => {
                let mut any = false;
                for (i, item) in input.iter().enumerate() {
                    if matches_criteria(criteria, item, i, scope, run)? {
                        any = true;
                        break;
                    }
                }
                Collection::boolean(any)
            }
        },
        Func::All => {
            let mut all = true;
            for (i, item) in input.iter().enumerate() {
                if !matches_criteria(&args[0], item, i, scope, run)? {
                    all = false;
                    break;
                }
            }
            Collection::boolean(all)
        }
        Func::AllTrue | Func::AnyTrue | Func::AllFalse | Func::AnyFalse => {
            let mut bools = Vec::with_capacity(input.len());
            for item in &input {
                match item.as_bool() {
                    Some(b) => bools.push(b),
                    None => {
                        return fail(
                            pos,
                            format!("{name}() expects Booleans, found {}", item.output_type()),
                        )
                    }
                }
            }
            Collection::boolean(match func {
                Func::AllTrue => bools.iter().all(|b| *b),
                Func::AnyTrue => bools.iter().any(|b| *b),
                Func::AllFalse => bools.iter().all(|b| !*b),
                _ => bools.iter().any(|b| !*b),
            })
        }
        Func::SubsetOf => {
            let other = arg(0)?;
            Collection::boolean(input.iter().all(|x| contains_item(&other, x)))
        }
        Func::SupersetOf => {
            let other = arg(0)?;
            Collection::boolean(other.iter().all(|x| contains_item(&input, x)))
        }
        Func::Count => Collection::one(Item::Integer(
            i64::try_from(input.len()).unwrap_or(i64::MAX),
        )),
        Func::Distinct => union(input, &[]),
        Func::IsDistinct => {
            let n = input.len();
            Collection::boolean(union(input, &[]).len() == n)
        }
        _ => Collection::new(),
    })
}

/// Filtering and projection functions.
fn filtering<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    extra: &'a Extra,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    Ok(match func {
        Func::Where => {
            let mut out = Collection::new();
            for (i, item) in input.iter().enumerate() {
                if matches_criteria(&args[0], item, i, scope, run)? {
                    out.push(item.clone());
                }
            }
            out
        }
        Func::Select => {
            let mut out = Collection::new();
            for (i, item) in input.iter().enumerate() {
                eval_into(&args[0], item_scope(item, i, scope), run, &mut out)?;
            }
            out
        }
        Func::Repeat => repeat(&args[0], input, scope, run, pos)?,
        Func::OfType => match extra {
            Extra::Type(test) => {
                let mut out = input;
                out.retain(|i| is_of_type(i, test, true));
                out
            }
            _ => Collection::new(),
        },
        _ => Collection::new(),
    })
}

/// Subsetting functions.
fn subsetting<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    let arg = |i: usize| -> Res<Collection<'a>> {
        match args.get(i) {
            Some(node) => eval(node, scope, run),
            None => Ok(Collection::new()),
        }
    };
    let name = func.name();
    Ok(match func {
        Func::Single => {
            if input.len() > 1 {
                return fail(pos, format!("single() found {} items", input.len()));
            }
            input
        }
        Func::First => input
            .first()
            .cloned()
            .map_or_else(Collection::new, Collection::one),
        Func::Last => input
            .last()
            .cloned()
            .map_or_else(Collection::new, Collection::one),
        Func::Tail => input.into_iter().skip(1).collect(),
        Func::Skip | Func::Take => {
            let Some(n) = single_integer(&arg(0)?, pos, name)? else {
                return Ok(Collection::new());
            };
            let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
            if func == Func::Skip {
                input.into_iter().skip(n).collect()
            } else {
                input.into_iter().take(n).collect()
            }
        }
        Func::Intersect => {
            let other = arg(0)?;
            let mut out = Collection::new();
            for item in input {
                if contains_item(&other, &item) && !contains_item(&out, &item) {
                    out.push(item);
                }
            }
            out
        }
        Func::Exclude => {
            let other = arg(0)?;
            input
                .into_iter()
                .filter(|i| !contains_item(&other, i))
                .collect()
        }
        Func::Union => union(input, &arg(0)?),
        Func::Combine => {
            let mut out = input;
            out.extend(arg(0)?);
            out
        }
        _ => Collection::new(),
    })
}

/// Conditional and conversion functions.
fn conversion<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    let arg = |i: usize| -> Res<Collection<'a>> {
        match args.get(i) {
            Some(node) => eval(node, scope, run),
            None => Ok(Collection::new()),
        }
    };
    let name = func.name();
    Ok(match func {
        Func::Iif => iif(input, args, scope, run, pos)?,
        Func::ToBoolean
        | Func::ConvertsToBoolean
        | Func::ToInteger
        | Func::ConvertsToInteger
        | Func::ToDecimal
        | Func::ConvertsToDecimal
        | Func::ToString
        | Func::ConvertsToString
        | Func::ToDate
        | Func::ConvertsToDate
        | Func::ToDateTime
        | Func::ConvertsToDateTime
        | Func::ToTime
        | Func::ConvertsToTime
        | Func::ToQuantity
        | Func::ConvertsToQuantity => {
            let Some(item) = singleton(&input, pos, name)? else {
                return Ok(Collection::new());
            };
            let unit = arg(0)?;
            let unit = match singleton(&unit, pos, name)? {
                Some(u) => Some(
                    u.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| unit_error(pos))?,
                ),
                None => None,
            };
            convert(func, item, unit.as_deref())
        }
        _ => Collection::new(),
    })
}

/// Strings functions.
fn strings<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    extra: &'a Extra,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    let arg = |i: usize| -> Res<Collection<'a>> {
        match args.get(i) {
            Some(node) => eval(node, scope, run),
            None => Ok(Collection::new()),
        }
    };
    let name = func.name();
    Ok(match func {
        Func::IndexOf
        | Func::Substring
        | Func::StartsWith
        | Func::EndsWith
        | Func::Contains
        | Func::Upper
        | Func::Lower
        | Func::Replace
        | Func::Matches
        | Func::MatchesFull
        | Func::ReplaceMatches
        | Func::Length
        | Func::ToChars
        | Func::Trim
        | Func::Split
        | Func::Encode
        | Func::Decode
        | Func::Escape
        | Func::Unescape => {
            let Some(s) = string_input(&input, pos, name)? else {
                return Ok(Collection::new());
            };
            let mut strings = Vec::with_capacity(args.len());
            let mut collections = Vec::with_capacity(args.len());
            for i in 0..args.len() {
                collections.push(arg(i)?);
            }
            for (i, c) in collections.iter().enumerate() {
                if func == Func::Substring {
                    break;
                }
                match string_input(c, args[i].pos, name)? {
                    Some(text) => strings.push(text),
                    None => return Ok(Collection::new()),
                }
            }
            string_function(func, s, &strings, &collections, extra, pos)?
        }
        Func::Join => {
            let sep = arg(0)?;
            let sep = string_input(&sep, pos, name)?.unwrap_or("");
            let mut parts = Vec::with_capacity(input.len());
            for item in &input {
                match item.as_str() {
                    Some(s) => parts.push(s),
                    None => {
                        return fail(
                            pos,
                            format!("join() expects strings, found {}", item.output_type()),
                        )
                    }
                }
            }
            Collection::one(Item::String(Text::owned(parts.join(sep))))
        }
        _ => Collection::new(),
    })
}

/// Math functions.
fn math_functions<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    let arg = |i: usize| -> Res<Collection<'a>> {
        match args.get(i) {
            Some(node) => eval(node, scope, run),
            None => Ok(Collection::new()),
        }
    };
    let name = func.name();
    Ok(match func {
        Func::Abs
        | Func::Ceiling
        | Func::Exp
        | Func::Floor
        | Func::Ln
        | Func::Log
        | Func::Power
        | Func::Round
        | Func::Sqrt
        | Func::Truncate => {
            let Some(item) = singleton(&input, pos, name)? else {
                return Ok(Collection::new());
            };
            let operand = arg(0)?;
            let operand = match singleton(&operand, pos, name)? {
                None if !args.is_empty() => return Ok(Collection::new()),
                None => None,
                Some(o) => Some(number(o).ok_or_else(|| number_error(o, pos, name))?),
            };
            math(func, item, operand, pos)?
        }
        _ => Collection::new(),
    })
}

/// Tree navigation functions.
fn tree<'a>(func: Func, input: Collection<'a>, run: &Run<'a, '_>, pos: u32) -> Res<Collection<'a>> {
    Ok(match func {
        Func::Children => {
            let mut out = Collection::new();
            for item in &input {
                children(item, &mut out);
            }
            out
        }
        Func::Descendants => match &input[..] {
            // Of a single element: computed once per evaluation.
            [Item::Element(e)] => match run.known_descendants(e) {
                Some(known) => known,
                None => {
                    let found = descendants(&input, pos)?;
                    run.remember_descendants(e, &found);
                    found
                }
            },
            _ => descendants(&input, pos)?,
        },
        _ => Collection::new(),
    })
}

/// Utility functions.
fn utility<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    let arg = |i: usize| -> Res<Collection<'a>> {
        match args.get(i) {
            Some(node) => eval(node, scope, run),
            None => Ok(Collection::new()),
        }
    };
    let name = func.name();
    Ok(match func {
        Func::Trace => {
            let label = arg(0)?;
            let label = string_input(&label, pos, name)?.unwrap_or("");
            if let Some(f) = run.ctx.trace() {
                match args.get(1) {
                    Some(projection) => {
                        let mut projected = Collection::new();
                        for (i, item) in input.iter().enumerate() {
                            projected.extend(eval(projection, item_scope(item, i, scope), run)?);
                        }
                        f(label, &projected);
                    }
                    None => f(label, &input),
                }
            }
            input
        }
        Func::Now => run
            .now()
            .map_or_else(Collection::new, |n| Collection::one(Item::date_time(n))),
        Func::Today => run
            .now()
            .map_or_else(Collection::new, |n| Collection::one(Item::Date(n.date()))),
        Func::TimeOfDay => run
            .now()
            .and_then(|n| n.time())
            .map_or_else(Collection::new, |t| Collection::one(Item::Time(t))),
        _ => Collection::new(),
    })
}

/// Types functions.
fn types<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    extra: &'a Extra,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    let arg = |i: usize| -> Res<Collection<'a>> {
        match args.get(i) {
            Some(node) => eval(node, scope, run),
            None => Ok(Collection::new()),
        }
    };
    let name = func.name();
    Ok(match func {
        Func::Is => match (singleton(&input, pos, name)?, extra) {
            (Some(item), Extra::Type(test)) => Collection::boolean(is_of_type(item, test, false)),
            _ => Collection::new(),
        },
        Func::As => match extra {
            Extra::Type(test) if run.strict() => cast(input, test, pos)?,
            // Outside strict mode the function form filters, as FHIR R4 itself uses it: dom-3,
            // on every DomainResource, applies `as(canonical)` to `descendants()`.
            Extra::Type(test) => {
                let mut out = input;
                out.retain(|i| is_of_type(i, test, true));
                out
            }
            _ => Collection::new(),
        },
        Func::Type => input
            .iter()
            .map(|i| Item::Type(Rc::new(i.type_name())))
            .collect(),
        Func::Not => Collection::from_option(truth(&input, pos, run)?.map(|b| !b)),
        Func::Aggregate => {
            let mut total = arg(1)?;
            for (i, item) in input.iter().enumerate() {
                let inner = Scope {
                    this: std::slice::from_ref(item),
                    index: Some(i),
                    total: Some(&total),
                };
                total = eval(&args[0], inner, run)?;
            }
            total
        }
        Func::Sort => sort(input, args, extra, scope, run, pos)?,
        _ => Collection::new(),
    })
}

/// FHIR additions functions.
fn fhir<'a>(
    func: Func,
    input: Collection<'a>,
    args: &'a [Node],
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    let arg = |i: usize| -> Res<Collection<'a>> {
        match args.get(i) {
            Some(node) => eval(node, scope, run),
            None => Ok(Collection::new()),
        }
    };
    let name = func.name();
    Ok(match func {
        Func::Extension => {
            let url = arg(0)?;
            let Some(url) = string_input(&url, pos, name)? else {
                return Ok(Collection::new());
            };
            let mut out = Collection::new();
            for ext in navigate(&input, "extension", pos, run)? {
                if let Item::Element(e) = ext {
                    if e.str("url") == Some(url) {
                        out.push(ext);
                    }
                }
            }
            out
        }
        Func::HasValue => Collection::boolean(match &input[..] {
            [Item::Primitive(p)] => p.value.is_some(),
            [item] => item.system_type().is_some(),
            _ => false,
        }),
        Func::GetValue => match &input[..] {
            [item @ Item::Primitive(_)] => item
                .to_system()
                .map_or_else(Collection::new, |v| Collection::one(v.into_item())),
            _ => Collection::new(),
        },
        Func::Resolve => {
            let mut out = Collection::new();
            for item in &input {
                let reference = match item {
                    Item::Element(e) => e.str("reference"),
                    other => other.as_str(),
                };
                if let Some(found) = reference.and_then(|r| resolve(r, run)) {
                    out.push(Item::Element(found));
                }
            }
            out
        }
        Func::ConformsTo => {
            let url = arg(0)?;
            let (Some(item), Some(url)) = (
                singleton(&input, pos, name)?,
                string_input(&url, pos, name)?,
            ) else {
                return Ok(Collection::new());
            };
            match conforms_to(item, url) {
                Some(b) => Collection::boolean(b),
                None => return fail(pos, format!("unknown profile '{url}'")),
            }
        }
        // Terminology needs a terminology service, which this evaluator does not have.
        Func::MemberOf | Func::Subsumes | Func::SubsumedBy => Collection::new(),
        Func::HtmlChecks => Collection::boolean(true),
        Func::LowBoundary | Func::HighBoundary | Func::Precision => {
            let Some(item) = singleton(&input, pos, name)? else {
                return Ok(Collection::new());
            };
            let p = single_integer(&arg(0)?, pos, name)?;
            boundary(func, item, p)
        }
        Func::Comparable => {
            let other = arg(0)?;
            let (Some(a), Some(b)) = (singleton(&input, pos, name)?, singleton(&other, pos, name)?)
            else {
                return Ok(Collection::new());
            };
            match (a.to_system(), b.to_system()) {
                (Some(SystemValue::Quantity(x)), Some(SystemValue::Quantity(y))) => {
                    Collection::boolean(x.is_comparable(&y))
                }
                _ => return fail(pos, "comparable() expects two quantities"),
            }
        }
        _ => Collection::new(),
    })
}

/// The scope for evaluating an argument on one item of the input.
fn item_scope<'a, 's>(item: &'s Item<'a>, index: usize, outer: Scope<'a, 's>) -> Scope<'a, 's> {
    Scope {
        this: std::slice::from_ref(item),
        index: Some(index),
        total: outer.total,
    }
}

/// Whether a criteria expression is true for an item.
fn matches_criteria<'a>(
    criteria: &'a Node,
    item: &Item<'a>,
    index: usize,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
) -> Res<bool> {
    let mut result = Collection::new();
    eval_into(criteria, item_scope(item, index, scope), run, &mut result)?;
    Ok(truth(&result, criteria.pos, run)? == Some(true))
}

fn repeat<'a>(
    projection: &'a Node,
    input: Collection<'a>,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    let mut out = Collection::new();
    let mut current = input;
    while !current.is_empty() {
        let mut next = Collection::new();
        for (i, item) in current.iter().enumerate() {
            for new in eval(projection, item_scope(item, i, scope), run)? {
                if !contains_item(&out, &new) {
                    out.push(new.clone());
                    next.push(new);
                }
            }
            if out.len() > MAX_ITEMS {
                return fail(pos, "repeat() produced too many items");
            }
        }
        current = next;
    }
    Ok(out)
}

fn iif<'a>(
    input: Collection<'a>,
    args: &'a [Node],
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    if input.len() > 1 {
        return fail(
            pos,
            format!(
                "iif() expects at most one input item, found {}",
                input.len()
            ),
        );
    }
    // The branches see the input as `$this` (the caller's `$this` for a bare call).
    let inner = Scope {
        this: &input,
        index: scope.index,
        total: scope.total,
    };
    let criterion = eval(&args[0], inner, run)?;
    let branch = if truth(&criterion, args[0].pos, run)? == Some(true) {
        args.get(1)
    } else {
        args.get(2)
    };
    match branch {
        Some(node) => {
            let result = eval(node, inner, run)?;
            Ok(result.into_iter().collect())
        }
        None => Ok(Collection::new()),
    }
}

fn unit_error(pos: u32) -> Box<super::error::Fail> {
    Box::new(super::error::Fail {
        pos,
        message: "the unit must be a string".into(),
    })
}

/// The string of a singleton collection; `None` when empty.
fn string_input<'c>(c: &'c [Item<'_>], pos: u32, name: &str) -> Res<Option<&'c str>> {
    match singleton(c, pos, name)? {
        None => Ok(None),
        Some(item) => match item.as_str() {
            Some(s) => Ok(Some(s)),
            None if matches!(item, Item::Primitive(p) if p.value.is_none()) => Ok(None),
            None => fail(
                pos,
                format!("{name}() expects a string, found {}", item.output_type()),
            ),
        },
    }
}

fn string_result<'a>(s: impl Into<Rc<str>>) -> Collection<'a> {
    Collection::one(Item::String(Text::owned(s)))
}

fn integer_result<'a>(n: usize) -> Collection<'a> {
    Collection::one(Item::Integer(i64::try_from(n).unwrap_or(i64::MAX)))
}

/// The regular expression of `matches`, `matchesFull` or `replaceMatches`: compiled at
/// compile time for literals, here otherwise.
fn regex_for<'e>(extra: &'e Extra, pattern: &str, full: bool, pos: u32) -> Res<Cow<'e, Regex>> {
    match extra {
        Extra::Regex(re) => Ok(Cow::Borrowed(re)),
        _ => match build_regex(pattern, full) {
            Ok(re) => Ok(Cow::Owned(re)),
            Err(m) => fail(pos, m),
        },
    }
}

fn string_function<'a>(
    func: Func,
    s: &str,
    args: &[&str],
    raw: &[Collection<'_>],
    extra: &Extra,
    pos: u32,
) -> Res<Collection<'a>> {
    let a = |i: usize| args.get(i).copied().unwrap_or("");
    Ok(match func {
        Func::IndexOf => match s.find(a(0)) {
            Some(byte) => integer_result(s[..byte].chars().count()),
            None => Collection::one(Item::Integer(-1)),
        },
        Func::Substring => {
            let Some(start) = single_integer(&raw[0], pos, "substring start")? else {
                return Ok(Collection::new());
            };
            let length = match raw.get(1) {
                Some(l) => single_integer(l, pos, "substring length")?,
                None => None,
            };
            let count = s.chars().count();
            let Ok(start) = usize::try_from(start) else {
                return Ok(Collection::new());
            };
            if start >= count {
                return Ok(Collection::new());
            }
            let take = length.map_or(usize::MAX, |l| usize::try_from(l.max(0)).unwrap_or(0));
            string_result(s.chars().skip(start).take(take).collect::<String>())
        }
        Func::StartsWith => Collection::boolean(s.starts_with(a(0))),
        Func::EndsWith => Collection::boolean(s.ends_with(a(0))),
        Func::Contains => Collection::boolean(s.contains(a(0))),
        Func::Upper => string_result(s.to_uppercase()),
        Func::Lower => string_result(s.to_lowercase()),
        Func::Replace => string_result(s.replace(a(0), a(1))),
        Func::Matches | Func::MatchesFull => {
            let re = regex_for(extra, a(0), func == Func::MatchesFull, pos)?;
            Collection::boolean(re.is_match(s))
        }
        Func::ReplaceMatches => {
            if a(0).is_empty() {
                // An empty pattern matches nowhere in particular: the input is unchanged.
                string_result(s)
            } else {
                let re = regex_for(extra, a(0), false, pos)?;
                string_result(re.replace_all(s, a(1)).into_owned())
            }
        }
        Func::Length => integer_result(s.chars().count()),
        Func::ToChars => s
            .chars()
            .map(|c| Item::String(Text::owned(c.to_string())))
            .collect(),
        Func::Trim => string_result(s.trim()),
        Func::Split => s
            .split(a(0))
            .map(|p| Item::String(Text::owned(p)))
            .collect(),
        Func::Encode => match encode(s.as_bytes(), a(0)) {
            Some(e) => string_result(e),
            None => return fail(pos, format!("unknown encoding '{}'", a(0))),
        },
        Func::Decode => match decode(s, a(0)) {
            Some(bytes) => {
                String::from_utf8(bytes).map_or_else(|_| Collection::new(), string_result)
            }
            None => Collection::new(),
        },
        Func::Escape => match a(0) {
            "html" => string_result(escape_html(s)),
            "json" => string_result(escape_json(s)),
            other => return fail(pos, format!("unknown escape target '{other}'")),
        },
        Func::Unescape => match a(0) {
            "html" => string_result(unescape_html(s)),
            "json" => string_result(unescape_json(s)),
            other => return fail(pos, format!("unknown escape target '{other}'")),
        },
        _ => Collection::new(),
    })
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn encode(bytes: &[u8], format: &str) -> Option<String> {
    let alphabet = match format {
        "hex" => return Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        "base64" => BASE64,
        "urlbase64" => BASE64_URL,
        _ => return None,
    };
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(alphabet[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    Some(out)
}

fn decode(text: &str, format: &str) -> Option<Vec<u8>> {
    let alphabet = match format {
        "hex" => {
            if text.len() % 2 != 0 {
                return None;
            }
            return (0..text.len())
                .step_by(2)
                .map(|i| {
                    text.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect();
        }
        "base64" => BASE64,
        "urlbase64" => BASE64_URL,
        _ => return None,
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = alphabet.iter().position(|a| *a == c)?;
        acc = acc << 6 | u32::try_from(v).ok()?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from(acc >> bits & 0xff).ok()?);
        }
    }
    Some(out)
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn unescape_html(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn escape_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn unescape_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(ch);
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// A number for the math functions.
#[derive(Clone, Copy)]
enum Number {
    Integer(i64),
    Decimal(Decimal),
}

impl Number {
    fn decimal(self) -> Decimal {
        match self {
            Number::Integer(i) => Decimal::from(i),
            Number::Decimal(d) => d,
        }
    }
}

fn number(item: &Item<'_>) -> Option<Number> {
    match item.to_system()? {
        SystemValue::Integer(i) => Some(Number::Integer(i)),
        SystemValue::Decimal(d) => Some(Number::Decimal(d)),
        _ => None,
    }
}

fn number_error(item: &Item<'_>, pos: u32, name: &str) -> Box<super::error::Fail> {
    Box::new(super::error::Fail {
        pos,
        message: format!("{name}() expects a number, found {}", item.output_type()),
    })
}

fn decimal_result<'a>(d: Option<Decimal>) -> Collection<'a> {
    d.map_or_else(Collection::new, |d| Collection::one(Item::Decimal(d)))
}

/// A floating-point result back to a decimal; NaN and infinities are empty.
fn from_f64<'a>(x: f64) -> Collection<'a> {
    if !x.is_finite() {
        return Collection::new();
    }
    decimal_result(Decimal::from_f64(x).map(|d| d.normalize()))
}

fn math<'a>(func: Func, item: &Item<'_>, operand: Option<Number>, pos: u32) -> Res<Collection<'a>> {
    if func == Func::Abs {
        if let Some(SystemValue::Quantity(q)) = item.to_system() {
            let mut q = q.into_owned();
            q.value = q.value.abs();
            return Ok(Collection::one(Item::Quantity(Shared::Owned(Rc::new(q)))));
        }
    }
    let Some(n) = number(item) else {
        return fail(
            pos,
            format!(
                "{}() expects a number, found {}",
                func.name(),
                item.output_type()
            ),
        );
    };
    let d = n.decimal();
    let f = d.to_f64().unwrap_or(f64::NAN);
    Ok(match func {
        Func::Abs => match n {
            Number::Integer(i) => i
                .checked_abs()
                .map_or_else(Collection::new, |i| Collection::one(Item::Integer(i))),
            Number::Decimal(d) => Collection::one(Item::Decimal(d.abs())),
        },
        Func::Ceiling => integer_or_decimal(d.ceil()),
        Func::Floor => integer_or_decimal(d.floor()),
        Func::Truncate => integer_or_decimal(d.trunc()),
        Func::Exp => from_f64(f.exp()),
        Func::Ln => from_f64(f.ln()),
        Func::Sqrt => from_f64(f.sqrt()),
        Func::Log => {
            let base = operand.map_or(f64::NAN, |b| b.decimal().to_f64().unwrap_or(f64::NAN));
            from_f64(f.log(base))
        }
        Func::Power => match (n, operand) {
            (Number::Integer(b), Some(Number::Integer(e))) if e >= 0 => u32::try_from(e)
                .ok()
                .and_then(|e| b.checked_pow(e))
                .map_or_else(Collection::new, |r| Collection::one(Item::Integer(r))),
            (_, Some(e)) => {
                let e = e.decimal().to_f64().unwrap_or(f64::NAN);
                from_f64(f.powf(e))
            }
            (_, None) => Collection::new(),
        },
        Func::Round => {
            let places = match operand {
                None => 0,
                Some(Number::Integer(p)) if (0..=28).contains(&p) => u32::try_from(p).unwrap_or(0),
                Some(_) => return fail(pos, "round() precision must be an Integer from 0 to 28"),
            };
            decimal_result(Some(d.round_dp_with_strategy(
                places,
                RoundingStrategy::MidpointAwayFromZero,
            )))
        }
        _ => Collection::new(),
    })
}

fn integer_or_decimal<'a>(d: Decimal) -> Collection<'a> {
    Collection::one(d.to_i64().map_or(Item::Decimal(d), Item::Integer))
}

/// The child nodes of an item: every value of every property of an element; the extensions
/// of a primitive.
pub(crate) fn children<'a>(item: &Item<'a>, out: &mut Collection<'a>) {
    match item {
        Item::Element(e) => {
            for p in &e.props {
                out.extend(p.values.iter().map(Item::from_value));
            }
        }
        Item::Primitive(p) => out.extend(p.extensions().iter().map(Item::Element)),
        _ => {}
    }
}

/// The number of child nodes of an item ([`children`] without gathering them).
pub(crate) fn child_count(item: &Item<'_>) -> usize {
    match item {
        Item::Element(e) => e.props.iter().map(|p| p.values.len()).sum(),
        Item::Primitive(p) => p.extensions().len(),
        _ => 0,
    }
}

/// Pushes the [`children`] of an item onto a stack, last child first (so the first child
/// is popped first), without a collection in between.
fn push_children_reversed<'a>(item: &Item<'a>, stack: &mut Vec<Item<'a>>) {
    let start = stack.len();
    match item {
        Item::Element(e) => {
            for p in &e.props {
                stack.extend(p.values.iter().map(Item::from_value));
            }
        }
        Item::Primitive(p) => stack.extend(p.extensions().iter().map(Item::Element)),
        _ => {}
    }
    if let Some(pushed) = stack.get_mut(start..) {
        pushed.reverse();
    }
}

fn descendants<'a>(input: &[Item<'a>], pos: u32) -> Res<Collection<'a>> {
    // Depth first, in document order; the input items themselves are not descendants.
    let mut out = Collection::new();
    let mut stack: Vec<Item<'a>> = Vec::new();
    for item in input.iter().rev() {
        push_children_reversed(item, &mut stack);
    }
    while let Some(item) = stack.pop() {
        push_children_reversed(&item, &mut stack);
        out.push(item);
        if out.len() > MAX_ITEMS {
            return fail(pos, "descendants() produced too many items");
        }
    }
    Ok(out)
}

fn sort<'a>(
    input: Collection<'a>,
    args: &'a [Node],
    extra: &Extra,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Collection<'a>> {
    let descending: &[bool] = match extra {
        Extra::Sort(d) => d,
        _ => &[],
    };
    let mut keyed = Vec::with_capacity(input.len());
    for (i, item) in input.iter().enumerate() {
        let mut keys = Vec::with_capacity(args.len().max(1));
        if args.is_empty() {
            keys.push(Some(item.clone()));
        }
        for arg in args {
            let k = eval(arg, item_scope(item, i, scope), run)?;
            keys.push(singleton(&k, arg.pos, "a sort key")?.cloned());
        }
        keyed.push((keys, item.clone()));
    }
    let mut error = None;
    keyed.sort_by(|(a, _), (b, _)| {
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            // Empty keys come first, whatever the direction.
            let o = match (x, y) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (Some(x), Some(y)) => {
                    let o = match ops::compare(x, y) {
                        Ok(o) => o.unwrap_or(Ordering::Equal),
                        Err(m) => {
                            error.get_or_insert(m);
                            Ordering::Equal
                        }
                    };
                    if descending.get(k).copied().unwrap_or(false) {
                        o.reverse()
                    } else {
                        o
                    }
                }
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    if let Some(m) = error {
        return fail(pos, m);
    }
    Ok(keyed.into_iter().map(|(_, item)| item).collect())
}

/// The conversion functions on one item.
fn convert<'a>(func: Func, item: &Item<'a>, unit: Option<&str>) -> Collection<'a> {
    use SystemValue as V;
    let Some(value) = item.to_system() else {
        return match func {
            Func::ConvertsToBoolean
            | Func::ConvertsToInteger
            | Func::ConvertsToDecimal
            | Func::ConvertsToString
            | Func::ConvertsToDate
            | Func::ConvertsToDateTime
            | Func::ConvertsToTime
            | Func::ConvertsToQuantity => Collection::boolean(false),
            _ => Collection::new(),
        };
    };
    let converted: Option<Item<'a>> = match func {
        Func::ToBoolean | Func::ConvertsToBoolean => to_boolean(&value).map(Item::Boolean),
        Func::ToInteger | Func::ConvertsToInteger => match &value {
            V::Integer(i) => Some(Item::Integer(*i)),
            V::Boolean(b) => Some(Item::Integer(i64::from(*b))),
            V::String(s) if is_integer_text(s) => s.parse().ok().map(Item::Integer),
            _ => None,
        },
        Func::ToDecimal | Func::ConvertsToDecimal => match &value {
            V::Integer(i) => Some(Item::Decimal(Decimal::from(*i))),
            V::Decimal(d) => Some(Item::Decimal(*d)),
            V::Boolean(b) => Some(Item::Decimal(if *b {
                Decimal::new(10, 1)
            } else {
                Decimal::new(0, 1)
            })),
            V::String(s) if is_decimal_text(s) => {
                Decimal::from_str_exact(s.strip_prefix('+').unwrap_or(s))
                    .ok()
                    .map(Item::Decimal)
            }
            _ => None,
        },
        Func::ToString | Func::ConvertsToString => match item {
            Item::String(s) => Some(Item::String(s.clone())),
            _ => Some(Item::String(Text::owned(value.to_string()))),
        },
        Func::ToDate | Func::ConvertsToDate => match &value {
            V::Date(d) => Some(Item::Date(*d)),
            V::DateTime(d) => Some(Item::Date(d.date())),
            V::String(s) => Date::parse_literal(s).ok().map(Item::Date),
            _ => None,
        },
        Func::ToDateTime | Func::ConvertsToDateTime => match &value {
            V::DateTime(d) => Some(Item::date_time(*d)),
            V::Date(d) => Some(Item::date_time(DateTime::from(*d))),
            V::String(s) => DateTime::parse_literal(s).ok().map(Item::date_time),
            _ => None,
        },
        Func::ToTime | Func::ConvertsToTime => match &value {
            V::Time(t) => Some(Item::Time(*t)),
            V::String(s) => Time::parse_literal(s).ok().map(Item::Time),
            _ => None,
        },
        Func::ToQuantity | Func::ConvertsToQuantity => {
            let q = match &value {
                V::Integer(i) => Some(Quantity::new(Decimal::from(*i), "1")),
                V::Decimal(d) => Some(Quantity::new(*d, "1")),
                V::Boolean(b) => Some(Quantity::new(
                    if *b {
                        Decimal::new(10, 1)
                    } else {
                        Decimal::new(0, 1)
                    },
                    "1",
                )),
                V::Quantity(q) => Some(q.clone().into_owned()),
                V::String(s) => Quantity::parse(s).ok(),
                _ => None,
            };
            let q = match (q, unit) {
                (Some(q), Some(u)) => q.convert_to(u),
                (q, _) => q,
            };
            q.map(|q| Item::Quantity(Shared::Owned(Rc::new(q))))
        }
        _ => None,
    };
    let probe = matches!(
        func,
        Func::ConvertsToBoolean
            | Func::ConvertsToInteger
            | Func::ConvertsToDecimal
            | Func::ConvertsToString
            | Func::ConvertsToDate
            | Func::ConvertsToDateTime
            | Func::ConvertsToTime
            | Func::ConvertsToQuantity
    );
    if probe {
        Collection::boolean(converted.is_some())
    } else {
        converted.map_or_else(Collection::new, Collection::one)
    }
}

fn to_boolean(value: &SystemValue<'_>) -> Option<bool> {
    match value {
        SystemValue::Boolean(b) => Some(*b),
        SystemValue::Integer(1) => Some(true),
        SystemValue::Integer(0) => Some(false),
        SystemValue::Decimal(d) if *d == Decimal::ONE => Some(true),
        SystemValue::Decimal(d) if d.is_zero() => Some(false),
        SystemValue::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `(\+|-)?\d+`
fn is_integer_text(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `(\+|-)?\d+(\.\d+)?`
fn is_decimal_text(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    match body.split_once('.') {
        Some((int, frac)) => {
            is_integer_text(int)
                && !int.starts_with(['+', '-'])
                && is_integer_text(frac)
                && !frac.starts_with(['+', '-'])
        }
        None => is_integer_text(body) && !body.starts_with(['+', '-']),
    }
}

/// Resolves a reference within the resource (`#id` for contained resources) or within the
/// Bundle that holds it (by `fullUrl`, or by `Type/id`).
fn resolve<'a>(reference: &str, run: &Run<'a, '_>) -> Option<&'a Element> {
    let resources = [run.ctx.resource(), run.ctx.root_resource()];
    if let Some(id) = reference.strip_prefix('#') {
        for resource in resources.into_iter().flatten() {
            if id.is_empty() {
                return Some(resource);
            }
            let found = resource
                .values("contained")
                .iter()
                .filter_map(Value::as_element)
                .find(|c| c.id() == Some(id));
            if found.is_some() {
                return found;
            }
        }
        return None;
    }
    let path = reference.split("/_history/").next().unwrap_or(reference);
    let mut segments = path.rsplit('/');
    let (id, type_name) = (segments.next()?, segments.next());
    let matches = |r: &Element| r.id() == Some(id) && type_name == Some(r.type_name());
    for root in resources.into_iter().flatten() {
        if root.type_name() != "Bundle" {
            if matches(root) {
                return Some(root);
            }
            continue;
        }
        for entry in root.values("entry").iter().filter_map(Value::as_element) {
            let Some(resource) = entry.values("resource").first().and_then(Value::as_element)
            else {
                continue;
            };
            if entry.str("fullUrl") == Some(reference) || matches(resource) {
                return Some(resource);
            }
        }
    }
    None
}

/// Whether an item conforms to a profile, judged by the profile's type; `None` when the
/// profile is unknown.
fn conforms_to(item: &Item<'_>, url: &str) -> Option<bool> {
    let info = item.fhir_type()?;
    let type_name = match url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") {
        Some(name) if crate::model::schema::type_info(name).is_some() => name.to_string(),
        _ => {
            let sd = definitions::get(Kind::StructureDefinition, url)?;
            sd.get("type")?.as_str()?.to_string()
        }
    };
    Some(info.is_a(&type_name))
}

/// `lowBoundary`, `highBoundary` and `precision`.
fn boundary<'a>(func: Func, item: &Item<'_>, precision: Option<i64>) -> Collection<'a> {
    let Some(value) = item.to_system() else {
        return Collection::new();
    };
    if func == Func::Precision {
        let p = match &value {
            SystemValue::Decimal(d) => Some(d.scale()),
            SystemValue::Integer(_) => Some(0),
            SystemValue::Quantity(q) => Some(q.value.scale()),
            SystemValue::Date(d) => Some(date_digits(d.precision())),
            SystemValue::DateTime(d) => Some(date_digits(d.precision())),
            SystemValue::Time(t) => Some(time_digits(t.precision())),
            _ => None,
        };
        return p.map_or_else(Collection::new, |p| integer_result(p as usize));
    }
    let high = func == Func::HighBoundary;
    let result = match &value {
        SystemValue::Integer(_) | SystemValue::Decimal(_) => {
            let d = match value {
                SystemValue::Integer(i) => Decimal::from(i),
                SystemValue::Decimal(d) => d,
                _ => Decimal::ZERO,
            };
            decimal_boundary(d, precision.unwrap_or(8), high).map(Item::Decimal)
        }
        SystemValue::Quantity(q) => decimal_boundary(q.value, precision.unwrap_or(8), high)
            .map(|v| Item::Quantity(Shared::Owned(Rc::new(Quantity::new(v, q.unit.clone()))))),
        SystemValue::Date(d) => {
            date_boundary(&DateTime::from(*d), precision.unwrap_or(8), high, true)
        }
        SystemValue::DateTime(d) => date_boundary(d, precision.unwrap_or(17), high, false),
        SystemValue::Time(t) => time_boundary(t, precision.unwrap_or(9), high),
        _ => None,
    };
    result.map_or_else(Collection::new, Collection::one)
}

/// The boundary of the range a decimal stands for (`1.587` is any value from `1.5865` up to
/// `1.5875`), expressed with `precision` decimal places. For positive values the low
/// boundary is truncated and the high boundary rounded half away from zero; negative values
/// mirror the positive ones, as the HL7 reference implementation does.
fn decimal_boundary(d: Decimal, precision: i64, high: bool) -> Option<Decimal> {
    let precision = u32::try_from(precision).ok().filter(|p| *p <= 28)?;
    let negative = d.is_sign_negative();
    let abs = d.abs();
    let half = Decimal::new(5, abs.scale().checked_add(1)?);
    let upper = high != negative;
    let mut b = if upper {
        abs.checked_add(half)?
            .round_dp_with_strategy(precision, RoundingStrategy::MidpointAwayFromZero)
    } else {
        abs.checked_sub(half)?
            .round_dp_with_strategy(precision, RoundingStrategy::ToZero)
    };
    b.rescale(precision);
    if negative {
        b.set_sign_negative(true);
    }
    Some(b)
}

fn date_digits(p: Precision) -> u32 {
    match p {
        Precision::Year => 4,
        Precision::Month => 6,
        Precision::Day => 8,
        Precision::Hour => 10,
        Precision::Minute => 12,
        Precision::Second => 14,
        Precision::Millisecond => 17,
    }
}

fn time_digits(p: Precision) -> u32 {
    match p {
        Precision::Hour => 2,
        Precision::Minute => 4,
        Precision::Second => 6,
        _ => 9,
    }
}

/// The earliest or latest instant a partial date/time stands for, to `precision` digits
/// (4 year, 6 month, 8 day, 10 hour, 12 minute, 14 second, 17 millisecond). A missing offset
/// is the most extreme one (+14:00 for the low boundary, -12:00 for the high one).
fn date_boundary<'a>(
    d: &DateTime,
    precision: i64,
    high: bool,
    date_only: bool,
) -> Option<Item<'a>> {
    let date = d.date();
    let year = date.year();
    let month = date.month().unwrap_or(if high { 12 } else { 1 });
    let day = date
        .day()
        .unwrap_or(if high { days_in_month(year, month) } else { 1 });
    let time = d.time();
    let hour = time.map_or(if high { 23 } else { 0 }, |t| t.hour());
    let minute = time
        .and_then(|t| t.minute())
        .unwrap_or(if high { 59 } else { 0 });
    let second = time
        .and_then(|t| t.second())
        .unwrap_or(if high { 59 } else { 0 });
    let milli = time
        .and_then(|t| t.millisecond())
        .unwrap_or(if high { 999 } else { 0 });
    let offset = d
        .offset_minutes()
        .unwrap_or(if high { -12 * 60 } else { 14 * 60 });
    let mut text = match precision {
        4 => format!("{year:04}"),
        6 => format!("{year:04}-{month:02}"),
        8 => format!("{year:04}-{month:02}-{day:02}"),
        10 if !date_only => format!("{year:04}-{month:02}-{day:02}T{hour:02}"),
        12 if !date_only => format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}"),
        14 if !date_only => {
            format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}")
        }
        17 if !date_only => {
            format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}")
        }
        _ => return None,
    };
    if date_only {
        return Date::parse_literal(&text).ok().map(Item::Date);
    }
    if precision > 8 {
        let sign = if offset < 0 { '-' } else { '+' };
        let abs = offset.unsigned_abs();
        text.push_str(&format!("{sign}{:02}:{:02}", abs / 60, abs % 60));
    }
    DateTime::parse_literal(&text).ok().map(Item::date_time)
}

fn time_boundary<'a>(t: &Time, precision: i64, high: bool) -> Option<Item<'a>> {
    let hour = t.hour();
    let minute = t.minute().unwrap_or(if high { 59 } else { 0 });
    let second = t.second().unwrap_or(if high { 59 } else { 0 });
    let milli = t.millisecond().unwrap_or(if high { 999 } else { 0 });
    let text = match precision {
        2 => format!("{hour:02}"),
        4 => format!("{hour:02}:{minute:02}"),
        6 => format!("{hour:02}:{minute:02}:{second:02}"),
        9 => format!("{hour:02}:{minute:02}:{second:02}.{milli:03}"),
        _ => return None,
    };
    Time::parse_literal(&text).ok().map(Item::Time)
}

fn days_in_month(year: u16, month: u8) -> u8 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The current date and time from the system clock, in UTC, to the millisecond.
pub(crate) fn clock_now() -> Option<DateTime> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let secs = i64::try_from(since.as_secs()).ok()?;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let text = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
    DateTime::parse_literal(&text).ok()
}

/// Year, month and day of a count of days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// SQL on FHIR's `getResourceKey()` and `getReferenceKey([type])`: the key of a resource is
/// its `id`; the key of a reference is the `id` part of a relative or absolute literal
/// reference (`Patient/1`, `http://x/fhir/Patient/1/_history/2`), so the two join. With a
/// type, references to other types give nothing; contained (`#x`), identifier-only and
/// malformed references give nothing.
fn keys<'a>(func: Func, input: &Collection<'a>, extra: &Extra) -> Collection<'a> {
    let mut out = Collection::new();
    for item in input {
        let Item::Element(e) = item else { continue };
        if func == Func::GetResourceKey {
            if let Some(id) = e.id() {
                out.push(Item::String(Text::owned(id)));
            }
            continue;
        }
        let Some((ty, id)) = e.str("reference").and_then(reference_parts) else {
            continue;
        };
        if let Extra::Type(test) = extra {
            if test.fhir.is_none_or(|t| *t.name != *ty) {
                continue;
            }
        }
        out.push(Item::String(Text::owned(id)));
    }
    out
}

/// The type and id of a literal reference, dropping a `_history/N` suffix and any base URL.
fn reference_parts(reference: &str) -> Option<(&str, &str)> {
    let path = reference.split(['?', '#']).next()?;
    let mut segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() >= 4 && segs[segs.len() - 2] == "_history" {
        segs.truncate(segs.len() - 2);
    }
    let n = segs.len();
    if n < 2 {
        return None;
    }
    let (ty, id) = (segs[n - 2], segs[n - 1]);
    let type_like = ty.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphanumeric());
    (type_like && !id.is_empty()).then_some((ty, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_of_decimals() {
        let d = |s: &str| Decimal::from_str_exact(s).unwrap();
        let low = |s: &str, p| decimal_boundary(d(s), p, false).map(|x| x.to_string());
        let high = |s: &str, p| decimal_boundary(d(s), p, true).map(|x| x.to_string());
        assert_eq!(low("1.587", 8).as_deref(), Some("1.58650000"));
        assert_eq!(low("1.587", 2).as_deref(), Some("1.58"));
        assert_eq!(low("-1.587", 2).as_deref(), Some("-1.59"));
        assert_eq!(low("120", 2).as_deref(), Some("119.50"));
        assert_eq!(high("1.587", 2).as_deref(), Some("1.59"));
        assert_eq!(high("-1.587", 6).as_deref(), Some("-1.586500"));
        assert_eq!(high("1", 0).as_deref(), Some("2"));
        assert_eq!(low("1.587", -1), None);
        assert_eq!(low("1.587", 32), None);
    }

    #[test]
    fn base64_round_trip() {
        assert_eq!(encode(b"test", "base64").as_deref(), Some("dGVzdA=="));
        assert_eq!(
            encode(b"subjects?_d", "urlbase64").as_deref(),
            Some("c3ViamVjdHM_X2Q=")
        );
        assert_eq!(decode("dGVzdA==", "base64").as_deref(), Some(&b"test"[..]));
        assert_eq!(encode(b"test", "hex").as_deref(), Some("74657374"));
        assert_eq!(decode("74657374", "hex").as_deref(), Some(&b"test"[..]));
    }

    #[test]
    fn clock_reads_a_plausible_date() {
        assert!(clock_now().is_some_and(|n| n.date().year() >= 2024));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn number_texts() {
        assert!(is_integer_text("-12") && !is_integer_text("1.0") && !is_integer_text("+"));
        assert!(is_decimal_text("1.0") && is_decimal_text("-3") && !is_decimal_text("1.a"));
    }
}
