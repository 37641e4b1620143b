//! The method-agnostic adapter interfaces: [`AdapterLayer`] (what every adapted linear layer offers: named
//! adapters over a base layer, switching, merging, PEFT tensors) and [`AdapterMethod`] (what a method's config
//! does for the model wrapper: inject itself into a layer, find its layers again, write its PEFT config, and the
//! optional per-step hook and regularization loss). Helpers shared by every method live here too.
//!
//! Merging into an NF4 base ([`Nf4Linear`]) dequantizes the weight, adds ΔW and requantizes with the same
//! blocksize and scale format: the merged weight carries a fresh NF4 rounding error (at most half a codebook gap
//! times each block's absmax), and unmerging rounds once more, so merge/unmerge on NF4 is lossy by design (as in
//! PEFT's bitsandbytes layers). Dense bases merge exactly up to f32 rounding.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rankfold_tensor::nn::{Linear, LinearLayer, Nf4Linear};
use rankfold_tensor::{DType, GradStore, Nf4Tensor, Rng, Shape, Tensor};

use crate::{Error, Result};

/// The adapter methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Lora,
    /// LoRA with A frozen after its random init (saved as LoRA).
    LoraFa,
    Glora,
    AdaLora,
}

/// A linear layer carrying one or more named adapters of one method over a base layer. Exactly one adapter is
/// active at a time, or none (adapters disabled: the layer computes its base). Trainable tensors are those of
/// the active adapter; the others are frozen until activated.
///
/// Naming convention for [`LinearLayer::parameters`] of an adapter layer (the trainable report relies on it):
/// the base's tensors under `base_layer.` (`base_layer.weight`, `base_layer.bias`), the adapters' under their
/// own names with the adapter name inside (`lora_A.<adapter>.weight`, …), as PEFT names them.
pub trait AdapterLayer: LinearLayer {
    fn method(&self) -> Method;
    /// The base layer (with merged adapters folded in while merged).
    fn base(&self) -> &dyn LinearLayer;
    /// The base layer; call after unmerging (or after merging, for merge-and-unload).
    fn into_base(self: Box<Self>) -> Box<dyn LinearLayer>;
    /// The adapter names, in the order they were added.
    fn adapter_names(&self) -> Vec<String>;
    /// The active adapter, if any.
    fn active(&self) -> Option<String>;
    /// Makes `name` the active adapter (its tensors trainable, the others frozen); `None` disables adapters.
    fn set_active(&mut self, name: Option<&str>) -> Result<()>;
    /// Training mode (dropout, search sampling) or evaluation mode.
    fn set_training(&mut self, _on: bool) {}
    /// The generator the layer's next dropout mask is drawn from (for a training checkpoint, so a resumed run
    /// draws the masks the uninterrupted run would have); `None` for layers that draw no dropout.
    fn dropout_rng(&self) -> Option<Rng> {
        None
    }
    /// Restores what [`AdapterLayer::dropout_rng`] gave.
    fn set_dropout_rng(&mut self, _rng: Rng) {}
    /// Folds adapter `name` into the base weight (and bias); the layer then computes base only for it.
    fn merge(&mut self, name: &str) -> Result<()>;
    /// Takes every merged adapter back out of the base.
    fn unmerge(&mut self) -> Result<()>;
    /// The adapters merged now, in merge order.
    fn merged(&self) -> Vec<String>;
    /// ΔW `[out, in]` and Δb `[out]` (if the method changes the bias) that adapter `name` adds, as dense tensors.
    fn merged_weight_delta(&self, name: &str) -> Result<(Tensor, Option<Tensor>)>;
    /// Adapter `name`'s tensors under the key suffixes PEFT saves (`lora_A.weight`, …; adapter name stripped).
    fn peft_tensors(&self, name: &str) -> Result<Vec<(String, Tensor)>>;
    /// Replaces adapter `name`'s tensors by those in `t` (keyed by PEFT suffix), shape-checked; errors name the
    /// suffix ([`Error::MissingTensor`], [`Error::TensorShape`] with an empty file; the caller fills it in).
    fn load_peft_tensors(&mut self, name: &str, t: &HashMap<String, Tensor>) -> Result<()>;
    /// Removes adapter `name` (not merged) from the layer; when it was active, none is active afterwards.
    /// Methods that do not support removal keep this default, which refuses.
    fn remove_adapter(&mut self, name: &str) -> Result<()> {
        Err(Error::Unsupported(format!(
            "removing adapter `{name}` is not supported by {:?}",
            self.method()
        )))
    }
    /// The trainable tensors of the active adapter, named relative to the layer (`lora_B.default.weight`, …).
    fn trainable_parameters(&self) -> Vec<(String, Tensor)>;
}

