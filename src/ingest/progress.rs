//! Progress of a long import on standard error: a bar redrawn in place (rows/s, ETA from
//! the bytes read) when standard error is a terminal, a plain line every few seconds
//! otherwise (logs, CI). Hand-written: a bar, a rate and an ETA do not need a crate.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// The progress of one import.
pub struct Progress {
    started: Instant,
    last: Option<Instant>,
    terminal: bool,
    total_bytes: u64,
    enabled: bool,
}

impl Progress {
    /// A progress display for inputs of `total_bytes`; `enabled = false` shows nothing.
    pub fn new(total_bytes: u64, enabled: bool) -> Progress {
        Progress {
            started: Instant::now(),
            last: None,
            terminal: std::io::stderr().is_terminal(),
            total_bytes,
            enabled,
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Shows the state after a batch: `rows` read, `bytes` of the inputs consumed, rows
    /// `failed` so far. Redraws at most 10 times a second on a terminal, every 5 s
    /// otherwise.
    pub fn update(&mut self, rows: u64, bytes: u64, failed: u64) {
        if !self.enabled {
            return;
        }
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let line = self.line(rows, bytes, failed);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Ends the display (the terminal line is finished with a newline).
    pub fn finish(&mut self, rows: u64, bytes: u64, failed: u64) {
        if !self.enabled {
            return;
        }
        self.last = None;
        let line = self.line(rows, bytes, failed);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = writeln!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    fn line(&self, rows: u64, bytes: u64, failed: u64) -> String {
        render(
            self.started.elapsed(),
            rows,
            bytes,
            self.total_bytes,
            failed,
            self.terminal,
        )
    }
}

/// The progress text: `[#####.....]  42% 120000 rows  8500 rows/s  ETA 0:12  3 failed`.
pub fn render(
    elapsed: Duration,
    rows: u64,
    bytes: u64,
    total: u64,
    failed: u64,
    bar: bool,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    #[allow(clippy::cast_precision_loss)]
    let rate = rows as f64 / secs;
    #[allow(clippy::cast_precision_loss)]
    let fraction = if total == 0 {
        1.0
    } else {
        (bytes as f64 / total as f64).min(1.0)
    };
    let eta = if fraction > 0.0 && fraction < 1.0 {
        let left = secs * (1.0 - fraction) / fraction;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let left = left.round() as u64;
        format!("ETA {}:{:02}", left / 60, left % 60)
    } else {
        "ETA 0:00".to_string()
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let percent = (fraction * 100.0).floor() as u64;
    let mut s = String::new();
    if bar {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let filled = (fraction * 30.0).round() as usize;
        s.push('[');
        s.push_str(&"#".repeat(filled));
        s.push_str(&".".repeat(30 - filled.min(30)));
        s.push_str("] ");
    }
    s.push_str(&format!(
        "{percent:>3}% {rows} rows  {rate:.0} rows/s  {eta}  {failed} failed"
    ));
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn render_rate_and_eta() {
        let s = super::render(std::time::Duration::from_secs(10), 5000, 250, 1000, 2, true);
        assert_eq!(
            s,
            "[########......................]  25% 5000 rows  500 rows/s  ETA 0:30  2 failed"
        );
        let plain = super::render(std::time::Duration::from_secs(2), 10, 1000, 1000, 0, false);
        assert_eq!(plain, "100% 10 rows  5 rows/s  ETA 0:00  0 failed");
    }
}
