//! The trainer core (rankfold_train::trainer) on the adapters' small test model with LoRA: resume from a
//! checkpoint continues bit for bit, gradient accumulation over half batches matches whole batches, the
//! learning rates in the metrics follow an independently written warmup-cosine, checkpoints are atomic, the
//! config round-trips through JSON and names the bad field, and AdaLoRA's step matches a hand-written loop.
//! The run lifecycle (stop flag, AdaLoRA resume, throughput metrics, progress, the loss plot) is in
//! [`lifecycle`]; the optimizers (`adamw_torch`, `adamw_8bit`, the paged names) in [`optim`]; the same run
//! on one and two threads in [`determinism`]; damaged checkpoints in [`integrity`]; non-finite steps in [`faults`].

mod determinism;
mod faults;
mod integrity;
mod lifecycle;
mod optim;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use rankfold_adapters::lora::{LoraConfig, LoraInit};
use rankfold_adapters::testing::{TestModel, TestModelConfig};
use rankfold_adapters::{PeftModel, TargetModules};
use rankfold_tensor::{CrossEntropyOpts, DType, Device, Rng, Tensor};
use rankfold_train::trainer::{
    checkpoint, latest_checkpoint, StepMetrics, TrainConfig, Trainer, METRICS_FILE,
};

/// A fresh folder for one test.
fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rankfold-trainer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The base model wrapped, with a LoRA adapter "default" on every linear layer (random B, so step 1 already
/// sees the adapter).
fn model(with_adapter: bool) -> Result<PeftModel<TestModel>> {
    model_with_dropout(with_adapter, 0.0)
}

/// [`model`] with LoRA dropout `p` on the adapter.
fn model_with_dropout(with_adapter: bool, p: f64) -> Result<PeftModel<TestModel>> {
    let mut pm = PeftModel::new(TestModel::new(TestModelConfig::default(), 11)?, 5);
    if with_adapter {
        let mut c = LoraConfig::new(TargetModules::AllLinear).with_rank(3, 6.0);
        c.init_lora_weights = LoraInit::Random;
        c.lora_dropout = p;
        pm.add_adapter("default", Box::new(c))?;
    }
    Ok(pm)
}

/// Micro-batch `position` of `rows` rows: inputs [rows, 13] and class targets [rows] drawn from the position,
/// as a seeded loader would give them.
fn batch(position: u64, rows: usize) -> rankfold_train::Result<(Tensor, Tensor)> {
    let mut rng = Rng::new(1000 + position);
    let x = rng.normal_tensor(0.0, 1.0, vec![rows, 13], DType::F32, Device::Cpu)?;
    let y: Vec<i64> = (0..rows).map(|_| rng.below(11) as i64).collect();
    Ok((x, Tensor::from_vec(y, vec![rows], Device::Cpu)?))
}

/// Cross-entropy of the model on the batch, with input noise from the trainer's generator (so resume must
/// restore the random state too).
fn loss(
    pm: &mut PeftModel<TestModel>,
    b: &(Tensor, Tensor),
    rng: &mut Rng,
) -> rankfold_train::Result<Tensor> {
    let noise = rng.normal_tensor(0.0, 0.05, b.0.shape().clone(), DType::F32, Device::Cpu)?;
    let logits = pm.model().forward(&b.0.add(&noise)?)?;
    Ok(logits.cross_entropy(&b.1, CrossEntropyOpts::default())?)
}

fn config(out: &Path) -> TrainConfig {
    let mut c = TrainConfig::new(6, 0.02, out);
    c.warmup = 2;
    c.grad_accum = 2;
    c.clip_norm = Some(0.3);
    c.weight_decay = 0.01;
    c.checkpoint_every = 3;
    c.seed = 42;
    c
}

fn adapter_values(pm: &mut PeftModel<TestModel>) -> Result<Vec<(String, Vec<u32>)>> {
    let mut v: Vec<(String, Vec<u32>)> = pm
        .parameters()
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_vec_f32()?.into_iter().map(f32::to_bits).collect())))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

fn losses(m: &[StepMetrics]) -> Vec<u64> {
    m.iter().filter_map(|m| m.loss).map(f64::to_bits).collect()
}

