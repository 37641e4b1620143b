//! Recipes and runs (`rankfold_train::run`): recipe parsing and its errors, flags over a file; the gathered
//! causal-LM loss against the plain shifted cross-entropy over full logits (value and adapter gradients, random
//! labels, padding); label accuracy against per-example unpadded forwards; a train → save → load → eval round
//! trip on the tiny Llama fixture (training lowers the held-out loss); recipe paths relative to the recipe's
//! folder; and the `rankfold train` binary's errors for a bad recipe key and a used output folder (before any
//! model is loaded).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use rankfold_adapters::lora::LoraConfig;
use rankfold_adapters::{PeftModel, TargetModules};
use rankfold_models::llama::Llama;
use rankfold_tensor::{CrossEntropyOpts, DType, Device, Rng, Tensor};
use rankfold_train::data::{collate, Example, PadSide, Padding, IGNORE};
use rankfold_train::run::spec::{DataFormat, MethodName};
use rankfold_train::run::task::{label_accuracy, lm_loss, predict_labels, LabelExample, LabelTask};
use rankfold_train::run::{self, RunSpec, TrainOptions};

use crate::common::{assert_close, Tol};

fn tiny_llama() -> Result<Llama> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/tied");
    Ok(Llama::from_hf_dir(dir, DType::F32, Device::Cpu)?)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rankfold-recipes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A character tokenizer over the tiny model's 97 ids: `<|im_start|>` 1, `<|im_end|>` 2, every other character
/// 3 + (code point mod 94).
fn char_tok(text: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("<|im_start|>") {
            ids.push(1);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("<|im_end|>") {
            ids.push(2);
            rest = r;
        } else {
            let c = rest.chars().next().expect("rest is not empty");
            ids.push(3 + (c as u32) % 94);
            rest = &rest[c.len_utf8()..];
        }
    }
    ids
}

const RECIPE: &str = r#"
[model]
path = "model.gguf"
nf4 = true
blocksize = 128

[adapter]
method = "lora-fa"
r = 4
alpha = 8
targets = ["q_proj", "v_proj"]

[data]
format = "imdb-chat"
path = "reviews.json"
max_chars = 300

[train]
steps = 50
lr = 3e-4
output_dir = "out"
"#;

#[test]
fn recipe_parses_and_flags_override() -> Result<()> {
    let spec = RunSpec::from_toml_str("r.toml", RECIPE)?;
    ensure!(spec.adapter.method == Some(MethodName::LoraFa));
    ensure!(spec.adapter.targets == Some(TargetModules::list(&["q_proj", "v_proj"])));
    ensure!(spec.data.format == Some(DataFormat::ImdbChat));
    let (_, nf4) = spec.model("r.toml")?;
    ensure!(
        nf4.is_some_and(|o| o.blocksize == 128 && o.double_quant),
        "{nf4:?}"
    );
    let mut flags = RunSpec::default();
    flags.train.steps = Some(7);
    flags.adapter.r = Some(16);
    flags.data.max_chars = Some(120);
    let merged = spec.clone().overlay(flags);
    let config = merged.train_config("r.toml")?;
    ensure!(
        config.steps == 7 && config.lr == 3e-4,
        "flags must win only where given: {config:?}"
    );
    ensure!(merged.adapter.r == Some(16) && merged.adapter.alpha == Some(8.0));
    let data = merged.data("r.toml")?;
    ensure!(
        data.max_chars == 120
            && data.eval_examples == 500
            && data.labels.as_ref().is_some_and(|l| l.len() == 2)
    );
    // The method the spec builds is LoRA-FA (only B trains: one tensor per adapted module) with the flags' rank.
    let mut pm = PeftModel::new(tiny_llama()?, 0);
    pm.add_adapter("default", merged.adapter_method("r.toml", config.steps)?)?;
    let params = pm.parameters();
    ensure!(
        params.len() == 4,
        "LoRA-FA on q/v of 2 layers trains 4 tensors, got {}",
        params.len()
    );
    ensure!(
        params.iter().all(|(_, p)| p.dims().contains(&16)),
        "rank 16 from the flags"
    );
    Ok(())
}

