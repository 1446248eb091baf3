//! The FHIRPath evaluator: [`Expression`] (compiled once, evaluated many times) and the
//! [`Context`] it is evaluated in.
//!
//! Evaluation walks the compiled tree. Each node takes the current scope (`$this`, `$index`,
//! `$total`) and returns a [`Collection`]; items reference the element tree and the
//! expression, so a path step copies no data. Operators apply the collection rules of the
//! specification here (empty in, empty out; singleton operands; three-valued logic) and
//! delegate the per-item work to the `ops` module; functions live in `functions`.

use std::cell::{OnceCell, RefCell};
use std::cmp::Ordering;

use super::ast::BinaryOp;
use super::check;
use super::compile::{self, Const, Func, Node, NodeKind, TypeTest, Var};
use super::error::{fail, Error, Res};
use super::functions;
use super::ops;
use super::parser;
use super::temporal::DateTime;
use super::value::{Collection, Item, Shared};
use crate::model::schema::TypeInfo;
use crate::model::Element;

/// Options for [`Expression::compile_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Strict mode: choice elements only by their base name (`value`, not `valueQuantity`),
    /// element names checked against the type definitions, `children()` and
    /// `descendants()` results not subject to order-dependent functions, and criteria that
    /// are not Boolean rejected.
    pub strict: bool,
    /// The type of the context the expression is evaluated on (`Patient`), which makes the
    /// strict checks possible at compile time.
    pub context_type: Option<&'static TypeInfo>,
}

/// A compiled FHIRPath expression.
///
/// ```
/// use imagio_gateway::fhirpath::{Context, Expression};
/// let patient = imagio_gateway::model::parse(
///     r#"{"resourceType":"Patient","birthDate":"1974-12-25"}"#).unwrap();
/// let expr = Expression::compile("Patient.birthDate < @2000-01-01").unwrap();
/// let result = expr.evaluate(&Context::new(&patient)).unwrap();
/// assert_eq!(result[0].as_bool(), Some(true));
/// ```
#[derive(Debug)]
pub struct Expression {
    source: Box<str>,
    root: Node,
}

impl Expression {
    /// Parses and compiles an expression.
    ///
    /// # Errors
    ///
    /// [`Error::Syntax`] when it does not parse; [`Error::Semantic`] for unknown functions,
    /// wrong argument counts, unknown type names, invalid literals and regular expressions.
    pub fn compile(src: &str) -> Result<Self, Error> {
        Self::compile_with(src, &Options::default())
    }

    /// Parses and compiles an expression with options; with `strict` and a `context_type`,
    /// the expression is also type-checked against the FHIR definitions.
    ///
    /// # Errors
    ///
    /// As [`Expression::compile`], and in strict mode [`Error::Semantic`] for element names
    /// the types do not define, choice names with a type suffix, order-dependent functions
    /// on unordered collections and non-Boolean criteria.
    pub fn compile_with(src: &str, options: &Options) -> Result<Self, Error> {
        let ast = parser::parse(src)?;
        let root = compile::compile(src, &ast)?;
        if options.strict {
            check::check(src, &root, options.context_type)?;
        }
        Ok(Expression {
            source: src.into(),
            root,
        })
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression.
    ///
    /// # Errors
    ///
    /// [`Error::Execution`] when evaluation breaks a rule of the specification, e.g. an
    /// operator applied to a collection of several items.
    pub fn evaluate<'a>(&'a self, ctx: &Context<'a>) -> Result<Collection<'a>, Error> {
        let run = Run {
            ctx,
            now: OnceCell::new(),
            descendants: RefCell::new(Vec::new()),
        };
        let this = ctx.focus.as_slice();
        let scope = Scope {
            this,
            index: None,
            total: None,
        };
        eval(&self.root, scope, &run).map_err(|f| Error::execution(&self.source, f.pos, f.message))
    }

    /// Evaluates the expression as a predicate (an invariant): empty is `None`, a single
    /// Boolean its value, any other single item `true`.
    ///
    /// # Errors
    ///
    /// As [`Expression::evaluate`], and [`Error::Execution`] when the result has several items.
    pub fn evaluate_predicate<'a>(&'a self, ctx: &Context<'a>) -> Result<Option<bool>, Error> {
        let result = self.evaluate(ctx)?;
        match &result[..] {
            [] => Ok(None),
            [item] => Ok(Some(item.as_bool().unwrap_or(true))),
            _ => Err(Error::execution(
                &self.source,
                0,
                format!(
                    "expected a single Boolean result, found {} items",
                    result.len()
                ),
            )),
        }
    }
}

