//! Models: the `Denoiser` trait and its implementations (Wan2.1 DiT, exact GMM teacher, small MLP).

use tch::Tensor;

/// A diffusion network in the flow parameterisation used throughout stillflow (and Wan2.1):
/// with x_t = (1 − σ)·x0 + σ·ε, the prediction is v ≈ ε − x0.
///
/// Shapes: `x_t` is [B, F, C, H, W] (video latents; toys use the same layout), `t` is [B, F]
/// float timesteps in [0, 1000] (one per frame, so block-causal generators can mix noise levels),
/// `cond` is the conditioning embedding [B, L, D]. Returns v with `x_t`'s shape.
pub trait Denoiser {
    fn flow(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Tensor;
}

pub mod gmm;
pub mod mlp;
pub mod resolve;
pub mod toy_text;
pub mod umt5;
pub mod vae;
pub mod wan;
pub mod weights;
