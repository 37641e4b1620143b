//! `rankfold eval`: (being written).

use anyhow::Result;

/// Arguments of `rankfold eval`.
#[derive(clap::Args, Debug)]
pub(crate) struct EvalArgs {}

/// Runs `rankfold eval`; with `json` the final summary line is a JSON object.
pub(crate) fn run(_args: &EvalArgs, _json: bool) -> Result<()> {
    anyhow::bail!("rankfold eval is not available in this build yet")
}
