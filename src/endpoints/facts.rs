//! What the endpoints need from each study resource, read from the `model` tree: a compact
//! record per resource (dates as day numbers, references as ids), and an issue for every
//! resource that is left out and why. Rules: `profiles/ENDPOINTS.md`.

use crate::model::{Element, Value};

/// The study's code systems and extensions the endpoints read.
pub mod url {
    /// Study observation codes (recurrence, follow-up).
    pub const OBSERVATION_CODE: &str = "https://a-imagio.eu/fhir/CodeSystem/observation-code";
    /// Recurrence types.
    pub const RECURRENCE_TYPE: &str = "https://a-imagio.eu/fhir/CodeSystem/recurrence-type";
    /// Follow-up status.
    pub const FOLLOW_UP_STATUS: &str = "https://a-imagio.eu/fhir/CodeSystem/follow-up-status";
    /// Follow-up method.
    pub const FOLLOW_UP_METHOD: &str = "https://a-imagio.eu/fhir/CodeSystem/follow-up-method";
    /// Tumour types.
    pub const TUMOUR_TYPE: &str = "https://a-imagio.eu/fhir/CodeSystem/tumour-type";
    /// The targeted-lesion extension of an ablation.
    pub const TARGETED_LESION: &str =
        "https://a-imagio.eu/fhir/StructureDefinition/targeted-lesion";
    /// The enrolling-site extension of an enrolment.
    pub const ENROLLING_SITE: &str = "https://a-imagio.eu/fhir/StructureDefinition/enrolling-site";
    /// The CTCAE grade extension (AE Clinical Research backport).
    pub const AE_GRADE: &str =
        "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade";
    /// The CTCAE version extension.
    pub const CTCAE_VERSION: &str = "https://a-imagio.eu/fhir/StructureDefinition/ctcae-version";
    /// NCI Thesaurus (grade codes).
    pub const NCIT: &str = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl";
    /// AE causality assessment codes.
    pub const CAUSALITY: &str =
        "http://terminology.hl7.org/CodeSystem/adverse-event-causality-assess";
    /// AE seriousness codes.
    pub const SERIOUSNESS: &str = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness";
}

/// A calendar day: days since 1970-01-01.
pub type Day = i32;

/// The day of a FHIR `date`/`dateTime` text: its calendar date as written (the site's local
/// date; the time and offset are ignored). `None` unless it has a full date (`YYYY-MM-DD`)
/// that exists.
pub fn day(text: &str) -> Option<Day> {
    let b = text.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' || (b.len() > 10 && b[10] != b'T') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i32> {
        let s = text.get(r)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in[(m - 1) as usize] {
        return None;
    }
    let days = crate::store::time::days_from_civil(i64::from(y), i64::from(m), i64::from(d));
    Day::try_from(days).ok()
}

/// The `YYYY-MM-DD` text of a day.
pub fn day_text(day: Day) -> String {
    let (y, m, d) = crate::store::time::civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The subject's death as recorded on the Patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Not recorded as dead.
    Alive,
    /// Died on this day.
    On(Day),
    /// Recorded as dead (`deceasedBoolean`, or a date without a day) with no usable date.
    DateUnknown,
}

/// A study subject (Patient).
#[derive(Debug, Clone)]
pub struct Subject {
    /// Logical id.
    pub id: String,
    /// `managingOrganization` (an Organization id).
    pub site: Option<String>,
    /// Death.
    pub death: Death,
}

/// A completed thermal ablation (Procedure).
#[derive(Debug, Clone)]
pub struct Ablation {
    /// Logical id.
    pub id: String,
    /// The subject's id.
    pub patient: String,
    /// The day it was performed.
    pub date: Day,
    /// Targeted lesions (BodyStructure ids).
    pub lesions: Vec<String>,
    /// Diagnoses treated (Condition ids), in order.
    pub diagnoses: Vec<String>,
    /// Performing site (Organization id).
    pub site: Option<String>,
}

/// A liver tumour diagnosis (Condition).
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// Logical id.
    pub id: String,
    /// The subject's id.
    pub patient: String,
    /// Tumour type code (`hcc`, `crlm`, `other-metastasis`).
    pub tumour: String,
    /// Diagnosis day, when given.
    pub onset: Option<Day>,
}

/// The kind of a recurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecurrenceKind {
    /// Local tumour progression (at a lesion).
    Ltp,
    /// Intrahepatic distant recurrence.
    Intrahepatic,
    /// Extrahepatic recurrence.
    Extrahepatic,
}

/// A recurrence event (Observation).
#[derive(Debug, Clone)]
pub struct Recurrence {
    /// Logical id.
    pub id: String,
    /// The subject's id.
    pub patient: String,
    /// Detection day.
    pub date: Day,
    /// Its kind.
    pub kind: RecurrenceKind,
    /// Lesions concerned (`focus`).
    pub lesions: Vec<String>,
}

