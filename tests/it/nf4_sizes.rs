//! NF4 with double quantization at real layer sizes against bitsandbytes, bit for bit: the committed
//! `tests/fixtures/nf4/real_sizes.json` (written by `nf4_fixtures.py write-sizes` with bitsandbytes 0.50.2 on
//! torch 2.15) holds, per weight shape, dtype and blocksize, digests of what bitsandbytes' CPU path wrote under
//! several torch thread counts. The inputs are rebuilt here from their seeds with the generator's exact integer
//! and power-of-two arithmetic, so no weight is stored.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use half::{bf16, f16};
use rankfold_kernels::nf4::{self, fast, Nf4Element, Nf4Quantized};
use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::exact_draw;

/// The fixture generator's `layer_weights`: element `i` hashes `seed·2^32 + i`; the sum of its four 16-bit
/// fields minus 131070, times 1..5 by row, times 16 when the top byte is 0, times 2^-22 — exact in f32.
fn layer_weights(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .into_par_iter()
        .map(|i| {
            let (s, h) = exact_draw(seed, i as u64);
            let row_scale = 1 + ((i / cols) % 5) as i64;
            let outlier = if h >> 56 == 0 { 16 } else { 1 };
            ((s * row_scale * outlier) as f64 * 2f64.powi(-22)) as f32
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a Value> {
    v.get(key).with_context(|| format!("{what}: no field `{key}`"))
}

fn uint(v: &Value, key: &str, what: &str) -> Result<u64> {
    field(v, key, what)?.as_u64().with_context(|| format!("{what}: `{key}` is not an unsigned integer"))
}

fn text<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str> {
    field(v, key, what)?.as_str().with_context(|| format!("{what}: `{key}` is not a string"))
}

/// Quantizes the case's weight (converted to its dtype as torch rounds: to nearest, ties to even) with the fast
/// path, and with the plain-loop twin where `twin` is set; both must agree.
fn quantize_as<T: Nf4Element + Sync>(x: &[f32], blocksize: usize, twin: bool) -> Result<Nf4Quantized> {
    let v: Vec<T> = x.par_iter().map(|&f| T::from_f32(f)).collect();
    let q = fast::quantize(&v, blocksize)?;
    if twin {
        let c = nf4::cpu::quantize(&v, blocksize)?;
        ensure!(c.packed == q.packed && c.absmax == q.absmax, "the CPU twin and the fast path differ");
    }
    Ok(q)
}

#[test]
fn double_quantization_matches_bitsandbytes_at_real_layer_sizes_and_thread_counts() -> Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nf4/real_sizes.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).with_context(|| path.display().to_string())?)?;
    let cases = field(&doc, "cases", "real_sizes.json")?.as_array().context("`cases` is not a list")?;
    ensure!(cases.len() >= 8, "{} cases", cases.len());
    let (mut runs, mut split_runs, mut max_blocks) = (0, 0, 0);
    for case in cases {
        let name = text(case, "name", "case")?;
        let (rows, cols) = (uint(case, "rows", name)? as usize, uint(case, "cols", name)? as usize);
        let blocksize = uint(case, "blocksize", name)? as usize;
        let x = layer_weights(uint(case, "seed", name)?, rows, cols);
        // The twin is slow: it checks the cases up to a few million elements.
        let twin = x.len() <= 4 << 20;
        let q = match text(case, "dtype", name)? {
            "f32" => quantize_as::<f32>(&x, blocksize, twin),
            "f16" => quantize_as::<f16>(&x, blocksize, twin),
            "bf16" => quantize_as::<bf16>(&x, blocksize, twin),
            other => anyhow::bail!("{name}: unknown dtype {other}"),
        }
        .with_context(|| name.to_string())?;
        let blocks = q.absmax.len();
        ensure!(blocks as u64 == uint(case, "blocks", name)?, "{name}: {blocks} blocks");
        ensure!(sha256(&q.packed) == text(case, "packed_sha256", name)?, "{name}: packed nibbles differ");
        ensure!(sha256(&f32_bytes(&q.absmax)) == text(case, "absmax_sha256", name)?, "{name}: absmax differs");
        max_blocks = max_blocks.max(blocks);
        for run in field(case, "runs", name)?.as_array().context("`runs` is not a list")? {
            let threads = uint(run, "threads", name)? as usize;
            let what = format!("{name} ({blocks} blocks, torch threads {threads})");
            let dq = nf4::double_quantize_threads(&q.absmax, threads);
            let want = f32::from_bits(uint(run, "offset_bits", &what)? as u32);
            ensure!(dq.offset.to_bits() == want.to_bits(), "{what}: offset {:e}, bitsandbytes {want:e}", dq.offset);
            let head: Vec<u64> = dq.nested_absmax.iter().take(4).map(|v| v.to_bits() as u64).collect();
            let want_head: Vec<u64> = field(run, "nested_absmax_head_bits", &what)?
                .as_array()
                .context("head is not a list")?
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            ensure!(head == want_head, "{what}: first nested scales {head:?}, bitsandbytes {want_head:?}");
            ensure!(
                sha256(&f32_bytes(&dq.nested_absmax)) == text(run, "nested_absmax_sha256", &what)?,
                "{what}: nested scales differ"
            );
            ensure!(sha256(&dq.codes) == text(run, "codes_sha256", &what)?, "{what}: scale codes differ");
            runs += 1;
            split_runs += usize::from(threads > 1 && blocks >= 32_768);
        }
    }
    // The fixture must reach the regime where torch splits the mean across threads, with real layer sizes.
    ensure!(runs >= 20 && split_runs >= 8 && max_blocks >= 500_000, "{runs} runs, {split_runs} split, {max_blocks} blocks");
    Ok(())
}

#[test]
fn torch_sum_splits_across_threads_only_from_the_grain_size() -> Result<()> {
    // Below 32 768 elements every thread count takes the serial order; above, two threads sum two halves
    // serially and add the two partial sums. Either way the sum is close to the exact one.
    let x: Vec<f32> = (0..100_000u64).map(|i| (crate::common::splitmix64(i) >> 40) as f32 * 1e-7 + 0.01).collect();
    for t in [2, 3, 8] {
        ensure!(nf4::torch_sum(&x[..32_767], t).to_bits() == nf4::torch_sum(&x[..32_767], 1).to_bits());
    }
    let (one, two) = (nf4::torch_sum(&x, 1), nf4::torch_sum(&x, 2));
    let halves = nf4::torch_sum(&x[..50_000], 1) + nf4::torch_sum(&x[50_000..], 1);
    ensure!(two.to_bits() == halves.to_bits(), "two threads {two:e}, halves {halves:e}");
    let exact: f64 = x.iter().map(|&v| v as f64).sum();
    for s in [one, two] {
        ensure!(((s as f64) - exact).abs() <= 1e-6 * exact, "{s} vs {exact}");
    }
    ensure!(nf4::torch_mean(&[], 4) == 0.0 && nf4::torch_sum(&x[..5], 0) == nf4::torch_sum(&x[..5], 1));
    Ok(())
}
