//! diffusers' `WanTransformer3DModel` layout: its `config.json` and its parameter names, mapped
//! onto Wan's original names (the ones stillflow's variables carry). The table is the inverse of
//! diffusers' own `convert_wan_transformer_to_diffusers` (docs/WAN.md), including its
//! norm2↔norm3 swap; the test against a folder saved by diffusers itself keeps it honest.

use super::WanConfig;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Renames one diffusers parameter to Wan's name; `None` for a name this table does not know
/// (reported by the loader as unexpected).
pub fn wan_name(diffusers: &str) -> Option<String> {
    const TOP: &[(&str, &str)] = &[
        (
            "condition_embedder.text_embedder.linear_1.",
            "text_embedding.0.",
        ),
        (
            "condition_embedder.text_embedder.linear_2.",
            "text_embedding.2.",
        ),
        (
            "condition_embedder.time_embedder.linear_1.",
            "time_embedding.0.",
        ),
        (
            "condition_embedder.time_embedder.linear_2.",
            "time_embedding.2.",
        ),
        ("condition_embedder.time_proj.", "time_projection.1."),
        ("patch_embedding.", "patch_embedding."),
        ("proj_out.", "head.head."),
    ];
    if diffusers == "scale_shift_table" {
        return Some("head.modulation".into());
    }
    for (from, to) in TOP {
        if let Some(rest) = diffusers.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    let rest = diffusers.strip_prefix("blocks.")?;
    let (idx, tail) = rest.split_once('.')?;
    idx.parse::<usize>().ok()?;
    const BLOCK: &[(&str, &str)] = &[
        ("attn1.to_q.", "self_attn.q."),
        ("attn1.to_k.", "self_attn.k."),
        ("attn1.to_v.", "self_attn.v."),
        ("attn1.to_out.0.", "self_attn.o."),
        ("attn1.norm_q.", "self_attn.norm_q."),
        ("attn1.norm_k.", "self_attn.norm_k."),
        ("attn2.to_q.", "cross_attn.q."),
        ("attn2.to_k.", "cross_attn.k."),
        ("attn2.to_v.", "cross_attn.v."),
        ("attn2.to_out.0.", "cross_attn.o."),
        ("attn2.norm_q.", "cross_attn.norm_q."),
        ("attn2.norm_k.", "cross_attn.norm_k."),
        // diffusers' norm2 is the affine norm before cross-attention: Wan's norm3.
        ("norm2.", "norm3."),
        ("ffn.net.0.proj.", "ffn.0."),
        ("ffn.net.2.", "ffn.2."),
    ];
    if tail == "scale_shift_table" {
        return Some(format!("blocks.{idx}.modulation"));
    }
    for (from, to) in BLOCK {
        if let Some(r) = tail.strip_prefix(from) {
            return Some(format!("blocks.{idx}.{to}{r}"));
        }
    }
    None
}

/// Reads diffusers' transformer `config.json`. Variants stillflow does not implement (image
/// conditioning, other norms) are errors naming the key.
pub fn config_from_json_file(path: &Path) -> Result<WanConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading diffusers config {}", path.display()))?;
    config_from_json_str(&text)
        .with_context(|| format!("parsing diffusers config {}", path.display()))
}

pub fn config_from_json_str(text: &str) -> Result<WanConfig> {
    #[derive(Deserialize)]
    struct Raw {
        num_attention_heads: i64,
        attention_head_dim: i64,
        num_layers: i64,
        ffn_dim: i64,
        in_channels: Option<i64>,
        out_channels: Option<i64>,
        text_dim: Option<i64>,
        freq_dim: Option<i64>,
        eps: Option<f64>,
        patch_size: Option<[i64; 3]>,
        cross_attn_norm: Option<bool>,
        qk_norm: Option<Option<String>>,
        image_dim: Option<Option<i64>>,
        added_kv_proj_dim: Option<Option<i64>>,
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    let r: Raw = serde_path_to_error::deserialize(de).map_err(|e| anyhow::anyhow!("{e}"))?;
    if r.cross_attn_norm == Some(false) {
        bail!("key `cross_attn_norm`: false is not supported");
    }
    if let Some(q) = &r.qk_norm {
        if q.as_deref() != Some("rms_norm_across_heads") {
            bail!("key `qk_norm`: {q:?} is not supported (only rms_norm_across_heads, Wan's)");
        }
    }
    if matches!(r.image_dim, Some(Some(_))) || matches!(r.added_kv_proj_dim, Some(Some(_))) {
        bail!("keys `image_dim`/`added_kv_proj_dim`: image-to-video models are not supported yet");
    }
    let b = WanConfig::t2v_1_3b();
    let c = WanConfig {
        dim: r.num_attention_heads * r.attention_head_dim,
        ffn_dim: r.ffn_dim,
        num_heads: r.num_attention_heads,
        num_layers: r.num_layers,
        in_dim: r.in_channels.unwrap_or(b.in_dim),
        out_dim: r.out_channels.unwrap_or(b.out_dim),
        text_dim: r.text_dim.unwrap_or(b.text_dim),
        text_len: b.text_len,
        freq_dim: r.freq_dim.unwrap_or(b.freq_dim),
        eps: r.eps.unwrap_or(b.eps),
        patch_size: r.patch_size.unwrap_or(b.patch_size),
    };
    c.validate()?;
    Ok(c)
}
