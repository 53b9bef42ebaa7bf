//! AdamW and clip_grad_norm against torch 2.11 numbers (bit patterns of f32 results).
//!
//! The numbers were produced with the venv's torch (CPU) by this script:
//! ```python
//! import torch, struct
//! def bits(t): return "[" + ", ".join("0x%08x" % struct.unpack("<I", struct.pack("<f", x))[0]
//!                                     for x in t.detach().flatten().tolist()) + "]"
//! def grads(step, n, salt):
//!     return torch.tensor([(((i * 7 + step * 3 + salt) % 11) - 5) / 4.0 for i in range(n)],
//!                         dtype=torch.float32)
//! def run(beta1, wd, steps=5):
//!     w = torch.tensor([(i % 5 - 2) * 0.25 + 0.1 for i in range(6)],
//!                      dtype=torch.float32).reshape(3, 2).requires_grad_()
//!     b = torch.tensor([0.5, -0.3], dtype=torch.float32).requires_grad_()
//!     opt = torch.optim.AdamW([w, b], lr=0.01, betas=(beta1, 0.999), eps=1e-8, weight_decay=wd)
//!     for s in range(1, steps + 1):
//!         opt.zero_grad(set_to_none=True)
//!         loss = (w * grads(s, 6, 0).reshape(3, 2)).sum()
//!         if s >= 2:   # b gets no grad at step 1: torch skips it (its step count stays 0)
//!             loss = loss + (b * grads(s, 2, 3)).sum()
//!         loss.backward()
//!         opt.step()
//!     for name, p in (("w", w), ("b", b)):
//!         st = opt.state[p]
//!         print(name, bits(p), bits(st["exp_avg"]), bits(st["exp_avg_sq"]), st["step"].item())
//! run(0.0, 0.01); run(0.9, 0.01)
//!
//! def mk():
//!     a = torch.tensor([0.3, -1.7, 2.25, 0.1], dtype=torch.float32).requires_grad_()
//!     b = torch.tensor([[4.0, -0.5], [1.5, 3.3]], dtype=torch.float32).requires_grad_()
//!     a.grad = torch.tensor([0.3, -1.7, 2.25, 0.1], dtype=torch.float32) * 3
//!     b.grad = torch.tensor([[4.0, -0.5], [1.5, 3.3]], dtype=torch.float32) * 3
//!     return a, b
//! for max_norm in (10.0, 100.0):
//!     a, b = mk(); n = torch.nn.utils.clip_grad_norm_([a, b], max_norm)
//!     print(max_norm, n.item(), bits(a.grad), bits(b.grad))
//! ```

use stillflow::optim::{clip_grad_norm, total_grad_norm, AdamW, AdamWConfig};
use tch::{Kind, Tensor};

fn t(v: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).reshape(shape)
}

fn grads(step: i64, n: i64, salt: i64) -> Vec<f32> {
    (0..n)
        .map(|i| ((((i * 7 + step * 3 + salt) % 11) - 5) as f32) / 4.0)
        .collect()
}

fn bits(x: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = Vec::try_from(x.flatten(0, -1)).unwrap();
    v.iter().map(|f| f.to_bits()).collect()
}

struct Expect {
    w: [u32; 6],
    w_m: [u32; 6],
    w_v: [u32; 6],
    b: [u32; 2],
    b_m: [u32; 2],
    b_v: [u32; 2],
}

