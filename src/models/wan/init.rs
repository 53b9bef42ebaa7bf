//! Wan's `init_weights` for random weights, drawn from `crate::rng` (never tch's global RNG):
//! - every Linear: xavier-uniform weight, zero bias;
//! - patch_embedding: xavier-uniform over weight.flatten(1) (fan_in = C·pt·ph·pw, fan_out = dim);
//!   its bias keeps PyTorch's Conv3d default U(−1/√fan_in, 1/√fan_in) (Wan does not touch it);
//! - text_embedding and time_embedding Linear weights: normal(0, 0.02) (biases stay zero);
//! - head.head weight: zero (so a fresh model predicts a constant flow = head bias = 0);
//! - modulation tables (blocks and head): randn / √dim;
//! - RMSNorm weights 1, norm3 (affine LN) weight 1 and bias 0.

use super::model::WanModel;
use crate::rng::{self, RngKey};
use tch::{Kind, Tensor};

fn uniform(key: &RngKey, shape: &[i64], bound: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = rng::uniform_vec(key, n as usize)
        .into_iter()
        .map(|u| ((2.0 * u - 1.0) * bound) as f32)
        .collect();
    Tensor::from_slice(&v).view(shape)
}

fn set(dst: &Tensor, src: Tensor) {
    let mut d = dst.shallow_clone();
    d.copy_(&src.to_kind(dst.kind()).to_device(dst.device()));
}

fn xavier(key: &RngKey, w: &Tensor) {
    let s = w.size();
    let fan_out = s[0];
    let fan_in: i64 = s[1..].iter().product();
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    set(w, uniform(key, &s, bound));
}

fn normal(key: &RngKey, w: &Tensor, std: f64) {
    set(
        w,
        rng::randn(key, &w.size(), Kind::Float, tch::Device::Cpu) * std,
    );
}

/// Fills every parameter of `m` with Wan's initialisation, drawn from `key` (each tensor from its
/// own sub-stream, so the values do not depend on the order of construction).
pub fn init_random(m: &WanModel, key: &RngKey) {
    let _g = tch::no_grad_guard();
    let mut sub = 0u64;
    let mut next = || {
        sub += 1;
        key.sub(sub)
    };
    let zero = |t: &Tensor| set(t, Tensor::zeros_like(t));
    let one = |t: &Tensor| set(t, Tensor::ones_like(t));
    let d = m.cfg.dim as f64;

    xavier(&next(), &m.patch_w);
    let fan_in: i64 = m.patch_w.size()[1..].iter().product();
    set(
        &m.patch_b,
        uniform(&next(), &m.patch_b.size(), 1.0 / (fan_in as f64).sqrt()),
    );
    for l in [&m.text0, &m.text2, &m.time0, &m.time2] {
        normal(&next(), &l.w, 0.02);
        zero(&l.b);
    }
    xavier(&next(), &m.time_proj.w);
    zero(&m.time_proj.b);
    for blk in &m.blocks {
        for a in [&blk.self_attn, &blk.cross_attn] {
            for l in [&a.q, &a.k, &a.v, &a.o] {
                xavier(&next(), &l.w);
                zero(&l.b);
            }
            one(&a.norm_q);
            one(&a.norm_k);
        }
        one(&blk.norm3_w);
        zero(&blk.norm3_b);
        for l in [&blk.ffn0, &blk.ffn2] {
            xavier(&next(), &l.w);
            zero(&l.b);
        }
        normal(&next(), &blk.modulation, 1.0 / d.sqrt());
    }
    zero(&m.head.w);
    zero(&m.head.b);
    normal(&next(), &m.head_mod, 1.0 / d.sqrt());
}
