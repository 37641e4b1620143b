//! Project automation for rankfold, run as `cargo xtask <command>` (the alias lives in .cargo/config.toml).
//!
//! Commands:
//! - `bench [--quick] [--filter NAME] [--json PATH] [--peers] [--threads N]`: runs the criterion benches and
//!   prints one table of throughputs, optionally beside the same workloads in numpy (see `bench.rs`, `peers.rs`).
//! - `tidy`: checks the repository's house rules (see `tidy.rs`); `cargo test -p xtask` runs the same checks.

mod bench;
mod peers;
mod tidy;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  bench [--quick] [--filter NAME] [--json PATH] [--peers] [--threads N]
        Run the criterion benches (all, or the groups matching NAME) and print one table.
        --quick      criterion's quick mode (fewer iterations), passed on to the peers too
        --filter     a criterion filter; only the bench files with a matching group are run
        --json PATH  also write the rows {name, shape, metric, value, unit} as a JSON array
        --peers      run the same workloads in numpy (Python from $RANKFOLD_PEERS_PYTHON,
                     ~/.cache/rankfold-peers/bin/python or python3) and print the ratios
        --threads N  threads for rankfold (RAYON_NUM_THREADS) and for the peers' BLAS [default: 2]
  tidy  Check the house rules: //! docs, file lengths, ARCHITECTURE.md, .cu headers.
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    match cmd.as_str() {
        "bench" => bench::run(&project_root(), bench::Options::parse(rest)?),
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
