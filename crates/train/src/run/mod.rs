//! Runs from a recipe: what `rankfold train`, `rankfold eval` and `cargo xtask demo` do, as library calls.
//! [`spec`] reads and checks the recipe ([`RunSpec`]); [`data`] tokenizes its data set; [`task`] holds the
//! gathered causal-LM loss and the label accuracy of classification posed as a chat; this module loads the
//! model, adds the adapter, runs the [`Trainer`] and evaluates.
//!
//! Output folder of a training run: `metrics.jsonl`, the loss plot, `checkpoint-<step>/` folders when
//! checkpointing, and the final PEFT adapter in `adapter/`. A folder that already holds files is refused unless
//! the run resumes from its latest checkpoint or the caller asks to overwrite (which removes only those files).

pub mod data;
pub mod spec;
pub mod task;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use rankfold_adapters::PeftModel;
use rankfold_models::llama::Llama;
use rankfold_models::source::{load_llama, load_tokenizer, ModelSource};
use rankfold_models::tokenizer::Tokenizer;
use rankfold_tensor::{memory, Device};
use serde::Serialize;

pub use data::{build as build_data, eos_token, CheckedTokenizer, RunData};
pub use spec::{DataFormat, DataSettings, MethodName, RunSpec};
pub use task::{label_accuracy, lm_eval, lm_loss, Accuracy, LabelExample, LabelTask, LmEval};

use crate::data::{Loader, PadSide, Padding, Tokenize};
use crate::trainer::{integrity, Progress, StepLoss, Trainer, METRICS_FILE, PLOT_FILE};
use crate::{Error, Result};

/// The name of the adapter a run trains.
pub const ADAPTER: &str = "default";

/// The folder, inside the output folder, that receives the final adapter.
pub const FINAL_ADAPTER_DIR: &str = "adapter";

/// Loads the model of `spec` (NF4 projections when `model.nf4`) and its tokenizer.
pub fn load_model(spec: &RunSpec, origin: &str) -> Result<(Llama, Tokenizer)> {
    let (path, nf4) = spec.model(origin)?;
    let source = ModelSource::from_path(&path)?;
    let tok = load_tokenizer(&source)?;
    Ok((load_llama(&source, nf4)?, tok))
}

/// The settings and tokenized data of a run.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The data settings with defaults filled.
    pub data: DataSettings,
    /// The tokenized examples.
    pub examples: RunData,
    /// The padding token (the end-of-text token, or 0).
    pub pad_id: u32,
}

impl Prepared {
    /// Right padding to the data's `max_len`.
    pub fn padding(&self) -> Padding {
        Padding {
            pad_id: self.pad_id,
            side: PadSide::Right,
            max_len: Some(self.data.max_len),
        }
    }
}

/// Checks the data settings of `spec` and tokenizes its data with `tok` (`eos` ends `text` documents and pads);
/// with `eval_only`, only the evaluation data (see [`data::build`]).
pub fn prepare(
    spec: &RunSpec,
    origin: &str,
    tok: &dyn Tokenize,
    eos: Option<u32>,
    eval_only: bool,
) -> Result<Prepared> {
    let data = spec.data(origin)?;
    let examples = data::build(&data, tok, eos, eval_only)?;
    Ok(Prepared {
        data,
        examples,
        pad_id: eos.unwrap_or(0),
    })
}

/// What an evaluation measured: the LM loss over labelled tokens and, for classification data, the accuracy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// The LM loss (absent when the label accuracy was asked for alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lm: Option<LmEval>,
    /// The label accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Accuracy>,
    /// Wall seconds.
    pub seconds: f64,
}

