//! NF4 against bitsandbytes: bit-for-bit on the committed fixtures (tests/fixtures/nf4_fixtures.py), the fast
//! path against the CPU twin on random awkward lengths, round-trip error bounds, and the bnb file layout.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use half::{bf16, f16};
use proptest::prelude::*;
use rankfold_kernels::nf4::{
    self, cpu, double_dequantize, double_quantize, double_quantize_with_offset, fast, GemvShape, Nf4Element,
    Nf4Quantized, NF4_CODEBOOK, NF4_THRESHOLDS,
};
use rankfold_tensor::safetensors::MmapedSafetensors;
use rankfold_tensor::{DType, Device, WithDType};

fn fixture(name: &str) -> Result<MmapedSafetensors> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nf4")
        .join(name);
    MmapedSafetensors::open(&p).with_context(|| format!("fixture {}", p.display()))
}

fn get<T: WithDType>(st: &MmapedSafetensors, name: &str) -> Result<Vec<T>> {
    Ok(st.load(name, Device::Cpu)?.to_vec::<T>()?)
}

fn bits<T: Nf4Element>(v: &[T]) -> Vec<u32> {
    v.iter().map(|x| x.to_f32().to_bits()).collect()
}

#[test]
fn constants_match_bitsandbytes() -> Result<()> {
    let meta = fixture("meta.safetensors")?;
    let map: Vec<f32> = get(&meta, "dynamic_map")?;
    ensure!(
        bits(&map) == bits(&nf4::dynamic_map_signed()),
        "DYNAMIC_MAP_SIGNED_BITS differs from bnb's map"
    );
    ensure!(
        bits(&get::<f32>(&meta, "nf4_code")?) == bits(&NF4_CODEBOOK),
        "NF4_CODEBOOK differs from bnb's"
    );
    ensure!(
        bits(&get::<f32>(&meta, "nf4_bounds")?) == bits(&NF4_THRESHOLDS),
        "NF4_THRESHOLDS differ from bnb's"
    );
    Ok(())
}

/// Checks one fixture case (`prefix.*` tensors) with input element type `T`.
fn check_case<T: Nf4Element + WithDType>(st: &MmapedSafetensors, prefix: &str, blocksize: usize) -> Result<()> {
    let what = |k: &str| format!("bs{blocksize} {prefix}: {k}");
    let x: Vec<T> = get(st, &format!("{prefix}.x"))?;
    let packed: Vec<u8> = get(st, &format!("{prefix}.packed"))?;
    let absmax: Vec<f32> = get(st, &format!("{prefix}.absmax"))?;
    let deq: Vec<T> = get(st, &format!("{prefix}.deq"))?;
    for (name, q) in [
        ("cpu", cpu::quantize(&x, blocksize)?),
        ("fast", fast::quantize(&x, blocksize)?),
    ] {
        ensure!(q.packed == packed, "{} ({name})", what("packed codes differ"));
        ensure!(bits(&q.absmax) == bits(&absmax), "{} ({name})", what("absmax differs"));
    }
    let q = Nf4Quantized {
        packed,
        absmax: absmax.clone(),
        len: x.len(),
        blocksize,
    };
    let mut out = vec![T::from_f32(0.0); x.len()];
    cpu::dequantize(q.view(), &mut out)?;
    ensure!(bits(&out) == bits(&deq), "{}", what("cpu dequantize differs"));
    let mut out2 = vec![T::from_f32(1.0); x.len()];
    fast::dequantize(q.view(), &mut out2)?;
    ensure!(bits(&out2) == bits(&deq), "{}", what("fast dequantize differs"));

    // Double quantization: everything downstream of bnb's offset is bit-exact, and so is the offset.
    let offset = get::<f32>(st, &format!("{prefix}.dq_offset"))?[0];
    let dq = double_quantize_with_offset(&absmax, offset);
    ensure!(
        dq.codes == get::<u8>(st, &format!("{prefix}.dq_codes"))?,
        "{}",
        what("nested codes differ")
    );
    let nested: Vec<f32> = get(st, &format!("{prefix}.dq_nested_absmax"))?;
    ensure!(
        bits(&dq.nested_absmax) == bits(&nested),
        "{}",
        what("nested absmax differs")
    );
    // Every fixture has fewer than 32 768 blocks, where torch's f32 mean is reproduced exactly.
    let ours = double_quantize(&absmax).offset;
    ensure!(
        ours.to_bits() == offset.to_bits(),
        "{}: {ours} vs {offset}",
        what("offset differs from torch's")
    );
    let mut am2 = vec![0f32; absmax.len()];
    double_dequantize(&dq, &mut am2)?;
    let q2 = Nf4Quantized { absmax: am2, ..q };
    cpu::dequantize(q2.view(), &mut out)?;
    ensure!(
        bits(&out) == bits(&get::<T>(st, &format!("{prefix}.deq_nested"))?),
        "{}",
        what("nested dequantize differs")
    );
    Ok(())
}

