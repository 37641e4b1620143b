//! PEFT adapter directories on disk (docs/reference.md, "PEFT adapter files"): `adapter_config.json` plus
//! `adapter_model.safetensors` with keys `base_model.model.<module path>.<suffix>`, and the dispatch from a
//! config's `peft_type` to the method that reads it.

use std::collections::HashMap;
use std::path::Path;

use rankfold_tensor::{Device, Tensor};

use crate::layer::AdapterMethod;
use crate::{Error, Result};

/// The config file of an adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The tensor file of an adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix of every tensor key (PEFT's `PeftModel.base_model.model`).
pub const KEY_PREFIX: &str = "base_model.model.";

/// The JSON object in `dir/adapter_config.json`.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.display().to_string(),
        source,
    })
}

/// The tensors of `dir/adapter_model.safetensors` on the CPU, with the file's path for error messages.
pub fn read_tensors(dir: &Path) -> Result<(String, HashMap<String, Tensor>)> {
    let path = dir.join(WEIGHTS_FILE);
    let t = rankfold_tensor::safetensors::load(&path, Device::Cpu)?;
    Ok((path.display().to_string(), t))
}

/// Writes `config` (pretty JSON, keys sorted as serde_json's map keeps them) and `tensors` into `dir`,
/// creating it. The safetensors metadata carries `format: pt`, as PEFT writes.
pub fn write_dir(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(config).map_err(|source| Error::Json {
        path: path.display().to_string(),
        source,
    })?;
    std::fs::write(&path, text + "\n").map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let contiguous: Vec<Tensor> = refs
        .iter()
        .map(|(_, t)| t.contiguous())
        .collect::<rankfold_tensor::Result<_>>()?;
    let refs: Vec<(&str, &Tensor)> = refs
        .iter()
        .zip(&contiguous)
        .map(|((k, _), t)| (*k, t))
        .collect();
    rankfold_tensor::safetensors::save(dir.join(WEIGHTS_FILE), &refs, Some(&meta))?;
    Ok(())
}

/// The method a PEFT config describes, by its `peft_type`.
pub fn method_from_config(config: &serde_json::Value) -> Result<Box<dyn AdapterMethod>> {
    let ty = config
        .get("peft_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::config("peft_type", "missing or not a string"))?;
    match ty {
        "LORA" => Ok(Box::new(crate::lora::LoraConfig::from_peft_json(config)?)),
        "ADALORA" => Ok(Box::new(crate::adalora::AdaLora::from_peft_json(config)?)),
        "GLORA" => Ok(Box::new(crate::glora::GloraConfig::from_peft_json(config)?)),
        other => Err(Error::config(
            "peft_type",
            format!("`{other}` is not a method rankfold reads"),
        )),
    }
}
