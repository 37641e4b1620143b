//! Progress reporting: the [`Progress`] trait the trainer calls on every step, evaluation, checkpoint and at
//! the end of a run, and [`TextProgress`], which draws a one-line bar
//! (`step 12/60 [####......] loss 1.234 lr 2e-4 1,234 tok/s peak 1.2 GiB eta 3m10s`) redrawn in place with
//! `\r` on a terminal and printed as plain lines every N steps otherwise.
//!
//! Reporters only observe: nothing they see feeds back into the training math.

use std::io::{IsTerminal, Stderr, Write};
use std::path::Path;

use super::{RunOutcome, StepMetrics};

/// What a training run tells its observer. Every method but `on_step` has an empty default.
pub trait Progress {
    /// The run starts at optimizer step `step` of `total`.
    fn on_start(&mut self, _step: usize, _total: usize) {}
    /// Training step `m.step` of `total` is done.
    fn on_step(&mut self, m: &StepMetrics, total: usize);
    /// The evaluation after step `step` gave `value`.
    fn on_eval(&mut self, _step: usize, _value: f64) {}
    /// A checkpoint of step `step` was written to `path`.
    fn on_checkpoint(&mut self, _step: usize, _path: &Path) {}
    /// The run ended (finished, or stopped by the stop flag).
    fn on_finish(&mut self, _outcome: &RunOutcome) {}
}

/// The width of the bar in characters.
const BAR: usize = 20;

/// A text reporter over any writer (see the module documentation).
#[derive(Debug)]
pub struct TextProgress<W: Write> {
    out: W,
    terminal: bool,
    every: usize,
    /// The step the run started at (for the ETA, which counts only the steps of this run).
    start: usize,
    /// A bar is drawn on the current terminal line (it must be ended before another line is printed).
    open: bool,
    last_eval: Option<f64>,
}

impl TextProgress<Stderr> {
    /// A reporter on stderr: a redrawn bar when stderr is a terminal, otherwise a line every `every` steps
    /// (and for the first and last step).
    pub fn stderr(every: usize) -> Self {
        let err = std::io::stderr();
        let terminal = err.is_terminal();
        TextProgress::new(err, terminal, every)
    }
}

impl<W: Write> TextProgress<W> {
    /// A reporter writing to `out`; `terminal` chooses the redrawn bar, `every` the line cadence otherwise
    /// (0 is taken as 1).
    pub fn new(out: W, terminal: bool, every: usize) -> Self {
        TextProgress {
            out,
            terminal,
            every: every.max(1),
            start: 0,
            open: false,
            last_eval: None,
        }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Ends a bar drawn on the current line, so that the next text starts on a fresh line.
    fn close_bar(&mut self) {
        if self.open {
            let _ = writeln!(self.out);
            self.open = false;
        }
    }

    /// Prints one full line (after ending any open bar). Progress output is best effort: a closed stderr
    /// must not stop training, so write errors are ignored.
    fn line(&mut self, text: &str) {
        self.close_bar();
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }
}

impl<W: Write> Progress for TextProgress<W> {
    fn on_start(&mut self, step: usize, total: usize) {
        self.start = step;
        if step > 0 {
            self.line(&format!("resuming at step {step}/{total}"));
        }
    }

    fn on_step(&mut self, m: &StepMetrics, total: usize) {
        let done = m.step.saturating_sub(self.start);
        let eta = match m.elapsed_s {
            Some(e) if done > 0 => Some(e / done as f64 * total.saturating_sub(m.step) as f64),
            _ => None,
        };
        let text = render_line(m, total, eta, self.last_eval);
        if self.terminal {
            // `\x1b[K` clears what a longer previous line left to the right.
            let _ = write!(self.out, "\r{text}\x1b[K");
            let _ = self.out.flush();
            self.open = true;
        } else if m.step == self.start + 1 || m.step % self.every == 0 || m.step >= total {
            self.line(&text);
        }
    }

    fn on_eval(&mut self, step: usize, value: f64) {
        self.last_eval = Some(value);
        self.line(&format!("eval at step {step}: {value:.4}"));
    }

    fn on_checkpoint(&mut self, step: usize, path: &Path) {
        self.line(&format!("checkpoint at step {step}: {}", path.display()));
    }

    fn on_finish(&mut self, outcome: &RunOutcome) {
        let mut text = match &outcome.interrupted {
            Some(i) => format!(
                "stopped at step {} (checkpoint {})",
                i.step,
                i.checkpoint.display()
            ),
            None => format!("finished at step {}", outcome.step),
        };
        if let Some(l) = outcome.steps.last().and_then(|m| m.loss) {
            text.push_str(&format!(", loss {l:.4}"));
        }
        text.push_str(&format!(", {}", duration(outcome.elapsed_s)));
        if let Some(t) = outcome.tokens {
            if outcome.elapsed_s > 0.0 {
                text.push_str(&format!(
                    ", {} tok/s",
                    thousands((t as f64 / outcome.elapsed_s).round() as u64)
                ));
            }
        }
        self.line(&text);
        for w in &outcome.warnings {
            self.line(&format!("warning: {w}"));
        }
    }
}

/// A reporter that says nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn on_step(&mut self, _m: &StepMetrics, _total: usize) {}
}

