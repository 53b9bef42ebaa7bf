//! `distribution_loss` (and its fixed forms `dmd_loss`, `sid_loss`): the generator loss from the
//! teacher's (CFG) and the critic's x0 predictions (spec §4.1 / §4.3). `loss: from_config` takes
//! the method from the config key `distribution_loss`. With a `target` input (an `ode_target`
//! actor) it adds DMD's regression loss `regression_weight`·mean((x − y)²) and logs the unweighted
//! mean as `regression_loss`.

use crate::actors::score::graph_entry;
use crate::losses::{dmd_loss, regression_loss, sid_loss};
use crate::runtime::{Actor, Ctx, Packet, Ports, Work};
use anyhow::{bail, Context, Result};

pub struct DistributionLoss {
    sid: bool,
    alpha: f64,
    regression_weight: f64,
}

impl DistributionLoss {
    /// `fixed`: Some("dmd"/"sid") for the fixed kinds, None to read the `loss` parameter.
    pub fn new(ctx: &Ctx, fixed: Option<&str>) -> Result<Self> {
        let method = match fixed {
            Some(m) => m.to_string(),
            None => match ctx.param_str("loss").as_deref() {
                None | Some("from_config") => ctx.cfg.distribution_loss.clone(),
                Some(m) => m.to_string(),
            },
        };
        let sid = match method.as_str() {
            "dmd" => false,
            "sid" => true,
            other => bail!(
                "actor `{}`: unknown distribution loss `{other}` (dmd or sid)",
                ctx.name
            ),
        };
        if sid != (ctx.cfg.distribution_loss == "sid") {
            // The noiser keeps x_t's graph only for SiD; a mismatch would silently train nothing.
            bail!(
                "actor `{}` computes {method} but the config says distribution_loss: {}; make them agree",
                ctx.name,
                ctx.cfg.distribution_loss
            );
        }
        let alpha = ctx.param_f64("alpha").unwrap_or(ctx.cfg.sid_alpha);
        Ok(DistributionLoss {
            sid,
            alpha,
            regression_weight: ctx.cfg.regression_weight,
        })
    }
}

impl Actor for DistributionLoss {
    fn process(&mut self, ctx: &mut Ctx, work: Work, inputs: Ports) -> Result<Ports> {
        let real = inputs.get("real").context("no `real` input")?;
        let fake = inputs.get("fake").context("no `fake` input")?;
        // One graph node per input from another actor: see `score::graph_entry`.
        let x = &graph_entry(real.get("x")?);
        let r = &graph_entry(real.get("x0_pred")?);
        let f = &graph_entry(fake.get("x0_pred")?);
        let out = if self.sid {
            sid_loss(x, r, f, self.alpha)
        } else {
            dmd_loss(x, r, f)
        };
        let mut loss = out.loss;
        let mut logged = vec![("dmdtrain_gradient_norm".to_string(), out.dmd_gradient_norm)];
        match inputs.get("target") {
            Some(t) => {
                let reg = regression_loss(x, t.get("target")?)?;
                let reg_value = reg.double_value(&[]);
                logged.push(("regression_loss".into(), reg_value));
                if self.regression_weight > 0.0 {
                    // Out of place: `+=` would be an in-place add on a tensor with a graph.
                    loss = loss.g_add(&(reg * self.regression_weight));
                }
            }
            None if self.regression_weight > 0.0 => bail!(
                "config key `regression_weight` is {} but actor `{}` has no `target` input: use a \
                 pipeline with an `ode_target` actor (pipeline: self_forcing_regression)",
                self.regression_weight,
                ctx.name
            ),
            None => {}
        }
        let value = loss.double_value(&[]);
        let mut p = Packet::new().with("loss", loss);
        p.inherit(real);
        p.inherit(fake);
        p.scalars.insert("generator_loss".into(), value);
        logged.push(("generator_loss".into(), value));
        ctx.report(work.step, logged);
        Ok([("loss".to_string(), p)].into())
    }
}
