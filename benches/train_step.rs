//! Criterion bench of one LoRA training step on the CPU: forward, backward and AdamW on a randomly initialized
//! Llama-shaped model (6 layers, hidden 512, 8 heads with 8 KV heads, intermediate 1376, vocab 8192, untied
//! embeddings) with r = 8 LoRA on q_proj and v_proj, f32, batch 8 × sequence 128.
//!
//! The loss is the mean next-token cross-entropy over all 8·128 positions (random tokens, each row's targets
//! are its tokens shifted by one, the last wrapping around), so the LM head runs on every position as in
//! language-model fine-tuning. Throughput is tokens per step, which `cargo xtask bench` shows as tokens/s.
//! Before timing, one step is measured with `rankfold_tensor::memory`: the peak of live tensor bytes during
//! the step goes to stderr and to `$CRITERION_HOME/train_step/peak_memory.json` for the xtask table.
//! xtask/peers/train_step_peers.py runs the same step in PyTorch + PEFT.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rankfold_adapters::lora::LoraConfig;
use rankfold_adapters::{PeftModel, TargetModules};
use rankfold_models::llama::{Llama, LlamaConfig};
use rankfold_tensor::optim::{AdamW, AdamWConfig, Optimizer};
use rankfold_tensor::{memory, CrossEntropyOpts, DType, Device, Tensor};

#[path = "common/config.rs"]
mod config;

/// Batch and sequence length of a step.
const BATCH: usize = 8;
const SEQ: usize = 128;
/// LoRA rank and alpha (PEFT's default alpha is 8; 16 = 2r is the common choice and what the peer uses).
const RANK: usize = 8;
const ALPHA: f64 = 16.0;

/// The model shape of the bench.
fn model_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 8192,
        hidden_size: 512,
        intermediate_size: 1376,
        num_hidden_layers: 6,
        num_attention_heads: 8,
        num_key_value_heads: 8,
        head_dim: 64,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: false,
        max_position_embeddings: 2048,
        attention_bias: false,
        mlp_bias: false,
    }
}

/// The model with its adapter, the optimizer over the adapter's tensors, the tokens and the targets.
struct Setup {
    model: PeftModel<Llama>,
    opt: AdamW,
    tokens: Tensor,
    targets: Tensor,
}

fn setup() -> Result<Setup> {
    let cfg = model_config();
    let llama = Llama::random(&cfg, 0x7472_6169, DType::F32, Device::Cpu)?;
    let mut model = PeftModel::new(llama, 0x6c6f_7261);
    let targets = TargetModules::List(vec!["q_proj".into(), "v_proj".into()]);
    // PEFT's default init (B = 0); the timed steps come after the first, so B is no longer zero by then.
    let lora = LoraConfig::new(targets).with_rank(RANK, ALPHA);
    model.add_adapter("default", Box::new(lora))?;
    let opt = AdamW::new(
        model.parameters(),
        AdamWConfig {
            lr: 1e-4,
            ..AdamWConfig::default()
        },
    )?;
    let mut rng = rankfold_tensor::Rng::new(0x746f_6b73);
    let ids: Vec<u32> = (0..BATCH * SEQ)
        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
        .collect();
    let shifted: Vec<i64> = (0..BATCH * SEQ)
        .map(|i| ids[i / SEQ * SEQ + (i % SEQ + 1) % SEQ] as i64)
        .collect();
    let tokens = Tensor::from_vec(ids, (BATCH, SEQ), Device::Cpu)?;
    let targets = Tensor::from_vec(shifted, (BATCH, SEQ), Device::Cpu)?;
    Ok(Setup {
        model,
        opt,
        tokens,
        targets,
    })
}

/// One training step; returns the loss.
fn step(s: &mut Setup) -> Result<f32> {
    let m = s.model.model();
    let hidden = m.forward_hidden(&s.tokens, None)?;
    let loss = m
        .logits(&hidden)?
        .cross_entropy(&s.targets, CrossEntropyOpts::default())?;
    let grads = loss.backward()?;
    s.opt.step(&grads)?;
    Ok(loss.to_vec_f32()?[0])
}

/// Times the phases of a few steps (forward with the loss, backward, AdamW) and prints their medians to
/// stderr: where a step's time goes, for the bench's readers.
fn print_phases(s: &mut Setup) -> Result<()> {
    let mut times: [Vec<f64>; 3] = Default::default();
    for _ in 0..3 {
        let t0 = Instant::now();
        let m = s.model.model();
        let hidden = m.forward_hidden(&s.tokens, None)?;
        let loss = m
            .logits(&hidden)?
            .cross_entropy(&s.targets, CrossEntropyOpts::default())?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        s.opt.step(&grads)?;
        let t3 = Instant::now();
        for (v, d) in times.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
            v.push(d.as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [f, b, o] = &mut times;
    eprintln!(
        "train_step: forward {:.1} ms, backward {:.1} ms, AdamW {:.2} ms (medians of 3 steps)",
        median(f),
        median(b),
        median(o)
    );
    Ok(())
}

/// Runs one step under a fresh peak and records the peak of live tensor bytes (the model and optimizer state
/// included), in bytes, beside criterion's results.
fn record_peak_memory(s: &mut Setup) -> Result<()> {
    memory::reset_peak(Device::Cpu);
    step(s)?;
    let st = memory::stats(Device::Cpu);
    eprintln!(
        "train_step: peak tensor memory {:.1} MB (live after the step {:.1} MB)",
        st.peak_bytes as f64 / 1e6,
        st.live_bytes as f64 / 1e6
    );
    let dir = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let dir = dir.join("train_step");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = format!(
        "{{\"peak_bytes\": {}, \"live_bytes\": {}}}\n",
        st.peak_bytes, st.live_bytes
    );
    let path = dir.join("peak_memory.json");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn train_step(c: &mut Criterion) {
    let mut s = setup().expect("train_step setup");
    // The first step allocates AdamW's moments; it is taken before the memory step so that the latter is steady.
    let first = step(&mut s).expect("first training step");
    assert!(
        first.is_finite() && (first - (8192f32).ln()).abs() < 1.0,
        "the first loss {first} is not near ln(vocab)"
    );
    record_peak_memory(&mut s).expect("peak memory step");
    print_phases(&mut s).expect("phase timing");
    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements((BATCH * SEQ) as u64));
    group.sample_size(10);
    group.bench_function(
        BenchmarkId::new("lora_f32", format!("{BATCH}x{SEQ}")),
        |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(step(&mut s).expect("training step"));
                }
                start.elapsed()
            })
        },
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = config::criterion();
    targets = train_step
}
criterion_main!(benches);
