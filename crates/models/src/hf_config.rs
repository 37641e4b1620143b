//! Reading a Hugging Face `config.json`: the file as a JSON object, and typed fields with defaults whose
//! errors name the file and the field. The Llama and BERT configs both parse through here.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// A config error naming the file and the field.
pub(crate) fn field_err(path: &str, field: &str, msg: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_string(),
        field: field.to_string(),
        msg: msg.into(),
    }
}

/// The text of the file at `path` and the path as errors show it.
pub(crate) fn read(path: &Path) -> Result<(String, String)> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: shown.clone(),
        source,
    })?;
    Ok((text, shown))
}

/// `text` parsed as a JSON object; `path` names it in errors.
pub(crate) fn parse_object(text: &str, path: &str) -> Result<Value> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| field_err(path, "(json)", e.to_string()))?;
    if !v.is_object() {
        return Err(field_err(path, "(json)", "expected a JSON object"));
    }
    Ok(v)
}

/// A non-negative integer field; absent or null gives `default`, or an error when there is none.
pub(crate) fn get_usize(
    obj: &Value,
    path: &str,
    field: &str,
    default: Option<usize>,
) -> Result<usize> {
    match obj.get(field) {
        None | Some(Value::Null) => default.ok_or_else(|| field_err(path, field, "missing")),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                field_err(
                    path,
                    field,
                    format!("expected a non-negative integer, found {v}"),
                )
            }),
    }
}

/// A number field; absent or null gives `default`.
pub(crate) fn get_f64(obj: &Value, path: &str, field: &str, default: f64) -> Result<f64> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| field_err(path, field, format!("expected a number, found {v}"))),
    }
}

/// A boolean field; absent or null gives `default`.
pub(crate) fn get_bool(obj: &Value, path: &str, field: &str, default: bool) -> Result<bool> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| field_err(path, field, format!("expected a boolean, found {v}"))),
    }
}
