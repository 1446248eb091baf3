//! From syntax tree to the compiled form the evaluator runs: function names resolved to
//! [`Func`], arities checked, literals converted to values (dates, times, quantities,
//! decimals), type specifiers resolved against the R4 definitions, constant regular
//! expressions compiled, and the environment variables FHIR defines (`%ucum`,
//! `%"vs-name"`, ...) replaced by their values. Everything that can be wrong without data is
//! reported here, as a semantic error with its position.

use std::ptr;

use regex::Regex;
use rust_decimal::Decimal;

use super::ast::{BinaryOp, Expr, ExprKind, Literal, TypeOp, TypeSpecifier, UnaryOp};
use super::error::Error;
use super::quantity::Quantity;
use super::temporal::{Date, DateTime, Time};
use super::value::SystemType;
use crate::model::schema::{type_info, TypeInfo, TypeKind};

/// A node of the compiled expression.
#[derive(Debug)]
pub(crate) struct Node {
    /// What the node does.
    pub kind: NodeKind,
    /// Byte offset in the source, for errors.
    pub pos: u32,
}

/// The kinds of compiled nodes.
#[derive(Debug)]
pub(crate) enum NodeKind {
    /// `{}`
    Empty,
    /// A literal, already converted.
    Const(Const),
    /// `$this`
    This,
    /// `$index`
    Index,
    /// `$total`
    Total,
    /// `%name`
    Var(Var),
    /// `base.name`, or with no base an identifier evaluated on `$this`. `type_filter` is set
    /// for a leading identifier naming a FHIR type (`Patient.name`): it selects the items of
    /// `$this` of that type instead of navigating.
    Member {
        base: Option<Box<Node>>,
        name: Box<str>,
        type_filter: Option<&'static TypeInfo>,
    },
    /// A function call; with no base it applies to `$this`.
    Call {
        base: Option<Box<Node>>,
        func: Func,
        args: Vec<Node>,
        extra: Extra,
    },
    /// `base[index]`
    Indexer { base: Box<Node>, index: Box<Node> },
    /// Prefix `-` (`negate`) or `+`.
    Unary { negate: bool, operand: Box<Node> },
    /// `lhs op rhs`
    Binary {
        op: BinaryOp,
        lhs: Box<Node>,
        rhs: Box<Node>,
    },
    /// `operand is T`
    Is { operand: Box<Node>, test: TypeTest },
    /// `operand as T`
    As { operand: Box<Node>, test: TypeTest },
}

/// A literal value.
#[derive(Debug)]
pub(crate) enum Const {
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(Box<str>),
    Date(Date),
    DateTime(DateTime),
    Time(Time),
    Quantity(Quantity),
}

/// An environment variable.
#[derive(Debug)]
pub(crate) enum Var {
    /// `%resource`
    Resource,
    /// `%rootResource`
    RootResource,
    /// `%context`
    Context,
    /// A constant the FHIR specification defines (`%ucum`, `%"vs-name"`, ...).
    Text(Box<str>),
    /// A variable the caller supplies.
    User(Box<str>),
}

/// What a call carries besides its arguments.
#[derive(Debug)]
pub(crate) enum Extra {
    None,
    /// The type argument of `is`, `as`, `ofType`.
    Type(TypeTest),
    /// A regular expression given as a literal, compiled once.
    Regex(Box<Regex>),
    /// For `sort`: whether each key (argument) sorts descending.
    Sort(Vec<bool>),
}

macro_rules! functions {
    ($($variant:ident $name:literal $min:literal $max:literal,)*) => {
        /// The functions the evaluator knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Func { $($variant,)* }

        /// Name, arity range and function, for lookup at compile time.
        const FUNCTIONS: &[(&str, u8, u8, Func)] = &[$(($name, $min, $max, Func::$variant),)*];

        impl Func {
            /// The function's name.
            pub fn name(self) -> &'static str {
                match self { $(Func::$variant => $name,)* }
            }
        }
    };
}

