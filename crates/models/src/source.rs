//! One entry point for "a model at this path": a Hugging Face folder or a llama.cpp GGUF file, loaded as a
//! [`Llama`] (f32, or with every projection in NF4 for QLoRA) together with its [`Tokenizer`]. The command line,
//! the trainer's recipes and the demo all load models through here.

use std::path::{Path, PathBuf};

use rankfold_tensor::nn::{Linear, Nf4Linear};
use rankfold_tensor::{DType, Device};

use crate::gguf::{GgufFile, GgufTokenizer};
use crate::llama::Llama;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face folder: config.json, model.safetensors (or a sharded index) and tokenizer.json.
    HfDir(PathBuf),
    /// A llama.cpp GGUF file with its tokenizer in the metadata.
    Gguf(PathBuf),
}

impl ModelSource {
    /// A folder is read as a Hugging Face folder, a file must be GGUF (checked by its magic bytes, so the
    /// error names the file when it is something else).
    pub fn from_path(path: impl AsRef<Path>) -> Result<ModelSource> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            path: shown.clone(),
            source,
        })?;
        if meta.is_dir() {
            return Ok(ModelSource::HfDir(path.to_path_buf()));
        }
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
        match read {
            Ok(()) if &magic == b"GGUF" => Ok(ModelSource::Gguf(path.to_path_buf())),
            Ok(()) | Err(_) => Err(Error::GgufHeader {
                path: shown,
                field: "magic".into(),
                msg: "a model path must be a Hugging Face folder or a GGUF file".into(),
            }),
        }
    }

    /// The path given.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::HfDir(p) | ModelSource::Gguf(p) => p,
        }
    }
}

/// NF4 settings for loading a base model quantized (QLoRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4Options {
    /// Elements per absmax block (bitsandbytes' default for QLoRA is 64).
    pub blocksize: usize,
    /// Quantize the absmax scales too (QLoRA's double quantization).
    pub double_quant: bool,
}

impl Default for Nf4Options {
    fn default() -> Self {
        Nf4Options {
            blocksize: 64,
            double_quant: true,
        }
    }
}

/// Loads the Llama model at `source` on the CPU in f32, with every attention and MLP projection quantized to
/// NF4 when `nf4` is given (the embeddings, norms and LM head stay f32). GGUF files go straight to NF4 block by
/// block; a Hugging Face folder is loaded in f32 and its projections quantized one at a time.
pub fn load_llama(source: &ModelSource, nf4: Option<Nf4Options>) -> Result<Llama> {
    match (source, nf4) {
        (ModelSource::Gguf(p), None) => Llama::from_gguf(p),
        (ModelSource::Gguf(p), Some(o)) => Llama::from_gguf_nf4(p, o.blocksize, o.double_quant),
        (ModelSource::HfDir(d), None) => Llama::from_hf_dir(d, DType::F32, Device::Cpu),
        (ModelSource::HfDir(d), Some(o)) => {
            let mut model = Llama::from_hf_dir(d, DType::F32, Device::Cpu)?;
            quantize_projections(&mut model, o)?;
            Ok(model)
        }
    }
}

/// Replaces every dense projection of `model` (not the LM head) with its NF4 quantization.
pub fn quantize_projections(model: &mut Llama, o: Nf4Options) -> Result<()> {
    use rankfold_tensor::nn::LinearModel;
    for (name, slot) in model.linear_slots() {
        if name == "lm_head" {
            continue;
        }
        if let Some(lin) = slot.downcast_ref::<Linear>() {
            let q = Nf4Linear::quantize(lin, o.blocksize, o.double_quant)?;
            *slot = rankfold_tensor::nn::LinearSlot::new(q);
        }
    }
    Ok(())
}

/// The tokenizer of the model at `source`: tokenizer.json in a folder, the BPE metadata of a GGUF file.
pub fn load_tokenizer(source: &ModelSource) -> Result<Tokenizer> {
    match source {
        ModelSource::HfDir(d) => Tokenizer::from_file(&d.join("tokenizer.json")),
        ModelSource::Gguf(p) => Tokenizer::from_gguf(&GgufTokenizer::from_gguf(&GgufFile::open(p)?)?),
    }
}
