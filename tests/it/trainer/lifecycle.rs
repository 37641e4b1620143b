//! The trainer's run lifecycle on the adapters' small test model: a stop flag set between steps or between
//! micro-batches writes a checkpoint from which the run resumes bit for bit; an AdaLoRA run resumed in the
//! middle of its budget schedule matches the straight run (losses, uncut tensors, rank patterns); the metrics
//! carry token counts, throughput and peak memory and the progress reporter sees every event; a fresh run
//! refuses a folder holding an earlier run; the loss SVG has one curve point per step and its axis labels.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use rankfold_adapters::testing::{TestModel, TestModelConfig};
use rankfold_adapters::{PeftModel, TargetModules};
use rankfold_tensor::{DType, Device, Rng, Tensor};
use rankfold_train::trainer::{
    checkpoint, latest_checkpoint, read_metrics, Interrupted, Progress, RunOutcome, StepLoss,
    StepMetrics, TrainConfig, Trainer, METRICS_FILE,
};

use super::{adapter_values, batch, config, loss, losses, model, model_with_dropout, out_dir};

/// Runs `config` straight, and again with a stop flag that the batch closure sets when it is asked for
/// micro-batch `stop_at`; then resumes from the checkpoint the stopped run wrote. Returns (straight losses,
/// stopped + resumed losses, the interruption, whether the adapters match).
fn stop_and_resume(name: &str, stop_at: u64, dropout: f64) -> Result<(Vec<u64>, Vec<u64>, Interrupted, bool)> {
    let (da, db) = (out_dir(&format!("{name}-a")), out_dir(&format!("{name}-b")));
    let mut c = config(&da);
    c.checkpoint_every = 0;
    let mut a = Trainer::new(c.clone(), model_with_dropout(true, dropout)?)?;
    let straight = a.run(|p| batch(p, 5), loss, None)?;
    ensure!(
        !straight.is_interrupted() && straight.step == 6,
        "{straight:?}"
    );
    let want = adapter_values(a.model())?;

    c.output_dir = db.clone();
    let flag = Arc::new(AtomicBool::new(false));
    let mut b = Trainer::new(c.clone(), model_with_dropout(true, dropout)?)?.with_stop_flag(flag.clone());
    let setter = flag.clone();
    let first = b.run(
        move |p| {
            if p == stop_at {
                setter.store(true, Ordering::SeqCst);
            }
            batch(p, 5)
        },
        loss,
        None,
    )?;
    let stop = first
        .interrupted
        .clone()
        .context("the stop flag did not stop the run")?;
    ensure!(
        first.step == stop.step && first.checkpoint.as_ref() == Some(&stop.checkpoint),
        "{first:?}"
    );
    ensure!(
        latest_checkpoint(&db)? == Some(stop.checkpoint.clone()),
        "latest checkpoint is not the stop's"
    );
    // A stop after some steps draws their curve; a stop before the first step has none to draw.
    ensure!(
        first.plot.as_ref().is_some_and(|p| p.is_file()) == (stop.step > 0)
            && first.warnings.is_empty(),
        "plot after a stop: {first:?}"
    );
    drop(b);
    let mut r = Trainer::resume(c, model(false)?, &stop.checkpoint)?;
    ensure!(
        (r.step(), r.position()) == (stop.step, stop.position),
        "resumed at step {} position {}, stopped at {stop:?}",
        r.step(),
        r.position()
    );
    let rest = r.run(|p| batch(p, 5), loss, None)?;
    ensure!(!rest.is_interrupted() && rest.step == 6, "{rest:?}");
    let mut got = losses(&first.steps);
    got.extend(losses(&rest.steps));
    let same = adapter_values(r.model())? == want;
    for d in [da, db] {
        std::fs::remove_dir_all(d)?;
    }
    Ok((losses(&straight.steps), got, stop, same))
}

