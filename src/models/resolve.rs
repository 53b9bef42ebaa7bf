//! Model names → what gets built. A name the user wrote either names real weights on disk, or a
//! toy by name, or random weights asked for by name; anything else stops the run with one error
//! that says what to download and where to point the config (docs/MODELS.md).
//!
//! Lookup order for a name that is not a toy or `random:`: the path as written, then
//! `<model_root>/<name>` (Self-Forcing's `wan_models/<name>`). A folder is either Wan's release
//! layout (`config.json` + `diffusion_pytorch_model*.safetensors`, beside
//! `models_t5_umt5-xxl-enc-bf16.*` and `Wan2.1_VAE.*`) or diffusers' (`transformer/` with
//! diffusers' `config.json` and names; or that `transformer/` folder itself).

use crate::config::RunConfig;
use crate::models::wan::WanConfig;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Toy models, built by name with no weights to load (the embedded default problem).
pub const TOY_NAMES: &[&str] = &["gmm", "mlp", "wan-tiny"];

/// The prefix that asks for random weights of a preset: `random:wan2.1-t2v-1.3b`.
pub const RANDOM_PREFIX: &str = "random:";

/// Where a model's weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// `gmm`, `mlp`, `wan-tiny`.
    Toy(String),
    /// A folder of real DiT weights.
    Folder(WanDir),
    /// Random weights of a preset, asked for by name or by `allow_random_weights`.
    Random { preset: String, cfg: WanConfig },
    /// A preset's architecture whose weights all come from `generator_ckpt`.
    Architecture { preset: String, cfg: WanConfig },
}

/// A folder holding one Wan DiT.
#[derive(Clone, Debug, PartialEq)]
pub struct WanDir {
    /// The folder with `config.json` and the weight shards.
    pub dir: PathBuf,
    /// Diffusers' `WanTransformer3DModel` layout (names and config) instead of Wan's.
    pub diffusers: bool,
}

/// The folders a name may stand for, in lookup order.
pub fn candidates(name: &str, cfg: &RunConfig) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from(name)];
    if !cfg.model_root.is_empty() && Path::new(name).is_relative() {
        v.push(Path::new(&cfg.model_root).join(name));
    }
    v
}

/// Resolves the model `name` of config key `key`. `weights_from_ckpt`: every weight will be
/// overwritten from a checkpoint (`generator_ckpt`), so a preset gives the architecture only.
pub fn resolve(name: &str, key: &str, cfg: &RunConfig, weights_from_ckpt: bool) -> Result<Source> {
    let lower = name.to_ascii_lowercase();
    if TOY_NAMES.contains(&lower.as_str()) {
        return Ok(Source::Toy(lower));
    }
    if let Some(p) = lower.strip_prefix(RANDOM_PREFIX) {
        let Some(c) = WanConfig::preset(p) else {
            bail!(
                "config key `{key}`: `{name}` asks for random weights of an unknown preset `{p}` \
                 (presets: {})",
                crate::models::wan::PRESETS.join(", ")
            );
        };
        return Ok(Source::Random {
            preset: p.to_string(),
            cfg: c,
        });
    }
    for dir in candidates(name, cfg) {
        if dir.is_dir() {
            return wan_dir(&dir).map(Source::Folder);
        }
    }
    if let Some(c) = WanConfig::preset(&lower) {
        if weights_from_ckpt {
            return Ok(Source::Architecture {
                preset: lower,
                cfg: c,
            });
        }
        if cfg.allow_random_weights {
            return Ok(Source::Random {
                preset: lower,
                cfg: c,
            });
        }
    }
    bail!("{}", missing_message(name, key, cfg))
}

/// The error for a name that is neither a folder, a toy nor a random preset.
pub fn missing_message(name: &str, key: &str, cfg: &RunConfig) -> String {
    let looked: Vec<String> = candidates(name, cfg)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut s = format!(
        "config key `{key}`: model `{name}` not found (looked for the folder {}).",
        looked.join(" and ")
    );
    if let Some(repo) = hub_repo(name) {
        let dest = Path::new(&cfg.model_root).join(repo.trim_start_matches("Wan-AI/"));
        s.push_str(&format!(
            "\n  download it: huggingface-cli download {repo} --local-dir {}\n  then convert the \
             text encoder and VAE once: python3 scripts/import_wan.py {}\n  and set `{key}` to \
             that folder (or `model_root` to its parent).",
            dest.display(),
            dest.display()
        ));
    } else {
        s.push_str(
            "\n  point it at a folder with Wan's config.json + diffusion_pytorch_model*.safetensors \
             (or a diffusers folder with transformer/).",
        );
    }
    if WanConfig::preset(name).is_some() {
        s.push_str(&format!(
            "\n  For RANDOM weights (benchmarks only) write `{RANDOM_PREFIX}{}` or set \
             allow_random_weights: true.",
            name.to_ascii_lowercase()
        ));
    }
    s
}