/// Evaluates `model` on the prepared evaluation data: the label accuracy when the data has labels (and the LM
/// loss too when `with_loss`), the LM loss otherwise. `progress(what, done, total)` follows each batch and returns
/// whether to go on: false stops the evaluation with [`Error::Interrupted`].
pub fn evaluate(
    model: &Llama,
    prepared: &Prepared,
    with_loss: bool,
    progress: &mut dyn FnMut(&str, usize, usize) -> bool,
) -> Result<EvalReport> {
    let start = Instant::now();
    let padding = prepared.padding();
    let bs = prepared.data.eval_batch_size;
    let accuracy = match &prepared.examples.labels {
        Some((task, exs)) if !exs.is_empty() => Some(label_accuracy(
            model,
            task,
            exs,
            &padding,
            bs,
            &mut |d, n| progress("accuracy", d, n),
        )?),
        _ => None,
    };
    let lm = if accuracy.is_none() || with_loss {
        if prepared.examples.eval.is_empty() {
            return Err(Error::Config(
                "there are no evaluation examples (set data.eval_examples or data.eval_path)"
                    .into(),
            ));
        }
        Some(lm_eval(
            model,
            &prepared.examples.eval,
            &padding,
            bs,
            &mut |d, n| progress("loss", d, n),
        )?)
    } else {
        None
    };
    Ok(EvalReport {
        lm,
        accuracy,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// An evaluation observer: (what, examples done, total).
pub type EvalProgress = Box<dyn FnMut(&str, usize, usize)>;

/// How [`train`] treats the output folder and what it reports to.
#[derive(Default)]
pub struct TrainOptions {
    /// Continue from the latest checkpoint in the output folder.
    pub resume: bool,
    /// Remove the files of an earlier run (metrics, plot, checkpoints, adapter) from the output folder first.
    pub overwrite: bool,
    /// Evaluate after training (when there is evaluation data).
    pub final_eval: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// The trainer's progress reporter.
    pub progress: Option<Box<dyn Progress>>,
    /// Called as the final evaluation goes: (what, done, total).
    pub eval_progress: Option<EvalProgress>,
}

impl std::fmt::Debug for TrainOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("resume", &self.resume)
            .field("overwrite", &self.overwrite)
            .field("final_eval", &self.final_eval)
            .finish_non_exhaustive()
    }
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSummary {
    /// Optimizer steps done (of `total_steps`).
    pub steps: usize,
    /// The configured step count.
    pub total_steps: usize,
    /// Whether the stop flag ended the run early (a checkpoint was written; resume with `resume`).
    pub interrupted: bool,
    /// The loss of the first step this call ran.
    pub first_loss: Option<f64>,
    /// The mean loss of the last (up to) ten steps.
    pub final_loss: Option<f64>,
    /// Training examples in the pool the batches are drawn from.
    pub train_examples: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Tokens the forward passes saw (padding excluded).
    pub tokens: u64,
    /// Tokens per second of training.
    pub tokens_per_s: f64,
    /// Seconds in the training loop.
    pub train_s: f64,
    /// Peak tensor memory of the process, bytes.
    pub peak_mem_bytes: u64,
    /// Trainable and total parameters of the adapted linear layers.
    pub trainable_params: usize,
    /// All linear-layer parameters.
    pub linear_params: usize,
    /// The final adapter folder (absent when the run was stopped early).
    pub adapter: Option<PathBuf>,
    /// The metrics file.
    pub metrics: PathBuf,
    /// The loss plot, if drawn.
    pub plot: Option<PathBuf>,
    /// The newest checkpoint, if any.
    pub checkpoint: Option<PathBuf>,
    /// The final evaluation.
    pub eval: Option<EvalReport>,
    /// Problems that did not stop the run.
    pub warnings: Vec<String>,
}

/// Checks, without changing anything, that a run with `opts` may use the output folder of `spec`: a fresh run
/// needs it absent or empty unless `opts.overwrite`; a resumed run needs a checkpoint in it. [`train`] makes the
/// same check; a caller runs it first so that a wrong folder costs no model loading.
pub fn check_output(spec: &RunSpec, origin: &str, opts: &TrainOptions) -> Result<()> {
    let out = spec.train_config(origin)?.output_dir;
    output_entries(&out, opts).map(|_| ())
}

/// The entries of `out` that [`claim_output`] would consider, after the checks of [`check_output`].
fn output_entries(out: &Path, opts: &TrainOptions) -> Result<Vec<PathBuf>> {
    if opts.resume {
        resume_checkpoint(out)?;
        return Ok(Vec::new());
    }
    let entries: Vec<PathBuf> = match std::fs::read_dir(out) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: out.to_path_buf(),
                source,
            })
        }
    };
    if !entries.is_empty() && !opts.overwrite {
        return Err(Error::Spec {
            origin: out.display().to_string(),
            message: "the output folder is not empty: resume its latest checkpoint (--resume), replace its run \
                      (--overwrite), or choose another folder"
                .into(),
        });
    }
    Ok(entries)
}

/// The newest checkpoint in `out` whose files check out, which a resumed run needs; a damaged newer one is
/// skipped with a warning on stderr naming it and the file.
fn resume_checkpoint(out: &Path) -> Result<PathBuf> {
    let (found, skipped) = integrity::latest_good_checkpoint(out)?;
    for s in &skipped {
        eprintln!("warning: {s}");
    }
    found.ok_or_else(|| Error::Spec {
        origin: out.display().to_string(),
        message: if skipped.is_empty() {
            "there is no checkpoint to resume from".into()
        } else {
            format!("no checkpoint checks out to resume from: {}", skipped.join("; "))
        },
    })
}

