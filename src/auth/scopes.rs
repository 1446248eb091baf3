//! SMART scopes for backend services (SMART App Launch 2.2.0, "Scopes and Launch Context"):
//! `system/` resource scopes in the v2 syntax (`system/Procedure.cruds`, `system/*.rs`,
//! `system/Observation.rs?category=laboratory`) and the v1 syntax (`system/Procedure.read`,
//! `.write`, `.*`). v1 `read` means v2 `rs`, `write` means `cud`, `*` means `cruds`.
//!
//! A v2 scope may be narrowed with search parameters ("finer-grained resource constraints
//! using search parameters"): `system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory`
//! grants its interactions only on the resources that search would find. What a set of
//! scopes leaves of one interaction on one type is a [`Reach`]; `auth::narrow` enforces it
//! (searches get it ANDed, single resources are matched against it).

use std::fmt;

/// One FHIR interaction as scopes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// `c`: create (and conditional create).
    Create,
    /// `r`: read, vread, instance history.
    Read,
    /// `u`: update, conditional update.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: search, type and system history.
    Search,
}

impl Interaction {
    fn bit(self) -> u8 {
        match self {
            Interaction::Create => 1,
            Interaction::Read => 2,
            Interaction::Update => 4,
            Interaction::Delete => 8,
            Interaction::Search => 16,
        }
    }

    /// The v2 letter.
    pub fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }
}

const LETTERS: [(char, u8); 5] = [('c', 1), ('r', 2), ('u', 4), ('d', 8), ('s', 16)];

/// A `system/` resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The resource type, `None` for `*`.
    pub resource: Option<String>,
    /// The interactions granted, as bits of `cruds`.
    perms: u8,
    /// `?param=value` narrowing (v2 only), in order.
    pub query: Vec<(String, String)>,
}

/// Why a scope string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a system/ resource scope: {0}")]
pub struct ScopeError(pub String);

impl Scope {
    /// Parses one scope. Only the `system/` context is known to backend services.
    ///
    /// # Errors
    /// When `text` is not a v1 or v2 `system/` resource scope.
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let err = || ScopeError(text.to_string());
        let rest = text.strip_prefix("system/").ok_or_else(err)?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (resource, perm) = path.split_once('.').ok_or_else(err)?;
        let valid_type = resource == "*"
            || (resource
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase())
                && resource.chars().all(|c| c.is_ascii_alphanumeric()));
        if !valid_type {
            return Err(err());
        }
        let perms = match perm {
            "read" => 2 | 16,
            "write" => 1 | 4 | 8,
            "*" => 31,
            letters => {
                // v2: a non-empty subsequence of "cruds", in that order.
                let mut bits = 0u8;
                let mut next = 0;
                for ch in letters.chars() {
                    let pos = LETTERS[next..]
                        .iter()
                        .position(|(l, _)| *l == ch)
                        .ok_or_else(err)?;
                    bits |= LETTERS[next + pos].1;
                    next += pos + 1;
                }
                if bits == 0 {
                    return Err(err());
                }
                bits
            }
        };
        let v1 = matches!(perm, "read" | "write" | "*");
        let mut pairs = Vec::new();
        if let Some(q) = query {
            if v1 || q.is_empty() {
                return Err(err());
            }
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                if !constraint_param(&k) || v.is_empty() {
                    return Err(err());
                }
                pairs.push((k.into_owned(), v.into_owned()));
            }
        }
        Ok(Scope {
            resource: (resource != "*").then(|| resource.to_string()),
            perms,
            query: pairs,
        })
    }

    /// Whether this scope lets `interaction` on `resource` happen at all: on some resources
    /// of the type when it is narrowed, on all otherwise.
    pub fn allows(&self, resource: &str, interaction: Interaction) -> bool {
        self.resource.as_deref().is_none_or(|r| r == resource)
            && self.perms & interaction.bit() != 0
    }

    /// What both `self` and `other` grant, if anything: the common letters, with the
    /// search parameters of both (a parameter both narrow with different values shares
    /// nothing).
    pub fn intersect(&self, other: &Scope) -> Option<Scope> {
        let resource = match (&self.resource, &other.resource) {
            (Some(a), Some(b)) if a != b => return None,
            (Some(a), _) | (None, Some(a)) => Some(a.clone()),
            (None, None) => None,
        };
        let perms = self.perms & other.perms;
        if perms == 0 {
            return None;
        }
        let mut query = self.query.clone();
        for (k, v) in &other.query {
            match query.iter().find(|(qk, _)| qk == k) {
                Some((_, qv)) if qv != v => return None,
                Some(_) => {}
                None => query.push((k.clone(), v.clone())),
            }
        }
        Some(Scope {
            resource,
            perms,
            query,
        })
    }
}

