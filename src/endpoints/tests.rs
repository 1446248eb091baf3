//! Endpoint derivation on the two journey Bundles of `profiles/examples/journeys/` and on
//! small hand-built journeys (the study profiles' shapes), each expected value worked out
//! by hand in the comments.

use super::analysis::{analyse, Group, SafetyClass};
use super::derive::{derive, Datasets, Endpoint, Row, HORIZON_DAYS};
use super::facts::{day, day_text, Facts};
use serde_json::{json, Value};

const P: &str = "https://a-imagio.eu/fhir";

fn facts_of(resources: &[Value]) -> Facts {
    let mut f = Facts::default();
    for r in resources {
        let text = r.to_string();
        let e = crate::model::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        f.add(&e);
    }
    f
}

fn row<'a>(d: &'a Datasets, e: Endpoint, unit: &str) -> &'a Row {
    d.rows
        .iter()
        .find(|r| r.endpoint == e && r.unit == unit)
        .unwrap_or_else(|| panic!("no {e:?} row for {unit}: {:#?}", d.rows))
}

// (days, event, end reason) of an analysed row.
fn outcome(r: &Row) -> (Option<i32>, bool, &'static str, Option<&str>) {
    (r.days, r.event, r.end_reason, r.excluded.as_deref())
}

fn date_plus(base: &str, days: i32) -> String {
    day_text(day(base).unwrap_or(0) + days)
}

// ---- resource builders in the study profiles' shapes ------------------------------------

fn patient(id: &str, deceased: Option<Value>) -> Value {
    let mut p = json!({
        "resourceType": "Patient", "id": id,
        "identifier": [{"system": format!("{P}/sid/subject"), "value": id}],
        "gender": "female", "birthDate": "1950",
        "managingOrganization": {"reference": "Organization/site-a"}
    });
    if let Some(Value::String(d)) = &deceased {
        p["deceasedDateTime"] = json!(d);
    } else if let Some(b @ Value::Bool(_)) = deceased {
        p["deceasedBoolean"] = b;
    }
    p
}

