//! `rankfold inspect`: describes a PEFT adapter folder — method, target modules, per-layer ranks (or GLoRA
//! support shapes), scaling, parameter counts and the Frobenius norm of each layer's weight update computed from
//! the saved tensors — or lists the tensors of .safetensors files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rankfold_adapters::adalora::AdaLoraConfig;
use rankfold_adapters::glora::GloraConfig;
use rankfold_adapters::lora::LoraConfig;
use rankfold_adapters::peft;
use rankfold_tensor::nn::LinearModel;
use rankfold_tensor::safetensors::MmapedSafetensors;
use rankfold_tensor::{DType, Tensor};
use serde_json::json;

use super::common::{self, path_json};

/// Arguments of `rankfold inspect`.
#[derive(clap::Args, Debug)]
pub(crate) struct InspectArgs {
    /// A PEFT adapter folder, a .safetensors file, or a folder holding some.
    path: PathBuf,
    /// The base of a GLoRA adapter — a model folder, a GGUF file, or a .safetensors file of `<module>.weight`
    /// tensors: its update W0⊙A + B needs W0; without it the norms of the additive part B and of the relative part
    /// A are reported.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// Runs `rankfold inspect`; with `json` the final summary line is a JSON object.
pub(crate) fn run(args: &InspectArgs, json: bool) -> Result<()> {
    let p = &args.path;
    if p.is_dir() && (p.join(peft::CONFIG_FILE).exists() || p.join(peft::WEIGHTS_FILE).exists()) {
        common::check_adapter_dir(p)?;
        return inspect_adapter(p, args.model.as_deref(), json);
    }
    if args.model.is_some() {
        bail!(
            "--model applies to PEFT adapter folders; {} is not one",
            p.display()
        );
    }
    inspect_safetensors(p, json)
}

fn safetensors_files(path: &PathBuf) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading folder {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        anyhow::ensure!(
            !files.is_empty(),
            "{} holds no .safetensors file and no {} (not a PEFT adapter folder)",
            path.display(),
            peft::CONFIG_FILE
        );
        Ok(files)
    } else {
        Ok(vec![path.clone()])
    }
}

fn inspect_safetensors(path: &PathBuf, json: bool) -> Result<()> {
    let mut total_tensors = 0usize;
    let mut total_bytes = 0usize;
    for file in safetensors_files(path)? {
        let st = MmapedSafetensors::open(&file)?;
        if !json {
            println!("{}", file.display());
        }
        for name in st.names() {
            let (shape, dtype) = st.info(&name)?;
            let bytes = shape.elem_count() * dtype.size_in_bytes();
            total_tensors += 1;
            total_bytes += bytes;
            if !json {
                println!("  {name:<60} {dtype:<5} {shape:<20} {bytes:>12} B");
            }
        }
    }
    if json {
        println!(
            "{}",
            json!({ "command": "inspect", "path": path_json(path), "tensors": total_tensors, "bytes": total_bytes })
        );
    } else {
        println!("{total_tensors} tensors, {total_bytes} bytes");
    }
    Ok(())
}

/// One adapted module's figures.
#[derive(Debug)]
struct LayerReport {
    module: String,
    in_f: usize,
    out_f: usize,
    /// LoRA: r; AdaLoRA: the ranks saved (after pruning); GLoRA: none.
    rank: Option<usize>,
    /// AdaLoRA: the ranks with a non-zero singular value λ.
    effective_rank: Option<usize>,
    /// GLoRA: the support shape of each path (`A=lora_3 B=vector …`).
    support: Option<String>,
    /// The factor the low-rank product is multiplied by.
    scaling: Option<f64>,
    params: usize,
    /// ‖ΔW‖_F of the weight update, when it can be computed.
    delta_norm: Option<f64>,
    /// GLoRA without the base: ‖B‖_F and ‖A‖_F (A as the full [out, in] matrix it stands for).
    b_norm: Option<f64>,
    a_norm: Option<f64>,
}

