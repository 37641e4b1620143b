//! The BERT encoder as Hugging Face's `BertModel` computes it: word + position + token-type embeddings and a
//! LayerNorm, then post-LN layers (self-attention with the padding mask → dense → residual → LayerNorm → dense →
//! exact GELU → dense → residual → LayerNorm); mean pooling over real tokens (optionally L2-normalized, as
//! sentence-transformers' Normalize module); and `BertClassifier`, the encoder with mean pooling and a
//! trainable linear head under cross-entropy.
//!
//! Every projection is a `LinearSlot` under its Hugging Face module path (`encoder.layer.N.attention.self.query`,
//! `…attention.self.key`, `…attention.self.value`, `…attention.output.dense`, `…intermediate.dense`,
//! `…output.dense`), so adapters inject through `LinearModel`.

use rankfold_tensor::nn::{Embedding, LayerNorm, Linear, LinearModel, LinearSlot};
use rankfold_tensor::{CrossEntropyOpts, DType, Device, Rng, Tensor};

use super::BertConfig;
use crate::Result;

/// The three embedding tables and their LayerNorm.
#[derive(Debug)]
pub struct BertEmbeddings {
    /// `embeddings.word_embeddings`: [vocab, hidden].
    pub word_embeddings: Embedding,
    /// `embeddings.position_embeddings`: [max_positions, hidden].
    pub position_embeddings: Embedding,
    /// `embeddings.token_type_embeddings`: [type_vocab, hidden].
    pub token_type_embeddings: Embedding,
    /// `embeddings.LayerNorm`.
    pub layer_norm: LayerNorm,
}

/// Self-attention with its output projection and LayerNorm.
#[derive(Debug)]
pub struct BertAttention {
    /// `attention.self.query`: hidden → hidden.
    pub query: LinearSlot,
    /// `attention.self.key`: hidden → hidden.
    pub key: LinearSlot,
    /// `attention.self.value`: hidden → hidden.
    pub value: LinearSlot,
    /// `attention.output.dense`: hidden → hidden.
    pub output: LinearSlot,
    /// `attention.output.LayerNorm`.
    pub layer_norm: LayerNorm,
}

/// One encoder layer.
#[derive(Debug)]
pub struct BertLayer {
    /// The attention block.
    pub attention: BertAttention,
    /// `intermediate.dense`: hidden → intermediate.
    pub intermediate: LinearSlot,
    /// `output.dense`: intermediate → hidden.
    pub output: LinearSlot,
    /// `output.LayerNorm`.
    pub output_layer_norm: LayerNorm,
}

/// The encoder (`BertModel` without its pooler).
#[derive(Debug)]
pub struct Bert {
    /// The hyperparameters.
    pub config: BertConfig,
    /// The embeddings.
    pub embeddings: BertEmbeddings,
    /// `encoder.layer`.
    pub layers: Vec<BertLayer>,
}

fn invalid(op: &'static str, t: &Tensor, msg: impl Into<String>) -> crate::Error {
    rankfold_tensor::Error::InvalidShape {
        op,
        shape: t.shape().clone(),
        msg: msg.into(),
    }
    .into()
}

impl BertAttention {
    /// `x` [b, t, hidden] attended with `blocked` [b, 1, 1, t] (1 at padding keys) or no mask.
    fn forward(&self, cfg: &BertConfig, x: &Tensor, blocked: Option<&Tensor>) -> Result<Tensor> {
        let (b, t) = (x.dims()[0], x.dims()[1]);
        let (nh, d) = (cfg.num_attention_heads, cfg.head_dim());
        let heads = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, nh, d))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(self.query.forward(x)?)?;
        let k = heads(self.key.forward(x)?)?;
        let v = heads(self.value.forward(x)?)?;
        let dtype = q.dtype();
        let mut scores = q
            .matmul(&k.transpose(2, 3)?)?
            .to_dtype(DType::F32)?
            .mul_scalar(1.0 / (d as f64).sqrt())?;
        if let Some(m) = blocked {
            // The lowest finite f32, as transformers' extended attention mask: exp underflows to exactly 0.
            scores = scores.masked_fill(m, f32::MIN as f64)?;
        }
        let probs = scores.softmax(-1)?.to_dtype(dtype)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, nh * d))?;
        let h = self.output.forward(&ctx)?.add(x)?;
        Ok(self.layer_norm.forward(&h)?)
    }
}

