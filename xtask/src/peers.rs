//! `cargo xtask bench --peers`: runs the benched workloads that have a Python counterpart in
//! xtask/peers/numpy_peers.py, so that each rankfold row can print a reference value and a ratio beside it: f32
//! GEMM and AdamW in numpy, and NF4 quantize/dequantize on the CPU in bitsandbytes (xtask/peers/bnb_peers.py)
//! when torch and bitsandbytes import in that Python, and one LoRA training step in PyTorch + PEFT
//! (xtask/peers/train_step_peers.py) when torch, transformers and peft do. Each peer row says which library it
//! came from.
//!
//! The workloads are taken from the rows that criterion just measured, so the shapes have one source: benches/.
//! The script gets them as JSON on stdin and answers with JSON on stdout (times in seconds, the median of
//! several timed repeats after a warm-up). Its BLAS, OpenMP and torch pools run on `threads` threads, and the
//! environment variables that pin OpenBLAS to a particular kernel or cache size are removed, so OpenBLAS picks
//! its kernel itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::{Measured, Row};

/// The NF4 blocksize of benches/nf4.rs, which its bench ids do not carry.
const NF4_BLOCKSIZE: u64 = 64;

/// The element types whose NF4 rows have a bitsandbytes peer (bitsandbytes takes all three).
const NF4_DTYPES: [&str; 3] = ["f32", "f16", "bf16"];

/// One workload for the script: a named rankfold row and its dimensions.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Workload {
    /// `a` [m, k] · `b` [k, n] in f32.
    Gemm { name: String, shape: String, m: u64, n: u64, k: u64 },
    /// One AdamW step over `tensors` f32 tensors of `rows`·`cols` parameters each.
    Adamw { name: String, shape: String, tensors: u64, rows: u64, cols: u64 },
    /// The same step with bitsandbytes' AdamW8bit (8-bit blockwise state) on the CPU.
    Adamw8bit { name: String, shape: String, tensors: u64, rows: u64, cols: u64 },
    /// NF4 `op` ("quantize" or "dequantize") of `n` values of `dtype` in blocks of `blocksize`, no double quant.
    Nf4 { name: String, shape: String, op: String, dtype: String, n: u64, blocksize: u64 },
    /// One LoRA training step of benches/train_step.rs on `batch` rows of `seq` tokens, in PyTorch + PEFT.
    TrainStep { name: String, shape: String, batch: u64, seq: u64 },
}

#[derive(Debug, Serialize)]
struct Request {
    quick: bool,
    threads: usize,
    workloads: Vec<Workload>,
}

#[derive(Debug, Deserialize)]
struct Response {
    numpy: String,
    blas: String,
    /// One line on bitsandbytes and torch; absent or null when they did not import or were not needed.
    #[serde(default)]
    bnb: Option<String>,
    /// One line on torch, transformers and peft; absent or null when they did not import or were not needed.
    #[serde(default)]
    peft: Option<String>,
    results: Vec<PeerResult>,
}

#[derive(Debug, Deserialize)]
struct PeerResult {
    name: String,
    shape: String,
    seconds: f64,
    #[serde(default)]
    library: Library,
}

/// The library that a peer result came from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Library {
    /// numpy and its BLAS; the default, as the script's first answers named no library.
    #[default]
    Numpy,
    /// bitsandbytes on torch's CPU tensors.
    Bnb,
    /// transformers and PEFT on torch's CPU tensors.
    Peft,
}

impl Library {
    /// The short name that labels the library's rows in the table and prefixes their JSON names.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Library::Numpy => "numpy",
            Library::Bnb => "bnb",
            Library::Peft => "peft",
        }
    }
}

/// What the peers measured, ready to be set beside rankfold's rows.
#[derive(Debug)]
pub(crate) struct Report {
    python: PathBuf,
    response: Response,
}

