//! [`PeftModel`]: a model with named adapters injected into its linear layers by module path — adding,
//! switching, disabling, merging, unloading, the trainable-parameter report, the optimizer's parameter list,
//! PEFT directories, and the trainer's hooks (`on_step`, `regularization_loss`).

use std::path::Path;

use rankfold_tensor::nn::{LinearLayer, LinearModel, LinearSlot};
use rankfold_tensor::{GradStore, Rng, Tensor};

use crate::layer::{AdapterLayer, AdapterMethod};
use crate::{peft, target, Error, Result};

#[derive(Debug)]
struct Entry {
    name: String,
    method: Box<dyn AdapterMethod>,
    paths: Vec<String>,
}

/// Trainable and total parameter counts (elements) of the model's linear layers and their adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainableReport {
    pub trainable: usize,
    pub total: usize,
}

impl TrainableReport {
    /// 100 · trainable / total.
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.total as f64
        }
    }
    /// The report with `n` more frozen parameters in the total (a model's embeddings and norms, which
    /// [`LinearModel`] does not expose).
    pub fn with_frozen(self, n: usize) -> Self {
        TrainableReport {
            total: self.total + n,
            ..self
        }
    }
}

impl std::fmt::Display for TrainableReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            self.trainable,
            self.total,
            self.percent()
        )
    }
}

/// A model with adapters. The model keeps its own forward; adapters live inside its [`LinearSlot`]s. One
/// adapter is active at a time (the first added, until [`PeftModel::set_active`]); only its tensors train.
#[derive(Debug)]
pub struct PeftModel<M: LinearModel> {
    model: M,
    adapters: Vec<Entry>,
    active: Option<String>,
    enabled: bool,
    rng: Rng,
}

