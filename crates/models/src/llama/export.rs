//! Writing a `Llama` back out in Hugging Face form: its weights as named tensors (`state_dict`, the names
//! `model.safetensors` uses) and its hyperparameters as a `config.json` object. `rankfold merge` writes a merged
//! model through these.

use rankfold_tensor::Tensor;
use serde_json::json;

use super::{Llama, LlamaConfig};
use crate::Result;

impl Llama {
    /// Every weight under its Hugging Face name (`model.embed_tokens.weight`, `model.layers.N.self_attn.q_proj.weight`,
    /// …, `model.norm.weight`, `lm_head.weight`), in that order. A tied model has no `lm_head.weight`. Each
    /// projection contributes its base weight (`LinearLayer::dense_weight`): call this on a plain model (after
    /// `merge_and_unload`), since adapter layers report only the weight under them; NF4 projections come out
    /// dequantized.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.weight().clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.weight().clone(),
            ));
            let a = &l.self_attn;
            let m = &l.mlp;
            let projections = [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ];
            for (name, slot) in projections {
                out.push((format!("{p}.{name}.weight"), slot.layer().dense_weight()?));
                if let Some(b) = slot.layer().bias() {
                    out.push((format!("{p}.{name}.bias"), b));
                }
            }
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.weight().clone(),
            ));
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight().clone()));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.layer().dense_weight()?));
        }
        Ok(out)
    }
}

impl LlamaConfig {
    /// A Hugging Face `config.json` object for `LlamaForCausalLM` with these hyperparameters (what `from_json_str`
    /// reads back to the same config); `torch_dtype` names the dtype the weights are written in, and the token
    /// ids are included when known.
    pub fn to_hf_json(
        &self,
        torch_dtype: &str,
        bos_token_id: Option<u32>,
        eos_token_id: Option<u32>,
    ) -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "torch_dtype": torch_dtype,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_reads_back_to_the_same_config() {
        let c = LlamaConfig {
            vocab_size: 101,
            hidden_size: 48,
            intermediate_size: 80,
            num_hidden_layers: 3,
            num_attention_heads: 6,
            num_key_value_heads: 2,
            head_dim: 8,
            rope_theta: 12345.0,
            rms_norm_eps: 3e-6,
            tie_word_embeddings: true,
            max_position_embeddings: 77,
            attention_bias: false,
            mlp_bias: true,
        };
        let text = c.to_hf_json("float32", Some(1), Some(2)).to_string();
        let back =
            LlamaConfig::from_json_str(&text, "generated").expect("a generated config reads back");
        assert_eq!(back, c);
    }
}
