//! Building a `Bert` from a Hugging Face folder: `config.json` and `model.safetensors`, whose tensor names may
//! carry the `bert.` prefix of the task models (`BertForSequenceClassification`, …) or not (`BertModel`,
//! sentence-transformers). LayerNorm parameters may be named `weight`/`bias` or the older `gamma`/`beta`. Every
//! shape is checked against the config; errors name the file and the tensor. The weights come back frozen.

use std::collections::HashSet;
use std::path::Path;

use rankfold_tensor::nn::{Embedding, LayerNorm, Linear, LinearSlot};
use rankfold_tensor::safetensors::MmapedSafetensors;
use rankfold_tensor::{DType, Device, Tensor};

use super::model::{BertAttention, BertEmbeddings, BertLayer};
use super::{Bert, BertConfig};
use crate::{Error, Result};

/// One safetensors file seen through `BertModel` names.
struct Source {
    path: String,
    file: MmapedSafetensors,
    names: HashSet<String>,
    prefix: &'static str,
    dtype: DType,
    device: Device,
}

impl Source {
    fn has(&self, name: &str) -> bool {
        self.names.contains(&format!("{}{name}", self.prefix))
    }

    /// The tensor `name` (without prefix), which must have shape `want`.
    fn tensor(&self, name: &str, want: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        if !self.has(name) {
            return Err(Error::Weights {
                path: self.path.clone(),
                tensor: full,
                msg: "missing from the safetensors file".into(),
            });
        }
        let t = self
            .file
            .load(&full, self.device)
            .map_err(|e| Error::Weights {
                path: self.path.clone(),
                tensor: full.clone(),
                msg: e.to_string(),
            })?;
        if t.dims() != want {
            return Err(Error::Weights {
                path: self.path.clone(),
                tensor: full,
                msg: format!("expected shape {want:?}, found {:?}", t.dims()),
            });
        }
        Ok(t.to_dtype(self.dtype)?)
    }

    fn linear(&self, name: &str, out: usize, inf: usize) -> Result<LinearSlot> {
        let w = self.tensor(&format!("{name}.weight"), &[out, inf])?;
        let b = self.tensor(&format!("{name}.bias"), &[out])?;
        Ok(LinearSlot::new(Linear::from_weights(w, Some(b))?))
    }

    fn layer_norm(&self, name: &str, h: usize, eps: f64) -> Result<LayerNorm> {
        let (w, b) = if self.has(&format!("{name}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        let w = self.tensor(&format!("{name}.{w}"), &[h])?;
        let b = self.tensor(&format!("{name}.{b}"), &[h])?;
        Ok(LayerNorm::from_weights(w, Some(b), eps)?)
    }

    fn embedding(&self, name: &str, n: usize, h: usize) -> Result<Embedding> {
        Ok(Embedding::from_weights(
            self.tensor(&format!("{name}.weight"), &[n, h])?,
        )?)
    }
}

impl Bert {
    /// Loads a Hugging Face BERT folder (`config.json` + `model.safetensors`) with weights converted to `dtype`
    /// on `device`. The pooler, if present, is not loaded: pooling here is the mean over real tokens.
    pub fn from_hf_dir(dir: impl AsRef<Path>, dtype: DType, device: Device) -> Result<Bert> {
        let dir = dir.as_ref();
        let cfg = BertConfig::from_file(dir.join("config.json"))?;
        let st = dir.join("model.safetensors");
        let path = st.display().to_string();
        let file = MmapedSafetensors::open(&st).map_err(|e| Error::Weights {
            path: path.clone(),
            tensor: "(file)".into(),
            msg: e.to_string(),
        })?;
        let names: HashSet<String> = file.names().into_iter().collect();
        let prefix = if names.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let src = Source {
            path,
            file,
            names,
            prefix,
            dtype,
            device,
        };
        Self::build(cfg, &src)
    }

    fn build(cfg: BertConfig, src: &Source) -> Result<Bert> {
        let (h, ff, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let embeddings = BertEmbeddings {
            word_embeddings: src.embedding("embeddings.word_embeddings", cfg.vocab_size, h)?,
            position_embeddings: src.embedding(
                "embeddings.position_embeddings",
                cfg.max_position_embeddings,
                h,
            )?,
            token_type_embeddings: src.embedding(
                "embeddings.token_type_embeddings",
                cfg.type_vocab_size,
                h,
            )?,
            layer_norm: src.layer_norm("embeddings.LayerNorm", h, eps)?,
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(BertLayer {
                attention: BertAttention {
                    query: src.linear(&format!("{p}.attention.self.query"), h, h)?,
                    key: src.linear(&format!("{p}.attention.self.key"), h, h)?,
                    value: src.linear(&format!("{p}.attention.self.value"), h, h)?,
                    output: src.linear(&format!("{p}.attention.output.dense"), h, h)?,
                    layer_norm: src.layer_norm(
                        &format!("{p}.attention.output.LayerNorm"),
                        h,
                        eps,
                    )?,
                },
                intermediate: src.linear(&format!("{p}.intermediate.dense"), ff, h)?,
                output: src.linear(&format!("{p}.output.dense"), h, ff)?,
                output_layer_norm: src.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        // More layers in the file than the config names is a mismatch the user should hear about.
        let extra = format!(
            "encoder.layer.{}.output.dense.weight",
            cfg.num_hidden_layers
        );
        if src.has(&extra) {
            return Err(Error::Weights {
                path: src.path.clone(),
                tensor: format!("{}{extra}", src.prefix),
                msg: format!(
                    "the file has more layers than config.json's num_hidden_layers = {}",
                    cfg.num_hidden_layers
                ),
            });
        }
        Ok(Bert {
            config: cfg,
            embeddings,
            layers,
        })
    }
}