#[test]
fn bit_exact_with_bitsandbytes_fixtures() -> Result<()> {
    let mut cases = 0;
    for bs in [32, 64, 128, 256, 512, 1024, 2048, 4096] {
        let st = fixture(&format!("bs{bs}.safetensors"))?;
        check_case::<f32>(&st, "f32", bs)?;
        check_case::<f16>(&st, "f16", bs)?;
        check_case::<bf16>(&st, "bf16", bs)?;
        for edge in ["tailzero", "short", "one"] {
            check_case::<f32>(&st, edge, bs)?;
        }
        ensure!(st.info("f16.x")?.1 == DType::F16 && st.info("bf16.x")?.1 == DType::BF16);
        cases += 6;
    }
    check_case::<f32>(&fixture("ties.safetensors")?, "ties", 64)?;
    ensure!(cases == 48);
    Ok(())
}

/// Random values with a few exact zeros and a spread of magnitudes, of element type `T`.
fn sample<T: Nf4Element>(seed: u64, n: usize) -> Vec<T> {
    let mut rng = rankfold_tensor::Rng::new(seed);
    let scale = 0.01 + 10.0 * rng.uniform();
    (0..n)
        .map(|i| {
            if i % 97 == 13 {
                T::from_f32(0.0)
            } else {
                T::from_f32(((rng.uniform() - 0.5) * scale) as f32)
            }
        })
        .collect()
}

