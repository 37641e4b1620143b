//! rankfold-adapters: low-rank adapters injected into any model that lists its linear layers by module path
//! ([`rankfold_tensor::nn::LinearModel`]) — LoRA (with rsLoRA, PiSSA and LoRA-FA), QLoRA (any method over an
//! NF4 base), GLoRA and AdaLoRA — with merging and PEFT-compatible adapter directories.
//!
//! The pieces: [`config`] (PEFT's shared config fields), [`target`] (which module paths a config picks),
//! [`layer`] (the method-agnostic [`AdapterLayer`] / [`AdapterMethod`] traits), [`model`] ([`PeftModel`]:
//! add / switch / disable / merge / unload / save / load, the trainer hooks), [`peft`] (directory I/O), and one
//! module per method.
//!
//! ```
//! use rankfold_adapters::lora::LoraConfig;
//! use rankfold_adapters::testing::{TestModel, TestModelConfig};
//! use rankfold_adapters::{PeftModel, TargetModules};
//! use rankfold_tensor::{DType, Device, Rng};
//!
//! let model = TestModel::new(TestModelConfig::default(), 0)?;
//! let mut pm = PeftModel::new(model, 1);
//! let cfg = LoraConfig::new(TargetModules::list(&["q_proj", "v_proj"])).with_rank(4, 8.0);
//! let paths = pm.add_adapter("default", Box::new(cfg))?; // model.layers.{0,1}.self_attn.{q,v}_proj
//! assert_eq!(paths.len(), 4);
//! let x = Rng::new(2).normal_tensor(0.0, 1.0, (3, 13), DType::F32, Device::Cpu)?;
//! let loss = pm.model().forward(&x)?.sqr()?.sum_all()?;
//! let grads = loss.backward()?;
//! assert!(pm.parameters().iter().all(|(_, p)| grads.get(p).is_some())); // only the adapter trains
//! println!("{}", pm.trainable_report());
//! let merged = pm.merge_and_unload()?; // the plain model, adapters folded into its weights
//! # let _ = merged;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
