//! AdaLoRA's training state for checkpoints ([`crate::AdapterMethod::export_state`] / `import_state`): what
//! a run needs beyond the PEFT files to continue bit for bit.
//!
//! The PEFT files cut every layer down to the ranks its pattern keeps, but a run in its budgeting phase still
//! trains the masked triplets (their λ is zeroed at each masking step, Q and P keep learning), so the state
//! holds each layer's uncut tensors with its pattern and load-time cut, and the rank allocator's importance
//! averages Ī and Ū, its final-phase pattern and the latest budget.
//!
//! Tensor names: `layer.<path>.lora_A` / `lora_E` / `lora_B`, and `ema_ipt.<key>` / `ema_unc.<key>` with the
//! allocator's keys (`<path>.lora_A`, …). The JSON part is [`Meta`].

use std::collections::{BTreeMap, HashMap, HashSet};

use rankfold_tensor::nn::LinearLayer;
use rankfold_tensor::{Shape, Tensor};
use serde::{Deserialize, Serialize};

use super::{AdaLora, RankAllocator, RankPattern, SvdLinear};
use crate::layer::{take_tensor, AdapterLayer, MethodState};
use crate::{Error, Result};

const LAYER: &str = "layer.";
const EMA_IPT: &str = "ema_ipt.";
const EMA_UNC: &str = "ema_unc.";
/// The layout version of [`Meta`]; a state of another version is refused.
const VERSION: u32 = 1;

/// One layer's masks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LayerMeta {
    /// The layer's `rank_pattern` entry in initial-rank coordinates.
    pattern: Option<Vec<bool>>,
    /// The pattern the layer was cut down with when it was loaded.
    cut: Option<Vec<bool>>,
}

/// The JSON part of the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    version: u32,
    /// Whether the allocator exists (it is created at the first training step).
    allocator: bool,
    /// The pattern fixed at step T − tfinal.
    final_pattern: Option<RankPattern>,
    /// The budget at the latest step.
    last_budget: Option<usize>,
    /// Module path → masks.
    layers: BTreeMap<String, LayerMeta>,
}

fn bad_state(msg: String) -> Error {
    Error::config("adapter_state", msg)
}

/// The state of adapter `name` (see the module documentation).
pub(super) fn export(
    m: &AdaLora,
    name: &str,
    layers: &[(String, &dyn AdapterLayer)],
) -> Result<MethodState> {
    let mut tensors = Vec::new();
    let mut metas = BTreeMap::new();
    for (path, l) in layers {
        let Some(s) = l.as_any().downcast_ref::<SvdLinear>() else {
            continue;
        };
        let Ok(ad) = s.adapter(name) else {
            continue;
        };
        for (which, t) in [("lora_A", &ad.a), ("lora_E", &ad.e), ("lora_B", &ad.b)] {
            tensors.push((format!("{LAYER}{path}.{which}"), t.detach()));
        }
        metas.insert(
            path.clone(),
            LayerMeta {
                pattern: ad.pattern.clone(),
                cut: ad.cut.clone(),
            },
        );
    }
    if let Some(a) = &m.allocator {
        for (key, ipt, unc) in a.ema_tensors() {
            tensors.push((format!("{EMA_IPT}{key}"), ipt));
            tensors.push((format!("{EMA_UNC}{key}"), unc));
        }
    }
    let meta = Meta {
        version: VERSION,
        allocator: m.allocator.is_some(),
        final_pattern: m
            .allocator
            .as_ref()
            .and_then(|a| a.final_pattern().cloned()),
        last_budget: m.last_budget,
        layers: metas,
    };
    let meta = serde_json::to_value(meta).map_err(|e| bad_state(e.to_string()))?;
    Ok(MethodState { tensors, meta })
}

