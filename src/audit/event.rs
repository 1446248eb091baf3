//! The records themselves, as pure functions: [`AuditEvent`] (what one interaction was, in
//! the shape of IHE BALP's RESTful patterns) and [`provenance`], both rendered as FHIR R4
//! JSON; [`classify`] tells which interaction a request is.

use serde_json::{json, Value};

/// Identifier system of gateway clients (`AuditEvent.agent.who.identifier`,
/// `Provenance.agent.who.identifier`).
pub const CLIENT_SYSTEM: &str = "https://a-imagio.eu/fhir/sid/client";
/// Identifier system of ledger entries (the `submission` row id).
pub const SUBMISSION_SYSTEM: &str = "https://a-imagio.eu/fhir/sid/submission";
/// Identifier system of request ids (`X-Request-Id`, also kept by the ledger).
pub const REQUEST_SYSTEM: &str = "https://a-imagio.eu/fhir/sid/request-id";
/// Identifier system of mappings (`mappings/NAME`).
pub const MAPPING_SYSTEM: &str = "https://a-imagio.eu/fhir/sid/mapping";
/// Code system of client roles (`site`, `sponsor`, `admin`).
pub const ROLE_SYSTEM: &str = "https://a-imagio.eu/fhir/CodeSystem/client-role";

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL: &str = "http://hl7.org/fhir/restful-interaction";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const BALP_ENTITY: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";

/// The resource types the gateway writes itself and the API may not change (append-only).
pub const APPEND_ONLY: [&str; 2] = ["AuditEvent", "Provenance"];

/// Whether `res_type` is one of [`APPEND_ONLY`].
pub fn append_only(res_type: &str) -> bool {
    APPEND_ONLY.contains(&res_type)
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The client id.
    pub client: String,
    /// Its site (`""` when unknown).
    pub site: String,
    /// Its role (`site`, `sponsor`, `admin`; `""` when unknown).
    pub role: String,
    /// Whether the gateway authenticated it (false: a claim, e.g. a failed token request).
    pub verified: bool,
}

impl Who {
    /// The authenticated caller of a request.
    pub fn of(p: &crate::auth::Principal) -> Who {
        Who {
            client: p.client_id.clone(),
            site: p.site.clone(),
            role: p.role.name().to_string(),
            verified: true,
        }
    }
}

/// What kind of event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A RESTful interaction, by its `restful-interaction` code (`read`, `search-type`,
    /// `create`, `transaction`, `operation`, ...).
    Rest(&'static str),
    /// A token request at `/auth/token` (DICOM 110114 User Authentication, 110122 Login).
    Login,
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    /// A resource, and the version when one is meant.
    Resource {
        /// Type.
        res_type: String,
        /// Id.
        id: String,
        /// Version.
        version: Option<i64>,
    },
    /// A query: the type searched (none for system level) and the query string.
    Query {
        /// Type.
        res_type: Option<String>,
        /// The query string as sent.
        query: String,
    },
    /// An operation (`$validate`, `$export`) or another endpoint, by name.
    Named(String),
}

/// One audited interaction. [`AuditEvent::to_json`] renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// What kind.
    pub kind: Kind,
    /// `C`, `R`, `U`, `D` or `E` (AuditEvent.action).
    pub action: &'static str,
    /// When (instant text).
    pub recorded: String,
    /// The HTTP status answered (the outcome is derived from it).
    pub status: u16,
    /// Who, when known.
    pub who: Option<Who>,
    /// The peer's address (IP), when known.
    pub peer: Option<String>,
    /// The request id.
    pub request_id: String,
    /// `METHOD path?query`.
    pub request: String,
    /// What it was about.
    pub entities: Vec<Entity>,
}

/// The AuditEvent outcome code of an HTTP status: `0` success (1xx-3xx), `4` minor failure
/// (4xx: the request was refused), `8` serious failure (5xx).
pub fn outcome(status: u16) -> &'static str {
    match status {
        500.. => "8",
        400..=499 => "4",
        _ => "0",
    }
}

/// A Coding. The display is left out: each display would be one more index row (`:text`)
/// per record, and the codes are those of published code systems.
fn coding(system: &str, code: &str, _display: &str) -> Value {
    json!({ "system": system, "code": code })
}

/// The `who` Reference of a client: `Device/{client}` (the registered client; no Device
/// resource is stored) with the client id as identifier.
fn who_reference(who: &Who) -> Value {
    let mut display = who.client.clone();
    if !who.site.is_empty() {
        display.push_str(&format!(" (site {}, {})", who.site, who.role));
    }
    if !who.verified {
        display.push_str(" (claimed, not authenticated)");
    }
    let mut v = json!({
        "identifier": { "system": CLIENT_SYSTEM, "value": who.client },
        "display": display,
    });
    if is_fhir_id(&who.client) {
        v["reference"] = json!(format!("Device/{}", who.client));
    }
    v
}

