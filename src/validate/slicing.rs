//! Slicing: assigning each value of a sliced element to the slice whose discriminators it
//! meets (`value`, `pattern`, `type`, `profile`, `exists`), then checking slice
//! cardinalities, closed and `openAtEnd` rules and order, and each value against its slice.

use super::check::Walk;
use super::issue::{IssueType, Severity};
use super::pattern;
use super::profile::{Discriminator, Node, Profile};
use crate::model::{Element, Value};
use std::sync::Arc;

/// Checks the values of sliced element `node` (a child of `el`).
pub(crate) fn check<'a>(
    walk: &mut Walk<'_, 'a>,
    el: &'a Element,
    values: &'a [Value],
    profile: &Arc<Profile>,
    node: usize,
) {
    let n = &profile.nodes[node];
    let Some(slicing) = &n.slicing else { return };
    let repeats = walk.repeats(el, n);
    let mut counts = vec![0usize; n.slices.len()];
    let mut last_slice = 0;
    let mut unmatched_seen = false;
    for (i, v) in values.iter().enumerate() {
        let len = walk.location.len();
        if repeats {
            super::check::push_index(&mut walk.location, i);
        }
        // What each discriminator's path finds in the value does not depend on the slice.
        let found: smallvec::SmallVec<[Vec<&Value>; 2]> = slicing
            .discriminators
            .iter()
            .map(|d| at_path(v, &d.path))
            .collect();
        let matched = n.slices.iter().position(|&s| {
            slicing
                .discriminators
                .iter()
                .zip(&found)
                .all(|(d, f)| meets(walk, f, profile, s, d))
                && !slicing.discriminators.is_empty()
        });
        match matched {
            Some(k) => {
                counts[k] += 1;
                if slicing.ordered && k < last_slice {
                    walk.report(
                        Severity::Error,
                        IssueType::Structure,
                        v.pos(),
                        format!(
                            "{}: slice '{}' is out of order (slices are ordered)",
                            n.path,
                            profile.nodes[n.slices[k]]
                                .slice_name
                                .as_deref()
                                .unwrap_or("?")
                        ),
                        None,
                    );
                }
                if slicing.rules == "openAtEnd" && unmatched_seen {
                    walk.report(
                        Severity::Error,
                        IssueType::Structure,
                        v.pos(),
                        format!(
                            "{}: values that match no slice must come last (openAtEnd)",
                            n.path
                        ),
                        None,
                    );
                }
                last_slice = k;
                walk.value(v, profile, n.slices[k]);
            }
            None => {
                if slicing.rules == "closed" {
                    walk.report(
                        Severity::Error,
                        IssueType::Structure,
                        v.pos(),
                        format!(
                            "{}: value matches none of the slices and the slicing is closed",
                            n.path
                        ),
                        None,
                    );
                }
                unmatched_seen = true;
                walk.value(v, profile, node);
            }
        }
        walk.location.truncate(len);
    }
    let pos = values.first().map_or(el.pos, Value::pos);
    for (k, &s) in n.slices.iter().enumerate() {
        walk.cardinality(&profile.nodes[s], counts[k], pos);
    }
}