#[test]
fn resume_continues_bit_for_bit() -> Result<()> {
    let (da, db) = (out_dir("straight"), out_dir("resumed"));
    let mut a = Trainer::new(config(&da), model(true)?)?;
    let straight = a.run(|p| batch(p, 5), loss, None)?.steps;
    ensure!(straight.len() == 6, "6 steps, got {}", straight.len());
    // Clipping is on and the norms exceed it, so the clipped path is the one exercised.
    ensure!(
        straight.iter().all(|m| m.grad_norm.unwrap_or(0.0) > 0.3),
        "norms {straight:?}"
    );
    let want = adapter_values(a.model())?;

    let mut b = Trainer::new(config(&db), model(true)?)?;
    let first = b.run_until(3, |p| batch(p, 5), loss, None)?.steps;
    drop(b);
    let ckpt = latest_checkpoint(&db)?.context("no checkpoint after 3 steps")?;
    ensure!(
        ckpt.ends_with("checkpoint-3"),
        "latest checkpoint {}",
        ckpt.display()
    );
    let mut c = Trainer::resume(config(&db), model(false)?, &ckpt)?;
    ensure!(
        c.step() == 3 && c.position() == 6,
        "resumed at step {} position {}",
        c.step(),
        c.position()
    );
    let rest = c.run(|p| batch(p, 5), loss, None)?.steps;
    let mut got = losses(&first);
    got.extend(losses(&rest));
    ensure!(
        got == losses(&straight),
        "losses differ: straight {:?}, resumed {:?} + {:?}",
        straight,
        first,
        rest
    );
    ensure!(
        adapter_values(c.model())? == want,
        "the adapter after resume differs from the straight run"
    );
    // The losses move: training does something.
    ensure!(
        straight[5].loss < straight[0].loss,
        "loss did not fall: {straight:?}"
    );
    for d in [da, db] {
        std::fs::remove_dir_all(d)?;
    }
    Ok(())
}

#[test]
fn accumulating_half_batches_matches_whole_batches() -> Result<()> {
    let (da, db) = (out_dir("whole"), out_dir("halves"));
    let mut cw = config(&da);
    (cw.grad_accum, cw.checkpoint_every, cw.clip_norm) = (1, 0, None);
    let mut ch = config(&db);
    (ch.grad_accum, ch.checkpoint_every, ch.clip_norm) = (2, 0, None);
    // Whole batch s has 2·7 rows: the rows of half batches 2s and 2s+1 stacked. No input noise here, so both
    // runs see the same data.
    let whole = |p: u64| -> rankfold_train::Result<(Tensor, Tensor)> {
        let (x0, y0) = batch(2 * p, 7)?;
        let (x1, y1) = batch(2 * p + 1, 7)?;
        Ok((Tensor::cat(&[&x0, &x1], 0)?, Tensor::cat(&[&y0, &y1], 0)?))
    };
    let plain = |pm: &mut PeftModel<TestModel>,
                 b: &(Tensor, Tensor),
                 _: &mut Rng|
     -> rankfold_train::Result<Tensor> {
        Ok(pm
            .model()
            .forward(&b.0)?
            .cross_entropy(&b.1, CrossEntropyOpts::default())?)
    };
    let mut w = Trainer::new(cw, model(true)?)?;
    let mw = w.run(whole, plain, None)?.steps;
    let mut h = Trainer::new(ch, model(true)?)?;
    let mh = h.run(|p| batch(p, 7), plain, None)?.steps;
    for (a, b) in mw.iter().zip(&mh) {
        let (la, lb) = (a.loss.unwrap_or(f64::NAN), b.loss.unwrap_or(f64::NAN));
        ensure!(
            (la - lb).abs() <= 1e-5 * la.abs().max(1.0),
            "step {}: whole {la} vs halves {lb}",
            a.step
        );
        let (na, nb) = (
            a.grad_norm.unwrap_or(f64::NAN),
            b.grad_norm.unwrap_or(f64::NAN),
        );
        ensure!(
            (na - nb).abs() <= 1e-4 * na.abs().max(1e-3),
            "step {}: grad norm {na} vs {nb}",
            a.step
        );
    }
    for (x, y) in adapter_values(w.model())?
        .iter()
        .zip(&adapter_values(h.model())?)
    {
        for (&p, &q) in x.1.iter().zip(&y.1) {
            let (p, q) = (f32::from_bits(p), f32::from_bits(q));
            ensure!(
                (p - q).abs() <= 1e-4 * p.abs().max(1e-2),
                "{}: {p} vs {q}",
                x.0
            );
        }
    }
    for d in [da, db] {
        std::fs::remove_dir_all(d)?;
    }
    Ok(())
}