/// A callback for `trace()`: the name given and the traced collection.
pub type TraceFn<'a> = dyn for<'x> Fn(&str, &[Item<'x>]) + 'a;

/// What an expression is evaluated on: the focus (`$this` and `%context`), the resources
/// (`%resource`, `%rootResource`), variables, the clock and the mode.
pub struct Context<'a> {
    focus: Option<Item<'a>>,
    resource: Option<&'a Element>,
    root_resource: Option<&'a Element>,
    variables: Vec<(Box<str>, Collection<'a>)>,
    now: Option<DateTime>,
    strict: bool,
    trace: Option<&'a TraceFn<'a>>,
}

impl<'a> Context<'a> {
    /// A context on a resource: it is the focus, `%resource`, `%rootResource` and `%context`.
    pub fn new(resource: &'a Element) -> Self {
        Context {
            focus: Some(Item::Element(resource)),
            resource: Some(resource),
            root_resource: Some(resource),
            variables: Vec::new(),
            now: None,
            strict: false,
            trace: None,
        }
    }

    /// A context without data (for expressions on literals only).
    pub fn empty() -> Self {
        Context {
            focus: None,
            resource: None,
            root_resource: None,
            variables: Vec::new(),
            now: None,
            strict: false,
            trace: None,
        }
    }

    /// Sets the focus (`$this` and `%context`), e.g. an element inside the resource when
    /// checking an invariant on it.
    #[must_use]
    pub fn with_focus(mut self, focus: Item<'a>) -> Self {
        self.focus = Some(focus);
        self
    }

    /// Sets `%rootResource`, the resource containing `%resource` (a Bundle, or the container
    /// of a contained resource).
    #[must_use]
    pub fn with_root_resource(mut self, root: &'a Element) -> Self {
        self.root_resource = Some(root);
        self
    }

    /// Defines `%name`.
    #[must_use]
    pub fn with_variable(mut self, name: &str, value: Collection<'a>) -> Self {
        self.variables.push((name.into(), value));
        self
    }

    /// Fixes `now()`, `today()` and `timeOfDay()` (by default the clock is read once per
    /// evaluation, in UTC).
    #[must_use]
    pub fn with_now(mut self, now: DateTime) -> Self {
        self.now = Some(now);
        self
    }

    /// Strict mode: choice elements only by base name, element names checked against the
    /// definitions, non-Boolean criteria refused.
    #[must_use]
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Sends `trace()` output to `f`.
    #[must_use]
    pub fn with_trace(mut self, f: &'a TraceFn<'a>) -> Self {
        self.trace = Some(f);
        self
    }

    /// Whether strict mode is on.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    pub(crate) fn resource(&self) -> Option<&'a Element> {
        self.resource
    }

    pub(crate) fn root_resource(&self) -> Option<&'a Element> {
        self.root_resource.or(self.resource)
    }

    pub(crate) fn trace(&self) -> Option<&'a TraceFn<'a>> {
        self.trace
    }
}

/// State of one evaluation.
pub(crate) struct Run<'a, 'c> {
    pub ctx: &'c Context<'a>,
    now: OnceCell<Option<DateTime>>,
    /// The `descendants()` of single elements found so far in this evaluation: invariants
    /// ask for them repeatedly (dom-3 takes `%resource.descendants()` four times for each
    /// contained resource), and the tree does not change while an expression runs.
    descendants: RefCell<Vec<(&'a Element, Collection<'a>)>>,
}

impl<'a> Run<'a, '_> {
    /// The descendants of `e` computed earlier in this evaluation, if any.
    pub fn known_descendants(&self, e: &'a Element) -> Option<Collection<'a>> {
        self.descendants
            .borrow()
            .iter()
            .find(|(k, _)| std::ptr::eq(*k, e))
            .map(|(_, c)| c.clone())
    }

    /// Remembers the descendants of `e` for the rest of this evaluation.
    pub fn remember_descendants(&self, e: &'a Element, found: &Collection<'a>) {
        self.descendants.borrow_mut().push((e, found.clone()));
    }

    /// The evaluation's `now()`: fixed on first use.
    pub fn now(&self) -> Option<DateTime> {
        *self
            .now
            .get_or_init(|| self.ctx.now.or_else(functions::clock_now))
    }

    /// Whether strict mode is on.
    pub fn strict(&self) -> bool {
        self.ctx.strict
    }
}

/// The iteration variables visible to a node.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a, 's> {
    /// `$this`
    pub this: &'s [Item<'a>],
    /// `$index`
    pub index: Option<usize>,
    /// `$total`
    pub total: Option<&'s [Item<'a>]>,
}

/// Evaluates a node into a new collection.
pub(crate) fn eval<'a>(
    node: &'a Node,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
) -> Res<Collection<'a>> {
    let mut out = Collection::new();
    eval_into(node, scope, run, &mut out)?;
    Ok(out)
}

