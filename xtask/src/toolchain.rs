//! `cargo xtask cuda-toolchain`: installs the pinned NVRTC 12.4 and the CUDA headers from their PyPI wheels.
//!
//! The wheels are fetched with `python3 -m pip download --no-deps` (or copied from `$RANKFOLD_CUDA_WHEELS`, a
//! folder that already holds them), checked against the sha256 pinned below, and unpacked with Python's
//! `zipfile` module into `$RANKFOLD_CUDA_HOME`, or `~/.cache/rankfold/cuda-12.4.127`. A marker file, written
//! last, records what was installed, so a second run does nothing and an interrupted one starts over. No
//! system CUDA is used or needed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The pinned CUDA release (NVRTC 12.4 emits PTX ISA 8.4, which every driver from CUDA 12.4 up can JIT).
pub(crate) const CUDA_VERSION: &str = "12.4.127";

/// A pinned wheel: its PyPI requirement, file name and sha256.
struct Wheel {
    requirement: &'static str,
    file: &'static str,
    sha256: &'static str,
}

/// NVRTC itself, and the runtime wheel that carries cuda_fp16.h, cuda_bf16.h and mma.h.
const WHEELS: [Wheel; 2] = [
    Wheel {
        requirement: "nvidia-cuda-nvrtc-cu12==12.4.127",
        file: "nvidia_cuda_nvrtc_cu12-12.4.127-py3-none-manylinux2014_x86_64.whl",
        sha256: "a178759ebb095827bd30ef56598ec182b85547f1508941a3d560eb7ea1fbf338",
    },
    Wheel {
        requirement: "nvidia-cuda-runtime-cu12==12.4.127",
        file: "nvidia_cuda_runtime_cu12-12.4.127-py3-none-manylinux2014_x86_64.whl",
        sha256: "64403288fa2136ee8e467cdc9c9427e0434110899d07c779f25b5c068934faa5",
    },
];

/// The marker file, written after everything else.
const MARKER: &str = ".rankfold-installed";

/// An installed toolchain: where NVRTC and the CUDA headers are.
#[derive(Debug, Clone)]
pub(crate) struct Toolchain {
    pub(crate) root: PathBuf,
}

impl Toolchain {
    /// The NVRTC shared library.
    pub(crate) fn nvrtc_lib(&self) -> PathBuf {
        self.root.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12")
    }

    /// The folder with cuda_fp16.h, cuda_bf16.h, mma.h and the rest of the CUDA runtime headers.
    pub(crate) fn include_dir(&self) -> PathBuf {
        self.root.join("nvidia/cuda_runtime/include")
    }
}

/// Where the toolchain lives: `$RANKFOLD_CUDA_HOME`, or `~/.cache/rankfold/cuda-<version>`.
pub(crate) fn home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RANKFOLD_CUDA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither RANKFOLD_CUDA_HOME nor HOME is set; set RANKFOLD_CUDA_HOME to a folder for the CUDA toolchain")?;
    Ok(PathBuf::from(home)
        .join(".cache/rankfold")
        .join(format!("cuda-{CUDA_VERSION}")))
}

/// The marker's contents: the pinned requirements and hashes, so that changing a pin reinstalls.
fn marker_text() -> String {
    WHEELS
        .iter()
        .map(|w| format!("{} sha256={}\n", w.requirement, w.sha256))
        .collect()
}

/// The installed toolchain, if the marker says the pinned one is complete.
pub(crate) fn installed() -> Result<Option<Toolchain>> {
    let root = home()?;
    let complete = fs::read_to_string(root.join(MARKER)).is_ok_and(|m| m == marker_text());
    Ok(complete.then_some(Toolchain { root }))
}

/// Installs the pinned toolchain unless it is already there, and returns it.
pub(crate) fn install() -> Result<Toolchain> {
    if let Some(t) = installed()? {
        return Ok(t);
    }
    let root = home()?;
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // A stale or partial install is removed first so that nothing from an older pin survives.
    let nvidia = root.join("nvidia");
    if nvidia.exists() {
        fs::remove_dir_all(&nvidia)
            .with_context(|| format!("removing the partial install {}", nvidia.display()))?;
    }
    let wheels = root.join("wheels");
    fs::create_dir_all(&wheels)?;
    for wheel in &WHEELS {
        let path = wheels.join(wheel.file);
        if !path.is_file() || sha256(&path)? != wheel.sha256 {
            fetch(wheel, &wheels)?;
        }
        let got = sha256(&path)?;
        if got != wheel.sha256 {
            bail!(
                "{}: sha256 is {got}, the pinned value is {}; refusing to install it",
                path.display(),
                wheel.sha256
            );
        }
        unzip(&path, &root)?;
    }
    let toolchain = Toolchain { root: root.clone() };
    for needed in [
        toolchain.nvrtc_lib(),
        toolchain.include_dir().join("cuda_bf16.h"),
        toolchain.include_dir().join("mma.h"),
    ] {
        if !needed.is_file() {
            bail!(
                "the unpacked wheels lack {}; the pinned wheels changed layout?",
                needed.display()
            );
        }
    }
    fs::write(root.join(MARKER), marker_text())
        .with_context(|| format!("writing the marker in {}", root.display()))?;
    Ok(toolchain)
}

