//! Kaplan-Meier estimates: the product-limit survival function, Greenwood's variance and
//! 95% confidence intervals on the log-log scale, numbers at risk, and the median with its
//! confidence interval. Times are whole days; at a time with both events and censorings the
//! events come first (the censored are counted at risk at that time).

/// The standard normal quantile for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// One subject's follow-up: the time it ended and whether that was the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obs {
    /// Days from the time origin.
    pub time: i32,
    /// True for the event, false for a censoring.
    pub event: bool,
}

/// The estimate at one distinct observed time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The time (days).
    pub time: i32,
    /// Subjects at risk just before it (time >= this).
    pub at_risk: usize,
    /// Events at it.
    pub events: usize,
    /// Censorings at it.
    pub censored: usize,
    /// S(t) just after it.
    pub survival: f64,
    /// Greenwood's sum: the sum over event times up to t of d / (n (n - d)); the variance
    /// of log S(t). Infinite once S reaches 0.
    pub greenwood: f64,
    /// The standard error of S(t): S(t) * sqrt(greenwood).
    pub std_err: f64,
    /// Lower 95% limit (log-log); `None` where undefined (S = 1 before any event, S = 0).
    pub lower: Option<f64>,
    /// Upper 95% limit (log-log); `None` where undefined.
    pub upper: Option<f64>,
}

/// A Kaplan-Meier curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Subjects.
    pub n: usize,
    /// Events in all.
    pub events: usize,
    /// One step per distinct observed time (events or censorings), in time order.
    pub steps: Vec<Step>,
}

/// The 95% log-log limits of S with Greenwood sum `v`: log(-log S) ± z sqrt(v) / |log S|,
/// transformed back, which gives S^exp(±z sqrt(v) / log S).
pub fn loglog_ci(s: f64, v: f64) -> (Option<f64>, Option<f64>) {
    if s <= 0.0 || s >= 1.0 || s.is_nan() || !v.is_finite() {
        return (None, None);
    }
    let half = Z95 * v.sqrt() / s.ln(); // negative: log S < 0
                                        // Lower limit: S^exp(-half) (exponent > 1); upper: S^exp(half) (exponent < 1).
    (Some(s.powf((-half).exp())), Some(s.powf(half.exp())))
}

/// Estimates the curve of `obs` (any order).
pub fn estimate(obs: &[Obs]) -> Curve {
    let mut sorted: Vec<Obs> = obs.to_vec();
    // Time order; at one time, events first (so censorings at an event time are at risk).
    sorted.sort_by_key(|o| (o.time, !o.event));
    let n = sorted.len();
    let mut steps = Vec::new();
    let (mut s, mut v) = (1.0f64, 0.0f64);
    let mut i = 0;
    while i < n {
        let t = sorted[i].time;
        let at_risk = n - i;
        let mut events = 0;
        let mut censored = 0;
        while i < n && sorted[i].time == t {
            if sorted[i].event {
                events += 1;
            } else {
                censored += 1;
            }
            i += 1;
        }
        if events > 0 {
            let (nf, df) = (at_risk as f64, events as f64);
            s *= 1.0 - df / nf;
            v = if events == at_risk {
                f64::INFINITY
            } else {
                v + df / (nf * (nf - df))
            };
        }
        let std_err = if s == 0.0 { 0.0 } else { s * v.sqrt() };
        let (lower, upper) = loglog_ci(s, v);
        steps.push(Step {
            time: t,
            at_risk,
            events,
            censored,
            survival: s,
            greenwood: v,
            std_err,
            lower,
            upper,
        });
    }
    Curve {
        n,
        events: sorted.iter().filter(|o| o.event).count(),
        steps,
    }
}

impl Curve {
    /// The last step at or before `t`, if any.
    fn step_at(&self, t: i32) -> Option<&Step> {
        self.steps.iter().take_while(|s| s.time <= t).last()
    }

    /// S(t) with its limits: (1, None, None) before the first step.
    pub fn at(&self, t: i32) -> (f64, Option<f64>, Option<f64>) {
        self.step_at(t)
            .map_or((1.0, None, None), |s| (s.survival, s.lower, s.upper))
    }

    /// Subjects at risk at `t`: those whose time is `t` or later.
    pub fn at_risk(&self, t: i32) -> usize {
        self.steps
            .iter()
            .filter(|s| s.time >= t)
            .map(|s| s.events + s.censored)
            .sum()
    }

