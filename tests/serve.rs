//! End-to-end tests of `imagio-gateway serve`: the real router on a real socket
//! (127.0.0.1, a free port), spoken to over HTTP with reqwest, on a real SQLite file and,
//! when `IMAGIO_TEST_DATABASE_URL` is set, on PostgreSQL (each test in a fresh schema).
//! The last test starts the binary itself.

use imagio_gateway::search::IndexRow;
use imagio_gateway::serve::ValidationMode;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[macro_use]
mod common;
use common::*;

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn patient(system: &str, value: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": value}],
        "gender": "female",
        "birthDate": "1950-03-02"
    })
}

on_both!(crud_and_versions);
on_both!(prefer_and_headers);
on_both!(bad_input_is_refused_and_kept);
on_both!(limits, ValidationMode::Base, 4096);
on_both!(conditional_create_and_update);
on_both!(concurrent_conditional_creates_make_one_resource);
on_both!(transaction_resolves_references);
on_both!(failed_transaction_leaves_nothing);
on_both!(batch_reports_each_entry);
on_both!(history_metadata_validate_health);
on_both!(
    study_profiles_on_write,
    ValidationMode::Study,
    64 * 1024 * 1024
);

mod scenarios {
    use super::*;

    pub async fn crud_and_versions(s: &Server) {
        // create
        let (st, h, body) = s.post("/fhir/Patient", &patient("urn:s", "1"), &[]).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        let id = body["id"].as_str().expect("id").to_string();
        assert_eq!(body["meta"]["versionId"], "1");
        assert!(body["meta"]["lastUpdated"].as_str().is_some());
        assert_eq!(header(&h, "etag"), "W/\"1\"");
        assert!(header(&h, "last-modified").ends_with(" GMT"));
        assert!(header(&h, "location").ends_with(&format!("/fhir/Patient/{id}/_history/1")));
        // read
        let (st, h, body) = s.get(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(header(&h, "etag"), "W/\"1\"");
        assert!(header(&h, "content-type").starts_with("application/fhir+json"));
        assert_eq!(body["gender"], "female");
        // update
        let mut changed = body.clone();
        changed["gender"] = json!("male");
        let (st, h, body) = s.put(&format!("/fhir/Patient/{id}"), &changed, &[]).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(header(&h, "etag"), "W/\"2\"");
        assert_eq!(body["meta"]["versionId"], "2");
        // If-Match: stale version refused, current accepted
        let (st, _, body) = s
            .put(
                &format!("/fhir/Patient/{id}"),
                &changed,
                &[("if-match", "W/\"1\"")],
            )
            .await;
        assert_eq!(st, StatusCode::PRECONDITION_FAILED, "{body}");
        assert_eq!(body["resourceType"], "OperationOutcome");
        // resending what is stored makes no new version
        let (st, h, _) = s.put(&format!("/fhir/Patient/{id}"), &changed, &[]).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(header(&h, "etag"), "W/\"2\"");
        changed["active"] = json!(true);
        let (st, h, _) = s
            .put(
                &format!("/fhir/Patient/{id}"),
                &changed,
                &[("if-match", "W/\"2\"")],
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(header(&h, "etag"), "W/\"3\"");
        // vread
        let (st, _, v1) = s.get(&format!("/fhir/Patient/{id}/_history/1")).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(v1["gender"], "female");
        assert_eq!(v1["meta"]["versionId"], "1");
        let (st, _, _) = s.get(&format!("/fhir/Patient/{id}/_history/9")).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        // delete: a version, the resource gone, old versions kept
        let (st, h, _) = s
            .send(
                reqwest::Method::DELETE,
                &format!("/fhir/Patient/{id}"),
                None,
                &[],
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        assert_eq!(header(&h, "etag"), "W/\"4\"");
        let (st, _, body) = s.get(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(st, StatusCode::GONE);
        assert_eq!(body["issue"][0]["code"], "deleted");
        let (st, _, _) = s.get(&format!("/fhir/Patient/{id}/_history/2")).await;
        assert_eq!(st, StatusCode::OK);
        let (st, _, hist) = s.get(&format!("/fhir/Patient/{id}/_history")).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(hist["type"], "history");
        let entries = hist["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0]["request"]["method"], "DELETE");
        assert_eq!(entries[3]["request"]["method"], "POST");
        // update on a deleted resource re-creates it with the next version
        let (st, h, _) = s.put(&format!("/fhir/Patient/{id}"), &changed, &[]).await;
        assert_eq!(st, StatusCode::CREATED);
        assert_eq!(header(&h, "etag"), "W/\"5\"");
        // create-on-update with the client's id
        let mut mine = patient("urn:s", "2");
        mine["id"] = json!("client-chosen-1");
        let (st, h, body) = s.put("/fhir/Patient/client-chosen-1", &mine, &[]).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        assert!(header(&h, "location").ends_with("/fhir/Patient/client-chosen-1/_history/1"));
        // id rules of update
        let (st, _, _) = s.put("/fhir/Patient/other-id", &mine, &[]).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let (st, _, _) = s
            .put("/fhir/Patient/no-id", &patient("urn:s", "3"), &[])
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let (st, _, body) = s.get("/fhir/Patient/never-was").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(body["issue"][0]["code"], "not-found");
        // stored as sent: a decimal keeps its text
        let raw = r#"{"resourceType":"Observation","status":"final","code":{"text":"size"},"valueQuantity":{"value":23.50,"unit":"mm"}}"#;
        let r = s
            .client
            .post(s.url("/fhir/Observation"))
            .header("content-type", FHIR)
            .body(raw)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED);
        assert!(r.text().await.expect("text").contains("\"value\":23.50"));
        // create ignores a client id in the body
        let (st, _, body) = s.post("/fhir/Patient", &mine, &[]).await;
        assert_eq!(st, StatusCode::CREATED);
        assert_ne!(body["id"], "client-chosen-1");
    }

    pub async fn prefer_and_headers(s: &Server) {
        let (st, h, body) = s
            .post(
                "/fhir/Patient",
                &patient("urn:p", "1"),
                &[("prefer", "return=minimal")],
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        assert_eq!(body, Value::Null);
        assert!(!header(&h, "location").is_empty());
        assert_eq!(header(&h, "etag"), "W/\"1\"");
        let (st, _, body) = s
            .post(
                "/fhir/Patient",
                &patient("urn:p", "2"),
                &[("prefer", "return=OperationOutcome")],
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        assert_eq!(body["resourceType"], "OperationOutcome");
        // request ids: kept when sane, made up otherwise
        let resp = s
            .client
            .get(s.url("/fhir/metadata"))
            .header("x-request-id", "abc-123")
            .send()
            .await
            .expect("request");
        assert_eq!(header(resp.headers(), "x-request-id"), "abc-123");
        let resp = s
            .client
            .get(s.url("/health"))
            .send()
            .await
            .expect("request");
        assert_eq!(header(resp.headers(), "x-request-id").len(), 36);
    }

    pub async fn bad_input_is_refused_and_kept(s: &Server) {
        let send_raw = |path: &str, ct: &str, body: &'static str| {
            s.client
                .post(s.url(path))
                .header("content-type", ct)
                .body(body)
                .send()
        };
        // malformed JSON: 400 with an OperationOutcome
        let r = send_raw("/fhir/Patient", FHIR, "{\"resourceType\": \"Patient\",")
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let oo: Value = r.json().await.expect("json");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert_eq!(oo["issue"][0]["code"], "invalid");
        // wrong media type
        let r = send_raw("/fhir/Patient", "application/xml", "<Patient/>")
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let oo: Value = r.json().await.expect("json");
        assert_eq!(oo["issue"][0]["code"], "not-supported");
        // resourceType not the URL's
        let (st, _, oo) = s
            .post("/fhir/Observation", &patient("urn:b", "1"), &[])
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .contains("does not match"));
        // unknown type
        let (st, _, oo) = s.post("/fhir/Patientx", &patient("urn:b", "1"), &[]).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(oo["resourceType"], "OperationOutcome");
        let (st, _, _) = s.get("/fhir/Unknown/1").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        // invalid resource: 422, every issue listed, nothing stored
        let bad = json!({
            "resourceType": "Patient",
            "gender": "often",
            "birthDate": "last tuesday",
            "favouriteColour": "blue"
        });
        let (st, _, oo) = s.post("/fhir/Patient", &bad, &[]).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{oo}");
        let issues = oo["issue"].as_array().expect("issues");
        assert!(issues.len() >= 3, "{oo}");
        let text = oo.to_string();
        assert!(text.contains("favouriteColour"), "{oo}");
        assert!(text.contains("Patient.gender"), "{oo}");
        assert!(text.contains("Patient.birthDate"), "{oo}");
        assert_eq!(s.version_count("Patient").await, 0);
        // the ledger kept the refused submission with its payload
        let ledger = s.store.submissions(None, 100).await.expect("ledger");
        let refused = ledger
            .iter()
            .find(|e| e.submission.status == 422)
            .expect("422 in the ledger");
        assert_eq!(refused.submission.outcome, "rejected");
        // Under --no-auth every request is an admin of site `local`.
        assert_eq!(refused.submission.site, "local");
        let kept: Value = serde_json::from_slice(&refused.submission.payload).expect("payload");
        assert_eq!(kept, bad);
        assert!(refused
            .submission
            .operation_outcome
            .as_deref()
            .unwrap_or("")
            .contains("favouriteColour"));
        assert!(ledger.iter().any(|e| e.submission.status == 415));
        assert!(ledger.iter().any(|e| e.submission.status == 400));
        // search is offered now (tests/search.rs); the refused bodies left nothing findable
        let (st, _, found) = s.get("/fhir/Patient?name=x").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(found["type"], "searchset");
    }

    pub async fn limits(s: &Server) {
        // body larger than the limit (4 KiB here)
        let mut big = patient("urn:l", "1");
        big["text"] = json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "x".repeat(5000))});
        let (st, _, oo) = s.post("/fhir/Patient", &big, &[]).await;
        assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(oo["issue"][0]["code"], "too-costly");
        // nesting deeper than the limit (64 here)
        let deep = format!(
            "{{\"resourceType\":\"Patient\",\"extension\":{}1{}}}",
            "[".repeat(80),
            "]".repeat(80)
        );
        let r = s
            .client
            .post(s.url("/fhir/Patient"))
            .header("content-type", FHIR)
            .body(deep)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let oo: Value = r.json().await.expect("json");
        assert!(oo.to_string().contains("deep"), "{oo}");
        let ledger = s.store.submissions(None, 10).await.expect("ledger");
        assert!(ledger.iter().any(|e| e.submission.status == 413));
    }

    pub async fn conditional_create_and_update(s: &Server) {
        let p = patient("urn:c", "42");
        let cond = [("if-none-exist", "identifier=urn:c|42")];
        let (st, _, first) = s.post("/fhir/Patient", &p, &cond).await;
        assert_eq!(st, StatusCode::CREATED);
        let (st, _, again) = s.post("/fhir/Patient", &p, &cond).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(first["id"], again["id"]);
        assert_eq!(s.version_count("Patient").await, 1);
        // conditional update: matches the one resource, makes version 2
        let mut changed = p.clone();
        changed["gender"] = json!("male");
        let (st, h, body) = s
            .put("/fhir/Patient?identifier=urn:c%7C42", &changed, &[])
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(body["id"], first["id"]);
        assert_eq!(header(&h, "etag"), "W/\"2\"");
        // no match: creates
        let (st, _, created) = s
            .put(
                "/fhir/Patient?identifier=urn:c%7C43",
                &patient("urn:c", "43"),
                &[],
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        assert_ne!(created["id"], first["id"]);
        // two matches: 412
        s.post("/fhir/Patient", &patient("urn:c", "43"), &[]).await;
        let (st, _, oo) = s
            .post(
                "/fhir/Patient",
                &patient("urn:c", "43"),
                &[("if-none-exist", "identifier=urn:c|43")],
            )
            .await;
        assert_eq!(st, StatusCode::PRECONDITION_FAILED);
        assert_eq!(oo["issue"][0]["code"], "multiple-matches");
        // unsupported criteria say so
        let (st, _, oo) = s
            .post("/fhir/Patient", &p, &[("if-none-exist", "name=Smith")])
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert_eq!(oo["issue"][0]["code"], "not-supported");
    }

    pub async fn concurrent_conditional_creates_make_one_resource(s: &Server) {
        let p = patient("urn:race", "7");
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let client = s.client.clone();
            let url = s.url("/fhir/Patient");
            let body = serde_json::to_vec(&p).expect("json");
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .header("content-type", FHIR)
                    .header("if-none-exist", "identifier=urn:race|7")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                let status = r.status();
                let v: Value = r.json().await.expect("json");
                (status, v["id"].as_str().unwrap_or_default().to_string())
            }));
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut created = 0;
        for t in tasks {
            let (status, id) = t.await.expect("task");
            assert!(
                status == StatusCode::CREATED || status == StatusCode::OK,
                "{status}"
            );
            created += usize::from(status == StatusCode::CREATED);
            ids.insert(id);
        }
        assert_eq!(created, 1);
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(s.version_count("Patient").await, 1);
        // the same race through transaction Bundles
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{
                "fullUrl": "urn:uuid:0c3f5d8e-8a4e-4d7c-9f7e-2b1f4e1e9a11",
                "resource": patient("urn:race", "8"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:race|8"}
            }]
        });
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let client = s.client.clone();
            let url = s.url("/fhir");
            let body = serde_json::to_vec(&bundle).expect("json");
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .header("content-type", FHIR)
                    .body(body)
                    .send()
                    .await
                    .expect("send")
                    .status()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), StatusCode::OK);
        }
        assert_eq!(s.version_count("Patient").await, 2);
    }

    pub async fn transaction_resolves_references(s: &Server) {
        // a Patient on the server, for a conditional reference
        let (st, _, existing) = s
            .post("/fhir/Patient", &patient("urn:t", "known"), &[])
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let (st, _, doomed) = s
            .post("/fhir/Patient", &patient("urn:t", "doomed"), &[])
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let doomed_id = doomed["id"].as_str().expect("id");
        let obs = |subject: &str| {
            json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "21889-1"}]},
                "subject": {"reference": subject},
                "valueQuantity": {"value": 23.50, "unit": "mm", "system": "http://unitsofmeasure.org", "code": "mm"}
            })
        };
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                    "resource": obs("urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059"),
                    "request": {"method": "POST", "url": "Observation"}
                },
                {
                    "resource": obs("Patient?identifier=urn:t|known"),
                    "request": {"method": "POST", "url": "Observation"}
                },
                {
                    "request": {"method": "DELETE", "url": format!("Patient/{doomed_id}")}
                },
                {
                    "fullUrl": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
                    "resource": patient("urn:t", "new"),
                    "request": {"method": "POST", "url": "Patient"}
                },
                {
                    "request": {"method": "GET", "url": format!("Patient/{}", existing["id"].as_str().expect("id"))}
                }
            ]
        });
        let (st, _, resp) = s.post("/fhir", &bundle, &[]).await;
        assert_eq!(st, StatusCode::OK, "{resp}");
        assert_eq!(resp["type"], "transaction-response");
        let e = resp["entry"].as_array().expect("entries");
        assert_eq!(e.len(), 5);
        assert_eq!(e[0]["response"]["status"], "201 Created");
        assert_eq!(e[1]["response"]["status"], "201 Created");
        assert_eq!(e[2]["response"]["status"], "204 No Content");
        assert_eq!(e[3]["response"]["status"], "201 Created");
        assert_eq!(e[4]["response"]["status"], "200 OK");
        let new_patient = e[3]["resource"]["id"].as_str().expect("new id");
        assert_eq!(
            e[0]["resource"]["subject"]["reference"],
            format!("Patient/{new_patient}")
        );
        assert_eq!(
            e[1]["resource"]["subject"]["reference"],
            format!("Patient/{}", existing["id"].as_str().expect("id"))
        );
        assert!(e[0]["response"]["location"]
            .as_str()
            .expect("location")
            .starts_with("Observation/"));
        let (st, _, _) = s.get(&format!("/fhir/Patient/{doomed_id}")).await;
        assert_eq!(st, StatusCode::GONE);
        // search index rows are written from the stored content (references rewritten)
        // and removed with a delete
        let obs_id = e[0]["resource"]["id"].as_str().expect("id");
        let mut tx = s.store.begin().await.expect("tx");
        let rows = tx.index_rows("Observation", obs_id).await.expect("rows");
        assert!(
            rows.contains(&IndexRow::Reference {
                param: "subject".into(),
                target: format!("Patient/{new_patient}")
            }),
            "{rows:?}"
        );
        assert!(
            rows.contains(&IndexRow::Token {
                param: "code".into(),
                system: "http://loinc.org".into(),
                code: "21889-1".into()
            }),
            "{rows:?}"
        );
        assert!(tx
            .index_rows("Patient", doomed_id)
            .await
            .expect("rows")
            .is_empty());
        let rows = tx.index_rows("Patient", new_patient).await.expect("rows");
        assert!(
            rows.contains(&IndexRow::Date {
                param: "birthdate".into(),
                low: "1950-03-02T00:00:00.000Z".into(),
                high: "1950-03-02T23:59:59.999Z".into()
            }),
            "{rows:?}"
        );
        drop(tx);
        let ledger = s.store.submissions(None, 1).await.expect("ledger");
        assert_eq!(ledger[0].submission.outcome, "accepted");
        assert_eq!(ledger[0].submission.versions.len(), 4);
    }

    pub async fn failed_transaction_leaves_nothing(s: &Server) {
        let (_, _, p) = s.post("/fhir/Patient", &patient("urn:f", "1"), &[]).await;
        let id = p["id"].as_str().expect("id").to_string();
        let before_obs = s.version_count("Observation").await;
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
                    "request": {"method": "POST", "url": "Observation"}
                },
                {
                    "request": {"method": "DELETE", "url": format!("Patient/{id}")}
                },
                {
                    "resource": {"resourceType": "Patient", "id": "tx-half", "active": true},
                    "request": {"method": "PUT", "url": "Patient/tx-half"}
                },
                {
                    "resource": {"resourceType": "Patient", "id": "tx-stale", "active": true},
                    "request": {"method": "PUT", "url": "Patient/tx-stale", "ifMatch": "W/\"3\""}
                }
            ]
        });
        let (st, _, oo) = s.post("/fhir", &bundle, &[]).await;
        assert_eq!(st, StatusCode::PRECONDITION_FAILED, "{oo}");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        // nothing of it happened: the delete, the create and the first update rolled back
        let (st, _, _) = s.get(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(st, StatusCode::OK);
        let (st, _, _) = s.get("/fhir/Patient/tx-half").await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(s.version_count("Observation").await, before_obs);
        // an invalid entry refuses the whole Bundle with located issues
        let invalid = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": patient("urn:f", "2"),
                    "request": {"method": "POST", "url": "Patient"}
                },
                {
                    "resource": {"resourceType": "Patient", "gender": "often"},
                    "request": {"method": "POST", "url": "Patient"}
                }
            ]
        });
        let (st, _, oo) = s.post("/fhir", &invalid, &[]).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{oo}");
        assert!(
            oo.to_string().contains("Bundle.entry[1].resource.gender"),
            "{oo}"
        );
        assert_eq!(s.version_count("Patient").await, 1);
        // both refusals are in the ledger with their payloads
        let ledger = s.store.submissions(None, 10).await.expect("ledger");
        let refused: Vec<_> = ledger
            .iter()
            .filter(|e| e.submission.outcome == "rejected")
            .collect();
        assert_eq!(refused.len(), 2);
        let kept: Value = serde_json::from_slice(&refused[0].submission.payload).expect("payload");
        assert_eq!(kept, invalid);
        assert!(refused.iter().all(|e| e.submission.versions.is_empty()));
    }

    pub async fn batch_reports_each_entry(s: &Server) {
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "resource": patient("urn:b", "1"),
                    "request": {"method": "POST", "url": "Patient"}
                },
                {
                    "resource": {"resourceType": "Patient", "gender": "often"},
                    "request": {"method": "POST", "url": "Patient"}
                },
                {
                    "request": {"method": "GET", "url": "Patient/not-there"}
                }
            ]
        });
        let (st, _, resp) = s.post("/fhir", &bundle, &[]).await;
        assert_eq!(st, StatusCode::OK, "{resp}");
        assert_eq!(resp["type"], "batch-response");
        let e = resp["entry"].as_array().expect("entries");
        assert_eq!(e[0]["response"]["status"], "201 Created");
        assert_eq!(e[1]["response"]["status"], "422 Unprocessable Entity");
        assert_eq!(
            e[1]["response"]["outcome"]["resourceType"],
            "OperationOutcome"
        );
        assert_eq!(e[2]["response"]["status"], "404 Not Found");
        assert_eq!(s.version_count("Patient").await, 1);
        // a Bundle of another type is refused
        let (st, _, _) = s
            .post(
                "/fhir",
                &json!({"resourceType": "Bundle", "type": "collection"}),
                &[],
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }

    pub async fn history_metadata_validate_health(s: &Server) {
        let (st, _, body) = s.get("/health").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(body["status"], "ok");
        let (st, _, _) = s.get("/ready").await;
        assert_eq!(st, StatusCode::OK);
        // metadata
        let (st, _, cs) = s.get("/fhir/metadata").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(cs["resourceType"], "CapabilityStatement");
        assert_eq!(cs["fhirVersion"], "4.0.1");
        let rest = &cs["rest"][0];
        let patient_entry = rest["resource"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["type"] == "Patient")
            .expect("Patient");
        let codes: Vec<&str> = patient_entry["interaction"]
            .as_array()
            .expect("interactions")
            .iter()
            .filter_map(|i| i["code"].as_str())
            .collect();
        for c in [
            "read",
            "vread",
            "create",
            "update",
            "delete",
            "history-instance",
            "history-type",
        ] {
            assert!(codes.contains(&c), "{c}");
        }
        assert_eq!(patient_entry["conditionalCreate"], true);
        assert!(rest["resource"].as_array().expect("r").len() > 140);
        assert!(rest["interaction"].to_string().contains("transaction"));
        // Bulk Data: system, Patient and Group $export are advertised; the gateway's own
        // audit records are not writable through the API, and say so.
        assert_eq!(
            rest["operation"][0]["definition"],
            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
        );
        assert!(patient_entry["operation"]
            .to_string()
            .contains("OperationDefinition/patient-export"));
        let audit = rest["resource"]
            .as_array()
            .expect("r")
            .iter()
            .find(|r| r["type"] == "AuditEvent")
            .expect("AuditEvent");
        let audit_codes = audit["interaction"].to_string();
        assert!(audit_codes.contains("search-type"), "{audit_codes}");
        assert!(!audit_codes.contains("create") && !audit_codes.contains("delete"));
        // type and system history, _since and _count
        s.post("/fhir/Patient", &patient("urn:h", "1"), &[]).await;
        s.post("/fhir/Patient", &patient("urn:h", "2"), &[]).await;
        let (_, _, obs) = s
            .post(
                "/fhir/Basic",
                &json!({"resourceType": "Basic", "code": {"text": "x"}}),
                &[],
            )
            .await;
        assert_eq!(obs["resourceType"], "Basic");
        assert_eq!(s.version_count("Patient").await, 2);
        let (_, _, all) = s.get("/fhir/_history").await;
        assert_eq!(all["entry"].as_array().expect("e").len(), 3);
        let (_, _, one) = s.get("/fhir/_history?_count=1").await;
        assert_eq!(one["entry"][0]["resource"]["resourceType"], "Basic");
        let (_, _, none) = s.get("/fhir/_history?_since=2999-01-01T00:00:00Z").await;
        assert_eq!(none["entry"].as_array().expect("e").len(), 0);
        let (st, _, _) = s.get("/fhir/_history?_since=yesterday").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        // $validate: 200 with every issue, nothing stored
        let (st, _, oo) = s
            .post(
                "/fhir/Patient/$validate",
                &json!({"resourceType": "Patient", "gender": "often"}),
                &[],
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            oo["issue"]
                .as_array()
                .expect("issues")
                .iter()
                .any(|i| i["severity"] == "error"),
            "{oo}"
        );
        let (st, _, oo) = s
            .post(
                "/fhir/Patient/$validate",
                &json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient("urn:v", "1")}]}),
                &[],
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            oo["issue"]
                .as_array()
                .expect("issues")
                .iter()
                .all(|i| i["severity"] != "error"),
            "{oo}"
        );
        assert_eq!(s.version_count("Patient").await, 2);
    }

    pub async fn study_profiles_on_write(s: &Server) {
        let read = |name: &str| -> Value {
            let path = format!("{}/profiles/examples/{name}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(&path).expect("example"))
                .expect("example JSON")
        };
        // a valid study subject is stored under its own id
        let subject = read("valid/subject.json");
        let id = subject["id"].as_str().expect("id").to_string();
        let (st, _, body) = s.put(&format!("/fhir/Patient/{id}"), &subject, &[]).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        // an invalid one is refused with the profile's complaint
        let bad = read("invalid/subject-full-birth-date.json");
        let (st, _, oo) = s.post("/fhir/Patient", &bad, &[]).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{oo}");
        // a Patient claiming no profile is checked against the study's subject profile
        let (st, _, oo) = s.post("/fhir/Patient", &patient("urn:x", "1"), &[]).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{oo}");
        assert!(oo.to_string().contains("imagio"), "{oo}");
        let (_, _, cs) = s.get("/fhir/metadata").await;
        assert!(cs
            .to_string()
            .contains("StructureDefinition/imagio-subject"));
        // both patient journeys go in as transactions; resending one changes nothing
        for journey in [
            "journeys/Bundle-journey-hcc.json",
            "journeys/Bundle-journey-crlm.json",
        ] {
            let (st, _, resp) = s.post("/fhir", &read(journey), &[]).await;
            assert_eq!(st, StatusCode::OK, "{journey}: {resp}");
            assert_eq!(resp["type"], "transaction-response");
        }
        let before = s.version_count("Observation").await;
        assert!(before >= 10, "{before}");
        let (st, _, resp) = s
            .post("/fhir", &read("journeys/Bundle-journey-hcc.json"), &[])
            .await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            resp["entry"]
                .as_array()
                .expect("entries")
                .iter()
                .all(|e| e["response"]["status"] == "200 OK"),
            "{resp}"
        );
        assert_eq!(s.version_count("Observation").await, before);
        let ledger = s.store.submissions(None, 1).await.expect("ledger");
        assert!(ledger[0].submission.versions.is_empty());
    }
}

/// The binary itself: `serve` with a SQLite file, a request, and a clean stop on SIGTERM.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_stops_on_sigterm() {
    use std::io::BufRead as _;
    let dir = std::env::temp_dir().join(unique("imagio_bin"));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imagio-gateway"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--validation",
            "base",
            "--no-auth",
        ])
        .current_dir(&dir)
        .env_remove("IMAGIO_DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        lines
            .find_map(|l| {
                l.ok()
                    .and_then(|l| l.strip_prefix("listening on ").map(str::to_string))
            })
            .unwrap_or_default()
    })
    .await
    .expect("read stdout");
    assert!(!line.is_empty(), "the server did not say where it listens");
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{line}/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(r.status(), StatusCode::OK);
    let r = client
        .post(format!("http://{line}/fhir/Patient"))
        .header("content-type", FHIR)
        .body(patient("urn:bin", "1").to_string())
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(dir.join("imagio.sqlite").exists(), "default database file");
    let pid = i32::try_from(child.id()).expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
