//! LoRA and its variants on any base layer: `h = W0 x + s · B A x` with `s = lora_alpha / r` (or
//! `lora_alpha / √r` with rsLoRA), A `[r, in]`, B `[out, r]`; inits default (A Kaiming-uniform a = √5, B = 0),
//! gaussian (A ~ N(0, 1/r²), B = 0), `false` (both PyTorch-Linear random, for tests) and PiSSA (the top-r singular
//! triplets of W0 move into A and B, the residual stays in the base); dropout on the adapter input while
//! training; LoRA-FA (`lora_fa`: A frozen after its init, only B trained); and QLoRA, which is any of these over
//! an [`Nf4Linear`] base ([`quantize_base`]).
//!
//! Memory: the adapter branch computes `u = s · (x Aᵀ)` ([rows, r]) and then `u Bᵀ`. With A trainable the
//! autograd graph keeps x for A's gradient; with A frozen (LoRA-FA) the matmul with the frozen Aᵀ keeps nothing
//! of x, and only u ([rows, r]) is kept for B's gradient. A frozen base keeps nothing of x either (its weight
//! needs no gradient), so under LoRA-FA a layer's input is freed as soon as the next layer has consumed it.
//! With `lora_dropout > 0` while training, the dropout mask (`[rows, in]`, in x's dtype) is kept for x's
//! gradient under both LoRA and LoRA-FA, so LoRA-FA's saving is the dropped input itself, not the mask.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use rankfold_tensor::nn::{init, Linear, LinearLayer, LinearModel, Nf4Linear};
use rankfold_tensor::{no_grad, DType, Rng, Shape, Tensor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{from_json, CommonConfig, TargetModules};
use crate::layer::{
    self, base_with_delta, rows_of, AdapterLayer, AdapterMap, AdapterMethod, InjectResult, Method,
};
use crate::{target, Error, Result};

/// PEFT's `init_lora_weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraInit {
    /// `true`: A Kaiming-uniform (a = √5), B zeros.
    Default,
    /// `false`: A and B both drawn like a PyTorch `nn.Linear` weight (non-zero B; for tests).
    Random,
    /// `"gaussian"`: A ~ N(0, (1/r)²), B zeros.
    Gaussian,
    /// `"pissa"` or `"pissa_niter_<n>"` (the randomized-SVD variant is computed here by the exact SVD; `n` is
    /// kept so the config round-trips).
    Pissa { niter: Option<u32> },
}

impl Serialize for LoraInit {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            LoraInit::Default => true.serialize(s),
            LoraInit::Random => false.serialize(s),
            LoraInit::Gaussian => "gaussian".serialize(s),
            LoraInit::Pissa { niter: None } => "pissa".serialize(s),
            LoraInit::Pissa { niter: Some(n) } => format!("pissa_niter_{n}").serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for LoraInit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::B(true) => Ok(LoraInit::Default),
            Raw::B(false) => Ok(LoraInit::Random),
            Raw::S(s) if s.eq_ignore_ascii_case("gaussian") => Ok(LoraInit::Gaussian),
            Raw::S(s) if s == "pissa" => Ok(LoraInit::Pissa { niter: None }),
            Raw::S(s) => match s.strip_prefix("pissa_niter_").and_then(|n| n.parse().ok()) {
                Some(n) => Ok(LoraInit::Pissa { niter: Some(n) }),
                None => Err(serde::de::Error::custom(format!(
                    "init_lora_weights `{s}` is not supported"
                ))),
            },
        }
    }
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_bias() -> String {
    "none".into()
}
fn default_init() -> LoraInit {
    LoraInit::Default
}

/// A LoRA adapter config with PEFT's field names; unknown fields are ignored on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Only "none" is supported (PEFT's "all" / "lora_only" train biases).
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default = "default_init")]
    pub init_lora_weights: LoraInit,
    /// Per-module ranks: a key matches a module path that ends with it (PEFT's `get_pattern_key`).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub lora_bias: bool,
    /// LoRA-FA: A frozen after its random init, only B trained. Not a PEFT field: LoRA-FA saves as LoRA.
    #[serde(skip)]
    pub lora_fa: bool,
}

