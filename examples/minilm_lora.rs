//! The MiniLM + LoRA classification recipe (docs/recipes/minilm-lora.md): all-MiniLM-L6-v2 with LoRA (r = 8 on
//! query and value) and a fresh linear head on mean-pooled embeddings, trained on IMDB sentiment with AdamW over
//! the adapter and head parameters together, and the test accuracy printed before (random head) and after.
//!
//! Run after `cargo xtask assets`:
//!     cargo run --release --example minilm_lora -- [--train 2000] [--test 500] [--max-len 128] [--epochs 1]
//!         [--batch 16] [--lr 1e-3] [--seed 0] [--out target/minilm-lora] [--overwrite]
//! It writes the PEFT adapter (`adapter_config.json`, `adapter_model.safetensors`) and the head
//! (`classifier.safetensors`: `classifier.weight`, `classifier.bias`) into the output folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rankfold_adapters::lora::LoraConfig;
use rankfold_adapters::{PeftModel, TargetModules};
use rankfold_models::bert::{Bert, BertClassifier};
use rankfold_models::wordpiece::WordPiece;
use rankfold_tensor::optim::{AdamW, AdamWConfig, LrSchedule, Optimizer};
use rankfold_tensor::{no_grad, DType, Device, Rng, Tensor};
use rankfold_train::data::batch::{ClassBatch, Loader, PadSide, Padding};
use rankfold_train::data::imdb::{self, SplitSizes};
use rankfold_train::data::sft::ClassExample;

/// MiniLM + LoRA sentiment classification on IMDB.
#[derive(Parser, Debug)]
struct Args {
    /// Training reviews.
    #[arg(long, default_value_t = 2000)]
    train: usize,
    /// Test reviews.
    #[arg(long, default_value_t = 500)]
    test: usize,
    /// Tokens per review, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Passes over the training reviews.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Reviews per optimizer step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Peak learning rate (linear warmup over the first 10% of steps, then linear decay to 0).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// LoRA rank (alpha is twice the rank).
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Seed of the head, the adapter init and the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the adapter and the head are written.
    #[arg(long, default_value = "target/minilm-lora")]
    out: PathBuf,
    /// Replace the files of an earlier run in `--out`.
    #[arg(long)]
    overwrite: bool,
}

fn assets() -> Result<PathBuf> {
    // As `cargo xtask assets`: `$RANKFOLD_ASSETS` when set and not empty, else ~/.cache/rankfold/assets.
    let root = match std::env::var_os("RANKFOLD_ASSETS").filter(|r| !r.is_empty()) {
        Some(r) => PathBuf::from(r),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/rankfold/assets"),
    };
    for need in ["all-minilm-l6-v2/model.safetensors", "imdb/reviews.json"] {
        if !root.join(need).is_file() {
            bail!(
                "{} is missing: run `cargo xtask assets` first",
                root.join(need).display()
            );
        }
    }
    Ok(root)
}

fn batch_tensors(b: &ClassBatch) -> Result<(Tensor, Tensor)> {
    let shape = (b.batch, b.seq_len);
    Ok((
        Tensor::from_slice(&b.input_ids, shape, Device::Cpu)?,
        Tensor::from_slice(&b.attention_mask, shape, Device::Cpu)?,
    ))
}

/// Test accuracy, in batches of 32 without gradients.
fn accuracy(model: &BertClassifier, batches: &[ClassBatch]) -> Result<f64> {
    let (mut right, mut all) = (0usize, 0usize);
    for b in batches {
        let (ids, mask) = batch_tensors(b)?;
        let pred = no_grad(|| model.predict(&ids, &mask))?;
        right += pred.iter().zip(&b.labels).filter(|(p, l)| p == l).count();
        all += b.batch;
    }
    Ok(right as f64 / all.max(1) as f64)
}