/// Whether `s` is a FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `meta` with the site label of `site` (tenancy: a site client sees its own records).
fn meta(site: &str) -> Value {
    if site.is_empty() {
        return json!({});
    }
    json!({ "security": [ {
        "system": crate::auth::tenancy::SITE_SYSTEM, "code": site
    } ] })
}

impl AuditEvent {
    /// The site label the stored event gets: the caller's site (`""`: none).
    pub fn site(&self) -> &str {
        self.who
            .as_ref()
            .filter(|w| w.verified)
            .map_or("", |w| w.site.as_str())
    }

    /// The event as FHIR R4 JSON (without `id`: the store gives it).
    pub fn to_json(&self) -> Value {
        let (event_type, subtype) = match &self.kind {
            Kind::Rest(code) => (
                coding(EVENT_TYPE, "rest", "Restful Operation"),
                coding(RESTFUL, code, code),
            ),
            Kind::Login => (
                coding(DCM, "110114", "User Authentication"),
                coding(DCM, "110122", "Login"),
            ),
        };
        let mut client = json!({
            "type": { "coding": [coding(DCM, "110153", "Source Role ID")] },
            "requestor": true,
        });
        match &self.who {
            Some(w) => {
                client["who"] = who_reference(w);
                client["name"] = json!(w.client);
                if !w.role.is_empty() {
                    client["role"] = json!([{ "coding": [coding(ROLE_SYSTEM, &w.role, &w.role)] }]);
                }
            }
            None => client["who"] = json!({ "display": "unauthenticated caller" }),
        }
        if let Some(peer) = &self.peer {
            client["network"] = json!({ "address": peer, "type": "2" });
        }
        let server = json!({
            "type": { "coding": [coding(DCM, "110152", "Destination Role ID")] },
            "who": { "display": "imagio-gateway" },
            "requestor": false,
        });
        let mut entities: Vec<Value> = self.entities.iter().map(entity_json).collect();
        entities.push(json!({
            "what": { "identifier": { "system": REQUEST_SYSTEM, "value": self.request_id } },
            "type": coding(BALP_ENTITY, "XrequestId", "X-Request-Id"),
        }));
        let mut v = json!({
            "resourceType": "AuditEvent",
            "meta": meta(self.site()),
            "type": event_type,
            "subtype": [subtype],
            "action": self.action,
            "recorded": self.recorded,
            "outcome": outcome(self.status),
            "outcomeDesc": format!("HTTP {} to {}", self.status, self.request),
            "agent": [client, server],
            "source": {
                "site": "imagio-gateway",
                "observer": { "display": "imagio-gateway" },
                "type": [coding(SOURCE_TYPE, "4", "Application Server")],
            },
            "entity": entities,
        });
        if self.site().is_empty() {
            if let Some(o) = v.as_object_mut() {
                o.remove("meta");
            }
        }
        v
    }
}

fn entity_json(e: &Entity) -> Value {
    let system_object = coding(ENTITY_TYPE, "2", "System Object");
    match e {
        Entity::Resource {
            res_type,
            id,
            version,
        } => {
            let mut v = json!({
                "what": { "reference": format!("{res_type}/{id}") },
                "type": system_object,
                "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
            });
            if let Some(n) = version {
                v["detail"] = json!([{ "type": "version", "valueString": n.to_string() }]);
            }
            v
        }
        Entity::Query { res_type, query } => {
            use base64::Engine as _;
            let mut v = json!({
                "type": system_object,
                "role": coding(OBJECT_ROLE, "24", "Query"),
                "query": base64::engine::general_purpose::STANDARD.encode(query.as_bytes()),
                "description": query,
            });
            if let Some(t) = res_type {
                v["name"] = json!(t);
            }
            v
        }
        Entity::Named(name) => json!({
            "type": system_object,
            "role": coding(OBJECT_ROLE, "3", "Report"),
            "name": name,
        }),
    }
}

/// What [`classify`] makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The kind.
    pub kind: Kind,
    /// The action code.
    pub action: &'static str,
    /// What it is about.
    pub entities: Vec<Entity>,
}

