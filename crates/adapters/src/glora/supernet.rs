//! GLoRA's weight-sharing supernet: every adapted layer holds all the parameter kinds a [`SearchSpace`] allows
//! (low-rank at the space's largest rank, a vector, a scalar), and each training step samples one
//! [`LayerChoice`] per layer; a lower rank uses the leading slice of the same `Xd`/`Xu`, so every sampled
//! sub-network trains the shared weights. After training, [`Supernet::apply`] sets a candidate for the
//! evolutionary search to score and [`Supernet::fix`] cuts every layer down to its chosen configuration.

use std::collections::BTreeMap;

use rankfold_tensor::nn::{LinearLayer, LinearModel};
use rankfold_tensor::{GradStore, Rng};

use super::layer::{glora_error, in_module, GloraLayer};
use super::{GloraConfig, LayerChoice, PathKind, Support};
use crate::config::CommonConfig;
use crate::layer::{downcast_box, AdapterLayer, AdapterMethod, InjectResult, Method};
use crate::Result;

/// The shapes each path may take. [`SearchSpace::paper`] is the official GLoRA code's space.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    /// Options per path, indexed A..E.
    pub options: [Vec<Support>; 5],
}

impl SearchSpace {
    /// The space of the official implementation (ViT-Slim/GLoRA, `SuperScalableLinear`) at rank r: A and B in
    /// {lora_r, vector, constant, none}, C in {lora_r, vector, none}, D and E in {constant, none, vector}.
    pub fn official(r: usize) -> SearchSpace {
        use Support::*;
        let ab = vec![LowRank(r), Vector, Scalar, None];
        let c = vec![LowRank(r), Vector, None];
        let de = vec![Scalar, None, Vector];
        SearchSpace {
            options: [ab.clone(), ab, c, de.clone(), de],
        }
    }

    /// The official space with two ranks, `r_big` and `r_small` (the paper reports ranks 8 and 4), on the
    /// low-rank paths: the smaller rank trains the leading slice of the larger one's tensors, so both share
    /// weights in one supernet.
    pub fn paper(r_big: usize, r_small: usize) -> SearchSpace {
        let mut s = SearchSpace::official(r_big);
        for k in [PathKind::A, PathKind::B, PathKind::C] {
            s.options[k as usize].insert(1, Support::LowRank(r_small));
        }
        s
    }

    /// Checks that every path has at least one option and only shapes it allows; the error names the path.
    pub fn validate(&self) -> Result<()> {
        for k in PathKind::ALL {
            let o = &self.options[k as usize];
            if o.is_empty() {
                return Err(glora_error(format!(
                    "GLoRA search space: path {k:?} has no options"
                )));
            }
            if let Some(s) = o.iter().find(|s| !k.allows(**s)) {
                return Err(glora_error(format!(
                    "GLoRA search space: `{s}` is not allowed for path {k:?}"
                )));
            }
        }
        Ok(())
    }

    /// The options path `k` has on a layer with or without a bias (only `none` for a bias path without one).
    pub fn options_for(&self, k: PathKind, has_bias: bool) -> Vec<Support> {
        if k.is_bias_path() && !has_bias {
            vec![Support::None]
        } else {
            self.options[k as usize].clone()
        }
    }

    /// A uniformly random option for path `k`.
    pub fn sample_path(&self, k: PathKind, has_bias: bool, rng: &mut Rng) -> Support {
        let o = self.options_for(k, has_bias);
        o[rng.below(o.len() as u64) as usize]
    }

    /// A uniformly random choice for a layer (each path independently).
    pub fn sample(&self, has_bias: bool, rng: &mut Rng) -> LayerChoice {
        let mut c = LayerChoice::NONE;
        for k in PathKind::ALL {
            c.set(k, self.sample_path(k, has_bias, rng));
        }
        c
    }