fn diagnosis(pid: &str, tumour: &str) -> Value {
    json!({
        "resourceType": "Condition", "id": format!("{pid}-dx"),
        "code": {"coding": [{"system": format!("{P}/CodeSystem/tumour-type"), "code": tumour}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "onsetDateTime": "2020-01-01"
    })
}

fn ablation(pid: &str, n: u32, date: &str, lesion: &str) -> Value {
    json!({
        "resourceType": "Procedure", "id": format!("{pid}-abl-{n}"),
        "extension": [{"url": format!("{P}/StructureDefinition/targeted-lesion"),
                       "valueReference": {"reference": format!("BodyStructure/{lesion}")}}],
        "status": "completed",
        "code": {"coding": [{"system": format!("{P}/CodeSystem/ablation-modality"), "code": "rfa"}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "performedDateTime": format!("{date}T09:00:00+01:00"),
        "performer": [{"actor": {"reference": "Organization/site-a"}}],
        "reasonReference": [{"reference": format!("Condition/{pid}-dx")}]
    })
}

fn follow_up(pid: &str, n: u32, date: &str, method: &str) -> Value {
    json!({
        "resourceType": "Observation", "id": format!("{pid}-fu-{n}"), "status": "final",
        "code": {"coding": [{"system": format!("{P}/CodeSystem/observation-code"), "code": "follow-up"}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "effectiveDateTime": date,
        "valueCodeableConcept": {"coding": [{"system": format!("{P}/CodeSystem/follow-up-status"), "code": "no-new-event"}]},
        "method": {"coding": [{"system": format!("{P}/CodeSystem/follow-up-method"), "code": method}]}
    })
}

fn recurrence(pid: &str, n: u32, date: &str, kind: &str, lesion: Option<&str>) -> Value {
    let mut r = json!({
        "resourceType": "Observation", "id": format!("{pid}-rec-{n}"), "status": "final",
        "code": {"coding": [{"system": format!("{P}/CodeSystem/observation-code"), "code": "recurrence"}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "effectiveDateTime": date,
        "valueCodeableConcept": {"coding": [{"system": format!("{P}/CodeSystem/recurrence-type"), "code": kind}]}
    });
    if let Some(l) = lesion {
        r["focus"] = json!([{"reference": format!("BodyStructure/{l}")}]);
    }
    r
}

fn complication(
    pid: &str,
    n: u32,
    date: &str,
    grade: u8,
    version: &str,
    causality: &str,
    abl: &str,
) -> Value {
    let code = ["C41338", "C41339", "C41340", "C41337", "C48275"][usize::from(grade) - 1];
    json!({
        "resourceType": "AdverseEvent", "id": format!("{pid}-ae-{n}"),
        "extension": [
            {"url": "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade",
             "valueCodeableConcept": {"coding": [{"system": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl", "code": code}]}},
            {"url": format!("{P}/StructureDefinition/ctcae-version"), "valueCode": version}
        ],
        "actuality": "actual", "event": {"text": "Hepatic hemorrhage"},
        "subject": {"reference": format!("Patient/{pid}")},
        "date": date,
        "seriousness": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness",
                                    "code": if grade >= 3 { "Serious" } else { "Non-serious" }}]},
        "suspectEntity": [{"instance": {"reference": format!("Procedure/{abl}")},
                           "causality": [{"assessment": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-causality-assess", "code": causality}]}}]}],
        "study": [{"reference": "ResearchStudy/a-imagio"}]
    })
}

// ---- the journey examples --------------------------------------------------------------

fn journey(name: &str) -> Facts {
    let path = format!(
        "{}/profiles/examples/journeys/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut f = Facts::default();
    super::read_ndjson_text(&path, &text.replace('\n', " "), &mut f)
        .unwrap_or_else(|e| panic!("{e}"));
    f
}

// The CRLM journey: two lesions ablated on 2022-01-12 (the origin); imaging follow-ups on
// 2022-04-12, 2022-07-12, 2023-01-10; LTP of lesion 1 found on 2023-03-12 (day 424:
// 365 days to 2023-01-12, then 31 + 28); death on 2024-07-12 (day 912: 730 to 2024-01-12,
// then 31 + 29 + 31 + 30 + 31 + 30 = 182). Lesion 2 has no LTP: the 2023-03-12 imaging
// that found lesion 1's progression is its last imaging (day 424, censored). A grade 3,
// CTCAE 5.0, probably related, serious haemorrhage on the ablation day (day 0).
#[test]
fn crlm_journey() {
    let f = journey("Bundle-journey-crlm.json");
    assert!(f.ignored.is_empty(), "{:?}", f.ignored);
    let d = derive(&f);
    let l1 = row(&d, Endpoint::Ltp, "crlm-0001-l1");
    assert_eq!(outcome(l1), (Some(424), true, "ltp", None));
    assert_eq!(l1.end_source, "Observation/crlm-0001-ltp-l1");
    assert_eq!(
        (l1.site.as_str(), l1.tumour.as_str()),
        ("site-nl-01", "crlm")
    );
    let l2 = row(&d, Endpoint::Ltp, "crlm-0001-l2");
    assert_eq!(outcome(l2), (Some(424), false, "last-imaging", None));
    assert_eq!(
        outcome(row(&d, Endpoint::Ttr, "crlm-0001")),
        (Some(424), true, "recurrence", None)
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Dfs, "crlm-0001")),
        (Some(424), true, "recurrence", None)
    );
    let os = row(&d, Endpoint::Os, "crlm-0001");
    assert_eq!(outcome(os), (Some(912), true, "death", None));
    assert_eq!(os.end.map(day_text).as_deref(), Some("2024-07-12"));
    assert_eq!(d.complications.len(), 1);
    let c = &d.complications[0];
    assert_eq!(
        (c.days, c.grade, c.version.as_str(), c.related, c.serious),
        (Some(0), 3, "5.0", true, true)
    );
    let a = analyse(&d);
    let g34 = |v: &str, w: i32| {
        a.safety
            .iter()
            .find(|s| {
                s.group == Group::All
                    && s.version == v
                    && s.window == w
                    && s.class == SafetyClass::Grade3To4
            })
            .map(|s| (s.patients, s.treated))
    };
    assert_eq!(g34("all", 30), Some((1, 1)));
    assert_eq!(g34("5.0", 90), Some((1, 1)));
}

// The HCC journey: one lesion ablated on 2023-03-15; imaging follow-ups on 2023-06-14,
// 2023-09-13 and 2024-03-12 (day 363); an intrahepatic distant recurrence on 2024-11-19
// (day 615: 366 days to 2024-03-15, 2024 being a leap year, then 245 to 2024-11-15, then
// 4); a clinical visit on 2025-03-10 (day 726), alive. The lesion has no LTP: censored at
// the last liver imaging, the recurrence's (day 615). TTR and DFS: the recurrence at 615.
// OS: censored at the last contact, day 726. The grade 1 complication counts nowhere.
#[test]
fn hcc_journey() {
    let f = journey("Bundle-journey-hcc.json");
    let d = derive(&f);
    assert_eq!(
        outcome(row(&d, Endpoint::Ltp, "hcc-0001-l1")),
        (Some(615), false, "last-imaging", None)
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Ttr, "hcc-0001")),
        (Some(615), true, "recurrence", None)
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Dfs, "hcc-0001")),
        (Some(615), true, "recurrence", None)
    );
    let os = row(&d, Endpoint::Os, "hcc-0001");
    assert_eq!(outcome(os), (Some(726), false, "last-contact", None));
    assert_eq!(os.end_source, "Observation/hcc-0001-fu-24m");
    let a = analyse(&d);
    assert!(a.safety.iter().all(|s| s.patients == 0), "{:?}", a.safety);
}

// ---- hand-built journeys ---------------------------------------------------------------

// Missing follow-up: an ablation on 2024-01-10 and nothing after. Every endpoint is
// excluded, each with its reason, and the patient still counts as treated (safety).
#[test]
fn missing_follow_up() {
    let f = facts_of(&[
        patient("p1", None),
        diagnosis("p1", "hcc"),
        ablation("p1", 1, "2024-01-10", "p1-l1"),
    ]);
    let d = derive(&f);
    assert_eq!(
        row(&d, Endpoint::Ltp, "p1-l1").excluded.as_deref(),
        Some("no imaging follow-up after the ablation")
    );
    assert_eq!(
        row(&d, Endpoint::Ttr, "p1").excluded.as_deref(),
        Some("no imaging follow-up after the first ablation")
    );
    assert_eq!(
        row(&d, Endpoint::Dfs, "p1").excluded.as_deref(),
        Some("no imaging follow-up after the first ablation")
    );
    assert_eq!(
        row(&d, Endpoint::Os, "p1").excluded.as_deref(),
        Some("no contact after the first ablation")
    );
    assert_eq!(d.treated.len(), 1);
    // Excluded rows are in the CSV with their reason, never dropped.
    let files = super::out::files(&d, &analyse(&d));
    let ttr = files
        .iter()
        .find(|f| f.name == "ttr.csv")
        .map(|f| f.content.clone())
        .unwrap_or_default();
    assert!(
        ttr.contains(
            "p1,site-a,hcc,p1-abl-1,2024-01-10,,,,,,no imaging follow-up after the first ablation"
        ),
        "{ttr}"
    );
}

// Death before any recurrence: ablation on day 0 (2024-01-10), imaging on day 90, a
// clinical visit on day 150, death on day 200, no recurrence.
// - LTP and TTR: censored at the last imaging, day 90 (a visit does not rule out
//   recurrence; death is not a recurrence).
// - DFS: death is the event, day 200.
// - OS: death, day 200.
#[test]
fn death_before_any_recurrence() {
    let o = "2024-01-10";
    let f = facts_of(&[
        patient("p2", Some(json!(date_plus(o, 200)))),
        diagnosis("p2", "crlm"),
        ablation("p2", 1, o, "p2-l1"),
        follow_up("p2", 1, &date_plus(o, 90), "imaging"),
        follow_up("p2", 2, &date_plus(o, 150), "clinical-visit"),
    ]);
    let d = derive(&f);
    assert_eq!(
        outcome(row(&d, Endpoint::Ltp, "p2-l1")),
        (Some(90), false, "last-imaging", None)
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Ttr, "p2")),
        (Some(90), false, "last-imaging", None)
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Dfs, "p2")),
        (Some(200), true, "death", None)
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Os, "p2")),
        (Some(200), true, "death", None)
    );
}

// Ties and the study horizon:
// - p3: a recurrence and death on the same day (day 100): DFS counts the recurrence.
// - p4: an imaging follow-up and an LTP on the same day (day 180): the event wins.
// - p5: recurrence on day 1500, beyond the horizon (1461): censored at 1461; alive, last
//   contact day 1600: OS censored at 1461 too.
// - p6: recorded dead without a date: OS and DFS excluded; TTR censored at its imaging
//   (day 60).
#[test]
fn ties_horizon_and_unknown_death_date() {
    let o = "2021-05-01";
    let f = facts_of(&[
        patient("p3", Some(json!(date_plus(o, 100)))),
        ablation("p3", 1, o, "p3-l1"),
        recurrence("p3", 1, &date_plus(o, 100), "extrahepatic", None),
        patient("p4", None),
        ablation("p4", 1, o, "p4-l1"),
        follow_up("p4", 1, &date_plus(o, 180), "imaging"),
        recurrence("p4", 1, &date_plus(o, 180), "ltp", Some("p4-l1")),
        patient("p5", None),
        ablation("p5", 1, o, "p5-l1"),
        recurrence("p5", 1, &date_plus(o, 1500), "intrahepatic-distant", None),
        follow_up("p5", 1, &date_plus(o, 1600), "remote-contact"),
        patient("p6", Some(json!(true))),
        ablation("p6", 1, o, "p6-l1"),
        follow_up("p6", 1, &date_plus(o, 60), "imaging"),
    ]);
    let d = derive(&f);
    assert_eq!(
        outcome(row(&d, Endpoint::Dfs, "p3")),
        (Some(100), true, "recurrence", None)
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Os, "p3")),
        (Some(100), true, "death", None)
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Ltp, "p4-l1")),
        (Some(180), true, "ltp", None)
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Ttr, "p5")),
        (Some(HORIZON_DAYS), false, "horizon", None)
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Os, "p5")),
        (Some(HORIZON_DAYS), false, "horizon", None)
    );
    assert_eq!(
        row(&d, Endpoint::Os, "p6").excluded.as_deref(),
        Some("dead, date of death unknown")
    );
    assert_eq!(
        row(&d, Endpoint::Dfs, "p6").excluded.as_deref(),
        Some("dead, date of death unknown")
    );
    assert_eq!(
        outcome(row(&d, Endpoint::Ttr, "p6")),
        (Some(60), false, "last-imaging", None)
    );
    // Tumour type and site fall back to "unknown" and the Patient's organization.
    assert_eq!(
        (
            row(&d, Endpoint::Os, "p3").tumour.as_str(),
            row(&d, Endpoint::Os, "p3").site.as_str()
        ),
        ("unknown", "site-a")
    );
}

