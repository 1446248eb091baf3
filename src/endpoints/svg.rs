//! A Kaplan-Meier curve as an SVG picture, written by hand: the step function, its 95%
//! confidence band (log-log), a tick at each censoring, axes with the report times, the
//! median when reached, and the numbers at risk below.

use super::analysis::REPORT_TIMES;
use super::km::Curve;
use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const PLOT_H: f64 = 320.0;

/// Escapes text for XML content and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The x axis end: the last report time covering the data (at least 365 days).
fn x_max(curve: &Curve) -> i32 {
    let last = curve.steps.last().map_or(0, |s| s.time);
    REPORT_TIMES
        .iter()
        .copied()
        .find(|t| *t >= last && *t >= 365)
        .unwrap_or_else(|| last.max(365))
}

/// The picture of `curve`, titled `title`, its y axis `y_label`.
pub fn render(curve: &Curve, title: &str, y_label: &str) -> String {
    let xmax = f64::from(x_max(curve));
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + t / xmax * plot_w;
    let y = |s: f64| TOP + (1.0 - s) * PLOT_H;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(o, "<title>{}</title>", escape(title));
    let _ = writeln!(
        o,
        "<rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>"
    );
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"28\" font-size=\"15\" font-weight=\"bold\">{}</text>",
        LEFT,
        escape(title)
    );
    let median = curve.median();
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"46\">n = {}, events = {}, median {}</text>",
        LEFT,
        curve.n,
        curve.events,
        median.map_or_else(|| "not reached".to_string(), |m| format!("{m} days"))
    );
    // Axes and grid.
    let _ = writeln!(o, "<g class=\"axes\" stroke=\"#444\" fill=\"none\">");
    let _ = writeln!(
        o,
        "<path d=\"M{:.1},{:.1} V{:.1} H{:.1}\"/>",
        LEFT,
        TOP,
        TOP + PLOT_H,
        LEFT + plot_w
    );
    o.push_str("</g>\n<g class=\"y-ticks\">\n");
    for k in 0..=5 {
        let s = f64::from(k) / 5.0;
        let _ = writeln!(
            o,
            "<line x1=\"{:.1}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{s:.1}</text>",
            LEFT,
            LEFT + plot_w,
            LEFT - 6.0,
            y(s) + 4.0,
            yy = y(s)
        );
    }
    o.push_str("</g>\n<g class=\"x-ticks\">\n");
    let ticks: Vec<i32> = REPORT_TIMES
        .iter()
        .copied()
        .filter(|t| f64::from(*t) <= xmax)
        .collect();
    for t in &ticks {
        let xx = x(f64::from(*t));
        let _ = writeln!(
            o,
            "<line x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#444\"/><text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}</text>",
            TOP + PLOT_H,
            TOP + PLOT_H + 5.0,
            TOP + PLOT_H + 18.0
        );
    }
    o.push_str("</g>\n");
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">Days from ablation</text>",
        LEFT + plot_w / 2.0,
        TOP + PLOT_H + 36.0
    );
    let _ = writeln!(
        o,
        "<text transform=\"translate(22,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        TOP + PLOT_H / 2.0,
        escape(y_label)
    );
    // Confidence band: upper limits left to right, lower limits back, as steps; only where
    // both are defined.
    let band: Vec<(f64, f64, f64, f64)> = curve
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let end = curve
                .steps
                .get(i + 1)
                .map_or(f64::from(s.time), |n| f64::from(n.time))
                .min(xmax);
            Some((f64::from(s.time).min(xmax), end, s.lower?, s.upper?))
        })
        .collect();
    if !band.is_empty() {
        let mut d = String::new();
        for (k, (t0, t1, _, up)) in band.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1} L{:.1},{:.1} ",
                if k == 0 { "M" } else { "L" },
                x(*t0),
                y(*up),
                x(*t1),
                y(*up)
            );
        }
        for (t0, t1, lo, _) in band.iter().rev() {
            let _ = write!(
                d,
                "L{:.1},{:.1} L{:.1},{:.1} ",
                x(*t1),
                y(*lo),
                x(*t0),
                y(*lo)
            );
        }
        let _ = writeln!(
            o,
            "<path class=\"ci\" d=\"{}Z\" fill=\"#1f77b4\" fill-opacity=\"0.18\" stroke=\"none\"/>",
            d
        );
    }
    // The step function from (0, 1).
    let mut d = format!("M{:.1},{:.1}", x(0.0), y(1.0));
    let mut s_prev = 1.0;
    for s in &curve.steps {
        let t = f64::from(s.time).min(xmax);
        let _ = write!(d, " H{:.1}", x(t));
        if s.survival != s_prev {
            let _ = write!(d, " V{:.1}", y(s.survival));
            s_prev = s.survival;
        }
    }
    if let Some(last) = curve.steps.last() {
        let _ = write!(d, " H{:.1}", x(f64::from(last.time).min(xmax)));
    }
    let _ = writeln!(
        o,
        "<path class=\"survival\" d=\"{d}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\"/>"
    );
    // Censoring ticks: one per censored subject's time (several at a time share a tick).
    o.push_str("<g class=\"censored\" stroke=\"#1f77b4\" stroke-width=\"1.5\">\n");
    for s in curve.steps.iter().filter(|s| s.censored > 0) {
        let xx = x(f64::from(s.time).min(xmax));
        let yy = y(s.survival);
        let _ = writeln!(
            o,
            "<line x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\"><title>{} censored at day {}</title></line>",
            yy - 5.0,
            yy + 5.0,
            s.censored,
            s.time
        );
    }
    o.push_str("</g>\n");
    if let Some(m) = median {
        if m <= xmax {
            let _ = writeln!(
                o,
                "<path class=\"median\" d=\"M{:.1},{:.1} H{:.1} V{:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\" fill=\"none\"/>",
                LEFT,
                y(0.5),
                x(m),
                TOP + PLOT_H
            );
        }
    }
    // Numbers at risk.
    let table_y = TOP + PLOT_H + 70.0;
    let _ = writeln!(
        o,
        "<g class=\"at-risk\"><text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"bold\">Number at risk</text>",
        LEFT - 70.0,
        table_y
    );
    for t in &ticks {
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(f64::from(*t)),
            table_y + 20.0,
            curve.at_risk(*t)
        );
    }
    o.push_str("</g>\n</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::km::{estimate, Obs};

    // Checks that every tag opened is closed, in order (the pictures use no comments,
    // CDATA or processing instructions).
    pub(crate) fn well_formed(svg: &str) -> Result<(), String> {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            let Some(j) = rest[i..].find('>') else {
                return Err("unterminated tag".into());
            };
            let tag = &rest[i + 1..i + j];
            rest = &rest[i + j + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or("");
                stack.push(name);
            }
        }
        if stack.is_empty() {
            Ok(())
        } else {
            Err(format!("unclosed {stack:?}"))
        }
    }

    #[test]
    fn picture_has_steps_ticks_band_and_table() {
        let c = estimate(&[
            Obs {
                time: 100,
                event: true,
            },
            Obs {
                time: 200,
                event: false,
            },
            Obs {
                time: 200,
                event: true,
            },
            Obs {
                time: 400,
                event: false,
            },
            Obs {
                time: 500,
                event: true,
            },
        ]);
        let svg = render(&c, "OS <all> & \"x\"", "Alive");
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert!(svg.contains("OS &lt;all&gt; &amp; &quot;x&quot;"));
        assert_eq!(svg.matches("censored at day").count(), 2);
        assert!(svg.contains("class=\"ci\""));
        assert!(svg.contains("class=\"survival\""));
        // x axis to 730 (the report time covering day 500); at risk at 0, 180, 365, 730:
        // 5, 4 (times 200, 200, 400, 500), 2, 0.
        let table = svg.split("Number at risk").nth(1).unwrap_or_default();
        let numbers: Vec<&str> = table
            .split("</text>")
            .filter_map(|t| t.rsplit('>').next())
            .filter(|t| !t.trim().is_empty())
            .collect();
        assert_eq!(numbers, ["5", "4", "2", "0"], "{table}");
        assert!(svg.contains(">730</text>") && !svg.contains(">1095</text>"));
    }
}
