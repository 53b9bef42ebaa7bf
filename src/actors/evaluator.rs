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
    inner: Option<Inner>,
    every: u64,
}

struct Inner {
    rollout: Rollout,
    gmm: Gmm,
    cond: Tensor,
    vars: Vec<(String, Tensor)>,
    /// The newest version seen and whether it was measured (the last one always is, at finish).
    last: Option<(u64, bool)>,
}

/// Prompts cycling over the classes (uniform), so the samples' marginal is the full mixture.
pub fn eval_cond(cfg: &crate::config::RunConfig, n: usize, device: tch::Device) -> Tensor {
    let t = &cfg.toy;
    let k = t.num_classes.max(1) as usize;
    let enc = ToyTextEncoder::new(k, t.text_len as usize, t.text_dim as usize);
    let prompts: Vec<String> = (0..n)
        .map(|i| {
            if t.num_classes > 0 {
                format!("class {}", i % k)
            } else {
                String::new()
            }
        })
        .collect();
    enc.encode_on(&prompts, device)
}

/// Generate the evaluation batch with `rollout` (fixed evaluation noise) and measure it.
pub fn measure(ctx: &Ctx, rollout: &Rollout, gmm: &Gmm, cond: &Tensor) -> Result<QualityReport> {
    let _g = tch::no_grad_guard();
    let work = Work {
        step: 0,
        lane: Lane::Other,
        micro: 0,
    };
    let (x, _) = rollout.generate(ctx, &work, cond)?;
    let x = x.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu);
    Ok(quality(gmm, &x, None))
}

impl Evaluator {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let cfg = &ctx.cfg;
        let every = crate::actors::optimizer::f64_param(ctx, "every", "log_iters")?.max(1.0) as u64;
        if cfg.real_name.to_lowercase() != "gmm" {
            eprintln!(
                "evaluator `{}`: no exact teacher (real_name: {}), quality metrics are off",
                ctx.name, cfg.real_name
            );
            return Ok(Evaluator { inner: None, every });
        }
        let rollout = Rollout::new(ctx)?;
        let vars = rollout
            .vars()
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        let n = cfg.toy.eval_samples.max(1) as usize;
        Ok(Evaluator {
            inner: Some(Inner {
                gmm: zoo::toy_gmm(cfg)?,
                cond: eval_cond(cfg, n, ctx.device),
                rollout,
                vars,
                last: None,
            }),
            every,
        })
    }
}

impl Inner {
    fn evaluate(&mut self, ctx: &Ctx, version: u64) -> Result<()> {
        let q = measure(ctx, &self.rollout, &self.gmm, &self.cond)?;
        let path = ctx.logdir.join("eval.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut line = serde_json::to_value(&q)?;
        line["generator_version"] = version.into();
        writeln!(f, "{line}")?;
        self.last = Some((version, true));
        Ok(())
    }
}

impl Actor for Evaluator {
    fn process(&mut self, _ctx: &mut Ctx, _work: Work, _inputs: Ports) -> Result<Ports> {
        bail!("evaluator receives weights, not data")
    }

    fn on_version(
        &mut self,
        ctx: &mut Ctx,
        version: u64,
        tensors: &[(String, Tensor)],
    ) -> Result<()> {
        let Some(inner) = &mut self.inner else {
            return Ok(());
        };
        crate::runtime::weights::copy_named(&inner.vars, tensors)?;
        inner.last = Some((version, false));
        if version % self.every == 0 {
            inner.evaluate(ctx, version)?;
        }
        Ok(())
    }

    fn finish(&mut self, ctx: &mut Ctx) -> Result<()> {
        if let Some(inner) = &mut self.inner {
            if let Some((v, false)) = inner.last {
                inner.evaluate(ctx, v)?;
            }
        }
        Ok(())
    }
}
