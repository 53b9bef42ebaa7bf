//! The Wan2.1 DiT (spec §0): bidirectional `WanModel` and block-causal generator with KV cache,
//! at any size, with parameters named exactly like Wan's original state dict.
//! See docs/WAN.md for the layout, the precision policy and the diffusers key mapping.

mod block;
pub mod cache;
pub mod config;
pub mod flops;
pub mod init;
pub mod model;
pub mod rope;

pub use block::{checkpointed_block_calls, self_attention_sdpa_calls};
pub use cache::{block_causal_mask, CausalMode, CausalOptions, KvCache};
pub use config::{WanConfig, PRESETS};
pub use init::init_random;
pub use model::WanModel;

use crate::models::weights::{copy_into_varstore, load_named_tensors, strip_wrapper_prefixes};
use crate::rng::{Lane, Purpose, RngKey};
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind};

/// Builds a model with random Wan-initialised weights (keyed draws from `seed`).
pub fn build_random(
    cfg: WanConfig,
    device: Device,
    kind: Kind,
    seed: u64,
) -> Result<(VarStore, WanModel)> {
    let mut vs = VarStore::new(device);
    let model = WanModel::new(&vs.root(), cfg)?;
    init_random(&model, &RngKey::new(seed, 0, Lane::Other, Purpose::Init));
    vs.set_kind(kind);
    Ok((vs, model))
}

/// Loads Wan weights from a folder holding Wan's `config.json` and one or more `*.safetensors`
/// files in Wan's original key names (`model.` and `_fsdp_wrapped_module.` are stripped).
pub fn load_from_dir(dir: &Path, device: Device, kind: Kind) -> Result<(VarStore, WanModel)> {
    let cfg = WanConfig::from_json_file(&dir.join("config.json"))?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading Wan folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("Wan folder {} has no *.safetensors file", dir.display());
    }
    let mut tensors = Vec::new();
    for f in &files {
        for (n, t) in load_named_tensors(f)? {
            tensors.push((strip_wrapper_prefixes(&n), t));
        }
    }
    let mut vs = VarStore::new(device);
    let model = WanModel::new(&vs.root(), cfg)?;
    vs.set_kind(kind);
    copy_into_varstore(&vs, &tensors, &dir.display().to_string())?;
    Ok((vs, model))
}

/// Resolves `real_name` / `fake_name`-style references: a preset name (`wan2.1-t2v-1.3b`,
/// `wan2.1-t2v-14b`) gives RANDOM weights (logged loudly on stderr); a local folder loads it.
pub fn load_or_build(
    name_or_path: &str,
    device: Device,
    kind: Kind,
) -> Result<(VarStore, WanModel)> {
    let p = Path::new(name_or_path);
    if p.is_dir() {
        return load_from_dir(p, device, kind);
    }
    if let Some(cfg) = WanConfig::preset(name_or_path) {
        eprintln!(
            "RANDOM WEIGHTS: Wan model {name_or_path:?} is a preset name, not a folder with \
             config.json + *.safetensors; building it with Wan's random initialisation ({} params)",
            cfg.num_params()
        );
        return build_random(cfg, device, kind, 0);
    }
    bail!(
        "Wan model {name_or_path:?} is neither a local folder (config.json + *.safetensors) nor a \
         preset ({})",
        PRESETS.join(", ")
    )
}
