//! `noiser`: score-timestep sampling with shift and clamp (spec §3) and x_t = (1 − σ)·x + σ·ε with
//! the generator's σ table. For DMD the generator lane detaches x_t (the loss is a surrogate); for
//! SiD it keeps the graph, because SiD's gradient flows through x_t into the score inputs.

use crate::diffusion::{add_noise, sample_score_timesteps, SigmaTable};
use crate::dist::global_first_row;
use crate::rng::{self, Lane, Purpose, RngKey};
use crate::runtime::{Actor, Ctx, Packet, Ports, Work};
use anyhow::{Context, Result};

pub struct Noiser {
    table: SigmaTable,
}

impl Noiser {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        Ok(Noiser {
            table: SigmaTable::new(ctx.cfg.timestep_shift),
        })
    }
}

impl Actor for Noiser {
    fn process(&mut self, ctx: &mut Ctx, work: Work, inputs: Ports) -> Result<Ports> {
        let (port, input) = inputs.iter().next().context("noiser: no input")?;
        let x = input
            .get("x")
            .with_context(|| format!("noiser input `{port}`"))?;
        let cfg = &ctx.cfg;
        let size = x.size();
        let (b, f) = (size[0], size[1]);
        let key = |p: Purpose| RngKey::new(ctx.seed, work.step, work.lane, p);
        let n = cfg.num_train_timestep as i64;
        // Per-row draws keyed by global row (micro-batch m of rank r holds rows (m·W + r)·B..,
        // dist::global_first_row), as one batch of k·W·B would draw them.
        let first = global_first_row(
            work.micro as u64,
            ctx.rank as usize,
            ctx.world as usize,
            b as u64,
        );
        let rows: Vec<tch::Tensor> = (0..b as u64)
            .map(|i| {
                let k = key(Purpose::ScoreTimestep).row(first + i);
                sample_score_timesteps(
                    &k,
                    1,
                    f,
                    cfg.min_score_timestep,
                    n,
                    cfg.timestep_shift,
                    n,
                    x.device(),
                )
            })
            .collect();
        let t = tch::Tensor::cat(&rows, 0);
        let eps = rng::randn_rows(
            &key(Purpose::ScoreNoise),
            first,
            b,
            &size[1..],
            x.kind(),
            x.device(),
        );
        let keep_graph = work.lane == Lane::Generator && cfg.distribution_loss == "sid";
        let x_src = if keep_graph {
            x.shallow_clone()
        } else {
            x.detach()
        };
        let x_t = add_noise(&self.table, &x_src, &eps, &t);
        let mut p = Packet::new();
        for (k, v) in &input.tensors {
            p.insert(k, v.shallow_clone());
        }
        p.insert("x_t", x_t);
        p.insert("t", t);
        p.insert("eps", eps);
        p.inherit(input);
        Ok([("noised".to_string(), p)].into())
    }
}