/// Evaluates a node, appending its result to `out`. Results travel through caller-owned
/// buffers rather than return values: collections are several words, and copying each
/// step's result back up the call chain costs more than the step itself.
pub(crate) fn eval_into<'a>(
    node: &'a Node,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    out: &mut Collection<'a>,
) -> Res<()> {
    let pos = node.pos;
    match &node.kind {
        NodeKind::Empty => {}
        NodeKind::Const(c) => out.push(constant(c)),
        NodeKind::This => out.extend_from_slice(scope.this),
        NodeKind::Index => {
            if let Some(i) = scope.index.and_then(|i| i64::try_from(i).ok()) {
                out.push(Item::Integer(i));
            }
        }
        NodeKind::Total => out.extend_from_slice(scope.total.unwrap_or(&[])),
        NodeKind::Var(v) => variable(v, pos, run, out)?,
        NodeKind::Member {
            base,
            name,
            type_filter,
        } => match (base, type_filter) {
            (Some(base), _) => {
                let mut input = Collection::new();
                eval_into(base, scope, run, &mut input)?;
                navigate_into(&input, name, pos, run, out)?;
            }
            (None, Some(t)) => {
                for item in scope.this {
                    if item.fhir_type().is_some_and(|info| is_type(info, t)) {
                        out.push(item.clone());
                    }
                }
            }
            (None, None) => navigate_into(scope.this, name, pos, run, out)?,
        },
        NodeKind::Call {
            base,
            func,
            args,
            extra,
        } => {
            let mut input = Collection::new();
            match base.as_deref() {
                // `children().count()` (in ele-1, on every element) counts without
                // gathering the children.
                Some(Node {
                    kind:
                        NodeKind::Call {
                            base: inner,
                            func: Func::Children,
                            ..
                        },
                    ..
                }) if *func == Func::Count => {
                    match inner {
                        Some(inner) => eval_into(inner, scope, run, &mut input)?,
                        None => input.extend_from_slice(scope.this),
                    }
                    let n: usize = input.iter().map(functions::child_count).sum();
                    out.push(Item::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
                    return Ok(());
                }
                Some(base) => eval_into(base, scope, run, &mut input)?,
                None => input.extend_from_slice(scope.this),
            }
            functions::call(*func, input, args, extra, scope, run, pos, out)?;
        }
        _ => eval_rare(node, scope, run, out)?,
    }
    Ok(())
}

/// The nodes met less often than paths, calls and operators, kept out of [`eval_into`] so
/// that its stack frame, paid at every level of nesting, stays small.
fn eval_rare<'a>(
    node: &'a Node,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    out: &mut Collection<'a>,
) -> Res<()> {
    let pos = node.pos;
    match &node.kind {
        NodeKind::Indexer { base, index } => {
            let input = eval(base, scope, run)?;
            let index = eval(index, scope, run)?;
            if let Some(i) = single_integer(&index, pos, "an index")? {
                if let Some(item) = usize::try_from(i).ok().and_then(|i| input.get(i)) {
                    out.push(item.clone());
                }
            }
        }
        NodeKind::Unary { negate, operand } => {
            let value = eval(operand, scope, run)?;
            out.extend(unary(*negate, &value, pos)?);
        }
        NodeKind::Binary { op, lhs, rhs } => binary(*op, lhs, rhs, scope, run, pos, out)?,
        NodeKind::Is { operand, test } => {
            let value = eval(operand, scope, run)?;
            if let Some(item) = singleton(&value, pos, "is")? {
                out.push(Item::Boolean(is_of_type(item, test, false)));
            }
        }
        NodeKind::As { operand, test } => {
            let value = eval(operand, scope, run)?;
            out.extend(cast(value, test, pos)?);
        }
        _ => {}
    }
    Ok(())
}

/// The item of a literal; strings and quantities borrow from the expression.
fn constant(c: &Const) -> Item<'_> {
    match c {
        Const::Boolean(b) => Item::Boolean(*b),
        Const::Integer(i) => Item::Integer(*i),
        Const::Decimal(d) => Item::Decimal(*d),
        Const::String(s) => Item::str(s),
        Const::Date(d) => Item::Date(*d),
        Const::DateTime(d) => Item::DateTime(Shared::Borrowed(d)),
        Const::Time(t) => Item::Time(*t),
        Const::Quantity(q) => Item::Quantity(Shared::Borrowed(q)),
    }
}

fn variable<'a>(v: &'a Var, pos: u32, run: &Run<'a, '_>, out: &mut Collection<'a>) -> Res<()> {
    match v {
        Var::Resource => out.extend(run.ctx.resource().map(Item::Element)),
        Var::RootResource => out.extend(run.ctx.root_resource().map(Item::Element)),
        Var::Context => out.extend(run.ctx.focus.iter().cloned()),
        Var::Text(s) => out.push(Item::str(s)),
        Var::User(name) => match run.ctx.variables.iter().rev().find(|(n, _)| n == name) {
            Some((_, value)) => out.extend_from_slice(value),
            None => return fail(pos, format!("undefined environment variable %{name}")),
        },
    }
    Ok(())
}

