//! What both executors share: the run setup, contexts, weights hubs, checkpoint boundaries and
//! small helpers. The executors themselves are `serial.rs` (everything on one thread, in the
//! reference's order) and `threaded.rs` (one OS thread per actor, bounded crossbeam channels,
//! actix supervisor).

use super::actor::{Actor, ActorState, Credits, Ctx, Event, WeightsIn};
use super::cancel::Cancel;
use super::packet::{Packet, Work};
use super::plan::Plan;
use super::weights::WeightsHub;
use super::wiring::Wiring;
use crate::config::RunConfig;
use crossbeam_channel::Sender;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Builds an actor of a kind on the current thread.
pub type BuildFn =
    Arc<dyn Fn(&super::wiring::Node, &mut Ctx) -> anyhow::Result<Box<dyn Actor>> + Send + Sync>;

/// Everything both executors need.
pub struct Setup {
    pub wiring: Wiring,
    pub plan: Arc<Plan>,
    pub cfg: Arc<RunConfig>,
    pub seed: u64,
    /// Data-parallel rank and number of processes (0 and 1 for a single process).
    pub rank: u32,
    pub world: u32,
    pub device: tch::Device,
    /// Where actors write (evaluator, sink): the run's logdir on rank 0, a scratch folder on the
    /// other ranks (only rank 0 writes the logdir).
    pub logdir: std::path::PathBuf,
    pub build: BuildFn,
    /// States to restore, by actor name (resume).
    pub resume: BTreeMap<String, ActorState>,
    /// Actor kinds that keep checkpointable state.
    pub stateful_kinds: Vec<String>,
}

pub(super) type Msg = (Work, Packet);

impl Setup {
    pub fn stateful(&self) -> BTreeSet<String> {
        self.wiring
            .nodes
            .iter()
            .filter(|n| self.stateful_kinds.contains(&n.kind))
            .map(|n| n.name.clone())
            .collect()
    }

    pub(super) fn hubs(&self) -> BTreeMap<usize, Arc<WeightsHub>> {
        // One version per model in every mode. Under serial/exact no reader needs version v once
        // v+1 exists (the next update waits for every use of v). Under async the only lagging
        // readers are critic-lane rollouts, and the generator version after the one they may use
        // is produced by an update that depends (through the critic update of the same step) on
        // their own output, so when such a reader looks, the newest version is never above its
        // range; and readers alias the snapshot they load, which keeps it alive for them. Every
        // extra retained version costs a model in bf16 (2.6 GB at 1.3B): on one 80 GB GPU that
        // decides whether `async` fits. A reader that nevertheless finds only newer versions
        // fails with an error naming the versions (`Interrupted::Gone`), never silently.
        let keep = 1;
        let mut hubs = BTreeMap::new();
        for e in &self.wiring.weights {
            hubs.entry(e.from)
                .or_insert_with(|| Arc::new(WeightsHub::new(&self.wiring.model_of(e.from), keep)));
        }
        hubs
    }

    pub(super) fn ctx(
        &self,
        i: usize,
        hubs: &BTreeMap<usize, Arc<WeightsHub>>,
        cancel: &Cancel,
        credits: &Arc<Credits>,
        events: Option<Sender<Event>>,
    ) -> Ctx {
        let n = &self.wiring.nodes[i];
        let weights_in = self
            .wiring
            .weights
            .iter()
            .filter(|e| e.to == i)
            .filter_map(|e| {
                hubs.get(&e.from).map(|h| {
                    (
                        e.to_port.clone(),
                        WeightsIn {
                            model: h.model.clone(),
                            hub: h.clone(),
                            loaded: None,
                            aliased: false,
                        },
                    )
                })
            })
            .collect();
        let device = match &n.device {
            Some(d) => crate::runtime::parse_device(d).unwrap_or(self.device),
            None => self.device,
        };
        Ctx {
            name: n.name.clone(),
            kind: n.kind.clone(),
            cfg: self.cfg.clone(),
            params: n.params.clone(),
            seed: self.seed,
            rank: self.rank,
            world: self.world,
            device,
            plan: self.plan.clone(),
            cancel: cancel.clone(),
            credits: credits.clone(),
            events,
            weights_in,
            weights_out: hubs.get(&i).cloned(),
            logdir: self.logdir.clone(),
        }
    }

    /// Periodic checkpoint boundaries in (start, stop).
    pub(super) fn boundaries(&self, stop: u64) -> VecDeque<u64> {
        self.plan.checkpoint_boundaries(stop)
    }
}

/// With `STILLFLOW_MEMLOG` set, print the CUDA memory allocated after an actor was built.
pub(super) fn memlog(name: &str, device: tch::Device) {
    crate::cuda::memlog(&format!("after building `{name}`"), device);
}

pub(super) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".into()
    }
}

pub(super) fn state_or_empty(actor: &mut dyn Actor) -> anyhow::Result<ActorState> {
    Ok(actor.state()?.unwrap_or_default())
}
