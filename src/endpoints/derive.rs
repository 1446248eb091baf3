//! The endpoint rules of `profiles/ENDPOINTS.md`: from [`Facts`] to one row per treated
//! lesion (local tumour progression) and per patient (time to recurrence, disease-free and
//! overall survival), one row per complication (safety), each with the reason when it is
//! excluded.

use super::facts::{Ablation, Day, Death, Facts, Ignored, RecurrenceKind};
use std::collections::{BTreeMap, HashMap};

/// The end of the study period: four years (4 x 365.25 days) after the time origin; later
/// follow-up is censored here.
pub const HORIZON_DAYS: i32 = 1461;

/// The time-to-event endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// Local tumour progression, per treated lesion.
    Ltp,
    /// Time to recurrence (any), per patient.
    Ttr,
    /// Disease-free survival (recurrence or death), per patient.
    Dfs,
    /// Overall survival (death), per patient.
    Os,
}

impl Endpoint {
    /// All of them, in output order.
    pub const ALL: [Endpoint; 4] = [Endpoint::Ltp, Endpoint::Ttr, Endpoint::Dfs, Endpoint::Os];

    /// The short code used in file names and outputs.
    pub fn code(self) -> &'static str {
        match self {
            Endpoint::Ltp => "ltp",
            Endpoint::Ttr => "ttr",
            Endpoint::Dfs => "dfs",
            Endpoint::Os => "os",
        }
    }

    /// The title of the endpoint.
    pub fn title(self) -> &'static str {
        match self {
            Endpoint::Ltp => "Local tumour progression (per treated lesion)",
            Endpoint::Ttr => "Time to recurrence (any recurrence)",
            Endpoint::Dfs => "Disease-free survival (recurrence or death)",
            Endpoint::Os => "Overall survival (death from any cause)",
        }
    }

    /// What the curve estimates ("free of ..." probability).
    pub fn y_label(self) -> &'static str {
        match self {
            Endpoint::Ltp => "Free of local tumour progression",
            Endpoint::Ttr => "Free of recurrence",
            Endpoint::Dfs => "Alive and free of recurrence",
            Endpoint::Os => "Alive",
        }
    }
}

/// One unit of a time-to-event dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The unit: the lesion id (LTP) or the patient id.
    pub unit: String,
    /// The patient id.
    pub patient: String,
    /// The site (Organization id, `unknown` when none is recorded).
    pub site: String,
    /// The tumour type code (`unknown` when none is recorded).
    pub tumour: String,
    /// The ablation that is the time origin (Procedure id).
    pub ablation: Option<String>,
    /// The time origin.
    pub origin: Option<Day>,
    /// The day follow-up ended (event or censoring).
    pub end: Option<Day>,
    /// Days from the origin to the end.
    pub days: Option<i32>,
    /// Whether the end is the event.
    pub event: bool,
    /// What ended follow-up: `ltp`, `recurrence`, `death`, `last-imaging`, `last-contact`,
    /// `horizon`; empty for an excluded row.
    pub end_reason: &'static str,
    /// The resource that gave the end date (`Observation/x`, `Patient/x`, ...).
    pub end_source: String,
    /// Why the row is excluded from the analysis; `None` for an analysed row.
    pub excluded: Option<String>,
}

/// One complication, as the safety endpoint counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComplicationRow {
    /// The patient id.
    pub patient: String,
    /// The patient's site.
    pub site: String,
    /// The patient's tumour type.
    pub tumour: String,
    /// The AdverseEvent id.
    pub complication: String,
    /// The suspected ablation.
    pub ablation: Option<String>,
    /// Days from that ablation.
    pub days: Option<i32>,
    /// CTCAE grade.
    pub grade: u8,
    /// CTCAE version.
    pub version: String,
    /// Treatment-related.
    pub related: bool,
    /// Serious.
    pub serious: bool,
    /// Why it is not counted; `None` when it is.
    pub excluded: Option<String>,
}

