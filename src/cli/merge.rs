//! `rankfold merge`: (being written).

use anyhow::Result;

/// Arguments of `rankfold merge`.
#[derive(clap::Args, Debug)]
pub(crate) struct MergeArgs {}

/// Runs `rankfold merge`; with `json` the final summary line is a JSON object.
pub(crate) fn run(_args: &MergeArgs, _json: bool) -> Result<()> {
    anyhow::bail!("rankfold merge is not available in this build yet")
}
