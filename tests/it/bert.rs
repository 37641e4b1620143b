//! BERT encoder and WordPiece tokenizer against the fixtures of tests/fixtures/bert_fixtures.py: a tiny random
//! BertModel's hidden states and pooled embeddings from PyTorch (with padding on both sides, token types, and
//! `bert.`-prefixed names), the tokenizer's ids against the `tokenizers` package for a small trained WordPiece
//! and (with the asset) all-MiniLM-L6-v2, MiniLM sentence embeddings against transformers, the classifier's loss
//! against a hand computation, and LoRA on the classifier: gradients against finite differences, merge.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use rankfold_adapters::lora::LoraConfig;
use rankfold_adapters::{PeftModel, TargetModules};
use rankfold_models::bert::{Bert, BertClassifier};
use rankfold_models::wordpiece::WordPiece;
use rankfold_tensor::safetensors::MmapedSafetensors;
use rankfold_tensor::{DType, Device, Rng, Tensor};
use serde_json::Value as Json;

use crate::common::{assert_close, Tol};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert")
}

fn load(file: &Path, name: &str) -> Result<Tensor> {
    let f = MmapedSafetensors::open(file)?;
    Ok(f.load(name, Device::Cpu)?)
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F32)?
        .to_vec_f32()?
        .iter()
        .map(|&v| v as f64)
        .collect())
}

const TOL: Tol = Tol {
    rel: 1e-4,
    abs: 1e-4,
};

/// One tokenizer case: the text, its ids, and its ids cut to the fixture's length.
type TokenCase = (String, Vec<u32>, Vec<u32>);

/// The cases of a tokenizer fixture and the length they were cut to.
fn token_cases(path: &Path) -> Result<(usize, Vec<TokenCase>)> {
    let v: Json = serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| path.display().to_string())?,
    )?;
    let ids = |x: &Json| -> Result<Vec<u32>> {
        x.as_array()
            .context("ids")?
            .iter()
            .map(|i| i.as_u64().map(|i| i as u32).context("id"))
            .collect()
    };
    let max_len = v["max_len"].as_u64().context("max_len")? as usize;
    let mut out = Vec::new();
    for c in v["cases"].as_array().context("cases")? {
        out.push((
            c["text"].as_str().context("text")?.to_string(),
            ids(&c["ids"])?,
            ids(&c["ids_cut"])?,
        ));
    }
    Ok((max_len, out))
}

fn check_tokenizer(tok: &WordPiece, fixture: &Path) -> Result<()> {
    let (max_len, cases) = token_cases(fixture)?;
    ensure!(cases.len() > 200, "only {} cases", cases.len());
    let mut unknown = 0;
    for (text, full, cut) in &cases {
        let got = tok.encode_with_max_len(text, None);
        ensure!(
            &got == full,
            "encode({text:?}):\n got {got:?}\nwant {full:?}"
        );
        let got = tok.encode_with_max_len(text, Some(max_len));
        ensure!(
            &got == cut,
            "encode({text:?}) cut to {max_len}:\n got {got:?}\nwant {cut:?}"
        );
        unknown += full.iter().filter(|&&i| i == tok.unk_id()).count();
    }
    // The cases must exercise both the unknown token and ordinary pieces.
    ensure!(unknown > 0, "no case produced the unknown token");
    Ok(())
}

#[test]
fn tiny_wordpiece_matches_hf_tokenizers() -> Result<()> {
    let tok = WordPiece::from_file(dir().join("tiny_wordpiece.json"))?;
    check_tokenizer(&tok, &dir().join("tiny_wordpiece_ids.json"))
}

#[test]
fn minilm_tokenizer_matches_hf_tokenizers() -> Result<()> {
    let Some(path) = crate::common::asset("all-minilm-l6-v2/tokenizer.json")? else {
        return Ok(());
    };
    let tok = WordPiece::from_file(&path)?;
    ensure!(tok.vocab_size() == 30522 && tok.max_length() == Some(128));
    // encode() applies the file's own truncation (128).
    ensure!(tok.encode(&"word ".repeat(300)).len() == 128);
    check_tokenizer(&tok, &dir().join("minilm_ids.json"))
}

/// The tiny model's hidden states with and without token types, pooled and normalized, all vs PyTorch.
fn check_tiny(model_dir: &Path) -> Result<()> {
    let bert = Bert::from_hf_dir(model_dir, DType::F32, Device::Cpu)?;
    let io = dir().join("tiny/io.safetensors");
    let (ids, mask, types) = (
        load(&io, "input_ids")?,
        load(&io, "attention_mask")?,
        load(&io, "token_type_ids")?,
    );
    let h = bert.forward(&ids, Some(&mask), Some(&types))?;
    assert_close(&f64s(&h)?, &f64s(&load(&io, "hidden")?)?, TOL, "hidden")?;
    let h0 = bert.forward(&ids, Some(&mask), None)?;
    assert_close(
        &f64s(&h0)?,
        &f64s(&load(&io, "hidden_no_types")?)?,
        TOL,
        "hidden_no_types",
    )?;
    let pooled = bert.embed(&ids, &mask, false)?;
    assert_close(
        &f64s(&pooled)?,
        &f64s(&load(&io, "pooled")?)?,
        TOL,
        "pooled",
    )?;
    let normalized = bert.embed(&ids, &mask, true)?;
    assert_close(
        &f64s(&normalized)?,
        &f64s(&load(&io, "normalized")?)?,
        TOL,
        "normalized",
    )?;
    Ok(())
}

