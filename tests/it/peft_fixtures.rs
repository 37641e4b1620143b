//! Loaders for the PEFT reference fixtures in `tests/fixtures/peft/<case>/` (written by
//! `tests/fixtures/peft_fixtures.py`, whose docstring lists the cases and the keys), for the adapter tests.
//!
//! ```ignore
//! let case = PeftCase::open("lora")?;
//! let io = case.io()?;                       // x, and per layer: W0, b0, PyTorch's y, merged W / b
//! let dir = case.adapter_dir();              // hand to the adapter loader (adapter_config.json + safetensors)
//! for layer in &io.layers { let y_ref = &layer.y; /* compare against the adapted layer on io.x */ }
//! ```

// Each helper is used by some adapter method's tests; not every test module uses every one.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rankfold_adapters::PeftModel;
use rankfold_tensor::nn::{Linear, LinearModel, LinearSlot};
use rankfold_tensor::{safetensors, Device, Tensor};

/// The folder holding one sub-folder per case.
pub(crate) fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("peft")
}

/// One fixture case: a tiny model's base weights, an input, PyTorch's outputs and a PEFT-saved adapter.
#[derive(Debug, Clone)]
pub(crate) struct PeftCase {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
}

/// One adapted linear layer of a case, all f32: `weight` [out, in], `bias` [out], `y` [5, out] (the adapted
/// layer on `x`), and the weight and bias after PEFT's `merge_and_unload()`.
#[derive(Debug, Clone)]
pub(crate) struct FixtureLayer {
    /// The module path, e.g. `layers.0.self_attn.q_proj`.
    pub(crate) path: String,
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) y: Tensor,
    pub(crate) merged_weight: Tensor,
    pub(crate) merged_bias: Option<Tensor>,
}

impl FixtureLayer {
    /// The frozen base layer (W0, b0) as an `nn::Linear`.
    pub(crate) fn base_linear(&self) -> Result<Linear> {
        Ok(Linear::from_weights(
            self.weight.clone(),
            self.bias.clone(),
        )?)
    }
    pub(crate) fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    pub(crate) fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// The contents of a case's `io.safetensors`: the shared input `x` [5, in] and the layers sorted by path.
#[derive(Debug, Clone)]
pub(crate) struct CaseIo {
    pub(crate) x: Tensor,
    pub(crate) layers: Vec<FixtureLayer>,
}

impl CaseIo {
    /// The layer at module path `path`, or an error listing the paths the case has.
    pub(crate) fn layer(&self, path: &str) -> Result<&FixtureLayer> {
        match self.layers.iter().find(|l| l.path == path) {
            Some(l) => Ok(l),
            None => bail!(
                "no layer `{path}` in the fixture (it has {:?})",
                self.layers.iter().map(|l| &l.path).collect::<Vec<_>>()
            ),
        }
    }
}

impl PeftCase {
    /// The case named `name` (a folder under [`fixtures_root`]), or an error naming the folder and the cases.
    pub(crate) fn open(name: &str) -> Result<PeftCase> {
        let dir = fixtures_root().join(name);
        if !dir.join("io.safetensors").is_file() {
            let known: Vec<String> = all_cases()
                .map(|v| v.into_iter().map(|c| c.name).collect())
                .unwrap_or_default();
            bail!(
                "PEFT fixture case `{name}` not found at {} (cases: {known:?})",
                dir.display()
            );
        }
        Ok(PeftCase {
            name: name.to_string(),
            dir,
        })
    }

    /// The folder `save_pretrained` wrote: `adapter_config.json` and `adapter_model.safetensors`.
    pub(crate) fn adapter_dir(&self) -> PathBuf {
        self.dir.join("adapter")
    }
    /// The base weights, input and reference outputs.
    pub(crate) fn io_path(&self) -> PathBuf {
        self.dir.join("io.safetensors")
    }

