//! `rollout`: the Self-Forcing rollout of the block-causal generator (spec §2).
//!
//! Per block of `num_frame_per_block` frames: run the warped few-step list from pure noise,
//! re-noising to the next step with fresh (keyed) noise after each no-grad step, until the exit
//! step (drawn once per rollout, shared by all blocks); only the exit step keeps a graph (lane g).
//! Then a no-grad context pass at `context_noise` writes the block's clean K/V into the cache, so
//! no gradient ever crosses blocks through the cache.

use crate::actors::zoo::{self, Model};
use crate::diffusion::{add_noise, flow_to_x0, try_warp_denoising_step, SigmaTable};
use crate::dist::global_first_row;
use crate::models::wan::{CausalMode, KvCache};
use crate::rng::{self, randint_vec, Purpose, RngKey};
use crate::runtime::{Actor, Ctx, Packet, Ports, Work};
use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

pub struct Rollout {
    model: Model,
    grad: bool,
    steps: Vec<f64>,
    table: SigmaTable,
    vars: Vec<(String, Tensor)>,
}

/// The few-step list the generator runs: warped if configured, trailing 0 removed.
pub fn step_list(cfg: &crate::config::RunConfig, table: &SigmaTable) -> Result<Vec<f64>> {
    let mut steps: Vec<f64> = if cfg.warp_denoising_step {
        let ints: Vec<i64> = cfg.denoising_step_list.iter().map(|&s| s as i64).collect();
        try_warp_denoising_step(&ints, table).context("config key `denoising_step_list`")?
    } else {
        cfg.denoising_step_list.clone()
    };
    if steps.last() == Some(&0.0) {
        steps.pop();
    }
    if steps.is_empty() {
        bail!("config key `denoising_step_list`: no denoising steps left");
    }
    Ok(steps)
}

