//! Checkpoints of a run: the states of its stateful actors at a step boundary (one part per
//! actor), plus what resume needs (step, seed, the resolved config). Storage, atomicity and
//! validation live in `crate::checkpoint`; this adapter maps actor states to and from it.

use super::actor::ActorState;
use crate::checkpoint::{self, CheckpointParts};
use crate::config::RunConfig;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Resume {
    pub step: u64,
    pub seed: u64,
    pub states: BTreeMap<String, ActorState>,
}

/// Write `v` as pretty JSON to `path` atomically (temp file + rename).
pub fn write_json_atomic(path: &Path, v: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(v)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The newest complete checkpoint in `logdir`, if any.
pub fn latest(logdir: &Path) -> Result<Option<PathBuf>> {
    checkpoint::latest_checkpoint(logdir)
}

/// The run folders of a config's `logdir` base: the base itself, then `<base>-2`, `<base>-3`, …
/// (the numbered siblings a repeated `run-pipeline` without `--logdir` writes; see
/// [`run_folder`]), in that order, those that exist.
fn numbered(base: &Path) -> Vec<(u64, PathBuf)> {
    let mut v = vec![];
    if base.exists() {
        v.push((1, base.to_path_buf()));
    }
    let (Some(parent), Some(name)) = (base.parent(), base.file_name()) else {
        return v;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!("{}-", name.to_string_lossy());
    if let Ok(rd) = std::fs::read_dir(parent) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(k) = n.strip_prefix(&prefix).and_then(|k| k.parse::<u64>().ok()) {
                if k >= 2 {
                    v.push((k, base.with_file_name(&n)));
                }
            }
        }
    }
    v.sort();
    v
}

/// The folder a run whose `logdir` came from a config file (not from the command line) uses, so
/// that the same command works every time and never overwrites: a fresh run goes to `base` if it
/// holds no checkpoints, else to the first unused `<base>-N` (N ≥ 2); `--resume` continues the
/// newest of them that holds checkpoints. Returns the folder and whether it differs from `base`.
pub fn run_folder(base: &Path, resume: bool) -> Result<(PathBuf, bool)> {
    let runs = numbered(base);
    let pick = if resume {
        let mut found = None;
        for (_, p) in runs.iter().rev() {
            if latest(p)?.is_some() {
                found = Some(p.clone());
                break;
            }
        }
        found.unwrap_or_else(|| base.to_path_buf())
    } else if latest(base)?.is_none() {
        base.to_path_buf()
    } else {
        let next = runs.last().map_or(2, |(k, _)| (k + 1).max(2));
        base.with_file_name(format!(
            "{}-{next}",
            base.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ))
    };
    let moved = pick != base;
    Ok((pick, moved))
}

/// Write the checkpoint of `step` (`cfg.seed` is the resolved seed).
pub fn write(
    logdir: &Path,
    step: u64,
    states: BTreeMap<String, ActorState>,
    cfg: &RunConfig,
) -> Result<PathBuf> {
    let mut actor_json = serde_json::Map::new();
    let mut parts = CheckpointParts::new(step, serde_json::to_value(cfg)?, serde_json::Value::Null);
    for (actor, st) in states {
        parts = parts.with_part(&actor, st.tensors);
        actor_json.insert(actor, st.json);
    }
    parts.state = serde_json::json!({ "step": step, "seed": cfg.seed, "actors": actor_json });
    checkpoint::save_checkpoint(logdir, &parts, cfg.keep_checkpoints)
}

/// Read a checkpoint for resuming with `cfg`, which must describe the same run (only volatile
/// keys such as logdir, max_steps, device or schedule may differ; a `seed: 0` takes the
/// checkpoint's drawn seed).
pub fn read(dir: &Path, cfg: &RunConfig) -> Result<Resume> {
    let parts = checkpoint::load_checkpoint(dir)?;
    let seed = parts
        .state
        .get("seed")
        .and_then(|v| v.as_u64())
        .with_context(|| format!("{}: state.json lacks `seed`", dir.display()))?;
    let mut current = cfg.clone();
    if current.seed == 0 {
        current.seed = seed;
    }
    checkpoint::check_config(&parts, &serde_json::to_value(&current)?)
        .with_context(|| format!("cannot resume from {}", dir.display()))?;
    let jsons = parts
        .state
        .get("actors")
        .and_then(|v| v.as_object())
        .cloned()
        .unwrap_or_default();
    let mut states = BTreeMap::new();
    for (actor, tensors) in parts.tensors {
        let json = jsons
            .get(&actor)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        states.insert(actor, ActorState { tensors, json });
    }
    Ok(Resume {
        step: parts.step,
        seed,
        states,
    })
}
