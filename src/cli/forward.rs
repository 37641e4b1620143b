//! `rankfold forward`: runs one token sequence through a model (with an optional adapter) and writes its logits as
//! an f32 `[tokens, vocab]` tensor named `logits` in a safetensors file, for comparison with PyTorch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rankfold_tensor::{safetensors, DType, Tensor};
use serde_json::json;

use super::common::{self, path_json};

/// Arguments of `rankfold forward`.
#[derive(clap::Args, Debug)]
pub(crate) struct ForwardArgs {
    #[command(flatten)]
    m: common::ModelArgs,
    /// Token ids, comma-separated (e.g. 1,2,3).
    #[arg(long)]
    tokens: String,
    /// The safetensors file to write.
    #[arg(long)]
    out: PathBuf,
    /// Replace `--out` when it exists.
    #[arg(long)]
    overwrite: bool,
}

/// Runs `rankfold forward`; with `json` the final summary line is a JSON object.
pub(crate) fn run(args: &ForwardArgs, json: bool) -> Result<()> {
    let ids = parse_tokens(&args.tokens)?;
    // Refused before the model is loaded; checked again when the file is put in place.
    common::refuse_existing_file(&args.out, args.overwrite)?;
    let loaded = args.m.load()?;
    let vocab = loaded.llama().config.vocab_size;
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        bail!(
            "--tokens: id {id} (position {i}) is out of the vocabulary of {} ({vocab} tokens)",
            args.m.model.display()
        );
    }
    let start = Instant::now();
    let n = ids.len();
    let logits = loaded
        .llama()
        .forward_ids(&ids, 1, n)
        .context("running the forward pass")?
        .reshape((n, vocab))?
        .to_dtype(DType::F32)?;
    let forward_seconds = start.elapsed().as_secs_f64();
    write_logits(&args.out, &logits, args.overwrite)?;
    let text = format!(
        "wrote logits [{n}, {vocab}] to {} (load {:.2} s, forward {:.3} s)",
        args.out.display(),
        loaded.load_seconds,
        forward_seconds
    );
    let value = json!({
        "command": "forward",
        "model": path_json(&args.m.model),
        "adapter": args.m.adapter.as_deref().map(path_json),
        "nf4": args.m.nf4,
        "out": path_json(&args.out),
        "tokens": n,
        "vocab": vocab,
        "load_seconds": loaded.load_seconds,
        "forward_seconds": forward_seconds,
    });
    common::print_summary(json, &text, &value);
    Ok(())
}

/// Parses `1,2,3` (spaces allowed around the commas) into ids; an empty list or a bad entry is an error naming it.
fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(',')
        .enumerate()
        .map(|(i, t)| {
            let t = t.trim();
            t.parse::<u32>().with_context(|| {
                format!("--tokens: entry {i} `{t}` is not a token id (a non-negative integer)")
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    if ids.is_empty() {
        bail!("--tokens: no token ids given");
    }
    Ok(ids)
}

/// Writes `logits` as tensor `logits` to `out` through a temporary file: renamed over `out` when `overwrite`,
/// else hard-linked into place, which fails (and leaves `out` alone) when something appeared there meanwhile.
fn write_logits(out: &Path, logits: &Tensor, overwrite: bool) -> Result<()> {
    let tmp = common::temp_sibling(out)?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::save(&tmp, &[("logits", logits)], Some(&meta))
        .with_context(|| format!("writing {}", tmp.display()))?;
    let placed = if overwrite {
        std::fs::rename(&tmp, out)
    } else {
        std::fs::hard_link(&tmp, out).and_then(|()| std::fs::remove_file(&tmp))
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            bail!(
                "{} already exists; pass --overwrite to replace it",
                out.display()
            );
        }
        return Err(e).with_context(|| format!("writing {}", out.display()));
    }
    Ok(())
}