fn fast_equals_twin<T: Nf4Element>(seed: u64, n: usize, blocksize: usize) -> Result<()> {
    let x: Vec<T> = sample(seed, n);
    let a = cpu::quantize(&x, blocksize)?;
    let b = fast::quantize(&x, blocksize)?;
    ensure!(
        a == b,
        "fast quantize differs from the twin ({} n={n} bs={blocksize})",
        T::NAME
    );
    let mut da = vec![T::from_f32(0.0); n];
    let mut db = vec![T::from_f32(0.0); n];
    cpu::dequantize(a.view(), &mut da)?;
    fast::dequantize(a.view(), &mut db)?;
    ensure!(
        bits(&da) == bits(&db),
        "fast dequantize differs from the twin ({} n={n})",
        T::NAME
    );
    // The largest codebook gap is between -1 and the next code; a value is at most half of it from its code.
    let half_gap = NF4_CODEBOOK.windows(2).map(|w| w[1] - w[0]).fold(0f32, f32::max) / 2.0;
    let mut d32 = vec![0f32; n];
    cpu::dequantize(a.view(), &mut d32)?;
    for (i, (v, r)) in x.iter().zip(&d32).enumerate() {
        let am = a.absmax[i / blocksize];
        ensure!(
            (v.to_f32() - r).abs() <= half_gap * am * (1.0 + 1e-6),
            "round trip at {i}: {} vs {r}",
            v.to_f32()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn fast_path_and_round_trip(seed in any::<u64>(), n in 1usize..5000, lg in 5u32..13) {
        let bs = 1usize << lg;
        fast_equals_twin::<f32>(seed, n, bs).unwrap();
        fast_equals_twin::<f16>(seed ^ 1, n, bs).unwrap();
        fast_equals_twin::<bf16>(seed ^ 2, n, bs).unwrap();
    }

    #[test]
    fn dequantize_range_is_a_slice_of_the_whole(seed in any::<u64>(), n in 2usize..3000, a in 0usize..3000, b in 0usize..3000) {
        let x: Vec<f32> = sample(seed, n);
        let q = fast::quantize(&x, 32).unwrap();
        let mut whole = vec![0f32; n];
        cpu::dequantize(q.view(), &mut whole).unwrap();
        let (lo, hi) = ((a % n).min(b % n), (a % n).max(b % n));
        let mut part = vec![0f32; hi - lo];
        fast::dequantize_range(q.view(), lo, &mut part).unwrap();
        prop_assert_eq!(bits(&part), bits(&whole[lo..hi]));
        prop_assert!(fast::dequantize_range(q.view(), n - 1, &mut [0f32; 2]).is_err());
    }

    #[test]
    fn gemv_matches_twin(seed in any::<u64>(), rows in 1usize..70, cols in 1usize..300, lg in 5u32..8) {
        let w: Vec<f32> = sample(seed, rows * cols);
        let x: Vec<f32> = sample(seed ^ 9, cols);
        let q = cpu::quantize(&w, 1 << lg).unwrap();
        let shape = GemvShape { rows, cols };
        let (mut ya, mut yb) = (vec![0f32; rows], vec![0f32; rows]);
        cpu::gemv(q.view(), shape, &x, &mut ya).unwrap();
        fast::gemv(q.view(), shape, &x, &mut yb).unwrap();
        // An independent reference: dequantize, then an f64 dot product.
        let mut wd = vec![0f32; rows * cols];
        cpu::dequantize(q.view(), &mut wd).unwrap();
        for r in 0..rows {
            let want: f64 = (0..cols).map(|c| wd[r * cols + c] as f64 * x[c] as f64).sum();
            let mag: f64 = (0..cols).map(|c| (wd[r * cols + c] as f64 * x[c] as f64).abs()).sum();
            prop_assert!((ya[r] as f64 - want).abs() <= 1e-6 * mag + 1e-30);
            prop_assert!((yb[r] as f64 - want).abs() <= 1e-5 * mag + 1e-30, "row {}: {} vs {}", r, yb[r], want);
        }
        let wrong = GemvShape { rows, cols: cols + 1 };
        prop_assert!(fast::gemv(q.view(), wrong, &x, &mut yb).is_err());
    }
}

#[test]
fn bad_buffers_are_refused() {
    let x: Vec<f32> = sample(3, 100);
    let q = cpu::quantize(&x, 32).unwrap();
    let short = nf4::Nf4Ref {
        packed: &q.packed[1..],
        ..q.view()
    };
    let mut out = vec![0f32; 100];
    let e = cpu::dequantize(short, &mut out).unwrap_err().to_string();
    assert!(e.contains("nf4::cpu::dequantize") && e.contains("packed bytes"), "{e}");
    assert!(fast::dequantize(q.view(), &mut out[1..]).is_err());
    assert!(fast::quantize(&x, 100).is_err());
}

/// The weights of a tiny bnb `Linear4bit` model (one double-quantized, one not) load here, dequantize to
/// bnb's values bit for bit, and quantizing the original weights writes the same tensors under the same keys.
#[test]
fn linear4bit_files_round_trip_with_bitsandbytes() -> Result<()> {
    use rankfold_tensor::{Nf4Scales, Nf4Tensor};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nf4");
    let bnb_file = MmapedSafetensors::open(dir.join("linear4bit.safetensors"))?;
    let refs = fixture("linear4bit_ref.safetensors")?;
    let loaded = Nf4Tensor::load_all(dir.join("linear4bit.safetensors"))?;
    ensure!(loaded.len() == 2, "two NF4 weights, found {:?}", loaded.keys());
    let tmp = std::env::temp_dir().join(format!("rankfold-nf4-{}.safetensors", std::process::id()));
    for (name, double) in [("0.weight", true), ("1.weight", false)] {
        let w = &loaded[name];
        ensure!(matches!(w.scales(), Nf4Scales::Double(_)) == double, "{name}: nesting");
        let deq = w.dequantize(w.dtype())?.to_vec::<f32>()?;
        ensure!(
            bits(&deq) == bits(&get::<f32>(&refs, &format!("deq.{name}"))?),
            "{name}: dequantized values differ from bnb"
        );
        let orig = refs.load(&format!("orig.{name}"), Device::Cpu)?;
        let ours = Nf4Tensor::quantize(&orig, 64, double)?;
        ensure!(
            ours.packed() == w.packed() && ours.shape() == w.shape(),
            "{name}: packed codes differ"
        );
        // Scales (and for layer 0 the offset, codes and nested scales) are bit-identical to bnb's.
        ensure!(ours.scales() == w.scales(), "{name}: block scales differ from bnb's");
        // Our file has bnb's keys, dtypes and shapes, and the same quant state, byte for byte.
        Nf4Tensor::save(&tmp, &[(name, &ours)], &[])?;
        let mine = MmapedSafetensors::open(&tmp)?;
        let theirs: Vec<String> = bnb_file.names().into_iter().filter(|k| k.starts_with(name)).collect();
        let mut want = theirs.clone();
        want.sort();
        let mut got = mine.names();
        got.sort();
        ensure!(got == want, "{name}: keys {got:?} vs bnb's {want:?}");
        for k in &theirs {
            ensure!(mine.info(k)? == bnb_file.info(k)?, "{k}: shape/dtype differ from bnb's");
        }
        let qs = |st: &MmapedSafetensors| get::<u8>(st, &format!("{name}.quant_state.bitsandbytes__nf4"));
        ensure!(
            qs(&mine)? == qs(&bnb_file)?,
            "{name}: quant-state JSON differs from bnb's"
        );
        ensure!(
            Nf4Tensor::from_safetensors(&mine, name)? == ours,
            "{name}: our file does not read back"
        );
    }
    std::fs::remove_file(&tmp)?;
    Ok(())
}

#[test]
fn corrupt_quant_state_names_file_and_tensor() -> Result<()> {
    use rankfold_tensor::{Nf4Tensor, Tensor};
    let w = Nf4Tensor::quantize(
        &Tensor::from_vec(sample::<f32>(5, 300), (10, 30), Device::Cpu)?,
        64,
        true,
    )?;
    let mut parts = w.to_named_tensors("lin.weight")?;
    let bad = b"{\"quant_type\": \"fp4\"}".to_vec();
    parts.last_mut().expect("the quant state is last").1 = Tensor::from_vec(bad.clone(), bad.len(), Device::Cpu)?;
    let tmp = std::env::temp_dir().join(format!("rankfold-nf4-bad-{}.safetensors", std::process::id()));
    let refs: Vec<(&str, &Tensor)> = parts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    rankfold_tensor::safetensors::save(&tmp, &refs, None)?;
    let e = Nf4Tensor::load_all(&tmp).unwrap_err().to_string();
    std::fs::remove_file(&tmp)?;
    ensure!(
        e.contains("rankfold-nf4-bad") && e.contains("lin.weight.quant_state") && e.contains("fp4"),
        "{e}"
    );
    Ok(())
}

/// The fused NF4 linear equals dequantize-then-matmul, forward and backward (autograd of the composition).
#[test]
fn nf4_linear_matches_the_dequantized_composition() -> Result<()> {
    use rankfold_tensor::{Nf4Tensor, Tensor};
    for (seed, (b, t, n, k)) in [
        (1u64, (2, 3, 17, 70)),
        (2, (1, 5, 300, 1000)),
        (3, (3, 1, 1, 33)),
        (4, (2, 70, 700, 130)),
    ] {
        let w = std::sync::Arc::new(Nf4Tensor::quantize(
            &Tensor::from_vec(sample::<f32>(seed, n * k), (n, k), Device::Cpu)?,
            64,
            seed != 2, // Plain f32 scales for one case, double-quantized for the others.
        )?);
        let x = Tensor::from_vec(sample::<f32>(seed ^ 7, b * t * k), (b, t, k), Device::Cpu)?.with_requires_grad(true);
        let r = Tensor::from_vec(sample::<f32>(seed ^ 8, b * t * n), (b, t, n), Device::Cpu)?;
        // The gradient of Σ y ⊙ r with respect to x.
        let grad_x = |y: &Tensor| -> Result<Vec<f64>> {
            Ok(y.mul(&r)?.sum_all()?.backward()?.get(&x).context("x has a gradient")?.to_vec::<f64>()?)
        };
        let y = x.nf4_linear(&w)?;
        let gx = grad_x(&y)?;
        let wd = w.dequantize(DType::F32)?;
        let y2 = x.matmul(&wd.t()?)?;
        let gx2 = grad_x(&y2)?;
        let tol = crate::common::Tol { rel: 1e-4, abs: 1e-4 };
        crate::common::assert_close(&y.to_vec::<f64>()?, &y2.to_vec::<f64>()?, tol, "nf4_linear forward")?;
        crate::common::assert_close(&gx, &gx2, tol, "nf4_linear backward")?;
        ensure!(y.dims() == [b, t, n]);
    }
    Ok(())
}

/// `rankfold quantize` on a single file: default targets, sizes, refusal to overwrite, a truncated input.
#[test]
fn quantize_cli_writes_bnb_layout_and_refuses_bad_paths() -> Result<()> {
    use rankfold_tensor::{Nf4Tensor, Tensor};
    let dir = std::env::temp_dir().join(format!("rankfold-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    let t = |seed, r, c| Tensor::from_vec(sample::<f32>(seed, r * c), (r, c), Device::Cpu);
    let (q, e, n, odd) = (
        t(1, 40, 64)?,
        t(2, 50, 64)?,
        Tensor::from_vec(vec![1f32; 64], 64, Device::Cpu)?,
        t(3, 7, 9)?,
    );
    let odd16 = odd.to_dtype(DType::BF16)?;
    rankfold_tensor::safetensors::save(
        &inp,
        &[
            ("m.q_proj.weight", &q),
            ("m.embed_tokens.weight", &e),
            ("m.norm.weight", &n),
            ("m.odd.weight", &odd16),
        ],
        None,
    )?;
    let bin = env!("CARGO_BIN_EXE_rankfold");
    let run = |args: &[&std::ffi::OsStr]| std::process::Command::new(bin).arg("quantize").args(args).output();
    let o = run(&[
        "--in".as_ref(),
        inp.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--json".as_ref(),
    ])?;
    ensure!(
        o.status.success(),
        "quantize failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(o.stdout.trim_ascii())?;
    ensure!(summary["quantized"] == 2 && summary["tensors"] == 4, "{summary}");
    let loaded = Nf4Tensor::load_all(&out)?;
    let mut names: Vec<&String> = loaded.keys().collect();
    names.sort();
    ensure!(names == ["m.odd.weight", "m.q_proj.weight"], "{names:?}");
    ensure!(loaded["m.odd.weight"].dtype() == DType::BF16 && loaded["m.odd.weight"].shape().dims() == [7, 9]);
    let want = Nf4Tensor::quantize(&q, 64, true)?;
    ensure!(
        loaded["m.q_proj.weight"] == want,
        "the CLI's weight differs from Nf4Tensor::quantize"
    );
    let plain = MmapedSafetensors::open(&out)?;
    ensure!(plain.load("m.embed_tokens.weight", Device::Cpu)?.to_vec::<f32>()? == e.to_vec::<f32>()?);

    // Its own input, a bad blocksize and a truncated file are refused with messages that say why.
    let o = run(&["--in".as_ref(), inp.as_os_str(), "--out".as_ref(), inp.as_os_str()])?;
    ensure!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("refusing"),
        "overwrote its input"
    );
    let o = run(&[
        "--in".as_ref(),
        inp.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--blocksize".as_ref(),
        "48".as_ref(),
    ])?;
    ensure!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("blocksize 48"));
    let bytes = std::fs::read(&inp)?;
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100])?;
    let o = run(&[
        "--in".as_ref(),
        cut.as_os_str(),
        "--out".as_ref(),
        dir.join("o2.safetensors").as_os_str(),
    ])?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        !o.status.success() && err.contains("cut.safetensors"),
        "truncated input: {err}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The portable build of the fast path (what a CPU without AVX-512 runs) equals the twin too.
#[test]
fn portable_fast_path_equals_twin() -> Result<()> {
    fast::set_portable_only(true);
    let r = [(1u64, 4099usize, 64usize), (2, 777, 32), (3, 9000, 4096), (4, 1, 128)]
        .into_iter()
        .try_for_each(|(seed, n, bs)| -> Result<()> {
            fast_equals_twin::<f32>(seed, n, bs)?;
            fast_equals_twin::<bf16>(seed, n, bs)?;
            fast_equals_twin::<f16>(seed, n, bs)
        });
    fast::set_portable_only(false);
    r
}

#[test]
fn a_double_quantized_weight_costs_about_0_52_bytes_per_weight() -> Result<()> {
    use rankfold_tensor::{Nf4Tensor, Tensor};
    // Half a byte of codes, one 8-bit scale code per 64 weights, one f32 per 256 scales and the fixed maps:
    // 0.5 + 1/64 + 4/(64·256) + (4·256 + 4 + 64)/n. Plain f32 scales cost 4/64 instead of 1/64.
    let (rows, cols) = (1024, 1536);
    let n = (rows * cols) as f64;
    let w = Tensor::from_vec(sample::<f32>(9, rows * cols), (rows, cols), Device::Cpu)?;
    let double = Nf4Tensor::quantize(&w, 64, true)?.storage_bytes() as f64 / n;
    let want = 0.5 + 1.0 / 64.0 + 4.0 / (64.0 * 256.0) + (4.0 * 256.0 + 4.0 + 64.0) / n;
    ensure!((double - want).abs() < 1e-9 && double < 0.52, "{double} bytes per weight, want {want}");
    let plain = Nf4Tensor::quantize(&w, 64, false)?.storage_bytes() as f64 / n;
    ensure!((plain - (0.5 + 4.0 / 64.0 + 64.0 / n)).abs() < 1e-9, "{plain} bytes per weight with f32 scales");
    Ok(())
}