/// Whether a value meets discriminator `d` of slice `slice`, given what `d`'s path finds
/// in it.
fn meets(
    walk: &mut Walk<'_, '_>,
    found: &[&Value],
    profile: &Arc<Profile>,
    slice: usize,
    d: &Discriminator,
) -> bool {
    let target = descendant(profile, slice, &d.path);
    match d.kind.as_str() {
        "value" | "pattern" => {
            let expected = target
                .and_then(|t| {
                    profile.nodes[t]
                        .fixed
                        .as_ref()
                        .or(profile.nodes[t].pattern.as_ref())
                })
                .map(std::borrow::Cow::Borrowed)
                .or_else(|| extension_url(profile, slice, &d.path).map(std::borrow::Cow::Owned));
            match (expected, target) {
                (Some(e), _) => found.iter().any(|x| pattern::matches(x, &e)),
                // The slice does not constrain this path: it does not discriminate.
                (None, Some(_)) => true,
                (None, None) => false,
            }
        }
        "exists" => {
            let Some(t) = target else { return false };
            let must = profile.nodes[t].min >= 1;
            let forbidden = profile.nodes[t].max == Some(0);
            if must {
                !found.is_empty()
            } else if forbidden {
                found.is_empty()
            } else {
                true
            }
        }
        "type" => {
            let node = &profile.nodes[target.unwrap_or(slice)];
            !found.is_empty()
                && found.iter().all(|x| {
                    let info = x.info();
                    node.types
                        .iter()
                        .any(|t| t.code == *info.name || info.is_a(&t.code))
                })
        }
        "profile" => {
            let node = &profile.nodes[target.unwrap_or(slice)];
            let urls: Vec<String> = node.types.iter().flat_map(|t| t.profiles.clone()).collect();
            !found.is_empty()
                && found
                    .iter()
                    .all(|x| urls.iter().any(|u| conforms(walk, x, u)))
        }
        _ => false,
    }
}

/// Whether a value conforms to a profile, checked silently.
fn conforms(walk: &mut Walk<'_, '_>, v: &Value, url: &str) -> bool {
    let Ok(p) = walk.validator.profile(url) else {
        return false;
    };
    let Value::Element(e) = v else { return false };
    let mut probe = Walk::new(walk.validator, None);
    probe.resources = walk.resources.clone();
    probe.location = walk.location.clone();
    probe.element(e, &p, 0);
    !super::issue::has_errors(&probe.issues)
}

/// For slices of extensions discriminated by `url`: the slice's extension definition URL.
fn extension_url(profile: &Profile, slice: usize, path: &str) -> Option<serde_json::Value> {
    if path != "url" {
        return None;
    }
    let n: &Node = &profile.nodes[slice];
    n.types
        .iter()
        .find(|t| t.code == "Extension")
        .and_then(|t| t.profiles.first())
        .map(|u| serde_json::Value::String(u.clone()))
}

/// The node below `slice` at a discriminator path (`code`, `code.coding.system`, `$this`).
fn descendant(profile: &Profile, slice: usize, path: &str) -> Option<usize> {
    let mut node = slice;
    for seg in segments(path) {
        if seg == "$this" {
            continue;
        }
        let name = seg.split('(').next().unwrap_or(seg);
        if name == "ofType" || name == "resolve" || name == "extension" {
            continue;
        }
        node = *profile
            .children_of(node)
            .iter()
            .find(|&&c| profile.nodes[c].name == name)?;
    }
    Some(node)
}

/// Splits a discriminator path on dots outside parentheses and quotes.
fn segments(path: &str) -> smallvec::SmallVec<[&str; 4]> {
    let mut out = smallvec::SmallVec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, ch) in path.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            '.' if depth == 0 => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&path[start..]);
    out
}

/// The values at a discriminator path from `v`.
fn at_path<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current: Vec<&'a Value> = vec![v];
    for seg in segments(path) {
        if seg == "$this" || seg.is_empty() {
            continue;
        }
        let mut next = Vec::new();
        if let Some(arg) = seg
            .strip_prefix("extension(")
            .and_then(|s| s.strip_suffix(')'))
        {
            let url = arg.trim_matches(|c| c == '\'' || c == '"');
            for c in &current {
                if let Some(e) = c.as_element() {
                    next.extend(
                        e.values("extension")
                            .iter()
                            .filter(|x| x.as_element().and_then(|x| x.str("url")) == Some(url)),
                    );
                }
            }
        } else if let Some(t) = seg
            .strip_prefix("ofType(")
            .and_then(|s| s.strip_suffix(')'))
        {
            next.extend(current.iter().copied().filter(|x| x.info().is_a(t)));
        } else if seg.starts_with("resolve(") {
            // References are not followed for discrimination.
            return Vec::new();
        } else {
            for c in &current {
                if let Some(e) = c.as_element() {
                    next.extend(e.values(seg));
                }
            }
        }
        current = next;
    }
    current
}
