//! The threaded executor (`exact`, `async`): one OS thread per actor that builds and owns its
//! models, bounded crossbeam channels between actors, and the actix supervisor as control plane.

use super::actor::{Actor, ActorState, Ctx, Event};
use super::cancel::{Cancel, Interrupted};
use super::exec::{memlog, panic_message, state_or_empty, Msg, Setup};
use super::packet::{Ports, Work};
use super::serial::{first_service_version, route};
use super::supervisor::Supervisor;
use super::weights::WeightsHub;
use super::wiring::Wiring;
use crate::rng::Lane;
use anyhow::{anyhow, Context as _};
use crossbeam_channel::{select, Receiver, Sender};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

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
                    actor_thread(&setup, &w2, i, &mut ctx, &io, resume, first)
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
    io: &ThreadIo,
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
    memlog(&node.name, ctx.device);
    let mut timer = super::gpu_timer::GpuTimer::new(&node.name, &stream).map_err(e0)?;
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
    if let Some((hub, sub, _)) = &io.service_sub {
        let (hub, sub) = (hub.clone(), *sub);
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
                if let Some(tx) = &ctx.events {
                    let _ = tx.send(Event::Queue {
                        edge: format!("{}.{port}", ctx.name),
                        depth: rx.len(),
                        capacity: rx.capacity().unwrap_or(0),
                    });
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
                        let mut p = p;
                        p.to_device(ctx.device).map_err(we)?;
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
            let gpu_start = match timer {
                Some(_) => Some(super::gpu_timer::GpuTimer::start(&stream).map_err(we)?),
                None => None,
            };
            let out = actor.process(ctx, work, inputs).map_err(we)?;
            if let (Some(t), Some(ev)) = (timer.as_mut(), gpu_start) {
                t.end(format!("{} {work}", ctx.name), ev, &stream)
                    .map_err(we)?;
                t.poll(ctx.events.as_ref()).map_err(we)?;
            }
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
    if let Some(t) = timer.as_mut() {
        t.flush(ctx.events.as_ref()).map_err(e0)?;
    }
    actor.finish(ctx).map_err(e0)?;
    // The caller drops `io` after reporting: that closes this actor's out edges (ending its
    // consumers' loops) and, on failure, only after the error and the cancellation are out, so
    // neighbours that lose a channel are recognised as casualties.
    Ok(())
}
