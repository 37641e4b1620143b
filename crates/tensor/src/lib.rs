//! rankfold-tensor: tensors with CPU storage (a GPU arm slots into [`Storage`]), define-by-run autograd,
//! memory accounting, nn building blocks, optimizers and safetensors I/O — the ground the LoRA trainer stands on.
//!
//! ```
//! use rankfold_tensor::{Device, DType, Tensor};
//! let w = Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 2), Device::Cpu)?.with_requires_grad(true);
//! let x = Tensor::from_vec(vec![1f32, -1.], (1, 2), Device::Cpu)?;
//! let loss = x.matmul(&w.t()?)?.sqr()?.sum_all()?;
//! let grads = loss.backward()?;
//! assert_eq!(grads.get(&w).unwrap().to_vec::<f32>()?, vec![-2., 2., -2., 2.]);
//! # Ok::<(), rankfold_tensor::Error>(())
//! ```

mod backprop;
mod cpu;
mod device;
mod dtype;
mod error;
mod layout;
pub mod linalg;
pub mod memory;
pub mod nn;
mod nn_ops;
pub mod nf4;
mod ops;
pub mod optim;
mod rng;
pub mod safetensors;
mod shape;
mod storage;
mod tensor;

pub use backprop::{grad_enabled, no_grad, GradStore, NoGradGuard};
pub use cpu::{CpuData, CpuStorage};
pub use device::Device;
pub use dtype::{num_traits_lite::FloatOps, DType, Float, WithDType};
pub use error::{Error, Result};
pub use layout::{Layout, StridedOffsets};
pub use linalg::{svd_f64, Svd, SvdF64};
pub use nf4::{Nf4Scales, Nf4Tensor};
pub use nn_ops::{causal_mask, padding_mask, rope_tables, CrossEntropyOpts, RopeStyle};
pub use rng::Rng;
pub use shape::Shape;
pub use storage::Storage;
pub use tensor::{Tensor, TensorId};

/// The README's library example, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
