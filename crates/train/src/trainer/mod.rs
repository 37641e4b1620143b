//! The trainer core: [`Trainer`] runs a [`PeftModel`]-wrapped model through optimizer steps with a
//! caller-supplied loss closure — AdamW (f32 or bitsandbytes' 8-bit state, [`OptimName`]) on the adapter
//! parameters with a warmup-cosine schedule, gradient
//! accumulation, global-norm clipping, the adapter's regularization loss and per-step hook (AdaLoRA's rank
//! allocator runs there without the caller doing anything), evaluation every N steps through the caller's
//! closure, JSONL metrics with throughput and peak memory ([`metrics`]), a progress reporter ([`progress`]),
//! durable atomic checkpoints and bit-identical resume ([`checkpoint`]), a stop flag for Ctrl-C, and a
//! loss-curve SVG at the end ([`plot`]).
//!
//! Data: the trainer does not own a data set. It asks the caller for micro-batch `position` (0, 1, 2, … over
//! the whole run; the caller maps it onto epochs and a `Loader`'s batches), and the position is what a
//! checkpoint stores, so a resumed run asks for exactly the batches the straight run would have.
//!
//! Randomness: each micro-batch gets its own generator, `Rng::new` of the run seed mixed with the position, so
//! the random state at any point is a function of (seed, position) and a checkpoint needs nothing more to
//! restore it. The adapters' own generators (the LoRA and AdaLoRA dropout masks drawn inside `PeftModel`) are
//! saved in the checkpoint ([`TrainerState::dropout_rng`]) and rewound with a step that is cut short, so a run
//! with adapter dropout resumes bit for bit too. State an adapter method keeps across steps (AdaLoRA's
//! importance averages and rank masks) is saved in the checkpoint and restored.
//!
//! Stopping: the library installs no signal handler. The caller hands the trainer an `Arc<AtomicBool>`
//! ([`Trainer::with_stop_flag`]) and sets it (the `rankfold` binary does so from its Ctrl-C handler). The flag
//! is checked before every optimizer step and between the micro-batches of a step; a step cut short is
//! dropped whole (its gradients discarded, the data position rewound to the step's first micro-batch), a
//! checkpoint of the last complete step is written, and the run returns normally with
//! [`RunOutcome::interrupted`] set. Resuming from that checkpoint gives the same losses bit for bit.
//!
//! Wall time appears only in the metrics and the progress line; nothing a resumed run compares depends on it.

pub mod checkpoint;
mod config;
pub mod integrity;
pub mod metrics;
pub mod plot;
pub mod progress;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rankfold_adapters::PeftModel;
use rankfold_tensor::nn::LinearModel;
use rankfold_tensor::optim::{
    clip_grad_norm, grad_norm, AdamW, AdamW8bit, AdamW8bitConfig, AdamWConfig, LrSchedule, Optimizer,
};
use rankfold_tensor::{Device, GradStore, Rng};

pub use checkpoint::{latest_checkpoint, TrainerState};
pub use config::{OptimName, TrainConfig};

/// The optimizer `name` over `params` with learning rate `lr` and decoupled weight decay `wd` (the other
/// hyperparameters at their defaults: β = (0.9, 0.999), ε = 1e-8).
fn make_optimizer(
    name: OptimName,
    params: Vec<(String, rankfold_tensor::Tensor)>,
    lr: f64,
    wd: f64,
) -> Result<Box<dyn Optimizer + Send>> {
    let eight = AdamW8bitConfig { lr, weight_decay: wd, ..AdamW8bitConfig::default() };
    Ok(match name {
        OptimName::AdamwTorch => {
            Box::new(AdamW::new(params, AdamWConfig { lr, weight_decay: wd, ..AdamWConfig::default() })?)
        }
        OptimName::Adamw8bit | OptimName::PagedAdamw8bit => Box::new(AdamW8bit::new(params, eight)?),
        // bitsandbytes' 32-bit update for every tensor: the 8-bit threshold is never reached.
        OptimName::PagedAdamw32bit => {
            Box::new(AdamW8bit::new(params, AdamW8bitConfig { min_8bit_size: usize::MAX, ..eight })?)
        }
    })
}
pub use metrics::{read_metrics, StepLoss, StepMetrics, METRICS_FILE};
pub use plot::{plot_loss, plot_metrics_file, PLOT_FILE};
pub use progress::{NoProgress, Progress, TextProgress};