// Data errors exclude with a reason, and records that cannot be used are listed:
// - p7: an LTP dated before its ablation: the lesion's LTP row and the patient's TTR and
//   DFS rows are excluded (OS stands: death is not in question).
// - p8: a follow-up with a month-only date and a draft recurrence: both listed in the
//   ignored resources; a Patient without any ablation: excluded from every endpoint.
// - p9: death before the first ablation: every endpoint excluded.
#[test]
fn data_errors_are_excluded_with_reasons() {
    let o = "2022-02-01";
    let mut bad_fu = follow_up("p8", 1, "2022-05", "imaging");
    bad_fu["effectiveDateTime"] = json!("2022-05");
    let mut draft = recurrence("p8", 1, "2022-06-01", "extrahepatic", None);
    draft["status"] = json!("preliminary");
    let f = facts_of(&[
        patient("p7", None),
        ablation("p7", 1, o, "p7-l1"),
        recurrence("p7", 1, &date_plus(o, -5), "ltp", Some("p7-l1")),
        follow_up("p7", 1, &date_plus(o, 90), "imaging"),
        patient("p8", None),
        bad_fu,
        draft,
        patient("p9", Some(json!(date_plus(o, -1)))),
        ablation("p9", 1, o, "p9-l1"),
    ]);
    let d = derive(&f);
    assert!(row(&d, Endpoint::Ltp, "p7-l1")
        .excluded
        .as_deref()
        .is_some_and(|r| r.contains("dated on or before the ablation")));
    assert!(row(&d, Endpoint::Ttr, "p7")
        .excluded
        .as_deref()
        .is_some_and(|r| r.contains("on or before the first ablation")));
    assert!(row(&d, Endpoint::Dfs, "p7").excluded.is_some());
    assert_eq!(
        outcome(row(&d, Endpoint::Os, "p7")),
        (Some(90), false, "last-contact", None)
    );
    let ignored: Vec<(&str, &str)> = d
        .ignored
        .iter()
        .map(|i| (i.resource.as_str(), i.reason.as_str()))
        .collect();
    assert!(
        ignored.contains(&(
            "Observation/p8-fu-1",
            "follow-up without an effective date with a day"
        )),
        "{ignored:?}"
    );
    assert!(
        ignored
            .iter()
            .any(|(r, why)| *r == "Observation/p8-rec-1" && why.contains("preliminary")),
        "{ignored:?}"
    );
    for e in [Endpoint::Ttr, Endpoint::Dfs, Endpoint::Os] {
        assert_eq!(
            row(&d, e, "p8").excluded.as_deref(),
            Some("no completed ablation")
        );
        assert_eq!(
            row(&d, e, "p9").excluded.as_deref(),
            Some("date of death before the first ablation")
        );
    }
    assert_eq!(
        row(&d, Endpoint::Ltp, "p9-l1").excluded.as_deref(),
        Some("date of death before the ablation")
    );
}