functions! {
    Empty "empty" 0 0,
    Exists "exists" 0 1,
    All "all" 1 1,
    AllTrue "allTrue" 0 0,
    AnyTrue "anyTrue" 0 0,
    AllFalse "allFalse" 0 0,
    AnyFalse "anyFalse" 0 0,
    SubsetOf "subsetOf" 1 1,
    SupersetOf "supersetOf" 1 1,
    Count "count" 0 0,
    Distinct "distinct" 0 0,
    IsDistinct "isDistinct" 0 0,
    Where "where" 1 1,
    Select "select" 1 1,
    Repeat "repeat" 1 1,
    OfType "ofType" 1 1,
    Single "single" 0 0,
    First "first" 0 0,
    Last "last" 0 0,
    Tail "tail" 0 0,
    Skip "skip" 1 1,
    Take "take" 1 1,
    Intersect "intersect" 1 1,
    Exclude "exclude" 1 1,
    Union "union" 1 1,
    Combine "combine" 1 1,
    Iif "iif" 2 3,
    ToBoolean "toBoolean" 0 0,
    ConvertsToBoolean "convertsToBoolean" 0 0,
    ToInteger "toInteger" 0 0,
    ConvertsToInteger "convertsToInteger" 0 0,
    ToDecimal "toDecimal" 0 0,
    ConvertsToDecimal "convertsToDecimal" 0 0,
    ToString "toString" 0 0,
    ConvertsToString "convertsToString" 0 0,
    ToDate "toDate" 0 0,
    ConvertsToDate "convertsToDate" 0 0,
    ToDateTime "toDateTime" 0 0,
    ConvertsToDateTime "convertsToDateTime" 0 0,
    ToTime "toTime" 0 0,
    ConvertsToTime "convertsToTime" 0 0,
    ToQuantity "toQuantity" 0 1,
    ConvertsToQuantity "convertsToQuantity" 0 1,
    IndexOf "indexOf" 1 1,
    Substring "substring" 1 2,
    StartsWith "startsWith" 1 1,
    EndsWith "endsWith" 1 1,
    Contains "contains" 1 1,
    Upper "upper" 0 0,
    Lower "lower" 0 0,
    Replace "replace" 2 2,
    Matches "matches" 1 1,
    MatchesFull "matchesFull" 1 1,
    ReplaceMatches "replaceMatches" 2 2,
    Length "length" 0 0,
    ToChars "toChars" 0 0,
    Trim "trim" 0 0,
    Split "split" 1 1,
    Join "join" 0 1,
    Encode "encode" 1 1,
    Decode "decode" 1 1,
    Escape "escape" 1 1,
    Unescape "unescape" 1 1,
    Abs "abs" 0 0,
    Ceiling "ceiling" 0 0,
    Exp "exp" 0 0,
    Floor "floor" 0 0,
    Ln "ln" 0 0,
    Log "log" 1 1,
    Power "power" 1 1,
    Round "round" 0 1,
    Sqrt "sqrt" 0 0,
    Truncate "truncate" 0 0,
    Children "children" 0 0,
    Descendants "descendants" 0 0,
    Trace "trace" 1 2,
    Now "now" 0 0,
    TimeOfDay "timeOfDay" 0 0,
    Today "today" 0 0,
    Is "is" 1 1,
    As "as" 1 1,
    Type "type" 0 0,
    Not "not" 0 0,
    Aggregate "aggregate" 1 2,
    Sort "sort" 0 255,
    Extension "extension" 1 1,
    HasValue "hasValue" 0 0,
    GetValue "getValue" 0 0,
    Resolve "resolve" 0 0,
    MemberOf "memberOf" 1 1,
    ConformsTo "conformsTo" 1 1,
    HtmlChecks "htmlChecks" 0 0,
    Subsumes "subsumes" 1 1,
    SubsumedBy "subsumedBy" 1 1,
    LowBoundary "lowBoundary" 0 1,
    HighBoundary "highBoundary" 0 1,
    Precision "precision" 0 0,
    Comparable "comparable" 1 1,
    GetResourceKey "getResourceKey" 0 0,
    GetReferenceKey "getReferenceKey" 0 1,
}

