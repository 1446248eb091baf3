//! The Group of each site: `Group/site-CODE` (`type` person, `actual`, labelled with the
//! site), whose members are the site's patients, for `Group/[id]/$export`. It is created
//! and extended by [`add_member`] in the same store transaction that stores a labelled
//! Patient, so it is always current; the sponsor may define other Groups through the REST
//! API.

use crate::model::json::Json;
use crate::store::{Expect, StoreError, Tx};

/// The id of a site's Group.
pub fn group_id(site: &str) -> String {
    format!("site-{site}")
}

/// Whether a site code can be part of an id (`[A-Za-z0-9\-\.]`, 59 characters at most).
fn usable(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= 59
        && site
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The site's Group with `members` (patient ids), as JSON text.
pub fn group_json(site: &str, members: &[String]) -> String {
    let member: Vec<serde_json::Value> = members
        .iter()
        .map(|id| serde_json::json!({"entity": {"reference": format!("Patient/{id}")}}))
        .collect();
    serde_json::json!({
        "resourceType": "Group",
        "id": group_id(site),
        "meta": {"security": [{"system": crate::auth::tenancy::SITE_SYSTEM, "code": site}]},
        "type": "person",
        "actual": true,
        "name": format!("Patients of site {site}"),
        "quantity": members.len(),
        "member": member,
    })
    .to_string()
}

/// The patient ids of a stored site Group.
fn members_of(content: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(content) else {
        return Vec::new();
    };
    v.get("member")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| {
            m.pointer("/entity/reference")?
                .as_str()?
                .strip_prefix("Patient/")
        })
        .map(str::to_string)
        .collect()
}

/// Adds the Patient `patient_id` to its site's Group (created when missing) in `tx`;
/// nothing when it is already a member or the site code cannot name a Group.
///
/// # Errors
/// Database failures (a lost race is [`StoreError::Conflict`], retried with the whole
/// transaction).
pub async fn add_member(tx: &mut Tx, site: &str, patient_id: &str) -> Result<(), StoreError> {
    if !usable(site) {
        return Ok(());
    }
    let id = group_id(site);
    let current = tx.read("Group", &id).await?;
    let (mut members, expect) = match &current {
        Some(s) if !s.deleted => (
            s.content.as_deref().map(members_of).unwrap_or_default(),
            Expect::Version(s.version_id),
        ),
        Some(s) => (Vec::new(), Expect::Version(s.version_id)),
        None => (Vec::new(), Expect::Any),
    };
    if members.iter().any(|m| m == patient_id) {
        return Ok(());
    }
    members.push(patient_id.to_string());
    let text = group_json(site, &members);
    let mut json = Json::parse(&text, 16)
        .map_err(|e| StoreError::Payload(std::io::Error::other(format!("site group: {e}"))))?;
    let index = match crate::model::parse(&text) {
        Ok(element) => crate::search::index(&element),
        Err(_) => Vec::new(),
    };
    tx.put("Group", &id, &mut json, expect, None, &index)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_round_trip() {
        let text = group_json("a1", &["p1".into(), "p2".into()]);
        assert_eq!(members_of(&text), ["p1", "p2"]);
        assert!(text.contains("\"actual\":true"));
        assert!(!usable("a b"));
        assert!(usable("site-1"));
    }
}