/// Which interaction a request is, from its method, path (absolute, decoded segments are
/// not needed: ids are `[A-Za-z0-9-.]`) and query; `None` for requests that are not
/// audited (health, readiness, metadata, discovery, the gateway's public keys).
pub fn classify(method: &str, path: &str, query: &str) -> Option<Classified> {
    let c = |kind, action, entities| {
        Some(Classified {
            kind,
            action,
            entities,
        })
    };
    let res = |t: &str, id: &str, version: Option<i64>| Entity::Resource {
        res_type: t.to_string(),
        id: id.to_string(),
        version,
    };
    let q = |t: Option<&str>| Entity::Query {
        res_type: t.map(str::to_string),
        query: query.to_string(),
    };
    if path == "/auth/token" {
        return c(Kind::Login, "E", Vec::new());
    }
    if let Some(admin) = path.strip_prefix("/admin") {
        let (kind, action) = match method {
            "GET" => (Kind::Rest("read"), "R"),
            "DELETE" => (Kind::Rest("delete"), "D"),
            _ => (Kind::Rest("operation"), "E"),
        };
        return c(kind, action, vec![Entity::Named(format!("/admin{admin}"))]);
    }
    let rest = path.strip_prefix("/fhir")?;
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    use Kind::Rest as R;
    match (segs.as_slice(), method) {
        (["metadata"] | [".well-known", ..], _) => None,
        ([], "POST") => c(R("transaction"), "E", Vec::new()),
        (["_history"], "GET") => c(R("history-system"), "R", vec![q(None)]),
        ([], "GET") => c(R("search-system"), "E", vec![q(None)]),
        ([t], "GET") => c(R("search-type"), "E", vec![q(Some(t))]),
        ([t, "_search"], "POST") => c(R("search-type"), "E", vec![q(Some(t))]),
        ([t], "POST") => c(R("create"), "C", vec![named_type(t)]),
        ([t], "PUT") => c(R("update"), "U", vec![q(Some(t))]),
        ([t], "PATCH") => c(R("patch"), "U", vec![q(Some(t))]),
        ([t], "DELETE") => c(R("delete"), "D", vec![q(Some(t))]),
        ([t, "_history"], "GET") => c(R("history-type"), "R", vec![q(Some(t))]),
        ([t, op], "POST") if op.starts_with('$') => c(
            R("operation"),
            "E",
            vec![Entity::Named(format!("{t}/{op}"))],
        ),
        ([t, id, op], _) if op.starts_with('$') => c(
            R("operation"),
            "E",
            vec![res(t, id, None), Entity::Named(format!("{t}/{op}"))],
        ),
        ([op], _) if op.starts_with('$') => {
            c(R("operation"), "E", vec![Entity::Named((*op).to_string())])
        }
        // `$export-poll-status/{job}`, `$export-file/{job}/{name}`.
        ([op, rest @ ..], _) if op.starts_with('$') => c(
            R("operation"),
            if method == "DELETE" { "D" } else { "E" },
            vec![Entity::Named(format!("{op}/{}", rest.join("/")))],
        ),
        ([t, op], _) if op.starts_with('$') => c(
            R("operation"),
            "E",
            vec![Entity::Named(format!("{t}/{op}"))],
        ),
        ([t, id], "GET") => c(R("read"), "R", vec![res(t, id, None)]),
        ([t, id], "PUT") => c(R("update"), "U", vec![res(t, id, None)]),
        ([t, id], "PATCH") => c(R("patch"), "U", vec![res(t, id, None)]),
        ([t, id], "DELETE") => c(R("delete"), "D", vec![res(t, id, None)]),
        ([t, id, "_history"], "GET") => c(R("history-instance"), "R", vec![res(t, id, None)]),
        ([t, id, "_history", v], "GET") => c(R("vread"), "R", vec![res(t, id, v.parse().ok())]),
        _ => c(R("operation"), "E", vec![Entity::Named(path.to_string())]),
    }
}

fn named_type(t: &str) -> Entity {
    Entity::Named((*t).to_string())
}

/// The `v3-DataOperation` code of a written version: `DELETE` for a delete, `CREATE` for
/// a first version (or a re-creation, answered 201), `UPDATE` otherwise.
pub fn activity(stored: &crate::store::Stored, status: u16) -> &'static str {
    if stored.deleted {
        "DELETE"
    } else if status == 201 {
        "CREATE"
    } else {
        "UPDATE"
    }
}

/// Where a write came from, for [`provenance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Who wrote.
    pub who: Who,
    /// The ledger row of the submission, when known in the transaction.
    pub submission: Option<i64>,
    /// The request id (the ledger keeps it too).
    pub request_id: String,
    /// The mapping that produced the resources, if any.
    pub mapping: Option<String>,
}