impl LayerReport {
    fn new(module: &str) -> LayerReport {
        LayerReport {
            module: module.to_string(),
            in_f: 0,
            out_f: 0,
            rank: None,
            effective_rank: None,
            support: None,
            scaling: None,
            params: 0,
            delta_norm: None,
            b_norm: None,
            a_norm: None,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "module": self.module, "in_features": self.in_f, "out_features": self.out_f, "rank": self.rank,
            "effective_rank": self.effective_rank, "support": self.support, "scaling": self.scaling,
            "params": self.params, "delta_norm": self.delta_norm, "b_norm": self.b_norm, "a_norm": self.a_norm,
        })
    }
}

/// The adapter's tensors grouped by module path: module → (suffix such as `lora_A.weight` → tensor).
fn group_by_module(
    file: &str,
    tensors: HashMap<String, Tensor>,
) -> Result<BTreeMap<String, HashMap<String, Tensor>>> {
    let mut out: BTreeMap<String, HashMap<String, Tensor>> = BTreeMap::new();
    for (key, t) in tensors {
        let rest = key.strip_prefix(peft::KEY_PREFIX).with_context(|| {
            format!(
                "{file}: tensor `{key}` does not start with `{}`",
                peft::KEY_PREFIX
            )
        })?;
        let cut = [".lora_", ".glora_"]
            .iter()
            .filter_map(|m| rest.find(m))
            .min()
            .with_context(|| {
                format!("{file}: tensor `{key}` is not a LoRA, AdaLoRA or GLoRA tensor")
            })?;
        out.entry(rest[..cut].to_string())
            .or_default()
            .insert(rest[cut + 1..].to_string(), t);
    }
    Ok(out)
}

/// The tensor `suffix` of `module`, as f64, with the rank-2 shape it must have (`None` for a free dimension).
fn get2(
    file: &str,
    module: &str,
    t: &HashMap<String, Tensor>,
    suffix: &str,
    want: [Option<usize>; 2],
) -> Result<Tensor> {
    let key = format!("{}{module}.{suffix}", peft::KEY_PREFIX);
    let x = t
        .get(suffix)
        .with_context(|| format!("{file}: missing tensor `{key}`"))?;
    let d = x.dims();
    let ok = d.len() == 2 && want.iter().zip(d).all(|(w, &n)| w.is_none_or(|w| w == n));
    if !ok {
        let show: Vec<String> = want
            .iter()
            .map(|w| w.map_or("?".into(), |n| n.to_string()))
            .collect();
        bail!(
            "{file}: tensor `{key}` has shape {d:?}, expected [{}]",
            show.join(", ")
        );
    }
    Ok(x.to_dtype(DType::F64)?)
}

/// ‖x‖_F of an f64 tensor.
fn frobenius(x: &Tensor) -> Result<f64> {
    Ok(x.sqr()?.sum_all()?.to_scalar()?.sqrt())
}

fn lora_layer(
    file: &str,
    cfg: &LoraConfig,
    module: &str,
    t: &HashMap<String, Tensor>,
) -> Result<LayerReport> {
    let a = get2(file, module, t, "lora_A.weight", [None, None])?;
    let (r, in_f) = (a.dims()[0], a.dims()[1]);
    let b = get2(file, module, t, "lora_B.weight", [None, Some(r)])?;
    let out_f = b.dims()[0];
    if t.len() != 2 {
        let extra: Vec<&String> = t
            .keys()
            .filter(|k| !k.starts_with("lora_A") && !k.starts_with("lora_B"))
            .collect();
        bail!("{file}: module `{module}` has tensors this LoRA report does not know: {extra:?}");
    }
    let (r_cfg, scaling) = cfg.rank_and_scaling(module)?;
    if r_cfg != r {
        bail!("{file}: module `{module}`: the config's r / rank_pattern say rank {r_cfg}, the tensors have rank {r}");
    }
    let delta = b.matmul(&a)?.mul_scalar(scaling)?;
    Ok(LayerReport {
        in_f,
        out_f,
        rank: Some(r),
        scaling: Some(scaling),
        params: r * (in_f + out_f),
        delta_norm: Some(frobenius(&delta)?),
        ..LayerReport::new(module)
    })
}

