//! One Wan transformer block, as a function of owned (shallow-cloned) parameters so that it can be
//! run through `crate::cuda::checkpoint` (activation checkpointing: the closure must be
//! `Send + 'static` and is re-run in backward).
//!
//! Precision: every large elementwise op runs in the compute kind (bf16 on GPU) with ATen's f32
//! opmath inside the kernel, so each op reads/writes bf16 once: `layer_norm` / `rms_norm` (f32
//! statistics), `addcmul` for `LN(x)·(1+scale)+shift` and `x + y·gate`, RoPE with cos/sin tables in
//! the compute kind. The per-frame modulation terms are formed in f32 (`modulation + e0`, `1+scale`)
//! and rounded once to the compute kind. In f32 (CPU tests) this is the exact f32 computation.

use super::rope::apply_rope_interleaved;
use crate::cuda::attention::AttentionStash;
use crate::cuda::checkpoint;
use tch::{Kind, Tensor};

pub(crate) struct Lin {
    pub w: Tensor,
    pub b: Tensor,
}

impl Lin {
    /// In the weights' kind (the input is cast).
    pub fn fwd(&self, x: &Tensor) -> Tensor {
        x.to_kind(self.w.kind()).linear(&self.w, Some(&self.b))
    }
    /// In float32 whatever the weights' kind (Wan's autocast(float32) regions).
    pub fn fwd_f32(&self, x: &Tensor) -> Tensor {
        x.to_kind(Kind::Float).linear(
            &self.w.to_kind(Kind::Float),
            Some(&self.b.to_kind(Kind::Float)),
        )
    }
    fn share(&self) -> Lin {
        Lin {
            w: self.w.shallow_clone(),
            b: self.b.shallow_clone(),
        }
    }
}

