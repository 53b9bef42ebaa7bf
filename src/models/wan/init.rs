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
    let v: Vec<f32> = rng::uniform_iter(key)
        .take(n as usize)
        .map(|u| ((2.0 * u - 1.0) * bound) as f32)
        .collect();
    Tensor::from_slice(&v).view(shape)
}

fn set(dst: &Tensor, src: Tensor) {
    let mut d = dst.shallow_clone();
    d.copy_(&src.to_kind(dst.kind()).to_device(dst.device()));
}

fn xavier_bound(s: &[i64]) -> f64 {
    let fan_out = s[0];
    let fan_in: i64 = s[1..].iter().product();
    (6.0 / (fan_in + fan_out) as f64).sqrt()
}

fn xavier(key: &RngKey, w: &Tensor) {
    let s = w.size();
    set(w, uniform(key, &s, xavier_bound(&s)));
}

fn normal(key: &RngKey, w: &Tensor, std: f64) {
    set(
        w,
        rng::randn(key, &w.size(), Kind::Float, tch::Device::Cpu) * std,
    );
}

/// Sub-stream numbers drawn before the first block (patch weight and bias, text and time
/// embedding weights, time projection) and by each block (8 attention Linears, 2 FFN Linears, the
/// modulation table).
const SUBS_BEFORE_BLOCKS: u64 = 7;
const SUBS_PER_BLOCK: u64 = 11;

/// Fills every parameter of `m` with Wan's initialisation, drawn from `key` (each tensor from its
/// own sub-stream, so the values do not depend on the order of construction).
pub fn init_random(m: &WanModel, key: &RngKey) {
    let _g = tch::no_grad_guard();
    let mut sub = 0u64;
    let mut next = || {
        sub += 1;
        key.sub(sub)
    };
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
    debug_assert_eq!(sub, SUBS_BEFORE_BLOCKS);

    // The blocks hold nearly all parameters (14B: 40 × 350M); their host-side draws run on several
    // threads, a few blocks at a time (bounded host memory), and are copied in on this thread.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let blocks: Vec<_> = m.blocks.iter().enumerate().collect();
    for group in blocks.chunks(threads) {
        let drawn: Vec<Vec<Tensor>> = std::thread::scope(|sc| {
            let handles: Vec<_> = group
                .iter()
                .map(|(i, blk)| {
                    let base = SUBS_BEFORE_BLOCKS + SUBS_PER_BLOCK * *i as u64;
                    let shapes = block_draw_shapes(blk);
                    sc.spawn(move || draw_block(key, base, d, &shapes))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for ((_, blk), values) in group.iter().zip(drawn) {
            let targets = block_draw_targets(blk);
            for (dst, v) in targets.into_iter().zip(values) {
                set(dst, v);
            }
            for a in [&blk.self_attn, &blk.cross_attn] {
                for l in [&a.q, &a.k, &a.v, &a.o] {
                    zero(&l.b);
                }
                one(&a.norm_q);
                one(&a.norm_k);
            }
            one(&blk.norm3_w);
            zero(&blk.norm3_b);
            for l in [&blk.ffn0, &blk.ffn2] {
                zero(&l.b);
            }
        }
    }
    zero(&m.head.w);
    zero(&m.head.b);
    let head_sub = SUBS_BEFORE_BLOCKS + SUBS_PER_BLOCK * m.blocks.len() as u64 + 1;
    normal(&key.sub(head_sub), &m.head_mod, 1.0 / d.sqrt());
}

fn zero(t: &Tensor) {
    set(t, Tensor::zeros_like(t))
}

fn one(t: &Tensor) {
    set(t, Tensor::ones_like(t))
}

/// A block's randomly drawn tensors, in sub-stream order: self-attn q,k,v,o, cross-attn q,k,v,o
/// (xavier), FFN in and out (xavier), modulation (normal).
fn block_draw_targets(blk: &super::block::Block) -> Vec<&Tensor> {
    let mut v = vec![];
    for a in [&blk.self_attn, &blk.cross_attn] {
        for l in [&a.q, &a.k, &a.v, &a.o] {
            v.push(&l.w);
        }
    }
    v.push(&blk.ffn0.w);
    v.push(&blk.ffn2.w);
    v.push(&blk.modulation);
    v
}

fn block_draw_shapes(blk: &super::block::Block) -> Vec<Vec<i64>> {
    block_draw_targets(blk).iter().map(|t| t.size()).collect()
}

/// The host tensors of one block's draws (sub-streams base+1 …), as `init_random` numbers them.
fn draw_block(key: &RngKey, base: u64, d: f64, shapes: &[Vec<i64>]) -> Vec<Tensor> {
    let n = shapes.len();
    shapes
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let k = key.sub(base + 1 + j as u64);
            if j + 1 == n {
                rng::randn(&k, s, Kind::Float, tch::Device::Cpu) * (1.0 / d.sqrt())
            } else {
                uniform(&k, s, xavier_bound(s))
            }
        })
        .collect()
}
