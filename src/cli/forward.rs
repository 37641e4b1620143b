//! `rankfold forward`: (being written).

use anyhow::Result;

/// Arguments of `rankfold forward`.
#[derive(clap::Args, Debug)]
pub(crate) struct ForwardArgs {}

/// Runs `rankfold forward`; with `json` the final summary line is a JSON object.
pub(crate) fn run(_args: &ForwardArgs, _json: bool) -> Result<()> {
    anyhow::bail!("rankfold forward is not available in this build yet")
}
