//! `rankfold train`: fine-tunes an adapter from a recipe (`--config FILE.toml`) and/or flags (flags override the
//! file), with a progress bar, Ctrl-C stopping after the current step with a checkpoint, `--resume`, the final
//! PEFT adapter in `<out>/adapter/`, metrics.jsonl, the loss plot and one summary line. The flags shared with
//! `rankfold eval` ([`SpecFlags`]) live here too.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use rankfold_adapters::TargetModules;
use rankfold_train::run::spec::{AdapterSpec, DataSpec, ModelSpec, TrainSpec};
use rankfold_train::run::{self, CheckedTokenizer, DataFormat, MethodName, RunSpec, TrainOptions};
use rankfold_train::trainer::TextProgress;

/// A data format by its recipe name.
fn parse_format(s: &str) -> Result<DataFormat, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|e| e.to_string())
}

/// An adapter method by its recipe name.
fn parse_method(s: &str) -> Result<MethodName, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|e| e.to_string())
}

/// `all-linear` or a comma-separated list of module names.
fn parse_targets(s: &str) -> Result<TargetModules, String> {
    if s.eq_ignore_ascii_case("all-linear") {
        return Ok(TargetModules::AllLinear);
    }
    let names: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Err("give all-linear or module names separated by commas".into());
    }
    Ok(TargetModules::list(&names))
}

/// The run settings that can come from a recipe file or from flags (flags win).
#[derive(clap::Args, Debug, Default)]
pub(crate) struct SpecFlags {
    /// A recipe TOML file with `[model]`, `[adapter]`, `[data]` and `[train]` tables (see docs/training.md).
    #[arg(long, value_name = "FILE.toml")]
    pub(crate) config: Option<PathBuf>,
    /// The base model: a GGUF file or a Hugging Face folder.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Quantize the model's projections to NF4 on load (QLoRA).
    #[arg(long)]
    nf4: bool,
    /// NF4 block size.
    #[arg(long, value_name = "N")]
    blocksize: Option<usize>,
    /// Keep the NF4 absmax scales in f32 (no double quantization).
    #[arg(long)]
    no_double_quant: bool,
    /// The data file: JSONL, or IMDB's reviews.json for imdb-chat.
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// text, prompt-completion, messages or imdb-chat.
    #[arg(long, value_parser = parse_format)]
    format: Option<DataFormat>,
    /// A separate evaluation JSONL file.
    #[arg(long, value_name = "PATH")]
    eval_data: Option<PathBuf>,
    /// Tokens per sequence.
    #[arg(long, value_name = "N")]
    max_len: Option<usize>,
    /// imdb-chat: characters kept from each review.
    #[arg(long, value_name = "N")]
    max_chars: Option<usize>,
    /// Training examples used.
    #[arg(long, value_name = "N")]
    train_examples: Option<usize>,
    /// Evaluation examples.
    #[arg(long, value_name = "N")]
    eval_examples: Option<usize>,
    /// Examples per training micro-batch.
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Examples per evaluation batch.
    #[arg(long, value_name = "N")]
    eval_batch_size: Option<usize>,
    /// text: pack documents into max-len sequences.
    #[arg(long)]
    pack: bool,
    /// A system turn before each prompt-completion exchange.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Label words (comma-separated) for accuracy on chat data whose answers are one of them.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    labels: Option<Vec<String>>,
}

