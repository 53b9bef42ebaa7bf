//! Activation checkpointing of Wan blocks: same outputs and same gradients (parameters, input,
//! cond) with and without `checkpoint_blocks`, for the bidirectional forward and the causal GRAD
//! pass over a KV cache; selective checkpointing (`checkpoint_keep_attention`) replays the kept
//! self-attention instead of recomputing it, except for masked attention.

use stillflow::cuda::attention::kept_attention_counts;
use stillflow::models::wan::{
    build_random, checkpointed_block_calls, self_attention_sdpa_calls, CausalMode, KvCache,
    WanConfig, WanModel,
};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn model() -> (VarStore, WanModel) {
    // head_dim 12 (dim 24, 2 heads): uneven RoPE split 4/4/4 → exercises every path.
    let cfg = WanConfig::tiny(24, 2, 2, 40, 4, 8);
    let (vs, m) = build_random(cfg, Device::Cpu, Kind::Float, 7).unwrap();
    // Wan's init zeroes the head weight; give it values so gradients reach every block.
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if name.starts_with("head.head") {
                tch::manual_seed(3);
                v.copy_(&(Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.1));
            }
        }
    });
    (vs, m)
}

fn inputs(f: i64) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(11);
    let x = Tensor::randn([2, f, 4, 4, 6], (Kind::Float, Device::Cpu));
    let t = Tensor::rand([2, f], (Kind::Float, Device::Cpu)) * 1000.0;
    let c = Tensor::randn([2, 5, 8], (Kind::Float, Device::Cpu));
    (x, t, c)
}

fn max_abs_rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).abs().max().double_value(&[]);
    d / b.abs().max().double_value(&[]).max(1e-30)
}

/// Runs `f` (which builds a loss), backpropagates with a plain `backward()`, and returns the
/// output, the gradients of x and cond, and every parameter gradient by name.
fn grads(
    vs: &VarStore,
    f: impl FnOnce(&Tensor, &Tensor) -> Tensor,
    x: &Tensor,
    c: &Tensor,
) -> (Tensor, Tensor, Tensor, Vec<(String, Tensor)>) {
    for (_, mut v) in vs.variables() {
        v.zero_grad();
    }
    let xg = x.detach().set_requires_grad(true);
    let cg = c.detach().set_requires_grad(true);
    let out = f(&xg, &cg);
    // A non-uniform upstream gradient (sum of squares weighted by a fixed pattern).
    let w = Tensor::arange(out.numel() as i64, (Kind::Float, Device::Cpu))
        .view(out.size().as_slice())
        .sin();
    (&out * &out * w).sum(Kind::Float).backward();
    let mut ps: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, v)| (n, v.grad().copy()))
        .collect();
    ps.sort_by(|a, b| a.0.cmp(&b.0));
    (out.detach(), xg.grad().copy(), cg.grad().copy(), ps)
}

