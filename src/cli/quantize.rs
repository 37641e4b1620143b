//! `rankfold quantize`: rewrites the floating weights of a Hugging Face model folder or a single .safetensors
//! file in bitsandbytes NF4 layout (files that transformers + bitsandbytes load), copying everything else.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rankfold_tensor::safetensors::{write_atomic, MmapedSafetensors};
use rankfold_tensor::{DType, Device, Nf4Tensor, Tensor};
use regex::Regex;

use super::common;

/// Names the default target set leaves alone: embeddings, norms, and the (often tied) output head.
const DEFAULT_SKIP: &str = r"(?i)(embed|norm|ln_|\bwte\b|\bwpe\b|lm_head)";

/// The options of `rankfold quantize`.
#[derive(Debug, clap::Args)]
pub(crate) struct QuantizeArgs {
    /// A Hugging Face model folder or a single .safetensors file.
    #[arg(long = "in")]
    input: PathBuf,
    /// Where to write: a folder for a folder input, a file for a file input. Never the input itself.
    #[arg(long = "out")]
    output: PathBuf,
    /// Elements per quantization block: a power of two in 32..=4096.
    #[arg(long, default_value_t = 64)]
    blocksize: usize,
    /// Keep the block scales in f32 instead of double-quantizing them.
    #[arg(long)]
    no_double_quant: bool,
    /// Quantize the floating tensors whose name matches this regex (default: 2-D `*.weight` tensors of linear
    /// layers, not embeddings, norms or lm_head).
    #[arg(long)]
    include: Option<String>,
    /// Leave tensors whose name matches this regex unchanged.
    #[arg(long)]
    exclude: Option<String>,
    /// Sum the block scales for the double-quantization offset in the order torch uses with this many intra-op
    /// threads (`torch.get_num_threads()` of the bitsandbytes run to reproduce bit for bit; it matters from
    /// 32 768 blocks up, and any count gives a valid file).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    torch_threads: u16,
    /// Replace an existing `--out` file or folder (otherwise an existing output is an error; a folder is
    /// replaced whole, only once the new one is complete).
    #[arg(long)]
    overwrite: bool,
}

/// What happened to one tensor.
struct Row {
    name: String,
    before: usize,
    after: usize,
    rel_rms: Option<f64>,
}

/// The tensor filter built from the options.
struct Targets {
    include: Option<Regex>,
    exclude: Option<Regex>,
    skip: Regex,
}

impl Targets {
    fn new(a: &QuantizeArgs) -> Result<Self> {
        let re = |s: &Option<String>, flag: &str| -> Result<Option<Regex>> {
            s.as_deref()
                .map(|p| Regex::new(p).with_context(|| format!("--{flag} {p:?} is not a valid regex")))
                .transpose()
        };
        Ok(Targets {
            include: re(&a.include, "include")?,
            exclude: re(&a.exclude, "exclude")?,
            skip: Regex::new(DEFAULT_SKIP).expect("the default skip pattern is a valid regex"),
        })
    }

    fn wants(&self, name: &str, dims: &[usize], dtype: DType) -> bool {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) || dims.iter().product::<usize>() == 0 {
            return false;
        }
        let included = match &self.include {
            Some(r) => r.is_match(name),
            None => dims.len() == 2 && name.ends_with(".weight") && !self.skip.is_match(name),
        };
        included && !self.exclude.as_ref().is_some_and(|r| r.is_match(name))
    }
}

fn same_or_inside(out: &Path, input: &Path) -> bool {
    let canon = |p: &Path| -> Option<PathBuf> {
        p.canonicalize().ok().or_else(|| {
            p.parent()
                .and_then(|d| d.canonicalize().ok())
                .map(|d| d.join(p.file_name().unwrap_or_default()))
        })
    };
    match (canon(out), canon(input)) {
        (Some(o), Some(i)) => o == i || (input.is_dir() && o.starts_with(&i)),
        _ => false,
    }
}