/// Whether a FHIR type is `target` or derives from it.
pub(crate) fn is_type(info: &'static TypeInfo, target: &'static TypeInfo) -> bool {
    std::ptr::eq(info, target) || info.is_a(&target.name)
}

/// The children named `name` of every item: elements by name (choice elements by their base
/// name, and outside strict mode also by their JSON name, `valueQuantity`), and on
/// primitives `id` and `extension`.
pub(crate) fn navigate<'a>(
    input: &[Item<'a>],
    name: &str,
    pos: u32,
    run: &Run<'a, '_>,
) -> Res<Collection<'a>> {
    let mut out = Collection::new();
    navigate_into(input, name, pos, run, &mut out)?;
    Ok(out)
}

/// [`navigate`], appending to `out`.
fn navigate_into<'a>(
    input: &[Item<'a>],
    name: &str,
    pos: u32,
    run: &Run<'a, '_>,
    out: &mut Collection<'a>,
) -> Res<()> {
    for item in input {
        match item {
            Item::Element(e) => child_values(e, name, pos, run.strict(), out)?,
            Item::Primitive(p) => match name {
                "extension" => out.extend(p.extensions().iter().map(Item::Element)),
                "id" => {
                    if let Some(id) = p.extras.as_ref().and_then(|x| x.id.as_deref()) {
                        out.push(Item::str(id));
                    }
                }
                _ => {}
            },
            Item::Type(t) => match name {
                "namespace" => out.push(Item::str(t.namespace)),
                "name" => out.push(Item::str(t.name)),
                _ => {}
            },
            _ => {}
        }
    }
    Ok(())
}

/// Appends the values of element `name` of `e`.
///
/// The present properties are scanned by name rather than looking the name up in the type:
/// an element has few properties, most names differ in length, and no hashing is needed.
fn child_values<'a>(
    e: &'a Element,
    name: &str,
    pos: u32,
    strict: bool,
    out: &mut Collection<'a>,
) -> Res<()> {
    let info = e.info;
    for p in &e.props {
        let Some(def) = info.elements.get(usize::from(p.element)) else {
            continue;
        };
        let hit = &*def.name == name;
        if hit {
            for v in &p.values {
                out.push(Item::from_value(v));
            }
            return Ok(());
        }
    }
    // A choice element is named without its type (`value`, not `valueQuantity`): the JSON
    // name is not a FHIRPath name, in any mode (N1, "Choice types"; HL7 testPolymorphicsB).
    let choice_suffix = info
        .child(name)
        .and_then(|c| info.elements.get(usize::from(c.element)))
        .is_some_and(|d| d.choice && &*d.name != name);
    if choice_suffix {
        return fail(
            pos,
            format!(
                "'{name}' is not an element of {} (choice elements are named without their type)",
                info.fhir_type_name()
            ),
        );
    }
    if strict && info.element(name).is_none() {
        return fail(
            pos,
            format!("'{name}' is not an element of {}", info.fhir_type_name()),
        );
    }
    Ok(())
}

/// Whether an item is of the tested type. For `as`/`ofType` (`exact_primitive`), FHIR
/// primitives must be of exactly the named type.
pub(crate) fn is_of_type(item: &Item<'_>, test: &TypeTest, exact_primitive: bool) -> bool {
    match item.fhir_type() {
        Some(info) => test.fhir_matches(info, exact_primitive),
        None => test.system.is_some() && item.system_type() == test.system,
    }
}

/// `as`: the single item if it is of the type, else empty.
pub(crate) fn cast<'a>(value: Collection<'a>, test: &TypeTest, pos: u32) -> Res<Collection<'a>> {
    match singleton(&value, pos, "as")? {
        Some(item) if is_of_type(item, test, true) => Ok(value),
        _ => Ok(Collection::new()),
    }
}

/// The only item of a collection, `None` when empty; an error when there are several.
pub(crate) fn singleton<'c, 'a>(
    c: &'c [Item<'a>],
    pos: u32,
    what: &str,
) -> Res<Option<&'c Item<'a>>> {
    match c {
        [] => Ok(None),
        [item] => Ok(Some(item)),
        _ => fail(
            pos,
            format!(
                "{what} expects a single item, found a collection of {}",
                c.len()
            ),
        ),
    }
}

