//! What the `rankfold` binary does to files: `quantize` never replaces an output without `--overwrite`, and a
//! failure (a corrupt input) leaves no partial output and an existing one untouched; `merge` writes a sharded
//! source's dtype, exactly as it writes the same weights from one file.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use rankfold_tensor::safetensors::{self, MmapedSafetensors};
use rankfold_tensor::{DType, Device, Rng, Tensor};

use super::{fixture, rankfold, run_json, s, scratch};

/// Every file under `dir` (relative path → bytes), for before/after comparisons.
fn snapshot(dir: &Path) -> Result<HashMap<String, Vec<u8>>> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        out.insert(p.file_name().context("a listed file has a name")?.to_string_lossy().into_owned(), std::fs::read(&p)?);
    }
    Ok(out)
}

/// The names in `dir` that start with a dot (temporary files and folders).
fn hidden(dir: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect())
}

#[test]
fn quantize_refuses_to_replace_outputs_and_a_failure_leaves_nothing_behind() -> Result<()> {
    let tmp = scratch("quantize-files")?;
    let model = tmp.join("model");
    std::fs::create_dir_all(&model)?;
    let w = Rng::new(3).normal_tensor(0.0, 0.05, (48, 64), DType::F32, Device::Cpu)?;
    safetensors::save(model.join("model.safetensors"), &[("model.layers.0.q_proj.weight", &w)], None)?;
    std::fs::write(model.join("config.json"), "{\"model_type\": \"llama\"}")?;
    let out = tmp.join("out");
    run_json(&["quantize", "--in", s(&model), "--out", s(&out)])?;
    let first = snapshot(&out)?;
    ensure!(first.contains_key("model.safetensors") && first.contains_key("config.json"), "{:?}", first.keys());

    // A second run into the same folder is refused and changes nothing; with --overwrite it replaces it.
    let o = rankfold(&["quantize", "--in", s(&model), "--out", s(&out), "--blocksize", "32"])?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(!o.status.success() && err.contains("not empty") && err.contains("--overwrite"), "{err}");
    ensure!(snapshot(&out)? == first, "a refused run changed the output folder");
    run_json(&["quantize", "--in", s(&model), "--out", s(&out), "--blocksize", "32", "--overwrite"])?;
    let second = snapshot(&out)?;
    ensure!(second["model.safetensors"] != first["model.safetensors"], "--overwrite did not replace the weights");

    // A corrupt input: no output folder appears, an existing one survives --overwrite, no temporaries stay.
    let bad = tmp.join("bad");
    std::fs::create_dir_all(&bad)?;
    let bytes = std::fs::read(model.join("model.safetensors"))?;
    std::fs::write(bad.join("model.safetensors"), &bytes[..bytes.len() - 64])?;
    let fresh = tmp.join("fresh");
    let o = rankfold(&["quantize", "--in", s(&bad), "--out", s(&fresh)])?;
    ensure!(!o.status.success() && !fresh.exists(), "a failed run left {}", fresh.display());
    let o = rankfold(&["quantize", "--in", s(&bad), "--out", s(&out), "--overwrite"])?;
    ensure!(!o.status.success() && snapshot(&out)? == second, "a failed --overwrite run changed the output");
    ensure!(hidden(&tmp)?.is_empty(), "temporaries left: {:?}", hidden(&tmp)?);

    // A single file: an existing output is kept unless --overwrite; the thread count must be positive.
    let file_out = tmp.join("w.safetensors");
    std::fs::write(&file_out, b"keep me")?;
    let o = rankfold(&["quantize", "--in", s(&model.join("model.safetensors")), "--out", s(&file_out)])?;
    ensure!(!o.status.success() && std::fs::read(&file_out)? == b"keep me", "overwrote a file");
    run_json(&["quantize", "--in", s(&model.join("model.safetensors")), "--out", s(&file_out), "--overwrite"])?;
    ensure!(MmapedSafetensors::open(&file_out)?.names().len() > 1);
    let o = rankfold(&["quantize", "--in", s(&model), "--out", s(&tmp.join("t0")), "--torch-threads", "0"])?;
    ensure!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("torch-threads"));
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn merge_writes_a_sharded_sources_dtype_bit_for_bit_like_one_file() -> Result<()> {
    let tmp = scratch("merge-shards")?;
    let src = MmapedSafetensors::open(fixture("untied/model.safetensors"))?;
    let mut names = src.names();
    names.sort();
    let tensors: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| Ok((n.clone(), src.load(n, Device::Cpu)?.to_dtype(DType::BF16)?)))
        .collect::<Result<_>>()?;
    let (single, sharded) = (tmp.join("single"), tmp.join("sharded"));
    for d in [&single, &sharded] {
        std::fs::create_dir_all(d)?;
        std::fs::copy(fixture("untied/config.json"), d.join("config.json"))?;
    }
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::save(single.join("model.safetensors"), &refs, None)?;
    // Two shards, the embedding in the second, as Hugging Face writes large models.
    let (a, b): (Vec<_>, Vec<_>) = refs.iter().partition(|(n, _)| !n.contains("embed"));
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", &a), ("model-00002-of-00002.safetensors", &b)] {
        safetensors::save(sharded.join(file), part, None)?;
        for (n, _) in part.iter() {
            map.insert(n.to_string(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string())?;

    let mut merged = Vec::new();
    for d in [&single, &sharded] {
        let out = tmp.join(format!("{}-merged", d.file_name().context("name")?.to_string_lossy()));
        let v = run_json(&["merge", "--model", s(d), "--adapter", s(&fixture("untied/lora")), "--out", s(&out)])?;
        ensure!(v["dtype"] == "bf16", "{}: summary {v}", d.display());
        let st = MmapedSafetensors::open(out.join("model.safetensors"))?;
        for n in st.names() {
            ensure!(st.info(&n)?.1 == DType::BF16, "{n} is not bf16");
        }
        merged.push(std::fs::read(out.join("model.safetensors"))?);
    }
    ensure!(merged[0] == merged[1], "the sharded source merged to other bytes than the single file");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
