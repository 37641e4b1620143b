//! The Llama decoder (`Llama`, Hugging Face's `LlamaForCausalLM`): its config, forward pass with a KV cache,
//! greedy / top-p generation, and loading from Hugging Face folders or GGUF files.

mod config;
mod generate;
mod load;
mod model;

pub use config::LlamaConfig;
pub use generate::{sample_token, GenerateOptions};
pub use model::{KvCache, Llama, LlamaAttention, LlamaBlock, LlamaMlp};
