//! The supervisor: collects events from actors, hands out step credits, tracks step completion,
//! writes metrics lines and checkpoints, and shuts everything down on the first error.
//!
//! The bookkeeping lives in [`Supervisor`] (a plain struct, driven directly by the serial
//! executor); [`SupervisorActor`] wraps it as an actix actor for the threaded executor, which is
//! the control plane: actor threads' events reach it through its mailbox.

use super::actor::{ActorState, Credits, Event};
use super::cancel::Cancel;
use super::packet::Work;
use super::plan::Plan;
use crate::rng::Lane;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

/// Writes a checkpoint from the collected actor states (implemented by the run driver).
pub type CheckpointFn =
    Box<dyn FnMut(u64, BTreeMap<String, ActorState>) -> anyhow::Result<std::path::PathBuf>>;

/// Called with each step's metrics line (progress bar).
pub type StepCallback = Box<dyn FnMut(&serde_json::Value)>;

/// A busy span of one actor (for profiles and traces).
#[derive(Clone, Debug)]
pub struct Span {
    pub actor: String,
    pub work: Work,
    pub start_s: f64,
    pub secs: f64,
}

/// A step's reported scalars: actor → key → (sum, count) of its reports (see `write_metrics`).
type StepScalars = BTreeMap<String, BTreeMap<String, (f64, u32)>>;

pub struct Supervisor {
    pub plan: Arc<Plan>,
    pub credits: Arc<Credits>,
    pub cancel: Cancel,
    /// Names of actors and how many items each handles at a step (by lane).
    items: BTreeMap<String, BTreeSet<Lane>>,
    stateful: BTreeSet<String>,
    done: BTreeMap<u64, usize>,
    /// Steps [start, completed) are complete.
    pub completed: u64,
    window: u64,
    scalars: BTreeMap<u64, StepScalars>,
    states: BTreeMap<u64, BTreeMap<String, ActorState>>,
    pub busy: BTreeMap<String, f64>,
    pub spans: Vec<Span>,
    /// GPU time per work item and stream (threaded executor on CUDA).
    pub gpu_spans: Vec<crate::profile::GpuSpan>,
    /// Per input edge: (sum of depths, samples, max depth, capacity).
    pub queues: BTreeMap<String, (f64, u64, usize, usize)>,
    t0: Instant,
    step_t: Instant,
    pub metrics_file: Option<std::fs::File>,
    pub checkpoint: Option<CheckpointFn>,
    pub checkpoints_written: Vec<std::path::PathBuf>,
    pub error: Option<String>,
    pub finished: BTreeSet<String>,
    pub all_actors: BTreeSet<String>,
    /// Last metrics line per step (for summaries and tests).
    pub history: Vec<serde_json::Value>,
    pub on_step: Option<StepCallback>,
    pub stop_requested: bool,
}

impl Supervisor {
    pub fn new(
        plan: Arc<Plan>,
        credits: Arc<Credits>,
        cancel: Cancel,
        stateful: BTreeSet<String>,
        window: u64,
    ) -> Self {
        let items: BTreeMap<String, BTreeSet<Lane>> = plan.lanes.clone();
        let all_actors = items.keys().cloned().collect();
        let start = plan.start_step;
        let s = Supervisor {
            plan,
            credits,
            cancel,
            items,
            stateful,
            done: BTreeMap::new(),
            completed: start,
            window: window.max(1),
            scalars: BTreeMap::new(),
            states: BTreeMap::new(),
            busy: BTreeMap::new(),
            spans: vec![],
            gpu_spans: vec![],
            queues: BTreeMap::new(),
            t0: Instant::now(),
            step_t: Instant::now(),
            metrics_file: None,
            checkpoint: None,
            checkpoints_written: vec![],
            error: None,
            finished: BTreeSet::new(),
            all_actors,
            history: vec![],
            on_step: None,
            stop_requested: false,
        };
        s.grant();
        s
    }

    fn grant(&self) {
        let upto = self
            .completed
            .saturating_add(self.window)
            .min(self.plan.stop_step);
        self.credits.grant_upto(upto);
    }

    /// Items all actors must finish for step `s` to be complete.
    fn expected(&self, s: u64) -> usize {
        self.items
            .values()
            .map(|lanes| {
                lanes.iter().filter(|l| self.plan.lane_runs(**l, s)).count()
                    * self.plan.micro as usize
            })
            .sum()
    }

    /// Ask for a clean stop after the steps already started (SIGINT/SIGTERM).
    pub fn request_stop(&mut self) {
        if !self.stop_requested {
            self.stop_requested = true;
            let at = self.credits.granted().max(self.completed);
            self.credits.stop_at(at);
            eprintln!("\nstop requested: finishing steps < {at}, then writing a checkpoint");
        }
    }

