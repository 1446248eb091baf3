use super::*;
use std::path::Path;

fn key(text: &str) -> Key {
    Key::from_bytes(text.as_bytes(), Path::new("test")).expect("key")
}

fn p() -> Pseudonymizer {
    Pseudonymizer::new(
        Policy::default_policy().expect("policy"),
        key("a test key of at least thirty-two bytes"),
    )
}

fn j(text: &str) -> Json {
    Json::parse(text, 64).expect("json")
}

const PATIENT: &str = r#"{"resourceType":"Patient","id":"LOCAL7",
  "text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann Smith</div>"},
  "extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName","valueString":"Jones"}],
  "identifier":[{"type":{"text":"MRN"},"system":"urn:mrn","value":"MRN-123"},{"system":"http://hl7.org/fhir/sid/us-ssn","value":"999-11-2222"}],
  "name":[{"family":"Smith","given":["Ann"]}],"telecom":[{"system":"phone","value":"555-1234"}],
  "gender":"female","birthDate":"1950-04-03","address":[{"line":["1 Elm St"],"city":"Springfield"}],
  "contact":[{"name":{"family":"Smith"}}],"communication":[{"language":{"text":"English"}}]}"#;

#[test]
fn a_patient_keeps_only_pseudonyms_and_the_birth_year() {
    let p = p();
    let out = p.apply("site-a", j(PATIENT)).expect("safe").to_text();
    for gone in [
        "Smith",
        "Ann",
        "555-1234",
        "Elm",
        "Springfield",
        "MRN-123",
        "999-11-2222",
        "Jones",
        "1950-04-03",
        "LOCAL7",
        "English",
        "\"text\"",
    ] {
        assert!(!out.contains(gone), "{gone} left in {out}");
    }
    let json = j(&out);
    assert_eq!(json.get("birthDate").and_then(Json::as_str), Some("1950"));
    let ids = json.get("identifier").expect("identifiers").items();
    assert_eq!(ids.len(), 2);
    let mrn = Ctx::new(p.policy(), &p.key, "site-a").pseudonym("urn:mrn", "MRN-123");
    assert_eq!(
        ids[0].get("value").and_then(Json::as_str),
        Some(mrn.as_str())
    );
    assert_eq!(
        ids[0].get("system").and_then(Json::as_str),
        Some("https://a-imagio.eu/fhir/sid/subject")
    );
    assert_eq!(
        json.get("id").and_then(Json::as_str),
        Some(p.patient_id("site-a", "LOCAL7").as_str())
    );
    assert!(
        out.contains("PSEUDED") && out.contains("imagio-deid-1"),
        "{out}"
    );
    assert_eq!(json.get("gender").and_then(Json::as_str), Some("female"));
}

#[test]
fn pseudonyms_are_stable_keyed_and_per_site_and_applying_twice_changes_nothing() {
    let p = p();
    let once = p.apply("site-a", j(PATIENT)).expect("safe");
    let again = p.apply("site-a", j(PATIENT)).expect("safe");
    assert!(once.same(&again));
    let twice = p.apply("site-a", once.clone()).expect("safe");
    assert!(once.same(&twice), "{}\n{}", once.to_text(), twice.to_text());
    let other_site = p.apply("site-b", j(PATIENT)).expect("safe");
    assert!(!once.same(&other_site));
    let other_key = Pseudonymizer::new(
        Policy::default_policy().expect("policy"),
        key("another key, also thirty-two bytes long"),
    );
    assert!(!once.same(&other_key.apply("site-a", j(PATIENT)).expect("safe")));
}

