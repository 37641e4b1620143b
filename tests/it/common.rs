//! Helpers shared by the integration tests: tolerance checks, seeded random data, f64 finite differences.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

use anyhow::{ensure, Result};
use rankfold_tensor::{no_grad, DType, Device, Rng, Tensor};

/// Combined tolerance: |x − y| ≤ abs + rel·|y|.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tol {
    pub(crate) rel: f64,
    pub(crate) abs: f64,
}

/// Fails unless every element of `got` is within `tol` of `want`'s; a non-finite `want` must be matched exactly in
/// kind (NaN by NaN, +∞ by +∞, −∞ by −∞), and a non-finite `got` against a finite `want` fails.
pub(crate) fn assert_close(got: &[f64], want: &[f64], tol: Tol, what: &str) -> Result<()> {
    ensure!(got.len() == want.len(), "{what}: {} values, want {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        ensure!(same_kind(g, w), "{what}: element {i}: got {g}, want {w}");
        if w.is_finite() {
            ensure!((g - w).abs() <= tol.abs + tol.rel * w.abs(), "{what}: element {i}: got {g}, want {w} (tol {tol:?})");
        }
    }
    Ok(())
}

/// The largest `|got − want| / max(|want|, floor)`, after checking the lengths and that every non-finite element
/// matches in kind, so a NaN can never hide behind a maximum (`f32::max` ignores NaN).
pub(crate) fn worst_rel<T: Copy + Into<f64>>(got: &[T], want: &[T], floor: f64, what: &str) -> Result<f64> {
    worst_by(got, want, what, |d, w| d / w.abs().max(floor))
}

/// The largest `|got − want|`, with [`worst_rel`]'s checks.
pub(crate) fn worst_abs<T: Copy + Into<f64>>(got: &[T], want: &[T], what: &str) -> Result<f64> {
    worst_by(got, want, what, |d, _| d)
}

/// The largest `measure(|got − want|, want)` over the finite elements, with [`worst_rel`]'s checks.
fn worst_by<T: Copy + Into<f64>>(got: &[T], want: &[T], what: &str, measure: impl Fn(f64, f64) -> f64) -> Result<f64> {
    ensure!(got.len() == want.len(), "{what}: {} values, want {}", got.len(), want.len());
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w): (f64, f64) = (g.into(), w.into());
        ensure!(same_kind(g, w), "{what}: element {i}: got {g}, want {w}");
        if w.is_finite() {
            worst = worst.max(measure((g - w).abs(), w));
        }
    }
    Ok(worst)
}

/// Whether `g` and `w` are both finite, both NaN, or the same infinity.
pub(crate) fn same_kind(g: f64, w: f64) -> bool {
    if w.is_nan() || g.is_nan() {
        w.is_nan() && g.is_nan()
    } else if w.is_infinite() || g.is_infinite() {
        g == w
    } else {
        true
    }
}