#[test]
fn a_stop_flag_checkpoints_and_resume_continues_bit_for_bit() -> Result<()> {
    // grad_accum is 2: micro-batches 6 and 7 make step 4. A stop seen before micro-batch 7 (the flag is set
    // while 6 is fetched) drops the half-done step 4 and checkpoints step 3 at position 6; a stop set while 7
    // is fetched lets step 4 finish and checkpoints it at position 8.
    // With adapter dropout the checkpoint carries each layer's dropout generator: the resumed run draws the
    // masks the straight run drew. (Its PEFT folder has no trace of them; a fresh generator would differ.)
    for (stop_at, step, position, dropout) in [(6, 3, 6, 0.0), (7, 4, 8, 0.0), (0, 0, 0, 0.0), (6, 3, 6, 0.3), (7, 4, 8, 0.3)] {
        let (want, got, stop, same) = stop_and_resume(&format!("stop{stop_at}-{dropout}"), stop_at, dropout)?;
        ensure!(
            (stop.step, stop.position) == (step, position),
            "stop at {stop_at}: {stop:?}"
        );
        ensure!(
            stop.checkpoint.ends_with(format!("checkpoint-{step}")),
            "{stop:?}"
        );
        ensure!(
            got == want,
            "stop at {stop_at}, dropout {dropout}: losses {:?} vs straight {:?}",
            got.iter().map(|b| f64::from_bits(*b)).collect::<Vec<_>>(),
            want.iter().map(|b| f64::from_bits(*b)).collect::<Vec<_>>()
        );
        ensure!(same, "stop at {stop_at}: the adapters differ after resume");
    }
    Ok(())
}

#[test]
fn metrics_record_tokens_throughput_and_memory_and_progress_sees_every_event() -> Result<()> {
    #[derive(Default)]
    struct Log(Vec<String>);
    struct Shared(std::rc::Rc<std::cell::RefCell<Log>>);
    impl Progress for Shared {
        fn on_start(&mut self, step: usize, total: usize) {
            self.0.borrow_mut().0.push(format!("start {step}/{total}"));
        }
        fn on_step(&mut self, m: &StepMetrics, total: usize) {
            self.0
                .borrow_mut()
                .0
                .push(format!("step {}/{total}", m.step));
        }
        fn on_eval(&mut self, step: usize, _value: f64) {
            self.0.borrow_mut().0.push(format!("eval {step}"));
        }
        fn on_checkpoint(&mut self, step: usize, _path: &Path) {
            self.0.borrow_mut().0.push(format!("checkpoint {step}"));
        }
        fn on_finish(&mut self, o: &RunOutcome) {
            self.0.borrow_mut().0.push(format!("finish {}", o.step));
        }
    }
    let d = out_dir("throughput");
    let mut c = TrainConfig::new(4, 0.01, &d);
    (c.grad_accum, c.eval_every, c.checkpoint_every) = (3, 2, 3);
    let log = std::rc::Rc::new(std::cell::RefCell::new(Log::default()));
    let mut eval = |_: &mut PeftModel<TestModel>| -> rankfold_train::Result<f64> { Ok(0.5) };
    let mut t = Trainer::new(c, model(true)?)?.with_progress(Box::new(Shared(log.clone())));
    // Micro-batch p has 2 + p % 5 rows, and the loss reports 7 tokens per row.
    let rows = |p: u64| 2 + (p % 5) as usize;
    let out = t.run(
        |p| batch(p, rows(p)),
        |pm, b: &(Tensor, Tensor), rng| -> rankfold_train::Result<StepLoss> {
            let n = b.0.dims()[0] as u64;
            Ok(StepLoss::new(loss(pm, b, rng)?, 7 * n))
        },
        Some(&mut eval),
    )?;
    let events = log.borrow().0.join(", ");
    ensure!(
        events
            == "start 0/4, step 1/4, step 2/4, eval 2, step 3/4, checkpoint 3, step 4/4, eval 4, finish 4",
        "{events}"
    );
    let lines: Vec<StepMetrics> = read_metrics(&d.join(METRICS_FILE))?
        .into_iter()
        .filter(|m| m.is_train())
        .collect();
    ensure!(lines == out.steps, "the file and the outcome differ");
    let mut total = 0;
    let mut last_elapsed = 0.0;
    for m in &lines {
        let want: u64 = (3 * (m.step as u64 - 1)..3 * m.step as u64)
            .map(|p| 7 * rows(p) as u64)
            .sum();
        total += want;
        ensure!(
            m.tokens == Some(want),
            "step {}: tokens {:?}, want {want}",
            m.step,
            m.tokens
        );
        let tps = m.tokens_per_s.context("no tokens/s")?;
        let el = m.elapsed_s.context("no elapsed_s")?;
        ensure!(tps.is_finite() && tps > 0.0, "tokens/s {tps}");
        ensure!(
            el >= last_elapsed,
            "elapsed went back: {el} < {last_elapsed}"
        );
        last_elapsed = el;
        // The peak counts at least the adapter and its AdamW moments (3 copies of every parameter).
        let floor: usize = t
            .model()
            .parameters()
            .iter()
            .map(|(_, p)| 3 * 4 * p.elem_count())
            .sum();
        ensure!(
            m.peak_mem_bytes.is_some_and(|b| b as usize >= floor),
            "peak {:?} below {floor}",
            m.peak_mem_bytes
        );
    }
    ensure!(out.tokens == Some(total), "{:?} vs {total}", out.tokens);
    // A loss closure without token counts gives no token fields.
    let d2 = out_dir("no-tokens");
    let mut t2 = Trainer::new(TrainConfig::new(2, 0.01, &d2), model(true)?)?;
    let o2 = t2.run(|p| batch(p, 3), loss, None)?;
    ensure!(
        o2.tokens.is_none()
            && o2
                .steps
                .iter()
                .all(|m| m.tokens.is_none() && m.tokens_per_s.is_none()),
        "{o2:?}"
    );
    for d in [d, d2] {
        std::fs::remove_dir_all(d)?;
    }
    Ok(())
}