    /// The choice with the most parameters per path (each path's largest option), the one the supernet starts
    /// active on.
    pub fn largest(&self, in_f: usize, out_f: usize, has_bias: bool) -> LayerChoice {
        let mut c = LayerChoice::NONE;
        for k in PathKind::ALL {
            let best = self
                .options_for(k, has_bias)
                .into_iter()
                .max_by_key(|s| s.param_count(k, in_f, out_f))
                .unwrap_or(Support::None);
            c.set(k, best);
        }
        c
    }
}

/// The sizes of one adapted layer, which is all the search needs to count parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    pub in_f: usize,
    pub out_f: usize,
    pub has_bias: bool,
}

/// A GLoRA supernet attached to a model under adapter name `name`: the module paths it covers, in the order
/// the model lists them, and its search space.
#[derive(Debug, Clone)]
pub struct Supernet {
    pub name: String,
    pub space: SearchSpace,
    pub paths: Vec<String>,
    pub shapes: Vec<LayerShape>,
}

impl Supernet {
    /// Wraps every linear slot of `model` whose module path `select` accepts with a supernet GLoRA adapter
    /// `name` (added to the layer when it already is a [`GloraLayer`]). Fails when no path is selected.
    pub fn attach<M: LinearModel>(
        model: &mut M,
        name: &str,
        space: SearchSpace,
        select: impl Fn(&str) -> bool,
        init_weights: bool,
        rng: &mut Rng,
    ) -> Result<Supernet> {
        space.validate()?;
        let mut paths = Vec::new();
        let mut shapes = Vec::new();
        for (path, slot) in model.linear_slots() {
            if !select(&path) {
                continue;
            }
            let has_bias = slot.layer().bias().is_some();
            let (in_f, out_f) = (slot.layer().in_features(), slot.layer().out_features());
            let options: [Vec<Support>; 5] = PathKind::ALL.map(|k| space.options_for(k, has_bias));
            let start = space.largest(in_f, out_f, has_bias);
            if let Some(g) = slot.downcast_mut::<GloraLayer>() {
                g.add_adapter_with_options(name, &options, start, init_weights, rng)
                    .map_err(|e| in_module(e, &path))?;
            } else {
                slot.replace_with(|old: Box<dyn LinearLayer>| {
                    let mut g = GloraLayer::empty(old);
                    match g.add_adapter_with_options(name, &options, start, init_weights, rng) {
                        Ok(()) => Ok(Box::new(g) as Box<dyn LinearLayer>),
                        Err(e) => Err((g.into_base_layer(), in_module(e, &path))),
                    }
                })?;
            }
            paths.push(path);
            shapes.push(LayerShape {
                in_f,
                out_f,
                has_bias,
            });
        }
        if paths.is_empty() {
            return Err(glora_error(format!(
                "GLoRA supernet `{name}`: the selection matches no linear module"
            )));
        }
        Ok(Supernet {
            name: name.to_string(),
            space,
            paths,
            shapes,
        })
    }

    /// The supernet adapter `name` already injected in `model` (by [`SupernetMethod`] through
    /// [`crate::PeftModel`], or by [`Supernet::attach`]): every GLoRA layer holding that adapter, in model order.
    pub fn find<M: LinearModel>(model: &mut M, name: &str, space: SearchSpace) -> Result<Supernet> {
        let mut paths = Vec::new();
        let mut shapes = Vec::new();
        for (path, slot) in model.linear_slots() {
            let Some(g) = slot.downcast_ref::<GloraLayer>() else {
                continue;
            };
            if !g.adapter_names().iter().any(|n| n == name) {
                continue;
            }
            let b = g.base_unmerged();
            shapes.push(LayerShape {
                in_f: b.in_features(),
                out_f: b.out_features(),
                has_bias: g.has_bias(),
            });
            paths.push(path);
        }
        if paths.is_empty() {
            return Err(glora_error(format!(
                "no GLoRA layer holds adapter `{name}`"
            )));
        }
        Ok(Supernet {
            name: name.to_string(),
            space,
            paths,
            shapes,
        })
    }