impl SpecFlags {
    /// The recipe (if any) with these flags laid over it, and the name errors should use for its origin.
    pub(crate) fn spec(&self, extra: RunSpec) -> Result<(RunSpec, String)> {
        let (base, origin) = match &self.config {
            Some(p) => (RunSpec::from_file(p)?, p.display().to_string()),
            None => (RunSpec::default(), "command line".to_string()),
        };
        let flags = RunSpec {
            model: ModelSpec {
                path: self.model.clone(),
                nf4: self.nf4.then_some(true),
                blocksize: self.blocksize,
                double_quant: self.no_double_quant.then_some(false),
            },
            data: DataSpec {
                format: self.format,
                path: self.data.clone(),
                eval_path: self.eval_data.clone(),
                max_len: self.max_len,
                max_chars: self.max_chars,
                train_examples: self.train_examples,
                eval_examples: self.eval_examples,
                batch_size: self.batch_size,
                eval_batch_size: self.eval_batch_size,
                pack: self.pack.then_some(true),
                system: self.system.clone(),
                labels: self.labels.clone(),
            },
            ..RunSpec::default()
        };
        Ok((base.overlay(flags).overlay(extra), origin))
    }
}

/// Arguments of `rankfold train`.
#[derive(clap::Args, Debug)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    spec: SpecFlags,
    /// lora, lora-fa, adalora or glora (QLoRA: any of them with --nf4).
    #[arg(long, value_parser = parse_method)]
    method: Option<MethodName>,
    /// Start from a PEFT adapter_config.json's settings.
    #[arg(long, value_name = "FILE")]
    adapter_config: Option<PathBuf>,
    /// Adapter rank.
    #[arg(long, short = 'r', value_name = "N")]
    rank: Option<usize>,
    /// Adapter alpha (scale numerator).
    #[arg(long, value_name = "X")]
    alpha: Option<f64>,
    /// all-linear, or module names separated by commas (q_proj,v_proj).
    #[arg(long, value_parser = parse_targets)]
    targets: Option<TargetModules>,
    /// Adapter dropout.
    #[arg(long, value_name = "P")]
    dropout: Option<f64>,
    /// rsLoRA scaling alpha/sqrt(r).
    #[arg(long)]
    rslora: bool,
    /// Optimizer steps.
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long, value_name = "X")]
    lr: Option<f64>,
    /// Warmup steps.
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long, value_name = "N")]
    grad_accum: Option<usize>,
    /// Gradient-norm clip (0: none).
    #[arg(long, value_name = "X")]
    clip_norm: Option<f64>,
    /// AdamW's decoupled weight decay.
    #[arg(long, value_name = "X")]
    weight_decay: Option<f64>,
    /// The cosine schedule's floor as a share of the learning rate.
    #[arg(long, value_name = "X")]
    min_lr_ratio: Option<f64>,
    /// The optimizer: adamw_torch, adamw_8bit, paged_adamw_32bit or paged_adamw_8bit.
    #[arg(long, value_name = "NAME")]
    optim: Option<rankfold_train::trainer::OptimName>,
    /// Evaluate the LM loss every N steps.
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,
    /// Write a checkpoint every N steps.
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    /// Seed of the data order and adapter initialization.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// The output folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue from the latest checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
    /// Replace an earlier run's files in the output folder.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Skip the evaluation after training.
    #[arg(long)]
    no_final_eval: bool,
}

impl TrainArgs {
    /// The adapter and trainer flags as a spec to lay over the recipe.
    fn extra(&self) -> RunSpec {
        RunSpec {
            adapter: AdapterSpec {
                method: self.method,
                config: self.adapter_config.clone(),
                r: self.rank,
                alpha: self.alpha,
                targets: self.targets.clone(),
                dropout: self.dropout,
                use_rslora: self.rslora.then_some(true),
                ..AdapterSpec::default()
            },
            train: TrainSpec {
                steps: self.steps,
                lr: self.lr,
                warmup: self.warmup,
                grad_accum: self.grad_accum,
                clip_norm: self.clip_norm,
                weight_decay: self.weight_decay,
                min_lr_ratio: self.min_lr_ratio,
                optim: self.optim,
                eval_every: self.eval_every,
                checkpoint_every: self.checkpoint_every,
                seed: self.seed,
                output_dir: self.out.clone(),
                ..TrainSpec::default()
            },
            ..RunSpec::default()
        }
    }
}