#[test]
fn tiny_bert_matches_pytorch() -> Result<()> {
    check_tiny(&dir().join("tiny"))
}

#[test]
fn bert_prefixed_names_load_the_same() -> Result<()> {
    check_tiny(&dir().join("tiny_prefixed"))
}

/// Without a mask the padded rows differ from PyTorch's masked result, so the mask is really applied.
#[test]
fn padding_mask_matters() -> Result<()> {
    let bert = Bert::from_hf_dir(dir().join("tiny"), DType::F32, Device::Cpu)?;
    let io = dir().join("tiny/io.safetensors");
    let h = bert.forward(&load(&io, "input_ids")?, None, None)?;
    let want = f64s(&load(&io, "hidden_no_types")?)?;
    // Row 0 has no padding: it must agree; row 1 has padding: it must not.
    let per_row = want.len() / 3;
    let got = f64s(&h)?;
    assert_close(&got[..per_row], &want[..per_row], TOL, "row 0")?;
    ensure!(assert_close(
        &got[per_row..2 * per_row],
        &want[per_row..2 * per_row],
        TOL,
        "row 1"
    )
    .is_err());
    Ok(())
}

#[test]
fn bert_errors_name_file_and_tensor() -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("rankfold-bert-err-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let cfg = std::fs::read_to_string(dir().join("tiny/config.json"))?;
    // A config with one more layer than the file holds names the first missing tensor.
    std::fs::write(
        tmp.join("config.json"),
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )?;
    std::fs::copy(
        dir().join("tiny/model.safetensors"),
        tmp.join("model.safetensors"),
    )?;
    let e = Bert::from_hf_dir(&tmp, DType::F32, Device::Cpu)
        .err()
        .context("missing layer")?
        .to_string();
    ensure!(
        e.contains("model.safetensors")
            && e.contains("encoder.layer.2.attention.self.query.weight"),
        "{e}"
    );
    // A wrong hidden size names the first tensor whose shape disagrees.
    std::fs::write(
        tmp.join("config.json"),
        cfg.replace("\"hidden_size\": 36", "\"hidden_size\": 48"),
    )?;
    let e = Bert::from_hf_dir(&tmp, DType::F32, Device::Cpu)
        .err()
        .context("shape")?
        .to_string();
    ensure!(
        e.contains("embeddings.word_embeddings.weight") && e.contains("expected shape"),
        "{e}"
    );
    std::fs::write(
        tmp.join("config.json"),
        cfg.replace("\"gelu\"", "\"gelu_new\""),
    )?;
    let e = Bert::from_hf_dir(&tmp, DType::F32, Device::Cpu)
        .err()
        .context("act")?
        .to_string();
    ensure!(e.contains("config.json") && e.contains("hidden_act"), "{e}");
    std::fs::remove_dir_all(&tmp)?;
    // More positions than the table holds is an error, not a panic.
    let bert = Bert::from_hf_dir(dir().join("tiny"), DType::F32, Device::Cpu)?;
    let long = Tensor::from_vec(vec![1u32; 25], (1, 25), Device::Cpu)?;
    ensure!(bert.forward(&long, None, None).is_err());
    Ok(())
}

#[test]
fn minilm_embeddings_match_transformers() -> Result<()> {
    let Some(cfg) = crate::common::asset("all-minilm-l6-v2/config.json")? else {
        return Ok(());
    };
    let model_dir = cfg.parent().context("asset folder")?;
    let bert = Bert::from_hf_dir(model_dir, DType::F32, Device::Cpu)?;
    let f = dir().join("minilm_embeddings.safetensors");
    let (ids, mask) = (load(&f, "input_ids")?, load(&f, "attention_mask")?);
    // The committed ids are what this crate's tokenizer gives the sentences too (row by row, unpadded).
    let emb = bert.embed(&ids, &mask, true)?;
    assert_close(
        &f64s(&emb)?,
        &f64s(&load(&f, "embeddings")?)?,
        TOL,
        "MiniLM embeddings",
    )?;
    let tok = WordPiece::from_file(model_dir.join("tokenizer.json"))?;
    let first: Vec<i64> = ids.narrow(0, 0, 1)?.flatten_all()?.to_vec()?;
    let want: Vec<u32> = first
        .iter()
        .filter(|&&i| i != 0)
        .map(|&i| i as u32)
        .collect();
    ensure!(tok.encode("A man is eating food.") == want);
    Ok(())
}