fn adalora_layer(
    file: &str,
    cfg: &AdaLoraConfig,
    module: &str,
    t: &HashMap<String, Tensor>,
) -> Result<LayerReport> {
    let a = get2(file, module, t, "lora_A", [None, None])?;
    let (k, in_f) = (a.dims()[0], a.dims()[1]);
    let e = get2(file, module, t, "lora_E", [Some(k), Some(1)])?;
    let b = get2(file, module, t, "lora_B", [None, Some(k)])?;
    let out_f = b.dims()[0];
    if let Some(p) = cfg.pattern_for(module, "default") {
        let kept = p.iter().filter(|&&x| x).count();
        if kept != k {
            bail!(
                "{file}: module `{module}`: rank_pattern keeps {kept} ranks, the tensors have {k}"
            );
        }
    }
    // PEFT's scale: lora_alpha (or r when it is ≤ 0) over ranknum + 1e-5, ranknum being the initial rank.
    let init_r = cfg.init_r as f64;
    let alpha = if cfg.lora_alpha > 0.0 {
        cfg.lora_alpha
    } else {
        init_r
    };
    let scaling = alpha / (init_r + 1e-5);
    let lambda = e.flatten_all()?.to_vec::<f64>()?;
    let delta = b
        .mul(&e.t()?.broadcast_as((out_f, k))?)?
        .matmul(&a)?
        .mul_scalar(scaling)?;
    Ok(LayerReport {
        in_f,
        out_f,
        rank: Some(k),
        effective_rank: Some(lambda.iter().filter(|&&l| l != 0.0).count()),
        scaling: Some(scaling),
        params: k * (in_f + out_f + 1),
        delta_norm: Some(frobenius(&delta)?),
        ..LayerReport::new(module)
    })
}

/// One GLoRA path's support shape and value: `Xd·Xu`, a vector or scalar `X`, or off (`zeros` buffer).
fn glora_path(
    file: &str,
    module: &str,
    t: &HashMap<String, Tensor>,
    path: &str,
) -> Result<(String, Option<Tensor>, usize)> {
    let key = |s: &str| format!("{path}.{s}");
    let full = |s: &str| format!("{}{module}.{path}.{s}", peft::KEY_PREFIX);
    if let (Some(xd), Some(xu)) = (t.get(&key("Xd")), t.get(&key("Xu"))) {
        let (xd, xu) = (xd.to_dtype(DType::F64)?, xu.to_dtype(DType::F64)?);
        if xd.rank() != 2 || xu.rank() != 2 || xd.dims()[1] != xu.dims()[0] {
            bail!(
                "{file}: tensors `{}` {:?} and `{}` {:?} do not chain",
                full("Xd"),
                xd.dims(),
                full("Xu"),
                xu.dims()
            );
        }
        let n = xd.elem_count() + xu.elem_count();
        return Ok((format!("lora_{}", xd.dims()[1]), Some(xd.matmul(&xu)?), n));
    }
    if let Some(x) = t.get(&key("X")) {
        let kind = if x.elem_count() == 1 {
            "constant"
        } else {
            "vector"
        };
        return Ok((kind.into(), Some(x.to_dtype(DType::F64)?), x.elem_count()));
    }
    if t.contains_key(&key("zeros")) {
        return Ok(("none".into(), None, 0));
    }
    bail!(
        "{file}: module `{module}` has no tensor for GLoRA path `{path}` (`{}`, `{}` or `{}`)",
        full("Xd"),
        full("X"),
        full("zeros")
    );
}

