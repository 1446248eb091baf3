//! `GET /fhir/metadata`: the CapabilityStatement, generated from what the router really
//! offers (the interactions of `rest`, `bundle` and `$validate`, every R4 resource type, and
//! the study profiles in force), built once per process.

use super::rest::fhir_response;
use super::AppState;
use crate::model::json::write_str;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use std::sync::OnceLock;

/// The instance and type interactions every resource type supports.
const INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// The interactions of the append-only types (AuditEvent, Provenance: written by the
/// gateway only, `audit`).
const READ_ONLY_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "history-instance",
    "history-type",
    "search-type",
];

/// The Bulk Data operation of a type (`Patient/$export`, `Group/[id]/$export`).
fn type_export(t: &str) -> Option<(&'static str, &'static str)> {
    match t {
        "Patient" => Some((
            "export",
            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
        )),
        "Group" => Some((
            "export",
            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
        )),
        _ => None,
    }
}

/// What the CapabilityStatement says of search results (`search::result`).
const SEARCH_RESULTS: &str = "Results: _sort (comma list, - for descending; _id, _lastUpdated and string, date, token and reference parameters; several values sort by the lowest ascending and the highest descending, no value last; by id without _sort); paging by _count with next and previous links carrying an opaque _cursor (keyset paging: pages do not shift when resources are created, updated or deleted between fetches), _offset as a starting point; _include and _revinclude one level (Type:param[:Target], Type:* for every reference parameter; :iterate is not supported); _elements (tagged SUBSETTED) and _summary=true|text|data|false|count. Site clients' searches, totals, includes and history hold their site's resources only.";

/// The concrete R4 resource types, from the embedded definitions.
fn resource_types() -> &'static [String] {
    static TYPES: OnceLock<Vec<String>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let mut out: Vec<String> =
            crate::definitions::urls(crate::definitions::Kind::StructureDefinition)
                .filter_map(|u| u.strip_prefix("http://hl7.org/fhir/StructureDefinition/"))
                .filter(|n| super::write::is_concrete_type(n))
                .map(str::to_string)
                .collect();
        out.sort();
        out.dedup();
        out
    })
}

/// `GET /fhir/metadata`.
pub async fn metadata(State(state): State<AppState>) -> Response {
    let doc = state.inner.capability.get_or_init(|| statement(&state));
    fhir_response(StatusCode::OK, doc.clone())
}

fn statement(state: &AppState) -> String {
    let mut out =
        String::from("{\"resourceType\":\"CapabilityStatement\",\"status\":\"active\",\"date\":");
    write_str(&mut out, &crate::store::time::now()[..10]);
    out.push_str(",\"kind\":\"instance\",\"software\":{\"name\":\"imagio-gateway\",\"version\":");
    write_str(&mut out, env!("CARGO_PKG_VERSION"));
    out.push_str("},\"implementation\":{\"description\":\"A-IMAGIO study data gateway\"},");
    out.push_str(
        "\"instantiates\":[\"http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data\"],",
    );
    out.push_str("\"fhirVersion\":\"4.0.1\",\"format\":[\"json\"],\"patchFormat\":[\"application/json-patch+json\",\"application/fhir+json\"],");
    out.push_str("\"rest\":[{\"mode\":\"server\",\"documentation\":");
    let validation = match state.config().validation {
        super::ValidationMode::Base => "Writes are validated against the FHIR R4 base definitions.",
        super::ValidationMode::Study => "Writes are validated against the FHIR R4 base definitions and the A-IMAGIO study profiles (those a resource claims in meta.profile, otherwise the study profile of its type when the study has one for it).",
    };
    write_str(&mut out, &format!("{validation} Conditional create, update, delete and patch match on identifier=[system|]value or _id; a conditional delete removes one resource (several matches: 412). PATCH takes JSON Patch (application/json-patch+json) or FHIRPath Patch (a Parameters resource, application/fhir+json). Search: token, string, date, reference, quantity (UCUM units compared in base units), number and uri parameters of the R4 SearchParameters, _id, _lastUpdated, _tag, _security, _profile, _source; prefixes eq ne lt le gt ge sa eb ap on dates, quantities and numbers; modifiers :missing, :exact, :contains, :not, :text, :identifier, :[type], :below and :above (uri); chained parameters one level deep (subject:Patient.identifier=...); _total, _summary=count; unknown parameters and modifiers are ignored with a warning unless Prefer: handling=strict. {SEARCH_RESULTS}"));
    out.push_str(",\"security\":");
    out.push_str(&crate::auth::capability_security(state.auth()));
    out.push_str(",\"resource\":[");
    for (i, t) in resource_types().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"type\":");
        write_str(&mut out, t);
        let profiles: Vec<&str> = state
            .inner
            .profiles
            .iter()
            .filter(|(pt, _)| pt == t)
            .map(|(_, u)| u.as_str())
            .collect();
        if !profiles.is_empty() {
            out.push_str(",\"supportedProfile\":[");
            for (j, p) in profiles.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                write_str(&mut out, p);
            }
            out.push(']');
        }
        out.push_str(",\"interaction\":[");
        let interactions = if crate::audit::event::append_only(t) {
            READ_ONLY_INTERACTIONS
        } else {
            INTERACTIONS
        };
        for (j, code) in interactions.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str("{\"code\":");
            write_str(&mut out, code);
            out.push('}');
        }
        out.push_str("],\"versioning\":\"versioned-update\",\"readHistory\":true,\"updateCreate\":true,\"conditionalCreate\":true,\"conditionalRead\":\"not-supported\",\"conditionalUpdate\":true,\"conditionalDelete\":\"single\",\"searchInclude\":[");
        write_str(&mut out, &format!("{t}:*"));
        out.push_str("],\"operation\":[{\"name\":\"validate\",\"definition\":\"http://hl7.org/fhir/OperationDefinition/Resource-validate\"}");
        if let Some((name, definition)) = type_export(t) {
            out.push_str(",{\"name\":");
            write_str(&mut out, name);
            out.push_str(",\"definition\":");
            write_str(&mut out, definition);
            out.push('}');
        }
        out.push_str("]}");
    }
    out.push_str("],\"interaction\":[{\"code\":\"transaction\"},{\"code\":\"batch\"},{\"code\":\"history-system\"}],");
    out.push_str("\"operation\":[{\"name\":\"export\",\"definition\":\"http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export\"}]}]}");
    out
}
