//! The trainer core: [`Trainer`] runs a [`PeftModel`]-wrapped model through optimizer steps with a
//! caller-supplied loss closure — AdamW on the adapter parameters with a warmup-cosine schedule, gradient
//! accumulation, global-norm clipping, the adapter's regularization loss and per-step hook, JSONL metrics,
//! atomic checkpoints and bit-identical resume (see [`checkpoint`]).
//!
//! Data: the trainer does not own a data set. It asks the caller for micro-batch `position` (0, 1, 2, … over
//! the whole run; the caller maps it onto epochs and a `Loader`'s batches), and the position is what a
//! checkpoint stores, so a resumed run asks for exactly the batches the straight run would have.
//!
//! Randomness: each micro-batch gets its own generator, `Rng::new` of the run seed mixed with the position, so
//! the random state at any point is a function of (seed, position) and a checkpoint needs nothing more to
//! restore it. The adapters' own generators (e.g. LoRA dropout masks drawn inside `PeftModel`) are not part of
//! that state: a run with adapter dropout resumes correctly but not bit for bit.
//!
//! Not done yet: Ctrl-C handling (a kill between checkpoints loses the steps since the last one, never the
//! checkpoint itself), and evaluation runs only through the caller's closure.

pub mod checkpoint;
mod config;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use rankfold_adapters::PeftModel;
use rankfold_tensor::nn::LinearModel;
use rankfold_tensor::optim::{
    clip_grad_norm, grad_norm, AdamW, AdamWConfig, LrSchedule, Optimizer,
};
use rankfold_tensor::{GradStore, Rng, Tensor};
use serde::{Deserialize, Serialize};

pub use checkpoint::{latest_checkpoint, TrainerState};
pub use config::TrainConfig;

use crate::{Error, Result};

/// The evaluation closure of [`Trainer::run`]: a value (e.g. a held-out loss) for the model as it stands.
pub type EvalFn<'a, M> = &'a mut dyn FnMut(&mut PeftModel<M>) -> Result<f64>;

/// The metrics file in the output folder: one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of the metrics file: a training step (`eval_loss` absent) or an evaluation (`loss` absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// The generator of micro-batch `position` in a run seeded `seed`.
pub fn batch_rng(seed: u64, position: u64) -> Rng {
    // An odd constant spreads consecutive positions; Rng::new scrambles the result through SplitMix64.
    Rng::new(seed ^ position.wrapping_add(1).wrapping_mul(0x9E6C_63D0_676A_9A99))
}

/// Trains the active adapter of a [`PeftModel`] (see the module documentation).
pub struct Trainer<M: LinearModel> {
    config: TrainConfig,
    model: PeftModel<M>,
    optimizer: AdamW,
    params: Vec<(String, Tensor)>,
    schedule: LrSchedule,
    step: usize,
    position: u64,
    metrics: File,
}

impl<M: LinearModel> std::fmt::Debug for Trainer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("step", &self.step)
            .field("position", &self.position)
            .finish()
    }
}

impl<M: LinearModel> Trainer<M> {
    /// A trainer at step 0 for `model`, whose adapter `config.adapter` must exist and have trainable tensors.
    pub fn new(config: TrainConfig, mut model: PeftModel<M>) -> Result<Self> {
        config.validate()?;
        if !model.adapter_names().contains(&config.adapter) {
            return Err(Error::Config(format!(
                "train config `adapter`: the model has no adapter `{}`",
                config.adapter
            )));
        }
        model.set_active(&config.adapter)?;
        model.set_training(true)?;
        let params = model.parameters();
        if params.is_empty() {
            return Err(Error::Config(format!(
                "adapter `{}` has no trainable tensors",
                config.adapter
            )));
        }
        let adamw = AdamWConfig {
            lr: config.lr,
            weight_decay: config.weight_decay,
            ..AdamWConfig::default()
        };
        let optimizer = AdamW::new(params.clone(), adamw)?;
        let schedule = LrSchedule::WarmupCosine {
            warmup: config.warmup,
            total: config.steps,
            min_lr_ratio: config.min_lr_ratio,
        };
        std::fs::create_dir_all(&config.output_dir).map_err(|e| Error::Io {
            path: config.output_dir.clone(),
            source: e,
        })?;
        let path = config.output_dir.join(METRICS_FILE);
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
        Ok(Trainer {
            config,
            model,
            optimizer,
            params,
            schedule,
            step: 0,
            position: 0,
            metrics,
        })
    }

    /// Continues from the checkpoint folder `dir`: `model` is the base model (wrapped, without the adapter),
    /// into which the checkpoint's adapter is loaded; the optimizer state, step and data position are restored.
    /// `config` may change fields that do not affect the math already done (output folder, eval and
    /// checkpoint cadence); the step count and schedule come from `config` too.
    pub fn resume(config: TrainConfig, mut model: PeftModel<M>, dir: &Path) -> Result<Self> {
        let state = TrainerState::read(dir)?;
        model.load(dir.join(checkpoint::ADAPTER_DIR), &config.adapter)?;
        let mut t = Trainer::new(config, model)?;
        if state.step > t.config.steps {
            return Err(Error::Config(format!(
                "{}: checkpoint step {} is past the configured steps {}",
                dir.display(),
                state.step,
                t.config.steps
            )));
        }
        t.optimizer
            .load_state(&dir.join(checkpoint::OPTIMIZER_FILE))?;
        t.step = state.step;
        t.position = state.position;
        if state.seed != t.config.seed {
            return Err(Error::Config(format!(
                "{}: checkpoint seed {} differs from the configured seed {}",
                dir.display(),
                state.seed,
                t.config.seed
            )));
        }
        Ok(t)
    }

