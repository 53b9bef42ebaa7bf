//! Noising and x0↔flow conversions of rectified flow (spec §3):
//! x_t = (1 − σ)·x0 + σ·ε, flow v = ε − x0, so x0 = x_t − σ·v and v = (x_t − x0)/σ,
//! with σ = σ(t) looked up on a [`SigmaTable`] grid per (batch, frame).
//!
//! Timesteps have shape [B, F] (or any prefix of the latent's shape); σ is broadcast over the
//! remaining trailing dimensions. All functions keep the autograd graph of their tensor inputs
//! (SiD backpropagates through x_t into the generator); σ itself is a constant.

use super::SigmaTable;
use tch::{Kind, Tensor};

/// σ(t) as a float64 tensor shaped to broadcast against a tensor of rank `rank`:
/// t's shape followed by `rank − t.dim()` singleton dimensions.
pub fn sigma_broadcast(table: &SigmaTable, t: &Tensor, rank: usize) -> Tensor {
    let tdim = t.dim();
    assert!(
        tdim <= rank,
        "timestep tensor of rank {tdim} cannot broadcast over a tensor of rank {rank}"
    );
    let mut shape = t.size();
    shape.resize(rank, 1);
    table.sigma_tensor(t).view(shape.as_slice())
}

/// `add_noise`: x_t = (1 − σ)·x0 + σ·ε, σ = σ(t) from `table` (shift 5 for the generator and the
/// noiser in the reference). As in the reference, σ is float32 (the grid is float32), the
/// arithmetic runs in the promoted dtype of (σ, x0, ε), and the result is cast to ε's dtype.
pub fn add_noise(table: &SigmaTable, x0: &Tensor, eps: &Tensor, t: &Tensor) -> Tensor {
    assert_eq!(
        x0.size(),
        eps.size(),
        "add_noise: x0 and noise shapes differ"
    );
    let sigma = sigma_broadcast(table, t, x0.dim())
        .to_kind(Kind::Float)
        .to_device(x0.device());
    let one_minus = sigma.ones_like() - &sigma;
    (one_minus * x0 + sigma * eps).to_kind(eps.kind())
}

/// `_convert_flow_pred_to_x0`: x0 = x_t − σ(t)·v, computed in float64 and cast back to x_t's dtype.
/// (The reference casts to the flow's dtype; x_t and v share a dtype in every reference call.)
pub fn flow_to_x0(table: &SigmaTable, x_t: &Tensor, flow: &Tensor, t: &Tensor) -> Tensor {
    let sigma = sigma_broadcast(table, t, x_t.dim()).to_device(x_t.device());
    let x0 = x_t.to_kind(Kind::Double) - sigma * flow.to_kind(Kind::Double);
    x0.to_kind(x_t.kind())
}

/// `_convert_x0_to_flow_pred`: v = (x_t − x0)/σ(t), computed in float64 and cast back to x_t's
/// dtype. σ is never 0 on the grid (the smallest is σ_999 ≈ 0.005 at shift 5).
pub fn x0_to_flow(table: &SigmaTable, x_t: &Tensor, x0: &Tensor, t: &Tensor) -> Tensor {
    let sigma = sigma_broadcast(table, t, x_t.dim()).to_device(x_t.device());
    let v = (x_t.to_kind(Kind::Double) - x0.to_kind(Kind::Double)) / sigma;
    v.to_kind(x_t.kind())
}

/// The flow-matching regression target v* = ε − x0.
pub fn flow_target(x0: &Tensor, eps: &Tensor) -> Tensor {
    eps - x0
}
