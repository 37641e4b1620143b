//! `rankfold train` and `rankfold eval` as a user runs them, on the tiny Llama fixture with a byte-level
//! tokenizer: the JSON summary's fields against the files the run wrote (and `eval` with the saved adapter giving
//! the run's final accuracy), Ctrl-C (a real SIGINT) writing a checkpoint from which `--resume` reaches the
//! uninterrupted run's losses bit for bit, the same losses across processes and thread counts, and `inspect` of a
//! checkpoint reporting its optimizer and state bytes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use rankfold_tensor::Rng;
use serde_json::Value;

use super::{model_with_tokenizer, run_json, s, scratch};

/// `n` chat records: a string of `a`s and `b`s, answered "yes" when `a` is the majority.
fn chat_data(path: &Path, n: usize) -> Result<()> {
    let mut rng = Rng::new(31);
    let mut out = String::new();
    for _ in 0..n {
        let len = 6 + rng.below(20) as usize;
        let text: String = (0..len).map(|_| if rng.uniform() < 0.5 { 'a' } else { 'b' }).collect();
        let yes = 2 * text.matches('a').count() > len;
        let answer = if yes { "yes" } else { "no" };
        let rec = serde_json::json!({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]});
        out.push_str(&format!("{rec}\n"));
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// A scratch folder for test `tag` with the tiny model (and its tokenizer) and `n` chat records in it.
fn setup(tag: &str, n: usize) -> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let tmp = scratch(tag)?;
    let model = model_with_tokenizer(&tmp)?;
    let data = tmp.join("chat.jsonl");
    chat_data(&data, n)?;
    Ok((tmp, model, data))
}

/// The per-step losses in a run's metrics.jsonl, as bit patterns.
fn losses(metrics: &Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(metrics).with_context(|| metrics.display().to_string())?;
    let mut v = Vec::new();
    for line in text.lines() {
        let m: Value = serde_json::from_str(line)?;
        if let Some(l) = m.get("loss").and_then(Value::as_f64) {
            v.push(l.to_bits());
        }
    }
    Ok(v)
}

/// The flags every run here shares: model, data, labels, sizes.
fn common<'a>(model: &'a Path, data: &'a Path) -> Vec<&'a str> {
    vec![
        "--model", s(model), "--data", s(data), "--format", "messages", "--labels", "yes,no", "--eval-examples", "6",
        "--batch-size", "4", "--max-len", "64",
    ]
}