/// A follow-up assessment (Observation).
#[derive(Debug, Clone)]
pub struct FollowUp {
    /// Logical id.
    pub id: String,
    /// The subject's id.
    pub patient: String,
    /// Day of the imaging or contact.
    pub date: Day,
    /// Whether the method was imaging.
    pub imaging: bool,
}

/// A complication (AdverseEvent).
#[derive(Debug, Clone)]
pub struct Complication {
    /// Logical id.
    pub id: String,
    /// The subject's id.
    pub patient: String,
    /// Day of the complication.
    pub date: Day,
    /// CTCAE grade 1-5.
    pub grade: u8,
    /// CTCAE version that graded it (`4.03`, `5.0`, `6.0`, or `unknown`).
    pub version: String,
    /// Related to the ablation (see ENDPOINTS.md: certain, probable, possible,
    /// conditional, unassessable, or no assessment; not `Unlikely`).
    pub related: bool,
    /// Whether the relatedness was missing (counted as related).
    pub relatedness_missing: bool,
    /// Seriousness `Serious`.
    pub serious: bool,
    /// The suspected ablation (Procedure id).
    pub ablation: Option<String>,
}

/// An enrolment (ResearchSubject): the enrolling site of a subject.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The subject's id.
    pub patient: String,
    /// Enrolling site (Organization id).
    pub site: Option<String>,
}

/// A resource left out of the endpoints, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// `Type/id`.
    pub resource: String,
    /// Why.
    pub reason: String,
}

/// Everything read from the resources, before any endpoint rule.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// Patients.
    pub subjects: Vec<Subject>,
    /// Completed ablations.
    pub ablations: Vec<Ablation>,
    /// Diagnoses.
    pub diagnoses: Vec<Diagnosis>,
    /// Recurrences.
    pub recurrences: Vec<Recurrence>,
    /// Follow-up assessments.
    pub follow_ups: Vec<FollowUp>,
    /// Complications.
    pub complications: Vec<Complication>,
    /// Enrolments.
    pub enrolments: Vec<Enrolment>,
    /// Resources left out, with reasons.
    pub ignored: Vec<Ignored>,
    /// Resources read.
    pub resources: usize,
}

// ---- small readers over the model tree --------------------------------------------------

/// The child elements of `e` named `name`.
fn children<'a>(e: &'a Element, name: &str) -> impl Iterator<Item = &'a Element> + 'a {
    e.values(name).iter().filter_map(Value::as_element)
}

/// The first child element named `name`.
fn child<'a>(e: &'a Element, name: &str) -> Option<&'a Element> {
    children(e, name).next()
}

/// The codes of a CodeableConcept's codings in `system`.
fn codes<'a>(cc: &'a Element, system: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    children(cc, "coding")
        .filter(move |c| c.str("system") == Some(system))
        .filter_map(|c| c.str("code"))
}

/// The first code in `system` of the CodeableConcept child `name`.
fn code_of<'a>(e: &'a Element, name: &str, system: &'a str) -> Option<&'a str> {
    child(e, name).and_then(|cc| codes(cc, system).next())
}

/// The id a reference points at, when it is to `target` type (`Type/id`, or an absolute
/// URL ending in `/Type/id`; a version suffix `/_history/n` is dropped).
pub fn ref_id(reference: &str, target: &str) -> Option<String> {
    let r = reference
        .split_once("/_history/")
        .map_or(reference, |(a, _)| a);
    let mut parts = r.rsplit('/');
    let id = parts.next()?;
    let ty = parts.next()?;
    (ty == target && !id.is_empty()).then(|| id.to_string())
}

/// The id of the Reference child `name` pointing at `target`.
fn ref_child(e: &Element, name: &str, target: &str) -> Option<String> {
    child(e, name)
        .and_then(|r| r.str("reference"))
        .and_then(|r| ref_id(r, target))
}

/// The extensions of `e` with `url`.
fn extensions<'a>(e: &'a Element, url: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
    children(e, "extension").filter(move |x| x.str("url") == Some(url))
}

/// The text of a primitive `value[x]` of an element (any type).
fn value_text(e: &Element) -> Option<&str> {
    e.str("value")
}

/// The complex `value[x]` of an element.
fn value_element(e: &Element) -> Option<&Element> {
    child(e, "value")
}

/// The text of a primitive `name` whose chosen type is `ty` (`deceasedDateTime`).
fn choice_text<'a>(e: &'a Element, name: &str, ty: &str) -> Option<&'a str> {
    let prop = e.get(name)?;
    if e.element_type(prop).code.as_ref() != ty {
        return None;
    }
    prop.values
        .first()
        .and_then(Value::as_primitive)
        .and_then(crate::model::Primitive::as_str)
}

