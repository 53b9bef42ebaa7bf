//! The actor interface. An actor is built on its own thread and owns its models; the executor
//! (serial or threaded) hands it one work item at a time with one packet per connected input.

use super::cancel::{Cancel, Interrupted};
use super::packet::{Ports, Work};
use super::plan::Plan;
use super::weights::WeightsHub;
use crate::config::RunConfig;
use crossbeam_channel::Sender;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// State an actor contributes to a checkpoint.
#[derive(Debug, Default)]
pub struct ActorState {
    pub tensors: Vec<(String, Tensor)>,
    pub json: serde_json::Value,
}

/// What actors tell the supervisor.
pub enum Event {
    Scalars {
        step: u64,
        actor: String,
        values: Vec<(String, f64)>,
    },
    Busy {
        actor: String,
        work: Work,
        start: Instant,
        secs: f64,
    },
    /// GPU time of one work item on an actor's CUDA stream (from timing events).
    GpuBusy {
        track: String,
        name: String,
        start: Instant,
        secs: f64,
    },
    /// Items waiting on an input edge when the consumer asked for the next one.
    Queue {
        edge: String,
        depth: usize,
        capacity: usize,
    },
    Done {
        actor: String,
        work: Work,
    },
    State {
        actor: String,
        step: u64,
        state: ActorState,
    },
    Error {
        actor: String,
        work: Option<Work>,
        msg: String,
    },
    Finished {
        actor: String,
    },
}

/// Step credits handed out by the supervisor, and the (possibly lowered) stop step.
pub struct Credits {
    /// (granted: steps < granted may start, stop: steps >= stop never run)
    inner: Mutex<(u64, u64)>,
    cv: Condvar,
}

impl Default for Credits {
    fn default() -> Self {
        Credits {
            inner: Mutex::new((0, u64::MAX)),
            cv: Condvar::new(),
        }
    }
}

impl Credits {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn grant_upto(&self, exclusive: u64) {
        let mut g = self.lock();
        if exclusive > g.0 {
            g.0 = exclusive;
        }
        drop(g);
        self.cv.notify_all();
    }

    pub fn granted(&self) -> u64 {
        self.lock().0
    }

    /// Lower the stop step (never raises it).
    pub fn stop_at(&self, step: u64) {
        let mut g = self.lock();
        g.1 = g.1.min(step);
        drop(g);
        self.cv.notify_all();
    }

    pub fn stop(&self) -> u64 {
        self.lock().1
    }

