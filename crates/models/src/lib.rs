//! rankfold-models: loading pretrained models; today the GGUF reader (`gguf`): metadata, tensor infos, dequantization
//! to f32 or straight to NF4, llama.cpp's Q/K row permutation undone, and Llama names and hyperparameters.

mod error;
pub mod gguf;
pub mod llama;
pub mod tokenizer;

pub use error::{Error, Result};