impl LoraConfig {
    /// PEFT's defaults (r = 8, alpha = 8, no dropout, default init) targeting `targets`.
    pub fn new(targets: TargetModules) -> Self {
        LoraConfig {
            common: CommonConfig::new("LORA", targets),
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            fan_in_fan_out: false,
            bias: "none".into(),
            use_rslora: false,
            init_lora_weights: LoraInit::Default,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            use_dora: false,
            lora_bias: false,
            lora_fa: false,
        }
    }
    pub fn with_rank(mut self, r: usize, alpha: f64) -> Self {
        self.r = r;
        self.lora_alpha = alpha;
        self
    }
    pub fn with_lora_fa(mut self, on: bool) -> Self {
        self.lora_fa = on;
        self
    }
    /// The config in a PEFT `adapter_config.json`.
    pub fn from_peft_json(v: &serde_json::Value) -> Result<Self> {
        let c: LoraConfig = from_json(v, "LoraConfig")?;
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<()> {
        self.common.check()?;
        if self.fan_in_fan_out {
            return Err(Error::config(
                "fan_in_fan_out",
                "Conv1D-style [in, out] weights are not supported",
            ));
        }
        if self.bias != "none" || self.lora_bias {
            return Err(Error::config(
                "bias",
                format!("only \"none\" is supported, got {:?}", self.bias),
            ));
        }
        if self.use_dora {
            return Err(Error::config("use_dora", "DoRA is not supported"));
        }
        crate::config::check_dropout(self.lora_dropout)?;
        if self.r == 0 || self.rank_pattern.values().any(|&r| r == 0) {
            return Err(Error::config("r", "ranks must be positive"));
        }
        Ok(())
    }

    /// The pattern key PEFT's `get_pattern_key` picks for `path`: the first key `k` such that the path is `k`
    /// or ends with `.k` (keys are regular expressions).
    fn pattern_key<'a>(
        keys: impl Iterator<Item = &'a String>,
        path: &str,
    ) -> Result<Option<&'a String>> {
        for k in keys {
            let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                .map_err(|e| Error::config("rank_pattern", e.to_string()))?;
            if re.is_match(path) {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// The rank and scaling for the module at `path`.
    pub fn rank_and_scaling(&self, path: &str) -> Result<(usize, f64)> {
        let r = Self::pattern_key(self.rank_pattern.keys(), path)?
            .map_or(self.r, |k| self.rank_pattern[k]);
        let alpha = Self::pattern_key(self.alpha_pattern.keys(), path)?
            .map_or(self.lora_alpha, |k| self.alpha_pattern[k]);
        let s = if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        Ok((r, s))
    }

    fn new_adapter(
        &self,
        path: &str,
        base: &dyn LinearLayer,
        rng: &mut Rng,
    ) -> Result<(LoraAdapter, Option<Tensor>)> {
        let (r, scaling) = self.rank_and_scaling(path)?;
        let (inf, out) = (base.in_features(), base.out_features());
        let dtype = match base.as_any().downcast_ref::<Nf4Linear>() {
            Some(q) => q.dtype(),
            None => base.dense_weight()?.dtype(),
        };
        let dev = rankfold_tensor::Device::Cpu;
        let mut residual_delta = None;
        let (a, b) = match self.init_lora_weights {
            LoraInit::Default => (
                init::kaiming_uniform((r, inf), init::SQRT_5, rng, dtype, dev)?,
                Tensor::zeros((out, r), dtype, dev)?,
            ),
            LoraInit::Random => (
                init::kaiming_uniform((r, inf), init::SQRT_5, rng, dtype, dev)?,
                init::kaiming_uniform((out, r), init::SQRT_5, rng, dtype, dev)?,
            ),
            LoraInit::Gaussian => (
                init::normal((r, inf), 0.0, 1.0 / r as f64, rng, dtype, dev)?,
                Tensor::zeros((out, r), dtype, dev)?,
            ),
            LoraInit::Pissa { .. } => {
                if r > inf.min(out) {
                    return Err(Error::module(
                        path,
                        format!("PiSSA rank {r} exceeds min(out, in) = {}", inf.min(out)),
                    ));
                }
                let (a, b) = pissa(&base.dense_weight()?, r, scaling)?;
                residual_delta = Some(no_grad(|| b.matmul(&a)?.mul_scalar(scaling))?);
                (a, b)
            }
        };
        let seed = rng.next_u64();
        let ad = LoraAdapter {
            r,
            scaling,
            dropout: self.lora_dropout,
            freeze_a: self.lora_fa,
            a,
            b,
            seed,
        };
        Ok((ad, residual_delta))
    }

    fn inject_into(
        &self,
        path: &str,
        name: &str,
        layer: Box<dyn LinearLayer>,
        rng: &mut Rng,
    ) -> InjectResult {
        let mut lora = match layer::downcast_box::<LoraLayer>(layer) {
            Ok(l) => l,
            Err(base) => Box::new(LoraLayer::new(base)),
        };
        if lora.adapters.contains(name) {
            return Err((lora, Error::DuplicateAdapter(name.into())));
        }
        let (ad, residual) = match self.new_adapter(path, lora.base.as_ref(), rng) {
            Ok(v) => v,
            Err(e) => return Err((lora.unwrap_if_empty(), e)),
        };
        if let Some(delta) = residual {
            match base_with_delta(lora.base.as_ref(), &delta, None, -1.0) {
                Ok(b) => lora.base = b,
                Err(e) => return Err((lora.unwrap_if_empty(), e)),
            }
        }
        match lora.adapters.insert(name, ad) {
            Ok(()) => Ok(lora),
            Err(e) => Err((lora, e)),
        }
    }
}

/// PiSSA's A `[r, in]` and B `[out, r]` from W0 = U S Vᵀ: A = diag(√(S_r/s)) V_rᵀ, B = U_r diag(√(S_r/s)), so
/// that s·B·A is W0's best rank-r approximation.
fn pissa(w0: &Tensor, r: usize, scaling: f64) -> Result<(Tensor, Tensor)> {
    let dtype = w0.dtype();
    let svd = w0.to_dtype(DType::F64)?.svd()?;
    let sq = svd.s.narrow(0, 0, r)?.mul_scalar(1.0 / scaling)?.sqrt()?;
    let a = svd.vt.narrow(0, 0, r)?.mul(&sq.unsqueeze(1)?)?;
    let b = svd.u.narrow(1, 0, r)?.mul(&sq.unsqueeze(0)?)?;
    Ok((
        a.to_dtype(dtype)?.contiguous()?,
        b.to_dtype(dtype)?.contiguous()?,
    ))
}

impl AdapterMethod for LoraConfig {
    fn method(&self) -> Method {
        if self.lora_fa {
            Method::LoraFa
        } else {
            Method::Lora
        }
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    fn inject(
        &self,
        path: &str,
        name: &str,
        layer: Box<dyn LinearLayer>,
        rng: &mut Rng,
    ) -> InjectResult {
        if let Err(e) = self.check() {
            return Err((layer, e));
        }
        self.inject_into(path, name, layer, rng)
    }
    fn as_adapter<'a>(&self, layer: &'a dyn LinearLayer) -> Option<&'a dyn AdapterLayer> {
        layer::downcast_adapter::<LoraLayer>(layer)
    }
    fn as_adapter_mut<'a>(
        &self,
        layer: &'a mut dyn LinearLayer,
    ) -> Option<&'a mut dyn AdapterLayer> {
        layer::downcast_adapter_mut::<LoraLayer>(layer)
    }
    fn into_adapter(
        &self,
        layer: Box<dyn LinearLayer>,
    ) -> std::result::Result<Box<dyn AdapterLayer>, Box<dyn LinearLayer>> {
        layer::into_adapter::<LoraLayer>(layer)
    }
    fn peft_config(
        &self,
        _name: &str,
        _layers: &[(String, &dyn AdapterLayer)],
    ) -> Result<serde_json::Value> {
        let mut c = self.clone();
        c.common.peft_type = Some("LORA".into());
        c.common.inference_mode = true;
        c.common.peft_version = Some(crate::config::PEFT_VERSION.into());
        serde_json::to_value(&c).map_err(|e| Error::config("LoraConfig", e.to_string()))
    }
}

