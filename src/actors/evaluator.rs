//! `evaluator`: every `every` generator versions, generate a fixed evaluation batch with the
//! few-step rollout (no grad, fixed noise) and measure it against the exact toy teacher
//! (mode coverage, mass error, sliced-W2, …). Lines go to `logdir/eval.jsonl`.
//!
//! The batch is generated as inference does (`run-pipeline sample`): every block runs the whole
//! warped few-step list (`last_step_only`), not the training lanes' random exit step, so every
//! line measures the same number of denoising steps (`denoising_steps` in the line).

use crate::actors::rollout::Rollout;
use crate::actors::zoo;
use crate::eval::{quality, QualityReport};
use crate::models::gmm::Gmm;
use crate::models::toy_text::ToyTextEncoder;
use crate::rng::Lane;
use crate::runtime::{Actor, Ctx, Ports, Work};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::sync::Arc;
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
    /// The training config with `last_step_only` set: the rollout reads it from the `Ctx`.
    eval_cfg: Arc<crate::config::RunConfig>,
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

/// Generate the evaluation batch with `rollout` (fixed evaluation noise: seed, step 0, lane
/// Other, as `run-pipeline sample`) and measure it; also returns the denoising steps run.
/// The number of steps follows `ctx.cfg.last_step_only` (the evaluator sets it).
pub fn measure(
    ctx: &Ctx,
    rollout: &Rollout,
    gmm: &Gmm,
    cond: &Tensor,
) -> Result<(QualityReport, usize)> {
    let _g = tch::no_grad_guard();
    let work = Work {
        step: 0,
        lane: Lane::Other,
        micro: 0,
    };
    let (x, exit, _) = rollout.generate(ctx, &work, cond)?;
    let x = x.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu);
    Ok((quality(gmm, &x, None), exit + 1))
}

impl Evaluator {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let cfg = &ctx.cfg;
        let every = crate::actors::optimizer::f64_param(ctx, "every", "log_iters")?.max(1.0) as u64;
        // Under torchrun every rank holds the same generator; rank 0 alone writes the logdir, so
        // the other ranks would only spend GPU time on samples nobody reads.
        if ctx.rank != 0 {
            return Ok(Evaluator { inner: None, every });
        }
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
        // The pipeline's `num_samples`, else the config's `toy.eval_samples`.
        let n = ctx
            .params
            .get("num_samples")
            .and_then(|v| v.as_u64())
            .unwrap_or(cfg.toy.eval_samples as u64)
            .max(1) as usize;
        let mut eval_cfg = (**cfg).clone();
        eval_cfg.last_step_only = true;
        Ok(Evaluator {
            inner: Some(Inner {
                gmm: zoo::toy_gmm(cfg)?,
                cond: eval_cond(cfg, n, ctx.device),
                rollout,
                vars,
                eval_cfg: Arc::new(eval_cfg),
                last: None,
            }),
            every,
        })
    }
}

impl Inner {
    fn evaluate(&mut self, ctx: &mut Ctx, version: u64) -> Result<()> {
        // Under the evaluation config for the rollout only; the training config comes back even
        // when generation fails.
        let train_cfg = std::mem::replace(&mut ctx.cfg, self.eval_cfg.clone());
        let measured = measure(ctx, &self.rollout, &self.gmm, &self.cond);
        ctx.cfg = train_cfg;
        let (q, steps) = measured?;
        let path = ctx.logdir.join("eval.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut line = serde_json::to_value(&q)?;
        line["generator_version"] = version.into();
        line["denoising_steps"] = steps.into();
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
        if version.is_multiple_of(self.every) {
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
