//! GLoRA (Chavan et al., arXiv 2306.07967): a generalized adapter `W' = W0 + W0⊙A + B`,
//! `b' = b0 + b0⊙D + E + W0·C`, with a support shape per path (low-rank, vector, scalar, none), PEFT's `GLORA`
//! adapter files, and the paper's search: a weight-sharing supernet ([`supernet`]) and an evolutionary search
//! ([`search`]) that fixes one configuration per layer.
//!
//! Shapes, as PEFT 0.21 holds them (`tuners/glora/layer.py`), for a layer with `in` inputs and `out` outputs:
//!
//! | path | low-rank (`Xd`·`Xu`) | vector `X` | scalar `X` | none (`zeros` buffer) |
//! |---|---|---|---|---|
//! | A, B | `[out, r]`·`[r, in]` | `[out, 1]` | `[1]` | `[out, in]` |
//! | C | `[in, r]`·`[r, 1]` | `[in, 1]` | — | `[in, 1]` |
//! | D, E | — | `[out]` | `[1]` | `[out]` |
//!
//! On a layer without a bias PEFT leaves C, D and E off whatever the config says (the bias terms have nothing to
//! act on), and so does this module: [`LayerChoice::effective`] turns them to [`Support::None`].

pub mod layer;
mod path;
pub mod search;
pub mod supernet;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rankfold_tensor::nn::LinearLayer;
use rankfold_tensor::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{CommonConfig, TargetModules};
use crate::layer::{
    downcast_adapter, downcast_adapter_mut, downcast_box, AdapterLayer, AdapterMethod,
    InjectResult, Method,
};
use crate::{Error, Result};

pub use layer::GloraLayer;
pub use search::{evolution_search, SearchConfig, SearchResult};
pub use supernet::{LayerShape, SearchSpace, Supernet, SupernetMethod};

/// One of GLoRA's five paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathKind {
    /// Scales W0 elementwise: `W0⊙A`.
    A,
    /// Adds to the weight: `B`.
    B,
    /// Couples the weight to the bias: `W0·C`.
    C,
    /// Scales the bias: `b0⊙D`.
    D,
    /// Adds to the bias: `E`.
    E,
}

impl PathKind {
    pub const ALL: [PathKind; 5] = [
        PathKind::A,
        PathKind::B,
        PathKind::C,
        PathKind::D,
        PathKind::E,
    ];

    /// PEFT's module name for the path: `glora_A` … `glora_E`.
    pub fn peft_name(self) -> &'static str {
        match self {
            PathKind::A => "glora_A",
            PathKind::B => "glora_B",
            PathKind::C => "glora_C",
            PathKind::D => "glora_D",
            PathKind::E => "glora_E",
        }
    }

    /// Whether the path acts on the bias (and is therefore off on a bias-free layer).
    pub fn is_bias_path(self) -> bool {
        matches!(self, PathKind::C | PathKind::D | PathKind::E)
    }

    /// Whether `s` is a support shape this path can take (C has no scalar form, D and E no low-rank form).
    pub fn allows(self, s: Support) -> bool {
        match (self, s) {
            (_, Support::LowRank(0)) => false,
            (PathKind::A | PathKind::B, _) => true,
            (PathKind::C, Support::Scalar) => false,
            (PathKind::C, _) => true,
            (PathKind::D | PathKind::E, Support::LowRank(_)) => false,
            (PathKind::D | PathKind::E, _) => true,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The support shape of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Support {
    /// `Xd·Xu` of rank r (PEFT's `"lora"`; written `"lora_<r>"` in per-layer configurations).
    LowRank(usize),
    /// One value per output row (A, B, D, E) or per input feature (C) (PEFT's `"vector"`).
    Vector,
    /// One value for the whole path (PEFT's `"constant"`).
    Scalar,
    /// Off: the path contributes zero (PEFT's `"none"`).
    None,
}

impl Support {
    /// The number of trainable values the path holds on a layer with `in_f` inputs and `out_f` outputs.
    pub fn param_count(self, path: PathKind, in_f: usize, out_f: usize) -> usize {
        match (self, path) {
            (Support::None, _) => 0,
            (Support::Scalar, _) => 1,
            (Support::Vector, PathKind::C) => in_f,
            (Support::Vector, _) => out_f,
            (Support::LowRank(r), PathKind::C) => r * (in_f + 1),
            (Support::LowRank(r), _) => r * (out_f + in_f),
        }
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Support::LowRank(r) => write!(f, "lora_{r}"),
            Support::Vector => f.write_str("vector"),
            Support::Scalar => f.write_str("constant"),
            Support::None => f.write_str("none"),
        }
    }
}

impl FromStr for Support {
    type Err = String;
    /// Parses `lora_<r>`, `vector`, `constant` or `none` (PEFT's bare `lora` needs a rank: see
    /// [`Support::from_peft`]).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "vector" => Ok(Support::Vector),
            "constant" => Ok(Support::Scalar),
            "none" => Ok(Support::None),
            _ => match s.strip_prefix("lora_").map(str::parse::<usize>) {
                Some(Ok(r)) if r > 0 => Ok(Support::LowRank(r)),
                _ => Err(format!("`{s}` is not a GLoRA support shape (lora_<r> with r > 0, vector, constant, none)")),
            },
        }
    }
}

