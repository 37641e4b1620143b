//! [`RunSpec`]: everything a training or evaluation run needs — the model, the adapter, the data and the trainer
//! settings — read from a recipe TOML file (`[model]`, `[adapter]`, `[data]`, `[train]` tables) and overridden
//! field by field from command-line flags. Every field is optional while specs are merged; the accessors
//! ([`RunSpec::train_config`], [`RunSpec::data`], [`RunSpec::adapter_method`], [`RunSpec::model`]) fill the
//! defaults, check the values and name the offending key (`adapter.r`, `data.format`, …).
//! Unknown keys are errors that name the key.

use std::path::{Path, PathBuf};

use rankfold_adapters::adalora::AdaLoraConfig;
use rankfold_adapters::glora::GloraConfig;
use rankfold_adapters::lora::LoraConfig;
use rankfold_adapters::{AdapterMethod, TargetModules};
use rankfold_models::source::Nf4Options;
use serde::{Deserialize, Serialize};

use crate::trainer::TrainConfig;
use crate::{Error, Result};

/// A run as written in a recipe file or given as flags; `None` means "not given here".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// The base model.
    #[serde(default)]
    pub model: ModelSpec,
    /// The adapter to train.
    #[serde(default)]
    pub adapter: AdapterSpec,
    /// The data set.
    #[serde(default)]
    pub data: DataSpec,
    /// The trainer settings.
    #[serde(default)]
    pub train: TrainSpec,
}

/// `[model]`: where the base model is and whether its projections are quantized to NF4 (QLoRA).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A GGUF file or a Hugging Face folder.
    pub path: Option<PathBuf>,
    /// Quantize every attention and MLP projection to NF4 on load.
    pub nf4: Option<bool>,
    /// NF4 absmax block size (64).
    pub blocksize: Option<usize>,
    /// Quantize the absmax scales too (true).
    pub double_quant: Option<bool>,
}

/// The adapter methods a recipe can name (QLoRA is any of them over an NF4 base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodName {
    /// LoRA (with `use_rslora` for rsLoRA).
    Lora,
    /// LoRA-FA: A frozen, only B trained.
    LoraFa,
    /// AdaLoRA: SVD-form adapters whose ranks an allocator prunes during training.
    Adalora,
    /// GLoRA with one uniform support choice for every layer.
    Glora,
}

/// `[adapter]`: the method and its settings, or `config` naming a PEFT `adapter_config.json` to start from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    /// The method (lora).
    pub method: Option<MethodName>,
    /// A PEFT adapter_config.json whose settings are used (the fields below are then not allowed, except
    /// `method = "lora-fa"` for a LoRA config).
    pub config: Option<PathBuf>,
    /// Rank (8); for GLoRA the rank of its low-rank paths.
    pub r: Option<usize>,
    /// The scale numerator α (2·r): the update is scaled by α/r, or α/√r with `use_rslora`.
    pub alpha: Option<f64>,
    /// Module names (a list) or "all-linear" (all-linear); any other string is a regular expression.
    pub targets: Option<TargetModules>,
    /// Dropout on the adapter's input (0).
    pub dropout: Option<f64>,
    /// rsLoRA scaling α/√r (false).
    pub use_rslora: Option<bool>,
    /// AdaLoRA: the initial rank of every layer (12).
    pub init_r: Option<usize>,
    /// AdaLoRA: the average rank at the end of the budget schedule (8).
    pub target_r: Option<usize>,
    /// AdaLoRA: steps before pruning starts (0).
    pub tinit: Option<usize>,
    /// AdaLoRA: steps at the end with the final ranks fixed (0).
    pub tfinal: Option<usize>,
    /// AdaLoRA: steps between budget updates (1).
    #[serde(rename = "deltaT", alias = "delta_t")]
    pub delta_t: Option<usize>,
    /// AdaLoRA: weight of the orthogonality regularizer (0.5).
    pub orth_reg_weight: Option<f64>,
    /// GLoRA: the support of the A and B paths ("lora").
    pub config_a_b: Option<String>,
    /// GLoRA: the support of the C path ("lora").
    pub config_c: Option<String>,
    /// GLoRA: the support of the D and E paths ("constant").
    pub config_d_e: Option<String>,
}

