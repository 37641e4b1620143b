//! The Llama decoder against PyTorch: tiny random Hugging Face models (tied and untied LM heads, grouped-query
//! attention) and PEFT LoRA / rsLoRA / AdaLoRA / GLoRA adapters written by `tests/fixtures/llama_fixtures.py`,
//! the KV cache and generation against the full forward, sharded loading, loader errors, and the real SmolLM2
//! GGUF (f32 and NF4) when `cargo xtask assets` fetched it; also bf16 loading and LoRA gradients through the model.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use rankfold_adapters::PeftModel;
use rankfold_models::gguf::{GgufFile, GgufTokenizer};
use rankfold_models::llama::{GenerateOptions, KvCache, Llama};
use rankfold_tensor::nn::{Linear, LinearModel, LinearSlot, Nf4Linear};
use rankfold_tensor::{safetensors, CrossEntropyOpts, DType, Device, Rng, Tensor};

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama")
        .join(case)
}

/// The fixture's token ids [2, 7] as U32, and a named f32 tensor from an io.safetensors.
fn io(dir: &Path, key: &str) -> Result<(Tensor, Vec<f32>)> {
    let st = safetensors::MmapedSafetensors::open(case_dir("untied").join("io.safetensors"))?;
    let ids: Vec<i64> = st.load("tokens", Device::Cpu)?.to_vec()?;
    let ids: Vec<u32> = ids
        .iter()
        .map(|&i| u32::try_from(i))
        .collect::<std::result::Result<_, _>>()?;
    let tokens = Tensor::from_vec(ids, (2, 7), Device::Cpu)?;
    let st = safetensors::MmapedSafetensors::open(dir.join("io.safetensors"))?;
    Ok((tokens, st.load(key, Device::Cpu)?.to_vec_f32()?))
}

fn assert_close(what: &str, got: &Tensor, want: &[f32]) -> Result<()> {
    ensure!(got.dims() == [2, 7, 97], "{what}: shape {:?}", got.dims());
    let worst = crate::common::worst_rel(&got.to_vec_f32()?, want, 1.0, what)?;
    ensure!(worst <= 1e-4, "{what}: worst relative difference {worst}");
    Ok(())
}

#[test]
fn tiny_llama_matches_pytorch_tied_and_untied() -> Result<()> {
    for case in ["tied", "untied"] {
        let dir = case_dir(case);
        let model = Llama::from_hf_dir(&dir, DType::F32, Device::Cpu)?;
        ensure!(
            model.config.tie_word_embeddings == (case == "tied")
                && model.config.num_key_value_heads == 2
        );
        let (tokens, want) = io(&dir, "logits")?;
        assert_close(case, &model.forward(&tokens)?, &want)?;
    }
    Ok(())
}

#[test]
fn peft_lora_rslora_adalora_glora_on_the_tiny_llama_match_pytorch() -> Result<()> {
    for method in ["lora", "rslora", "adalora", "glora"] {
        let model = Llama::from_hf_dir(case_dir("untied"), DType::F32, Device::Cpu)?;
        let mut peft = PeftModel::new(model, 0);
        let dir = case_dir("untied").join(method);
        let paths = peft.load(&dir, "default")?;
        ensure!(
            paths.len() == 14,
            "{method}: adapted {} layers: {paths:?}",
            paths.len()
        );
        let (tokens, want) = io(&dir, "logits")?;
        assert_close(method, &peft.model().forward(&tokens)?, &want)?;
        let merged = peft.merge_and_unload()?;
        let (_, want) = io(&dir, "merged_logits")?;
        assert_close(
            &format!("{method} merged"),
            &merged.forward(&tokens)?,
            &want,
        )?;
    }
    Ok(())
}

#[test]
fn kv_cache_steps_reproduce_the_full_forward() -> Result<()> {
    let model = Llama::from_hf_dir(case_dir("untied"), DType::F32, Device::Cpu)?;
    let (tokens, _) = io(&case_dir("untied"), "logits")?;
    let full = model.forward(&tokens)?.to_vec_f32()?;
    // A prefix of 3, then 1, then 3 positions.
    let mut cache = KvCache::new();
    let mut got = [Vec::new(), Vec::new()];
    for (start, len) in [(0, 3), (3, 1), (4, 3)] {
        let y = model
            .forward_cached(&tokens.narrow(1, start, len)?.contiguous()?, &mut cache)?
            .to_vec_f32()?;
        for (b, row) in got.iter_mut().enumerate() {
            row.extend_from_slice(&y[b * len * 97..(b + 1) * len * 97]);
        }
    }
    ensure!(cache.len() == 7);
    let got: Vec<f32> = got.concat();
    let worst = crate::common::worst_abs(&got, &full, "cached logits")?;
    ensure!(
        worst <= 1e-4,
        "cached logits differ from the full forward by {worst}"
    );
    Ok(())
}