#[test]
fn recipe_errors_name_the_key() -> Result<()> {
    let expect_err = |text: &str, needles: &[&str]| -> Result<()> {
        let spec = RunSpec::from_toml_str("bad.toml", text);
        let msg = match spec {
            Err(e) => e.to_string(),
            Ok(s) => match (
                s.model("bad.toml"),
                s.data("bad.toml"),
                s.train_config("bad.toml"),
                s.adapter_method("bad.toml", 10),
            ) {
                (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
                    e.to_string()
                }
                _ => anyhow::bail!("{text:?} was accepted"),
            },
        };
        for n in needles {
            ensure!(
                msg.contains(n),
                "error for {text:?} should mention {n:?}: {msg}"
            );
        }
        ensure!(msg.contains("bad.toml"), "the error names the file: {msg}");
        Ok(())
    };
    let ok = "[model]\npath = \"m\"\n[data]\nformat = \"text\"\npath = \"d\"\n[train]\nsteps = 3\noutput_dir = \"o\"\n";
    expect_err(&format!("{ok}[adapter]\nrank = 8\n"), &["rank"])?;
    expect_err("[trainer]\nsteps = 3\n", &["trainer"])?;
    expect_err(&format!("{ok}[adapter]\nmethod = \"dora\"\n"), &["dora"])?;
    expect_err(&format!("{ok}[adapter]\nr = 0\n"), &["adapter.r"])?;
    expect_err(
        &format!("{ok}[adapter]\nmethod = \"lora\"\ninit_r = 4\n"),
        &["adapter.init_r"],
    )?;
    expect_err(&ok.replace("steps = 3", "steps = \"three\""), &["steps"])?;
    expect_err(&ok.replace("steps = 3", "steps = 0"), &["steps"])?;
    expect_err(
        &format!("{ok}[adapter]\ndropout = 1.5\n"),
        &["adapter.dropout"],
    )?;
    expect_err(
        &ok.replace("path = \"m\"", "path = \"m\"\nblocksize = 64"),
        &["model.blocksize"],
    )?;
    expect_err(
        &ok.replace("format = \"text\"", "format = \"imdb-chat\"\npack = true"),
        &["data.pack"],
    )?;
    expect_err(
        &ok.replace("[train]\nsteps = 3\n", "[train]\n"),
        &["train.steps"],
    )?;
    Ok(())
}

/// A right-padded batch of `lengths` rows with random tokens and random labels (about a third ignored).
fn random_batch(
    rng: &mut Rng,
    lengths: &[usize],
    vocab: u32,
) -> Result<rankfold_train::data::Batch> {
    let examples: Vec<Example> = lengths
        .iter()
        .map(|&n| Example {
            input_ids: (0..n)
                .map(|_| (rng.uniform() * f64::from(vocab)) as u32 % vocab)
                .collect(),
            labels: (0..n)
                .map(|_| {
                    if rng.uniform() < 0.35 {
                        IGNORE
                    } else {
                        i64::from((rng.uniform() * f64::from(vocab)) as u32 % vocab)
                    }
                })
                .collect(),
            segment_ids: vec![0; n],
        })
        .collect();
    let padding = Padding {
        pad_id: 0,
        side: PadSide::Right,
        max_len: None,
    };
    Ok(collate(&examples.iter().collect::<Vec<_>>(), &padding)?)
}

/// The plain loss: full logits of every position, shifted against the labels, padding and unlabelled positions
/// ignored by the cross-entropy itself.
fn full_logits_loss(model: &Llama, b: &rankfold_train::data::Batch) -> Result<Tensor> {
    let bt = b.tensors(Device::Cpu)?;
    let logits = model.forward_masked(&bt.input_ids, &bt.attention_mask)?;
    let t = b.seq_len;
    let v = logits.dims()[2];
    let shifted = logits
        .narrow(1, 0, t - 1)?
        .reshape((b.batch * (t - 1), v))?;
    let targets: Vec<i64> = (0..b.batch)
        .flat_map(|r| b.labels[r * t + 1..(r + 1) * t].to_vec())
        .collect();
    let targets = Tensor::from_vec(targets, b.batch * (t - 1), Device::Cpu)?;
    Ok(shifted.cross_entropy(
        &targets,
        CrossEntropyOpts {
            ignore_index: Some(IGNORE),
            label_smoothing: 0.0,
        },
    )?)
}

