//! The two executors over the same actors: `serial` (everything on one thread, in the reference's
//! order) and `threaded` (one OS thread per actor, bounded crossbeam channels, actix supervisor).

use super::actor::{Actor, ActorState, Credits, Ctx, Event, WeightsIn};
use super::cancel::{Cancel, Interrupted};
use super::packet::{Packet, Ports, Work};
use super::plan::Plan;
use super::supervisor::Supervisor;
use super::weights::WeightsHub;
use super::wiring::Wiring;
use crate::config::RunConfig;
use crate::rng::Lane;
use anyhow::{anyhow, Context as _};
use crossbeam_channel::{select, Receiver, Sender};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Builds an actor of a kind on the current thread.
pub type BuildFn =
    Arc<dyn Fn(&super::wiring::Node, &mut Ctx) -> anyhow::Result<Box<dyn Actor>> + Send + Sync>;

/// Everything both executors need.
pub struct Setup {
    pub wiring: Wiring,
    pub plan: Arc<Plan>,
    pub cfg: Arc<RunConfig>,
    pub seed: u64,
    pub device: tch::Device,
    pub logdir: std::path::PathBuf,
    pub build: BuildFn,
    /// States to restore, by actor name (resume).
    pub resume: BTreeMap<String, ActorState>,
    /// Actor kinds that keep checkpointable state.
    pub stateful_kinds: Vec<String>,
    pub checkpoint_every: u64,
}

type Msg = (Work, Packet);

impl Setup {
    pub fn stateful(&self) -> BTreeSet<String> {
        self.wiring
            .nodes
            .iter()
            .filter(|n| self.stateful_kinds.contains(&n.kind))
            .map(|n| n.name.clone())
            .collect()
    }

    fn hubs(&self) -> BTreeMap<usize, Arc<WeightsHub>> {
        // Under serial/exact no reader ever needs a version once the next one exists (the next
        // update waits for every use of the current one), so one snapshot per model is enough:
        // for a 1.3B model that is 2.6 GB of GPU memory saved per extra version.
        let keep = match self.plan.mode {
            super::plan::Mode::Async { max_staleness } => max_staleness as usize + 2,
            _ => 1,
        };
        let mut hubs = BTreeMap::new();
        for e in &self.wiring.weights {
            hubs.entry(e.from)
                .or_insert_with(|| Arc::new(WeightsHub::new(&self.wiring.model_of(e.from), keep)));
        }
        hubs
    }

