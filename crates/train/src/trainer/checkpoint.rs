//! Checkpoints: `checkpoint-<step>/` under the output folder holds the adapter as a PEFT folder (`adapter/`),
//! the optimizer state (`optimizer.safetensors`) and `trainer_state.json` (step, data position, seed, config).
//!
//! A checkpoint is written into a hidden temporary folder next to it and renamed into place only when every
//! file is complete, so a process killed mid-write leaves the previous checkpoints intact and at worst a
//! `.tmp-checkpoint-*` folder, which [`latest_checkpoint`] ignores. `trainer_state.json` is written last.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainConfig;
use crate::{Error, Result};

/// The adapter's PEFT folder inside a checkpoint.
pub const ADAPTER_DIR: &str = "adapter";
/// The optimizer state file inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer state file inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";

const PREFIX: &str = "checkpoint-";

/// Where a run stood when a checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// The next micro-batch position.
    pub position: u64,
    /// The run seed (with `position`, the whole random state).
    pub seed: u64,
    /// The settings of the run that wrote it.
    pub config: TrainConfig,
}

impl TrainerState {
    /// Reads `trainer_state.json` from checkpoint folder `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Json {
            source_name: path.display().to_string(),
            line: e.line(),
            message: e.to_string(),
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes checkpoint `checkpoint-<state.step>` under `out`: `fill(tmp)` writes the payload into the temporary
/// folder, then the state file is added and the folder renamed into place (replacing an older checkpoint of
/// the same step). Returns the final path.
pub fn write(
    out: &Path,
    state: &TrainerState,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let name = format!("{PREFIX}{}", state.step);
    let tmp = out.join(format!(".tmp-{name}"));
    let dst = out.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fill(&tmp)?;
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|e| {
        Error::Config(format!(
            "{}: cannot encode the trainer state: {e}",
            state_path.display()
        ))
    })?;
    std::fs::write(&state_path, text).map_err(io(&state_path))?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    Ok(dst)
}

/// The complete checkpoint with the highest step under `out` (`None` when there is none). Temporary folders
/// and folders without a state file are skipped.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(out) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(out)(e)),
    };
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in entries {
        let entry = entry.map_err(io(out))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if path.join(STATE_FILE).is_file() && best.as_ref().is_none_or(|(s, _)| step > *s) {
            best = Some((step, path));
        }
    }
    Ok(best.map(|(_, p)| p))
}
