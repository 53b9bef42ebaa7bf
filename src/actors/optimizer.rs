//! `optimizer`: owns a model's f32 master weights and AdamW state (written here, explicit state).
//! For each loss packet it takes the gradient with respect to the producer's parameters
//! (`run_backward` against the packet's gradient targets), accumulates `gradient_accumulation_steps`
//! micro-batches, clips the total norm, applies AdamW, bumps the version and publishes a snapshot.
//! A non-finite loss or gradient norm skips the update (the version still advances, with the old
//! weights, so readers' version arithmetic holds); too many in a row stop the run.
//!
//! With `zero_stage: 1` (ZeRO-1, `dist::zero`) the masters and moments exist only for this rank's
//! shard and the model is kept in the compute precision; checkpoints are written in the same
//! full, world-size independent layout either way.

use crate::actors::zoo::{self, Model};
use crate::dist::{with_process_comm, BucketOptions, ZeroAdamW};
use crate::optim::{grads_total_norm, AdamW, AdamWConfig};
use crate::runtime::{Actor, ActorState, Ctx, Ports, Work};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// Where the f32 masters and AdamW moments live.
enum Masters {
    /// `zero_stage: 0`: the model itself is the f32 masters, with the whole AdamW state, on every
    /// rank. Gradients are all-reduced (averaged) before the update.
    Replicated {
        masters: Vec<(String, Tensor)>,
        adam: AdamW,
        /// Averages loss and gradients over the ranks of a data-parallel job (no-op otherwise).
        grad_sync: crate::dist::GradSync,
    },
    /// `zero_stage: 1`: this rank's shard only; the model holds the compute-precision weights.
    Sharded(ZeroAdamW),
}

pub struct Optimizer {
    model: Model,
    role: String,
    state: Masters,
    clip: f64,
    version: u64,
    micro_done: u32,
    loss_sum: f64,
    nonfinite_in_row: u64,
    nonfinite_total: u64,
    snapshot_kind: Kind,
    share_masters: bool,
    world: u32,
    /// ZeRO-1 with several processes: the full state (host tensors, checkpoint names) of the
    /// version it belongs to, gathered by every rank and kept by rank 0 after the last update
    /// before a checkpoint hand-over, where the collectives are still in step on every rank
    /// (`state()` runs where they are not).
    gathered: Option<(u64, Vec<(String, Tensor)>)>,
}

/// A float parameter: a number, or the name of a config key holding one.
pub fn f64_param(ctx: &Ctx, key: &str, default_key: &str) -> Result<f64> {
    let cfg = serde_json::to_value(&*ctx.cfg)?;
    let lookup = |k: &str| -> Result<f64> {
        cfg.get(k).and_then(|v| v.as_f64()).with_context(|| {
            format!(
                "actor `{}`: `{key}` names config key `{k}`, which is not a number",
                ctx.name
            )
        })
    };
    match ctx.params.get(key) {
        Some(v) if v.is_number() => v.as_f64().context("number"),
        Some(v) if v.is_string() => lookup(v.as_str().unwrap_or_default()),
        Some(v) => bail!(
            "actor `{}`: `{key}` must be a number or a config key, got {v}",
            ctx.name
        ),
        None => lookup(default_key),
    }
}

