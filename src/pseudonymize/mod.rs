//! De-identification on ingest, the `pseudonymize` stage (… validate ──> **pseudonymize**
//! ──> store; run before validation so that what is validated is what is stored).
//!
//! [`apply`] is the pure core: a policy ([`Policy`], `profiles/deidentify/`), the study
//! secret ([`Key`]) and the submitting site turn a resource or a Bundle (the project's
//! [`Json`], numbers kept as written) into its de-identified form, or refuse it
//! ([`Unsafe`]) when the policy cannot make it safe. The same input always gives the same
//! output, and applying it twice changes nothing, so the site (`deidentify`, `client push
//! --deidentify`) and the server produce the same pseudonyms. `key` reads and makes key
//! files; `cli` is the `deidentify` subcommand.

pub mod cli;
mod dates;
pub mod key;
mod policy;

pub use key::Key;
pub use policy::{BirthDate, IdentifierAction, Policy, PolicyError};

use crate::model::json::Json;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;

/// The `meta.tag` system naming the policy version that processed a resource.
pub const POLICY_TAG_SYSTEM: &str = "https://a-imagio.eu/fhir/CodeSystem/deidentification-policy";
/// The security-label system of `PSEUDED`.
pub const SECURITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// Input the policy cannot make safe: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {reason}")]
pub struct Unsafe {
    /// FHIRPath-like location (`Bundle.entry[3].resource.note[0].text`).
    pub location: String,
    /// What was found.
    pub reason: String,
}

/// A policy with its key: what a server or a site client holds to de-identify.
#[derive(Clone)]
pub struct Pseudonymizer {
    policy: Arc<Policy>,
    key: Arc<Key>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("policy", &self.policy.version)
            .field("key", &"<secret>")
            .finish()
    }
}

