//! What validation reports: [`Issue`]s with a severity, an OperationOutcome issue type, a
//! message, the FHIRPath location of the element and its `line:column` in the submitted JSON;
//! and their rendering as a FHIR OperationOutcome or as text for people.

use crate::model::json::write_str;
use std::fmt;

/// Issue severity, as in OperationOutcome.issue.severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The content could not be processed at all.
    Fatal,
    /// The content does not conform.
    Error,
    /// The content is suspicious or a recommendation is not followed.
    Warning,
    /// For information only.
    Information,
}

impl Severity {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }

    /// Whether this severity makes content non-conformant (`error` or `fatal`).
    pub fn is_error(self) -> bool {
        matches!(self, Severity::Fatal | Severity::Error)
    }

    /// Parses a constraint severity (`error`, `warning`); anything else is `Information`.
    pub fn from_code(code: &str) -> Severity {
        match code {
            "fatal" => Severity::Fatal,
            "error" => Severity::Error,
            "warning" => Severity::Warning,
            _ => Severity::Information,
        }
    }
}

/// The OperationOutcome issue type (a subset of `http://hl7.org/fhir/issue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueType {
    /// Not well-formed: bad JSON.
    Invalid,
    /// A structural problem: unknown element, wrong JSON type.
    Structure,
    /// A required element is missing or a cardinality is exceeded.
    Required,
    /// A value is not valid for its type or its fixed/pattern value.
    Value,
    /// An invariant does not hold.
    Invariant,
    /// A code is not valid (not in a required value set, unknown code).
    CodeInvalid,
    /// Something the validator cannot check (an unknown code system, an unknown profile).
    NotSupported,
    /// An extension is not known or not allowed.
    Extension,
    /// Something that is not right but not an error of the other kinds.
    BusinessRule,
    /// Information.
    Informational,
    /// Processing failed (an invariant could not be evaluated).
    Processing,
    /// A reference could not be resolved or points at the wrong type.
    NotFound,
}

impl IssueType {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::CodeInvalid => "code-invalid",
            IssueType::NotSupported => "not-supported",
            IssueType::Extension => "extension",
            IssueType::BusinessRule => "business-rule",
            IssueType::Informational => "informational",
            IssueType::Processing => "processing",
            IssueType::NotFound => "not-found",
        }
    }
}

/// One validation finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// How serious it is.
    pub severity: Severity,
    /// What kind of problem.
    pub kind: IssueType,
    /// What is wrong, for people.
    pub message: String,
    /// FHIRPath location (`Procedure.extension[1].value.ofType(Quantity)`).
    pub location: String,
    /// 1-based line in the submitted JSON, when known.
    pub line: Option<usize>,
    /// 1-based column in the submitted JSON, when known.
    pub column: Option<usize>,
    /// The constraint key or rule that produced the issue (`ele-1`), if any.
    pub rule: Option<String>,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, "{l}:{c}: ")?;
        }
        write!(f, "{}: ", self.severity.code())?;
        if !self.location.is_empty() {
            write!(f, "{}: ", self.location)?;
        }
        f.write_str(&self.message)?;
        if let Some(r) = &self.rule {
            write!(f, " [{r}]")?;
        }
        Ok(())
    }
}

/// Whether any issue is an error or fatal.
pub fn has_errors(issues: &[Issue]) -> bool {
    issues.iter().any(|i| i.severity.is_error())
}

/// Renders issues as a FHIR R4 OperationOutcome (JSON). An empty list gives the single
/// informational "no issues" entry FHIR expects (an OperationOutcome needs one issue).
pub fn operation_outcome(issues: &[Issue]) -> String {
    let mut out = String::from("{\"resourceType\":\"OperationOutcome\",\"issue\":[");
    if issues.is_empty() {
        out.push_str(
            "{\"severity\":\"information\",\"code\":\"informational\",\"diagnostics\":\"No issues detected\"}",
        );
    }
    for (i, issue) in issues.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"severity\":");
        write_str(&mut out, issue.severity.code());
        out.push_str(",\"code\":");
        write_str(&mut out, issue.kind.code());
        out.push_str(",\"details\":{\"text\":");
        write_str(&mut out, &issue.message);
        out.push('}');
        if !issue.location.is_empty() {
            out.push_str(",\"expression\":[");
            write_str(&mut out, &issue.location);
            out.push(']');
        }
        let mut ext = Vec::new();
        if let (Some(l), Some(c)) = (issue.line, issue.column) {
            ext.push(format!(
                "{{\"url\":\"http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-line\",\"valueInteger\":{l}}},{{\"url\":\"http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-col\",\"valueInteger\":{c}}}"
            ));
        }
        if let Some(r) = &issue.rule {
            let mut s = String::from(
                "{\"url\":\"http://hl7.org/fhir/StructureDefinition/operationoutcome-message-id\",\"valueString\":",
            );
            write_str(&mut s, r);
            s.push('}');
            ext.push(s);
        }
        if !ext.is_empty() {
            out.push_str(",\"extension\":[");
            out.push_str(&ext.join(","));
            out.push(']');
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}
