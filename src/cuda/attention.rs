//! Selective activation checkpointing of attention: keep an attention forward's output and
//! log-sum-exp so that a checkpoint's recomputation need not run attention again
//! (csrc/shim_attn.cpp, docs/CUDA.md).
//!
//! * [`attention_with_lse`]: unmasked SDPA through the fused kernel SDPA itself would pick (cuDNN on
//!   H100, flash on CPU), returning the output and a [`SavedAttention`] (output, lse, kernel state).
//! * [`attention_from_saved`]: the saved output as an autograd node over the recomputed q, k, v; its
//!   backward is the kernel's attention backward. No attention forward runs.
//! * [`AttentionStash`]: what one checkpoint call keeps between its forward and its recomputation.
//!   It belongs to the checkpointed closure, so it lives exactly as long as that call's graph and
//!   never mixes with other checkpoints (other blocks, other actor threads).
use super::ffi;
use anyhow::{bail, Result};
use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Mutex;
use tch::Tensor;
use torch_sys::C_tensor;

thread_local! {
    static KEPT: Cell<usize> = const { Cell::new(0) };
    static REPLAYED: Cell<usize> = const { Cell::new(0) };
}

/// (attention forwards kept by a stash, kept forwards replayed instead of recomputed) on this
/// thread. On CPU a checkpoint's recomputation runs on the thread that calls `backward`. For tests
/// and diagnostics.
pub fn kept_attention_counts() -> (usize, usize) {
    (KEPT.with(Cell::get), REPLAYED.with(Cell::get))
}

fn bump(c: &'static std::thread::LocalKey<Cell<usize>>) {
    c.with(|c| c.set(c.get() + 1));
}

/// One attention forward's output, log-sum-exp and kernel state (a C++ object owned here).
pub struct SavedAttention(NonNull<c_void>);

// SAFETY: the C++ object holds only at::Tensors and integers; tensors may be used and released on
// any thread (the same guarantee tch's `Tensor: Send` relies on). It is never shared: `&self`
// methods only read it.
unsafe impl Send for SavedAttention {}

impl SavedAttention {
    /// The fused kernel that produced it: `flash` (also the CPU kernel), `cudnn` or `efficient`.
    pub fn backend(&self) -> &'static str {
        // SAFETY: the pointer is live until drop; the shim only reads an integer.
        let b = unsafe { ffi::sf_saved_attention_backend(self.0.as_ptr()) };
        // at::SDPBackend: 1 flash, 2 efficient, 3 cudnn (the CPU kernel is SDPA's CPU flash).
        match b {
            1 => "flash",
            2 => "efficient",
            3 => "cudnn",
            _ => "unknown",
        }
    }
}

impl Drop for SavedAttention {
    fn drop(&mut self) {
        // SAFETY: the pointer came from sf_attention_fwd_lse and is freed only here.
        unsafe { ffi::sf_saved_attention_free(self.0.as_ptr()) };
    }
}

/// Unmasked, non-causal SDPA (default scale) over [B, heads, L, d] with its log-sum-exp kept.
/// `Ok(None)` when SDPA would not use a fused kernel with a log-sum-exp for these inputs (math
/// fallback, unsupported device): the caller runs plain SDPA.
pub fn attention_with_lse(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<Option<(Tensor, SavedAttention)>> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut saved: *mut c_void = std::ptr::null_mut();
    // SAFETY: q, k, v are live tensors for the call; out/saved are written only on rc == 0.
    let rc = unsafe {
        ffi::sf_attention_fwd_lse(q.as_ptr(), k.as_ptr(), v.as_ptr(), &mut out, &mut saved)
    };
    if rc == 1 {
        return Ok(None);
    }
    ffi::check(rc, "attention_with_lse")?;
    let Some(saved) = NonNull::new(saved) else {
        bail!("attention_with_lse: the shim returned no saved state");
    };
    let saved = SavedAttention(saved);
    if out.is_null() {
        bail!("attention_with_lse: the shim returned no output");
    }
    // SAFETY: `out` is a new owned at::Tensor* (freed by tch's at_free when dropped).
    Ok(Some((unsafe { Tensor::from_ptr(out) }, saved)))
}

/// The saved output as a differentiable function of q, k, v (which must equal the inputs of the
/// kept forward): forward returns the saved output, backward runs the attention backward.
pub fn attention_from_saved(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    saved: &SavedAttention,
) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: all pointers are live for the call; the shim copies what it keeps from `saved`.
    let rc = unsafe {
        ffi::sf_attention_from_saved(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            saved.0.as_ptr(),
            &mut out,
        )
    };
    ffi::check(rc, "attention_from_saved")?;
    if out.is_null() {
        bail!("attention_from_saved: the shim returned no output");
    }
    // SAFETY: `out` is a new owned at::Tensor*.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// The attention results of one checkpointed call. The first run of the closure (the checkpoint's
/// no-grad forward) records, in call order; every later run (the recomputation in backward)
/// replays them in the same order, each at most once, so the kept tensors are released as soon as
/// the recomputed graph that uses them is. A call with nothing left to replay (a second backward
/// through a retained graph, or a forward where no fused kernel fitted) computes attention.
#[derive(Default)]
pub struct AttentionStash {
    state: Mutex<StashState>,
}

#[derive(Default)]
struct StashState {
    runs: usize,
    /// One slot per attention call of the first run (`None`: no fused kernel fitted), so the
    /// replay stays aligned with the calls.
    kept: VecDeque<Option<SavedAttention>>,
}

impl AttentionStash {
    pub fn new() -> AttentionStash {
        AttentionStash::default()
    }

    /// Marks the start of one run of the checkpointed closure.
    pub fn begin_run(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.runs += 1;
    }

    /// Unmasked attention for the current run: kept (first run), replayed (later runs), or
    /// `Ok(None)` when the caller must compute it with plain SDPA.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.runs <= 1 {
            // The checkpoint's forward runs under no-grad, so the output needs no graph here.
            let Some((out, saved)) = attention_with_lse(q, k, v)? else {
                s.kept.push_back(None);
                return Ok(None);
            };
            s.kept.push_back(Some(saved));
            bump(&KEPT);
            return Ok(Some(out));
        }
        let Some(Some(saved)) = s.kept.pop_front() else {
            return Ok(None);
        };
        let out = attention_from_saved(q, k, v, &saved)?;
        bump(&REPLAYED);
        Ok(Some(out))
    }
}
