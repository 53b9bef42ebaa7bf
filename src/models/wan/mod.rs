//! The Wan2.1 DiT (spec §0): bidirectional `WanModel` and block-causal generator with KV cache,
//! at any size, with parameters named exactly like Wan's original state dict.
//! See docs/WAN.md for the layout, the precision policy and the diffusers key mapping.

mod block;
pub mod cache;
pub mod config;
pub mod diffusers;
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
use anyhow::{bail, Result};
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

/// Loads Wan weights from a model folder: Wan's release layout (`config.json` +
/// `diffusion_pytorch_model*.safetensors`, Wan's names; `model.` and `_fsdp_wrapped_module.` are
/// stripped) or diffusers' (`transformer/`, mapped by [`diffusers::wan_name`]). See
/// [`crate::models::resolve`] for which shards are read.
pub fn load_from_dir(dir: &Path, device: Device, kind: Kind) -> Result<(VarStore, WanModel)> {
    let wd = crate::models::resolve::wan_dir(dir)?;
    let cfg = if wd.diffusers {
        diffusers::config_from_json_file(&wd.dir.join("config.json"))?
    } else {
        WanConfig::from_json_file(&wd.dir.join("config.json"))?
    };
    let files = crate::models::resolve::dit_shards(&wd.dir)?;
    let mut tensors = Vec::new();
    for f in &files {
        for (n, t) in load_named_tensors(f)? {
            let n = strip_wrapper_prefixes(&n);
            // An unknown diffusers name keeps its own name: the loader lists it as unexpected.
            let n = if wd.diffusers {
                diffusers::wan_name(&n).unwrap_or(n)
            } else {
                n
            };
            tensors.push((n, t));
        }
    }
    let mut vs = VarStore::new(device);
    let model = WanModel::new(&vs.root(), cfg)?;
    vs.set_kind(kind);
    copy_into_varstore(&vs, &tensors, &wd.dir.display().to_string())?;
    Ok((vs, model))
}

/// Loads a local model folder. Names that are not folders are errors here: random weights are
/// only built when asked for by name (`random:<preset>`, see [`crate::models::resolve`]).
pub fn load_or_build(
    name_or_path: &str,
    device: Device,
    kind: Kind,
) -> Result<(VarStore, WanModel)> {
    let p = Path::new(name_or_path);
    if p.is_dir() {
        return load_from_dir(p, device, kind);
    }
    bail!(
        "Wan model {name_or_path:?} is not a local folder (config.json +          diffusion_pytorch_model*.safetensors, or diffusers' transformer/); for random weights of          a preset use build_random or the model name `random:<preset>` ({})",
        PRESETS.join(", ")
    )
}