/// An adapter method's training state beyond its PEFT files ([`AdapterMethod::export_state`]): named tensors
/// and a JSON value for everything else. The names and the JSON layout belong to the method.
#[derive(Debug, Clone, Default)]
pub struct MethodState {
    /// Tensors by name.
    pub tensors: Vec<(String, Tensor)>,
    /// The rest of the state.
    pub meta: serde_json::Value,
}

/// What a method's config does for [`crate::PeftModel`]. One value per adapter name; it may hold state
/// across steps (AdaLoRA's importance EMAs).
pub trait AdapterMethod: std::fmt::Debug + Send + Sync {
    fn method(&self) -> Method;
    /// The target-selection fields.
    fn common(&self) -> &crate::config::CommonConfig;
    /// Adds adapter `name` to the layer at `path`: `layer` is either a plain base (wrap it) or an adapter layer
    /// this method made earlier (add to it). On failure, hand the layer back unchanged with the error.
    fn inject(
        &self,
        path: &str,
        name: &str,
        layer: Box<dyn LinearLayer>,
        rng: &mut Rng,
    ) -> InjectResult;
    /// `layer` as this method's adapter layer, when it is one.
    fn as_adapter<'a>(&self, layer: &'a dyn LinearLayer) -> Option<&'a dyn AdapterLayer>;
    fn as_adapter_mut<'a>(
        &self,
        layer: &'a mut dyn LinearLayer,
    ) -> Option<&'a mut dyn AdapterLayer>;
    /// `layer` boxed as this method's adapter layer, or handed back when it is not one.
    #[allow(clippy::wrong_self_convention)] // `self` is the method; the conversion is of `layer`.
    fn into_adapter(
        &self,
        layer: Box<dyn LinearLayer>,
    ) -> std::result::Result<Box<dyn AdapterLayer>, Box<dyn LinearLayer>>;
    /// The `adapter_config.json` object for adapter `name`, given its layers (for learned per-layer state such
    /// as AdaLoRA's `rank_pattern` or GLoRA's searched configuration).
    fn peft_config(
        &self,
        name: &str,
        layers: &[(String, &dyn AdapterLayer)],
    ) -> Result<serde_json::Value>;
    /// The state this method keeps for adapter `name` across training steps beyond what the PEFT files hold
    /// (AdaLoRA: the allocator's importance averages, the rank masks and the uncut tensors), for a training
    /// checkpoint; `None` for methods whose PEFT files are the whole state.
    fn export_state(
        &self,
        _name: &str,
        _layers: &[(String, &dyn AdapterLayer)],
    ) -> Result<Option<MethodState>> {
        Ok(None)
    }
    /// Restores what [`AdapterMethod::export_state`] gave, into adapter `name` as loaded from its PEFT files.
    /// Methods without such state keep this default, which refuses.
    fn import_state(
        &mut self,
        name: &str,
        _layers: &mut [(String, &mut dyn AdapterLayer)],
        _state: MethodState,
    ) -> Result<()> {
        Err(Error::Unsupported(format!(
            "adapter `{name}`: {:?} keeps no training state to restore",
            self.method()
        )))
    }
    /// Called by the trainer after each optimizer step with that step's gradients.
    fn on_step(
        &mut self,
        _name: &str,
        _step: usize,
        _grads: &GradStore,
        _layers: &mut [(String, &mut dyn AdapterLayer)],
    ) -> Result<()> {
        Ok(())
    }
    /// A loss term the trainer adds to the loss (AdaLoRA's orthogonal regularization), if the method has one.
    fn regularization_loss(
        &self,
        _name: &str,
        _layers: &[(String, &dyn AdapterLayer)],
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// The result of [`AdapterMethod::inject`]: the new layer, or the old one handed back with the error.
pub type InjectResult = std::result::Result<Box<dyn LinearLayer>, (Box<dyn LinearLayer>, Error)>;

/// `layer` as a `&dyn AdapterLayer` when its concrete type is `T` (for [`AdapterMethod::as_adapter`]).
pub fn downcast_adapter<T: AdapterLayer>(layer: &dyn LinearLayer) -> Option<&dyn AdapterLayer> {
    layer
        .as_any()
        .downcast_ref::<T>()
        .map(|l| l as &dyn AdapterLayer)
}

/// `layer` as a `&mut dyn AdapterLayer` when its concrete type is `T`.
pub fn downcast_adapter_mut<T: AdapterLayer>(
    layer: &mut dyn LinearLayer,
) -> Option<&mut dyn AdapterLayer> {
    layer
        .as_any_mut()
        .downcast_mut::<T>()
        .map(|l| l as &mut dyn AdapterLayer)
}

/// `layer` boxed as a `Box<dyn AdapterLayer>` when its concrete type is `T`, else handed back.
pub fn into_adapter<T: AdapterLayer>(
    layer: Box<dyn LinearLayer>,
) -> std::result::Result<Box<dyn AdapterLayer>, Box<dyn LinearLayer>> {
    downcast_box::<T>(layer).map(|l| l as Box<dyn AdapterLayer>)
}

/// `layer` boxed as a `T`, or handed back (for a method's `inject`, to extend its own layer).
pub fn downcast_box<T: LinearLayer>(
    layer: Box<dyn LinearLayer>,
) -> std::result::Result<Box<T>, Box<dyn LinearLayer>> {
    if !layer.as_any().is::<T>() {
        return Err(layer);
    }
    let any: Box<dyn Any> = layer;
    Ok(any
        .downcast::<T>()
        .expect("the type was checked just above"))
}

/// A new frozen base equal to `base` with `sign`·ΔW added to its weight and `sign`·Δb to its bias (a bias is
/// created when the base has none and Δb is given). Dense bases ([`Linear`]) get a new dense weight in their own
/// dtype; NF4 bases ([`Nf4Linear`]) are dequantized, changed and requantized with the same blocksize and scale
/// format (lossy; see the module doc). Other base types are refused.
pub fn base_with_delta(
    base: &dyn LinearLayer,
    dw: &Tensor,
    db: Option<&Tensor>,
    sign: f64,
) -> Result<Box<dyn LinearLayer>> {
    let w0 = base.dense_weight()?;
    let dt = w0.dtype();
    let w = rankfold_tensor::no_grad(|| -> Result<Tensor> {
        Ok(w0
            .to_dtype(rankfold_tensor::DType::F32)?
            .add(&dw.to_dtype(rankfold_tensor::DType::F32)?.mul_scalar(sign)?)?)
    })?;
    let b = match (base.bias(), db) {
        (b, None) => b,
        (Some(b0), Some(db)) => Some(rankfold_tensor::no_grad(|| {
            b0.add(&db.to_dtype(b0.dtype())?.mul_scalar(sign)?)
        })?),
        (None, Some(db)) => Some(db.to_dtype(dt)?.mul_scalar(sign)?),
    };
    let b = b.map(|b| b.detach());
    if let Some(q) = base.as_any().downcast_ref::<Nf4Linear>() {
        let old = q.weight();
        let double = matches!(old.scales(), rankfold_tensor::Nf4Scales::Double(_));
        let w = Nf4Tensor::quantize(&w.to_dtype(old.dtype())?, old.blocksize(), double)?;
        return Ok(Box::new(Nf4Linear::new(Arc::new(w), b)?));
    }
    if base.as_any().is::<Linear>() {
        return Ok(Box::new(Linear::from_weights(w.to_dtype(dt)?.detach(), b)?));
    }
    Err(Error::Unsupported(format!(
        "merging into a base layer of type {base:?} is not supported"
    )))
}

/// A layer's named adapters: looked up by name, listed in the order they were added.
#[derive(Debug)]
pub struct AdapterMap<T> {
    by_name: BTreeMap<String, T>,
    order: Vec<String>,
}

impl<T> Default for AdapterMap<T> {
    fn default() -> Self {
        AdapterMap {
            by_name: BTreeMap::new(),
            order: Vec::new(),
        }
    }
}

impl<T> AdapterMap<T> {
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
    /// Adapter `name`, if the layer holds it.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.by_name.get(name)
    }
    /// Adapter `name`, or [`Error::UnknownAdapter`].
    pub fn find(&self, name: &str) -> Result<&T> {
        self.by_name
            .get(name)
            .ok_or_else(|| Error::UnknownAdapter(name.into()))
    }
    /// Adapter `name` for changing, or [`Error::UnknownAdapter`].
    pub fn find_mut(&mut self, name: &str) -> Result<&mut T> {
        self.by_name
            .get_mut(name)
            .ok_or_else(|| Error::UnknownAdapter(name.into()))
    }
    /// Adds adapter `name` last, or refuses a name the layer already holds ([`Error::DuplicateAdapter`]).
    pub fn insert(&mut self, name: &str, adapter: T) -> Result<()> {
        if self.contains(name) {
            return Err(Error::DuplicateAdapter(name.into()));
        }
        self.by_name.insert(name.to_string(), adapter);
        self.order.push(name.to_string());
        Ok(())
    }
    /// Drops adapter `name`, if held.
    pub fn remove(&mut self, name: &str) -> Option<T> {
        self.order.retain(|n| n != name);
        self.by_name.remove(name)
    }
    /// The adapter names in the order they were added.
    pub fn names(&self) -> &[String] {
        &self.order
    }
    /// The adapters with their names, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &T)> {
        self.order.iter().map(|n| (n, &self.by_name[n]))
    }
    /// The adapters with their names, for changing (in name order).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut T)> {
        self.by_name.iter_mut()
    }
}

