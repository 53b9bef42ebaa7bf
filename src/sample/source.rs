//! Where `sample` gets its generator: a training checkpoint (its own resolved config, with the
//! generator's or the EMA's weights), or a config (`generator_ckpt`, else the model
//! `generator_name` resolves to: a folder of real weights or `random:<preset>`).

use super::{config_from, pick_part, resolve_checkpoint, SampleOptions};
use crate::checkpoint::{self, files};
use crate::config::{self, RunConfig};
use crate::models::weights::{load_named_tensors, strip_wrapper_prefixes};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub(super) struct GeneratorSource {
    pub cfg: RunConfig,
    /// The checkpoint folder, or the config's generator file/name (provenance).
    pub dir: PathBuf,
    pub step: u64,
    pub part: String,
    /// Weights to copy into the generator; None: the model builder loads or draws them.
    pub weights: Option<Vec<(String, Tensor)>>,
    /// Names the weights in errors.
    pub label: String,
    pub default_out: PathBuf,
}

pub(super) fn from_checkpoint(p: &Path, opts: &SampleOptions) -> Result<GeneratorSource> {
    let dir = resolve_checkpoint(p)?;
    let state = checkpoint::read_state_file(&dir)?;
    let cfg = config_from(&dir, &state.config, &opts.overrides)?;
    let (part, prefix) = pick_part(&state, opts.use_ema)?;
    let manifest = &state.parts[&part];
    let tensors = files::read_part(&dir, manifest)?;
    let weights: Vec<(String, Tensor)> = tensors
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t)))
        .collect();
    let default_out = dir.join(if opts.use_ema {
        "samples_ema"
    } else {
        "samples"
    });
    Ok(GeneratorSource {
        label: format!("{} ({part})", dir.join(&manifest.file).display()),
        cfg,
        step: state.step,
        part,
        weights: Some(weights),
        dir,
        default_out,
    })
}

pub(super) fn from_config(opts: &SampleOptions) -> Result<GeneratorSource> {
    if opts.use_ema {
        bail!("--use-ema needs --checkpoint (a training checkpoint holds the EMA weights)");
    }
    let cfg = config::load_layers(&opts.overrides)?.config;
    let (weights, dir, part, label) = match &cfg.generator_ckpt {
        Some(c) => {
            let problems = crate::models::resolve::check_models(&cfg, &["generator"]);
            if !problems.is_empty() {
                bail!("{}", problems.join("\n"));
            }
            let w: Vec<(String, Tensor)> = load_named_tensors(Path::new(c))?
                .into_iter()
                .map(|(n, t)| (strip_wrapper_prefixes(&n), t))
                .collect();
            (
                Some(w),
                PathBuf::from(c),
                "generator_ckpt".to_string(),
                format!("{c} (config key `generator_ckpt`)"),
            )
        }
        None => (
            None,
            PathBuf::from(&cfg.generator_name),
            "generator_name".to_string(),
            cfg.generator_name.clone(),
        ),
    };
    Ok(GeneratorSource {
        cfg,
        dir,
        step: 0,
        part,
        weights,
        label,
        default_out: PathBuf::from("samples"),
    })
}
