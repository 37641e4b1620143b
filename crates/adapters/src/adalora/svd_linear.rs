//! [`SvdLinear`]: the adapted linear layer (PEFT `SVDLinear`) — a base layer (dense or NF4) plus named
//! [`SvdAdapter`]s, one active; merging keeps the original base so unmerging is exact.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

use rankfold_tensor::nn::LinearLayer;
use rankfold_tensor::{Rng, Shape, Tensor};

use super::layer::{count, SvdAdapter};
use crate::layer::{
    base_with_delta, check_no_extra, take_tensor, AdapterLayer, AdapterMap, MergedBase, Method,
};
use crate::{Error, Result};

/// The adapters of one layer, by adapter name.
type SvdAdapters = AdapterMap<SvdAdapter>;

/// A linear layer with AdaLoRA adapters over a base layer (dense or NF4): PEFT's `SVDLinear`. Parameters are
/// named as PEFT names them inside the layer: `base_layer.weight`, `lora_A.<adapter>`, `lora_E.<adapter>`,
/// `lora_B.<adapter>`.
#[derive(Debug)]
pub struct SvdLinear {
    /// The live base (W0, or W0 + Σ ΔW while adapters are merged) and the original kept aside, so unmerging
    /// restores W0 bit for bit (also on NF4).
    base: MergedBase,
    adapters: SvdAdapters,
    active: Option<String>,
    training: bool,
    rng: Mutex<Rng>,
}

impl SvdLinear {
    /// A layer over `base` with no adapter yet (evaluation mode).
    pub fn new(base: Box<dyn LinearLayer>) -> Self {
        SvdLinear {
            base: MergedBase::new(base),
            adapters: SvdAdapters::default(),
            active: None,
            training: false,
            rng: Mutex::new(Rng::new(0x5eed_ada1)),
        }
    }

    /// Adds adapter `name` (frozen until activated); its shapes must fit the base.
    pub fn add_adapter(&mut self, name: &str, mut ad: SvdAdapter) -> Result<()> {
        if self.adapters.contains(name) {
            return Err(Error::DuplicateAdapter(name.into()));
        }
        let (inf, out) = (self.in_features(), self.out_features());
        if ad.a.dims()[1] != inf || ad.b.dims()[0] != out {
            return Err(Error::module(
                "AdaLoRA",
                format!(
                    "adapter `{name}` is [{}, {}] for a [{out}, {inf}] layer",
                    ad.b.dims()[0],
                    ad.a.dims()[1]
                ),
            ));
        }
        ad.set_trainable(self.active.as_deref() == Some(name));
        self.adapters.insert(name, ad)
    }

    pub fn adapter(&self, name: &str) -> Result<&SvdAdapter> {
        self.adapters.find(name)
    }
    pub fn adapter_mut(&mut self, name: &str) -> Result<&mut SvdAdapter> {
        self.adapters.find_mut(name)
    }

    /// The original base (W0 even while adapters are merged).
    pub fn base_unmerged(&self) -> &dyn LinearLayer {
        self.base.unmerged()
    }

    /// Seeds the dropout generator (dropout draws only in training mode).
    pub fn seed_dropout(&mut self, seed: u64) {
        self.rng = Mutex::new(Rng::new(seed));
    }
}

