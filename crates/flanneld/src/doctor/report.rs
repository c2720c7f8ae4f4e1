//! The doctor's findings and how they are printed: one line per finding, what it means and
//! what to do underneath, wrapped for an 80-column terminal, coloured only on a terminal;
//! or JSON for scripts.

use std::fmt::Write as _;

pub use flannel_backend::inspect::{Findings, Status};

fn word(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Warn => "warn",
        Status::Fail => "FAIL",
    }
}

fn colour_of(status: Status) -> &'static str {
    match status {
        Status::Ok => "\x1b[32m",
        Status::Warn => "\x1b[33m",
        Status::Fail => "\x1b[31;1m",
    }
}

/// The doctor's findings (those of the backends' inspections among them, gathered with the
/// same [`Findings`]), and how they are printed.
#[derive(Debug, Default)]
pub struct Report {
    found: Findings,
}

impl std::ops::Deref for Report {
    type Target = Findings;

    fn deref(&self) -> &Findings {
        &self.found
    }
}

impl std::ops::DerefMut for Report {
    fn deref_mut(&mut self) -> &mut Findings {
        &mut self.found
    }
}

impl Report {
    fn count(&self, status: Status) -> usize {
        self.found
            .list
            .iter()
            .filter(|f| f.status == status)
            .count()
    }

    pub fn failed(&self) -> bool {
        self.count(Status::Fail) > 0
    }

    /// The text report; `colour` on a terminal. Problems first, then warnings, then the
    /// checks that passed, one line each.
    pub fn text(&self, colour: bool) -> String {
        let (fails, warns) = (self.count(Status::Fail), self.count(Status::Warn));
        let mut out = String::new();
        if fails == 0 && warns == 0 {
            let _ = writeln!(
                out,
                "flanneld-rs doctor: all good ({} checks passed)",
                self.found.list.len()
            );
        } else {
            let _ = writeln!(
                out,
                "flanneld-rs doctor: {fails} problem{}, {warns} warning{}",
                if fails == 1 { "" } else { "s" },
                if warns == 1 { "" } else { "s" }
            );
        }
        for status in [Status::Fail, Status::Warn, Status::Ok] {
            for f in self.found.list.iter().filter(|f| f.status == status) {
                let word = if colour {
                    format!("{}{:<4}\x1b[0m", colour_of(status), word(status))
                } else {
                    format!("{:<4}", word(status))
                };
                // `FAIL  peers      text...`: 17 columns before the text, 63 for it
                for (i, line) in wrap(&f.text, 63).iter().enumerate() {
                    if i == 0 {
                        let _ = writeln!(out, "{word}  {:<10} {line}", f.check);
                    } else {
                        let _ = writeln!(out, "                 {line}");
                    }
                }
                for line in wrap(&f.advice, 61) {
                    let _ = writeln!(out, "                   {line}");
                }
            }
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let findings: Vec<serde_json::Value> = self
            .found
            .list
            .iter()
            .map(|f| {
                serde_json::json!({
                    "check": f.check,
                    "status": word(f.status).to_ascii_lowercase(),
                    "text": f.text,
                    "advice": f.advice,
                })
            })
            .collect();
        serde_json::json!({
            "ok": !self.failed(),
            "problems": self.count(Status::Fail),
            "warnings": self.count(Status::Warn),
            "findings": findings,
        })
    }
}

/// `text` in lines of at most `width` characters, broken at spaces (a longer word gets a
/// line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_80_columns_and_puts_problems_first() {
        let mut r = Report::default();
        r.ok("daemon", "running (PID 12), /healthz 200, /readyz 200");
        r.fail(
            "peers",
            "10.200.3.0/24 (192.168.77.3): the route via 10.200.3.0 on flannel.1 is missing",
            "pods of that node cannot be reached from here; a running flanneld-rs repairs this within milliseconds: is it running? Restart it",
        );
        let text = r.text(false);
        assert!(
            text.starts_with("flanneld-rs doctor: 1 problem, 0 warnings\nFAIL  peers"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        assert!(!text.contains('\x1b'));
        assert!(r.text(true).contains("\x1b[31;1mFAIL\x1b[0m"));
        assert_eq!(r.json()["ok"], false);
        let mut good = Report::default();
        good.ok("daemon", "running");
        assert_eq!(
            good.text(false).lines().next(),
            Some("flanneld-rs doctor: all good (1 checks passed)")
        );
    }
}
