//! Building a `Llama` from weights: a Hugging Face folder (`config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`), or a llama.cpp GGUF file through `gguf::llama` (f32, or NF4 projections for
//! QLoRA with `Nf4Linear`). Errors name the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rankfold_tensor::nn::{Embedding, Linear, LinearSlot, Nf4Linear, RmsNorm};
use rankfold_tensor::safetensors::MmapedSafetensors;
use rankfold_tensor::{DType, Device, Tensor};

use super::model::{LlamaAttention, LlamaBlock, LlamaMlp};
use super::{Llama, LlamaConfig};
use crate::gguf::llama::{hf_name, load_f32, load_nf4, LlamaHparams};
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// Where the builder gets each tensor (by Hugging Face name) and each projection.
trait Source {
    /// A description of the source for error messages.
    fn path(&self) -> String;
    /// The tensor `name`, checked against the expected shape.
    fn tensor(&mut self, name: &str) -> Result<Tensor>;
    /// Whether the tensor exists.
    fn has(&self, name: &str) -> bool;
    /// The projection `name` (`<name>.weight`, plus `<name>.bias` when `bias`).
    fn linear(&mut self, name: &str, bias: bool) -> Result<LinearSlot> {
        let w = self.tensor(&format!("{name}.weight"))?;
        let b = if bias {
            Some(self.tensor(&format!("{name}.bias"))?)
        } else {
            None
        };
        Ok(LinearSlot::new(Linear::from_weights(w, b)?))
    }
}

fn expect_shape(path: &str, name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() != want {
        return Err(Error::Weights {
            path: path.to_string(),
            tensor: name.to_string(),
            msg: format!("expected shape {want:?}, found {:?}", t.dims()),
        });
    }
    Ok(())
}

fn build(cfg: LlamaConfig, src: &mut dyn Source) -> Result<Llama> {
    let path = src.path();
    let (h, v, ff) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (q_out, kv_out) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let lin = |src: &mut dyn Source,
               name: String,
               bias: bool,
               out: usize,
               inf: usize|
     -> Result<LinearSlot> {
        let slot = src.linear(&name, bias)?;
        let (o, i) = (slot.layer().out_features(), slot.layer().in_features());
        if (o, i) != (out, inf) {
            return Err(Error::Weights {
                path: path.clone(),
                tensor: format!("{name}.weight"),
                msg: format!("expected shape [{out}, {inf}], found [{o}, {i}]"),
            });
        }
        Ok(slot)
    };
    let norm = |src: &mut dyn Source, name: String| -> Result<RmsNorm> {
        let w = src.tensor(&name)?;
        expect_shape(&src.path(), &name, &w, &[h])?;
        Ok(RmsNorm::from_weight(w, cfg.rms_norm_eps)?)
    };
    let emb = src.tensor("model.embed_tokens.weight")?;
    expect_shape(&path, "model.embed_tokens.weight", &emb, &[v, h])?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let ab = cfg.attention_bias;
        let mb = cfg.mlp_bias;
        layers.push(LlamaBlock {
            input_layernorm: norm(src, format!("{p}.input_layernorm.weight"))?,
            self_attn: LlamaAttention {
                q_proj: lin(src, format!("{p}.self_attn.q_proj"), ab, q_out, h)?,
                k_proj: lin(src, format!("{p}.self_attn.k_proj"), ab, kv_out, h)?,
                v_proj: lin(src, format!("{p}.self_attn.v_proj"), ab, kv_out, h)?,
                o_proj: lin(src, format!("{p}.self_attn.o_proj"), ab, h, q_out)?,
            },
            post_attention_layernorm: norm(src, format!("{p}.post_attention_layernorm.weight"))?,
            mlp: LlamaMlp {
                gate_proj: lin(src, format!("{p}.mlp.gate_proj"), mb, ff, h)?,
                up_proj: lin(src, format!("{p}.mlp.up_proj"), mb, ff, h)?,
                down_proj: lin(src, format!("{p}.mlp.down_proj"), mb, h, ff)?,
            },
        });
    }
    let final_norm = norm(src, "model.norm.weight".to_string())?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        // The LM head stays dense even for NF4 sources, as QLoRA keeps it.
        let w = src.tensor("lm_head.weight")?;
        expect_shape(&path, "lm_head.weight", &w, &[v, h])?;
        Some(LinearSlot::new(Linear::from_weights(w, None)?))
    };
    Ok(Llama {
        config: cfg,
        embed_tokens: Embedding::from_weights(emb)?,
        layers,
        norm: final_norm,
        lm_head,
    })
}

/// The safetensors files of a Hugging Face folder, with the file holding each tensor.
struct HfSource {
    dir: PathBuf,
    files: Vec<MmapedSafetensors>,
    names: Vec<String>,
    index: HashMap<String, usize>,
    dtype: DType,
    device: Device,
}

