//! Checkpoint integrity: the sha256 of every file a checkpoint holds is recorded in its `trainer_state.json`
//! ([`TrainerState::files`]) and checked before a resume, so a bit flip, a truncated or a missing file is found
//! before any of it is loaded; [`latest_good_checkpoint`] picks the newest checkpoint that checks out, and puts
//! back a checkpoint that a kill left renamed aside while it was being replaced by one of the same step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::checkpoint::{TrainerState, PREFIX, STATE_FILE};
use crate::{Error, Result};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// The sha256 (lowercase hex) of the file at `path`.
fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// The digest of every file under `dir` but the trainer state, by path relative to `dir` (`/`-separated).
pub(crate) fn digests(dir: &Path) -> Result<BTreeMap<String, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                let rel = rel.join("/");
                if rel != STATE_FILE {
                    out.insert(rel, sha256_file(&path)?);
                }
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// Reads the trainer state of checkpoint `dir` and checks every file it lists against its digest. A checkpoint
/// written before digests were recorded (no `files`) is accepted as it is.
pub fn verify(dir: &Path) -> Result<TrainerState> {
    let state = TrainerState::read(dir)?;
    for (rel, want) in &state.files {
        let path = dir.join(rel);
        let damaged = |msg: String| Error::Checkpoint { path: dir.to_path_buf(), msg };
        if !path.is_file() {
            return Err(damaged(format!("`{rel}` is missing")));
        }
        let got = sha256_file(&path)?;
        if got != *want {
            return Err(damaged(format!("`{rel}` has sha256 {got}, the state recorded {want}")));
        }
    }
    Ok(state)
}

/// The newest checkpoint under `out` whose files check out, with a sentence for each newer one that did not.
/// A `.old-checkpoint-<step>` folder without its `checkpoint-<step>` (a kill between the two renames that
/// replace a checkpoint of the same step) is renamed back first.
pub fn latest_good_checkpoint(out: &Path) -> Result<(Option<PathBuf>, Vec<String>)> {
    let entries = match std::fs::read_dir(out) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, Vec::new())),
        Err(e) => return Err(io(out)(e)),
    };
    let mut found: Vec<(usize, PathBuf)> = Vec::new();
    let mut aside: Vec<(usize, PathBuf)> = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(out))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let step = |n: &str| n.strip_prefix(PREFIX).and_then(|s| s.parse::<usize>().ok());
        if let Some(s) = step(&name) {
            found.push((s, path));
        } else if let Some(s) = name.strip_prefix(".old-").and_then(step) {
            aside.push((s, path));
        }
    }
    for (s, path) in aside {
        if !found.iter().any(|(f, _)| *f == s) {
            let back = out.join(format!("{PREFIX}{s}"));
            std::fs::rename(&path, &back).map_err(io(&path))?;
            found.push((s, back));
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0));
    let mut skipped = Vec::new();
    for (_, path) in found {
        if !path.join(STATE_FILE).is_file() {
            continue;
        }
        match verify(&path) {
            Ok(_) => return Ok((Some(path), skipped)),
            Err(e) => skipped.push(format!("skipping {}: {e}", path.display())),
        }
    }
    Ok((None, skipped))
}
