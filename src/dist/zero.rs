//! ZeRO-1 (docs/DISTRIBUTED.md, "ZeRO-1"): a model's f32 master weights and AdamW moments
//! sharded over the W processes of a data-parallel job, while every rank keeps the full weights
//! in the compute precision (the tensors the optimizer publishes to its readers).
//!
//! Layout (`dist::shard`): the trainable parameters, in the optimizer's order, are concatenated
//! into one flat vector of N elements, padded with zeros to W·S elements (S = ⌈N/W⌉); rank r owns
//! the flat range [r·S, (r+1)·S). The padding stays zero through every update (zero gradient,
//! zero moments, zero weight).
//!
//! One update (`reduce`, then `apply` or `discard`):
//! - reduce-scatter of the gradients in f32, summed then divided by W (AVG does not exist on
//!   Gloo), so each rank holds the mean gradient of its shard;
//! - one all-reduce of [loss, Σ shard‖g‖²]: the mean loss and the global gradient norm, identical
//!   on every rank, so every rank takes the same clip and non-finite-skip decision;
//! - AdamW on the shard (`optim::AdamW`, the replicated optimizer's update);
//! - all-gather of the updated shard, cast to the compute precision, into every rank's weights.
//!
//! Every collective runs in rounds of at most `bucket_bytes` of f32 over all ranks, and AdamW
//! steps the shard segment by segment (one segment per round), so the transient buffers stay
//! bucket-sized instead of shard-sized.
//!
//! Checkpoints: `gather_state` rebuilds the full masters and moments on the host of the rank that
//! keeps them, round by round (no full f32 copy on any device); every rank must take part in it.
//! `load` takes full (world-size independent) tensors and keeps this rank's shard, so a checkpoint
//! of any world size, replicated or sharded, resumes on any other.

use super::comm::{BucketOptions, Comm};
use super::group::ReduceOp;
use super::shard::ShardLayout;
use crate::optim::adamw::state_keys;
use crate::optim::{list_names, AdamW, AdamWConfig};
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use tch::{Device, Kind, Tensor};

/// Name prefix of the shard's segments inside the `AdamW` (internal, never in a checkpoint).
const SEGMENT: &str = "shard.";

/// The full optimizer state of a model, gathered from every rank's shard: host tensors in the
/// parameters' shapes and order.
pub struct FullState {
    pub masters: Vec<Tensor>,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
    /// AdamW's step count (the same for every parameter: every update reaches all of them).
    pub step: u64,
}

/// ZeRO-1 AdamW over one model: this rank's shard of the f32 masters and moments, and handles on
/// the model's full weights in the compute precision (which the all-gather fills).
pub struct ZeroAdamW {
    names: Vec<String>,
    weights: Vec<Tensor>,
    layout: ShardLayout,
    rank: usize,
    /// This rank's f32 master shard, [S]; the `AdamW`'s parameters are views of its segments.
    master: Tensor,
    adam: AdamW,
    rounds: Vec<(i64, i64)>,
    kind: Kind,
    device: Device,
    /// The mean gradient of the shard, between `reduce` and `apply`.
    grad: Option<Tensor>,
    checked: bool,
}

impl ZeroAdamW {
    /// `params`: the model's trainable variables (f32, contiguous, named), in the optimizer's
    /// order. Copies this rank's shard of them as the f32 masters, then casts the variables to
    /// the compute precision `kind` in place (the full f32 copy is freed; the weights must not be
    /// read elsewhere meanwhile).
    pub fn new(
        params: &[(String, Tensor)],
        world: usize,
        rank: usize,
        cfg: AdamWConfig,
        kind: Kind,
        buckets: &BucketOptions,
    ) -> Result<ZeroAdamW> {
        let _g = tch::no_grad_guard();
        if params.is_empty() {
            bail!("ZeRO-1: the model has no trainable parameters");
        }
        if rank >= world {
            bail!("ZeRO-1: rank {rank} of {world}");
        }
        for (n, p) in params {
            if p.kind() != Kind::Float {
                bail!(
                    "ZeRO-1: parameter `{n}` is {:?}; the masters start from f32",
                    p.kind()
                );
            }
        }
        let device = params[0].1.device();
        let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
        let weights: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
        let numels: Vec<i64> = weights.iter().map(|t| t.numel() as i64).collect();
        let layout = ShardLayout::new(&numels, world)?;
        let s0 = layout.shard_start(rank);
        let master = layout.read(&weights, s0, s0 + layout.shard_len(), Kind::Float, device)?;
        // f32 elements per rank and round: one round's reduce-scatter input is bucket_bytes.
        let chunk = (buckets.bucket_bytes / 4 / world).max(1) as i64;
        let rounds = layout.rounds(chunk);
        let segments = rounds
            .iter()
            .enumerate()
            .map(|(k, &(o, l))| Ok((format!("{SEGMENT}{k}"), master.f_narrow(0, o, l)?)))
            .collect::<Result<Vec<_>>>()?;
        let adam = AdamW::new(segments, cfg)?;
        if kind != Kind::Float {
            for w in &weights {
                let c = w.f_to_kind(kind)?;
                w.shallow_clone().set_data(&c);
            }
        }
        Ok(ZeroAdamW {
            names,
            weights,
            layout,
            rank,
            master,
            adam,
            rounds,
            kind,
            device,
            grad: None,
            checked: false,
        })
    }

