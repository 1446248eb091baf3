//! The output files: the datasets and estimates as CSV, everything as one FHIR
//! `Parameters` resource, and an SVG picture per curve.

use super::analysis::{Analysis, REPORT_TIMES};
use super::derive::{ComplicationRow, Datasets, Endpoint, Row, HORIZON_DAYS};
use super::facts::day_text;
use serde_json::{json, Value};
use std::fmt::Write as _;

/// One output file: its name and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// The file name (no folders).
    pub name: String,
    /// The media type.
    pub media_type: &'static str,
    /// The content.
    pub content: String,
}

/// The name of the FHIR output.
pub const PARAMETERS_FILE: &str = "endpoints.json";

/// A CSV field: quoted when it holds a comma, quote or line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn line(out: &mut String, fields: &[String]) {
    let joined: Vec<String> = fields.iter().map(|f| field(f)).collect();
    out.push_str(&joined.join(","));
    out.push('\n');
}

/// A decimal with 6 places; empty for `None`.
fn dec(x: Option<f64>) -> String {
    x.map_or_else(String::new, |v| format!("{v:.6}"))
}

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map_or_else(String::new, |v| v.to_string())
}

fn endpoint_csv(e: Endpoint, rows: &[&Row]) -> String {
    let mut out = String::new();
    let mut header = vec![];
    if e == Endpoint::Ltp {
        header.push("lesion");
    }
    header.extend([
        "patient",
        "site",
        "tumour_type",
        "origin_ablation",
        "origin_date",
        "end_date",
        "days",
        "event",
        "end_reason",
        "end_source",
        "excluded",
    ]);
    out.push_str(&header.join(","));
    out.push('\n');
    for r in rows {
        let mut f = vec![];
        if e == Endpoint::Ltp {
            f.push(r.unit.clone());
        }
        f.extend([
            r.patient.clone(),
            r.site.clone(),
            r.tumour.clone(),
            r.ablation.clone().unwrap_or_default(),
            r.origin.map(day_text).unwrap_or_default(),
            r.end.map(day_text).unwrap_or_default(),
            opt(r.days),
            if r.excluded.is_some() {
                String::new()
            } else {
                u8::from(r.event).to_string()
            },
            r.end_reason.to_string(),
            r.end_source.clone(),
            r.excluded.clone().unwrap_or_default(),
        ]);
        line(&mut out, &f);
    }
    out
}

fn complications_csv(rows: &[ComplicationRow]) -> String {
    let mut out = String::from(
        "patient,site,tumour_type,complication,ablation,days_from_ablation,grade,ctcae_version,related,serious,within_30_days,within_90_days,excluded\n",
    );
    for c in rows {
        let within = |w: i32| match (c.days, &c.excluded) {
            (Some(d), None) => u8::from(d <= w).to_string(),
            _ => String::new(),
        };
        line(
            &mut out,
            &[
                c.patient.clone(),
                c.site.clone(),
                c.tumour.clone(),
                c.complication.clone(),
                c.ablation.clone().unwrap_or_default(),
                opt(c.days),
                c.grade.to_string(),
                c.version.clone(),
                u8::from(c.related).to_string(),
                u8::from(c.serious).to_string(),
                within(30),
                within(90),
                c.excluded.clone().unwrap_or_default(),
            ],
        );
    }
    out
}

fn km_csv(a: &Analysis) -> String {
    let mut out = String::from(
        "endpoint,group,time,at_risk,events,censored,survival,std_err,ci_lower,ci_upper\n",
    );
    for e in &a.estimates {
        for s in &e.curve.steps {
            line(
                &mut out,
                &[
                    e.endpoint.code().into(),
                    e.group.key(),
                    s.time.to_string(),
                    s.at_risk.to_string(),
                    s.events.to_string(),
                    s.censored.to_string(),
                    dec(Some(s.survival)),
                    dec(s.std_err.is_finite().then_some(s.std_err)),
                    dec(s.lower),
                    dec(s.upper),
                ],
            );
        }
    }
    out
}