impl Optimizer {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let cfg = &ctx.cfg;
        let role = ctx.param_str("model").unwrap_or_else(|| "generator".into());
        let gen = role == "generator";
        let name = zoo::name_for(&role, cfg);
        let model = zoo::build(&name, &role, cfg, ctx.seed, ctx.device, Kind::Float, true)?;
        if gen {
            if let Some(ckpt) = &cfg.generator_ckpt {
                load_initial(&model, ckpt)
                    .with_context(|| format!("config key `generator_ckpt`: {ckpt}"))?;
            }
        }
        let masters: Vec<(String, Tensor)> = model
            .vars()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let (lr_k, b1_k, b2_k, clip_k) = if gen {
            ("lr", "beta1", "beta2", "max_grad_norm_generator")
        } else {
            (
                "lr_critic",
                "beta1_critic",
                "beta2_critic",
                "max_grad_norm_critic",
            )
        };
        let acfg = AdamWConfig {
            lr: f64_param(ctx, "lr", lr_k)?,
            beta1: f64_param(ctx, "beta1", b1_k)?,
            beta2: f64_param(ctx, "beta2", b2_k)?,
            eps: 1e-8,
            weight_decay: f64_param(ctx, "weight_decay", "weight_decay")?,
        };
        let snapshot_kind = zoo::compute_kind(cfg, ctx.device);
        let state = if cfg.zero_stage == 1 {
            let world = ctx.world.max(1) as usize;
            let z = ZeroAdamW::new(
                &masters,
                world,
                ctx.rank as usize,
                acfg,
                snapshot_kind,
                &BucketOptions::default(),
            )
            .with_context(|| format!("actor `{}`: zero_stage 1", ctx.name))?;
            if ctx.rank == 0 {
                eprintln!(
                    "zero_stage 1: `{}` ({role}) keeps {}",
                    ctx.name,
                    z.memory_line()
                );
            }
            Masters::Sharded(z)
        } else {
            let adam = AdamW::new(
                masters
                    .iter()
                    .map(|(k, v)| (k.clone(), v.shallow_clone()))
                    .collect(),
                acfg,
            )?;
            Masters::Replicated {
                masters,
                adam,
                grad_sync: crate::dist::GradSync::default(),
            }
        };
        let model_key = if gen { "generator" } else { role.as_str() };
        let version = ctx.plan.version_at(model_key, ctx.plan.start_step);
        Ok(Optimizer {
            clip: f64_param(ctx, "clip", clip_k)?,
            snapshot_kind,
            share_masters: !matches!(ctx.plan.mode, crate::runtime::Mode::Async { .. }),
            world: ctx.world.max(1),
            model,
            role,
            state,
            version,
            micro_done: 0,
            loss_sum: 0.0,
            nonfinite_in_row: 0,
            nonfinite_total: 0,
            gathered: None,
        })
    }

    /// The trainable parameters (names, and the tensors gradients are shaped like), in order.
    fn trainable(&self) -> Vec<(String, Tensor)> {
        match &self.state {
            Masters::Replicated { masters, .. } => masters
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
            Masters::Sharded(z) => z
                .names()
                .iter()
                .zip(z.weights())
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
        }
    }

    fn lr(&self) -> f64 {
        match &self.state {
            Masters::Replicated { adam, .. } => adam.config().lr,
            Masters::Sharded(z) => z.config().lr,
        }
    }

    /// The model key of the plan's version arithmetic.
    fn model_key(&self) -> &str {
        if self.role == "generator" {
            "generator"
        } else {
            self.role.as_str()
        }
    }

    /// The step of this optimizer's next update after step `s` (None: none before the stop).
    fn next_update(ctx: &Ctx, s: u64) -> Option<u64> {
        let lanes = ctx.plan.lanes.get(&ctx.name)?;
        ctx.plan
            .sequence(lanes, s.saturating_add(1))
            .next()
            .map(|w| w.step)
    }

    /// ZeRO-1 with several processes: will a checkpoint take the state this optimizer holds
    /// after step `s` (before its next update)? Every rank decides alike (plan and config only).
    fn state_due_after(&self, ctx: &Ctx, s: u64) -> bool {
        matches!(self.state, Masters::Sharded(_))
            && self.world > 1
            && ctx.cfg.save_checkpoints
            && ctx
                .plan
                .state_due_in(s, Self::next_update(ctx, s).unwrap_or(u64::MAX))
    }

    /// The state in checkpoint layout from a gathered full state (the replicated optimizer's
    /// keys and shapes: `model.<var>` f32 for every variable, `adam.exp_avg.<p>`, …).
    fn full_state_tensors(
        &self,
        z: &ZeroAdamW,
        full: crate::dist::FullState,
    ) -> Result<Vec<(String, Tensor)>> {
        let idx: BTreeMap<&str, usize> = z
            .names()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut tensors = vec![];
        for (k, v) in self.model.vars() {
            let t = match idx.get(k.as_str()) {
                Some(&i) => full.masters[i].shallow_clone(),
                None => crate::checkpoint::host_snapshot(&v)?,
            };
            tensors.push((format!("model.{k}"), t));
        }
        for (i, n) in z.names().iter().enumerate() {
            let [ka, kv, ks] = crate::optim::adamw::state_keys(n);
            tensors.push((format!("adam.{ka}"), full.exp_avg[i].shallow_clone()));
            tensors.push((format!("adam.{kv}"), full.exp_avg_sq[i].shallow_clone()));
            tensors.push((format!("adam.{ks}"), Tensor::from(full.step as i64)));
        }
        Ok(tensors)
    }

    fn publish(&self, ctx: &Ctx) {
        if let Some(hub) = &ctx.weights_out {
            let _g = tch::no_grad_guard();
            // Under serial/exact no reader needs version v once v+1 is computed, and every reader's
            // copy is ordered before our next update (through the data packets it feeds), so the
            // masters themselves are published: no snapshot copy (a model's worth of GPU memory).
            // Under async readers may lag, so they get a deep copy in the compute precision.
            let snap = if self.share_masters {
                self.model.vars()
            } else {
                // One copy per tensor, straight into the snapshot precision (no f32 detour: a
                // whole f32 model copy would be a transient 5 GB at 1.3B).
                self.model
                    .vars()
                    .into_iter()
                    .map(|(k, v)| {
                        let v = v.detach();
                        let c = if v.kind() == self.snapshot_kind {
                            v.copy()
                        } else {
                            v.to_kind(self.snapshot_kind)
                        };
                        (k, c)
                    })
                    .collect()
            };
            let event = crate::cuda::CudaStream::current_for(ctx.device)
                .ok()
                .and_then(|s| {
                    let mut e = crate::cuda::CudaEvent::new(false).ok()?;
                    e.record(&s).ok()?;
                    Some(e)
                });
            hub.publish(self.version, snap, event, !self.share_masters);
        }
    }

    fn prefix(&self) -> &str {
        if self.role == "generator" {
            "generator"
        } else {
            "critic"
        }
    }
}

