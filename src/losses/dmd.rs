//! DMD generator loss (spec §4.1, DMD eq. 8).
//!
//! grad = nan_to_num((f − r) / mean_{non-batch}|x − r|), computed without a graph;
//! L = 0.5·MSE(x.double(), sg(x.double() − grad.double())), so L = 0.5·mean(grad²) and
//! ∂L/∂x = grad / N (N = number of elements averaged).

use super::{per_sample_abs_mean, GeneratorLoss};
use tch::{Kind, Reduction, Tensor};

/// The normalised DMD gradient direction (no graph): (f − r) / mean_{non-batch}|x − r| per sample,
/// with torch.nan_to_num defaults (NaN → 0, ±inf → the dtype's largest/lowest finite value).
/// Computed in the inputs' dtype, as the reference does.
pub fn dmd_gradient(x: &Tensor, real_x0: &Tensor, fake_x0: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let (x, r, f) = (x.detach(), real_x0.detach(), fake_x0.detach());
        let norm = per_sample_abs_mean(&(&x - &r));
        ((&f - &r) / norm).nan_to_num(None, None, None)
    })
}

/// DMD generator loss over all elements. `x` is the generator output (with its graph); `real_x0`
/// (after CFG) and `fake_x0` are the scores' x0 predictions and are treated as constants.
pub fn dmd_loss(x: &Tensor, real_x0: &Tensor, fake_x0: &Tensor) -> GeneratorLoss {
    dmd_loss_masked(x, real_x0, fake_x0, None)
}

/// DMD generator loss; with `mask` (bool, x's shape) the MSE averages only the selected elements,
/// like the reference's `gradient_mask`. The logged norm is over all elements either way.
pub fn dmd_loss_masked(
    x: &Tensor,
    real_x0: &Tensor,
    fake_x0: &Tensor,
    mask: Option<&Tensor>,
) -> GeneratorLoss {
    let grad = dmd_gradient(x, real_x0, fake_x0);
    let dmd_gradient_norm = tch::no_grad(|| grad.abs().mean(Kind::Double).double_value(&[]));
    let xd = x.to_kind(Kind::Double);
    let target = (&xd - grad.to_kind(Kind::Double)).detach();
    let mse = match mask {
        None => xd.mse_loss(&target, Reduction::Mean),
        Some(m) => xd
            .masked_select(m)
            .mse_loss(&target.masked_select(m), Reduction::Mean),
    };
    GeneratorLoss {
        loss: mse * 0.5,
        dmd_gradient_norm,
    }
}