/// One named LoRA adapter of a layer.
#[derive(Debug)]
struct LoraAdapter {
    r: usize,
    scaling: f64,
    dropout: f64,
    freeze_a: bool,
    /// `[r, in]`.
    a: Tensor,
    /// `[out, r]`.
    b: Tensor,
    /// The seed of this adapter's dropout stream.
    seed: u64,
}

/// The tensor as a trainable leaf (`on`) or frozen, keeping the handle when it is already so.
fn trainable(t: &Tensor, on: bool) -> Tensor {
    if t.requires_grad() == on && (on || !t.tracks_grad()) {
        t.clone()
    } else {
        t.with_requires_grad(on)
    }
}

/// A linear layer with LoRA adapters over a base layer (dense or NF4).
#[derive(Debug)]
pub struct LoraLayer {
    base: Box<dyn LinearLayer>,
    adapters: AdapterMap<LoraAdapter>,
    active: Option<String>,
    merged: Vec<String>,
    training: bool,
    /// Dropout draws; a lock because `forward` takes `&self`.
    rng: Mutex<Option<Rng>>,
}

impl LoraLayer {
    fn new(base: Box<dyn LinearLayer>) -> Self {
        LoraLayer {
            base,
            adapters: AdapterMap::default(),
            active: None,
            merged: Vec::new(),
            training: false,
            rng: Mutex::new(None),
        }
    }
    /// The layer handed back from a failed injection: the bare base when it held no adapter yet.
    fn unwrap_if_empty(self: Box<Self>) -> Box<dyn LinearLayer> {
        if self.adapters.names().is_empty() {
            self.base
        } else {
            self
        }
    }
    fn adapter(&self, name: &str) -> Result<&LoraAdapter> {
        self.adapters.find(name)
    }
    fn adapter_mut(&mut self, name: &str) -> Result<&mut LoraAdapter> {
        self.adapters.find_mut(name)
    }
    /// A (`[r, in]`) and B (`[out, r]`) of adapter `name`.
    pub fn lora_tensors(&self, name: &str) -> Result<(Tensor, Tensor)> {
        let a = self.adapter(name)?;
        Ok((a.a.clone(), a.b.clone()))
    }
    /// Whether adapter `name` is LoRA-FA (A frozen).
    pub fn is_lora_fa(&self, name: &str) -> Result<bool> {
        Ok(self.adapter(name)?.freeze_a)
    }
    /// The scaling s of adapter `name`.
    pub fn scaling(&self, name: &str) -> Result<f64> {
        Ok(self.adapter(name)?.scaling)
    }