#[test]
fn a_fresh_run_refuses_an_output_folder_with_an_earlier_run() -> Result<()> {
    let d = out_dir("refuse");
    let mut c = config(&d);
    c.steps = 3;
    Trainer::new(c.clone(), model(true)?)?.run(|p| batch(p, 3), loss, None)?;
    let e = Trainer::new(c.clone(), model(true)?)
        .err()
        .context("a second fresh run into the same folder was accepted")?
        .to_string();
    ensure!(e.contains("checkpoint-3") && e.contains("resume"), "{e}");
    std::fs::remove_dir_all(d.join("checkpoint-3"))?;
    let e = Trainer::new(c, model(true)?)
        .err()
        .context("metrics of an earlier run were appended to")?
        .to_string();
    ensure!(e.contains(METRICS_FILE), "{e}");
    std::fs::remove_dir_all(d)?;
    Ok(())
}

#[test]
fn adalora_resumed_mid_budget_schedule_matches_the_straight_run() -> Result<()> {
    use rankfold_adapters::adalora::{AdaLora, AdaLoraConfig};
    let steps = 12;
    let base = || TestModel::new(TestModelConfig::default(), 3);
    let fresh = || -> Result<PeftModel<TestModel>> {
        let mut cfg = AdaLoraConfig::new(TargetModules::AllLinear, steps);
        // Budgeting from step 3 to 8 (masking at 4, 6, 8), the final mask at step 9.
        (cfg.init_r, cfg.target_r, cfg.tinit, cfg.tfinal, cfg.delta_t) = (4, 2, 2, 3, 2);
        let mut pm = PeftModel::new(base()?, 9);
        pm.add_adapter("default", Box::new(AdaLora::new(cfg)?))?;
        Ok(pm)
    };
    let mut rng = Rng::new(78);
    let x = rng.normal_tensor(0.0, 1.0, vec![7, 13], DType::F32, Device::Cpu)?;
    let target = rng.normal_tensor(0.0, 1.0, vec![7, 11], DType::F32, Device::Cpu)?;
    // Input noise from the trainer's generator, so the data differ from step to step.
    let mse =
        |pm: &mut PeftModel<TestModel>, _: &(), rng: &mut Rng| -> rankfold_train::Result<Tensor> {
            let noise = rng.normal_tensor(0.0, 0.3, vec![7, 13], DType::F32, Device::Cpu)?;
            Ok(pm
                .model()
                .forward(&x.add(&noise)?)?
                .sub(&target)?
                .sqr()?
                .mean_all()?)
        };
    let conf = |d: &Path| {
        let mut c = TrainConfig::new(steps, 2e-2, d);
        (c.warmup, c.seed) = (2, 5);
        c
    };
    let saved = |pm: &mut PeftModel<TestModel>, d: &Path| -> Result<(serde_json::Value, Vec<u8>)> {
        pm.save_pretrained(d, "default")?;
        let cfg = serde_json::from_str(&std::fs::read_to_string(d.join("adapter_config.json"))?)?;
        Ok((cfg, std::fs::read(d.join("adapter_model.safetensors"))?))
    };

    let (da, db) = (out_dir("ada-straight"), out_dir("ada-resumed"));
    let mut a = Trainer::new(conf(&da), fresh()?)?;
    let straight = a.run(|_| Ok(()), mse, None)?;
    let want_values = adapter_values(a.model())?;
    let want_files = saved(a.model(), &da.join("final"))?;

    let mut cb = conf(&db);
    cb.checkpoint_every = 5;
    let mut b = Trainer::new(cb.clone(), fresh()?)?;
    let first = b.run_until(5, |_| Ok(()), mse, None)?;
    drop(b);
    let ckpt = db.join("checkpoint-5");
    ensure!(
        ckpt.join(checkpoint::ADAPTER_STATE_FILE).is_file(),
        "no AdaLoRA state in {}",
        ckpt.display()
    );
    // The checkpoint is mid-schedule with ranks already masked: its PEFT files are cut to fewer ranks.
    let pattern: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        ckpt.join(checkpoint::ADAPTER_DIR)
            .join("adapter_config.json"),
    )?)?;
    let masked = pattern["rank_pattern"]
        .as_object()
        .context("no rank_pattern at step 5")?
        .values()
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
        .filter(|k| k == &serde_json::Value::Bool(false))
        .count();
    ensure!(masked > 0, "nothing masked by step 5: {pattern}");

    let mut r = Trainer::resume(cb.clone(), PeftModel::new(base()?, 9), &ckpt)?;
    let rest = r.run(|_| Ok(()), mse, None)?;
    let mut got = losses(&first.steps);
    got.extend(losses(&rest.steps));
    ensure!(
        got == losses(&straight.steps),
        "losses: straight {:?}, resumed {:?} + {:?}",
        straight.steps,
        first.steps,
        rest.steps
    );
    ensure!(
        adapter_values(r.model())? == want_values,
        "the uncut adapter tensors differ after resume"
    );
    let got_files = saved(r.model(), &db.join("final"))?;
    ensure!(
        got_files.0 == want_files.0,
        "the saved configs (rank patterns) differ: {} vs {}",
        got_files.0,
        want_files.0
    );
    ensure!(
        got_files.1 == want_files.1,
        "the saved adapter tensors differ"
    );

    // Without the state the same checkpoint cannot continue the run: the cut PEFT files alone fail or differ.
    std::fs::remove_file(ckpt.join(checkpoint::ADAPTER_STATE_FILE))?;
    let without = (|| -> Result<Vec<u64>> {
        let mut t = Trainer::resume(cb, PeftModel::new(base()?, 9), &ckpt)?;
        Ok(losses(&t.run(|_| Ok(()), mse, None)?.steps))
    })();
    ensure!(
        without.as_ref().map_or(true, |l| *l != losses(&rest.steps)),
        "resuming without the AdaLoRA state matched too: the test cannot fail"
    );
    for d in [da, db] {
        std::fs::remove_dir_all(d)?;
    }
    Ok(())
}

