//! `evaluator`: every `every` generator versions, generate a fixed evaluation batch with the
//! few-step rollout (no grad, fixed noise) and measure it against the exact toy teacher
//! (mode coverage, mass error, sliced-W2, …). Lines go to `logdir/eval.jsonl`.

use crate::actors::rollout::Rollout;
use crate::actors::zoo;
use crate::eval::{quality, QualityReport};
use crate::models::gmm::Gmm;
use crate::models::toy_text::ToyTextEncoder;
use crate::rng::Lane;
use crate::runtime::{Actor, Ctx, Ports, Work};
use anyhow::{bail, Context, Result};
use std::io::Write;
use tch::Tensor;

pub struct Evaluator {
    rollout: Rollout,
    gmm: Gmm,
    cond: Tensor,
    every: u64,
    vars: Vec<(String, Tensor)>,
}

/// Prompts cycling over the classes (uniform), so the samples' marginal is the full mixture.
pub fn eval_cond(cfg: &crate::config::RunConfig, n: usize, device: tch::Device) -> Tensor {
    let t = &cfg.toy;
    let k = t.num_classes.max(1) as usize;
    let enc = ToyTextEncoder::new(k, t.text_len as usize, t.text_dim as usize);
    let prompts: Vec<String> = (0..n).map(|i| if t.num_classes > 0 { format!("class {}", i % k) } else { String::new() }).collect();
    enc.encode_on(&prompts, device)
}

/// Generate `n` samples with `rollout` (fixed evaluation noise) and measure them.
pub fn measure(ctx: &Ctx, rollout: &Rollout, gmm: &Gmm, cond: &Tensor) -> Result<QualityReport> {
    let _g = tch::no_grad_guard();
    let work = Work { step: 0, lane: Lane::Other, micro: 0 };
    let (x, _) = rollout.generate(ctx, &work, cond)?;
    let x = x.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu);
    Ok(quality(gmm, &x, None))
}

impl Evaluator {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let cfg = &ctx.cfg;
        if cfg.real_name.to_lowercase() != "gmm" {
            bail!("evaluator `{}`: quality metrics need the exact toy teacher (real_name: gmm)", ctx.name);
        }
        let rollout = Rollout::new(ctx)?;
        let vars = rollout_vars(&rollout);
        let n = cfg.toy.eval_samples.max(1) as usize;
        Ok(Evaluator {
            gmm: zoo::toy_gmm(cfg)?,
            cond: eval_cond(cfg, n, ctx.device),
            every: ctx.params.get("every").and_then(|v| v.as_u64()).unwrap_or(10).max(1),
            rollout,
            vars,
        })
    }
}

fn rollout_vars(r: &Rollout) -> Vec<(String, Tensor)> {
    r.vars().iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect()
}

impl Actor for Evaluator {
    fn process(&mut self, _ctx: &mut Ctx, _work: Work, _inputs: Ports) -> Result<Ports> {
        bail!("evaluator receives weights, not data")
    }

    fn on_version(&mut self, ctx: &mut Ctx, version: u64, tensors: &[(String, Tensor)]) -> Result<()> {
        if version % self.every != 0 {
            return Ok(());
        }
        crate::runtime::weights::copy_named(&self.vars, tensors)?;
        let q = measure(ctx, &self.rollout, &self.gmm, &self.cond)?;
        let path = ctx.logdir.join("eval.jsonl");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut line = serde_json::to_value(&q)?;
        line["generator_version"] = version.into();
        writeln!(f, "{line}")?;
        Ok(())
    }
}
