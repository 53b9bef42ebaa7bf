//! DMD's regression loss (Yin et al. 2024) with MSE in place of LPIPS: mean((x − y)²) between
//! the generator's output x and the teacher's deterministic ODE output y from the same noise.

use anyhow::{bail, Result};
use tch::{Kind, Reduction, Tensor};

/// mean((x − y)²) over all elements in float64, with the graph to `x`; `y` is a constant (moved to
/// x's device). ∂/∂x = 2(x − y)/N. Shapes must match.
pub fn regression_loss(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.size() != y.size() {
        bail!(
            "regression target has shape {:?} but the generator output {:?}",
            y.size(),
            x.size()
        );
    }
    let xd = x.to_kind(Kind::Double);
    let y = y.detach().to_kind(Kind::Double).to_device(x.device());
    Ok(xd.mse_loss(&y, Reduction::Mean))
}