fn glora_layer(
    file: &str,
    module: &str,
    t: &HashMap<String, Tensor>,
    base: Option<&Tensor>,
) -> Result<LayerReport> {
    let mut shapes = Vec::new();
    let mut params = 0;
    let mut values = Vec::new();
    for (letter, path) in [
        ("A", "glora_A"),
        ("B", "glora_B"),
        ("C", "glora_C"),
        ("D", "glora_D"),
        ("E", "glora_E"),
    ] {
        let (shape, value, n) = glora_path(file, module, t, path)?;
        shapes.push(format!("{letter}={shape}"));
        params += n;
        values.push(value);
    }
    let (out_f, in_f) = match (base, glora_dims(t)) {
        (Some(w), Some(d)) if w.dims() != [d.0, d.1] => {
            bail!("{file}: module `{module}`: the base weight is {:?}, the adapter's tensors are for [{}, {}]", w.dims(), d.0, d.1)
        }
        (Some(w), _) => (w.dims()[0], w.dims()[1]),
        (None, d) => d.unwrap_or((0, 0)),
    };
    let full = |v: &Option<Tensor>| -> Result<Option<Tensor>> {
        match v {
            None => Ok(None),
            Some(v) if out_f == 0 => Ok(Some(v.clone())),
            Some(v) => Ok(Some(v.broadcast_as((out_f, in_f))?.contiguous()?)),
        }
    };
    let (a, b) = (full(&values[0])?, full(&values[1])?);
    let norm = |x: &Option<Tensor>| -> Result<f64> { x.as_ref().map_or(Ok(0.0), frobenius) };
    let delta_norm = match base {
        None => None,
        Some(w) => {
            let mut d = Tensor::zeros((out_f, in_f), DType::F64, w.device())?;
            if let Some(a) = &a {
                d = d.add(&w.mul(a)?)?;
            }
            if let Some(b) = &b {
                d = d.add(b)?;
            }
            Some(frobenius(&d)?)
        }
    };
    Ok(LayerReport {
        in_f,
        out_f,
        support: Some(shapes.join(" ")),
        params,
        delta_norm,
        b_norm: Some(norm(&b)?),
        a_norm: Some(norm(&a)?),
        ..LayerReport::new(module)
    })
}

/// A GLoRA layer's [out, in] from its tensors' shapes, when they tell: A/B hold [out, in] (`zeros`), [out, r]·[r, in]
/// or `[out, 1]`; C holds `[in, r]`, `[in, 1]`; D/E hold `[out]`.
fn glora_dims(t: &HashMap<String, Tensor>) -> Option<(usize, usize)> {
    let dim = |k: &str, i: usize| t.get(k).and_then(|x| x.dims().get(i).copied());
    let out_f = ["glora_A.zeros", "glora_B.zeros", "glora_A.Xd", "glora_B.Xd"]
        .iter()
        .find_map(|k| dim(k, 0))
        .or_else(|| {
            [
                "glora_A.X",
                "glora_B.X",
                "glora_D.X",
                "glora_E.X",
                "glora_D.zeros",
                "glora_E.zeros",
            ]
            .iter()
            .find(|k| t.get(**k).is_some_and(|x| x.elem_count() > 1))
            .and_then(|k| dim(k, 0))
        })?;
    let in_f = ["glora_A.zeros", "glora_B.zeros", "glora_A.Xu", "glora_B.Xu"]
        .iter()
        .find_map(|k| dim(k, 1))
        .or_else(|| {
            ["glora_C.Xd", "glora_C.X", "glora_C.zeros"]
                .iter()
                .find_map(|k| dim(k, 0))
        })?;
    Some((out_f, in_f))
}

/// The dense base weight of every linear module, as f64: from a model (folder or GGUF), or from a .safetensors
/// file whose `<module>.weight` tensors are the bases.
fn base_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    if path.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
        let st = MmapedSafetensors::open(path)?;
        return st
            .names()
            .into_iter()
            .filter_map(|n| {
                n.strip_suffix(".weight")
                    .map(|m| (m.to_string(), n.clone()))
            })
            .map(|(m, n)| {
                Ok((
                    m,
                    st.load(&n, rankfold_tensor::Device::Cpu)?
                        .to_dtype(DType::F64)?,
                ))
            })
            .collect();
    }
    let (_, mut model) = common::load_model(path, false)?;
    model
        .linear_slots()
        .into_iter()
        .map(|(name, slot)| Ok((name, slot.layer().dense_weight()?.to_dtype(DType::F64)?)))
        .collect()
}

/// The trainer_state.json beside a checkpoint's `adapter/` folder when it notes LoRA-FA (which PEFT files save as
/// plain LoRA).
fn lora_fa_note(dir: &Path) -> Option<String> {
    use rankfold_train::trainer::checkpoint::{ADAPTER_DIR, LORA_FA, STATE_FILE};
    if dir.file_name()? != ADAPTER_DIR {
        return None;
    }
    let state = dir.parent()?.join(STATE_FILE);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).ok()?).ok()?;
    (v.get("method")?.as_str()? == LORA_FA).then(|| state.display().to_string())
}

