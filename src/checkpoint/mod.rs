//! Checkpoints (DESIGN §8): `logdir/checkpoints/step_NNNNNN/` holding one safetensors file per part
//! (`generator`, `critic`, `generator_ema`, `optimizer_generator`, …) and `state.json` (step,
//! stillflow version, resolved config and its fingerprint, the runtime's state: model versions, seed,
//! …; plus size, checksum, names, dtypes and shapes of every file).
//!
//! Atomicity: a checkpoint is written into a temporary sibling directory `.tmp-step_NNNNNN-<pid>`,
//! every file and the directory are fsynced, then the directory is renamed to its final name and the
//! parent fsynced. A crash at any point leaves either the complete new checkpoint or nothing under a
//! `step_*` name; leftovers (`.tmp-*`, `.del-*`) are ignored by readers and removed by the next save.
//! Old checkpoints beyond `keep` are removed only after the new one is in place (renamed to `.del-*`
//! first, so a crash mid-delete never leaves a half-deleted `step_*`). One writer per logdir (rank 0).
//!
//! See docs/CHECKPOINTS.md.

pub mod files;
pub mod fingerprint;

pub use files::{PartManifest, TensorInfo};
pub use fingerprint::{
    config_diff, config_fingerprint, config_fingerprint_with, VOLATILE_CONFIG_KEYS,
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

use crate::optim::NamedTensors;

pub const STATE_FILE: &str = "state.json";
pub const FORMAT: &str = "stillflow-checkpoint";
pub const FORMAT_VERSION: u32 = 1;

/// Everything a checkpoint holds, as plain data the runtime fills and reads back.
#[derive(Debug, Default)]
pub struct CheckpointParts {
    /// The step the checkpoint was taken after (the step to resume at).
    pub step: u64,
    /// Part name (`[a-z0-9_]+`, becomes `<name>.safetensors`) → named tensors.
    pub tensors: BTreeMap<String, NamedTensors>,
    /// The runtime's state: model versions, seed / RNG keys, EMA status, counters… (free-form).
    pub state: Value,
    /// The resolved run configuration (its fingerprint is checked on resume).
    pub config: Value,
}

impl CheckpointParts {
    pub fn new(step: u64, config: Value, state: Value) -> Self {
        CheckpointParts {
            step,
            tensors: BTreeMap::new(),
            state,
            config,
        }
    }

    /// Adds a part (builder style).
    pub fn with_part(mut self, name: &str, tensors: NamedTensors) -> Self {
        self.tensors.insert(name.to_string(), tensors);
        self
    }

    pub fn part(&self, name: &str) -> Option<&NamedTensors> {
        self.tensors.get(name)
    }

    /// A part that must be there (error names it and lists the parts present).
    pub fn require_part(&self, name: &str) -> Result<&NamedTensors> {
        self.tensors.get(name).ok_or_else(|| {
            anyhow!(
                "checkpoint of step {} has no part `{name}` (parts: {})",
                self.step,
                self.tensors.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// The parsed state.json.
#[derive(Debug, Serialize, Deserialize)]
pub struct StateFile {
    pub format: String,
    pub format_version: u32,
    pub stillflow_version: String,
    pub step: u64,
    pub config_fingerprint: String,
    pub config: Value,
    pub state: Value,
    pub parts: BTreeMap<String, PartManifest>,
}

/// `logdir/checkpoints`.
/// A snapshot of `t` in host memory for a checkpoint: a GPU tensor is copied to the host (the
/// checkpoint goes to disk anyway, and a second device copy of the optimizer state would not fit
/// next to training), a CPU tensor is cloned (the actor keeps training while it is written).
pub fn host_snapshot(t: &tch::Tensor) -> Result<tch::Tensor> {
    let t = t.detach();
    let s = if t.device() == tch::Device::Cpu {
        t.f_detach_copy()
    } else {
        t.f_to_device(tch::Device::Cpu)
    };
    s.map_err(|e| anyhow::anyhow!("copying a tensor {:?} for the checkpoint: {e}", t.size()))
}

pub fn checkpoints_dir(logdir: &Path) -> PathBuf {
    logdir.join("checkpoints")
}

pub fn step_dir_name(step: u64) -> String {
    format!("step_{step:06}")
}

fn parse_step_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn valid_part_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// All complete checkpoints (`step_N` directories holding state.json), sorted by step.
pub fn list_checkpoints(logdir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(logdir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let rd = std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = parse_step_name(&name) {
            let p = e.path();
            if p.join(STATE_FILE).is_file() {
                out.push((step, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint of a logdir, if any.
pub fn latest_checkpoint(logdir: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(logdir)?.pop().map(|(_, p)| p))
}

/// Removes leftovers of interrupted saves or prunes (`.tmp-*`, `.del-*`).
fn clean_leftovers(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") || name.starts_with(".del-") {
            let p = e.path();
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("cannot remove leftover {}", p.display()))?;
        }
    }
    Ok(())
}

/// Creates `logdir/checkpoints` (clear error if impossible) and removes leftovers.
fn prepare(logdir: &Path) -> Result<PathBuf> {
    let dir = checkpoints_dir(logdir);
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "cannot create checkpoint directory {} (is the logdir writable?)",
            dir.display()
        )
    })?;
    clean_leftovers(&dir)?;
    Ok(dir)
}

/// First half of a save: writes the complete checkpoint into a fresh temporary directory under
/// `logdir/checkpoints` (every file and the directory fsynced) and returns its path. Nothing is
/// visible to readers until [`commit_staged`]. Public so that crash tests can stop here.
pub fn stage_checkpoint(logdir: &Path, parts: &CheckpointParts) -> Result<PathBuf> {
    let dir = prepare(logdir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        step_dir_name(parts.step),
        std::process::id()
    ));
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut manifests = BTreeMap::new();
    for (name, tensors) in &parts.tensors {
        if !valid_part_name(name) {
            bail!("checkpoint part name `{name}` must match [a-z0-9_]+");
        }
        let path = tmp.join(format!("{name}.safetensors"));
        manifests.insert(name.clone(), files::write_part(&path, tensors)?);
    }
    let state = StateFile {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        stillflow_version: env!("CARGO_PKG_VERSION").into(),
        step: parts.step,
        config_fingerprint: config_fingerprint(&parts.config),
        config: parts.config.clone(),
        state: parts.state.clone(),
        parts: manifests,
    };
    let path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(&state).context("cannot serialise state.json")?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    files::fsync_file(&path)?;
    files::fsync_dir(&tmp)?;
    Ok(tmp)
}

/// Second half: renames the staged directory to `step_NNNNNN` (never over an existing one) and
/// fsyncs the parent.
pub fn commit_staged(staged: &Path, step: u64) -> Result<PathBuf> {
    let dir = staged
        .parent()
        .ok_or_else(|| anyhow!("staged checkpoint {} has no parent", staged.display()))?;
    let fin = dir.join(step_dir_name(step));
    if fin.exists() {
        bail!(
            "checkpoint {} already exists; refusing to overwrite it (resumed from an older step? \
             move it away or use another logdir)",
            fin.display()
        );
    }
    std::fs::rename(staged, &fin)
        .with_context(|| format!("cannot rename {} to {}", staged.display(), fin.display()))?;
    files::fsync_dir(dir)?;
    Ok(fin)
}

/// Removes all but the newest `keep` checkpoints (`keep == 0`: keep all).
pub fn prune_checkpoints(logdir: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = list_checkpoints(logdir)?;
    if all.len() <= keep {
        return Ok(());
    }
    let dir = checkpoints_dir(logdir);
    for (step, path) in &all[..all.len() - keep] {
        let del = dir.join(format!(
            ".del-{}-{}",
            step_dir_name(*step),
            std::process::id()
        ));
        std::fs::rename(path, &del)
            .with_context(|| format!("cannot retire old checkpoint {}", path.display()))?;
        std::fs::remove_dir_all(&del)
            .with_context(|| format!("cannot remove old checkpoint {}", del.display()))?;
    }
    files::fsync_dir(&dir)
}

/// Saves `parts` as `logdir/checkpoints/step_NNNNNN` atomically, then keeps only the newest `keep`
/// (0 = all). Refuses to overwrite an existing checkpoint of the same step.
pub fn save_checkpoint(logdir: &Path, parts: &CheckpointParts, keep: usize) -> Result<PathBuf> {
    let fin = checkpoints_dir(logdir).join(step_dir_name(parts.step));
    if fin.exists() {
        bail!(
            "checkpoint {} already exists; refusing to overwrite it",
            fin.display()
        );
    }
    let staged = stage_checkpoint(logdir, parts)?;
    let fin = match commit_staged(&staged, parts.step) {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e);
        }
    };
    prune_checkpoints(logdir, keep)
        .with_context(|| format!("checkpoint {} saved, but pruning failed", fin.display()))?;
    Ok(fin)
}

/// Reads only state.json of a checkpoint (validated: format, version, step vs directory name,
/// config fingerprint vs the stored config).
pub fn read_state_file(dir: &Path) -> Result<StateFile> {
    if !dir.is_dir() {
        bail!(
            "checkpoint {} does not exist or is not a directory",
            dir.display()
        );
    }
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state: StateFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid checkpoint state file", path.display()))?;
    if state.format != FORMAT {
        bail!(
            "{}: format `{}`, expected `{FORMAT}`",
            path.display(),
            state.format
        );
    }
    if state.format_version > FORMAT_VERSION {
        bail!(
            "{}: format version {} is newer than this stillflow supports ({FORMAT_VERSION})",
            path.display(),
            state.format_version
        );
    }
    if let Some(step) = dir
        .file_name()
        .and_then(|n| parse_step_name(&n.to_string_lossy()))
    {
        if step != state.step {
            bail!(
                "{}: records step {}, but the directory is {}",
                path.display(),
                state.step,
                step_dir_name(step)
            );
        }
    }
    let fp = config_fingerprint(&state.config);
    if fp != state.config_fingerprint {
        bail!(
            "{}: stored config does not match its fingerprint ({fp} vs {}); the file was edited \
             or is corrupt",
            path.display(),
            state.config_fingerprint
        );
    }
    Ok(state)
}

/// Loads and validates a checkpoint directory: state.json, then every part file (size, checksum,
/// safetensors structure, names, dtypes, shapes). Tensors come back on the CPU, sorted by name.
pub fn load_checkpoint(dir: &Path) -> Result<CheckpointParts> {
    let state = read_state_file(dir)?;
    let mut tensors = BTreeMap::new();
    for (name, m) in &state.parts {
        if m.file != format!("{name}.safetensors") {
            bail!(
                "{}: part `{name}` points at `{}`",
                dir.join(STATE_FILE).display(),
                m.file
            );
        }
        tensors.insert(name.clone(), files::read_part(dir, m)?);
    }
    Ok(CheckpointParts {
        step: state.step,
        tensors,
        state: state.state,
        config: state.config,
    })
}

/// Checks that a checkpoint was written by the same configuration as `current` (volatile keys
/// excepted); the error lists the keys that differ.
pub fn check_config(parts: &CheckpointParts, current: &Value) -> Result<()> {
    if config_fingerprint(&parts.config) == config_fingerprint(current) {
        return Ok(());
    }
    let diff = config_diff(&parts.config, current, VOLATILE_CONFIG_KEYS, 12);
    bail!(
        "checkpoint of step {} was written with a different configuration:\n  {}",
        parts.step,
        diff.join("\n  ")
    )
}

/// Deep copies of named tensors (e.g. to snapshot a model for a checkpoint taken later).
pub fn snapshot(v: &[(String, Tensor)]) -> NamedTensors {
    v.iter()
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect()
}
