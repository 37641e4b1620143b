//! rankfold-models: pretrained models and their loading — the GGUF reader (`gguf`: metadata, tensor infos,
//! dequantization to f32 or straight to NF4, llama.cpp's Q/K row permutation undone, Llama names and
//! hyperparameters), the Llama decoder (`llama`: Hugging Face folders or GGUF, KV-cache generation) and a byte-level
//! BPE `tokenizer` (tokenizer.json or GGUF metadata), `source`, which loads either kind of model with its
//! tokenizer, optionally quantized to NF4, and the BERT encoder (`bert`) with its WordPiece tokenizer (`wordpiece`).

pub mod bert;
mod error;
pub mod gguf;
mod hf_config;
pub mod llama;
pub mod source;
pub mod tokenizer;
pub mod wordpiece;

pub use error::{Error, Result};
