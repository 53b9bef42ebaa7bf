//! The umT5 encoder (Wan's `T5Encoder` with `shared_pos=False`; transformers' UMT5EncoderModel):
//! token embedding, `num_layers` pre-norm blocks of [self-attention with its own bidirectional
//! relative-position bias, gated tanh-GELU feed-forward], final RMS norm.
//!
//! Precision (as both references): the RMS norm's mean square is taken in float32 and the
//! normalised activations are cast back to a 16-bit weight kind before the scale; the softmax runs
//! in float32; everything else (linears, attention scores, position bias, residual stream) uses
//! the parameters' kind. T5 attention is NOT scaled by 1/sqrt(d_kv).

use super::config::Umt5Config;
use anyhow::{bail, Result};
use tch::nn::{Init, Path};
use tch::{Device, Kind, Tensor};

struct Block {
    norm1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    /// [num_buckets, num_heads]
    pos: Tensor,
    norm2: Tensor,
    /// The linear whose output goes through the GELU (transformers' `wi_0`).
    gate: Tensor,
    /// The linear branch (`wi_1`).
    fc1: Tensor,
    fc2: Tensor,
}

pub struct Umt5Encoder {
    pub cfg: Umt5Config,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
}

/// T5's bidirectional relative-position bucket of `rel = key_position - query_position` (any
/// shape, int64): the sign picks one half of the buckets; |rel| below a quarter of the buckets
/// is its own bucket, larger distances share logarithmically wider buckets up to
/// `max_distance`, beyond which all fall into the last one. The float32 operations are the same,
/// in the same order, as in the references, so boundaries round identically.
pub fn relative_position_bucket(rel: &Tensor, num_buckets: i64, max_distance: i64) -> Tensor {
    let half = num_buckets / 2;
    let max_exact = half / 2;
    let side = rel.gt(0).to_kind(Kind::Int64) * half;
    let n = rel.abs();
    let is_small = n.lt(max_exact);
    let log_ratio = (n.to_kind(Kind::Float) / max_exact as f64).log()
        / (max_distance as f64 / max_exact as f64).ln()
        * (half - max_exact) as f64;
    // n = 0 gives log(0) = -inf, whose integer cast is garbage; `where` discards it.
    let large = (log_ratio.to_kind(Kind::Int64) + max_exact).clamp_max(half - 1);
    side + n.where_self(&is_small, &large)
}

/// Buckets [L, L] for a sequence of length `l` (rows: queries, columns: keys).
pub fn bucket_grid(l: i64, num_buckets: i64, max_distance: i64, device: Device) -> Tensor {
    let pos = Tensor::arange(l, (Kind::Int64, device));
    let rel = pos.unsqueeze(0) - pos.unsqueeze(1);
    relative_position_bucket(&rel, num_buckets, max_distance)
}

/// The most negative finite value of `kind` (what the references fill masked scores with).
fn kind_min(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Half => -65504.0,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// T5 layer norm: RMS only (no mean, no bias), the mean square in float32.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let ms = x
        .to_kind(Kind::Float)
        .square()
        .mean_dim(-1, true, Kind::Float);
    let y = x * (ms + eps).rsqrt();
    let y = match w.kind() {
        Kind::Half | Kind::BFloat16 => y.to_kind(w.kind()),
        _ => y,
    };
    w * y
}

/// GELU, tanh approximation, written out as both references write it (so 16-bit kinds round
/// at the same places).
fn gelu_tanh(x: &Tensor) -> Tensor {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x + x.pow_tensor_scalar(3.0) * 0.044715) * c;
    x * 0.5 * (inner.tanh() + 1.0)
}

/// fp16 only: Wan/transformers clamp the residual stream when it overflowed.
fn fp16_clamp(x: Tensor) -> Tensor {
    if x.kind() == Kind::Half && x.isinf().any().int64_value(&[]) != 0 {
        let m = 65504.0 - 1000.0;
        x.clamp(-m, m)
    } else {
        x
    }
}

