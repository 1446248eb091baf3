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
}

on_both!(params, ValidationMode::Base, 1 << 20);
on_both!(paging, ValidationMode::Base, 1 << 20);
on_both!(unknown, ValidationMode::Base, 1 << 20);