/// The data formats: JSONL records, or the IMDB reviews as a labelling chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// `{"text"}` lines; the loss on every token.
    Text,
    /// `{"prompt","completion"}` lines as a ChatML user/assistant exchange; the loss on the completion.
    PromptCompletion,
    /// `{"messages":[{"role","content"}]}` lines in ChatML; the loss on the assistant turns.
    Messages,
    /// The IMDB `reviews.json` as "label this review positive or negative" chats.
    ImdbChat,
}

/// `[data]`: what to read and how to batch it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// The format (required).
    pub format: Option<DataFormat>,
    /// The data file (required): JSONL, or IMDB's reviews.json.
    pub path: Option<PathBuf>,
    /// A separate evaluation file in the same format (JSONL formats only); without it the last
    /// `eval_examples` records of `path` are held out.
    pub eval_path: Option<PathBuf>,
    /// Tokens per sequence; longer examples are cut (256).
    pub max_len: Option<usize>,
    /// IMDB: characters kept from each review (400).
    pub max_chars: Option<usize>,
    /// Training examples used (all; IMDB: 2000).
    pub train_examples: Option<usize>,
    /// Evaluation examples (IMDB: 500 from the test part; JSONL without `eval_path`: 0).
    pub eval_examples: Option<usize>,
    /// Examples per micro-batch (8).
    pub batch_size: Option<usize>,
    /// Examples per evaluation batch (16).
    pub eval_batch_size: Option<usize>,
    /// `text` only: pack documents end to end into `max_len` sequences (false).
    pub pack: Option<bool>,
    /// A system turn put before each prompt-completion exchange.
    pub system: Option<String>,
    /// Label words for accuracy on `messages` / `prompt-completion` data whose answers are one of them (IMDB
    /// uses negative, positive).
    pub labels: Option<Vec<String>>,
}

/// `[train]`: the trainer's settings (see [`TrainConfig`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Optimizer steps (required).
    pub steps: Option<usize>,
    /// Peak learning rate (2e-4).
    pub lr: Option<f64>,
    /// Linear warmup steps (0).
    pub warmup: Option<usize>,
    /// The cosine ends at min_lr_ratio·lr (0).
    pub min_lr_ratio: Option<f64>,
    /// AdamW weight decay (0).
    pub weight_decay: Option<f64>,
    /// Micro-batches per optimizer step (1).
    pub grad_accum: Option<usize>,
    /// Global gradient-norm clip (1.0; 0 turns clipping off).
    pub clip_norm: Option<f64>,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: Option<usize>,
    /// Checkpoint every this many steps (0: never).
    pub checkpoint_every: Option<usize>,
    /// Seed of the data order, adapter init and dropout (0).
    pub seed: Option<u64>,
    /// The output folder (required).
    pub output_dir: Option<PathBuf>,
    /// The optimizer: `adamw_torch`, `adamw_8bit`, `paged_adamw_32bit` or `paged_adamw_8bit` (adamw_torch).
    pub optim: Option<crate::trainer::OptimName>,
}

/// Overwrites each field of `$base` that `$over` gives.
macro_rules! overlay {
    ($base:expr, $over:expr; $($f:ident),* $(,)?) => {
        $( if $over.$f.is_some() { $base.$f = $over.$f; } )*
    };
}