#[test]
fn gathered_lm_loss_equals_full_logits_cross_entropy() -> Result<()> {
    let mut pm = PeftModel::new(tiny_llama()?, 3);
    pm.add_adapter(
        "default",
        Box::new(LoraConfig::new(TargetModules::AllLinear).with_rank(3, 6.0)),
    )?;
    // A non-zero B so that both factors of every adapter get gradients.
    let mut rng = Rng::new(11);
    for (_, p) in pm.parameters() {
        let noise = rng.normal_tensor(0.0, 0.05, p.shape().clone(), DType::F32, Device::Cpu)?;
        p.assign(&p.add(&noise)?.detach())?;
    }
    for (seed, lengths) in [(1u64, vec![7usize, 13, 4]), (2, vec![1, 9]), (3, vec![17])] {
        let batch = random_batch(&mut Rng::new(seed), &lengths, 97)?;
        if run::task::label_rows(&batch).0.is_empty() {
            continue;
        }
        let gathered = lm_loss(pm.model(), &batch)?;
        let full = full_logits_loss(pm.model(), &batch)?;
        assert_close(
            &[gathered.to_scalar()?],
            &[full.to_scalar()?],
            Tol {
                rel: 1e-5,
                abs: 1e-6,
            },
            "loss",
        )?;
        let (ga, gb) = (gathered.backward()?, full.backward()?);
        for (name, p) in pm.parameters() {
            let a = ga
                .get(&p)
                .with_context(|| format!("{name}: no gradient (gathered)"))?
                .to_vec_f32()?;
            let b = gb
                .get(&p)
                .with_context(|| format!("{name}: no gradient (full)"))?
                .to_vec_f32()?;
            let (a, b): (Vec<f64>, Vec<f64>) = (
                a.iter().map(|&x| f64::from(x)).collect(),
                b.iter().map(|&x| f64::from(x)).collect(),
            );
            ensure!(
                b.iter().any(|&x| x != 0.0),
                "{name}: the reference gradient is zero"
            );
            assert_close(
                &a,
                &b,
                Tol {
                    rel: 1e-3,
                    abs: 1e-6,
                },
                &format!("seed {seed}: grad of {name}"),
            )?;
        }
    }
    Ok(())
}