fn check_out(dir: &Path, overwrite: bool) -> Result<()> {
    let files = [
        "adapter_config.json",
        "adapter_model.safetensors",
        "classifier.safetensors",
    ];
    if !overwrite {
        if let Some(f) = files.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
            bail!(
                "{} exists: pass --overwrite to replace it, or choose another --out",
                f.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    check_out(&args.out, args.overwrite)?;
    let root = assets()?;
    let start = Instant::now();
    let model_dir = root.join("all-minilm-l6-v2");
    let tok = WordPiece::from_file(model_dir.join("tokenizer.json"))?;
    let splits = imdb::load(
        root.join("imdb/reviews.json"),
        SplitSizes {
            test: args.test,
            validation: 0,
            train: Some(args.train),
        },
    )?;
    let encode = |rows: &[rankfold_train::data::jsonl::LabeledText]| -> Vec<ClassExample> {
        rows.iter()
            .map(|r| ClassExample {
                input_ids: tok.encode_with_max_len(&r.text, Some(args.max_len)),
                label: r.label,
            })
            .collect()
    };
    let (train, test) = (encode(&splits.train), encode(&splits.test));
    let padding = Padding {
        pad_id: tok.pad_id(),
        side: PadSide::Right,
        max_len: Some(args.max_len),
    };
    let mut eval_loader = Loader::new(32, 0)?;
    eval_loader.shuffle = false;
    let test_batches = eval_loader.class_batches(&test, &padding, 0)?;
    println!(
        "tokenized {} train / {} test reviews (≤ {} tokens) in {:.1} s",
        train.len(),
        test.len(),
        args.max_len,
        start.elapsed().as_secs_f64()
    );

    let bert = Bert::from_hf_dir(&model_dir, DType::F32, Device::Cpu)?;
    let clf = BertClassifier::new(bert, 2, &mut Rng::new(args.seed))?;
    let mut peft = PeftModel::new(clf, args.seed);
    let lora = LoraConfig::new(TargetModules::List(vec!["query".into(), "value".into()]))
        .with_rank(args.rank, 2.0 * args.rank as f64);
    let paths = peft.add_adapter("default", Box::new(lora))?;
    let mut params = peft.parameters();
    let adapter_count: usize = params.iter().map(|(_, t)| t.elem_count()).sum();
    params.extend(peft.model().head_parameters());
    let head_count: usize = peft
        .model()
        .head_parameters()
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    println!(
        "LoRA r={} on {} modules: {adapter_count} adapter + {head_count} head parameters trained",
        args.rank,
        paths.len()
    );

    let t = Instant::now();
    let before = accuracy(peft.model(), &test_batches)?;
    println!(
        "test accuracy before training (random head): {:.1}% ({:.0} s)",
        100.0 * before,
        t.elapsed().as_secs_f64()
    );

    let loader = Loader::new(args.batch, args.seed)?;
    let steps_per_epoch = train.len().div_ceil(args.batch);
    let total = steps_per_epoch * args.epochs;
    let schedule = LrSchedule::WarmupLinear {
        warmup: total / 10,
        total,
    };
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: args.lr,
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
    )?;
    let t = Instant::now();
    let (mut step, mut running, mut seen) = (0usize, 0f64, 0usize);
    for epoch in 0..args.epochs {
        for b in loader.class_batches(&train, &padding, epoch as u64)? {
            let (ids, mask) = batch_tensors(&b)?;
            opt.set_learning_rate(schedule.lr_at(step, args.lr));
            let loss = peft.model().loss(&ids, &mask, &b.labels)?;
            running += loss.to_scalar()?;
            seen += 1;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            step += 1;
            if step % 10 == 0 || step == total {
                let secs = t.elapsed().as_secs_f64();
                println!(
                    "step {step}/{total}  loss {:.4}  {:.1} reviews/s",
                    running / seen as f64,
                    (step * args.batch) as f64 / secs
                );
                (running, seen) = (0.0, 0);
            }
        }
    }
    let train_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let after = accuracy(peft.model(), &test_batches)?;
    println!(
        "test accuracy after training: {:.1}% ({:.0} s)",
        100.0 * after,
        t.elapsed().as_secs_f64()
    );

    peft.save_pretrained(&args.out, "default")?;
    let head = peft.model().head_parameters();
    let refs: Vec<(&str, &Tensor)> = head.iter().map(|(n, t)| (n.as_str(), t)).collect();
    rankfold_tensor::safetensors::save(args.out.join("classifier.safetensors"), &refs, None)?;
    println!(
        "accuracy {:.1}% -> {:.1}% on {} test reviews; trained {} steps in {:.0} s ({:.0} s in all); peak tensor memory {:.0} MiB; wrote {}",
        100.0 * before,
        100.0 * after,
        test.len(),
        step,
        train_secs,
        start.elapsed().as_secs_f64(),
        rankfold_tensor::memory::stats(Device::Cpu).peak_bytes as f64 / (1 << 20) as f64,
        args.out.display()
    );
    Ok(())
}
