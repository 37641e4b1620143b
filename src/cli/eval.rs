//! `rankfold eval`: evaluates a model, with or without a PEFT adapter, on a data set given by flags or by a
//! recipe's `[model]` and `[data]` tables: the mean loss and perplexity over labelled tokens, and for
//! classification posed as a chat (imdb-chat, or `--labels` on chat data) the label accuracy with per-class
//! counts. A counter of examples done runs on stderr; the summary line is JSON with `--json`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use rankfold_adapters::PeftModel;
use rankfold_train::run::{self, CheckedTokenizer, RunSpec};

use super::train::{eval_counter, peak_rss_bytes, SpecFlags};

/// Arguments of `rankfold eval`.
#[derive(clap::Args, Debug)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    spec: SpecFlags,
    /// A PEFT adapter folder to evaluate on top of the model.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Also report the LM loss on classification data (it costs a second pass).
    #[arg(long)]
    with_loss: bool,
}

/// Runs `rankfold eval`; with `json` the final summary line is a JSON object.
pub(crate) fn run(args: &EvalArgs, json: bool) -> Result<()> {
    let wall = Instant::now();
    let (spec, origin) = args.spec.spec(RunSpec::default())?;
    spec.data(&origin)?;
    if let Some(dir) = &args.adapter {
        let config = dir.join(rankfold_adapters::peft::CONFIG_FILE);
        anyhow::ensure!(
            config.is_file(),
            "adapter {}: {} is missing",
            dir.display(),
            config.display()
        );
    }
    let (model, tok) = run::load_model(&spec, &origin)?;
    let mut pm = PeftModel::new(model, 0);
    if let Some(dir) = &args.adapter {
        pm.load(dir, run::ADAPTER)
            .with_context(|| format!("loading adapter {}", dir.display()))?;
        pm.set_training(false)?;
    }
    let checked = CheckedTokenizer::new(&tok);
    let prepared = run::prepare(&spec, &origin, &checked, run::eos_token(&tok), true)?;
    checked.check()?;
    let report = run::evaluate(
        pm.model(),
        &prepared,
        args.with_loss,
        &mut {
            let mut counter = eval_counter("eval");
            move |what: &str, done: usize, total: usize| {
                counter(what, done, total);
                true
            }
        },
    )?;
    let wall_s = wall.elapsed().as_secs_f64();
    let mut value = serde_json::to_value(&report)?;
    value["command"] = "eval".into();
    value["wall_s"] = wall_s.into();
    value["peak_rss_bytes"] = peak_rss_bytes().into();
    value["adapter"] = args
        .adapter
        .as_ref()
        .map(|p| p.display().to_string())
        .into();
    let mut parts = Vec::new();
    if let Some(a) = &report.accuracy {
        parts.push(a.to_string());
    }
    if let Some(l) = &report.lm {
        parts.push(format!(
            "loss {:.4}, perplexity {:.3} over {} tokens",
            l.loss, l.perplexity, l.tokens
        ));
    }
    if json {
        println!("{value}");
    } else {
        println!("eval: {} ({:.1} s)", parts.join("; "), wall_s);
    }
    Ok(())
}