#[test]
fn metrics_lines_follow_the_schedule_and_evals() -> Result<()> {
    let d = out_dir("metrics");
    let mut c = TrainConfig::new(7, 0.01, &d);
    (c.warmup, c.min_lr_ratio, c.eval_every) = (3, 0.1, 2);
    let mut evals = 0usize;
    let mut eval = |pm: &mut PeftModel<TestModel>| -> rankfold_train::Result<f64> {
        evals += 1;
        let (x, y) = batch(999, 4)?;
        Ok(pm
            .model()
            .forward(&x)?
            .cross_entropy(&y, CrossEntropyOpts::default())?
            .to_scalar()?)
    };
    let mut t = Trainer::new(c, model(true)?)?;
    t.run(|p| batch(p, 3), loss, Some(&mut eval))?;
    ensure!(evals == 3, "evals after steps 2, 4, 6; ran {evals}");
    let text = std::fs::read_to_string(d.join(METRICS_FILE))?;
    let lines: Vec<StepMetrics> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let train: Vec<&StepMetrics> = lines.iter().filter(|m| m.loss.is_some()).collect();
    let ev: Vec<usize> = lines
        .iter()
        .filter(|m| m.eval_loss.is_some())
        .map(|m| m.step)
        .collect();
    ensure!(ev == [2, 4, 6], "eval lines at {ev:?}");
    ensure!(train.len() == 7, "7 training lines, got {}", train.len());
    for (i, m) in train.iter().enumerate() {
        // Warmup from 0 over 3 steps, then half a cosine over the remaining 4 floored at 0.1·lr.
        let want = if i < 3 {
            0.01 * i as f64 / 3.0
        } else {
            let q = (i - 3) as f64 / 4.0;
            0.01 * (0.5 * (1.0 + (std::f64::consts::PI * q).cos())).max(0.1)
        };
        let got = m.lr.unwrap_or(f64::NAN);
        ensure!(
            m.step == i + 1 && (got - want).abs() < 1e-12,
            "line {i}: step {} lr {got}, want {want}",
            m.step
        );
    }
    std::fs::remove_dir_all(d)?;
    Ok(())
}

#[test]
fn a_failed_checkpoint_leaves_the_last_good_one() -> Result<()> {
    let d = out_dir("atomic");
    let mut c = config(&d);
    c.checkpoint_every = 2;
    let mut t = Trainer::new(c.clone(), model(true)?)?;
    t.run_until(2, |p| batch(p, 4), loss, None)?;
    let good = latest_checkpoint(&d)?.context("no checkpoint")?;
    // A write that dies part-way (here: the payload fails after one file) must not become the latest.
    let state = checkpoint::TrainerState {
        step: 4,
        position: 8,
        seed: c.seed,
        config: c.clone(),
        method: None,
        dropout_rng: Default::default(),
        bad_in_row: 0,
        files: Default::default(),
    };
    let r = checkpoint::write(&d, &state, |tmp| {
        std::fs::write(tmp.join("partial"), b"x").map_err(|e| rankfold_train::Error::Io {
            path: tmp.into(),
            source: e,
        })?;
        Err(rankfold_train::Error::Config("killed".into()))
    });
    ensure!(r.is_err(), "the failing write reported success");
    ensure!(
        latest_checkpoint(&d)? == Some(good.clone()),
        "latest moved off {}",
        good.display()
    );
    ensure!(
        d.join(".tmp-checkpoint-4").exists() && !d.join("checkpoint-4").exists(),
        "temp folder handling"
    );
    // The next real checkpoint replaces the stale temporary folder.
    t.run_until(4, |p| batch(p, 4), loss, None)?;
    ensure!(
        latest_checkpoint(&d)? == Some(d.join("checkpoint-4")),
        "checkpoint-4 not written"
    );
    ensure!(
        !d.join(".tmp-checkpoint-4").exists(),
        "stale temp folder left"
    );
    let st = checkpoint::TrainerState::read(&d.join("checkpoint-4"))?;
    ensure!(
        st.step == 4 && st.position == 8 && st.config == c,
        "state {st:?}"
    );
    std::fs::remove_dir_all(d)?;
    Ok(())
}