/// Restores a state from [`export`] into adapter `name` of `layers` (which must be the same modules).
pub(super) fn import(
    m: &mut AdaLora,
    name: &str,
    layers: &mut [(String, &mut dyn AdapterLayer)],
    state: MethodState,
) -> Result<()> {
    let meta: Meta = serde_json::from_value(state.meta)
        .map_err(|e| bad_state(format!("the AdaLoRA state's JSON is invalid: {e}")))?;
    if meta.version != VERSION {
        return Err(bad_state(format!(
            "AdaLoRA state version {} (this build reads {VERSION})",
            meta.version
        )));
    }
    let mut tensors: HashMap<String, Tensor> = state.tensors.into_iter().collect();
    let mut seen = HashSet::new();
    let mut ranks = Vec::new();
    for (path, l) in layers.iter_mut() {
        let Some(s) = l.as_any_mut().downcast_mut::<SvdLinear>() else {
            continue;
        };
        let (inf, out) = (s.in_features(), s.out_features());
        let Ok(ad) = s.adapter_mut(name) else {
            continue;
        };
        let Some(lm) = meta.layers.get(path.as_str()) else {
            return Err(bad_state(format!(
                "the state has no entry for module {path}"
            )));
        };
        seen.insert(path.clone());
        let key = |which: &str| format!("{LAYER}{path}.{which}");
        let a = tensors
            .get(&key("lora_A"))
            .ok_or_else(|| missing(&key("lora_A")))?;
        let r = a.dims().first().copied().unwrap_or(0);
        let dtype = ad.a.dtype();
        let take = |which: &str, shape: (usize, usize)| {
            take_tensor(&tensors, &key(which), &Shape::from(shape), dtype)
                .map_err(|e| bad_state(format!("module {path}: {e}")))
        };
        let (na, ne, nb) = (
            take("lora_A", (r, inf))?,
            take("lora_E", (r, 1))?,
            take("lora_B", (out, r))?,
        );
        for (p, what) in [(&lm.pattern, "pattern"), (&lm.cut, "cut")] {
            if let Some(p) = p {
                let init = ad.ranknum as usize;
                if p.len() != init {
                    return Err(bad_state(format!(
                        "module {path}: a {what} of {} flags for initial rank {init}",
                        p.len()
                    )));
                }
            }
        }
        let trainable = ad.is_trainable();
        (ad.a, ad.e, ad.b) = (na, ne, nb);
        (ad.pattern, ad.cut) = (lm.pattern.clone(), lm.cut.clone());
        ad.set_trainable(trainable);
        ranks.push((path.clone(), r));
        for which in ["lora_A", "lora_E", "lora_B"] {
            tensors.remove(&key(which));
        }
    }
    if let Some(p) = meta.layers.keys().find(|p| !seen.contains(*p)) {
        return Err(bad_state(format!(
            "the state names module {p}, which holds no AdaLoRA adapter `{name}`"
        )));
    }
    m.last_budget = meta.last_budget;
    m.allocator = if meta.allocator {
        let mut a = RankAllocator::new(m.config.allocator_config(), &ranks)?;
        let keys: Vec<String> = tensors
            .keys()
            .filter_map(|k| k.strip_prefix(EMA_IPT))
            .map(str::to_string)
            .collect();
        for key in keys {
            let ipt = tensors
                .remove(&format!("{EMA_IPT}{key}"))
                .ok_or_else(|| missing(&key))?;
            let unc = tensors
                .remove(&format!("{EMA_UNC}{key}"))
                .ok_or_else(|| missing(&format!("{EMA_UNC}{key}")))?;
            if ipt.dims() != unc.dims() {
                return Err(bad_state(format!(
                    "{key}: Ī {:?} and Ū {:?} differ in shape",
                    ipt.dims(),
                    unc.dims()
                )));
            }
            a.set_ema(key, ipt.contiguous()?.detach(), unc.contiguous()?.detach());
        }
        a.set_final_pattern(meta.final_pattern);
        Some(a)
    } else {
        None
    };
    if let Some(k) = tensors.keys().min() {
        return Err(bad_state(format!(
            "unexpected tensor `{k}` in the AdaLoRA state"
        )));
    }
    Ok(())
}

fn missing(key: &str) -> Error {
    bad_state(format!("the AdaLoRA state lacks tensor `{key}`"))
}
