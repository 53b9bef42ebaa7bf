//! Gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_(params, max_norm)` (L2).
//!
//! torch computes one L2 norm per gradient (`linalg.vector_norm`; its CPU `_foreach_norm` is the same
//! per-tensor kernel), the L2 norm of the stacked norms, then multiplies every gradient by
//! `clamp(max_norm / (norm + 1e-6), max = 1)` as an f32 0-dim tensor. We do the same tensor
//! operations, so clipped gradients match bit for bit on CPU. One deliberate difference: with a
//! non-finite norm torch still multiplies (turning every gradient into NaN or zero); here the norm
//! is returned unchanged and no scaling is applied, so the caller's NaN guard decides what to do.

use anyhow::Result;
use tch::{Device, Tensor};

/// Total L2 norm of all defined gradients, as an f32 0-dim tensor on the first gradient's device
/// (None when no parameter has a gradient).
fn total_norm_tensor<'a, I>(params: I) -> Result<Option<Tensor>>
where
    I: IntoIterator<Item = &'a Tensor>,
{
    let mut norms = Vec::new();
    let mut first: Option<Device> = None;
    for p in params {
        let g = p.grad();
        if !g.defined() {
            continue;
        }
        let dev = *first.get_or_insert(g.device());
        norms.push(g.f_norm()?.f_to_device(dev)?);
    }
    if norms.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tensor::f_stack(&norms, 0)?.f_norm()?))
}

/// The total L2 norm of explicit gradient tensors (any float kind; each norm is taken in f32), as
/// torch's `clip_grad_norm_` computes it: the norm of the per-tensor norms. Undefined tensors are
/// skipped; 0 when there are none.
pub fn grads_total_norm(grads: &[Tensor]) -> Result<f64> {
    let mut norms = Vec::new();
    let mut first: Option<Device> = None;
    for g in grads.iter().filter(|g| g.defined()) {
        let dev = *first.get_or_insert(g.device());
        norms.push(g.f_to_kind(tch::Kind::Float)?.f_norm()?.f_to_device(dev)?);
    }
    if norms.is_empty() {
        return Ok(0.0);
    }
    Ok(Tensor::f_stack(&norms, 0)?.f_norm()?.f_double_value(&[])?)
}

/// The total L2 norm of the gradients (0 when there are none), without modifying them.
pub fn total_grad_norm<'a, I>(params: I) -> Result<f64>
where
    I: IntoIterator<Item = &'a Tensor>,
{
    Ok(match total_norm_tensor(params)? {
        Some(n) => n.f_double_value(&[])?,
        None => 0.0,
    })
}

/// Clips the gradients of `params` in place to a total L2 norm of at most `max_norm` and returns
/// the norm *before* clipping. A non-finite norm is returned as is and nothing is scaled.
pub fn clip_grad_norm<'a, I>(params: I, max_norm: f64) -> Result<f64>
where
    I: IntoIterator<Item = &'a Tensor>,
{
    let params: Vec<&Tensor> = params.into_iter().collect();
    let Some(total) = total_norm_tensor(params.iter().copied())? else {
        return Ok(0.0);
    };
    let norm = total.f_double_value(&[])?;
    if !norm.is_finite() || norm <= max_norm {
        // torch multiplies by clamp(coef, max=1) = 1 here, which changes nothing.
        return Ok(norm);
    }
    let coef = total
        .f_add_scalar(1e-6)?
        .f_reciprocal()?
        .f_mul_scalar(max_norm)?;
    tch::no_grad(|| -> Result<()> {
        let coef = coef.f_clamp_max(1.0)?;
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let c = coef.f_to_device(g.device())?;
                let _ = g.f_mul_(&c)?;
            }
        }
        Ok(())
    })?;
    Ok(norm)
}
