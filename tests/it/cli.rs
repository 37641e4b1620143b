//! The `rankfold` binary's `forward`, `merge`, `inspect` and `generate` on the PyTorch fixtures of
//! `tests/fixtures/llama_fixtures.py`: logits with and without each PEFT adapter (LoRA, rsLoRA, AdaLoRA, GLoRA) and
//! after merging, against PyTorch's; the merged folder's names and config; inspect's figures against plain loops
//! over the saved tensors; generation against `Llama::generate`; error messages that name the path; and NF4
//! loading of a Hugging Face folder against its f32 twin.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use rankfold_models::llama::{GenerateOptions, Llama};
use rankfold_models::source::{load_llama, ModelSource, Nf4Options};
use rankfold_models::tokenizer::Tokenizer;
use rankfold_tensor::nn::{Linear, LinearModel, LinearSlot};
use rankfold_tensor::safetensors::{self, MmapedSafetensors};
use rankfold_tensor::{DType, Device, Tensor};
use serde_json::Value;

// What quantize and merge do to files: no silent overwrite, no partial output, a sharded source's dtype.
mod files;
// Inspect figures against plain loops over the saved tensors.
mod inspect;
// train and eval as a user runs them: the JSON summary, and Ctrl-C then --resume.
mod train;

pub(super) const METHODS: [&str; 4] = ["lora", "rslora", "adalora", "glora"];

pub(super) fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama")
        .join(rel)
}