#[test]
fn config_round_trips_and_names_bad_fields() -> Result<()> {
    let c = config(Path::new("/tmp/x"));
    let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&c)?)?;
    ensure!(back == c, "round trip {back:?}");
    let minimal: TrainConfig =
        serde_json::from_str(r#"{"steps": 4, "lr": 0.001, "output_dir": "o"}"#)?;
    ensure!(
        minimal.grad_accum == 1 && minimal.adapter == "default" && minimal.clip_norm.is_none(),
        "{minimal:?}"
    );
    ensure!(serde_json::from_str::<TrainConfig>(
        r#"{"steps": 4, "lr": 0.001, "output_dir": "o", "lrr": 1}"#
    )
    .is_err());
    for (field, f) in [
        (
            "steps",
            Box::new(|c: &mut TrainConfig| c.steps = 0) as Box<dyn Fn(&mut TrainConfig)>,
        ),
        (
            "grad_accum",
            Box::new(|c: &mut TrainConfig| c.grad_accum = 0),
        ),
        ("lr", Box::new(|c: &mut TrainConfig| c.lr = f64::NAN)),
        (
            "clip_norm",
            Box::new(|c: &mut TrainConfig| c.clip_norm = Some(0.0)),
        ),
        ("warmup", Box::new(|c: &mut TrainConfig| c.warmup = 100)),
    ] {
        let mut bad = c.clone();
        f(&mut bad);
        let e = bad
            .validate()
            .err()
            .with_context(|| format!("{field}: no error"))?
            .to_string();
        ensure!(e.contains(&format!("`{field}`")), "{field}: {e}");
    }
    let mut no_adapter = c.clone();
    no_adapter.adapter = "other".into();
    let e = Trainer::new(no_adapter, model(true)?)
        .err()
        .context("missing adapter accepted")?
        .to_string();
    ensure!(e.contains("other"), "{e}");
    Ok(())
}

#[test]
fn adalora_regularization_and_allocator_match_a_hand_loop() -> Result<()> {
    use rankfold_adapters::adalora::AdaLora;
    use rankfold_tensor::optim::{AdamW, AdamWConfig, Optimizer};
    let steps = 12;
    let fresh = || -> Result<PeftModel<TestModel>> {
        let mut cfg =
            rankfold_adapters::adalora::AdaLoraConfig::new(TargetModules::AllLinear, steps);
        (cfg.init_r, cfg.target_r, cfg.tinit, cfg.tfinal, cfg.delta_t) = (4, 2, 2, 3, 2);
        let mut pm = PeftModel::new(TestModel::new(TestModelConfig::default(), 3)?, 9);
        pm.add_adapter("default", Box::new(AdaLora::new(cfg)?))?;
        Ok(pm)
    };
    let mut rng = Rng::new(77);
    let x = rng.normal_tensor(0.0, 1.0, vec![6, 13], DType::F32, Device::Cpu)?;
    let target = rng.normal_tensor(0.0, 1.0, vec![6, 11], DType::F32, Device::Cpu)?;
    let mse = |pm: &mut PeftModel<TestModel>| -> rankfold_tensor::Result<Tensor> {
        pm.model().forward(&x)?.sub(&target)?.sqr()?.mean_all()
    };
    // The reference: the loop the trainer should amount to, written out with the schedule by hand.
    let (lr0, warmup) = (1e-2, 3);
    let mut pm = fresh()?;
    let mut opt = AdamW::new(
        pm.parameters(),
        AdamWConfig {
            lr: lr0,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )?;
    let mut want = Vec::new();
    for step in 0..steps {
        let lr = if step < warmup {
            lr0 * step as f64 / warmup as f64
        } else {
            let q = (step - warmup) as f64 / (steps - warmup) as f64;
            lr0 * 0.5 * (1.0 + (std::f64::consts::PI * q).cos())
        };
        opt.set_learning_rate(lr);
        let reg = pm
            .regularization_loss()?
            .context("AdaLoRA has a regularization loss")?;
        let l = mse(&mut pm)?.add(&reg)?;
        want.push(l.to_scalar()?.to_bits());
        let grads = l.backward()?;
        opt.step(&grads)?;
        pm.on_step(step, &grads)?;
    }
    let d = out_dir("adalora");
    let mut c = TrainConfig::new(steps, lr0, &d);
    c.warmup = warmup;
    let mut t = Trainer::new(c, fresh()?)?;
    let got = t.run(|_| Ok(()), |pm, _: &(), _| Ok(mse(pm)?), None)?.steps;
    ensure!(
        losses(&got) == want,
        "trainer {:?} vs hand loop {:?}",
        got,
        want.iter().map(|b| f64::from_bits(*b)).collect::<Vec<_>>()
    );
    ensure!(
        adapter_values(t.model())? == adapter_values(&mut pm)?,
        "adapters differ after {steps} steps"
    );
    std::fs::remove_dir_all(d)?;
    Ok(())
}