thread_local! {
    static CKPT_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static SELF_SDPA_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many block self-attentions were computed by plain SDPA on this thread (forwards and
/// recomputations; kept and replayed ones are counted by
/// `crate::cuda::attention::kept_attention_counts` instead). For tests and diagnostics.
pub fn self_attention_sdpa_calls() -> usize {
    SELF_SDPA_CALLS.with(|c| c.get())
}

/// How many times a checkpointed block body ran on this thread (forward runs and backward
/// recomputations; on CPU backward runs on the calling thread). For tests and diagnostics.
pub fn checkpointed_block_calls() -> usize {
    CKPT_CALLS.with(|c| c.get())
}

/// Whether autograd records operations right now (tch has no getter; a 0-d CPU leaf tells).
pub(crate) fn grad_enabled() -> bool {
    let leaf = Tensor::zeros([], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    (&leaf * 1.0).requires_grad()
}

pub(crate) struct Attn {
    pub q: Lin,
    pub k: Lin,
    pub v: Lin,
    pub o: Lin,
    pub norm_q: Tensor,
    pub norm_k: Tensor,
}

impl Attn {
    fn share(&self) -> Attn {
        Attn {
            q: self.q.share(),
            k: self.k.share(),
            v: self.v.share(),
            o: self.o.share(),
            norm_q: self.norm_q.shallow_clone(),
            norm_k: self.norm_k.shallow_clone(),
        }
    }
    fn tensors(&self) -> [&Tensor; 10] {
        [
            &self.q.w,
            &self.q.b,
            &self.k.w,
            &self.k.b,
            &self.v.w,
            &self.v.b,
            &self.o.w,
            &self.o.b,
            &self.norm_q,
            &self.norm_k,
        ]
    }
}

pub(crate) struct Block {
    pub self_attn: Attn,
    pub cross_attn: Attn,
    pub norm3_w: Tensor,
    pub norm3_b: Tensor,
    pub ffn0: Lin,
    pub ffn2: Lin,
    pub modulation: Tensor,
}

/// Sizes a block needs (copied into checkpointed closures).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockHp {
    pub dim: i64,
    pub heads: i64,
    pub head_dim: i64,
    pub eps: f64,
    /// [B, F, tokens per frame] of the query tokens.
    pub shape: [i64; 3],
}

/// Where the block's self-attention finds keys besides the current tokens.
pub(crate) enum SelfKeys {
    /// Bidirectional over the current tokens.
    Full,
    /// Current tokens with a boolean mask [N, N] (true = attend).
    Mask(Tensor),
    /// [sg(past); current] by concatenation (past: [B, heads, P, d] views, detached).
    Concat(Tensor, Tensor),
    /// Preallocated cache buffers [B, cap, heads, d]: the current K/V are written at token
    /// `at`, and attention runs over tokens [from, at + n) of the buffer (no-grad only).
    Buffer {
        k: Tensor,
        v: Tensor,
        from: i64,
        at: i64,
    },
}

impl Block {
    pub(crate) fn share(&self) -> Block {
        Block {
            self_attn: self.self_attn.share(),
            cross_attn: self.cross_attn.share(),
            norm3_w: self.norm3_w.shallow_clone(),
            norm3_b: self.norm3_b.shallow_clone(),
            ffn0: self.ffn0.share(),
            ffn2: self.ffn2.share(),
            modulation: self.modulation.shallow_clone(),
        }
    }

    fn any_requires_grad(&self) -> bool {
        let mut all: Vec<&Tensor> = vec![
            &self.norm3_w,
            &self.norm3_b,
            &self.ffn0.w,
            &self.ffn0.b,
            &self.ffn2.w,
            &self.ffn2.b,
            &self.modulation,
        ];
        all.extend(self.self_attn.tensors());
        all.extend(self.cross_attn.tensors());
        all.iter().any(|t| t.requires_grad())
    }

    /// x [B, N, dim] (compute kind), e0 [B, F, 6, dim] f32, RoPE tables [N, 1, d] (compute kind),
    /// cross K/V [B, heads, L, d]. Returns (x_out, k_cur, v_cur) with k/v [B, N, heads, d] as fed
    /// to attention (post-norm, post-RoPE), for the cache. `stash` (checkpointed bodies with
    /// `checkpoint_keep_attention`) keeps or replays the unmasked self-attention.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        hp: &BlockHp,
        x: &Tensor,
        e0: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        ck: &Tensor,
        cv: &Tensor,
        keys: &SelfKeys,
        stash: Option<&AttentionStash>,
    ) -> (Tensor, Tensor, Tensor) {
        let kind = self.modulation.kind();
        let d = hp.dim;
        let [b, f, tpf] = hp.shape;
        let n = f * tpf;
        let per_frame = [b, f, tpf, d];
        let heads = |t: &Tensor| t.view([b, -1, hp.heads, hp.head_dim]);
        // m = modulation + e0 in f32, then [shift, 1+scale, gate] ×2 rounded once to the kind.
        let m = (self.modulation.to_kind(Kind::Float).unsqueeze(0) + e0).unsqueeze(3);
        let term = |j: i64, plus_one: bool| {
            let t = m.select(2, j);
            let t = if plus_one { t + 1.0 } else { t };
            t.to_kind(kind)
        };
        let modln = |x: &Tensor, shift: &Tensor, scale1: &Tensor| -> Tensor {
            let xn =
                x.view(per_frame)
                    .layer_norm([d], None::<&Tensor>, None::<&Tensor>, hp.eps, true);
            shift.addcmul(&xn, scale1).view([b, n, d])
        };
        let residual = |x: &Tensor, y: &Tensor, gate: &Tensor| -> Tensor {
            x.view(per_frame)
                .addcmul(&y.view(per_frame), gate)
                .view([b, n, d])
        };
        let rms = |t: &Tensor, w: &Tensor| t.rms_norm([d], Some(w), hp.eps);

        // Self-attention: RMSNorm over the full dim on q and k, RoPE, SDPA.
        let a = &self.self_attn;
        let xn = modln(x, &term(0, false), &term(1, true));
        let q = apply_rope_interleaved(&heads(&rms(&a.q.fwd(&xn), &a.norm_q)), cos, sin);
        let k = apply_rope_interleaved(&heads(&rms(&a.k.fwd(&xn), &a.norm_k)), cos, sin);
        let v = heads(&a.v.fwd(&xn));
        let (qt, kt, vt) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
        let y = match keys {
            SelfKeys::Full => self_attention(stash, &qt, &kt, &vt),
            // Masked attention is never kept: a recomputation runs it again.
            SelfKeys::Mask(mask) => self_sdpa(&qt, &kt, &vt, Some(mask)),
            SelfKeys::Concat(pk, pv) => self_attention(
                stash,
                &qt,
                &Tensor::cat(&[pk, &kt], 2),
                &Tensor::cat(&[pv, &vt], 2),
            ),
            SelfKeys::Buffer {
                k: kb,
                v: vb,
                from,
                at,
            } => {
                kb.narrow(1, *at, n).copy_(&k);
                vb.narrow(1, *at, n).copy_(&v);
                let len = at + n - from;
                self_sdpa(
                    &qt,
                    &kb.narrow(1, *from, len).transpose(1, 2),
                    &vb.narrow(1, *from, len).transpose(1, 2),
                    None,
                )
            }
        };
        let y = a.o.fwd(&y.transpose(1, 2).reshape([b, n, d]));
        let x = residual(x, &y, &term(2, false));

        // Cross-attention on the affine-LN'd x (norm3), no modulation, no gate.
        let c = &self.cross_attn;
        let xn = x.layer_norm([d], Some(&self.norm3_w), Some(&self.norm3_b), hp.eps, true);
        let q = heads(&rms(&c.q.fwd(&xn), &c.norm_q)).transpose(1, 2);
        let y = sdpa(&q, ck, cv, None);
        // Out of place on purpose: `x +=` would mutate a tensor saved for backward.
        let x = x.g_add(&c.o.fwd(&y.transpose(1, 2).reshape([b, n, d])));

        // FFN: Linear → GELU(tanh) → Linear.
        let xn = modln(&x, &term(3, false), &term(4, true));
        let y = self.ffn2.fwd(&self.ffn0.fwd(&xn).gelu("tanh"));
        (residual(&x, &y, &term(5, false)), k, v)
    }

    /// `forward`, run through activation checkpointing when `ckpt` is set, autograd is recording
    /// and something needs a gradient (input, e0, cross K/V or this block's parameters). Only x,
    /// e0 and the cross K/V are checkpoint inputs (their gradients flow on); the past K/V and masks
    /// are detached constants, parameters are captured (gradients accumulate into `.grad`).
    /// The returned k/v are detached when checkpointed (they only feed the cache).
    /// `keep_attention` (selective checkpointing): the forward keeps the unmasked self-attention's
    /// output and log-sum-exp, and the recomputation reuses them instead of running attention.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_maybe_ckpt(
        &self,
        ckpt: bool,
        keep_attention: bool,
        hp: &BlockHp,
        x: &Tensor,
        e0: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        ck: &Tensor,
        cv: &Tensor,
        keys: SelfKeys,
    ) -> (Tensor, Tensor, Tensor) {
        let needs = ckpt
            && !matches!(keys, SelfKeys::Buffer { .. })
            && grad_enabled()
            && (x.requires_grad()
                || e0.requires_grad()
                || ck.requires_grad()
                || cv.requires_grad()
                || self.any_requires_grad());
        if !needs {
            return self.forward(hp, x, e0, cos, sin, ck, cv, &keys, None);
        }
        let blk = self.share();
        let hp = *hp;
        let (cos, sin) = (cos.shallow_clone(), sin.shallow_clone());
        // Owned by the closure, hence by this checkpoint's autograd node: freed with its graph.
        let stash = keep_attention.then(AttentionStash::new);
        let f = move |ins: &[Tensor]| -> Vec<Tensor> {
            CKPT_CALLS.with(|c| c.set(c.get() + 1));
            if let Some(s) = &stash {
                s.begin_run();
            }
            let (x, k, v) = blk.forward(
                &hp,
                &ins[0],
                &ins[1],
                &cos,
                &sin,
                &ins[2],
                &ins[3],
                &keys,
                stash.as_ref(),
            );
            vec![x, k, v]
        };
        let outs = checkpoint(
            f,
            &[
                x.shallow_clone(),
                e0.shallow_clone(),
                ck.shallow_clone(),
                cv.shallow_clone(),
            ],
        );
        let mut it = outs.into_iter();
        let (x, k, v) = (
            it.next().expect("checkpoint output x"),
            it.next().expect("checkpoint output k"),
            it.next().expect("checkpoint output v"),
        );
        (x, k.detach(), v.detach())
    }
}

/// Unmasked self-attention: kept or replayed through `stash` where it can be, else plain SDPA.
fn self_attention(stash: Option<&AttentionStash>, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    if let Some(s) = stash {
        // A failing attention kernel panics like any tch op would; the checkpoint turns the panic
        // of its closure into an error.
        match s.attend(q, k, v) {
            Ok(Some(y)) => return y,
            Ok(None) => {}
            Err(e) => panic!("{e:#}"),
        }
    }
    self_sdpa(q, k, v, None)
}

/// `sdpa` for a block's self-attention (counted).
fn self_sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    SELF_SDPA_CALLS.with(|c| c.set(c.get() + 1));
    sdpa(q, k, v, mask)
}

/// SDPA over [B, heads, N, d] tensors.
pub(crate) fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, false, None::<f64>, false)
}
