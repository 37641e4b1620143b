//! The Llama decoder as Hugging Face's `LlamaForCausalLM` computes it: token embeddings, blocks of RMSNorm →
//! grouped-query attention with rotate-half RoPE and a causal mask (softmax in f32) → residual → RMSNorm → SwiGLU
//! MLP → residual, a final RMSNorm and the LM head (its own weight, or the embedding's when tied).
//!
//! Every projection is a `LinearSlot` under its Hugging Face module path (`model.layers.N.self_attn.q_proj`, …,
//! `lm_head`), so adapters inject through `LinearModel`. `forward_cached` appends to a `KvCache` for decoding.

use rankfold_tensor::nn::{Embedding, LinearModel, LinearSlot, RmsNorm};
use rankfold_tensor::{rope_tables, DType, RopeStyle, Tensor};

use super::LlamaConfig;
use crate::Result;

/// The four projections of one attention layer.
#[derive(Debug)]
pub struct LlamaAttention {
    /// `q_proj`: hidden → heads · head_dim.
    pub q_proj: LinearSlot,
    /// `k_proj`: hidden → kv_heads · head_dim.
    pub k_proj: LinearSlot,
    /// `v_proj`: hidden → kv_heads · head_dim.
    pub v_proj: LinearSlot,
    /// `o_proj`: heads · head_dim → hidden.
    pub o_proj: LinearSlot,
}

/// The SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
#[derive(Debug)]
pub struct LlamaMlp {
    /// `gate_proj`: hidden → intermediate.
    pub gate_proj: LinearSlot,
    /// `up_proj`: hidden → intermediate.
    pub up_proj: LinearSlot,
    /// `down_proj`: intermediate → hidden.
    pub down_proj: LinearSlot,
}

/// One decoder block.
#[derive(Debug)]
pub struct LlamaBlock {
    /// The norm before attention.
    pub input_layernorm: RmsNorm,
    /// The attention projections.
    pub self_attn: LlamaAttention,
    /// The norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// The MLP projections.
    pub mlp: LlamaMlp,
}

/// The whole causal language model.
#[derive(Debug)]
pub struct Llama {
    /// The hyperparameters.
    pub config: LlamaConfig,
    /// `model.embed_tokens`.
    pub embed_tokens: Embedding,
    /// `model.layers`.
    pub layers: Vec<LlamaBlock>,
    /// `model.norm`.
    pub norm: RmsNorm,
    /// `lm_head`, or `None` when tied to the embedding.
    pub lm_head: Option<LinearSlot>,
}

/// Keys and values of the positions seen so far, per layer: [b, kv_heads, t, head_dim] each.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// The number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl LlamaAttention {
    /// Attention of `x` [b, t, hidden] at positions `offset..offset + t`, attending also to `past` (and
    /// replacing it with the extended keys and values when given).
    fn forward(
        &self,
        cfg: &LlamaConfig,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        past: Option<&mut Option<(Tensor, Tensor)>>,
        key_blocked: Option<&[bool]>,
    ) -> Result<Tensor> {
        let (b, t) = (x.dims()[0], x.dims()[1]);
        let (nh, nkv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(self.q_proj.forward(x)?, nh)?.rope(cos, sin, RopeStyle::RotateHalf)?;
        let mut k = heads(self.k_proj.forward(x)?, nkv)?.rope(cos, sin, RopeStyle::RotateHalf)?;
        let mut v = heads(self.v_proj.forward(x)?, nkv)?;
        let offset = match past {
            None => 0,
            Some(slot) => {
                if let Some((pk, pv)) = slot.as_ref() {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                *slot = Some((k.clone(), v.clone()));
                k.dims()[2] - t
            }
        };
        let tk = k.dims()[2];
        // Grouped-query attention: each KV head serves nh / nkv consecutive query heads.
        let group = nh / nkv;
        let expand = |y: &Tensor| -> Result<Tensor> {
            if group == 1 {
                return Ok(y.clone());
            }
            Ok(y.reshape(vec![b, nkv, 1, tk, d])?
                .broadcast_as(vec![b, nkv, group, tk, d])?
                .contiguous()?
                .reshape((b, nh, tk, d))?)
        };
        let (k, v) = (expand(&k)?, expand(&v)?);
        let dtype = q.dtype();
        let scores = q.matmul(&k.transpose(2, 3)?)?.to_dtype(DType::F32)?;
        let scale = 1.0 / (d as f64).sqrt();
        // Query i (at position offset + i) may not see key j > offset + i.
        let causal = |n: usize| (n % tk) > offset + n / tk;
        let probs = match key_blocked {
            // The causal mask alone: scale, mask and softmax in one fused pass (forward and backward).
            None => scores.causal_softmax(scale, offset)?,
            // Padding keys (`key_blocked` is [b, tk]) are blocked too, giving a [b, 1, t, tk] mask. The lowest
            // finite f32 rather than −∞ (as transformers does): a query that sees no key at all (a left padding
            // position) gets a uniform average instead of NaNs that would leak into later layers.
            Some(kb) => {
                let v: Vec<u8> = (0..b * t * tk)
                    .map(|n| (causal(n % (t * tk)) || kb[n / (t * tk) * tk + n % tk]) as u8)
                    .collect();
                let blocked = Tensor::from_vec(v, (b, 1, t, tk), x.device())?;
                scores
                    .mul_scalar(scale)?
                    .masked_fill(&blocked, f32::MIN as f64)?
                    .softmax(-1)?
            }
        }
        .to_dtype(dtype)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, nh * d))?;
        Ok(self.o_proj.forward(&out)?)
    }
}

