//! Determinism as a promise: a LoRA training run on a Llama large enough that its GEMMs, reductions and optimizer
//! updates are split across threads gives the same losses and the same adapter bit for bit on a pool of one
//! thread and on a pool of two (the `rankfold train` binary is checked across processes in `tests/it/cli/train.rs`).

use anyhow::{ensure, Result};
use rankfold_adapters::lora::LoraConfig;
use rankfold_adapters::{PeftModel, TargetModules};
use rankfold_models::llama::{Llama, LlamaConfig};
use rankfold_tensor::{CrossEntropyOpts, DType, Device, Rng, Tensor};
use rankfold_train::trainer::{OptimName, TrainConfig, Trainer};

use super::{losses, out_dir};

fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 2048,
        hidden_size: 256,
        intermediate_size: 688,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: false,
        max_position_embeddings: 256,
        attention_bias: false,
        mlp_bias: false,
    }
}

/// Three steps of LoRA r = 8 (dropout 0.1) on every projection, 2 × 96 tokens a micro-batch, two micro-batches
/// a step, with `optim`; returns the loss bits and the adapter's bits.
fn run(tag: &str, optim: OptimName) -> Result<(Vec<u64>, Vec<Vec<u32>>)> {
    let cfg = config();
    let mut pm = PeftModel::new(Llama::random(&cfg, 17, DType::F32, Device::Cpu)?, 23);
    let mut lora = LoraConfig::new(TargetModules::AllLinear).with_rank(8, 16.0);
    lora.lora_dropout = 0.1;
    pm.add_adapter("default", Box::new(lora))?;
    let out = out_dir(tag);
    let mut c = TrainConfig::new(3, 1e-3, &out);
    c.grad_accum = 2;
    c.clip_norm = Some(1.0);
    c.optim = optim;
    let mut t = Trainer::new(c, pm)?;
    let vocab = cfg.vocab_size as u64;
    let batch = |pos: u64| -> rankfold_train::Result<(Tensor, Tensor)> {
        let mut rng = Rng::new(900 + pos);
        let ids: Vec<u32> = (0..2 * 96).map(|_| rng.below(vocab) as u32).collect();
        let next: Vec<i64> = (0..2 * 96).map(|i| ids[i / 96 * 96 + (i % 96 + 1) % 96] as i64).collect();
        Ok((Tensor::from_vec(ids, (2, 96), Device::Cpu)?, Tensor::from_vec(next, (2, 96), Device::Cpu)?))
    };
    let loss = |m: &mut PeftModel<Llama>, b: &(Tensor, Tensor), _: &mut Rng| -> rankfold_train::Result<Tensor> {
        let model = m.model();
        let logits = model.logits(&model.forward_hidden(&b.0, None)?)?;
        Ok(logits.cross_entropy(&b.1, CrossEntropyOpts::default())?)
    };
    let steps = losses(&t.run(batch, loss, None)?.steps);
    let adapter = t.model().parameters().iter().map(|(_, p)| Ok(p.to_vec_f32()?.iter().map(|x| x.to_bits()).collect())).collect::<Result<_>>()?;
    let _ = std::fs::remove_dir_all(&out);
    Ok((steps, adapter))
}

#[test]
fn one_and_two_threads_give_the_same_run_bit_for_bit() -> Result<()> {
    for optim in [OptimName::AdamwTorch, OptimName::Adamw8bit] {
        let pool = |n: usize| rayon::ThreadPoolBuilder::new().num_threads(n).build();
        let one = pool(1)?.install(|| run(&format!("det1-{optim}"), optim))?;
        let two = pool(2)?.install(|| run(&format!("det2-{optim}"), optim))?;
        ensure!(one.0.len() == 3 && one.0 == two.0, "{optim}: losses differ between 1 and 2 threads");
        ensure!(one.1 == two.1, "{optim}: the adapters differ between 1 and 2 threads");
    }
    Ok(())
}