#[test]
fn train_json_summary_names_what_the_run_wrote_and_eval_reproduces_its_accuracy() -> Result<()> {
    let (tmp, model, data) = setup("train-json", 30)?;
    let out = tmp.join("run");
    let mut args = vec!["train"];
    args.extend(common(&model, &data));
    args.extend(["-r", "4", "--steps", "3", "--lr", "0.01", "--out", s(&out)]);
    let v = run_json(&args)?;
    ensure!(v["command"] == "train" && v["steps"] == 3 && v["total_steps"] == 3 && v["interrupted"] == false, "{v}");
    ensure!(v["first_loss"].as_f64().is_some_and(f64::is_finite) && v["tokens"].as_u64().is_some_and(|t| t > 0));
    ensure!(v["train_examples"] == 24 && v["batch_size"] == 4, "{v}");
    let adapter = out.join("adapter");
    ensure!(v["adapter"] == adapter.display().to_string() && adapter.join("adapter_config.json").is_file(), "{v}");
    ensure!(v["metrics"] == out.join("metrics.jsonl").display().to_string(), "{v}");
    ensure!(losses(&out.join("metrics.jsonl"))?.len() == 3, "one loss line per step");
    ensure!(v["plot"].as_str().is_some_and(|p| Path::new(p).is_file()), "{v}");
    let acc = &v["eval"]["accuracy"];
    ensure!(acc["examples"] == 6, "{v}");
    // The saved adapter evaluates to the run's final accuracy.
    let mut args = vec!["eval"];
    args.extend(common(&model, &data));
    args.extend(["--adapter", s(&adapter)]);
    let e = run_json(&args)?;
    ensure!(e["command"] == "eval" && e["accuracy"] == *acc, "eval {e} vs the run's {acc}");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn ctrl_c_checkpoints_and_resume_reaches_the_straight_runs_losses() -> Result<()> {
    let (tmp, model, data) = setup("train-sigint", 120)?;
    let run_args = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> = vec!["train".into()];
        a.extend(common(&model, &data).into_iter().map(String::from));
        let out = s(out).to_string();
        a.extend(["--steps", "60", "--grad-accum", "2", "--lr", "0.01", "--dropout", "0.1", "--no-final-eval", "--out"]
            .into_iter()
            .map(String::from));
        a.push(out);
        a
    };
    let straight = tmp.join("straight");
    let a = run_args(&straight);
    run_json(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    let want = losses(&straight.join("metrics.jsonl"))?;
    ensure!(want.len() == 60);

    // The same run, sent SIGINT once its first progress line is out.
    let stopped = tmp.join("stopped");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rankfold"))
        .args(run_args(&stopped))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = BufReader::new(child.stderr.take().context("stderr")?);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        ensure!(err.read_line(&mut line)? > 0, "the run ended before a step line: {seen}");
        seen.push_str(&line);
        if line.contains("step ") {
            break;
        }
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
    ensure!(kill.success(), "kill -INT failed");
    let rest: Vec<String> = err.lines().map_while(Result::ok).collect();
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "exit {:?}: {}", out.status, rest.join("\n"));
    ensure!(stdout.contains("(stopped; resume with --resume)") && stdout.contains("checkpoint"), "{stdout}");
    let done = losses(&stopped.join("metrics.jsonl"))?;
    ensure!(!done.is_empty() && done.len() < 60, "{} steps before the stop", done.len());
    ensure!(done[..] == want[..done.len()], "the steps before the stop differ from the straight run's");

    let mut a = run_args(&stopped);
    a.push("--resume".into());
    run_json(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    let got = losses(&stopped.join("metrics.jsonl"))?;
    ensure!(got == want, "stopped + resumed losses differ from the straight run's");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn the_same_run_gives_the_same_losses_in_two_processes_and_with_one_or_two_threads() -> Result<()> {
    let (tmp, model, data) = setup("train-determinism", 40)?;
    let mut curves = Vec::new();
    for (i, threads) in ["1", "2", "2"].into_iter().enumerate() {
        let out = tmp.join(format!("run{i}"));
        let mut args: Vec<String> = vec!["--json".into(), "train".into()];
        args.extend(common(&model, &data).into_iter().map(String::from));
        args.extend(["--steps", "8", "--lr", "0.01", "--dropout", "0.1", "--grad-accum", "2", "--no-final-eval", "--out"].map(String::from));
        args.push(s(&out).into());
        let o = Command::new(env!("CARGO_BIN_EXE_rankfold")).args(&args).env("RAYON_NUM_THREADS", threads).output()?;
        ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        curves.push(losses(&out.join("metrics.jsonl"))?);
    }
    ensure!(curves[0].len() == 8, "{} steps", curves[0].len());
    ensure!(curves[1] == curves[2], "two processes with 2 threads gave different losses");
    ensure!(curves[0] == curves[1], "1 and 2 threads gave different losses");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn inspect_of_a_checkpoint_reports_its_optimizer_and_state_bytes() -> Result<()> {
    let (tmp, model, data) = setup("train-inspect-optim", 30)?;
    let mut want_per = Vec::new();
    for optim in ["adamw_torch", "adamw_8bit"] {
        let out = tmp.join(optim);
        let mut args = vec!["train"];
        args.extend(common(&model, &data));
        // Rank 64 on every projection: q_proj's A [64, 64] has 4096 elements, 8-bit under adamw_8bit.
        args.extend(["-r", "64", "--steps", "2", "--checkpoint-every", "2", "--no-final-eval", "--optim", optim, "--out", s(&out)]);
        run_json(&args)?;
        let ckpt = out.join("checkpoint-2");
        let v = run_json(&["inspect", s(&ckpt.join("adapter"))])?;
        let o = &v["optimizer"];
        ensure!(o["name"] == optim, "{v}");
        // The bytes are the state file's tensors, by an independent read.
        let st = rankfold_tensor::safetensors::MmapedSafetensors::open(ckpt.join("optimizer.safetensors"))?;
        let bytes: usize = st.names().iter().map(|n| st.info(n).map(|(s, d)| s.elem_count() * d.size_in_bytes())).sum::<rankfold_tensor::Result<usize>>()?;
        ensure!(o["state_bytes"] == bytes && o["params"] == v["total_params"], "{v}");
        want_per.push(bytes as f64 / v["total_params"].as_f64().context("total_params")?);
    }
    // f32 moments cost 8 bytes a parameter; the 8-bit state costs less wherever a tensor reaches 4096 elements.
    ensure!(want_per[0] > 8.0 && want_per[0] < 8.1 && want_per[1] < want_per[0] - 1.0, "{want_per:?}");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
