//! Loading VAE weights: a `.safetensors` file in Wan's original names (Wan2.1's architecture), a
//! diffusers `vae/` folder (config.json + diffusion_pytorch_model*.safetensors, diffusers names),
//! a diffusers root with `vae/` inside, or a Wan release folder with `Wan2.1_VAE.safetensors`.

use super::config::VaeConfig;
use super::names::wan_to_diffusers;
use super::WanVae;
use crate::models::weights::{copy_into_varstore, load_named_tensors};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// The file name of Wan's release VAE, once converted by scripts/import_wan.py.
pub const WAN_VAE_SAFETENSORS: &str = "Wan2.1_VAE.safetensors";
const WAN_VAE_PTH: &str = "Wan2.1_VAE.pth";

fn import_hint(pth: &Path) -> String {
    format!(
        "{} is a PyTorch pickle, which stillflow does not read: convert it first with \
         `python scripts/import_wan.py` (it writes {} next to it, same key names)",
        pth.display(),
        WAN_VAE_SAFETENSORS
    )
}

/// The `diffusion_pytorch_model*.safetensors` files of a diffusers folder, sorted.
fn diffusers_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading VAE folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("diffusion_pytorch_model") && name.ends_with(".safetensors")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The architecture of a Wan-named VAE file: Wan2.1's layout, with the width (`base_dim`, from
/// `encoder.conv1.weight`) read off the file so that scaled-down stand-ins in the release format
/// load too. Everything else is Wan2.1's; a file of another layout fails the strict name/shape
/// check with the list of differences.
fn wan_file_config(path: &Path) -> Result<VaeConfig> {
    let tensors = load_named_tensors(path)?;
    let mut cfg = VaeConfig::wan21();
    if let Some((_, t)) = tensors.iter().find(|(n, _)| n == "encoder.conv1.weight") {
        cfg.base_dim = t.size()[0];
    }
    Ok(cfg)
}

impl WanVae {
    /// Loads a VAE from `path`, which may be
    /// - a `.safetensors` file in Wan's names (Wan2.1's architecture; its width read off the file),
    /// - a diffusers `vae/` folder (config.json + diffusion_pytorch_model*.safetensors),
    /// - a diffusers model root holding `vae/`,
    /// - a Wan release folder holding `Wan2.1_VAE.safetensors` (a `.pth` alone is an error that
    ///   says to run scripts/import_wan.py).
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        if !path.exists() {
            bail!("VAE weights {} do not exist", path.display());
        }
        if path.is_file() {
            return match path.extension().and_then(|e| e.to_str()) {
                Some("safetensors") => {
                    Self::load_wan_safetensors(path, wan_file_config(path)?, device, kind)
                }
                Some("pth" | "pt" | "bin" | "ckpt") => bail!(import_hint(path)),
                _ => bail!(
                    "VAE weights {}: expected a .safetensors file (Wan names) or a folder",
                    path.display()
                ),
            };
        }
        // A Wan release folder first: its config.json is the DiT's, not a VAE's.
        let wan = path.join(WAN_VAE_SAFETENSORS);
        if wan.is_file() {
            return Self::load_wan_safetensors(&wan, wan_file_config(&wan)?, device, kind);
        }
        let pth = path.join(WAN_VAE_PTH);
        if pth.is_file() {
            bail!(import_hint(&pth));
        }
        if path.join("config.json").is_file() {
            return Self::load_diffusers_dir(path, device, kind);
        }
        if path.join("vae").join("config.json").is_file() {
            return Self::load_diffusers_dir(&path.join("vae"), device, kind);
        }
        bail!(
            "VAE folder {} has none of: config.json + diffusion_pytorch_model.safetensors \
             (diffusers vae/), vae/config.json (diffusers root), {WAN_VAE_SAFETENSORS} (Wan \
             release converted by scripts/import_wan.py)",
            path.display()
        )
    }

    /// Loads a `.safetensors` file in Wan's original names for the architecture `cfg`.
    pub fn load_wan_safetensors(
        path: &Path,
        cfg: VaeConfig,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let tensors = load_named_tensors(path)?;
        let vae = Self::new(cfg, device, kind)?;
        copy_into_varstore(
            &vae.vs,
            &tensors,
            &format!("Wan VAE file {}", path.display()),
        )?;
        Ok(vae)
    }

    /// Loads a diffusers `AutoencoderKLWan` folder: config.json (architecture, latent mean/std)
    /// and diffusion_pytorch_model*.safetensors (diffusers names, mapped through
    /// `names::wan_to_diffusers`).
    pub fn load_diffusers_dir(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let cfg = VaeConfig::from_diffusers_json(&dir.join("config.json"))?;
        let files = diffusers_weight_files(dir)?;
        if files.is_empty() {
            let pth = dir.join("diffusion_pytorch_model.bin");
            if pth.is_file() {
                bail!(import_hint(&pth));
            }
            bail!(
                "diffusers VAE folder {} has config.json but no diffusion_pytorch_model*.safetensors",
                dir.display()
            );
        }
        let vae = Self::new(cfg, device, kind)?;
        // Wan name ↔ diffusers name for every parameter of this architecture.
        let mut to_diffusers = BTreeMap::new();
        for name in vae.vs.variables().keys() {
            to_diffusers.insert(
                name.clone(),
                wan_to_diffusers(name, vae.cfg.num_res_blocks)?,
            );
        }
        let to_wan: BTreeMap<&str, &str> = to_diffusers
            .iter()
            .map(|(w, d)| (d.as_str(), w.as_str()))
            .collect();
        let mut tensors = Vec::new();
        for f in &files {
            for (n, t) in load_named_tensors(f)? {
                // Unknown names stay as they are and are reported as unexpected.
                let wan = to_wan.get(n.as_str()).map(|s| s.to_string()).unwrap_or(n);
                tensors.push((wan, t));
            }
        }
        let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let source = format!(
            "diffusers VAE {} (keys shown under Wan's names, diffusers name in parentheses)",
            list.join(", ")
        );
        copy_into_varstore(&vae.vs, &tensors, &source)
            .map_err(|e| annotate_with_diffusers_names(e, &to_diffusers))?;
        Ok(vae)
    }
}

/// Appends the diffusers name to each `missing:` / `mis-shaped:` line of a
/// `copy_into_varstore` error, so the user can find the key in the diffusers file.
fn annotate_with_diffusers_names(
    err: anyhow::Error,
    to_diffusers: &BTreeMap<String, String>,
) -> anyhow::Error {
    let msg = format!("{err:#}");
    let lines: Vec<String> = msg
        .lines()
        .map(|l| {
            for prefix in ["  missing: ", "  mis-shaped: "] {
                if let Some(rest) = l.strip_prefix(prefix) {
                    let name = rest.split(':').next().unwrap_or(rest);
                    if let Some(d) = to_diffusers.get(name) {
                        return format!("{l} (diffusers: {d})");
                    }
                }
            }
            l.to_string()
        })
        .collect();
    anyhow!(lines.join("\n"))
}
