//! Distillation losses as pure tensor functions (spec §4): classifier-free guidance, the DMD and
//! SiD generator losses, DMD's regression loss, and the critic's denoising loss. No actors, no models: callers pass the
//! score networks' x0 predictions in.

pub mod cfg;
pub mod denoising;
pub mod dmd;
pub mod regression;
pub mod sid;

pub use cfg::{apply_cfg, cfg_batched, cfg_two_calls, X0Fn};
pub use denoising::{flow_pred_loss, x0_pred_loss, CriticLoss, DenoisingLossType};
pub use dmd::{dmd_gradient, dmd_loss, dmd_loss_masked};
pub use regression::regression_loss;
pub use sid::sid_loss;

use tch::Tensor;

/// What a generator loss returns: the scalar loss (0-dim float64, with a graph to the generator)
/// and the value logged as `dmdtrain_gradient_norm` (mean |grad| for DMD, 0 for SiD, as in the
/// reference).
#[derive(Debug)]
pub struct GeneratorLoss {
    pub loss: Tensor,
    pub dmd_gradient_norm: f64,
}

/// The per-sample normaliser mean_{all non-batch dims} |d|, kept as [B, 1, …, 1] so it
/// broadcasts against d. For [B, F, C, H, W] latents this is DMD eq. 8's mean over C, F, H, W.
pub fn per_sample_abs_mean(d: &Tensor) -> Tensor {
    let dims: Vec<i64> = (1..d.dim() as i64).collect();
    if dims.is_empty() {
        return d.abs();
    }
    d.abs().mean_dim(dims.as_slice(), true, None)
}
