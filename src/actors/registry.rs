//! The actor-kind registry: one line per kind. Kinds and their ports are declared (without any
//! model code) in `graph::kinds`; this maps each to its implementation.

use super::*;
use crate::runtime::{Actor, Ctx, Node};
use anyhow::{bail, Result};

/// Build the actor for `node` on the calling thread.
pub fn build(node: &Node, ctx: &mut Ctx) -> Result<Box<dyn Actor>> {
    Ok(match node.kind.as_str() {
        "prompt_source" => Box::new(prompt_source::PromptSource::new(ctx)?),
        "latent_source" => Box::new(latent_source::LatentSource::new(ctx)?),
        "rollout" => Box::new(rollout::Rollout::new(ctx)?),
        "noiser" => Box::new(noiser::Noiser::new(ctx)?),
        "score" => Box::new(score::Score::new(ctx)?),
        "distribution_loss" => Box::new(distribution_loss::DistributionLoss::new(ctx, None)?),
        "dmd_loss" => Box::new(distribution_loss::DistributionLoss::new(ctx, Some("dmd"))?),
        "sid_loss" => Box::new(distribution_loss::DistributionLoss::new(ctx, Some("sid"))?),
        "ode_target" => Box::new(ode_target::OdeTarget::new(ctx)?),
        "denoising_loss" => Box::new(denoising_loss::DenoisingLoss::new(ctx)?),
        "optimizer" => Box::new(optimizer::Optimizer::new(ctx)?),
        "ema" => Box::new(ema::EmaActor::new(ctx)?),
        "evaluator" => Box::new(evaluator::Evaluator::new(ctx)?),
        "sink" => Box::new(sink::Sink::new(ctx)?),
        other => bail!(
            "actor `{}`: kind `{other}` has no implementation",
            node.name
        ),
    })
}

/// Kinds whose actors keep checkpointable state.
pub const STATEFUL: &[&str] = &["optimizer", "ema"];
