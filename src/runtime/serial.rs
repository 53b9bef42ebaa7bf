//! The `serial` executor: every actor built on the calling thread, work items in the reference's
//! global order, actors in topological order. This is the reference semantics the other schedules
//! are tested against.

use super::actor::{Actor, Ctx, Event};
use super::exec::{memlog, panic_message, state_or_empty, Msg, Setup};
use super::packet::{Packet, Ports, Work};
use super::supervisor::Supervisor;
use super::weights::WeightsHub;
use super::wiring::Wiring;
use crate::rng::Lane;
use anyhow::{anyhow, Context as _};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Run the graph on the calling thread in the reference's order.
// Actors, contexts and queues are parallel vectors indexed by actor position.
#[allow(clippy::needless_range_loop)]
pub fn run_serial(
    setup: &mut Setup,
    sup: &mut Supervisor,
    stop_flag: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let cancel = sup.cancel.clone();
    let credits = sup.credits.clone();
    let hubs = setup.hubs();
    let w = setup.wiring.clone();
    let stateful = setup.stateful();
    if setup.device == tch::Device::Cpu {
        // Same intra-op threading as the threaded executor, so CPU numbers are bit-identical.
        tch::set_num_threads(1);
    }
    // Actors report scalars through a channel; drained into the supervisor after each item.
    let (ev_tx, ev_rx) = crossbeam_channel::unbounded::<Event>();
    let mut ctxs = vec![];
    let mut actors: Vec<Box<dyn Actor>> = vec![];
    for i in 0..w.nodes.len() {
        let mut ctx = setup.ctx(i, &hubs, &cancel, &credits, Some(ev_tx.clone()));
        let mut a = (setup.build)(&w.nodes[i], &mut ctx)
            .with_context(|| format!("building actor `{}`", w.nodes[i].name))?;
        if let Some(st) = setup.resume.remove(&w.nodes[i].name) {
            a.restore(&mut ctx, st)
                .with_context(|| format!("restoring actor `{}`", w.nodes[i].name))?;
        }
        memlog(&w.nodes[i].name, ctx.device);
        actors.push(a);
        ctxs.push(ctx);
    }
    for i in 0..w.nodes.len() {
        actors[i]
            .start(&mut ctxs[i])
            .with_context(|| format!("starting actor `{}`", w.nodes[i].name))?;
    }
    // Service actors (weights subscribers) and the next version each expects.
    let mut services: Vec<(usize, Arc<WeightsHub>, u64)> = vec![];
    for i in 0..w.nodes.len() {
        if w.lanes[i].is_empty() {
            if let Some(wi) = ctxs[i].weights_in.values().next() {
                let first = first_service_version(setup, &wi.model);
                services.push((i, wi.hub.clone(), first));
            }
        }
    }
    let mut queues: Vec<VecDeque<Msg>> = (0..w.data.len()).map(|_| VecDeque::new()).collect();
    let start = setup.plan.start_step;
    let mut boundaries = setup.boundaries(setup.plan.stop_step);
    let drain = |actors: &mut Vec<Box<dyn Actor>>,
                 ctxs: &mut Vec<Ctx>,
                 services: &mut Vec<(usize, Arc<WeightsHub>, u64)>|
     -> anyhow::Result<()> {
        for (i, hub, next) in services.iter_mut() {
            while hub.latest_version().is_some_and(|v| v >= *next) {
                let v = *next;
                let (a, c) = (&mut actors[*i], &mut ctxs[*i]);
                hub.with_version(v, v, &cancel, |_, p| a.on_version(c, v, p.tensors))
                    .map_err(|e| anyhow!("{e}"))??;
                *next += 1;
            }
        }
        Ok(())
    };
    let collect_states =
        |actors: &mut Vec<Box<dyn Actor>>, sup: &mut Supervisor, b: u64| -> anyhow::Result<()> {
            for i in 0..w.nodes.len() {
                if stateful.contains(&w.nodes[i].name) {
                    let st = state_or_empty(actors[i].as_mut())?;
                    sup.handle(Event::State {
                        actor: w.nodes[i].name.clone(),
                        step: b,
                        state: st,
                    });
                }
            }
            Ok(())
        };
    drain(&mut actors, &mut ctxs, &mut services)?;
    let mut s = start;
    while s < credits.stop() {
        if stop_flag.load(std::sync::atomic::Ordering::SeqCst) {
            credits.stop_at(s);
            break;
        }
        while boundaries.front().is_some_and(|&b| b <= s) {
            let b = boundaries.pop_front().unwrap_or(s);
            collect_states(&mut actors, sup, b)?;
        }
        for lane in [Lane::Generator, Lane::Critic] {
            if !setup.plan.lane_runs(lane, s) {
                continue;
            }
            for micro in 0..setup.plan.micro {
                let work = Work {
                    step: s,
                    lane,
                    micro,
                };
                for i in 0..w.nodes.len() {
                    if !w.lanes[i].contains(&lane) {
                        continue;
                    }
                    let mut inputs = Ports::new();
                    for (k, e) in w.data.iter().enumerate() {
                        if e.to == i && e.lanes.contains(&lane) {
                            let (got, p) = queues[k].pop_front().ok_or_else(|| {
                                anyhow!(
                                    "actor `{}`: no packet on `{}` at {work}",
                                    w.nodes[i].name,
                                    e.to_port
                                )
                            })?;
                            debug_assert_eq!(got, work);
                            inputs.insert(e.to_port.clone(), p);
                        }
                    }
                    let t0 = Instant::now();
                    // Panics (e.g. a CUDA out-of-memory inside a tch call) become errors naming
                    // the actor, as in the threaded executor.
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        actors[i].process(&mut ctxs[i], work, inputs)
                    }))
                    .unwrap_or_else(|p| Err(anyhow!("{}", panic_message(p))))
                    .map_err(|e| anyhow!("actor `{}` failed at {work}: {e:#}", w.nodes[i].name))?;
                    sup.handle(Event::Busy {
                        actor: w.nodes[i].name.clone(),
                        work,
                        start: t0,
                        secs: t0.elapsed().as_secs_f64(),
                    });
                    route(&w, i, work, out, |k, m| {
                        queues[k].push_back(m);
                        Ok(())
                    })?;
                    drain(&mut actors, &mut ctxs, &mut services)?;
                    while let Ok(ev) = ev_rx.try_recv() {
                        sup.handle(ev);
                    }
                    sup.handle(Event::Done {
                        actor: w.nodes[i].name.clone(),
                        work,
                    });
                }
            }
        }
        // Scalars reported by actors go straight to the supervisor in serial mode.
        s += 1;
    }
    let stop = credits.stop().min(setup.plan.stop_step).min(s.max(start));
    while let Some(b) = boundaries.pop_front() {
        if b < stop {
            collect_states(&mut actors, sup, b)?;
        }
    }
    if stop > start && !stateful.is_empty() {
        collect_states(&mut actors, sup, stop)?;
    }
    for i in 0..w.nodes.len() {
        actors[i].finish(&mut ctxs[i])?;
        sup.handle(Event::Finished {
            actor: w.nodes[i].name.clone(),
        });
    }
    Ok(())
}