// Safety by window, grade and CTCAE version, by hand. Four treated patients (HCC):
// - s1: grade 3, CTCAE 5.0, possible, day 30: counts in both windows.
// - s2: grade 4, CTCAE 6.0, certain, day 31: 90-day window only; plus a grade 3, 5.0,
//   *unlikely*, day 2: not related, counts nowhere.
// - s3: grade 5, CTCAE 6.0, probable, day 91: in neither window.
// - s4: grade 5, CTCAE 5.0, certain, day 10: grade 5 in both windows.
//
// Grade 3-4: 30 days: s1 -> all 1/4, 5.0 1/4, 6.0 0/4; 90 days: s1, s2 -> all 2/4,
// 5.0 1/4, 6.0 1/4. Grade 5: 30 and 90 days: s4 -> 1/4 (5.0). Serious (grade >= 3 here,
// related): 30 days s1, s4 -> 2/4; 90 days s1, s2, s4 -> 3/4.
#[test]
fn safety_windows_grades_versions() {
    let o = "2023-06-01";
    let mut rs = vec![];
    for p in ["s1", "s2", "s3", "s4"] {
        rs.push(patient(p, None));
        rs.push(diagnosis(p, "hcc"));
        rs.push(ablation(p, 1, o, &format!("{p}-l1")));
    }
    rs.push(complication(
        "s1",
        1,
        &date_plus(o, 30),
        3,
        "5.0",
        "Possible",
        "s1-abl-1",
    ));
    rs.push(complication(
        "s2",
        1,
        &date_plus(o, 31),
        4,
        "6.0",
        "Certain",
        "s2-abl-1",
    ));
    rs.push(complication(
        "s2",
        2,
        &date_plus(o, 2),
        3,
        "5.0",
        "Unlikely",
        "s2-abl-1",
    ));
    rs.push(complication(
        "s3",
        1,
        &date_plus(o, 91),
        5,
        "6.0",
        "Probably-Likely",
        "s3-abl-1",
    ));
    rs.push(complication(
        "s4",
        1,
        &date_plus(o, 10),
        5,
        "5.0",
        "Certain",
        "s4-abl-1",
    ));
    let d = derive(&facts_of(&rs));
    let a = analyse(&d);
    let get = |v: &str, w: i32, c: SafetyClass| {
        a.safety
            .iter()
            .find(|s| s.group == Group::All && s.version == v && s.window == w && s.class == c)
            .map(|s| (s.patients, s.treated))
            .unwrap_or((99, 99))
    };
    use SafetyClass::*;
    assert_eq!(get("all", 30, Grade3To4), (1, 4));
    assert_eq!(get("5.0", 30, Grade3To4), (1, 4));
    assert_eq!(get("6.0", 30, Grade3To4), (0, 4));
    assert_eq!(get("all", 90, Grade3To4), (2, 4));
    assert_eq!(get("5.0", 90, Grade3To4), (1, 4));
    assert_eq!(get("6.0", 90, Grade3To4), (1, 4));
    assert_eq!(get("all", 30, Grade5), (1, 4));
    assert_eq!(get("all", 90, Grade5), (1, 4));
    assert_eq!(get("6.0", 90, Grade5), (0, 4));
    assert_eq!(get("all", 30, Serious), (2, 4));
    assert_eq!(get("all", 90, Serious), (3, 4));
    // The same by tumour type; the proportion and its Wilson interval (2 of 4: centre
    // (0.5 + 0.480182) / 1.960365 = 0.5, half 1.959964 * sqrt(0.0625 + 0.060023) / 1.960365
    // = 1.959964 * 0.350033 / 1.960365 = 0.349961, so [0.150039, 0.849961]).
    let s = a
        .safety
        .iter()
        .find(|s| {
            s.group == Group::Tumour("hcc".into())
                && s.version == "all"
                && s.window == 90
                && s.class == Grade3To4
        })
        .cloned();
    let s = s.unwrap_or_else(|| panic!("no hcc row"));
    assert_eq!((s.patients, s.treated), (2, 4));
    assert!((s.proportion - 0.5).abs() < 1e-12);
    assert!(
        (s.lower - 0.150_039).abs() < 1e-5 && (s.upper - 0.849_961).abs() < 1e-5,
        "{s:?}"
    );
}

