//! A [`Registry`] is the set of conformance resources one validation or mapping run sees: the
//! embedded R4 definitions plus whatever was loaded on top (the study profiles, `--load`
//! files). Loaded resources win over embedded ones with the same canonical URL.

use super::Kind;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a resource could not be added to a registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The JSON is not a resource with a `resourceType`.
    #[error("not a FHIR resource (no resourceType)")]
    NotAResource,
    /// The resource type is not a kind of definition the registry keeps.
    #[error("{0} is not a kind of definition the gateway loads (StructureDefinition, ValueSet, CodeSystem, SearchParameter, ConceptMap, Questionnaire, ImplementationGuide, or a Bundle of them)")]
    UnsupportedType(String),
    /// The resource has no canonical `url`.
    #[error("{0} has no url")]
    NoUrl(String),
}

/// Conformance resources by kind and canonical URL: embedded R4 plus loaded ones.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    loaded: HashMap<(Kind, String), Arc<Value>>,
}

impl Registry {
    /// A registry with only the embedded R4 definitions.
    pub fn core() -> Registry {
        Registry::default()
    }

    /// Adds a conformance resource, or each resource of a Bundle of them. Returns how many
    /// resources were added. Other resource types inside a Bundle are skipped.
    ///
    /// # Errors
    /// When `resource` is not a resource, not a kind the registry keeps, or has no `url`.
    pub fn add(&mut self, resource: Value) -> Result<usize, RegistryError> {
        let rt = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or(RegistryError::NotAResource)?
            .to_string();
        if rt == "Bundle" {
            let mut n = 0;
            let entries = resource
                .get("entry")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for e in entries {
                if let Some(r) = e.get("resource") {
                    let kind = r.get("resourceType").and_then(Value::as_str);
                    if kind.and_then(Kind::of_resource_type).is_some() {
                        n += self.add(r.clone())?;
                    }
                }
            }
            return Ok(n);
        }
        let kind = Kind::of_resource_type(&rt).ok_or(RegistryError::UnsupportedType(rt.clone()))?;
        let url = resource
            .get("url")
            .and_then(Value::as_str)
            .ok_or(RegistryError::NoUrl(rt))?
            .to_string();
        self.loaded.insert((kind, url), Arc::new(resource));
        Ok(1)
    }

    /// Looks up a resource by canonical URL (a `|version` suffix is ignored): loaded ones
    /// first, then the embedded R4 definitions.
    pub fn get(&self, kind: Kind, url: &str) -> Option<Arc<Value>> {
        let bare = url.split('|').next().unwrap_or(url);
        if let Some(v) = self.loaded.get(&(kind, bare.to_string())) {
            return Some(v.clone());
        }
        super::get(kind, bare)
    }

    /// The loaded (non-embedded) resources of a kind.
    pub fn loaded(&self, kind: Kind) -> impl Iterator<Item = &Arc<Value>> {
        self.loaded
            .iter()
            .filter(move |((k, _), _)| *k == kind)
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn loaded_resources_win_and_bundles_unpack() {
        let mut r = Registry::core();
        assert!(r
            .get(
                Kind::ValueSet,
                "http://hl7.org/fhir/ValueSet/administrative-gender"
            )
            .is_some());
        let vs = json!({"resourceType":"ValueSet","url":"http://example.org/vs","status":"active"});
        let bundle = json!({"resourceType":"Bundle","type":"collection","entry":[
            {"resource": vs},
            {"resource": {"resourceType":"Patient","id":"x"}}]});
        assert_eq!(r.add(bundle), Ok(1));
        assert!(r.get(Kind::ValueSet, "http://example.org/vs|1.0").is_some());
        assert_eq!(
            r.add(json!({"resourceType":"Patient"})),
            Err(RegistryError::UnsupportedType("Patient".into()))
        );
        assert_eq!(
            r.add(json!({"resourceType":"ValueSet"})),
            Err(RegistryError::NoUrl("ValueSet".into()))
        );
    }
}