    fn ctx(
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
            rank: 0,
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
    fn boundaries(&self, stop: u64) -> VecDeque<u64> {
        let every = self.checkpoint_every.max(1);
        let start = self.plan.start_step;
        ((start / every + 1) * every..stop)
            .step_by(every as usize)
            .collect()
    }
}

/// With `STILLFLOW_MEMLOG` set, print the CUDA memory allocated after an actor was built.
fn memlog(name: &str, device: tch::Device) {
    if std::env::var_os("STILLFLOW_MEMLOG").is_none() {
        return;
    }
    if let tch::Device::Cuda(i) = device {
        if let Ok(m) = crate::cuda::memory_stats(i) {
            eprintln!(
                "memory after building `{name}`: {:.2} GiB allocated (peak {:.2})",
                m.allocated as f64 / (1u64 << 30) as f64,
                m.peak as f64 / (1u64 << 30) as f64
            );
        }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".into()
    }
}

fn state_or_empty(actor: &mut dyn Actor) -> anyhow::Result<ActorState> {
    Ok(actor.state()?.unwrap_or_default())
}

// ------------------------------------------------------------------------------------------
// serial

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
                hub.with_version(v, v, &cancel, |_, t| a.on_version(c, v, t))
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

fn first_service_version(setup: &Setup, model: &str) -> u64 {
    let v = setup.plan.version_at(model, setup.plan.start_step);
    if setup.plan.start_step > 0 {
        v + 1
    } else {
        v
    }
}

/// Send an actor's outputs along its out edges for `work`; every edge that carries this lane must
/// get a packet (otherwise its consumer would wait forever).
fn route(
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

// ------------------------------------------------------------------------------------------
// threaded

fn recv(rx: &Receiver<Msg>, cancel: &Cancel) -> Result<Msg, Interrupted> {
    select! {
        recv(rx) -> m => m.map_err(|_| Interrupted::Closed),
        recv(cancel.receiver()) -> _ => Err(Interrupted::Cancelled),
    }
}

fn send(tx: &Sender<Msg>, m: Msg, cancel: &Cancel) -> Result<(), Interrupted> {
    select! {
        send(tx, m) -> r => r.map_err(|_| Interrupted::Closed),
        recv(cancel.receiver()) -> _ => Err(Interrupted::Cancelled),
    }
}

struct ThreadIo {
    inputs: Vec<(String, BTreeSet<Lane>, Receiver<Msg>)>,
    outputs: BTreeMap<usize, Sender<Msg>>,
    service_sub: Option<(Arc<WeightsHub>, usize, String)>,
}

/// Run the graph with one OS thread per actor under the actix supervisor.
pub fn run_threaded(setup: Setup, sup: Supervisor) -> anyhow::Result<Supervisor> {
    let cancel = sup.cancel.clone();
    let credits = sup.credits.clone();
    let hubs = setup.hubs();
    let w = setup.wiring.clone();
    let mut txs = vec![];
    let mut rxs = vec![];
    for e in &w.data {
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(e.capacity.max(1));
        txs.push(Some(tx));
        rxs.push(Some(rx));
    }
    let (ev_tx, ev_rx) = crossbeam_channel::unbounded::<Event>();
    let setup = Arc::new(std::sync::Mutex::new(setup));
    let mut handles = vec![];
    for i in 0..w.nodes.len() {
        let mut io = ThreadIo {
            inputs: vec![],
            outputs: BTreeMap::new(),
            service_sub: None,
        };
        for (k, e) in w.data.iter().enumerate() {
            if e.to == i {
                if let Some(rx) = rxs[k].take() {
                    io.inputs.push((e.to_port.clone(), e.lanes.clone(), rx));
                }
            }
            if e.from == i {
                if let Some(tx) = txs[k].take() {
                    io.outputs.insert(k, tx);
                }
            }
        }
        let (ctx, resume, first) = {
            let mut s = setup.lock().map_err(|_| anyhow!("setup lock poisoned"))?;
            let ctx = s.ctx(i, &hubs, &cancel, &credits, Some(ev_tx.clone()));
            if w.lanes[i].is_empty() {
                if let Some(wi) = ctx.weights_in.values().next() {
                    // Subscribe before any publisher starts, so no version is missed.
                    // (On resume it starts after the restored version.)
                    let sub = wi.hub.subscribe_every(first_service_version(&s, &wi.model));
                    io.service_sub = Some((wi.hub.clone(), sub, wi.model.clone()));
                }
            }
            let first = io
                .service_sub
                .as_ref()
                .map(|(_, _, m)| first_service_version(&s, m));
            (ctx, s.resume.remove(&w.nodes[i].name), first.unwrap_or(0))
        };
        let setup = setup.clone();
        let w2 = w.clone();
        let name = w.nodes[i].name.clone();
        let ev = ev_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("actor:{name}"))
            .spawn(move || {
                let mut ctx = ctx;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    actor_thread(&setup, &w2, i, &mut ctx, io, resume, first)
                }));
                let err = match r {
                    Ok(Ok(())) => None,
                    Ok(Err((work, e))) => Some((work, format!("{e:#}"))),
                    Err(p) => Some((None, panic_message(p))),
                };
                // Order matters: report the error, then cancel, then close our hub, so every
                // failure this one causes downstream happens after cancellation and is
                // recognised as a casualty rather than reported as the cause.
                match err {
                    Some(_) if ctx.cancel.is_cancelled() => {}
                    Some((work, msg)) => {
                        let _ = ev.send(Event::Error {
                            actor: name.clone(),
                            work,
                            msg,
                        });
                        ctx.cancel.cancel();
                    }
                    None => {}
                }
                if let Some(h) = &ctx.weights_out {
                    h.close();
                }
                let _ = ev.send(Event::Finished { actor: name });
            })
            .context("spawning an actor thread")?;
        handles.push(h);
    }
    drop(ev_tx);

    // The control plane: an actix system whose supervisor actor receives the events.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Supervisor>();
    let stop_flag = super::signals::install();
    let sys = actix::System::new();
    sys.block_on(async {
        use actix::Actor as _;
        let addr = super::supervisor::SupervisorActor {
            inner: sup,
            done_tx: Some(done_tx),
        }
        .start();
        let bridge_addr = addr.clone();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                while let Ok(ev) = ev_rx.recv() {
                    bridge_addr.do_send(super::supervisor::EventMsg(ev));
                }
            })
            .ok();
        let sig_addr = addr.clone();
        let c2 = cancel.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut sent = false;
                while !c2.is_cancelled() && sig_addr.connected() {
                    if !sent && stop_flag.load(std::sync::atomic::Ordering::SeqCst) {
                        sent = true;
                        sig_addr.do_send(super::supervisor::StopMsg);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            })
            .ok();
    });
    sys.run().context("actix system")?;
    for h in handles {
        let _ = h.join();
    }
    done_rx
        .recv()
        .map_err(|_| anyhow!("supervisor did not report back"))
}

