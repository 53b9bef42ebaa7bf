//! Wan2.1 DiT hyper-parameters: presets, tiny test sizes and Wan's `config.json`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The shape of a Wan2.1 text-to-video DiT. Field names follow Wan's `WanModel.__init__` /
/// `config.json` (`in_dim`, `out_dim`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct WanConfig {
    pub dim: i64,
    pub ffn_dim: i64,
    pub num_heads: i64,
    pub num_layers: i64,
    pub in_dim: i64,
    pub out_dim: i64,
    pub text_dim: i64,
    /// Text tokens after zero padding (Wan pads the T5 output to 512; shorter `cond` is padded).
    pub text_len: i64,
    pub freq_dim: i64,
    pub eps: f64,
    /// (t, h, w) patch = Conv3d kernel = stride.
    pub patch_size: [i64; 3],
}

/// Preset names accepted by [`WanConfig::preset`] and `load_or_build`.
pub const PRESETS: &[&str] = &["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"];

impl WanConfig {
    /// Wan2.1-T2V-1.3B (spec §0).
    pub fn t2v_1_3b() -> Self {
        WanConfig {
            dim: 1536,
            ffn_dim: 8960,
            num_heads: 12,
            num_layers: 30,
            ..Self::base()
        }
    }

    /// Wan2.1-T2V-14B (spec §0).
    pub fn t2v_14b() -> Self {
        WanConfig {
            dim: 5120,
            ffn_dim: 13824,
            num_heads: 40,
            num_layers: 40,
            ..Self::base()
        }
    }

    fn base() -> Self {
        WanConfig {
            dim: 1536,
            ffn_dim: 8960,
            num_heads: 12,
            num_layers: 30,
            in_dim: 16,
            out_dim: 16,
            text_dim: 4096,
            text_len: 512,
            freq_dim: 256,
            eps: 1e-6,
            patch_size: [1, 2, 2],
        }
    }

    /// A small model for tests and the embedded toy (e.g. `tiny(32, 2, 2, 64, 4, 16)`).
    /// `out_dim = in_channels`, `text_len` 8, `freq_dim` 32, patch (1,2,2).
    pub fn tiny(
        dim: i64,
        layers: i64,
        heads: i64,
        ffn: i64,
        in_channels: i64,
        text_dim: i64,
    ) -> Self {
        WanConfig {
            dim,
            ffn_dim: ffn,
            num_heads: heads,
            num_layers: layers,
            in_dim: in_channels,
            out_dim: in_channels,
            text_dim,
            text_len: 8,
            freq_dim: 32,
            eps: 1e-6,
            patch_size: [1, 2, 2],
        }
    }

