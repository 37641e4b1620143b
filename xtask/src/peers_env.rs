//! `cargo xtask peers-env`: makes (once) the pinned Python environment of the peer libraries rankfold is compared
//! against and writes its reference fixtures with (`--peers` benches, `tests/fixtures/*.py`), and prints its
//! python. The versions are pinned so that regenerated fixtures reproduce the committed ones.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The pinned packages (PyTorch's PyPI wheel carries CUDA libraries but runs on the CPU; about 5.5 GB in all).
pub(crate) const PINNED: [&str; 7] = [
    "torch==2.15.0",
    "transformers==5.24.0",
    "peft==0.21.2",
    "bitsandbytes==0.50.2",
    "numpy",
    "safetensors",
    "threadpoolctl",
];

/// What a complete environment imports.
const PROBE: &str = "import torch, transformers, peft, bitsandbytes, numpy, safetensors, threadpoolctl";

/// The environment's folder: `$RANKFOLD_PEERS_DIR`, else `~/.cache/rankfold-peers`.
pub(crate) fn env_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("RANKFOLD_PEERS_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/rankfold-peers"))
}

fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// `cargo xtask peers-env`: creates the environment with `python3 -m venv` and installs [`PINNED`] unless it
/// already imports them all; prints its python on stdout. Idempotent.
pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(extra) = args.first() {
        bail!("peers-env takes no arguments, got `{extra}`");
    }
    let dir = env_dir()?;
    let python = dir.join("bin/python");
    let ready = python.is_file() && Command::new(&python).args(["-c", PROBE]).output().is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!("peers-env: installing {} into {}", PINNED.join(" "), dir.display());
        let base = std::env::var("RANKFOLD_PYTHON").unwrap_or_else(|_| "python3".into());
        status(Command::new(&base).arg("-m").arg("venv").arg(&dir), &format!("{base} -m venv"))?;
        status(Command::new(&python).args(["-m", "pip", "install", "-q", "--upgrade", "pip"]), "pip upgrade")?;
        status(Command::new(&python).args(["-m", "pip", "install", "-q"]).args(PINNED), "pip install")?;
        status(Command::new(&python).args(["-c", PROBE]), "the import check")?;
    }
    println!("{}", python.display());
    Ok(())
}