type ThreadErr = (Option<Work>, anyhow::Error);

fn actor_thread(
    setup: &std::sync::Mutex<Setup>,
    w: &Wiring,
    i: usize,
    ctx: &mut Ctx,
    io: ThreadIo,
    resume: Option<ActorState>,
    first_version: u64,
) -> Result<(), ThreadErr> {
    let e0 = |e: anyhow::Error| (None, e);
    let (build, plan, stateful, mut boundaries) = {
        let s = setup
            .lock()
            .map_err(|_| e0(anyhow!("setup lock poisoned")))?;
        (
            s.build.clone(),
            s.plan.clone(),
            s.stateful().contains(&w.nodes[i].name),
            s.boundaries(s.plan.stop_step),
        )
    };
    if ctx.device == tch::Device::Cpu {
        // One intra-op thread per actor: actors already run in parallel, and fixed threading
        // keeps CPU results bit-identical between schedules.
        tch::set_num_threads(1);
    }
    // Each actor thread computes on its own pool stream (the host stream on CPU); the guard keeps
    // it current for this thread only (current streams are thread-local).
    let stream = crate::cuda::CudaStream::for_device(ctx.device, false).map_err(e0)?;
    let _guard = crate::cuda::StreamGuard::new(&stream).map_err(e0)?;
    let node = &w.nodes[i];
    let mut actor =
        build(node, ctx).map_err(|e| e0(e.context(format!("building actor `{}`", node.name))))?;
    if let Some(st) = resume {
        actor.restore(ctx, st).map_err(e0)?;
    }
    actor.start(ctx).map_err(e0)?;
    let emit_state = |actor: &mut Box<dyn Actor>, ctx: &Ctx, b: u64| -> Result<(), ThreadErr> {
        let st = state_or_empty(actor.as_mut()).map_err(e0)?;
        if let Some(tx) = &ctx.events {
            let _ = tx.send(Event::State {
                actor: ctx.name.clone(),
                step: b,
                state: st,
            });
        }
        Ok(())
    };
    let model = io.service_sub.as_ref().map(|(_, _, m)| m.clone());
    if let Some((hub, sub, _)) = io.service_sub {
        let model = model.unwrap_or_default();
        let mut v = first_version;
        loop {
            // States for boundaries whose version is older than v must be taken before consuming v.
            while stateful
                && boundaries
                    .front()
                    .is_some_and(|&b| plan.version_at(&model, b) < v && b < ctx.credits.stop())
            {
                let b = boundaries.pop_front().unwrap_or_default();
                emit_state(&mut actor, ctx, b)?;
            }
            let cancel = ctx.cancel.clone();
            // The stream is synchronised before the version counts as consumed: the publisher may
            // update the shared tensors right after.
            match hub.consume(sub, v, &cancel, |t| {
                let r = actor.on_version(ctx, v, t);
                let _ = stream.synchronize();
                r
            }) {
                Ok(r) => r.map_err(e0)?,
                Err(Interrupted::Closed) => break,
                Err(e) => return Err(e0(anyhow!("{e}"))),
            }
            v += 1;
        }
    } else {
        for work in plan.sequence(&w.lanes[i], plan.start_step) {
            if work.step >= ctx.credits.stop() {
                break;
            }
            while stateful && boundaries.front().is_some_and(|&b| b <= work.step) {
                let b = boundaries.pop_front().unwrap_or_default();
                emit_state(&mut actor, ctx, b)?;
            }
            let we = |e: anyhow::Error| (Some(work), e);
            if io.inputs.is_empty() {
                match ctx.credits.wait(work.step, &ctx.cancel) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return Err(we(anyhow!("{e}"))),
                }
            }
            let mut inputs = Ports::new();
            let mut ended = false;
            for (port, lanes, rx) in &io.inputs {
                if !lanes.contains(&work.lane) {
                    continue;
                }
                match recv(rx, &ctx.cancel) {
                    Ok((got, p)) => {
                        if got != work {
                            return Err(we(anyhow!(
                                "port `{port}` delivered {got} while expecting {work}"
                            )));
                        }
                        // Wait for the producer's stream, and tell the caching allocator these
                        // tensors are now used on ours too.
                        if let Some(ev) = &p.event {
                            ev.block(&stream).map_err(we)?;
                        }
                        if !stream.is_host() {
                            for t in p.tensors.values() {
                                crate::cuda::record_stream(t, &stream).map_err(we)?;
                            }
                        }
                        inputs.insert(port.clone(), p);
                    }
                    Err(Interrupted::Closed) if work.step >= ctx.credits.stop() => {
                        ended = true;
                        break;
                    }
                    Err(Interrupted::Closed) => {
                        return Err(we(anyhow!(
                            "input `{port}` closed before {work}: an upstream actor stopped"
                        )))
                    }
                    Err(e) => return Err(we(anyhow!("{e}"))),
                }
            }
            if ended {
                break;
            }
            let t0 = Instant::now();
            let out = actor.process(ctx, work, inputs).map_err(we)?;
            if let Some(tx) = &ctx.events {
                let _ = tx.send(Event::Busy {
                    actor: ctx.name.clone(),
                    work,
                    start: t0,
                    secs: t0.elapsed().as_secs_f64(),
                });
            }
            let cancel = ctx.cancel.clone();
            route(w, i, work, out, |k, (wk, mut p)| {
                let tx = io
                    .outputs
                    .get(&k)
                    .ok_or_else(|| anyhow!("no sender for edge {k}"))?;
                if !stream.is_host() {
                    let mut ev = crate::cuda::CudaEvent::new(false)?;
                    ev.record(&stream)?;
                    p.event = Some(ev);
                }
                send(tx, (wk, p), &cancel).map_err(|e| anyhow!("{e}"))
            })
            .map_err(we)?;
            if let Some(tx) = &ctx.events {
                let _ = tx.send(Event::Done {
                    actor: ctx.name.clone(),
                    work,
                });
            }
        }
    }
    let stop = ctx.credits.stop().min(plan.stop_step);
    if stateful && !ctx.cancel.is_cancelled() {
        while let Some(b) = boundaries.pop_front() {
            if b < stop {
                emit_state(&mut actor, ctx, b)?;
            }
        }
        if stop > plan.start_step {
            emit_state(&mut actor, ctx, stop)?;
        }
    }
    actor.finish(ctx).map_err(e0)?;
    // Dropping io.outputs closes this actor's out edges, which ends its consumers' loops.
    drop(io.outputs);
    Ok(())
}