/// A single Integer argument or operand; `None` when empty.
pub(crate) fn single_integer(c: &[Item<'_>], pos: u32, what: &str) -> Res<Option<i64>> {
    match singleton(c, pos, what)? {
        None => Ok(None),
        Some(item) => match item.as_integer() {
            Some(i) => Ok(Some(i)),
            None => fail(
                pos,
                format!("{what} must be an Integer, found {}", item.output_type()),
            ),
        },
    }
}

/// A collection as a Boolean (singleton evaluation): empty is `None`; a single Boolean its
/// value; a single item of another type `true` (an error in strict mode).
pub(crate) fn truth(c: &[Item<'_>], pos: u32, run: &Run<'_, '_>) -> Res<Option<bool>> {
    match c {
        [] => Ok(None),
        [item] => match item.as_bool() {
            Some(b) => Ok(Some(b)),
            None => match item {
                Item::Primitive(p) if p.value.is_none() => Ok(None),
                _ if run.strict() => fail(
                    pos,
                    format!("expected a Boolean, found {}", item.output_type()),
                ),
                _ => Ok(Some(true)),
            },
        },
        _ => fail(
            pos,
            format!(
                "expected a single Boolean, found a collection of {}",
                c.len()
            ),
        ),
    }
}

fn unary<'a>(negate: bool, value: &Collection<'a>, pos: u32) -> Res<Collection<'a>> {
    let Some(item) = singleton(value, pos, "a prefix operator")? else {
        return Ok(Collection::new());
    };
    use super::value::SystemValue as V;
    let result = match item.to_system() {
        Some(V::Integer(i)) if negate => i.checked_neg().map(Item::Integer),
        Some(V::Decimal(d)) if negate => {
            // FHIRPath has no negative zero: `-0.0` is `0.0`.
            let mut n = -d;
            if n.is_zero() {
                n.set_sign_positive(true);
            }
            Some(Item::Decimal(n))
        }
        Some(V::Quantity(q)) if negate => {
            let mut q = q.into_owned();
            q.value = -q.value;
            Some(Item::Quantity(Shared::Owned(std::rc::Rc::new(q))))
        }
        Some(v @ (V::Integer(_) | V::Decimal(_) | V::Quantity(_))) => Some(v.into_item()),
        _ => {
            return fail(
                pos,
                format!(
                    "prefix '{}' is not defined for {}",
                    if negate { '-' } else { '+' },
                    item.output_type()
                ),
            )
        }
    };
    Ok(result.map_or_else(Collection::new, Collection::one))
}

fn binary<'a>(
    op: BinaryOp,
    lhs: &'a Node,
    rhs: &'a Node,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
    out: &mut Collection<'a>,
) -> Res<()> {
    if matches!(
        op,
        BinaryOp::And | BinaryOp::Or | BinaryOp::Xor | BinaryOp::Implies
    ) {
        out.extend(logic(op, lhs, rhs, scope, run, pos)?.map(Item::Boolean));
        return Ok(());
    }
    let mut a = Collection::new();
    eval_into(lhs, scope, run, &mut a)?;
    let mut b = Collection::new();
    eval_into(rhs, scope, run, &mut b)?;
    let result = match op {
        BinaryOp::Eq => collection_equals(&a, &b),
        BinaryOp::Ne => collection_equals(&a, &b).map(|e| !e),
        BinaryOp::Equiv => Some(collection_equivalent(&a, &b)),
        BinaryOp::NotEquiv => Some(!collection_equivalent(&a, &b)),
        BinaryOp::Lt | BinaryOp::Gt | BinaryOp::Le | BinaryOp::Ge => {
            let (Some(x), Some(y)) = (
                singleton(&a, pos, op.symbol())?,
                singleton(&b, pos, op.symbol())?,
            ) else {
                return Ok(());
            };
            let ordering = match ops::compare(x, y) {
                Ok(o) => o,
                Err(m) => return fail(pos, m),
            };
            ordering.map(|o| match op {
                BinaryOp::Lt => o == Ordering::Less,
                BinaryOp::Gt => o == Ordering::Greater,
                BinaryOp::Le => o != Ordering::Greater,
                _ => o != Ordering::Less,
            })
        }
        BinaryOp::In => membership(&a, &b, pos)?,
        BinaryOp::Contains => membership(&b, &a, pos)?,
        BinaryOp::Union => {
            out.extend(union(a, &b));
            return Ok(());
        }
        _ => {
            out.extend(value_operator(op, &a, &b, pos)?);
            return Ok(());
        }
    };
    out.extend(result.map(Item::Boolean));
    Ok(())
}

