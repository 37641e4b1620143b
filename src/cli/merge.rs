//! `rankfold merge`: folds a PEFT adapter into its base model (`merge_and_unload`) and writes a Hugging Face
//! folder — config.json, model.safetensors under Hugging Face tensor names, and the source's tokenizer files —
//! into a temporary folder that is renamed into place, so the output is complete or absent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rankfold_models::gguf::llama::LlamaHparams;
use rankfold_models::gguf::{GgufFile, GgufTokenizer};
use rankfold_models::source::ModelSource;
use rankfold_tensor::safetensors::{self, MmapedSafetensors};
use rankfold_tensor::{DType, Tensor};
use serde_json::json;

use super::common::{self, path_json};

/// The tokenizer and generation files copied from a Hugging Face source folder when it has them.
const COPIED_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Arguments of `rankfold merge`.
#[derive(clap::Args, Debug)]
pub(crate) struct MergeArgs {
    /// The base model: a Hugging Face folder or a GGUF file (loaded in full precision).
    #[arg(long)]
    model: PathBuf,
    /// The PEFT adapter folder to merge.
    #[arg(long)]
    adapter: PathBuf,
    /// The Hugging Face folder to write; it must not exist or be empty.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `rankfold merge`; with `json` the final summary line is a JSON object.
pub(crate) fn run(args: &MergeArgs, json: bool) -> Result<()> {
    common::require_absent_or_empty_dir(&args.out)?;
    let source = common::model_source(&args.model)?;
    refuse_quantized_folder(&source)?;
    // The base is always loaded in full precision: an adapter trained on an NF4 base (QLoRA) is merged into the
    // unquantized weights, which is the model it approximates without the quantization error.
    let loaded = common::load_with_adapter(&args.model, false, Some(&args.adapter))?;
    let start = Instant::now();
    let adapted = loaded.model.adapter_paths("default")?.len();
    let merged = loaded
        .model
        .merge_and_unload()
        .context("merging the adapter")?;
    let dtype = output_dtype(&source)?;
    let tensors = merged
        .state_dict()?
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(dtype)?)))
        .collect::<Result<Vec<(String, Tensor)>>>()?;
    let merge_seconds = start.elapsed().as_secs_f64();
    let config = config_json(&source, &merged.config, dtype)?;
    let start = Instant::now();
    let tmp = common::temp_sibling(&args.out)?;
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_folder(&tmp, &source, &config, &tensors).and_then(|copied| {
        // A rename over an empty folder replaces it; anything else that appeared there meanwhile makes it fail.
        std::fs::rename(&tmp, &args.out)
            .with_context(|| format!("moving the merged model into {}", args.out.display()))?;
        Ok(copied)
    });
    let copied = match written {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let write_seconds = start.elapsed().as_secs_f64();
    let params: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    let text = format!(
        "merged {} into {} ({adapted} layers) → {} ({} tensors, {params} parameters, {dtype}; copied: {}) in {:.2} s",
        args.adapter.display(),
        args.model.display(),
        args.out.display(),
        tensors.len(),
        if copied.is_empty() { "nothing".to_string() } else { copied.join(", ") },
        loaded.load_seconds + merge_seconds + write_seconds,
    );
    let value = json!({
        "command": "merge",
        "model": path_json(&args.model),
        "adapter": path_json(&args.adapter),
        "out": path_json(&args.out),
        "adapted_layers": adapted,
        "tensors": tensors.len(),
        "parameters": params,
        "dtype": dtype.to_string(),
        "copied": copied,
        "load_seconds": loaded.load_seconds,
        "merge_seconds": merge_seconds,
        "write_seconds": write_seconds,
    });
    common::print_summary(json, &text, &value);
    Ok(())
}

/// A Hugging Face folder whose config.json declares a quantization (bitsandbytes NF4 written by `rankfold
/// quantize`, or any other) cannot be merged into: its weights are not the full-precision base.
fn refuse_quantized_folder(source: &ModelSource) -> Result<()> {
    let ModelSource::HfDir(dir) = source else {
        return Ok(());
    };
    let path = dir.join("config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(()); // The loader reports a missing config.json with its own error.
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    if let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) {
        bail!(
            "{}: field `quantization_config` ({q}): merging needs the full-precision base model; \
             merge into the unquantized folder (or its GGUF) instead",
            path.display()
        );
    }
    Ok(())
}

/// The dtype the merged weights are written in: the source's for a Hugging Face folder of f32 / f16 / bf16
/// weights (read from its embedding), f32 for GGUF sources, whose quantized blocks have no such dtype.
fn output_dtype(source: &ModelSource) -> Result<DType> {
    let ModelSource::HfDir(dir) = source else {
        return Ok(DType::F32);
    };
    let single = dir.join("model.safetensors");
    if !single.is_file() {
        // A sharded source: f32 keeps every value exactly.
        return Ok(DType::F32);
    }
    let st = MmapedSafetensors::open(&single)?;
    let (_, dt) = st.info("model.embed_tokens.weight")?;
    Ok(match dt {
        DType::F16 | DType::BF16 => dt,
        _ => DType::F32,
    })
}

/// The config.json to write: the source's own (with its dtype field set to what is written), or one generated from
/// a GGUF file's hyperparameters.
fn config_json(
    source: &ModelSource,
    config: &rankfold_models::llama::LlamaConfig,
    dtype: DType,
) -> Result<String> {
    let torch = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    };
    let value = match source {
        ModelSource::HfDir(dir) => {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            let obj = v
                .as_object_mut()
                .with_context(|| format!("{}: not a JSON object", path.display()))?;
            // transformers 4 reads `torch_dtype`, transformers 5 `dtype`; whichever the source has is updated.
            let mut set = false;
            for key in ["torch_dtype", "dtype"] {
                if obj.contains_key(key) {
                    obj.insert(key.into(), torch.into());
                    set = true;
                }
            }
            if !set {
                obj.insert("torch_dtype".into(), torch.into());
            }
            v
        }
        ModelSource::Gguf(p) => {
            let f = GgufFile::open(p)?;
            let _ = LlamaHparams::from_gguf(&f)?;
            let tok = GgufTokenizer::from_gguf(&f).ok();
            config.to_hf_json(
                torch,
                tok.as_ref().and_then(|t| t.bos_id),
                tok.as_ref().and_then(|t| t.eos_id),
            )
        }
    };
    Ok(serde_json::to_string_pretty(&value)? + "\n")
}

/// Writes the merged folder at `dir` (created here) and returns the names of the files copied from the source.
fn write_folder(
    dir: &Path,
    source: &ModelSource,
    config: &str,
    tensors: &[(String, Tensor)],
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("config.json"), config)
        .with_context(|| format!("writing {}", dir.join("config.json").display()))?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let weights = dir.join("model.safetensors");
    safetensors::save(&weights, &refs, Some(&meta))
        .with_context(|| format!("writing {}", weights.display()))?;
    let mut copied = Vec::new();
    if let ModelSource::HfDir(src) = source {
        for name in COPIED_FILES {
            let from = src.join(name);
            if from.is_file() {
                std::fs::copy(&from, dir.join(name))
                    .with_context(|| format!("copying {}", from.display()))?;
                copied.push(name.to_string());
            }
        }
    }
    Ok(copied)
}
