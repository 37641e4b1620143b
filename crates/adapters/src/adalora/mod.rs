//! AdaLoRA (Zhang et al., arXiv 2303.10512) as PEFT 0.21 implements it: each adapted layer adds
//! `P Λ Q x · lora_alpha / (init_r + 1e-5)` ([`SvdLinear`]), the loss gains PEFT's orthogonal regularizer
//! ([`AdapterMethod::regularization_loss`]), and the rank allocator ([`RankAllocator`]) runs from the trainer's
//! per-step hook ([`AdapterMethod::on_step`], called by [`crate::PeftModel::on_step`]), masking the least
//! important singular values down to a cubic budget. The pattern of surviving ranks is saved as `rank_pattern`
//! (`<module path>.lora_E` → one flag per initial rank), and the saved tensors are cut down to the surviving
//! ranks; loading such a directory resizes each layer to its kept rank first (PEFT
//! `resize_modules_by_rank_pattern`), so a layer that kept nothing loads with rank 0 and computes its base.
//!
//! Only the active adapter is trained and allocated (PEFT allows one trainable AdaLoRA adapter per model).
//!
//! Where rankfold departs from PEFT, on purpose: a masking step whose budget equals b0 (k = 0) masks nothing,
//! where PEFT's `kthvalue` fails; b0 is taken from the layers' ranks at the first step (after a load has cut
//! them), where PEFT counts init_r per layer before the load; a tensor without a gradient counts as a zero
//! gradient; an adapter trained on after a load records its pattern in the initial-rank positions (PEFT writes
//! the cut layer's positions, which its own loader cannot index); merging keeps the original base, so unmerging
//! restores it exactly (also on NF4); `bias` other than "none", `fan_in_fan_out` and `use_dora` are refused.
//!
//! ```
//! use rankfold_adapters::adalora::{AdaLora, AdaLoraConfig};
//! use rankfold_adapters::testing::{TestModel, TestModelConfig};
//! use rankfold_adapters::{PeftModel, TargetModules};
//! use rankfold_tensor::optim::{AdamW, AdamWConfig, Optimizer};
//! use rankfold_tensor::{DType, Device, Rng};
//!
//! let mut config = AdaLoraConfig::new(TargetModules::list(&["q_proj", "v_proj"]), 6);
//! (config.init_r, config.target_r) = (4, 2);
//! let mut pm = PeftModel::new(TestModel::new(TestModelConfig::default(), 0)?, 0);
//! pm.add_adapter("default", Box::new(AdaLora::new(config)?))?;
//! let mut opt = AdamW::new(pm.parameters(), AdamWConfig::default())?;
//! let x = Rng::new(1).normal_tensor(0.0, 1.0, (4, 13), DType::F32, Device::Cpu)?;
//! for step in 0..6 {
//!     let mut loss = pm.model().forward(&x)?.sqr()?.mean_all()?;
//!     if let Some(reg) = pm.regularization_loss()? {
//!         loss = loss.add(&reg)?; // the orthogonal regularizer
//!     }
//!     let grads = loss.backward()?;
//!     opt.step(&grads)?;
//!     pm.on_step(step, &grads)?; // the rank allocator
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod allocator;
mod state;
mod layer;
mod svd_linear;

use std::collections::BTreeMap;

use rankfold_tensor::nn::LinearLayer;
use rankfold_tensor::{GradStore, Rng, Tensor};
use serde::{Deserialize, Serialize};

pub use allocator::{
    apply_mask, mask_using_pattern, AllocatorConfig, RankAllocator, RankPattern, StepOutcome, TripletRef,
};
pub use layer::{orth_regularization, SvdAdapter, RANKNUM_EPS};
pub use svd_linear::SvdLinear;

use crate::config::{CommonConfig, TargetModules};
use crate::layer::{
    downcast_adapter, downcast_adapter_mut, downcast_box, AdapterLayer, AdapterMethod, InjectResult, MethodState, Method,
};
use crate::{Error, Result};

/// The suffix PEFT gives `rank_pattern` keys (the λ parameter's name).
const PATTERN_SUFFIX: &str = ".lora_E";