impl Func {
    /// Whether the arguments are evaluated once per input item, with that item as `$this`
    /// (the others are evaluated once, in the caller's context).
    pub fn iterates(self) -> bool {
        matches!(
            self,
            Func::Exists
                | Func::All
                | Func::Where
                | Func::Select
                | Func::Repeat
                | Func::Aggregate
                | Func::Sort
                | Func::Trace
        )
    }

    /// Whether the result depends on the order of the input (`first()`, `skip()`, ...), which
    /// strict mode refuses on the unordered results of `children()` and `descendants()`.
    pub fn needs_order(self) -> bool {
        matches!(
            self,
            Func::First | Func::Last | Func::Tail | Func::Skip | Func::Take
        )
    }
}

/// A resolved type specifier (`Patient`, `FHIR.string`, `System.Integer`, `Quantity`).
#[derive(Debug)]
pub(crate) struct TypeTest {
    /// The FHIR type it names, if any.
    pub fhir: Option<&'static TypeInfo>,
    /// The System type it names, if any (an unqualified `Quantity` names both).
    pub system: Option<SystemType>,
    /// Names of the FHIR type's ancestors: walking up from an item's type, reaching one of
    /// them means the target cannot be reached any more.
    ancestors: Vec<&'static str>,
}

impl TypeTest {
    /// Resolves a type specifier; unknown names (outside the `System` namespace, where any
    /// name is allowed and simply never matches) are a semantic error.
    pub fn resolve(spec: &TypeSpecifier) -> Result<Self, String> {
        let (fhir_ns, system_ns) = match spec.namespace.as_deref() {
            None => (true, true),
            Some("FHIR") => (true, false),
            Some("System") => (false, true),
            Some(other) => return Err(format!("unknown type namespace '{other}'")),
        };
        let fhir = if fhir_ns {
            type_info(&spec.name).filter(|t| t.kind != TypeKind::Backbone)
        } else {
            None
        };
        let system = if system_ns {
            SystemType::from_name(&spec.name)
        } else {
            None
        };
        if fhir.is_none() && system.is_none() && spec.namespace.as_deref() != Some("System") {
            return Err(format!("unknown type '{spec}'"));
        }
        let mut ancestors = Vec::new();
        let mut cur = fhir;
        while let Some(t) = cur {
            let Some(base) = t.base.as_deref() else { break };
            let Some(b) = type_info(base) else { break };
            ancestors.push(&*b.name);
            cur = Some(b);
            if ancestors.len() > 16 {
                break;
            }
        }
        Ok(TypeTest {
            fhir,
            system,
            ancestors,
        })
    }

    /// Whether a FHIR type is the target type or derives from it.
    pub fn fhir_matches(&self, info: &'static TypeInfo, exact_primitive: bool) -> bool {
        let Some(target) = self.fhir else {
            return false;
        };
        if ptr::eq(info, target) || info.name == target.name {
            return true;
        }
        if exact_primitive && matches!(target.kind, TypeKind::Primitive(_)) {
            // `as`/`ofType` select primitives of exactly the type named: `code` values are
            // strings for `is(string)` but `ofType(string)` does not pick them.
            return false;
        }
        let mut cur = info;
        for _ in 0..16 {
            let Some(base) = cur.base.as_deref() else {
                return false;
            };
            if base == &*target.name {
                return true;
            }
            if self.ancestors.contains(&base) {
                return false;
            }
            match type_info(base) {
                Some(t) => cur = t,
                None => return false,
            }
        }
        false
    }
}

