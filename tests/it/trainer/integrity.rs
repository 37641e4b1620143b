//! Damaged checkpoints: a flipped byte, a truncated file or a missing file is found before anything is loaded
//! (the digests in `trainer_state.json`); the newest checkpoint that checks out is picked instead, and the run
//! resumed from it reaches the straight run's losses; a checkpoint left renamed aside by a kill during a
//! same-step replacement is put back.

use anyhow::{ensure, Context, Result};
use rankfold_train::trainer::integrity::{latest_good_checkpoint, verify};
use rankfold_train::trainer::{checkpoint, Trainer};
use rankfold_train::Error;

use super::{batch, config, loss, losses, model, out_dir};

#[test]
fn a_damaged_checkpoint_is_refused_and_the_previous_good_one_resumes() -> Result<()> {
    let (d, ds) = (out_dir("integrity"), out_dir("integrity-straight"));
    let mut c = config(&d);
    c.checkpoint_every = 2;
    Trainer::new(c.clone(), model(true)?)?.run_until(4, |p| batch(p, 5), loss, None)?;
    let (ck2, ck4) = (d.join("checkpoint-2"), d.join("checkpoint-4"));
    let state = verify(&ck4)?;
    ensure!(state.files.contains_key("optimizer.safetensors") && state.files.keys().any(|k| k.starts_with("adapter/")));

    // Each kind of damage is named, and checkpoint-2 is picked in its place.
    let opt = ck4.join(checkpoint::OPTIMIZER_FILE);
    let good = std::fs::read(&opt)?;
    let adapter = ck4.join("adapter/adapter_model.safetensors");
    let adapter_bytes = std::fs::read(&adapter)?;
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    let cases: [(&str, Box<dyn Fn() -> std::io::Result<()>>); 3] = [
        ("optimizer.safetensors", Box::new(|| std::fs::write(&opt, &flipped))),
        ("adapter/adapter_model.safetensors", Box::new(|| std::fs::write(&adapter, &adapter_bytes[..adapter_bytes.len() - 7]))),
        ("optimizer.safetensors", Box::new(|| std::fs::remove_file(&opt))),
    ];
    for (file, damage) in cases {
        damage()?;
        let e = Trainer::resume(c.clone(), model(false)?, &ck4).err().context("a damaged checkpoint resumed")?;
        ensure!(matches!(e, Error::Checkpoint { .. }) && e.to_string().contains(file), "{e}");
        let (found, skipped) = latest_good_checkpoint(&d)?;
        ensure!(found.as_deref() == Some(ck2.as_path()), "{found:?}");
        ensure!(skipped.len() == 1 && skipped[0].contains("checkpoint-4") && skipped[0].contains(file), "{skipped:?}");
        std::fs::write(&opt, &good)?;
        std::fs::write(&adapter, &adapter_bytes)?;
    }
    ensure!(latest_good_checkpoint(&d)?.0.as_deref() == Some(ck4.as_path()), "the repaired checkpoint checks out");

    // Resumed from checkpoint-2 (as after a damaged checkpoint-4), the run gives the straight run's losses.
    std::fs::remove_dir_all(&ck4)?;
    let mut r = Trainer::resume(c.clone(), model(false)?, &ck2)?;
    let rest = losses(&r.run(|p| batch(p, 5), loss, None)?.steps);
    let mut cs = c.clone();
    cs.output_dir = ds.clone();
    let straight = losses(&Trainer::new(cs, model(true)?)?.run(|p| batch(p, 5), loss, None)?.steps);
    ensure!(rest[..] == straight[2..], "resumed {rest:?} vs straight {straight:?}");

    // A kill between the two renames of a same-step replacement leaves `.old-checkpoint-6` alone: it is put back.
    let ck6 = d.join("checkpoint-6");
    std::fs::rename(&ck6, d.join(".old-checkpoint-6"))?;
    let (found, _) = latest_good_checkpoint(&d)?;
    ensure!(found.as_deref() == Some(ck6.as_path()) && ck6.is_dir() && !d.join(".old-checkpoint-6").exists());
    for d in [d, ds] {
        std::fs::remove_dir_all(d)?;
    }
    Ok(())
}