impl Support {
    /// Parses one of PEFT's config values (`lora` takes the config's rank `r`; `lora_<r>` is accepted too).
    pub fn from_peft(s: &str, r: usize) -> std::result::Result<Self, String> {
        if s == "lora" {
            return if r > 0 {
                Ok(Support::LowRank(r))
            } else {
                Err("`lora` needs a rank r > 0".into())
            };
        }
        s.parse()
    }
    /// PEFT's config value for this shape (`lora`, `vector`, `constant`, `none`).
    pub fn peft_value(self) -> &'static str {
        match self {
            Support::LowRank(_) => "lora",
            Support::Vector => "vector",
            Support::Scalar => "constant",
            Support::None => "none",
        }
    }
}

impl Serialize for Support {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Support {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The support shape of each of the five paths of one layer: the unit the supernet samples and the search fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LayerChoice {
    #[serde(rename = "A")]
    pub a: Support,
    #[serde(rename = "B")]
    pub b: Support,
    #[serde(rename = "C")]
    pub c: Support,
    #[serde(rename = "D")]
    pub d: Support,
    #[serde(rename = "E")]
    pub e: Support,
}

impl LayerChoice {
    /// Every path off.
    pub const NONE: LayerChoice = LayerChoice {
        a: Support::None,
        b: Support::None,
        c: Support::None,
        d: Support::None,
        e: Support::None,
    };

    /// The choice PEFT's uniform config describes: A and B share `config_A_B`, D and E share `config_D_E`.
    pub fn uniform(ab: Support, c: Support, de: Support) -> LayerChoice {
        LayerChoice {
            a: ab,
            b: ab,
            c,
            d: de,
            e: de,
        }
    }

    pub fn get(&self, p: PathKind) -> Support {
        [self.a, self.b, self.c, self.d, self.e][p.index()]
    }

    pub fn set(&mut self, p: PathKind, s: Support) {
        let slot = match p {
            PathKind::A => &mut self.a,
            PathKind::B => &mut self.b,
            PathKind::C => &mut self.c,
            PathKind::D => &mut self.d,
            PathKind::E => &mut self.e,
        };
        *slot = s;
    }

    /// The first path whose shape it cannot take, with that shape.
    pub fn invalid_path(&self) -> Option<(PathKind, Support)> {
        PathKind::ALL
            .into_iter()
            .map(|p| (p, self.get(p)))
            .find(|&(p, s)| !p.allows(s))
    }

    /// The choice as it acts on a layer with or without a bias: C, D and E are off without one (as in PEFT).
    pub fn effective(mut self, has_bias: bool) -> LayerChoice {
        if !has_bias {
            self.c = Support::None;
            self.d = Support::None;
            self.e = Support::None;
        }
        self
    }

    /// Trainable values on a layer of this size (bias paths count only when the layer has a bias).
    pub fn param_count(&self, in_f: usize, out_f: usize, has_bias: bool) -> usize {
        let eff = self.effective(has_bias);
        PathKind::ALL
            .into_iter()
            .map(|p| eff.get(p).param_count(p, in_f, out_f))
            .sum()
    }
}

impl fmt::Display for LayerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "A={} B={} C={} D={} E={}",
            self.a, self.b, self.c, self.d, self.e
        )
    }
}

/// GLoRA's own config fields, with PEFT's names (`r`, `config_A_B`, `config_C`, `config_D_E`, `init_weights`),
/// plus `layer_configs`: the per-layer choices fixed by the search (module path → choice), which override the
/// uniform fields for the layers they name. PEFT ignores that field, so a searched adapter whose layers differ
/// from the uniform fields loads in rankfold but not in PEFT; a uniform adapter loads in both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GloraFields {
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(rename = "config_A_B", default = "default_ab")]
    pub config_a_b: String,
    #[serde(rename = "config_C", default = "default_c")]
    pub config_c: String,
    #[serde(rename = "config_D_E", default = "default_de")]
    pub config_d_e: String,
    #[serde(default = "default_true")]
    pub init_weights: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layer_configs: BTreeMap<String, LayerChoice>,
}