/// The bar line of one step: `step 12/60 [####......] loss 1.234 lr 2e-4 1,234 tok/s peak 1.2 GiB eta 3m10s`
/// (fields the metrics lack are left out; `eval` is the latest evaluation, shown when there is one).
pub fn render_line(m: &StepMetrics, total: usize, eta_s: Option<f64>, eval: Option<f64>) -> String {
    let filled = (m.step.min(total) * BAR).checked_div(total).unwrap_or(BAR);
    let mut s = format!(
        "step {}/{} [{}{}]",
        m.step,
        total,
        "#".repeat(filled),
        ".".repeat(BAR - filled)
    );
    if let Some(l) = m.loss {
        s.push_str(&format!(" loss {l:.4}"));
    }
    if let Some(r) = &m.skipped {
        s.push_str(&format!(" skipped ({r})"));
    }
    if let Some(v) = eval {
        s.push_str(&format!(" eval {v:.4}"));
    }
    if let Some(lr) = m.lr {
        s.push_str(&format!(" lr {}", short_float(lr)));
    }
    if let Some(t) = m.tokens_per_s {
        s.push_str(&format!(" {} tok/s", thousands(t.round().max(0.0) as u64)));
    }
    if let Some(p) = m.peak_mem_bytes {
        s.push_str(&format!(" peak {}", bytes(p)));
    }
    if let Some(e) = eta_s {
        s.push_str(&format!(" eta {}", duration(e)));
    }
    s
}

/// `x` in scientific form with at most three significant digits and no trailing zeros: `2e-4`, `1.5e-3`.
pub fn short_float(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let s = format!("{x:.2e}");
    match s.split_once('e') {
        Some((mant, exp)) => {
            let mant = mant.trim_end_matches('0').trim_end_matches('.');
            format!("{mant}e{exp}")
        }
        None => s,
    }
}

/// `n` with commas between thousands: `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte count in binary units with one decimal: `512 B`, `1.5 KiB`, `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Seconds as `45s`, `3m10s` or `1h02m`.
pub fn duration(secs: f64) -> String {
    let s = if secs.is_finite() {
        secs.max(0.0).round() as u64
    } else {
        0
    };
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1_288_490_189), "1.2 GiB");
        assert_eq!(duration(45.2), "45s");
        assert_eq!(duration(190.0), "3m10s");
        assert_eq!(duration(3720.0), "1h02m");
        assert_eq!(short_float(2e-4), "2e-4");
        assert_eq!(short_float(1.5e-3), "1.5e-3");
        assert_eq!(short_float(0.0), "0");
    }

    #[test]
    fn the_bar_line_has_every_field() {
        let m = StepMetrics {
            step: 12,
            loss: Some(1.23456),
            lr: Some(2e-4),
            tokens_per_s: Some(1234.4),
            peak_mem_bytes: Some(1_288_490_189),
            ..StepMetrics::default()
        };
        assert_eq!(
            render_line(&m, 60, Some(190.0), None),
            "step 12/60 [####................] loss 1.2346 lr 2e-4 1,234 tok/s peak 1.2 GiB eta 3m10s"
        );
    }

    #[test]
    fn plain_output_prints_every_n_steps_and_the_terminal_redraws() {
        let steps: Vec<StepMetrics> = (1..=7)
            .map(|s| StepMetrics {
                step: s,
                loss: Some(1.0 / s as f64),
                elapsed_s: Some(s as f64),
                ..StepMetrics::default()
            })
            .collect();
        let mut plain = TextProgress::new(Vec::new(), false, 3);
        plain.on_start(0, 7);
        for m in &steps {
            plain.on_step(m, 7);
        }
        plain.on_eval(7, 0.5);
        let text = String::from_utf8(plain.into_inner()).unwrap();
        let firsts: Vec<&str> = text
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap_or(""))
            .collect();
        assert_eq!(firsts, ["1/7", "3/7", "6/7", "7/7", "at"], "{text}");
        assert!(!text.contains('\r'));

        let mut tty = TextProgress::new(Vec::new(), true, 3);
        for m in &steps[..2] {
            tty.on_step(m, 7);
        }
        tty.on_eval(2, 0.5);
        let text = String::from_utf8(tty.into_inner()).unwrap();
        assert_eq!(text.matches('\r').count(), 2, "{text:?}");
        // The eval line starts on a fresh line after the bar.
        assert!(text.contains("\x1b[K\neval at step 2"), "{text:?}");
    }
}