#[test]
fn the_loss_plot_has_one_point_per_step_and_axis_labels() -> Result<()> {
    use rankfold_train::trainer::plot::{plot_metrics_file, render_svg};
    let d = out_dir("plot");
    let mut c = TrainConfig::new(9, 0.01, &d);
    c.eval_every = 4;
    let mut eval = |_: &mut PeftModel<TestModel>| -> rankfold_train::Result<f64> { Ok(2.0) };
    let out = Trainer::new(c, model(true)?)?.run(|p| batch(p, 3), loss, Some(&mut eval))?;
    let svg_path = out.plot.context("no plot at the end of the run")?;
    let svg = std::fs::read_to_string(&svg_path)?;
    let xy = curve_points(&svg)?;
    ensure!(xy.len() == 9, "{} points for 9 steps: {xy:?}", xy.len());
    // The points run left to right at even steps, and y is a decreasing affine map of the loss (SVG y grows
    // downwards), to the pixel the SVG rounds to.
    let dx = xy[1].0 - xy[0].0;
    ensure!(
        dx > 0.0 && xy.windows(2).all(|w| (w[1].0 - w[0].0 - dx).abs() <= 1.0),
        "x not evenly increasing: {xy:?}"
    );
    let losses: Vec<f64> = out.steps.iter().filter_map(|m| m.loss).collect();
    let (lo, hi) = (0..9).fold((0, 0), |(lo, hi), i| {
        (
            if losses[i] < losses[lo] { i } else { lo },
            if losses[i] > losses[hi] { i } else { hi },
        )
    });
    let slope = (xy[hi].1 - xy[lo].1) / (losses[hi] - losses[lo]);
    ensure!(slope < 0.0, "a higher loss is not drawn higher: {xy:?}");
    for i in 0..9 {
        let want = xy[lo].1 + slope * (losses[i] - losses[lo]);
        ensure!(
            (xy[i].1 - want).abs() <= 2.0,
            "step {}: loss {} drawn at y {}, want {want}",
            i + 1,
            losses[i],
            xy[i].1
        );
    }
    let texts = svg_texts(&svg);
    for label in ["step", "loss", "Training loss", "train loss", "eval loss"] {
        ensure!(
            texts.iter().any(|t| t == label),
            "no text {label:?} in the SVG: {texts:?}"
        );
    }
    // Tick labels: numbers on both axes (step numbers and losses within the plotted range).
    let numbers: Vec<f64> = texts.iter().filter_map(|t| t.parse().ok()).collect();
    ensure!(
        numbers.len() >= 6 && numbers.contains(&9.0),
        "tick labels {texts:?}"
    );
    ensure!(
        svg.matches("<circle").count() >= 2,
        "the two evaluations are not drawn"
    );
    // A resumed run's duplicate lines collapse to one point per step; the standalone call reads the file.
    let metrics = d.join(METRICS_FILE);
    let mut text = std::fs::read_to_string(&metrics)?;
    text.push_str("{\"step\":8,\"loss\":0.5}\n{\"step\":9,\"loss\":0.4}\n");
    std::fs::write(&metrics, text)?;
    let again = d.join("again.svg");
    plot_metrics_file(&metrics, &again)?;
    let svg = std::fs::read_to_string(&again)?;
    let n = curve_points(&svg)?.len();
    ensure!(n == 9, "{n} points after duplicate lines");
    // No training lines: a typed error naming the file, not a panic.
    let empty = d.join("empty.jsonl");
    std::fs::write(&empty, "{\"step\":2,\"eval_loss\":1.0}\n")?;
    match plot_metrics_file(&empty, &d.join("x.svg")) {
        Err(rankfold_train::Error::EmptyMetrics { path }) => {
            ensure!(path == empty, "{}", path.display())
        }
        other => anyhow::bail!("an empty metrics file gave {other:?}"),
    }
    std::fs::write(&empty, "")?;
    ensure!(matches!(
        plot_metrics_file(&empty, &d.join("x.svg")),
        Err(rankfold_train::Error::EmptyMetrics { .. })
    ));
    std::fs::write(&empty, "{\"step\":1,\"loss\":\n")?;
    ensure!(matches!(
        plot_metrics_file(&empty, &d.join("x.svg")),
        Err(rankfold_train::Error::Json { line: 1, .. })
    ));
    ensure!(render_svg(&[]).is_err());
    std::fs::remove_dir_all(d)?;
    Ok(())
}