/// A Provenance for the versions `targets` (`Type/id/_history/n`) written by one request
/// with one `activity` (`CREATE`, `UPDATE`, `DELETE`), recorded at `recorded`.
pub fn provenance(targets: &[String], activity: &str, recorded: &str, origin: &Origin) -> Value {
    let mut agent = json!({
        "type": { "coding": [coding(
            "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
            "author",
            "Author",
        )] },
        "who": who_reference(&origin.who),
    });
    if !origin.who.site.is_empty() {
        agent["onBehalfOf"] = json!({
            "identifier": {
                "system": crate::auth::tenancy::SITE_SYSTEM,
                "value": origin.who.site,
            },
            "display": format!("site {}", origin.who.site),
        });
    }
    let mut entity = Vec::new();
    if let Some(id) = origin.submission {
        entity.push(json!({
            "role": "source",
            "what": {
                "identifier": { "system": SUBMISSION_SYSTEM, "value": id.to_string() },
                "display": format!("ledger entry {id} (/admin/submissions/{id})"),
            },
        }));
    }
    entity.push(json!({
        "role": "source",
        "what": {
            "identifier": { "system": REQUEST_SYSTEM, "value": origin.request_id },
            "display": format!("request {}", origin.request_id),
        },
    }));
    if let Some(m) = &origin.mapping {
        entity.push(json!({
            "role": "derivation",
            "what": {
                "identifier": { "system": MAPPING_SYSTEM, "value": m },
                "display": format!("mapping {m}"),
            },
        }));
    }
    let site = if origin.who.verified {
        origin.who.site.as_str()
    } else {
        ""
    };
    let mut v = json!({
        "resourceType": "Provenance",
        "meta": meta(site),
        "target": targets.iter().map(|t| json!({ "reference": t })).collect::<Vec<_>>(),
        "recorded": recorded,
        "activity": { "coding": [coding(
            "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
            activity,
            &activity.to_lowercase(),
        )] },
        "agent": [agent],
        "entity": entity,
    });
    if site.is_empty() {
        if let Some(o) = v.as_object_mut() {
            o.remove("meta");
        }
    }
    v
}

/// The claims (second part) of a compact JWT, unverified.
fn jwt_claims(token: &str) -> Option<Value> {
    use base64::Engine as _;
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Who a token request came from: on success, the claims of the access token the gateway
/// issued (`issued`: `sub`, `site`, `role`; authenticated); on failure, the client the
/// request claims (the assertion's `sub`, else its `iss`, else `client_id`), marked as a
/// claim. `None` when nothing names a client.
pub fn token_who(
    assertion: Option<&str>,
    client_id: Option<&str>,
    issued: Option<&str>,
) -> Option<Who> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(claims) = issued.and_then(jwt_claims) {
        return Some(Who {
            client: text(&claims, "sub")?,
            site: text(&claims, "site").unwrap_or_default(),
            role: text(&claims, "role").unwrap_or_default(),
            verified: true,
        });
    }
    let claims = assertion.and_then(jwt_claims);
    let client = claims
        .as_ref()
        .and_then(|c| text(c, "sub").or_else(|| text(c, "iss")))
        .or_else(|| client_id.map(str::to_string))?;
    Some(Who {
        client,
        site: String::new(),
        role: String::new(),
        verified: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_interactions() {
        let k = |m, p, q| classify(m, p, q).map(|c| (c.kind, c.action));
        assert_eq!(
            k("GET", "/fhir/Patient/1", ""),
            Some((Kind::Rest("read"), "R"))
        );
        assert_eq!(
            k("GET", "/fhir/Patient/1/_history/2", ""),
            Some((Kind::Rest("vread"), "R"))
        );
        assert_eq!(
            k("GET", "/fhir/Patient", "name=x"),
            Some((Kind::Rest("search-type"), "E"))
        );
        assert_eq!(
            k("POST", "/fhir", ""),
            Some((Kind::Rest("transaction"), "E"))
        );
        assert_eq!(
            k("POST", "/fhir/Patient/$validate", ""),
            Some((Kind::Rest("operation"), "E"))
        );
        assert_eq!(k("POST", "/auth/token", ""), Some((Kind::Login, "E")));
        assert_eq!(k("GET", "/fhir/metadata", ""), None);
        assert_eq!(k("GET", "/health", ""), None);
    }

    #[test]
    fn renders_balp_shape() {
        let e = AuditEvent {
            kind: Kind::Rest("read"),
            action: "R",
            recorded: "2026-01-01T00:00:00.000Z".into(),
            status: 404,
            who: Some(Who {
                client: "c1".into(),
                site: "s1".into(),
                role: "site".into(),
                verified: true,
            }),
            peer: Some("127.0.0.1".into()),
            request_id: "r1".into(),
            request: "GET /fhir/Patient/1".into(),
            entities: vec![Entity::Resource {
                res_type: "Patient".into(),
                id: "1".into(),
                version: None,
            }],
        };
        let v = e.to_json();
        assert_eq!(v["outcome"], "4");
        assert_eq!(v["agent"][0]["who"]["reference"], "Device/c1");
        assert_eq!(v["agent"][0]["network"]["address"], "127.0.0.1");
        assert_eq!(v["entity"][0]["what"]["reference"], "Patient/1");
        assert_eq!(v["meta"]["security"][0]["code"], "s1");
        assert_eq!(outcome(200), "0");
        assert_eq!(outcome(503), "8");
    }
}
