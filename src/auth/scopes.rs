//! SMART scopes for backend services (SMART App Launch 2.2.0, "Scopes and Launch Context"):
//! `system/` resource scopes in the v2 syntax (`system/Procedure.cruds`, `system/*.rs`,
//! `system/Observation.rs?category=laboratory`) and the v1 syntax (`system/Procedure.read`,
//! `.write`, `.*`). v1 `read` means v2 `rs`, `write` means `cud`, `*` means `cruds`.
//!
//! A scope narrowed with `?param=value` grants only searches whose query carries the same
//! parameters with the same values; it grants no other interaction (the gateway does not
//! yet evaluate search parameters against single resources).

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
                if k.is_empty() {
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

    /// Whether this scope lets `interaction` on `resource` happen, for a request whose
    /// query string parameters are `query`.
    pub fn allows(
        &self,
        resource: &str,
        interaction: Interaction,
        query: &[(String, String)],
    ) -> bool {
        if self.resource.as_deref().is_some_and(|r| r != resource) {
            return false;
        }
        if self.perms & interaction.bit() == 0 {
            return false;
        }
        self.query.is_empty()
            || (interaction == Interaction::Search && self.query.iter().all(|p| query.contains(p)))
    }

    /// What both `self` and `other` grant, if anything.
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
        if !self.query.is_empty() {
            let q = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&self.query)
                .finish();
            write!(f, "?{q}")?;
        }
        Ok(())
    }
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

    /// Whether any scope allows the interaction (see [`Scope::allows`]).
    pub fn allows(
        &self,
        resource: &str,
        interaction: Interaction,
        query: &[(String, String)],
    ) -> bool {
        self.0
            .iter()
            .any(|s| s.allows(resource, interaction, query))
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

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn v2_and_v1_syntax() {
        let s = Scope::parse("system/Procedure.cruds").expect("v2");
        for i in [Create, Read, Update, Delete, Search] {
            assert!(s.allows("Procedure", i, &[]));
            assert!(!s.allows("Patient", i, &[]));
        }
        let rs = Scope::parse("system/*.rs").expect("v2 wildcard");
        assert!(rs.allows("Patient", Read, &[]) && rs.allows("Observation", Search, &[]));
        assert!(!rs.allows("Patient", Create, &[]) && !rs.allows("Patient", Update, &[]));
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

    #[test]
    fn narrowing_grants_matching_searches_only() {
        let s = Scope::parse("system/Observation.rs?category=laboratory").expect("narrow");
        assert!(s.allows(
            "Observation",
            Search,
            &q(&[("category", "laboratory"), ("x", "1")])
        ));
        assert!(!s.allows("Observation", Search, &q(&[("category", "vital-signs")])));
        assert!(!s.allows("Observation", Search, &[]));
        assert!(!s.allows("Observation", Read, &[]));
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
}