impl BertLayer {
    fn forward(&self, cfg: &BertConfig, x: &Tensor, blocked: Option<&Tensor>) -> Result<Tensor> {
        let a = self.attention.forward(cfg, x, blocked)?;
        let h = self.intermediate.forward(&a)?.gelu_erf()?;
        let h = self.output.forward(&h)?.add(&a)?;
        Ok(self.output_layer_norm.forward(&h)?)
    }
}

/// The 0/1 values of an integer or float mask [b, t], checked against the ids' shape.
fn mask_values(ids: &Tensor, mask: &Tensor) -> Result<Vec<f32>> {
    if mask.dims() != ids.dims() {
        return Err(rankfold_tensor::Error::ShapeMismatch {
            op: "bert attention_mask",
            lhs: ids.shape().clone(),
            rhs: mask.shape().clone(),
        }
        .into());
    }
    Ok(mask.to_dtype(DType::F32)?.to_vec_f32()?)
}

impl Bert {
    /// The last hidden states [b, t, hidden] for token ids [b, t], with an optional Hugging Face
    /// `attention_mask` [b, t] (1 at real tokens, 0 at padding, on either side) and optional `token_type_ids`
    /// [b, t] (all 0 when absent). Positions are 0..t.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        if input_ids.rank() != 2 {
            return Err(invalid(
                "bert forward",
                input_ids,
                "expected token ids [batch, seq]",
            ));
        }
        let (b, t) = (input_ids.dims()[0], input_ids.dims()[1]);
        if t > cfg.max_position_embeddings {
            return Err(invalid(
                "bert forward",
                input_ids,
                format!(
                    "{t} tokens exceed max_position_embeddings {}",
                    cfg.max_position_embeddings
                ),
            ));
        }
        let dev = self.device();
        let e = &self.embeddings;
        let positions = Tensor::from_vec((0..t as u32).collect::<Vec<_>>(), t, dev)?;
        let types = match token_type_ids {
            Some(tt) if tt.dims() != input_ids.dims() => {
                return Err(rankfold_tensor::Error::ShapeMismatch {
                    op: "bert token_type_ids",
                    lhs: input_ids.shape().clone(),
                    rhs: tt.shape().clone(),
                }
                .into())
            }
            Some(tt) => e.token_type_embeddings.forward(tt)?,
            None => e
                .token_type_embeddings
                .forward(&Tensor::from_vec(vec![0u32; t], t, dev)?)?,
        };
        let x = e
            .word_embeddings
            .forward(input_ids)?
            .add(&e.position_embeddings.forward(&positions)?)?
            .add(&types)?;
        let mut x = e.layer_norm.forward(&x)?;
        let blocked = match attention_mask {
            None => None,
            Some(m) => {
                let v: Vec<u8> = mask_values(input_ids, m)?
                    .iter()
                    .map(|&m| (m == 0.0) as u8)
                    .collect();
                Some(Tensor::from_vec(v, (b, 1, 1, t), dev)?)
            }
        };
        for layer in &self.layers {
            x = layer.forward(cfg, &x, blocked.as_ref())?;
        }
        Ok(x)
    }

    /// Mean-pooled sentence embeddings [b, hidden] (L2-normalized when `normalize`, as all-MiniLM-L6-v2's
    /// sentence-transformers pipeline does) for token ids [b, t] and their attention mask.
    pub fn embed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        normalize: bool,
    ) -> Result<Tensor> {
        let h = self.forward(input_ids, Some(attention_mask), None)?;
        let pooled = mean_pool(&h, attention_mask)?;
        if normalize {
            l2_normalize(&pooled)
        } else {
            Ok(pooled)
        }
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.embeddings.word_embeddings.weight().device()
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.embeddings.word_embeddings.weight().dtype()
    }
}

/// The mean of `hidden` [b, t, h] over the positions where `attention_mask` [b, t] is non-zero, as
/// sentence-transformers' mean pooling: Σ h·m / max(Σ m, 1e-9). A row without real tokens pools to zeros.
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    if hidden.rank() != 3 {
        return Err(invalid(
            "mean_pool",
            hidden,
            "expected hidden states [batch, seq, hidden]",
        ));
    }
    let (b, t) = (hidden.dims()[0], hidden.dims()[1]);
    let m = mask_values(&hidden.narrow(2, 0, 1)?.squeeze(2)?, attention_mask)?;
    let counts: Vec<f32> = m
        .chunks(t.max(1))
        .map(|r| r.iter().sum::<f32>().max(1e-9))
        .collect();
    let dev = hidden.device();
    let mt = Tensor::from_vec(m, (b, t, 1), dev)?.to_dtype(hidden.dtype())?;
    let ct = Tensor::from_vec(counts, (b, 1), dev)?.to_dtype(hidden.dtype())?;
    Ok(hidden.mul(&mt)?.sum(&[1], false)?.div(&ct)?)
}

