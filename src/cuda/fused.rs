//! ATen's fused AdamW (`_fused_adamw_`) through the shim: one multi-tensor kernel pass over
//! parameters, gradients and both moments, where the per-op update reads and writes them ~25 times.

use super::ffi;
use anyhow::{ensure, Result};
use tch::Tensor;
use torch_sys::C_tensor;

/// Hyper-parameters of one fused AdamW call (torch's names).
#[derive(Clone, Copy, Debug)]
pub struct FusedAdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// Updates `params`, `exp_avgs`, `exp_avg_sqs` in place from `grads` (all lists of equal length,
/// element i of the same shape, kind and device). `step`: the step count after this update (every
/// parameter must be at the same count). `grad_scale`: every gradient is divided by it first (the
/// kernel writes the divided gradient back into `grads`).
pub fn fused_adamw(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step: u64,
    hp: FusedAdamW,
    grad_scale: Option<f64>,
) -> Result<()> {
    let n = params.len();
    ensure!(
        grads.len() == n && exp_avgs.len() == n && exp_avg_sqs.len() == n,
        "fused AdamW: list lengths differ ({n}, {}, {}, {})",
        grads.len(),
        exp_avgs.len(),
        exp_avg_sqs.len()
    );
    let Some(first) = params.first() else {
        return Ok(());
    };
    for (i, p) in params.iter().enumerate() {
        for t in [&grads[i], &exp_avgs[i], &exp_avg_sqs[i]] {
            ensure!(
                t.size() == p.size() && t.kind() == p.kind() && t.device() == p.device(),
                "fused AdamW: tensor {i} is {:?} {:?} on {:?}, parameter {:?} {:?} on {:?}",
                t.kind(),
                t.size(),
                t.device(),
                p.kind(),
                p.size(),
                p.device()
            );
        }
    }
    let opts = (tch::Kind::Float, first.device());
    let step_t = Tensor::f_scalar_tensor(step as f64, opts)?;
    let scale_t = grad_scale
        .map(|s| Tensor::f_scalar_tensor(s, opts))
        .transpose()?;
    let ptrs = |ts: &[Tensor]| -> Vec<*mut C_tensor> {
        ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
    };
    let (p, g, m, v) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs));
    let scale_ptr = scale_t.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    // SAFETY: every pointer is a live tensor borrowed for the call (the vectors and `step_t` /
    // `scale_t` outlive it); lengths were checked above; the shim mutates only the tensors' data.
    let rc = unsafe {
        ffi::sf_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n as i64,
            step_t.as_ptr(),
            hp.lr,
            hp.beta1,
            hp.beta2,
            hp.weight_decay,
            hp.eps,
            scale_ptr,
        )
    };
    ffi::check(rc, "fused AdamW")
}
