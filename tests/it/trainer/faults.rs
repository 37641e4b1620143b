//! Non-finite losses and gradients during training: the step is skipped (its micro-batches consumed, the adapter
//! and optimizer untouched, the metrics line saying why), the run goes on, and after more than `max_bad_steps`
//! skipped steps in a row it writes a checkpoint and stops with `Error::Diverged`; the streak survives a resume.

use anyhow::{ensure, Context, Result};
use rankfold_adapters::PeftModel;
use rankfold_adapters::testing::TestModel;
use rankfold_tensor::{Rng, Tensor};
use rankfold_train::trainer::integrity::verify;
use rankfold_train::trainer::{read_metrics, Trainer, METRICS_FILE};
use rankfold_train::Error;

use super::{adapter_values, batch, config, loss, model, out_dir};

/// Micro-batch `position` of the test data, tagged with its position.
fn tagged(position: u64) -> rankfold_train::Result<((Tensor, Tensor), u64)> {
    Ok((batch(position, 5)?, position))
}

/// The test loss, made NaN for the micro-batches at the positions in `bad`.
fn loss_nan_at(
    bad: &'static [u64],
) -> impl FnMut(&mut PeftModel<TestModel>, &((Tensor, Tensor), u64), &mut Rng) -> rankfold_train::Result<Tensor> {
    move |pm, (b, position), rng| {
        let l = loss(pm, b, rng)?;
        Ok(if bad.contains(position) { l.mul_scalar(f64::NAN)? } else { l })
    }
}

#[test]
fn a_non_finite_loss_or_gradient_skips_the_step_and_the_run_goes_on() -> Result<()> {
    let d = out_dir("faults-skip");
    let mut c = config(&d);
    c.checkpoint_every = 0;
    // Micro-batch 4 is the first of step 3 (two micro-batches a step).
    let mut t = Trainer::new(c.clone(), model(true)?)?;
    let mut f = loss_nan_at(&[4]);
    t.run_until(2, tagged, &mut f, None)?;
    let before = adapter_values(t.model())?;
    let third = t.run_until(3, tagged, &mut f, None)?;
    ensure!(adapter_values(t.model())? == before, "a skipped step changed the adapter");
    let m = &third.steps[0];
    ensure!(m.step == 3 && m.loss.is_none() && m.skipped.as_deref().is_some_and(|r| r.contains("micro-batch 4")), "{m:?}");
    ensure!(t.position() == 6, "the skipped step's micro-batches are consumed: position {}", t.position());
    let rest = t.run(tagged, &mut f, None)?;
    ensure!(rest.steps.iter().all(|m| m.loss.is_some_and(f64::is_finite)) && t.step() == 6);
    let logged = read_metrics(&d.join(METRICS_FILE))?;
    ensure!(logged.iter().filter(|m| m.skipped.is_some()).count() == 1 && logged.len() == 6);

    // A finite loss whose gradient is NaN: sqrt(s − s) at 0 over an adapter tensor s.
    let d2 = out_dir("faults-grad");
    let mut c2 = config(&d2);
    c2.checkpoint_every = 0;
    let mut t = Trainer::new(c2, model(true)?)?;
    let before = adapter_values(t.model())?;
    let out = t.run_until(1, |p| batch(p, 5), |pm: &mut PeftModel<TestModel>, b: &(Tensor, Tensor), rng: &mut Rng| {
        let (_, a) = pm.parameters().into_iter().next().expect("the adapter has tensors");
        let s = a.sum_all()?;
        Ok(loss(pm, b, rng)?.add(&s.sub(&s)?.sqrt()?)?)
    }, None)?;
    let m = &out.steps[0];
    ensure!(m.skipped.as_deref().is_some_and(|r| r.contains("gradient norm")), "{m:?}");
    ensure!(adapter_values(t.model())? == before, "a NaN gradient reached the adapter");
    for d in [d, d2] {
        std::fs::remove_dir_all(d)?;
    }
    Ok(())
}

#[test]
fn too_many_bad_steps_in_a_row_checkpoint_and_stop_and_the_streak_survives_a_resume() -> Result<()> {
    let d = out_dir("faults-diverge");
    let mut c = config(&d);
    (c.max_bad_steps, c.checkpoint_every) = (2, 3);
    // Steps 2, 3 and 4 are bad (their first micro-batches 2, 4, 6); checkpoint-3 is written mid-streak.
    let e = Trainer::new(c.clone(), model(true)?)?
        .run(tagged, loss_nan_at(&[2, 4, 6]), None)
        .err()
        .context("the run should have stopped")?;
    let Error::Diverged { count, step, checkpoint, .. } = &e else { anyhow::bail!("{e}") };
    ensure!((*count, *step) == (3, 4) && checkpoint.ends_with("checkpoint-4"), "{e}");
    ensure!(e.to_string().contains("lower the learning rate"), "{e}");
    let st = verify(checkpoint)?;
    ensure!(st.step == 4 && st.bad_in_row == 3 && st.position == 8, "{st:?}");
    // Resumed from checkpoint-3 (two bad steps in a row so far), one more bad step stops the run again.
    let mut r = Trainer::resume(c.clone(), model(false)?, &d.join("checkpoint-3"))?;
    let again = r.run(tagged, loss_nan_at(&[7]), None);
    ensure!(matches!(again, Err(Error::Diverged { count: 3, step: 4, .. })), "{again:?}");
    // With good data from checkpoint-4 the run finishes, and the streak is over.
    let mut r = Trainer::resume(c, model(false)?, &d.join("checkpoint-4"))?;
    let done = r.run(|p| batch(p, 5), loss, None)?;
    ensure!(done.step == 6 && done.steps.iter().all(|m| m.skipped.is_none()));
    std::fs::remove_dir_all(d)?;
    Ok(())
}
