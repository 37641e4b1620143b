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
use rankfold_models::tokenizer::Tokenizer;
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
        "merged {} into {} ({adapted} layers) → {} ({} tensors, {params} parameters, {dtype}; tokenizer files: {}) in {:.2} s",
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
/// weights (read from its embedding, in `model.safetensors` or in the shard the index names for it), f32 for
/// GGUF sources, whose quantized blocks have no such dtype.
fn output_dtype(source: &ModelSource) -> Result<DType> {
    const EMBED: &str = "model.embed_tokens.weight";
    let ModelSource::HfDir(dir) = source else {
        return Ok(DType::F32);
    };
    let mut file = dir.join("model.safetensors");
    if !file.is_file() {
        let index = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", index.display()))?;
        let shard = v
            .get("weight_map")
            .and_then(|m| m.get(EMBED))
            .and_then(|f| f.as_str())
            .with_context(|| format!("{}: field `weight_map.{EMBED}` is missing or not a file name", index.display()))?;
        file = dir.join(shard);
    }
    let st = MmapedSafetensors::open(&file)?;
    let (_, dt) = st.info(EMBED).with_context(|| format!("{}: tensor `{EMBED}`", file.display()))?;
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

/// Writes the merged folder at `dir` (created here) and returns the names of the tokenizer and generation files it
/// holds: copied from a Hugging Face source, or written from a GGUF file's tokenizer metadata.
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
    if let ModelSource::Gguf(p) = source {
        let f = GgufFile::open(p)?;
        // Written only for a tokenizer that rankfold itself can build from the metadata.
        let usable = GgufTokenizer::from_gguf(&f)
            .ok()
            .filter(|t| Tokenizer::from_gguf(t).is_ok());
        if let Some(files) = usable.and_then(|t| gguf_tokenizer_files(&t)) {
            for (name, value) in files {
                let path = dir.join(name);
                std::fs::write(&path, serde_json::to_string_pretty(&value)? + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
                copied.push(name.to_string());
            }
        }
    }
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

/// tokenizer.json and tokenizer_config.json for the byte-level BPE tokenizer (`gpt2` model, `gpt2` or `smollm`
/// pre-tokenizer) in a GGUF file's metadata, as the tokenizer reads them back; `None` for other tokenizers.
fn gguf_tokenizer_files(t: &GgufTokenizer) -> Option<[(&'static str, serde_json::Value); 2]> {
    if t.model != "gpt2" {
        return None;
    }
    let digits = match t.pre.as_deref() {
        None | Some("gpt2") | Some("gpt-2") => false,
        Some("smollm") => true,
        Some(_) => return None,
    };
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = if digits {
        json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
    } else {
        byte_level.clone()
    };
    let vocab: serde_json::Map<String, serde_json::Value> = t
        .tokens
        .iter()
        .enumerate()
        .map(|(i, tok)| (tok.clone(), json!(i)))
        .collect();
    // Control (3) and user-defined (4) tokens are matched whole, as `Tokenizer::from_gguf` does.
    let added: Vec<serde_json::Value> = t
        .token_types
        .iter()
        .flatten()
        .zip(&t.tokens)
        .enumerate()
        .filter(|(_, (&ty, _))| ty == 3 || ty == 4)
        .map(|(i, (&ty, tok))| {
            json!({"id": i, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": ty == 3})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": pre, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": t.merges},
    });
    let name = |id: Option<u32>| id.and_then(|i| t.tokens.get(i as usize)).cloned();
    let config = json!({
        "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": false,
        "bos_token": name(t.bos_id), "eos_token": name(t.eos_id), "unk_token": name(t.unk_id),
        "pad_token": name(t.pad_id), "chat_template": t.chat_template,
    });
    Some([
        ("tokenizer.json", tokenizer),
        ("tokenizer_config.json", config),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_json_from_gguf_metadata_encodes_like_the_metadata() {
        // A small byte-level BPE: the printable ASCII bytes (space as `Ġ`), a few merges, two control tokens.
        let mut tokens: Vec<String> = std::iter::once("Ġ".to_string())
            .chain(('!'..='~').map(String::from))
            .collect();
        let merges = ["t h", "th e", "Ġ th", "Ġth e", "1 2", "e r", "Ġ a"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.extend(["<|im_start|>".to_string(), "<|im_end|>".to_string()]);
        let n = tokens.len();
        let mut types = vec![1; n];
        types[n - 2..].fill(3);
        for pre in [Some("smollm"), Some("gpt2")] {
            let t = GgufTokenizer {
                model: "gpt2".into(),
                pre: pre.map(String::from),
                tokens: tokens.clone(),
                token_types: Some(types.clone()),
                merges: merges.iter().map(|m| m.to_string()).collect(),
                bos_id: None,
                eos_id: Some(n as u32 - 1),
                unk_id: None,
                pad_id: None,
                add_bos: None,
                chat_template: Some("{{ messages }}".into()),
            };
            let [(_, json), (_, config)] = gguf_tokenizer_files(&t).expect("a gpt2 tokenizer");
            let written = Tokenizer::from_json_str("written", &json.to_string())
                .expect("the written file reads back");
            let direct = Tokenizer::from_gguf(&t).expect("valid metadata");
            for text in [
                "the theater",
                "<|im_start|>user 1234 there<|im_end|>",
                " a  the!",
            ] {
                let (a, b) = (
                    written.encode(text).expect("encodes"),
                    direct.encode(text).expect("encodes"),
                );
                assert_eq!(a, b, "{pre:?}: {text:?}");
            }
            assert_eq!(config["eos_token"], "<|im_end|>");
        }
    }
}