#[test]
fn missing_tensor_errors_name_the_folder_and_tensor() -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("rankfold-llama-missing-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    std::fs::copy(
        case_dir("untied").join("config.json"),
        tmp.join("config.json"),
    )?;
    let st = safetensors::MmapedSafetensors::open(case_dir("untied").join("model.safetensors"))?;
    let all = st.load_all(Device::Cpu)?;
    let kept: Vec<(&str, &Tensor)> = all
        .iter()
        .filter(|(k, _)| k.as_str() != "model.layers.1.mlp.up_proj.weight")
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    safetensors::save(tmp.join("model.safetensors"), &kept, None)?;
    let err = Llama::from_hf_dir(&tmp, DType::F32, Device::Cpu)
        .expect_err("a tensor is missing")
        .to_string();
    let _ = std::fs::remove_dir_all(&tmp);
    ensure!(
        err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("rankfold-llama-missing"),
        "{err}"
    );
    Ok(())
}

#[test]
fn greedy_generation_matches_full_forward_argmax_and_sampling_is_seeded() -> Result<()> {
    let model = Llama::from_hf_dir(case_dir("tied"), DType::F32, Device::Cpu)?;
    let prompt = [5u32, 61, 17, 90, 2];
    let opts = GenerateOptions {
        max_new_tokens: 6,
        ..GenerateOptions::default()
    };
    let got = model.generate(&prompt, &opts)?;
    // The reference re-runs the whole sequence without a cache for every step.
    let mut seq = prompt.to_vec();
    for _ in 0..6 {
        let logits = model.forward_ids(&seq, 1, seq.len())?;
        let last = logits
            .narrow(1, seq.len() - 1, 1)?
            .flatten_all()?
            .to_vec_f32()?;
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        seq.push(u32::try_from(best)?);
    }
    ensure!(
        got == seq[prompt.len()..],
        "greedy {got:?} vs reference {:?}",
        &seq[prompt.len()..]
    );
    let stop = GenerateOptions {
        stop_tokens: vec![got[2]],
        ..opts.clone()
    };
    let first_stop = got
        .iter()
        .position(|&t| t == got[2])
        .context("stop token")?;
    ensure!(
        model.generate(&prompt, &stop)? == got[..=first_stop],
        "generation did not stop at the stop token"
    );
    let sampled = GenerateOptions {
        temperature: 1.3,
        top_p: 0.9,
        seed: 9,
        max_new_tokens: 8,
        ..opts
    };
    let a = model.generate(&prompt, &sampled)?;
    ensure!(
        a.len() == 8 && a == model.generate(&prompt, &sampled)?,
        "sampling with one seed is not repeatable"
    );
    Ok(())
}