impl Report {
    /// One line per library on what ran: numpy and its BLAS, then bitsandbytes and torch when they imported.
    pub(crate) fn describe(&self) -> Vec<String> {
        let py = self.python.display();
        let mut lines = vec![format!("numpy {} from {py}; {}", self.response.numpy, self.response.blas)];
        lines.extend(self.response.bnb.iter().map(|b| format!("{b} from {py}")));
        lines.extend(self.response.peft.iter().map(|p| format!("{p} from {py}")));
        lines
    }

    /// The peer's library and row for the same workload as `m`, in the same metric and unit, if a peer ran it.
    /// The row's name is the library's label before rankfold's name, e.g. `bnb/nf4/quantize`.
    pub(crate) fn row_for(&self, m: &Measured) -> Option<(Library, Row)> {
        let r = self.response.results.iter().find(|r| r.name == m.row.name && r.shape == m.row.shape)?;
        let row = Row {
            name: format!("{}/{}", r.library.label(), m.row.name),
            shape: m.row.shape.clone(),
            metric: m.row.metric.clone(),
            value: m.work / (r.seconds * 1e9),
            unit: m.row.unit.clone(),
        };
        Some((r.library, row))
    }

    /// A report read from the script's JSON answer, for the tests here and in bench.rs.
    #[cfg(test)]
    pub(crate) fn from_json(json: &str) -> Report {
        Report { python: "python3".into(), response: serde_json::from_str(json).expect("a valid test answer") }
    }
}