/// The optimizer of the checkpoint whose `adapter/` folder `dir` is: its name (the trainer state's `optim`),
/// the bytes of its state file's tensors, and how many parameter elements that state covers (the elements of the
/// first-moment tensors).
struct OptimizerReport {
    name: String,
    state_bytes: usize,
    params: usize,
}

fn checkpoint_optimizer(dir: &Path) -> Result<Option<OptimizerReport>> {
    use rankfold_train::trainer::checkpoint::{ADAPTER_DIR, OPTIMIZER_FILE, STATE_FILE};
    let Some(ckpt) = dir.parent().filter(|_| dir.file_name().is_some_and(|n| n == ADAPTER_DIR)) else {
        return Ok(None);
    };
    let (state, file) = (ckpt.join(STATE_FILE), ckpt.join(OPTIMIZER_FILE));
    if !state.is_file() || !file.is_file() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state)?)
        .with_context(|| format!("{}: not JSON", state.display()))?;
    let name = v["config"]["optim"].as_str().unwrap_or("adamw_torch").to_string();
    let st = MmapedSafetensors::open(&file)?;
    let (mut state_bytes, mut params) = (0, 0);
    for n in st.names() {
        let (shape, dtype) = st.info(&n)?;
        state_bytes += shape.elem_count() * dtype.size_in_bytes();
        if n.ends_with(".exp_avg") || n.ends_with(".state1") {
            params += shape.elem_count();
        }
    }
    Ok(Some(OptimizerReport { name, state_bytes, params }))
}

fn inspect_adapter(dir: &Path, model: Option<&Path>, json: bool) -> Result<()> {
    let config = peft::read_config(dir)?;
    let config_path = dir.join(peft::CONFIG_FILE).display().to_string();
    let ty = config
        .get("peft_type")
        .and_then(|v| v.as_str())
        .with_context(|| format!("{config_path}: field `peft_type` is missing or not a string"))?
        .to_string();
    let (file, tensors) = peft::read_tensors(dir)?;
    let modules = group_by_module(&file, tensors)?;
    let lora_fa = lora_fa_note(dir);
    let in_config = |e: rankfold_adapters::Error| anyhow::anyhow!("{config_path}: {e}");
    let mut layers = Vec::new();
    let (targets, method, mut notes) = match ty.as_str() {
        "LORA" => {
            let cfg = LoraConfig::from_peft_json(&config).map_err(in_config)?;
            for (m, t) in &modules {
                layers.push(lora_layer(&file, &cfg, m, t)?);
            }
            let scaling = if cfg.use_rslora { "rsLoRA scaling α/√r" } else { "scaling α/r" };
            let mut notes = vec![format!("lora_alpha {}, r {}", cfg.lora_alpha, cfg.r)];
            let method = match &lora_fa {
                Some(state) => {
                    notes.push(format!("LoRA-FA (A frozen during training), as {state} notes"));
                    format!("LoRA-FA ({scaling})")
                }
                None => {
                    notes.push("LoRA-FA adapters are saved as LoRA: unless a checkpoint's trainer_state.json notes it, the files do not say whether A was frozen".into());
                    format!("LoRA ({scaling})")
                }
            };
            (cfg.common.target_modules.clone(), method, notes)
        }
        "ADALORA" => {
            let cfg = AdaLoraConfig::from_peft_json(&config).map_err(in_config)?;
            for (m, t) in &modules {
                layers.push(adalora_layer(&file, &cfg, m, t)?);
            }
            let notes = vec![format!(
                "init_r {}, target_r {}, lora_alpha {}, rank_pattern {}",
                cfg.init_r,
                cfg.target_r,
                cfg.lora_alpha,
                if cfg.rank_pattern.is_some() { "saved" } else { "absent (nothing pruned)" }
            )];
            (cfg.common.target_modules.clone(), "AdaLoRA (P·diag(λ)·Q · α/(init_r + 1e-5))".to_string(), notes)
        }
        "GLORA" => {
            let cfg = GloraConfig::from_peft_json(&config).map_err(in_config)?;
            let bases = model.map(base_weights).transpose()?;
            for (m, t) in &modules {
                let base = match &bases {
                    None => None,
                    Some(b) => Some(b.get(m).with_context(|| {
                        format!("{file}: module `{m}` is not a linear module of the model {}", model.map_or(String::new(), |p| p.display().to_string()))
                    })?),
                };
                layers.push(glora_layer(&file, m, t, base)?);
            }
            let mut notes = vec![format!("uniform config: r {}, A/B {}, C {}, D/E {}", cfg.glora.r, cfg.glora.config_a_b, cfg.glora.config_c, cfg.glora.config_d_e)];
            if bases.is_none() {
                notes.push("ΔW = W0⊙A + B needs the base: pass --model for ‖ΔW‖_F; shown are ‖B‖_F and ‖A‖_F".into());
            }
            (cfg.common.target_modules.clone(), "GLoRA (W0 + W0⊙A + B)".to_string(), notes)
        }
        other => bail!("{config_path}: field `peft_type`: `{other}` is not a method rankfold reads (LORA, ADALORA, GLORA)"),
    };
    if modules.is_empty() {
        notes.push(format!("{file} holds no adapter tensor"));
    }
    let optimizer = checkpoint_optimizer(dir)?;
    if let Some(o) = &optimizer {
        notes.push(format!(
            "optimizer {}: {} bytes of state for {} parameters ({:.2} bytes each)",
            o.name,
            o.state_bytes,
            o.params,
            o.state_bytes as f64 / o.params.max(1) as f64
        ));
    }
    let targets = targets.map_or_else(|| "(none)".to_string(), |t| t.to_string());
    let total: usize = layers.iter().map(|l| l.params).sum();
    let total_norm = layers
        .iter()
        .filter_map(|l| l.delta_norm)
        .map(|n| n * n)
        .sum::<f64>()
        .sqrt();
    if !json {
        print_table(dir, &ty, &method, &targets, &notes, &layers);
    }
    let text = format!("{} layers, {total} adapter parameters", layers.len());
    let value = json!({
        "command": "inspect",
        "path": path_json(dir),
        "peft_type": ty,
        "method": method,
        "use_rslora": config.get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false),
        "lora_fa": ty == "LORA" && lora_fa.is_some(),
        "target_modules": targets,
        "layers": layers.iter().map(LayerReport::to_json).collect::<Vec<_>>(),
        "layer_count": layers.len(),
        "total_params": total,
        "total_delta_norm": layers.iter().all(|l| l.delta_norm.is_some()).then_some(total_norm),
        "optimizer": optimizer.as_ref().map(|o| json!({
            "name": o.name, "state_bytes": o.state_bytes, "params": o.params,
        })),
    });
    common::print_summary(json, &text, &value);
    Ok(())
}

