//! The critic's (fake score's) denoising loss, shared by DMD and SiD (spec §4.2).
//!
//! The critic sees x_t = add_noise(x, ε, t) with the generator's shift-5 table and predicts x0
//! (its wrapper converts its raw flow with the score's shift-8 table).
//! - `flow` (default `denoising_loss_type`): L = mean((v_f − (ε − x))²), with
//!   v_f = (x_t − x0_f)/σ(t) in float64, cast to x_t's dtype.
//!   * consistent form (default, `critic_sigma_quirk: false`): σ from the SAME table that produced
//!     x0_f (shift 8), which gives back the critic's raw flow output;
//!   * `critic_sigma_quirk: true`: σ from the generator's shift-5 table, as the reference does
//!     (issue #88), i.e. v_f = v_raw·σ8(t)/σ5(t) (≈ 1.19 at t = 20, ≈ 1.00 for t ≥ 100).
//! - `x0`: L = mean((x0_f − x)²).

use crate::diffusion::{flow_target, x0_to_flow, SigmaTable};
use anyhow::bail;
use tch::Tensor;

/// `denoising_loss_type` of the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenoisingLossType {
    /// Flow target ε − x (the reference's `FlowPredLoss`).
    Flow,
    /// x0 target x (the reference's `X0PredLoss`).
    X0,
}

impl std::str::FromStr for DenoisingLossType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "flow" => Ok(Self::Flow),
            "x0" => Ok(Self::X0),
            other => {
                bail!("denoising_loss_type: unknown value {other:?} (expected \"flow\" or \"x0\")")
            }
        }
    }
}

/// L = mean((v − (ε − x))²) in the promoted dtype of the inputs.
pub fn flow_pred_loss(flow_pred: &Tensor, x: &Tensor, eps: &Tensor) -> Tensor {
    (flow_pred - flow_target(x, eps))
        .square()
        .mean(None::<tch::Kind>)
}

/// L = mean((x0_pred − x)²).
pub fn x0_pred_loss(x0_pred: &Tensor, x: &Tensor) -> Tensor {
    (x0_pred - x).square().mean(None::<tch::Kind>)
}

/// The critic loss with its configuration.
#[derive(Clone, Debug)]
pub struct CriticLoss {
    pub loss_type: DenoisingLossType,
    /// Reproduce the reference's shift-5 conversion of the critic's shift-8 x0 (default false).
    pub critic_sigma_quirk: bool,
    /// The generator's / noiser's table (shift 5 in the reference).
    pub generator_table: SigmaTable,
    /// The table the score wrapper used to turn its flow into x0 (shift 8 in the reference).
    pub score_table: SigmaTable,
}

impl CriticLoss {
    /// The reference's tables: generator shift 5, score wrapper shift 8.
    pub fn new(loss_type: DenoisingLossType, critic_sigma_quirk: bool) -> Self {
        Self::with_shifts(loss_type, critic_sigma_quirk, 5.0, 8.0)
    }

    pub fn with_shifts(
        loss_type: DenoisingLossType,
        critic_sigma_quirk: bool,
        generator_shift: f64,
        score_shift: f64,
    ) -> Self {
        CriticLoss {
            loss_type,
            critic_sigma_quirk,
            generator_table: SigmaTable::new(generator_shift),
            score_table: SigmaTable::new(score_shift),
        }
    }

    /// The table used to turn the critic's x0 back into a flow.
    pub fn conversion_table(&self) -> &SigmaTable {
        if self.critic_sigma_quirk {
            &self.generator_table
        } else {
            &self.score_table
        }
    }

    /// The loss for clean samples `x` (no graph needed), noise `eps`, the noised input `x_t`
    /// (= add_noise(generator_table, x, eps, t)), timesteps `t` [B, F] and the critic's x0
    /// prediction `critic_x0` (with a graph into the critic's parameters).
    pub fn loss(
        &self,
        x: &Tensor,
        eps: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        critic_x0: &Tensor,
    ) -> Tensor {
        match self.loss_type {
            DenoisingLossType::Flow => {
                let v = x0_to_flow(self.conversion_table(), x_t, critic_x0, t);
                flow_pred_loss(&v, x, eps)
            }
            DenoisingLossType::X0 => x0_pred_loss(critic_x0, x),
        }
    }
}
