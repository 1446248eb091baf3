//! `client pull`: searches resource types on the gateway, follows the `next` links to the
//! end, and writes one NDJSON file per type (`Type.ndjson`, one resource per line as the
//! server sent it: numbers and key order kept). Each file is written under a temporary
//! name and renamed when complete, so a reader never sees half a file.
//!
//! `next` links are followed on the server the session was opened with: only their path
//! below the FHIR base and their query are used, so the token is never sent elsewhere (a
//! gateway behind a TLS proxy writes `http://` links).

use super::{issues, ClientError, Session, Settings};
use crate::model::json::Json;
use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Deepest JSON nesting accepted in a search page.
const MAX_DEPTH: usize = 256;

/// Most pages followed for one search (a server whose `next` links never end).
const MAX_PAGES: usize = 100_000;

/// One search to run: a type and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The resource type.
    pub res_type: String,
    /// Search parameters (`category=laboratory`), ANDed.
    pub query: Vec<(String, String)>,
}

/// What to pull: the searches asked for (every study type the token may search when
/// none), and parameters added to every search (`_lastUpdated=gt...` for an incremental
/// pull).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The searches, in order.
    pub requests: Vec<PullRequest>,
    /// Parameters for every search.
    pub common: Vec<(String, String)>,
}

impl Plan {
    /// The plan of a command line: `--type` and `--query` values with their positions among
    /// the arguments. A query belongs to the `--type` before it, or to every search when
    /// no `--type` comes before it; a query is `a=b` or `a=b&c=d` (form encoding).
    ///
    /// # Errors
    /// A query without `=`.
    pub fn from_args(
        types: &[(usize, String)],
        queries: &[(usize, String)],
    ) -> Result<Plan, String> {
        let mut plan = Plan::default();
        let mut order: Vec<(usize, bool, &String)> = types
            .iter()
            .map(|(i, t)| (*i, true, t))
            .chain(queries.iter().map(|(i, q)| (*i, false, q)))
            .collect();
        order.sort_by_key(|(i, _, _)| *i);
        for (_, is_type, text) in order {
            if is_type {
                plan.requests.push(PullRequest {
                    res_type: text.clone(),
                    query: Vec::new(),
                });
                continue;
            }
            if !text.contains('=') {
                return Err(format!("--query {text:?} is not name=value"));
            }
            let pairs = form_urlencoded::parse(text.as_bytes()).into_owned();
            match plan.requests.last_mut() {
                Some(r) => r.query.extend(pairs),
                None => plan.common.extend(pairs),
            }
        }
        Ok(plan)
    }
}

/// What happened to one type.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The resource type.
    pub res_type: String,
    /// The file written, when the searches succeeded.
    pub file: Option<PathBuf>,
    /// Resources written (distinct ids).
    pub count: usize,
    /// Pages read.
    pub pages: usize,
    /// Why the type failed (status and OperationOutcome, or the transport error).
    pub error: Option<String>,
}