/// Observation statuses whose results count.
fn counts(status: Option<&str>) -> bool {
    matches!(status, Some("final" | "amended" | "corrected"))
}

impl Facts {
    fn ignore(&mut self, ty: &str, id: &str, reason: impl Into<String>) {
        self.ignored.push(Ignored {
            resource: format!("{ty}/{id}"),
            reason: reason.into(),
        });
    }

    /// Reads one resource (a Bundle: the resources of its entries). Types the endpoints do
    /// not use, and Observations that are neither recurrences nor follow-ups, are passed
    /// over without an issue.
    pub fn add(&mut self, r: &Element) {
        self.resources += 1;
        let ty = r.type_name();
        let id = r.id().unwrap_or("").to_string();
        match ty {
            "Patient" => self.add_patient(r, id),
            "Procedure" => self.add_ablation(r, id),
            "Condition" => self.add_diagnosis(r, id),
            "Observation" => self.add_observation(r, id),
            "AdverseEvent" => self.add_complication(r, id),
            "Bundle" => {
                // A journey Bundle: its entries' resources, not the Bundle, are read.
                self.resources -= 1;
                for e in children(r, "entry") {
                    if let Some(res) = child(e, "resource") {
                        self.add(res);
                    }
                }
            }
            "ResearchSubject" => {
                if let Some(patient) = ref_child(r, "individual", "Patient") {
                    let site = extensions(r, url::ENROLLING_SITE)
                        .filter_map(value_element)
                        .filter_map(|v| v.str("reference"))
                        .find_map(|v| ref_id(v, "Organization"));
                    self.enrolments.push(Enrolment { patient, site });
                }
            }
            _ => {}
        }
    }

    fn add_patient(&mut self, r: &Element, id: String) {
        let death = if let Some(t) = choice_text(r, "deceased", "dateTime") {
            day(t).map_or(Death::DateUnknown, Death::On)
        } else if choice_text(r, "deceased", "boolean") == Some("true") {
            Death::DateUnknown
        } else {
            Death::Alive
        };
        let site = ref_child(r, "managingOrganization", "Organization");
        self.subjects.push(Subject { id, site, death });
    }

    fn add_ablation(&mut self, r: &Element, id: String) {
        let lesions: Vec<String> = extensions(r, url::TARGETED_LESION)
            .filter_map(value_element)
            .filter_map(|v| v.str("reference"))
            .filter_map(|v| ref_id(v, "BodyStructure"))
            .collect();
        if lesions.is_empty()
            && code_of(
                r,
                "code",
                "https://a-imagio.eu/fhir/CodeSystem/ablation-modality",
            )
            .is_none()
        {
            // Not a study ablation (another kind of Procedure).
            return;
        }
        let status = r.str("status").unwrap_or("");
        if status != "completed" {
            return self.ignore(
                "Procedure",
                &id,
                format!("ablation status is {status:?}, not completed"),
            );
        }
        let Some(patient) = ref_child(r, "subject", "Patient") else {
            return self.ignore("Procedure", &id, "no subject reference to a Patient");
        };
        let Some(date) = choice_text(r, "performed", "dateTime").and_then(day) else {
            return self.ignore(
                "Procedure",
                &id,
                "no performed date with a day (performedDateTime YYYY-MM-DD...)",
            );
        };
        let diagnoses = children(r, "reasonReference")
            .filter_map(|x| x.str("reference"))
            .filter_map(|x| ref_id(x, "Condition"))
            .collect();
        let site = children(r, "performer").find_map(|p| ref_child(p, "actor", "Organization"));
        self.ablations.push(Ablation {
            id,
            patient,
            date,
            lesions,
            diagnoses,
            site,
        });
    }

    fn add_diagnosis(&mut self, r: &Element, id: String) {
        let Some(tumour) = code_of(r, "code", url::TUMOUR_TYPE) else {
            return;
        };
        let Some(patient) = ref_child(r, "subject", "Patient") else {
            return self.ignore("Condition", &id, "no subject reference to a Patient");
        };
        let onset = choice_text(r, "onset", "dateTime").and_then(day);
        self.diagnoses.push(Diagnosis {
            id,
            patient,
            tumour: tumour.to_string(),
            onset,
        });
    }

