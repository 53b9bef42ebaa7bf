//! `ema`: the EMA shadow of the generator (spec §5). Created from the generator version current at
//! the end of step `ema_start_step − 1`, then updated after every later generator update:
//! shadow = w·shadow + (1 − w)·θ, in f32. It subscribes to every published version.

use crate::actors::optimizer::f64_param;
use crate::optim::Ema;
use crate::runtime::{Actor, ActorState, Ctx, Ports, Work};
use anyhow::{bail, Result};
use tch::Tensor;

pub struct EmaActor {
    ema: Ema,
    /// The generator version the shadow starts from.
    start_version: u64,
    last: Option<u64>,
}

impl EmaActor {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let w = f64_param(ctx, "decay", "ema_weight")?;
        let start_step = f64_param(ctx, "start_step", "ema_start_step")? as u64;
        // The reference creates the EMA after step `start_step − 1` ends: the version then is
        // the number of generator updates at steps < start_step.
        let start_version = ctx.plan.version_at("generator", start_step);
        let mut ema = Ema::new(w, start_version)?;
        if ctx.cfg.ema_device == "cpu" {
            ema = ema.on_device(tch::Device::Cpu);
        }
        Ok(EmaActor {
            ema,
            start_version,
            last: None,
        })
    }
}

impl Actor for EmaActor {
    fn process(&mut self, _ctx: &mut Ctx, _work: Work, _inputs: Ports) -> Result<Ports> {
        bail!("ema receives weights, not data")
    }

    fn on_version(
        &mut self,
        _ctx: &mut Ctx,
        version: u64,
        tensors: &[(String, Tensor)],
    ) -> Result<()> {
        self.last = Some(version);
        if !self.ema.is_active() {
            self.ema.maybe_start(version, tensors)?;
        } else {
            self.ema.update(tensors)?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Option<ActorState>> {
        // Host copies: the shadow keeps being updated in place while the checkpoint is written.
        let mut tensors = Vec::new();
        for (k, v) in self.ema.state_tensors().unwrap_or_default() {
            tensors.push((k, crate::checkpoint::host_snapshot(&v)?));
        }
        let json = serde_json::json!({ "active": self.ema.is_active(), "start_version": self.start_version, "last_version": self.last });
        Ok(Some(ActorState { tensors, json }))
    }

    fn restore(&mut self, _ctx: &mut Ctx, st: ActorState) -> Result<()> {
        if st
            .json
            .get("active")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
        {
            self.ema.load_state(Some(&st.tensors), &st.tensors)?;
        }
        self.last = st.json.get("last_version").and_then(|v| v.as_u64());
        Ok(())
    }
}