impl Pseudonymizer {
    /// Pairs a policy with a key.
    pub fn new(policy: Policy, key: Key) -> Pseudonymizer {
        Pseudonymizer {
            policy: Arc::new(policy),
            key: Arc::new(key),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// De-identifies a resource or Bundle submitted by `site` (see [`apply`]).
    ///
    /// # Errors
    /// [`Unsafe`] when the policy cannot make it safe.
    pub fn apply(&self, site: &str, json: Json) -> Result<Json, Unsafe> {
        apply(&self.policy, &self.key, site, json)
    }

    /// The pseudonymous id of a Patient whose id at `site` is `local` (ids already
    /// pseudonymous are returned as they are).
    pub fn patient_id(&self, site: &str, local: &str) -> String {
        Ctx::new(&self.policy, &self.key, site).patient_id(local)
    }

    /// Rewrites the conditional criteria (`identifier=system|value`, `_id=`) of a write to
    /// `res_type`; other types' criteria are returned as they are.
    ///
    /// # Errors
    /// [`Unsafe`] for a Patient identifier without a system.
    pub fn criteria(&self, site: &str, res_type: &str, query: &str) -> Result<String, Unsafe> {
        Ctx::new(&self.policy, &self.key, site).criteria(res_type, query, "criteria")
    }
}

/// De-identifies `json` (one resource, or a Bundle with its entries, `fullUrl`s and
/// requests) as `policy` says, with pseudonyms keyed by `key` for `site`.
///
/// # Errors
/// [`Unsafe`] naming the location when a direct identifier of a patient appears in free
/// text the policy scans, or a conditional reference cannot be pseudonymized.
pub fn apply(policy: &Policy, key: &Key, site: &str, json: Json) -> Result<Json, Unsafe> {
    let ctx = Ctx::new(policy, key, site);
    let res_type = json
        .get("resourceType")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string();
    if res_type == "Bundle" {
        ctx.bundle(json)
    } else {
        let mut secrets = Vec::new();
        ctx.resource(json, &res_type, &mut secrets, &HashMap::new(), false)
    }
}

/// Hex of the first 16 bytes of HMAC-SHA-256(key, `a|b|c`).
fn keyed(key: &Key, parts: [&str; 3]) -> String {
    // HMAC takes keys of any length; `Key` is at least 32 bytes.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.bytes()) else {
        return String::new();
    };
    mac.update(parts[0].as_bytes());
    mac.update(b"|");
    mac.update(parts[1].as_bytes());
    mac.update(b"|");
    mac.update(parts[2].as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether `s` has the shape of a pseudonym (32 lower-case hex digits).
fn is_pseudonym(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `id` is a pseudonymous Patient id (`p-` + pseudonym).
fn is_pseudo_id(id: &str) -> bool {
    id.strip_prefix("p-").is_some_and(is_pseudonym)
}

/// A direct identifier to look for in free text (lower-cased).
type Secrets = Vec<String>;

struct Ctx<'a> {
    policy: &'a Policy,
    key: &'a Key,
    site: &'a str,
}

impl<'a> Ctx<'a> {
    fn new(policy: &'a Policy, key: &'a Key, site: &'a str) -> Ctx<'a> {
        Ctx { policy, key, site }
    }

    fn pseudonym(&self, system: &str, value: &str) -> String {
        keyed(self.key, [self.site, system, value])
    }

    fn patient_id(&self, local: &str) -> String {
        if is_pseudo_id(local) {
            local.to_string()
        } else {
            format!("p-{}", keyed(self.key, [self.site, "Patient", local]))
        }
    }

    /// An Identifier of a patient as a subject identifier (`None` without a value).
    fn subject_identifier(&self, id: &Json) -> Option<Json> {
        let value = id.get("value").and_then(Json::as_str)?;
        let system = id.get("system").and_then(Json::as_str).unwrap_or_default();
        let pseudo = if system == self.policy.subject_system && is_pseudonym(value) {
            value.to_string()
        } else {
            self.pseudonym(system, value)
        };
        Some(Json::Object(vec![
            (
                "system".into(),
                Json::String(self.policy.subject_system.clone()),
            ),
            ("value".into(), Json::String(pseudo)),
        ]))
    }

    /// Rewrites conditional criteria of `res_type` (a query string).
    fn criteria(&self, res_type: &str, query: &str, at: &str) -> Result<String, Unsafe> {
        if res_type != "Patient" {
            return Ok(query.to_string());
        }
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "identifier" => {
                    let Some((system, value)) = v.split_once('|') else {
                        return Err(Unsafe {
                            location: at.to_string(),
                            reason: format!(
                                "Patient?identifier={v} names no system: the pseudonym of an identifier needs its system (system|value)"
                            ),
                        });
                    };
                    let pseudo = if system == self.policy.subject_system && is_pseudonym(value) {
                        value.to_string()
                    } else {
                        self.pseudonym(system, value)
                    };
                    out.append_pair(
                        "identifier",
                        &format!("{}|{pseudo}", self.policy.subject_system),
                    );
                }
                "_id" => {
                    out.append_pair("_id", &self.patient_id(&v));
                }
                _ => {
                    out.append_pair(&k, &v);
                }
            }
        }
        Ok(out.finish())
    }

    /// The new text of a reference to a Patient (`None`: not a Patient reference).
    fn patient_reference(
        &self,
        reference: &str,
        full_urls: &HashMap<String, String>,
        at: &str,
    ) -> Result<Option<String>, Unsafe> {
        if let Some(mapped) = full_urls.get(reference) {
            return Ok(Some(mapped.clone()));
        }
        if let Some(query) = reference.strip_prefix("Patient?") {
            return Ok(Some(format!(
                "Patient?{}",
                self.criteria("Patient", query, at)?
            )));
        }
        let rest = if let Some(r) = reference.strip_prefix("Patient/") {
            r
        } else if reference.contains("://") {
            match reference.rsplit_once("/Patient/") {
                Some((_, r)) => r,
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        let (id, history) = match rest.split_once('/') {
            Some((id, h)) => (id, Some(h)),
            None => (id_of(rest), None),
        };
        let new = self.patient_id(id);
        Ok(Some(match history {
            Some(h) if new == id => format!("Patient/{id}/{h}"),
            _ => format!("Patient/{new}"),
        }))
    }

    /// De-identifies a Bundle: Patient entries get their pseudonymous ids (a `POST` without
    /// `ifNoneExist` becomes a `PUT` to it), requests and references are rewritten, and every
    /// resource is de-identified with the direct identifiers of all the Bundle's patients.
    fn bundle(&self, mut json: Json) -> Result<Json, Unsafe> {
        let mut secrets = Secrets::new();
        let mut full_urls: HashMap<String, String> = HashMap::new();
        let entries: &[Json] = json.get("entry").map_or(&[], Json::items);
        for e in entries {
            let Some(r) = e.get("resource") else { continue };
            if r.get("resourceType").and_then(Json::as_str) != Some("Patient") {
                continue;
            }
            patient_secrets(r, &mut secrets);
            if let Some(local) = entry_patient_local(e) {
                let new = format!("Patient/{}", self.patient_id(&local));
                if let Some(f) = e.get("fullUrl").and_then(Json::as_str) {
                    full_urls.insert(f.to_string(), new);
                }
            }
        }
        let Some(Json::Array(entries)) = json.get_mut("entry") else {
            return Ok(json);
        };
        for (i, entry) in entries.iter_mut().enumerate() {
            let at = format!("Bundle.entry[{i}]");
            let is_patient = entry
                .get("resource")
                .and_then(|r| r.get("resourceType"))
                .and_then(Json::as_str)
                == Some("Patient");
            let local = if is_patient {
                entry_patient_local(entry)
            } else {
                None
            };
            let new_id = local.as_deref().map(|l| self.patient_id(l));
            // The request.
            if let Some(request) = entry.get_mut("request") {
                self.request(request, new_id.as_deref(), &format!("{at}.request"))?;
            }
            // The fullUrl of a Patient may be its local id: references to it were mapped.
            if is_patient {
                if let Some(id) = &new_id {
                    set(entry, "fullUrl", None);
                    if let Some(r) = entry.get_mut("resource") {
                        set(r, "id", Some(Json::String(id.clone())));
                    }
                }
            }
            if let Some(r) = remove(entry, "resource") {
                let t = r
                    .get("resourceType")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string();
                let mut local_secrets = secrets.clone();
                let done = self
                    .resource(r, &t, &mut local_secrets, &full_urls, false)
                    .map_err(|mut u| {
                        u.location = relocate(&u.location, &format!("{at}.resource"));
                        u
                    })?;
                insert_after(entry, "fullUrl", "resource", done);
            }
        }
        Ok(json)
    }

    /// Rewrites an entry's request: Patient ids and criteria; a Patient `POST` without
    /// `ifNoneExist` becomes a `PUT` to the pseudonymous id.
    fn request(&self, request: &mut Json, new_id: Option<&str>, at: &str) -> Result<(), Unsafe> {
        let method = request
            .get("method")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        let url = request
            .get("url")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (url.clone(), None),
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let res_type = parts.first().copied().unwrap_or_default().to_string();
        if let Some(v) = request
            .get("ifNoneExist")
            .and_then(Json::as_str)
            .map(str::to_string)
        {
            let new = self.criteria(&res_type, &v, &format!("{at}.ifNoneExist"))?;
            set(request, "ifNoneExist", Some(Json::String(new)));
        }
        if res_type != "Patient" {
            return Ok(());
        }
        let new_url = match (method.as_str(), parts.as_slice(), &query, new_id) {
            ("POST", [_], None, Some(id)) if request.get("ifNoneExist").is_none() => {
                set(request, "method", Some(Json::String("PUT".into())));
                format!("Patient/{id}")
            }
            (_, [_, id, rest @ ..], None, _) => {
                let mut u = format!("Patient/{}", self.patient_id(id));
                for r in rest {
                    u.push('/');
                    u.push_str(r);
                }
                u
            }
            (_, [_], Some(q), _) => {
                format!(
                    "Patient?{}",
                    self.criteria("Patient", q, &format!("{at}.url"))?
                )
            }
            _ => url,
        };
        set(request, "url", Some(Json::String(new_url)));
        Ok(())
    }

    /// De-identifies one resource of type `res_type`; `secrets` are the direct
    /// identifiers known from the submission, `full_urls` the Bundle's Patient `fullUrl`s.
    /// A `contained` resource is neither labelled (dom-5) nor date-shifted on its own (its
    /// container's shift covers it).
    fn resource(
        &self,
        mut json: Json,
        res_type: &str,
        secrets: &mut Secrets,
        full_urls: &HashMap<String, String>,
        contained: bool,
    ) -> Result<Json, Unsafe> {
        let already = has_coding(&json, "tag", POLICY_TAG_SYSTEM, &self.policy.version);
        if res_type == "Patient" {
            patient_secrets(&json, secrets);
        }
        reference_secrets(&json, secrets);
        secrets.sort();
        secrets.dedup();
        // 1. Free text the policy keeps must not name the patient.
        for path in Policy::paths(&self.policy.scan, res_type) {
            scan(&json, &path, res_type, secrets)?;
        }
        // 2. Removals.
        for path in Policy::paths(&self.policy.remove, res_type) {
            remove_path(&mut json, &path);
        }
        if !self.policy.remove_extensions.is_empty() {
            remove_extensions(&mut json, &self.policy.remove_extensions);
        }
        // 3. Identifiers and ids.
        match res_type {
            "Patient" => {
                // A Patient without an id from the site is known by its first identifier.
                if json.get("id").is_none() {
                    if let Some(local) = first_identifier(&json) {
                        insert_after(&mut json, "resourceType", "id", Json::String(local));
                    }
                }
                let ids: Vec<Json> = json
                    .get("identifier")
                    .map_or(&[][..], Json::items)
                    .iter()
                    .filter_map(|i| self.subject_identifier(i))
                    .collect();
                let mut unique: Vec<Json> = Vec::with_capacity(ids.len());
                for i in ids {
                    if !unique.iter().any(|u| u.same(&i)) {
                        unique.push(i);
                    }
                }
                set(
                    &mut json,
                    "identifier",
                    (!unique.is_empty()).then_some(Json::Array(unique)),
                );
                let local = json.get("id").and_then(Json::as_str).map(str::to_string);
                if let Some(local) = local {
                    set(&mut json, "id", Some(Json::String(self.patient_id(&local))));
                }
            }
            "Practitioner" | "PractitionerRole" => match self.policy.practitioner_identifiers {
                IdentifierAction::Keep => {}
                IdentifierAction::Remove => set(&mut json, "identifier", None),
                IdentifierAction::Pseudonymize => {
                    if let Some(Json::Array(ids)) = json.get_mut("identifier") {
                        for id in ids.iter_mut() {
                            let system = id
                                .get("system")
                                .and_then(Json::as_str)
                                .unwrap_or_default()
                                .to_string();
                            if let Some(v) = id.get("value").and_then(Json::as_str) {
                                if !is_pseudonym(v) {
                                    let p = self.pseudonym(&system, v);
                                    set(id, "value", Some(Json::String(p)));
                                }
                            }
                        }
                    }
                }
            },
            _ => {}
        }
        // 4. References to patients.
        self.references(&mut json, full_urls, res_type)?;
        // 5. Dates.
        if self.policy.date_shift_days > 0 && !already && !contained {
            if let Some(patient) = patient_of(&json, res_type) {
                let days = self.shift_days(&patient);
                dates::shift_all(&mut json, days);
            }
        }
        if res_type == "Patient" {
            let birth = json
                .get("birthDate")
                .and_then(Json::as_str)
                .map(str::to_string);
            if let Some(b) = birth {
                match self.policy.birth_date {
                    BirthDate::Year => {
                        let year: String = b.chars().take(4).collect();
                        set(&mut json, "birthDate", Some(Json::String(year)));
                    }
                    BirthDate::Remove => set(&mut json, "birthDate", None),
                }
            }
        }
        // 6. Contained resources.
        if let Some(Json::Array(contained)) = json.get_mut("contained") {
            for (i, c) in std::mem::take(contained).into_iter().enumerate() {
                let t = c
                    .get("resourceType")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string();
                let done = self
                    .resource(c, &t, &mut secrets.clone(), full_urls, true)
                    .map_err(|mut u| {
                        u.location = relocate(&u.location, &format!("{res_type}.contained[{i}]"));
                        u
                    })?;
                contained.push(done);
            }
        }
        // 7. The policy version.
        if !contained {
            self.mark(&mut json);
        }
        Ok(json)
    }

    /// The secret per-patient date shift in `-N..=N` days.
    fn shift_days(&self, patient_id: &str) -> i64 {
        let n = i64::from(self.policy.date_shift_days);
        let h = keyed(self.key, [self.site, "date-shift", patient_id]);
        let v = u64::from_str_radix(&h[..15], 16).unwrap_or(0);
        // `v` < 2^60, and 2n+1 is small: the cast and the remainder are exact.
        (v % (2 * n as u64 + 1)) as i64 - n
    }

    /// Rewrites every Reference to a Patient in `json`.
    fn references(
        &self,
        json: &mut Json,
        full_urls: &HashMap<String, String>,
        at: &str,
    ) -> Result<(), Unsafe> {
        match json {
            Json::Object(members) => {
                let reference = members
                    .iter()
                    .find(|(k, _)| k == "reference")
                    .and_then(|(_, v)| v.as_str().map(str::to_string));
                let typed_patient = members
                    .iter()
                    .any(|(k, v)| k == "type" && v.as_str() == Some("Patient"));
                let mut is_patient = typed_patient;
                if let Some(r) = reference {
                    if let Some(new) = self.patient_reference(&r, full_urls, at)? {
                        is_patient = true;
                        for (k, v) in members.iter_mut() {
                            if k == "reference" {
                                *v = Json::String(new.clone());
                            }
                        }
                    }
                }
                if is_patient {
                    members.retain(|(k, _)| k != "display");
                    for (k, v) in members.iter_mut() {
                        if k == "identifier" && matches!(v, Json::Object(_)) {
                            if let Some(new) = self.subject_identifier(v) {
                                *v = new;
                            }
                        }
                    }
                }
                for (k, v) in members.iter_mut() {
                    if k != "contained" {
                        self.references(v, full_urls, at)?;
                    }
                }
            }
            Json::Array(items) => {
                for v in items {
                    self.references(v, full_urls, at)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Adds the `PSEUDED` security label and the policy version tag, once.
    fn mark(&self, json: &mut Json) {
        if !matches!(json, Json::Object(_)) {
            return;
        }
        if json.get("meta").is_none() {
            insert_after(json, "id", "meta", Json::Object(Vec::new()));
        }
        let Some(meta) = json.get_mut("meta") else {
            return;
        };
        let coding = |system: &str, code: &str| {
            Json::Object(vec![
                ("system".into(), Json::String(system.into())),
                ("code".into(), Json::String(code.into())),
            ])
        };
        for (list, system, code) in [
            ("security", SECURITY_SYSTEM, "PSEUDED"),
            ("tag", POLICY_TAG_SYSTEM, self.policy.version.as_str()),
        ] {
            if has_coding_in(meta, list, system, code) {
                continue;
            }
            match meta.get_mut(list) {
                Some(Json::Array(items)) => items.push(coding(system, code)),
                _ => set(meta, list, Some(Json::Array(vec![coding(system, code)]))),
            }
        }
    }
}

/// The site's own id of the Patient of a Bundle entry: from `PUT Patient/X`, the
/// `fullUrl`, the resource's `id`, or else its first identifier (`system|value`).
fn entry_patient_local(entry: &Json) -> Option<String> {
    let request = entry.get("request");
    let method = request.and_then(|r| r.get("method")).and_then(Json::as_str);
    let url = request.and_then(|r| r.get("url")).and_then(Json::as_str);
    if let (Some("POST"), Some(_)) = (method, request.and_then(|r| r.get("ifNoneExist"))) {
        // A conditional create keeps the server's choice of id.
        return None;
    }
    if let Some(u) = url {
        if let Some(rest) = u.trim_start_matches('/').strip_prefix("Patient/") {
            return Some(id_of(rest).to_string());
        }
    }
    if let Some(f) = entry.get("fullUrl").and_then(Json::as_str) {
        let id = if let Some(u) = f.strip_prefix("urn:uuid:") {
            Some(u)
        } else {
            f.rsplit_once("/Patient/").map(|(_, r)| id_of(r))
        };
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            return Some(id.to_string());
        }
    }
    let r = entry.get("resource")?;
    if let Some(id) = r.get("id").and_then(Json::as_str) {
        return Some(id.to_string());
    }
    first_identifier(r)
}

/// `system|value` of a resource's first identifier.
fn first_identifier(r: &Json) -> Option<String> {
    let first = r.get("identifier").map_or(&[][..], Json::items).first()?;
    Some(format!(
        "{}|{}",
        first
            .get("system")
            .and_then(Json::as_str)
            .unwrap_or_default(),
        first.get("value").and_then(Json::as_str)?
    ))
}

/// The id part of `id[/_history/n]`.
fn id_of(rest: &str) -> &str {
    rest.split('/').next().unwrap_or(rest)
}

/// The id of the Patient a resource belongs to: its own, or that of its first Patient
/// reference (after rewriting).
fn patient_of(json: &Json, res_type: &str) -> Option<String> {
    if res_type == "Patient" {
        return json.get("id").and_then(Json::as_str).map(str::to_string);
    }
    for key in ["subject", "patient", "beneficiary", "individual"] {
        if let Some(r) = json
            .get(key)
            .and_then(|r| r.get("reference"))
            .and_then(Json::as_str)
        {
            if let Some(id) = r.strip_prefix("Patient/") {
                return Some(id_of(id).to_string());
            }
        }
    }
    None
}

/// Adds the direct identifiers of a Patient resource to `out`.
fn patient_secrets(p: &Json, out: &mut Secrets) {
    let mut add = |s: Option<&str>| {
        if let Some(s) = s.map(str::trim).filter(|s| s.chars().count() >= 2) {
            out.push(s.to_lowercase());
        }
    };
    for n in p.get("name").map_or(&[][..], Json::items) {
        add(n.get("family").and_then(Json::as_str));
        add(n.get("text").and_then(Json::as_str));
        for g in n.get("given").map_or(&[][..], Json::items) {
            add(g.as_str());
        }
    }
    for i in p.get("identifier").map_or(&[][..], Json::items) {
        add(i.get("value").and_then(Json::as_str));
    }
    for t in p.get("telecom").map_or(&[][..], Json::items) {
        add(t.get("value").and_then(Json::as_str));
    }
    for a in p.get("address").map_or(&[][..], Json::items) {
        for l in a.get("line").map_or(&[][..], Json::items) {
            add(l.as_str());
        }
        add(a.get("city").and_then(Json::as_str));
        add(a.get("postalCode").and_then(Json::as_str));
        add(a.get("text").and_then(Json::as_str));
    }
    if let Some(b) = p.get("birthDate").and_then(Json::as_str) {
        if b.len() == 10 {
            add(Some(b));
        }
    }
}

/// Adds the display texts and identifier values of Patient references in `json`.
fn reference_secrets(json: &Json, out: &mut Secrets) {
    match json {
        Json::Object(members) => {
            let patient = members.iter().any(|(k, v)| {
                (k == "type" && v.as_str() == Some("Patient"))
                    || (k == "reference"
                        && v.as_str().is_some_and(|r| {
                            r.starts_with("Patient/") || r.starts_with("Patient?")
                        }))
            });
            if patient {
                for (k, v) in members {
                    match (k.as_str(), v) {
                        ("display", Json::String(s)) if s.chars().count() >= 2 => {
                            out.push(s.to_lowercase());
                        }
                        ("identifier", id) => {
                            if let Some(s) = id.get("value").and_then(Json::as_str) {
                                out.push(s.to_lowercase());
                            }
                        }
                        _ => {}
                    }
                }
            }
            for (k, v) in members {
                if k != "contained" {
                    reference_secrets(v, out);
                }
            }
        }
        Json::Array(items) => {
            for v in items {
                reference_secrets(v, out);
            }
        }
        _ => {}
    }
}

/// Refuses a resource when a string below `path` contains one of `secrets` as a whole
/// word (case-insensitively).
fn scan(json: &Json, path: &[&str], at: &str, secrets: &Secrets) -> Result<(), Unsafe> {
    if secrets.is_empty() {
        return Ok(());
    }
    match (path.split_first(), json) {
        (_, Json::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                scan(v, path, &format!("{at}[{i}]"), secrets)?;
            }
            Ok(())
        }
        (Some((first, rest)), Json::Object(members)) => {
            for (k, v) in members {
                if k == first {
                    scan(v, rest, &format!("{at}.{k}"), secrets)?;
                }
            }
            Ok(())
        }
        (None, Json::Object(members)) => {
            for (k, v) in members {
                scan(v, path, &format!("{at}.{k}"), secrets)?;
            }
            Ok(())
        }
        (None, Json::String(s)) => match secrets.iter().find(|x| contains_word(s, x)) {
            Some(_) => Err(Unsafe {
                location: at.to_string(),
                reason: "free text contains a direct identifier of the patient (a name, \
                         identifier, address, telecom or birth date); remove it at the site \
                         and send the resource again"
                    .into(),
            }),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Whether `text` contains `word` (already lower-case) between non-alphanumeric
/// characters, ignoring case.
fn contains_word(text: &str, word: &str) -> bool {
    let lower = text.to_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(word) {
        let start = from + pos;
        let end = start + word.len();
        let before = lower[..start].chars().next_back();
        let after = lower[end..].chars().next();
        if !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric) {
            return true;
        }
        from = start + lower[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Removes the element at `path` (arrays on the way walked).
fn remove_path(json: &mut Json, path: &[&str]) {
    match (path.split_first(), json) {
        (_, Json::Array(items)) => {
            for v in items {
                remove_path(v, path);
            }
        }
        (Some((last, [])), Json::Object(members)) => {
            members.retain(|(k, _)| k != last);
        }
        (Some((first, rest)), Json::Object(members)) => {
            for (k, v) in members.iter_mut() {
                if k == first {
                    remove_path(v, rest);
                }
            }
        }
        _ => {}
    }
}

/// Removes extensions with one of `urls` wherever they occur.
fn remove_extensions(json: &mut Json, urls: &[String]) {
    match json {
        Json::Object(members) => {
            for (k, v) in members.iter_mut() {
                if k == "extension" || k == "modifierExtension" {
                    if let Json::Array(items) = v {
                        items.retain(|e| {
                            !e.get("url")
                                .and_then(Json::as_str)
                                .is_some_and(|u| urls.iter().any(|x| x == u))
                        });
                    }
                }
                remove_extensions(v, urls);
            }
            members.retain(|(k, v)| {
                !((k == "extension" || k == "modifierExtension")
                    && matches!(v, Json::Array(a) if a.is_empty()))
            });
        }
        Json::Array(items) => {
            for v in items {
                remove_extensions(v, urls);
            }
        }
        _ => {}
    }
}

fn has_coding(json: &Json, list: &str, system: &str, code: &str) -> bool {
    json.get("meta")
        .is_some_and(|m| has_coding_in(m, list, system, code))
}

fn has_coding_in(meta: &Json, list: &str, system: &str, code: &str) -> bool {
    meta.get(list).map_or(&[][..], Json::items).iter().any(|c| {
        c.get("system").and_then(Json::as_str) == Some(system)
            && c.get("code").and_then(Json::as_str) == Some(code)
    })
}

/// Sets (or, with `None`, removes) member `key` of an object, keeping its position.
fn set(json: &mut Json, key: &str, value: Option<Json>) {
    let Json::Object(members) = json else { return };
    match (members.iter().position(|(k, _)| k == key), value) {
        (Some(i), Some(v)) => members[i].1 = v,
        (Some(i), None) => {
            members.remove(i);
        }
        (None, Some(v)) => members.push((key.to_string(), v)),
        (None, None) => {}
    }
}

/// Takes member `key` out of an object.
fn remove(json: &mut Json, key: &str) -> Option<Json> {
    let Json::Object(members) = json else {
        return None;
    };
    let i = members.iter().position(|(k, _)| k == key)?;
    Some(members.remove(i).1)
}

/// Inserts member `key` after member `after` (or first when there is none).
fn insert_after(json: &mut Json, after: &str, key: &str, value: Json) {
    let Json::Object(members) = json else { return };
    let at = members
        .iter()
        .position(|(k, _)| k == after)
        .map_or(0, |i| i + 1);
    members.insert(at.min(members.len()), (key.to_string(), value));
}

/// Moves a location made for a resource alone (`Procedure.note[0]`) under `prefix`.
fn relocate(location: &str, prefix: &str) -> String {
    match location.split_once('.') {
        Some((_, rest)) => format!("{prefix}.{rest}"),
        None => prefix.to_string(),
    }
}

#[cfg(test)]
mod tests;