/// A counter on stderr for long evaluations: redrawn in place on a terminal, a line per tenth otherwise.
pub(crate) fn eval_counter(label: &'static str) -> impl FnMut(&str, usize, usize) {
    let terminal = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_tenth = usize::MAX;
    move |what: &str, done: usize, total: usize| {
        let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let line = format!("{label} {what}: {done}/{total} examples ({rate:.1}/s)");
        let mut err = std::io::stderr();
        if terminal {
            let _ = write!(err, "\r{line}");
            if done == total {
                let _ = writeln!(err);
            }
        } else {
            let tenth = done * 10 / total.max(1);
            if tenth != last_tenth {
                last_tenth = tenth;
                let _ = writeln!(err, "{line}");
            }
        }
    }
}

/// The process's peak resident memory in bytes (Linux `VmHWM`), when the system reports it.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sets `flag` on the first Ctrl-C (the trainer checkpoints and stops after the current step); a second Ctrl-C
/// exits at once.
fn install_ctrlc(flag: Arc<AtomicBool>) -> Result<()> {
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: stopping after this step and writing a checkpoint (Ctrl-C again to quit now)");
    })
    .context("installing the Ctrl-C handler")
}

/// Runs `rankfold train`; with `json` the final summary line is a JSON object.
pub(crate) fn run(args: &TrainArgs, json: bool) -> Result<()> {
    let wall = Instant::now();
    let (spec, origin) = args.spec.spec(args.extra())?;
    // Settings and the output folder are checked before the model is read, so a typo costs no loading time.
    let config = spec.train_config(&origin)?;
    spec.adapter_method(&origin, config.steps)?;
    spec.data(&origin)?;
    let mut opts = TrainOptions {
        resume: args.resume,
        overwrite: args.overwrite,
        final_eval: !args.no_final_eval,
        stop: None,
        progress: Some(Box::new(TextProgress::stderr(5))),
        eval_progress: Some(Box::new(eval_counter("eval"))),
    };
    run::check_output(&spec, &origin, &opts)?;
    let load = Instant::now();
    let (model, tok) = run::load_model(&spec, &origin)?;
    let checked = CheckedTokenizer::new(&tok);
    let prepared = run::prepare(&spec, &origin, &checked, run::eos_token(&tok), false)?;
    checked.check()?;
    eprintln!(
        "loaded model and {} training examples in {:.1} s",
        prepared.examples.train.len(),
        load.elapsed().as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    install_ctrlc(stop.clone())?;
    opts.stop = Some(stop);
    let s = run::train(&spec, &origin, model, &prepared, opts)?;
    let wall_s = wall.elapsed().as_secs_f64();
    let mut value = serde_json::to_value(&s)?;
    value["command"] = "train".into();
    value["wall_s"] = wall_s.into();
    value["peak_rss_bytes"] = peak_rss_bytes().into();
    let loss = |l: Option<f64>| l.map_or("-".to_string(), |l| format!("{l:.4}"));
    let mut text = format!(
        "train: {}/{} steps{}, loss {} -> {}, {:.0} tokens/s, peak {:.0} MiB, {:.1} s",
        s.steps,
        s.total_steps,
        if s.interrupted {
            " (stopped; resume with --resume)"
        } else {
            ""
        },
        loss(s.first_loss),
        loss(s.final_loss),
        s.tokens_per_s,
        s.peak_mem_bytes as f64 / (1 << 20) as f64,
        wall_s
    );
    if let Some(e) = &s.eval {
        if let Some(a) = &e.accuracy {
            text.push_str(&format!(", eval {a}"));
        }
        if let Some(l) = &e.lm {
            text.push_str(&format!(
                ", eval loss {:.4} (ppl {:.2})",
                l.loss, l.perplexity
            ));
        }
    }
    if let Some(a) = &s.adapter {
        text.push_str(&format!(", adapter {}", a.display()));
    }
    if let Some(c) = s.checkpoint.as_ref().filter(|_| s.interrupted) {
        text.push_str(&format!(", checkpoint {}", c.display()));
    }
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
    Ok(())
}