/// Relative RMS error ‖w − ŵ‖ / ‖w‖ (0 for an all-zero tensor).
fn rel_rms(w: &Tensor, q: &Nf4Tensor) -> Result<f64> {
    let a = w.to_vec::<f32>()?;
    let b = q.dequantize(DType::F32)?.to_vec::<f32>()?;
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*x as f64).powi(2);
    }
    Ok(if den == 0.0 { 0.0 } else { (num / den).sqrt() })
}

/// Quantizes one safetensors file into `out`.
fn quantize_file(
    input: &Path,
    out: &Path,
    a: &QuantizeArgs,
    targets: &Targets,
    rows: &mut Vec<Row>,
) -> Result<Vec<String>> {
    let st = MmapedSafetensors::open(input)?;
    ensure!(
        Nf4Tensor::names_in(&st).is_empty(),
        "{} already holds NF4 weights",
        input.display()
    );
    let names = st.names();
    let mut nf4 = Vec::new();
    let mut plain = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (shape, dtype) = st.info(name)?;
        let t = st.load(name, Device::Cpu)?;
        let before = shape.elem_count() * dtype.size_in_bytes();
        if targets.wants(name, shape.dims(), dtype) {
            let q = Nf4Tensor::quantize_with(&t, a.blocksize, !a.no_double_quant, a.torch_threads.into())
                .with_context(|| format!("{}: tensor `{name}`", input.display()))?;
            let err = rel_rms(&t, &q)?;
            rows.push(Row {
                name: name.clone(),
                before,
                after: q.storage_bytes(),
                rel_rms: Some(err),
            });
            nf4.push((name.clone(), q));
        } else {
            rows.push(Row {
                name: name.clone(),
                before,
                after: before,
                rel_rms: None,
            });
            plain.push((name.clone(), t));
        }
        eprint!(
            "\r[{}/{}] {}",
            i + 1,
            names.len(),
            input.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    eprintln!();
    let nf4_refs: Vec<(&str, &Nf4Tensor)> = nf4.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let plain_refs: Vec<(&str, &Tensor)> = plain.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Nf4Tensor::save(out, &nf4_refs, &plain_refs)?;
    // Every key the new file holds, for a sharded model's index.
    Ok(MmapedSafetensors::open(out)?.names())
}

/// Adds bitsandbytes' `quantization_config` to a config.json so transformers loads the NF4 weights.
fn quantized_config(bytes: &[u8], path: &Path, a: &QuantizeArgs, skipped: Vec<String>) -> Result<Vec<u8>> {
    let mut cfg: serde_json::Value =
        serde_json::from_slice(bytes).with_context(|| format!("{} is not JSON", path.display()))?;
    let obj = cfg
        .as_object_mut()
        .with_context(|| format!("{} is not a JSON object", path.display()))?;
    obj.insert(
        "quantization_config".into(),
        serde_json::json!({
            "quant_method": "bitsandbytes",
            "load_in_4bit": true,
            "load_in_8bit": false,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": !a.no_double_quant,
            "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_quant_storage": "uint8",
            "llm_int8_skip_modules": skipped,
        }),
    );
    Ok(serde_json::to_vec_pretty(&cfg)?)
}

/// Runs `rankfold quantize`. The output is written beside `--out` under a temporary name and renamed into place
/// once complete, so a failure (a corrupt input, say) leaves no partial output and an existing one untouched.
pub(crate) fn run(a: &QuantizeArgs, json: bool) -> Result<()> {
    rankfold_kernels_check(a.blocksize)?;
    let targets = Targets::new(a)?;
    ensure!(a.input.exists(), "input {} does not exist", a.input.display());
    if same_or_inside(&a.output, &a.input) {
        bail!(
            "refusing to write {} over or inside the input {}",
            a.output.display(),
            a.input.display()
        );
    }
    let mut rows = Vec::new();
    if a.input.is_dir() {
        if !a.overwrite {
            common::require_absent_or_empty_dir(&a.output).context("pass --overwrite to replace it")?;
        } else if a.output.is_file() {
            bail!("{} is a file; a folder input needs a folder --out", a.output.display());
        }
        let tmp = common::temp_sibling(&a.output)?;
        let _ = std::fs::remove_dir_all(&tmp);
        let written = quantize_dir(a, &tmp, &targets, &mut rows).and_then(|()| common::replace_dir(&tmp, &a.output));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    } else {
        common::refuse_existing_file(&a.output, a.overwrite)?;
        ensure!(!a.output.is_dir(), "{} is a folder; a file input needs a file --out", a.output.display());
        // `Nf4Tensor::save` writes a temporary file and renames it into place.
        quantize_file(&a.input, &a.output, a, &targets, &mut rows)?;
    }
    report(&rows, a, json)
}

/// Quantizes every .safetensors file of the input folder into `out` (created here) and copies the other files,
/// with config.json given a `quantization_config` and a shard index given the new key set.
fn quantize_dir(a: &QuantizeArgs, out: &Path, targets: &Targets, rows: &mut Vec<Row>) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&a.input)
        .with_context(|| format!("reading folder {}", a.input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    ensure!(
        entries.iter().any(|p| p.extension().is_some_and(|e| e == "safetensors")),
        "{} holds no .safetensors file",
        a.input.display()
    );
    let mut weight_map = serde_json::Map::new();
    for p in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")) {
        let name = p.file_name().expect("a listed file has a name");
        for key in quantize_file(p, &out.join(name), a, targets, rows)? {
            weight_map.insert(key, serde_json::Value::String(name.to_string_lossy().into_owned()));
        }
    }
    let skipped: Vec<String> = rows
        .iter()
        .filter(|r| r.rel_rms.is_none())
        .filter_map(|r| r.name.strip_suffix(".weight").map(str::to_string))
        .collect();
    for p in entries.iter().filter(|p| p.extension().is_none_or(|e| e != "safetensors")) {
        let name = p.file_name().expect("a listed file has a name");
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let bytes = match name.to_str() {
            Some("config.json") => quantized_config(&bytes, p, a, skipped.clone())?,
            Some(n) if n.ends_with(".safetensors.index.json") => {
                let mut idx: serde_json::Value =
                    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", p.display()))?;
                idx["weight_map"] = serde_json::Value::Object(weight_map.clone());
                serde_json::to_vec_pretty(&idx)?
            }
            _ => bytes,
        };
        write_atomic(&out.join(name), &bytes)?;
    }
    Ok(())
}

