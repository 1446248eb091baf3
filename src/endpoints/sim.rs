//! Simulated patient journeys for the benchmark: a deterministic generator (a fixed-seed
//! xorshift generator, no clock or system randomness) of study-shaped resources as NDJSON
//! lines, the shapes of `profiles/examples/journeys/`: Patient, enrolment, diagnosis,
//! lesions, one ablation per lesion, complications, imaging follow-ups every 3 months in
//! the first year and every 6 months after, recurrences found at the next imaging, deaths,
//! losses to follow-up.

use super::facts::{day, day_text, Day};

/// A xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    fn below(&mut self, n: u32) -> u32 {
        (self.unit() * f64::from(n)) as u32
    }

    /// An exponential time (days) with a yearly rate.
    fn exp_days(&mut self, rate_per_year: f64) -> i32 {
        let u = self.unit().max(1e-12);
        let d = -u.ln() / rate_per_year * 365.25;
        if d > 1e6 {
            1_000_000
        } else {
            d as i32
        }
    }
}

const SITES: [&str; 6] = [
    "site-nl-01",
    "site-it-02",
    "site-de-03",
    "site-fr-04",
    "site-be-05",
    "site-es-06",
];

const P: &str = "https://a-imagio.eu/fhir";

/// The journeys of `patients` simulated patients, one resource per line.
pub fn journeys(patients: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed.max(1));
    let study_end = day("2026-06-30").unwrap_or(20_634);
    let first_day = day("2019-01-01").unwrap_or(17_897);
    let mut out = Vec::with_capacity(patients * 22);
    for n in 0..patients {
        let site = SITES[rng.below(SITES.len() as u32) as usize];
        let pid = format!("sim-{n:06}");
        let roll = rng.unit();
        let (tumour, icd) = if roll < 0.55 {
            ("hcc", "C22.0")
        } else if roll < 0.95 {
            ("crlm", "C78.7")
        } else {
            ("other-metastasis", "C78.7")
        };
        let dx = first_day + rng.below(2000) as i32;
        let abl = dx + 7 + rng.below(40) as i32;
        // Latent times from the ablation (days).
        let death_rate = if tumour == "hcc" { 0.12 } else { 0.18 };
        let death_t = rng.exp_days(death_rate);
        let loss_t = if rng.unit() < 0.1 {
            rng.below(1500) as i32 + 30
        } else {
            i32::MAX
        };
        let rec_t = rng.exp_days(0.35);
        let rec_kind = match rng.below(3) {
            0 => "intrahepatic-distant",
            1 => "extrahepatic",
            _ => "ltp",
        };
        let end_obs = (study_end - abl).min(loss_t).min(death_t);
        let deceased = death_t <= study_end - abl && death_t < loss_t;
        let lesions = 1 + (rng.below(10) / 6) as usize + usize::from(rng.below(10) == 0);
        // Patient and enrolment.
        let deceased_json = if deceased {
            format!(",\"deceasedDateTime\":\"{}\"", day_text(abl + death_t))
        } else {
            String::new()
        };
        out.push(format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"{pid}\",\"meta\":{{\"profile\":[\"{P}/StructureDefinition/imagio-subject\"]}},\"identifier\":[{{\"system\":\"{P}/sid/subject\",\"value\":\"AIM-{pid}\"}}],\"gender\":\"{}\",\"birthDate\":\"{}\"{deceased_json},\"managingOrganization\":{{\"reference\":\"Organization/{site}\"}}}}",
            if rng.below(2) == 0 { "female" } else { "male" },
            1930 + rng.below(50)
        ));
        out.push(format!(
            "{{\"resourceType\":\"ResearchSubject\",\"id\":\"{pid}-enrolment\",\"extension\":[{{\"url\":\"{P}/StructureDefinition/enrolling-site\",\"valueReference\":{{\"reference\":\"Organization/{site}\"}}}}],\"status\":\"on-study\",\"period\":{{\"start\":\"{}\"}},\"study\":{{\"reference\":\"ResearchStudy/a-imagio\"}},\"individual\":{{\"reference\":\"Patient/{pid}\"}}}}",
            day_text(dx + 2)
        ));
        out.push(format!(
            "{{\"resourceType\":\"Condition\",\"id\":\"{pid}-dx\",\"code\":{{\"coding\":[{{\"system\":\"{P}/CodeSystem/tumour-type\",\"code\":\"{tumour}\"}},{{\"system\":\"http://hl7.org/fhir/sid/icd-10\",\"code\":\"{icd}\"}}]}},\"subject\":{{\"reference\":\"Patient/{pid}\"}},\"onsetDateTime\":\"{}\"}}",
            day_text(dx)
        ));
        // Lesions and their ablations (one session).
        let mut ltp_lesion = None;
        for l in 1..=lesions {
            let lid = format!("{pid}-l{l}");
            out.push(format!(
                "{{\"resourceType\":\"BodyStructure\",\"id\":\"{lid}\",\"identifier\":[{{\"system\":\"{P}/sid/lesion\",\"value\":\"{lid}\"}}],\"location\":{{\"coding\":[{{\"system\":\"{P}/CodeSystem/couinaud-segment\",\"code\":\"V\"}}]}},\"patient\":{{\"reference\":\"Patient/{pid}\"}}}}"
            ));
            out.push(format!(
                "{{\"resourceType\":\"Procedure\",\"id\":\"{pid}-abl-l{l}\",\"extension\":[{{\"url\":\"{P}/StructureDefinition/targeted-lesion\",\"valueReference\":{{\"reference\":\"BodyStructure/{lid}\"}}}},{{\"url\":\"{P}/StructureDefinition/ablation-energy\",\"valueQuantity\":{{\"value\":{},\"unit\":\"kJ\",\"system\":\"http://unitsofmeasure.org\",\"code\":\"kJ\"}}}}],\"status\":\"completed\",\"code\":{{\"coding\":[{{\"system\":\"{P}/CodeSystem/ablation-modality\",\"code\":\"{}\"}}]}},\"subject\":{{\"reference\":\"Patient/{pid}\"}},\"performedDateTime\":\"{}T09:{:02}:00+01:00\",\"performer\":[{{\"actor\":{{\"reference\":\"Organization/{site}\"}}}}],\"reasonReference\":[{{\"reference\":\"Condition/{pid}-dx\"}}]}}",
                20 + rng.below(60),
                if rng.below(2) == 0 { "rfa" } else { "mwa" },
                day_text(abl),
                10 + l
            ));
            out.push(format!(
                "{{\"resourceType\":\"Observation\",\"id\":\"{pid}-margin-l{l}\",\"partOf\":[{{\"reference\":\"Procedure/{pid}-abl-l{l}\"}}],\"status\":\"final\",\"code\":{{\"coding\":[{{\"system\":\"{P}/CodeSystem/observation-code\",\"code\":\"ablation-margin\"}}]}},\"subject\":{{\"reference\":\"Patient/{pid}\"}},\"focus\":[{{\"reference\":\"BodyStructure/{lid}\"}}],\"effectiveDateTime\":\"{}\",\"valueQuantity\":{{\"value\":{},\"unit\":\"mm\",\"system\":\"http://unitsofmeasure.org\",\"code\":\"mm\"}}}}",
                day_text(abl),
                rng.below(10)
            ));
            if ltp_lesion.is_none() && rec_kind == "ltp" {
                ltp_lesion = Some(lid);
            }
        }
        // Complications: 15% have one; grades 1-5 weighted to the low ones.
        if rng.unit() < 0.15 {
            let g = [1, 1, 1, 2, 2, 3, 3, 4, 5][rng.below(9) as usize];
            let codes = ["C41338", "C41339", "C41340", "C41337", "C48275"];
            let version = ["4.03", "5.0", "5.0", "6.0"][rng.below(4) as usize];
            let when = abl + rng.below(120) as i32;
            let causality =
                ["Certain", "Probably-Likely", "Possible", "Unlikely"][rng.below(4) as usize];
            out.push(format!(
                "{{\"resourceType\":\"AdverseEvent\",\"id\":\"{pid}-ae-1\",\"extension\":[{{\"url\":\"http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade\",\"valueCodeableConcept\":{{\"coding\":[{{\"system\":\"http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl\",\"code\":\"{}\"}}]}}}},{{\"url\":\"{P}/StructureDefinition/ctcae-version\",\"valueCode\":\"{version}\"}}],\"actuality\":\"actual\",\"event\":{{\"text\":\"Hepatic hemorrhage\"}},\"subject\":{{\"reference\":\"Patient/{pid}\"}},\"date\":\"{}\",\"seriousness\":{{\"coding\":[{{\"system\":\"http://terminology.hl7.org/CodeSystem/adverse-event-seriousness\",\"code\":\"{}\"}}]}},\"suspectEntity\":[{{\"instance\":{{\"reference\":\"Procedure/{pid}-abl-l1\"}},\"causality\":[{{\"assessment\":{{\"coding\":[{{\"system\":\"http://terminology.hl7.org/CodeSystem/adverse-event-causality-assess\",\"code\":\"{causality}\"}}]}}}}]}}],\"study\":[{{\"reference\":\"ResearchStudy/a-imagio\"}}]}}",
                codes[g - 1],
                day_text(when.min(abl + end_obs.max(0))),
                if g >= 3 { "Serious" } else { "Non-serious" }
            ));
        }
        // Imaging follow-up until the end of observation; the recurrence is found at the
        // first imaging after it happened.
        let mut t = 0;
        let mut k = 0;
        let mut found = false;
        loop {
            t += if t < 365 { 91 } else { 182 };
            if t > end_obs {
                break;
            }
            k += 1;
            let date = abl + t + rng.below(14) as i32 - 7;
            if !found && rec_t <= t {
                found = true;
                let focus = ltp_lesion
                    .as_ref()
                    .map(|l| format!(",\"focus\":[{{\"reference\":\"BodyStructure/{l}\"}}]"))
                    .unwrap_or_default();
                out.push(format!(
                    "{{\"resourceType\":\"Observation\",\"id\":\"{pid}-rec-1\",\"status\":\"final\",\"code\":{{\"coding\":[{{\"system\":\"{P}/CodeSystem/observation-code\",\"code\":\"recurrence\"}}]}},\"subject\":{{\"reference\":\"Patient/{pid}\"}}{focus},\"effectiveDateTime\":\"{}\",\"valueCodeableConcept\":{{\"coding\":[{{\"system\":\"{P}/CodeSystem/recurrence-type\",\"code\":\"{rec_kind}\"}}]}}}}",
                    day_text(date)
                ));
                continue;
            }
            out.push(follow_up(&pid, k, date, "no-new-event", "imaging"));
        }
        if loss_t < i32::MAX && !deceased && loss_t <= study_end - abl {
            out.push(follow_up(
                &pid,
                k + 1,
                abl + loss_t,
                "lost-to-follow-up",
                "remote-contact",
            ));
        }
    }
    out
}