    /// The first time the function `f` of a step reaches 0.5 or below, with the usual
    /// rule for a flat stretch at exactly 0.5: the midpoint between that time and the next
    /// event time (or that time when no later event exists).
    fn crossing(&self, f: impl Fn(&Step) -> Option<f64>) -> Option<f64> {
        let eps = 1e-12;
        let events: Vec<&Step> = self.steps.iter().filter(|s| s.events > 0).collect();
        for (k, s) in events.iter().enumerate() {
            let Some(y) = f(s) else { continue };
            if y < 0.5 - eps {
                return Some(f64::from(s.time));
            }
            if (y - 0.5).abs() <= eps {
                return Some(match events.get(k + 1) {
                    Some(next) => (f64::from(s.time) + f64::from(next.time)) / 2.0,
                    None => f64::from(s.time),
                });
            }
        }
        None
    }

    /// The median survival time: the first time S(t) <= 0.5 (see `crossing`), `None` when
    /// not reached.
    pub fn median(&self) -> Option<f64> {
        self.crossing(|s| Some(s.survival))
    }

    /// The 95% interval of the median: (the first time the lower limit reaches 0.5, the
    /// first time the upper limit does), with the log-log limits (Brookmeyer-Crowley).
    /// `None` ends are not reached. Where S is 0 the limits are taken as 0.
    pub fn median_ci(&self) -> (Option<f64>, Option<f64>) {
        let limit = |l: Option<f64>, s: &Step| l.or((s.survival == 0.0).then_some(0.0));
        (
            self.crossing(|s| limit(s.lower, s)),
            self.crossing(|s| limit(s.upper, s)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(list: &[(i32, bool)]) -> Vec<Obs> {
        list.iter()
            .map(|&(time, event)| Obs { time, event })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn assert_close(a: Option<f64>, b: f64, what: &str) {
        match a {
            Some(a) => assert!(close(a, b), "{what}: {a} != {b}"),
            None => panic!("{what}: None, expected {b}"),
        }
    }

    // Six subjects: events at 2, 4, 4 (tie), 7; censored at 4 (at an event time) and 9.
    //
    // By hand (events before censorings at t = 4):
    // - t = 2: n = 6, d = 1: S = 5/6 = 0.833333; Greenwood sum V = 1/(6*5) = 1/30.
    // - t = 4: n = 5 (the subject censored at 4 is still at risk), d = 2, c = 1:
    //   S = 5/6 * 3/5 = 1/2; V = 1/30 + 2/(5*3) = 1/30 + 4/30 = 1/6.
    // - t = 7: n = 2, d = 1: S = 1/2 * 1/2 = 1/4; V = 1/6 + 1/(2*1) = 2/3.
    // - t = 9: n = 1, censored: S stays 1/4.
    //
    // Log-log limits, half = z sqrt(V) / ln S, lower = S^exp(-half), upper = S^exp(half):
    // - t = 2: ln S = -0.182321557, sqrt V = 0.182574186,
    //   half = 1.959964 * 0.182574186 / -0.182321557 = -1.962680;
    //   lower = (5/6)^7.118377 = 0.273123; upper = (5/6)^0.140481 = 0.974712.
    // - t = 4: ln S = -0.693147181, sqrt V = 0.408248290, half = -1.154375;
    //   lower = 0.5^3.172041 = 0.110948; upper = 0.5^0.315254 = 0.803709.
    // - t = 7: ln S = -1.386294361, sqrt V = 0.816496581, half = -1.154375;
    //   lower = 0.25^3.172041 = 0.012310; upper = 0.25^0.315254 = 0.645949.
    // Greenwood standard error at t = 4: 0.5 * sqrt(1/6) = 0.204124.
    // Median: S first reaches 0.5 at t = 4 and stays there until the next event at 7:
    // exactly 0.5 on a flat stretch, so the median is (4 + 7) / 2 = 5.5.
    // Median interval: the lower limit first falls below 0.5 at t = 2 (0.273123); the
    // upper limit never does (0.974712, 0.803709, 0.645949): [2, not reached).
    #[test]
    fn ties_and_censoring_at_an_event_time() {
        let c = estimate(&obs(&[
            (2, true),
            (4, true),
            (4, false),
            (4, true),
            (7, true),
            (9, false),
        ]));
        assert_eq!((c.n, c.events, c.steps.len()), (6, 4, 4));
        let s: Vec<(i32, usize, usize, usize)> = c
            .steps
            .iter()
            .map(|s| (s.time, s.at_risk, s.events, s.censored))
            .collect();
        assert_eq!(
            s,
            vec![(2, 6, 1, 0), (4, 5, 2, 1), (7, 2, 1, 0), (9, 1, 0, 1)]
        );
        assert!(close(c.steps[0].survival, 5.0 / 6.0));
        assert!(close(c.steps[0].greenwood, 1.0 / 30.0));
        assert!(close(c.steps[1].survival, 0.5));
        assert!(close(c.steps[1].greenwood, 1.0 / 6.0));
        assert!(close(c.steps[2].survival, 0.25));
        assert!(close(c.steps[2].greenwood, 2.0 / 3.0));
        assert!(close(c.steps[3].survival, 0.25));
        assert!((c.steps[1].std_err - 0.204_124).abs() < 1e-6);
        let limits = |i: usize| {
            (
                c.steps[i].lower.unwrap_or(-1.0),
                c.steps[i].upper.unwrap_or(-1.0),
            )
        };
        let near =
            |(a, b): (f64, f64), (x, y): (f64, f64)| (a - x).abs() < 1e-6 && (b - y).abs() < 1e-6;
        assert!(near(limits(0), (0.273_123, 0.974_712)), "{:?}", limits(0));
        assert!(near(limits(1), (0.110_948, 0.803_709)), "{:?}", limits(1));
        assert!(near(limits(2), (0.012_310, 0.645_949)), "{:?}", limits(2));
        assert!(near(limits(3), (0.012_310, 0.645_949)), "{:?}", limits(3));
        assert_close(c.median(), 5.5, "median");
        let (lo, hi) = c.median_ci();
        assert_close(lo, 2.0, "median lower limit");
        assert_eq!(hi, None);
        // At risk: everyone at 0, five at 3 and at 4, two at 5..7, one at 8..9, none at 10.
        assert_eq!(
            [0, 3, 4, 5, 7, 8, 9, 10].map(|t| c.at_risk(t)),
            [6, 5, 5, 2, 2, 1, 1, 0]
        );
        // S(t) between steps is the last step's.
        assert!(close(c.at(6).0, 0.5));
        assert_eq!(c.at(1), (1.0, None, None));
    }

    // All censored: S stays 1, no limits, no median; everyone at risk at 0.
    #[test]
    fn all_censored() {
        let c = estimate(&obs(&[(3, false), (5, false), (5, false)]));
        assert_eq!(c.events, 0);
        assert!(c
            .steps
            .iter()
            .all(|s| s.survival == 1.0 && s.lower.is_none()));
        assert_eq!(c.median(), None);
        assert_eq!(c.median_ci(), (None, None));
        assert_eq!(c.at_risk(0), 3);
        assert_eq!(c.at_risk(4), 2);
    }

    // Everyone dies, at 1, 2, 2, 3 (four subjects).
    // - t = 1: n = 4, d = 1: S = 3/4; V = 1/(4*3) = 1/12.
    // - t = 2: n = 3, d = 2: S = 3/4 * 1/3 = 1/4; V = 1/12 + 2/(3*1) = 3/4.
    // - t = 3: n = 1, d = 1: S = 0; V is infinite (d = n) and the limits undefined.
    // Limits at t = 1: ln S = -0.287682072, sqrt V = 0.288675135, half = -1.966730:
    // lower = 0.75^7.147264 = 0.127947, upper = 0.75^0.139914 = 0.960549.
    // At t = 2: ln S = -1.386294361, sqrt V = 0.866025404, half = -1.224400:
    // lower = 0.25^3.402124 = 0.008948, upper = 0.25^0.293934 = 0.665325.
    // Median: S first below 0.5 at t = 2 (0.25). Its interval: the lower limit first
    // below 0.5 at t = 1 (0.127947); the upper limit first at or below 0.5 at t = 3
    // (S = 0, limits taken as 0): [1, 3].
    #[test]
    fn everyone_dies() {
        let c = estimate(&obs(&[(2, true), (1, true), (3, true), (2, true)]));
        assert_eq!(c.events, 4);
        assert!(close(c.steps[0].survival, 0.75));
        assert!(close(c.steps[0].greenwood, 1.0 / 12.0));
        assert!(close(c.steps[1].survival, 0.25));
        assert!(close(c.steps[1].greenwood, 0.75));
        assert_eq!(c.steps[2].survival, 0.0);
        assert!(c.steps[2].greenwood.is_infinite());
        assert_eq!((c.steps[2].lower, c.steps[2].upper), (None, None));
        assert!((c.steps[0].lower.unwrap_or(0.0) - 0.127_947).abs() < 1e-6);
        assert!((c.steps[0].upper.unwrap_or(0.0) - 0.960_549).abs() < 1e-6);
        assert!((c.steps[1].lower.unwrap_or(0.0) - 0.008_948).abs() < 1e-6);
        assert!((c.steps[1].upper.unwrap_or(0.0) - 0.665_325).abs() < 1e-6);
        assert_close(c.median(), 2.0, "median");
        let (lo, hi) = c.median_ci();
        assert_close(lo, 1.0, "median lower limit");
        assert_close(hi, 3.0, "median upper limit");
    }

    #[test]
    fn empty() {
        let c = estimate(&[]);
        assert_eq!((c.n, c.events, c.steps.len()), (0, 0, 0));
        assert_eq!(c.median(), None);
        assert_eq!(c.at_risk(0), 0);
    }
}
