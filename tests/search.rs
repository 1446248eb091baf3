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

/// The ids of the matches, in Bundle order.
fn ordered(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|x| x["search"]["mode"] == "match")
                .map(|x| x["resource"]["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The path (from `/fhir/`) of a Bundle link, if there is one.
fn link(b: &Value, relation: &str) -> Option<String> {
    let url = b["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)?["url"]
        .as_str()?
        .to_string();
    Some(url[url.find("/fhir/")?..].to_string())
}

async fn fetch(s: &Server, path: &str) -> Value {
    let (st, _, b) = s.get(path).await;
    assert_eq!(st, StatusCode::OK, "{path}: {b}");
    b
}

/// Every match of a search, following `next` links from the first page.
async fn all_pages(s: &Server, q: &str) -> Vec<String> {
    let mut b = search(s, q).await;
    let mut out = ordered(&b);
    while let Some(next) = link(&b, "next") {
        b = fetch(s, &next).await;
        out.extend(ordered(&b));
    }
    out
}

/// (resource type, id) of the entries with `search.mode = include`.
fn included(b: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = b["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|x| x["search"]["mode"] == "include")
                .map(|x| {
                    (
                        x["resource"]["resourceType"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        x["resource"]["id"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
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

    /// Pages fetched while resources are created, updated and deleted in between: no
    /// resource is seen twice, none that existed throughout is missed, `previous` goes
    /// back; for the default order (by id) and for `_sort=family` (the updates leave the
    /// family name alone).
    pub async fn keyset_paging_survives_writes(s: &Server) {
        for sort in ["", "&_sort=family", "&_sort=-family,-birthdate"] {
            let tag = format!("t{}", sort.len());
            let mut ids = Vec::new();
            for i in 0..8 {
                ids.push(
                    create(
                        s,
                        json!({"resourceType": "Patient", "gender": "female",
                        "identifier": [{"system": "urn:batch", "value": tag}],
                        "name": [{"family": format!("fam{}", (i * 5) % 8)}],
                        "birthDate": format!("19{}0", i)}),
                    )
                    .await,
                );
            }
            let q = format!("Patient?identifier=urn:batch|{tag}&_count=3{sort}");
            let p1 = search(s, &q).await;
            let first = ordered(&p1);
            assert_eq!(first.len(), 3, "{q}");
            assert!(link(&p1, "previous").is_none());
            let next = link(&p1, "next").expect("next link");
            assert!(next.contains("_cursor="), "{next}");
            // Between the fetches: one seen and one unseen resource updated (not the sort
            // key), one unseen deleted, two created.
            let unseen: Vec<&String> = ids.iter().filter(|i| !first.contains(i)).collect();
            let (updated_seen, updated_unseen, deleted) =
                (first[0].clone(), unseen[0].clone(), unseen[1].clone());
            for id in [&updated_seen, &updated_unseen] {
                let (_, _, mut body) = s.get(&format!("/fhir/Patient/{id}")).await;
                body["gender"] = json!("female");
                body["active"] = json!(true);
                let (st, _, b) = s.put(&format!("/fhir/Patient/{id}"), &body, &[]).await;
                assert_eq!(st, StatusCode::OK, "{b}");
            }
            let (st, _, _) = s
                .send(
                    reqwest::Method::DELETE,
                    &format!("/fhir/Patient/{deleted}"),
                    None,
                    &[],
                )
                .await;
            assert!(st.is_success());
            for i in 0..2 {
                create(
                    s,
                    json!({"resourceType": "Patient", "gender": "female",
                    "identifier": [{"system": "urn:batch", "value": tag}],
                    "name": [{"family": format!("new{i}")}]}),
                )
                .await;
            }
            let mut seen = first.clone();
            let mut pages = vec![first.clone()];
            let mut b = fetch(s, &next).await;
            let again = ordered(&fetch(s, &link(&b, "first").expect("first link")).await);
            assert_eq!(again.len(), 3, "{sort}: first page");
            loop {
                let page = ordered(&b);
                assert!(page.len() <= 3);
                pages.push(page.clone());
                seen.extend(page);
                // previous goes back to exactly the page before when nothing changed since
                // it was fetched (page 2 has new resources before it in some orders).
                let prev = link(&b, "previous").expect("previous link");
                let back = ordered(&fetch(s, &prev).await);
                if pages.len() > 2 {
                    let before = &pages[pages.len() - 2];
                    assert_eq!(&back, before, "{sort}: previous of page {}", pages.len());
                } else {
                    assert_eq!(back.len(), 3, "{sort}: previous of page 2");
                }
                match link(&b, "next") {
                    Some(n) => b = fetch(s, &n).await,
                    None => break,
                }
            }
            let mut unique = seen.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), seen.len(), "{sort}: seen twice: {seen:?}");
            for id in &ids {
                if *id != deleted {
                    assert!(seen.contains(id), "{sort}: {id} was skipped");
                }
            }
            assert!(!seen.contains(&deleted) || first.contains(&deleted));
        }
        // _offset still works as a starting point.
        let all = all_pages(s, "Patient?identifier=urn:batch|t0&_count=100").await;
        let b = search(s, "Patient?identifier=urn:batch|t0&_count=2&_offset=3").await;
        assert_eq!(ordered(&b), all[3..5].to_vec());
        // A cursor that is not one is refused.
        let (st, _, _) = s.get("/fhir/Patient?_cursor=nonsense").await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }

    /// `_sort` by string, date, token, `_id` and `_lastUpdated`, ascending and descending,
    /// several values (lowest ascending, highest descending), no value last; the same order
    /// page by page.
    pub async fn sort_orders(s: &Server) {
        let p = |family: Option<Vec<&str>>, birth: Option<&str>, gender: &str| {
            let mut v = json!({"resourceType": "Patient", "gender": gender,
                                "identifier": [{"system": "urn:sort", "value": "x"}]});
            if let Some(f) = family {
                v["name"] = json!(f.iter().map(|n| json!({"family": n})).collect::<Vec<_>>());
            }
            if let Some(b) = birth {
                v["birthDate"] = json!(b);
            }
            v
        };
        // Apart in time, so that _lastUpdated (milliseconds) orders them.
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(5));
        let a = create(s, p(Some(vec!["Zed", "Adams"]), Some("1980"), "male")).await;
        pause().await;
        let b = create(s, p(Some(vec!["Brown"]), Some("1960-05-01"), "female")).await;
        pause().await;
        let c = create(s, p(None, None, "other")).await;
        pause().await;
        let d = create(s, p(Some(vec!["Moss"]), Some("1970"), "female")).await;
        let q = "Patient?identifier=urn:sort|x";
        let order = |o: &[&String]| o.iter().map(|x| (*x).clone()).collect::<Vec<_>>();
        for (sort, want) in [
            ("family", order(&[&a, &b, &d, &c])),
            ("-family", order(&[&a, &d, &b, &c])),
            ("birthdate", order(&[&b, &d, &a, &c])),
            ("-birthdate", order(&[&a, &d, &b, &c])),
            ("gender,-birthdate", order(&[&d, &b, &a, &c])),
            ("_lastUpdated", order(&[&a, &b, &c, &d])),
            ("-_lastUpdated", order(&[&d, &c, &b, &a])),
        ] {
            let got = ordered(&search(s, &format!("{q}&_sort={sort}")).await);
            assert_eq!(got, want, "_sort={sort}");
            let paged = all_pages(s, &format!("{q}&_sort={sort}&_count=1")).await;
            assert_eq!(paged, want, "_sort={sort} page by page");
        }
        let mut by_id = vec![a.clone(), b.clone(), c.clone(), d.clone()];
        by_id.sort();
        assert_eq!(ordered(&search(s, &format!("{q}&_sort=_id")).await), by_id);
        by_id.reverse();
        assert_eq!(
            all_pages(s, &format!("{q}&_sort=-_id&_count=3")).await,
            by_id
        );
        // An unknown sort parameter: a warning, 400 under strict handling.
        let w = search(s, &format!("{q}&_sort=bogus")).await;
        assert!(w["entry"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["search"]["mode"] == "outcome")));
        let (st, _, _) = s
            .send(
                reqwest::Method::GET,
                &format!("/fhir/{q}&_sort=bogus"),
                None,
                &[("prefer", "handling=strict")],
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }

    /// `_include` and `_revinclude`, one level: included resources once, with
    /// `search.mode = include`, targets filtered by type, `*`; `:iterate` refused.
    pub async fn include_and_revinclude(s: &Server) {
        let pa = create(s, json!({"resourceType": "Patient", "gender": "male"})).await;
        let pb = create(s, json!({"resourceType": "Patient", "gender": "female"})).await;
        let org = create(s, json!({"resourceType": "Organization", "name": "H"})).await;
        let obs = |p: &str, code: &str| {
            json!({"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "urn:c", "code": code}]},
                   "subject": {"reference": format!("Patient/{p}")},
                   "performer": [{"reference": format!("Organization/{org}")}]})
        };
        let o1 = create(s, obs(&pa, "inc")).await;
        let o2 = create(s, obs(&pa, "inc")).await;
        let o3 = create(s, obs(&pb, "other")).await;
        let pair = |t: &str, id: &String| (t.to_string(), id.clone());
        let b = search(s, "Observation?code=urn:c|inc&_include=Observation:subject").await;
        assert_eq!(ids(&b), {
            let mut v = vec![o1.clone(), o2.clone()];
            v.sort();
            v
        });
        assert_eq!(included(&b), vec![pair("Patient", &pa)], "once, not twice");
        let b = search(
            s,
            "Observation?code=urn:c|inc&_include=Observation:subject:Organization",
        )
        .await;
        assert!(included(&b).is_empty());
        let b = search(s, "Observation?code=urn:c|inc&_include=Observation:*").await;
        let mut want = vec![pair("Organization", &org), pair("Patient", &pa)];
        want.sort();
        assert_eq!(included(&b), want);
        let b = search(
            s,
            &format!("Patient?_id={pa},{pb}&_revinclude=Observation:subject"),
        )
        .await;
        let mut want = vec![
            pair("Observation", &o1),
            pair("Observation", &o2),
            pair("Observation", &o3),
        ];
        want.sort();
        assert_eq!(included(&b), want);
        assert_eq!(ids(&b).len(), 2);
        let b = search(
            s,
            &format!(
                "Patient?_id={pa}&_revinclude=Observation:subject&_include=Patient:organization"
            ),
        )
        .await;
        let mut want = vec![pair("Observation", &o1), pair("Observation", &o2)];
        want.sort();
        assert_eq!(included(&b), want);
        // A match is not repeated as an include (a patient linking itself).
        let (_, _, mut me) = s.get(&format!("/fhir/Patient/{pa}")).await;
        me["link"] = json!([{"other": {"reference": format!("Patient/{pa}")}, "type": "seealso"}]);
        let (st, _, _) = s.put(&format!("/fhir/Patient/{pa}"), &me, &[]).await;
        assert_eq!(st, StatusCode::OK);
        let b = search(s, &format!("Patient?_id={pa}&_include=Patient:link")).await;
        assert!(included(&b).is_empty(), "{b}");
        // A deleted target is not included.
        let (st, _, _) = s
            .send(
                reqwest::Method::DELETE,
                &format!("/fhir/Observation/{o2}"),
                None,
                &[],
            )
            .await;
        assert!(st.is_success());
        let b = search(
            s,
            &format!("Patient?_id={pa}&_revinclude=Observation:subject"),
        )
        .await;
        assert_eq!(included(&b), vec![pair("Observation", &o1)]);
        // :iterate is not done: a warning, 400 under strict handling.
        let q = format!("/fhir/Observation?_id={o1}&_include:iterate=Observation:subject");
        let b = fetch(s, &q).await;
        assert!(included(&b).is_empty());
        assert!(b["entry"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["search"]["mode"] == "outcome")));
        let (st, _, _) = s
            .send(
                reqwest::Method::GET,
                &q,
                None,
                &[("prefer", "handling=strict")],
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }

    /// `_elements` keeps the asked and mandatory elements plus id and meta, tagged
    /// SUBSETTED; `_summary=data|text|true|false`.
    pub async fn elements_and_summary(s: &Server) {
        let o = create(
            s,
            json!({"resourceType": "Observation", "status": "final",
                   "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
                   "code": {"coding": [{"system": "urn:c", "code": "el"}]},
                   "valueQuantity": {"value": 5, "unit": "mg"},
                   "note": [{"text": "n"}], "issued": "2021-01-01T00:00:00Z"}),
        )
        .await;
        let one = |b: &Value| b["entry"][0]["resource"].clone();
        let r = one(&search(s, &format!("Observation?_id={o}&_elements=value,issued")).await);
        assert_eq!(r["id"], o.as_str());
        assert_eq!(r["valueQuantity"]["value"], 5);
        assert_eq!(r["issued"], "2021-01-01T00:00:00Z");
        assert_eq!(r["status"], "final", "mandatory");
        assert!(r["code"].is_object(), "mandatory");
        assert!(r.get("note").is_none() && r.get("text").is_none());
        assert_eq!(r["meta"]["versionId"], "1");
        let tags = r["meta"]["tag"].as_array().expect("tags");
        assert!(tags.iter().any(|t| t["code"] == "SUBSETTED"
            && t["system"] == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"));
        let r = one(&search(s, &format!("Observation?_id={o}&_summary=data")).await);
        assert!(r.get("text").is_none());
        assert!(r["note"].is_array());
        let r = one(&search(s, &format!("Observation?_id={o}&_summary=text")).await);
        assert!(r["text"].is_object() && r.get("note").is_none());
        let r = one(&search(s, &format!("Observation?_id={o}&_summary=true")).await);
        assert!(
            r["valueQuantity"].is_object(),
            "value[x] is a summary element"
        );
        assert!(r.get("note").is_none(), "note is not");
        let r = one(&search(s, &format!("Observation?_id={o}&_summary=false")).await);
        assert!(r["note"].is_array() && r["meta"].get("tag").is_none());
        // The stored resource is untouched.
        let (_, _, full) = s.get(&format!("/fhir/Observation/{o}")).await;
        assert!(full["note"].is_array() && full["meta"].get("tag").is_none());
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

    /// Several clauses at once: the first selective one drives, the others are checked on
    /// its candidates (inside its index list when all are index lookups). Updated and
    /// deleted resources match by their current version only.
    pub async fn combined_clauses(s: &Server) {
        let p1 = create(s, json!({"resourceType": "Patient", "gender": "female"})).await;
        let p2 = create(s, json!({"resourceType": "Patient", "gender": "male"})).await;
        let obs = |p: &str, code: &str, date: &str, value: &str| {
            json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{p}")},
            "effectiveDateTime": date,
            "valueQuantity": {"value": value.parse::<f64>().expect("number"),
                "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}})
        };
        let a = create(s, obs(&p1, "1-1", "2019-06-01", "5")).await;
        let b = create(s, obs(&p1, "1-1", "2021-03-04", "7")).await;
        let c = create(s, obs(&p1, "2-2", "2022-01-01", "9")).await;
        let d = create(s, obs(&p2, "1-1", "2021-03-04", "7")).await;
        let e = create(s, obs(&p1, "1-1", "2023-05-05", "3")).await;
        let q = |rest: &str| format!("Observation?subject=Patient/{p1}&{rest}");
        expect(s, &q("date=ge2020-01-01"), &[&b, &c, &e]).await;
        expect(s, &q("date=ge2020-01-01&code=1-1"), &[&b, &e]).await;
        expect(s, &q("date=lt2020&code=1-1,2-2"), &[&a]).await;
        expect(
            s,
            &q("code=http://loinc.org|2-2,1-1&value-quantity=gt6"),
            &[&b, &c],
        )
        .await;
        expect(s, &q("date=ge2020&date=le2022"), &[&b, &c]).await;
        expect(s, &q("date=ge2030"), &[]).await;
        expect(s, "Observation?code=1-1&date=2021-03-04", &[&b, &d]).await;
        // Not all clauses on index tables (`_id`, `:missing`): the same answers.
        expect(s, &q(&format!("date=ge2020&_id={b},{c}")), &[&b, &c]).await;
        expect(s, &q("date=ge2020&category:missing=true"), &[&b, &c, &e]).await;
        // The current version only: an update moves e out of the range, a delete drops c.
        let mut moved = obs(&p1, "1-1", "2018-01-01", "3");
        moved["id"] = json!(e);
        let (st, _, body) = s.put(&format!("/fhir/Observation/{e}"), &moved, &[]).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let (st, _, _) = s
            .send(
                reqwest::Method::DELETE,
                &format!("/fhir/Observation/{c}"),
                None,
                &[],
            )
            .await;
        assert!(st.is_success());
        expect(s, &q("date=ge2020-01-01"), &[&b]).await;
        expect(s, &q("date=lt2020&code=1-1"), &[&a, &e]).await;
    }
}

on_both!(combined_clauses, ValidationMode::Base, 1 << 20);
on_both!(params, ValidationMode::Base, 1 << 20);
on_both!(quantity, ValidationMode::Base, 1 << 20);
on_both!(uri_and_meta, ValidationMode::Base, 1 << 20);
on_both!(modifiers, ValidationMode::Base, 1 << 20);
on_both!(chains, ValidationMode::Base, 1 << 20);
on_both!(keyset_paging_survives_writes, ValidationMode::Base, 1 << 20);
on_both!(sort_orders, ValidationMode::Base, 1 << 20);
on_both!(include_and_revinclude, ValidationMode::Base, 1 << 20);
on_both!(elements_and_summary, ValidationMode::Base, 1 << 20);
on_both!(paging, ValidationMode::Base, 1 << 20);
on_both!(unknown, ValidationMode::Base, 1 << 20);

/// Migration 0005 fills the owning site of rows written before it from the stored JSON: the
/// site label's code, a delete taking the site of the version it deleted, '' without one.
mod site_backfill {
    const ROWS: &str = r#"
INSERT INTO resource_version (res_type, res_id, version_id, last_updated, deleted, content)
VALUES ('Patient', 'p1', 1, 't1', FALSE,
        '{"resourceType":"Patient","id":"p1","meta":{"security":[{"system":"https://a-imagio.eu/fhir/CodeSystem/site","code":"site-a"}]}}'),
       ('Patient', 'p1', 2, 't2', TRUE, NULL),
       ('Patient', 'p2', 1, 't3', FALSE,
        '{"resourceType":"Patient","id":"p2","meta":{"security":[{"system":"x","code":"y"},{"system":"https://a-imagio.eu/fhir/CodeSystem/site","code":"site-b"}]}}'),
       ('Patient', 'p3', 1, 't4', FALSE, '{"resourceType":"Patient","id":"p3","meta":{"security":{"code":"odd"}}}');
INSERT INTO resource (res_type, res_id, version_id, last_updated, deleted)
VALUES ('Patient', 'p1', 2, 't2', TRUE), ('Patient', 'p2', 1, 't3', FALSE),
       ('Patient', 'p3', 1, 't4', FALSE);
"#;
    const WANT_VERSIONS: [(&str, i64, &str); 4] = [
        ("p1", 1, "site-a"),
        ("p1", 2, "site-a"),
        ("p2", 1, "site-b"),
        ("p3", 1, ""),
    ];
    const WANT_CURRENT: [(&str, &str); 3] = [("p1", "site-a"), ("p2", "site-b"), ("p3", "")];

    /// Reads the sites back from `$pool` (either database) and compares them.
    macro_rules! check {
        ($pool:expr) => {{
            let versions: Vec<(String, i64, String)> = sqlx::query_as(
                "SELECT res_id, version_id, site FROM resource_version \
                 ORDER BY res_id, version_id",
            )
            .fetch_all($pool)
            .await
            .expect("versions");
            let want: Vec<(String, i64, String)> = WANT_VERSIONS
                .iter()
                .map(|(i, v, s)| (i.to_string(), *v, s.to_string()))
                .collect();
            assert_eq!(versions, want);
            let current: Vec<(String, String)> =
                sqlx::query_as("SELECT res_id, site FROM resource ORDER BY res_id")
                    .fetch_all($pool)
                    .await
                    .expect("current");
            let want: Vec<(String, String)> = WANT_CURRENT
                .iter()
                .map(|(i, s)| (i.to_string(), s.to_string()))
                .collect();
            assert_eq!(current, want);
        }};
    }

    #[tokio::test]
    async fn sqlite() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("sqlite");
        for sql in [
            include_str!("../src/store/migrations/sqlite/0001_resources.sql"),
            include_str!("../src/store/migrations/sqlite/0002_search.sql"),
            ROWS,
            include_str!("../src/store/migrations/sqlite/0005_site.sql"),
        ] {
            sqlx::raw_sql(sql).execute(&pool).await.expect("sql");
        }
        check!(&pool);
    }

    #[tokio::test]
    async fn postgres() {
        let Ok(url) = std::env::var("IMAGIO_TEST_DATABASE_URL") else {
            eprintln!("SKIPPED: PostgreSQL backfill test: IMAGIO_TEST_DATABASE_URL not set");
            return;
        };
        use sqlx::ConnectOptions as _;
        use std::str::FromStr as _;
        let schema = super::common::unique("m");
        let mut admin = sqlx::postgres::PgConnectOptions::from_str(&url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        sqlx::raw_sql(&format!("CREATE SCHEMA \"{schema}\""))
            .execute(&mut admin)
            .await
            .expect("schema");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::postgres::PgConnectOptions::from_str(&url)
                    .expect("url")
                    .options([("search_path", schema.as_str())]),
            )
            .await
            .expect("pool");
        for sql in [
            include_str!("../src/store/migrations/postgres/0001_resources.sql"),
            include_str!("../src/store/migrations/postgres/0002_search.sql"),
            ROWS,
            include_str!("../src/store/migrations/postgres/0005_site.sql"),
        ] {
            sqlx::raw_sql(sql).execute(&pool).await.expect("sql");
        }
        check!(&pool);
        pool.close().await;
        sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&mut admin)
            .await
            .expect("drop");
    }
}
