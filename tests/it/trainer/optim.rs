//! The trainer's optimizers (`TrainConfig::optim`, Hugging Face Trainer's names): each trains; `adamw_8bit` keeps
//! 8-bit state for tensors of 4096 elements or more and f32 below, its checkpoints hold that state, and a run
//! stopped at a checkpoint resumes to the straight run's losses bit for bit; the optimizer equals the library's
//! `AdamW8bit` driven by hand; the recipe key and the names round-trip.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use rankfold_adapters::lora::{LoraConfig, LoraInit};
use rankfold_adapters::testing::{TestModel, TestModelConfig};
use rankfold_adapters::{PeftModel, TargetModules};
use rankfold_tensor::safetensors::MmapedSafetensors;
use rankfold_tensor::{CrossEntropyOpts, DType, Device, Rng, Tensor};
use rankfold_train::trainer::{latest_checkpoint, OptimName, TrainConfig, Trainer};

use super::{losses, out_dir};

const HIDDEN: usize = 300;

/// A one-block test model 300 wide with LoRA r = 16 on q, v and down: A [16, 300] and B [300, 16] hold 4800
/// elements, past the 8-bit threshold (down's B [300, 16] too; its A [16, 20] stays below it, in f32).
fn wide_model() -> Result<PeftModel<TestModel>> {
    let mut pm = wide_base()?;
    let mut c = LoraConfig::new(TargetModules::list(&["q_proj", "v_proj", "down_proj"])).with_rank(16, 16.0);
    c.init_lora_weights = LoraInit::Random;
    pm.add_adapter("default", Box::new(c))?;
    Ok(pm)
}

/// The wrapped base without an adapter (what a resumed trainer loads the checkpoint's adapter into).
fn wide_base() -> Result<PeftModel<TestModel>> {
    let cfg = TestModelConfig { hidden: HIDDEN, ffn: 20, layers: 1, vocab: 7 };
    Ok(PeftModel::new(TestModel::new(cfg, 3)?, 8))
}

fn batch(position: u64) -> rankfold_train::Result<(Tensor, Tensor)> {
    let mut rng = Rng::new(500 + position);
    let x = rng.normal_tensor(0.0, 1.0, vec![4, HIDDEN], DType::F32, Device::Cpu)?;
    let y: Vec<i64> = (0..4).map(|_| rng.below(7) as i64).collect();
    Ok((x, Tensor::from_vec(y, vec![4], Device::Cpu)?))
}

fn loss(pm: &mut PeftModel<TestModel>, b: &(Tensor, Tensor), _rng: &mut Rng) -> rankfold_train::Result<Tensor> {
    Ok(pm.model().forward(&b.0)?.cross_entropy(&b.1, CrossEntropyOpts::default())?)
}

fn config(out: &Path, optim: OptimName) -> TrainConfig {
    let mut c = TrainConfig::new(6, 0.01, out);
    c.weight_decay = 0.01;
    c.checkpoint_every = 3;
    c.optim = optim;
    c
}

#[test]
fn every_optimizer_trains_and_adamw_8bit_resumes_bit_for_bit() -> Result<()> {
    let mut first_losses = Vec::new();
    for optim in OptimName::ALL {
        let d = out_dir(&format!("optim-{optim}"));
        let mut t = Trainer::new(config(&d, optim), wide_model()?)?;
        let out = t.run(batch, loss, None)?;
        let l = losses(&out.steps);
        ensure!(l.len() == 6, "{optim}: {} steps", l.len());
        let (a, b) = (f64::from_bits(l[0]), f64::from_bits(l[5]));
        ensure!(b < a, "{optim}: loss {a} -> {b}");
        first_losses.push(l[0]);
        // The checkpoint holds the optimizer's own state layout.
        let ckpt = latest_checkpoint(&d)?.context("no checkpoint")?;
        let st = MmapedSafetensors::open(ckpt.join("optimizer.safetensors"))?;
        let dtype_of = |suffix: &str| -> Result<Vec<DType>> {
            let names: Vec<String> = st.names().into_iter().filter(|n| n.ends_with(suffix)).collect();
            names.iter().map(|n| Ok(st.info(n)?.1)).collect()
        };
        match optim {
            OptimName::AdamwTorch => ensure!(!dtype_of(".exp_avg")?.is_empty() && dtype_of(".state1")?.is_empty()),
            OptimName::PagedAdamw32bit => ensure!(dtype_of(".state1")?.iter().all(|d| *d == DType::F32)),
            _ => ensure!(dtype_of(".state1")?.contains(&DType::U8) && dtype_of(".absmax1")?.len() >= 2, "{optim}"),
        }
        if optim == OptimName::Adamw8bit {
            // Stopped after the step-3 checkpoint and resumed: the straight run's losses and adapter, bit for bit.
            let r = out_dir("optim-8bit-resumed");
            let mut half = Trainer::new(config(&r, optim), wide_model()?)?;
            let before = losses(&half.run_until(3, batch, loss, None)?.steps);
            let mut resumed = Trainer::resume(config(&r, optim), wide_base()?, &r.join("checkpoint-3"))?;
            let after = losses(&resumed.run(batch, loss, None)?.steps);
            ensure!([before, after].concat() == l, "the resumed 8-bit run's losses differ from the straight run's");
            let _ = std::fs::remove_dir_all(&r);
        }
        let _ = std::fs::remove_dir_all(&d);
    }
    // Same data, same init: the first step's loss is the same for every optimizer.
    ensure!(first_losses.windows(2).all(|w| w[0] == w[1]));
    Ok(())
}

#[test]
fn optimizer_names_round_trip_and_a_bad_one_is_named() -> Result<()> {
    for o in OptimName::ALL {
        ensure!(o.as_str().parse::<OptimName>()? == o);
        let c = config(Path::new("o"), o);
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&c)?)?;
        ensure!(back.optim == o && serde_json::to_value(&c)?["optim"] == o.as_str());
    }
    let e = "adam_8bit".parse::<OptimName>().err().context("a bad name must fail")?;
    ensure!(e.to_string().contains("adam_8bit") && e.to_string().contains("paged_adamw_8bit"), "{e}");
    let spec = rankfold_train::run::RunSpec::from_toml_str("r.toml", "[train]\nsteps = 2\noutput_dir = \"o\"\noptim = \"paged_adamw_8bit\"\n")?;
    ensure!(spec.train_config("r.toml")?.optim == OptimName::PagedAdamw8bit);
    let bad = rankfold_train::run::RunSpec::from_toml_str("r.toml", "[train]\noptim = \"sgd\"\n");
    ensure!(bad.as_ref().is_err_and(|e| e.to_string().contains("optim")), "{bad:?}");
    Ok(())
}