impl LinearLayer for SvdLinear {
    /// `base(x)`, plus the active adapter's branch unless it is merged (or has rank 0).
    fn forward(&self, x: &Tensor) -> rankfold_tensor::Result<Tensor> {
        let y = self.base.live().forward(x)?;
        let Some(name) = self.active.as_deref().filter(|n| !self.base.is_merged(n)) else {
            return Ok(y);
        };
        let Some(ad) = self.adapters.get(name) else {
            return Ok(y);
        };
        match ad.branch(x, self.training, &self.rng) {
            Ok(Some(h)) => y.add(&h.to_dtype(y.dtype())?),
            Ok(None) => Ok(y),
            Err(Error::Tensor(e)) => Err(e),
            Err(e) => Err(rankfold_tensor::Error::InvalidArgument {
                op: "adalora",
                msg: e.to_string(),
            }),
        }
    }
    fn in_features(&self) -> usize {
        self.base.live().in_features()
    }
    fn out_features(&self) -> usize {
        self.base.live().out_features()
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .base
            .live()
            .parameters()
            .into_iter()
            .map(|(n, t)| (format!("base_layer.{n}"), t))
            .collect();
        for (name, ad) in self.adapters.iter() {
            v.push((format!("lora_A.{name}"), ad.a.clone()));
            v.push((format!("lora_B.{name}"), ad.b.clone()));
            v.push((format!("lora_E.{name}"), ad.e.clone()));
        }
        v
    }
    fn dense_weight(&self) -> rankfold_tensor::Result<Tensor> {
        self.base.live().dense_weight()
    }
    fn bias(&self) -> Option<Tensor> {
        self.base.live().bias()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl AdapterLayer for SvdLinear {
    fn method(&self) -> Method {
        Method::AdaLora
    }
    fn dropout_rng(&self) -> Option<Rng> {
        Some(self.rng.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    fn set_dropout_rng(&mut self, rng: Rng) {
        *self.rng.get_mut().unwrap_or_else(|p| p.into_inner()) = rng;
    }
    fn base(&self) -> &dyn LinearLayer {
        self.base.live()
    }
    /// The live base: W0 when nothing is merged, the merged layer otherwise (merge-and-unload).
    fn into_base(self: Box<Self>) -> Box<dyn LinearLayer> {
        self.base.into_live()
    }
    fn adapter_names(&self) -> Vec<String> {
        self.adapters.names().to_vec()
    }
    fn active(&self) -> Option<String> {
        self.active.clone()
    }
    /// Activates `name` (its tensors trainable, the others frozen) or disables adapters with None.
    fn set_active(&mut self, name: Option<&str>) -> Result<()> {
        if let Some(n) = name {
            self.adapter(n)?;
        }
        self.active = name.map(str::to_string);
        for (n, ad) in self.adapters.iter_mut() {
            ad.set_trainable(Some(n.as_str()) == name);
        }
        Ok(())
    }
    fn set_training(&mut self, on: bool) {
        self.training = on;
    }
    /// Adds `name` to the merged set: the live base becomes W0 + Σ ΔW over the merged adapters, each ΔW =
    /// P·(Q⊙λ)·scale (PEFT `get_delta_weight`); NF4 bases are requantized ([`base_with_delta`]).
    fn merge(&mut self, name: &str) -> Result<()> {
        self.adapter(name)?;
        if self.base.is_merged(name) {
            return Ok(());
        }
        let mut dw = self.adapter(name)?.delta_weight()?;
        for n in self.base.merged() {
            dw = dw.add(&self.adapter(n)?.delta_weight()?)?;
        }
        let merged = rankfold_tensor::no_grad(|| {
            base_with_delta(self.base_unmerged(), &dw.detach(), None, 1.0)
        })?;
        self.base.install(name, merged);
        Ok(())
    }
    /// Restores the original base, bit for bit.
    fn unmerge(&mut self) -> Result<()> {
        self.base.restore();
        Ok(())
    }
    fn merged(&self) -> Vec<String> {
        self.base.merged().to_vec()
    }
    fn merged_weight_delta(&self, name: &str) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.adapter(name)?.delta_weight()?, None))
    }
    /// `lora_A`, `lora_B`, `lora_E` (no `.weight`), cut to the surviving ranks as PEFT saves them.
    fn peft_tensors(&self, name: &str) -> Result<Vec<(String, Tensor)>> {
        self.adapter(name)?.peft_tensors()
    }
    /// Loads `lora_A` `[k, in]`, `lora_E` `[k, 1]`, `lora_B` `[out, k]`, where k is the number of ranks the
    /// layer's `rank_pattern` entry keeps (the current rank without one): the layer is resized to k first, as
    /// PEFT's `resize_modules_by_rank_pattern` does, keeping ranknum = init_r. k = 0 gives a layer that
    /// computes its base alone.
    fn load_peft_tensors(&mut self, name: &str, t: &HashMap<String, Tensor>) -> Result<()> {
        if !self.base.merged().is_empty() {
            return Err(Error::module(
                "AdaLoRA",
                format!("cannot load adapter `{name}` while adapters are merged"),
            ));
        }
        let (inf, out) = (self.in_features(), self.out_features());
        let trainable = self.active.as_deref() == Some(name);
        let ad = self.adapter_mut(name)?;
        let k = ad.pattern.as_deref().map_or(ad.rank(), count);
        check_no_extra(t, &["lora_A", "lora_B", "lora_E"])?;
        let dtype = ad.a.dtype();
        let load =
            |key: &str, shape: (usize, usize)| take_tensor(t, key, &Shape::from(shape), dtype);
        let (a, e, b) = (
            load("lora_A", (k, inf))?,
            load("lora_E", (k, 1))?,
            load("lora_B", (out, k))?,
        );
        ad.a = a;
        ad.e = e;
        ad.b = b;
        ad.cut = ad.pattern.clone();
        ad.set_trainable(trainable);
        Ok(())
    }
    /// Drops adapter `name` (refused while it is merged); when it was active, none is active afterwards.
    fn remove_adapter(&mut self, name: &str) -> Result<()> {
        self.adapter(name)?;
        if self.base.is_merged(name) {
            return Err(Error::module(
                "AdaLoRA",
                format!("adapter `{name}` is merged; unmerge it before removing it"),
            ));
        }
        self.adapters.remove(name);
        if self.active.as_deref() == Some(name) {
            self.active = None;
        }
        Ok(())
    }
    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let Some(name) = self.active.as_deref() else {
            return Vec::new();
        };
        let Some(ad) = self.adapters.get(name) else {
            return Vec::new();
        };
        if !ad.is_trainable() {
            return Vec::new();
        }
        vec![
            (format!("lora_A.{name}"), ad.a.clone()),
            (format!("lora_B.{name}"), ad.b.clone()),
            (format!("lora_E.{name}"), ad.e.clone()),
        ]
    }
}