/// A treated patient: the safety denominators and the groups of the estimates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Treated {
    /// The patient id.
    pub patient: String,
    /// The site.
    pub site: String,
    /// The tumour type.
    pub tumour: String,
}

/// The endpoint datasets.
#[derive(Debug, Clone, Default)]
pub struct Datasets {
    /// Time-to-event rows of every endpoint (LTP rows, then TTR, DFS, OS), by unit.
    pub rows: Vec<Row>,
    /// Complications.
    pub complications: Vec<ComplicationRow>,
    /// Patients with at least one completed ablation.
    pub treated: Vec<Treated>,
    /// Resources left out, with reasons.
    pub ignored: Vec<Ignored>,
    /// Resources read.
    pub resources: usize,
}

/// Closes follow-up at `end` (days from `origin`), censoring at the horizon.
fn close(origin: Day, end: Day, event: bool, reason: &'static str, source: String) -> Closed {
    let days = end - origin;
    if days > HORIZON_DAYS {
        Closed {
            end: origin + HORIZON_DAYS,
            days: HORIZON_DAYS,
            event: false,
            reason: "horizon",
            source: String::new(),
        }
    } else {
        Closed {
            end,
            days,
            event,
            reason,
            source,
        }
    }
}

struct Closed {
    end: Day,
    days: i32,
    event: bool,
    reason: &'static str,
    source: String,
}

/// The facts of one patient.
#[derive(Default)]
struct PatientFacts<'a> {
    subject: Option<&'a super::facts::Subject>,
    enrol_site: Option<&'a str>,
    ablations: Vec<&'a Ablation>,
    recurrences: Vec<&'a super::facts::Recurrence>,
    follow_ups: Vec<&'a super::facts::FollowUp>,
    complications: Vec<&'a super::facts::Complication>,
}

