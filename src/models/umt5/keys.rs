//! Parameter names. stillflow names the encoder's parameters like Wan's release file
//! (`models_t5_umt5-xxl-enc-bf16.pth`, wan/modules/t5.py `T5Encoder`); transformers'
//! UMT5EncoderModel names (diffusers' `text_encoder/`) are mapped onto them by the table below.

use tch::Tensor;

/// Per block: (transformers suffix after `encoder.block.N.`, Wan suffix after `blocks.N.`).
/// Wan's `ffn.gate` is the GELU branch (`gate.0` the linear before the GELU), `ffn.fc1` the linear
/// branch: transformers' `wi_0` and `wi_1`.
pub const BLOCK_KEYS: [(&str, &str); 10] = [
    ("layer.0.layer_norm.weight", "norm1.weight"),
    ("layer.0.SelfAttention.q.weight", "attn.q.weight"),
    ("layer.0.SelfAttention.k.weight", "attn.k.weight"),
    ("layer.0.SelfAttention.v.weight", "attn.v.weight"),
    ("layer.0.SelfAttention.o.weight", "attn.o.weight"),
    (
        "layer.0.SelfAttention.relative_attention_bias.weight",
        "pos_embedding.embedding.weight",
    ),
    ("layer.1.layer_norm.weight", "norm2.weight"),
    ("layer.1.DenseReluDense.wi_0.weight", "ffn.gate.0.weight"),
    ("layer.1.DenseReluDense.wi_1.weight", "ffn.fc1.weight"),
    ("layer.1.DenseReluDense.wo.weight", "ffn.fc2.weight"),
];

/// Top-level (transformers, Wan). `encoder.embed_tokens.weight` is tied to `shared.weight` in
/// transformers and is accepted as the embedding too (see `hf_to_wan_tensors`).
pub const TOP_KEYS: [(&str, &str); 2] = [
    ("shared.weight", "token_embedding.weight"),
    ("encoder.final_layer_norm.weight", "norm.weight"),
];

const HF_EMBED_ALIAS: &str = "encoder.embed_tokens.weight";

/// transformers name → Wan name (None: not an encoder parameter name of transformers').
pub fn hf_to_wan(name: &str) -> Option<String> {
    if name == HF_EMBED_ALIAS {
        return Some("token_embedding.weight".into());
    }
    if let Some((_, w)) = TOP_KEYS.iter().find(|(h, _)| *h == name) {
        return Some(w.to_string());
    }
    let rest = name.strip_prefix("encoder.block.")?;
    let (idx, suffix) = rest.split_once('.')?;
    idx.parse::<u64>().ok()?;
    let (_, w) = BLOCK_KEYS.iter().find(|(h, _)| *h == suffix)?;
    Some(format!("blocks.{idx}.{w}"))
}

/// Wan name → transformers name (None: not a Wan encoder parameter name).
pub fn wan_to_hf(name: &str) -> Option<String> {
    if let Some((h, _)) = TOP_KEYS.iter().find(|(_, w)| *w == name) {
        return Some(h.to_string());
    }
    let rest = name.strip_prefix("blocks.")?;
    let (idx, suffix) = rest.split_once('.')?;
    idx.parse::<u64>().ok()?;
    let (h, _) = BLOCK_KEYS.iter().find(|(_, w)| *w == suffix)?;
    Some(format!("encoder.block.{idx}.{h}"))
}

/// Renames a transformers state dict to Wan's names. Names that are not transformers encoder
/// names stay as they are (so the loader reports them as unexpected). When both the embedding
/// and its tied alias are present, `shared.weight` is used (transformers ties the alias to it).
pub fn hf_to_wan_tensors(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let has_shared = tensors.iter().any(|(n, _)| n == "shared.weight");
    tensors
        .into_iter()
        .filter(|(n, _)| !(has_shared && n == HF_EMBED_ALIAS))
        .map(|(n, t)| (hf_to_wan(&n).unwrap_or(n), t))
        .collect()
}

/// True when the names look like transformers' (any `encoder.` / `shared.` key).
pub fn is_hf_naming(tensors: &[(String, Tensor)]) -> bool {
    tensors
        .iter()
        .any(|(n, _)| n.starts_with("encoder.") || n == "shared.weight")
}