/// The base of a layer that keeps its original aside while adapters are merged (AdaLoRA, GLoRA): merging
/// installs a new live base W0 + Σ ΔW, and unmerging gives the original back bit for bit, even on NF4.
#[derive(Debug)]
pub struct MergedBase {
    /// The live base: W0, or the merged layer while adapters are merged.
    live: Box<dyn LinearLayer>,
    /// The original base while adapters are merged.
    original: Option<Box<dyn LinearLayer>>,
    /// The merged adapters, in merge order.
    merged: Vec<String>,
}

impl MergedBase {
    /// `base` with nothing merged.
    pub fn new(base: Box<dyn LinearLayer>) -> Self {
        MergedBase {
            live: base,
            original: None,
            merged: Vec::new(),
        }
    }
    /// The live base (the merged layer while adapters are merged).
    pub fn live(&self) -> &dyn LinearLayer {
        self.live.as_ref()
    }
    /// The original base (W0 even while adapters are merged).
    pub fn unmerged(&self) -> &dyn LinearLayer {
        self.original.as_deref().unwrap_or(self.live.as_ref())
    }
    /// The merged adapters, in merge order.
    pub fn merged(&self) -> &[String] {
        &self.merged
    }
    /// Whether adapter `name` is merged.
    pub fn is_merged(&self, name: &str) -> bool {
        self.merged.iter().any(|n| n == name)
    }
    /// Records `name` as merged with `base` (W0 + ΔW of every merged adapter, `name` included) as the live base;
    /// the first merge keeps W0 aside, later ones drop the previous merged layer.
    pub fn install(&mut self, name: &str, base: Box<dyn LinearLayer>) {
        let live = std::mem::replace(&mut self.live, base);
        if self.original.is_none() {
            self.original = Some(live);
        }
        self.merged.push(name.to_string());
    }
    /// Puts the original base back and forgets the merged adapters.
    pub fn restore(&mut self) {
        if let Some(o) = self.original.take() {
            self.live = o;
        }
        self.merged.clear();
    }
    /// The live base (merge-and-unload).
    pub fn into_live(self) -> Box<dyn LinearLayer> {
        self.live
    }
    /// The original base, dropping any merged layer.
    pub fn into_unmerged(self) -> Box<dyn LinearLayer> {
        self.original.unwrap_or(self.live)
    }
}