fn follow_up(pid: &str, k: usize, date: Day, status: &str, method: &str) -> String {
    format!(
        "{{\"resourceType\":\"Observation\",\"id\":\"{pid}-fu-{k}\",\"status\":\"final\",\"code\":{{\"coding\":[{{\"system\":\"{P}/CodeSystem/observation-code\",\"code\":\"follow-up\"}}]}},\"subject\":{{\"reference\":\"Patient/{pid}\"}},\"effectiveDateTime\":\"{}\",\"valueCodeableConcept\":{{\"coding\":[{{\"system\":\"{P}/CodeSystem/follow-up-status\",\"code\":\"{status}\"}}]}},\"method\":{{\"coding\":[{{\"system\":\"{P}/CodeSystem/follow-up-method\",\"code\":\"{method}\"}}]}}}}",
        day_text(date)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_parseable() {
        let a = journeys(40, 7);
        assert_eq!(a, journeys(40, 7));
        assert_ne!(a, journeys(40, 8));
        let mut facts = crate::endpoints::facts::Facts::default();
        for (n, line) in a.iter().enumerate() {
            let r =
                crate::model::parse(line).unwrap_or_else(|e| panic!("line {}: {e}\n{line}", n + 1));
            facts.add(&r);
        }
        assert_eq!(facts.subjects.len(), 40);
        assert!(facts.ignored.is_empty(), "{:?}", facts.ignored);
        let report = crate::endpoints::compute(&facts);
        assert_eq!(report.datasets.treated.len(), 40);
    }
}
