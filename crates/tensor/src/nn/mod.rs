//! Neural-network building blocks: parameter initializers ([`init`]) and the layers [`Linear`], [`Embedding`],
//! [`LayerNorm`], [`RmsNorm`] and [`Dropout`], each a thin owner of its parameters over the crate's fused ops.
//!
//! Parameters are tensor handles. A trainable parameter is a leaf made with `with_requires_grad(true)`; a
//! frozen one carries no autograd node, so no op records anything for it and `backward` never returns a
//! gradient for it. Switching a layer between the two (`set_trainable`) replaces the handles (new
//! [`crate::TensorId`]s over the same storage), so fetch `parameters()` again after switching.

mod dropout;
mod embedding;
pub mod init;
mod linear;
mod linear_layer;
mod norm;

pub use dropout::Dropout;
pub use embedding::Embedding;
pub use init::Init;
pub use linear::Linear;
pub use linear_layer::{LinearLayer, LinearModel, LinearSlot, Nf4Linear};
pub use norm::{LayerNorm, RmsNorm};

use crate::Tensor;

/// Prefixes each parameter name with `prefix` and a dot, to name the parameters of nested layers
/// (`prefixed("layers.0.q_proj", lin.parameters())` gives `layers.0.q_proj.weight`, …).
pub fn prefixed(prefix: &str, params: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    params.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)).collect()
}

/// The handle `t` as a trainable leaf (`on`) or frozen (`!on`); unchanged (same id) when already so.
pub(crate) fn with_trainable(t: &Tensor, on: bool) -> Tensor {
    if t.requires_grad() == on && (on || !t.tracks_grad()) {
        return t.clone();
    }
    t.with_requires_grad(on)
}

/// Checks that `t` is a floating-point tensor, naming the layer and parameter otherwise.
pub(crate) fn check_float(op: &'static str, name: &str, t: &Tensor) -> crate::Result<()> {
    if !t.dtype().is_float() {
        return Err(crate::Error::Parameter { op, name: name.into(), msg: format!("dtype {} is not a float type", t.dtype()) });
    }
    Ok(())
}
