//! Criterion bench of one AdamW step on the CPU over 16.8 M f32 parameters: 16 tensors of [1024, 1024], with f32
//! moments (`adamw/f32`) and with bitsandbytes' 8-bit blockwise moments (`adamw/8bit`, `AdamW8bit`).
//!
//! The id's shape `16x1024x1024` reads as tensors × rows × cols. Throughput is parameters per step, which
//! `cargo xtask bench` turns into Gparam/s. An f32 step streams 28 B per parameter (read p, g, m, v; write p, m,
//! v), about 470 MB; an 8-bit step 10 B (read p, g and two codes; write p and two codes), about 170 MB: both far
//! beyond any cache, so no rotation is needed.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rankfold_tensor::optim::{AdamW, AdamW8bit, AdamW8bitConfig, AdamWConfig, Optimizer};
use rankfold_tensor::{DType, Device, GradStore, Rng};

#[path = "common/config.rs"]
mod config;

/// The parameters: this many tensors of [ROWS, COLS].
const TENSORS: usize = 16;
const ROWS: usize = 1024;
const COLS: usize = 1024;

/// An optimizer (`eight`: AdamW8bit, else AdamW, default hyperparameters) over random parameters, one gradient
/// for each, one step taken.
fn setup(eight: bool) -> Result<(Box<dyn Optimizer>, GradStore)> {
    let mut rng = Rng::new(0x6164_616d);
    let mut params = Vec::with_capacity(TENSORS);
    let mut grads = GradStore::new();
    for i in 0..TENSORS {
        let p = rng.uniform_tensor(-1.0, 1.0, (ROWS, COLS), DType::F32, Device::Cpu)?.with_requires_grad(true);
        grads.insert(&p, rng.uniform_tensor(-1e-2, 1e-2, (ROWS, COLS), DType::F32, Device::Cpu)?);
        params.push((format!("layers.{i}.weight"), p));
    }
    let mut opt: Box<dyn Optimizer> = if eight {
        Box::new(AdamW8bit::new(params, AdamW8bitConfig::default())?)
    } else {
        Box::new(AdamW::new(params, AdamWConfig::default())?)
    };
    // The first step allocates the moments; it is taken here so that every timed step is a steady one.
    opt.step(&grads)?;
    Ok((opt, grads))
}

fn adamw(c: &mut Criterion) {
    let mut group = c.benchmark_group("adamw");
    group.throughput(Throughput::Elements((TENSORS * ROWS * COLS) as u64));
    for (id, eight) in [("f32", false), ("8bit", true)] {
        let (mut opt, grads) = setup(eight).expect("optimizer setup");
        group.bench_function(BenchmarkId::new(id, format!("{TENSORS}x{ROWS}x{COLS}")), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    opt.step(black_box(&grads)).expect("optimizer step");
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config::criterion();
    targets = adamw
}
criterion_main!(benches);
