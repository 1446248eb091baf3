//! The patch documents of the FHIR `patch` interaction (R4 http.html#patch): JSON Patch
//! (RFC 6902) over the project's [`Json`] tree — `add`, `remove`, `replace`, `move`, `copy`
//! and `test`, with JSON Pointers (RFC 6901) — and FHIRPath Patch
//! (`super::fhirpath_patch`), behind [`PatchDoc`]. A patch applies entirely or not at all:
//! the caller patches a copy and keeps it only when every operation succeeded.

use crate::model::json::Json;

/// A patch of either kind.
#[derive(Debug, Clone)]
pub enum PatchDoc {
    /// JSON Patch (`application/json-patch+json`, or a Binary in a Bundle).
    Json(Patch),
    /// FHIRPath Patch (a Parameters resource).
    FhirPath(super::fhirpath_patch::FhirPathPatch),
}

impl PatchDoc {
    /// Applies the patch to `doc`, in order. On failure `doc` may be half-patched: apply
    /// to a copy.
    ///
    /// # Errors
    /// 400 for a malformed patch, 422 for one that does not apply.
    pub fn apply(&self, doc: &mut Json) -> Result<(), super::error::ApiError> {
        match self {
            PatchDoc::Json(p) => Ok(p.apply(doc)?),
            PatchDoc::FhirPath(p) => p.apply(doc),
        }
    }

    /// The JSON values the patch adds, replaces or tests (for rewriting references in a
    /// transaction).
    pub fn values_mut(&mut self) -> Vec<&mut Json> {
        match self {
            PatchDoc::Json(p) => p
                .operations
                .iter_mut()
                .filter_map(|op| match op {
                    Operation::Add { value, .. }
                    | Operation::Replace { value, .. }
                    | Operation::Test { value, .. } => Some(value),
                    _ => None,
                })
                .collect(),
            PatchDoc::FhirPath(p) => p.values_mut(),
        }
    }
}

/// Why a patch could not be read or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is not a JSON Patch (not an array of operation objects, an
    /// unknown `op`, a missing member, a pointer that does not parse).
    #[error("the JSON Patch document is malformed: {0}")]
    Malformed(String),
    /// An operation does not apply to the resource (a path that does not exist, an index
    /// out of range, a move into its own child).
    #[error("JSON Patch operation {index} ({op} {path}) cannot be applied: {reason}")]
    Inapplicable {
        /// The operation's position in the patch (from 0).
        index: usize,
        /// Its `op`.
        op: &'static str,
        /// Its `path`.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A `test` operation found a different value.
    #[error("JSON Patch test operation {index} failed: the value at {path} is not the one given")]
    TestFailed {
        /// The operation's position in the patch (from 0).
        index: usize,
        /// Its `path`.
        path: String,
    },
}

/// One JSON Patch operation.
#[derive(Debug, Clone)]
pub enum Operation {
    /// Adds `value` at `path` (inserting into arrays, `-` appending).
    Add {
        /// Target.
        path: Pointer,
        /// Value.
        value: Json,
    },
    /// Removes the value at `path`.
    Remove {
        /// Target.
        path: Pointer,
    },
    /// Replaces the value at `path` (which must exist).
    Replace {
        /// Target.
        path: Pointer,
        /// Value.
        value: Json,
    },
    /// Removes the value at `from` and adds it at `path`.
    Move {
        /// Source.
        from: Pointer,
        /// Target.
        path: Pointer,
    },
    /// Adds a copy of the value at `from` at `path`.
    Copy {
        /// Source.
        from: Pointer,
        /// Target.
        path: Pointer,
    },
    /// Checks that the value at `path` equals `value`.
    Test {
        /// Target.
        path: Pointer,
        /// Expected value.
        value: Json,
    },
}

impl Operation {
    fn name(&self) -> &'static str {
        match self {
            Operation::Add { .. } => "add",
            Operation::Remove { .. } => "remove",
            Operation::Replace { .. } => "replace",
            Operation::Move { .. } => "move",
            Operation::Copy { .. } => "copy",
            Operation::Test { .. } => "test",
        }
    }

    fn path(&self) -> &Pointer {
        match self {
            Operation::Add { path, .. }
            | Operation::Remove { path }
            | Operation::Replace { path, .. }
            | Operation::Move { path, .. }
            | Operation::Copy { path, .. }
            | Operation::Test { path, .. } => path,
        }
    }
}