    pub fn handle(&mut self, ev: Event) {
        match ev {
            Event::Scalars {
                step,
                actor,
                values,
            } => {
                let m = self
                    .scalars
                    .entry(step)
                    .or_default()
                    .entry(actor)
                    .or_default();
                for (k, v) in values {
                    let e = m.entry(k).or_insert((0.0, 0));
                    e.0 += v;
                    e.1 += 1;
                }
            }
            Event::Busy {
                actor,
                work,
                start,
                secs,
            } => {
                crate::profile::record_busy(&actor, secs);
                *self.busy.entry(actor.clone()).or_default() += secs;
                let start_s = start.duration_since(self.t0).as_secs_f64();
                if self.spans.len() < 200_000 {
                    self.spans.push(Span {
                        actor,
                        work,
                        start_s,
                        secs,
                    });
                }
            }
            Event::GpuBusy {
                track,
                name,
                start,
                secs,
            } => {
                if self.gpu_spans.len() < 200_000 {
                    let start_s = start
                        .checked_duration_since(self.t0)
                        .map_or(0.0, |d| d.as_secs_f64());
                    self.gpu_spans.push(crate::profile::GpuSpan {
                        stream: format!("stream:{track}"),
                        name,
                        start_s,
                        secs,
                    });
                }
            }
            Event::Queue {
                edge,
                depth,
                capacity,
            } => {
                crate::profile::record_queue(&edge, depth);
                let q = self.queues.entry(edge).or_insert((0.0, 0, 0, capacity));
                q.0 += depth as f64;
                q.1 += 1;
                q.2 = q.2.max(depth);
            }
            Event::Done { actor: _, work } => {
                *self.done.entry(work.step).or_default() += 1;
                self.advance();
            }
            Event::State { actor, step, state } => {
                self.states.entry(step).or_default().insert(actor, state);
                self.maybe_checkpoint(step);
            }
            Event::Error { actor, work, msg } => {
                if self.error.is_none() {
                    let at = work.map(|w| format!(" at {w}")).unwrap_or_default();
                    self.error = Some(format!("actor `{actor}` failed{at}: {msg}"));
                }
                self.cancel.cancel();
            }
            Event::Finished { actor } => {
                self.finished.insert(actor);
            }
        }
    }

    fn advance(&mut self) {
        while self.completed < self.plan.stop_step
            && self.done.get(&self.completed).copied().unwrap_or(0) >= self.expected(self.completed)
        {
            let s = self.completed;
            self.done.remove(&s);
            self.write_metrics(s);
            self.completed += 1;
        }
        self.grant();
    }

    fn write_metrics(&mut self, s: u64) {
        let now = Instant::now();
        let mut line = serde_json::Map::new();
        line.insert("step".into(), s.into());
        line.insert("time_s".into(), (now - self.t0).as_secs_f64().into());
        line.insert(
            "step_time_s".into(),
            (now - self.step_t).as_secs_f64().into(),
        );
        self.step_t = now;
        // A key one actor reports several times in a step (once per micro-batch: the losses under
        // gradient accumulation) is logged as the mean of its reports, summed in report order as
        // the optimizer sums its `loss_mean`: the loss of the whole k·B batch, not the last
        // micro-batch's. A key several actors report (e.g. `exit_step` of both rollouts) is taken
        // from the actor whose name sorts last, so the line never depends on arrival order.
        let mut merged: BTreeMap<String, f64> = BTreeMap::new();
        for (_, keys) in self.scalars.remove(&s).unwrap_or_default() {
            for (k, (sum, n)) in keys {
                merged.insert(k, sum / n.max(1) as f64);
            }
        }
        for (k, v) in merged {
            line.insert(
                k,
                serde_json::Number::from_f64(v)
                    .map(Into::into)
                    .unwrap_or(serde_json::Value::Null),
            );
        }
        let v = serde_json::Value::Object(line);
        crate::profile::record_step(&v);
        if let Some(f) = &mut self.metrics_file {
            let _ = writeln!(f, "{v}");
        }
        if let Some(cb) = &mut self.on_step {
            cb(&v);
        }
        self.history.push(v);
    }

    fn maybe_checkpoint(&mut self, step: u64) {
        let have = self.states.get(&step).map(|m| m.len()).unwrap_or(0);
        if have < self.stateful.len() {
            return;
        }
        let Some(states) = self.states.remove(&step) else {
            return;
        };
        if let Some(cp) = &mut self.checkpoint {
            match cp(step, states) {
                Ok(p) => self.checkpoints_written.push(p),
                Err(e) => {
                    if self.error.is_none() {
                        self.error = Some(format!("checkpoint at step {step} failed: {e:#}"));
                    }
                    self.cancel.cancel();
                }
            }
        }
    }

    /// Every actor finished (or an error occurred).
    pub fn all_finished(&self) -> bool {
        self.error.is_some() || self.finished.len() >= self.all_actors.len()
    }
}

/// The actix face of the supervisor.
pub struct SupervisorActor {
    pub inner: Supervisor,
    pub done_tx: Option<std::sync::mpsc::Sender<Supervisor>>,
}

impl actix::Actor for SupervisorActor {
    type Context = actix::Context<Self>;
}

/// An actor event delivered to the supervisor's mailbox.
pub struct EventMsg(pub Event);
impl actix::Message for EventMsg {
    type Result = ();
}

/// Stop the run cleanly (signal).
pub struct StopMsg;
impl actix::Message for StopMsg {
    type Result = ();
}

impl SupervisorActor {
    fn check_done(&mut self, ctx: &mut actix::Context<Self>) {
        if self.inner.all_finished() {
            use actix::ActorContext;
            ctx.stop();
            actix::System::current().stop();
        }
    }
}

impl actix::Handler<EventMsg> for SupervisorActor {
    type Result = ();
    fn handle(&mut self, msg: EventMsg, ctx: &mut actix::Context<Self>) {
        self.inner.handle(msg.0);
        self.check_done(ctx);
    }
}

impl actix::Handler<StopMsg> for SupervisorActor {
    type Result = ();
    fn handle(&mut self, _msg: StopMsg, _ctx: &mut actix::Context<Self>) {
        self.inner.request_stop();
    }
}

impl Drop for SupervisorActor {
    fn drop(&mut self) {
        // Hand the bookkeeping back to the driver once the actor system stops.
        if let Some(tx) = self.done_tx.take() {
            let plan = self.inner.plan.clone();
            let placeholder = Supervisor::new(
                plan,
                Arc::new(Credits::default()),
                self.inner.cancel.clone(),
                BTreeSet::new(),
                1,
            );
            let _ = tx.send(std::mem::replace(&mut self.inner, placeholder));
        }
    }
}
