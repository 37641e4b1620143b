//! The tokenizer a GGUF file carries in its `tokenizer.ggml.*` metadata: the model kind, the vocabulary, token
//! types, BPE merges, special token ids and the chat template, checked for consistency (ids inside the vocabulary,
//! one type per token).

use super::{Array, GgufFile, Value};
use crate::Result;

/// The tokenizer metadata of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`, e.g. `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`, the pre-tokenizer name llama.cpp uses, when present.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token id → token text.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), when present.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: BPE merges as `"left right"`, highest priority first (empty when absent).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.chat_template` (a Jinja template), when present.
    pub chat_template: Option<String>,
}

fn opt_string(f: &GgufFile, key: &str) -> Result<Option<String>> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(f.meta_err(
            key,
            format!("expected a string, found {:?}", v.value_type()),
        )),
    }
}

fn string_array(f: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::Array(Array::String(v))) => Ok(Some(v.clone())),
        Some(v) => Err(f.meta_err(
            key,
            format!("expected an array of strings, found {:?}", v.value_type()),
        )),
    }
}

impl GgufTokenizer {
    /// Reads the tokenizer metadata; `tokenizer.ggml.model` and `tokenizer.ggml.tokens` are required.
    pub fn from_gguf(f: &GgufFile) -> Result<GgufTokenizer> {
        let model = opt_string(f, "tokenizer.ggml.model")?
            .ok_or_else(|| f.meta_err("tokenizer.ggml.model", "missing"))?;
        let tokens = string_array(f, "tokenizer.ggml.tokens")?
            .ok_or_else(|| f.meta_err("tokenizer.ggml.tokens", "missing"))?;
        let n = tokens.len();
        let token_types = match f.get("tokenizer.ggml.token_type") {
            None => None,
            Some(Value::Array(Array::I32(v))) if v.len() == n => Some(v.clone()),
            Some(v) => {
                return Err(f.meta_err(
                    "tokenizer.ggml.token_type",
                    format!(
                        "expected {n} i32 values (one per token), found {}",
                        v.describe()
                    ),
                ))
            }
        };
        let id = |key: &str| -> Result<Option<u32>> {
            match f.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64().and_then(|x| u32::try_from(x).ok()) {
                    Some(x) if (x as usize) < n => Ok(Some(x)),
                    _ => Err(f.meta_err(
                        key,
                        format!(
                            "expected a token id below the vocabulary size {n}, found {}",
                            v.describe()
                        ),
                    )),
                },
            }
        };
        let add_bos = match f.get("tokenizer.ggml.add_bos_token") {
            None => None,
            Some(v) => Some(v.as_bool().ok_or_else(|| {
                f.meta_err(
                    "tokenizer.ggml.add_bos_token",
                    format!("expected a bool, found {}", v.describe()),
                )
            })?),
        };
        Ok(GgufTokenizer {
            model,
            pre: opt_string(f, "tokenizer.ggml.pre")?,
            tokens,
            token_types,
            merges: string_array(f, "tokenizer.ggml.merges")?.unwrap_or_default(),
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos,
            chat_template: opt_string(f, "tokenizer.chat_template")?,
        })
    }
}