/// Runs the peers for the rows of `measured` that have one; `None` (after a note) when no Python with numpy is
/// found or the script fails, since the rankfold rows are worth printing without them. A Python without torch
/// or bitsandbytes still runs the numpy peers; the script notes that it skipped the NF4 ones.
pub(crate) fn run(root: &Path, measured: &[Measured], quick: bool, threads: usize) -> Result<Option<Report>> {
    let workloads: Vec<Workload> = measured.iter().filter_map(workload).collect();
    if workloads.is_empty() {
        eprintln!(
            "xtask: no measured bench has a peer (the peers cover matmul, adamw (numpy; bitsandbytes for 8bit), \
             nf4 quantize/dequantize and train_step)"
        );
        return Ok(None);
    }
    let Some(python) = find_python(threads) else {
        eprintln!(
            "xtask: note: no Python with numpy found ($RANKFOLD_PEERS_PYTHON, ~/.cache/rankfold-peers/bin/python, \
             python3); printing rankfold's results without peers. To get them: cargo xtask peers-env"
        );
        return Ok(None);
    };
    let script = root.join("xtask/peers/numpy_peers.py");
    let request = serde_json::to_string(&Request { quick, threads, workloads })?;
    eprintln!("xtask: running {} {}", python.display(), script.display());
    let mut child = python_command(&python, threads)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    child.stdin.take().context("script stdin")?.write_all(request.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        eprintln!("xtask: note: the peers script failed ({}); printing rankfold's results without peers", out.status);
        return Ok(None);
    }
    let response: Response = match serde_json::from_slice(&out.stdout) {
        Ok(r) => r,
        Err(e) => bail!("the peers script printed unreadable JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)),
    };
    Ok(Some(Report { python, response }))
}

/// The Python counterpart of a measured row, if it has one.
fn workload(m: &Measured) -> Option<Workload> {
    let (name, shape) = (m.row.name.clone(), m.row.shape.clone());
    let dims = || -> Option<Vec<u64>> { shape.split('x').map(|d| d.parse().ok()).collect() };
    match name.as_str() {
        // The matmul bench names its shapes MxNxK.
        "matmul/f32" => match dims()?[..] {
            [m, n, k] => Some(Workload::Gemm { name, shape, m, n, k }),
            _ => None,
        },
        // The adamw bench names its parameters TENSORSxROWSxCOLS.
        "adamw/f32" => match dims()?[..] {
            [tensors, rows, cols] => Some(Workload::Adamw { name, shape, tensors, rows, cols }),
            _ => None,
        },
        "adamw/8bit" => match dims()?[..] {
            [tensors, rows, cols] => Some(Workload::Adamw8bit { name, shape, tensors, rows, cols }),
            _ => None,
        },
        // The nf4 bench names its rows nf4/OP with the shape DTYPE/N; memcpy and gemv have no peer.
        "nf4/quantize" | "nf4/dequantize" => {
            let (dtype, n) = shape.split_once('/')?;
            let n: u64 = n.parse().ok()?;
            if !NF4_DTYPES.contains(&dtype) || n == 0 {
                return None;
            }
            let (op, dtype) = (name["nf4/".len()..].to_string(), dtype.to_string());
            Some(Workload::Nf4 { name, shape, op, dtype, n, blocksize: NF4_BLOCKSIZE })
        }
        // The training-step bench names its shape BATCHxSEQ.
        "train_step/lora_f32" => match dims()?[..] {
            [batch, seq] => Some(Workload::TrainStep { name, shape, batch, seq }),
            _ => None,
        },
        _ => None,
    }
}

/// A command for `python` with the BLAS thread counts set and the OpenBLAS kernel overrides removed.
fn python_command(python: &Path, threads: usize) -> Command {
    let mut cmd = Command::new(python);
    let n = threads.to_string();
    for var in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"] {
        cmd.env(var, &n);
    }
    cmd.env_remove("OPENBLAS_CORETYPE").env_remove("OPENBLAS_L2_SIZE");
    // The script imports bnb_peers.py beside it; no __pycache__ should appear in the working tree.
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// The first of $RANKFOLD_PEERS_PYTHON, the python of `cargo xtask peers-env` ($RANKFOLD_PEERS_DIR or
/// ~/.cache/rankfold-peers) and python3 that imports numpy.
fn find_python(threads: usize) -> Option<PathBuf> {
    let chosen = std::env::var_os("RANKFOLD_PEERS_PYTHON").map(PathBuf::from);
    let mut candidates: Vec<PathBuf> = chosen.iter().cloned().collect();
    if let Ok(dir) = crate::peers_env::env_dir() {
        candidates.push(dir.join("bin/python"));
    }
    candidates.push(PathBuf::from("python3"));
    candidates.into_iter().find(|py| {
        let ok = python_command(py, threads)
            .args(["-c", "import numpy"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        // A Python that was asked for, or that exists where the default one lives, deserves a word when it fails.
        if !ok && (chosen.as_ref() == Some(py) || (py.is_absolute() && py.exists())) {
            eprintln!("xtask: {} cannot run or cannot import numpy; trying the next Python", py.display());
        }
        ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(name: &str, shape: &str) -> Measured {
        let row = Row { name: name.into(), shape: shape.into(), metric: "m".into(), value: 1.0, unit: "u".into() };
        Measured { row, work: 2e9, seconds: 1.0 }
    }

    #[test]
    fn gemm_adamw_and_nf4_have_peers() {
        let json = |n, s| serde_json::to_string(&workload(&measured(n, s))).unwrap();
        assert_eq!(
            json("matmul/f32", "1024x8x576"),
            r#"{"kind":"gemm","name":"matmul/f32","shape":"1024x8x576","m":1024,"n":8,"k":576}"#
        );
        assert!(json("adamw/f32", "16x1024x1024").contains(r#""kind":"adamw""#));
        assert!(json("adamw/8bit", "16x1024x1024").contains(r#""kind":"adamw8bit""#));
        assert_eq!(json("softmax/f32", "4096x1024"), "null");
        assert_eq!(json("matmul/f32", "8x8"), "null");
        assert_eq!(
            serde_json::to_value(workload(&measured("nf4/quantize", "bf16/16777216"))).unwrap(),
            serde_json::json!({"kind": "nf4", "name": "nf4/quantize", "shape": "bf16/16777216", "op": "quantize",
                               "dtype": "bf16", "n": 16777216, "blocksize": 64})
        );
        assert!(json("nf4/dequantize", "f32/1000003").contains(r#""op":"dequantize","dtype":"f32","n":1000003"#));
        // The yardstick and the GEMV have no bitsandbytes counterpart here, nor do malformed or unknown shapes.
        for (n, s) in [
            ("nf4/memcpy", "f32/16777216"),
            ("nf4/gemv", "f32/4096x4096"),
            ("nf4/quantize", "f8/16"),
            ("nf4/quantize", "f32/16x2"),
            ("nf4/dequantize", "f32"),
            ("nf4/dequantize", "f32/0"),
        ] {
            assert_eq!(json(n, s), "null", "{n} {s}");
        }
    }

    #[test]
    fn train_step_has_a_peft_peer() {
        assert_eq!(
            serde_json::to_value(workload(&measured("train_step/lora_f32", "8x128"))).unwrap(),
            serde_json::json!({"kind": "train_step", "name": "train_step/lora_f32", "shape": "8x128", "batch": 8,
                               "seq": 128})
        );
        assert!(workload(&measured("train_step/lora_f32", "8")).is_none());
        let report = Report::from_json(
            r#"{"numpy": "2", "blas": "b", "peft": "torch 9 + peft 1", "results": [
                {"name": "train_step/lora_f32", "shape": "8x128", "seconds": 4.0, "library": "peft"}]}"#,
        );
        let (library, row) = report.row_for(&measured("train_step/lora_f32", "8x128")).unwrap();
        assert_eq!((library, row.name.as_str()), (Library::Peft, "peft/train_step/lora_f32"));
        assert_eq!(report.describe()[1], "torch 9 + peft 1 from python3");
    }

    #[test]
    fn peer_rows_share_the_unit() {
        let report = Report::from_json(
            r#"{"numpy": "2", "blas": "b", "results": [{"name": "matmul/f32", "shape": "2x2x2", "seconds": 2.0}]}"#,
        );
        // An answer that names no library is numpy's, as the script's answers were before bitsandbytes.
        let (library, row) = report.row_for(&measured("matmul/f32", "2x2x2")).unwrap();
        assert_eq!((library, row.name.as_str(), row.value), (Library::Numpy, "numpy/matmul/f32", 1.0));
        assert!(report.row_for(&measured("matmul/f32", "4x4x4")).is_none());
        assert_eq!(report.describe(), ["numpy 2 from python3; b"]);
    }

    #[test]
    fn bnb_rows_are_labelled_per_row() {
        let report = Report::from_json(
            r#"{"numpy": "2", "blas": "b", "bnb": "bitsandbytes 9 (torch 8)", "results": [
                {"name": "matmul/f32", "shape": "2x2x2", "seconds": 4.0, "library": "numpy"},
                {"name": "nf4/quantize", "shape": "bf16/64", "seconds": 0.5, "library": "bnb"}]}"#,
        );
        let (library, row) = report.row_for(&measured("nf4/quantize", "bf16/64")).unwrap();
        // The peer's value is rankfold's work per call over the peer's seconds per call (2e9 / 0.5 s = 4 G/s).
        assert_eq!((library, row.name.as_str(), row.value), (Library::Bnb, "bnb/nf4/quantize", 4.0));
        assert_eq!((row.shape.as_str(), row.unit.as_str()), ("bf16/64", "u"));
        assert_eq!(report.row_for(&measured("matmul/f32", "2x2x2")).unwrap().0, Library::Numpy);
        assert!(report.row_for(&measured("nf4/quantize", "f32/64")).is_none());
        assert_eq!(report.describe()[1], "bitsandbytes 9 (torch 8) from python3");
        assert!(serde_json::from_str::<Response>(
            r#"{"numpy": "2", "blas": "b", "results": [{"name": "a", "shape": "1", "seconds": 1, "library": "x"}]}"#
        )
        .is_err());
    }
}