fn rankfold_kernels_check(blocksize: usize) -> Result<()> {
    ensure!(
        blocksize.is_power_of_two() && (32..=4096).contains(&blocksize),
        "--blocksize {blocksize} is not a power of two in 32..=4096"
    );
    Ok(())
}

fn report(rows: &[Row], a: &QuantizeArgs, json: bool) -> Result<()> {
    let before: usize = rows.iter().map(|r| r.before).sum();
    let after: usize = rows.iter().map(|r| r.after).sum();
    let quantized: Vec<&Row> = rows.iter().filter(|r| r.rel_rms.is_some()).collect();
    let worst = quantized.iter().filter_map(|r| r.rel_rms).fold(0f64, f64::max);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "command": "quantize", "out": a.output.display().to_string(), "tensors": rows.len(),
                "quantized": quantized.len(), "bytes_before": before, "bytes_after": after, "max_rel_rms": worst,
                "per_tensor": quantized.iter().map(|r| serde_json::json!({"name": r.name, "rel_rms": r.rel_rms})).collect::<Vec<_>>(),
            })
        );
    } else {
        for r in &quantized {
            println!(
                "  {:<60} {:>12} B → {:>10} B  rel. RMS error {:.4}",
                r.name,
                r.before,
                r.after,
                r.rel_rms.unwrap_or(0.0)
            );
        }
        println!(
            "quantized {} of {} tensors to NF4 (blocksize {}{}): {before} B → {after} B ({:.2}×), max rel. RMS error {worst:.4}",
            quantized.len(),
            rows.len(),
            a.blocksize,
            if a.no_double_quant { "" } else { ", double-quantized scales" },
            before as f64 / after.max(1) as f64,
        );
    }
    Ok(())
}
