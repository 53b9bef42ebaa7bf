//! `score`: wraps a denoiser (teacher, critic, …) and emits its x0 prediction for the noised
//! batch. The network's flow output is turned into x0 with the score σ table
//! (`score_timestep_shift`, 8 in the reference). `cfg: true` applies classifier-free guidance
//! in ONE batched forward (cond and uncond concatenated). A trainable score syncs its copy of the
//! weights to the exact version the serial order would use and exposes its variables as gradient
//! targets; a frozen view never receives gradients in its parameters (inputs may: SiD).

use crate::actors::zoo::{self, Model};
use crate::diffusion::{flow_to_x0, SigmaTable};
use crate::losses::cfg_batched;
use crate::runtime::{Actor, Ctx, Packet, Ports, Work};
use anyhow::{Context, Result};
use tch::Tensor;

pub struct Score {
    model: Model,
    trainable: bool,
    guidance: f64,
    table: SigmaTable,
    vars: Vec<(String, Tensor)>,
}

impl Score {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let cfg = &ctx.cfg;
        let role = ctx
            .param_str("model")
            .context("score: no `model` parameter")?;
        let trainable = ctx.param_bool("trainable").unwrap_or(false);
        let mut model = zoo::build_reader(ctx, &role)?;
        if !trainable {
            model.vs.freeze();
        }
        let use_cfg = ctx.param_bool("cfg").unwrap_or(false);
        let guidance = if !use_cfg {
            0.0
        } else if let Some(g) = ctx.param_f64("guidance_scale") {
            g
        } else if role == "real" {
            cfg.real_guidance_scale.unwrap_or(cfg.guidance_scale)
        } else {
            cfg.fake_guidance_scale.unwrap_or(0.0)
        };
        let vars = model.vars();
        Ok(Score {
            model,
            trainable,
            guidance,
            table: SigmaTable::new(cfg.score_timestep_shift),
            vars,
        })
    }

    fn x0(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor, uncond: Option<&Tensor>) -> Tensor {
        let kind = x_t.kind();
        let f = |x: &Tensor, t: &Tensor, c: &Tensor| {
            let v = self.model.flow(x, t, c);
            flow_to_x0(&self.table, x, &v.to_kind(kind), t)
        };
        match uncond {
            Some(u) if self.guidance != 0.0 => cfg_batched(&f, x_t, t, cond, u, self.guidance),
            _ => f(x_t, t, cond),
        }
    }
}

/// A tensor from another actor that carries a graph (SiD's x_t, the generator's x) enters this
/// actor's graph through one node of its own, so the producer's gradient buffer receives exactly
/// one gradient from each consuming actor. Why: libtorch's backward runs ready nodes in order of
/// their sequence numbers, which are counted per thread; the order in which nodes of different
/// actor threads run therefore depends on how much each thread has done before (a resumed run
/// differs from an uninterrupted one). Inside one actor the order is fixed, and with one gradient
/// per actor and at most two consuming actors per tensor, the sum is order-free (a + b = b + a in
/// IEEE arithmetic; three or more terms would not be). Costs one view node, no copy.
pub(crate) fn graph_entry(t: &Tensor) -> Tensor {
    if t.requires_grad() {
        t.alias()
    } else {
        t.shallow_clone()
    }
}

impl Actor for Score {
    fn process(&mut self, ctx: &mut Ctx, work: Work, inputs: Ports) -> Result<Ports> {
        let input = inputs.get("noised").context("score: no `noised` input")?;
        let mut versions = input.versions.clone();
        if ctx.weights_in.contains_key("weights") {
            let model = ctx.weights_model("weights").unwrap_or("fake").to_string();
            let v = ctx.sync_weights("weights", &work, false, &self.vars)?;
            versions.insert(model, v);
        }
        let x_t = &graph_entry(input.get("x_t")?);
        let t = input.get("t")?;
        let cond = input.get("cond")?;
        let uncond = input.tensors.get("uncond");
        let needs_graph = self.trainable || x_t.requires_grad();
        let x0 = if needs_graph {
            self.x0(x_t, t, cond, uncond)
        } else {
            let _g = tch::no_grad_guard();
            self.x0(x_t, t, cond, uncond)
        };
        crate::cuda::memlog(&format!("{}: after score", ctx.name), ctx.device);
        let mut p = Packet::new();
        for (k, v) in &input.tensors {
            p.insert(k, v.shallow_clone());
        }
        p.insert("x0_pred", x0);
        p.versions = versions;
        if self.trainable {
            p.grad_targets = self
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect();
        }
        p.inherit(input);
        Ok([("scored".to_string(), p)].into())
    }
}