impl<M: LinearModel> PeftModel<M> {
    /// Wraps `model`; adapter weights are drawn from a generator seeded with `seed`.
    pub fn new(model: M, seed: u64) -> Self {
        PeftModel {
            model,
            adapters: Vec::new(),
            active: None,
            enabled: true,
            rng: Rng::new(seed),
        }
    }
    pub fn model(&self) -> &M {
        &self.model
    }
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }
    /// The model with its adapter layers still in place.
    pub fn into_inner(self) -> M {
        self.model
    }
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.iter().map(|e| e.name.clone()).collect()
    }
    /// The active adapter (also when adapters are disabled).
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }
    /// The module paths adapter `name` was injected into.
    pub fn adapter_paths(&self, name: &str) -> Result<&[String]> {
        Ok(&self.entry(name)?.paths)
    }
    pub fn adapter_method(&self, name: &str) -> Result<&dyn AdapterMethod> {
        Ok(self.entry(name)?.method.as_ref())
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        find_entry(&self.adapters, name)
    }

    /// Injects adapter `name` described by `method` into every linear module its config selects, and returns
    /// their paths. Fails when the name exists, the config selects no module, or a selected module already
    /// holds an adapter of another method. A failure part-way leaves the modules injected before it in place.
    pub fn add_adapter(
        &mut self,
        name: &str,
        method: Box<dyn AdapterMethod>,
    ) -> Result<Vec<String>> {
        if self.adapters.iter().any(|e| e.name == name) {
            return Err(Error::DuplicateAdapter(name.into()));
        }
        method.common().check()?;
        let mut slots = self.model.linear_slots();
        let paths = target::select(method.common(), slots.iter().map(|(p, _)| p.as_str()))?;
        if paths.is_empty() {
            let targets = method
                .common()
                .target_modules
                .as_ref()
                .map_or_else(String::new, |t| t.to_string());
            return Err(Error::NoMatchingModule {
                adapter: name.into(),
                targets,
            });
        }
        // Refuse a module that holds another method's layer before touching anything.
        for (path, slot) in slots.iter().filter(|(p, _)| paths.contains(p)) {
            let layer = slot.layer();
            // Another method's layer is one this method does not recognize as its own.
            let foreign = method.as_adapter(layer).is_none()
                && self
                    .adapters
                    .iter()
                    .any(|e| e.method.as_adapter(layer).is_some());
            if foreign {
                return Err(Error::module(
                    path.clone(),
                    "already holds an adapter of another method; one method per module",
                ));
            }
        }
        let mut failed = None;
        for (path, slot) in slots.iter_mut().filter(|(p, _)| paths.contains(p)) {
            let rng = &mut self.rng;
            if let Err(e) = slot.replace_with(|old| method.inject(path, name, old, rng)) {
                failed = Some(e);
                break;
            }
        }
        drop(slots);
        self.adapters.push(Entry {
            name: name.into(),
            method,
            paths: paths.clone(),
        });
        if let Some(e) = failed {
            // Take the adapter back out of the modules injected before the failure; the first error wins.
            let _ = self.delete_adapter(name);
            return Err(e);
        }
        if self.active.is_none() {
            self.active = Some(name.into());
        }
        self.apply_active()?;
        Ok(paths)
    }

    /// Runs `f` on every adapter layer of the model (whichever adapters it holds).
    fn for_each_layer(
        &mut self,
        mut f: impl FnMut(&str, &mut dyn AdapterLayer) -> Result<()>,
    ) -> Result<()> {
        let adapters = &self.adapters;
        for (path, slot) in self.model.linear_slots() {
            let Some(e) = owner(adapters, slot.layer()) else {
                continue;
            };
            if let Some(l) = e.method.as_adapter_mut(slot.layer_mut()) {
                f(&path, l).map_err(|e| in_module(e, &path))?;
            }
        }
        Ok(())
    }

    fn apply_active(&mut self) -> Result<()> {
        let active = if self.enabled {
            self.active.clone()
        } else {
            None
        };
        self.for_each_layer(|_, l| {
            let here = active
                .as_deref()
                .filter(|a| l.adapter_names().iter().any(|n| n == a));
            l.set_active(here)
        })
    }

    /// Makes `name` the active adapter (its tensors trainable, every other adapter frozen).
    pub fn set_active(&mut self, name: &str) -> Result<()> {
        self.entry(name)?;
        self.active = Some(name.into());
        self.apply_active()
    }
    /// Turns every adapter off: the model computes its base (merged adapters stay merged).
    pub fn disable(&mut self) -> Result<()> {
        self.enabled = false;
        self.apply_active()
    }
    /// Turns the active adapter back on.
    pub fn enable(&mut self) -> Result<()> {
        self.enabled = true;
        self.apply_active()
    }
    /// Training (true) or evaluation mode for every adapter layer (dropout is active only while training).
    pub fn set_training(&mut self, on: bool) -> Result<()> {
        self.for_each_layer(|_, l| {
            l.set_training(on);
            Ok(())
        })
    }

    /// Folds the active adapter into the base weights of its modules.
    pub fn merge(&mut self) -> Result<()> {
        let Some(name) = self.active.clone() else {
            return Err(Error::Unsupported("no active adapter to merge".into()));
        };
        self.for_each_layer(|_, l| {
            if l.adapter_names().contains(&name) && !l.merged().contains(&name) {
                l.merge(&name)
            } else {
                Ok(())
            }
        })
    }
    /// Takes every merged adapter back out of the base weights.
    pub fn unmerge(&mut self) -> Result<()> {
        self.for_each_layer(|_, l| l.unmerge())
    }

    /// Merges the active adapter (unless adapters are disabled) and replaces every adapter layer by its base,
    /// returning the plain model. Other adapters are dropped.
    pub fn merge_and_unload(mut self) -> Result<M> {
        if self.enabled && self.active.is_some() {
            self.merge()?;
        }
        let adapters = &self.adapters;
        for (path, slot) in self.model.linear_slots() {
            let Some(e) = owner(adapters, slot.layer()) else {
                continue;
            };
            slot.replace_with(|old| match e.method.into_adapter(old) {
                Ok(a) => Ok(a.into_base()),
                Err(old) => Err((
                    old,
                    Error::module(path.clone(), "lost its adapter layer while unloading"),
                )),
            })?;
        }
        Ok(self.model)
    }

    /// Every trainable tensor of the model's linear layers (the active adapter's, plus any base the caller
    /// made trainable), by full name (`model.layers.0.self_attn.q_proj.lora_B.default.weight`): what the
    /// optimizer steps.
    pub fn parameters(&mut self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (path, slot) in self.model.linear_slots() {
            out.extend(
                slot.layer()
                    .parameters()
                    .into_iter()
                    .filter(|(_, t)| t.requires_grad())
                    .map(|(n, t)| (format!("{path}.{n}"), t)),
            );
        }
        out
    }

    /// Trainable and total parameter counts over the linear layers: each base counts in·out (+ out for a bias),
    /// NF4 bases included at their logical size, plus every adapter tensor of every adapter.
    pub fn trainable_report(&mut self) -> TrainableReport {
        let (mut trainable, mut total) = (0, 0);
        for (_, slot) in self.model.linear_slots() {
            let l = slot.layer();
            total += l.in_features() * l.out_features() + l.bias().map_or(0, |b| b.elem_count());
            for (n, t) in l.parameters() {
                let is_base =
                    matches!(n.as_str(), "weight" | "bias") || n.starts_with("base_layer.");
                if !is_base {
                    total += t.elem_count();
                }
                if t.requires_grad() {
                    trainable += t.elem_count();
                }
            }
        }
        TrainableReport { trainable, total }
    }

    /// Calls each adapter method's per-step hook (AdaLoRA's rank allocator) with this step's gradients; the
    /// trainer calls this after every optimizer step.
    pub fn on_step(&mut self, step: usize, grads: &GradStore) -> Result<()> {
        for e in &mut self.adapters {
            let mut slots = self.model.linear_slots();
            let mut layers: Vec<(String, &mut dyn AdapterLayer)> = slots
                .iter_mut()
                .filter(|(p, _)| e.paths.contains(p))
                .filter_map(|(p, s)| {
                    e.method
                        .as_adapter_mut(s.layer_mut())
                        .map(|l| (p.clone(), l))
                })
                .collect();
            e.method.on_step(&e.name, step, grads, &mut layers)?;
        }
        Ok(())
    }

    /// The training state adapter `name`'s method keeps beyond its PEFT files (see
    /// [`AdapterMethod::export_state`]); `None` for methods without any.
    pub fn export_state(&mut self, name: &str) -> Result<Option<crate::layer::MethodState>> {
        let e = find_entry(&self.adapters, name)?;
        let slots = self.model.linear_slots();
        let layers = entry_layers(e, &slots);
        e.method.export_state(name, &layers)
    }

    /// The dropout generator of each layer adapter `name` is on, by module path ([`AdapterLayer::dropout_rng`]),
    /// in path order: what a training checkpoint saves so that a resumed run draws the same masks.
    pub fn dropout_rngs(&mut self, name: &str) -> Result<Vec<(String, Rng)>> {
        let e = find_entry(&self.adapters, name)?;
        let slots = self.model.linear_slots();
        let mut v: Vec<(String, Rng)> = entry_layers(e, &slots)
            .into_iter()
            .filter_map(|(p, l)| l.dropout_rng().map(|r| (p, r)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    /// Restores generators from [`PeftModel::dropout_rngs`]; a path that is not one of adapter `name`'s layers
    /// is an error naming it.
    pub fn set_dropout_rngs(&mut self, name: &str, rngs: Vec<(String, Rng)>) -> Result<()> {
        let e = find_entry(&self.adapters, name)?;
        let mut slots = self.model.linear_slots();
        for (path, rng) in rngs {
            let layer = slots
                .iter_mut()
                .filter(|(p, _)| e.paths.contains(p))
                .find(|(p, _)| *p == path)
                .and_then(|(_, s)| e.method.as_adapter_mut(s.layer_mut()))
                .ok_or_else(|| Error::module(&path, format!("adapter `{name}` has no layer here to restore dropout into")))?;
            layer.set_dropout_rng(rng);
        }
        Ok(())
    }

    /// Restores state from [`PeftModel::export_state`] into adapter `name` (loaded from its PEFT files first);
    /// the active adapter's tensors are trainable again afterwards.
    pub fn import_state(&mut self, name: &str, state: crate::layer::MethodState) -> Result<()> {
        let idx = self
            .adapters
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| Error::UnknownAdapter(name.into()))?;
        let e = &mut self.adapters[idx];
        let mut slots = self.model.linear_slots();
        let mut layers: Vec<(String, &mut dyn AdapterLayer)> = slots
            .iter_mut()
            .filter(|(p, _)| e.paths.contains(p))
            .filter_map(|(p, s)| {
                e.method
                    .as_adapter_mut(s.layer_mut())
                    .map(|l| (p.clone(), l))
            })
            .collect();
        e.method.import_state(name, &mut layers, state)?;
        drop(layers);
        drop(slots);
        self.apply_active()
    }

    /// The active adapter's regularization loss (AdaLoRA's orthogonality term), which the trainer adds to the
    /// loss; `None` for methods without one or when adapters are disabled.
    pub fn regularization_loss(&mut self) -> Result<Option<Tensor>> {
        let Some(name) = self.active.clone().filter(|_| self.enabled) else {
            return Ok(None);
        };
        let e = find_entry(&self.adapters, &name)?;
        let slots = self.model.linear_slots();
        let layers = entry_layers(e, &slots);
        e.method.regularization_loss(&name, &layers)
    }

    /// Writes adapter `name` as a PEFT directory: `adapter_config.json` and `adapter_model.safetensors` with
    /// keys `base_model.model.<path>.<suffix>` (the adapter name stripped). The files go straight into `dir`
    /// (PEFT puts adapters other than "default" in a subfolder; pass that folder here to match).
    pub fn save_pretrained(&mut self, dir: impl AsRef<Path>, name: &str) -> Result<()> {
        let dir = dir.as_ref();
        let e = find_entry(&self.adapters, name)?;
        let slots = self.model.linear_slots();
        let layers = entry_layers(e, &slots);
        let config = e.method.peft_config(name, &layers)?;
        let mut tensors = Vec::new();
        for (path, l) in &layers {
            for (suffix, t) in l.peft_tensors(name).map_err(|e| in_module(e, path))? {
                tensors.push((format!("{}{path}.{suffix}", peft::KEY_PREFIX), t.detach()));
            }
        }
        peft::write_dir(dir, &config, &tensors)
    }

    /// Reads a PEFT directory and adds it as adapter `name` (the method from the config's `peft_type`).
    pub fn load(&mut self, dir: impl AsRef<Path>, name: &str) -> Result<Vec<String>> {
        let config = peft::read_config(dir.as_ref())?;
        let method = peft::method_from_config(&config)?;
        self.load_with(dir, name, method)
    }

    /// Reads a PEFT directory's tensors into a new adapter `name` made by `method` (for a method the config
    /// cannot name, such as LoRA-FA, which PEFT saves as LoRA). Errors name the file and the full tensor key.
    pub fn load_with(
        &mut self,
        dir: impl AsRef<Path>,
        name: &str,
        method: Box<dyn AdapterMethod>,
    ) -> Result<Vec<String>> {
        let (file, tensors) = peft::read_tensors(dir.as_ref())?;
        let paths = self.add_adapter(name, method)?;
        if let Err(e) = self.load_tensors(name, &file, tensors) {
            // A failed load leaves no half-loaded adapter behind.
            let _ = self.delete_adapter(name);
            return Err(e);
        }
        Ok(paths)
    }

    fn load_tensors(
        &mut self,
        name: &str,
        file: &str,
        mut tensors: std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        let e = self
            .adapters
            .iter()
            .find(|e| e.name == name)
            .expect("the adapter was just added");
        for (path, slot) in self.model.linear_slots() {
            if !e.paths.contains(&path) {
                continue;
            }
            let prefix = format!("{}{path}.", peft::KEY_PREFIX);
            let keys: Vec<String> = tensors
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            let mine = keys
                .into_iter()
                .filter_map(|k| tensors.remove_entry(&k))
                .map(|(k, t)| (k[prefix.len()..].to_string(), t))
                .collect();
            let Some(l) = e.method.as_adapter_mut(slot.layer_mut()) else {
                continue;
            };
            l.load_peft_tensors(name, &mine)
                .map_err(|err| err.in_file(file, &prefix))?;
        }
        if let Some(k) = tensors.keys().min() {
            return Err(Error::UnexpectedTensor {
                file: file.into(),
                key: k.clone(),
            });
        }
        self.apply_active()
    }

    /// Removes adapter `name` from every module (a module left without adapters gets its plain base back). The
    /// adapter must not be merged. When it was active, the first remaining adapter becomes active.
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        let idx = self
            .adapters
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| Error::UnknownAdapter(name.into()))?;
        let e = self.adapters.remove(idx);
        let mut result = Ok(());
        for (path, slot) in self.model.linear_slots() {
            let Some(l) = e.method.as_adapter_mut(slot.layer_mut()) else {
                continue;
            };
            if !l.adapter_names().iter().any(|n| n == name) {
                continue;
            }
            if let Err(err) = l.remove_adapter(name) {
                result = Err(in_module(err, &path));
                break;
            }
            if l.adapter_names().is_empty() {
                let r = slot.replace_with(|old| match e.method.into_adapter(old) {
                    Ok(a) => Ok(a.into_base()),
                    Err(old) => Err((old, Error::module(path.clone(), "lost its adapter layer"))),
                });
                if let Err(err) = r {
                    result = Err(err);
                    break;
                }
            }
        }
        if let Err(err) = result {
            self.adapters.insert(idx, e);
            return Err(err);
        }
        if self.active.as_deref() == Some(name) {
            self.active = self.adapters.first().map(|e| e.name.clone());
        }
        self.apply_active()
    }
}