    /// The wrapped model.
    pub fn model(&mut self) -> &mut PeftModel<M> {
        &mut self.model
    }

    /// Hands the model back.
    pub fn into_model(self) -> PeftModel<M> {
        self.model
    }

    /// Optimizer steps done.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The next micro-batch position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Runs optimizer steps until `until` steps are done (at most `config.steps`) and returns the training
    /// metrics of the steps it ran. `batch(position)` gives a micro-batch; `loss(model, batch, rng)` its scalar
    /// loss; `eval(model)`, when given, runs every `eval_every` steps.
    pub fn run_until<B>(
        &mut self,
        until: usize,
        mut batch: impl FnMut(u64) -> Result<B>,
        mut loss: impl FnMut(&mut PeftModel<M>, &B, &mut Rng) -> Result<Tensor>,
        mut eval: Option<EvalFn<'_, M>>,
    ) -> Result<Vec<StepMetrics>> {
        let mut out = Vec::new();
        while self.step < until.min(self.config.steps) {
            let m = self.train_step(&mut batch, &mut loss)?;
            self.write_metrics(&m)?;
            out.push(m);
            if self.config.eval_every > 0 && self.step % self.config.eval_every == 0 {
                if let Some(f) = eval.as_mut() {
                    self.model.set_training(false)?;
                    let v = f(&mut self.model);
                    self.model.set_training(true)?;
                    let m = StepMetrics {
                        step: self.step,
                        loss: None,
                        lr: None,
                        grad_norm: None,
                        eval_loss: Some(v?),
                    };
                    self.write_metrics(&m)?;
                }
            }
            if self.config.checkpoint_every > 0 && self.step % self.config.checkpoint_every == 0 {
                self.save_checkpoint()?;
            }
        }
        Ok(out)
    }

    /// [`Trainer::run_until`] the configured step count.
    pub fn run<B>(
        &mut self,
        batch: impl FnMut(u64) -> Result<B>,
        loss: impl FnMut(&mut PeftModel<M>, &B, &mut Rng) -> Result<Tensor>,
        eval: Option<EvalFn<'_, M>>,
    ) -> Result<Vec<StepMetrics>> {
        self.run_until(self.config.steps, batch, loss, eval)
    }

    /// One optimizer step over `grad_accum` micro-batches.
    fn train_step<B>(
        &mut self,
        batch: &mut impl FnMut(u64) -> Result<B>,
        loss: &mut impl FnMut(&mut PeftModel<M>, &B, &mut Rng) -> Result<Tensor>,
    ) -> Result<StepMetrics> {
        let lr = self.schedule.lr_at(self.step, self.config.lr);
        self.optimizer.set_learning_rate(lr);
        let n = self.config.grad_accum;
        let mut grads = GradStore::new();
        let mut total = 0.0;
        for _ in 0..n {
            let b = batch(self.position)?;
            let mut rng = batch_rng(self.config.seed, self.position);
            let mut l = loss(&mut self.model, &b, &mut rng)?;
            if let Some(r) = self.model.regularization_loss()? {
                l = l.add(&r)?;
            }
            let v = l.to_scalar()?;
            if !v.is_finite() {
                return Err(Error::Config(format!(
                    "step {}: the loss of micro-batch {} is {v}",
                    self.step + 1,
                    self.position
                )));
            }
            total += v;
            l.affine(1.0 / n as f64, 0.0)?.backward_into(&mut grads)?;
            self.position += 1;
        }
        let norm = match self.config.clip_norm {
            Some(c) => clip_grad_norm(&mut grads, &self.params, c)?,
            None => grad_norm(&grads, &self.params)?,
        };
        self.optimizer.step(&grads)?;
        self.model.on_step(self.step, &grads)?;
        self.step += 1;
        Ok(StepMetrics {
            step: self.step,
            loss: Some(total / n as f64),
            lr: Some(lr),
            grad_norm: Some(norm),
            eval_loss: None,
        })
    }

    fn write_metrics(&mut self, m: &StepMetrics) -> Result<()> {
        let path = self.config.output_dir.join(METRICS_FILE);
        let line = serde_json::to_string(m).map_err(|e| {
            Error::Config(format!("{}: cannot encode metrics: {e}", path.display()))
        })?;
        writeln!(self.metrics, "{line}").map_err(|e| Error::Io { path, source: e })
    }

    /// Writes `checkpoint-<step>` under the output folder (atomically; see [`checkpoint`]) and returns its path.
    pub fn save_checkpoint(&mut self) -> Result<std::path::PathBuf> {
        let state = TrainerState {
            step: self.step,
            position: self.position,
            seed: self.config.seed,
            config: self.config.clone(),
        };
        let (model, optimizer) = (&mut self.model, &self.optimizer);
        let adapter = self.config.adapter.clone();
        checkpoint::write(&self.config.output_dir, &state, |tmp| {
            model.save_pretrained(tmp.join(checkpoint::ADAPTER_DIR), &adapter)?;
            optimizer.save_state(&tmp.join(checkpoint::OPTIMIZER_FILE))?;
            Ok(())
        })
    }
}