#[test]
fn a_bundle_links_every_resource_to_the_pseudonymous_patient() {
    let p = p();
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[
      {{"fullUrl":"urn:uuid:aaaa","resource":{PATIENT},"request":{{"method":"POST","url":"Patient"}}}},
      {{"fullUrl":"urn:uuid:bbbb","resource":{{"resourceType":"Observation","status":"final",
        "code":{{"text":"x"}},"subject":{{"reference":"urn:uuid:aaaa","display":"Ann Smith"}}}},
        "request":{{"method":"POST","url":"Observation"}}}},
      {{"resource":{{"resourceType":"Procedure","status":"completed","subject":{{"reference":"Patient?identifier=urn:mrn|MRN-123"}},
        "performer":[{{"actor":{{"type":"Patient","identifier":{{"system":"urn:mrn","value":"MRN-123"}}}}}}]}},
        "request":{{"method":"POST","url":"Procedure"}}}},
      {{"resource":{{"resourceType":"Patient","id":"L2","identifier":[{{"system":"urn:mrn","value":"M2"}}]}},
        "request":{{"method":"PUT","url":"Patient?identifier=urn:mrn|M2"}}}},
      {{"resource":{{"resourceType":"Patient","identifier":[{{"system":"urn:mrn","value":"M3"}}]}},
        "request":{{"method":"POST","url":"Patient","ifNoneExist":"identifier=urn:mrn|M3"}}}}
    ]}}"#
    );
    let out = p.apply("site-a", j(&bundle)).expect("safe");
    let text = out.to_text();
    assert!(
        !text.contains("MRN-123") && !text.contains("Smith") && !text.contains("M2"),
        "{text}"
    );
    let entries = out.get("entry").expect("entries").items();
    // The Patient was POSTed under urn:uuid:aaaa: it is PUT to the id derived from it.
    let id = p.patient_id("site-a", "aaaa");
    let req = entries[0].get("request").expect("request");
    assert_eq!(req.get("method").and_then(Json::as_str), Some("PUT"));
    assert_eq!(
        req.get("url").and_then(Json::as_str),
        Some(format!("Patient/{id}").as_str())
    );
    assert!(entries[0].get("fullUrl").is_none());
    let obs = entries[1].get("resource").expect("obs");
    let subject = obs.get("subject").expect("subject");
    assert_eq!(
        subject.get("reference").and_then(Json::as_str),
        Some(format!("Patient/{id}").as_str())
    );
    assert!(subject.get("display").is_none());
    // Conditional references and references by identifier use the subject pseudonym.
    let mrn = Ctx::new(p.policy(), &p.key, "site-a").pseudonym("urn:mrn", "MRN-123");
    let proc_ = entries[2].get("resource").expect("procedure").to_text();
    assert!(
        proc_.contains(&format!(
            "identifier=https%3A%2F%2Fa-imagio.eu%2Ffhir%2Fsid%2Fsubject%7C{mrn}"
        )),
        "{proc_}"
    );
    assert!(proc_.contains(&format!("\"value\":\"{mrn}\"")), "{proc_}");
    // Conditional update and create criteria.
    let m2 = Ctx::new(p.policy(), &p.key, "site-a").pseudonym("urn:mrn", "M2");
    let url = entries[3]
        .get("request")
        .and_then(|r| r.get("url"))
        .and_then(Json::as_str);
    assert!(
        url.is_some_and(|u| u.ends_with(&format!("%7C{m2}"))),
        "{url:?}"
    );
    let r4 = entries[4].get("request").expect("request");
    assert_eq!(r4.get("method").and_then(Json::as_str), Some("POST"));
    let m3 = Ctx::new(p.policy(), &p.key, "site-a").pseudonym("urn:mrn", "M3");
    assert!(r4
        .get("ifNoneExist")
        .and_then(Json::as_str)
        .is_some_and(|c| c.ends_with(&m3)));
    // A later single resource of the same patient, by its local id, links up.
    let later = p
        .apply(
            "site-a",
            j(r#"{"resourceType":"Observation","status":"final","code":{"text":"y"},"subject":{"reference":"Patient/aaaa"}}"#),
        )
        .expect("safe");
    assert_eq!(
        later
            .get("subject")
            .and_then(|s| s.get("reference"))
            .and_then(Json::as_str),
        Some(format!("Patient/{id}").as_str())
    );
    // And the whole Bundle de-identified again is unchanged.
    assert!(p.apply("site-a", out.clone()).expect("safe").same(&out));
}