/// Removes what an earlier run left in `out` (only the files a run writes), or refuses a folder with files.
fn claim_output(out: &Path, opts: &TrainOptions) -> Result<()> {
    for p in output_entries(out, opts)? {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let ours = name == METRICS_FILE
            || name == PLOT_FILE
            || name == FINAL_ADAPTER_DIR
            || name.starts_with("checkpoint-");
        if !ours {
            continue;
        }
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Trains the adapter of `spec` on `model` with the prepared data and saves it to `<output_dir>/adapter/`.
pub fn train(
    spec: &RunSpec,
    origin: &str,
    model: Llama,
    prepared: &Prepared,
    mut opts: TrainOptions,
) -> Result<TrainSummary> {
    let config = spec.train_config(origin)?;
    let out = config.output_dir.clone();
    claim_output(&out, &opts)?;
    let seed = config.seed;
    let mut pm = PeftModel::new(model, seed);
    let mut trainer = if opts.resume {
        Trainer::resume(config.clone(), pm, &resume_checkpoint(&out)?)?
    } else {
        pm.add_adapter(ADAPTER, spec.adapter_method(origin, config.steps)?)?;
        Trainer::new(config.clone(), pm)?
    };
    let report = trainer.model().trainable_report();
    // Evaluations check the stop flag after every batch, so Ctrl-C during a long one takes effect at once.
    let stop = opts.stop.clone();
    let go_on = || !stop.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
    if let Some(flag) = opts.stop.take() {
        trainer = trainer.with_stop_flag(flag);
    }
    if let Some(p) = opts.progress.take() {
        trainer = trainer.with_progress(p);
    }
    let train = &prepared.examples.train;
    let padding = prepared.padding();
    let loader = Loader::new(prepared.data.batch_size, seed)?;
    let per_epoch = train.len().div_ceil(prepared.data.batch_size) as u64;
    let mut epoch_cache: Option<(u64, Vec<Vec<usize>>)> = None;
    let batch = |pos: u64| {
        let epoch = pos / per_epoch;
        if epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            epoch_cache = Some((epoch, loader.epoch(train.len(), epoch)));
        }
        let (_, batches) = epoch_cache
            .as_ref()
            .expect("the epoch's batches were just made");
        let idx = &batches[(pos % per_epoch) as usize];
        crate::data::collate(
            &idx.iter().map(|&i| &train[i]).collect::<Vec<_>>(),
            &padding,
        )
    };
    let loss = |pm: &mut PeftModel<Llama>, b: &crate::data::Batch, _: &mut rankfold_tensor::Rng| {
        let tokens = b.lengths.iter().sum::<usize>() as u64;
        Ok(StepLoss::new(lm_loss(pm.model(), b)?, tokens))
    };
    let eval_examples = &prepared.examples.eval;
    let eval_padding = prepared.padding();
    let eval_bs = prepared.data.eval_batch_size;
    let mut eval_fn = |pm: &mut PeftModel<Llama>| -> Result<f64> {
        Ok(lm_eval(
            pm.model(),
            eval_examples,
            &eval_padding,
            eval_bs,
            &mut |_, _| go_on(),
        )?
        .loss)
    };
    let use_eval = config.eval_every > 0 && !eval_examples.is_empty();
    let outcome = trainer.run(
        batch,
        loss,
        if use_eval { Some(&mut eval_fn) } else { None },
    )?;
    let losses: Vec<f64> = outcome.steps.iter().filter_map(|m| m.loss).collect();
    let tail = &losses[losses.len().saturating_sub(10)..];
    let tokens = outcome.tokens.unwrap_or(0);
    let mut summary = TrainSummary {
        steps: outcome.step,
        total_steps: config.steps,
        interrupted: outcome.is_interrupted(),
        first_loss: losses.first().copied(),
        final_loss: (!tail.is_empty()).then(|| tail.iter().sum::<f64>() / tail.len() as f64),
        train_examples: train.len(),
        batch_size: prepared.data.batch_size,
        grad_accum: config.grad_accum,
        tokens,
        tokens_per_s: tokens as f64 / outcome.elapsed_s.max(1e-9),
        train_s: outcome.elapsed_s,
        peak_mem_bytes: 0,
        trainable_params: report.trainable,
        linear_params: report.total,
        adapter: None,
        metrics: out.join(METRICS_FILE),
        plot: outcome.plot.clone(),
        checkpoint: outcome.checkpoint.clone(),
        eval: None,
        warnings: outcome.warnings.clone(),
    };
    if !summary.interrupted {
        let dir = out.join(FINAL_ADAPTER_DIR);
        trainer.model().save_pretrained(&dir, ADAPTER)?;
        summary.adapter = Some(dir);
        let has_eval = !eval_examples.is_empty()
            || prepared
                .examples
                .labels
                .as_ref()
                .is_some_and(|(_, e)| !e.is_empty());
        if opts.final_eval && has_eval {
            trainer.model().set_training(false)?;
            let mut observer = opts.eval_progress.take();
            let mut progress = |what: &str, done: usize, total: usize| {
                if let Some(p) = observer.as_mut() {
                    p(what, done, total);
                }
                go_on()
            };
            match evaluate(trainer.model().model(), prepared, false, &mut progress) {
                Ok(r) => summary.eval = Some(r),
                Err(e @ Error::Interrupted { .. }) => {
                    summary.warnings.push(format!("the final evaluation was not finished: {e}"))
                }
                Err(e) => return Err(e),
            }
        }
    }
    summary.peak_mem_bytes = memory::stats(Device::Cpu).peak_bytes as u64;
    Ok(summary)
}
