//! `denoising_loss`: the critic's (or a teacher's) denoising loss (spec §4.2): flow target ε − x
//! by default, or an x0 target; `critic_sigma_quirk` reproduces the reference's σ-table mismatch.

use crate::losses::{CriticLoss, DenoisingLossType};
use crate::runtime::{Actor, Ctx, Packet, Ports, Work};
use anyhow::{bail, Context, Result};

pub struct DenoisingLoss {
    loss: CriticLoss,
}

impl DenoisingLoss {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let cfg = &ctx.cfg;
        let target = ctx
            .param_str("target")
            .unwrap_or_else(|| cfg.denoising_loss_type.clone());
        let ty = match target.as_str() {
            "flow" => DenoisingLossType::Flow,
            "x0" => DenoisingLossType::X0,
            other => bail!(
                "actor `{}`: unknown target `{other}` (flow or x0)",
                ctx.name
            ),
        };
        Ok(DenoisingLoss {
            loss: CriticLoss::with_shifts(
                ty,
                cfg.critic_sigma_quirk,
                cfg.timestep_shift,
                cfg.score_timestep_shift,
            ),
        })
    }
}

impl Actor for DenoisingLoss {
    fn process(&mut self, ctx: &mut Ctx, work: Work, inputs: Ports) -> Result<Ports> {
        let s = inputs.get("scored").context("no `scored` input")?;
        let l = self.loss.loss(
            s.get("x")?,
            s.get("eps")?,
            s.get("x_t")?,
            s.get("t")?,
            s.get("x0_pred")?,
        );
        let value = l.double_value(&[]);
        let mut p = Packet::new().with("loss", l);
        p.inherit(s);
        ctx.report(work.step, vec![("critic_loss".into(), value)]);
        Ok([("loss".to_string(), p)].into())
    }
}
