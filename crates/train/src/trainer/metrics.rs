//! What a run records: [`StepMetrics`] (one line of `metrics.jsonl` per training step or evaluation),
//! [`StepLoss`] (a micro-batch's loss with its token count, for throughput), and [`read_metrics`], which reads
//! a metrics file back (for the loss plot and for tools).
//!
//! The throughput fields (`tokens`, `tokens_per_s`, `elapsed_s`, `peak_mem_bytes`) are optional, so files
//! written before they existed still parse. Wall time is only ever recorded here: nothing the trainer computes
//! or a checkpoint stores depends on it, so resumed runs stay bit-identical.

use std::path::Path;

use rankfold_tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The metrics file in the output folder: one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of the metrics file: a training step (`eval_loss` absent) or an evaluation (`loss` absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StepMetrics {
    /// Optimizer steps done when the line was written (1-based for training lines).
    pub step: usize,
    /// The mean loss over the step's micro-batches (regularization included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// The learning rate the step used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// The global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// The evaluation closure's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// The tokens of the step's micro-batches (present when the loss closure reports them for every
    /// micro-batch, see [`StepLoss`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// `tokens` divided by the step's wall time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Wall seconds since the current `run`/`run_until` call started, at the end of this step (a resumed run
    /// starts again from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    /// The process-wide peak of tensor storage on the model's device so far, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_mem_bytes: Option<u64>,
    /// Why the step was skipped (a non-finite loss or gradient norm); such a line has no loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl StepMetrics {
    /// Whether this is a training line (it has a loss, or says why its step was skipped).
    pub fn is_train(&self) -> bool {
        self.loss.is_some() || self.skipped.is_some()
    }
}

/// What the loss closure returns for one micro-batch: the scalar loss and, optionally, how many tokens the
/// micro-batch held (for `tokens` and `tokens_per_s` in the metrics). A bare [`Tensor`] converts into a
/// `StepLoss` without a token count, so closures that return the loss alone keep working.
#[derive(Debug, Clone)]
pub struct StepLoss {
    /// The scalar loss to minimize.
    pub loss: Tensor,
    /// The micro-batch's token count (for a language model: the non-padding tokens the forward pass saw).
    pub tokens: Option<u64>,
}

impl StepLoss {
    /// A loss with its micro-batch's token count.
    pub fn new(loss: Tensor, tokens: u64) -> Self {
        StepLoss {
            loss,
            tokens: Some(tokens),
        }
    }
}

impl From<Tensor> for StepLoss {
    fn from(loss: Tensor) -> Self {
        StepLoss { loss, tokens: None }
    }
}

/// Removes the lines of steps after `step` from the metrics file at `path` (absent: nothing to do), writing the
/// kept lines to a temporary file that replaces it, so a crash leaves the old file or the new one. Lines without
/// a step, or that are not JSON, are kept as they are.
pub(crate) fn truncate_after(path: &Path, step: usize) -> Result<()> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let later = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
            .is_some_and(|s| s > step as u64)
    };
    if !text.lines().any(later) {
        return Ok(());
    }
    let kept: String = text.lines().filter(|l| !later(l)).map(|l| format!("{l}\n")).collect();
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a metrics file written by the trainer. Blank lines are skipped; a line that is not a metrics object
/// is an [`Error::Json`] naming the file and line.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m = serde_json::from_str(line).map_err(|e| Error::Json {
            source_name: path.display().to_string(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_lines_parse_and_new_fields_round_trip() {
        let old: StepMetrics =
            serde_json::from_str(r#"{"step":3,"loss":1.5,"lr":0.001,"grad_norm":2.0}"#).unwrap();
        assert_eq!(old.tokens, None);
        assert_eq!(old.peak_mem_bytes, None);
        let new = StepMetrics {
            step: 4,
            loss: Some(1.25),
            tokens: Some(1234),
            tokens_per_s: Some(617.5),
            elapsed_s: Some(2.0),
            peak_mem_bytes: Some(1 << 30),
            ..StepMetrics::default()
        };
        let line = serde_json::to_string(&new).unwrap();
        assert!(!line.contains("eval_loss"), "{line}");
        assert_eq!(serde_json::from_str::<StepMetrics>(&line).unwrap(), new);
    }
}
