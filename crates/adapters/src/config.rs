//! The fields every PEFT adapter config shares (PEFT's names, serde tolerant of unknown fields): which modules
//! to adapt ([`TargetModules`], `exclude_modules`, `layers_to_transform`, `layers_pattern`) and the
//! bookkeeping fields PEFT always writes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which modules an adapter targets, as PEFT's `target_modules` (and `exclude_modules`) field reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// A JSON list: a module matches when its path equals an entry or ends with `.` + an entry.
    List(Vec<String>),
    /// A JSON string: a regular expression that must match the whole module path.
    Regex(String),
    /// The string `"all-linear"`: every linear module except the output layer (`lm_head`).
    AllLinear,
}

/// PEFT's shorthand for [`TargetModules::AllLinear`].
pub const ALL_LINEAR: &str = "all-linear";

impl TargetModules {
    /// A list target from string slices.
    pub fn list<S: AsRef<str>>(names: &[S]) -> Self {
        TargetModules::List(names.iter().map(|s| s.as_ref().to_string()).collect())
    }
}

impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetModules::List(v) => write!(f, "{v:?}"),
            TargetModules::Regex(r) => write!(f, "regex {r:?}"),
            TargetModules::AllLinear => f.write_str(ALL_LINEAR),
        }
    }
}

impl Serialize for TargetModules {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TargetModules::List(v) => v.serialize(s),
            TargetModules::Regex(r) => r.serialize(s),
            TargetModules::AllLinear => ALL_LINEAR.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TargetModules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(s) if s.eq_ignore_ascii_case(ALL_LINEAR) => TargetModules::AllLinear,
            Raw::One(s) => TargetModules::Regex(s),
            Raw::Many(v) => TargetModules::List(v),
        })
    }
}

/// One layer index or a list of them (PEFT's `layers_to_transform`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndices {
    One(usize),
    Many(Vec<usize>),
}

impl LayerIndices {
    pub fn contains(&self, i: usize) -> bool {
        match self {
            LayerIndices::One(j) => *j == i,
            LayerIndices::Many(v) => v.contains(&i),
        }
    }
    /// Whether the field selects anything (PEFT ignores an empty list).
    pub fn is_used(&self) -> bool {
        !matches!(self, LayerIndices::Many(v) if v.is_empty())
    }
}

/// One pattern or a list of them (PEFT's `layers_pattern`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Patterns {
    One(String),
    Many(Vec<String>),
}

impl Patterns {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Patterns::One(s) => vec![s.clone()],
            Patterns::Many(v) => v.clone(),
        }
    }
}

/// The fields shared by every method's config. Method configs embed it with `#[serde(flatten)]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommonConfig {
    /// "LORA", "ADALORA", "GLORA".
    #[serde(default)]
    pub peft_type: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub peft_version: Option<String>,
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndices>,
    #[serde(default)]
    pub layers_pattern: Option<Patterns>,
    /// Modules PEFT would train in full and save; rankfold refuses a non-empty list (see `check`).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

/// The PEFT version written into saved configs (the version whose file layout rankfold follows).
pub const PEFT_VERSION: &str = "0.21.2";

impl CommonConfig {
    /// A config of `peft_type` that targets `targets`.
    pub fn new(peft_type: &str, targets: TargetModules) -> Self {
        CommonConfig {
            peft_type: Some(peft_type.into()),
            task_type: None,
            base_model_name_or_path: None,
            revision: None,
            inference_mode: false,
            peft_version: Some(PEFT_VERSION.into()),
            target_modules: Some(targets),
            exclude_modules: None,
            layers_to_transform: None,
            layers_pattern: None,
            modules_to_save: None,
        }
    }

    /// Checks the fields every method needs: a target and no `modules_to_save` (full-module training is not an
    /// adapter and rankfold does not support it).
    pub fn check(&self) -> crate::Result<()> {
        if self.target_modules.is_none() {
            return Err(crate::Error::config(
                "target_modules",
                "no target modules are given",
            ));
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(crate::Error::config(
                "modules_to_save",
                "training whole modules is not supported",
            ));
        }
        for (field, t) in [
            ("target_modules", &self.target_modules),
            ("exclude_modules", &self.exclude_modules),
        ] {
            if let Some(TargetModules::Regex(r)) = t {
                regex::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| crate::Error::config(field, e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// Reads `field` of a method config from JSON; unknown fields are ignored (serde's default), so files written
/// by newer PEFT versions load.
pub fn from_json<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    what: &str,
) -> crate::Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| crate::Error::config(what, e.to_string()))
}

/// Checks a `lora_dropout` probability: it must lie in [0, 1) (1 would drop every input).
pub fn check_dropout(p: f64) -> crate::Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(crate::Error::config(
            "lora_dropout",
            format!("{p} is outside [0, 1)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_as_peft_writes_them() {
        let t: TargetModules = serde_json::from_str(r#"["q_proj","v_proj"]"#).unwrap();
        assert_eq!(t, TargetModules::list(&["q_proj", "v_proj"]));
        let t: TargetModules = serde_json::from_str(r#""all-linear""#).unwrap();
        assert_eq!(t, TargetModules::AllLinear);
        let t: TargetModules = serde_json::from_str(r#"".*\\.q_proj""#).unwrap();
        assert_eq!(t, TargetModules::Regex(r".*\.q_proj".into()));
        assert_eq!(
            serde_json::to_string(&TargetModules::AllLinear).unwrap(),
            r#""all-linear""#
        );
        let c: CommonConfig = serde_json::from_str(
            r#"{"peft_type":"LORA","target_modules":["q"],"layers_to_transform":1,"layers_pattern":"layers","some_new_field":3}"#,
        )
        .unwrap();
        assert_eq!(c.layers_to_transform, Some(LayerIndices::One(1)));
        assert_eq!(c.layers_pattern, Some(Patterns::One("layers".into())));
        assert!(c.check().is_ok());
        let bad = CommonConfig {
            target_modules: Some(TargetModules::Regex("(".into())),
            ..c
        };
        assert!(matches!(bad.check(), Err(crate::Error::Config { .. })));
    }
}