impl LlamaMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // silu(gate) · up as one fused op (bit for bit the unfused pair, with one pass each way).
        let h = self
            .gate_proj
            .forward(x)?
            .swiglu(&self.up_proj.forward(x)?)?;
        Ok(self.down_proj.forward(&h)?)
    }
}

impl Llama {
    /// Logits [b, t, vocab] for integer token ids [b, t].
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.run(tokens, None, None)
    }

    /// Logits [b, t, vocab] for token ids [b, t] with a Hugging Face `attention_mask` [b, t] (integer, 1 for real
    /// tokens, 0 for padding on either side): padding keys are never attended to. Positions stay 0..t as in
    /// transformers when no position ids are given; logits at padding positions are meaningless.
    pub fn forward_masked(&self, tokens: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let blocked = blocked_keys(tokens, attention_mask)?;
        self.run(tokens, None, Some(&blocked))
    }

    /// Logits [b, t, vocab] for token ids [b, t] that follow the positions in `cache`, which grows by `t`.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.run(tokens, Some(cache), None)
    }

    /// Logits [b, t, vocab] for token ids given as a flat row-major `[b, t]` slice.
    pub fn forward_ids(&self, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        let tokens = Tensor::from_vec(ids.to_vec(), (b, t), self.embed_tokens.weight().device())?;
        self.forward(&tokens)
    }

    fn run(
        &self,
        tokens: &Tensor,
        cache: Option<&mut KvCache>,
        key_blocked: Option<&[bool]>,
    ) -> Result<Tensor> {
        self.logits(&self.run_hidden(tokens, cache, key_blocked)?)
    }

    /// Final hidden states [b, t, hidden] (after the last RMSNorm) for token ids [b, t] with an optional Hugging
    /// Face `attention_mask` [b, t]: what [`Llama::forward_masked`] computes before the LM head. A loss that
    /// needs logits at a few positions only (labels, a classification answer) gathers those rows first and
    /// calls [`Llama::logits`] on them, which skips most of the head's work.
    pub fn forward_hidden(&self, tokens: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        match attention_mask {
            None => self.run_hidden(tokens, None, None),
            Some(m) => {
                let blocked = blocked_keys(tokens, m)?;
                self.run_hidden(tokens, None, Some(&blocked))
            }
        }
    }

    fn run_hidden(
        &self,
        tokens: &Tensor,
        mut cache: Option<&mut KvCache>,
        key_blocked: Option<&[bool]>,
    ) -> Result<Tensor> {
        if tokens.rank() != 2 {
            return Err(rankfold_tensor::Error::InvalidShape {
                op: "llama forward",
                shape: tokens.shape().clone(),
                msg: "expected token ids [batch, seq]".into(),
            }
            .into());
        }
        let t = tokens.dims()[1];
        let cfg = &self.config;
        let offset = cache.as_ref().map_or(0, |c| c.len);
        let mut x = self.embed_tokens.forward(tokens)?;
        let (cos, sin) = rope_tables(
            offset + t,
            cfg.head_dim,
            cfg.rope_theta,
            DType::F32,
            x.device(),
        )?;
        let (cos, sin) = (
            cos.narrow(0, offset, t)?.to_dtype(x.dtype())?,
            sin.narrow(0, offset, t)?.to_dtype(x.dtype())?,
        );
        if let Some(c) = cache.as_mut() {
            c.layers.resize(self.layers.len(), None);
        }
        for (i, block) in self.layers.iter().enumerate() {
            let past = cache.as_mut().map(|c| &mut c.layers[i]);
            let h = block.self_attn.forward(
                cfg,
                &block.input_layernorm.forward(&x)?,
                &cos,
                &sin,
                past,
                key_blocked,
            )?;
            x = x.add(&h)?;
            let h = block
                .mlp
                .forward(&block.post_attention_layernorm.forward(&x)?)?;
            x = x.add(&h)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        Ok(self.norm.forward(&x)?)
    }

    /// Logits [.., vocab] for final hidden states [.., hidden] (the LM head, or the tied embedding).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => Ok(head.forward(hidden)?),
            None => Ok(hidden.matmul(&self.embed_tokens.weight().t()?)?),
        }
    }
}

/// The padding positions (mask value 0) of a Hugging Face attention mask shaped like `tokens`.
fn blocked_keys(tokens: &Tensor, attention_mask: &Tensor) -> Result<Vec<bool>> {
    if attention_mask.dims() != tokens.dims() {
        return Err(rankfold_tensor::Error::ShapeMismatch {
            op: "llama attention_mask",
            lhs: tokens.shape().clone(),
            rhs: attention_mask.shape().clone(),
        }
        .into());
    }
    Ok(attention_mask
        .to_dtype(DType::F32)?
        .to_vec_f32()?
        .iter()
        .map(|&m| m == 0.0)
        .collect())
}

impl LinearModel for Llama {
    fn linear_slots(&mut self) -> Vec<(String, &mut LinearSlot)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut l.self_attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            let m = &mut l.mlp;
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        if let Some(h) = self.lm_head.as_mut() {
            out.push(("lm_head".to_string(), h));
        }
        out
    }
}
