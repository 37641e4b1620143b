//! The loss curve: an SVG of the training loss per step (one line) with the evaluation values as dots, drawn
//! from metrics lines with `plotters` (SVG backend only, so no fonts or image libraries are needed; the
//! viewer renders the text).
//!
//! A metrics file of a resumed run can hold two lines for the same step (one from the run that was killed
//! after its last checkpoint, one from the resumed run); the later line wins, so the curve has one point per
//! step.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use super::metrics::{read_metrics, StepMetrics};
use crate::{Error, Result};

/// The loss curve's file name in the output folder.
pub const PLOT_FILE: &str = "loss.svg";

/// The colour of the training-loss line (`#1F77B4` in the SVG), which tells it apart from the axes and ticks.
pub const TRAIN_RGB: (u8, u8, u8) = (31, 119, 180);
/// The colour of the evaluation dots.
pub const EVAL_RGB: (u8, u8, u8) = (255, 127, 14);

/// The image size in pixels.
const SIZE: (u32, u32) = (900, 500);

/// Draws the metrics file `metrics` to the SVG file `out`. A file without training lines is
/// [`Error::EmptyMetrics`].
pub fn plot_metrics_file(metrics: &Path, out: &Path) -> Result<()> {
    let lines = read_metrics(metrics)?;
    let svg = render_svg(&lines).map_err(|e| match e {
        Error::EmptyMetrics { .. } => Error::EmptyMetrics {
            path: metrics.to_path_buf(),
        },
        other => other,
    })?;
    write(out, &svg)
}

/// Draws `lines` (training and evaluation metrics) to the SVG file `out`.
pub fn plot_loss(lines: &[StepMetrics], out: &Path) -> Result<()> {
    let svg = render_svg(lines).map_err(|e| match e {
        Error::EmptyMetrics { .. } => Error::EmptyMetrics {
            path: out.to_path_buf(),
        },
        other => other,
    })?;
    write(out, &svg)
}

fn write(out: &Path, svg: &str) -> Result<()> {
    std::fs::write(out, svg).map_err(|e| Error::Io {
        path: out.to_path_buf(),
        source: e,
    })
}

/// The last finite value of each step, in step order.
fn by_step(lines: &[StepMetrics], value: impl Fn(&StepMetrics) -> Option<f64>) -> Vec<(f64, f64)> {
    let mut m = BTreeMap::new();
    for l in lines {
        if let Some(v) = value(l).filter(|v| v.is_finite()) {
            m.insert(l.step, v);
        }
    }
    m.into_iter().map(|(s, v)| (s as f64, v)).collect()
}

/// A range around `lo..hi` with a margin, never empty.
fn padded(lo: f64, hi: f64, margin: f64) -> std::ops::Range<f64> {
    if hi > lo {
        let pad = (hi - lo) * margin;
        (lo - pad)..(hi + pad)
    } else {
        let pad = lo.abs().max(1.0) * 0.1;
        (lo - pad)..(hi + pad)
    }
}

/// The SVG text of the loss curve (see the module documentation).
pub fn render_svg(lines: &[StepMetrics]) -> Result<String> {
    let train = by_step(lines, |l| l.loss);
    let eval = by_step(lines, |l| l.eval_loss);
    if train.is_empty() {
        return Err(Error::EmptyMetrics {
            path: Default::default(),
        });
    }
    let plot_err = |e: String| Error::Plot {
        path: PLOT_FILE.into(),
        message: e,
    };
    let (x_lo, x_hi) = (train[0].0.min(1.0), train[train.len() - 1].0);
    let ys = train.iter().chain(&eval).map(|p| p.1);
    let (y_lo, y_hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Training loss", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(padded(x_lo, x_hi, 0.0), padded(y_lo, y_hi, 0.05))
            .map_err(|e| plot_err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 12))
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .draw()
            .map_err(|e| plot_err(e.to_string()))?;
        let blue = RGBColor(TRAIN_RGB.0, TRAIN_RGB.1, TRAIN_RGB.2);
        let orange = RGBColor(EVAL_RGB.0, EVAL_RGB.1, EVAL_RGB.2);
        chart
            .draw_series(LineSeries::new(train.iter().copied(), blue.stroke_width(2)))
            .map_err(|e| plot_err(e.to_string()))?
            .label("train loss")
            .legend(move |(x, y)| Rectangle::new([(x, y - 1), (x + 16, y + 1)], blue.filled()));
        if !eval.is_empty() {
            chart
                .draw_series(eval.iter().map(|&p| Circle::new(p, 4, orange.filled())))
                .map_err(|e| plot_err(e.to_string()))?
                .label("eval loss")
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, orange.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    Ok(svg)
}