impl RunSpec {
    /// Parses a recipe; `origin` (the file name) prefixes errors, which name the unknown or mistyped key.
    pub fn from_toml_str(origin: &str, text: &str) -> Result<RunSpec> {
        toml::from_str(text).map_err(|e| Error::Spec {
            origin: origin.into(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Reads a recipe file. Relative paths inside it (`model.path`, `data.path`, `data.eval_path`,
    /// `adapter.config`, `train.output_dir`) are taken relative to the folder holding the file, so a recipe works
    /// from any working folder; paths given by flags ([`RunSpec::overlay`]) stay relative to the working folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<RunSpec> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut spec = RunSpec::from_toml_str(&path.display().to_string(), &text)?;
        let dir = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut spec.model.path,
            &mut spec.data.path,
            &mut spec.data.eval_path,
            &mut spec.adapter.config,
            &mut spec.train.output_dir,
        ] {
            if let Some(p) = p.as_mut().filter(|p| p.is_relative()) {
                *p = dir.join(&*p);
            }
        }
        Ok(spec)
    }

    /// This spec with every field that `over` gives replaced by `over`'s value (flags over a recipe).
    pub fn overlay(mut self, over: RunSpec) -> RunSpec {
        overlay!(self.model, over.model; path, nf4, blocksize, double_quant);
        overlay!(self.adapter, over.adapter; method, config, r, alpha, targets, dropout, use_rslora, init_r,
            target_r, tinit, tfinal, delta_t, orth_reg_weight, config_a_b, config_c, config_d_e);
        overlay!(self.data, over.data; format, path, eval_path, max_len, max_chars, train_examples,
            eval_examples, batch_size, eval_batch_size, pack, system, labels);
        overlay!(self.train, over.train; steps, lr, warmup, min_lr_ratio, weight_decay, grad_accum, clip_norm,
            eval_every, checkpoint_every, seed, output_dir, optim);
        self
    }

    /// The model path and NF4 options, checked.
    pub fn model(&self, origin: &str) -> Result<(PathBuf, Option<Nf4Options>)> {
        let m = &self.model;
        let path = m
            .path
            .clone()
            .ok_or_else(|| spec_err(origin, "model.path", "is required"))?;
        if !m.nf4.unwrap_or(false) {
            if m.blocksize.is_some() || m.double_quant.is_some() {
                return Err(spec_err(
                    origin,
                    "model.blocksize",
                    "and model.double_quant need model.nf4 = true",
                ));
            }
            return Ok((path, None));
        }
        let d = Nf4Options::default();
        let blocksize = m.blocksize.unwrap_or(d.blocksize);
        if blocksize == 0 || blocksize % 2 != 0 {
            return Err(spec_err(
                origin,
                "model.blocksize",
                format!("= {blocksize} must be a positive even number"),
            ));
        }
        Ok((
            path,
            Some(Nf4Options {
                blocksize,
                double_quant: m.double_quant.unwrap_or(d.double_quant),
            }),
        ))
    }

    /// The data settings with defaults filled, checked.
    pub fn data(&self, origin: &str) -> Result<DataSettings> {
        let d = &self.data;
        let format = d
            .format
            .ok_or_else(|| spec_err(origin, "data.format", "is required"))?;
        let path = d
            .path
            .clone()
            .ok_or_else(|| spec_err(origin, "data.path", "is required"))?;
        let imdb = format == DataFormat::ImdbChat;
        let positive = |field: &str, v: Option<usize>, default: usize| -> Result<usize> {
            match v.unwrap_or(default) {
                0 => Err(spec_err(origin, field, "must be > 0")),
                n => Ok(n),
            }
        };
        if d.pack == Some(true) && format != DataFormat::Text {
            return Err(spec_err(
                origin,
                "data.pack",
                "applies to format = \"text\" only",
            ));
        }
        if imdb && d.eval_path.is_some() {
            return Err(spec_err(
                origin,
                "data.eval_path",
                "is not used with imdb-chat (its test part is)",
            ));
        }
        if !imdb && d.max_chars.is_some() {
            return Err(spec_err(
                origin,
                "data.max_chars",
                "applies to format = \"imdb-chat\" only",
            ));
        }
        if let Some(labels) = &d.labels {
            if imdb {
                return Err(spec_err(
                    origin,
                    "data.labels",
                    "is fixed for imdb-chat (negative, positive)",
                ));
            }
            if format == DataFormat::Text || labels.len() < 2 {
                return Err(spec_err(
                    origin,
                    "data.labels",
                    "needs two or more words and chat data",
                ));
            }
        }
        Ok(DataSettings {
            format,
            path,
            eval_path: d.eval_path.clone(),
            max_len: positive("data.max_len", d.max_len, 256)?,
            max_chars: positive("data.max_chars", d.max_chars, 400)?,
            train_examples: if imdb {
                Some(positive("data.train_examples", d.train_examples, 2000)?)
            } else {
                d.train_examples
            },
            eval_examples: d.eval_examples.unwrap_or(if imdb { 500 } else { 0 }),
            batch_size: positive("data.batch_size", d.batch_size, 8)?,
            eval_batch_size: positive("data.eval_batch_size", d.eval_batch_size, 16)?,
            pack: d.pack.unwrap_or(false),
            system: d.system.clone(),
            labels: if imdb {
                Some(
                    crate::data::imdb::SENTIMENT_WORDS
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                )
            } else {
                d.labels.clone()
            },
        })
    }

    /// The trainer config with defaults filled, checked.
    pub fn train_config(&self, origin: &str) -> Result<TrainConfig> {
        let t = &self.train;
        let steps = t
            .steps
            .ok_or_else(|| spec_err(origin, "train.steps", "is required"))?;
        let out = t
            .output_dir
            .clone()
            .ok_or_else(|| spec_err(origin, "train.output_dir", "is required"))?;
        let mut c = TrainConfig::new(steps, t.lr.unwrap_or(2e-4), out);
        c.warmup = t.warmup.unwrap_or(0);
        c.min_lr_ratio = t.min_lr_ratio.unwrap_or(0.0);
        c.weight_decay = t.weight_decay.unwrap_or(0.0);
        c.grad_accum = t.grad_accum.unwrap_or(1);
        c.clip_norm = match t.clip_norm.unwrap_or(1.0) {
            0.0 => None,
            v => Some(v),
        };
        c.eval_every = t.eval_every.unwrap_or(0);
        c.checkpoint_every = t.checkpoint_every.unwrap_or(0);
        c.seed = t.seed.unwrap_or(0);
        c.optim = t.optim.unwrap_or_default();
        c.validate().map_err(|e| Error::Spec {
            origin: origin.into(),
            message: match e {
                Error::Config(m) => m,
                other => other.to_string(),
            },
        })?;
        Ok(c)
    }

    /// The adapter method the spec describes (`total_steps` feeds AdaLoRA's schedule).
    pub fn adapter_method(
        &self,
        origin: &str,
        total_steps: usize,
    ) -> Result<Box<dyn AdapterMethod>> {
        let a = &self.adapter;
        let method = a.method.unwrap_or(MethodName::Lora);
        if let Some(path) = &a.config {
            return self.method_from_file(origin, path, method);
        }
        let only = |allowed: &[MethodName], field: &str, given: bool| -> Result<()> {
            if given && !allowed.contains(&method) {
                let m = serde_json::to_value(method)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from));
                return Err(spec_err(
                    origin,
                    field,
                    format!("does not apply to method {}", m.unwrap_or_default()),
                ));
            }
            Ok(())
        };
        use MethodName::*;
        only(&[Lora, LoraFa, Glora], "adapter.r", a.r.is_some())?;
        only(&[Lora, LoraFa, Adalora], "adapter.alpha", a.alpha.is_some())?;
        only(
            &[Lora, LoraFa, Adalora],
            "adapter.dropout",
            a.dropout.is_some(),
        )?;
        only(
            &[Lora, LoraFa, Adalora],
            "adapter.use_rslora",
            a.use_rslora.is_some(),
        )?;
        for (f, v) in [
            ("init_r", a.init_r),
            ("target_r", a.target_r),
            ("tinit", a.tinit),
            ("tfinal", a.tfinal),
            ("deltaT", a.delta_t),
        ] {
            only(&[Adalora], &format!("adapter.{f}"), v.is_some())?;
        }
        only(
            &[Adalora],
            "adapter.orth_reg_weight",
            a.orth_reg_weight.is_some(),
        )?;
        for (f, v) in [
            ("config_a_b", &a.config_a_b),
            ("config_c", &a.config_c),
            ("config_d_e", &a.config_d_e),
        ] {
            only(&[Glora], &format!("adapter.{f}"), v.is_some())?;
        }
        let targets = a.targets.clone().unwrap_or(TargetModules::AllLinear);
        let r = a.r.unwrap_or(8);
        if r == 0 {
            return Err(spec_err(origin, "adapter.r", "must be > 0"));
        }
        let alpha = a.alpha.unwrap_or(2.0 * r as f64);
        let dropout = a.dropout.unwrap_or(0.0);
        if !(0.0..1.0).contains(&dropout) {
            return Err(spec_err(
                origin,
                "adapter.dropout",
                format!("= {dropout} is outside [0, 1)"),
            ));
        }
        let checked = |e: rankfold_adapters::Error| Error::Spec {
            origin: origin.into(),
            message: format!("[adapter] {e}"),
        };
        Ok(match method {
            Lora | LoraFa => {
                let mut c = LoraConfig::new(targets)
                    .with_rank(r, alpha)
                    .with_lora_fa(method == LoraFa);
                c.lora_dropout = dropout;
                c.use_rslora = a.use_rslora.unwrap_or(false);
                let v = serde_json::to_value(&c)
                    .map_err(|e| spec_err(origin, "adapter", e.to_string()))?;
                Box::new(
                    LoraConfig::from_peft_json(&v)
                        .map_err(checked)?
                        .with_lora_fa(method == LoraFa),
                )
            }
            Adalora => {
                let mut c = AdaLoraConfig::new(targets, total_steps);
                c.init_r = a.init_r.unwrap_or(c.init_r);
                c.target_r = a.target_r.unwrap_or(c.target_r);
                c.tinit = a.tinit.unwrap_or(0);
                c.tfinal = a.tfinal.unwrap_or(0);
                c.delta_t = a.delta_t.unwrap_or(c.delta_t);
                c.orth_reg_weight = a.orth_reg_weight.unwrap_or(c.orth_reg_weight);
                c.lora_alpha = a.alpha.unwrap_or(c.lora_alpha);
                c.lora_dropout = dropout;
                c.use_rslora = a.use_rslora.unwrap_or(false);
                let v = serde_json::to_value(&c)
                    .map_err(|e| spec_err(origin, "adapter", e.to_string()))?;
                rankfold_adapters::peft::method_from_config(&v).map_err(checked)?
            }
            Glora => {
                use rankfold_adapters::glora::Support;
                let mut v = serde_json::to_value(GloraConfig::new(
                    targets,
                    r,
                    Support::None,
                    Support::None,
                    Support::None,
                ))
                .map_err(|e| spec_err(origin, "adapter", e.to_string()))?;
                let fields = [
                    ("config_A_B", &a.config_a_b, "lora"),
                    ("config_C", &a.config_c, "lora"),
                    ("config_D_E", &a.config_d_e, "constant"),
                ];
                for (f, given, default) in fields {
                    v[f] =
                        serde_json::Value::String(given.clone().unwrap_or_else(|| default.into()));
                }
                rankfold_adapters::peft::method_from_config(&v).map_err(checked)?
            }
        })
    }

    /// The method of a PEFT adapter_config.json named by `adapter.config`.
    fn method_from_file(
        &self,
        origin: &str,
        path: &Path,
        method: MethodName,
    ) -> Result<Box<dyn AdapterMethod>> {
        let a = &self.adapter;
        let extra = a.r.is_some()
            || a.alpha.is_some()
            || a.targets.is_some()
            || a.dropout.is_some()
            || a.use_rslora.is_some()
            || a.init_r.is_some()
            || a.target_r.is_some()
            || a.tinit.is_some()
            || a.tfinal.is_some()
            || a.delta_t.is_some()
            || a.orth_reg_weight.is_some()
            || a.config_a_b.is_some()
            || a.config_c.is_some()
            || a.config_d_e.is_some();
        if extra {
            return Err(spec_err(
                origin,
                "adapter.config",
                "takes every setting from the file: give no other [adapter] key but method",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            source_name: path.display().to_string(),
            line: e.line(),
            message: e.to_string(),
        })?;
        let in_file = |e: rankfold_adapters::Error| Error::Spec {
            origin: path.display().to_string(),
            message: e.to_string(),
        };
        match method {
            MethodName::LoraFa => Ok(Box::new(
                LoraConfig::from_peft_json(&v)
                    .map_err(in_file)?
                    .with_lora_fa(true),
            )),
            _ => rankfold_adapters::peft::method_from_config(&v).map_err(in_file),
        }
    }
}

/// A [`DataSpec`] with its defaults filled and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSettings {
    pub format: DataFormat,
    pub path: PathBuf,
    pub eval_path: Option<PathBuf>,
    pub max_len: usize,
    pub max_chars: usize,
    pub train_examples: Option<usize>,
    pub eval_examples: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub pack: bool,
    pub system: Option<String>,
    pub labels: Option<Vec<String>>,
}

/// A spec error naming `field`.
fn spec_err(origin: &str, field: &str, what: impl std::fmt::Display) -> Error {
    Error::Spec {
        origin: origin.into(),
        message: format!("`{field}` {what}"),
    }
}