    /// Samples one choice per layer (the per-step draw of supernet training) and activates it.
    pub fn sample_step<M: LinearModel>(
        &self,
        model: &mut M,
        rng: &mut Rng,
    ) -> Result<Vec<LayerChoice>> {
        let choices: Vec<LayerChoice> = self
            .shapes
            .iter()
            .map(|s| self.space.sample(s.has_bias, rng))
            .collect();
        self.apply(model, &choices)?;
        Ok(choices)
    }

    /// Activates `choices` (one per layer, in [`Supernet::paths`] order).
    pub fn apply<M: LinearModel>(&self, model: &mut M, choices: &[LayerChoice]) -> Result<()> {
        self.for_each_layer(model, choices, |g, name, c| g.set_choice(name, c))
    }

    /// Cuts every layer down to its choice (the search's result) and returns the per-layer configuration to
    /// store in the adapter config's `layer_configs`.
    pub fn fix<M: LinearModel>(
        &self,
        model: &mut M,
        choices: &[LayerChoice],
    ) -> Result<BTreeMap<String, LayerChoice>> {
        self.for_each_layer(model, choices, |g, name, c| g.fix_choice(name, c))?;
        Ok(self
            .paths
            .iter()
            .cloned()
            .zip(
                choices
                    .iter()
                    .zip(&self.shapes)
                    .map(|(c, s)| c.effective(s.has_bias)),
            )
            .collect())
    }

    /// Trainable values of the adapter with these choices.
    pub fn param_count(&self, choices: &[LayerChoice]) -> usize {
        choices
            .iter()
            .zip(&self.shapes)
            .map(|(c, s)| c.param_count(s.in_f, s.out_f, s.has_bias))
            .sum()
    }

    fn for_each_layer<M: LinearModel>(
        &self,
        model: &mut M,
        choices: &[LayerChoice],
        mut f: impl FnMut(&mut GloraLayer, &str, LayerChoice) -> Result<()>,
    ) -> Result<()> {
        if choices.len() != self.paths.len() {
            return Err(glora_error(format!(
                "GLoRA supernet `{}`: {} choices for {} layers",
                self.name,
                choices.len(),
                self.paths.len()
            )));
        }
        let mut slots: BTreeMap<String, _> = model.linear_slots().into_iter().collect();
        for (path, &c) in self.paths.iter().zip(choices) {
            let slot = slots.get_mut(path).ok_or_else(|| {
                glora_error(format!(
                    "GLoRA supernet `{}`: the model has no module `{path}` any more",
                    self.name
                ))
            })?;
            let g = slot.downcast_mut::<GloraLayer>().ok_or_else(|| {
                glora_error(format!(
                    "GLoRA supernet `{}`: `{path}` is not a GLoRA layer",
                    self.name
                ))
            })?;
            f(g, &self.name, c).map_err(|e| in_module(e, path))?;
        }
        Ok(())
    }
}

/// Supernet training through [`crate::PeftModel`]: an [`AdapterMethod`] that injects supernet layers (every
/// kind of `space`, low-rank at its largest rank) into the modules `config` targets and, from the trainer's
/// per-step hook, draws a fresh [`LayerChoice`] for every layer after each optimizer step (the first one at
/// injection), so the user never samples by hand. After training, [`Supernet::find`] + [`super::search`] +
/// [`Supernet::fix`] settle the configuration; saving then writes a GLORA config whose `layer_configs` holds it.
#[derive(Debug)]
pub struct SupernetMethod {
    /// Targets, `init_weights`, and the config saved (with `layer_configs` filled in from the layers).
    pub config: GloraConfig,
    pub space: SearchSpace,
    rng: Rng,
}

impl SupernetMethod {
    /// A supernet over `config`'s targets; `seed` drives the per-step draws.
    pub fn new(config: GloraConfig, space: SearchSpace, seed: u64) -> Result<SupernetMethod> {
        config.check()?;
        space.validate()?;
        Ok(SupernetMethod {
            config,
            space,
            rng: Rng::new(seed),
        })
    }
}

