//! Per-site data isolation. What a site client writes carries its site as a security label
//! (`meta.security` with [`SITE_SYSTEM`]) that the gateway sets on every write: a site
//! client cannot forge another site's label nor remove its own. To a site client, a
//! resource labelled with another site (or with none) does not exist: reads, version reads,
//! history, conditional matches, updates and deletes behave as for an unknown id (404).
//! Sponsor and admin clients see every site; what they write keeps the labels they send.
//!
//! The store keeps each version's label as its `site` column ([`owner_of`], migration
//! 0005), so searches, their includes, totals and history are filtered in SQL with
//! [`site_filter`]; single-resource checks use [`visible`] and [`foreign`].
//!
//! The checks use the caller of the request being handled ([`super::current`]); with no
//! caller (code outside a request) nothing is filtered.

use super::{current, Role};
use crate::model::json::Json;
use crate::store::Stored;

/// The code system of site labels.
pub const SITE_SYSTEM: &str = "https://a-imagio.eu/fhir/CodeSystem/site";

/// The site a site client acts for, if the caller is one: the site [`label`] sets.
pub fn caller_site() -> Option<String> {
    current().filter(|p| p.role == Role::Site).map(|p| p.site)
}

/// Sets the site label of a resource about to be stored by a site client: every label of
/// [`SITE_SYSTEM`] it carries is replaced by the caller's site.
pub fn label(resource: &mut Json) {
    let Some(site) = caller_site() else {
        return;
    };
    let Json::Object(members) = resource else {
        return;
    };
    let coding = Json::Object(vec![
        ("system".into(), Json::String(SITE_SYSTEM.into())),
        ("code".into(), Json::String(site)),
    ]);
    let meta = match members.iter_mut().position(|(k, _)| k == "meta") {
        Some(i) => &mut members[i].1,
        None => {
            let at = members
                .iter()
                .position(|(k, _)| k == "id")
                .or_else(|| members.iter().position(|(k, _)| k == "resourceType"))
                .map_or(0, |p| p + 1);
            members.insert(at, ("meta".into(), Json::Object(Vec::new())));
            &mut members[at].1
        }
    };
    if !matches!(meta, Json::Object(_)) {
        *meta = Json::Object(Vec::new());
    }
    let Json::Object(meta) = meta else {
        return;
    };
    match meta.iter_mut().find(|(k, _)| k == "security") {
        Some((_, Json::Array(list))) => {
            list.retain(|c| c.get("system").and_then(Json::as_str) != Some(SITE_SYSTEM));
            list.push(coding);
        }
        Some((_, other)) => *other = Json::Array(vec![coding]),
        None => meta.push(("security".into(), Json::Array(vec![coding]))),
    }
}

/// The site label of stored resource text, if it has one.
pub fn owner(content: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(content).ok()?;
    v.pointer("/meta/security")?
        .as_array()?
        .iter()
        .find(|c| c.get("system").and_then(|s| s.as_str()) == Some(SITE_SYSTEM))
        .and_then(|c| c.get("code")?.as_str().map(str::to_string))
}

/// The site label of a resource about to be stored (the first label of [`SITE_SYSTEM`]
/// with a code, as [`owner`] reads stored text): what the store keeps as the owning site.
pub fn owner_of(resource: &Json) -> Option<String> {
    resource
        .get("meta")?
        .get("security")?
        .items()
        .iter()
        .find(|c| c.get("system").and_then(Json::as_str) == Some(SITE_SYSTEM))
        .and_then(|c| c.get("code")?.as_str().map(str::to_string))
}

/// The site the caller's searches and history are limited to (the store filters on its
/// `site` column): `Some` for a site client, `None` for sponsors, admins and code outside
/// a request.
pub fn site_filter() -> Option<String> {
    caller_site()
}

/// Whether the caller may see this version. A site client sees only its site's resources;
/// a delete (which keeps no content, so no label) is hidden from site clients.
pub fn visible(stored: &Stored) -> bool {
    let Some(site) = caller_site() else {
        return true;
    };
    stored
        .content
        .as_deref()
        .and_then(owner)
        .is_some_and(|o| o == site)
}

/// Whether writing over this current version would touch another site's data: true for a
/// site client and a version (not a delete) that is not labelled with its site.
pub fn foreign(stored: &Stored) -> bool {
    caller_site().is_some() && !stored.deleted && !visible(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_replaces_forged_site_labels() {
        let mut r = Json::parse(
            r#"{"resourceType":"Patient","meta":{"security":[{"system":"https://a-imagio.eu/fhir/CodeSystem/site","code":"other"},{"system":"x","code":"y"}]}}"#,
            16,
        )
        .expect("json");
        let p = super::super::Principal {
            client_id: "c".into(),
            site: "mine".into(),
            role: Role::Site,
            scopes: super::super::scopes::Scopes::default(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(super::super::with_principal(p, async {
            label(&mut r);
        }));
        let text = r.to_text();
        assert_eq!(owner(&text).as_deref(), Some("mine"));
        assert!(!text.contains("\"other\""));
        assert!(text.contains("\"y\""));
        let mut bare = Json::parse(r#"{"resourceType":"Patient","id":"1"}"#, 4).expect("json");
        let p = super::super::Principal {
            client_id: "c".into(),
            site: "s2".into(),
            role: Role::Site,
            scopes: super::super::scopes::Scopes::default(),
        };
        rt.block_on(super::super::with_principal(p, async {
            label(&mut bare);
        }));
        assert_eq!(
            bare.to_text(),
            r#"{"resourceType":"Patient","id":"1","meta":{"security":[{"system":"https://a-imagio.eu/fhir/CodeSystem/site","code":"s2"}]}}"#
        );
    }
}
