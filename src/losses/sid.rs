//! SiD generator loss (spec §4.3), score identity distillation with weight α (`sid_alpha`):
//!
//! ℓ = (r − f) ⊙ ((r − x) − α·(r − f)) / sg(mean_{non-batch}|x − r|),  L = mean(nan_to_num(ℓ)),
//!
//! the product in float64. With α = 1 it reduces to (r − f)⊙(f − x)/norm.
//!
//! Unlike DMD, the gradient flows through r and f: they are x0 predictions at
//! x_t = (1 − σ)·x + σ·ε, and x_t depends on the generator output x. Callers must therefore
//! evaluate both scores on a NON-detached x_t and must NOT detach r or f. They must also keep
//! this loss's gradient out of the score networks' parameters (freeze them, or discard the
//! gradients they accumulate before the critic's own backward, as the reference does with
//! `zero_grad(set_to_none)`).

use super::{per_sample_abs_mean, GeneratorLoss};
use tch::{Kind, Tensor};

/// SiD generator loss. `x` is the generator output, `real_x0` (after CFG) and `fake_x0` the
/// scores' x0 predictions at x_t(x); all three carry graphs. Returns a 0-dim float64 loss; the
/// logged `dmd_gradient_norm` is 0 as in the reference.
///
/// NaN handling follows the reference: nan_to_num on ℓ makes the loss finite, but a sample whose
/// normaliser is NaN still back-propagates NaN (0/NaN) — the reference behaves the same way.
pub fn sid_loss(x: &Tensor, real_x0: &Tensor, fake_x0: &Tensor, alpha: f64) -> GeneratorLoss {
    // The normaliser is a constant computed in the inputs' dtype (bf16 in the reference).
    let norm = tch::no_grad(|| per_sample_abs_mean(&(x.detach() - real_x0.detach())));
    let xd = x.to_kind(Kind::Double);
    let r = real_x0.to_kind(Kind::Double);
    let f = fake_x0.to_kind(Kind::Double);
    let r_minus_f = &r - &f;
    let ell = &r_minus_f * ((&r - &xd) - &r_minus_f * alpha);
    let ell = ell / norm.to_kind(Kind::Double);
    GeneratorLoss {
        loss: ell.nan_to_num(None, None, None).mean(Kind::Double),
        dmd_gradient_norm: 0.0,
    }
}