impl Umt5Encoder {
    /// Creates the variables under `root` with Wan's names (zeros; load weights into them).
    /// Variables take the VarStore's kind: call `vs.set_kind` before, so a 16-bit model is never
    /// materialised in float32.
    pub fn new(root: &Path, cfg: &Umt5Config) -> Result<Umt5Encoder> {
        cfg.validate()?;
        let d = cfg.d_model;
        let inner = cfg.inner_dim();
        let w = |p: &Path, name: &str, dims: &[i64]| p.var(name, dims, Init::Const(0.));
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let b = root.sub("blocks").sub(i);
                let a = b.sub("attn");
                let f = b.sub("ffn");
                Block {
                    norm1: b.sub("norm1").var("weight", &[d], Init::Const(1.)),
                    q: w(&a.sub("q"), "weight", &[inner, d]),
                    k: w(&a.sub("k"), "weight", &[inner, d]),
                    v: w(&a.sub("v"), "weight", &[inner, d]),
                    o: w(&a.sub("o"), "weight", &[d, inner]),
                    pos: w(
                        &b.sub("pos_embedding").sub("embedding"),
                        "weight",
                        &[cfg.num_buckets, cfg.num_heads],
                    ),
                    norm2: b.sub("norm2").var("weight", &[d], Init::Const(1.)),
                    gate: w(&f.sub("gate").sub("0"), "weight", &[cfg.d_ff, d]),
                    fc1: w(&f.sub("fc1"), "weight", &[cfg.d_ff, d]),
                    fc2: w(&f.sub("fc2"), "weight", &[d, cfg.d_ff]),
                }
            })
            .collect();
        Ok(Umt5Encoder {
            embed: w(&root.sub("token_embedding"), "weight", &[cfg.vocab_size, d]),
            norm: root.sub("norm").var("weight", &[d], Init::Const(1.)),
            blocks,
            cfg: cfg.clone(),
        })
    }

    /// The compute kind (the parameters').
    pub fn kind(&self) -> Kind {
        self.embed.kind()
    }

    /// ids [B, L] int64, mask [B, L] (non-zero = real token; padding may be anywhere, keys are
    /// masked) → hidden states [B, L, d_model] in the model's kind, zero where mask is 0.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        self.f_forward(ids, mask)
            .unwrap_or_else(|e| panic!("umT5 forward: {e}"))
    }

    /// `forward` with the input checks as errors.
    pub fn f_forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = match ids.size()[..] {
            [b, l] => (b, l),
            ref s => bail!("umT5: ids must be [B, L], got {s:?}"),
        };
        if mask.size() != [b, l] {
            bail!(
                "umT5: mask must be [B, L] = [{b}, {l}], got {:?}",
                mask.size()
            );
        }
        let dev = self.embed.device();
        let ids = ids.to_device(dev).to_kind(Kind::Int64);
        if b * l > 0 {
            let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if lo < 0 || hi >= self.cfg.vocab_size {
                bail!(
                    "umT5: token ids span [{lo}, {hi}] but the vocabulary has {} entries",
                    self.cfg.vocab_size
                );
            }
        }
        let keep = mask.to_device(dev).ne(0);
        let kind = self.kind();
        let (h, dk) = (self.cfg.num_heads, self.cfg.d_kv);
        let masked = keep.logical_not().view([b, 1, 1, l]);
        let buckets = bucket_grid(l, self.cfg.num_buckets, self.cfg.max_distance, dev);
        let mut x = Tensor::embedding(&self.embed, &ids, -1, false, false);
        for blk in &self.blocks {
            // [1, H, L, L] position bias of this layer, key padding filled with the kind's min.
            let bias = Tensor::embedding(&blk.pos, &buckets, -1, false, false)
                .permute([2, 0, 1])
                .unsqueeze(0)
                .masked_fill(&masked, kind_min(kind));
            let y = rms_norm(&x, &blk.norm1, self.cfg.eps);
            let heads = |w: &Tensor| {
                y.linear::<&Tensor>(w, None)
                    .view([b, l, h, dk])
                    .transpose(1, 2)
            };
            let (q, k, v) = (heads(&blk.q), heads(&blk.k), heads(&blk.v));
            let scores = q.matmul(&k.transpose(-2, -1)) + bias;
            let attn = scores
                .to_kind(Kind::Float)
                .softmax(-1, Kind::Float)
                .to_kind(kind);
            let out = attn
                .matmul(&v)
                .transpose(1, 2)
                .reshape([b, l, h * dk])
                .linear::<&Tensor>(&blk.o, None);
            x = fp16_clamp(x + out);
            let y = rms_norm(&x, &blk.norm2, self.cfg.eps);
            let g = gelu_tanh(&y.linear::<&Tensor>(&blk.gate, None));
            let f = (y.linear::<&Tensor>(&blk.fc1, None) * g).linear::<&Tensor>(&blk.fc2, None);
            x = fp16_clamp(x + f);
        }
        let x = rms_norm(&x, &self.norm, self.cfg.eps);
        // Wan/Self-Forcing feed the DiT zeros past each prompt's length.
        Ok(x * keep.unsqueeze(-1).to_kind(kind))
    }
}