fn compare(
    a: &(Tensor, Tensor, Tensor, Vec<(String, Tensor)>),
    b: &(Tensor, Tensor, Tensor, Vec<(String, Tensor)>),
) {
    let e = max_abs_rel(&a.0, &b.0);
    assert!(e <= 1e-6, "outputs differ: {e}");
    let e = max_abs_rel(&a.1, &b.1);
    assert!(e <= 1e-5, "x grads differ: {e}");
    assert!(a.1.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    let e = max_abs_rel(&a.2, &b.2);
    assert!(e <= 1e-5, "cond grads differ: {e}");
    assert!(a.2.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert_eq!(a.3.len(), b.3.len());
    let mut nonzero = 0;
    for ((na, ga), (nb, gb)) in a.3.iter().zip(&b.3) {
        assert_eq!(na, nb);
        assert!(ga.defined() && gb.defined(), "{na}: gradient missing");
        let s = ga.abs().sum(Kind::Float).double_value(&[]);
        if s > 0.0 {
            nonzero += 1;
            let e = max_abs_rel(ga, gb);
            assert!(e <= 1e-5, "{na}: grads differ by {e}");
        } else {
            assert_eq!(gb.abs().sum(Kind::Float).double_value(&[]), 0.0, "{na}");
        }
    }
    // Every block parameter gets a gradient (modulation, attention, FFN, norms).
    assert!(
        nonzero >= a.3.len() - 2,
        "{nonzero} of {} nonzero",
        a.3.len()
    );
}

#[test]
fn checkpointed_bidirectional_forward_has_identical_values_and_gradients() {
    let (vs, mut m) = model();
    let (x, t, c) = inputs(3);
    m.checkpoint_blocks = false;
    let n0 = checkpointed_block_calls();
    let plain = grads(&vs, |x, c| m.forward(x, &t, c), &x, &c);
    assert_eq!(checkpointed_block_calls(), n0, "no checkpointing when off");
    m.checkpoint_blocks = true;
    let ck = grads(&vs, |x, c| m.forward(x, &t, c), &x, &c);
    // Each of the 2 blocks ran once in forward and once more (recomputed) in backward.
    assert_eq!(checkpointed_block_calls(), n0 + 4);
    compare(&ck, &plain);
}

#[test]
fn checkpointed_causal_grad_pass_has_identical_values_and_gradients() {
    let (vs, mut m) = model();
    m.causal.num_frame_per_block = 2;
    let (x, t, c) = inputs(4);
    let run = |m: &WanModel, xg: &Tensor, cg: &Tensor| {
        // Context pass for frames 0..2 (no graph), then the exit step of frames 2..4 with grad.
        let mut cache = KvCache::new(2);
        let _ = m.forward_causal(
            &x.narrow(1, 0, 2),
            &t.narrow(1, 0, 2),
            cg,
            &mut cache,
            0,
            CausalMode::CONTEXT,
        );
        m.forward_causal(
            &xg.narrow(1, 2, 2),
            &t.narrow(1, 2, 2),
            cg,
            &mut cache,
            2,
            CausalMode::GRAD,
        )
    };
    m.checkpoint_blocks = false;
    let plain = grads(&vs, |xg, cg| run(&m, xg, cg), &x, &c);
    m.checkpoint_blocks = true;
    assert!(
        m.checkpoint_keep_attention,
        "selective checkpointing is the default"
    );
    let n0 = checkpointed_block_calls();
    let a0 = attention_counts();
    let ck = grads(&vs, |xg, cg| run(&m, xg, cg), &x, &c);
    // The no-grad context pass is not checkpointed; the GRAD pass is (forward + recompute).
    assert_eq!(checkpointed_block_calls(), n0 + 4);
    // The context pass computes attention by SDPA (one per block); the GRAD pass over
    // [past; current] keys keeps it once per block and replays it in backward.
    assert_eq!(counts_since(a0), [2, 2, 2]);
    compare(&ck, &plain);
    // Only the current block's frames receive a gradient (the past is detached).
    assert_eq!(
        ck.1.narrow(1, 0, 2)
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
}

#[test]
fn checkpointing_is_skipped_without_grad_and_frozen_inputs() {
    // No graph (no_grad) or nothing requiring grad: identical outputs, no checkpoint node.
    let (vs, mut m) = model();
    let (x, t, c) = inputs(3);
    m.checkpoint_blocks = true;
    let n0 = checkpointed_block_calls();
    let a = tch::no_grad(|| m.forward(&x, &t, &c));
    assert_eq!(checkpointed_block_calls(), n0);
    m.checkpoint_blocks = false;
    let b = tch::no_grad(|| m.forward(&x, &t, &c));
    assert!(max_abs_rel(&a, &b) <= 1e-7);
    let mut vs = vs;
    vs.freeze();
    m.checkpoint_blocks = true;
    let n0 = checkpointed_block_calls();
    let o = m.forward(&x, &t, &c);
    assert!(!o.requires_grad());
    assert_eq!(checkpointed_block_calls(), n0);
}

/// (plain self-attention SDPA calls, kept attention forwards, replayed ones) on this thread.
fn attention_counts() -> [usize; 3] {
    let (kept, replayed) = kept_attention_counts();
    [self_attention_sdpa_calls(), kept, replayed]
}

fn counts_since(before: [usize; 3]) -> [usize; 3] {
    let now = attention_counts();
    [0, 1, 2].map(|i| now[i] - before[i])
}

#[test]
fn kept_self_attention_is_replayed_not_recomputed_with_identical_gradients() {
    let (vs, mut m) = model();
    let (x, t, c) = inputs(3);
    let fwd = |m: &WanModel, xg: &Tensor, cg: &Tensor| m.forward(xg, &t, cg);
    m.checkpoint_blocks = false;
    let n0 = attention_counts();
    let plain = grads(&vs, |xg, cg| fwd(&m, xg, cg), &x, &c);
    assert_eq!(
        counts_since(n0),
        [2, 0, 0],
        "no checkpoint: one SDPA per block"
    );

    m.checkpoint_blocks = true;
    m.checkpoint_keep_attention = false;
    let n0 = attention_counts();
    let recomputed = grads(&vs, |xg, cg| fwd(&m, xg, cg), &x, &c);
    assert_eq!(
        counts_since(n0),
        [4, 0, 0],
        "plain checkpointing recomputes attention"
    );

    m.checkpoint_keep_attention = true;
    let n0 = attention_counts();
    let b0 = checkpointed_block_calls();
    let kept = grads(&vs, |xg, cg| fwd(&m, xg, cg), &x, &c);
    // Both blocks' bodies ran twice, but attention ran only in the forward: the recomputation
    // replayed the kept output (its backward ran from the recomputed q, k, v and the kept lse).
    assert_eq!(checkpointed_block_calls(), b0 + 4);
    assert_eq!(
        counts_since(n0),
        [0, 2, 2],
        "attention kept in forward, replayed in backward"
    );
    compare(&kept, &plain);
    compare(&kept, &recomputed);
}

#[test]
fn masked_self_attention_falls_back_to_recomputation() {
    let (vs, mut m) = model();
    m.causal.num_frame_per_block = 1;
    let (x, t, c) = inputs(3);
    let fwd = |m: &WanModel, xg: &Tensor, cg: &Tensor| m.forward_full_causal(xg, &t, cg);
    m.checkpoint_blocks = false;
    let plain = grads(&vs, |xg, cg| fwd(&m, xg, cg), &x, &c);
    m.checkpoint_blocks = true;
    m.checkpoint_keep_attention = true;
    let n0 = attention_counts();
    let kept = grads(&vs, |xg, cg| fwd(&m, xg, cg), &x, &c);
    // Block-causal mask: nothing kept, attention computed in forward and again in backward.
    assert_eq!(counts_since(n0), [4, 0, 0]);
    compare(&kept, &plain);
}