/// A classifier on the tiny encoder, its head drawn from a seeded generator.
fn tiny_classifier() -> Result<BertClassifier> {
    let bert = Bert::from_hf_dir(dir().join("tiny"), DType::F32, Device::Cpu)?;
    Ok(BertClassifier::new(bert, 3, &mut Rng::new(9))?)
}

#[test]
fn classifier_loss_matches_a_hand_computation() -> Result<()> {
    let clf = tiny_classifier()?;
    let io = dir().join("tiny/io.safetensors");
    let (ids, mask) = (load(&io, "input_ids")?, load(&io, "attention_mask")?);
    let labels = [2usize, 0, 1];
    let loss = clf.loss(&ids, &mask, &labels)?.to_scalar()?;
    // Logits from PyTorch's pooled embeddings and the head's weights, then log-sum-exp, all in f64.
    let pooled = f64s(&load(&io, "pooled")?)?;
    let (w, b) = (
        f64s(clf.classifier.weight())?,
        f64s(clf.classifier.bias().context("bias")?)?,
    );
    let h = 36;
    let mut want = 0.0;
    for (r, &label) in labels.iter().enumerate() {
        let logits: Vec<f64> = (0..3)
            .map(|c| {
                b[c] + (0..h)
                    .map(|i| pooled[r * h + i] * w[c * h + i])
                    .sum::<f64>()
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
        want += (lse - logits[label]) / 3.0;
    }
    ensure!(
        (loss - want).abs() <= 1e-4 * (1.0 + want.abs()),
        "loss {loss} vs {want}"
    );
    ensure!(
        clf.loss(&ids, &mask, &[0, 1, 3]).is_err(),
        "label 3 of 3 classes"
    );
    ensure!(clf.predict(&ids, &mask)?.len() == 3);
    Ok(())
}

/// LoRA on query/value of the classifier: the adapters land at `bert.encoder.layer.N.attention.self.*`, the
/// gradients of adapter and head parameters match central finite differences, and merging changes nothing.
#[test]
fn lora_on_the_classifier_trains_and_merges() -> Result<()> {
    let mut peft = PeftModel::new(tiny_classifier()?, 4);
    let cfg = LoraConfig::new(TargetModules::List(vec!["query".into(), "value".into()]))
        .with_rank(4, 8.0);
    let paths = peft.add_adapter("default", Box::new(cfg))?;
    ensure!(
        paths.len() == 4 && paths[0] == "bert.encoder.layer.0.attention.self.query",
        "{paths:?}"
    );
    let mut rng = Rng::new(21);
    // LoRA's B starts at zero; random B makes the adapter path matter.
    for (_, p) in peft.parameters() {
        let n = p.elem_count();
        let v: Vec<f32> = (0..n).map(|_| (rng.uniform() as f32 - 0.5) * 0.6).collect();
        p.assign(&Tensor::from_vec(v, p.shape().clone(), Device::Cpu)?)?;
    }
    let io = dir().join("tiny/io.safetensors");
    let (ids, mask) = (load(&io, "input_ids")?, load(&io, "attention_mask")?);
    let labels = [1usize, 2, 0];
    let mut params = peft.parameters();
    ensure!(params.len() == 8, "{} adapter tensors", params.len());
    params.extend(peft.model().head_parameters());
    let loss_of = |p: &PeftModel<BertClassifier>| -> Result<f64> {
        Ok(rankfold_tensor::no_grad(|| p.model().loss(&ids, &mask, &labels))?.to_scalar()?)
    };
    let grads = peft.model().loss(&ids, &mask, &labels)?.backward()?;
    let mut largest = 0f64;
    for (name, p) in &params {
        let g = grads
            .get(p)
            .with_context(|| format!("no gradient for {name}"))?
            .to_vec_f32()?;
        let base = p.to_vec_f32()?;
        for _ in 0..2 {
            let i = rng.below(base.len() as u64) as usize;
            let eps = 1e-2f32;
            let at = |delta: f32| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                p.assign(&Tensor::from_vec(v, p.shape().clone(), Device::Cpu)?)?;
                loss_of(&peft)
            };
            let fd = (at(eps)? - at(-eps)?) / (2.0 * eps as f64);
            p.assign(&Tensor::from_vec(
                base.clone(),
                p.shape().clone(),
                Device::Cpu,
            )?)?;
            largest = largest.max(fd.abs());
            let a = g[i] as f64;
            ensure!(
                (fd - a).abs() <= 2e-3 + 2e-2 * a.abs(),
                "{name}[{i}]: autograd {a} vs finite difference {fd}"
            );
        }
    }
    ensure!(largest > 1e-2, "every sampled gradient is tiny ({largest})");
    let before = f64s(&peft.model().forward(&ids, &mask)?)?;
    let merged = peft.merge_and_unload()?;
    let after = f64s(&merged.forward(&ids, &mask)?)?;
    assert_close(&after, &before, TOL, "merged logits")?;
    Ok(())
}
