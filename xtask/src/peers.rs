//! `cargo xtask bench --peers`: runs the benched workloads that have a numpy counterpart (f32 GEMM, AdamW) in
//! xtask/peers/numpy_peers.py, so that each rankfold row can print a reference value and a ratio beside it.
//!
//! The workloads are taken from the rows that criterion just measured, so the shapes have one source: benches/.
//! The script gets them as JSON on stdin and answers with JSON on stdout (times in seconds, the median of
//! several timed repeats after a warm-up). Its BLAS runs on `threads` threads, and the environment variables
//! that pin OpenBLAS to a particular kernel or cache size are removed, so OpenBLAS picks its kernel itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::{Measured, Row};

/// One workload for the script: a named rankfold row and its dimensions.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Workload {
    /// `a` [m, k] · `b` [k, n] in f32.
    Gemm { name: String, shape: String, m: u64, n: u64, k: u64 },
    /// One AdamW step over `tensors` f32 tensors of `rows`·`cols` parameters each.
    Adamw { name: String, shape: String, tensors: u64, rows: u64, cols: u64 },
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
    results: Vec<PeerResult>,
}

#[derive(Debug, Deserialize)]
struct PeerResult {
    name: String,
    shape: String,
    seconds: f64,
}

/// What the peers measured, ready to be set beside rankfold's rows.
#[derive(Debug)]
pub(crate) struct Report {
    python: PathBuf,
    response: Response,
}

impl Report {
    /// The column header for the peer values.
    pub(crate) fn label(&self) -> &'static str {
        "numpy"
    }

    /// One line on which numpy and BLAS ran.
    pub(crate) fn describe(&self) -> String {
        format!("numpy {} from {}; {}", self.response.numpy, self.python.display(), self.response.blas)
    }

    /// The peer's row for the same workload as `m`, in the same metric and unit, if the peer ran it.
    pub(crate) fn row_for(&self, m: &Measured) -> Option<Row> {
        let r = self.response.results.iter().find(|r| r.name == m.row.name && r.shape == m.row.shape)?;
        Some(Row {
            name: format!("{}/{}", self.label(), m.row.name),
            shape: m.row.shape.clone(),
            metric: m.row.metric.clone(),
            value: m.work / (r.seconds * 1e9),
            unit: m.row.unit.clone(),
        })
    }
}

/// Runs the peers for the rows of `measured` that have one; `None` (after a note) when no Python with numpy is
/// found or the script fails, since the rankfold rows are worth printing without them.
pub(crate) fn run(root: &Path, measured: &[Measured], quick: bool, threads: usize) -> Result<Option<Report>> {
    let workloads: Vec<Workload> = measured.iter().filter_map(workload).collect();
    if workloads.is_empty() {
        eprintln!("xtask: no measured bench has a numpy peer (the peers cover matmul and adamw)");
        return Ok(None);
    }
    let Some(python) = find_python(threads) else {
        eprintln!(
            "xtask: note: no Python with numpy found ($RANKFOLD_PEERS_PYTHON, ~/.cache/rankfold-peers/bin/python, \
             python3); printing rankfold's results without peers. To get them: python3 -m venv \
             ~/.cache/rankfold-peers && ~/.cache/rankfold-peers/bin/pip install numpy threadpoolctl"
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
        eprintln!("xtask: note: the numpy peers failed ({}); printing rankfold's results without peers", out.status);
        return Ok(None);
    }
    let response: Response = match serde_json::from_slice(&out.stdout) {
        Ok(r) => r,
        Err(e) => bail!("the numpy peers printed unreadable JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)),
    };
    Ok(Some(Report { python, response }))
}

/// The numpy counterpart of a measured row, if it has one.
fn workload(m: &Measured) -> Option<Workload> {
    let dims: Vec<u64> = m.row.shape.split('x').map(str::parse).collect::<Result<_, _>>().ok()?;
    let (name, shape) = (m.row.name.clone(), m.row.shape.clone());
    match (m.row.name.as_str(), dims.as_slice()) {
        // The matmul bench names its shapes MxNxK.
        ("matmul/f32", &[m, n, k]) => Some(Workload::Gemm { name, shape, m, n, k }),
        // The adamw bench names its parameters TENSORSxROWSxCOLS.
        ("adamw/f32", &[tensors, rows, cols]) => Some(Workload::Adamw { name, shape, tensors, rows, cols }),
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
    cmd
}

/// The first of $RANKFOLD_PEERS_PYTHON, ~/.cache/rankfold-peers/bin/python and python3 that imports numpy.
fn find_python(threads: usize) -> Option<PathBuf> {
    let chosen = std::env::var_os("RANKFOLD_PEERS_PYTHON").map(PathBuf::from);
    let mut candidates: Vec<PathBuf> = chosen.iter().cloned().collect();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/rankfold-peers/bin/python"));
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
    fn only_gemm_and_adamw_have_peers() {
        let json = |n, s| serde_json::to_string(&workload(&measured(n, s))).unwrap();
        assert_eq!(
            json("matmul/f32", "1024x8x576"),
            r#"{"kind":"gemm","name":"matmul/f32","shape":"1024x8x576","m":1024,"n":8,"k":576}"#
        );
        assert!(json("adamw/f32", "16x1024x1024").contains(r#""kind":"adamw""#));
        assert_eq!(json("softmax/f32", "4096x1024"), "null");
    }

    #[test]
    fn peer_rows_share_the_unit() {
        let response = Response {
            numpy: "2".into(),
            blas: "b".into(),
            results: vec![PeerResult { name: "matmul/f32".into(), shape: "2x2x2".into(), seconds: 2.0 }],
        };
        let report = Report { python: "python3".into(), response };
        let row = report.row_for(&measured("matmul/f32", "2x2x2")).unwrap();
        assert_eq!((row.name.as_str(), row.value), ("numpy/matmul/f32", 1.0));
        assert!(report.row_for(&measured("matmul/f32", "4x4x4")).is_none());
    }
}