impl AdapterMethod for SupernetMethod {
    fn method(&self) -> Method {
        Method::Glora
    }
    fn common(&self) -> &CommonConfig {
        &self.config.common
    }
    fn inject(
        &self,
        path: &str,
        name: &str,
        layer: Box<dyn LinearLayer>,
        rng: &mut Rng,
    ) -> InjectResult {
        let has_bias = layer.bias().is_some();
        let options: [Vec<Support>; 5] = PathKind::ALL.map(|k| self.space.options_for(k, has_bias));
        let start = self.space.sample(has_bias, rng);
        let init = self.config.glora.init_weights;
        let mut g = match downcast_box::<GloraLayer>(layer) {
            Ok(g) => g,
            Err(base) => Box::new(GloraLayer::empty(base)),
        };
        match g.add_adapter_with_options(name, &options, start, init, rng) {
            Ok(()) => Ok(g),
            Err(e) => {
                let back: Box<dyn LinearLayer> = if g.adapter_names().is_empty() {
                    g.into_base_layer()
                } else {
                    g
                };
                Err((back, in_module(e, path)))
            }
        }
    }
    fn as_adapter<'a>(&self, layer: &'a dyn LinearLayer) -> Option<&'a dyn AdapterLayer> {
        self.config.as_adapter(layer)
    }
    fn as_adapter_mut<'a>(
        &self,
        layer: &'a mut dyn LinearLayer,
    ) -> Option<&'a mut dyn AdapterLayer> {
        self.config.as_adapter_mut(layer)
    }
    fn into_adapter(
        &self,
        layer: Box<dyn LinearLayer>,
    ) -> std::result::Result<Box<dyn AdapterLayer>, Box<dyn LinearLayer>> {
        self.config.into_adapter(layer)
    }
    /// The GLORA config with every layer's current choice in `layer_configs` (fix the search's result first:
    /// before that, the file holds whichever sub-network was sampled last).
    fn peft_config(
        &self,
        name: &str,
        layers: &[(String, &dyn AdapterLayer)],
    ) -> Result<serde_json::Value> {
        self.config.peft_config(name, layers)
    }
    /// Draws the next step's choice for every layer in training mode that still holds a supernet (a fixed
    /// layer, or one in evaluation mode, keeps its shapes).
    fn on_step(
        &mut self,
        name: &str,
        _step: usize,
        _grads: &GradStore,
        layers: &mut [(String, &mut dyn AdapterLayer)],
    ) -> Result<()> {
        for (path, l) in layers.iter_mut() {
            let Some(g) = l.as_any_mut().downcast_mut::<GloraLayer>() else {
                continue;
            };
            if !g.is_training() || !g.merged().is_empty() {
                continue;
            }
            let c = self.space.sample(g.has_bias(), &mut self.rng);
            // A layer already fixed to one shape cannot take others: it keeps its choice.
            if g.can_take(name, c)? {
                g.set_choice(name, c).map_err(|e| in_module(e, path))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_are_valid_and_samples_respect_paths_and_bias() {
        let p = SearchSpace::paper(8, 4);
        p.validate().unwrap();
        SearchSpace::official(8).validate().unwrap();
        assert_eq!(
            p.options[PathKind::C as usize],
            vec![
                Support::LowRank(8),
                Support::LowRank(4),
                Support::Vector,
                Support::None
            ]
        );
        let mut rng = Rng::new(1);
        for i in 0..200 {
            let has_bias = i % 2 == 0;
            let c = p.sample(has_bias, &mut rng);
            assert!(c.invalid_path().is_none(), "{c}");
            if !has_bias {
                assert_eq!(
                    (c.c, c.d, c.e),
                    (Support::None, Support::None, Support::None)
                );
            }
        }
        let bad = SearchSpace {
            options: [
                vec![Support::None],
                vec![Support::None],
                vec![Support::Scalar],
                vec![Support::None],
                vec![Support::None],
            ],
        };
        assert!(bad.validate().unwrap_err().to_string().contains("C"));
        assert_eq!(p.largest(10, 6, true).a, Support::LowRank(8));
    }
}
