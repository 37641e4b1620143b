//! GGUF reader: every tensor type of the committed fixtures (tests/fixtures/gguf_fixtures.py, quantized and
//! dequantized by gguf-py's own numpy code) bit for bit, the Q/K permutation, Llama names and hyperparameters,
//! NF4 on load against quantizing the f32 tensor, every metadata value type, and hostile or truncated headers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rankfold_models::gguf::llama::{self, gguf_row_of_hf_row, LlamaHparams};
use rankfold_models::gguf::{Array, GgmlType, GgufFile, GgufTokenizer, Value};
use rankfold_tensor::safetensors::MmapedSafetensors;
use rankfold_tensor::{Device, Nf4Tensor};
use serde_json::Value as Json;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn json(name: &str) -> Result<Json> {
    let p = fixture(name);
    let text = std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn tiny_llama_every_type_matches_gguf_py_bit_for_bit() -> Result<()> {
    let f = GgufFile::open(fixture("tiny_llama.gguf"))?;
    let hp = LlamaHparams::from_gguf(&f)?;
    let refs = MmapedSafetensors::open(fixture("tiny_llama_ref.safetensors"))?;
    let mut types = Vec::new();
    let mut names = Vec::new();
    for info in f.tensors() {
        let (hf, t) = llama::load_f32(&f, &hp, &info.name)?;
        let want = refs.load(&hf, Device::Cpu).with_context(|| hf.clone())?;
        ensure!(
            t.dims() == want.dims(),
            "{hf}: shape {:?} vs {:?}",
            t.dims(),
            want.dims()
        );
        ensure!(
            bits(&t.to_vec::<f32>()?) == bits(&want.to_vec::<f32>()?),
            "{hf} ({}) differs",
            info.ggml_type
        );
        types.push(info.ggml_type);
        names.push(hf);
    }
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ] {
        ensure!(types.contains(&ty), "the fixture has no {ty} tensor");
    }
    names.sort();
    let mut want_names: Vec<String> =
        MmapedSafetensors::open(fixture("tiny_llama_ref.safetensors"))?
            .load_all(Device::Cpu)?
            .into_keys()
            .collect();
    want_names.sort();
    ensure!(names == want_names, "names {names:?} vs {want_names:?}");
    Ok(())
}