/// A fresh scratch folder for one test.
pub(super) fn scratch(tag: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("rankfold-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

pub(super) fn rankfold(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_rankfold"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()?)
}

/// Runs `rankfold --json ARGS`, which must succeed, and returns its final line as JSON.
pub(super) fn run_json(args: &[&str]) -> Result<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = rankfold(&all)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "rankfold {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().context("no output")?;
    serde_json::from_str(last).with_context(|| format!("final line is not JSON: {last}"))
}

/// Runs `rankfold ARGS`, which must fail, and returns its stderr.
fn run_err(args: &[&str]) -> Result<String> {
    let out = rankfold(args)?;
    ensure!(
        !out.status.success(),
        "rankfold {args:?} succeeded but should fail"
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

pub(super) fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The fixture's token ids [2, 7] and an f32 tensor [2, 7, 97] from `dir/io.safetensors`.
fn io(dir: &Path, key: &str) -> Result<(Vec<Vec<u32>>, Vec<f32>)> {
    let st = MmapedSafetensors::open(fixture("untied/io.safetensors"))?;
    let ids: Vec<i64> = st.load("tokens", Device::Cpu)?.to_vec()?;
    let rows = ids
        .chunks(7)
        .map(|r| r.iter().map(|&i| i as u32).collect())
        .collect();
    let st = MmapedSafetensors::open(dir.join("io.safetensors"))?;
    Ok((rows, st.load(key, Device::Cpu)?.to_vec_f32()?))
}

/// |got − want| ≤ 1e-4 · max(|want|, 1) everywhere, non-finite values matching in kind.
fn check_close(what: &str, got: &[f32], want: &[f32]) -> Result<()> {
    let worst = crate::common::worst_rel(got, want, 1.0, what)?;
    ensure!(worst <= 1e-4, "{what}: worst relative difference {worst}");
    Ok(())
}

/// `rankfold forward` on each fixture row; returns the logits of both rows, row-major [2, 7, vocab].
fn forward_rows(
    model: &Path,
    adapter: Option<&Path>,
    rows: &[Vec<u32>],
    out: &Path,
) -> Result<Vec<f32>> {
    let extra = adapter.map_or(vec![], |a| vec!["--adapter", s(a)]);
    let all = forward_rows_n(model, &extra, rows, out)?;
    ensure!(all.len() == rows.len() * 7 * 97, "{} logits", all.len());
    Ok(all)
}

#[test]
fn forward_reproduces_pytorch_with_and_without_each_adapter() -> Result<()> {
    let tmp = scratch("forward")?;
    let out = tmp.join("logits.safetensors");
    for case in ["tied", "untied"] {
        let (rows, want) = io(&fixture(case), "logits")?;
        check_close(
            case,
            &forward_rows(&fixture(case), None, &rows, &out)?,
            &want,
        )?;
    }
    for method in METHODS {
        let dir = fixture(&format!("untied/{method}"));
        let (rows, want) = io(&dir, "logits")?;
        check_close(
            method,
            &forward_rows(&fixture("untied"), Some(&dir), &rows, &out)?,
            &want,
        )?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// ‖v‖ (Frobenius / Euclidean) in f64.
pub(super) fn fro(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

fn names(path: &Path) -> Result<Vec<String>> {
    let mut n = MmapedSafetensors::open(path)?.names();
    n.sort();
    Ok(n)
}

#[test]
fn merge_then_forward_reproduces_pytorch_merged_logits() -> Result<()> {
    let tmp = scratch("merge")?;
    let out = tmp.join("logits.safetensors");
    let source_config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("untied/config.json"))?)?;
    for method in METHODS {
        let dir = fixture(&format!("untied/{method}"));
        let merged = tmp.join(method);
        let v = run_json(&[
            "merge",
            "--model",
            s(&fixture("untied")),
            "--adapter",
            s(&dir),
            "--out",
            s(&merged),
        ])?;
        ensure!(
            v["adapted_layers"] == 14 && v["tensors"] == 21 && v["dtype"] == "f32",
            "{method}: summary {v}"
        );
        // Hugging Face names, exactly the source's, and the source's config.
        ensure!(
            names(&merged.join("model.safetensors"))?
                == names(&fixture("untied/model.safetensors"))?
        );
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(merged.join("config.json"))?)?;
        ensure!(
            config == source_config,
            "{method}: config.json changed: {config}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        ensure!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        let (rows, want) = io(&dir, "merged_logits")?;
        let ours = forward_rows(&merged, None, &rows, &out)?;
        check_close(&format!("{method} merged"), &ours, &want)?;
        // transformers loaded rankfold's merged folder (`llama_fixtures.py transformers-merged`) and gave PEFT's
        // merged logits to within f32 rounding; rankfold reads what it writes as transformers did.
        let hf: Vec<f32> = MmapedSafetensors::open(dir.join("transformers_merged.safetensors"))?
            .load("logits", Device::Cpu)?
            .to_vec()?;
        let worst = crate::common::worst_rel(&hf, &want, 1.0, "transformers vs PEFT merged")?;
        ensure!(worst <= 1e-5, "{method}: transformers vs PEFT merged: {worst}");
        check_close(&format!("{method} merged vs transformers"), &ours, &hf)?;
        // The folder loads in the library too.
        let m = Llama::from_hf_dir(&merged, DType::F32, Device::Cpu)?;
        ensure!(
            m.lm_head.is_some()
                && m.config
                    == Llama::from_hf_dir(fixture("untied"), DType::F32, Device::Cpu)?.config
        );
    }
    // A tied model (the untied fixture's LoRA fits its shapes) writes no lm_head, and merged equals unmerged.
    let merged = tmp.join("tied");
    let lora = fixture("untied/lora");
    run_json(&[
        "merge",
        "--model",
        s(&fixture("tied")),
        "--adapter",
        s(&lora),
        "--out",
        s(&merged),
    ])?;
    ensure!(
        names(&merged.join("model.safetensors"))? == names(&fixture("tied/model.safetensors"))?
    );
    ensure!(!names(&merged.join("model.safetensors"))?
        .iter()
        .any(|n| n == "lm_head.weight"));
    let (rows, _) = io(&fixture("tied"), "logits")?;
    let adapted = forward_rows(&fixture("tied"), Some(&lora), &rows, &out)?;
    check_close(
        "tied merged vs adapter",
        &forward_rows(&merged, None, &rows, &out)?,
        &adapted,
    )?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// A byte-level BPE tokenizer.json whose 97 tokens fit the tiny fixture: space, newline, `!`..`}` and the two
/// ChatML specials (ids 95, 96).
fn tiny_tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("Ġ".into(), 0.into());
    vocab.insert("Ċ".into(), 1.into());
    for (i, c) in ('!'..='}').enumerate() {
        vocab.insert(c.to_string(), (i + 2).into());
    }
    serde_json::json!({
        "version": "1.0", "normalizer": null,
        "added_tokens": [{"id": 95, "content": "<|im_start|>", "special": true}, {"id": 96, "content": "<|im_end|>", "special": true}],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
    })
    .to_string()
}

/// A copy of the untied fixture with the tiny tokenizer and a generation_config.json beside it.
pub(super) fn model_with_tokenizer(tmp: &Path) -> Result<PathBuf> {
    let d = tmp.join("model");
    std::fs::create_dir_all(&d)?;
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("untied").join(f), d.join(f))?;
    }
    std::fs::write(d.join("tokenizer.json"), tiny_tokenizer_json())?;
    std::fs::write(
        d.join("generation_config.json"),
        r#"{"eos_token_id": [2, 96]}"#,
    )?;
    Ok(d)
}

#[test]
fn merge_copies_tokenizer_files_and_refuses_a_used_folder() -> Result<()> {
    let tmp = scratch("merge-files")?;
    let model = model_with_tokenizer(&tmp)?;
    let lora = fixture("untied/lora");
    // An existing empty folder is fine.
    let out = tmp.join("out");
    std::fs::create_dir_all(&out)?;
    let v = run_json(&[
        "merge",
        "--model",
        s(&model),
        "--adapter",
        s(&lora),
        "--out",
        s(&out),
    ])?;
    ensure!(
        v["copied"] == serde_json::json!(["tokenizer.json", "generation_config.json"]),
        "{v}"
    );
    for f in ["tokenizer.json", "generation_config.json"] {
        ensure!(
            std::fs::read(out.join(f))? == std::fs::read(model.join(f))?,
            "{f} differs"
        );
    }
    // A folder with anything in it is refused and left alone.
    let before = std::fs::read(out.join("model.safetensors"))?;
    let err = run_err(&[
        "merge",
        "--model",
        s(&model),
        "--adapter",
        s(&lora),
        "--out",
        s(&out),
    ])?;
    ensure!(err.contains(s(&out)) && err.contains("not empty"), "{err}");
    ensure!(std::fs::read(out.join("model.safetensors"))? == before);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn errors_name_the_path_and_leave_files_alone() -> Result<()> {
    let tmp = scratch("errors")?;
    let model = fixture("untied");
    // An adapter folder without adapter_config.json.
    let bare = tmp.join("bare");
    std::fs::create_dir_all(&bare)?;
    std::fs::copy(
        fixture("untied/lora/adapter_model.safetensors"),
        bare.join("adapter_model.safetensors"),
    )?;
    let out = tmp.join("l.safetensors");
    for args in [
        vec![
            "forward",
            "--model",
            s(&model),
            "--adapter",
            s(&bare),
            "--tokens",
            "1,2",
            "--out",
            s(&out),
        ],
        vec!["inspect", s(&bare)],
        vec![
            "merge",
            "--model",
            s(&model),
            "--adapter",
            s(&bare),
            "--out",
            s(&tmp.join("m")),
        ],
    ] {
        let err = run_err(&args)?;
        ensure!(
            err.contains(s(&bare)) && err.contains("adapter_config.json"),
            "{args:?}: {err}"
        );
    }
    ensure!(!out.exists() && !tmp.join("m").exists());
    // An adapter whose tensor does not fit the base: the error names the file and the full key.
    let bad = tmp.join("bad");
    std::fs::create_dir_all(&bad)?;
    std::fs::copy(
        fixture("untied/lora/adapter_config.json"),
        bad.join("adapter_config.json"),
    )?;
    let mut t = safetensors::load(
        fixture("untied/lora/adapter_model.safetensors"),
        Device::Cpu,
    )?;
    let key = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight";
    let narrowed = t[key].narrow(1, 0, 95)?.contiguous()?;
    t.insert(key.to_string(), narrowed);
    let refs: Vec<(&str, &Tensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::save(bad.join("adapter_model.safetensors"), &refs, None)?;
    let err = run_err(&[
        "forward",
        "--model",
        s(&model),
        "--adapter",
        s(&bad),
        "--tokens",
        "1,2",
        "--out",
        s(&out),
    ])?;
    ensure!(
        err.contains(key) && err.contains(s(&bad)) && err.contains("95"),
        "{err}"
    );
    // An existing output file is not overwritten without --overwrite.
    run_json(&[
        "forward",
        "--model",
        s(&model),
        "--tokens",
        "1,2",
        "--out",
        s(&out),
    ])?;
    let before = std::fs::read(&out)?;
    let err = run_err(&[
        "forward",
        "--model",
        s(&model),
        "--tokens",
        "3,4,5",
        "--out",
        s(&out),
    ])?;
    ensure!(
        err.contains(s(&out)) && err.contains("--overwrite"),
        "{err}"
    );
    ensure!(std::fs::read(&out)? == before, "the existing file changed");
    run_json(&[
        "forward",
        "--model",
        s(&model),
        "--tokens",
        "3,4,5",
        "--out",
        s(&out),
        "--overwrite",
    ])?;
    ensure!(
        MmapedSafetensors::open(&out)?
            .load("logits", Device::Cpu)?
            .dims()
            == [3, 97]
    );
    // A quantized folder (config.json declares a quantization) is not a base to merge into.
    let quantized = tmp.join("quantized");
    std::fs::create_dir_all(&quantized)?;
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json"))?)?;
    config["quantization_config"] =
        serde_json::json!({"quant_method": "bitsandbytes", "load_in_4bit": true});
    std::fs::write(quantized.join("config.json"), config.to_string())?;
    std::fs::copy(
        model.join("model.safetensors"),
        quantized.join("model.safetensors"),
    )?;
    let lora = fixture("untied/lora");
    let err = run_err(&[
        "merge",
        "--model",
        s(&quantized),
        "--adapter",
        s(&lora),
        "--out",
        s(&tmp.join("mq")),
    ])?;
    ensure!(
        err.contains(s(&quantized.join("config.json"))) && err.contains("quantization_config"),
        "{err}"
    );
    // Token ids outside the vocabulary, and ids that are not numbers.
    let err = run_err(&[
        "forward",
        "--model",
        s(&model),
        "--tokens",
        "1,97",
        "--out",
        s(&tmp.join("x.safetensors")),
    ])?;
    ensure!(err.contains("id 97") && err.contains("97 tokens"), "{err}");
    let err = run_err(&[
        "forward",
        "--model",
        s(&model),
        "--tokens",
        "1,x",
        "--out",
        s(&tmp.join("x.safetensors")),
    ])?;
    ensure!(err.contains("`x`"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn generate_matches_the_library_greedy_sampled_and_chat() -> Result<()> {
    let tmp = scratch("generate")?;
    let dir = model_with_tokenizer(&tmp)?;
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let llama = Llama::from_hf_dir(&dir, DType::F32, Device::Cpu)?;
    let prompt = "Hi there, tiny model!";
    for (temp, top_p, seed) in [("0", "1", "0"), ("1.3", "0.9", "7")] {
        let v = run_json(&[
            "generate",
            "--model",
            s(&dir),
            "--prompt",
            prompt,
            "--max-new-tokens",
            "12",
            "--temperature",
            temp,
            "--top-p",
            top_p,
            "--seed",
            seed,
        ])?;
        let ids = tok.encode(prompt)?;
        ensure!(v["prompt_ids"] == serde_json::json!(ids), "{v}");
        let opts = GenerateOptions {
            max_new_tokens: 12,
            temperature: temp.parse()?,
            top_p: top_p.parse()?,
            stop_tokens: vec![2, 96],
            seed: seed.parse()?,
        };
        let want = llama.generate(&ids, &opts)?;
        ensure!(
            v["new_ids"] == serde_json::json!(want),
            "temperature {temp}: {} vs {want:?}",
            v["new_ids"]
        );
        ensure!(v["tokens_per_second"].as_f64().is_some(), "{v}");
    }
    // With an adapter: the same tokens as the library's PeftModel.
    let lora = fixture("untied/lora");
    let v = run_json(&[
        "generate",
        "--model",
        s(&dir),
        "--adapter",
        s(&lora),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "10",
    ])?;
    let mut pm =
        rankfold_adapters::PeftModel::new(Llama::from_hf_dir(&dir, DType::F32, Device::Cpu)?, 0);
    pm.load(&lora, "default")?;
    let opts = GenerateOptions {
        max_new_tokens: 10,
        stop_tokens: vec![2, 96],
        ..Default::default()
    };
    let want = pm.model().generate(&tok.encode(prompt)?, &opts)?;
    ensure!(
        v["new_ids"] == serde_json::json!(want),
        "with LoRA: {} vs {want:?}",
        v["new_ids"]
    );
    // --chat: the prompt is the ChatML text, and <|im_end|> stops.
    let v = run_json(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        prompt,
        "--chat",
        "--system",
        "Be brief.",
        "--max-new-tokens",
        "5",
    ])?;
    let text = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there, tiny model!<|im_end|>\n<|im_start|>assistant\n";
    ensure!(
        v["prompt_ids"] == serde_json::json!(tok.encode(text)?),
        "{v}"
    );
    // Without --json the text streams to stdout before the summary.
    let out = rankfold(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "12",
    ])?;
    ensure!(out.status.success());
    let want = llama.generate(
        &tok.encode(prompt)?,
        &GenerateOptions {
            max_new_tokens: 12,
            stop_tokens: vec![2, 96],
            ..Default::default()
        },
    )?;
    let shown: Vec<u32> = want.into_iter().filter(|t| ![2, 96].contains(t)).collect();
    let stdout = String::from_utf8(out.stdout)?;
    ensure!(stdout.starts_with(&tok.decode(&shown)?), "{stdout:?}");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn generate_chat_on_smollm2_when_fetched() -> Result<()> {
    let Some(gguf) = crate::common::asset(crate::common::SMOLLM2_GGUF)? else {
        return Ok(());
    };
    let v = run_json(&[
        "generate",
        "--model",
        s(&gguf),
        "--prompt",
        "What is the capital of France?",
        "--chat",
        "--max-new-tokens",
        "24",
    ])?;
    let completion = v["completion"].as_str().context("completion")?;
    eprintln!(
        "SmolLM2: {completion:?}, {} tokens/s",
        v["tokens_per_second"]
    );
    ensure!(completion.contains("Paris"), "{v}");
    Ok(())
}

#[test]
fn nf4_loading_of_a_hf_folder_tracks_its_f32_logits_within_the_nf4_error() -> Result<()> {
    let dir = fixture("untied");
    let opts = Nf4Options::default();
    let mut q = load_llama(&ModelSource::HfDir(dir.clone()), Some(opts))?;
    let f32_model = Llama::from_hf_dir(&dir, DType::F32, Device::Cpu)?;
    // The dequantized weights, checked against the blockwise NF4 bound: |w − ŵ| ≤ a·g/2 + |a − â| with a the
    // block's absmax, â its (double-quantized) stored value and g the widest gap of the codebook.
    let code = rankfold_kernels::nf4::NF4_CODEBOOK;
    let gap = code
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64)
        .fold(0.0, f64::max);
    let mut deq = Llama::from_hf_dir(&dir, DType::F32, Device::Cpu)?;
    let mut worst_rel = 0f64;
    let mut quantized = std::collections::HashMap::new();
    for (name, slot) in q.linear_slots() {
        quantized.insert(name, slot.layer().dense_weight()?.to_vec_f32()?);
    }
    let mut count = 0;
    for (name, slot) in deq.linear_slots() {
        let w = slot.layer().dense_weight()?;
        let wv = w.to_vec_f32()?;
        let qv = &quantized[&name];
        if name == "lm_head" {
            ensure!(&wv == qv, "the LM head must stay f32");
            continue;
        }
        for (bw, bq) in wv.chunks(opts.blocksize).zip(qv.chunks(opts.blocksize)) {
            let a = bw.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
            let ahat = bq.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
            for (&x, &y) in bw.iter().zip(bq) {
                let err = (x as f64 - y as f64).abs();
                ensure!(
                    err <= a * gap / 2.0 + (a - ahat).abs() + 1e-6,
                    "{name}: |w − ŵ| = {err} over the bound (absmax {a})"
                );
            }
        }
        let num = fro(wv.iter().zip(qv).map(|(&x, &y)| (x - y) as f64));
        worst_rel = worst_rel.max(num / fro(wv.iter().map(|&x| x as f64)));
        *slot = LinearSlot::new(Linear::from_weights(
            Tensor::from_vec(qv.clone(), w.dims().to_vec(), Device::Cpu)?,
            None,
        )?);
        count += 1;
    }
    ensure!(count == 14);
    let (rows, _) = io(&dir, "logits")?;
    let ids: Vec<u32> = rows.concat();
    let lq = q.forward_ids(&ids, 2, 7)?.to_vec_f32()?;
    // The NF4 path computes exactly the model of its dequantized weights...
    check_close(
        "nf4 vs its dequantized twin",
        &lq,
        &deq.forward_ids(&ids, 2, 7)?.to_vec_f32()?,
    )?;
    // `rankfold forward --nf4` runs the same quantized model.
    let tmp = scratch("nf4")?;
    let cli = forward_rows_n(&dir, &["--nf4"], &rows, &tmp.join("l.safetensors"))?;
    check_close("forward --nf4 vs load_llama NF4", &cli, &lq)?;
    let _ = std::fs::remove_dir_all(&tmp);
    // ...which is the f32 model with every projection off by at most `worst_rel` (relative Frobenius). Through
    // residual blocks that error grows about linearly with depth: the logits may move by at most a few times
    // that per block, and must move (NF4 is lossy).
    let lf = f32_model.forward_ids(&ids, 2, 7)?.to_vec_f32()?;
    let rel =
        fro(lq.iter().zip(&lf).map(|(&a, &b)| (a - b) as f64)) / fro(lf.iter().map(|&x| x as f64));
    let layers = f32_model.config.num_hidden_layers as f64;
    eprintln!("NF4: worst projection error {worst_rel:.4}, logits relative error {rel:.4}");
    ensure!(
        rel > 0.0 && rel <= 4.0 * layers * worst_rel,
        "logits relative error {rel} vs weight error {worst_rel}"
    );
    Ok(())
}

#[test]
fn merge_of_a_gguf_base_writes_a_config_that_reads_back_and_the_same_logits() -> Result<()> {
    use rankfold_adapters::lora::{LoraConfig, LoraInit};
    use rankfold_adapters::{PeftModel, TargetModules};
    let tmp = scratch("merge-gguf")?;
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/tiny_llama.gguf");
    // A LoRA adapter with non-zero B for the one-layer GGUF fixture, saved as a PEFT folder.
    let base = Llama::from_gguf(&gguf)?;
    let want_config = base.config.clone();
    let mut pm = PeftModel::new(base, 3);
    let mut cfg =
        LoraConfig::new(TargetModules::list(&["q_proj", "v_proj", "down_proj"])).with_rank(3, 6.0);
    cfg.init_lora_weights = LoraInit::Random;
    pm.add_adapter("default", Box::new(cfg))?;
    let adapter = tmp.join("adapter");
    pm.save_pretrained(&adapter, "default")?;
    let merged = tmp.join("merged");
    let v = run_json(&[
        "merge",
        "--model",
        s(&gguf),
        "--adapter",
        s(&adapter),
        "--out",
        s(&merged),
    ])?;
    ensure!(
        v["adapted_layers"] == 3 && v["copied"] == serde_json::json!([]),
        "{v}"
    );
    let config = rankfold_models::llama::LlamaConfig::from_file(merged.join("config.json"))?;
    ensure!(config == want_config, "{config:?} vs {want_config:?}");
    let rows = vec![vec![0u32, 5, 36, 17, 2, 9], vec![36, 1, 1, 30, 4, 12]];
    let out = tmp.join("l.safetensors");
    let with_adapter = forward_rows_n(&gguf, &["--adapter", s(&adapter)], &rows, &out)?;
    check_close(
        "GGUF merged vs adapter",
        &forward_rows_n(&merged, &[], &rows, &out)?,
        &with_adapter,
    )?;
    let plain = forward_rows_n(&gguf, &[], &rows, &out)?;
    ensure!(
        plain
            .iter()
            .zip(&with_adapter)
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "the adapter changed nothing"
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// `rankfold forward ARGS` on rows of any length (each run's summary and tensor checked); all logits, row-major.
fn forward_rows_n(model: &Path, extra: &[&str], rows: &[Vec<u32>], out: &Path) -> Result<Vec<f32>> {
    let mut all = Vec::new();
    for row in rows {
        let tokens = row.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let mut args = vec![
            "forward",
            "--model",
            s(model),
            "--tokens",
            &tokens,
            "--out",
            s(out),
            "--overwrite",
        ];
        args.extend_from_slice(extra);
        let v = run_json(&args)?;
        ensure!(
            v["command"] == "forward"
                && v["tokens"] == row.len()
                && v["nf4"] == extra.contains(&"--nf4"),
            "{v}"
        );
        let t = MmapedSafetensors::open(out)?.load("logits", Device::Cpu)?;
        ensure!(
            t.dims()[0] == row.len() && t.dtype() == DType::F32,
            "logits {:?} {:?}",
            t.dims(),
            t.dtype()
        );
        all.extend(t.to_vec_f32()?);
    }
    Ok(all)
}