/// An AdaLoRA config with PEFT's field names and defaults (`AdaLoraConfig`, which extends `LoraConfig`).
/// Unknown fields are ignored on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaLoraConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// The target average rank per layer at the end of the budget schedule.
    #[serde(default = "d_target_r")]
    pub target_r: usize,
    /// The initial rank of every layer (PEFT's `r` is ignored by AdaLoRA).
    #[serde(default = "d_init_r")]
    pub init_r: usize,
    #[serde(default)]
    pub tinit: usize,
    #[serde(default)]
    pub tfinal: usize,
    #[serde(rename = "deltaT", default = "d_delta_t")]
    pub delta_t: usize,
    #[serde(default = "d_beta")]
    pub beta1: f64,
    #[serde(default = "d_beta")]
    pub beta2: f64,
    #[serde(default = "d_orth")]
    pub orth_reg_weight: f64,
    /// Required: the number of training steps the schedule spans.
    #[serde(default)]
    pub total_step: Option<usize>,
    /// The surviving ranks per layer, keyed `<module path>.lora_E` as PEFT writes them.
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, Vec<bool>>>,
    /// `lora_alpha` (the scale numerator; r is used when it is ≤ 0).
    #[serde(default = "d_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// PEFT's flag (or init-scheme string): true or any string draws λ = 0 and P, Q ~ N(0, 0.02²); false leaves
    /// all three standard normal.
    #[serde(default = "d_init")]
    pub init_lora_weights: serde_json::Value,
    /// LoRA's `r`, which AdaLoRA ignores; kept so saved files carry PEFT's value.
    #[serde(default = "d_r")]
    pub r: usize,
    #[serde(default = "d_bias")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub use_rslora: bool,
}

fn d_target_r() -> usize {
    8
}
fn d_init_r() -> usize {
    12
}
fn d_delta_t() -> usize {
    1
}
fn d_beta() -> f64 {
    0.85
}
fn d_orth() -> f64 {
    0.5
}
fn d_alpha() -> f64 {
    8.0
}
fn d_init() -> serde_json::Value {
    serde_json::Value::Bool(true)
}
fn d_r() -> usize {
    8
}
fn d_bias() -> String {
    "none".into()
}

impl AdaLoraConfig {
    /// PEFT's defaults over `targets` with the required `total_step`.
    pub fn new(targets: TargetModules, total_step: usize) -> AdaLoraConfig {
        AdaLoraConfig {
            common: CommonConfig::new("ADALORA", targets),
            target_r: d_target_r(),
            init_r: d_init_r(),
            tinit: 0,
            tfinal: 0,
            delta_t: d_delta_t(),
            beta1: d_beta(),
            beta2: d_beta(),
            orth_reg_weight: d_orth(),
            total_step: Some(total_step),
            rank_pattern: None,
            lora_alpha: d_alpha(),
            lora_dropout: 0.0,
            init_lora_weights: d_init(),
            r: d_r(),
            bias: d_bias(),
            fan_in_fan_out: false,
            use_dora: false,
            use_rslora: false,
        }
    }