/// Applies the rules to `facts`.
pub fn derive(facts: &Facts) -> Datasets {
    let mut patients: BTreeMap<&str, PatientFacts<'_>> = BTreeMap::new();
    for s in &facts.subjects {
        patients.entry(&s.id).or_default().subject = Some(s);
    }
    for e in &facts.enrolments {
        let p = patients.entry(&e.patient).or_default();
        if p.enrol_site.is_none() {
            p.enrol_site = e.site.as_deref();
        }
    }
    for a in &facts.ablations {
        patients.entry(&a.patient).or_default().ablations.push(a);
    }
    for r in &facts.recurrences {
        patients.entry(&r.patient).or_default().recurrences.push(r);
    }
    for f in &facts.follow_ups {
        patients.entry(&f.patient).or_default().follow_ups.push(f);
    }
    for c in &facts.complications {
        patients
            .entry(&c.patient)
            .or_default()
            .complications
            .push(c);
    }
    let diagnoses: HashMap<&str, &super::facts::Diagnosis> =
        facts.diagnoses.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut by_patient_dx: HashMap<&str, Vec<&super::facts::Diagnosis>> = HashMap::new();
    for d in &facts.diagnoses {
        by_patient_dx.entry(&d.patient).or_default().push(d);
    }
    let mut out = Datasets {
        ignored: facts.ignored.clone(),
        resources: facts.resources,
        ..Datasets::default()
    };
    let mut per_endpoint: BTreeMap<Endpoint, Vec<Row>> = BTreeMap::new();
    for (id, p) in &mut patients {
        p.ablations
            .sort_by(|a, b| (a.date, &a.id).cmp(&(b.date, &b.id)));
        let tumour_of = |a: &Ablation| -> Option<String> {
            a.diagnoses
                .iter()
                .find_map(|d| diagnoses.get(d.as_str()).filter(|d| d.patient == *id))
                .map(|d| d.tumour.clone())
        };
        let first = p.ablations.first().copied();
        let tumour = first
            .and_then(tumour_of)
            .or_else(|| {
                let mut dx = by_patient_dx.get(id).cloned().unwrap_or_default();
                dx.sort_by(|a, b| (a.onset, &a.id).cmp(&(b.onset, &b.id)));
                dx.first().map(|d| d.tumour.clone())
            })
            .unwrap_or_else(|| "unknown".into());
        let site = p
            .enrol_site
            .map(str::to_string)
            .or_else(|| p.subject.and_then(|s| s.site.clone()))
            .or_else(|| first.and_then(|a| a.site.clone()))
            .unwrap_or_else(|| "unknown".into());
        let base = Row {
            endpoint: Endpoint::Os,
            unit: (*id).to_string(),
            patient: (*id).to_string(),
            site: site.clone(),
            tumour: tumour.clone(),
            ablation: first.map(|a| a.id.clone()),
            origin: first.map(|a| a.date),
            end: None,
            days: None,
            event: false,
            end_reason: "",
            end_source: String::new(),
            excluded: None,
        };
        let Some(first) = first else {
            for e in [Endpoint::Ttr, Endpoint::Dfs, Endpoint::Os] {
                per_endpoint.entry(e).or_default().push(Row {
                    endpoint: e,
                    excluded: Some("no completed ablation".into()),
                    ..base.clone()
                });
            }
            for c in &p.complications {
                out.complications.push(ComplicationRow {
                    patient: (*id).to_string(),
                    site: site.clone(),
                    tumour: tumour.clone(),
                    complication: c.id.clone(),
                    ablation: c.ablation.clone(),
                    days: None,
                    grade: c.grade,
                    version: c.version.clone(),
                    related: c.related,
                    serious: c.serious,
                    excluded: Some("the patient has no completed ablation".into()),
                });
            }
            continue;
        };
        out.treated.push(Treated {
            patient: (*id).to_string(),
            site: site.clone(),
            tumour: tumour.clone(),
        });
        let origin = first.date;
        let death = p.subject.map(|s| s.death);
        let death_day = match death {
            Some(Death::On(d)) => Some(d),
            _ => None,
        };
        let after_death = |d: Day| death_day.is_some_and(|dd| d > dd);
        // Records dated after death are listed and not used as follow-up.
        for f in &p.follow_ups {
            if after_death(f.date) {
                out.ignored.push(Ignored {
                    resource: format!("Observation/{}", f.id),
                    reason: "follow-up dated after the date of death".into(),
                });
            }
        }
        let imaging: Vec<(Day, String)> = p
            .follow_ups
            .iter()
            .filter(|f| f.imaging && !after_death(f.date))
            .map(|f| (f.date, format!("Observation/{}", f.id)))
            .chain(
                p.recurrences
                    .iter()
                    .filter(|r| r.kind != RecurrenceKind::Extrahepatic && !after_death(r.date))
                    .map(|r| (r.date, format!("Observation/{}", r.id))),
            )
            .collect();
        let last_imaging_after = |from: Day| {
            imaging
                .iter()
                .filter(|(d, _)| *d > from)
                .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)))
                .cloned()
        };
        let death_before_origin = death_day.is_some_and(|d| d < origin);
        let death_source = format!("Patient/{id}");

        // --- LTP, per treated lesion -------------------------------------------------
        let mut lesion_origin: BTreeMap<&str, &Ablation> = BTreeMap::new();
        for a in &p.ablations {
            for l in &a.lesions {
                lesion_origin.entry(l).or_insert(a);
            }
        }
        for r in &p.recurrences {
            if r.kind == RecurrenceKind::Ltp {
                for l in &r.lesions {
                    if !lesion_origin.contains_key(l.as_str()) {
                        out.ignored.push(Ignored {
                            resource: format!("Observation/{}", r.id),
                            reason: format!(
                                "local tumour progression of BodyStructure/{l}, which no completed ablation of the patient targets"
                            ),
                        });
                    }
                }
            }
        }
        for (lesion, abl) in &lesion_origin {
            let lo = abl.date;
            let mut row = Row {
                endpoint: Endpoint::Ltp,
                unit: (*lesion).to_string(),
                tumour: tumour_of(abl).unwrap_or_else(|| tumour.clone()),
                ablation: Some(abl.id.clone()),
                origin: Some(lo),
                ..base.clone()
            };
            let ltps: Vec<_> = p
                .recurrences
                .iter()
                .filter(|r| r.kind == RecurrenceKind::Ltp && r.lesions.iter().any(|l| l == lesion))
                .collect();
            let early = ltps.iter().find(|r| r.date <= lo);
            let first_ltp = ltps
                .iter()
                .filter(|r| r.date > lo)
                .min_by(|a, b| (a.date, &a.id).cmp(&(b.date, &b.id)));
            row.excluded = if death_day.is_some_and(|d| d < lo) {
                Some("date of death before the ablation".into())
            } else if let Some(r) = early {
                Some(format!(
                    "local tumour progression Observation/{} dated on or before the ablation",
                    r.id
                ))
            } else {
                first_ltp.filter(|r| after_death(r.date)).map(|r| {
                    format!(
                        "local tumour progression Observation/{} dated after the date of death",
                        r.id
                    )
                })
            };
            if row.excluded.is_none() {
                let closed = match (first_ltp, last_imaging_after(lo)) {
                    (Some(r), _) => Some(close(
                        lo,
                        r.date,
                        true,
                        "ltp",
                        format!("Observation/{}", r.id),
                    )),
                    (None, Some((d, src))) => Some(close(lo, d, false, "last-imaging", src)),
                    (None, None) => None,
                };
                match closed {
                    Some(c) => set(&mut row, c),
                    None => row.excluded = Some("no imaging follow-up after the ablation".into()),
                }
            }
            per_endpoint.entry(Endpoint::Ltp).or_default().push(row);
        }

        // --- TTR, DFS, OS, per patient -----------------------------------------------
        let early_rec = p.recurrences.iter().find(|r| r.date <= origin);
        let first_rec = p
            .recurrences
            .iter()
            .filter(|r| r.date > origin)
            .min_by(|a, b| (a.date, &a.id).cmp(&(b.date, &b.id)));
        let rec_after_death = first_rec.filter(|r| after_death(r.date));
        let common = if death_before_origin {
            Some("date of death before the first ablation".to_string())
        } else {
            None
        };
        let recurrence_problem = common.clone().or_else(|| {
            early_rec
                .map(|r| {
                    format!(
                        "recurrence Observation/{} dated on or before the first ablation",
                        r.id
                    )
                })
                .or_else(|| {
                    rec_after_death.map(|r| {
                        format!(
                            "recurrence Observation/{} dated after the date of death",
                            r.id
                        )
                    })
                })
        });
        let last_imaging = last_imaging_after(origin);

        // TTR
        let mut ttr = Row {
            endpoint: Endpoint::Ttr,
            ..base.clone()
        };
        ttr.excluded = recurrence_problem.clone();
        if ttr.excluded.is_none() {
            match (first_rec, &last_imaging) {
                (Some(r), _) => set(
                    &mut ttr,
                    close(
                        origin,
                        r.date,
                        true,
                        "recurrence",
                        format!("Observation/{}", r.id),
                    ),
                ),
                (None, Some((d, src))) => set(
                    &mut ttr,
                    close(origin, *d, false, "last-imaging", src.clone()),
                ),
                (None, None) => {
                    ttr.excluded = Some("no imaging follow-up after the first ablation".into())
                }
            }
        }
        per_endpoint.entry(Endpoint::Ttr).or_default().push(ttr);

        // DFS
        let mut dfs = Row {
            endpoint: Endpoint::Dfs,
            ..base.clone()
        };
        dfs.excluded = recurrence_problem.or_else(|| {
            p.subject
                .is_none()
                .then(|| "no Patient resource: vital status unknown".to_string())
        });
        if dfs.excluded.is_none() {
            match (first_rec, death, &last_imaging) {
                (Some(r), _, _) => set(
                    &mut dfs,
                    close(
                        origin,
                        r.date,
                        true,
                        "recurrence",
                        format!("Observation/{}", r.id),
                    ),
                ),
                (None, Some(Death::On(d)), _) => set(
                    &mut dfs,
                    close(origin, d, true, "death", death_source.clone()),
                ),
                (None, Some(Death::DateUnknown), _) => {
                    dfs.excluded = Some("dead, date of death unknown".into())
                }
                (None, _, Some((d, src))) => set(
                    &mut dfs,
                    close(origin, *d, false, "last-imaging", src.clone()),
                ),
                (None, _, None) => {
                    dfs.excluded = Some("no imaging follow-up after the first ablation".into())
                }
            }
        }
        per_endpoint.entry(Endpoint::Dfs).or_default().push(dfs);

        // OS
        let mut os = Row {
            endpoint: Endpoint::Os,
            ..base.clone()
        };
        os.excluded = common.or_else(|| {
            p.subject
                .is_none()
                .then(|| "no Patient resource: vital status unknown".to_string())
        });
        if os.excluded.is_none() {
            match death {
                Some(Death::On(d)) => set(
                    &mut os,
                    close(origin, d, true, "death", death_source.clone()),
                ),
                Some(Death::DateUnknown) => {
                    os.excluded = Some("dead, date of death unknown".into())
                }
                _ => {
                    let contacts = p
                        .follow_ups
                        .iter()
                        .map(|f| (f.date, format!("Observation/{}", f.id)))
                        .chain(
                            p.recurrences
                                .iter()
                                .map(|r| (r.date, format!("Observation/{}", r.id))),
                        )
                        .chain(
                            p.complications
                                .iter()
                                .map(|c| (c.date, format!("AdverseEvent/{}", c.id))),
                        )
                        .chain(
                            p.ablations
                                .iter()
                                .map(|a| (a.date, format!("Procedure/{}", a.id))),
                        )
                        .filter(|(d, _)| *d > origin)
                        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
                    match contacts {
                        Some((d, src)) => {
                            set(&mut os, close(origin, d, false, "last-contact", src))
                        }
                        None => os.excluded = Some("no contact after the first ablation".into()),
                    }
                }
            }
        }
        per_endpoint.entry(Endpoint::Os).or_default().push(os);

        // --- safety -------------------------------------------------------------------
        let by_id: HashMap<&str, &Ablation> =
            p.ablations.iter().map(|a| (a.id.as_str(), *a)).collect();
        for c in &p.complications {
            let abl = c.ablation.as_deref().and_then(|a| by_id.get(a));
            let days = abl.map(|a| c.date - a.date);
            let excluded = match (c.ablation.as_deref(), abl, days) {
                (None, _, _) => Some("no suspected ablation (suspectEntity.instance)".to_string()),
                (Some(a), None, _) => Some(format!(
                    "suspected ablation Procedure/{a} is not a completed ablation of the patient"
                )),
                (_, _, Some(d)) if d < 0 => Some("dated before its ablation".to_string()),
                _ => None,
            };
            out.complications.push(ComplicationRow {
                patient: (*id).to_string(),
                site: site.clone(),
                tumour: tumour.clone(),
                complication: c.id.clone(),
                ablation: c.ablation.clone(),
                days,
                grade: c.grade,
                version: c.version.clone(),
                related: c.related,
                serious: c.serious,
                excluded,
            });
            if c.relatedness_missing && c.grade >= 3 {
                out.ignored.push(Ignored {
                    resource: format!("AdverseEvent/{}", c.id),
                    reason:
                        "grade 3 or higher without a relatedness assessment: counted as related"
                            .into(),
                });
            }
        }
    }
    for rows in per_endpoint.into_values() {
        out.rows.extend(rows);
    }
    out
}

fn set(row: &mut Row, c: Closed) {
    row.end = Some(c.end);
    row.days = Some(c.days);
    row.event = c.event;
    row.end_reason = c.reason;
    row.end_source = c.source;
}