/// Compiles a parsed expression.
pub(crate) fn compile(src: &str, expr: &Expr) -> Result<Node, Error> {
    Compiler { src }.node(expr)
}

struct Compiler<'s> {
    src: &'s str,
}

impl Compiler<'_> {
    fn error(&self, pos: u32, message: impl Into<String>) -> Error {
        Error::semantic(self.src, pos, message)
    }

    fn boxed(&self, expr: &Expr) -> Result<Box<Node>, Error> {
        self.node(expr).map(Box::new)
    }

    fn node(&self, expr: &Expr) -> Result<Node, Error> {
        let pos = expr.pos;
        let kind = match &expr.kind {
            ExprKind::Literal(lit) => self.literal(lit, pos)?,
            ExprKind::Identifier(name) => NodeKind::Member {
                base: None,
                name: name.as_str().into(),
                type_filter: type_filter(name),
            },
            ExprKind::Variable(name) => NodeKind::Var(variable(name)),
            ExprKind::This => NodeKind::This,
            ExprKind::Index => NodeKind::Index,
            ExprKind::Total => NodeKind::Total,
            ExprKind::Member { base, name } => NodeKind::Member {
                base: Some(self.boxed(base)?),
                name: name.as_str().into(),
                type_filter: None,
            },
            ExprKind::Function { base, name, args } => {
                let base = base.as_deref().map(|b| self.boxed(b)).transpose()?;
                self.call(base, name, args, pos)?
            }
            ExprKind::Indexer { base, index } => NodeKind::Indexer {
                base: self.boxed(base)?,
                index: self.boxed(index)?,
            },
            ExprKind::Unary { op, operand } => NodeKind::Unary {
                negate: *op == UnaryOp::Minus,
                operand: self.boxed(operand)?,
            },
            ExprKind::Binary { op, lhs, rhs } => NodeKind::Binary {
                op: *op,
                lhs: self.boxed(lhs)?,
                rhs: self.boxed(rhs)?,
            },
            ExprKind::TypeOp {
                op,
                operand,
                type_spec,
            } => {
                let operand = self.boxed(operand)?;
                let test = TypeTest::resolve(type_spec).map_err(|m| self.error(pos, m))?;
                match op {
                    TypeOp::Is => NodeKind::Is { operand, test },
                    TypeOp::As => NodeKind::As { operand, test },
                }
            }
        };
        Ok(Node { kind, pos })
    }

    fn literal(&self, lit: &Literal, pos: u32) -> Result<NodeKind, Error> {
        let bad =
            |what: &str, text: &str| self.error(pos, format!("invalid {what} literal '{text}'"));
        let value = match lit {
            Literal::Empty => return Ok(NodeKind::Empty),
            Literal::Boolean(b) => Const::Boolean(*b),
            Literal::String(s) => Const::String(s.as_str().into()),
            Literal::Integer(i) | Literal::Long(i) => Const::Integer(*i),
            Literal::Decimal(text) => {
                Const::Decimal(Decimal::from_str_exact(text).map_err(|_| bad("decimal", text))?)
            }
            Literal::Date(text) => {
                Const::Date(Date::parse_literal(text).map_err(|e| self.error(pos, e.to_string()))?)
            }
            Literal::DateTime(text) => Const::DateTime(
                DateTime::parse_literal(text).map_err(|e| self.error(pos, e.to_string()))?,
            ),
            Literal::Time(text) => {
                Const::Time(Time::parse_literal(text).map_err(|e| self.error(pos, e.to_string()))?)
            }
            Literal::Quantity {
                value,
                unit,
                calendar,
            } => {
                let number = Decimal::from_str_exact(value).map_err(|_| bad("quantity", value))?;
                let q = if *calendar {
                    Quantity::from_calendar_keyword(number, unit)
                        .ok_or_else(|| bad("quantity", unit))?
                } else {
                    Quantity::new(number, unit.as_str())
                };
                Const::Quantity(q)
            }
        };
        Ok(NodeKind::Const(value))
    }

    fn call(
        &self,
        base: Option<Box<Node>>,
        name: &str,
        args: &[Expr],
        pos: u32,
    ) -> Result<NodeKind, Error> {
        let Some(&(_, min, max, func)) = FUNCTIONS.iter().find(|(n, ..)| *n == name) else {
            return Err(self.error(pos, format!("unknown function '{name}'")));
        };
        if args.len() < usize::from(min) || args.len() > usize::from(max) {
            let expected = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(self.error(
                pos,
                format!(
                    "function '{name}' takes {expected} argument(s), {} given",
                    args.len()
                ),
            ));
        }
        let mut extra = Extra::None;
        let mut compiled = Vec::with_capacity(args.len());
        match func {
            Func::GetReferenceKey if !args.is_empty() => {
                let spec = type_argument(&args[0])
                    .ok_or_else(|| self.error(args[0].pos, "expected a type name"))?;
                let test = TypeTest::resolve(&spec).map_err(|m| self.error(args[0].pos, m))?;
                extra = Extra::Type(test);
            }
            Func::Is | Func::As | Func::OfType => {
                let spec = type_argument(&args[0])
                    .ok_or_else(|| self.error(args[0].pos, "expected a type name"))?;
                let test = TypeTest::resolve(&spec).map_err(|m| self.error(args[0].pos, m))?;
                extra = Extra::Type(test);
            }
            Func::Sort => {
                let mut descending = Vec::with_capacity(args.len());
                for arg in args {
                    // A leading `-` on a sort key means descending order, not negation.
                    match &arg.kind {
                        ExprKind::Unary {
                            op: UnaryOp::Minus,
                            operand,
                        } => {
                            descending.push(true);
                            compiled.push(self.node(operand)?);
                        }
                        _ => {
                            descending.push(false);
                            compiled.push(self.node(arg)?);
                        }
                    }
                }
                extra = Extra::Sort(descending);
            }
            _ => {
                for arg in args {
                    compiled.push(self.node(arg)?);
                }
                if matches!(
                    func,
                    Func::Matches | Func::MatchesFull | Func::ReplaceMatches
                ) {
                    if let Some(NodeKind::Const(Const::String(pattern))) =
                        compiled.first().map(|n| &n.kind)
                    {
                        let re = build_regex(pattern, func == Func::MatchesFull)
                            .map_err(|m| self.error(args[0].pos, m))?;
                        extra = Extra::Regex(Box::new(re));
                    }
                }
            }
        }
        Ok(fuse(NodeKind::Call {
            base,
            func,
            args: compiled,
            extra,
        }))
    }
}

