//! The VAE's architecture and latent statistics: Wan2.1's defaults, or a diffusers
//! `AutoencoderKLWan` `config.json`.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// Wan2.1's per-channel latent means (Wan's `WanVAE` wrapper; diffusers' `latents_mean`).
pub const WAN21_LATENTS_MEAN: [f64; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
/// Wan2.1's per-channel latent standard deviations (diffusers' `latents_std`).
pub const WAN21_LATENTS_STD: [f64; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

/// Architecture of a Wan2.1-style causal video VAE (encoder and decoder share it).
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    /// Channels of the first/last stage (Wan's `dim`, diffusers' `base_dim`).
    pub base_dim: i64,
    /// Latent channels (the encoder emits 2·z_dim: mean and log-variance).
    pub z_dim: i64,
    /// Channel multiplier per stage; one spatial ×2 down/upsampling between stages.
    pub dim_mult: Vec<i64>,
    /// Residual blocks per encoder stage (the decoder has one more per stage).
    pub num_res_blocks: i64,
    /// Per encoder downsampling: whether it also halves time (decoder: reversed).
    pub temperal_downsample: Vec<bool>,
    /// Latent normalisation z = (mu − mean) / std, per channel.
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
}

impl VaeConfig {
    /// Wan2.1's VAE (`Wan2.1_VAE.pth`): dim 96, z_dim 16, dim_mult [1,2,4,4], 2 residual blocks,
    /// no attention scales, temporal downsampling [False, True, True].
    pub fn wan21() -> Self {
        VaeConfig {
            base_dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temperal_downsample: vec![false, true, true],
            latents_mean: WAN21_LATENTS_MEAN.to_vec(),
            latents_std: WAN21_LATENTS_STD.to_vec(),
        }
    }

    /// Frames per latent frame (after the first): 2^(number of temporal downsamplings).
    pub fn time_stride(&self) -> i64 {
        1 << self.temperal_downsample.iter().filter(|b| **b).count()
    }

    /// Pixels per latent pixel along H and W: 2^(stages − 1).
    pub fn space_stride(&self) -> i64 {
        1 << (self.dim_mult.len() - 1)
    }

    /// Channels of the encoder stages: [dim·1, dim·m0, dim·m1, …].
    pub fn encoder_dims(&self) -> Vec<i64> {
        std::iter::once(1)
            .chain(self.dim_mult.iter().copied())
            .map(|m| m * self.base_dim)
            .collect()
    }

    /// Channels of the decoder stages: [dim·m_last, dim·m_last, …, dim·m0].
    pub fn decoder_dims(&self) -> Vec<i64> {
        let last = *self.dim_mult.last().unwrap_or(&1);
        std::iter::once(last)
            .chain(self.dim_mult.iter().rev().copied())
            .map(|m| m * self.base_dim)
            .collect()
    }

    /// Checks the invariants the model relies on; `what` names the source in errors.
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.base_dim <= 0 || self.z_dim <= 0 || self.num_res_blocks <= 0 {
            bail!("{what}: base_dim, z_dim and num_res_blocks must be positive ({self:?})");
        }
        if self.dim_mult.len() < 2 || self.dim_mult.iter().any(|m| *m <= 0) {
            bail!(
                "{what}: dim_mult needs at least 2 positive entries, got {:?}",
                self.dim_mult
            );
        }
        if self.temperal_downsample.len() != self.dim_mult.len() - 1 {
            bail!(
                "{what}: temperal_downsample has {} entries, dim_mult {:?} needs {}",
                self.temperal_downsample.len(),
                self.dim_mult,
                self.dim_mult.len() - 1
            );
        }
        // The decoder's upsampling convs halve channels (Wan2.1's `dim // 2` quirk) and the next
        // stage expects exactly that, so every stage width must be even where it is upsampled.
        let dd = self.decoder_dims();
        if let Some(w) = dd[1..dd.len() - 1].iter().find(|w| *w % 2 != 0) {
            bail!("{what}: decoder stage width {w} is odd (base_dim·dim_mult)");
        }
        let z = self.z_dim as usize;
        if self.latents_mean.len() != z || self.latents_std.len() != z {
            bail!(
                "{what}: latents_mean/latents_std have {}/{} entries, z_dim is {z}",
                self.latents_mean.len(),
                self.latents_std.len()
            );
        }
        if self.latents_std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            bail!("{what}: latents_std must be positive and finite");
        }
        Ok(())
    }

    /// Reads a diffusers `AutoencoderKLWan` `config.json`. Only the Wan2.1 family is supported:
    /// no attention scales, no residual (Wan2.2) blocks, no patchify, one base width.
    pub fn from_diffusers_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read VAE config {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("VAE config {} is not valid JSON", path.display()))?;
        let what = format!("VAE config {}", path.display());
        if let Some(c) = v.get("_class_name").and_then(Value::as_str) {
            if c != "AutoencoderKLWan" {
                bail!("{what}: _class_name is {c:?}, expected \"AutoencoderKLWan\"");
            }
        }
        let int = |k: &str, default: i64| -> Result<i64> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_i64()
                    .with_context(|| format!("{what}: {k} must be an integer, got {x}")),
            }
        };
        let base_dim = int("base_dim", 96)?;
        let z_dim = int("z_dim", 16)?;
        let num_res_blocks = int("num_res_blocks", 2)?;
        let dim_mult = match v.get("dim_mult") {
            None | Some(Value::Null) => vec![1, 2, 4, 4],
            Some(x) => serde_json::from_value::<Vec<i64>>(x.clone())
                .with_context(|| format!("{what}: dim_mult must be a list of integers"))?,
        };
        let temperal_downsample = match v.get("temperal_downsample") {
            None | Some(Value::Null) => vec![false, true, true],
            Some(x) => serde_json::from_value::<Vec<bool>>(x.clone())
                .with_context(|| format!("{what}: temperal_downsample must be a list of bools"))?,
        };
        if let Some(a) = v.get("attn_scales") {
            if !a.is_null() && a.as_array().is_none_or(|l| !l.is_empty()) {
                bail!("{what}: attn_scales {a} is not supported (Wan2.1's VAE uses [])");
            }
        }
        if v.get("is_residual").and_then(Value::as_bool) == Some(true) {
            bail!("{what}: is_residual = true is the Wan2.2 VAE, which is not supported");
        }
        if v.get("patch_size").is_some_and(|p| !p.is_null()) {
            bail!("{what}: patch_size is set (Wan2.2 VAE), which is not supported");
        }
        if let Some(d) = v.get("decoder_base_dim").filter(|d| !d.is_null()) {
            if d.as_i64() != Some(base_dim) {
                bail!(
                    "{what}: decoder_base_dim {d} differs from base_dim {base_dim}: not supported"
                );
            }
        }
        for k in ["in_channels", "out_channels"] {
            if int(k, 3)? != 3 {
                bail!("{what}: {k} must be 3 (RGB)");
            }
        }
        let floats = |k: &str, default: &[f64]| -> Result<Vec<f64>> {
            match v.get(k) {
                None | Some(Value::Null) if z_dim == 16 => Ok(default.to_vec()),
                None | Some(Value::Null) => bail!("{what}: {k} is missing and z_dim is not 16"),
                Some(x) => serde_json::from_value::<Vec<f64>>(x.clone())
                    .with_context(|| format!("{what}: {k} must be a list of numbers")),
            }
        };
        let cfg = VaeConfig {
            base_dim,
            z_dim,
            dim_mult,
            num_res_blocks,
            temperal_downsample,
            latents_mean: floats("latents_mean", &WAN21_LATENTS_MEAN)?,
            latents_std: floats("latents_std", &WAN21_LATENTS_STD)?,
        };
        cfg.validate(&what)?;
        Ok(cfg)
    }
}