fn summary_csv(a: &Analysis) -> String {
    let mut out = String::from("endpoint,group,n,events,median,median_lower,median_upper");
    for t in REPORT_TIMES {
        let _ = write!(out, ",at_risk_{t},survival_{t},lower_{t},upper_{t}");
    }
    out.push('\n');
    for e in &a.estimates {
        let (lo, hi) = e.curve.median_ci();
        let mut f = vec![
            e.endpoint.code().to_string(),
            e.group.key(),
            e.curve.n.to_string(),
            e.curve.events.to_string(),
            opt(e.curve.median()),
            opt(lo),
            opt(hi),
        ];
        for t in REPORT_TIMES {
            let (s, l, u) = e.curve.at(t);
            let reached = e.curve.at_risk(t) > 0;
            f.push(e.curve.at_risk(t).to_string());
            f.push(if reached { dec(Some(s)) } else { String::new() });
            f.push(if reached { dec(l) } else { String::new() });
            f.push(if reached { dec(u) } else { String::new() });
        }
        line(&mut out, &f);
    }
    out
}

fn safety_csv(a: &Analysis) -> String {
    let mut out = String::from(
        "group,ctcae_version,window_days,class,patients,treated,proportion,ci_lower,ci_upper\n",
    );
    for s in &a.safety {
        line(
            &mut out,
            &[
                s.group.key(),
                s.version.clone(),
                s.window.to_string(),
                s.class.code().into(),
                s.patients.to_string(),
                s.treated.to_string(),
                dec(Some(s.proportion)),
                dec(Some(s.lower)),
                dec(Some(s.upper)),
            ],
        );
    }
    out
}

fn ignored_csv(d: &Datasets) -> String {
    let mut out = String::from("resource,reason\n");
    for i in &d.ignored {
        line(&mut out, &[i.resource.clone(), i.reason.clone()]);
    }
    out
}

/// A FHIR decimal (6 places).
fn fhir_dec(x: f64) -> Value {
    let r = (x * 1e6).round() / 1e6;
    serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number)
}

fn part_dec(name: &str, x: Option<f64>) -> Option<Value> {
    x.filter(|v| v.is_finite())
        .map(|v| json!({"name": name, "valueDecimal": fhir_dec(v)}))
}

fn row_parameter(r: &Row) -> Value {
    let mut parts = vec![];
    if r.endpoint == Endpoint::Ltp {
        parts.push(json!({"name": "lesion", "valueReference": {"reference": format!("BodyStructure/{}", r.unit)}}));
    }
    parts.push(json!({"name": "subject", "valueReference": {"reference": format!("Patient/{}", r.patient)}}));
    parts.push(json!({"name": "site", "valueString": r.site}));
    parts.push(json!({"name": "tumourType", "valueCode": r.tumour}));
    if let Some(a) = &r.ablation {
        parts.push(json!({"name": "originAblation", "valueReference": {"reference": format!("Procedure/{a}")}}));
    }
    if let Some(o) = r.origin {
        parts.push(json!({"name": "origin", "valueDate": day_text(o)}));
    }
    match &r.excluded {
        Some(why) => parts.push(json!({"name": "excluded", "valueString": why})),
        None => {
            if let (Some(end), Some(days)) = (r.end, r.days) {
                parts.push(json!({"name": "end", "valueDate": day_text(end)}));
                parts.push(json!({"name": "days", "valueInteger": days}));
                parts.push(json!({"name": "event", "valueBoolean": r.event}));
                parts.push(json!({"name": "endReason", "valueCode": r.end_reason}));
                if !r.end_source.is_empty() {
                    parts.push(
                        json!({"name": "endSource", "valueReference": {"reference": r.end_source}}),
                    );
                }
            }
        }
    }
    json!({"name": r.endpoint.code(), "part": parts})
}

