//! The Llama decoder (`Llama`, Hugging Face's `LlamaForCausalLM`): its config, forward pass with a KV cache, and
//! loading from Hugging Face folders or GGUF files.

mod config;
mod load;
mod model;

pub use config::LlamaConfig;
pub use model::{KvCache, Llama, LlamaAttention, LlamaBlock, LlamaMlp};
