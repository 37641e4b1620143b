//! The Llama hyperparameters of a Hugging Face `config.json` (and their translation from GGUF metadata).

use std::path::Path;

use serde_json::Value;

use crate::gguf::llama::LlamaHparams;
use crate::hf_config::{self, field_err, get_bool, get_f64, get_usize};
use crate::Result;

/// The fields of a Hugging Face `LlamaConfig` the decoder uses, with `LlamaConfig`'s defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `intermediate_size` (the SwiGLU width).
    pub intermediate_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `num_key_value_heads` (defaults to `num_attention_heads`; fewer means grouped-query attention).
    pub num_key_value_heads: usize,
    /// `head_dim` (defaults to `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// `rope_theta`, or `rope_parameters.rope_theta` as transformers 5 writes it (defaults to 10000).
    pub rope_theta: f64,
    /// `rms_norm_eps` (defaults to 1e-6).
    pub rms_norm_eps: f64,
    /// `tie_word_embeddings` (defaults to false): the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// `max_position_embeddings` (defaults to 2048).
    pub max_position_embeddings: usize,
    /// `attention_bias` (defaults to false): q/k/v/o projections carry biases.
    pub attention_bias: bool,
    /// `mlp_bias` (defaults to false): gate/up/down projections carry biases.
    pub mlp_bias: bool,
}

impl LlamaConfig {
    /// Reads a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<LlamaConfig> {
        let (text, shown) = hf_config::read(path.as_ref())?;
        Self::from_json_str(&text, &shown)
    }

    /// Parses the text of a `config.json`; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &str) -> Result<LlamaConfig> {
        let v = hf_config::parse_object(text, path)?;
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(field_err(
                path,
                "hidden_act",
                format!("only \"silu\" is supported, found {act:?}"),
            ));
        }
        if let Some(s) = v.get("rope_scaling").filter(|s| !s.is_null()) {
            return Err(field_err(
                path,
                "rope_scaling",
                format!("RoPE scaling is not supported, found {s}"),
            ));
        }
        let mut rope_theta = get_f64(&v, path, "rope_theta", 10000.0)?;
        if let Some(rp) = v.get("rope_parameters").filter(|s| !s.is_null()) {
            let kind = rp
                .get("rope_type")
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(field_err(
                    path,
                    "rope_parameters.rope_type",
                    format!("only \"default\" is supported, found {kind:?}"),
                ));
            }
            rope_theta = get_f64(rp, path, "rope_theta", rope_theta)?;
        }
        let hidden_size = get_usize(&v, path, "hidden_size", None)?;
        let heads = get_usize(&v, path, "num_attention_heads", None)?;
        if heads == 0 {
            return Err(field_err(path, "num_attention_heads", "must be positive"));
        }
        let kv = get_usize(&v, path, "num_key_value_heads", Some(heads))?;
        if kv == 0 || heads % kv != 0 {
            return Err(field_err(
                path,
                "num_key_value_heads",
                format!("{kv} does not divide num_attention_heads {heads}"),
            ));
        }
        let head_dim = get_usize(&v, path, "head_dim", Some(hidden_size / heads))?;
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(field_err(
                path,
                "head_dim",
                format!("RoPE needs a positive even head dimension, found {head_dim}"),
            ));
        }
        Ok(LlamaConfig {
            vocab_size: get_usize(&v, path, "vocab_size", None)?,
            hidden_size,
            intermediate_size: get_usize(&v, path, "intermediate_size", None)?,
            num_hidden_layers: get_usize(&v, path, "num_hidden_layers", None)?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rope_theta,
            rms_norm_eps: get_f64(&v, path, "rms_norm_eps", 1e-6)?,
            tie_word_embeddings: get_bool(&v, path, "tie_word_embeddings", false)?,
            max_position_embeddings: get_usize(&v, path, "max_position_embeddings", Some(2048))?,
            attention_bias: get_bool(&v, path, "attention_bias", false)?,
            mlp_bias: get_bool(&v, path, "mlp_bias", false)?,
        })
    }

    /// The configuration a GGUF file's hyperparameters describe (no biases; llama.cpp's Llama has none).
    pub fn from_gguf_hparams(hp: &LlamaHparams) -> LlamaConfig {
        LlamaConfig {
            vocab_size: hp.n_vocab,
            hidden_size: hp.n_embd,
            intermediate_size: hp.n_ff,
            num_hidden_layers: hp.n_layer,
            num_attention_heads: hp.n_head,
            num_key_value_heads: hp.n_head_kv,
            head_dim: hp.head_dim,
            rope_theta: hp.rope_freq_base,
            rms_norm_eps: hp.rms_eps,
            tie_word_embeddings: hp.tied_embeddings,
            max_position_embeddings: hp.n_ctx,
            attention_bias: false,
            mlp_bias: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = LlamaConfig::from_json_str(
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,
                "num_attention_heads": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}"#,
            "c.json",
        )
        .expect("valid config");
        assert_eq!(
            (
                c.num_key_value_heads,
                c.head_dim,
                c.rope_theta,
                c.tie_word_embeddings
            ),
            (2, 4, 500.0, false)
        );
        let e = LlamaConfig::from_json_str(
            r#"{"hidden_size": 8, "num_attention_heads": 3, "num_key_value_heads": 2}"#,
            "c.json",
        )
        .expect_err("bad heads");
        assert!(
            e.to_string().contains("c.json") && e.to_string().contains("num_key_value_heads"),
            "{e}"
        );
        let e =
            LlamaConfig::from_json_str(r#"{"hidden_act": "gelu"}"#, "c.json").expect_err("gelu");
        assert!(e.to_string().contains("hidden_act"), "{e}");
    }
}