/// `&` and the arithmetic operators.
fn value_operator<'a>(
    op: BinaryOp,
    a: &[Item<'a>],
    b: &[Item<'a>],
    pos: u32,
) -> Res<Option<Item<'a>>> {
    if op == BinaryOp::Concat {
        let mut s = String::new();
        for side in [a, b] {
            if let Some(item) = singleton(side, pos, "&")? {
                match item.as_str() {
                    Some(text) => s.push_str(text),
                    None => {
                        return fail(
                            pos,
                            format!("& expects strings, found {}", item.output_type()),
                        )
                    }
                }
            }
        }
        return Ok(Some(Item::String(super::value::Text::owned(s))));
    }
    let (Some(x), Some(y)) = (
        singleton(a, pos, op.symbol())?,
        singleton(b, pos, op.symbol())?,
    ) else {
        return Ok(None);
    };
    let (Some(p), Some(q)) = (x.to_system(), y.to_system()) else {
        return fail(
            pos,
            format!(
                "operator '{}' is not defined for {} and {}",
                op.symbol(),
                x.output_type(),
                y.output_type()
            ),
        );
    };
    match ops::arithmetic(op, &p, &q) {
        Ok(r) => Ok(r),
        Err(m) => fail(pos, m),
    }
}

/// `and`, `or`, `xor`, `implies` with three-valued logic; the right side is not evaluated
/// when the left decides.
fn logic<'a>(
    op: BinaryOp,
    lhs: &'a Node,
    rhs: &'a Node,
    scope: Scope<'a, '_>,
    run: &Run<'a, '_>,
    pos: u32,
) -> Res<Option<bool>> {
    let mut left = Collection::new();
    eval_into(lhs, scope, run, &mut left)?;
    let a = truth(&left, pos, run)?;
    let decided = match (op, a) {
        (BinaryOp::And, Some(false)) => Some(false),
        (BinaryOp::Or, Some(true)) => Some(true),
        (BinaryOp::Implies, Some(false)) => Some(true),
        _ => None,
    };
    if decided.is_some() {
        return Ok(decided);
    }
    let mut right = Collection::new();
    eval_into(rhs, scope, run, &mut right)?;
    let b = truth(&right, pos, run)?;
    Ok(match op {
        BinaryOp::And => match (a, b) {
            (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        BinaryOp::Or => match (a, b) {
            (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        BinaryOp::Xor => a.zip(b).map(|(x, y)| x != y),
        _ => match (a, b) {
            (_, Some(true)) => Some(true),
            (Some(true), Some(false)) => Some(false),
            _ => None,
        },
    })
}

/// `=` on collections: empty if either is empty, else pairwise in order.
pub(crate) fn collection_equals(a: &[Item<'_>], b: &[Item<'_>]) -> Option<bool> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    if a.len() != b.len() {
        return Some(false);
    }
    let mut unknown = false;
    for (x, y) in a.iter().zip(b) {
        match ops::equals(x, y) {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    (!unknown).then_some(true)
}

/// `~` on collections: both empty is true; otherwise same size and every item of one
/// equivalent to a distinct item of the other, in any order.
pub(crate) fn collection_equivalent(a: &[Item<'_>], b: &[Item<'_>]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let found = b
            .iter()
            .enumerate()
            .find(|(i, y)| !used[*i] && ops::equivalent(x, y));
        match found {
            Some((i, _)) => {
                used[i] = true;
                true
            }
            None => false,
        }
    })
}

/// Whether a collection holds an item equal to `item`.
pub(crate) fn contains_item(c: &[Item<'_>], item: &Item<'_>) -> bool {
    c.iter().any(|x| ops::equals(x, item) == Some(true))
}

/// `a | b`: the items of both without duplicates.
pub(crate) fn union<'a>(a: Collection<'a>, b: &[Item<'a>]) -> Collection<'a> {
    if a.len() + b.len() > SMALL_UNION {
        if let Some(out) = union_of_strings(&a, b) {
            return out;
        }
    }
    let mut out = Collection::with_capacity(a.len() + b.len());
    for item in a.iter().chain(b) {
        if !contains_item(&out, item) {
            out.push(item.clone());
        }
    }
    out
}

/// Up to this many items, [`union`] compares every pair.
const SMALL_UNION: usize = 8;

/// [`union`] when every item is a plain string ([`Item::plain_string`]): equality is then
/// equality of the strings, so the first item of each distinct string is kept, in order,
/// found through a hash set instead of comparing every pair. `None` when an item is not a
/// plain string.
fn union_of_strings<'a>(a: &[Item<'a>], b: &[Item<'a>]) -> Option<Collection<'a>> {
    let mut seen = std::collections::HashSet::with_capacity(a.len() + b.len());
    let mut out = Collection::with_capacity(a.len() + b.len());
    for item in a.iter().chain(b) {
        if seen.insert(item.plain_string()?) {
            out.push(item.clone());
        }
    }
    Some(out)
}

/// `item in collection`.
fn membership(item: &[Item<'_>], collection: &[Item<'_>], pos: u32) -> Res<Option<bool>> {
    Ok(singleton(item, pos, "in/contains")?.map(|x| contains_item(collection, x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str) -> Result<Collection<'static>, Error> {
        let expr = Box::leak(Box::new(Expression::compile(src)?));
        let ctx = Box::leak(Box::new(Context::empty()));
        expr.evaluate(ctx)
    }

    fn boolean(src: &str) -> Option<bool> {
        let r = run(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        match &r[..] {
            [] => None,
            [Item::Boolean(b)] => Some(*b),
            other => panic!("{src}: not a Boolean: {other:?}"),
        }
    }

    #[test]
    fn empty_propagates() {
        assert_eq!(boolean("{} = 1"), None);
        assert_eq!(boolean("1 != {}"), None);
        assert_eq!(boolean("({} + 1).empty()"), Some(true));
        assert_eq!(boolean("{} < 1"), None);
        assert_eq!(boolean("{} ~ {}"), Some(true));
        assert_eq!(boolean("1 ~ {}"), Some(false));
        assert_eq!(boolean("{}.not()"), None);
    }

    #[test]
    fn three_valued_logic() {
        let table = [
            ("true and {}", None),
            ("false and {}", Some(false)),
            ("{} and false", Some(false)),
            ("{} or true", Some(true)),
            ("false or {}", None),
            ("true xor {}", None),
            ("{} implies true", Some(true)),
            ("false implies {}", Some(true)),
            ("true implies {}", None),
            ("{} implies false", None),
        ];
        for (src, expected) in table {
            assert_eq!(boolean(src), expected, "{src}");
        }
    }

    #[test]
    fn singleton_rules() {
        assert!(matches!(run("(1 | 2) + 1"), Err(Error::Execution { .. })));
        assert!(matches!(run("(1 | 2) < 3"), Err(Error::Execution { .. })));
        assert!(matches!(run("(1 | 2).not()"), Err(Error::Execution { .. })));
        assert!(matches!(run("-true"), Err(Error::Execution { .. })));
        assert_eq!(boolean("(1).not()"), Some(false));
        assert_eq!(boolean("1 < 'a'.length()"), Some(false));
        assert!(matches!(run("1 < 'a'"), Err(Error::Execution { .. })));
    }

    #[test]
    fn date_precision_comparison() {
        assert_eq!(boolean("@2018-03 < @2018-03-01"), None);
        assert_eq!(boolean("@2018-03 < @2018-04-01"), Some(true));
        assert_eq!(boolean("@2012-04-15 = @2012-04-15T10:00:00"), None);
        assert_eq!(
            boolean("@2012-04-15T15:30:31 = @2012-04-15T15:30:31.0"),
            Some(true)
        );
        assert_eq!(boolean("@T10:30 > @T10:30:00"), None);
        assert_eq!(boolean("@2012-04-15 ~ @2012-04-15T10:00:00"), Some(false));
    }

    #[test]
    fn execution_errors_have_positions() {
        let Err(Error::Execution { line, col, .. }) = run("1 +\n (1 | 2)") else {
            panic!("expected an execution error")
        };
        assert_eq!((line, col), (1, 3));
    }

    const BUNDLE: &str = r##"{"resourceType":"Bundle","type":"collection","entry":[
        {"fullUrl":"urn:uuid:p1","resource":{"resourceType":"Patient","id":"p1",
          "contained":[{"resourceType":"Organization","id":"org","name":"Acme"}],
          "managingOrganization":{"reference":"#org"},
          "name":[{"use":"official","family":"Chalmers","given":["Peter","James"]},{"use":"usual","given":["Jim"]}],
          "birthDate":"1974-12-25","deceasedBoolean":false}},
        {"fullUrl":"urn:uuid:o1","resource":{"resourceType":"Observation","id":"o1","status":"final",
          "code":{"text":"weight"},"subject":{"reference":"Patient/p1"},
          "valueQuantity":{"value":185,"unit":"lbs","system":"http://unitsofmeasure.org","code":"[lb_av]"}}}]}"##;

    /// Evaluates on the bundle's first (`Patient`) or second (`Observation`) entry, with the
    /// bundle as `%rootResource`, and renders the result as `type:value` strings.
    fn on_entry(entry: usize, src: &str, strict: bool) -> Result<Vec<String>, Error> {
        let bundle = crate::model::parse(BUNDLE).unwrap();
        let resource = bundle.values("entry")[entry]
            .as_element()
            .unwrap()
            .values("resource")[0]
            .as_element()
            .unwrap();
        let expr = Expression::compile(src)?;
        let ctx = Context::new(resource)
            .with_root_resource(&bundle)
            .strict(strict);
        let result = expr.evaluate(&ctx)?;
        Ok(result
            .iter()
            .map(|i| {
                format!(
                    "{}:{}",
                    i.output_type(),
                    i.to_string_value().unwrap_or_else(|| "{..}".into())
                )
            })
            .collect())
    }

    #[test]
    fn nodes_keep_their_fhir_type() {
        assert_eq!(
            on_entry(0, "birthDate", false).unwrap(),
            ["date:1974-12-25"]
        );
        assert_eq!(on_entry(0, "deceased", false).unwrap(), ["boolean:false"]);
        assert_eq!(
            on_entry(0, "name.use", false).unwrap(),
            ["code:official", "code:usual"]
        );
        assert_eq!(
            on_entry(0, "birthDate + 1 day", false).unwrap(),
            ["date:1974-12-26"]
        );
        assert_eq!(
            on_entry(1, "value", false).unwrap(),
            ["Quantity:185 '[lb_av]'"]
        );
        assert_eq!(
            on_entry(1, "value.type().name", false).unwrap(),
            ["string:Quantity"]
        );
    }

    #[test]
    fn choice_names_lenient_and_strict() {
        assert!(matches!(
            on_entry(1, "valueQuantity.unit", false),
            Err(Error::Execution { .. })
        ));
        assert!(matches!(
            on_entry(1, "valueQuantity.unit", true),
            Err(Error::Execution { .. })
        ));
        assert!(matches!(
            on_entry(1, "value.nosuch", true),
            Err(Error::Execution { .. })
        ));
        assert_eq!(
            on_entry(1, "value.nosuch", false).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            on_entry(1, "value > 80 'kg'", false).unwrap(),
            ["boolean:true"]
        );
    }

    #[test]
    fn iteration_variables() {
        assert_eq!(
            on_entry(0, "name.given.select($this & $index.toString())", false).unwrap(),
            ["string:Peter0", "string:James1", "string:Jim2"]
        );
        assert_eq!(
            on_entry(
                0,
                "name.select(given.aggregate($total + $this.length(), 0))",
                false
            )
            .unwrap(),
            ["integer:10", "integer:3"]
        );
        assert_eq!(
            on_entry(
                0,
                "name.where(use = 'usual').iif($this.given = 'Jim', 'yes', 'no')",
                false
            )
            .unwrap(),
            ["string:yes"]
        );
    }

    #[test]
    fn references_resolve_in_resource_and_bundle() {
        assert_eq!(
            on_entry(0, "managingOrganization.resolve().name", false).unwrap(),
            ["string:Acme"]
        );
        assert_eq!(
            on_entry(1, "subject.resolve().birthDate", false).unwrap(),
            ["date:1974-12-25"]
        );
        assert_eq!(
            on_entry(1, "subject.resolve() is Patient", false).unwrap(),
            ["boolean:true"]
        );
    }

    #[test]
    fn types_and_reflection() {
        assert_eq!(
            on_entry(0, "Patient.is(DomainResource)", false).unwrap(),
            ["boolean:true"]
        );
        assert_eq!(
            on_entry(0, "name.first() is HumanName", false).unwrap(),
            ["boolean:true"]
        );
        assert_eq!(
            on_entry(0, "name.use.first().is(string)", false).unwrap(),
            ["boolean:true"]
        );
        assert_eq!(
            on_entry(0, "name.use.ofType(string)", false).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            on_entry(0, "1.type().namespace", false).unwrap(),
            ["string:System"]
        );
        assert_eq!(
            on_entry(
                0,
                "conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')",
                false
            )
            .unwrap(),
            ["boolean:true"]
        );
    }

    #[test]
    fn now_is_fixed_within_an_evaluation() {
        assert_eq!(run("now() = now()").unwrap()[0].as_bool(), Some(true));
        let fixed = DateTime::parse_literal("2020-02-29T12:00:00Z").unwrap();
        let expr = Expression::compile("today() + 1 year").unwrap();
        let ctx = Context::empty().with_now(fixed);
        let r = expr.evaluate(&ctx).unwrap();
        assert_eq!(r[0].to_string_value().as_deref(), Some("2021-02-28"));
    }

    #[test]
    fn variables() {
        let expr = Expression::compile("%limit + 1 | %ucum").unwrap();
        let ctx = Context::empty().with_variable("limit", Collection::one(Item::Integer(4)));
        let r = expr.evaluate(&ctx).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].as_integer(), Some(5));
        let nope = Expression::compile("%nope").unwrap();
        let undefined = nope.evaluate(&Context::empty()).map(|r| r.len());
        assert!(matches!(undefined, Err(Error::Execution { .. })));
    }

    #[test]
    fn deep_expressions_do_not_overflow_the_stack() {
        let sum = format!("1{}", " + 1".repeat(200));
        assert_eq!(run(&sum).unwrap()[0].as_integer(), Some(201));
        let mut nested = String::from("true");
        for _ in 0..120 {
            nested = format!("(1 | 2).where({nested}).exists()");
        }
        assert_eq!(boolean(&nested), Some(true));
    }
}