/// Rewrites `x.where(c).exists()` as `x.exists(c)`, which the specification defines as the
/// same thing and which can stop at the first match.
fn fuse(kind: NodeKind) -> NodeKind {
    match kind {
        NodeKind::Call {
            base: Some(base),
            func: Func::Exists,
            args,
            extra,
        } if args.is_empty() => match *base {
            Node {
                kind:
                    NodeKind::Call {
                        base: inner,
                        func: Func::Where,
                        args: criteria,
                        ..
                    },
                ..
            } => NodeKind::Call {
                base: inner,
                func: Func::Exists,
                args: criteria,
                extra,
            },
            other => NodeKind::Call {
                base: Some(Box::new(other)),
                func: Func::Exists,
                args,
                extra,
            },
        },
        other => other,
    }
}

/// Compiles a FHIRPath regular expression: `.` matches newlines too (single-line mode), and
/// `matchesFull` must match the whole string.
pub(crate) fn build_regex(pattern: &str, full: bool) -> Result<Regex, String> {
    let text = if full {
        format!("(?s)^(?:{pattern})$")
    } else {
        format!("(?s){pattern}")
    };
    Regex::new(&text).map_err(|e| format!("invalid regular expression: {e}"))
}

/// The type specifier an argument of `is()`, `as()` or `ofType()` names.
fn type_argument(arg: &Expr) -> Option<TypeSpecifier> {
    match &arg.kind {
        ExprKind::Identifier(name) => Some(TypeSpecifier {
            namespace: None,
            name: name.clone(),
        }),
        ExprKind::Member { base, name } => match &base.kind {
            ExprKind::Identifier(ns) => Some(TypeSpecifier {
                namespace: Some(ns.clone()),
                name: name.clone(),
            }),
            _ => None,
        },
        _ => None,
    }
}

