//! `ode_target`: the regression targets of DMD's regression loss (Yin et al. 2024). For each
//! rollout it runs the exact teacher's probability-flow ODE from the rollout's own initial noise
//! z (packet field `z`) and emits y = ODE(z) as `target`; the generator loss then adds
//! `regression_weight`·mean((x − y)²).
//!
//! Why: DMD's distribution-matching gradient is the reverse KL's, which is mode seeking: a mode
//! the generator stopped visiting costs it nothing (docs/QUALITY.md). The ODE map z ↦ y carries
//! the Gaussian onto the data distribution with every mode's mass, so regressing onto it anchors
//! the generator's mode assignment. The paper precomputes the pairs with the network teacher;
//! with the exact GMM teacher they cost a few milliseconds and are made on the fly. Network
//! teachers are refused (50+ teacher passes per generator update are not what a user wants
//! silently; precomputed pairs are not implemented).
//!
//! Guidance follows the real score's (`real_guidance_scale`, else `guidance_scale`), so the target
//! is the guided teacher's ODE, as in the paper.

use crate::actors::zoo;
use crate::models::gmm::Gmm;
use crate::runtime::{Actor, Ctx, Packet, Ports, Work};
use anyhow::{bail, Context, Result};

pub struct OdeTarget {
    gmm: Gmm,
    steps: usize,
    guidance: f64,
}

impl OdeTarget {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let cfg = &ctx.cfg;
        if cfg.real_name.to_lowercase() != "gmm" {
            bail!(
                "actor `{}` (ode_target): the regression targets need the exact toy teacher \
                 (config key real_name: gmm), not `{}`; with a network teacher the ODE pairs \
                 would have to be precomputed, which stillflow does not implement",
                ctx.name,
                cfg.real_name
            );
        }
        let steps = match ctx.params.get("steps") {
            None => cfg.regression_ode_steps,
            Some(v) => v.as_u64().filter(|&s| s >= 1).with_context(|| {
                format!(
                    "actor `{}`: param `steps` must be an integer >= 1",
                    ctx.name
                )
            })?,
        } as usize;
        Ok(OdeTarget {
            gmm: zoo::toy_gmm(cfg)?,
            steps,
            guidance: cfg.real_guidance_scale.unwrap_or(cfg.guidance_scale),
        })
    }
}

impl Actor for OdeTarget {
    fn process(&mut self, _ctx: &mut Ctx, _work: Work, inputs: Ports) -> Result<Ports> {
        let p = inputs
            .get("samples")
            .context("ode_target: no `samples` input")?;
        let z = p.get("z").context(
            "ode_target: the samples carry no initial noise `z` (connect a rollout's samples)",
        )?;
        let x = p.get("x")?;
        let cond = p.get("cond")?;
        let uncond = p.get("uncond").ok();
        let guidance = match uncond {
            _ if self.guidance == 0.0 => None,
            Some(u) => Some((u, self.guidance)),
            None => bail!(
                "ode_target: guidance {} needs the prompts' `uncond` embeddings in the samples",
                self.guidance
            ),
        };
        // Shift 1: a uniform σ grid keeps the last Euler step short (see regression_ode_steps).
        let y = tch::no_grad(|| {
            self.gmm
                .teacher_ode(&z.detach(), self.steps, 1.0, cond, guidance)
        })
        .context("ode_target: teacher ODE")?
        .to_kind(x.kind());
        let mut out = Packet::new().with("target", y);
        out.insert("cond", cond.shallow_clone());
        out.versions = p.versions.clone();
        Ok([("target".to_string(), out)].into())
    }
}