    /// `adapter_config.json` parsed as JSON.
    pub(crate) fn config_json(&self) -> Result<serde_json::Value> {
        let path = self.adapter_dir().join("adapter_config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Every tensor of `adapter_model.safetensors`, under PEFT's keys (`base_model.model.<path>.<param>`).
    pub(crate) fn adapter_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let path = self.adapter_dir().join("adapter_model.safetensors");
        safetensors::load(&path, Device::Cpu).with_context(|| format!("loading {}", path.display()))
    }

    /// The adapter tensors of one layer, keyed by the parameter suffix after `base_model.model.<path>.`
    /// (e.g. `lora_A.weight`, `glora_C.Xd`, `lora_E`).
    pub(crate) fn layer_adapter_tensors(&self, path: &str) -> Result<HashMap<String, Tensor>> {
        let prefix = format!("base_model.model.{path}.");
        let all = self.adapter_tensors()?;
        let out: HashMap<String, Tensor> = all
            .into_iter()
            .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|s| (s.to_string(), t)))
            .collect();
        ensure!(
            !out.is_empty(),
            "{}: no adapter tensors under `{prefix}`",
            self.name
        );
        Ok(out)
    }

    /// Reads `io.safetensors`; every layer must have its weight, y and merged weight, and a bias exactly when it
    /// has a merged bias.
    pub(crate) fn io(&self) -> Result<CaseIo> {
        let path = self.io_path();
        let mut t = safetensors::load(&path, Device::Cpu)
            .with_context(|| format!("loading {}", path.display()))?;
        let x = t
            .remove("x")
            .with_context(|| format!("{}: no tensor `x`", path.display()))?;
        let mut paths: Vec<String> = t
            .keys()
            .filter_map(|k| k.strip_suffix(".weight").map(str::to_string))
            .collect();
        paths.retain(|p| !p.ends_with(".merged"));
        paths.sort();
        let mut layers = Vec::new();
        for p in paths {
            let mut take = |suffix: &str| t.remove(&format!("{p}.{suffix}"));
            let missing = |what: &str| format!("{}: layer `{p}` has no `{what}`", path.display());
            let weight = take("weight").with_context(|| missing("weight"))?;
            let bias = take("bias");
            let y = take("y").with_context(|| missing("y"))?;
            let merged_weight = take("merged_weight").with_context(|| missing("merged_weight"))?;
            let merged_bias = take("merged_bias");
            ensure!(
                bias.is_some() == merged_bias.is_some(),
                "{}: layer `{p}`: bias and merged_bias disagree",
                path.display()
            );
            layers.push(FixtureLayer {
                path: p,
                weight,
                bias,
                y,
                merged_weight,
                merged_bias,
            });
        }
        ensure!(
            t.is_empty(),
            "{}: unexpected tensors {:?}",
            path.display(),
            t.keys().collect::<Vec<_>>()
        );
        Ok(CaseIo { x, layers })
    }
}

/// Every case folder, sorted by name.
pub(crate) fn all_cases() -> Result<Vec<PeftCase>> {
    let root = fixtures_root();
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
        let dir = entry?.path();
        if dir.join("io.safetensors").is_file() {
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .context("a case folder name is UTF-8")?
                .to_string();
            cases.push(PeftCase { name, dir });
        }
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(cases)
}

/// The cases whose name starts with `prefix` (e.g. `glora_`), at least one.
pub(crate) fn cases_with_prefix(prefix: &str) -> Result<Vec<PeftCase>> {
    let cases: Vec<PeftCase> = all_cases()?
        .into_iter()
        .filter(|c| c.name.starts_with(prefix))
        .collect();
    ensure!(
        !cases.is_empty(),
        "no PEFT fixture case starts with `{prefix}` under {}",
        fixtures_root().display()
    );
    Ok(cases)
}

/// Largest |a − b| over two tensors of the same shape, in f64.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    ensure!(
        a.dims() == b.dims(),
        "shapes differ: {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    let (a, b) = (a.to_vec::<f64>()?, b.to_vec::<f64>()?);
    crate::common::worst_abs(&a, &b, "max_abs_diff")
}

