//! A randomly initialized `Llama` for benches and tests: every weight drawn as Hugging Face's
//! `LlamaPreTrainedModel._init_weights` draws it (projections, embedding and head N(0, 0.02), biases zero, norm
//! weights one), frozen as a loaded model's weights are, from a seeded generator.

use rankfold_tensor::nn::{init, Embedding, Linear, LinearSlot, RmsNorm};
use rankfold_tensor::{DType, Device, Rng};

use super::model::{LlamaAttention, LlamaBlock, LlamaMlp};
use super::{Llama, LlamaConfig};
use crate::{Error, Result};

/// The standard deviation of every random weight (`initializer_range` in a Hugging Face `LlamaConfig`).
pub const INITIALIZER_RANGE: f64 = 0.02;

/// Names a random-init configuration in errors.
const ORIGIN: &str = "(random Llama)";

fn config_err(field: &str, msg: String) -> Error {
    Error::Config {
        path: ORIGIN.to_string(),
        field: field.to_string(),
        msg,
    }
}

/// Checks what `forward` relies on: positive sizes, query heads a multiple of key/value heads, an even head size.
fn check(cfg: &LlamaConfig) -> Result<()> {
    let positive = [
        ("vocab_size", cfg.vocab_size),
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("num_attention_heads", cfg.num_attention_heads),
        ("num_key_value_heads", cfg.num_key_value_heads),
    ];
    for (field, n) in positive {
        if n == 0 {
            return Err(config_err(field, "must be positive".into()));
        }
    }
    if cfg.num_attention_heads % cfg.num_key_value_heads != 0 {
        return Err(config_err(
            "num_key_value_heads",
            format!(
                "{} does not divide num_attention_heads {}",
                cfg.num_key_value_heads, cfg.num_attention_heads
            ),
        ));
    }
    if cfg.head_dim == 0 || cfg.head_dim % 2 != 0 {
        return Err(config_err(
            "head_dim",
            format!(
                "RoPE needs a positive even head dimension, found {}",
                cfg.head_dim
            ),
        ));
    }
    if !(cfg.rms_norm_eps > 0.0 && cfg.rms_norm_eps.is_finite()) {
        return Err(config_err(
            "rms_norm_eps",
            format!("must be positive and finite, found {}", cfg.rms_norm_eps),
        ));
    }
    Ok(())
}

/// Draws the weights in a fixed order so that one seed always gives the same model.
struct Builder {
    rng: Rng,
    dtype: DType,
    device: Device,
}

impl Builder {
    fn linear(&mut self, out: usize, inf: usize, bias: bool) -> Result<LinearSlot> {
        let w = init::normal(
            (out, inf),
            0.0,
            INITIALIZER_RANGE,
            &mut self.rng,
            self.dtype,
            self.device,
        )?;
        let b = if bias {
            Some(init::zeros(out, self.dtype, self.device)?)
        } else {
            None
        };
        Ok(LinearSlot::new(Linear::from_weights(w, b)?))
    }

    fn norm(&mut self, dim: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm::from_weight(
            init::ones(dim, self.dtype, self.device)?,
            eps,
        )?)
    }
}

impl Llama {
    /// A model of shape `cfg` with random frozen weights (see the module doc) in `dtype` on `device`, drawn from
    /// a generator seeded with `seed`. The configuration is checked as `config.json` parsing checks it.
    pub fn random(cfg: &LlamaConfig, seed: u64, dtype: DType, device: Device) -> Result<Llama> {
        check(cfg)?;
        if !dtype.is_float() {
            return Err(config_err(
                "torch_dtype",
                format!("expected a float dtype, found {dtype:?}"),
            ));
        }
        let (h, v, ff) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let q_out = cfg.num_attention_heads * cfg.head_dim;
        let kv_out = cfg.num_key_value_heads * cfg.head_dim;
        let mut b = Builder {
            rng: Rng::new(seed),
            dtype,
            device,
        };
        let emb = init::normal((v, h), 0.0, INITIALIZER_RANGE, &mut b.rng, dtype, device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
            layers.push(LlamaBlock {
                input_layernorm: b.norm(h, cfg.rms_norm_eps)?,
                self_attn: LlamaAttention {
                    q_proj: b.linear(q_out, h, ab)?,
                    k_proj: b.linear(kv_out, h, ab)?,
                    v_proj: b.linear(kv_out, h, ab)?,
                    o_proj: b.linear(h, q_out, ab)?,
                },
                post_attention_layernorm: b.norm(h, cfg.rms_norm_eps)?,
                mlp: LlamaMlp {
                    gate_proj: b.linear(ff, h, mb)?,
                    up_proj: b.linear(ff, h, mb)?,
                    down_proj: b.linear(h, ff, mb)?,
                },
            });
        }
        let norm = b.norm(h, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(b.linear(v, h, false)?)
        };
        Ok(Llama {
            config: cfg.clone(),
            embed_tokens: Embedding::from_weights(emb)?,
            layers,
            norm,
            lm_head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 37,
            hidden_size: 12,
            intermediate_size: 20,
            num_hidden_layers: 2,
            num_attention_heads: 3,
            num_key_value_heads: 1,
            head_dim: 4,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            max_position_embeddings: 64,
            attention_bias: true,
            mlp_bias: false,
        }
    }

    #[test]
    fn shapes_statistics_seed_and_errors() {
        let cfg = small();
        let m = Llama::random(&cfg, 7, DType::F32, Device::Cpu).expect("valid config");
        let again = Llama::random(&cfg, 7, DType::F32, Device::Cpu).expect("valid config");
        let other = Llama::random(&cfg, 8, DType::F32, Device::Cpu).expect("valid config");
        let q = |m: &Llama| {
            let l = m.layers[1]
                .self_attn
                .q_proj
                .downcast_ref::<Linear>()
                .expect("a dense projection");
            (
                l.weight().to_vec_f32().expect("f32"),
                l.bias().is_some(),
                l.weight().requires_grad(),
            )
        };
        let (w, has_bias, trainable) = q(&m);
        assert_eq!(w.len(), 12 * 12);
        assert!(has_bias && !trainable);
        assert_eq!(w, q(&again).0, "one seed gives one model");
        assert_ne!(w, q(&other).0, "another seed gives another model");
        // The embedding has 444 draws; their standard deviation must be near 0.02 (a 4-sigma band is ±0.0027).
        let e = m.embed_tokens.weight().to_vec_f32().expect("f32");
        let sd = (e.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / e.len() as f64).sqrt();
        assert!((sd - INITIALIZER_RANGE).abs() < 0.0027, "sd {sd}");
        let logits = m.forward_ids(&[1, 5, 36, 0, 2], 1, 5).expect("forward");
        assert_eq!(logits.dims(), &[1, 5, 37]);
        assert!(logits
            .to_vec_f32()
            .expect("f32")
            .iter()
            .all(|x| x.is_finite()));
        let bad = LlamaConfig {
            num_key_value_heads: 2,
            ..small()
        };
        let e = Llama::random(&bad, 0, DType::F32, Device::Cpu).expect_err("3 heads over 2 groups");
        assert!(
            e.to_string().contains("num_key_value_heads") && e.to_string().contains("random"),
            "{e}"
        );
        let e = Llama::random(&small(), 0, DType::U8, Device::Cpu).expect_err("integer dtype");
        assert!(e.to_string().contains("float"), "{e}");
    }
}