    /// Parameter names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
    /// The full weights in the compute precision (shallow handles on the model's variables).
    pub fn weights(&self) -> &[Tensor] {
        &self.weights
    }
    pub fn layout(&self) -> &ShardLayout {
        &self.layout
    }
    pub fn config(&self) -> &AdamWConfig {
        self.adam.config()
    }
    /// Bytes of f32 masters and the two moments this rank holds (12 per shard element).
    pub fn state_bytes(&self) -> u64 {
        12 * self.layout.shard_len() as u64
    }
    /// Bytes of the full weights in the compute precision.
    pub fn weight_bytes(&self) -> u64 {
        self.layout.total() as u64 * self.kind.elt_size_in_bytes() as u64
    }

    /// What this rank holds against the replicated optimizer, for the start-up log.
    pub fn memory_line(&self) -> String {
        let l = &self.layout;
        format!(
            "f32 masters + AdamW moments for 1/{} of {} parameters ({} per rank, {} padding): \
             {} per rank instead of {} replicated; full weights in {:?} on every rank: {}",
            l.world(),
            l.total(),
            l.shard_len(),
            l.padding(),
            bytes(self.state_bytes()),
            bytes(12 * l.total() as u64),
            self.kind,
            bytes(self.weight_bytes()),
        )
    }

    /// Reduce-scatters `grads` (one per parameter, any float kind) into this rank's mean
    /// gradient shard and returns (mean loss over ranks, global gradient norm). On the first
    /// call with several processes it checks that every rank holds the same weights.
    /// `async_schedule` is refused with several processes (docs/DISTRIBUTED.md).
    pub fn reduce(
        &mut self,
        comm: &mut Comm,
        name: &str,
        async_schedule: bool,
        loss: f64,
        grads: &[Tensor],
    ) -> Result<(f64, f64)> {
        let _g = tch::no_grad_guard();
        self.layout.check(grads, "gradients")?;
        if comm.world_size() != self.layout.world() {
            bail!(
                "ZeRO-1: the shards are laid out for {} processes, the job has {}",
                self.layout.world(),
                comm.world_size()
            );
        }
        if comm.is_distributed() {
            super::data_parallel::refuse_async(comm, name, async_schedule)?;
            if !self.checked {
                super::data_parallel::check_same_weights(comm, name, &self.weights, comm.device())?;
            }
        }
        self.checked = true;
        let (w, s, dev) = (self.layout.world(), self.layout.shard_len(), self.device);
        let gshard = Tensor::f_zeros([s], (Kind::Float, dev))?;
        let mut sq = Tensor::f_zeros([], (Kind::Double, dev))?;
        for (k, &(o, l)) in self.rounds.iter().enumerate() {
            let parts = (0..w)
                .map(|r| {
                    let a = self.layout.shard_start(r) + o;
                    self.layout.read(grads, a, a + l, Kind::Float, dev)
                })
                .collect::<Result<Vec<_>>>()?;
            let input = Tensor::f_cat(&parts, 0)?;
            drop(parts);
            let out = Tensor::f_empty([l], (Kind::Float, dev))?;
            comm.reduce_scatter(
                &format!("{name}/grads/shard{k}"),
                &out,
                &input,
                ReduceOp::Sum,
            )?;
            drop(input);
            if w > 1 {
                let _ = out.shallow_clone().f_div_scalar_(w as f64)?;
            }
            sq = sq.f_add(&out.f_square()?.f_sum(Kind::Double)?)?;
            gshard.f_narrow(0, o, l)?.f_copy_(&out)?;
        }
        let v = Tensor::f_stack(
            &[
                Tensor::from(loss)
                    .f_to_device(dev)?
                    .f_to_kind(Kind::Double)?,
                sq,
            ],
            0,
        )?;
        comm.all_reduce(&format!("{name}/loss_sqnorm"), &v, ReduceOp::Sum)?;
        let v = Vec::<f64>::try_from(&v.f_to_device(Device::Cpu)?).context("loss and norm")?;
        self.grad = Some(gshard);
        Ok((v[0] / w as f64, v[1].sqrt()))
    }