fn default_r() -> usize {
    8
}
fn default_ab() -> String {
    "lora".into()
}
fn default_c() -> String {
    "lora".into()
}
fn default_de() -> String {
    "constant".into()
}
fn default_true() -> bool {
    true
}

impl Default for GloraFields {
    fn default() -> Self {
        GloraFields {
            r: default_r(),
            config_a_b: default_ab(),
            config_c: default_c(),
            config_d_e: default_de(),
            init_weights: true,
            layer_configs: BTreeMap::new(),
        }
    }
}

impl GloraFields {
    /// The uniform choice the PEFT fields describe, checked (an error names the field and the bad value).
    pub fn uniform_choice(&self) -> std::result::Result<LayerChoice, String> {
        let parse = |field: &str, v: &str, path: PathKind| {
            let s = Support::from_peft(v, self.r)
                .map_err(|e| format!("GLoRA config field `{field}`: {e}"))?;
            if path.allows(s) {
                Ok(s)
            } else {
                Err(format!(
                    "GLoRA config field `{field}`: `{v}` is not allowed for {path:?}"
                ))
            }
        };
        Ok(LayerChoice::uniform(
            parse("config_A_B", &self.config_a_b, PathKind::A)?,
            parse("config_C", &self.config_c, PathKind::C)?,
            parse("config_D_E", &self.config_d_e, PathKind::D)?,
        ))
    }

    /// The choice for the module at `path`: its entry in `layer_configs`, else the uniform one.
    pub fn choice_for(&self, path: &str) -> std::result::Result<LayerChoice, String> {
        match self.layer_configs.get(path) {
            Some(c) => match c.invalid_path() {
                Some((p, s)) => Err(format!(
                    "GLoRA layer_configs[{path}]: `{s}` is not allowed for {p:?}"
                )),
                None => Ok(*c),
            },
            None => self.uniform_choice(),
        }
    }
}

/// A GLoRA adapter config as PEFT's `GloraConfig` reads and writes it (`peft_type` "GLORA"), plus the searched
/// `layer_configs` (see [`GloraFields`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GloraConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    #[serde(flatten)]
    pub glora: GloraFields,
    /// PEFT's bias handling; rankfold trains no base bias, so only "none" is accepted.
    #[serde(default = "default_bias")]
    pub bias: String,
}

fn default_bias() -> String {
    "none".into()
}

impl GloraConfig {
    /// A config over `targets` with one uniform choice: A and B share `ab`, D and E share `de`, low-rank paths
    /// use rank `r`.
    pub fn new(
        targets: TargetModules,
        r: usize,
        ab: Support,
        c: Support,
        de: Support,
    ) -> GloraConfig {
        let glora = GloraFields {
            r,
            config_a_b: ab.peft_value().into(),
            config_c: c.peft_value().into(),
            config_d_e: de.peft_value().into(),
            ..GloraFields::default()
        };
        GloraConfig {
            common: CommonConfig::new("GLORA", targets),
            glora,
            bias: default_bias(),
        }
    }

