//! `rankfold train`: (being written).

use anyhow::Result;

/// Arguments of `rankfold train`.
#[derive(clap::Args, Debug)]
pub(crate) struct TrainArgs {}

/// Runs `rankfold train`; with `json` the final summary line is a JSON object.
pub(crate) fn run(_args: &TrainArgs, _json: bool) -> Result<()> {
    anyhow::bail!("rankfold train is not available in this build yet")
}