impl Source for HfSource {
    fn path(&self) -> String {
        self.dir.display().to_string()
    }

    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let &f = self.index.get(name).ok_or_else(|| Error::Weights {
            path: self.path(),
            tensor: name.to_string(),
            msg: "missing from the safetensors files".into(),
        })?;
        let t = self.files[f]
            .load(name, self.device)
            .map_err(|e| Error::Weights {
                path: self.names[f].clone(),
                tensor: name.to_string(),
                msg: e.to_string(),
            })?;
        Ok(t.to_dtype(self.dtype)?)
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

fn open_st(path: &Path) -> Result<MmapedSafetensors> {
    MmapedSafetensors::open(path).map_err(|e| Error::Weights {
        path: path.display().to_string(),
        tensor: "(file)".into(),
        msg: e.to_string(),
    })
}

impl Llama {
    /// Loads a Hugging Face Llama folder with weights converted to `dtype` on `device`.
    pub fn from_hf_dir(dir: impl AsRef<Path>, dtype: DType, device: Device) -> Result<Llama> {
        let dir = dir.as_ref();
        let cfg = LlamaConfig::from_file(dir.join("config.json"))?;
        let mut src = HfSource {
            dir: dir.to_path_buf(),
            files: vec![],
            names: vec![],
            index: HashMap::new(),
            dtype,
            device,
        };
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shards: Vec<String> = if single.exists() {
            vec!["model.safetensors".into()]
        } else {
            let shown = index_path.display().to_string();
            let text = std::fs::read_to_string(&index_path).map_err(|source| Error::Io {
                path: shown.clone(),
                source,
            })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
                path: shown.clone(),
                field: "(json)".into(),
                msg: e.to_string(),
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Config {
                    path: shown.clone(),
                    field: "weight_map".into(),
                    msg: "missing or not an object".into(),
                })?;
            let mut files: Vec<String> = Vec::new();
            for (k, f) in map {
                let f = f.as_str().ok_or_else(|| Error::Config {
                    path: shown.clone(),
                    field: format!("weight_map.{k}"),
                    msg: format!("expected a file name, found {f}"),
                })?;
                if !files.iter().any(|x| x == f) {
                    files.push(f.to_string());
                }
            }
            files
        };
        for (i, name) in shards.iter().enumerate() {
            let p = dir.join(name);
            let st = open_st(&p)?;
            for n in st.names() {
                src.index.insert(n, i);
            }
            src.files.push(st);
            src.names.push(p.display().to_string());
        }
        if !cfg.tie_word_embeddings && !src.has("lm_head.weight") {
            return Err(Error::Weights {
                path: src.path(),
                tensor: "lm_head.weight".into(),
                msg: "missing, and config.json does not set tie_word_embeddings".into(),
            });
        }
        build(cfg, &mut src)
    }

    /// Loads a llama.cpp Llama GGUF file as f32 on the CPU.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Llama> {
        let f = GgufFile::open(path)?;
        let hp = LlamaHparams::from_gguf(&f)?;
        let mut src = GgufSource::new(&f, &hp, None);
        build(LlamaConfig::from_gguf_hparams(&hp), &mut src)
    }

    /// Loads a llama.cpp Llama GGUF file with every attention and MLP projection quantized straight to NF4
    /// (`blocksize`, optionally double-quantized scales) as `Nf4Linear`; embeddings, norms and the LM head are f32.
    pub fn from_gguf_nf4(
        path: impl AsRef<Path>,
        blocksize: usize,
        double_quant: bool,
    ) -> Result<Llama> {
        let f = GgufFile::open(path)?;
        let hp = LlamaHparams::from_gguf(&f)?;
        let mut src = GgufSource::new(&f, &hp, Some((blocksize, double_quant)));
        build(LlamaConfig::from_gguf_hparams(&hp), &mut src)
    }
}

/// A GGUF file seen through Hugging Face names.
struct GgufSource<'a> {
    f: &'a GgufFile,
    hp: &'a LlamaHparams,
    gguf_of_hf: HashMap<String, String>,
    nf4: Option<(usize, bool)>,
}

impl<'a> GgufSource<'a> {
    fn new(f: &'a GgufFile, hp: &'a LlamaHparams, nf4: Option<(usize, bool)>) -> Self {
        let gguf_of_hf = f
            .tensors()
            .iter()
            .filter_map(|t| hf_name(&t.name).map(|h| (h, t.name.clone())))
            .collect();
        GgufSource {
            f,
            hp,
            gguf_of_hf,
            nf4,
        }
    }

    fn gguf_name(&self, name: &str) -> Result<&str> {
        self.gguf_of_hf
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::Weights {
                path: self.f.path().to_string(),
                tensor: name.to_string(),
                msg: "no GGUF tensor maps to this Hugging Face name".into(),
            })
    }
}

impl Source for GgufSource<'_> {
    fn path(&self) -> String {
        self.f.path().to_string()
    }

    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let g = self.gguf_name(name)?.to_string();
        Ok(load_f32(self.f, self.hp, &g)?.1)
    }

    fn has(&self, name: &str) -> bool {
        self.gguf_of_hf.contains_key(name)
    }

    fn linear(&mut self, name: &str, bias: bool) -> Result<LinearSlot> {
        let Some((bs, dq)) = self.nf4 else {
            let w = self.tensor(&format!("{name}.weight"))?;
            let b = if bias {
                Some(self.tensor(&format!("{name}.bias"))?)
            } else {
                None
            };
            return Ok(LinearSlot::new(Linear::from_weights(w, b)?));
        };
        let g = self.gguf_name(&format!("{name}.weight"))?.to_string();
        let (_, q) = load_nf4(self.f, self.hp, &g, bs, dq)?;
        let b = if bias {
            Some(self.tensor(&format!("{name}.bias"))?)
        } else {
            None
        };
        Ok(LinearSlot::new(Nf4Linear::new(Arc::new(q), b)?))
    }
}
