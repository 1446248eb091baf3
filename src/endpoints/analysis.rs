//! The estimates made from the datasets: a Kaplan-Meier curve per endpoint and group (all
//! patients, each tumour type, each site), and the safety proportions.

use super::derive::{Datasets, Endpoint};
use super::km::{self, Curve, Obs};
use std::collections::{BTreeMap, BTreeSet};

/// The times (days) at which numbers at risk and survival are reported.
pub const REPORT_TIMES: [i32; 6] = [0, 180, 365, 730, 1095, 1460];

/// The windows (days after the ablation) of the safety endpoint.
pub const SAFETY_WINDOWS: [i32; 2] = [30, 90];

/// A group of units: everyone, a tumour type or a site.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// All units.
    All,
    /// One tumour type (code).
    Tumour(String),
    /// One site (Organization id).
    Site(String),
}

impl Group {
    /// `all`, `tumour-hcc`, `site-site-nl-01`: used in file names and outputs.
    pub fn key(&self) -> String {
        match self {
            Group::All => "all".into(),
            Group::Tumour(t) => format!("tumour-{t}"),
            Group::Site(s) => format!("site-{s}"),
        }
    }

    /// A title for pictures.
    pub fn title(&self) -> String {
        match self {
            Group::All => "all patients".into(),
            Group::Tumour(t) => format!("tumour type {}", t.to_uppercase()),
            Group::Site(s) => format!("site {s}"),
        }
    }

    /// The groups a unit of `tumour` at `site` belongs to.
    pub fn of(tumour: &str, site: &str) -> [Group; 3] {
        [
            Group::All,
            Group::Tumour(tumour.to_string()),
            Group::Site(site.to_string()),
        ]
    }
}

/// One Kaplan-Meier estimate.
#[derive(Debug, Clone)]
pub struct Estimate {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The group.
    pub group: Group,
    /// The curve.
    pub curve: Curve,
}

/// A safety class: what makes a complication count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SafetyClass {
    /// Treatment-related, CTCAE grade 3 or 4.
    Grade3To4,
    /// Treatment-related, CTCAE grade 5 (death).
    Grade5,
    /// Treatment-related and serious (any grade).
    Serious,
}

impl SafetyClass {
    /// All classes.
    pub const ALL: [SafetyClass; 3] = [
        SafetyClass::Grade3To4,
        SafetyClass::Grade5,
        SafetyClass::Serious,
    ];

    /// Output code.
    pub fn code(self) -> &'static str {
        match self {
            SafetyClass::Grade3To4 => "grade-3-4",
            SafetyClass::Grade5 => "grade-5",
            SafetyClass::Serious => "serious",
        }
    }
}

/// One safety proportion.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyRow {
    /// The group.
    pub group: Group,
    /// CTCAE version (`all` for any version).
    pub version: String,
    /// Window in days.
    pub window: i32,
    /// Class.
    pub class: SafetyClass,
    /// Patients with at least one such complication.
    pub patients: usize,
    /// Treated patients of the group.
    pub treated: usize,
    /// patients / treated (0 when no one was treated).
    pub proportion: f64,
    /// Wilson 95% interval of the proportion.
    pub lower: f64,
    /// Wilson 95% interval of the proportion.
    pub upper: f64,
}

/// Everything estimated.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Curves, by endpoint then group.
    pub estimates: Vec<Estimate>,
    /// Safety proportions.
    pub safety: Vec<SafetyRow>,
}

/// The Wilson score interval of `k` of `n` at 95%.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let (k, n, z) = (k as f64, n as f64, km::Z95);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Estimates the curves and the safety proportions of `data`.
pub fn analyse(data: &Datasets) -> Analysis {
    let mut obs: BTreeMap<(Endpoint, Group), Vec<Obs>> = BTreeMap::new();
    for e in Endpoint::ALL {
        obs.insert((e, Group::All), Vec::new());
    }
    for r in &data.rows {
        let (Some(time), None) = (r.days, &r.excluded) else {
            continue;
        };
        for g in Group::of(&r.tumour, &r.site) {
            obs.entry((r.endpoint, g)).or_default().push(Obs {
                time,
                event: r.event,
            });
        }
    }
    let estimates = obs
        .into_iter()
        .map(|((endpoint, group), o)| Estimate {
            endpoint,
            group,
            curve: km::estimate(&o),
        })
        .collect();

    // Safety: per group, the treated patients and, per (version, window, class), the
    // patients with a counting complication.
    let mut treated: BTreeMap<Group, usize> = BTreeMap::new();
    treated.insert(Group::All, 0);
    for t in &data.treated {
        for g in Group::of(&t.tumour, &t.site) {
            *treated.entry(g).or_default() += 1;
        }
    }
    let mut versions: BTreeSet<String> = BTreeSet::new();
    versions.insert("all".into());
    let mut hits: BTreeSet<(Group, String, i32, SafetyClass, &str)> = BTreeSet::new();
    for c in data
        .complications
        .iter()
        .filter(|c| c.excluded.is_none() && c.related)
    {
        versions.insert(c.version.clone());
        let Some(days) = c.days else { continue };
        for class in SafetyClass::ALL {
            let counts = match class {
                SafetyClass::Grade3To4 => matches!(c.grade, 3 | 4),
                SafetyClass::Grade5 => c.grade == 5,
                SafetyClass::Serious => c.serious,
            };
            if !counts {
                continue;
            }
            for w in SAFETY_WINDOWS.into_iter().filter(|w| days <= *w) {
                for g in Group::of(&c.tumour, &c.site) {
                    for v in ["all", c.version.as_str()] {
                        hits.insert((g.clone(), v.to_string(), w, class, c.patient.as_str()));
                    }
                }
            }
        }
    }
    let mut counts: BTreeMap<(Group, String, i32, SafetyClass), usize> = BTreeMap::new();
    for (g, v, w, class, _) in &hits {
        *counts
            .entry((g.clone(), v.clone(), *w, *class))
            .or_default() += 1;
    }
    let mut safety = Vec::new();
    for (g, n) in &treated {
        for v in &versions {
            for w in SAFETY_WINDOWS {
                for class in SafetyClass::ALL {
                    let k = counts
                        .get(&(g.clone(), v.clone(), w, class))
                        .copied()
                        .unwrap_or(0);
                    let (lower, upper) = wilson(k, *n);
                    safety.push(SafetyRow {
                        group: g.clone(),
                        version: v.clone(),
                        window: w,
                        class,
                        patients: k,
                        treated: *n,
                        proportion: if *n == 0 { 0.0 } else { k as f64 / *n as f64 },
                        lower,
                        upper,
                    });
                }
            }
        }
    }
    Analysis { estimates, safety }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Wilson interval of 1 of 4, by hand: p = 0.25, z^2 = 3.841459, z^2/n = 0.960365,
    // denominator 1.960365; centre = (0.25 + 0.480182) / 1.960365 = 0.372473;
    // half = 1.959964 * sqrt(0.25*0.75/4 + 3.841459/64) / 1.960365
    //      = 1.959964 * sqrt(0.046875 + 0.060023) / 1.960365 = 1.959964 * 0.326952 / 1.960365
    //      = 0.326885; interval [0.045587, 0.699358].
    #[test]
    fn wilson_by_hand() {
        let (lo, hi) = wilson(1, 4);
        assert!((lo - 0.045_587).abs() < 1e-5, "{lo}");
        assert!((hi - 0.699_358).abs() < 1e-5, "{hi}");
        assert_eq!(wilson(0, 0), (0.0, 0.0));
        let (lo, _) = wilson(0, 10);
        assert_eq!(lo, 0.0);
    }
}
