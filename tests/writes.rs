//! End-to-end tests of the write interactions beyond create/update/delete: conditional
//! delete, PATCH (JSON Patch and FHIRPath Patch) on instances and by criteria, both inside batch and
//! transaction Bundles, and the validation warnings returned with writes. The real server
//! on a free port, on SQLite and (with `IMAGIO_TEST_DATABASE_URL`) PostgreSQL.

use base64::Engine as _;
use imagio_gateway::serve::ValidationMode;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[macro_use]
mod common;
use common::*;

const JSON_PATCH: &str = "application/json-patch+json";

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

/// Creates a Patient and returns its id.
async fn create(s: &Server, p: &Value) -> String {
    let (st, _, body) = s.post("/fhir/Patient", p, &[]).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("id").to_string()
}

/// Sends raw bytes with a content type.
async fn send_raw(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    content_type: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = s
        .client
        .request(method, s.url(path))
        .header("content-type", content_type)
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, headers, value)
}

async fn patch(
    s: &Server,
    path: &str,
    ops: &Value,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    send_raw(
        s,
        reqwest::Method::PATCH,
        path,
        JSON_PATCH,
        &ops.to_string(),
        headers,
    )
    .await
}

async fn delete(
    s: &Server,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    s.send(reqwest::Method::DELETE, path, None, headers).await
}

fn status_of(entry: &Value) -> &str {
    entry["response"]["status"].as_str().unwrap_or_default()
}

/// One FHIRPath Patch operation: type, path, the element name (`add`) and the value
/// (`{"valueCode": "male"}`).
type FpOp<'a> = (&'a str, &'a str, Option<&'a str>, Option<Value>);

/// A FHIRPath Patch (a Parameters resource) of these operations.
fn fhirpath_patch(ops: &[FpOp]) -> Value {
    let parameter: Vec<Value> = ops
        .iter()
        .map(|(kind, path, name, value)| {
            let mut parts = vec![
                json!({"name": "type", "valueCode": kind}),
                json!({"name": "path", "valueString": path}),
            ];
            if let Some(n) = name {
                parts.push(json!({"name": "name", "valueString": n}));
            }
            if let Some(Value::Object(v)) = value {
                let mut part = v.clone();
                part.insert("name".into(), json!("value"));
                parts.push(Value::Object(part));
            }
            json!({"name": "operation", "part": parts})
        })
        .collect();
    json!({"resourceType": "Parameters", "parameter": parameter})
}

fn binary_patch(ops: &Value) -> Value {
    json!({
        "resourceType": "Binary",
        "contentType": JSON_PATCH,
        "data": base64::engine::general_purpose::STANDARD.encode(ops.to_string())
    })
}

on_both!(conditional_delete);
on_both!(conditional_delete_in_bundles);
on_both!(json_patch_on_instances);
on_both!(conditional_patch);
on_both!(patch_in_bundles);
on_both!(concurrent_patches_lose_nothing);
on_both!(warnings_are_returned_with_writes);

mod scenarios {
    use super::*;

