//! The umT5 encoder's hyper-parameters: umT5-XXL (Wan2.1's text encoder), transformers'
//! config.json, or inferred from the tensor shapes of a Wan-named state dict.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tch::Tensor;

#[derive(Debug, Clone, PartialEq)]
pub struct Umt5Config {
    pub vocab_size: i64,
    pub d_model: i64,
    /// Width of one attention head (the attention's inner width is `num_heads * d_kv`).
    pub d_kv: i64,
    pub num_heads: i64,
    pub d_ff: i64,
    pub num_layers: i64,
    /// Relative-position buckets (bidirectional: half for each direction).
    pub num_buckets: i64,
    pub max_distance: i64,
    /// T5 RMS layer-norm epsilon.
    pub eps: f64,
}

/// The fields of transformers' UMT5Config that the encoder uses. Missing fields take
/// transformers' defaults, as `UMT5Config.from_pretrained` would.
#[derive(Deserialize)]
struct HfJson {
    model_type: Option<String>,
    vocab_size: Option<i64>,
    d_model: Option<i64>,
    d_kv: Option<i64>,
    d_ff: Option<i64>,
    num_layers: Option<i64>,
    num_heads: Option<i64>,
    relative_attention_num_buckets: Option<i64>,
    relative_attention_max_distance: Option<i64>,
    layer_norm_epsilon: Option<f64>,
    feed_forward_proj: Option<String>,
    is_decoder: Option<bool>,
}

impl Umt5Config {
    /// google/umt5-xxl's encoder, as Wan2.1 builds it (`umt5_xxl` in wan/modules/t5.py).
    pub fn xxl() -> Umt5Config {
        Umt5Config {
            vocab_size: 256_384,
            d_model: 4096,
            d_kv: 64,
            num_heads: 64,
            d_ff: 10_240,
            num_layers: 24,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
        }
    }

    /// Reads transformers' `config.json` of a UMT5EncoderModel (diffusers' `text_encoder/`).
    pub fn from_hf_json(path: &Path) -> Result<Umt5Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read umT5 config {}", path.display()))?;
        let j: HfJson = serde_json::from_str(&text).with_context(|| {
            format!("umT5 config {} is not a valid config.json", path.display())
        })?;
        if let Some(t) = &j.model_type {
            if t != "umt5" {
                bail!(
                    "umT5 config {}: model_type is {t:?}, expected \"umt5\" (T5 proper shares one \
                     relative-position table across layers; only umT5 is supported)",
                    path.display()
                );
            }
        }
        if j.is_decoder == Some(true) {
            bail!(
                "umT5 config {}: is_decoder is true; only the encoder is supported",
                path.display()
            );
        }
        // transformers maps "gated-gelu" to gelu_new (tanh approximation); the gated forms with a
        // tanh GELU are the only feed-forward Wan's t5.py has.
        let ff = j.feed_forward_proj.as_deref().unwrap_or("gated-gelu");
        if !matches!(
            ff,
            "gated-gelu" | "gated-gelu_new" | "gated-gelu_pytorch_tanh"
        ) {
            bail!(
                "umT5 config {}: feed_forward_proj {ff:?} is not supported (only the gated tanh-GELU \
                 \"gated-gelu\" of umT5)",
                path.display()
            );
        }
        let cfg = Umt5Config {
            vocab_size: j.vocab_size.unwrap_or(250_112),
            d_model: j.d_model.unwrap_or(512),
            d_kv: j.d_kv.unwrap_or(64),
            num_heads: j.num_heads.unwrap_or(6),
            d_ff: j.d_ff.unwrap_or(1024),
            num_layers: j.num_layers.unwrap_or(8),
            num_buckets: j.relative_attention_num_buckets.unwrap_or(32),
            max_distance: j.relative_attention_max_distance.unwrap_or(128),
            eps: j.layer_norm_epsilon.unwrap_or(1e-6),
        };
        cfg.validate()
            .with_context(|| format!("umT5 config {}", path.display()))?;
        Ok(cfg)
    }

    /// The configuration of a state dict in Wan's names, from its shapes (Wan's release file has
    /// no config; its constants are max_distance 128 and eps 1e-6). For the release file this
    /// gives `xxl()`.
    pub fn infer_from_wan_tensors(
        tensors: &[(String, Tensor)],
        source: &str,
    ) -> Result<Umt5Config> {
        let shape = |name: &str| -> Result<Vec<i64>> {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.size())
                .with_context(|| {
                    format!("{source}: tensor {name} is missing (needed to read the model's size)")
                })
        };
        let two = |name: &str| -> Result<(i64, i64)> {
            match shape(name)?[..] {
                [a, b] => Ok((a, b)),
                ref s => bail!("{source}: tensor {name} has shape {s:?}, expected 2 dimensions"),
            }
        };
        let (vocab_size, d_model) = two("token_embedding.weight")?;
        let (inner, _) = two("blocks.0.attn.q.weight")?;
        let (num_buckets, num_heads) = two("blocks.0.pos_embedding.embedding.weight")?;
        let (d_ff, _) = two("blocks.0.ffn.fc1.weight")?;
        let num_layers = tensors
            .iter()
            .filter_map(|(n, _)| {
                n.strip_prefix("blocks.")?
                    .split('.')
                    .next()?
                    .parse::<i64>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        if num_heads <= 0 || inner % num_heads != 0 {
            bail!("{source}: attention width {inner} is not a multiple of {num_heads} heads");
        }
        let cfg = Umt5Config {
            vocab_size,
            d_model,
            d_kv: inner / num_heads,
            num_heads,
            d_ff,
            num_layers,
            num_buckets,
            max_distance: 128,
            eps: 1e-6,
        };
        cfg.validate().with_context(|| source.to_string())?;
        Ok(cfg)
    }

    /// The attention's inner width (`num_heads * d_kv`).
    pub fn inner_dim(&self) -> i64 {
        self.num_heads * self.d_kv
    }

    pub fn num_params(&self) -> i64 {
        let d = self.d_model;
        let per_layer = 4 * d * self.inner_dim()
            + 3 * d * self.d_ff
            + 2 * d
            + self.num_buckets * self.num_heads;
        self.vocab_size * d + self.num_layers * per_layer + d
    }

    pub fn validate(&self) -> Result<()> {
        let pos = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("num_heads", self.num_heads),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
        ];
        for (n, v) in pos {
            if v <= 0 {
                bail!("umT5 {n} must be positive, got {v}");
            }
        }
        // Bidirectional buckets: half per direction, half of those exact, the rest logarithmic
        // up to max_distance; fewer than 4 buckets leave no exact bucket (a division by zero).
        if self.num_buckets < 4 {
            bail!(
                "umT5 num_buckets must be at least 4, got {}",
                self.num_buckets
            );
        }
        if self.max_distance <= self.num_buckets / 4 {
            bail!(
                "umT5 max_distance {} must exceed the exact range {} (num_buckets / 4)",
                self.max_distance,
                self.num_buckets / 4
            );
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            bail!("umT5 layer_norm_epsilon must be positive, got {}", self.eps);
        }
        Ok(())
    }
}