    fn branch(&self, x: &Tensor, ad: &LoraAdapter) -> rankfold_tensor::Result<Tensor> {
        let (rows, out_dims) = rows_of(x, self.in_features(), self.out_features(), "lora")
            .map_err(|e| rankfold_tensor::Error::InvalidArgument {
                op: "lora",
                msg: e.to_string(),
            })?;
        let xin = if self.training && ad.dropout > 0.0 {
            let mut g = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let rng = g.get_or_insert_with(|| Rng::new(ad.seed));
            rows.dropout(ad.dropout, rng)?
        } else {
            rows
        };
        let u = xin.matmul(&ad.a.t()?)?.mul_scalar(ad.scaling)?;
        u.matmul(&ad.b.t()?)?.reshape(out_dims)
    }
}

impl LinearLayer for LoraLayer {
    fn forward(&self, x: &Tensor) -> rankfold_tensor::Result<Tensor> {
        let y = self.base.forward(x)?;
        let Some(name) = self
            .active
            .as_deref()
            .filter(|n| !self.merged.iter().any(|m| m == n))
        else {
            return Ok(y);
        };
        let Some(ad) = self.adapters.get(name) else {
            return Ok(y);
        };
        let d = self.branch(x, ad)?;
        y.add(&d.to_dtype(y.dtype())?)
    }
    fn in_features(&self) -> usize {
        self.base.in_features()
    }
    fn out_features(&self) -> usize {
        self.base.out_features()
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self
            .base
            .parameters()
            .into_iter()
            .map(|(n, t)| (format!("base_layer.{n}"), t))
            .collect();
        for (name, a) in self.adapters.iter() {
            v.push((format!("lora_A.{name}.weight"), a.a.clone()));
            v.push((format!("lora_B.{name}.weight"), a.b.clone()));
        }
        v
    }
    fn dense_weight(&self) -> rankfold_tensor::Result<Tensor> {
        self.base.dense_weight()
    }
    fn bias(&self) -> Option<Tensor> {
        self.base.bias()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl AdapterLayer for LoraLayer {
    fn dropout_rng(&self) -> Option<Rng> {
        let g = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        // Before the first draw the generator is the one the active adapter's seed would start (when it drops).
        g.clone().or_else(|| {
            let a = self.adapters.get(self.active.as_deref()?)?;
            (a.dropout > 0.0).then(|| Rng::new(a.seed))
        })
    }
    fn set_dropout_rng(&mut self, rng: Rng) {
        *self.rng.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(rng);
    }
    fn method(&self) -> Method {
        let fa = self
            .active
            .as_deref()
            .and_then(|n| self.adapters.get(n))
            .is_some_and(|a| a.freeze_a);
        if fa {
            Method::LoraFa
        } else {
            Method::Lora
        }
    }
    fn base(&self) -> &dyn LinearLayer {
        self.base.as_ref()
    }
    fn into_base(self: Box<Self>) -> Box<dyn LinearLayer> {
        self.base
    }
    fn adapter_names(&self) -> Vec<String> {
        self.adapters.names().to_vec()
    }
    fn active(&self) -> Option<String> {
        self.active.clone()
    }
    fn set_active(&mut self, name: Option<&str>) -> Result<()> {
        if let Some(n) = name {
            self.adapter(n)?;
        }
        for (n, a) in self.adapters.iter_mut() {
            let on = Some(n.as_str()) == name;
            a.a = trainable(&a.a, on && !a.freeze_a);
            a.b = trainable(&a.b, on);
        }
        self.active = name.map(str::to_string);
        Ok(())
    }
    fn set_training(&mut self, on: bool) {
        self.training = on;
    }
    fn merge(&mut self, name: &str) -> Result<()> {
        if self.merged.iter().any(|m| m == name) {
            return Ok(());
        }
        let (dw, _) = self.merged_weight_delta(name)?;
        self.base = base_with_delta(self.base.as_ref(), &dw, None, 1.0)?;
        self.merged.push(name.into());
        Ok(())
    }
    fn unmerge(&mut self) -> Result<()> {
        while let Some(name) = self.merged.last().cloned() {
            let (dw, _) = self.merged_weight_delta(&name)?;
            self.base = base_with_delta(self.base.as_ref(), &dw, None, -1.0)?;
            self.merged.pop();
        }
        Ok(())
    }
    fn merged(&self) -> Vec<String> {
        self.merged.clone()
    }
    fn merged_weight_delta(&self, name: &str) -> Result<(Tensor, Option<Tensor>)> {
        let a = self.adapter(name)?;
        let dw = no_grad(|| -> rankfold_tensor::Result<Tensor> {
            a.b.to_dtype(DType::F32)?
                .matmul(&a.a.to_dtype(DType::F32)?)?
                .mul_scalar(a.scaling)
        })?;
        Ok((dw, None))
    }
    fn peft_tensors(&self, name: &str) -> Result<Vec<(String, Tensor)>> {
        let a = self.adapter(name)?;
        Ok(vec![
            ("lora_A.weight".into(), a.a.detach()),
            ("lora_B.weight".into(), a.b.detach()),
        ])
    }
    fn load_peft_tensors(&mut self, name: &str, t: &HashMap<String, Tensor>) -> Result<()> {
        let (inf, out) = (self.in_features(), self.out_features());
        let ad = self.adapter_mut(name)?;
        let a_shape = Shape::new([ad.r, inf]);
        let a = layer::take_tensor(t, "lora_A.weight", &a_shape, ad.a.dtype())?;
        let b_shape = Shape::new([out, ad.r]);
        let b = layer::take_tensor(t, "lora_B.weight", &b_shape, ad.b.dtype())?;
        layer::check_no_extra(t, &["lora_A.weight", "lora_B.weight"])?;
        ad.a = a.with_requires_grad(ad.a.requires_grad());
        ad.b = b.with_requires_grad(ad.b.requires_grad());
        Ok(())
    }
    fn remove_adapter(&mut self, name: &str) -> Result<()> {
        if self.merged.iter().any(|m| m == name) {
            return Err(Error::Unsupported(format!(
                "adapter `{name}` is merged; unmerge it before removing it"
            )));
        }
        self.adapter(name)?;
        self.adapters.remove(name);
        if self.active.as_deref() == Some(name) {
            self.active = None;
        }
        Ok(())
    }
    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        self.parameters()
            .into_iter()
            .filter(|(n, t)| t.requires_grad() && !n.starts_with("base_layer."))
            .collect()
    }
}

/// QLoRA's first step: replaces every dense [`Linear`] slot that `targets` selects (for
/// [`TargetModules::AllLinear`], every one but `lm_head`) by a frozen [`Nf4Linear`] quantized in blocks of
/// `blocksize` (64 in QLoRA) with double-quantized scales when `double_quant`. Returns the paths quantized.
/// Call it before adding adapters: a slot that already holds an adapter layer is left as it is.
pub fn quantize_base<M: LinearModel>(
    model: &mut M,
    targets: &TargetModules,
    blocksize: usize,
    double_quant: bool,
) -> Result<Vec<String>> {
    let cfg = CommonConfig::new("LORA", targets.clone());
    let mut done = Vec::new();
    for (path, slot) in model.linear_slots() {
        if !target::is_target(&cfg, &path)? {
            continue;
        }
        let Some(lin) = slot.downcast_ref::<Linear>() else {
            continue;
        };
        let q = Nf4Linear::quantize(lin, blocksize, double_quant)
            .map_err(|e| Error::module(path.clone(), e.to_string()))?;
        *slot = rankfold_tensor::nn::LinearSlot::new(q);
        done.push(path);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_close;
    use rankfold_tensor::Device;

    fn base(inf: usize, out: usize, seed: u64) -> Linear {
        Linear::new(inf, out, true, &mut Rng::new(seed), DType::F32, Device::Cpu)
            .unwrap()
            .freeze()
    }

    #[test]
    fn forward_is_base_plus_scaled_b_a() {
        let lin = base(37, 23, 1);
        let mut cfg = LoraConfig::new(TargetModules::AllLinear).with_rank(5, 7.0);
        cfg.init_lora_weights = LoraInit::Random;
        for rs in [false, true] {
            cfg.use_rslora = rs;
            let l = cfg
                .inject("m", "default", Box::new(lin.clone()), &mut Rng::new(2))
                .unwrap();
            let mut l = layer::downcast_box::<LoraLayer>(l).unwrap();
            l.set_active(Some("default")).unwrap();
            let s = if rs { 7.0 / 5f64.sqrt() } else { 7.0 / 5.0 };
            assert_eq!(l.scaling("default").unwrap(), s);
            let x = Rng::new(3)
                .normal_tensor(0.0, 1.0, (2, 3, 37), DType::F32, Device::Cpu)
                .unwrap();
            let (a, b) = l.lora_tensors("default").unwrap();
            // The reference in f64: x·W0ᵀ + b0 + s·x·Aᵀ·Bᵀ.
            let x64 = x.to_dtype(DType::F64).unwrap();
            let w = lin.weight().to_dtype(DType::F64).unwrap();
            let ba = b
                .to_dtype(DType::F64)
                .unwrap()
                .matmul(&a.to_dtype(DType::F64).unwrap())
                .unwrap()
                .mul_scalar(s)
                .unwrap();
            let want = x64
                .matmul(&w.add(&ba).unwrap().t().unwrap())
                .unwrap()
                .add(&lin.bias().unwrap().to_dtype(DType::F64).unwrap())
                .unwrap();
            assert_close(&l.forward(&x).unwrap(), &want, 1e-5, 1e-5, "lora forward");
        }
    }

    #[test]
    fn pissa_moves_the_top_triplets_and_keeps_the_output() {
        let lin = base(19, 11, 4);
        let mut cfg = LoraConfig::new(TargetModules::AllLinear).with_rank(3, 6.0);
        cfg.init_lora_weights = LoraInit::Pissa { niter: None };
        let l = cfg
            .inject("m", "default", Box::new(lin.clone()), &mut Rng::new(5))
            .unwrap();
        let mut l = layer::downcast_box::<LoraLayer>(l).unwrap();
        l.set_active(Some("default")).unwrap();
        let x = Rng::new(6)
            .normal_tensor(0.0, 1.0, (4, 19), DType::F32, Device::Cpu)
            .unwrap();
        // At init the adapted layer computes the original layer.
        assert_close(
            &l.forward(&x).unwrap(),
            &lin.forward(&x).unwrap(),
            1e-5,
            1e-5,
            "pissa output",
        );
        // The residual's spectrum is W0's with the top three singular values removed.
        let s0 = lin.weight().svd().unwrap().s.to_vec::<f64>().unwrap();
        let sr = l
            .base()
            .dense_weight()
            .unwrap()
            .svd()
            .unwrap()
            .s
            .to_vec::<f64>()
            .unwrap();
        for (i, v) in sr.iter().take(s0.len() - 3).enumerate() {
            assert!(
                (v - s0[i + 3]).abs() < 1e-5,
                "residual σ{i} = {v}, want {}",
                s0[i + 3]
            );
        }
        let (a, b) = l.lora_tensors("default").unwrap();
        assert_eq!((a.dims(), b.dims()), (&[3, 19][..], &[11, 3][..]));
    }

    #[test]
    fn config_round_trips_and_rejects_unsupported_fields() {
        let mut c = LoraConfig::new(TargetModules::list(&["q_proj"]));
        c.rank_pattern.insert("q_proj".into(), 2);
        c.init_lora_weights = LoraInit::Pissa { niter: Some(4) };
        let v = c.peft_config("default", &[]).unwrap();
        assert_eq!(v["init_lora_weights"], "pissa_niter_4");
        assert_eq!(v["peft_type"], "LORA");
        let back = LoraConfig::from_peft_json(&v).unwrap();
        assert_eq!(back.rank_pattern, c.rank_pattern);
        assert_eq!(
            back.rank_and_scaling("model.layers.0.q_proj").unwrap(),
            (2, 4.0)
        );
        assert_eq!(
            back.rank_and_scaling("model.layers.0.k_proj").unwrap(),
            (8, 1.0)
        );
        let mut bad = v.clone();
        bad["use_dora"] = true.into();
        assert!(
            matches!(LoraConfig::from_peft_json(&bad), Err(Error::Config { field, .. }) if field == "use_dora")
        );
    }
}