#[test]
fn every_case_is_complete_and_shaped_consistently() -> Result<()> {
    let cases = all_cases()?;
    ensure!(
        cases.len() >= 16,
        "expected the 16 committed cases, found {}",
        cases.len()
    );
    for case in &cases {
        let io = case.io()?;
        ensure!(
            io.x.dims() == [5, 37],
            "{}: x is {:?}",
            case.name,
            io.x.dims()
        );
        ensure!(!io.layers.is_empty(), "{}: no layers", case.name);
        let mut changed = false;
        for l in &io.layers {
            let out = l.out_features();
            ensure!(
                l.in_features() == 37 && l.y.dims() == [5, out],
                "{}: {}: shapes",
                case.name,
                l.path
            );
            ensure!(
                l.merged_weight.dims() == l.weight.dims(),
                "{}: {}: merged weight shape",
                case.name,
                l.path
            );
            let base = l.base_linear()?.forward(&io.x)?;
            changed |= max_abs_diff(&base, &l.y)? > 1e-3;
        }
        // The adapter must change some layer, or the case would not test it (all-`none` GLoRA is the exception).
        ensure!(
            changed || case.name == "glora_none_none_none",
            "{}: every y equals the base output",
            case.name
        );
        let config = case.config_json()?;
        ensure!(
            config["peft_type"].is_string(),
            "{}: adapter_config.json has no peft_type",
            case.name
        );
        for l in &io.layers {
            case.layer_adapter_tensors(&l.path)?;
        }
    }
    Ok(())
}

/// An independent reading of the plain LoRA case: y = x·W0ᵀ + b0 + (α/r)·x·Aᵀ·Bᵀ, and the merged weight is
/// W0 + (α/r)·B·A, computed here with tensor ops from the saved files only.
#[test]
fn lora_case_matches_the_lora_formula() -> Result<()> {
    let case = PeftCase::open("lora")?;
    let config = case.config_json()?;
    let (r, alpha) = (
        config["r"].as_f64().context("r")?,
        config["lora_alpha"].as_f64().context("lora_alpha")?,
    );
    let io = case.io()?;
    for l in &io.layers {
        let t = case.layer_adapter_tensors(&l.path)?;
        let (a, b) = (&t["lora_A.weight"], &t["lora_B.weight"]);
        let delta = b.matmul(a)?.affine(alpha / r, 0.0)?;
        let y = l
            .base_linear()?
            .forward(&io.x)?
            .add(&io.x.matmul(&delta.t()?)?)?;
        ensure!(
            max_abs_diff(&y, &l.y)? <= 1e-5,
            "{}: y differs by {}",
            l.path,
            max_abs_diff(&y, &l.y)?
        );
        let merged = l.weight.add(&delta)?;
        ensure!(
            max_abs_diff(&merged, &l.merged_weight)? <= 1e-5,
            "{}: merged weight differs",
            l.path
        );
    }
    Ok(())
}

/// The linear layers of a PEFT fixture at their module paths (the adapter tests' model).
#[derive(Debug)]
pub(crate) struct FixtureModel {
    pub(crate) slots: Vec<(String, LinearSlot)>,
}

impl LinearModel for FixtureModel {
    fn linear_slots(&mut self) -> Vec<(String, &mut LinearSlot)> {
        self.slots.iter_mut().map(|(p, s)| (p.clone(), s)).collect()
    }
}

impl FixtureModel {
    /// A `PeftModel` (seed 0) over the case's frozen base layers, with no adapter yet.
    pub(crate) fn peft(io: &CaseIo) -> Result<PeftModel<FixtureModel>> {
        let slots = io
            .layers
            .iter()
            .map(|l| Ok((l.path.clone(), LinearSlot::new(l.base_linear()?.freeze()))))
            .collect::<Result<_>>()?;
        Ok(PeftModel::new(FixtureModel { slots }, 0))
    }
    /// The slot at `path`.
    pub(crate) fn slot(&self, path: &str) -> &LinearSlot {
        &self.slots.iter().find(|(p, _)| p == path).expect("a fixture path").1
    }
}