impl fmt::Display for Scope {
    /// The v2 spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "system/{}.", self.resource.as_deref().unwrap_or("*"))?;
        for (l, b) in LETTERS {
            if self.perms & b != 0 {
                write!(f, "{l}")?;
            }
        }
        for (i, (k, v)) in self.query.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{}={}", escape(k), escape(v))?;
        }
        Ok(())
    }
}

/// Whether `name` may narrow a scope: a search parameter (with its modifier), `_id` or
/// `_lastUpdated`; not the result parameters (`_count`, `_sort`, `_include`, ...).
fn constraint_param(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or_default();
    !base.is_empty()
        && (base == "_id"
            || base == "_lastUpdated"
            || (base
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !base.starts_with('_')))
}

/// Percent-encodes what would break a scope's query apart (space, `%`, `&`, `=`, `+`, `#`,
/// controls, non-ASCII); `|`, `:` and `/` stay readable, as the SMART examples write them.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_graphic() && !b" %&=+#".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a set of scopes leaves of one interaction on one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// No scope allows it.
    Nothing,
    /// Some scope allows it on every resource of the type.
    Everything,
    /// Allowed only on resources matching one of these searches (each a list of
    /// parameters, ANDed; the searches are ORed).
    Matching(Vec<Vec<(String, String)>>),
}

/// A set of scopes (what a client may be granted, or what a token grants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(pub Vec<Scope>);

impl Scopes {
    /// Parses a space-separated scope string.
    ///
    /// # Errors
    /// On the first scope that is not a `system/` resource scope.
    pub fn parse(text: &str) -> Result<Scopes, ScopeError> {
        text.split_whitespace()
            .map(Scope::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Scopes)
    }

    /// Whether any scope allows the interaction on some resources of the type (see
    /// [`Scope::allows`]).
    pub fn allows(&self, resource: &str, interaction: Interaction) -> bool {
        self.0.iter().any(|s| s.allows(resource, interaction))
    }

    /// On which resources of `resource` the scopes allow `interaction`: unrelated narrowed
    /// scopes are ORed, and one scope without narrowing allows everything.
    pub fn reach(&self, resource: &str, interaction: Interaction) -> Reach {
        let mut matching: Vec<Vec<(String, String)>> = Vec::new();
        for s in self.0.iter().filter(|s| s.allows(resource, interaction)) {
            if s.query.is_empty() {
                return Reach::Everything;
            }
            if !matching.contains(&s.query) {
                matching.push(s.query.clone());
            }
        }
        if matching.is_empty() {
            Reach::Nothing
        } else {
            Reach::Matching(matching)
        }
    }