impl Rollout {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let cfg = &ctx.cfg;
        let grad = ctx.param_bool("grad").unwrap_or(false);
        let role = ctx.param_str("model").unwrap_or_else(|| "generator".into());
        let name = zoo::name_for(&role, cfg);
        let mut model = zoo::build_reader(ctx, &role)?;
        if model.wan().is_none() {
            bail!(
                "rollout `{}`: model `{name}` is not a block-causal Wan generator",
                ctx.name
            );
        }
        let table = SigmaTable::new(cfg.model_kwargs.timestep_shift);
        let steps = step_list(cfg, &table)?;
        let f = zoo::latent_shape(cfg)[1];
        if f % cfg.num_frame_per_block != 0 {
            bail!(
                "num_training_frames {f} is not a multiple of num_frame_per_block {}",
                cfg.num_frame_per_block
            );
        }
        if !grad {
            model.vs.freeze();
        }
        let vars = model.vars();
        Ok(Rollout {
            model,
            grad,
            steps,
            table,
            vars,
        })
    }

    /// The generator copy's variables (sorted by name).
    pub fn vars(&self) -> &[(String, Tensor)] {
        &self.vars
    }

    /// Generate one batch; returns x [B, F, C, H, W] (with a graph on exit steps if `grad`), the
    /// exit index and the initial noise z of every frame (what DMD's regression loss pairs with).
    pub fn generate(
        &self,
        ctx: &Ctx,
        work: &Work,
        cond: &Tensor,
    ) -> Result<(Tensor, usize, Tensor)> {
        self.generate_with(ctx, work, cond, &mut |_, _| Ok(()))
    }

    /// [`Rollout::generate`], handing each block's final x0 [B, nfpb, C, H, W] to `on_block`
    /// (block index, latents) as soon as it exists, before the next block starts: `sample`
    /// decodes and encodes video while the generator is still running (streaming).
    pub fn generate_with(
        &self,
        ctx: &Ctx,
        work: &Work,
        cond: &Tensor,
        on_block: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<(Tensor, usize, Tensor)> {
        let cfg = &ctx.cfg;
        let wan = self.model.wan().context("rollout needs a Wan generator")?;
        let kind = wan.kind();
        let [_, f, c, h, w] = zoo::latent_shape(cfg);
        let b = cond.size()[0];
        let key = |p: Purpose| RngKey::new(ctx.seed, work.step, work.lane, p);
        // Per-row draws keyed by global row (micro-batch m of rank r holds rows (m·W + r)·B..,
        // dist::global_first_row), as in one batch of k·W·B.
        let first = global_first_row(
            work.micro as u64,
            ctx.rank as usize,
            ctx.world as usize,
            b as u64,
        );
        let noise = rng::randn_rows(
            &key(Purpose::RolloutNoise),
            first,
            b,
            &[f, c, h, w],
            kind,
            ctx.device,
        );
        let n = self.steps.len();
        // Exit step: drawn once per rollout (rank 0's draw under data parallel: rank-free key).
        let exit = if cfg.last_step_only {
            n - 1
        } else {
            // Shared by all blocks and all micro-batches of the step (one rollout in the reference).
            let k = RngKey::new(ctx.seed, work.step, work.lane, Purpose::ExitStep);
            randint_vec(&k, 0, n as i64, 1)[0] as usize
        };
        let nfpb = cfg.num_frame_per_block;
        let mut cache = KvCache::new(wan.cfg.num_layers as usize);
        cache.reserve_frames(f);
        let mut outs = Vec::new();
        for blk in 0..f / nfpb {
            let s = blk * nfpb;
            let mut x = noise.narrow(1, s, nfpb);
            let mut x0 = None;
            for (j, &tj) in self.steps.iter().enumerate() {
                let t = Tensor::full([b, nfpb], tj, (Kind::Float, ctx.device));
                let is_exit = j == exit;
                let mode = if is_exit && self.grad {
                    CausalMode::GRAD
                } else {
                    CausalMode::DENOISE
                };
                let v = wan.forward_causal(&x, &t, cond, &mut cache, s, mode);
                if crate::cuda::memlog_enabled() {
                    let what = format!("{}: block {blk} step {j} ({mode:?})", ctx.name);
                    crate::cuda::memlog(&what, ctx.device);
                }
                let pred = flow_to_x0(&self.table, &x, &v, &t);
                if is_exit {
                    x0 = Some(pred);
                    break;
                }
                let _g = tch::no_grad_guard();
                let t_next = Tensor::full([b, nfpb], self.steps[j + 1], (Kind::Float, ctx.device));
                let sub = (blk as u64) << 8 | j as u64;
                let eps = rng::randn_rows(
                    &key(Purpose::RolloutRenoise).sub(sub),
                    first,
                    b,
                    &[nfpb, c, h, w],
                    kind,
                    ctx.device,
                );
                x = add_noise(&self.table, &pred, &eps, &t_next);
            }
            let x0 = x0.context("rollout: exit step beyond the step list")?;
            on_block(blk as usize, &x0)?;
            // Context pass: clean K/V of this block at `context_noise` (σ of the grid, ≈0.5 % noise at t = 0).
            // The last block's K/V would serve no later block: skipped (1 of 5·blocks passes;
            // the outputs are the same, and the keyed draws of other blocks do not move).
            if blk + 1 < f / nfpb {
                let _g = tch::no_grad_guard();
                let tc = Tensor::full([b, nfpb], cfg.context_noise, (Kind::Float, ctx.device));
                let eps = rng::randn_rows(
                    &key(Purpose::ContextNoise).sub(blk as u64),
                    first,
                    b,
                    &[nfpb, c, h, w],
                    kind,
                    ctx.device,
                );
                let xc = add_noise(&self.table, &x0.detach(), &eps, &tc);
                let _ = wan.forward_causal(&xc, &tc, cond, &mut cache, s, CausalMode::CONTEXT);
                crate::cuda::memlog(&format!("{}: block {blk} context", ctx.name), ctx.device);
            }
            outs.push(x0);
        }
        Ok((Tensor::cat(&outs, 1), exit, noise))
    }
}

impl Actor for Rollout {
    fn process(&mut self, ctx: &mut Ctx, work: Work, inputs: Ports) -> Result<Ports> {
        let cin = inputs.get("cond").context("rollout: no `cond` input")?;
        let mut versions = std::collections::BTreeMap::new();
        if ctx.weights_in.contains_key("weights") {
            let v = ctx.sync_weights("weights", &work, !self.grad, &self.vars)?;
            versions.insert("generator".to_string(), v);
            let (lo, hi) = ctx.plan.required_version("generator", &work, !self.grad);
            let _ = lo;
            if !self.grad {
                ctx.report(
                    work.step,
                    vec![("rollout_c_staleness".into(), (hi - v) as f64)],
                );
            }
        }
        let kind = self.model.wan().map(|w| w.kind()).unwrap_or(Kind::Float);
        let cond = cin.get("cond")?.to_kind(kind);
        let (x, exit, z) = if self.grad {
            self.generate(ctx, &work, &cond)?
        } else {
            let _g = tch::no_grad_guard();
            self.generate(ctx, &work, &cond)?
        };
        let mut p = Packet::new();
        p.insert("x", x);
        p.insert("z", z);
        p.insert("cond", cin.get("cond")?.shallow_clone());
        if let Ok(u) = cin.get("uncond") {
            p.insert("uncond", u.shallow_clone());
        }
        p.versions = versions;
        p.scalars.insert("exit_step".into(), exit as f64);
        if self.grad {
            p.grad_targets = self
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect();
            ctx.report(work.step, vec![("exit_step".into(), exit as f64)]);
        }
        Ok([("samples".to_string(), p)].into())
    }
}
