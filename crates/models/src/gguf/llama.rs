//! Llama GGUF files as Hugging Face models see them: the hyperparameters from metadata, GGUF tensor names mapped
//! to Hugging Face names, llama.cpp's Q/K row permutation undone, and weights loaded as f32 or straight to NF4.
//!
//! The permutation. Hugging Face Llama applies RoPE with `rotate_half`: in each head of `q_proj`/`k_proj`, output
//! row `i` pairs with row `i + d/2` (`d` the head dim). ggml's RoPE pairs adjacent rows `2i, 2i + 1`, so
//! llama.cpp's converter reorders the rows of `attn_q` (with `n_head` heads) and `attn_k` (with `n_head_kv` heads):
//! within head `h`, Hugging Face row `h·d + j·d/2 + i` (j ∈ {0, 1}, i < d/2) is stored as GGUF row
//! `h·d + 2i + j` (numpy: `w.reshape(n, 2, d/2, in).swapaxes(1, 2)`). Loading reads, for each Hugging Face row,
//! the GGUF row given by `gguf_row_of_hf_row`; columns are untouched.

use rankfold_kernels::nf4::fast;
use rankfold_tensor::{DType, Device, Nf4Scales, Nf4Tensor, Tensor};

use super::{GgufFile, TensorInfo, Value};
use crate::Result;

/// The Llama hyperparameters a GGUF file's metadata gives.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHparams {
    /// `llama.block_count`.
    pub n_layer: usize,
    /// `llama.embedding_length` (hidden size).
    pub n_embd: usize,
    /// `llama.feed_forward_length` (intermediate size).
    pub n_ff: usize,
    /// `llama.attention.head_count`.
    pub n_head: usize,
    /// `llama.attention.head_count_kv` (defaults to `n_head`).
    pub n_head_kv: usize,
    /// `llama.context_length`.
    pub n_ctx: usize,
    /// `llama.rope.freq_base` (defaults to 10000).
    pub rope_freq_base: f64,
    /// `llama.attention.layer_norm_rms_epsilon` (defaults to 1e-5).
    pub rms_eps: f64,
    /// The vocabulary size: the length of `tokenizer.ggml.tokens`, else `llama.vocab_size`, else
    /// `token_embd.weight`'s row count.
    pub n_vocab: usize,
    /// `n_embd / n_head`.
    pub head_dim: usize,
    /// Whether the file has no `output.weight`, so the LM head is the token embedding.
    pub tied_embeddings: bool,
}

fn usize_key(f: &GgufFile, key: &str, default: Option<usize>) -> Result<usize> {
    match f.get(key) {
        None => default.ok_or_else(|| f.meta_err(key, "missing")),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                f.meta_err(
                    key,
                    format!("expected a non-negative integer, found {}", v.describe()),
                )
            }),
    }
}

fn float_key(f: &GgufFile, key: &str, default: f64) -> Result<f64> {
    match f.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| f.meta_err(key, format!("expected a number, found {}", v.describe()))),
    }
}

impl LlamaHparams {
    /// Reads the hyperparameters; `general.architecture` must be `llama`.
    pub fn from_gguf(f: &GgufFile) -> Result<LlamaHparams> {
        let arch = f.get("general.architecture").and_then(Value::as_str);
        if arch != Some("llama") {
            return Err(f.meta_err(
                "general.architecture",
                format!("expected \"llama\", found {arch:?}"),
            ));
        }
        let n_embd = usize_key(f, "llama.embedding_length", None)?;
        let n_head = usize_key(f, "llama.attention.head_count", None)?;
        let n_head_kv = usize_key(f, "llama.attention.head_count_kv", Some(n_head))?;
        if n_head == 0 || n_embd % n_head != 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(f.meta_err(
                "llama.attention.head_count",
                format!(
                    "{n_head} heads ({n_head_kv} KV heads) do not divide embedding length {n_embd}"
                ),
            ));
        }
        let n_vocab = match f.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            Some(v) => {
                return Err(f.meta_err(
                    "tokenizer.ggml.tokens",
                    format!("expected an array, found {}", v.describe()),
                ))
            }
            None => match f.get("llama.vocab_size") {
                Some(_) => usize_key(f, "llama.vocab_size", None)?,
                None => f.require("token_embd.weight")?.rows().1,
            },
        };
        Ok(LlamaHparams {
            n_layer: usize_key(f, "llama.block_count", None)?,
            n_embd,
            n_ff: usize_key(f, "llama.feed_forward_length", None)?,
            n_head,
            n_head_kv,
            n_ctx: usize_key(f, "llama.context_length", None)?,
            rope_freq_base: float_key(f, "llama.rope.freq_base", 10000.0)?,
            rms_eps: float_key(f, "llama.attention.layer_norm_rms_epsilon", 1e-5)?,
            n_vocab,
            head_dim: n_embd / n_head,
            tied_embeddings: f.tensor_info("output.weight").is_none(),
        })
    }

    /// The number of heads whose rows llama.cpp permuted in this GGUF tensor, if it is `attn_q` or `attn_k`.
    pub fn permuted_heads(&self, gguf_name: &str) -> Option<usize> {
        let base = gguf_name
            .strip_suffix(".weight")
            .or_else(|| gguf_name.strip_suffix(".bias"))?;
        match base.rsplit('.').next()? {
            "attn_q" => Some(self.n_head),
            "attn_k" => Some(self.n_head_kv),
            _ => None,
        }
    }
}

