//! `cargo xtask demo`: the README's first command. It fetches SmolLM2-135M-Instruct and the IMDB reviews
//! (`assets.rs`), builds the release `rankfold` binary once, measures the label accuracy on held-out IMDB test
//! reviews, QLoRA-fine-tunes the model with `recipes/smollm2-imdb-qlora.toml`, measures again with the saved
//! adapter, and prints a before/after table with times, peak memory and the paths of what it wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::assets;

/// The recipe the demo trains with.
const RECIPE: &str = "recipes/smollm2-imdb-qlora.toml";

/// The options of `cargo xtask demo`.
#[derive(Debug)]
struct Options {
    out: Option<PathBuf>,
    overwrite: bool,
    steps: Option<String>,
    eval_examples: Option<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        out: None,
        overwrite: false,
        steps: None,
        eval_examples: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => o.out = Some(PathBuf::from(crate::flag_value(a, &mut it)?)),
            "--overwrite" => o.overwrite = true,
            "--steps" => o.steps = Some(crate::flag_value(a, &mut it)?),
            "--eval-examples" => o.eval_examples = Some(crate::flag_value(a, &mut it)?),
            other => bail!("demo: unknown argument `{other}`"),
        }
    }
    Ok(o)
}

/// Runs the binary with `args`, its stderr (progress) passed through, and returns the JSON of its last stdout
/// line.
fn run_json(bin: &Path, args: &[String]) -> Result<Value> {
    eprintln!("demo: {} {}", bin.display(), args.join(" "));
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({})",
            bin.display(),
            args.first().map_or("", String::as_str),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("the command printed no summary")?;
    serde_json::from_str(line).with_context(|| format!("the summary line is not JSON: {line}"))
}

/// "83.4% (417/500)" from an eval summary.
fn accuracy_text(v: &Value) -> String {
    let a = &v["accuracy"];
    match (
        a["accuracy"].as_f64(),
        a["correct"].as_u64(),
        a["examples"].as_u64(),
    ) {
        (Some(x), Some(c), Some(n)) => format!("{:.1}% ({c}/{n})", 100.0 * x),
        _ => "-".into(),
    }
}