/// A JSON Pointer: its reference tokens, unescaped (`~1` is `/`, `~0` is `~`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses RFC 6901 text (`""` is the whole document, else it starts with `/`).
    ///
    /// # Errors
    /// [`PatchError::Malformed`] for text not starting with `/` or a bad `~` escape.
    pub fn parse(text: &str) -> Result<Pointer, PatchError> {
        if text.is_empty() {
            return Ok(Pointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(PatchError::Malformed(format!(
                "the pointer {text:?} does not start with '/'"
            )));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(PatchError::Malformed(format!(
                                "the pointer {text:?} has a '~' not followed by 0 or 1"
                            )))
                        }
                    }
                } else {
                    token.push(c);
                }
            }
            tokens.push(token);
        }
        Ok(Pointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// Whether `self` is `other` or one of its ancestors.
    fn is_prefix_of(&self, other: &Pointer) -> bool {
        other.tokens.len() >= self.tokens.len() && other.tokens.starts_with(&self.tokens)
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.text.is_empty() {
            f.write_str("(root)")
        } else {
            f.write_str(&self.text)
        }
    }
}

/// A JSON Patch document: its operations in order.
#[derive(Debug, Clone)]
pub struct Patch {
    /// The operations.
    pub operations: Vec<Operation>,
}

impl Patch {
    /// Reads a JSON Patch document (an array of operation objects).
    ///
    /// # Errors
    /// [`PatchError::Malformed`] for anything that is not a JSON Patch.
    pub fn from_json(doc: &Json) -> Result<Patch, PatchError> {
        let Json::Array(items) = doc else {
            return Err(PatchError::Malformed(
                "a JSON Patch is an array of operations".into(),
            ));
        };
        let mut operations = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if !matches!(item, Json::Object(_)) {
                return Err(PatchError::Malformed(format!(
                    "operation {i} is not an object"
                )));
            }
            let string = |key: &str| -> Result<&str, PatchError> {
                item.get(key).and_then(Json::as_str).ok_or_else(|| {
                    PatchError::Malformed(format!("operation {i} has no string member {key:?}"))
                })
            };
            let pointer =
                |key: &str| -> Result<Pointer, PatchError> { Pointer::parse(string(key)?) };
            let value = || -> Result<Json, PatchError> {
                item.get("value").cloned().ok_or_else(|| {
                    PatchError::Malformed(format!("operation {i} has no member \"value\""))
                })
            };
            let op = match string("op")? {
                "add" => Operation::Add {
                    path: pointer("path")?,
                    value: value()?,
                },
                "remove" => Operation::Remove {
                    path: pointer("path")?,
                },
                "replace" => Operation::Replace {
                    path: pointer("path")?,
                    value: value()?,
                },
                "move" => Operation::Move {
                    from: pointer("from")?,
                    path: pointer("path")?,
                },
                "copy" => Operation::Copy {
                    from: pointer("from")?,
                    path: pointer("path")?,
                },
                "test" => Operation::Test {
                    path: pointer("path")?,
                    value: value()?,
                },
                other => {
                    return Err(PatchError::Malformed(format!(
                        "operation {i} has the unknown op {other:?}"
                    )))
                }
            };
            operations.push(op);
        }
        Ok(Patch { operations })
    }

    /// Applies every operation to `doc`, in order. On failure `doc` may be half-patched:
    /// apply to a copy.
    ///
    /// # Errors
    /// [`PatchError::Inapplicable`] or [`PatchError::TestFailed`] for the first operation
    /// that fails.
    pub fn apply(&self, doc: &mut Json) -> Result<(), PatchError> {
        for (index, op) in self.operations.iter().enumerate() {
            let fail = |reason: String| PatchError::Inapplicable {
                index,
                op: op.name(),
                path: op.path().to_string(),
                reason,
            };
            match op {
                Operation::Add { path, value } => add(doc, path, value.clone()).map_err(fail)?,
                Operation::Remove { path } => {
                    remove(doc, path).map_err(fail)?;
                }
                Operation::Replace { path, value } => {
                    *lookup_mut(doc, &path.tokens).map_err(fail)? = value.clone();
                }
                Operation::Move { from, path } => {
                    if from.is_prefix_of(path) && from != path {
                        return Err(fail(format!("{from} cannot be moved into its own child")));
                    }
                    if from != path {
                        let taken = remove(doc, from).map_err(fail)?;
                        add(doc, path, taken).map_err(fail)?;
                    }
                }
                Operation::Copy { from, path } => {
                    let copied = lookup(doc, &from.tokens).map_err(fail)?.clone();
                    add(doc, path, copied).map_err(fail)?;
                }
                Operation::Test { path, value } => {
                    let found = lookup(doc, &path.tokens).map_err(fail)?;
                    if !equal(found, value) {
                        return Err(PatchError::TestFailed {
                            index,
                            path: path.to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// RFC 6902 §4.6 equality: numbers by value (`1.0` equals `1`), objects whatever their
/// member order, arrays item by item, strings and literals exactly.
fn equal(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            let value = |n: &str| {
                n.parse::<rust_decimal::Decimal>()
                    .ok()
                    .or_else(|| rust_decimal::Decimal::from_scientific(n).ok())
                    .map(|d| d.normalize())
            };
            match (value(x), value(y)) {
                (Some(p), Some(q)) => p == q,
                _ => x == y,
            }
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.iter()
                        .find(|(k2, _)| k2 == k)
                        .is_some_and(|(_, v2)| equal(v, v2))
                })
        }
        _ => a.same(b),
    }
}

/// The array index a token names (`0`, `12`; no sign, no leading zero), within `0..=max`.
fn array_index(token: &str, max: usize) -> Result<usize, String> {
    let well_formed = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    let n = well_formed
        .then(|| token.parse::<usize>().ok())
        .flatten()
        .ok_or_else(|| format!("{token:?} is not an array index"))?;
    if n > max {
        return Err(format!("index {n} is out of range (at most {max})"));
    }
    Ok(n)
}

fn lookup<'a>(doc: &'a Json, tokens: &[String]) -> Result<&'a Json, String> {
    let mut at = doc;
    for t in tokens {
        at = match at {
            Json::Object(_) => at.get(t).ok_or_else(|| format!("no member {t:?}"))?,
            Json::Array(items) => {
                if items.is_empty() {
                    return Err(format!("index {t} of an empty array"));
                }
                let i = array_index(t, items.len() - 1)?;
                &items[i]
            }
            _ => {
                return Err(format!(
                    "{t:?} below a value that is not an object or array"
                ))
            }
        };
    }
    Ok(at)
}

fn lookup_mut<'a>(doc: &'a mut Json, tokens: &[String]) -> Result<&'a mut Json, String> {
    let mut at = doc;
    for t in tokens {
        at = match at {
            Json::Object(members) => members
                .iter_mut()
                .find(|(k, _)| k == t)
                .map(|(_, v)| v)
                .ok_or_else(|| format!("no member {t:?}"))?,
            Json::Array(items) => {
                if items.is_empty() {
                    return Err(format!("index {t} of an empty array"));
                }
                let i = array_index(t, items.len() - 1)?;
                &mut items[i]
            }
            _ => {
                return Err(format!(
                    "{t:?} below a value that is not an object or array"
                ))
            }
        };
    }
    Ok(at)
}