/// The GGUF row that holds Hugging Face row `hf_row` of a `rows`-row tensor permuted with `n_head` heads.
pub fn gguf_row_of_hf_row(hf_row: usize, rows: usize, n_head: usize) -> usize {
    let d = rows / n_head;
    let half = d / 2;
    let (h, r) = (hf_row / d, hf_row % d);
    h * d + 2 * (r % half) + r / half
}

/// The Hugging Face name of a GGUF Llama tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`),
/// or `None` for tensors Hugging Face has no counterpart for (e.g. `rope_freqs.weight`).
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let (base, suffix) = gguf_name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let mapped = match base {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = base.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf = match part {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

/// Walks a tensor's rows in Hugging Face order, dequantizing one row at a time into `row` and handing it to `f`.
fn for_each_hf_row(
    f: &GgufFile,
    info: &TensorInfo,
    heads: Option<usize>,
    mut each: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let (cols, rows) = info.rows();
    if let Some(n) = heads {
        if n == 0 || rows % (2 * n) != 0 {
            return Err(f.tensor_err(
                &info.name,
                format!("{rows} rows cannot be split into {n} heads of an even size to undo the Q/K permutation"),
            ));
        }
    }
    let mut row = vec![0f32; cols];
    for r in 0..rows {
        let src = heads.map_or(r, |n| gguf_row_of_hf_row(r, rows, n));
        f.read_rows(info, src, &mut row)?;
        each(&row)?;
    }
    Ok(())
}

/// Loads a GGUF tensor as an f32 CPU tensor under its Hugging Face name, with the Q/K permutation undone.
pub fn load_f32(f: &GgufFile, hp: &LlamaHparams, gguf_name: &str) -> Result<(String, Tensor)> {
    let info = f.require(gguf_name)?;
    let name = hf_name(gguf_name)
        .ok_or_else(|| f.tensor_err(gguf_name, "no Hugging Face Llama counterpart"))?;
    let mut out = Vec::with_capacity(info.n_elements);
    for_each_hf_row(f, info, hp.permuted_heads(gguf_name), |row| {
        out.extend_from_slice(row);
        Ok(())
    })?;
    Ok((name, Tensor::from_vec(out, info.shape(), Device::Cpu)?))
}

/// Loads a GGUF tensor straight to NF4 (`dtype` F32, blocks of `blocksize`, optionally double-quantized scales)
/// under its Hugging Face name, with the Q/K permutation undone. Only one row plus less than one NF4 block of
/// f32 values is held at a time: the result equals `Nf4Tensor::quantize` of `load_f32`'s tensor bit for bit.
pub fn load_nf4(
    f: &GgufFile,
    hp: &LlamaHparams,
    gguf_name: &str,
    blocksize: usize,
    double_quant: bool,
) -> Result<(String, Nf4Tensor)> {
    let info = f.require(gguf_name)?;
    let name = hf_name(gguf_name)
        .ok_or_else(|| f.tensor_err(gguf_name, "no Hugging Face Llama counterpart"))?;
    let nf4_err =
        |e: rankfold_kernels::Error| f.tensor_err(gguf_name, format!("NF4 quantization: {e}"));
    rankfold_kernels::nf4::check_blocksize("gguf::llama::load_nf4", blocksize).map_err(nf4_err)?;
    let mut packed = Vec::with_capacity(info.n_elements.div_ceil(2));
    let mut absmax = Vec::with_capacity(info.n_elements.div_ceil(blocksize));
    // Values waiting for a whole block; blocksize is an even power of two, so whole blocks pack into whole bytes.
    let mut pending: Vec<f32> = Vec::with_capacity(2 * blocksize.max(info.rows().0));
    let mut flush = |pending: &mut Vec<f32>, all: bool| -> Result<()> {
        let n = if all {
            pending.len()
        } else {
            pending.len() / blocksize * blocksize
        };
        if n == 0 {
            return Ok(());
        }
        let q = fast::quantize(&pending[..n], blocksize).map_err(nf4_err)?;
        packed.extend_from_slice(&q.packed);
        absmax.extend_from_slice(&q.absmax);
        pending.drain(..n);
        Ok(())
    };
    for_each_hf_row(f, info, hp.permuted_heads(gguf_name), |row| {
        pending.extend_from_slice(row);
        flush(&mut pending, false)
    })?;
    flush(&mut pending, true)?;
    let scales = if double_quant {
        Nf4Scales::Double(rankfold_kernels::nf4::double_quantize(&absmax))
    } else {
        Nf4Scales::Plain(absmax)
    };
    let t = Nf4Tensor::from_parts(info.shape().into(), DType::F32, blocksize, packed, scales)?;
    Ok((name, t))
}