    /// A preset by name (case-insensitive), or None.
    pub fn preset(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "wan2.1-t2v-1.3b" => Some(Self::t2v_1_3b()),
            "wan2.1-t2v-14b" => Some(Self::t2v_14b()),
            _ => None,
        }
    }

    pub fn head_dim(&self) -> i64 {
        self.dim / self.num_heads
    }

    /// Real dims of the head given to RoPE's (t, h, w) axes. Wan builds its frequency table as
    /// `[rope(d − 4·⌊d/6⌋), rope(2·⌊d/6⌋), rope(2·⌊d/6⌋)]` and splits the d/2 complex pairs as
    /// `[c − 2·⌊c/3⌋, ⌊c/3⌋, ⌊c/3⌋]` with c = d/2; since ⌊2c/6⌋ = ⌊c/3⌋ both agree:
    /// h = w = 2·⌊d/6⌋ and t takes the rest (128 → 44/42/42, 20 → 8/6/6, 16 → 8/4/4).
    pub fn rope_split(&self) -> [i64; 3] {
        let d = self.head_dim();
        let hw = 2 * (d / 6);
        [d - 2 * hw, hw, hw]
    }

    /// Tokens per latent frame of size h×w.
    pub fn tokens_per_frame(&self, h: i64, w: i64) -> i64 {
        (h / self.patch_size[1]) * (w / self.patch_size[2])
    }

    /// Number of parameters (every tensor of the state dict).
    pub fn num_params(&self) -> i64 {
        let (d, f, l) = (self.dim, self.ffn_dim, self.num_layers);
        let p: i64 = self.patch_size.iter().product();
        let lin = |i: i64, o: i64| i * o + o;
        let patch = self.in_dim * p * d + d;
        let text = lin(self.text_dim, d) + lin(d, d);
        let time = lin(self.freq_dim, d) + lin(d, d) + lin(d, 6 * d);
        let block = 8 * lin(d, d) + 4 * d + 2 * d + lin(d, f) + lin(f, d) + 6 * d;
        let head = lin(d, self.out_dim * p) + 2 * d;
        patch + text + time + l * block + head
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> Result<()> {
        if self.dim <= 0 || self.num_heads <= 0 || self.dim % self.num_heads != 0 {
            bail!(
                "Wan config: dim {} must be a positive multiple of num_heads {}",
                self.dim,
                self.num_heads
            );
        }
        if self.head_dim() % 2 != 0 || self.head_dim() < 6 {
            bail!(
                "Wan config: head_dim {} must be even and ≥ 6 (3-D RoPE)",
                self.head_dim()
            );
        }
        if self.freq_dim % 2 != 0 || self.freq_dim <= 0 {
            bail!("Wan config: freq_dim {} must be even", self.freq_dim);
        }
        for (n, v) in [
            ("ffn_dim", self.ffn_dim),
            ("num_layers", self.num_layers),
            ("in_dim", self.in_dim),
            ("out_dim", self.out_dim),
            ("text_dim", self.text_dim),
            ("text_len", self.text_len),
        ] {
            if v <= 0 {
                bail!("Wan config: {n} must be positive, got {v}");
            }
        }
        if self.patch_size.iter().any(|&p| p <= 0) {
            bail!(
                "Wan config: patch_size {:?} must be positive",
                self.patch_size
            );
        }
        Ok(())
    }

    /// Reads Wan's `config.json` (keys `dim`, `ffn_dim`, `num_heads`, `num_layers` required; the
    /// others default to Wan's `WanModel` defaults). `qk_norm`/`cross_attn_norm` must be true and
    /// `model_type` must be t2v: the variants without them are not implemented.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading Wan config {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("parsing Wan config {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Raw {
            dim: i64,
            ffn_dim: i64,
            num_heads: i64,
            num_layers: i64,
            in_dim: Option<i64>,
            out_dim: Option<i64>,
            text_dim: Option<i64>,
            text_len: Option<i64>,
            freq_dim: Option<i64>,
            eps: Option<f64>,
            patch_size: Option<[i64; 3]>,
            qk_norm: Option<bool>,
            cross_attn_norm: Option<bool>,
            model_type: Option<String>,
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        let r: Raw = serde_path_to_error::deserialize(de).map_err(|e| anyhow::anyhow!("{e}"))?;
        if r.qk_norm == Some(false) || r.cross_attn_norm == Some(false) {
            bail!("qk_norm=false / cross_attn_norm=false are not supported");
        }
        if let Some(m) = &r.model_type {
            if m != "t2v" {
                bail!("model_type {m:?} is not supported (only t2v)");
            }
        }
        let b = Self::base();
        let c = WanConfig {
            dim: r.dim,
            ffn_dim: r.ffn_dim,
            num_heads: r.num_heads,
            num_layers: r.num_layers,
            in_dim: r.in_dim.unwrap_or(b.in_dim),
            out_dim: r.out_dim.unwrap_or(b.out_dim),
            text_dim: r.text_dim.unwrap_or(b.text_dim),
            text_len: r.text_len.unwrap_or(b.text_len),
            freq_dim: r.freq_dim.unwrap_or(b.freq_dim),
            eps: r.eps.unwrap_or(b.eps),
            patch_size: r.patch_size.unwrap_or(b.patch_size),
        };
        c.validate()?;
        Ok(c)
    }
}