pub(super) fn first_service_version(setup: &Setup, model: &str) -> u64 {
    let v = setup.plan.version_at(model, setup.plan.start_step);
    if setup.plan.start_step > 0 {
        v + 1
    } else {
        v
    }
}

/// Send an actor's outputs along its out edges for `work`; every edge that carries this lane must
/// get a packet (otherwise its consumer would wait forever).
pub(super) fn route(
    w: &Wiring,
    i: usize,
    work: Work,
    mut out: Ports,
    mut send: impl FnMut(usize, Msg) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let edges: Vec<usize> = (0..w.data.len())
        .filter(|&k| w.data[k].from == i && w.data[k].lanes.contains(&work.lane))
        .collect();
    for (n, &k) in edges.iter().enumerate() {
        let port = &w.data[k].from_port;
        let last_use = !edges[n + 1..]
            .iter()
            .any(|&k2| &w.data[k2].from_port == port);
        let p = if last_use {
            out.remove(port)
        } else {
            out.get(port).map(Packet::shallow_clone)
        };
        let p = p.ok_or_else(|| {
            anyhow!(
                "actor `{}` produced no `{port}` at {work} but an edge expects it",
                w.nodes[i].name
            )
        })?;
        send(k, (work, p))?;
    }
    Ok(())
}