fn run(beta1: f64, expect: &Expect) {
    // torch.tensor(python floats, float32): computed in f64, rounded to f32 once.
    let w0: Vec<f32> = (0..6)
        .map(|i| (((i % 5 - 2) as f64) * 0.25 + 0.1) as f32)
        .collect();
    let w = t(&w0, &[3, 2]).set_requires_grad(true);
    let b = t(&[0.5, -0.3], &[2]).set_requires_grad(true);
    let cfg = AdamWConfig {
        lr: 0.01,
        beta1,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut opt = AdamW::new(
        vec![
            ("w".into(), w.shallow_clone()),
            ("b".into(), b.shallow_clone()),
        ],
        cfg,
    )
    .unwrap();
    for s in 1..=5 {
        opt.zero_grad();
        let mut loss = (&w * t(&grads(s, 6, 0), &[3, 2])).sum(Kind::Float);
        if s >= 2 {
            loss += (&b * t(&grads(s, 2, 3), &[2])).sum(Kind::Float);
        }
        loss.backward();
        let n = opt.step().unwrap();
        assert_eq!(n, if s == 1 { 1 } else { 2 });
    }
    let st = opt.state_tensors();
    let get = |k: &str| st.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
    assert_eq!(bits(&w), expect.w, "w, beta1={beta1}");
    assert_eq!(bits(&get("exp_avg.w")), expect.w_m, "exp_avg w");
    assert_eq!(bits(&get("exp_avg_sq.w")), expect.w_v, "exp_avg_sq w");
    assert_eq!(bits(&b), expect.b, "b, beta1={beta1}");
    assert_eq!(bits(&get("exp_avg.b")), expect.b_m, "exp_avg b");
    assert_eq!(bits(&get("exp_avg_sq.b")), expect.b_v, "exp_avg_sq b");
    assert_eq!(get("step.w").int64_value(&[]), 5);
    assert_eq!(get("step.b").int64_value(&[]), 4, "b had no grad at step 1");
}

#[test]
fn adamw_matches_torch_beta1_zero() {
    run(
        0.0,
        &Expect {
            w: [
                0xbec9f76e, 0xbe17cc44, 0x3dacfee8, 0x3ebd1a54, 0x3f14fa0a, 0xbecad8ab,
            ],
            w_m: [
                0xbe800000, 0xbfa00000, 0x3f000000, 0xbf000000, 0x3fa00000, 0x3e800000,
            ],
            w_v: [
                0x3b1b5fae, 0x3b8afc60, 0x3b1b4cd6, 0x3b40304d, 0x3b7d7823, 0x3b1f6996,
            ],
            b: [0x3efe12f1, 0xbe95da87],
            b_m: [0x3f000000, 0xbf000000],
            b_v: [0x3b173872, 0x3b1b78d0],
        },
    );
}

#[test]
fn adamw_matches_torch_beta1_0_9() {
    run(
        0.9,
        &Expect {
            w: [
                0xbec729dd, 0xbe2a3ee6, 0x3da3e03b, 0x3ebfb790, 0x3f1648e5, 0xbecc0f11,
            ],
            w_m: [
                0xbd46fbd3, 0xbcf7175d, 0x3d12a5a6, 0xbe1a949b, 0x3e11e109, 0xbd885879,
            ],
            w_v: [
                0x3b1b5fae, 0x3b8afc60, 0x3b1b4cd6, 0x3b40304d, 0x3b7d7823, 0x3b1f6996,
            ],
            b: [0x3efb7181, 0xbe9a178f],
            b_m: [0x3c9eecbe, 0xbdd0624e],
            b_v: [0x3b173872, 0x3b1b78d0],
        },
    );
}

fn clip_params() -> (Tensor, Tensor) {
    let a = t(&[0.3, -1.7, 2.25, 0.1], &[4]).set_requires_grad(true);
    let b = t(&[4.0, -0.5, 1.5, 3.3], &[2, 2]).set_requires_grad(true);
    // grad = 3·param, set through a backward of sum(1.5·p²).
    let loss = (&a * &a * 1.5).sum(Kind::Float) + (&b * &b * 1.5).sum(Kind::Float);
    loss.backward();
    (a, b)
}

#[test]
fn clip_matches_torch_when_clipping() {
    let (a, b) = clip_params();
    let n = clip_grad_norm([&a, &b], 10.0).unwrap();
    assert_eq!((n as f32).to_bits(), 0x4192db4f, "norm {n}");
    assert_eq!(
        bits(&a.grad()),
        [0x3efb052f, 0xc031ce57, 0x406b54dc, 0x3e2758ca]
    );
    assert_eq!(
        bits(&b.grad()),
        [0x40d12efc, 0xbf512efc, 0x401ce33d, 0x40ac938f]
    );
    // After clipping the norm is max_norm (up to the 1e-6 guard).
    let after = total_grad_norm([&a, &b]).unwrap();
    assert!((after - 10.0).abs() < 1e-5, "{after}");
}

#[test]
fn clip_leaves_small_gradients_alone() {
    let (a, b) = clip_params();
    let n = clip_grad_norm([&a, &b], 100.0).unwrap();
    assert_eq!((n as f32).to_bits(), 0x4192db4f);
    assert_eq!(
        bits(&a.grad()),
        [0x3f666667, 0xc0a33334, 0x40d80000, 0x3e99999a]
    );
    assert_eq!(
        bits(&b.grad()),
        [0x41400000, 0xbfc00000, 0x40900000, 0x411e6666]
    );
}

#[test]
fn clip_returns_nonfinite_norm_without_scaling() {
    for bad in [f32::NAN, f32::INFINITY] {
        let a = t(&[1.0, 2.0], &[2]).set_requires_grad(true);
        let b = t(&[3.0], &[1]).set_requires_grad(true);
        let loss = (&a * t(&[bad, 1.0], &[2])).sum(Kind::Float) + (&b * 2.0).sum(Kind::Float);
        loss.backward();
        let before_b = bits(&b.grad());
        let n = clip_grad_norm([&a, &b], 1.0).unwrap();
        assert!(!n.is_finite(), "norm {n} for {bad}");
        assert_eq!(bits(&b.grad()), before_b, "finite grads untouched");
        assert_eq!(bits(&a.grad())[1], 1.0f32.to_bits());
    }
}

#[test]
fn clip_without_grads_is_zero_and_skips_undefined() {
    let a = t(&[1.0, 2.0], &[2]).set_requires_grad(true);
    assert_eq!(clip_grad_norm([&a], 1.0).unwrap(), 0.0);
    let b = t(&[3.0, 4.0], &[2]).set_requires_grad(true);
    (&b * &b * 0.5).sum(Kind::Float).backward(); // grad = (3, 4), norm 5
    let n = clip_grad_norm([&a, &b], 1.0).unwrap();
    assert_eq!(n, 5.0);
    let g: Vec<f32> = Vec::try_from(b.grad()).unwrap();
    assert!(
        (g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6,
        "{g:?}"
    );
    assert!(!a.grad().defined());
}

/// Parameters and per-step gradients for the fused-vs-per-op comparison: a few shapes, one
/// parameter that gets no gradient at step 1 (skipped, its step count lags), bf16 gradients like
/// the trainable bf16 copies produce.
/// Per parameter: values, exp_avg, exp_avg_sq, step count.
type FinalState = Vec<(Vec<f32>, Vec<f32>, Vec<f32>, Option<u64>)>;

fn fused_case(fused: bool, scale: f64) -> FinalState {
    let shapes: [&[i64]; 3] = [&[4, 3], &[7], &[2, 2, 5]];
    let params: Vec<(String, Tensor)> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: i64 = s.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|j| ((j * 5 + i as i64) % 9) as f32 / 8.0 - 0.4)
                .collect();
            (format!("p{i}"), t(&v, s))
        })
        .collect();
    let mut opt = AdamW::new(
        params
            .iter()
            .map(|(n, p)| (n.clone(), p.shallow_clone()))
            .collect(),
        AdamWConfig {
            lr: 0.02,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
        },
    )
    .unwrap();
    opt.set_fused(fused);
    for step in 1..=6i64 {
        let gs: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == 1 && step == 1 {
                    return Tensor::new();
                }
                let n: i64 = s.iter().product();
                t(&grads(step, n, i as i64), s).to_kind(Kind::BFloat16)
            })
            .collect();
        assert_eq!(
            opt.step_with_grads(&gs, scale).unwrap(),
            if step == 1 { 2 } else { 3 }
        );
    }
    let state = opt.state_tensors();
    let get = |k: &str| -> Vec<f32> {
        let t = &state.iter().find(|(n, _)| n == k).unwrap().1;
        Vec::try_from(t.flatten(0, -1)).unwrap()
    };
    params
        .iter()
        .map(|(n, p)| {
            (
                Vec::try_from(p.flatten(0, -1)).unwrap(),
                get(&format!("exp_avg.{n}")),
                get(&format!("exp_avg_sq.{n}")),
                opt.param_step(n),
            )
        })
        .collect()
}

/// ATen's `_fused_adamw_` (the CUDA default) does the same update as the per-op path: the same
/// step counts, and values equal to f32 rounding, with and without a clipping scale.
#[test]
fn fused_adamw_matches_the_per_op_update() {
    for scale in [1.0, 0.37] {
        let a = fused_case(false, scale);
        let b = fused_case(true, scale);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x.3, y.3, "param {i}: step counts");
            for (what, u, v) in [
                ("param", &x.0, &y.0),
                ("exp_avg", &x.1, &y.1),
                ("exp_avg_sq", &x.2, &y.2),
            ] {
                for (p, q) in u.iter().zip(v.iter()) {
                    let tol = 1e-6 * (1.0 + p.abs());
                    assert!(
                        (p - q).abs() <= tol,
                        "scale {scale} param {i} {what}: {p} vs {q}"
                    );
                }
            }
        }
        // The update did something (guards against both paths doing nothing).
        assert!(a[0].1.iter().any(|m| *m != 0.0));
    }
}