/// How often each label was predicted: "negative 12%, positive 88%".
fn shares_text(v: &Value) -> String {
    let n = v["accuracy"]["examples"].as_f64().unwrap_or(0.0).max(1.0);
    let classes = v["accuracy"]["classes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    classes
        .iter()
        .map(|c| {
            let p = c["predicted"].as_f64().unwrap_or(0.0);
            format!(
                "{} {:.0}%",
                c["word"].as_str().unwrap_or("?"),
                100.0 * p / n
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |b| {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    })
}

fn secs(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |s| format!("{:.0} s", s))
}

/// `path` relative to the working folder when it lies inside it (as the README shows the demo's paths).
fn shown(path: &str) -> String {
    let cwd = std::env::current_dir().ok();
    cwd.and_then(|d| Path::new(path).strip_prefix(d).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.to_string())
}

/// Fails when `out` holds files and `overwrite` is off (the training step would refuse it later).
fn check_out(out: &Path, overwrite: bool) -> Result<()> {
    let used = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
    if used && !overwrite {
        bail!(
            "demo: {} is not empty; pass --overwrite to replace the earlier run there, or choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// `cargo xtask demo [--out DIR] [--overwrite] [--steps N] [--eval-examples N]`.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let (out, overwrite) = match &o.out {
        Some(p) => (p.clone(), o.overwrite),
        // The default folder is the demo's own, under target/: a rerun replaces it.
        None => (target.join("rankfold-demo"), true),
    };
    // A used folder is refused now, not after the downloads, the build and the first evaluation.
    check_out(&out, overwrite)?;
    let start = Instant::now();
    assets::run(&["smollm2-135m-instruct".to_string(), "imdb".to_string()])?;
    let model = assets::asset_path("smollm2-135m-instruct")?;
    let reviews = assets::asset_path("imdb")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "--bin", "rankfold"])
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release --bin rankfold failed");
    }
    let bin = target
        .join("release")
        .join(format!("rankfold{}", std::env::consts::EXE_SUFFIX));
    let demo_start = Instant::now();
    let recipe = root.join(RECIPE);
    let mut common = vec![
        "--json".to_string(),
        "--config".into(),
        recipe.display().to_string(),
        "--model".into(),
        model.display().to_string(),
        "--data".into(),
        reviews.display().to_string(),
    ];
    if let Some(n) = &o.eval_examples {
        common.extend(["--eval-examples".into(), n.clone()]);
    }
    let with = |cmd: &str, extra: &[String]| -> Vec<String> {
        let mut v = vec![cmd.to_string()];
        v.extend(common.iter().cloned());
        v.extend(extra.iter().cloned());
        v
    };
    eprintln!("demo: 1/3 accuracy of the base model on held-out IMDB test reviews");
    let before = run_json(&bin, &with("eval", &[]))?;
    eprintln!("demo: before: {}", accuracy_text(&before));
    eprintln!("demo: 2/3 QLoRA fine-tuning ({RECIPE})");
    let mut train_extra = vec![
        "--out".to_string(),
        out.display().to_string(),
        "--no-final-eval".into(),
    ];
    if overwrite {
        train_extra.push("--overwrite".into());
    }
    if let Some(s) = &o.steps {
        train_extra.extend(["--steps".into(), s.clone()]);
    }
    let train = run_json(&bin, &with("train", &train_extra))?;
    let adapter = train["adapter"]
        .as_str()
        .context("training wrote no adapter")?
        .to_string();
    eprintln!("demo: 3/3 accuracy with the trained adapter");
    let after = run_json(&bin, &with("eval", &["--adapter".into(), adapter.clone()]))?;
    let demo_s = demo_start.elapsed().as_secs_f64();
    let rows = [
        (
            "accuracy before",
            format!("{}  [{}]", accuracy_text(&before), shares_text(&before)),
        ),
        (
            "accuracy after",
            format!("{}  [{}]", accuracy_text(&after), shares_text(&after)),
        ),
        (
            "train steps",
            format!(
                "{} x {} reviews (from a pool of {})",
                train["steps"],
                train["batch_size"].as_u64().unwrap_or(0)
                    * train["grad_accum"].as_u64().unwrap_or(1),
                train["train_examples"]
            ),
        ),
        (
            "train loss",
            format!(
                "{:.3} -> {:.3}",
                train["first_loss"].as_f64().unwrap_or(f64::NAN),
                train["final_loss"].as_f64().unwrap_or(f64::NAN)
            ),
        ),
        (
            "train time",
            format!(
                "{} ({:.0} tokens/s)",
                secs(&train["train_s"]),
                train["tokens_per_s"].as_f64().unwrap_or(0.0)
            ),
        ),
        (
            "eval time",
            format!(
                "{} before, {} after",
                secs(&before["wall_s"]),
                secs(&after["wall_s"])
            ),
        ),
        (
            "total time",
            format!(
                "{:.0} s (with assets and build: {:.0} s)",
                demo_s,
                start.elapsed().as_secs_f64()
            ),
        ),
        (
            "peak memory",
            format!(
                "{} tensors, {} process",
                mib(&train["peak_mem_bytes"]),
                mib(&train["peak_rss_bytes"])
            ),
        ),
        ("adapter", shown(&adapter)),
        ("metrics", shown(train["metrics"].as_str().unwrap_or("-"))),
        ("loss plot", shown(train["plot"].as_str().unwrap_or("-"))),
    ];
    println!(
        "\nrankfold demo: SmolLM2-135M-Instruct (GGUF -> NF4) + LoRA, IMDB sentiment as a chat"
    );
    for (k, v) in rows {
        println!("  {k:<16} {v}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_output_folder_is_refused_before_any_work_unless_overwritten() {
        let dir = std::env::temp_dir().join(format!("rankfold-demo-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(check_out(&dir, false).is_ok(), "an absent folder is fine");
        std::fs::create_dir_all(&dir).expect("temp folder");
        assert!(check_out(&dir, false).is_ok(), "an empty folder is fine");
        std::fs::write(dir.join("metrics.jsonl"), "{}\n").expect("temp file");
        let e = check_out(&dir, false).expect_err("a used folder must be refused").to_string();
        assert!(e.contains("--overwrite") && e.contains(&dir.display().to_string()), "{e}");
        assert!(check_out(&dir, true).is_ok());
        // The whole command stops there too, before fetching or building anything.
        let args = ["--out".to_string(), dir.display().to_string()];
        let e = run(Path::new("/nonexistent-root"), &args).expect_err("refused").to_string();
        assert!(e.contains("not empty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
