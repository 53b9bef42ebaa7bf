//! GPU checks of the kept attention of selective checkpointing (src/cuda/attention.rs,
//! csrc/shim_attn.cpp; feature `cuda`, needs a CUDA device; run by scripts/gpu_selftest.sh): the
//! kept forward equals SDPA's, and the replayed node's gradients equal SDPA's backward, for the
//! kernel SDPA picks in bf16 (cuDNN on H100) and in f32 (memory-efficient attention), with k/v as
//! long as q (bidirectional) and longer ([past; current] keys of the causal GRAD pass).
#![cfg(feature = "cuda")]

use stillflow::cuda::attention::{attention_from_saved, attention_with_lse};
use stillflow::cuda::device_count;
use tch::{Device, Kind, Tensor};

const DEV: Device = Device::Cuda(0);

/// [B, heads, L, d] as a transposed view of [B, L, heads, d] memory, the layout the model feeds.
fn heads(b: i64, l: i64, h: i64, d: i64, phase: f64, kind: Kind) -> Tensor {
    let n = b * l * h * d;
    (Tensor::arange(n, (Kind::Double, DEV)) * 0.37 + phase)
        .sin()
        .view([b, l, h, d])
        .to_kind(kind)
        .transpose(1, 2)
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Float);
    let b = b.to_kind(Kind::Float);
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-30)
}

fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, None::<&Tensor>, 0.0, false, None::<f64>, false)
}

/// Gradients of q, k, v for loss = Σ attn(q, k, v)·w, with `attn` building the graph.
fn grads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> (Tensor, [Tensor; 3]) {
    let (q, k, v) = (
        q.detach().set_requires_grad(true),
        k.detach().set_requires_grad(true),
        v.detach().set_requires_grad(true),
    );
    let y = attn(&q, &k, &v);
    let w = Tensor::arange(y.numel() as i64, (Kind::Float, DEV))
        .view(y.size().as_slice())
        .cos();
    (y.to_kind(Kind::Float) * w).sum(Kind::Float).backward();
    (y.detach(), [q.grad(), k.grad(), v.grad()])
}

/// `must`: SDPA is expected to pick a fused kernel with a log-sum-exp for this kind (bf16 on
/// H100); otherwise a decline (plain SDPA fallback) is reported and accepted.
fn check(kind: Kind, lq: i64, lk: i64, tol: f64, must: bool) {
    assert!(
        tch::Cuda::is_available() && device_count() > 0,
        "no CUDA device"
    );
    let (b, h, d) = (1, 12, 128);
    let q = heads(b, lq, h, d, 0.1, kind);
    let k = heads(b, lk, h, d, 0.7, kind);
    let v = heads(b, lk, h, d, 1.3, kind);
    let kept = tch::no_grad(|| attention_with_lse(&q, &k, &v)).expect("attention_with_lse");
    let Some((out, saved)) = kept else {
        assert!(
            !must,
            "{kind:?}: no fused kernel with a log-sum-exp (SDPA picks math?)"
        );
        println!("{kind:?} q {lq} k {lk}: declined (SDPA would use math): plain fallback");
        return;
    };
    println!("{kind:?} q {lq} k {lk}: kept by `{}`", saved.backend());
    let plain = tch::no_grad(|| sdpa(&q, &k, &v));
    let e = rel(&out, &plain);
    assert!(e <= tol, "kept forward differs from SDPA by {e}");

    let (y_ref, g_ref) = grads(&q, &k, &v, sdpa);
    let (y, g) = grads(&q, &k, &v, |q, k, v| {
        attention_from_saved(q, k, v, &saved).expect("attention_from_saved")
    });
    assert_eq!(rel(&y, &out), 0.0, "the replay returns the kept output");
    assert!(rel(&y, &y_ref) <= tol);
    for (name, (a, r)) in ["dq", "dk", "dv"].iter().zip(g.iter().zip(&g_ref)) {
        assert!(r.abs().max().double_value(&[]) > 0.0, "{name} is zero");
        let e = rel(a, r);
        println!("  {name}: rel diff {e:.2e}");
        assert!(e <= tol, "{name} differs from SDPA's backward by {e}");
    }
}

#[test]
fn kept_attention_bf16_matches_sdpa() {
    check(Kind::BFloat16, 1560, 1560, 2e-2, true);
    check(Kind::BFloat16, 1560, 4680, 2e-2, true);
}

#[test]
fn kept_attention_f32_matches_sdpa() {
    check(Kind::Float, 780, 780, 1e-4, false);
    check(Kind::Float, 780, 2340, 1e-4, false);
}