// Kaplan-Meier through the whole pipeline: the OS rows of three patients (deaths on days
// 100 and 100, a censoring at day 100 by last contact) give S(100) = 1 - 2/3 = 1/3 and,
// by tumour type, a curve per type; the Parameters output validates against base R4.
#[test]
fn estimates_and_parameters() {
    let o = "2020-03-01";
    let f = facts_of(&[
        patient("k1", Some(json!(date_plus(o, 100)))),
        diagnosis("k1", "hcc"),
        ablation("k1", 1, o, "k1-l1"),
        patient("k2", Some(json!(date_plus(o, 100)))),
        diagnosis("k2", "crlm"),
        ablation("k2", 1, o, "k2-l1"),
        patient("k3", None),
        diagnosis("k3", "hcc"),
        ablation("k3", 1, o, "k3-l1"),
        follow_up("k3", 1, &date_plus(o, 100), "clinical-visit"),
    ]);
    let d = derive(&f);
    let a = analyse(&d);
    let os = |g: Group| {
        a.estimates
            .iter()
            .find(|e| e.endpoint == Endpoint::Os && e.group == g)
            .map(|e| e.curve.clone())
    };
    let all = os(Group::All).unwrap_or_else(|| panic!("no OS curve"));
    assert_eq!((all.n, all.events), (3, 2));
    assert!((all.at(100).0 - 1.0 / 3.0).abs() < 1e-12);
    let hcc = os(Group::Tumour("hcc".into())).unwrap_or_else(|| panic!("no HCC curve"));
    assert_eq!((hcc.n, hcc.events), (2, 1));
    assert!(os(Group::Site("site-a".into())).is_some());
    let files = super::out::files(&d, &a);
    for name in [
        "ltp.csv",
        "ttr.csv",
        "dfs.csv",
        "os.csv",
        "km.csv",
        "km-summary.csv",
        "safety.csv",
        "complications.csv",
        "ignored.csv",
        "km-os-all.svg",
        "km-os-tumour-hcc.svg",
        "km-os-site-site-a.svg",
        "endpoints.json",
    ] {
        assert!(files.iter().any(|f| f.name == name), "{name} missing");
    }
    let params = files
        .iter()
        .find(|f| f.name == "endpoints.json")
        .map(|f| f.content.clone())
        .unwrap_or_default();
    let registry = crate::profiles::study_registry(None).unwrap_or_else(|e| panic!("{e}"));
    let validator = crate::validate::Validator::new(registry);
    let issues = validator.validate_json(&params, &[]);
    let errors: Vec<_> = issues
        .iter()
        .filter(|i| {
            matches!(
                i.severity,
                crate::validate::Severity::Error | crate::validate::Severity::Fatal
            )
        })
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let km = files
        .iter()
        .find(|f| f.name == "km.csv")
        .map(|f| f.content.clone())
        .unwrap_or_default();
    assert!(km.contains("os,all,100,3,2,1,0.333333,0.272166,"), "{km}");
}
