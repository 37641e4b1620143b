//! Target selection: which module paths an adapter config picks, following PEFT's
//! `check_target_module_exists` (exclusions first, then list-suffix or full-regex matching, then
//! `layers_to_transform` read from the first numbered path segment, or the one after a `layers_pattern`).

use regex::Regex;

use crate::config::{CommonConfig, TargetModules};
use crate::{Error, Result};

/// The name PEFT's "all-linear" leaves out: the output layer.
pub const OUTPUT_LAYER: &str = "lm_head";

fn full_regex(r: &str, field: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{r})$")).map_err(|e| Error::config(field, e.to_string()))
}

fn matches(t: &TargetModules, path: &str, field: &str) -> Result<bool> {
    Ok(match t {
        TargetModules::List(v) => v
            .iter()
            .any(|n| path == n || path.ends_with(&format!(".{n}"))),
        TargetModules::Regex(r) => full_regex(r, field)?.is_match(path),
        TargetModules::AllLinear => {
            path != OUTPUT_LAYER && !path.ends_with(&format!(".{OUTPUT_LAYER}"))
        }
    })
}

/// The layer index of `path` as PEFT reads it: the first number segment preceded by some segment (no
/// pattern), or the number right after one of `patterns`.
pub fn layer_index(path: &str, patterns: &[String]) -> Result<Option<usize>> {
    let res: Vec<Regex> = if patterns.is_empty() {
        vec![Regex::new(r"^.*?\.[^.]*\.(\d+)\.").expect("a fixed valid regex")]
    } else {
        patterns
            .iter()
            .map(|p| {
                Regex::new(&format!(r"^(?:|.*?\.){p}\.(\d+)\."))
                    .map_err(|e| Error::config("layers_pattern", e.to_string()))
            })
            .collect::<Result<_>>()?
    };
    for re in res {
        if let Some(c) = re.captures(path) {
            return Ok(c[1].parse().ok());
        }
    }
    Ok(None)
}

/// Whether `path` is selected by `cfg`.
pub fn is_target(cfg: &CommonConfig, path: &str) -> Result<bool> {
    if let Some(ex) = &cfg.exclude_modules {
        // PEFT's "all-linear" is not an exclusion form; treat it as excluding every linear module it names.
        if matches(ex, path, "exclude_modules")? {
            return Ok(false);
        }
    }
    let Some(t) = &cfg.target_modules else {
        return Ok(false);
    };
    let mut found = matches(t, path, "target_modules")?;
    if let (TargetModules::List(_), Some(idx)) = (t, &cfg.layers_to_transform) {
        if found && idx.is_used() {
            let pats = cfg
                .layers_pattern
                .as_ref()
                .map(|p| p.to_vec())
                .unwrap_or_default();
            found = layer_index(path, &pats)?.is_some_and(|i| idx.contains(i));
        }
    }
    Ok(found)
}

/// The paths of `paths` that `cfg` selects, in order.
pub fn select<'a>(
    cfg: &CommonConfig,
    paths: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in paths {
        if is_target(cfg, p)? {
            out.push(p.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LayerIndices, Patterns};

    const PATHS: [&str; 6] = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.12.self_attn.q_proj",
        "lm_head",
    ];

    fn cfg(t: TargetModules) -> CommonConfig {
        CommonConfig::new("LORA", t)
    }

    #[test]
    fn list_regex_all_linear_and_exclude() {
        let c = cfg(TargetModules::list(&["q_proj"]));
        assert_eq!(select(&c, PATHS).unwrap(), [PATHS[0], PATHS[2], PATHS[4]]);
        // A suffix must be whole segments: "proj" does not match "q_proj".
        assert!(select(&cfg(TargetModules::list(&["proj"])), PATHS)
            .unwrap()
            .is_empty());
        let c = cfg(TargetModules::Regex(r".*layers\.1\..*".into()));
        assert_eq!(select(&c, PATHS).unwrap(), [PATHS[2], PATHS[3]]);
        // A regex must match the whole path.
        assert!(select(&cfg(TargetModules::Regex("q_proj".into())), PATHS)
            .unwrap()
            .is_empty());
        let mut c = cfg(TargetModules::AllLinear);
        assert_eq!(select(&c, PATHS).unwrap().len(), 5);
        c.exclude_modules = Some(TargetModules::list(&["down_proj"]));
        assert_eq!(select(&c, PATHS).unwrap(), [PATHS[0], PATHS[2], PATHS[4]]);
    }

    #[test]
    fn layers_to_transform_with_and_without_pattern() {
        let mut c = cfg(TargetModules::list(&["q_proj", "down_proj"]));
        c.layers_to_transform = Some(LayerIndices::Many(vec![1, 12]));
        assert_eq!(select(&c, PATHS).unwrap(), [PATHS[2], PATHS[3], PATHS[4]]);
        c.layers_pattern = Some(Patterns::One("layers".into()));
        c.layers_to_transform = Some(LayerIndices::One(0));
        assert_eq!(select(&c, PATHS).unwrap(), [PATHS[0], PATHS[1]]);
        // Without a leading segment and without a pattern, PEFT finds no index and selects nothing.
        assert_eq!(layer_index("layers.3.q_proj", &[]).unwrap(), None);
        assert_eq!(
            layer_index("layers.3.q_proj", &["layers".into()]).unwrap(),
            Some(3)
        );
        // The first numbered segment wins (an expert index later in the path is not the layer).
        assert_eq!(layer_index("m.layers.2.experts.7.w", &[]).unwrap(), Some(2));
    }
}