/// Each row of `x` [b, h] divided by its Euclidean norm (at least 1e-12, as `torch.nn.functional.normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum(&[-1], true)?.sqrt()?;
    let floor = Tensor::full(1e-12, (), norm.dtype(), norm.device())?;
    Ok(x.div(&norm.maximum(&floor)?)?)
}

/// A sequence classifier: the encoder, mean pooling over real tokens and a linear head `classifier`
/// (hidden → classes) trained with cross-entropy. The head is not a `LinearSlot`, so adapters never wrap it;
/// train it alongside them through [`BertClassifier::head_parameters`].
#[derive(Debug)]
pub struct BertClassifier {
    /// The encoder.
    pub bert: Bert,
    /// `classifier`: hidden → classes.
    pub classifier: Linear,
}

impl BertClassifier {
    /// The encoder with a fresh trainable head for `num_classes` classes (PyTorch's `nn.Linear` init from
    /// `rng`), in the encoder's dtype and device.
    pub fn new(bert: Bert, num_classes: usize, rng: &mut Rng) -> Result<BertClassifier> {
        if num_classes < 2 {
            return Err(rankfold_tensor::Error::InvalidArgument {
                op: "BertClassifier::new",
                msg: format!("{num_classes} classes: at least 2 are needed"),
            }
            .into());
        }
        let h = bert.config.hidden_size;
        let classifier = Linear::new(h, num_classes, true, rng, bert.dtype(), bert.device())?;
        Ok(BertClassifier { bert, classifier })
    }

    /// Class logits [b, classes] for token ids [b, t] and their attention mask.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let h = self.bert.forward(input_ids, Some(attention_mask), None)?;
        Ok(self.classifier.forward(&mean_pool(&h, attention_mask)?)?)
    }

    /// The mean cross-entropy of the logits against `labels` (one class index per row).
    pub fn loss(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &[usize],
    ) -> Result<Tensor> {
        let logits = self.forward(input_ids, attention_mask)?;
        let n = self.num_classes();
        if let Some(&bad) = labels.iter().find(|&&l| l >= n) {
            return Err(rankfold_tensor::Error::InvalidArgument {
                op: "BertClassifier::loss",
                msg: format!("label {bad} is not one of the {n} classes"),
            }
            .into());
        }
        let targets: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
        let tl = labels.len();
        let targets = Tensor::from_vec(targets, tl, logits.device())?;
        Ok(logits
            .to_dtype(DType::F32)?
            .cross_entropy(&targets, CrossEntropyOpts::default())?)
    }

    /// The most likely class of each row.
    pub fn predict(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Vec<usize>> {
        let logits = self
            .forward(input_ids, attention_mask)?
            .to_dtype(DType::F32)?;
        let n = self.num_classes();
        Ok(logits
            .to_vec_f32()?
            .chunks(n)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 {
                            (i, v)
                        } else {
                            best
                        }
                    })
                    .0
            })
            .collect())
    }

    /// The number of classes.
    pub fn num_classes(&self) -> usize {
        self.classifier.out_features()
    }

    /// The head's parameters as `classifier.weight` and `classifier.bias`.
    pub fn head_parameters(&self) -> Vec<(String, Tensor)> {
        rankfold_tensor::nn::prefixed("classifier", self.classifier.parameters())
    }
}

impl LinearModel for Bert {
    fn linear_slots(&mut self) -> Vec<(String, &mut LinearSlot)> {
        let mut out = Vec::with_capacity(self.layers.len() * 6);
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("encoder.layer.{i}");
            let a = &mut l.attention;
            out.push((format!("{p}.attention.self.query"), &mut a.query));
            out.push((format!("{p}.attention.self.key"), &mut a.key));
            out.push((format!("{p}.attention.self.value"), &mut a.value));
            out.push((format!("{p}.attention.output.dense"), &mut a.output));
            out.push((format!("{p}.intermediate.dense"), &mut l.intermediate));
            out.push((format!("{p}.output.dense"), &mut l.output));
        }
        out
    }
}

/// The classifier's projections carry the `bert.` prefix of Hugging Face's `BertForSequenceClassification`, so
/// its adapter files name the same modules.
impl LinearModel for BertClassifier {
    fn linear_slots(&mut self) -> Vec<(String, &mut LinearSlot)> {
        self.bert
            .linear_slots()
            .into_iter()
            .map(|(p, s)| (format!("bert.{p}"), s))
            .collect()
    }
}
