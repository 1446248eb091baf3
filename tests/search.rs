//! End-to-end tests of the search interaction (`GET /fhir/{type}?...`,
//! `POST /fhir/{type}/_search`): the real router on 127.0.0.1 (a free port), authentication
//! off, on a SQLite file always and on PostgreSQL when `IMAGIO_TEST_DATABASE_URL` is set
//! (each test in a fresh schema).

use imagio_gateway::serve::ValidationMode;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[macro_use]
mod common;
use common::*;

fn ids(b: &Value) -> Vec<String> {
    let mut v: Vec<String> = b["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|x| x["search"]["mode"] == "match")
                .map(|x| x["resource"]["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn create(s: &Server, body: Value) -> String {
    let t = body["resourceType"].as_str().expect("type").to_string();
    let (st, _, b) = s.post(&format!("/fhir/{t}"), &body, &[]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    b["id"].as_str().expect("id").to_string()
}

async fn search(s: &Server, q: &str) -> Value {
    let (st, _, b) = s.get(&format!("/fhir/{q}")).await;
    assert_eq!(st, StatusCode::OK, "{q}: {b}");
    assert_eq!(b["type"], "searchset");
    b
}

async fn expect(s: &Server, q: &str, want: &[&String]) {
    let b = search(s, q).await;
    let mut w: Vec<String> = want.iter().map(|x| (*x).clone()).collect();
    w.sort();
    assert_eq!(ids(&b), w, "{q}");
}

mod scenarios {
    use super::*;

    pub async fn params(s: &Server) {
        let a = create(
            s,
            json!({"resourceType": "Patient",
            "identifier": [{"system": "http://h.org/mrn", "value": "A1"}],
            "name": [{"family": "Müller", "given": ["Anna"]}], "birthDate": "1950-03-02"}),
        )
        .await;
        let b = create(
            s,
            json!({"resourceType": "Patient",
            "identifier": [{"value": "B2"}],
            "name": [{"family": "Smithson", "given": ["Bob"]}], "birthDate": "1972"}),
        )
        .await;
        let o = create(
            s,
            json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{a}")},
            "effectiveDateTime": "2021-06-01T10:00:00Z"}),
        )
        .await;
        // token
        expect(s, "Patient?identifier=http://h.org/mrn|A1", &[&a]).await;
        expect(s, "Patient?identifier=A1", &[&a]).await;
        expect(s, "Patient?identifier=|B2", &[&b]).await;
        expect(s, "Patient?identifier=|A1", &[]).await;
        expect(s, "Patient?identifier=http://h.org/mrn|", &[&a]).await;
        expect(s, "Patient?identifier=A1,B2", &[&a, &b]).await;
        expect(s, "Patient?identifier=zzz", &[]).await;
        // string
        expect(s, "Patient?family=mü", &[&a]).await;
        expect(s, "Patient?name=SMITH", &[&b]).await;
        expect(s, "Patient?name:exact=smith", &[]).await;
        expect(s, "Patient?name:exact=Smithson", &[&b]).await;
        expect(s, "Patient?name:contains=thso", &[&b]).await;
        expect(s, "Patient?name=thso", &[]).await;
        // date
        expect(s, "Patient?birthdate=1950", &[&a]).await;
        expect(s, "Patient?birthdate=1950-03", &[&a]).await;
        expect(s, "Patient?birthdate=1950-04", &[]).await;
        expect(s, "Patient?birthdate=ge1960", &[&b]).await;
        expect(s, "Patient?birthdate=lt1960", &[&a]).await;
        expect(s, "Patient?birthdate=ne1950", &[&b]).await;
        expect(s, "Patient?birthdate=sa1951", &[&b]).await;
        expect(s, "Patient?birthdate=eb1951", &[&a]).await;
        expect(s, "Patient?birthdate=ge1940&birthdate=le1960", &[&a]).await;
        expect(s, "Observation?date=ge2021-01-01", &[&o]).await;
        expect(s, "Observation?date=lt2021-01-01", &[]).await;
        // reference
        expect(s, &format!("Observation?subject=Patient/{a}"), &[&o]).await;
        expect(s, &format!("Observation?subject={a}"), &[&o]).await;
        expect(
            s,
            &format!("Observation?subject=http://x.org/fhir/Patient/{a}"),
            &[&o],
        )
        .await;
        expect(s, &format!("Observation?subject=Patient/{b}"), &[]).await;
        expect(s, "Observation?code=http://loinc.org|8867-4", &[&o]).await;
        // _id, _lastUpdated, AND across parameters
        expect(s, &format!("Patient?_id={a}"), &[&a]).await;
        expect(s, &format!("Patient?_id={a}&identifier=B2"), &[]).await;
        expect(s, "Patient?_lastUpdated=gt2000-01-01", &[&a, &b]).await;
        expect(s, "Patient?_lastUpdated=lt2000-01-01", &[]).await;
        // a deleted resource is not found
        let (st, _, _) = s
            .send(
                reqwest::Method::DELETE,
                &format!("/fhir/Patient/{b}"),
                None,
                &[],
            )
            .await;
        assert!(st.is_success());
        expect(s, "Patient?identifier=B2", &[]).await;
        // POST _search
        let resp = s
            .client
            .post(s.url("/fhir/Patient/_search"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("identifier=A1")
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), StatusCode::OK);
        let v: Value = resp.json().await.expect("json");
        assert_eq!(ids(&v), vec![a.clone()]);
    }

    pub async fn paging(s: &Server) {
        let mut all = Vec::new();
        for i in 0..5 {
            all.push(
                create(
                    s,
                    json!({"resourceType": "Patient", "gender": "male",
                "identifier": [{"value": format!("P{i}")}]}),
                )
                .await,
            );
        }
        let b = search(s, "Patient?gender=male&_count=3&_total=accurate").await;
        assert_eq!(b["total"], 5);
        assert_eq!(ids(&b).len(), 3);
        let links = b["link"].as_array().expect("links");
        assert!(links.iter().any(|l| l["relation"] == "self"));
        let next = links
            .iter()
            .find(|l| l["relation"] == "next")
            .expect("next")["url"]
            .as_str()
            .expect("url")
            .to_string();
        let path = &next[next.find("/fhir/").expect("fhir")..];
        let (st, _, b2) = s.get(path).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(ids(&b2).len(), 2);
        assert!(!b2["link"]
            .as_array()
            .expect("links")
            .iter()
            .any(|l| l["relation"] == "next"));
        let mut seen = ids(&b);
        seen.extend(ids(&b2));
        seen.sort();
        all.sort();
        assert_eq!(seen, all);
        let c = search(s, "Patient?gender=male&_summary=count").await;
        assert_eq!(c["total"], 5);
        assert!(c["entry"].as_array().is_none_or(Vec::is_empty));
    }

    pub async fn unknown(s: &Server) {
        let a = create(s, json!({"resourceType": "Patient", "gender": "other"})).await;
        let b = search(s, "Patient?gender=other&bogus=1").await;
        assert_eq!(ids(&b), vec![a]);
        let oo = b["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .find(|e| e["search"]["mode"] == "outcome")
            .expect("outcome entry");
        assert_eq!(oo["resource"]["resourceType"], "OperationOutcome");
        assert_eq!(oo["resource"]["issue"][0]["severity"], "warning");
        let (st, _, b) = s
            .send(
                reqwest::Method::GET,
                "/fhir/Patient?gender=other&bogus=1",
                None,
                &[("prefer", "handling=strict")],
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert_eq!(b["resourceType"], "OperationOutcome");
        let (st, _, _) = s.get("/fhir/Patient?birthdate=notadate").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }

    fn obs(value: Value) -> Value {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
            "valueQuantity": value})
    }

    pub async fn quantity(s: &Server) {
        let ucum = "http://unitsofmeasure.org";
        let cm = create(
            s,
            obs(json!({"value": 0.7, "unit": "cm", "system": ucum, "code": "cm"})),
        )
        .await;
        let mm = create(
            s,
            obs(json!({"value": 12, "unit": "mm", "system": ucum, "code": "mm"})),
        )
        .await;
        let mg = create(
            s,
            obs(json!({"value": 5, "unit": "mg", "system": ucum, "code": "mg"})),
        )
        .await;
        let tab = create(
            s,
            obs(json!({"value": 3, "unit": "tablets", "system": "http://x.org/units", "code": "tab"})),
        )
        .await;
        // 7 mm is 0.7 cm: compared in UCUM base units
        expect(s, "Observation?value-quantity=7||mm", &[&cm]).await;
        expect(
            s,
            &format!("Observation?value-quantity=7|{ucum}|mm"),
            &[&cm],
        )
        .await;
        expect(
            s,
            &format!("Observation?value-quantity=0.7|{ucum}|cm"),
            &[&cm],
        )
        .await;
        expect(s, "Observation?value-quantity=0.007||m", &[&cm]).await;
        expect(
            s,
            &format!("Observation?value-quantity=gt1|{ucum}|cm"),
            &[&mm],
        )
        .await;
        expect(s, "Observation?value-quantity=lt1||cm", &[&cm]).await;
        expect(s, "Observation?value-quantity=le0.5||cm", &[]).await;
        expect(s, "Observation?value-quantity=ge7||mm", &[&cm, &mm]).await;
        expect(s, "Observation?value-quantity=ne7||mm", &[&mm]).await;
        expect(s, "Observation?value-quantity=5000||ug", &[&mg]).await;
        // the implicit precision of the number: 12.4 covers [12.35, 12.45), 1e1 covers [5, 15)
        expect(s, "Observation?value-quantity=12.4||mm", &[]).await;
        expect(s, "Observation?value-quantity=1e1||mm", &[&cm, &mm]).await;
        expect(s, "Observation?value-quantity=ap11||mm", &[&mm]).await;
        expect(s, "Observation?value-quantity=sa10||mm", &[&mm]).await;
        expect(s, "Observation?value-quantity=eb10||mm", &[&cm]).await;
        // a bare number matches any unit; units outside UCUM as written (code or unit text)
        expect(s, "Observation?value-quantity=3", &[&tab]).await;
        expect(s, "Observation?value-quantity=12", &[&mm]).await;
        expect(
            s,
            "Observation?value-quantity=3|http://x.org/units|tab",
            &[&tab],
        )
        .await;
        expect(s, "Observation?value-quantity=3||tablets", &[&tab]).await;
        expect(s, "Observation?value-quantity=3|http://y.org|tab", &[]).await;
        expect(s, "Observation?value-quantity=3||mm", &[]).await;
        expect(s, "Observation?value-quantity=7||mm,5||mg", &[&cm, &mg]).await;
        expect(
            s,
            "Observation?value-quantity=ge7||mm&value-quantity=lt1||cm",
            &[&cm],
        )
        .await;
        // an update replaces the index rows: the old value is no longer found
        let mut changed = obs(json!({"value": 6, "unit": "mg", "system": ucum, "code": "mg"}));
        changed["id"] = json!(mg);
        let (st, _, b) = s
            .put(&format!("/fhir/Observation/{mg}"), &changed, &[])
            .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        expect(s, "Observation?value-quantity=5000||ug", &[]).await;
        expect(s, "Observation?value-quantity=6||mg", &[&mg]).await;
        // number
        let r = create(
            s,
            json!({"resourceType": "RiskAssessment", "status": "final",
            "subject": {"reference": "Patient/x"},
            "prediction": [{"probabilityDecimal": 0.25}]}),
        )
        .await;
        expect(s, "RiskAssessment?probability=0.25", &[&r]).await;
        expect(s, "RiskAssessment?probability=gt0.2", &[&r]).await;
        expect(s, "RiskAssessment?probability=lt0.2", &[]).await;
        let (st, _, _) = s.get("/fhir/Observation?value-quantity=lots").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }

    pub async fn uri_and_meta(s: &Server) {
        let vs = |url: &str| json!({"resourceType": "ValueSet", "status": "draft", "url": url});
        let a = create(s, vs("http://a.org/fhir/ValueSet/one")).await;
        let b = create(s, vs("http://a.org/fhir/ValueSet/two")).await;
        let c = create(s, vs("http://a.org/fhir")).await;
        expect(s, "ValueSet?url=http://a.org/fhir/ValueSet/one", &[&a]).await;
        expect(s, "ValueSet?url=http://a.org/fhir/ValueSet", &[]).await;
        expect(
            s,
            "ValueSet?url:below=http://a.org/fhir/ValueSet/",
            &[&a, &b],
        )
        .await;
        expect(s, "ValueSet?url:below=http://a.org/", &[&a, &b, &c]).await;
        expect(s, "ValueSet?url:below=HTTP://A.ORG/", &[]).await;
        expect(
            s,
            "ValueSet?url:above=http://a.org/fhir/ValueSet/one/_history/2",
            &[&a, &c],
        )
        .await;
        // _tag, _security, _profile, _source on any type
        let profile = "http://hl7.org/fhir/StructureDefinition/Patient";
        let p = create(
            s,
            json!({"resourceType": "Patient", "meta": {
                "tag": [{"system": "urn:study", "code": "pilot"}],
                "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                              "code": "R"}],
                "profile": [profile],
                "source": "urn:site:leiden"}}),
        )
        .await;
        let q = create(s, json!({"resourceType": "Patient", "gender": "male"})).await;
        let o = create(
            s,
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "meta": {"tag": [{"system": "urn:study", "code": "pilot"}]}}),
        )
        .await;
        expect(s, "Patient?_tag=urn:study|pilot", &[&p]).await;
        expect(s, "Patient?_tag=pilot", &[&p]).await;
        expect(s, "Observation?_tag=urn:study|pilot", &[&o]).await;
        expect(s, "Patient?_security=R", &[&p]).await;
        expect(s, &format!("Patient?_profile={profile}"), &[&p]).await;
        expect(s, "Patient?_profile:missing=true", &[&q]).await;
        expect(s, "Patient?_source=urn:site:leiden", &[&p]).await;
        expect(s, "Patient?_tag:not=pilot", &[&q]).await;
    }

    pub async fn modifiers(s: &Server) {
        let a = create(
            s,
            json!({"resourceType": "Patient", "gender": "female", "birthDate": "1950",
            "identifier": [{"type": {"text": "Hospital MRN"}, "value": "X1"}]}),
        )
        .await;
        let b = create(s, json!({"resourceType": "Patient", "gender": "male"})).await;
        let c = create(s, json!({"resourceType": "Patient"})).await;
        expect(s, "Patient?gender:missing=true", &[&c]).await;
        expect(s, "Patient?gender:missing=false", &[&a, &b]).await;
        expect(s, "Patient?birthdate:missing=false", &[&a]).await;
        expect(s, "Patient?gender:not=male", &[&a, &c]).await;
        expect(s, "Patient?gender:not=male,female", &[&c]).await;
        expect(s, "Patient?gender:not=male&gender:missing=false", &[&a]).await;
        let (st, _, _) = s.get("/fhir/Patient?gender:missing=perhaps").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        // :text: CodeableConcept.text and Coding.display, case-insensitive starts-with
        let o1 = create(
            s,
            json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7",
                                 "display": "Hemoglobin [Mass/volume] in Blood"}],
                     "text": "Haemoglobin"},
            "subject": {"reference": format!("Patient/{a}")}}),
        )
        .await;
        let o2 = create(
            s,
            json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "Tumour size"},
            "subject": {"identifier": {"system": "urn:mrn", "value": "42"}}}),
        )
        .await;
        expect(s, "Observation?code:text=hemo", &[&o1]).await;
        expect(s, "Observation?code:text=HAEMO", &[&o1]).await;
        expect(s, "Observation?code:text=tumour,haem", &[&o1, &o2]).await;
        expect(s, "Observation?code:text=blood", &[]).await;
        expect(s, "Patient?identifier:text=hospital", &[&a]).await;
        expect(s, "Observation?code=718-7", &[&o1]).await;
        // a CodeableConcept with only text has no code: `system|` does not find it
        expect(s, "Observation?code=|", &[]).await;
        expect(s, "Observation?code:not=http://loinc.org|718-7", &[&o2]).await;
        expect(s, "Observation?code:missing=true", &[]).await;
        // :identifier on a reference
        expect(s, "Observation?subject:identifier=urn:mrn|42", &[&o2]).await;
        expect(s, "Observation?subject:identifier=42", &[&o2]).await;
        expect(s, "Observation?subject:identifier=urn:other|42", &[]).await;
        expect(s, "Observation?subject:identifier=urn:mrn|", &[&o2]).await;
        expect(s, "Observation?subject:identifier=|", &[]).await;
        expect(s, "Observation?subject:missing=false", &[&o1, &o2]).await;
        expect(s, &format!("Observation?subject={a}"), &[&o1]).await;
        // an unsupported modifier: a warning, 400 under handling=strict
        let bundle = search(s, "Patient?gender:in=http://x.org/vs").await;
        assert_eq!(ids(&bundle), {
            let mut v = vec![a.clone(), b.clone(), c.clone()];
            v.sort();
            v
        });
        assert!(bundle.to_string().contains("modifier :in"), "{bundle}");
        let (st, _, _) = s
            .send(
                reqwest::Method::GET,
                "/fhir/Patient?gender:in=http://x.org/vs",
                None,
                &[("prefer", "handling=strict")],
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }

    pub async fn chains(s: &Server) {
        let p1 = create(
            s,
            json!({"resourceType": "Patient", "name": [{"family": "Smith"}],
            "identifier": [{"system": "urn:mrn", "value": "A1"}], "gender": "female"}),
        )
        .await;
        let p2 = create(
            s,
            json!({"resourceType": "Patient", "name": [{"family": "Jones"}],
            "identifier": [{"system": "urn:mrn", "value": "B2"}], "birthDate": "1960"}),
        )
        .await;
        let g = create(
            s,
            json!({"resourceType": "Group", "type": "person", "actual": true,
            "identifier": [{"value": "G1"}]}),
        )
        .await;
        let subject = |t: &str, id: &str| {
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": format!("{t}/{id}")}})
        };
        let o1 = create(s, subject("Patient", &p1)).await;
        let o2 = create(s, subject("Patient", &p2)).await;
        let o3 = create(s, subject("Group", &g)).await;
        expect(
            s,
            "Observation?subject:Patient.identifier=urn:mrn|A1",
            &[&o1],
        )
        .await;
        expect(
            s,
            "Observation?subject:Patient.identifier=A1,B2",
            &[&o1, &o2],
        )
        .await;
        expect(s, "Observation?subject:Patient.name=smi", &[&o1]).await;
        expect(s, "Observation?subject:Group.identifier=G1", &[&o3]).await;
        expect(s, "Observation?subject:Patient.identifier=G1", &[]).await;
        expect(s, "Observation?subject:Patient.gender:missing=true", &[&o2]).await;
        expect(s, "Observation?subject:Patient.birthdate=ge1955", &[&o2]).await;
        expect(s, &format!("Observation?subject:Patient._id={p2}"), &[&o2]).await;
        expect(
            s,
            "Observation?subject:Patient.name=smith&subject:Patient.identifier=B2",
            &[],
        )
        .await;
        // `patient` can only refer to a Patient: the type is inferred
        expect(s, "Observation?patient.name=jones", &[&o2]).await;
        expect(s, &format!("Observation?patient=Patient/{p1}"), &[&o1]).await;
        // a deleted target no longer matches
        let (st, _, _) = s
            .send(
                reqwest::Method::DELETE,
                &format!("/fhir/Patient/{p2}"),
                None,
                &[],
            )
            .await;
        assert!(st.is_success());
        expect(s, "Observation?patient.name=jones", &[]).await;
        // ambiguous target type: 400 naming the way out
        let (st, _, b) = s.get("/fhir/Observation?subject.name=smith").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(b.to_string().contains("subject:"), "{b}");
        // deeper than one level: a warning, 400 under strict handling
        let q = "Observation?subject:Patient.organization.name=x";
        let bundle = search(s, q).await;
        assert!(
            bundle.to_string().contains("deeper than one level"),
            "{bundle}"
        );
        let (st, _, _) = s
            .send(
                reqwest::Method::GET,
                &format!("/fhir/{q}"),
                None,
                &[("prefer", "handling=strict")],
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }
}

on_both!(params, ValidationMode::Base, 1 << 20);
on_both!(quantity, ValidationMode::Base, 1 << 20);
on_both!(uri_and_meta, ValidationMode::Base, 1 << 20);
on_both!(modifiers, ValidationMode::Base, 1 << 20);
on_both!(chains, ValidationMode::Base, 1 << 20);
on_both!(paging, ValidationMode::Base, 1 << 20);
on_both!(unknown, ValidationMode::Base, 1 << 20);