use crate::{Error, Result};

/// The evaluation closure of [`Trainer::run`]: a value (e.g. a held-out loss) for the model as it stands.
pub type EvalFn<'a, M> = &'a mut dyn FnMut(&mut PeftModel<M>) -> Result<f64>;

/// The generator of micro-batch `position` in a run seeded `seed`.
pub fn batch_rng(seed: u64, position: u64) -> Rng {
    // An odd constant spreads consecutive positions; Rng::new scrambles the result through SplitMix64.
    Rng::new(seed ^ position.wrapping_add(1).wrapping_mul(0x9E6C_63D0_676A_9A99))
}

/// Where a run stopped early because its stop flag was set.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    /// Optimizer steps complete (a step cut short between micro-batches is not counted).
    pub step: usize,
    /// The next micro-batch position.
    pub position: u64,
    /// The checkpoint of `step` to resume from.
    pub checkpoint: PathBuf,
}

/// What one [`Trainer::run`] / [`Trainer::run_until`] call did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunOutcome {
    /// The training metrics of the steps this call ran, in order.
    pub steps: Vec<StepMetrics>,
    /// The evaluations this call ran: (step, value).
    pub evals: Vec<(usize, f64)>,
    /// Optimizer steps done when the call returned.
    pub step: usize,
    /// Set when the stop flag ended the call before `until`.
    pub interrupted: Option<Interrupted>,
    /// The newest checkpoint this call wrote, if any.
    pub checkpoint: Option<PathBuf>,
    /// The loss-curve SVG, written when the run reached its configured step count or was stopped.
    pub plot: Option<PathBuf>,
    /// Problems that did not stop training (e.g. the plot could not be written), one sentence each.
    pub warnings: Vec<String>,
    /// Wall seconds the call took.
    pub elapsed_s: f64,
    /// The tokens of the call's micro-batches, when the loss closure reported them all.
    pub tokens: Option<u64>,
}

impl RunOutcome {
    /// Whether the stop flag ended the run early.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.is_some()
    }
}

/// Trains the active adapter of a [`PeftModel`] (see the module documentation).
pub struct Trainer<M: LinearModel> {
    config: TrainConfig,
    model: PeftModel<M>,
    optimizer: Box<dyn Optimizer + Send>,
    params: Vec<(String, rankfold_tensor::Tensor)>,
    schedule: LrSchedule,
    step: usize,
    position: u64,
    metrics: File,
    device: Device,
    stop: Option<Arc<AtomicBool>>,
    progress: Option<Box<dyn Progress>>,
    /// The step and path of the newest checkpoint this trainer wrote or resumed from.
    last_checkpoint: Option<(usize, PathBuf)>,
    /// Skipped steps (non-finite loss or gradient norm) in a row.
    bad_in_row: usize,
}

impl<M: LinearModel> std::fmt::Debug for Trainer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("step", &self.step)
            .field("position", &self.position)
            .field("last_checkpoint", &self.last_checkpoint)
            .finish()
    }
}

/// How one optimizer step ended.
enum StepEnd {
    Done(StepMetrics),
    /// The stop flag was seen between micro-batches; the partial step was dropped.
    Stopped,
}

impl<M: LinearModel> Trainer<M> {
    /// A trainer at step 0 for `model`, whose adapter `config.adapter` must exist and have trainable tensors.
    /// The output folder must not hold an earlier run's checkpoints or metrics (they are never overwritten
    /// silently: resume from them with [`Trainer::resume`] or choose another folder).
    pub fn new(config: TrainConfig, model: PeftModel<M>) -> Result<Self> {
        config.validate()?;
        if let Some(c) = latest_checkpoint(&config.output_dir)? {
            return Err(Error::Config(format!(
                "output folder {} already holds {} from an earlier run: resume from it or choose another folder",
                config.output_dir.display(),
                c.display()
            )));
        }
        let metrics = config.output_dir.join(METRICS_FILE);
        if std::fs::metadata(&metrics).is_ok_and(|m| m.len() > 0) {
            return Err(Error::Config(format!(
                "{} already holds an earlier run's metrics: choose another output folder",
                metrics.display()
            )));
        }
        Self::build(config, model)
    }