/// Load initial generator weights from a safetensors file (Wan key names, FSDP prefixes stripped).
fn load_initial(model: &Model, path: &str) -> Result<()> {
    let tensors = crate::models::weights::load_named_tensors(std::path::Path::new(path))?;
    crate::models::weights::copy_into_varstore(&model.vs, &tensors, path)
}

impl Actor for Optimizer {
    fn start(&mut self, ctx: &mut Ctx) -> Result<()> {
        self.publish(ctx);
        Ok(())
    }

    fn process(&mut self, ctx: &mut Ctx, work: Work, inputs: Ports) -> Result<Ports> {
        let p = inputs.get("loss").context("optimizer: no `loss` input")?;
        let loss = p.get("loss")?;
        let k = ctx.plan.micro;
        let lv = loss.double_value(&[]);
        self.loss_sum += lv;
        if p.grad_targets.is_empty() {
            bail!(
                "the loss carries no gradient targets: nothing upstream has trainable parameters"
            );
        }
        let scaled = if k > 1 {
            loss / k as f64
        } else {
            loss.shallow_clone()
        };
        // A plain backward: it fills .grad of the producer's parameters (the gradient targets,
        // shared handles), also through checkpointed blocks, whose recomputation only reaches
        // parameters this way. Frozen networks on the path have requires_grad = false.
        crate::cuda::memlog(&format!("{}: before backward", ctx.name), ctx.device);
        scaled.backward();
        crate::cuda::memlog(&format!("{}: after backward", ctx.name), ctx.device);
        self.micro_done += 1;
        if self.micro_done < k {
            // Gradients keep accumulating in the producer's parameters until the last micro-batch.
            return Ok(Ports::new());
        }
        self.micro_done = 0;
        let loss_mean = self.loss_sum / k as f64;
        self.loss_sum = 0.0;
        let by_name: BTreeMap<&str, &Tensor> = p
            .grad_targets
            .iter()
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        // The gradients live in the producer's (compute-precision) copy; the update converts them
        // to f32 one tensor at a time, so no f32 .grad of the masters is ever kept. A parameter the
        // loss did not reach gets an explicit zero gradient, so every step updates the same set of
        // parameters whatever happened before (a resumed run has no stale zero gradients).
        let trainable = self.trainable();
        let mut grads = Vec::with_capacity(trainable.len());
        for (n, m) in &trainable {
            let target = by_name
                .get(n.as_str())
                .with_context(|| format!("no gradient target for `{n}`"))?;
            let g = target.grad();
            grads.push(if g.defined() { g } else { m.zeros_like() });
        }
        drop(trainable);
        // The gradients were allocated on the producer's stream (backward runs there); this
        // optimizer reads them on its own stream and then drops them (`clear_grads`). Without
        // telling the caching allocator, their memory counts as free on the producer's stream
        // while our reads may still be queued; with expandable segments an out-of-memory retry
        // can even unmap it under those reads (a CUDA illegal memory access).
        if let Ok(s) = crate::cuda::CudaStream::current_for(ctx.device) {
            if !s.is_host() {
                for g in &grads {
                    crate::cuda::record_stream(g, &s)?;
                }
            }
        }
        let pre = self.prefix().to_string();
        let async_schedule = !self.share_masters;
        // Data parallel (docs/DISTRIBUTED.md): the mean loss and gradients over all ranks, so
        // every rank computes the same norm, makes the same skip decision and takes the same step.
        let (loss_mean, norm) = match &mut self.state {
            Masters::Replicated {
                masters, grad_sync, ..
            } => {
                let weights: Vec<Tensor> = masters.iter().map(|(_, m)| m.shallow_clone()).collect();
                let l = grad_sync.sync(&pre, async_schedule, loss_mean, &grads, &weights)?;
                (l, grads_total_norm(&grads)?)
            }
            Masters::Sharded(z) => {
                let r =
                    with_process_comm(|c| z.reduce(c, &pre, async_schedule, loss_mean, &grads))?;
                // The shard's mean gradient is all the update needs: the full gradients' memory
                // is free before AdamW runs.
                grads.clear();
                clear_grads(&p.grad_targets)?;
                r
            }
        };
        let mut report = vec![
            (format!("{pre}_grad_norm"), norm),
            (format!("{pre}_lr"), self.lr()),
        ];
        if ctx.world > 1 {
            // The loss actor logs its rank's loss; the mean over ranks (and micro-batches) is
            // what one process with the W-times larger batch logs. The supervisor keeps the
            // optimizer's value (its actor name sorts after the loss actors').
            report.push((format!("{pre}_loss"), loss_mean));
        }
        if !loss_mean.is_finite() || !norm.is_finite() {
            self.nonfinite_in_row += 1;
            self.nonfinite_total += 1;
            report.push((
                format!("{pre}_nonfinite_skipped"),
                self.nonfinite_total as f64,
            ));
            match &mut self.state {
                Masters::Replicated { adam, .. } => adam.zero_grad(),
                Masters::Sharded(z) => z.discard(),
            }
            if self.nonfinite_in_row >= ctx.cfg.max_nonfinite_steps.max(1) {
                bail!(
                    "{} non-finite {pre} steps in a row (loss {loss_mean}, grad norm {norm}); stopping. \
                     The last good checkpoint is kept; lower the learning rate or check the inputs",
                    self.nonfinite_in_row
                );
            }
            eprintln!("warning: non-finite {pre} loss/grad at {work} (loss {loss_mean}, norm {norm}): update skipped");
        } else {
            self.nonfinite_in_row = 0;
            if self.share_masters {
                // Every-version subscribers (EMA, evaluator) must have read the current version
                // before the published weights change under them.
                if let Some(hub) = &ctx.weights_out {
                    hub.wait_consumed(self.version, &ctx.cancel)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            // clip_grad_norm_: scale by max_norm / (norm + 1e-6) when the norm exceeds max_norm.
            let coef = if norm > self.clip {
                self.clip / (norm + 1e-6)
            } else {
                1.0
            };
            match &mut self.state {
                Masters::Replicated { adam, .. } => {
                    adam.step_with_grads(&grads, coef)?;
                }
                Masters::Sharded(z) => with_process_comm(|c| z.apply(c, &pre, coef))?,
            }
        }
        drop(grads);
        // set_to_none: the gradients' memory (a model's worth) is free until the next backward.
        clear_grads(&p.grad_targets)?;
        self.version += 1;
        // ZeRO-1: the state of this version is gathered now if a checkpoint will take it before
        // the next update (every rank takes part; rank 0 keeps it).
        self.gathered = None;
        if self.state_due_after(ctx, work.step) {
            if let Masters::Sharded(z) = &self.state {
                let full = with_process_comm(|c| z.gather_state(c, &pre, ctx.rank == 0))?;
                if let Some(full) = full {
                    self.gathered = Some((self.version, self.full_state_tensors(z, full)?));
                }
            }
        }
        report.push((format!("{pre}_version"), self.version as f64));
        if let tch::Device::Cuda(i) = ctx.device {
            if let Ok(m) = crate::cuda::memory_stats(i) {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                report.push(("peak_mem_gib".into(), gib(m.peak)));
                // Live tensors after the update: flat over a long run means no leak.
                report.push(("mem_allocated_gib".into(), gib(m.allocated)));
            }
        }
        ctx.report(work.step, report);
        self.publish(ctx);
        Ok(Ports::new())
    }

    fn state(&mut self) -> Result<Option<ActorState>> {
        let _g = tch::no_grad_guard();
        let snap = crate::checkpoint::host_snapshot;
        let tensors: Vec<(String, Tensor)> = match &self.state {
            Masters::Replicated { adam, .. } => {
                let mut tensors = Vec::new();
                for (k, v) in self.model.vars() {
                    tensors.push((format!("model.{k}"), snap(&v)?));
                }
                for (k, v) in adam.state_tensors() {
                    tensors.push((format!("adam.{k}"), snap(&v)?));
                }
                tensors
            }
            // One process: the whole state is here, no collective needed.
            Masters::Sharded(z) if self.world == 1 => {
                let full = z
                    .gather_state(&mut crate::dist::Comm::single(), self.prefix(), true)?
                    .context("ZeRO-1: no state gathered")?;
                self.full_state_tensors(z, full)?
            }
            Masters::Sharded(_) => match &self.gathered {
                Some((v, t)) if *v == self.version => t
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect(),
                _ => bail!(
                    "zero_stage 1: the {} optimizer state of version {} was not gathered from \
                     the {} processes (it is gathered after the last update before each planned \
                     checkpoint; a stop by signal under several processes is not one of them); \
                     the last checkpoint is kept",
                    self.role,
                    self.version,
                    self.world
                ),
            },
        };
        let json = serde_json::json!({
            "role": self.role,
            "version": self.version,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_row": self.nonfinite_in_row,
        });
        Ok(Some(ActorState { tensors, json }))
    }

    fn restore(&mut self, ctx: &mut Ctx, st: ActorState) -> Result<()> {
        let mut model = vec![];
        let mut adam = vec![];
        let all: Vec<(String, Tensor)> = st
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        for (k, v) in st.tensors {
            if let Some(n) = k.strip_prefix("model.") {
                model.push((n.to_string(), v));
            } else if let Some(n) = k.strip_prefix("adam.") {
                adam.push((n.to_string(), v));
            }
        }
        match &mut self.state {
            Masters::Replicated { adam: a, .. } => {
                crate::optim::copy_named_into(
                    &self.model.vars(),
                    &model,
                    "checkpoint model weights",
                )?;
                a.load_state(&adam)?;
            }
            Masters::Sharded(z) => {
                // The checkpoint holds the full state (written by any number of processes, with
                // or without ZeRO): this rank keeps its shard of the masters and moments.
                let names: std::collections::HashSet<&str> =
                    z.names().iter().map(|n| n.as_str()).collect();
                let (masters, rest): (Vec<_>, Vec<_>) = model
                    .into_iter()
                    .partition(|(n, _)| names.contains(n.as_str()));
                let others: Vec<(String, Tensor)> = self
                    .model
                    .vars()
                    .into_iter()
                    .filter(|(n, _)| !names.contains(n.as_str()))
                    .collect();
                crate::optim::copy_named_into(&others, &rest, "checkpoint model weights")?;
                z.load(&masters, &adam)?;
            }
        }
        self.version = st
            .json
            .get("version")
            .and_then(|v| v.as_u64())
            .context("checkpoint state lacks `version`")?;
        let want = ctx.plan.version_at(self.model_key(), ctx.plan.start_step);
        if self.version != want {
            bail!(
                "checkpoint holds {} version {} but step {} needs version {want}",
                self.role,
                self.version,
                ctx.plan.start_step
            );
        }
        self.nonfinite_total = st
            .json
            .get("nonfinite_total")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        self.nonfinite_in_row = st
            .json
            .get("nonfinite_in_row")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        // ZeRO-1 with several processes, resumed where a checkpoint comes before this
        // optimizer's first update: that checkpoint holds the state just loaded.
        let start = ctx.plan.start_step;
        if start > 0 && ctx.rank == 0 && self.state_due_after(ctx, start - 1) {
            self.gathered = Some((self.version, all));
        }
        Ok(())
    }
}

/// Sets the gradients of the gradient targets to none (their memory is free until the next
/// backward).
fn clear_grads(targets: &[(String, Tensor)]) -> Result<()> {
    for (_, t) in targets {
        if t.grad().defined() {
            crate::cuda::clear_grad(t)?;
        }
    }
    Ok(())
}
