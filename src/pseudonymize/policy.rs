//! The de-identification policy: a TOML file (`profiles/deidentify/README.md` documents
//! every key), the shipped default embedded in the binary.

use serde::Deserialize;
use std::path::Path;

/// The shipped default policy (`profiles/deidentify/default.toml`).
pub const DEFAULT: &str = include_str!("../../profiles/deidentify/default.toml");

/// What happens to the identifiers of practitioners (`Practitioner`, `PractitionerRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdentifierAction {
    /// Kept as sent (public registry numbers such as NPIs).
    #[default]
    Keep,
    /// Removed.
    Remove,
    /// Replaced by a keyed pseudonym in the same system.
    Pseudonymize,
}

/// What is kept of `Patient.birthDate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BirthDate {
    /// The year only (`1932`).
    #[default]
    Year,
    /// Nothing.
    Remove,
}

/// A de-identification policy, as read from its file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The version recorded in every processed resource (`meta.tag`).
    pub version: String,
    /// The identifier system of study subject pseudonyms.
    pub subject_system: String,
    /// Elements removed, as `Type.element[.child...]` (`*` for any type).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Extension URLs removed wherever they occur.
    #[serde(default)]
    pub remove_extensions: Vec<String>,
    /// Free-text elements searched for the patient's direct identifiers; a hit rejects
    /// the resource.
    #[serde(default)]
    pub scan: Vec<String>,
    /// What happens to practitioner identifiers.
    #[serde(default)]
    pub practitioner_identifiers: IdentifierAction,
    /// What is kept of the birth date.
    #[serde(default)]
    pub birth_date: BirthDate,
    /// Largest per-patient date shift in days (0: dates are kept).
    #[serde(default)]
    pub date_shift_days: u32,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file cannot be read.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Not TOML, or not a policy.
    #[error("{0}: {1}")]
    Invalid(String, String),
}

impl Policy {
    /// The shipped default policy.
    ///
    /// # Errors
    /// Never in a correct build (the embedded file is tested).
    pub fn default_policy() -> Result<Policy, PolicyError> {
        Policy::parse(DEFAULT, "default policy")
    }

    /// Reads a policy file.
    ///
    /// # Errors
    /// When it cannot be read or is not a valid policy.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Io(name.clone(), e))?;
        Policy::parse(&text, &name)
    }

    /// Parses policy text; `name` names it in errors.
    ///
    /// # Errors
    /// When the text is not TOML, has unknown keys or wrong types, or a path is malformed.
    pub fn parse(text: &str, name: &str) -> Result<Policy, PolicyError> {
        let bad = |m: String| PolicyError::Invalid(name.to_string(), m);
        let table = toml::de::DeTable::parse(text).map_err(|e| bad(e.to_string()))?;
        let value = table_value(table.get_ref());
        let policy: Policy = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if policy.version.trim().is_empty() {
            return Err(bad("version must not be empty".into()));
        }
        if !policy.subject_system.contains(':') {
            return Err(bad("subject_system must be an absolute URI".into()));
        }
        for (key, paths) in [("remove", &policy.remove), ("scan", &policy.scan)] {
            for p in paths {
                let parts: Vec<&str> = p.split('.').collect();
                if parts.len() < 2 || parts.iter().any(|s| s.is_empty()) {
                    return Err(bad(format!(
                        "{key}: {p:?} is not a path Type.element (or *.element)"
                    )));
                }
            }
        }
        if policy.date_shift_days > 3650 {
            return Err(bad("date_shift_days must be at most 3650".into()));
        }
        Ok(policy)
    }

    /// The element paths of `list` that apply to `res_type`, without their type.
    pub(crate) fn paths<'a>(
        list: &'a [String],
        res_type: &'a str,
    ) -> impl Iterator<Item = Vec<&'a str>> + 'a {
        list.iter().filter_map(move |p| {
            let mut parts = p.split('.');
            let t = parts.next()?;
            (t == "*" || t == res_type).then(|| parts.collect())
        })
    }
}

fn table_value(t: &toml::de::DeTable) -> serde_json::Value {
    serde_json::Value::Object(
        t.iter()
            .map(|(k, v)| (k.get_ref().to_string(), value(v.get_ref())))
            .collect(),
    )
}

fn value(v: &toml::de::DeValue) -> serde_json::Value {
    use serde_json::Value;
    use toml::de::DeValue;
    match v {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => i
            .as_str()
            .parse::<i64>()
            .map_or_else(|_| Value::String(i.as_str().to_string()), Value::from),
        DeValue::Float(f) => Value::String(f.as_str().to_string()),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(items.iter().map(|i| value(i.get_ref())).collect()),
        DeValue::Table(t) => table_value(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_reads() {
        let p = Policy::default_policy().expect("default policy");
        assert_eq!(p.subject_system, "https://a-imagio.eu/fhir/sid/subject");
        assert!(p.remove.iter().any(|r| r == "Patient.name"));
        assert!(p.scan.iter().any(|r| r == "*.note"));
    }

    #[test]
    fn unknown_keys_and_bad_paths_are_refused() {
        let base = "version = \"v\"\nsubject_system = \"urn:x\"\n";
        assert!(Policy::parse(&format!("{base}colour = 1\n"), "p").is_err());
        assert!(Policy::parse(&format!("{base}remove = [\"name\"]\n"), "p").is_err());
        assert!(Policy::parse(&format!("{base}practitioner_identifiers = \"x\"\n"), "p").is_err());
        let ok = Policy::parse(&format!("{base}remove = [\"*.text\"]\n"), "p").expect("ok");
        assert_eq!(Policy::paths(&ok.remove, "Observation").count(), 1);
        assert!(Policy::parse("version = ", "p").is_err());
    }
}