#[test]
fn stored_q_and_k_rows_are_permuted_as_llama_cpp_does() -> Result<()> {
    let f = GgufFile::open(fixture("tiny_llama.gguf"))?;
    let hp = LlamaHparams::from_gguf(&f)?;
    let refs = MmapedSafetensors::open(fixture("tiny_llama_ref.safetensors"))?;
    for (g, h, heads) in [
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
            hp.n_head,
        ),
        (
            "blk.0.attn_k.weight",
            "model.layers.0.self_attn.k_proj.weight",
            hp.n_head_kv,
        ),
    ] {
        let raw = f.dequantize(g)?;
        let (rows, cols) = (raw.dims()[0], raw.dims()[1]);
        let raw = raw.to_vec::<f32>()?;
        let want = refs.load(h, Device::Cpu)?.to_vec::<f32>()?;
        ensure!(raw != want, "{g}: the stored rows are not permuted at all");
        // numpy's w.reshape(n, 2, d/2, in).swapaxes(1, 2): HF row (h, j, i) lands on GGUF row (h, i, j).
        let d = rows / heads;
        for hd in 0..heads {
            for j in 0..2 {
                for i in 0..d / 2 {
                    let hf_row = hd * d + j * (d / 2) + i;
                    let gg_row = hd * d + i * 2 + j;
                    ensure!(
                        gguf_row_of_hf_row(hf_row, rows, heads) == gg_row,
                        "{g}: row map at {hf_row}"
                    );
                    ensure!(
                        bits(&raw[gg_row * cols..(gg_row + 1) * cols])
                            == bits(&want[hf_row * cols..(hf_row + 1) * cols]),
                        "{g}: HF row {hf_row} is not stored at GGUF row {gg_row}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn llama_hparams_and_names() -> Result<()> {
    let f = GgufFile::open(fixture("tiny_llama.gguf"))?;
    let hp = LlamaHparams::from_gguf(&f)?;
    let j = json("tiny_llama.json")?;
    let n = |k: &str| j[k].as_u64().map(|v| v as usize).context(k.to_string());
    ensure!(
        hp.n_layer == n("n_layer")? && hp.n_embd == n("n_embd")? && hp.n_ff == n("n_ff")?,
        "{hp:?}"
    );
    ensure!(
        hp.n_head == n("n_head")? && hp.n_head_kv == n("n_head_kv")? && hp.n_ctx == n("n_ctx")?,
        "{hp:?}"
    );
    ensure!(
        hp.n_vocab == n("n_vocab")? && hp.head_dim == hp.n_embd / hp.n_head && !hp.tied_embeddings,
        "{hp:?}"
    );
    ensure!(
        hp.rope_freq_base == j["rope_base"].as_f64().context("rope_base")?,
        "{hp:?}"
    );
    ensure!(
        hp.rms_eps as f32 == j["rms_eps"].as_f64().context("rms_eps")? as f32,
        "{hp:?}"
    );
    for (g, h) in [
        ("token_embd.weight", Some("model.embed_tokens.weight")),
        ("output.weight", Some("lm_head.weight")),
        ("output_norm.weight", Some("model.norm.weight")),
        (
            "blk.17.attn_output.weight",
            Some("model.layers.17.self_attn.o_proj.weight"),
        ),
        (
            "blk.3.ffn_norm.weight",
            Some("model.layers.3.post_attention_layernorm.weight"),
        ),
        (
            "blk.0.attn_q.bias",
            Some("model.layers.0.self_attn.q_proj.bias"),
        ),
        ("rope_freqs.weight", None),
        ("blk.x.attn_q.weight", None),
        ("blk.0.attn_q.scale", None),
    ] {
        ensure!(
            llama::hf_name(g).as_deref() == h,
            "{g} → {:?}, want {h:?}",
            llama::hf_name(g)
        );
    }
    ensure!(hp.permuted_heads("blk.2.attn_q.weight") == Some(hp.n_head));
    ensure!(hp.permuted_heads("blk.2.attn_k.weight") == Some(hp.n_head_kv));
    ensure!(hp.permuted_heads("blk.2.attn_v.weight").is_none());
    Ok(())
}

#[test]
fn tokenizer_metadata() -> Result<()> {
    let f = GgufFile::open(fixture("tiny_llama.gguf"))?;
    let tok = GgufTokenizer::from_gguf(&f)?;
    let j = &json("tiny_llama.json")?["tokenizer"];
    let strs = |k: &str| -> Result<Vec<String>> { Ok(serde_json::from_value(j[k].clone())?) };
    let id = |k: &str| j[k].as_u64().map(|v| v as u32);
    ensure!(
        Some(tok.model.as_str()) == j["model"].as_str() && tok.pre.as_deref() == j["pre"].as_str(),
        "{tok:?}"
    );
    ensure!(
        tok.tokens == strs("tokens")? && tok.merges == strs("merges")?,
        "{tok:?}"
    );
    ensure!(
        tok.token_types == Some(serde_json::from_value(j["token_types"].clone())?),
        "{tok:?}"
    );
    ensure!(
        tok.bos_id == id("bos_id") && tok.eos_id == id("eos_id"),
        "{tok:?}"
    );
    ensure!(
        tok.unk_id == id("unk_id") && tok.pad_id == id("pad_id"),
        "{tok:?}"
    );
    ensure!(
        tok.add_bos == j["add_bos"].as_bool()
            && tok.chat_template.as_deref() == j["chat_template"].as_str()
    );
    ensure!(
        tok.tokens.len() == LlamaHparams::from_gguf(&f)?.n_vocab,
        "vocab"
    );
    // A special token id outside the vocabulary is an error naming the key.
    let bad = B::head(0, 3)
        .str("tokenizer.ggml.model")
        .u32(8)
        .str("gpt2")
        .str("tokenizer.ggml.tokens")
        .u32(9)
        .u32(8)
        .u64(1)
        .str("a")
        .str("tokenizer.ggml.eos_token_id")
        .u32(4)
        .u32(1)
        .0;
    let g = open_bytes(&bad)?.map_err(|e| anyhow::anyhow!("{e}"))?;
    let e = GgufTokenizer::from_gguf(&g)
        .err()
        .context("eos id 1 of 1 token accepted")?;
    ensure!(e.to_string().contains("tokenizer.ggml.eos_token_id"), "{e}");
    Ok(())
}

#[test]
fn nf4_on_load_equals_quantizing_the_f32_tensor() -> Result<()> {
    let f = GgufFile::open(fixture("tiny_llama.gguf"))?;
    let hp = LlamaHparams::from_gguf(&f)?;
    for info in f.tensors().iter().filter(|t| t.dims.len() == 2) {
        let (_, full) = llama::load_f32(&f, &hp, &info.name)?;
        for (bs, dq) in [(64, false), (128, true), (256, true)] {
            let (_, got) = llama::load_nf4(&f, &hp, &info.name, bs, dq)?;
            let want = Nf4Tensor::quantize(&full, bs, dq)?;
            ensure!(
                got == want,
                "{} blocksize {bs} double {dq}: NF4 on load differs",
                info.name
            );
        }
    }
    let err = llama::load_nf4(&f, &hp, "blk.0.ffn_up.weight", 48, false)
        .err()
        .context("blocksize 48")?;
    ensure!(err.to_string().contains("blk.0.ffn_up.weight"), "{err}");
    Ok(())
}

fn check_value(key: &str, v: &Value, want: &Json) -> Result<()> {
    let ty = want["type"].as_str().context("type")?;
    let w = &want["value"];
    let ok = match (ty, v) {
        ("UINT8", Value::U8(x)) => w.as_u64() == Some(u64::from(*x)),
        ("INT8", Value::I8(x)) => w.as_i64() == Some(i64::from(*x)),
        ("UINT16", Value::U16(x)) => w.as_u64() == Some(u64::from(*x)),
        ("INT16", Value::I16(x)) => w.as_i64() == Some(i64::from(*x)),
        ("UINT32", Value::U32(x)) => w.as_u64() == Some(u64::from(*x)),
        ("INT32", Value::I32(x)) => w.as_i64() == Some(i64::from(*x)),
        ("UINT64", Value::U64(x)) => w.as_u64() == Some(*x),
        ("INT64", Value::I64(x)) => w.as_i64() == Some(*x),
        ("FLOAT32", Value::F32(x)) => w.as_f64() == Some(f64::from(*x)),
        ("FLOAT64", Value::F64(x)) => w.as_f64() == Some(*x),
        ("BOOL", Value::Bool(x)) => w.as_bool() == Some(*x),
        ("STRING", Value::String(x)) => w.as_str() == Some(x.as_str()),
        ("ARRAY", Value::Array(a)) => array_matches(a, w),
        _ => false,
    };
    ensure!(ok, "metadata `{key}`: {v:?} vs {want}");
    Ok(())
}

fn array_matches(a: &Array, w: &Json) -> bool {
    let Some(w) = w.as_array() else { return false };
    if a.len() != w.len() {
        return false;
    }
    match a {
        Array::U8(v) => v
            .iter()
            .zip(w)
            .all(|(x, y)| y.as_u64() == Some(u64::from(*x))),
        Array::I32(v) => v
            .iter()
            .zip(w)
            .all(|(x, y)| y.as_i64() == Some(i64::from(*x))),
        Array::F32(v) => v
            .iter()
            .zip(w)
            .all(|(x, y)| y.as_f64() == Some(f64::from(*x))),
        Array::Bool(v) => v.iter().zip(w).all(|(x, y)| y.as_bool() == Some(*x)),
        Array::String(v) => v.iter().zip(w).all(|(x, y)| y.as_str() == Some(x.as_str())),
        Array::Array(v) => v.iter().zip(w).all(|(x, y)| array_matches(x, y)),
        _ => false,
    }
}

#[test]
fn every_metadata_type_alignment_and_v2() -> Result<()> {
    let j = json("all_types.json")?;
    for (file, version) in [("all_types.gguf", 3), ("all_types_v2.gguf", 2)] {
        let f = GgufFile::open(fixture(file))?;
        ensure!(f.version() == version, "{file}: version {}", f.version());
        ensure!(
            f.alignment() == j["alignment"].as_u64().context("alignment")?,
            "{file}: alignment"
        );
        let meta = j["metadata"].as_object().context("metadata")?;
        for (key, want) in meta {
            let v = f.get(key).with_context(|| format!("{file}: no `{key}`"))?;
            check_value(key, v, want)?;
        }
        let tensors = j["tensors"].as_object().context("tensors")?;
        ensure!(f.tensors().len() == tensors.len(), "{file}: tensor count");
        for (name, want) in tensors {
            let info = f.require(name)?;
            ensure!(
                info.offset % f.alignment() == 0,
                "{name}: offset {}",
                info.offset
            );
            let t = f.dequantize(name)?;
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone())?;
            ensure!(t.dims() == shape.as_slice(), "{name}: shape");
            let vals: Vec<f64> = serde_json::from_value(want["values"].clone())?;
            let vals: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
            ensure!(
                bits(&t.to_vec::<f32>()?) == bits(&vals),
                "{file}: {name} values"
            );
        }
    }
    Ok(())
}

// ---- Hostile and truncated headers ----

static TMP: AtomicUsize = AtomicUsize::new(0);

/// Writes bytes to a fresh temporary file, opens it, and removes it.
fn open_bytes(bytes: &[u8]) -> Result<std::result::Result<GgufFile, rankfold_models::Error>> {
    let p = std::env::temp_dir().join(format!(
        "rankfold-gguf-{}-{}.gguf",
        std::process::id(),
        TMP.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, bytes)?;
    let r = GgufFile::open(&p);
    std::fs::remove_file(&p)?;
    Ok(r)
}

/// A little-endian byte builder for handmade headers.
#[derive(Default, Clone)]
struct B(Vec<u8>);
impl B {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(self, s: &str) -> Self {
        let mut b = self.u64(s.len() as u64);
        b.0.extend_from_slice(s.as_bytes());
        b
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn head(n_tensors: u64, n_kv: u64) -> Self {
        B::default().raw(b"GGUF").u32(3).u64(n_tensors).u64(n_kv)
    }
}

/// Opens handmade bytes; the result must be an error whose message contains every `needles` entry.
fn expect_err(what: &str, bytes: &[u8], needles: &[&str]) -> Result<()> {
    let t = Instant::now();
    let msg = match open_bytes(bytes)? {
        Ok(_) => bail!("{what}: opened without error"),
        Err(e) => e.to_string(),
    };
    ensure!(
        t.elapsed() < Duration::from_secs(2),
        "{what}: took {:?}",
        t.elapsed()
    );
    ensure!(
        msg.contains("rankfold-gguf-"),
        "{what}: the error does not name the file: {msg}"
    );
    for n in needles {
        ensure!(msg.contains(n), "{what}: `{msg}` does not mention `{n}`");
    }
    Ok(())
}

/// A one-tensor file: a tensor `w` of type id `ty` with dims `[cols, 2]` at `offset`, then `data_len` data bytes
/// (a Q4_0 `[64, 2]` needs 4 blocks of 18 bytes).
fn one_tensor(cols: u64, ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = B::head(1, 0)
        .str("w")
        .u32(2)
        .u64(cols)
        .u64(2)
        .u32(ty)
        .u64(offset)
        .0;
    b.resize(b.len().next_multiple_of(32) + data_len, 0);
    b
}

#[test]
fn hostile_headers_are_rejected_quickly_with_named_fields() -> Result<()> {
    expect_err("empty", b"", &["magic"])?;
    expect_err("wrong magic", b"GGML\x03\0\0\0", &["magic"])?;
    expect_err(
        "version 1",
        &B::default().raw(b"GGUF").u32(1).u64(0).u64(0).0,
        &["version"],
    )?;
    expect_err(
        "version 4",
        &B::default().raw(b"GGUF").u32(4).u64(0).u64(0).0,
        &["version"],
    )?;
    expect_err(
        "huge tensor count",
        &B::head(u64::MAX, 0).0,
        &["tensor_count"],
    )?;
    expect_err(
        "huge kv count",
        &B::head(0, 1 << 60).0,
        &["metadata_kv_count"],
    )?;
    expect_err(
        "huge key length",
        &B::head(0, 1).u64(u64::MAX).raw(&[0; 16]).0,
        &["metadata key #0", "length"],
    )?;
    let kv = |ty: u32| B::head(0, 1).str("k").u32(ty);
    expect_err(
        "unknown value type",
        &kv(13).u64(0).0,
        &["`k`", "value type"],
    )?;
    expect_err(
        "huge string value",
        &kv(8).u64(1 << 40).raw(b"abc").0,
        &["`k`", "length"],
    )?;
    expect_err(
        "bad utf-8",
        &kv(8).u64(2).raw(&[0xff, 0xfe]).0,
        &["`k`", "UTF-8"],
    )?;
    expect_err("bad bool", &kv(7).raw(&[2]).0, &["`k`", "bool"])?;
    expect_err(
        "huge u8 array",
        &kv(9).u32(0).u64(u64::MAX / 2).raw(&[1, 2]).0,
        &["`k`", "count"],
    )?;
    expect_err(
        "huge string array",
        &kv(9).u32(8).u64(1 << 20).raw(&[0; 64]).0,
        &["`k`", "count"],
    )?;
    expect_err(
        "huge element in array",
        &kv(9).u32(8).u64(2).str("a").u64(1 << 50).raw(&[0; 8]).0,
        &["element 1"],
    )?;
    let mut deep = kv(9);
    for _ in 0..20 {
        deep = deep.u32(9).u64(1);
    }
    expect_err("deep nesting", &deep.u32(0).u64(0).0, &["nested"])?;
    let align = |a: u32| B::head(0, 1).str("general.alignment").u32(4).u32(a).0;
    expect_err("alignment 3", &align(3), &["general.alignment"])?;
    expect_err("alignment 0", &align(0), &["general.alignment"])?;
    // A wrong-typed value is described briefly: a 100,000-element array does not end up in the message.
    let arr = B::head(0, 1)
        .str("general.alignment")
        .u32(9)
        .u32(0)
        .u64(100_000)
        .raw(&[7; 100_000])
        .0;
    expect_err(
        "alignment array",
        &arr,
        &["general.alignment", "array of 100000 U8"],
    )?;
    let msg = open_bytes(&arr)?
        .err()
        .context("alignment array opened")?
        .to_string();
    ensure!(msg.len() < 300, "a {}-byte message", msg.len());
    expect_err(
        "duplicate key",
        &B::head(0, 2)
            .str("k")
            .u32(0)
            .raw(&[1])
            .str("k")
            .u32(0)
            .raw(&[2])
            .0,
        &["twice"],
    )?;
    let dims5 = B::head(1, 0).str("w").u32(5).raw(&[0; 40]).u32(0).u64(0).0;
    expect_err("5 dims", &dims5, &["`w`", "dimensions"])?;
    let overflow = B::head(1, 0)
        .str("w")
        .u32(2)
        .u64(1 << 40)
        .u64(1 << 40)
        .u32(0)
        .u64(0)
        .0;
    expect_err("dims overflow", &overflow, &["`w`", "overflow"])?;
    expect_err(
        "data past end",
        &one_tensor(64, 2, 0, 72 - 1),
        &["`w`", "past the end"],
    )?;
    expect_err(
        "huge offset",
        &one_tensor(64, 2, u64::MAX - 31, 100),
        &["`w`", "past the end"],
    )?;
    expect_err(
        "misaligned offset",
        &one_tensor(64, 2, 8, 100),
        &["`w`", "alignment"],
    )?;
    expect_err(
        "row not whole blocks",
        &one_tensor(33, 2, 0, 100),
        &["`w`", "multiple"],
    )?;
    expect_err(
        "duplicate tensor",
        &B::head(2, 0)
            .str("w")
            .u32(1)
            .u64(4)
            .u32(0)
            .u64(0)
            .str("w")
            .u32(1)
            .u64(4)
            .u32(0)
            .u64(32)
            .raw(&[0; 80])
            .0,
        &["`w`", "twice"],
    )?;
    // The smallest valid files open: exactly enough data, and an unknown type that is listed but not readable.
    let ok = open_bytes(&one_tensor(64, 2, 0, 72))?.map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(ok.dequantize("w")?.dims() == [2, 64], "one_tensor shape");
    let odd = open_bytes(&one_tensor(64, 99, 0, 0))?.map_err(|e| anyhow::anyhow!("{e}"))?;
    let e = odd.dequantize("w").err().context("type 99 dequantized")?;
    ensure!(
        e.to_string().contains("`w`") && e.to_string().contains("99"),
        "{e}"
    );
    Ok(())
}

#[test]
fn every_truncation_of_real_files_is_an_error() -> Result<()> {
    for name in ["all_types.gguf", "tiny_llama.gguf"] {
        let bytes = std::fs::read(fixture(name))?;
        let f = GgufFile::open(fixture(name))?;
        // Everything up to the end of the last tensor's data is needed; only trailing padding may be cut.
        let needed = f.data_offset()
            + f.tensors()
                .iter()
                .map(|t| t.offset as usize + t.n_bytes.unwrap_or(0))
                .max()
                .unwrap_or(0);
        ensure!(
            needed <= bytes.len(),
            "{name}: needs {needed} of {} bytes",
            bytes.len()
        );
        let t = Instant::now();
        // Every prefix through the header and the first data bytes, then every 61st.
        let cuts = (0..needed).filter(|&n| n < f.data_offset() + 64 || n % 61 == 0);
        for n in cuts {
            if let Ok(g) = open_bytes(&bytes[..n])? {
                bail!(
                    "{name}: a prefix of {n} bytes opened ({} tensors)",
                    g.tensors().len()
                );
            }
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "{name}: truncations took {:?}",
            t.elapsed()
        );
    }
    Ok(())
}

/// The SmolLM2-135M-Instruct asset (`cargo xtask assets`), when it has been fetched.
fn smollm2_asset() -> Result<Option<PathBuf>> {
    crate::common::asset(crate::common::SMOLLM2_GGUF)
}

#[test]
fn smollm2_asset_loads_when_present() -> Result<()> {
    let Some(path) = smollm2_asset()? else {
        return Ok(());
    };
    let f = GgufFile::open(&path)?;
    let hp = LlamaHparams::from_gguf(&f)?;
    let embd = f.require("token_embd.weight")?;
    ensure!(
        embd.shape() == [hp.n_vocab, hp.n_embd],
        "token_embd {:?} vs {hp:?}",
        embd.shape()
    );
    ensure!(
        f.get("llama.vocab_size").and_then(Value::as_u64) == Some(hp.n_vocab as u64),
        "vocab {hp:?}"
    );
    ensure!(
        hp.tied_embeddings == f.tensor_info("output.weight").is_none(),
        "{hp:?}"
    );
    let q = f.require("blk.0.attn_q.weight")?;
    let k = f.require("blk.0.attn_k.weight")?;
    ensure!(
        q.shape() == [hp.n_head * hp.head_dim, hp.n_embd],
        "attn_q {:?}",
        q.shape()
    );
    ensure!(
        k.shape() == [hp.n_head_kv * hp.head_dim, hp.n_embd],
        "attn_k {:?}",
        k.shape()
    );
    ensure!(
        f.tensors().len() == 2 + 9 * hp.n_layer + usize::from(!hp.tied_embeddings),
        "tensor count"
    );
    for info in f.tensors() {
        ensure!(
            llama::hf_name(&info.name).is_some(),
            "{}: no HF name",
            info.name
        );
        ensure!(
            info.ggml_type.can_dequantize(),
            "{}: {}",
            info.name,
            info.ggml_type
        );
    }
    let tok = GgufTokenizer::from_gguf(&f)?;
    ensure!(
        tok.tokens.len() == hp.n_vocab && !tok.merges.is_empty() && tok.eos_id.is_some(),
        "tokenizer"
    );
    // With RANKFOLD_GGUF_REF set to `gguf_fixtures.py --real`'s output, compare bit for bit with gguf-py.
    if let Some(r) = std::env::var_os("RANKFOLD_GGUF_REF") {
        let refs = MmapedSafetensors::open(PathBuf::from(r))?;
        let want_all = refs.load_all(Device::Cpu)?;
        ensure!(!want_all.is_empty(), "empty reference");
        for info in f.tensors() {
            let hf = llama::hf_name(&info.name).context("name")?;
            let Some(want) = want_all.get(&hf) else {
                continue;
            };
            let (_, got) = llama::load_f32(&f, &hp, &info.name)?;
            ensure!(got.dims() == want.dims(), "{hf}: shape");
            ensure!(
                bits(&got.to_vec::<f32>()?) == bits(&want.to_vec::<f32>()?),
                "{hf} differs from gguf-py"
            );
            eprintln!("{hf} ({}): bit for bit with gguf-py", info.ggml_type);
        }
    }
    Ok(())
}
