//! Code translation through a FHIR R4 ConceptMap kept next to the mapping: a local code
//! (the cell value) becomes the study Coding the map names. Only `group.element.target`s
//! with an equivalence that maps (not `unmatched` or `disjoint`) count; `dependsOn` and
//! `product` are not evaluated (a ConceptMap for site codes has none).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A study Coding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coding {
    /// Code system.
    pub system: String,
    /// Code.
    pub code: String,
    /// Display, when the ConceptMap gives one.
    pub display: Option<String>,
}

/// A loaded ConceptMap.
#[derive(Debug, Clone)]
pub struct ConceptMap {
    /// The file it was read from.
    pub path: PathBuf,
    /// The line of the mapping that names it (0 until set by the mapping reader).
    pub line: usize,
    /// Its canonical URL.
    pub url: String,
    /// The ValueSet it targets (`targetCanonical` or `targetUri`), if declared.
    pub target_value_set: Option<String>,
    /// Local code (trimmed, lower-cased) to target.
    map: HashMap<String, Coding, crate::model::schema::FastHash>,
    /// Every (system, code) a target names, for checks.
    pub targets: Vec<Coding>,
}

impl ConceptMap {
    /// Reads a ConceptMap JSON file.
    ///
    /// # Errors
    /// A message when it cannot be read, is not a ConceptMap, or maps one local code to
    /// two different targets.
    pub fn load(path: &Path) -> Result<ConceptMap, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("ConceptMap {}: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses ConceptMap JSON; `path` names it in messages.
    ///
    /// # Errors
    /// As [`ConceptMap::load`].
    pub fn parse(text: &str, path: &Path) -> Result<ConceptMap, String> {
        let name = path.display();
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("ConceptMap {name}: not JSON: {e}"))?;
        if v.get("resourceType").and_then(|t| t.as_str()) != Some("ConceptMap") {
            return Err(format!("{name} is not a ConceptMap"));
        }
        let url = v
            .get("url")
            .and_then(|u| u.as_str())
            .unwrap_or_default()
            .to_string();
        let target_value_set = v
            .get("targetCanonical")
            .or_else(|| v.get("targetUri"))
            .and_then(|t| t.as_str())
            .map(str::to_string);
        let mut map: HashMap<String, Coding, crate::model::schema::FastHash> = HashMap::default();
        let mut targets = Vec::new();
        let groups = v.get("group").and_then(|g| g.as_array());
        for group in groups.into_iter().flatten() {
            let Some(system) = group.get("target").and_then(|t| t.as_str()) else {
                return Err(format!("ConceptMap {name}: a group has no target system"));
            };
            let elements = group.get("element").and_then(|e| e.as_array());
            for element in elements.into_iter().flatten() {
                let Some(code) = element.get("code").and_then(|c| c.as_str()) else {
                    continue;
                };
                let list = element.get("target").and_then(|t| t.as_array());
                for target in list.into_iter().flatten() {
                    let equivalence = target.get("equivalence").and_then(|e| e.as_str());
                    if matches!(equivalence, Some("unmatched" | "disjoint")) {
                        continue;
                    }
                    let Some(tcode) = target.get("code").and_then(|c| c.as_str()) else {
                        continue;
                    };
                    let coding = Coding {
                        system: system.to_string(),
                        code: tcode.to_string(),
                        display: target
                            .get("display")
                            .and_then(|d| d.as_str())
                            .map(str::to_string),
                    };
                    let key = code.trim().to_lowercase();
                    if let Some(prev) = map.get(&key) {
                        if prev != &coding {
                            return Err(format!(
                                "ConceptMap {name}: local code '{code}' maps to both {}|{} and {system}|{tcode}",
                                prev.system, prev.code
                            ));
                        }
                        continue;
                    }
                    targets.push(coding.clone());
                    map.insert(key, coding);
                }
            }
        }
        Ok(ConceptMap {
            path: path.to_path_buf(),
            line: 0,
            url,
            target_value_set,
            map,
            targets,
        })
    }

    /// The target of a local code (trimmed, case-insensitive).
    pub fn translate(&self, local: &str) -> Option<&Coding> {
        self.map.get(&local.trim().to_lowercase())
    }

    /// The target of a local code already trimmed and lower-cased.
    pub fn translate_key(&self, key: &str) -> Option<&Coding> {
        self.map.get(key)
    }

    /// The local codes it maps, sorted.
    pub fn local_codes(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.map.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_codes_translate_case_insensitively() {
        let cm = ConceptMap::parse(
            r#"{"resourceType":"ConceptMap","url":"u","targetCanonical":"vs",
               "group":[{"source":"local","target":"https://a-imagio.eu/fhir/CodeSystem/ablation-modality",
                 "element":[{"code":"micro","target":[{"code":"mwa","display":"Microwave ablation","equivalence":"equivalent"}]},
                            {"code":"cryo","target":[{"equivalence":"unmatched"}]}]}]}"#,
            Path::new("cm.json"),
        )
        .unwrap();
        assert_eq!(
            cm.translate(" Micro ").map(|c| c.code.as_str()),
            Some("mwa")
        );
        assert!(cm.translate("cryo").is_none());
        assert_eq!(cm.target_value_set.as_deref(), Some("vs"));
        assert_eq!(cm.local_codes(), ["micro"]);
    }

    #[test]
    fn conflicting_targets_are_refused() {
        let e = ConceptMap::parse(
            r#"{"resourceType":"ConceptMap","group":[{"target":"s","element":[
                {"code":"A","target":[{"code":"x","equivalence":"equivalent"}]},
                {"code":"a","target":[{"code":"y","equivalence":"equivalent"}]}]}]}"#,
            Path::new("cm.json"),
        )
        .unwrap_err();
        assert!(e.contains("'a' maps to both s|x and s|y"), "{e}");
    }
}
