//! rankfold-adapters: low-rank adapters injected into any model that lists its linear layers by module path
//! ([`rankfold_tensor::nn::LinearModel`]) — LoRA (with rsLoRA, PiSSA and LoRA-FA), QLoRA (any method over an
//! NF4 base), GLoRA and AdaLoRA — with merging and PEFT-compatible adapter directories.
//!
//! The pieces: [`config`] (PEFT's shared config fields), [`target`] (which module paths a config picks),
//! [`layer`] (the method-agnostic [`AdapterLayer`] / [`AdapterMethod`] traits), [`model`] ([`PeftModel`]:
//! add / switch / disable / merge / unload / save / load, the trainer hooks), [`peft`] (directory I/O), and one
//! module per method.

pub mod adalora;
pub mod config;
pub mod glora;
mod error;
pub mod layer;
pub mod lora;
pub mod lora_fa;
pub mod model;
pub mod peft;
pub mod target;
#[doc(hidden)]
pub mod testing;

pub use config::{CommonConfig, TargetModules};
pub use error::{Error, Result};
pub use layer::{AdapterLayer, AdapterMethod, Method};
pub use model::{PeftModel, TrainableReport};