    fn add_observation(&mut self, r: &Element, id: String) {
        let kind = code_of(r, "code", url::OBSERVATION_CODE);
        if !matches!(kind, Some("recurrence" | "follow-up")) {
            return;
        }
        let what = if kind == Some("recurrence") {
            "recurrence"
        } else {
            "follow-up"
        };
        let status = r.str("status");
        if !counts(status) {
            return self.ignore(
                "Observation",
                &id,
                format!(
                    "{what} with status {:?}, not final, amended or corrected",
                    status.unwrap_or("")
                ),
            );
        }
        let Some(patient) = ref_child(r, "subject", "Patient") else {
            return self.ignore(
                "Observation",
                &id,
                format!("{what} without a subject reference to a Patient"),
            );
        };
        let Some(date) = choice_text(r, "effective", "dateTime").and_then(day) else {
            return self.ignore(
                "Observation",
                &id,
                format!("{what} without an effective date with a day"),
            );
        };
        let value = value_element(r);
        if kind == Some("recurrence") {
            let kind = match value.and_then(|v| codes(v, url::RECURRENCE_TYPE).next()) {
                Some("ltp") => RecurrenceKind::Ltp,
                Some("intrahepatic-distant") => RecurrenceKind::Intrahepatic,
                Some("extrahepatic") => RecurrenceKind::Extrahepatic,
                _ => {
                    return self.ignore(
                        "Observation",
                        &id,
                        "recurrence without a recurrence type code",
                    )
                }
            };
            let lesions: Vec<String> = children(r, "focus")
                .filter_map(|f| f.str("reference"))
                .filter_map(|f| ref_id(f, "BodyStructure"))
                .collect();
            if kind == RecurrenceKind::Ltp && lesions.is_empty() {
                return self.ignore(
                    "Observation",
                    &id,
                    "local tumour progression without a lesion (focus)",
                );
            }
            self.recurrences.push(Recurrence {
                id,
                patient,
                date,
                kind,
                lesions,
            });
        } else {
            let imaging = code_of(r, "method", url::FOLLOW_UP_METHOD) == Some("imaging");
            if value
                .and_then(|v| codes(v, url::FOLLOW_UP_STATUS).next())
                .is_none()
            {
                return self.ignore(
                    "Observation",
                    &id,
                    "follow-up without a follow-up status code",
                );
            }
            self.follow_ups.push(FollowUp {
                id,
                patient,
                date,
                imaging,
            });
        }
    }

    fn add_complication(&mut self, r: &Element, id: String) {
        if r.str("actuality") == Some("potential") {
            return self.ignore(
                "AdverseEvent",
                &id,
                "a potential event (actuality potential)",
            );
        }
        let Some(patient) = ref_child(r, "subject", "Patient") else {
            return self.ignore("AdverseEvent", &id, "no subject reference to a Patient");
        };
        let Some(date) = r.str("date").and_then(day) else {
            return self.ignore("AdverseEvent", &id, "no date with a day");
        };
        let grade = extensions(r, url::AE_GRADE)
            .filter_map(value_element)
            .find_map(|v| codes(v, url::NCIT).next())
            .and_then(|c| match c {
                "C41338" => Some(1),
                "C41339" => Some(2),
                "C41340" => Some(3),
                "C41337" => Some(4),
                "C48275" => Some(5),
                _ => None,
            });
        let Some(grade) = grade else {
            return self.ignore(
                "AdverseEvent",
                &id,
                "no CTCAE grade (ae-grade with an NCIt grade code)",
            );
        };
        let version = extensions(r, url::CTCAE_VERSION)
            .find_map(value_text)
            .unwrap_or("unknown")
            .to_string();
        let suspect = child(r, "suspectEntity");
        let ablation = suspect.and_then(|s| ref_child(s, "instance", "Procedure"));
        let assessments: Vec<&str> = children(r, "suspectEntity")
            .flat_map(|s| children(s, "causality"))
            .filter_map(|c| code_of(c, "assessment", url::CAUSALITY))
            .collect();
        let relatedness_missing = assessments.is_empty();
        let related = relatedness_missing || assessments.iter().any(|a| *a != "Unlikely");
        let serious = code_of(r, "seriousness", url::SERIOUSNESS) == Some("Serious");
        self.complications.push(Complication {
            id,
            patient,
            date,
            grade,
            version,
            related,
            relatedness_missing,
            serious,
            ablation,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip() {
        assert_eq!(day("1970-01-01"), Some(0));
        assert_eq!(day("1970-01-02T23:59:00+14:00"), Some(1));
        assert_eq!(day("2024-03-01"), Some(day("2024-02-29").unwrap_or(0) + 1));
        assert_eq!(day("2023-02-29"), None);
        assert_eq!(day("2023-02"), None);
        assert_eq!(day("2023"), None);
        for d in [-700_000, -1, 0, 59, 19_000, 20_000, 800_000] {
            assert_eq!(day(&day_text(d)), Some(d), "{d}");
        }
        assert_eq!(day_text(19_723), "2024-01-01");
    }

    #[test]
    fn references() {
        assert_eq!(ref_id("Patient/a", "Patient").as_deref(), Some("a"));
        assert_eq!(
            ref_id("https://x/fhir/Patient/a/_history/2", "Patient").as_deref(),
            Some("a")
        );
        assert_eq!(ref_id("Group/a", "Patient"), None);
        assert_eq!(ref_id("a", "Patient"), None);
    }
}