/// Puts `wheel` into `dir`: copied from `$RANKFOLD_CUDA_WHEELS` when that folder has it, else downloaded by pip
/// (which checks the pinned hash itself too, through `--require-hashes`).
fn fetch(wheel: &Wheel, dir: &Path) -> Result<()> {
    if let Some(local) = std::env::var_os("RANKFOLD_CUDA_WHEELS").map(PathBuf::from) {
        let from = local.join(wheel.file);
        if from.is_file() {
            eprintln!("cuda-toolchain: copying {}", from.display());
            fs::copy(&from, dir.join(wheel.file))
                .with_context(|| format!("copying {}", from.display()))?;
            return Ok(());
        }
    }
    let requirements = dir.join(format!("{}.requirements.txt", wheel.file));
    fs::write(
        &requirements,
        format!("{} --hash=sha256:{}\n", wheel.requirement, wheel.sha256),
    )?;
    eprintln!("cuda-toolchain: pip download {}", wheel.requirement);
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
        ])
        .args(["--platform", "manylinux2014_x86_64", "--dest"])
        .arg(dir)
        .arg("-r")
        .arg(&requirements)
        .status()
        .with_context(|| {
            format!(
                "running `{} -m pip download` (is Python 3 with pip installed?)",
                python()
            )
        })?;
    if !status.success() {
        bail!(
            "`pip download {}` failed ({status}); check the network or set RANKFOLD_CUDA_WHEELS",
            wheel.requirement
        );
    }
    Ok(())
}

/// The Python interpreter used for pip, hashing and unzipping: `$RANKFOLD_PYTHON` or `python3`.
fn python() -> String {
    std::env::var("RANKFOLD_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The sha256 of a file, as lowercase hex, computed by Python's hashlib.
fn sha256(path: &Path) -> Result<String> {
    let out = Command::new(python())
        .args([
            "-c",
            "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
        ])
        .arg(path)
        .output()
        .with_context(|| format!("running {} to hash {}", python(), path.display()))?;
    if !out.status.success() {
        bail!(
            "hashing {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Unpacks a wheel (a zip file) into `dest` with `python3 -m zipfile`, or `unzip` when Python is missing.
fn unzip(wheel: &Path, dest: &Path) -> Result<()> {
    let python = Command::new(python())
        .args(["-m", "zipfile", "-e"])
        .arg(wheel)
        .arg(dest)
        .status();
    match python {
        Ok(s) if s.success() => return Ok(()),
        Ok(s) => bail!(
            "`{} -m zipfile -e {}` failed ({s})",
            self::python(),
            wheel.display()
        ),
        Err(_) => {}
    }
    let status = Command::new("unzip")
        .args(["-q", "-o"])
        .arg(wheel)
        .arg("-d")
        .arg(dest)
        .status()
        .with_context(|| {
            format!(
                "neither `{} -m zipfile` nor `unzip` could run to unpack {}; install Python 3",
                self::python(),
                wheel.display()
            )
        })?;
    if !status.success() {
        bail!("`unzip {}` failed ({status})", wheel.display());
    }
    Ok(())
}

/// `cargo xtask cuda-toolchain`: installs if needed and prints the folder.
pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(extra) = args.first() {
        bail!("cuda-toolchain takes no arguments, got `{extra}`");
    }
    let already = installed()?.is_some();
    let toolchain = install()?;
    if already {
        eprintln!("cuda-toolchain: NVRTC {CUDA_VERSION} is already installed");
    } else {
        eprintln!("cuda-toolchain: installed NVRTC {CUDA_VERSION}");
    }
    println!("{}", toolchain.root.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_well_formed() {
        for w in &WHEELS {
            assert_eq!(w.sha256.len(), 64, "{}", w.requirement);
            assert!(
                w.sha256
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{}",
                w.requirement
            );
            let version = w.requirement.rsplit("==").next().unwrap_or("");
            assert_eq!(version, CUDA_VERSION, "{}", w.requirement);
            assert!(w.file.contains(CUDA_VERSION), "{}", w.file);
        }
        assert_eq!(marker_text().lines().count(), WHEELS.len());
    }
}
