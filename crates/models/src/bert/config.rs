//! The BERT hyperparameters of a Hugging Face `config.json` (`BertConfig`, with its defaults).

use std::path::Path;

use serde_json::Value;

use crate::hf_config::{self, field_err, get_f64, get_usize};
use crate::Result;

/// The fields of a Hugging Face `BertConfig` the encoder uses.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// `vocab_size` (default 30522).
    pub vocab_size: usize,
    /// `hidden_size` (default 768).
    pub hidden_size: usize,
    /// `num_hidden_layers` (default 12).
    pub num_hidden_layers: usize,
    /// `num_attention_heads` (default 12); it must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// `intermediate_size` (default 3072).
    pub intermediate_size: usize,
    /// `max_position_embeddings` (default 512).
    pub max_position_embeddings: usize,
    /// `type_vocab_size` (default 2).
    pub type_vocab_size: usize,
    /// `layer_norm_eps` (default 1e-12).
    pub layer_norm_eps: f64,
    /// `pad_token_id` (default 0).
    pub pad_token_id: u32,
}

impl Default for BertConfig {
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
        }
    }
}

impl BertConfig {
    /// Reads a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<BertConfig> {
        let (text, shown) = hf_config::read(path.as_ref())?;
        Self::from_json_str(&text, &shown)
    }

    /// Parses the text of a `config.json`; `path` names it in errors. Only what the encoder computes is
    /// accepted: the exact (erf) GELU and absolute position embeddings.
    pub fn from_json_str(text: &str, path: &str) -> Result<BertConfig> {
        let v = hf_config::parse_object(text, path)?;
        let d = BertConfig::default();
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        if act != "gelu" {
            return Err(field_err(
                path,
                "hidden_act",
                format!("only \"gelu\" (the exact erf form) is supported, found {act:?}"),
            ));
        }
        let pos = v
            .get("position_embedding_type")
            .and_then(Value::as_str)
            .unwrap_or("absolute");
        if pos != "absolute" {
            return Err(field_err(
                path,
                "position_embedding_type",
                format!("only \"absolute\" is supported, found {pos:?}"),
            ));
        }
        let cfg = BertConfig {
            vocab_size: get_usize(&v, path, "vocab_size", Some(d.vocab_size))?,
            hidden_size: get_usize(&v, path, "hidden_size", Some(d.hidden_size))?,
            num_hidden_layers: get_usize(&v, path, "num_hidden_layers", Some(d.num_hidden_layers))?,
            num_attention_heads: get_usize(
                &v,
                path,
                "num_attention_heads",
                Some(d.num_attention_heads),
            )?,
            intermediate_size: get_usize(&v, path, "intermediate_size", Some(d.intermediate_size))?,
            max_position_embeddings: get_usize(
                &v,
                path,
                "max_position_embeddings",
                Some(d.max_position_embeddings),
            )?,
            type_vocab_size: get_usize(&v, path, "type_vocab_size", Some(d.type_vocab_size))?,
            layer_norm_eps: get_f64(&v, path, "layer_norm_eps", d.layer_norm_eps)?,
            pad_token_id: get_usize(&v, path, "pad_token_id", Some(0))? as u32,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the sizes fit together; `path` names the config in errors.
    pub fn validate(&self, path: &str) -> Result<()> {
        for (field, n) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if n == 0 {
                return Err(field_err(path, field, "must be positive"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(field_err(
                path,
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        Ok(())
    }

    /// The width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