fn print_table(
    dir: &Path,
    ty: &str,
    method: &str,
    targets: &str,
    notes: &[String],
    layers: &[LayerReport],
) {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.6}"));
    println!("{}: {ty} — {method}", dir.display());
    println!("target modules: {targets}");
    for n in notes {
        println!("{n}");
    }
    let glora = layers.iter().any(|l| l.support.is_some());
    if glora {
        println!(
            "{:<44} {:>10} {:<44} {:>8} {:>12} {:>12} {:>12}",
            "module", "out×in", "support", "params", "‖ΔW‖_F", "‖B‖_F", "‖A‖_F"
        );
    } else {
        println!(
            "{:<44} {:>10} {:>5} {:>5} {:>10} {:>8} {:>12}",
            "module", "out×in", "rank", "eff.", "scaling", "params", "‖ΔW‖_F"
        );
    }
    for l in layers {
        let size = format!("{}×{}", l.out_f, l.in_f);
        if glora {
            println!(
                "{:<44} {:>10} {:<44} {:>8} {:>12} {:>12} {:>12}",
                l.module,
                size,
                l.support.as_deref().unwrap_or("-"),
                l.params,
                opt(l.delta_norm),
                opt(l.b_norm),
                opt(l.a_norm)
            );
        } else {
            let n = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
            println!(
                "{:<44} {:>10} {:>5} {:>5} {:>10} {:>8} {:>12}",
                l.module,
                size,
                n(l.rank),
                n(l.effective_rank.or(l.rank)),
                opt(l.scaling),
                l.params,
                opt(l.delta_norm)
            );
        }
    }
}
