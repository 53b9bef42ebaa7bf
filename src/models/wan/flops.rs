//! Model FLOPs of Wan forward passes (for MFU): matrix multiplications and attention, counted as
//! 2 FLOPs per multiply-add, per sample. Element-wise work (norms, RoPE, modulation, GELU) is left
//! out, as MFU conventions do. Backward = 2 × forward; recomputation is not model work.

use super::config::WanConfig;

/// Tokens per latent frame after patching, for latent frames of `h × w`.
pub fn tokens_per_frame(cfg: &WanConfig, h: i64, w: i64) -> i64 {
    (h / cfg.patch_size[1]) * (w / cfg.patch_size[2])
}

/// One forward over `q` query tokens whose self-attention sees `kv` tokens (kv ≥ q for a causal
/// chunk with cached past, kv = q bidirectionally). `text_kv`: whether this call projects the text
/// tokens to cross-attention K/V (a cached rollout call does not).
pub fn forward_flops(cfg: &WanConfig, q: i64, kv: i64, text_kv: bool) -> f64 {
    let d = cfg.dim as f64;
    let (q, kv) = (q as f64, kv as f64);
    let l = cfg.text_len as f64;
    let patch: f64 = (cfg.in_dim * cfg.patch_size.iter().product::<i64>()) as f64;
    let out: f64 = (cfg.out_dim * cfg.patch_size.iter().product::<i64>()) as f64;
    // Per layer: self-attn q,k,v,o; cross-attn q,o; FFN in and out (weights × tokens).
    let per_token = 4.0 * d * d + 2.0 * d * d + 2.0 * d * cfg.ffn_dim as f64;
    // QKᵀ and AV over the visible keys, and over the text tokens.
    let attention = 2.0 * q * kv * d + 2.0 * q * l * d;
    let text = if text_kv { 2.0 * l * d * d } else { 0.0 };
    let layers = cfg.num_layers as f64 * (2.0 * (q * per_token + attention + text));
    // Patch embedding and head; the text embedding MLP (text_dim → dim → dim) when projecting.
    let io = 2.0 * q * (patch * d + d * out);
    let text_embed = if text_kv {
        2.0 * l * (cfg.text_dim as f64 * d + d * d)
    } else {
        0.0
    };
    layers + io + text_embed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidirectional_1_3b_matches_the_closed_form() {
        // 2·P_mm·N + 4·N²·dim·L with P_mm the per-token matmul weights: the dominant terms.
        let c = WanConfig::t2v_1_3b();
        let n = 21 * tokens_per_frame(&c, 60, 104);
        assert_eq!(n, 32_760);
        let f = forward_flops(&c, n, n, true);
        let d = 1536.0;
        let mm = 30.0 * (6.0 * d * d + 2.0 * d * 8960.0);
        let closed = 2.0 * mm * n as f64 + 4.0 * (n as f64).powi(2) * d * 30.0;
        assert!((f / closed - 1.0).abs() < 0.02, "{f:e} vs {closed:e}");
        assert!(f > closed);
    }

    #[test]
    fn causal_chunks_sum_to_less_than_one_bidirectional_pass() {
        let c = WanConfig::t2v_1_3b();
        let tpb = 3 * tokens_per_frame(&c, 60, 104);
        let chunks: f64 = (1..=7)
            .map(|b| forward_flops(&c, tpb, b * tpb, false))
            .sum();
        let full = forward_flops(&c, 7 * tpb, 7 * tpb, false);
        // Same matmul work, about half the attention (block-causal).
        assert!(chunks < full && chunks > 0.6 * full, "{chunks:e} {full:e}");
    }
}