    /// Reads PEFT's `adapter_config.json` object (unknown fields ignored) and checks the GLoRA fields.
    pub fn from_peft_json(v: &serde_json::Value) -> Result<GloraConfig> {
        let c: GloraConfig = serde_json::from_value(v.clone())
            .map_err(|e| Error::config("GLORA config", e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    /// Checks the support-shape fields, the per-layer choices and `bias`; errors name the field.
    pub fn check(&self) -> Result<()> {
        self.glora
            .uniform_choice()
            .map_err(|m| Error::config("config_A_B/config_C/config_D_E", m))?;
        for path in self.glora.layer_configs.keys() {
            self.glora
                .choice_for(path)
                .map_err(|m| Error::config("layer_configs", m))?;
        }
        if self.bias != "none" {
            return Err(Error::config(
                "bias",
                format!(
                    "`{}`: rankfold's GLoRA trains no base bias; use \"none\"",
                    self.bias
                ),
            ));
        }
        Ok(())
    }
}

impl AdapterMethod for GloraConfig {
    fn method(&self) -> Method {
        Method::Glora
    }
    fn common(&self) -> &CommonConfig {
        &self.common
    }
    /// Wraps the layer (or adds to its GLoRA layer) with the choice for `path`: its `layer_configs` entry, else
    /// the uniform fields.
    fn inject(
        &self,
        path: &str,
        name: &str,
        layer: Box<dyn LinearLayer>,
        rng: &mut Rng,
    ) -> InjectResult {
        let choice = match self.glora.choice_for(path) {
            Ok(c) => c,
            Err(m) => return Err((layer, Error::config("layer_configs", m))),
        };
        let init = self.glora.init_weights;
        match downcast_box::<GloraLayer>(layer) {
            Ok(mut g) => match g.add_adapter(name, choice, init, rng) {
                Ok(()) => Ok(g),
                Err(e) => Err((g, layer::in_module(e, path))),
            },
            Err(base) => {
                let mut g = GloraLayer::empty(base);
                match g.add_adapter(name, choice, init, rng) {
                    Ok(()) => Ok(Box::new(g)),
                    Err(e) => Err((g.into_base_layer(), layer::in_module(e, path))),
                }
            }
        }
    }
    fn as_adapter<'a>(&self, layer: &'a dyn LinearLayer) -> Option<&'a dyn AdapterLayer> {
        downcast_adapter::<GloraLayer>(layer)
    }
    fn as_adapter_mut<'a>(
        &self,
        layer: &'a mut dyn LinearLayer,
    ) -> Option<&'a mut dyn AdapterLayer> {
        downcast_adapter_mut::<GloraLayer>(layer)
    }
    fn into_adapter(
        &self,
        layer: Box<dyn LinearLayer>,
    ) -> std::result::Result<Box<dyn AdapterLayer>, Box<dyn LinearLayer>> {
        crate::layer::into_adapter::<GloraLayer>(layer)
    }
    /// PEFT's fields, with `layer_configs` listing every layer whose choice differs from the uniform one (after
    /// a search, or after [`GloraLayer::fix_choice`]).
    fn peft_config(
        &self,
        name: &str,
        layers: &[(String, &dyn AdapterLayer)],
    ) -> Result<serde_json::Value> {
        let mut c = self.clone();
        c.common.peft_type = Some("GLORA".into());
        let uniform = self
            .glora
            .uniform_choice()
            .map_err(|m| Error::config("config_A_B/config_C/config_D_E", m))?;
        c.glora.layer_configs.clear();
        for (path, l) in layers {
            let Some(g) = l.as_any().downcast_ref::<GloraLayer>() else {
                continue;
            };
            let got = g.choice(name)?;
            if got != uniform.effective(g.has_bias()) {
                c.glora.layer_configs.insert(path.clone(), got);
            }
        }
        serde_json::to_value(&c).map_err(|e| Error::config("GLORA config", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_strings_round_trip_and_reject_bad_values() {
        for s in [
            Support::LowRank(3),
            Support::Vector,
            Support::Scalar,
            Support::None,
        ] {
            assert_eq!(s.to_string().parse::<Support>().unwrap(), s);
        }
        assert_eq!(Support::from_peft("lora", 4).unwrap(), Support::LowRank(4));
        assert!("lora_0".parse::<Support>().is_err());
        assert!("matrix".parse::<Support>().is_err());
        assert!(Support::from_peft("lora", 0).is_err());
    }

    #[test]
    fn param_counts_follow_the_shapes() {
        let (i, o) = (37, 23);
        let c = LayerChoice {
            a: Support::LowRank(4),
            b: Support::Vector,
            c: Support::LowRank(2),
            d: Support::Scalar,
            e: Support::Vector,
        };
        assert_eq!(
            c.param_count(i, o, true),
            4 * (o + i) + o + 2 * (i + 1) + 1 + o
        );
        assert_eq!(c.param_count(i, o, false), 4 * (o + i) + o);
        assert_eq!(LayerChoice::NONE.param_count(i, o, true), 0);
    }

    #[test]
    fn fields_parse_like_peft_and_name_bad_fields() {
        let f: GloraFields = serde_json::from_str(r#"{"r": 4, "config_A_B": "vector", "config_C": "none", "config_D_E": "vector", "unknown": 1}"#).unwrap();
        assert_eq!(
            f.uniform_choice().unwrap(),
            LayerChoice::uniform(Support::Vector, Support::None, Support::Vector)
        );
        let bad = GloraFields {
            config_d_e: "lora".into(),
            ..GloraFields::default()
        };
        assert!(bad.uniform_choice().unwrap_err().contains("config_D_E"));
        let bad = GloraFields {
            config_c: "constant".into(),
            ..GloraFields::default()
        };
        assert!(bad.uniform_choice().unwrap_err().contains("config_C"));
    }
}
