//! The Llama decoder (`Llama`, Hugging Face's `LlamaForCausalLM`): its config, forward pass with a KV cache,
//! greedy / top-p generation, loading from Hugging Face folders or GGUF files, and random init for benches and tests.

mod config;
mod export;
mod generate;
mod init;
mod load;
mod model;

pub use config::LlamaConfig;
pub use generate::{sample_token, GenerateOptions};
pub use init::INITIALIZER_RANGE;
pub use model::{KvCache, Llama, LlamaAttention, LlamaBlock, LlamaMlp};
