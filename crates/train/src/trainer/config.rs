//! [`TrainConfig`]: the trainer's settings (serde, so a run's settings can live in a JSON file and in every
//! checkpoint).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a training run does: how many optimizer steps, the AdamW and schedule hyperparameters, how batches are
/// accumulated and clipped, and when it evaluates and checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps of the whole run (also the `total` of the cosine schedule).
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps from 0 to `lr`.
    #[serde(default)]
    pub warmup: usize,
    /// The cosine decays to `min_lr_ratio`·lr (0 gives Hugging Face's cosine schedule).
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// AdamW's decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Micro-batches whose gradients are summed (each loss scaled by 1/n) into one optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this value before each step (`None`: no clipping).
    #[serde(default)]
    pub clip_norm: Option<f64>,
    /// Evaluate after every this many steps (0: never).
    #[serde(default)]
    pub eval_every: usize,
    /// Write a checkpoint after every this many steps (0: never).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// The seed of the per-micro-batch generators handed to the loss closure.
    #[serde(default)]
    pub seed: u64,
    /// Where metrics (`metrics.jsonl`) and checkpoints (`checkpoint-<step>/`) go.
    pub output_dir: PathBuf,
    /// The adapter that is trained and saved.
    #[serde(default = "default_adapter")]
    pub adapter: String,
}

fn one() -> usize {
    1
}

fn default_adapter() -> String {
    "default".into()
}

impl TrainConfig {
    /// A config with the defaults above for everything but the step count, rate and output folder.
    pub fn new(steps: usize, lr: f64, output_dir: impl Into<PathBuf>) -> Self {
        TrainConfig {
            steps,
            lr,
            warmup: 0,
            min_lr_ratio: 0.0,
            weight_decay: 0.0,
            grad_accum: 1,
            clip_norm: None,
            eval_every: 0,
            checkpoint_every: 0,
            seed: 0,
            output_dir: output_dir.into(),
            adapter: default_adapter(),
        }
    }

    /// Checks the settings that would make a run meaningless, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, what: String| {
            Err(Error::Config(format!("train config `{field}` {what}")))
        };
        if self.steps == 0 {
            return bad("steps", "must be > 0".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be > 0".into());
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(
                "lr",
                format!("= {} must be finite and non-negative", self.lr),
            );
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(
                "min_lr_ratio",
                format!("= {} must be in [0, 1]", self.min_lr_ratio),
            );
        }
        if let Some(c) = self.clip_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad("clip_norm", format!("= {c} must be finite and > 0"));
            }
        }
        if self.warmup > self.steps {
            return bad(
                "warmup",
                format!("= {} exceeds steps = {}", self.warmup, self.steps),
            );
        }
        Ok(())
    }
}
