//! Test models shared by every method's tests: [`TestModel`], a small stack of attention- and MLP-shaped blocks
//! whose linear layers sit at Hugging Face-like paths (`model.layers.0.self_attn.q_proj`,
//! `model.layers.0.mlp.down_proj`, `lm_head`), with bias and bias-free layers; and [`SingleLinear`], one layer
//! at a chosen path (for the PEFT reference cases).

use rankfold_tensor::nn::{Linear, LinearModel, LinearSlot};
use rankfold_tensor::{DType, Device, Result, Rng, Tensor};

/// The sizes of a [`TestModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestModelConfig {
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub vocab: usize,
}

impl Default for TestModelConfig {
    /// Awkward sizes: no dimension is a multiple of 8.
    fn default() -> Self {
        TestModelConfig {
            hidden: 13,
            ffn: 21,
            layers: 2,
            vocab: 11,
        }
    }
}

/// One block: `h += o(silu(q(h)) ⊙ v(h) + k(h))`, then `h += down(silu(up(h)))`. q, k, v carry a bias; o, up,
/// down do not.
#[derive(Debug)]
pub struct Block {
    pub q_proj: LinearSlot,
    pub k_proj: LinearSlot,
    pub v_proj: LinearSlot,
    pub o_proj: LinearSlot,
    pub up_proj: LinearSlot,
    pub down_proj: LinearSlot,
}

/// A small model over [`LinearSlot`]s: `x [.., hidden]` → blocks → `lm_head` (with bias) → `[.., vocab]`.
#[derive(Debug)]
pub struct TestModel {
    pub config: TestModelConfig,
    pub blocks: Vec<Block>,
    pub lm_head: LinearSlot,
}

fn frozen(inf: usize, out: usize, bias: bool, rng: &mut Rng) -> Result<LinearSlot> {
    Ok(LinearSlot::new(
        Linear::new(inf, out, bias, rng, DType::F32, Device::Cpu)?.freeze(),
    ))
}

impl TestModel {
    /// A model with frozen f32 weights drawn from `seed` (PyTorch's default Linear init).
    pub fn new(config: TestModelConfig, seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let (d, f) = (config.hidden, config.ffn);
        let mut blocks = Vec::new();
        for _ in 0..config.layers {
            blocks.push(Block {
                q_proj: frozen(d, d, true, &mut rng)?,
                k_proj: frozen(d, d, true, &mut rng)?,
                v_proj: frozen(d, d, true, &mut rng)?,
                o_proj: frozen(d, d, false, &mut rng)?,
                up_proj: frozen(d, f, false, &mut rng)?,
                down_proj: frozen(f, d, false, &mut rng)?,
            });
        }
        let lm_head = frozen(d, config.vocab, true, &mut rng)?;
        Ok(TestModel {
            config,
            blocks,
            lm_head,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for b in &self.blocks {
            let a = b
                .q_proj
                .forward(&h)?
                .silu()?
                .mul(&b.v_proj.forward(&h)?)?
                .add(&b.k_proj.forward(&h)?)?;
            h = h.add(&b.o_proj.forward(&a)?)?;
            let m = b.down_proj.forward(&b.up_proj.forward(&h)?.silu()?)?;
            h = h.add(&m)?;
        }
        self.lm_head.forward(&h)
    }

    /// The number of base parameters (weights and biases of every linear layer).
    pub fn base_parameter_count(&self) -> usize {
        let (d, f, v) = (self.config.hidden, self.config.ffn, self.config.vocab);
        self.config.layers * (3 * (d * d + d) + d * d + 2 * d * f) + d * v + v
    }
}

impl LinearModel for TestModel {
    fn linear_slots(&mut self) -> Vec<(String, &mut LinearSlot)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), &mut b.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut b.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut b.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut b.o_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut b.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut b.down_proj));
        }
        out.push(("lm_head".to_string(), &mut self.lm_head));
        out
    }
}

/// One linear layer at module path `path`.
#[derive(Debug)]
pub struct SingleLinear {
    pub path: String,
    pub slot: LinearSlot,
}

impl SingleLinear {
    pub fn new(path: &str, layer: Linear) -> Self {
        SingleLinear {
            path: path.into(),
            slot: LinearSlot::new(layer),
        }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.slot.forward(x)
    }
}

impl LinearModel for SingleLinear {
    fn linear_slots(&mut self) -> Vec<(String, &mut LinearSlot)> {
        vec![(self.path.clone(), &mut self.slot)]
    }
}

/// Linear layers at arbitrary module paths, each applied on its own (the PEFT reference cases).
#[derive(Debug, Default)]
pub struct PathModel {
    pub slots: Vec<(String, LinearSlot)>,
}

impl PathModel {
    pub fn push(&mut self, path: &str, layer: impl rankfold_tensor::nn::LinearLayer) {
        self.slots.push((path.into(), LinearSlot::new(layer)));
    }
    /// The slot at `path`, if any.
    pub fn slot(&self, path: &str) -> Option<&LinearSlot> {
        self.slots.iter().find(|(p, _)| p == path).map(|(_, s)| s)
    }
}

impl LinearModel for PathModel {
    fn linear_slots(&mut self) -> Vec<(String, &mut LinearSlot)> {
        self.slots.iter_mut().map(|(p, s)| (p.clone(), s)).collect()
    }
}

/// `max |a − b| / (abs + rel·|b|)` ≤ 1 elementwise, as an assertion with the worst element in the message.
pub fn assert_close(a: &Tensor, b: &Tensor, abs: f64, rel: f64, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let (av, bv) = (
        a.to_vec::<f64>().expect("f64 read"),
        b.to_vec::<f64>().expect("f64 read"),
    );
    for (i, (x, y)) in av.iter().zip(&bv).enumerate() {
        // Non-finite values must match in kind: NaN with NaN, +∞ with +∞, −∞ with −∞.
        let close = if x.is_finite() && y.is_finite() {
            (x - y).abs() <= abs + rel * y.abs()
        } else {
            (x.is_nan() && y.is_nan()) || x == y
        };
        assert!(close, "{what}: element {i}: {x} vs {y}");
    }
}