    /// What to grant for `requested` out of `self` (the allowed scopes): the intersection,
    /// in the v2 spelling. A requested scope that shares nothing with any allowed scope is
    /// returned as the error: it was not granted to the client.
    ///
    /// # Errors
    /// The first requested scope outside the allowed ones.
    pub fn grant(&self, requested: &Scopes) -> Result<Scopes, String> {
        let mut out: Vec<Scope> = Vec::new();
        for r in &requested.0 {
            let mut any = false;
            for a in &self.0 {
                if let Some(s) = r.intersect(a) {
                    any = true;
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
            if !any {
                return Err(r.to_string());
            }
        }
        Ok(Scopes(out))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;

    #[test]
    fn v2_and_v1_syntax() {
        let s = Scope::parse("system/Procedure.cruds").expect("v2");
        for i in [Create, Read, Update, Delete, Search] {
            assert!(s.allows("Procedure", i));
            assert!(!s.allows("Patient", i));
        }
        let rs = Scope::parse("system/*.rs").expect("v2 wildcard");
        assert!(rs.allows("Patient", Read) && rs.allows("Observation", Search));
        assert!(!rs.allows("Patient", Create) && !rs.allows("Patient", Update));
        let read = Scope::parse("system/Procedure.read").expect("v1 read");
        assert_eq!(read.to_string(), "system/Procedure.rs");
        let write = Scope::parse("system/Procedure.write").expect("v1 write");
        assert_eq!(write.to_string(), "system/Procedure.cud");
        assert_eq!(
            Scope::parse("system/*.*").expect("v1 all").to_string(),
            "system/*.cruds"
        );
        for bad in [
            "system/Procedure.rc",
            "system/Procedure.x",
            "system/Procedure.",
            "patient/Procedure.rs",
            "user/*.read",
            "system/procedure.rs",
            "launch",
            "system/Procedure.read?code=1",
            "system/Procedure.rr",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    const LAB: &str =
        "system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

    #[test]
    fn narrowed_scopes_parse_and_print_as_written() {
        let s = Scope::parse(LAB).expect("narrowed");
        assert_eq!(
            s.query,
            vec![(
                "category".to_string(),
                "http://terminology.hl7.org/CodeSystem/observation-category|laboratory".to_string()
            )]
        );
        assert_eq!(s.to_string(), LAB);
        let odd = Scope::parse("system/Patient.rs?name=a%20b%26c&_id=x").expect("escaped");
        assert_eq!(odd.query[0].1, "a b&c");
        assert_eq!(Scope::parse(&odd.to_string()).expect("round trip"), odd);
        // The narrowed interactions are allowed (on matching resources only, see Reach).
        assert!(s.allows("Observation", Read) && s.allows("Observation", Search));
        assert!(!s.allows("Observation", Create));
        for bad in [
            "system/Observation.rs?_count=10",
            "system/Observation.rs?_include=Observation:subject",
            "system/Observation.rs?category=",
            "system/Observation.rs?=x",
            "system/Observation.rs?",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reach_ors_narrowed_scopes_and_a_broad_scope_wins() {
        let lab = Scopes::parse(&format!("{LAB} system/Observation.rs?category=vital-signs"))
            .expect("scopes");
        match lab.reach("Observation", Read) {
            Reach::Matching(m) => assert_eq!(m.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(lab.reach("Observation", Create), Reach::Nothing);
        assert_eq!(lab.reach("Patient", Read), Reach::Nothing);
        let both = Scopes::parse(&format!("{LAB} system/*.r")).expect("scopes");
        assert_eq!(both.reach("Observation", Read), Reach::Everything);
        assert!(matches!(
            both.reach("Observation", Search),
            Reach::Matching(_)
        ));
    }

    #[test]
    fn grant_is_the_intersection() {
        let allowed = Scopes::parse("system/Procedure.cruds system/Patient.rs").expect("allowed");
        let req = Scopes::parse("system/*.rs").expect("req");
        assert_eq!(
            allowed.grant(&req).expect("grant").to_string(),
            "system/Procedure.rs system/Patient.rs"
        );
        let req = Scopes::parse("system/Patient.cud").expect("req");
        assert_eq!(allowed.grant(&req), Err("system/Patient.cud".into()));
        let req = Scopes::parse("system/Observation.rs").expect("req");
        assert!(allowed.grant(&req).is_err());
    }

    #[test]
    fn grant_narrows_both_ways() {
        // A narrowed request under a broad grant is granted as narrowed.
        let broad = Scopes::parse("system/*.cruds").expect("allowed");
        let req = Scopes::parse(LAB).expect("req");
        assert_eq!(broad.grant(&req).expect("grant").to_string(), LAB);
        // A broad request under a narrowed grant is granted narrowed (and only `rs`).
        let narrow = Scopes::parse(LAB).expect("allowed");
        let req = Scopes::parse("system/Observation.cruds").expect("req");
        assert_eq!(narrow.grant(&req).expect("grant").to_string(), LAB);
        // Two unrelated narrowed grants for one type are both granted (ORed by Reach).
        let two =
            Scopes::parse(&format!("{LAB} system/Observation.rs?code=1234-5")).expect("allowed");
        let req = Scopes::parse("system/Observation.rs").expect("req");
        let granted = two.grant(&req).expect("grant");
        assert_eq!(granted.0.len(), 2, "{granted}");
        assert!(matches!(
            granted.reach("Observation", Search),
            Reach::Matching(m) if m.len() == 2
        ));
        // Narrowings of one parameter with different values share nothing.
        let req = Scopes::parse("system/Observation.rs?category=vital-signs").expect("req");
        assert!(narrow.grant(&req).is_err());
        // Different parameters add up (the requested ones first).
        let req = Scopes::parse("system/Observation.r?code=1234-5").expect("req");
        assert_eq!(
            narrow.grant(&req).expect("grant").to_string(),
            format!(
                "system/Observation.r?code=1234-5&{}",
                LAB.split_once('?').map_or("", |(_, q)| q)
            )
        );
    }
}