    /// Block until `step` may start: Ok(true) to go, Ok(false) if the run stops before `step`.
    pub fn wait(&self, step: u64, cancel: &Cancel) -> Result<bool, Interrupted> {
        let mut g = self.lock();
        loop {
            if cancel.is_cancelled() {
                return Err(Interrupted::Cancelled);
            }
            if step >= g.1 {
                return Ok(false);
            }
            if g.0 > step {
                return Ok(true);
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// A weights input of an actor: which model, from which hub, and whether it may be stale.
#[derive(Clone)]
pub struct WeightsIn {
    pub model: String,
    pub hub: Arc<WeightsHub>,
    /// Version currently loaded in the reader's copy.
    pub loaded: Option<u64>,
    /// The reader's weights alias that version's snapshot (no private copy).
    pub aliased: bool,
}

/// Everything an actor may use besides its inputs.
pub struct Ctx {
    pub name: String,
    pub kind: String,
    pub cfg: Arc<RunConfig>,
    pub params: BTreeMap<String, serde_json::Value>,
    pub seed: u64,
    /// This process's rank among `world` data-parallel processes (torchrun's RANK and
    /// WORLD_SIZE; 0 and 1 for a single process). Per-row draws are keyed by global row
    /// (`dist::global_first_row`), so W ranks with batch B draw what one process with W·B does.
    pub rank: u32,
    pub world: u32,
    pub device: Device,
    pub plan: Arc<Plan>,
    pub cancel: Cancel,
    pub credits: Arc<Credits>,
    pub events: Option<Sender<Event>>,
    /// Weights inputs by port name.
    pub weights_in: BTreeMap<String, WeightsIn>,
    /// The hub this actor publishes to (optimizers).
    pub weights_out: Option<Arc<WeightsHub>>,
    pub logdir: std::path::PathBuf,
}

impl Ctx {
    pub fn report(&self, step: u64, values: Vec<(String, f64)>) {
        if let Some(tx) = &self.events {
            let _ = tx.send(Event::Scalars {
                step,
                actor: self.name.clone(),
                values,
            });
        }
    }

    /// Parameter `key` of this actor's spec as a string.
    pub fn param_str(&self, key: &str) -> Option<String> {
        self.params
            .get(key)
            .and_then(|v| v.as_str().map(str::to_string))
    }

    pub fn param_bool(&self, key: &str) -> Option<bool> {
        self.params.get(key).and_then(|v| v.as_bool())
    }

    pub fn param_f64(&self, key: &str) -> Option<f64> {
        self.params.get(key).and_then(|v| v.as_f64())
    }

    /// Make `dst` hold the version of the weights on `port` that work `w` needs; returns it.
    /// `stale_ok`: under `async` the reader may use an older version (critic-lane rollouts).
    pub fn sync_weights(
        &mut self,
        port: &str,
        w: &Work,
        stale_ok: bool,
        dst: &[(String, Tensor)],
    ) -> anyhow::Result<u64> {
        let wi = self.weights_in.get(port).ok_or_else(|| {
            anyhow::anyhow!("actor `{}` has no weights input `{port}`", self.name)
        })?;
        let (lo, hi) = self.plan.required_version(&wi.model, w, stale_ok);
        if let Some(v) = wi.loaded {
            if v >= lo && v <= hi && (v == hi || wi.hub.latest_version() == Some(v)) {
                return Ok(v);
            }
        }
        let hub = wi.hub.clone();
        let was_aliased = wi.aliased;
        let (got, aliased) = hub
            .with_version(lo, hi, &self.cancel, |v, p| {
                super::weights::alias_or_copy_named(dst, p, was_aliased).map(|a| (v, a))
            })
            .map_err(|e| {
                anyhow::anyhow!("waiting for {} weights v{lo}..=v{hi}: {e}", wi.model)
            })??;
        if let Some(wi) = self.weights_in.get_mut(port) {
            wi.loaded = Some(got);
            wi.aliased = aliased;
        }
        Ok(got)
    }

    /// The model name of the weights arriving on `port`.
    pub fn weights_model(&self, port: &str) -> Option<&str> {
        self.weights_in.get(port).map(|w| w.model.as_str())
    }
}

/// An actor kind's behaviour.
pub trait Actor {
    /// One work item: `inputs` holds one packet per connected data input of `work.lane`. Returns
    /// packets by output port (ports absent from the map emit nothing).
    fn process(&mut self, ctx: &mut Ctx, work: Work, inputs: Ports) -> anyhow::Result<Ports>;

    /// Called once before the first work item (e.g. optimizers publish their initial version).
    fn start(&mut self, _ctx: &mut Ctx) -> anyhow::Result<()> {
        Ok(())
    }

    /// Service actors (no data inputs) get every version published on their weights input.
    fn on_version(
        &mut self,
        _ctx: &mut Ctx,
        _version: u64,
        _tensors: &[(String, Tensor)],
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// Checkpointable state, if the actor has any (optimizers, EMA).
    fn state(&mut self) -> anyhow::Result<Option<ActorState>> {
        Ok(None)
    }

    /// Restore what `state` returned (on resume), before `start`.
    fn restore(&mut self, _ctx: &mut Ctx, _state: ActorState) -> anyhow::Result<()> {
        anyhow::bail!("this actor kind keeps no state to restore")
    }

    /// End of the run (after the last work item).
    fn finish(&mut self, _ctx: &mut Ctx) -> anyhow::Result<()> {
        Ok(())
    }
}
