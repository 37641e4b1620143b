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
    /// The optimizer (Hugging Face Trainer's names; `adamw_torch` when absent).
    #[serde(default)]
    pub optim: OptimName,
    /// A step whose loss or gradient norm is not finite is skipped (the optimizer does not step; its metrics
    /// line says why); after more than this many such steps in a row the run writes a checkpoint and stops
    /// with [`crate::Error::Diverged`] (default 3).
    #[serde(default = "three")]
    pub max_bad_steps: usize,
}

fn three() -> usize {
    3
}

/// The optimizers a run can use, by Hugging Face Trainer's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OptimName {
    /// PyTorch's AdamW: f32 moments (8 bytes of state per parameter).
    #[default]
    #[serde(rename = "adamw_torch")]
    AdamwTorch,
    /// bitsandbytes' AdamW8bit: 8-bit blockwise moments (about 2 bytes per parameter).
    #[serde(rename = "adamw_8bit")]
    Adamw8bit,
    /// bitsandbytes' paged 32-bit AdamW. On the CPU the state already lives in host memory, so this is
    /// `adamw_torch`'s state layout with bitsandbytes' update (its 32-bit path).
    #[serde(rename = "paged_adamw_32bit")]
    PagedAdamw32bit,
    /// bitsandbytes' paged AdamW8bit. On the CPU the same as `adamw_8bit`.
    #[serde(rename = "paged_adamw_8bit")]
    PagedAdamw8bit,
}

impl OptimName {
    /// Every name, in the order above.
    pub const ALL: [OptimName; 4] =
        [OptimName::AdamwTorch, OptimName::Adamw8bit, OptimName::PagedAdamw32bit, OptimName::PagedAdamw8bit];

    /// The name as recipes and flags write it.
    pub fn as_str(self) -> &'static str {
        match self {
            OptimName::AdamwTorch => "adamw_torch",
            OptimName::Adamw8bit => "adamw_8bit",
            OptimName::PagedAdamw32bit => "paged_adamw_32bit",
            OptimName::PagedAdamw8bit => "paged_adamw_8bit",
        }
    }
}

impl std::fmt::Display for OptimName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OptimName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        OptimName::ALL.into_iter().find(|o| o.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = OptimName::ALL.iter().map(|o| o.as_str()).collect();
            Error::Config(format!("unknown optimizer `{s}`; one of {}", names.join(", ")))
        })
    }
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
            optim: OptimName::default(),
            max_bad_steps: three(),
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