/// The points of the one polyline drawn in the training-loss colour (axes and ticks are polylines too).
fn curve_points(svg: &str) -> Result<Vec<(f64, f64)>> {
    let (r, g, b) = rankfold_train::trainer::plot::TRAIN_RGB;
    let stroke = format!("stroke=\"#{r:02X}{g:02X}{b:02X}\"");
    let tags: Vec<&str> = svg
        .match_indices("<polyline")
        .filter_map(|(i, _)| svg[i..].split('>').next())
        .filter(|tag| tag.contains(&stroke))
        .collect();
    ensure!(tags.len() == 1, "{} polylines with {stroke}", tags.len());
    let points = tags[0]
        .split("points=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("a polyline without points")?;
    points
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').context("a point without a comma")?;
            Ok((x.parse()?, y.parse()?))
        })
        .collect()
}

/// The text of every `<text>` element of an SVG, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            t.split_once('>')
                .and_then(|(_, rest)| rest.split_once("</text>"))
        })
        .map(|(inner, _)| inner.trim().to_string())
        .collect()
}

/// The variable that turns [`checkpoint_kill_child`] on and names its output folder.
const KILL_ENV: &str = "RANKFOLD_TEST_KILL_CHILD_DIR";

/// The settings of the run the kill test interrupts: a checkpoint after every step, a long schedule.
fn kill_config(out: &Path) -> TrainConfig {
    let mut c = config(out);
    (c.steps, c.checkpoint_every) = (100_000, 1);
    c
}