    pub async fn conditional_delete(s: &Server) {
        // One match: deleted as a version.
        let id = create(s, &patient("urn:d", "1")).await;
        let (st, h, _) = delete(s, "/fhir/Patient?identifier=urn:d%7C1", &[]).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        assert_eq!(header(&h, "etag"), "W/\"2\"");
        let (st, _, _) = s.get(&format!("/fhir/Patient/{id}")).await;
        assert_eq!(st, StatusCode::GONE);
        let (_, _, hist) = s.get(&format!("/fhir/Patient/{id}/_history")).await;
        assert_eq!(hist["entry"].as_array().map(Vec::len), Some(2), "{hist}");
        // No match (any more): success, nothing deleted, an informational outcome.
        let (st, _, body) = delete(s, "/fhir/Patient?identifier=urn:d%7C1", &[]).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert_eq!(body["issue"][0]["severity"], "information");
        assert_eq!(s.version_count("Patient").await, 2);
        // Several matches: 412, both kept.
        let a = create(s, &patient("urn:d", "2")).await;
        let b = create(s, &patient("urn:d", "2")).await;
        let (st, _, body) = delete(s, "/fhir/Patient?identifier=urn:d%7C2", &[]).await;
        assert_eq!(st, StatusCode::PRECONDITION_FAILED, "{body}");
        assert_eq!(body["issue"][0]["code"], "multiple-matches");
        for id in [&a, &b] {
            let (st, _, _) = s.get(&format!("/fhir/Patient/{id}")).await;
            assert_eq!(st, StatusCode::OK);
        }
        // If-Match applies to the match.
        let c = create(s, &patient("urn:d", "3")).await;
        let (st, _, _) = delete(
            s,
            "/fhir/Patient?identifier=urn:d%7C3",
            &[("if-match", "W/\"2\"")],
        )
        .await;
        assert_eq!(st, StatusCode::PRECONDITION_FAILED);
        let (st, _, _) = s.get(&format!("/fhir/Patient/{c}")).await;
        assert_eq!(st, StatusCode::OK);
        let (st, _, _) = delete(
            s,
            "/fhir/Patient?identifier=urn:d%7C3",
            &[("if-match", "W/\"1\"")],
        )
        .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _, _) = s.get(&format!("/fhir/Patient/{c}")).await;
        assert_eq!(st, StatusCode::GONE);
        // By _id, and criteria the server does not take.
        let d = create(s, &patient("urn:d", "4")).await;
        let (st, _, _) = delete(s, &format!("/fhir/Patient?_id={d}"), &[]).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _, body) = delete(s, "/fhir/Patient?gender=female", &[]).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        let (st, _, _) = s.get(&format!("/fhir/Patient/{a}")).await;
        assert_eq!(st, StatusCode::OK, "nothing deleted by refused criteria");
        // The ledger keeps each conditional delete with its outcome.
        let ledger = s.store.submissions(None, 100).await.expect("ledger");
        let deletes: Vec<_> = ledger
            .iter()
            .filter(|e| e.submission.method == "DELETE")
            .collect();
        assert_eq!(deletes.len(), 7);
        assert!(deletes
            .iter()
            .any(|e| e.submission.status == 412 && e.submission.outcome == "rejected"));
        // The capability statement says how conditional delete behaves.
        let (_, _, cap) = s.get("/fhir/metadata").await;
        let patient_entry = cap["rest"][0]["resource"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["type"] == "Patient"))
            .expect("Patient in the capability statement")
            .clone();
        assert_eq!(patient_entry["conditionalDelete"], "single");
        let codes: Vec<&str> = patient_entry["interaction"]
            .as_array()
            .expect("interactions")
            .iter()
            .filter_map(|i| i["code"].as_str())
            .collect();
        assert!(codes.contains(&"patch"), "{codes:?}");
        assert_eq!(cap["patchFormat"][0], JSON_PATCH);
    }

    pub async fn conditional_delete_in_bundles(s: &Server) {
        let old = create(s, &patient("urn:b", "1")).await;
        // Listed after the create, processed before it: the create with the same
        // identifier and ifNoneExist makes a new resource because the old one is gone.
        let tx = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": patient("urn:b", "1"),
                 "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:b|1"}},
                {"request": {"method": "DELETE", "url": "Patient?identifier=urn:b|1"}}
            ]
        });
        let (st, _, resp) = s.post("/fhir", &tx, &[]).await;
        assert_eq!(st, StatusCode::OK, "{resp}");
        assert!(status_of(&resp["entry"][0]).starts_with("201"), "{resp}");
        assert!(status_of(&resp["entry"][1]).starts_with("204"), "{resp}");
        let (st, _, _) = s.get(&format!("/fhir/Patient/{old}")).await;
        assert_eq!(st, StatusCode::GONE);
        // An ambiguous conditional delete fails the whole transaction.
        create(s, &patient("urn:b", "2")).await;
        create(s, &patient("urn:b", "2")).await;
        let before = s.version_count("Patient").await;
        let tx = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": patient("urn:b", "3"), "request": {"method": "POST", "url": "Patient"}},
                {"request": {"method": "DELETE", "url": "Patient?identifier=urn:b|2"}}
            ]
        });
        let (st, _, body) = s.post("/fhir", &tx, &[]).await;
        assert_eq!(st, StatusCode::PRECONDITION_FAILED, "{body}");
        assert_eq!(s.version_count("Patient").await, before);
        // In a batch it fails alone; a conditional delete matching nothing succeeds.
        let batch = json!({
            "resourceType": "Bundle", "type": "batch",
            "entry": [
                {"request": {"method": "DELETE", "url": "Patient?identifier=urn:b|2"}},
                {"request": {"method": "DELETE", "url": "Patient?identifier=urn:b|nothing"}},
                {"resource": patient("urn:b", "4"), "request": {"method": "POST", "url": "Patient"}}
            ]
        });
        let (st, _, resp) = s.post("/fhir", &batch, &[]).await;
        assert_eq!(st, StatusCode::OK, "{resp}");
        assert!(status_of(&resp["entry"][0]).starts_with("412"), "{resp}");
        assert!(status_of(&resp["entry"][1]).starts_with("200"), "{resp}");
        assert_eq!(
            resp["entry"][1]["response"]["outcome"]["issue"][0]["severity"],
            "information"
        );
        assert!(status_of(&resp["entry"][2]).starts_with("201"), "{resp}");
    }

    pub async fn json_patch_on_instances(s: &Server) {
        let id = create(s, &patient("urn:p", "1")).await;
        let path = format!("/fhir/Patient/{id}");
        // Every operation; the result is a new version, returned as an update's would be.
        let ops = json!([
            {"op": "test", "path": "/gender", "value": "female"},
            {"op": "replace", "path": "/gender", "value": "male"},
            {"op": "add", "path": "/name", "value": [{"family": "Rossi"}]},
            {"op": "add", "path": "/name/0/given", "value": ["Anna"]},
            {"op": "copy", "from": "/name/0", "path": "/name/-"},
            {"op": "move", "from": "/name/1/family", "path": "/name/1/text"},
            {"op": "remove", "path": "/birthDate"}
        ]);
        let (st, h, body) = patch(s, &path, &ops, &[]).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(header(&h, "etag"), "W/\"2\"");
        assert!(header(&h, "location").ends_with(&format!("{path}/_history/2")));
        assert_eq!(body["gender"], "male");
        assert_eq!(
            body["name"],
            json!([{"family": "Rossi", "given": ["Anna"]}, {"given": ["Anna"], "text": "Rossi"}])
        );
        assert!(body.get("birthDate").is_none());
        assert_eq!(body["meta"]["versionId"], "2");
        let (_, _, read) = s.get(&path).await;
        assert_eq!(read, body);
        // Failures change nothing: a failing test, a path that is not there (422), a
        // malformed patch (400), a result that does not validate (422), a changed id (422).
        let refused = [
            (
                json!([{"op": "test", "path": "/gender", "value": "female"},
                    {"op": "replace", "path": "/gender", "value": "other"}]),
                422,
            ),
            (json!([{"op": "remove", "path": "/telecom/0"}]), 422),
            (
                json!([{"op": "replace", "path": "/name/5/family", "value": "X"}]),
                422,
            ),
            (
                json!({"op": "replace", "path": "/gender", "value": "other"}),
                400,
            ),
            (json!([{"op": "jump", "path": "/gender"}]), 400),
            (
                json!([{"op": "replace", "path": "/gender", "value": "robot"}]),
                422,
            ),
            (
                json!([{"op": "replace", "path": "/id", "value": "other-id"}]),
                422,
            ),
        ];
        for (ops, want) in refused {
            let (st, _, body) = patch(s, &path, &ops, &[]).await;
            assert_eq!(st.as_u16(), want, "{ops}: {body}");
            assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
        }
        let (_, h, read) = s.get(&path).await;
        assert_eq!(header(&h, "etag"), "W/\"2\"");
        assert_eq!(read["gender"], "male");
        // If-Match: a stale version is 412, the current one applies.
        let one = json!([{"op": "replace", "path": "/gender", "value": "other"}]);
        let (st, _, _) = patch(s, &path, &one, &[("if-match", "W/\"1\"")]).await;
        assert_eq!(st, StatusCode::PRECONDITION_FAILED);
        let (st, h, body) = patch(
            s,
            &path,
            &one,
            &[("if-match", "W/\"2\""), ("prefer", "return=minimal")],
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(body, Value::Null);
        assert_eq!(header(&h, "etag"), "W/\"3\"");
        // A patch that changes nothing makes no version.
        let (st, h, _) = patch(s, &path, &one, &[]).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(header(&h, "etag"), "W/\"3\"");
        // FHIRPath Patch: a Parameters resource sent as FHIR JSON.
        let (st, h, body) = send_raw(
            s,
            reqwest::Method::PATCH,
            &path,
            FHIR,
            &fhirpath_patch(&[(
                "replace",
                "Patient.gender",
                None,
                Some(json!({"valueCode": "male"})),
            )])
            .to_string(),
            &[],
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(header(&h, "etag"), "W/\"4\"");
        assert_eq!(body["gender"], "male");
        let (st, h, body) = send_raw(
            s,
            reqwest::Method::PATCH,
            &path,
            FHIR,
            &fhirpath_patch(&[
                (
                    "add",
                    "Patient.name[0]",
                    Some("prefix"),
                    Some(json!({"valueString": "Dr"})),
                ),
                ("delete", "Patient.name.where(text = 'Rossi')", None, None),
            ])
            .to_string(),
            &[],
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(header(&h, "etag"), "W/\"5\"");
        assert_eq!(
            body["name"],
            json!([{"family": "Rossi", "given": ["Anna"], "prefix": ["Dr"]}])
        );
        for (ops, want) in [
            (
                fhirpath_patch(&[(
                    "replace",
                    "Patient.((",
                    None,
                    Some(json!({"valueCode": "male"})),
                )]),
                400,
            ),
            (
                fhirpath_patch(&[(
                    "replace",
                    "Patient.telecom",
                    None,
                    Some(json!({"valueString": "x"})),
                )]),
                422,
            ),
            (
                fhirpath_patch(&[(
                    "replace",
                    "Patient.gender",
                    None,
                    Some(json!({"valueCode": "robot"})),
                )]),
                422,
            ),
            (
                fhirpath_patch(&[("frobnicate", "Patient", None, None)]),
                400,
            ),
        ] {
            let (st, _, body) = send_raw(
                s,
                reqwest::Method::PATCH,
                &path,
                FHIR,
                &ops.to_string(),
                &[],
            )
            .await;
            assert_eq!(st.as_u16(), want, "{ops}: {body}");
        }
        let (_, h, _) = s.get(&path).await;
        assert_eq!(header(&h, "etag"), "W/\"5\"");
        // Other media types are refused.
        let (st, _, _) = send_raw(
            s,
            reqwest::Method::PATCH,
            &path,
            "text/plain",
            &one.to_string(),
            &[],
        )
        .await;
        assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // Unknown and deleted resources.
        let (st, _, _) = patch(s, "/fhir/Patient/nobody", &one, &[]).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _, _) = delete(s, &path, &[]).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _, _) = patch(s, &path, &one, &[]).await;
        assert_eq!(st, StatusCode::GONE);
        // The ledger keeps a patch exactly as sent, with its media type.
        let ledger = s.store.submissions(None, 100).await.expect("ledger");
        let first = ledger
            .iter()
            .rfind(|e| e.submission.method == "PATCH")
            .expect("the first PATCH");
        assert_eq!(first.submission.payload, ops.to_string().into_bytes());
        assert_eq!(first.submission.content_type.as_deref(), Some(JSON_PATCH));
        assert_eq!(
            first.submission.versions,
            vec![format!("Patient/{id}/_history/2")]
        );
    }

    pub async fn conditional_patch(s: &Server) {
        let id = create(s, &patient("urn:c", "1")).await;
        let ops = json!([{"op": "replace", "path": "/birthDate", "value": "1951-01-01"}]);
        let (st, _, body) = patch(s, "/fhir/Patient?identifier=urn:c%7C1", &ops, &[]).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["birthDate"], "1951-01-01");
        let (st, _, _) = patch(s, "/fhir/Patient?identifier=urn:c%7Cnone", &ops, &[]).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        create(s, &patient("urn:c", "2")).await;
        create(s, &patient("urn:c", "2")).await;
        let (st, _, body) = patch(s, "/fhir/Patient?identifier=urn:c%7C2", &ops, &[]).await;
        assert_eq!(st, StatusCode::PRECONDITION_FAILED, "{body}");
        let (st, _, _) = patch(s, "/fhir/Patient?name=x", &ops, &[]).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }

    pub async fn patch_in_bundles(s: &Server) {
        let keep = create(s, &patient("urn:t", "keep")).await;
        let ops = json!([{"op": "add", "path": "/active", "value": true}]);
        // The conditional PATCH is listed first but runs after the POST (FHIR's order:
        // DELETE, POST, PUT/PATCH, GET), so it finds the resource the POST creates.
        let tx = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": binary_patch(&ops),
                 "request": {"method": "PATCH", "url": "Patient?identifier=urn:t|new"}},
                {"resource": fhirpath_patch(&[("replace", "Patient.gender", None, Some(json!({"valueCode": "male"})))]),
                 "request": {"method": "PATCH", "url": format!("Patient/{keep}"), "ifMatch": "W/\"1\""}},
                {"fullUrl": "urn:uuid:6f1c1a8e-2c57-4d61-9d84-5d0f0d5b7a01",
                 "resource": patient("urn:t", "new"),
                 "request": {"method": "POST", "url": "Patient"}},
                {"request": {"method": "GET", "url": format!("Patient/{keep}")}}
            ]
        });
        let (st, _, resp) = s.post("/fhir", &tx, &[]).await;
        assert_eq!(st, StatusCode::OK, "{resp}");
        assert!(status_of(&resp["entry"][0]).starts_with("200"), "{resp}");
        assert!(status_of(&resp["entry"][1]).starts_with("200"), "{resp}");
        assert!(status_of(&resp["entry"][2]).starts_with("201"), "{resp}");
        assert_eq!(resp["entry"][0]["response"]["etag"], "W/\"2\"", "{resp}");
        assert_eq!(resp["entry"][3]["resource"]["gender"], "male", "{resp}");
        let new_id = resp["entry"][2]["resource"]["id"]
            .as_str()
            .expect("created id");
        let (_, _, created) = s.get(&format!("/fhir/Patient/{new_id}")).await;
        assert_eq!(created["active"], true);
        assert_eq!(created["meta"]["versionId"], "2");
        // A failing patch rolls the whole transaction back.
        let before = s.version_count("Patient").await;
        let tx = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": patient("urn:t", "other"), "request": {"method": "POST", "url": "Patient"}},
                {"resource": binary_patch(&json!([{"op": "test", "path": "/gender", "value": "female"}])),
                 "request": {"method": "PATCH", "url": format!("Patient/{keep}")}}
            ]
        });
        let (st, _, body) = s.post("/fhir", &tx, &[]).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(s.version_count("Patient").await, before);
        // In a batch each entry stands alone: a bad Binary, a FHIRPath Patch, a JSON Patch.
        let batch = json!({
            "resourceType": "Bundle", "type": "batch",
            "entry": [
                {"resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "eA=="},
                 "request": {"method": "PATCH", "url": format!("Patient/{keep}")}},
                {"resource": fhirpath_patch(&[("replace", "Patient.gender", None, Some(json!({"valueCode": "other"})))]),
                 "request": {"method": "PATCH", "url": format!("Patient/{keep}")}},
                {"resource": binary_patch(&json!([{"op": "add", "path": "/active", "value": false}])),
                 "request": {"method": "PATCH", "url": format!("Patient/{keep}")}}
            ]
        });
        let (st, _, resp) = s.post("/fhir", &batch, &[]).await;
        assert_eq!(st, StatusCode::OK, "{resp}");
        assert!(status_of(&resp["entry"][0]).starts_with("400"), "{resp}");
        assert!(status_of(&resp["entry"][1]).starts_with("200"), "{resp}");
        assert!(status_of(&resp["entry"][2]).starts_with("200"), "{resp}");
        let (_, _, kept) = s.get(&format!("/fhir/Patient/{keep}")).await;
        assert_eq!(kept["active"], false);
        assert_eq!(kept["gender"], "other");
        assert_eq!(kept["meta"]["versionId"], "4");
        // References in patch values to the Bundle's fullUrls (and conditional references)
        // are rewritten like those in resources.
        let tx = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": binary_patch(&json!([{"op": "add", "path": "/link", "value": [
                    {"other": {"reference": "urn:uuid:0b8a3c1e-7d7e-4a55-8a35-1f2f3b4c5d6e"}, "type": "seealso"}]}])),
                 "request": {"method": "PATCH", "url": format!("Patient/{keep}")}},
                {"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "link"},
                    {"name": "value", "part": [
                        {"name": "other", "valueReference": {"reference": "Patient?identifier=urn:t|keep"}},
                        {"name": "type", "valueCode": "replaced-by"}]}]}]},
                 "request": {"method": "PATCH", "url": "Patient?identifier=urn:t|new"}},
                {"fullUrl": "urn:uuid:0b8a3c1e-7d7e-4a55-8a35-1f2f3b4c5d6e",
                 "resource": patient("urn:t", "linked"),
                 "request": {"method": "POST", "url": "Patient"}}
            ]
        });
        let (st, _, resp) = s.post("/fhir", &tx, &[]).await;
        assert_eq!(st, StatusCode::OK, "{resp}");
        let linked = resp["entry"][2]["resource"]["id"].as_str().expect("id");
        let (_, _, kept) = s.get(&format!("/fhir/Patient/{keep}")).await;
        assert_eq!(
            kept["link"][0]["other"]["reference"],
            format!("Patient/{linked}"),
            "{kept}"
        );
        let (_, _, created) = s.get(&format!("/fhir/Patient/{new_id}")).await;
        assert_eq!(
            created["link"][0]["other"]["reference"],
            format!("Patient/{keep}"),
            "{created}"
        );
    }

    pub async fn concurrent_patches_lose_nothing(s: &Server) {
        let mut p = patient("urn:cc", "1");
        p["name"] = json!([{"family": "First"}]);
        let id = create(s, &p).await;
        let mut tasks = Vec::new();
        for n in 0..12 {
            let client = s.client.clone();
            let url = s.url(&format!("/fhir/Patient/{id}"));
            let ops =
                json!([{"op": "add", "path": "/name/-", "value": {"family": format!("F{n}")}}]);
            tasks.push(tokio::spawn(async move {
                client
                    .patch(url)
                    .header("content-type", JSON_PATCH)
                    .body(ops.to_string())
                    .send()
                    .await
                    .expect("send")
                    .status()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), StatusCode::OK);
        }
        let (_, _, body) = s.get(&format!("/fhir/Patient/{id}")).await;
        let mut families: Vec<String> = body["name"]
            .as_array()
            .expect("names")
            .iter()
            .filter_map(|n| n["family"].as_str().map(str::to_string))
            .collect();
        families.sort();
        let mut want: Vec<String> = (0..12).map(|n| format!("F{n}")).collect();
        want.push("First".into());
        want.sort();
        assert_eq!(families, want, "every concurrent patch is kept");
        assert_eq!(body["meta"]["versionId"], "13");
    }

    /// A Patient without narrative breaks dom-6, a warning: it is stored, and the warning
    /// comes back where R4 has a place for it (`Prefer: return=OperationOutcome`, a Bundle
    /// entry's `response.outcome`), is kept with the version and in the ledger.
    pub async fn warnings_are_returned_with_writes(s: &Server) {
        let has_dom6 = |outcome: &Value| {
            outcome["issue"].as_array().is_some_and(|issues| {
                issues
                    .iter()
                    .any(|i| i["severity"] == "warning" && i.to_string().contains("dom-6"))
            })
        };
        let (st, h, body) = s
            .post(
                "/fhir/Patient",
                &patient("urn:w", "1"),
                &[("prefer", "return=OperationOutcome")],
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert!(has_dom6(&body), "{body}");
        let id = header(&h, "location")
            .split("/Patient/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("id in Location")
            .to_string();
        let stored = s
            .store
            .read("Patient", &id)
            .await
            .expect("read")
            .expect("stored");
        let kept: Value = serde_json::from_str(stored.issues.as_deref().expect("issues kept"))
            .expect("outcome JSON");
        assert!(has_dom6(&kept), "{kept}");
        let ledger = s.store.submissions(None, 1).await.expect("ledger");
        let recorded: Value = serde_json::from_str(
            ledger[0]
                .submission
                .operation_outcome
                .as_deref()
                .expect("ledger outcome"),
        )
        .expect("outcome JSON");
        assert!(has_dom6(&recorded), "{recorded}");
        // return=representation: the resource only (no non-standard Warning header).
        let (st, h, body) = s.post("/fhir/Patient", &patient("urn:w", "2"), &[]).await;
        assert_eq!(st, StatusCode::CREATED);
        assert_eq!(body["resourceType"], "Patient");
        assert!(h.get("warning").is_none());
        // With narrative there is nothing to warn about.
        let mut narrated = patient("urn:w", "3");
        narrated["text"] = json!({"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">A patient</div>"});
        let (st, _, body) = s
            .post(
                "/fhir/Patient",
                &narrated,
                &[("prefer", "return=OperationOutcome")],
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        assert!(!has_dom6(&body), "{body}");
        assert_eq!(body["issue"][0]["severity"], "information");
        // A patch's result is validated like an update: its warnings come back too.
        let (st, _, body) = patch(
            s,
            &format!("/fhir/Patient/{id}"),
            &json!([{"op": "replace", "path": "/gender", "value": "male"}]),
            &[("prefer", "return=OperationOutcome")],
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert!(has_dom6(&body), "{body}");
        // Bundle entries carry them in response.outcome, beside the representation and
        // with return=minimal alike.
        for prefer in ["return=representation", "return=minimal"] {
            let tx = json!({
                "resourceType": "Bundle", "type": "transaction",
                "entry": [
                    {"resource": patient("urn:w", prefer), "request": {"method": "POST", "url": "Patient"}},
                    {"resource": narrated, "request": {"method": "PUT", "url": "Patient?identifier=urn:w|3"}}
                ]
            });
            let (st, _, resp) = s.post("/fhir", &tx, &[("prefer", prefer)]).await;
            assert_eq!(st, StatusCode::OK, "{resp}");
            let first = &resp["entry"][0];
            assert!(has_dom6(&first["response"]["outcome"]), "{prefer}: {resp}");
            assert_eq!(
                first.get("resource").is_some(),
                prefer == "return=representation",
                "{resp}"
            );
            assert!(
                resp["entry"][1]["response"].get("outcome").is_none(),
                "no warnings, no outcome: {resp}"
            );
        }
    }
}