/// The Hugging Face repository of a Wan preset name (for the download hint).
fn hub_repo(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "wan2.1-t2v-1.3b" => Some("Wan-AI/Wan2.1-T2V-1.3B"),
        "wan2.1-t2v-14b" => Some("Wan-AI/Wan2.1-T2V-14B"),
        _ => None,
    }
}

/// Classifies a folder: diffusers root (`transformer/`), diffusers transformer folder, or Wan's
/// release layout. Errors name the folder and the file that is missing.
pub fn wan_dir(dir: &Path) -> Result<WanDir> {
    let sub = dir.join("transformer");
    if sub.join("config.json").is_file() {
        return Ok(WanDir {
            dir: sub,
            diffusers: true,
        });
    }
    let cfg = dir.join("config.json");
    if !cfg.is_file() {
        bail!(
            "{}: no config.json (a Wan model folder holds config.json + \
             diffusion_pytorch_model*.safetensors; a diffusers one holds transformer/config.json)",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&cfg)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", cfg.display()))?;
    let diffusers = text.contains("\"_class_name\"") && text.contains("WanTransformer3DModel");
    Ok(WanDir {
        dir: dir.to_path_buf(),
        diffusers,
    })
}

/// The DiT weight shards of a model folder: `diffusion_pytorch_model*.safetensors` when present
/// (Wan's and diffusers' names), else every `*.safetensors` except the text encoder's and the
/// VAE's (which sit beside the DiT in Wan's release folder). A `.pth`/`.bin`-only folder is an
/// error that says how to convert.
pub fn dit_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", dir.display()))?;
    let mut all: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    all.sort();
    let is_st = |p: &PathBuf| p.extension().is_some_and(|e| e == "safetensors");
    let fname = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let named: Vec<PathBuf> = all
        .iter()
        .filter(|p| is_st(p) && fname(p).starts_with("diffusion_pytorch_model"))
        .cloned()
        .collect();
    if !named.is_empty() {
        return Ok(named);
    }
    let other: Vec<PathBuf> = all
        .iter()
        .filter(|p| {
            let n = fname(p);
            is_st(p) && !n.starts_with("models_t5_") && !n.starts_with("Wan2.1_VAE")
        })
        .cloned()
        .collect();
    if !other.is_empty() {
        return Ok(other);
    }
    if all.iter().any(|p| {
        p.extension()
            .is_some_and(|e| e == "pth" || e == "bin" || e == "pt")
    }) {
        bail!(
            "Wan folder {} has no *.safetensors DiT weights, only .pth/.bin/.pt files: convert them \
             with `python3 scripts/import_wan.py {}`",
            dir.display(),
            dir.display()
        );
    }
    bail!(
        "Wan folder {} has no *.safetensors file (expected diffusion_pytorch_model*.safetensors)",
        dir.display()
    )
}

/// Checks, before anything is built, every model the run names: the roles' model names (all of
/// `roles`, canonical: generator, fake, real) and `generator_ckpt`. Returns every problem, so a
/// user fixes them in one go (empty when fine).
pub fn check_models(cfg: &RunConfig, roles: &[&str]) -> Vec<String> {
    let mut v = vec![];
    for role in roles {
        let (name, key) = match *role {
            "generator" => (&cfg.generator_name, "generator_name"),
            "fake" => (&cfg.fake_name, "fake_name"),
            "real" => (&cfg.real_name, "real_name"),
            _ => continue,
        };
        let from_ckpt = *role == "generator" && cfg.generator_ckpt.is_some();
        if let Err(e) = resolve(name, key, cfg, from_ckpt) {
            v.push(format!("{e:#}"));
        }
    }
    if let Some(c) = &cfg.generator_ckpt {
        if let Some(p) = check_generator_ckpt(c) {
            v.push(p);
        }
    }
    v
}

/// `generator_ckpt` must be a safetensors file (Self-Forcing's `.pt` files are converted once).
fn check_generator_ckpt(path: &str) -> Option<String> {
    let p = Path::new(path);
    let is_pt = p
        .extension()
        .is_some_and(|e| e == "pt" || e == "pth" || e == "bin");
    if is_pt {
        let out = p.with_extension("safetensors");
        return Some(format!(
            "config key `generator_ckpt`: {path} is a PyTorch pickle; convert it once with \
             `python3 scripts/import_self_forcing.py {path} {} --parts generator` (ode_init.pt) \
             and set generator_ckpt to {}/generator.safetensors{}",
            out.with_extension("").display(),
            out.with_extension("").display(),
            if p.is_file() {
                ""
            } else {
                " (the file does not exist either)"
            }
        ));
    }
    if !p.is_file() {
        return Some(format!("config key `generator_ckpt`: {path} not found"));
    }
    None
}