/// The entry of adapter `name` (a free function so that callers can borrow `model` mutably alongside).
fn find_entry<'a>(adapters: &'a [Entry], name: &str) -> Result<&'a Entry> {
    adapters
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| Error::UnknownAdapter(name.into()))
}

/// Entry `e`'s layers among `slots`, as its method's adapter layers, with their paths.
fn entry_layers<'a>(
    e: &Entry,
    slots: &'a [(String, &mut LinearSlot)],
) -> Vec<(String, &'a dyn AdapterLayer)> {
    slots
        .iter()
        .filter(|(p, _)| e.paths.contains(p))
        .filter_map(|(p, s)| e.method.as_adapter(s.layer()).map(|l| (p.clone(), l)))
        .collect()
}

/// The entry whose method made `layer` (an adapter layer holds one method's adapters), if any.
fn owner<'a>(adapters: &'a [Entry], layer: &dyn LinearLayer) -> Option<&'a Entry> {
    adapters
        .iter()
        .find(|e| e.method.as_adapter(layer).is_some())
}

fn in_module(e: Error, path: &str) -> Error {
    match e {
        Error::Tensor(t) => Error::module(path, t.to_string()),
        e => e,
    }
}

/// A free-standing helper: the slot's layer as an adapter layer of any of `methods`.
pub fn adapter_of<'a>(
    slot: &'a LinearSlot,
    methods: &[&dyn AdapterMethod],
) -> Option<&'a dyn AdapterLayer> {
    methods.iter().find_map(|m| m.as_adapter(slot.layer()))
}

/// The base layer under `layer` when it is an adapter layer of `method`, else `layer` itself.
pub fn base_of<'a>(layer: &'a dyn LinearLayer, method: &dyn AdapterMethod) -> &'a dyn LinearLayer {
    match method.as_adapter(layer) {
        Some(a) => a.base(),
        None => layer,
    }
}