#[test]
fn label_accuracy_matches_unpadded_forwards() -> Result<()> {
    let model = tiny_llama()?;
    let words: Vec<String> = ["yes", "no", "maybe"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let task = LabelTask::new(&char_tok, &words)?;
    ensure!(task.tokens == vec![char_tok("y")[0], char_tok("n")[0], char_tok("m")[0]]);
    let mut rng = Rng::new(5);
    let examples: Vec<LabelExample> = (0..23)
        .map(|i| LabelExample {
            prompt_ids: (0..(3 + (i * 7) % 19))
                .map(|_| (rng.uniform() * 97.0) as u32 % 97)
                .collect(),
            label: i % 3,
        })
        .collect();
    let padding = Padding {
        pad_id: 0,
        side: PadSide::Right,
        max_len: Some(64),
    };
    let mut calls = 0;
    let got = predict_labels(&model, &task, &examples, &padding, 5, &mut |_, _| {
        calls += 1;
        true
    })?;
    ensure!(calls == 5, "one progress call per batch, got {calls}");
    // A progress callback that says stop ends the evaluation after that batch.
    let stopped = predict_labels(&model, &task, &examples, &padding, 5, &mut |done, _| done < 10);
    ensure!(matches!(stopped, Err(rankfold_train::Error::Interrupted { done: 10, .. })), "{stopped:?}");
    // The reference: each prompt alone (no padding, no mask), full logits at its last position.
    let mut want = Vec::new();
    for e in &examples {
        let logits = model
            .forward_ids(&e.prompt_ids, 1, e.prompt_ids.len())?
            .to_vec_f32()?;
        let v = 97;
        let last = &logits[(e.prompt_ids.len() - 1) * v..];
        let scores: Vec<f32> = task.tokens.iter().map(|&t| last[t as usize]).collect();
        let best = (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
        want.push(best);
    }
    ensure!(got == want, "batched {got:?} vs one by one {want:?}");
    ensure!(
        want.iter().collect::<std::collections::HashSet<_>>().len() > 1,
        "the random model should not answer one class only"
    );
    let acc = label_accuracy(&model, &task, &examples, &padding, 4, &mut |_, _| true)?;
    let correct = want
        .iter()
        .zip(&examples)
        .filter(|(p, e)| **p == e.label)
        .count();
    ensure!(acc.correct == correct && acc.examples == 23);
    for (k, c) in acc.classes.iter().enumerate() {
        ensure!(
            c.predicted == want.iter().filter(|&&p| p == k).count(),
            "class {k}: {c:?}"
        );
        ensure!(c.examples == examples.iter().filter(|e| e.label == k).count());
    }
    // Label words that start with the same token cannot be told apart.
    let clash: Vec<String> = vec!["yes".into(), "yeah".into()];
    ensure!(LabelTask::new(&char_tok, &clash).is_err());
    Ok(())
}

/// A messages JSONL file where the answer is "yes" when the text has more a's than b's.
fn write_chat_data(path: &Path, n: usize, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut out = String::new();
    for _ in 0..n {
        let len = 5 + (rng.uniform() * 12.0) as usize;
        let text: String = (0..len)
            .map(|_| if rng.uniform() < 0.5 { 'a' } else { 'b' })
            .collect();
        let a = text.chars().filter(|&c| c == 'a').count();
        let answer = if 2 * a > len { "yes" } else { "no" };
        out.push_str(
            &serde_json::json!({"messages": [
                {"role": "user", "content": text},
                {"role": "assistant", "content": answer},
            ]})
            .to_string(),
        );
        out.push('\n');
    }
    std::fs::write(path, out)?;
    Ok(())
}

#[test]
fn train_then_eval_round_trip_on_the_tiny_llama() -> Result<()> {
    let dir = temp_dir("e2e");
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("chat.jsonl");
    write_chat_data(&data, 30, 9)?;
    let out = dir.join("run");
    let recipe = format!(
        "[adapter]\nr = 4\ntargets = \"all-linear\"\n[data]\nformat = \"messages\"\npath = {:?}\nlabels = [\"yes\", \"no\"]\n\
         eval_examples = 7\nbatch_size = 4\neval_batch_size = 3\nmax_len = 48\n[train]\nsteps = 4\nlr = 1e-2\n\
         output_dir = {:?}\n",
        data.display().to_string(),
        out.display().to_string()
    );
    let spec = RunSpec::from_toml_str("e2e.toml", &recipe)?;
    let prepared = run::prepare(&spec, "e2e.toml", &char_tok, Some(2), false)?;
    ensure!(prepared.examples.train.len() == 23 && prepared.examples.eval.len() == 7);
    let opts = TrainOptions {
        final_eval: true,
        ..TrainOptions::default()
    };
    let s = run::train(&spec, "e2e.toml", tiny_llama()?, &prepared, opts)?;
    ensure!(s.steps == 4 && !s.interrupted && s.tokens > 0, "{s:?}");
    ensure!(s.first_loss.is_some_and(f64::is_finite) && s.final_loss.is_some_and(f64::is_finite));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    ensure!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count() == 4,
        "{metrics}"
    );
    let trained = s
        .eval
        .as_ref()
        .and_then(|e| e.accuracy.clone())
        .context("final evaluation missing")?;
    ensure!(trained.examples == 7);
    // The saved adapter, loaded on a fresh model, evaluates exactly like the model that trained it.
    let adapter = s.adapter.clone().context("no adapter saved")?;
    let mut pm = PeftModel::new(tiny_llama()?, 0);
    pm.load(&adapter, "default")?;
    pm.set_training(false)?;
    let eval_data = run::prepare(&spec, "e2e.toml", &char_tok, Some(2), true)?;
    let report = run::evaluate(pm.model(), &eval_data, true, &mut |_, _, _| true)?;
    ensure!(
        report.accuracy.as_ref() == Some(&trained),
        "{:?} vs {trained:?}",
        report.accuracy
    );
    let labelled: usize = eval_data
        .examples
        .eval
        .iter()
        .map(|e| e.trained_tokens())
        .sum();
    ensure!(
        report
            .lm
            .is_some_and(|l| l.loss.is_finite() && l.tokens == labelled),
        "{:?}",
        report.lm
    );
    // Training lowered the held-out loss below the base model's.
    let base = run::evaluate(&tiny_llama()?, &eval_data, true, &mut |_, _, _| true)?;
    let (before, after) = (base.lm.context("base loss")?.loss, report.lm.context("trained loss")?.loss);
    ensure!(after < before, "held-out loss {before} before training, {after} after");
    // A second run into the same folder is refused unless it overwrites.
    let opts = TrainOptions::default();
    let again = run::train(&spec, "e2e.toml", tiny_llama()?, &prepared, opts);
    ensure!(
        again
            .as_ref()
            .is_err_and(|e| e.to_string().contains("not empty")),
        "{again:?}"
    );
    // --overwrite removes the earlier run's files only: a file of the user's in the folder stays.
    std::fs::write(out.join("notes.txt"), "mine")?;
    let opts = TrainOptions {
        overwrite: true,
        ..TrainOptions::default()
    };
    let s2 = run::train(&spec, "e2e.toml", tiny_llama()?, &prepared, opts)?;
    ensure!(
        s2.first_loss == s.first_loss,
        "the same seed gives the same first loss"
    );
    ensure!(std::fs::read_to_string(out.join("notes.txt"))? == "mine", "--overwrite touched a user's file");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    ensure!(metrics.lines().filter(|l| l.contains("\"loss\"")).count() == 4, "the old metrics were not replaced");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn train_binary_names_the_bad_recipe_key() -> Result<()> {
    let dir = temp_dir("cli");
    std::fs::create_dir_all(&dir)?;
    let recipe = dir.join("bad.toml");
    std::fs::write(&recipe, "[adapter]\nrank = 8\n")?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rankfold"))
        .args(["train", "--config"])
        .arg(&recipe)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("rank") && err.contains("bad.toml"),
        "{err}"
    );
    // Flags override the file: with the key fixed but no model, the error is the missing model path.
    std::fs::write(
        &recipe,
        "[adapter]\nr = 8\n[data]\nformat = \"text\"\npath = \"x.jsonl\"\n[train]\nsteps = 2\n",
    )?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rankfold"))
        .args(["train", "--out"])
        .arg(dir.join("o"))
        .arg("--config")
        .arg(&recipe)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("model.path"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn recipe_file_paths_resolve_against_its_folder_and_flag_paths_against_the_working_folder() -> Result<()> {
    let dir = temp_dir("relative");
    std::fs::create_dir_all(dir.join("recipes"))?;
    let recipe = dir.join("recipes/r.toml");
    let abs = dir.join("abs.jsonl");
    std::fs::write(
        &recipe,
        format!(
            "[model]\npath = \"m\"\n[adapter]\nconfig = \"a.json\"\n[data]\nformat = \"text\"\npath = \"d.jsonl\"\n\
             eval_path = {:?}\n[train]\nsteps = 2\noutput_dir = \"../out\"\n",
            abs.display().to_string()
        ),
    )?;
    let spec = RunSpec::from_file(&recipe)?;
    let here = dir.join("recipes");
    ensure!(spec.model.path.as_deref() == Some(here.join("m").as_path()), "{:?}", spec.model.path);
    ensure!(spec.adapter.config.as_deref() == Some(here.join("a.json").as_path()));
    ensure!(spec.data.path.as_deref() == Some(here.join("d.jsonl").as_path()));
    ensure!(spec.data.eval_path.as_deref() == Some(abs.as_path()), "absolute paths are kept");
    ensure!(spec.train_config("r.toml")?.output_dir == here.join("../out"));
    let mut flags = RunSpec::default();
    flags.data.path = Some(PathBuf::from("flag.jsonl"));
    let merged = spec.overlay(flags);
    ensure!(merged.data.path.as_deref() == Some(Path::new("flag.jsonl")), "a flag's path is the working folder's");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn train_binary_checks_the_output_folder_before_loading_the_model() -> Result<()> {
    let dir = temp_dir("outfirst");
    std::fs::create_dir_all(dir.join("out"))?;
    std::fs::write(dir.join("out/notes.txt"), "an earlier run's notes")?;
    std::fs::write(dir.join("d.jsonl"), "{\"text\": \"hello\"}\n")?;
    let recipe = dir.join("r.toml");
    std::fs::write(
        &recipe,
        "[model]\npath = \"no-such-model\"\n[data]\nformat = \"text\"\npath = \"d.jsonl\"\n[train]\nsteps = 2\n\
         output_dir = \"out\"\n",
    )?;
    let run = |extra: &[&str]| -> Result<String> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rankfold"))
            .args(["train", "--config"])
            .arg(&recipe)
            .args(extra)
            .output()?;
        ensure!(!out.status.success(), "train succeeded");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // The model does not exist, but the used output folder is reported first, and left as it was.
    let err = run(&[])?;
    ensure!(err.contains("not empty") && err.contains("--overwrite") && !err.contains("no-such-model"), "{err}");
    ensure!(std::fs::read_to_string(dir.join("out/notes.txt"))? == "an earlier run's notes");
    let err = run(&["--resume"])?;
    ensure!(err.contains("no checkpoint to resume"), "{err}");
    // With the folder allowed, the missing model is what stops the run, before anything is removed.
    let err = run(&["--overwrite"])?;
    ensure!(err.contains("no-such-model"), "{err}");
    ensure!(dir.join("out/notes.txt").is_file());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn the_demo_recipe_parses_and_docs_training_md_shows_it_as_it_is() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("recipes/smollm2-imdb-qlora.toml");
    let spec = RunSpec::from_file(&file)?;
    let origin = file.display().to_string();
    // Model and data come from flags; everything else is checked as `rankfold train` checks it.
    let mut flags = RunSpec::default();
    flags.model.path = Some(PathBuf::from("model.gguf"));
    flags.data.path = Some(PathBuf::from("reviews.json"));
    flags.train.output_dir = Some(PathBuf::from("out"));
    let full = spec.clone().overlay(flags);
    let config = full.train_config(&origin)?;
    full.adapter_method(&origin, config.steps)?;
    let data = full.data(&origin)?;
    ensure!(config.steps == 80 && data.eval_examples == 500 && full.model(&origin)?.1.is_some());
    // The TOML block in docs/training.md is the file's content without its header comments.
    let doc = std::fs::read_to_string(root.join("docs/training.md"))?;
    let block = doc.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).context("no toml block")?;
    let body: String = std::fs::read_to_string(&file)?
        .lines()
        .skip_while(|l| l.starts_with('#') || l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    ensure!(block == body, "docs/training.md's recipe differs from {}", file.display());
    ensure!(RunSpec::from_toml_str("doc", block)? == spec, "the documented recipe parses to another spec");
    Ok(())
}

/// A progress observer that sets the stop flag once step `at` is done (as Ctrl-C would).
struct StopAt {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    at: usize,
}

impl rankfold_train::trainer::Progress for StopAt {
    fn on_step(&mut self, m: &rankfold_train::trainer::StepMetrics, _total: usize) {
        if m.step == self.at {
            self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[test]
fn stopped_run_resumes_to_the_straight_runs_losses() -> Result<()> {
    let dir = temp_dir("resume");
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("chat.jsonl");
    write_chat_data(&data, 21, 4)?;
    let recipe = |out: &Path| {
        format!(
            "[adapter]\nr = 2\ntargets = [\"q_proj\", \"down_proj\"]\n[data]\nformat = \"messages\"\npath = {:?}\n\
             batch_size = 3\nmax_len = 48\n[train]\nsteps = 5\nlr = 5e-3\nwarmup = 1\noutput_dir = {:?}\n",
            data.display().to_string(),
            out.display().to_string()
        )
    };
    let losses = |out: &Path| -> Result<Vec<f64>> {
        let m = rankfold_train::trainer::read_metrics(&out.join("metrics.jsonl"))?;
        Ok(m.iter().filter_map(|l| l.loss).collect())
    };
    let straight = dir.join("straight");
    let spec = RunSpec::from_toml_str("a.toml", &recipe(&straight))?;
    let prepared = run::prepare(&spec, "a.toml", &char_tok, Some(2), false)?;
    run::train(
        &spec,
        "a.toml",
        tiny_llama()?,
        &prepared,
        TrainOptions::default(),
    )?;
    let stopped = dir.join("stopped");
    let spec = RunSpec::from_toml_str("b.toml", &recipe(&stopped))?;
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = TrainOptions {
        stop: Some(flag.clone()),
        progress: Some(Box::new(StopAt { flag, at: 2 })),
        ..TrainOptions::default()
    };
    let s = run::train(&spec, "b.toml", tiny_llama()?, &prepared, opts)?;
    ensure!(
        s.interrupted && s.steps == 2 && s.adapter.is_none() && s.checkpoint.is_some(),
        "{s:?}"
    );
    let refused = run::train(
        &spec,
        "b.toml",
        tiny_llama()?,
        &prepared,
        TrainOptions::default(),
    );
    ensure!(
        refused.is_err(),
        "a folder with a checkpoint needs resume or overwrite"
    );
    let s = run::train(
        &spec,
        "b.toml",
        tiny_llama()?,
        &prepared,
        TrainOptions {
            resume: true,
            ..TrainOptions::default()
        },
    )?;
    ensure!(s.steps == 5 && s.adapter.is_some(), "{s:?}");
    let (a, b) = (losses(&straight)?, losses(&stopped)?);
    ensure!(
        a.len() == 5 && a == b,
        "straight {a:?} vs stopped and resumed {b:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn the_stop_flag_cuts_a_running_evaluation_short() -> Result<()> {
    let dir = temp_dir("evalstop");
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("chat.jsonl");
    write_chat_data(&data, 40, 6)?;
    let recipe = |out: &Path| {
        format!(
            "[adapter]\nr = 2\n[data]\nformat = \"messages\"\npath = {:?}\neval_examples = 12\nbatch_size = 3\n\
             eval_batch_size = 2\nmax_len = 48\n[train]\nsteps = 4\nlr = 5e-3\neval_every = 1\noutput_dir = {:?}\n",
            data.display().to_string(),
            out.display().to_string()
        )
    };
    // The flag is set after step 2: the evaluation that follows stops at its first batch, and the run stops at
    // step 2 with a checkpoint, its eval lines only for step 1.
    let out = dir.join("periodic");
    let spec = RunSpec::from_toml_str("e.toml", &recipe(&out))?;
    let prepared = run::prepare(&spec, "e.toml", &char_tok, Some(2), false)?;
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = TrainOptions {
        stop: Some(flag.clone()),
        progress: Some(Box::new(StopAt { flag, at: 2 })),
        ..TrainOptions::default()
    };
    let s = run::train(&spec, "e.toml", tiny_llama()?, &prepared, opts)?;
    ensure!(s.interrupted && s.steps == 2 && s.checkpoint.is_some(), "{s:?}");
    let m = rankfold_train::trainer::read_metrics(&out.join("metrics.jsonl"))?;
    let evals: Vec<usize> = m.iter().filter(|l| l.eval_loss.is_some()).map(|l| l.step).collect();
    ensure!(evals == [1], "eval lines at steps {evals:?}");
    // The flag set during the final evaluation: the run keeps its adapter and says the evaluation was cut short.
    let out = dir.join("final");
    let spec = RunSpec::from_toml_str("f.toml", &recipe(&out).replace("eval_every = 1", "eval_every = 0"))?;
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let setter = flag.clone();
    let mut calls = 0;
    let opts = TrainOptions {
        stop: Some(flag),
        final_eval: true,
        eval_progress: Some(Box::new(move |_: &str, _: usize, _: usize| {
            calls += 1;
            setter.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(calls == 1, "the evaluation went on after the flag was set");
        })),
        ..TrainOptions::default()
    };
    let s = run::train(&spec, "f.toml", tiny_llama()?, &prepared, opts)?;
    ensure!(!s.interrupted && s.adapter.is_some() && s.eval.is_none(), "{s:?}");
    ensure!(s.warnings.iter().any(|w| w.contains("final evaluation was not finished")), "{:?}", s.warnings);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