#[test]
fn sharded_index_loads_the_same_model() -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("rankfold-llama-sharded-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    std::fs::copy(
        case_dir("untied").join("config.json"),
        tmp.join("config.json"),
    )?;
    let st = safetensors::MmapedSafetensors::open(case_dir("untied").join("model.safetensors"))?;
    let all = st.load_all(Device::Cpu)?;
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(3)).enumerate() {
        let file = format!("model-{:05}-of-00003.safetensors", i + 1);
        let part: Vec<(&str, &Tensor)> = chunk.iter().map(|k| (k.as_str(), &all[*k])).collect();
        safetensors::save(tmp.join(&file), &part, None)?;
        for k in chunk {
            map.insert((*k).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        tmp.join("model.safetensors.index.json"),
        serde_json::to_string(&index)?,
    )?;
    let model = Llama::from_hf_dir(&tmp, DType::F32, Device::Cpu);
    let _ = std::fs::remove_dir_all(&tmp);
    let (tokens, want) = io(&case_dir("untied"), "logits")?;
    assert_close("sharded", &model?.forward(&tokens)?, &want)
}

/// The SmolLM2-135M-Instruct asset (`cargo xtask assets`), when it has been fetched.
fn smollm2_asset() -> Result<Option<PathBuf>> {
    crate::common::asset(crate::common::SMOLLM2_GGUF)
}

#[test]
fn smollm2_gguf_continues_a_prompt_sensibly() -> Result<()> {
    let Some(path) = smollm2_asset()? else {
        return Ok(());
    };
    let tok = GgufTokenizer::from_gguf(&GgufFile::open(&path)?)?;
    let id = |s: &str| -> Result<u32> {
        let i = tok
            .tokens
            .iter()
            .position(|t| t == s)
            .with_context(|| format!("token {s:?} not in the vocabulary"))?;
        Ok(u32::try_from(i)?)
    };
    // "The capital of France is" in GPT-2 byte-level BPE pieces (Ġ marks a leading space).
    let prompt: Vec<u32> = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
        .iter()
        .map(|s| id(s))
        .collect::<Result<_>>()?;
    for nf4 in [false, true] {
        let model = if nf4 {
            Llama::from_gguf_nf4(&path, 64, true)?
        } else {
            Llama::from_gguf(&path)?
        };
        let out = greedy_pieces(&model, &tok, &prompt)?;
        eprintln!("SmolLM2 (NF4: {nf4}) continues \"The capital of France is\" with {out:?}");
        ensure!(
            out.iter().any(|s| s.contains("Paris")),
            "NF4 {nf4}: expected Paris in the continuation, got {out:?}"
        );
    }
    Ok(())
}

/// Three greedy tokens after `prompt`, as vocabulary pieces, checking every logit is finite.
fn greedy_pieces(model: &Llama, tok: &GgufTokenizer, prompt: &[u32]) -> Result<Vec<String>> {
    let mut cache = KvCache::new();
    let mut next = Tensor::from_vec(prompt.to_vec(), (1, prompt.len()), Device::Cpu)?;
    let mut out = Vec::new();
    for _ in 0..3 {
        let logits = model.forward_cached(&next, &mut cache)?;
        let t = logits.dims()[1];
        let last = logits.narrow(1, t - 1, 1)?.contiguous()?;
        let v = last.to_vec_f32()?;
        ensure!(v.iter().all(|x| x.is_finite()), "non-finite logits");
        let best = last.argmax(-1, false)?.flatten_all()?.to_vec::<u32>()?[0];
        out.push(tok.tokens[best as usize].clone());
        next = Tensor::from_vec(vec![best], (1, 1), Device::Cpu)?;
    }
    Ok(out)
}

/// GGUF bytes (version 3, f32 tensors, default alignment 32) written by hand for the loader test below.
fn gguf_bytes(kv: &[(&str, u32, Vec<u8>)], tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (key, ty, value) in kv {
        string(&mut out, key);
        out.extend(ty.to_le_bytes());
        out.extend(value);
    }
    let mut offset = 0u64;
    for (name, shape, data) in tensors {
        string(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        // GGUF lists dimensions innermost first.
        for d in shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(0u32.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (data.len() as u64 * 4).div_ceil(32) * 32;
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    for (_, _, data) in tensors {
        out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        out.resize(out.len().div_ceil(32) * 32, 0);
    }
    out
}

#[test]
fn tied_llama_written_as_gguf_reproduces_pytorch() -> Result<()> {
    let dir = case_dir("tied");
    let st = safetensors::MmapedSafetensors::open(dir.join("model.safetensors"))?;
    let (nh, nkv, d) = (4usize, 2usize, 16usize);
    // llama.cpp's converter stores, within each head, rows [first half; second half] interleaved as pairs.
    let permute = |w: &[f32], rows: usize, cols: usize, heads: usize| -> Vec<f32> {
        let mut out = vec![0f32; w.len()];
        for h in 0..heads {
            for half in 0..2 {
                for i in 0..d / 2 {
                    let src = h * d + half * d / 2 + i;
                    let dst = h * d + 2 * i + half;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(rows, heads * d);
        out
    };
    let mut tensors = Vec::new();
    let mut add = |gguf: String, hf: String, heads: Option<usize>| -> Result<()> {
        let t = st.load(&hf, Device::Cpu)?;
        let shape = t.dims().to_vec();
        let mut data = t.to_vec_f32()?;
        if let Some(n) = heads {
            data = permute(&data, shape[0], shape[1], n);
        }
        tensors.push((gguf, shape, data));
        Ok(())
    };
    add(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        None,
    )?;
    add(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        None,
    )?;
    for l in 0..2 {
        let (g, h) = (format!("blk.{l}"), format!("model.layers.{l}"));
        add(
            format!("{g}.attn_norm.weight"),
            format!("{h}.input_layernorm.weight"),
            None,
        )?;
        add(
            format!("{g}.attn_q.weight"),
            format!("{h}.self_attn.q_proj.weight"),
            Some(nh),
        )?;
        add(
            format!("{g}.attn_k.weight"),
            format!("{h}.self_attn.k_proj.weight"),
            Some(nkv),
        )?;
        add(
            format!("{g}.attn_v.weight"),
            format!("{h}.self_attn.v_proj.weight"),
            None,
        )?;
        add(
            format!("{g}.attn_output.weight"),
            format!("{h}.self_attn.o_proj.weight"),
            None,
        )?;
        add(
            format!("{g}.ffn_norm.weight"),
            format!("{h}.post_attention_layernorm.weight"),
            None,
        )?;
        add(
            format!("{g}.ffn_gate.weight"),
            format!("{h}.mlp.gate_proj.weight"),
            None,
        )?;
        add(
            format!("{g}.ffn_up.weight"),
            format!("{h}.mlp.up_proj.weight"),
            None,
        )?;
        add(
            format!("{g}.ffn_down.weight"),
            format!("{h}.mlp.down_proj.weight"),
            None,
        )?;
    }
    let u32v = |v: u32| v.to_le_bytes().to_vec();
    let f32v = |v: f32| v.to_le_bytes().to_vec();
    let mut arch = (5u64).to_le_bytes().to_vec();
    arch.extend(b"llama");
    let kv = vec![
        ("general.architecture", 8, arch),
        ("llama.block_count", 4, u32v(2)),
        ("llama.embedding_length", 4, u32v(64)),
        ("llama.feed_forward_length", 4, u32v(96)),
        ("llama.attention.head_count", 4, u32v(4)),
        ("llama.attention.head_count_kv", 4, u32v(2)),
        ("llama.context_length", 4, u32v(64)),
        ("llama.vocab_size", 4, u32v(97)),
        ("llama.rope.freq_base", 6, f32v(500.0)),
        ("llama.attention.layer_norm_rms_epsilon", 6, f32v(1e-5)),
    ];
    let path =
        std::env::temp_dir().join(format!("rankfold-llama-tied-{}.gguf", std::process::id()));
    std::fs::write(&path, gguf_bytes(&kv, &tensors))?;
    let model = Llama::from_gguf(&path);
    let nf4 = Llama::from_gguf_nf4(&path, 64, true);
    let _ = std::fs::remove_file(&path);
    let mut model = model?;
    ensure!(
        model.config.tie_word_embeddings && model.lm_head.is_none(),
        "the GGUF has no output.weight"
    );
    let (tokens, want) = io(&dir, "logits")?;
    assert_close("tied GGUF", &model.forward(&tokens)?, &want)?;
    // NF4 on load equals quantizing the f32 model's projections afterwards.
    for (name, slot) in model.linear_slots() {
        let lin = slot
            .downcast_ref::<Linear>()
            .with_context(|| format!("{name} is not a dense Linear"))?;
        *slot = LinearSlot::new(Nf4Linear::quantize(lin, 64, true)?);
    }
    let (a, b) = (
        nf4?.forward(&tokens)?.to_vec_f32()?,
        model.forward(&tokens)?.to_vec_f32()?,
    );
    ensure!(
        a == b,
        "NF4-on-load logits differ from quantizing after loading"
    );
    Ok(())
}

#[test]
fn bf16_weights_track_the_f32_logits() -> Result<()> {
    let dir = case_dir("untied");
    let model = Llama::from_hf_dir(&dir, DType::BF16, Device::Cpu)?;
    let (tokens, want) = io(&dir, "logits")?;
    let got = model.forward(&tokens)?;
    ensure!(got.dtype() == DType::BF16, "logits dtype {:?}", got.dtype());
    let got = got.to_vec_f32()?;
    // bf16 keeps 8 significant bits: compare against the logits' overall scale.
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = crate::common::worst_abs(&got, &want, "bf16 logits")? as f32;
    ensure!(
        worst <= 0.05 * scale,
        "bf16 logits differ by {worst} (scale {scale})"
    );
    Ok(())
}

#[test]
fn lora_gradients_through_the_decoder_match_finite_differences() -> Result<()> {
    let model = Llama::from_hf_dir(case_dir("untied"), DType::F32, Device::Cpu)?;
    let mut peft = PeftModel::new(model, 0);
    peft.load(case_dir("untied").join("lora"), "default")?;
    let (tokens, _) = io(&case_dir("untied"), "logits")?;
    let ids: Vec<u32> = tokens.flatten_all()?.to_vec()?;
    // Next-token targets: each row's ids shifted left by one, the last position predicting id 0.
    let targets: Vec<u32> = (0..14)
        .map(|i| if i % 7 == 6 { 0 } else { ids[i + 1] })
        .collect();
    let targets = Tensor::from_vec(targets, (2, 7), Device::Cpu)?;
    let loss = |p: &PeftModel<Llama>| -> Result<Tensor> {
        Ok(p.model()
            .forward(&tokens)?
            .cross_entropy(&targets, CrossEntropyOpts::default())?)
    };
    let params = peft.parameters();
    ensure!(params.len() == 28, "{} trainable tensors", params.len());
    let grads = loss(&peft)?.backward()?;
    let mut rng = Rng::new(3);
    let mut largest = 0f32;
    for (name, p) in params.iter().filter(|(n, _)| {
        n.contains("layers.0.self_attn.k_proj") || n.contains("layers.1.mlp.down_proj")
    }) {
        let g = grads
            .get(p)
            .with_context(|| format!("no gradient for {name}"))?
            .to_vec_f32()?;
        let base = p.to_vec_f32()?;
        for _ in 0..3 {
            let i = rng.below(base.len() as u64) as usize;
            let eps = 1e-2f32;
            let at = |delta: f32| -> Result<f32> {
                let mut v = base.clone();
                v[i] += delta;
                p.assign(&Tensor::from_vec(v, p.shape().clone(), Device::Cpu)?)?;
                Ok(rankfold_tensor::no_grad(|| loss(&peft))?.to_scalar()? as f32)
            };
            let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
            largest = largest.max(fd.abs());
            p.assign(&Tensor::from_vec(
                base.clone(),
                p.shape().clone(),
                Device::Cpu,
            )?)?;
            ensure!(
                (fd - g[i]).abs() <= 2e-3 + 2e-2 * g[i].abs(),
                "{name}[{i}]: autograd {} vs finite difference {fd}",
                g[i]
            );
        }
    }
    ensure!(
        largest > 1e-2,
        "every sampled gradient is tiny ({largest}): the check proves nothing"
    );
    Ok(())
}

#[test]
fn attention_mask_with_left_and_right_padding_matches_pytorch() -> Result<()> {
    let dir = case_dir("untied");
    let model = Llama::from_hf_dir(&dir, DType::F32, Device::Cpu)?;
    let (tokens, want) = io(&dir, "masked_logits")?;
    let st = safetensors::MmapedSafetensors::open(dir.join("io.safetensors"))?;
    let mask = st.load("mask", Device::Cpu)?;
    let keep: Vec<i64> = mask.to_vec()?;
    let got = model.forward_masked(&tokens, &mask)?.to_vec_f32()?;
    let mut worst = 0f32;
    let mut compared = 0;
    for (pos, &m) in keep.iter().enumerate() {
        if m == 1 {
            for v in 0..97 {
                let (g, w) = (got[pos * 97 + v], want[pos * 97 + v]);
                worst = worst.max((g - w).abs() / w.abs().max(1.0));
            }
            compared += 1;
        }
    }
    ensure!(
        compared == 11 && worst <= 1e-4,
        "{compared} positions, worst relative difference {worst}"
    );
    ensure!(
        got.iter().all(|v| v.is_finite()),
        "padding positions produced non-finite logits"
    );
    // An all-ones mask is the plain forward.
    let ones = Tensor::from_vec(vec![1u8; 14], (2, 7), Device::Cpu)?;
    let (a, b) = (
        model.forward_masked(&tokens, &ones)?.to_vec_f32()?,
        model.forward(&tokens)?.to_vec_f32()?,
    );
    ensure!(a == b, "an all-ones attention mask changed the logits");
    Ok(())
}
