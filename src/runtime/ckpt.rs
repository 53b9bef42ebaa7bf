//! Checkpoints of a run: the states of its stateful actors at a step boundary, plus what resume
//! needs (step, seed, the resolved config). Storage, atomicity and validation live in
//! `crate::checkpoint`; this adapter maps actor states to and from it.

use super::actor::ActorState;
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
    std::fs::write(&tmp, serde_json::to_string_pretty(v)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The newest complete checkpoint in `logdir`, if any.
pub fn latest(logdir: &Path) -> Result<Option<PathBuf>> {
    crate::checkpoint::latest_checkpoint(logdir)
}

/// Write the checkpoint of `step`.
pub fn write(logdir: &Path, step: u64, states: BTreeMap<String, ActorState>, cfg: &RunConfig, seed: u64) -> Result<PathBuf> {
    let mut parts = crate::checkpoint::CheckpointParts::default();
    let mut actor_json = serde_json::Map::new();
    for (actor, st) in states {
        parts.tensors.insert(actor.clone(), st.tensors);
        actor_json.insert(actor, st.json);
    }
    parts.state = serde_json::json!({
        "step": step,
        "seed": seed,
        "actors": actor_json,
        "config": serde_json::to_value(cfg)?,
    });
    crate::checkpoint::save_checkpoint(logdir, step, &parts, cfg.keep_checkpoints, &fingerprint(cfg))
}

/// Read a checkpoint for resuming with `cfg` (which must describe the same models and run).
pub fn read(dir: &Path, cfg: &RunConfig) -> Result<Resume> {
    let parts = crate::checkpoint::load_checkpoint(dir, Some(&fingerprint(cfg)))?;
    let step = parts.state.get("step").and_then(|v| v.as_u64()).with_context(|| format!("{}: state.json lacks `step`", dir.display()))?;
    let seed = parts.state.get("seed").and_then(|v| v.as_u64()).with_context(|| format!("{}: state.json lacks `seed`", dir.display()))?;
    let jsons = parts.state.get("actors").and_then(|v| v.as_object()).cloned().unwrap_or_default();
    let mut states = BTreeMap::new();
    for (actor, tensors) in parts.tensors {
        let json = jsons.get(&actor).cloned().unwrap_or(serde_json::Value::Null);
        states.insert(actor, ActorState { tensors, json });
    }
    Ok(Resume { step, seed, states })
}

/// What must not change between a checkpoint and its resume: the keys that shape models,
/// optimizers and the step arithmetic (not logdir, max_steps, progress, schedule…).
pub fn fingerprint(cfg: &RunConfig) -> serde_json::Value {
    serde_json::json!({
        "pipeline": cfg.pipeline,
        "distribution_loss": cfg.distribution_loss,
        "generator_name": cfg.generator_name,
        "real_name": cfg.real_name,
        "fake_name": cfg.fake_name,
        "image_or_video_shape": cfg.image_or_video_shape,
        "num_training_frames": cfg.num_training_frames,
        "num_frame_per_block": cfg.num_frame_per_block,
        "batch_size": cfg.batch_size,
        "dfake_gen_update_ratio": cfg.dfake_gen_update_ratio,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "toy": cfg.toy,
    })
}