/// The FHIR `Parameters` resource: the settings, one parameter per dataset row (named by
/// its endpoint), one `estimate` per curve (with the report times), one `safety` per
/// proportion, and the names of the files.
pub fn parameters(d: &Datasets, a: &Analysis, files: &[String]) -> Value {
    let mut p = vec![
        json!({"name": "horizonDays", "valueInteger": HORIZON_DAYS}),
        json!({"name": "resourcesRead", "valueInteger": d.resources}),
        json!({"name": "treatedPatients", "valueInteger": d.treated.len()}),
    ];
    for r in &d.rows {
        p.push(row_parameter(r));
    }
    for e in &a.estimates {
        let (lo, hi) = e.curve.median_ci();
        let mut parts = vec![
            json!({"name": "endpoint", "valueCode": e.endpoint.code()}),
            json!({"name": "group", "valueString": e.group.key()}),
            json!({"name": "n", "valueInteger": e.curve.n}),
            json!({"name": "events", "valueInteger": e.curve.events}),
        ];
        parts.extend(part_dec("median", e.curve.median()));
        parts.extend(part_dec("medianLower", lo));
        parts.extend(part_dec("medianUpper", hi));
        for t in REPORT_TIMES {
            let (s, l, u) = e.curve.at(t);
            let n = e.curve.at_risk(t);
            let mut at = vec![
                json!({"name": "day", "valueInteger": t}),
                json!({"name": "atRisk", "valueInteger": n}),
            ];
            if n > 0 {
                at.extend(part_dec("survival", Some(s)));
                at.extend(part_dec("lower", l));
                at.extend(part_dec("upper", u));
            }
            parts.push(json!({"name": "at", "part": at}));
        }
        p.push(json!({"name": "estimate", "part": parts}));
    }
    for s in &a.safety {
        p.push(json!({"name": "safety", "part": [
            {"name": "group", "valueString": s.group.key()},
            {"name": "ctcaeVersion", "valueString": s.version},
            {"name": "windowDays", "valueInteger": s.window},
            {"name": "class", "valueCode": s.class.code()},
            {"name": "patients", "valueInteger": s.patients},
            {"name": "treated", "valueInteger": s.treated},
            {"name": "proportion", "valueDecimal": fhir_dec(s.proportion)},
            {"name": "lower", "valueDecimal": fhir_dec(s.lower)},
            {"name": "upper", "valueDecimal": fhir_dec(s.upper)},
        ]}));
    }
    for f in files {
        p.push(json!({"name": "file", "valueString": f}));
    }
    json!({
        "resourceType": "Parameters",
        "parameter": p,
    })
}

/// Every output file: the CSVs, the SVG pictures, and the `Parameters` resource
/// ([`PARAMETERS_FILE`]) last.
pub fn files(d: &Datasets, a: &Analysis) -> Vec<File> {
    let csv = |name: &str, content: String| File {
        name: name.into(),
        media_type: "text/csv",
        content,
    };
    let mut out = vec![];
    for e in Endpoint::ALL {
        let rows: Vec<&Row> = d.rows.iter().filter(|r| r.endpoint == e).collect();
        out.push(csv(&format!("{}.csv", e.code()), endpoint_csv(e, &rows)));
    }
    out.push(csv(
        "complications.csv",
        complications_csv(&d.complications),
    ));
    out.push(csv("safety.csv", safety_csv(a)));
    out.push(csv("km.csv", km_csv(a)));
    out.push(csv("km-summary.csv", summary_csv(a)));
    out.push(csv("ignored.csv", ignored_csv(d)));
    for e in &a.estimates {
        let title = format!("{}: {}", e.endpoint.title(), e.group.title());
        out.push(File {
            name: format!("km-{}-{}.svg", e.endpoint.code(), file_safe(&e.group.key())),
            media_type: "image/svg+xml",
            content: super::svg::render(&e.curve, &title, e.endpoint.y_label()),
        });
    }
    let names: Vec<String> = out.iter().map(|f| f.name.clone()).collect();
    let params = parameters(d, a, &names);
    out.push(File {
        name: PARAMETERS_FILE.into(),
        media_type: "application/fhir+json",
        content: params.to_string(),
    });
    out
}

/// A file-name-safe form of a group key (site ids are FHIR ids: letters, digits, `-`, `.`).
fn file_safe(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
