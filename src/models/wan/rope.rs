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

/// Float64 cos/sin of every token's d/2 angles, token-major (Wan's (frame, row, column) order,
/// pairs split [t | h | w] per `split` real dims).
fn rope_tables_f64(grid: [i64; 3], start_frame: i64, split: [i64; 3]) -> (Vec<f64>, Vec<f64>) {
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
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
    }
    (cos, sin)
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
    let (c, s) = rope_tables_f64(grid, start_frame, split);
    let half: i64 = split.iter().sum::<i64>() / 2;
    let shape = [grid[0] * grid[1] * grid[2], 1, half];
    let put = |v: &[f64]| {
        Tensor::from_slice(&v.iter().map(|a| *a as f32).collect::<Vec<_>>())
            .view(shape)
            .to_device(device)
    };
    (put(&c), put(&s))
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
    // ω on t's device (a host table would be an H2D copy, i.e. a sync, on every call).
    let omega =
        (Tensor::arange(half, (Kind::Double, t.device())) * (-(10000f64.ln()) / half as f64)).exp();
    let args = t.to_kind(Kind::Double).reshape([-1, 1]) * omega.view([1, half]);
    Tensor::cat(&[args.cos(), args.sin()], 1)
}

/// cos/sin tables for [`apply_rope_interleaved`]: [N, 1, d] in `kind`, each angle repeated for
/// its pair, with the sine signed (−sin, +sin) so that the rotation is `x·cos + swap(x)·sin`.
/// Computed in float64 on the host and rounded once to `kind`.
pub fn rope_tables_interleaved(
    grid: [i64; 3],
    start_frame: i64,
    split: [i64; 3],
    kind: Kind,
    device: Device,
) -> (Tensor, Tensor) {
    let (c, s) = rope_tables_f64(grid, start_frame, split);
    let n = (grid[0] * grid[1] * grid[2]) as usize;
    let half = c.len() / n.max(1);
    let mut cos = Vec::with_capacity(2 * c.len());
    let mut sin = Vec::with_capacity(2 * c.len());
    for (a, b) in c.iter().zip(&s) {
        cos.extend([*a, *a]);
        sin.extend([-*b, *b]);
    }
    let shape = [n as i64, 1, 2 * half as i64];
    let put = |v: &[f64]| {
        Tensor::from_slice(v)
            .view(shape)
            .to_kind(kind)
            .to_device(device)
    };
    (put(&cos), put(&sin))
}

/// Rotates adjacent pairs of the last dim of x [B, N, heads, d] by the tables of
/// [`rope_tables_interleaved`]: out = x·cos + swap(x)·sin, swap exchanging each pair. Three
/// elementwise passes in x's kind (ATen computes bf16 ops in f32 and rounds each result).
pub fn apply_rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let s = x.size();
    let d = s[s.len() - 1];
    let mut pair_shape = s.clone();
    pair_shape.pop();
    pair_shape.push(d / 2);
    pair_shape.push(2);
    let swapped = x.view(pair_shape.as_slice()).flip([-1]).view(s.as_slice());
    (x * cos).addcmul(&swapped, sin)
}