/// The child process of [`checkpoints_survive_a_kill_at_any_moment`]: trains and checkpoints until killed.
#[test]
#[ignore = "the child process of checkpoints_survive_a_kill_at_any_moment"]
fn checkpoint_kill_child() -> Result<()> {
    let Ok(dir) = std::env::var(KILL_ENV) else {
        return Ok(());
    };
    let mut t = Trainer::new(kill_config(Path::new(&dir)), model(true)?)?;
    t.run(|p| batch(p, 4), loss, None)?;
    Ok(())
}

#[test]
fn checkpoints_survive_a_kill_at_any_moment() -> Result<()> {
    use std::time::{Duration, Instant};
    let exe = std::env::current_exe()?;
    let mut rng = Rng::new(4242);
    for round in 0..4 {
        let d = out_dir(&format!("kill{round}"));
        let mut child = std::process::Command::new(&exe)
            .args([
                "trainer::lifecycle::checkpoint_kill_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(KILL_ENV, &d)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let t0 = Instant::now();
        while latest_checkpoint(&d)?.is_none() {
            if let Some(s) = child.try_wait()? {
                anyhow::bail!("the child exited ({s}) before its first checkpoint");
            }
            if t0.elapsed() > Duration::from_secs(120) {
                child.kill()?;
                anyhow::bail!("no checkpoint after two minutes");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // A random moment during the checkpoint-every-step loop, most of which is spent writing checkpoints.
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        child.kill()?;
        child.wait()?;
        let ckpt = latest_checkpoint(&d)?.context("no checkpoint after the kill")?;
        let st = checkpoint::TrainerState::read(&ckpt)?;
        ensure!(st.position == 2 * st.step as u64, "round {round}: {st:?}");
        // The checkpoint is whole: it resumes, and its next step's loss is the straight run's.
        let mut r = Trainer::resume(kill_config(&d), model(false)?, &ckpt)?;
        let next = r.run_until(st.step + 1, |p| batch(p, 4), loss, None)?;
        let ds = out_dir(&format!("kill{round}-straight"));
        let mut c = kill_config(&ds);
        c.checkpoint_every = 0;
        let straight =
            Trainer::new(c, model(true)?)?.run_until(st.step + 1, |p| batch(p, 4), loss, None)?;
        ensure!(
            losses(&next.steps) == losses(&straight.steps[st.step..]),
            "round {round}: step {} after resuming from {}: {:?} vs {:?}",
            st.step + 1,
            ckpt.display(),
            next.steps,
            &straight.steps[st.step..]
        );
        // The killed run may have logged steps past its checkpoint; after the resume every step is logged once.
        let logged: Vec<usize> = read_metrics(&d.join(METRICS_FILE))?.iter().filter(|m| m.loss.is_some()).map(|m| m.step).collect();
        ensure!(logged == (1..=st.step + 1).collect::<Vec<_>>(), "round {round}: metrics steps {logged:?}");
        for d in [d, ds] {
            std::fs::remove_dir_all(d)?;
        }
    }
    Ok(())
}

#[test]
fn lora_fa_resumes_with_a_still_frozen() -> Result<()> {
    use rankfold_adapters::lora::{LoraConfig, LoraInit};
    // PEFT files save LoRA-FA as LoRA; the checkpoint notes the method so that A stays frozen after resume.
    let fa = || -> Result<PeftModel<TestModel>> {
        let mut pm = model(false)?;
        let mut c = LoraConfig::new(TargetModules::AllLinear)
            .with_rank(3, 6.0)
            .with_lora_fa(true);
        c.init_lora_weights = LoraInit::Random;
        pm.add_adapter("default", Box::new(c))?;
        Ok(pm)
    };
    let files = |pm: &mut PeftModel<TestModel>, d: &Path| -> Result<Vec<u8>> {
        pm.save_pretrained(d, "default")?;
        Ok(std::fs::read(d.join("adapter_model.safetensors"))?)
    };
    let (da, db) = (out_dir("fa-straight"), out_dir("fa-resumed"));
    let mut a = Trainer::new(config(&da), fa()?)?;
    let straight = a.run(|p| batch(p, 5), loss, None)?;
    let want = files(a.model(), &da.join("final"))?;
    let mut b = Trainer::new(config(&db), fa()?)?;
    let first = b.run_until(3, |p| batch(p, 5), loss, None)?;
    drop(b);
    let ckpt = latest_checkpoint(&db)?.context("no checkpoint")?;
    ensure!(
        checkpoint::TrainerState::read(&ckpt)?.method.as_deref() == Some(checkpoint::LORA_FA),
        "the checkpoint does not note LoRA-FA"
    );
    let mut r = Trainer::resume(config(&db), model(false)?, &ckpt)?;
    let n_trainable = r.model().parameters().len();
    let rest = r.run(|p| batch(p, 5), loss, None)?;
    let mut got = losses(&first.steps);
    got.extend(losses(&rest.steps));
    ensure!(
        got == losses(&straight.steps),
        "losses: {:?} vs {:?}",
        got,
        losses(&straight.steps)
    );
    ensure!(
        files(r.model(), &db.join("final"))? == want,
        "the adapter files differ after resume"
    );
    // Only B trains: one tensor per linear layer of the test model.
    ensure!(
        n_trainable == a.model().parameters().len(),
        "{n_trainable} trainable tensors after resume"
    );
    for d in [da, db] {
        std::fs::remove_dir_all(d)?;
    }
    Ok(())
}

#[test]
fn a_resume_after_a_kill_past_the_last_checkpoint_logs_every_step_once() -> Result<()> {
    // A run that got to step 5 with its last checkpoint at step 4 (as if killed right after step 5), resumed.
    let (d, ds) = (out_dir("relog"), out_dir("relog-straight"));
    let mut c = config(&d);
    (c.steps, c.checkpoint_every) = (8, 2);
    Trainer::new(c.clone(), model(true)?)?.run_until(5, |p| batch(p, 5), loss, None)?;
    let before: Vec<usize> = read_metrics(&d.join(METRICS_FILE))?.iter().map(|m| m.step).collect();
    ensure!(before == [1, 2, 3, 4, 5], "{before:?}");
    let mut r = Trainer::resume(c.clone(), model(false)?, &d.join("checkpoint-4"))?;
    r.run(|p| batch(p, 5), loss, None)?;
    let got = read_metrics(&d.join(METRICS_FILE))?;
    let steps: Vec<usize> = got.iter().map(|m| m.step).collect();
    ensure!(steps == (1..=8).collect::<Vec<_>>(), "{steps:?}");
    c.output_dir = ds.clone();
    let straight = Trainer::new(c, model(true)?)?.run(|p| batch(p, 5), loss, None)?;
    ensure!(losses(&got) == losses(&straight.steps), "the logged losses differ from the straight run's");
    for d in [d, ds] {
        std::fs::remove_dir_all(d)?;
    }
    Ok(())
}