    /// Drops the reduced gradient (a skipped update).
    pub fn discard(&mut self) {
        self.grad = None;
    }

    /// AdamW on the shard with the reduced gradient times `scale` (the clip coefficient), then
    /// all-gathers the updated shard into every rank's weights.
    pub fn apply(&mut self, comm: &mut Comm, name: &str, scale: f64) -> Result<()> {
        let _g = tch::no_grad_guard();
        let g = self
            .grad
            .take()
            .context("ZeRO-1: an update without a reduced gradient")?;
        let segments = self
            .rounds
            .iter()
            .map(|&(o, l)| Ok(g.f_narrow(0, o, l)?))
            .collect::<Result<Vec<_>>>()?;
        self.adam.step_with_grads(&segments, scale)?;
        drop(segments);
        drop(g);
        self.gather_weights(comm, name)
    }

    /// Every rank's master shard, in the compute precision, into every rank's full weights.
    fn gather_weights(&self, comm: &mut Comm, name: &str) -> Result<()> {
        let (w, dev) = (self.layout.world(), self.device);
        for (k, &(o, l)) in self.rounds.iter().enumerate() {
            let input = self.master.f_narrow(0, o, l)?.f_to_kind(self.kind)?;
            let out = Tensor::f_empty([w as i64 * l], (self.kind, dev))?;
            comm.all_gather(&format!("{name}/weights{k}"), &out, &input)?;
            for r in 0..w {
                let piece = out.f_narrow(0, r as i64 * l, l)?;
                self.layout
                    .write(&self.weights, self.layout.shard_start(r) + o, &piece)?;
            }
        }
        Ok(())
    }

    /// The full masters and moments, gathered from every rank round by round; `keep`: this rank
    /// keeps them (host tensors), the others only take part. Every rank must call it at the same
    /// point of its collective sequence.
    pub fn gather_state(
        &self,
        comm: &mut Comm,
        name: &str,
        keep: bool,
    ) -> Result<Option<FullState>> {
        let _g = tch::no_grad_guard();
        let st = self.adam.state_tensors();
        // state_tensors: exp_avg, exp_avg_sq, step per segment, in segment order.
        let moment = |j: usize| -> Vec<Tensor> {
            st.iter()
                .skip(j)
                .step_by(3)
                .map(|(_, t)| t.shallow_clone())
                .collect()
        };
        let masters = self
            .rounds
            .iter()
            .map(|&(o, l)| Ok(self.master.f_narrow(0, o, l)?))
            .collect::<Result<Vec<_>>>()?;
        let w = self.layout.world();
        let mut out = vec![];
        for (what, segs) in [
            ("masters", masters),
            ("exp_avg", moment(0)),
            ("exp_avg_sq", moment(1)),
        ] {
            let full = if keep {
                self.weights
                    .iter()
                    .map(|t| Ok(Tensor::f_zeros(t.size(), (Kind::Float, Device::Cpu))?))
                    .collect::<Result<Vec<_>>>()?
            } else {
                vec![]
            };
            for (k, (&(o, l), seg)) in self.rounds.iter().zip(&segs).enumerate() {
                let got = Tensor::f_empty([w as i64 * l], (Kind::Float, self.device))?;
                comm.all_gather(&format!("{name}/state/{what}{k}"), &got, seg)?;
                if keep {
                    let got = got.f_to_device(Device::Cpu)?;
                    for r in 0..w {
                        let piece = got.f_narrow(0, r as i64 * l, l)?;
                        self.layout
                            .write(&full, self.layout.shard_start(r) + o, &piece)?;
                    }
                }
            }
            out.push(full);
        }
        if !keep {
            return Ok(None);
        }
        let exp_avg_sq = out.pop().unwrap_or_default();
        let exp_avg = out.pop().unwrap_or_default();
        let masters = out.pop().unwrap_or_default();
        Ok(Some(FullState {
            masters,
            exp_avg,
            exp_avg_sq,
            step: self.adam.steps_taken(),
        }))
    }