    /// Reads PEFT's `adapter_config.json` object and checks it.
    pub fn from_peft_json(v: &serde_json::Value) -> Result<AdaLoraConfig> {
        let c: AdaLoraConfig =
            serde_json::from_value(v.clone()).map_err(|e| Error::config("ADALORA config", e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    /// What PEFT's `AdaLoraConfig.__post_init__` checks, plus the options rankfold's AdaLoRA does not have.
    pub fn check(&self) -> Result<()> {
        self.common.check()?;
        let total = self
            .total_step
            .filter(|&t| t > 0)
            .ok_or_else(|| Error::config("total_step", "AdaLoRA needs total_step > 0"))?;
        if self.tinit + self.tfinal >= total {
            return Err(Error::config(
                "tinit",
                format!(
                    "tinit ({}) must be below total_step - tfinal ({total} - {}): no budgeting phase is left",
                    self.tinit, self.tfinal
                ),
            ));
        }
        if self.delta_t == 0 {
            return Err(Error::config("deltaT", "must be at least 1"));
        }
        if self.orth_reg_weight.is_nan() || self.orth_reg_weight < 0.0 {
            return Err(Error::config(
                "orth_reg_weight",
                format!("must be ≥ 0, got {}", self.orth_reg_weight),
            ));
        }
        crate::config::check_dropout(self.lora_dropout)?;
        if self.use_dora {
            return Err(Error::config("use_dora", "AdaLoRA does not support DoRA"));
        }
        if self.bias != "none" {
            return Err(Error::config(
                "bias",
                format!("`{}`: rankfold trains no base bias; use \"none\"", self.bias),
            ));
        }
        if self.fan_in_fan_out {
            return Err(Error::config(
                "fan_in_fan_out",
                "rankfold's linear layers store W as [out, in]; use false",
            ));
        }
        if matches!(self.common.target_modules, Some(TargetModules::Regex(_)))
            && self.common.layers_to_transform.is_some()
        {
            return Err(Error::config(
                "layers_to_transform",
                "cannot be used when target_modules is a regex string",
            ));
        }
        Ok(())
    }

    /// The allocator's view of the schedule.
    pub fn allocator_config(&self) -> AllocatorConfig {
        AllocatorConfig {
            target_r: self.target_r,
            tinit: self.tinit,
            tfinal: self.tfinal,
            delta_t: self.delta_t,
            beta1: self.beta1,
            beta2: self.beta2,
            total_step: self.total_step.unwrap_or(0),
        }
    }

    /// The `rank_pattern` entry of module `path` (keys `<path>.lora_E`, or `<path>.lora_E.<adapter>` as PEFT
    /// keeps them in memory, or the bare path).
    pub fn pattern_for(&self, path: &str, adapter: &str) -> Option<&Vec<bool>> {
        let p = self.rank_pattern.as_ref()?;
        let key = format!("{path}{PATTERN_SUFFIX}");
        p.get(&key)
            .or_else(|| p.get(&format!("{key}.{adapter}")))
            .or_else(|| p.get(path))
    }

    fn init_weights(&self) -> bool {
        !matches!(
            self.init_lora_weights,
            serde_json::Value::Bool(false) | serde_json::Value::Null
        )
    }
}

/// The AdaLoRA method for [`crate::PeftModel`]: the config plus the rank allocator's state across steps.
#[derive(Debug, Clone)]
pub struct AdaLora {
    pub config: AdaLoraConfig,
    allocator: Option<RankAllocator>,
    last_budget: Option<usize>,
}

impl AdaLora {
    /// The method over a checked config.
    pub fn new(config: AdaLoraConfig) -> Result<AdaLora> {
        config.check()?;
        Ok(AdaLora {
            config,
            allocator: None,
            last_budget: None,
        })
    }
    /// The method a PEFT `adapter_config.json` describes (for [`crate::peft::method_from_config`]).
    pub fn from_peft_json(v: &serde_json::Value) -> Result<AdaLora> {
        AdaLora::new(AdaLoraConfig::from_peft_json(v)?)
    }
    /// The allocator, once the first training step has created it.
    pub fn allocator(&self) -> Option<&RankAllocator> {
        self.allocator.as_ref()
    }
    /// The budget of the schedule at the latest step (None before the first step and in the final phase).
    pub fn last_budget(&self) -> Option<usize> {
        self.last_budget
    }
}

/// The AdaLoRA layers among `layers` that hold adapter `name`, as the allocator sees them.
fn triplets<'a>(layers: &'a [(String, &dyn AdapterLayer)], name: &str) -> Vec<TripletRef<'a>> {
    layers
        .iter()
        .filter_map(|(p, l)| {
            let s = l.as_any().downcast_ref::<SvdLinear>()?;
            let a = s.adapter(name).ok()?;
            Some(TripletRef {
                path: p.as_str(),
                a: &a.a,
                e: &a.e,
                b: &a.b,
            })
        })
        .collect()
}

impl AdapterMethod for AdaLora {
    fn method(&self) -> Method {
        Method::AdaLora
    }
    fn common(&self) -> &CommonConfig {
        &self.config.common
    }
    /// Wraps the layer (or adds to its AdaLoRA layer) with a rank-`init_r` adapter; the layer remembers its
    /// `rank_pattern` entry, if the config has one (loading resizes to it; saving cuts by it).
    fn inject(&self, path: &str, name: &str, layer: Box<dyn LinearLayer>, rng: &mut Rng) -> InjectResult {
        let c = &self.config;
        let (inf, out) = (layer.in_features(), layer.out_features());
        let w = match layer.dense_weight() {
            Ok(w) => w,
            Err(e) => return Err((layer, Error::module(path, e.to_string()))),
        };
        let made = SvdAdapter::new(
            inf,
            out,
            c.init_r,
            c.lora_alpha,
            c.lora_dropout,
            c.init_weights(),
            rng,
            w.dtype(),
            w.device(),
        );
        let mut ad = match made {
            Ok(a) => a,
            Err(e) => return Err((layer, e)),
        };
        // PEFT does not check the pattern's length here; saving and the allocator check it against the rank.
        ad.pattern = c.pattern_for(path, name).cloned();
        let mut s = match downcast_box::<SvdLinear>(layer) {
            Ok(s) => s,
            Err(base) => Box::new(SvdLinear::new(base)),
        };
        match s.add_adapter(name, ad) {
            Ok(()) => Ok(s),
            Err(e) => {
                // A layer that held only its base goes back as that base.
                if s.adapter_names().is_empty() {
                    return Err((s.into_base(), Error::module(path, e.to_string())));
                }
                Err((s, Error::module(path, e.to_string())))
            }
        }
    }
    fn as_adapter<'a>(&self, layer: &'a dyn LinearLayer) -> Option<&'a dyn AdapterLayer> {
        downcast_adapter::<SvdLinear>(layer)
    }
    fn as_adapter_mut<'a>(&self, layer: &'a mut dyn LinearLayer) -> Option<&'a mut dyn AdapterLayer> {
        downcast_adapter_mut::<SvdLinear>(layer)
    }
    fn into_adapter(
        &self,
        layer: Box<dyn LinearLayer>,
    ) -> std::result::Result<Box<dyn AdapterLayer>, Box<dyn LinearLayer>> {
        crate::layer::into_adapter::<SvdLinear>(layer)
    }
    /// PEFT's fields with `rank_pattern` gathered from the layers (`<path>.lora_E` keys) when the allocator has
    /// masked, or the config's own pattern otherwise; `inference_mode` is written true as PEFT's save does.
    fn peft_config(&self, name: &str, layers: &[(String, &dyn AdapterLayer)]) -> Result<serde_json::Value> {
        let mut c = self.config.clone();
        c.common.peft_type = Some("ADALORA".into());
        c.common.inference_mode = true;
        let mut pattern = BTreeMap::new();
        for (path, l) in layers {
            let Some(s) = l.as_any().downcast_ref::<SvdLinear>() else {
                continue;
            };
            if let Some(keep) = s.adapter(name)?.pattern() {
                pattern.insert(format!("{path}{PATTERN_SUFFIX}"), keep.to_vec());
            }
        }
        if !pattern.is_empty() {
            c.rank_pattern = Some(pattern);
        }
        serde_json::to_value(&c).map_err(|e| Error::config("ADALORA config", e.to_string()))
    }
    /// PEFT `update_and_allocate(step)` for the active adapter: updates the importance EMAs from `grads`,
    /// masks λ to the budget when the schedule says so, and records the surviving ranks in each layer (they
    /// become `rank_pattern` on save). Does nothing for an inactive adapter.
    fn on_step(
        &mut self,
        name: &str,
        step: usize,
        grads: &GradStore,
        layers: &mut [(String, &mut dyn AdapterLayer)],
    ) -> Result<()> {
        if layers.iter().all(|(_, l)| l.active().as_deref() != Some(name)) {
            return Ok(());
        }
        let view: Vec<(String, &dyn AdapterLayer)> = layers.iter().map(|(p, l)| (p.clone(), &**l)).collect();
        let refs = triplets(&view, name);
        if self.allocator.is_none() {
            let ranks: Vec<(String, usize)> = refs.iter().map(|t| (t.path.to_string(), t.a.dims()[0])).collect();
            let mut a = RankAllocator::new(self.config.allocator_config(), &ranks)?;
            // A run that resumes in the final phase re-applies the layers' patterns (from the config), as PEFT
            // does, read over each layer's current ranks.
            let mut preset = RankPattern::new();
            for (path, l) in &view {
                if let Some(s) = l.as_any().downcast_ref::<SvdLinear>() {
                    if let Some(m) = s.adapter(name)?.current_mask()? {
                        preset.insert(path.clone(), m);
                    }
                }
            }
            if !preset.is_empty() {
                a.set_final_pattern(Some(preset));
            }
            self.allocator = Some(a);
        }
        let alloc = self.allocator.as_mut().expect("the allocator was created just above");
        let out = alloc.on_step(step, &refs, grads)?;
        drop(refs);
        drop(view);
        self.last_budget = out.budget;
        if let Some(p) = out.pattern {
            for (path, l) in layers.iter_mut() {
                if let (Some(keep), Some(s)) = (p.get(path.as_str()), l.as_any_mut().downcast_mut::<SvdLinear>()) {
                    s.adapter_mut(name)?.record_pattern(keep)?;
                }
            }
        }
        Ok(())
    }
    /// The uncut tensors, masks and allocator state of adapter `name` (see the `state` module).
    fn export_state(&self, name: &str, layers: &[(String, &dyn AdapterLayer)]) -> Result<Option<MethodState>> {
        state::export(self, name, layers).map(Some)
    }
    /// Restores [`AdapterMethod::export_state`]'s output into adapter `name` as loaded from its PEFT files.
    fn import_state(
        &mut self,
        name: &str,
        layers: &mut [(String, &mut dyn AdapterLayer)],
        st: MethodState,
    ) -> Result<()> {
        state::import(self, name, layers, st)
    }
    /// `orth_reg_weight · mean(‖QQᵀ − I‖_F, ‖PᵀP − I‖_F over every layer)` for adapter `name` (PEFT adds this
    /// to the loss in `AdaLoraModel.forward`); None when the weight is 0.
    fn regularization_loss(&self, name: &str, layers: &[(String, &dyn AdapterLayer)]) -> Result<Option<Tensor>> {
        if self.config.orth_reg_weight == 0.0 {
            return Ok(None);
        }
        let refs = triplets(layers, name);
        orth_regularization(refs.iter().map(|t| (t.a, t.b)), self.config.orth_reg_weight)
    }
}