/// RFC 6902 §4.1: the parent must exist; an object member is set (replacing one of that
/// name), an array item inserted before the index (`-` appends); the root is replaced.
fn add(doc: &mut Json, path: &Pointer, value: Json) -> Result<(), String> {
    let Some((last, parent)) = path.tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match lookup_mut(doc, parent)? {
        Json::Object(members) => {
            match members.iter_mut().find(|(k, _)| k == last) {
                Some((_, v)) => *v = value,
                None => members.push((last.clone(), value)),
            }
            Ok(())
        }
        Json::Array(items) => {
            let i = if last == "-" {
                items.len()
            } else {
                array_index(last, items.len())?
            };
            items.insert(i, value);
            Ok(())
        }
        _ => Err("the parent is not an object or array".into()),
    }
}

/// RFC 6902 §4.2: the target must exist; returns what was removed.
fn remove(doc: &mut Json, path: &Pointer) -> Result<Json, String> {
    let Some((last, parent)) = path.tokens.split_last() else {
        return Err("the whole document cannot be removed".into());
    };
    match lookup_mut(doc, parent)? {
        Json::Object(members) => {
            let at = members
                .iter()
                .position(|(k, _)| k == last)
                .ok_or_else(|| format!("no member {last:?}"))?;
            Ok(members.remove(at).1)
        }
        Json::Array(items) => {
            if items.is_empty() {
                return Err(format!("index {last} of an empty array"));
            }
            let i = array_index(last, items.len() - 1)?;
            Ok(items.remove(i))
        }
        _ => Err("the parent is not an object or array".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Json {
        Json::parse(text, 32).expect("json")
    }

    fn patched(doc: &str, patch: &str) -> Result<String, PatchError> {
        let mut d = json(doc);
        Patch::from_json(&json(patch))?.apply(&mut d)?;
        Ok(d.to_text())
    }

    #[test]
    fn each_operation() {
        let doc = r#"{"a":{"b":[1,2]},"c":"x"}"#;
        assert_eq!(
            patched(doc, r#"[{"op":"add","path":"/a/b/1","value":9}]"#).as_deref(),
            Ok(r#"{"a":{"b":[1,9,2]},"c":"x"}"#)
        );
        assert_eq!(
            patched(doc, r#"[{"op":"add","path":"/a/b/-","value":3}]"#).as_deref(),
            Ok(r#"{"a":{"b":[1,2,3]},"c":"x"}"#)
        );
        assert_eq!(
            patched(doc, r#"[{"op":"remove","path":"/a/b/0"}]"#).as_deref(),
            Ok(r#"{"a":{"b":[2]},"c":"x"}"#)
        );
        assert_eq!(
            patched(doc, r#"[{"op":"replace","path":"/c","value":"y"}]"#).as_deref(),
            Ok(r#"{"a":{"b":[1,2]},"c":"y"}"#)
        );
        assert_eq!(
            patched(doc, r#"[{"op":"move","from":"/c","path":"/a/d"}]"#).as_deref(),
            Ok(r#"{"a":{"b":[1,2],"d":"x"}}"#)
        );
        assert_eq!(
            patched(doc, r#"[{"op":"copy","from":"/a/b/1","path":"/e"}]"#).as_deref(),
            Ok(r#"{"a":{"b":[1,2]},"c":"x","e":2}"#)
        );
        assert_eq!(
            patched(doc, r#"[{"op":"test","path":"/a/b","value":[1,2]}]"#).as_deref(),
            Ok(doc)
        );
        // Numbers compare by value, objects whatever their member order.
        assert!(patched(
            r#"{"n":1.50,"o":{"x":1,"y":2}}"#,
            r#"[{"op":"test","path":"/n","value":1.5},{"op":"test","path":"/o","value":{"y":2,"x":1.0}}]"#
        )
        .is_ok());
        assert!(patched(
            r#"{"n":1.50}"#,
            r#"[{"op":"test","path":"/n","value":"1.50"}]"#
        )
        .is_err());
        // RFC 6901 escapes.
        assert_eq!(
            patched(
                r#"{"a/b":1,"m~n":2}"#,
                r#"[{"op":"remove","path":"/a~1b"},{"op":"remove","path":"/m~0n"}]"#
            )
            .as_deref(),
            Ok("{}")
        );
    }

    #[test]
    fn failures() {
        let doc = r#"{"a":[1]}"#;
        assert!(matches!(
            patched(doc, r#"[{"op":"test","path":"/a/0","value":2}]"#),
            Err(PatchError::TestFailed { index: 0, .. })
        ));
        for bad in [
            r#"[{"op":"replace","path":"/x","value":1}]"#,
            r#"[{"op":"remove","path":"/a/1"}]"#,
            r#"[{"op":"add","path":"/a/01","value":1}]"#,
            r#"[{"op":"add","path":"/x/y","value":1}]"#,
            r#"[{"op":"move","from":"/a","path":"/a/0"}]"#,
        ] {
            assert!(
                matches!(patched(doc, bad), Err(PatchError::Inapplicable { .. })),
                "{bad}"
            );
        }
        for malformed in [
            r#"{"op":"add"}"#,
            r#"[{"op":"frobnicate","path":"/a"}]"#,
            r#"[{"op":"add","path":"a","value":1}]"#,
            r#"[{"op":"add","path":"/a"}]"#,
            r#"[{"op":"add","path":"/a~2","value":1}]"#,
        ] {
            assert!(
                matches!(patched(doc, malformed), Err(PatchError::Malformed(_))),
                "{malformed}"
            );
        }
    }
}