/// Tensor `key` of `t`, checked against `shape`, as a detached contiguous copy in `dtype`; errors name the key.
pub fn take_tensor(
    t: &HashMap<String, Tensor>,
    key: &str,
    shape: &Shape,
    dtype: DType,
) -> Result<Tensor> {
    let Some(v) = t.get(key) else {
        return Err(Error::MissingTensor {
            file: String::new(),
            key: key.into(),
        });
    };
    if v.shape() != shape {
        return Err(Error::TensorShape {
            file: String::new(),
            key: key.into(),
            expected: shape.clone(),
            got: v.shape().clone(),
        });
    }
    Ok(v.to_dtype(dtype)?.contiguous()?.detach())
}

/// Checks that `t` holds no key outside `known` (a stray key would otherwise be silently ignored).
pub fn check_no_extra(t: &HashMap<String, Tensor>, known: &[&str]) -> Result<()> {
    match t.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(Error::UnexpectedTensor {
            file: String::new(),
            key: k.clone(),
        }),
        None => Ok(()),
    }
}

/// `x [.., in]` flattened to rows `[rows, in]`, and the output dims `[.., out]` to restore afterwards.
pub fn rows_of(
    x: &Tensor,
    in_features: usize,
    out_features: usize,
    op: &str,
) -> Result<(Tensor, Vec<usize>)> {
    let Some((&last, lead)) = x.dims().split_last() else {
        return Err(Error::module(op, "the input is a scalar"));
    };
    if last != in_features {
        return Err(Error::module(
            op,
            format!("the input has {last} features, the layer takes {in_features}"),
        ));
    }
    let rows: usize = lead.iter().product();
    let mut out = lead.to_vec();
    out.push(out_features);
    Ok((x.reshape((rows, in_features))?, out))
}
