//! Classifier-free guidance as the reference writes it (spec §4.1):
//! r = r_c + (r_c − r_u)·g with g = `guidance_scale`.
//!
//! Convention: this equals Ho & Salimans' r_u + w·(r_c − r_u) with w = g + 1, so the reference's
//! `guidance_scale: 3.0` is "CFG 4" in the usual w convention, and g = 0 means the plain
//! conditional prediction (the unconditional branch is then not evaluated at all, as in the
//! reference's `fake_guidance_scale = 0` path).

use tch::Tensor;

/// An x0-predicting score: (x_t, t, cond) → x0. x_t is [B, …], t is [B, F], cond is [B, …].
pub type X0Fn<'a> = dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor + 'a;

/// Combine conditional and unconditional predictions: r_c + (r_c − r_u)·g.
pub fn apply_cfg(cond_out: &Tensor, uncond_out: &Tensor, g: f64) -> Tensor {
    cond_out + (cond_out - uncond_out) * g
}

/// An unconditional embedding of batch 1 is expanded to the conditional batch, so both forms
/// below see identical inputs.
fn match_batch(uncond: &Tensor, cond: &Tensor) -> Tensor {
    let (bu, bc) = (uncond.size()[0], cond.size()[0]);
    if bu == bc {
        uncond.shallow_clone()
    } else {
        assert_eq!(
            bu, 1,
            "CFG: unconditional batch {bu} must be 1 or equal the conditional batch {bc}"
        );
        uncond.expand(cond.size().as_slice(), false)
    }
}

/// CFG with two calls of `f`: one conditional, one unconditional.
pub fn cfg_two_calls(
    f: &X0Fn,
    x_t: &Tensor,
    t: &Tensor,
    cond: &Tensor,
    uncond: &Tensor,
    g: f64,
) -> Tensor {
    let r_c = f(x_t, t, cond);
    if g == 0.0 {
        return r_c;
    }
    let r_u = f(x_t, t, &match_batch(uncond, cond));
    apply_cfg(&r_c, &r_u, g)
}

/// CFG with ONE call of `f` on the batch [cond; uncond] (x_t and t repeated), then split. Gives
/// the same numbers as [`cfg_two_calls`] whenever `f` treats batch rows independently.
pub fn cfg_batched(
    f: &X0Fn,
    x_t: &Tensor,
    t: &Tensor,
    cond: &Tensor,
    uncond: &Tensor,
    g: f64,
) -> Tensor {
    if g == 0.0 {
        return f(x_t, t, cond);
    }
    let b = x_t.size()[0];
    let xx = Tensor::cat(&[x_t, x_t], 0);
    let tt = Tensor::cat(&[t, t], 0);
    let cc = Tensor::cat(&[cond, &match_batch(uncond, cond)], 0);
    let out = f(&xx, &tt, &cc);
    let r_c = out.narrow(0, 0, b);
    let r_u = out.narrow(0, b, b);
    apply_cfg(&r_c, &r_u, g)
}
