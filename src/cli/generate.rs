//! `rankfold generate`: (being written).

use anyhow::Result;

/// Arguments of `rankfold generate`.
#[derive(clap::Args, Debug)]
pub(crate) struct GenerateArgs {}

/// Runs `rankfold generate`; with `json` the final summary line is a JSON object.
pub(crate) fn run(_args: &GenerateArgs, _json: bool) -> Result<()> {
    anyhow::bail!("rankfold generate is not available in this build yet")
}