/// Uniform values in [lo, hi) from a seeded generator.
pub(crate) fn uniform(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

/// An f64 CPU tensor.
pub(crate) fn t64(v: Vec<f64>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(v, dims.to_vec(), Device::Cpu).expect("element count matches dims")
}

/// Checks the gradients of `f` at `inputs` (f64 tensors, given as (dims, values)) against central finite
/// differences of `sum(f(inputs) ⊙ R)` with a fixed random R, so every output element weighs differently.
pub(crate) fn check_grads(inputs: &[(Vec<usize>, Vec<f64>)], f: impl Fn(&[Tensor]) -> rankfold_tensor::Result<Tensor>) -> Result<()> {
    let leaves: Vec<Tensor> = inputs.iter().map(|(d, v)| t64(v.clone(), d).with_requires_grad(true)).collect();
    let y = f(&leaves)?;
    ensure!(y.dtype() == DType::F64, "the function must keep f64");
    let mut rng = Rng::new(0xC0FFEE ^ y.elem_count() as u64);
    let r = t64(uniform(&mut rng, y.elem_count(), -1.0, 1.0), y.dims());
    let loss = y.mul(&r)?.sum_all()?;
    let grads = loss.backward()?;
    let eval = |vals: &[Vec<f64>]| -> Result<f64> {
        no_grad(|| {
            let ts: Vec<Tensor> = inputs.iter().zip(vals).map(|((d, _), v)| t64(v.clone(), d)).collect();
            Ok(f(&ts)?.mul(&r)?.sum_all()?.to_scalar()?)
        })
    };
    let h = 1e-6;
    for (i, leaf) in leaves.iter().enumerate() {
        let analytic = match grads.get(leaf) {
            Some(g) => g.to_vec::<f64>()?,
            None => vec![0.0; inputs[i].1.len()],
        };
        ensure!(analytic.len() == inputs[i].1.len(), "input {i}: gradient has {} elements", analytic.len());
        let mut vals: Vec<Vec<f64>> = inputs.iter().map(|(_, v)| v.clone()).collect();
        for j in 0..vals[i].len() {
            let x0 = vals[i][j];
            vals[i][j] = x0 + h;
            let up = eval(&vals)?;
            vals[i][j] = x0 - h;
            let down = eval(&vals)?;
            vals[i][j] = x0;
            let num = (up - down) / (2.0 * h);
            let a = analytic[j];
            ensure!((a - num).abs() <= 1e-6 + 1e-5 * num.abs(), "input {i} element {j}: analytic {a}, numeric {num}");
        }
    }
    Ok(())
}

/// SplitMix64's output function (the fixture scripts' `splitmix64`).
pub(crate) fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The bell-shaped integer of element `i` of the fixture scripts' exact generators: the sum of the four 16-bit
/// fields of `splitmix64(seed·2^32 + i)` minus 131070, and the hash itself.
pub(crate) fn exact_draw(seed: u64, i: u64) -> (i64, u64) {
    let h = splitmix64((seed << 32).wrapping_add(i));
    ((0..4).map(|k| ((h >> (16 * k)) & 0xFFFF) as i64).sum::<i64>() - 131_070, h)
}

/// The asset cache of `cargo xtask assets`: `$RANKFOLD_ASSETS` when set and not empty, else
/// `~/.cache/rankfold/assets`.
fn asset_root() -> Option<PathBuf> {
    std::env::var_os("RANKFOLD_ASSETS")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rankfold/assets")))
}

/// Whether this run is CI's (`CI` set to anything but empty, `0` or `false`), where nothing may be skipped.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// The tests skipped for a missing asset, reported once when the test binary exits.
static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Prints the one summary line of the skipped tests (registered with `atexit`, so it comes after libtest's own
/// summary).
extern "C" fn report_skips() {
    let skipped = SKIPPED.lock().unwrap_or_else(|p| p.into_inner());
    if !skipped.is_empty() {
        // A failed write to stderr at exit has nowhere to be reported.
        let _ = writeln!(
            std::io::stderr(),
            "note: {} test(s) skipped because assets are not fetched (run `cargo xtask assets`; under CI they \
             fail instead): {}",
            skipped.len(),
            skipped.join(", ")
        );
    }
}

/// The file `rel` under the asset cache, when it has been fetched. A missing asset is an error under CI (so a
/// test that cannot run fails rather than passing); elsewhere it gives `None`, the caller returns early, and the
/// test is named in one summary line when the test binary exits.
pub(crate) fn asset(rel: &str) -> Result<Option<PathBuf>> {
    let root = asset_root();
    if let Some(p) = root.as_ref().map(|r| r.join(rel)).filter(|p| p.is_file()) {
        return Ok(Some(p));
    }
    let shown = root.map_or_else(|| "(no HOME, no RANKFOLD_ASSETS)".into(), |r| r.display().to_string());
    ensure!(!in_ci(), "asset {rel} is missing under {shown}: CI must fetch it with `cargo xtask assets`");
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `report_skips` is a plain `extern "C" fn()` that lives for the whole process, takes no
        // arguments and never unwinds (it only locks a static and writes to stderr, ignoring errors), which is
        // all `atexit` asks of a handler. A failed registration only loses the summary line.
        unsafe {
            libc::atexit(report_skips);
        }
    });
    let test = std::thread::current().name().unwrap_or("(unnamed test)").to_string();
    SKIPPED.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{test} ({rel})"));
    Ok(None)
}

/// The SmolLM2-135M-Instruct GGUF asset.
pub(crate) const SMOLLM2_GGUF: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