impl PullReport {
    /// Whether the type was written completely.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// The resource types the study profiles constrain (Patient, Procedure, Observation, ...),
/// sorted; Bundle (the submission profile) is left out.
pub fn study_types() -> Vec<String> {
    let mut out: Vec<String> = crate::profiles::files(None)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| serde_json::from_str::<serde_json::Value>(&f.text).ok())
        .filter(|v| {
            v["resourceType"] == "StructureDefinition"
                && v["kind"] == "resource"
                && v["derivation"] == "constraint"
        })
        .filter_map(|v| v["type"].as_str().map(str::to_string))
        .filter(|t| t != "Bundle")
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The default requests: every study type the granted scopes let the client search.
fn default_requests(granted: &str) -> Vec<PullRequest> {
    let scopes = crate::auth::scopes::Scopes::parse(granted).unwrap_or_default();
    study_types()
        .into_iter()
        .filter(|t| scopes.allows(t, crate::auth::scopes::Interaction::Search))
        .map(|res_type| PullRequest {
            res_type,
            query: Vec::new(),
        })
        .collect()
}

/// `client pull`: runs the searches of `plan` (all of a type's searches into its one file,
/// each resource once) and writes `out/Type.ndjson` per type. Without requests, every study
/// type the token allows searching is pulled.
///
/// # Errors
/// When the session cannot start (key, discovery, a refused token) or `out` cannot be
/// created; a type that fails is reported, not an error.
pub async fn pull(
    settings: Settings,
    plan: &Plan,
    out: &Path,
) -> Result<Vec<PullReport>, ClientError> {
    std::fs::create_dir_all(out).map_err(|e| ClientError::Io(out.to_path_buf(), e))?;
    let mut session = Session::connect(settings).await?;
    // No token, nothing to do: a refusal stops the pull before any file is touched.
    let granted = session.granted().await?;
    let mut requests = if plan.requests.is_empty() {
        default_requests(&granted)
    } else {
        plan.requests.clone()
    };
    for r in &mut requests {
        r.query.extend(plan.common.iter().cloned());
    }
    let mut types: Vec<&str> = Vec::new();
    for r in &requests {
        if !types.contains(&r.res_type.as_str()) {
            types.push(&r.res_type);
        }
    }
    let mut reports = Vec::with_capacity(types.len());
    for t in types {
        let mine: Vec<&PullRequest> = requests.iter().filter(|r| r.res_type == t).collect();
        reports.push(pull_type(&mut session, t, &mine, out).await);
    }
    Ok(reports)
}

/// Pulls one type into `out/Type.ndjson` (through a temporary file, renamed at the end;
/// removed on failure).
async fn pull_type(
    session: &mut Session,
    res_type: &str,
    requests: &[&PullRequest],
    out: &Path,
) -> PullReport {
    let mut report = PullReport {
        res_type: res_type.to_string(),
        file: None,
        count: 0,
        pages: 0,
        error: None,
    };
    let concrete = res_type.starts_with(|c: char| c.is_ascii_uppercase())
        && !matches!(res_type, "Resource" | "DomainResource")
        && crate::model::schema::is_resource_type(res_type);
    if !concrete {
        report.error = Some(format!("{res_type} is not a FHIR R4 resource type"));
        return report;
    }
    let target = out.join(format!("{res_type}.ndjson"));
    let temp = out.join(format!(".{res_type}.ndjson.{}.part", std::process::id()));
    let result = async {
        let file = std::fs::File::create(&temp).map_err(|e| format!("{}: {e}", temp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        let mut seen: HashSet<String> = HashSet::new();
        for r in requests {
            search_into(session, r, &mut w, &mut seen, &mut report.pages).await?;
        }
        w.flush()
            .and_then(|()| w.get_ref().sync_all())
            .map_err(|e| format!("{}: {e}", temp.display()))?;
        drop(w);
        std::fs::rename(&temp, &target).map_err(|e| format!("{}: {e}", target.display()))?;
        Ok::<usize, String>(seen.len())
    }
    .await;
    match result {
        Ok(n) => {
            report.count = n;
            report.file = Some(target);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            report.error = Some(e);
        }
    }
    report
}

/// Runs one search and writes its matches (ids not yet in `seen`) as lines of `w`.
async fn search_into(
    session: &mut Session,
    request: &PullRequest,
    w: &mut impl std::io::Write,
    seen: &mut HashSet<String>,
    pages: &mut usize,
) -> Result<(), String> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(&request.query);
    if !request.query.iter().any(|(k, _)| k == "_count") {
        query.append_pair("_count", "1000");
    }
    let mut url = format!(
        "{}/{}?{}",
        session.fhir_base(),
        request.res_type,
        query.finish()
    );
    for _ in 0..MAX_PAGES {
        let (status, body) = session
            .call(reqwest::Method::GET, &url, None)
            .await
            .map_err(|e| e.to_string())?;
        *pages += 1;
        let text = String::from_utf8_lossy(&body);
        if !(200..300).contains(&status) {
            let detail = serde_json::from_str::<serde_json::Value>(&text)
                .map(|v| issues(&v))
                .unwrap_or_default();
            return Err(format!("GET {url}: status {status}: {detail}"));
        }
        let page = Json::parse(&text, MAX_DEPTH)
            .map_err(|e| format!("GET {url}: not JSON: {}", e.message))?;
        if page.get("resourceType").and_then(Json::as_str) != Some("Bundle") {
            return Err(format!("GET {url}: the answer is not a Bundle"));
        }
        for entry in page.get("entry").map(Json::items).unwrap_or_default() {
            let mode = entry
                .get("search")
                .and_then(|s| s.get("mode"))
                .and_then(Json::as_str);
            if mode.is_some_and(|m| m != "match") {
                continue;
            }
            let Some(resource) = entry.get("resource") else {
                continue;
            };
            let id = resource
                .get("id")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string();
            if !id.is_empty() && !seen.insert(id) {
                continue;
            }
            writeln!(w, "{}", resource.to_text()).map_err(|e| e.to_string())?;
        }
        let next = page
            .get("link")
            .map(Json::items)
            .unwrap_or_default()
            .iter()
            .find(|l| l.get("relation").and_then(Json::as_str) == Some("next"))
            .and_then(|l| l.get("url"))
            .and_then(Json::as_str);
        match next {
            None => return Ok(()),
            Some(n) => url = rebase(session.fhir_base(), n)?,
        }
    }
    Err(format!(
        "{}: more than {MAX_PAGES} pages; stopped",
        request.res_type
    ))
}

/// The `next` link `link` on our own server: its path below `/fhir/` and its query, put
/// after `fhir_base`.
fn rebase(fhir_base: &str, link: &str) -> Result<String, String> {
    let rest = match link.find("/fhir/") {
        Some(i) => &link[i + "/fhir/".len()..],
        None if !link.contains("://") => link.trim_start_matches('/'),
        None => return Err(format!("next link {link} is not below a FHIR base /fhir")),
    };
    Ok(format!("{fhir_base}/{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_belong_to_the_type_before_them() {
        let plan = Plan::from_args(
            &[(3, "Patient".into()), (7, "Observation".into())],
            &[
                (1, "_lastUpdated=gt2026-01-01".into()),
                (5, "gender=female&_count=2".into()),
                (9, "category=http://x|laboratory".into()),
            ],
        )
        .expect("plan");
        assert_eq!(
            plan.common,
            vec![("_lastUpdated".into(), "gt2026-01-01".into())]
        );
        assert_eq!(plan.requests[0].res_type, "Patient");
        assert_eq!(plan.requests[0].query.len(), 2);
        assert_eq!(
            plan.requests[1].query,
            vec![("category".into(), "http://x|laboratory".into())]
        );
        assert!(Plan::from_args(&[], &[(1, "oops".into())]).is_err());
    }

    #[test]
    fn next_links_stay_on_our_server() {
        assert_eq!(
            rebase(
                "https://gw.example.org/fhir",
                "http://10.0.0.5:8080/fhir/Patient?_count=2&_offset=2"
            )
            .expect("rebased"),
            "https://gw.example.org/fhir/Patient?_count=2&_offset=2"
        );
        assert_eq!(
            rebase("http://h/fhir", "Patient?_offset=4").expect("relative"),
            "http://h/fhir/Patient?_offset=4"
        );
        assert!(rebase("http://h/fhir", "https://evil.example/x?y").is_err());
    }

    #[test]
    fn default_types_are_the_searchable_study_types() {
        let all = study_types();
        for t in [
            "Patient",
            "Procedure",
            "Observation",
            "AdverseEvent",
            "ImagingStudy",
        ] {
            assert!(all.iter().any(|x| x == t), "{t} in {all:?}");
        }
        assert!(!all.iter().any(|x| x == "Bundle"));
        let some = default_requests("system/Patient.rs system/Procedure.c system/Observation.s");
        let names: Vec<&str> = some.iter().map(|r| r.res_type.as_str()).collect();
        assert_eq!(names, vec!["Observation", "Patient"]);
        assert_eq!(default_requests("system/*.rs").len(), all.len());
    }
}