#[test]
fn a_name_in_free_text_is_refused_with_its_location() {
    let p = p();
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[
      {{"fullUrl":"urn:uuid:aaaa","resource":{PATIENT},"request":{{"method":"POST","url":"Patient"}}}},
      {{"resource":{{"resourceType":"Procedure","status":"completed","subject":{{"reference":"urn:uuid:aaaa"}},
        "note":[{{"text":"ablation went well"}},{{"text":"Mrs SMITH tolerated it"}}]}},
        "request":{{"method":"POST","url":"Procedure"}}}}]}}"#
    );
    let e = p.apply("site-a", j(&bundle)).expect_err("unsafe");
    assert_eq!(e.location, "Bundle.entry[1].resource.note[1].text");
    // The MRN in a single resource that names its patient by identifier.
    let single = r#"{"resourceType":"Procedure","status":"completed",
      "subject":{"type":"Patient","identifier":{"system":"urn:mrn","value":"MRN-123"}},
      "note":[{"text":"see MRN-123 for details"}]}"#;
    let e = p.apply("site-a", j(single)).expect_err("unsafe");
    assert_eq!(e.location, "Procedure.note[0].text");
    // Whole words only: "Smithson" is not "Smith"; unscanned elements are not searched.
    let fine = bundle.replace("Mrs SMITH", "Dr Smithson");
    assert!(p.apply("site-a", j(&fine)).is_ok());
    assert!(contains_word("a b-Smith, c", "smith"));
    assert!(!contains_word("blacksmith", "smith"));
}

#[test]
fn criteria_without_a_system_cannot_be_pseudonymized() {
    let p = p();
    let e = p
        .criteria("s", "Patient", "identifier=123")
        .expect_err("no system");
    assert!(e.reason.contains("no system"));
    assert_eq!(
        p.criteria("s", "Observation", "identifier=123")
            .expect("kept"),
        "identifier=123"
    );
    let id = p.criteria("s", "Patient", "_id=L1").expect("id");
    assert_eq!(id, format!("_id={}", p.patient_id("s", "L1")));
}

#[test]
fn dates_shift_by_one_secret_offset_per_patient() {
    let mut policy = Policy::default_policy().expect("policy");
    policy.date_shift_days = 30;
    let p = Pseudonymizer::new(policy, key("a test key of at least thirty-two bytes"));
    let patient = p.apply("s", j(PATIENT)).expect("safe");
    let obs = p
        .apply(
            "s",
            j(r#"{"resourceType":"Observation","status":"final","code":{"text":"y"},
              "subject":{"reference":"Patient/LOCAL7"},"effectiveDateTime":"1950-04-03T10:00:00Z"}"#),
        )
        .expect("safe");
    let shifted = obs
        .get("effectiveDateTime")
        .and_then(Json::as_str)
        .expect("date");
    let id = patient.get("id").and_then(Json::as_str).expect("id");
    let days = Ctx::new(p.policy(), &p.key, "s").shift_days(id);
    assert_eq!(
        shifted,
        dates::shift("1950-04-03T10:00:00Z", days).expect("date")
    );
    // Applying again (site, then server) does not shift twice.
    let again = p.apply("s", obs.clone()).expect("safe");
    assert!(again.same(&obs));
    // Other patients get other offsets (almost always: check a few).
    let distinct: std::collections::HashSet<i64> = (0..20)
        .map(|i| Ctx::new(p.policy(), &p.key, "s").shift_days(&format!("p{i}")))
        .collect();
    assert!(distinct.len() > 5);
    assert!(distinct.iter().all(|d| d.abs() <= 30));
}

#[test]
fn contained_resources_are_de_identified_but_not_labelled() {
    let p = p();
    let text = r##"{"resourceType":"Observation","status":"final","code":{"text":"y"},
      "contained":[{"resourceType":"Patient","id":"c1","name":[{"family":"Smith"}],
        "identifier":[{"system":"urn:mrn","value":"MRN-9"}]}],
      "subject":{"reference":"#c1"}}"##;
    let out = p.apply("s", j(text)).expect("safe");
    let c = &out.get("contained").expect("contained").items()[0];
    assert!(c.get("name").is_none() && c.get("meta").is_none());
    assert!(!out.to_text().contains("MRN-9"));
    assert!(out.get("meta").is_some());
}