/// For a leading identifier that names a FHIR resource or data type (capitalised, as
/// element names never are), the type it selects.
fn type_filter(name: &str) -> Option<&'static TypeInfo> {
    if !name.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    type_info(name).filter(|t| t.kind != TypeKind::Backbone)
}

/// Resolves a `%` variable: the context variables, the constants of the FHIR specification,
/// or one the caller must supply.
fn variable(name: &str) -> Var {
    match name {
        "resource" => Var::Resource,
        "rootResource" => Var::RootResource,
        "context" => Var::Context,
        "ucum" => Var::Text("http://unitsofmeasure.org".into()),
        "sct" => Var::Text("http://snomed.info/sct".into()),
        "loinc" => Var::Text("http://loinc.org".into()),
        _ => {
            if let Some(vs) = name.strip_prefix("vs-") {
                Var::Text(format!("http://hl7.org/fhir/ValueSet/{vs}").into())
            } else if let Some(ext) = name.strip_prefix("ext-") {
                Var::Text(format!("http://hl7.org/fhir/StructureDefinition/{ext}").into())
            } else {
                Var::User(name.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhirpath::parser::parse;

    fn compile_src(src: &str) -> Result<Node, Error> {
        compile(src, &parse(src).unwrap())
    }

    #[test]
    fn unknown_functions_and_arity_are_semantic_errors() {
        assert!(matches!(
            compile_src("name.foo()"),
            Err(Error::Semantic { .. })
        ));
        assert!(matches!(
            compile_src("name.first(1)"),
            Err(Error::Semantic { .. })
        ));
        assert!(matches!(
            compile_src("iif(true)"),
            Err(Error::Semantic { .. })
        ));
        assert!(compile_src("iif(true, 1, 2)").is_ok());
        let Err(Error::Semantic { col, .. }) = compile_src("a.b.where()") else {
            panic!("expected a semantic error")
        };
        assert_eq!(col, 5);
    }

    #[test]
    fn types_resolve() {
        let spec = |ns: Option<&str>, name: &str| TypeSpecifier {
            namespace: ns.map(str::to_string),
            name: name.to_string(),
        };
        let q = TypeTest::resolve(&spec(None, "Quantity")).unwrap();
        assert!(q.fhir.is_some() && q.system == Some(SystemType::Quantity));
        assert!(TypeTest::resolve(&spec(Some("System"), "Patient")).is_ok());
        assert!(TypeTest::resolve(&spec(None, "string1")).is_err());
        let string = TypeTest::resolve(&spec(None, "string")).unwrap();
        let code = type_info("code").unwrap();
        assert!(string.fhir_matches(code, false));
        assert!(!string.fhir_matches(code, true));
        let resource = TypeTest::resolve(&spec(Some("FHIR"), "Resource")).unwrap();
        assert!(resource.fhir_matches(type_info("Patient").unwrap(), true));
        let id = TypeTest::resolve(&spec(None, "id")).unwrap();
        assert!(!id.fhir_matches(code, false));
    }

    #[test]
    fn literals_are_checked() {
        assert!(compile_src("@2015-13-01").is_err());
        assert!(compile_src("@T14:34:28").is_ok());
        assert!(compile_src("%`vs-administrative-gender`").is_ok());
    }
}
