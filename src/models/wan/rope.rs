//! Wan's 3-D rotary position embedding and sinusoidal time embedding.
//!
//! Both are computed in float64 like Wan (`rope_params`, `sinusoidal_embedding_1d`), but only the
//! small tables; the big q/k tensors are rotated in float32 (exact to f32 rounding, and the bf16
//! result is the same as rotating in float64 and rounding).

use tch::{Device, Kind, Tensor};

/// θ of Wan's RoPE.
pub const ROPE_THETA: f64 = 10000.0;

/// Angles of one RoPE axis: for positions `pos` and an axis of `dim` real dims (dim/2 complex
/// pairs), angle[p, i] = pos[p] · θ^(−2i/dim). Float64 [len, dim/2].
pub fn axis_angles(pos: &[f64], dim: i64) -> Vec<f64> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(pos.len() * half as usize);
    for &p in pos {
        for i in 0..half {
            let w = 1.0 / ROPE_THETA.powf((2 * i) as f64 / dim as f64);
            out.push(p * w);
        }
    }
    out
}

/// cos/sin tables for a (f, h, w) token grid whose first frame has absolute index `start_frame`.
/// Token order is Wan's (frame, row, column); the head's d/2 complex pairs are split
/// [t | h | w] per `split` (real dims). Returns f32 tensors [N, 1, d/2] (N = f·h·w), ready to
/// broadcast over [B, N, heads, d/2].
pub fn rope_tables(
    grid: [i64; 3],
    start_frame: i64,
    split: [i64; 3],
    device: Device,
) -> (Tensor, Tensor) {
    let [f, h, w] = grid;
    let half: i64 = split.iter().sum::<i64>() / 2;
    let at = axis_angles(
        &(0..f).map(|i| (i + start_frame) as f64).collect::<Vec<_>>(),
        split[0],
    );
    let ah = axis_angles(&(0..h).map(|i| i as f64).collect::<Vec<_>>(), split[1]);
    let aw = axis_angles(&(0..w).map(|i| i as f64).collect::<Vec<_>>(), split[2]);
    let (ht, hh, hw) = (split[0] / 2, split[1] / 2, split[2] / 2);
    let n = (f * h * w) as usize;
    let mut cos = Vec::with_capacity(n * half as usize);
    let mut sin = Vec::with_capacity(n * half as usize);
    for fi in 0..f {
        for hi in 0..h {
            for wi in 0..w {
                let t = &at[(fi * ht) as usize..((fi + 1) * ht) as usize];
                let y = &ah[(hi * hh) as usize..((hi + 1) * hh) as usize];
                let x = &aw[(wi * hw) as usize..((wi + 1) * hw) as usize];
                for a in t.iter().chain(y).chain(x) {
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
    }
    let shape = [n as i64, 1, half];
    (
        Tensor::from_slice(&cos).view(shape).to_device(device),
        Tensor::from_slice(&sin).view(shape).to_device(device),
    )
}

/// Rotates adjacent pairs (x[2i], x[2i+1]) of the last dim of `x` [B, N, heads, d] as complex
/// numbers by the angles whose cos/sin are given ([N, 1, d/2]). Computed in float32; returns f32.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let s = x.size();
    let d = s[s.len() - 1];
    let mut pair_shape = s.clone();
    pair_shape.pop();
    pair_shape.push(d / 2);
    pair_shape.push(2);
    let xr = x.to_kind(Kind::Float).view(pair_shape.as_slice());
    let x0 = xr.select(-1, 0);
    let x1 = xr.select(-1, 1);
    let r0 = &x0 * cos - &x1 * sin;
    let r1 = x0 * sin + x1 * cos;
    Tensor::stack(&[r0, r1], -1).view(s.as_slice())
}

/// Wan's `sinusoidal_embedding_1d(dim, t)`: [cos(t·ω_i), sin(t·ω_i)] with ω_i = 10000^(−i/half),
/// half = dim/2, computed in float64 on `t`'s device (no host round trip, so no sync on GPU).
/// `t` is any float tensor; returns float64 [t.numel(), dim].
pub fn sinusoidal_embedding(dim: i64, t: &Tensor) -> Tensor {
    let half = dim / 2;
    let omega: Vec<f64> = (0..half)
        .map(|i| 10000f64.powf(-(i as f64) / half as f64))
        .collect();
    let omega = Tensor::from_slice(&omega).to_device(t.device());
    let args = t.to_kind(Kind::Double).reshape([-1, 1]) * omega.view([1, half]);
    Tensor::cat(&[args.cos(), args.sin()], 1)
}