    fn build(config: TrainConfig, mut model: PeftModel<M>) -> Result<Self> {
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
        let Some(device) = params.first().map(|(_, t)| t.device()) else {
            return Err(Error::Config(format!(
                "adapter `{}` has no trainable tensors",
                config.adapter
            )));
        };
        let optimizer = make_optimizer(config.optim, params.clone(), config.lr, config.weight_decay)?;
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
            device,
            stop: None,
            progress: None,
            bad_in_row: 0,
            last_checkpoint: None,
        })
    }

    /// Continues from the checkpoint folder `dir`: `model` is the base model (wrapped, without the adapter),
    /// into which the checkpoint's adapter is loaded (with the method's saved state, e.g. AdaLoRA's allocator);
    /// the optimizer state, step and data position are restored. `config` may change fields that do not
    /// affect the math already done (output folder, eval and checkpoint cadence); the step count and schedule
    /// come from `config` too. New metrics lines are appended to the output folder's metrics file, after the
    /// lines of steps past the checkpoint are removed from it (a run killed after its last checkpoint logged
    /// steps that the resumed run repeats), so every step appears once.
    pub fn resume(config: TrainConfig, mut model: PeftModel<M>, dir: &Path) -> Result<Self> {
        // The files are checked against the digests the state recorded before any of them is loaded.
        let state = integrity::verify(dir)?;
        if state.seed != config.seed {
            return Err(Error::Config(format!(
                "{}: checkpoint seed {} differs from the configured seed {}",
                dir.display(),
                state.seed,
                config.seed
            )));
        }
        checkpoint::load_adapter(dir, &mut model, &config.adapter, &state)?;
        metrics::truncate_after(&config.output_dir.join(METRICS_FILE), state.step)?;
        let mut t = Trainer::build(config, model)?;
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
        t.last_checkpoint = Some((state.step, dir.to_path_buf()));
        t.bad_in_row = state.bad_in_row;
        Ok(t)
    }

    /// Checks `flag` before every optimizer step and between micro-batches; when it is set, the run writes a
    /// checkpoint and returns with [`RunOutcome::interrupted`] (see the module documentation). The trainer
    /// only reads the flag; clearing it is the caller's business.
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    /// Reports steps, evaluations, checkpoints and the end of each run to `progress`.
    pub fn with_progress(mut self, progress: Box<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
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

    /// The newest checkpoint this trainer wrote or resumed from.
    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_ref().map(|(_, p)| p.as_path())
    }

    fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Runs optimizer steps until `until` steps are done (at most `config.steps`) or the stop flag is set.
    /// `batch(position)` gives a micro-batch; `loss(model, batch, rng)` its scalar loss, either as a bare
    /// tensor or as a [`StepLoss`] with the micro-batch's token count; `eval(model)`, when given, runs every
    /// `eval_every` steps. When the run reaches `config.steps` or is stopped, the loss curve is drawn to
    /// [`PLOT_FILE`] in the output folder.
    pub fn run_until<B, L: Into<StepLoss>>(
        &mut self,
        until: usize,
        mut batch: impl FnMut(u64) -> Result<B>,
        mut loss: impl FnMut(&mut PeftModel<M>, &B, &mut Rng) -> Result<L>,
        mut eval: Option<EvalFn<'_, M>>,
    ) -> Result<RunOutcome> {
        let started = Instant::now();
        let target = until.min(self.config.steps);
        let total = self.config.steps;
        if let Some(p) = self.progress.as_mut() {
            p.on_start(self.step, total);
        }
        let mut out = RunOutcome {
            tokens: Some(0),
            ..RunOutcome::default()
        };
        while self.step < target {
            if self.stop_requested() {
                out.interrupted = Some(self.interrupt(&mut out)?);
                break;
            }
            let m = match self.train_step(&mut batch, &mut loss, started)? {
                StepEnd::Done(m) => m,
                StepEnd::Stopped => {
                    out.interrupted = Some(self.interrupt(&mut out)?);
                    break;
                }
            };
            self.write_metrics(&m)?;
            out.tokens = out.tokens.zip(m.tokens).map(|(a, b)| a + b);
            if let Some(p) = self.progress.as_mut() {
                p.on_step(&m, total);
            }
            let skipped = m.skipped.clone();
            out.steps.push(m);
            match skipped {
                None => self.bad_in_row = 0,
                Some(reason) => {
                    self.bad_in_row += 1;
                    if self.bad_in_row > self.config.max_bad_steps {
                        let checkpoint = self.save_checkpoint()?;
                        return Err(Error::Diverged { count: self.bad_in_row, step: self.step, reason, checkpoint });
                    }
                }
            }
            if self.config.eval_every > 0 && self.step % self.config.eval_every == 0 {
                if let Some(f) = eval.as_mut() {
                    self.model.set_training(false)?;
                    let v = f(&mut self.model);
                    self.model.set_training(true)?;
                    // An evaluation cut short by the stop flag ends the run like a stop between steps.
                    if matches!(v, Err(Error::Interrupted { .. })) && self.stop_requested() {
                        out.interrupted = Some(self.interrupt(&mut out)?);
                        break;
                    }
                    let v = v?;
                    let m = StepMetrics {
                        step: self.step,
                        eval_loss: Some(v),
                        ..StepMetrics::default()
                    };
                    self.write_metrics(&m)?;
                    out.evals.push((self.step, v));
                    if let Some(p) = self.progress.as_mut() {
                        p.on_eval(self.step, v);
                    }
                }
            }
            if self.config.checkpoint_every > 0 && self.step % self.config.checkpoint_every == 0 {
                out.checkpoint = Some(self.save_checkpoint()?);
            }
        }
        if out.steps.is_empty() {
            out.tokens = None;
        }
        out.step = self.step;
        if self.step >= self.config.steps || out.interrupted.is_some() {
            let path = self.config.output_dir.join(PLOT_FILE);
            match plot_metrics_file(&self.config.output_dir.join(METRICS_FILE), &path) {
                Ok(()) => out.plot = Some(path),
                // A run stopped before its first step has no curve to draw.
                Err(Error::EmptyMetrics { .. }) => {}
                Err(e) => out
                    .warnings
                    .push(format!("the loss curve was not drawn: {e}")),
            }
        }
        out.elapsed_s = started.elapsed().as_secs_f64();
        if let Some(p) = self.progress.as_mut() {
            p.on_finish(&out);
        }
        Ok(out)
    }

    /// [`Trainer::run_until`] the configured step count.
    pub fn run<B, L: Into<StepLoss>>(
        &mut self,
        batch: impl FnMut(u64) -> Result<B>,
        loss: impl FnMut(&mut PeftModel<M>, &B, &mut Rng) -> Result<L>,
        eval: Option<EvalFn<'_, M>>,
    ) -> Result<RunOutcome> {
        self.run_until(self.config.steps, batch, loss, eval)
    }

    /// The checkpoint of the current step for a stopped run (the one already written at this step, if any).
    fn interrupt(&mut self, out: &mut RunOutcome) -> Result<Interrupted> {
        let checkpoint = match &self.last_checkpoint {
            Some((s, p)) if *s == self.step && p.starts_with(&self.config.output_dir) => p.clone(),
            _ => self.save_checkpoint()?,
        };
        out.checkpoint = Some(checkpoint.clone());
        Ok(Interrupted {
            step: self.step,
            position: self.position,
            checkpoint,
        })
    }

    /// One optimizer step over `grad_accum` micro-batches.
    fn train_step<B, L: Into<StepLoss>>(
        &mut self,
        batch: &mut impl FnMut(u64) -> Result<B>,
        loss: &mut impl FnMut(&mut PeftModel<M>, &B, &mut Rng) -> Result<L>,
        run_started: Instant,
    ) -> Result<StepEnd> {
        let t0 = Instant::now();
        let lr = self.schedule.lr_at(self.step, self.config.lr);
        let n = self.config.grad_accum;
        let first = self.position;
        // A step cut short rewinds the adapters' dropout generators too, so its masks are drawn again on resume.
        let dropout = self.model.dropout_rngs(&self.config.adapter)?;
        let mut grads = GradStore::new();
        let mut total = 0.0;
        let mut tokens = Some(0u64);
        for i in 0..n {
            if i > 0 && self.stop_requested() {
                // The partial step is dropped whole: nothing of it has touched the adapter or the optimizer.
                self.position = first;
                self.model.set_dropout_rngs(&self.config.adapter, dropout)?;
                return Ok(StepEnd::Stopped);
            }
            let b = batch(self.position)?;
            let mut rng = batch_rng(self.config.seed, self.position);
            let StepLoss {
                loss: mut l,
                tokens: t,
            } = loss(&mut self.model, &b, &mut rng)?.into();
            tokens = tokens.zip(t).map(|(a, b)| a + b);
            if let Some(r) = self.model.regularization_loss()? {
                l = l.add(&r)?;
            }
            let v = l.to_scalar()?;
            if !v.is_finite() {
                // The step is skipped: its micro-batches are consumed, nothing reaches the optimizer.
                let reason = format!("loss {v} in micro-batch {}", first + i as u64);
                return Ok(StepEnd::Done(self.skip(first, reason, lr, tokens, run_started)));
            }
            total += v;
            l.affine(1.0 / n as f64, 0.0)?.backward_into(&mut grads)?;
            self.position += 1;
        }
        let norm = match self.config.clip_norm {
            Some(c) => clip_grad_norm(&mut grads, &self.params, c)?,
            None => grad_norm(&grads, &self.params)?,
        };
        if !norm.is_finite() {
            let reason = format!("gradient norm {norm}");
            return Ok(StepEnd::Done(self.skip(first, reason, lr, tokens, run_started)));
        }
        self.optimizer.set_learning_rate(lr);
        self.optimizer.step(&grads)?;
        self.model.on_step(self.step, &grads)?;
        self.step += 1;
        let dt = t0.elapsed().as_secs_f64();
        Ok(StepEnd::Done(StepMetrics {
            step: self.step,
            loss: Some(total / n as f64),
            lr: Some(lr),
            grad_norm: Some(norm),
            eval_loss: None,
            tokens,
            tokens_per_s: tokens.filter(|_| dt > 0.0).map(|t| t as f64 / dt),
            elapsed_s: Some(run_started.elapsed().as_secs_f64()),
            peak_mem_bytes: Some(rankfold_tensor::memory::stats(self.device).peak_bytes as u64),
            skipped: None,
        }))
    }

    /// Ends a step that started at micro-batch `first` as skipped: all its micro-batches count as consumed (so
    /// positions stay aligned with steps), the step counts, and the adapter and optimizer are untouched.
    fn skip(&mut self, first: u64, reason: String, lr: f64, tokens: Option<u64>, run_started: Instant) -> StepMetrics {
        self.position = first + self.config.grad_accum as u64;
        self.step += 1;
        StepMetrics {
            step: self.step,
            lr: Some(lr),
            tokens,
            elapsed_s: Some(run_started.elapsed().as_secs_f64()),
            skipped: Some(reason),
            ..StepMetrics::default()
        }
    }

    /// Appends one metrics line. The line and its newline go out in one write, so a process killed here
    /// leaves whole lines for the resumed run to append to.
    fn write_metrics(&mut self, m: &StepMetrics) -> Result<()> {
        let path = self.config.output_dir.join(METRICS_FILE);
        let mut line = serde_json::to_string(m).map_err(|e| {
            Error::Config(format!("{}: cannot encode metrics: {e}", path.display()))
        })?;
        line.push('\n');
        self.metrics
            .write_all(line.as_bytes())
            .map_err(|e| Error::Io { path, source: e })
    }

    /// Writes `checkpoint-<step>` under the output folder (durably and atomically; see [`checkpoint`]) and
    /// returns its path.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let state = TrainerState {
            step: self.step,
            position: self.position,
            seed: self.config.seed,
            config: self.config.clone(),
            method: checkpoint::method_note(&self.model, &self.config.adapter)?,
            dropout_rng: checkpoint::dropout_note(&mut self.model, &self.config.adapter)?,
            bad_in_row: self.bad_in_row,
            // `checkpoint::write` records the digests of the files once they are written.
            files: Default::default(),
        };
        let (model, optimizer) = (&mut self.model, &self.optimizer);
        let adapter = self.config.adapter.clone();
        let path = checkpoint::write(&self.config.output_dir, &state, |tmp| {
            checkpoint::save_adapter(tmp, model, &adapter)?;
            optimizer.save_state(&tmp.join(checkpoint::OPTIMIZER_FILE))?;
            Ok(())
        })?;
        self.last_checkpoint = Some((self.step, path.clone()));
        if let Some(p) = self.progress.as_mut() {
            p.on_checkpoint(self.step, &path);
        }
        Ok(path)
    }
}
