//! The records themselves, as pure functions: [`AuditEvent`] (what one interaction was, in
//! the shape of IHE BALP's RESTful patterns) and [`provenance`], both rendered as FHIR R4
//! JSON; [`classify`] tells which interaction a request is.

use crate::model::json::Json;
use crate::search::IndexRow;
use serde_json::Value;

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

/// A JSON object from its members, in order.
fn obj<const N: usize>(members: [(&str, Json); N]) -> Json {
    Json::Object(
        members
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// A JSON string.
fn text(s: impl Into<String>) -> Json {
    Json::String(s.into())
}

/// Appends `key: value` to an object.
fn put(object: &mut Json, key: &str, value: Json) {
    if let Json::Object(members) = object {
        members.push((key.to_string(), value));
    }
}

/// A Coding. The display is left out: each display would be one more index row (`:text`)
/// per record, and the codes are those of published code systems.
fn coding(system: &str, code: &str) -> Json {
    obj([("system", text(system)), ("code", text(code))])
}

/// The text of the `who` Reference of a client.
fn who_display(who: &Who) -> String {
    let mut display = who.client.clone();
    if !who.site.is_empty() {
        display.push_str(&format!(" (site {}, {})", who.site, who.role));
    }
    if !who.verified {
        display.push_str(" (claimed, not authenticated)");
    }
    display
}

/// The `who` Reference of a client: `Device/{client}` (the registered client; no Device
/// resource is stored) with the client id as identifier.
fn who_reference(who: &Who) -> Json {
    let mut v = obj([
        (
            "identifier",
            obj([
                ("system", text(CLIENT_SYSTEM)),
                ("value", text(&who.client)),
            ]),
        ),
        ("display", text(who_display(who))),
    ]);
    if is_fhir_id(&who.client) {
        put(&mut v, "reference", text(format!("Device/{}", who.client)));
    }
    v
}

/// Whether `s` is a FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `meta` with the site label of `site` (tenancy: a site client sees its own records);
/// `None` without a site.
fn meta(site: &str) -> Option<Json> {
    (!site.is_empty()).then(|| {
        obj([(
            "security",
            Json::Array(vec![coding(crate::auth::tenancy::SITE_SYSTEM, site)]),
        )])
    })
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
    pub fn to_json(&self) -> Json {
        let (event_type, subtype) = self.kind_codings();
        let mut client = obj([
            (
                "type",
                obj([("coding", Json::Array(vec![coding(DCM, "110153")]))]),
            ),
            ("requestor", Json::Bool(true)),
        ]);
        match &self.who {
            Some(w) => {
                put(&mut client, "who", who_reference(w));
                put(&mut client, "name", text(&w.client));
                if !w.role.is_empty() {
                    let role = obj([("coding", Json::Array(vec![coding(ROLE_SYSTEM, &w.role)]))]);
                    put(&mut client, "role", Json::Array(vec![role]));
                }
            }
            None => put(
                &mut client,
                "who",
                obj([("display", text("unauthenticated caller"))]),
            ),
        }
        if let Some(peer) = &self.peer {
            put(
                &mut client,
                "network",
                obj([("address", text(peer)), ("type", text("2"))]),
            );
        }
        let server = obj([
            (
                "type",
                obj([("coding", Json::Array(vec![coding(DCM, "110152")]))]),
            ),
            ("who", obj([("display", text(GATEWAY))])),
            ("requestor", Json::Bool(false)),
        ]);
        let mut entities: Vec<Json> = self.entities.iter().map(entity_json).collect();
        entities.push(obj([
            ("what", obj([("identifier", self.request_identifier())])),
            ("type", coding(BALP_ENTITY, "XrequestId")),
        ]));
        let mut v = obj([("resourceType", text("AuditEvent"))]);
        if let Some(m) = meta(self.site()) {
            put(&mut v, "meta", m);
        }
        for (key, value) in [
            ("type", event_type),
            ("subtype", Json::Array(vec![subtype])),
            ("action", text(self.action)),
            ("recorded", text(&self.recorded)),
            ("outcome", text(outcome(self.status))),
            (
                "outcomeDesc",
                text(format!("HTTP {} to {}", self.status, self.request)),
            ),
            ("agent", Json::Array(vec![client, server])),
            (
                "source",
                obj([
                    ("site", text(GATEWAY)),
                    ("observer", obj([("display", text(GATEWAY))])),
                    ("type", Json::Array(vec![coding(SOURCE_TYPE, "4")])),
                ]),
            ),
            ("entity", Json::Array(entities)),
        ] {
            put(&mut v, key, value);
        }
        v
    }

    /// `type` and `subtype` of the event.
    fn kind_codings(&self) -> (Json, Json) {
        let (t, s) = self.kind_codes();
        (coding(t.0, t.1), coding(s.0, s.1))
    }

    /// The (system, code) of `type` and of `subtype`.
    fn kind_codes(&self) -> ((&'static str, &'static str), (&'static str, &str)) {
        match &self.kind {
            Kind::Rest(code) => ((EVENT_TYPE, "rest"), (RESTFUL, code)),
            Kind::Login => ((DCM, "110114"), (DCM, "110122")),
        }
    }

    /// The request id as an Identifier (no `value` when there is none: FHIR strings are
    /// never empty).
    fn request_identifier(&self) -> Json {
        let mut identifier = obj([("system", text(REQUEST_SYSTEM))]);
        if !self.request_id.is_empty() {
            put(&mut identifier, "value", text(&self.request_id));
        }
        identifier
    }

    /// The search index rows of [`AuditEvent::to_json`], made from the event itself: what
    /// [`crate::search::index`] finds in its JSON with the R4 AuditEvent SearchParameters
    /// (a test holds the two equal), without parsing JSON or evaluating FHIRPath, so
    /// recording an event costs microseconds. `None` when the definitions in use index
    /// AuditEvent by other parameters than those this function knows (a study definition
    /// added one): the caller then indexes the JSON.
    pub fn index_rows(&self) -> Option<Vec<IndexRow>> {
        if !known_parameters() {
            return None;
        }
        let mut rows = Vec::new();
        let token = |rows: &mut Vec<IndexRow>, param: &str, system: &str, code: &str| {
            if !code.is_empty() {
                rows.push(IndexRow::Token {
                    param: param.into(),
                    system: system.into(),
                    code: code.into(),
                });
            }
        };
        let string = |rows: &mut Vec<IndexRow>, param: &str, value: &str| {
            if !value.is_empty() {
                rows.push(IndexRow::String {
                    param: param.into(),
                    value: value.to_lowercase(),
                });
            }
        };
        let reference = |rows: &mut Vec<IndexRow>, param: &str, target: &str| {
            rows.push(IndexRow::Reference {
                param: param.into(),
                target: target.into(),
            });
        };
        let site = self.site();
        if !site.is_empty() {
            token(
                &mut rows,
                "_security",
                crate::auth::tenancy::SITE_SYSTEM,
                site,
            );
        }
        token(&mut rows, "action", "", self.action);
        if let Some(peer) = &self.peer {
            string(&mut rows, "address", peer);
        }
        if let Some(w) = &self.who {
            if !w.client.is_empty() {
                rows.push(IndexRow::ReferenceIdentifier {
                    param: "agent".into(),
                    system: CLIENT_SYSTEM.into(),
                    value: w.client.clone(),
                });
            }
            if is_fhir_id(&w.client) {
                reference(&mut rows, "agent", &format!("Device/{}", w.client));
            }
            string(&mut rows, "agent-name", &w.client);
            if !w.role.is_empty() {
                token(&mut rows, "agent-role", ROLE_SYSTEM, &w.role);
            }
        }
        if let Some((low, high)) = crate::search::date_range(&self.recorded) {
            rows.push(IndexRow::Date {
                param: "date".into(),
                low,
                high,
            });
        }
        for e in &self.entities {
            token(&mut rows, "entity-type", ENTITY_TYPE, "2");
            match e {
                Entity::Resource { res_type, id, .. } => {
                    let target = format!("{res_type}/{id}");
                    if target.starts_with("Patient/") || target.contains("/Patient/") {
                        reference(&mut rows, "patient", &target);
                    }
                    reference(&mut rows, "entity", &target);
                    token(&mut rows, "entity-role", OBJECT_ROLE, "4");
                }
                Entity::Query { res_type, query } => {
                    token(&mut rows, "entity-role", OBJECT_ROLE, "24");
                    if let (Some(t), true) = (res_type, query.is_empty()) {
                        string(&mut rows, "entity-name", t);
                    }
                }
                Entity::Named(name) => {
                    token(&mut rows, "entity-role", OBJECT_ROLE, "3");
                    string(&mut rows, "entity-name", name);
                }
            }
        }
        if !self.request_id.is_empty() {
            rows.push(IndexRow::ReferenceIdentifier {
                param: "entity".into(),
                system: REQUEST_SYSTEM.into(),
                value: self.request_id.clone(),
            });
        }
        token(&mut rows, "entity-type", BALP_ENTITY, "XrequestId");
        token(&mut rows, "outcome", "", outcome(self.status));
        token(&mut rows, "site", "", GATEWAY);
        let ((ts, tc), (ss, sc)) = self.kind_codes();
        token(&mut rows, "type", ts, tc);
        token(&mut rows, "subtype", ss, sc);
        rows.sort();
        rows.dedup();
        Some(rows)
    }
}

/// The name the gateway gives itself in its records.
const GATEWAY: &str = "imagio-gateway";

/// The AuditEvent search parameters [`AuditEvent::index_rows`] covers (those of R4 and of
/// every resource); the parameters that find nothing in the gateway's events (`altid`,
/// `policy`, `source`: a display-only observer, `_profile`, `_tag`, `_source`) included.
const KNOWN_PARAMETERS: [&str; 22] = [
    "_profile",
    "_security",
    "_source",
    "_tag",
    "action",
    "address",
    "agent",
    "agent-name",
    "agent-role",
    "altid",
    "date",
    "entity",
    "entity-name",
    "entity-role",
    "entity-type",
    "outcome",
    "patient",
    "policy",
    "site",
    "source",
    "subtype",
    "type",
];

/// Whether the definitions in use index AuditEvent by exactly [`KNOWN_PARAMETERS`].
fn known_parameters() -> bool {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        let mut codes = crate::search::indexed_parameters("AuditEvent");
        codes.sort();
        codes.dedup();
        codes == KNOWN_PARAMETERS
    })
}

fn entity_json(e: &Entity) -> Json {
    let system_object = coding(ENTITY_TYPE, "2");
    match e {
        Entity::Resource {
            res_type,
            id,
            version,
        } => {
            let mut v = obj([
                (
                    "what",
                    obj([("reference", text(format!("{res_type}/{id}")))]),
                ),
                ("type", system_object),
                ("role", coding(OBJECT_ROLE, "4")),
            ]);
            if let Some(n) = version {
                let detail = obj([
                    ("type", text("version")),
                    ("valueString", text(n.to_string())),
                ]);
                put(&mut v, "detail", Json::Array(vec![detail]));
            }
            v
        }
        Entity::Query { res_type, query } => {
            use base64::Engine as _;
            let mut v = obj([("type", system_object), ("role", coding(OBJECT_ROLE, "24"))]);
            // sev-1: a name or a query, not both (the type searched is in `outcomeDesc`).
            match res_type {
                _ if !query.is_empty() => {
                    let encoded =
                        base64::engine::general_purpose::STANDARD.encode(query.as_bytes());
                    put(&mut v, "query", text(encoded));
                    put(&mut v, "description", text(query));
                }
                Some(t) => put(&mut v, "name", text(t)),
                None => {}
            }
            v
        }
        Entity::Named(name) => obj([
            ("type", system_object),
            ("role", coding(OBJECT_ROLE, "3")),
            ("name", text(name)),
        ]),
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
pub fn provenance(targets: &[String], activity: &str, recorded: &str, origin: &Origin) -> Json {
    let author = coding(
        "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
        "author",
    );
    let mut agent = obj([
        ("type", obj([("coding", Json::Array(vec![author]))])),
        ("who", who_reference(&origin.who)),
    ]);
    if !origin.who.site.is_empty() {
        let site = &origin.who.site;
        put(
            &mut agent,
            "onBehalfOf",
            obj([
                (
                    "identifier",
                    obj([
                        ("system", text(crate::auth::tenancy::SITE_SYSTEM)),
                        ("value", text(site)),
                    ]),
                ),
                ("display", text(format!("site {site}"))),
            ]),
        );
    }
    let source = |role: &str, system: &str, value: &str, display: String| {
        let mut identifier = obj([("system", text(system))]);
        if !value.is_empty() {
            put(&mut identifier, "value", text(value));
        }
        obj([
            ("role", text(role)),
            (
                "what",
                obj([("identifier", identifier), ("display", text(display))]),
            ),
        ])
    };
    let mut entity = Vec::new();
    if let Some(id) = origin.submission {
        let display = format!("ledger entry {id} (/admin/submissions/{id})");
        entity.push(source(
            "source",
            SUBMISSION_SYSTEM,
            &id.to_string(),
            display,
        ));
    }
    let display = format!("request {}", origin.request_id);
    entity.push(source(
        "source",
        REQUEST_SYSTEM,
        &origin.request_id,
        display,
    ));
    if let Some(m) = &origin.mapping {
        entity.push(source(
            "derivation",
            MAPPING_SYSTEM,
            m,
            format!("mapping {m}"),
        ));
    }
    let site = if origin.who.verified {
        origin.who.site.as_str()
    } else {
        ""
    };
    let mut v = obj([("resourceType", text("Provenance"))]);
    if let Some(m) = meta(site) {
        put(&mut v, "meta", m);
    }
    let targets = targets
        .iter()
        .map(|t| obj([("reference", text(t))]))
        .collect();
    let operation = coding(
        "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
        activity,
    );
    for (key, value) in [
        ("target", Json::Array(targets)),
        ("recorded", text(recorded)),
        ("activity", obj([("coding", Json::Array(vec![operation]))])),
        ("agent", Json::Array(vec![agent])),
        ("entity", Json::Array(entity)),
    ] {
        put(&mut v, key, value);
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
        let v: Value = serde_json::from_str(&e.to_json().to_text()).unwrap();
        assert_eq!(v["resourceType"], "AuditEvent");
        assert_eq!(v["outcome"], "4");
        assert_eq!(v["agent"][0]["who"]["reference"], "Device/c1");
        assert_eq!(v["agent"][0]["network"]["address"], "127.0.0.1");
        assert_eq!(v["entity"][0]["what"]["reference"], "Patient/1");
        assert_eq!(v["entity"][1]["what"]["identifier"]["value"], "r1");
        assert_eq!(v["meta"]["security"][0]["code"], "s1");
        assert_eq!(outcome(200), "0");
        assert_eq!(outcome(503), "8");
    }

    /// Events of every shape the gateway records.
    fn variety() -> Vec<AuditEvent> {
        let who = |client: &str, site: &str, role: &str, verified| Who {
            client: client.into(),
            site: site.into(),
            role: role.into(),
            verified,
        };
        let base = AuditEvent {
            kind: Kind::Rest("read"),
            action: "R",
            recorded: "2026-03-04T05:06:07.890Z".into(),
            status: 200,
            who: None,
            peer: None,
            request_id: String::new(),
            request: "GET /fhir/Patient/1".into(),
            entities: Vec::new(),
        };
        let resource = |t: &str, id: &str, version| Entity::Resource {
            res_type: t.into(),
            id: id.into(),
            version,
        };
        vec![
            base.clone(),
            AuditEvent {
                who: Some(who("site-nl01", "NL01", "site", true)),
                peer: Some("10.0.0.7".into()),
                request_id: "0f1e-22".into(),
                entities: vec![resource("Patient", "p-1", None)],
                ..base.clone()
            },
            AuditEvent {
                kind: Kind::Rest("search-type"),
                action: "E",
                status: 403,
                who: Some(who("Sponsor Client!", "", "sponsor", true)),
                peer: Some("::1".into()),
                request_id: "r2".into(),
                entities: vec![Entity::Query {
                    res_type: Some("Observation".into()),
                    query: "subject=Patient/x&date=ge2020".into(),
                }],
                ..base.clone()
            },
            AuditEvent {
                kind: Kind::Rest("transaction"),
                action: "E",
                status: 500,
                who: Some(who("nl01", "NL01", "", false)),
                request_id: "r3".into(),
                entities: vec![
                    resource("Patient", "a", Some(2)),
                    resource("Procedure", "b", Some(1)),
                    resource("Observation", "c", None),
                    Entity::Named("$export".into()),
                    Entity::Query {
                        res_type: None,
                        query: String::new(),
                    },
                ],
                ..base.clone()
            },
            AuditEvent {
                kind: Kind::Login,
                action: "E",
                recorded: "2026-11-28T00:00:00Z".into(),
                status: 401,
                who: Some(who("admin", "", "admin", true)),
                ..base
            },
        ]
    }

    #[test]
    fn index_rows_are_what_the_search_parameters_find_in_the_json() {
        for e in variety() {
            let text = e.to_json().to_text();
            let element = crate::model::parse(&text).expect("the event parses as FHIR");
            let generic = crate::search::index(&element);
            assert!(!generic.is_empty());
            assert_eq!(e.index_rows(), Some(generic), "{text}");
        }
    }

    #[test]
    fn events_and_provenance_are_valid_r4() {
        let validator = crate::validate::Validator::new(crate::definitions::Registry::core());
        let origin = Origin {
            who: Who {
                client: "site-nl01".into(),
                site: "NL01".into(),
                role: "site".into(),
                verified: true,
            },
            submission: Some(7),
            request_id: "r9".into(),
            mapping: Some("nl01-registry".into()),
        };
        let p = provenance(
            &["Patient/a/_history/1".to_string()],
            "CREATE",
            "2026-01-01T00:00:00Z",
            &origin,
        );
        let mut texts: Vec<String> = variety().iter().map(|e| e.to_json().to_text()).collect();
        texts.push(p.to_text());
        for text in texts {
            let issues = validator.validate_json(&text, &[]);
            let errors: Vec<_> = issues.iter().filter(|i| i.severity.is_error()).collect();
            assert!(errors.is_empty(), "{text}: {errors:?}");
        }
    }
}