    /// Restores from full, world-size independent tensors: `masters` by parameter name (f32,
    /// the parameters' shapes) and `adam` in `AdamW::state_tensors`' naming (every parameter's
    /// step count equal). Everything is validated first (errors name the key; nothing changes on
    /// error); then this rank keeps its shard and the full weights get the masters.
    pub fn load(&mut self, masters: &[(String, Tensor)], adam: &[(String, Tensor)]) -> Result<()> {
        let _g = tch::no_grad_guard();
        let ms: HashMap<&str, &Tensor> = masters.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let st: HashMap<&str, &Tensor> = adam.iter().map(|(n, t)| (n.as_str(), t)).collect();
        if ms.len() != masters.len() || st.len() != adam.len() {
            bail!("optimizer state: duplicate keys");
        }
        let (mut missing, mut full_m, mut full_a, mut full_v) = (vec![], vec![], vec![], vec![]);
        let mut steps: Vec<(String, i64)> = vec![];
        for (n, w) in self.names.iter().zip(&self.weights) {
            let [ka, kv, ks] = state_keys(n);
            for (key, map, dst) in [
                (n.clone(), &ms, &mut full_m),
                (ka, &st, &mut full_a),
                (kv, &st, &mut full_v),
            ] {
                match map.get(key.as_str()) {
                    None => missing.push(key),
                    Some(t) if t.size() != w.size() || t.kind() != Kind::Float => bail!(
                        "optimizer state: `{key}` is {:?} {:?}, expected f32 {:?}",
                        t.kind(),
                        t.size(),
                        w.size()
                    ),
                    Some(t) => dst.push(t.shallow_clone()),
                }
            }
            match st.get(ks.as_str()) {
                None => missing.push(ks),
                Some(t) if t.numel() != 1 || t.kind() != Kind::Int64 => bail!(
                    "optimizer state: `{ks}` must be one i64, got {:?} {:?}",
                    t.kind(),
                    t.size()
                ),
                Some(t) => steps.push((ks, t.f_int64_value(&[])?)),
            }
        }
        if !missing.is_empty() {
            bail!("optimizer state: missing {}", list_names(&missing));
        }
        let known: HashSet<String> = self
            .names
            .iter()
            .flat_map(|n| state_keys(n))
            .chain(self.names.iter().cloned())
            .collect();
        let extra: Vec<String> = masters
            .iter()
            .chain(adam)
            .map(|(n, _)| n.clone())
            .filter(|n| !known.contains(n))
            .collect();
        if !extra.is_empty() {
            bail!(
                "optimizer state: unexpected {} (state of another model?)",
                list_names(&extra)
            );
        }
        let step = steps.first().map(|s| s.1).unwrap_or(0);
        if let Some((k, v)) = steps.iter().find(|s| s.1 != step) {
            bail!(
                "optimizer state: `{k}` is {v} but `{}` is {step}: zero_stage 1 keeps one AdamW \
                 step count for the whole model; resume this checkpoint with zero_stage: 0",
                steps[0].0
            );
        }
        if step < 0 {
            bail!("optimizer state: `{}` is negative ({step})", steps[0].0);
        }
        let (s0, s) = (self.layout.shard_start(self.rank), self.layout.shard_len());
        let dev = self.device;
        let shard_m = self.layout.read(&full_m, s0, s0 + s, Kind::Float, dev)?;
        let shard_a = self.layout.read(&full_a, s0, s0 + s, Kind::Float, dev)?;
        let shard_v = self.layout.read(&full_v, s0, s0 + s, Kind::Float, dev)?;
        let mut state = vec![];
        for (k, &(o, l)) in self.rounds.iter().enumerate() {
            let [ka, kv, ks] = state_keys(&format!("{SEGMENT}{k}"));
            state.push((ka, shard_a.f_narrow(0, o, l)?));
            state.push((kv, shard_v.f_narrow(0, o, l)?));
            state.push((ks, Tensor::from(step)));
        }
        self.adam.load_state(&state)?;
        self.master.f_copy_(&shard_m)?;
        for (w, m) in self.weights.iter().zip(&full_m) {
            w.shallow_clone().f_copy_(m)?;
        }
        self.grad = None;
        Ok(())
    }
}

/// Decimal bytes (`15.60 GB`), as docs/DISTRIBUTED.md counts them.
fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::grads_total_norm;

    fn params(seed: i64) -> Vec<(String, Tensor)> {
        tch::manual_seed(seed);
        [vec![5, 3], vec![7], vec![2, 2, 3]]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    format!("p{i}"),
                    Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)),
                )
            })
            .collect()
    }

    /// One process: the sharded optimizer (several rounds and segments) takes the replicated
    /// AdamW's steps, and its gathered state is the replicated state.
    #[test]
    fn world_one_matches_replicated_adamw() {
        let cfg = AdamWConfig {
            lr: 0.05,
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let rep = params(1);
        let mut adam = AdamW::new(
            rep.iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
            cfg,
        )
        .unwrap();
        let sh = params(1);
        // Rounds of 12 f32 elements: 3 rounds over the 34 elements.
        let buckets = BucketOptions {
            bucket_bytes: 48,
            ..BucketOptions::default()
        };
        let mut z = ZeroAdamW::new(&sh, 1, 0, cfg, Kind::Float, &buckets).unwrap();
        assert_eq!(z.rounds.len(), 3);
        let mut comm = Comm::single();
        for step in 0..3 {
            tch::manual_seed(100 + step);
            let grads: Vec<Tensor> = rep.iter().map(|(_, t)| t.randn_like()).collect();
            let (loss, norm) = z.reduce(&mut comm, "g", false, 0.5, &grads).unwrap();
            assert_eq!(loss, 0.5);
            let want = grads_total_norm(&grads).unwrap();
            assert!((norm - want).abs() < 1e-6 * want, "{norm} vs {want}");
            let coef = 0.7;
            adam.step_with_grads(&grads, coef).unwrap();
            z.apply(&mut comm, "g", coef).unwrap();
        }
        for ((n, a), (_, b)) in rep.iter().zip(&sh) {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d < 1e-6, "{n} differs by {d}");
        }
        let full = z.gather_state(&mut comm, "g", true).unwrap().unwrap();
        assert_eq!(full.step, 3);
        let st = adam.state_tensors();
        for (i, (n, _)) in rep.iter().enumerate() {
            let [ka, kv, _] = state_keys(n);
            let get = |k: &str| st.iter().find(|(x, _)| x == k).unwrap().1.shallow_clone();
            assert!((&full.exp_avg[i] - get(&ka)).abs().max().double_value(&[]) < 1e-6);
            assert!(
                (&full.exp_avg_sq[i] - get(&kv))
                    .abs()
                    .max()
                    .double_value(&[])
                    < 1e-6
            );
            assert!((&full.masters[i] - &rep[i].1).abs().max().double_value(&[]) < 1e-6);
        }
        // Loading the replicated state into a fresh sharded optimizer, then one more step each.
        let fresh = params(7);
        let mut z2 = ZeroAdamW::new(&fresh, 1, 0, cfg, Kind::Float, &buckets).unwrap();
        let masters: Vec<(String, Tensor)> =
            rep.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        z2.load(&masters, &st).unwrap();
        for ((_, a), (_, b)) in rep.iter().zip(&fresh) {
            assert!(a.equal(b));
        }
        let grads: Vec<Tensor> = rep.iter().map(|(_, t)| t.ones_like()).collect();
        z2.reduce(&mut comm, "g", false, 0.0, &grads).unwrap();
        z2.apply(&mut comm, "g", 1.0).unwrap();
        adam.step_with_grads(&grads, 1.0).unwrap();
        for ((_, a), (_, b)) in rep.iter().zip(&fresh) {
            assert!((a - b).abs().max().double_value(&[]) < 1e-6);
        }
        // A state of another model, or unequal step counts, is refused and changes nothing.
        let before: Vec<Tensor> = fresh.iter().map(|(_, t)| t.copy()).collect();
        let mut bad = adam.state_tensors();
        bad.retain(|(n, _)| n != "step.p1");
        bad.push(("step.p1".into(), Tensor::from(99i64)));
        let e = z2.load(&masters, &bad).unwrap_err().to_string();
        assert!(e.contains("zero_stage: 0"), "{e}");
        let mut extra = adam.state_tensors();
        extra.push((
            "exp_avg.q".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ));
        let e = z2.load(&masters, &extra).unwrap_err().to_string();
        assert!(e.contains("unexpected `exp_avg.q`"), "{e}");
        let e = z2
            .load(&masters[1..], &adam.state_tensors())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing `p0`"), "{e}");
        for (a, (_, b)) in before.iter().zip(&fresh) {
            assert!(a.equal(b));
        }
    }
}
