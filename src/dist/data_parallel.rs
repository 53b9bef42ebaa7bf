//! Data-parallel hooks: the process's one `Comm` (set up once at launch), the gradient
//! synchronisation the optimizer calls before its step, a shared draw made by rank 0, and the
//! sharding of items and of keyed random rows across ranks.

use super::comm::{BucketOptions, Comm, CommOptions};
use super::env::DistEnv;
use super::group::{GroupOptions, ReduceOp};
use anyhow::{bail, Context, Result};
use std::sync::{Mutex, MutexGuard, OnceLock};
use tch::{Device, Kind, Tensor};

static PROCESS_COMM: OnceLock<Mutex<Comm>> = OnceLock::new();

/// Joins the job described by `env` and makes its `Comm` the process's (for the optimizer hook).
/// A single process sets nothing: every hook below is then a no-op. Call once, before the actors
/// are built; a second call is an error.
pub fn init_process_comm(env: &DistEnv, group: &GroupOptions, opts: CommOptions) -> Result<()> {
    if !env.is_distributed() {
        return Ok(());
    }
    let comm = Comm::init(env, group, opts)?;
    PROCESS_COMM
        .set(Mutex::new(comm))
        .map_err(|_| anyhow::anyhow!("the process's comm is already set up"))
}

/// For the run driver: joins the job described by `env` for training on `device` unless this
/// process already did (a test may call `init_process_comm` itself before `train`); then the
/// existing comm must be the same job and device. A single process does nothing.
pub fn ensure_process_comm(
    env: &DistEnv,
    device: Device,
    group: &GroupOptions,
    opts: CommOptions,
) -> Result<()> {
    if !env.is_distributed() {
        return Ok(());
    }
    if let Some(c) = process_comm() {
        if (c.rank(), c.world_size(), c.device()) != (env.rank, env.world_size, device) {
            bail!(
                "this process already joined a job as rank {}/{} on {:?}, but trains as {} on \
                 {device:?}",
                c.rank(),
                c.world_size(),
                c.device(),
                env.describe()
            );
        }
        return Ok(());
    }
    let group = GroupOptions {
        device: Some(device),
        ..group.clone()
    };
    init_process_comm(env, &group, opts)
}

/// The process's comm, when this process is one of several.
pub fn process_comm() -> Option<MutexGuard<'static, Comm>> {
    PROCESS_COMM
        .get()
        .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Rank 0 calls `draw`; every rank returns rank 0's value (e.g. the exit step or the number of
/// blocks, spec §2). Without a group, `draw()` itself.
pub fn shared_draw(comm: &mut Comm, name: &str, draw: impl FnOnce() -> i64) -> Result<i64> {
    let v = if comm.rank() == 0 { draw() } else { 0 };
    comm.broadcast_i64(name, v, 0)
}

/// The items of a list of `total` that rank `rank` of `world` takes, as a distributed sampler
/// without shuffling: rank, rank + world, rank + 2·world, … With `pad`, the list is first extended
/// by wrapping around to a multiple of `world`, so every rank gets the same count.
pub fn shard_indices(total: usize, rank: usize, world: usize, pad: bool) -> Vec<usize> {
    if total == 0 || world == 0 || rank >= world {
        return vec![];
    }
    let len = if pad {
        total.div_ceil(world) * world
    } else {
        total
    };
    (rank..len).step_by(world).map(|i| i % total).collect()
}

/// First global row of micro-batch `micro` (of `batch` rows) on `rank`: the step's rows are
/// numbered micro-batch by micro-batch, rank by rank. Keyed per-row draws
/// (`rng::randn_rows(key, first, …)` with a rank-free key) then make W ranks × k micro-batches of
/// B rows draw exactly what one process with k micro-batches of W·B rows draws, so a
/// data-parallel run equals the single-process run with the larger batch (up to float summation
/// order). With world 1 this is `micro · batch`, today's numbering.
pub fn global_first_row(micro: u64, rank: usize, world: usize, batch: u64) -> u64 {
    (micro * world as u64 + rank as u64) * batch
}

/// Gradient synchronisation for one optimizer: averages the gradients (bucketed, f32) and the loss
/// over all ranks, so every rank computes the same norm, makes the same skip decision and takes
/// the same step. On its first call it also checks that every rank holds the same weights (a
/// per-process seed or a missing checkpoint on one host would otherwise train W different models
/// while averaging their gradients).
#[derive(Default)]
pub struct GradSync {
    buckets: BucketOptions,
    calls: u64,
}

impl GradSync {
    pub fn new(buckets: BucketOptions) -> Self {
        GradSync { buckets, calls: 0 }
    }

    /// With the process's comm: see the type doc; returns the mean loss over all ranks. Without
    /// one (a single process): returns `loss` and touches nothing. `name` prefixes the
    /// collectives' names (e.g. `generator`); `async_schedule` refuses the `async` schedule,
    /// whose optimizer threads are not ordered by data (docs/DISTRIBUTED.md).
    pub fn sync(
        &mut self,
        name: &str,
        async_schedule: bool,
        loss: f64,
        grads: &[Tensor],
        weights: &[Tensor],
    ) -> Result<f64> {
        let Some(mut comm) = process_comm() else {
            return Ok(loss);
        };
        self.sync_with(&mut comm, name, async_schedule, loss, grads, weights)
    }

    /// `sync` through an explicit comm.
    pub fn sync_with(
        &mut self,
        comm: &mut Comm,
        name: &str,
        async_schedule: bool,
        loss: f64,
        grads: &[Tensor],
        weights: &[Tensor],
    ) -> Result<f64> {
        if !comm.is_distributed() {
            return Ok(loss);
        }
        refuse_async(comm, name, async_schedule)?;
        let _g = tch::no_grad_guard();
        let device = comm.device();
        if self.calls == 0 {
            check_same_weights(comm, name, weights, device)?;
        }
        self.calls += 1;
        comm.all_reduce_mean_bucketed(&format!("{name}/grads"), grads, &self.buckets)?;
        let l = Tensor::from_slice(&[loss]).to_device(device);
        comm.all_reduce_mean(&format!("{name}/loss"), &l)?;
        let mean = l.double_value(&[0]);
        Ok(mean)
    }
}

/// The `async` schedule with several processes: its two optimizer threads are not ordered by
/// data, so their collectives would not come in the same order on every rank.
pub(super) fn refuse_async(comm: &Comm, name: &str, async_schedule: bool) -> Result<()> {
    if async_schedule && comm.is_distributed() {
        bail!(
            "`{name}`: the async schedule is not supported with {} processes yet: its two \
             optimizer threads are not ordered by data, so their collectives would not be in \
             the same order on every rank (use schedule exact or serial)",
            comm.world_size()
        );
    }
    Ok(())
}

/// Runs `f` with the process's comm, or with a single-process comm (local semantics) when this
/// process is the only one.
pub fn with_process_comm<T>(f: impl FnOnce(&mut Comm) -> Result<T>) -> Result<T> {
    match process_comm() {
        Some(mut c) => f(&mut c),
        None => f(&mut Comm::single()),
    }
}

/// Max and min over ranks of a fingerprint of the weights (f64 sums of values and of squares);
/// any difference means the ranks disagree.
pub(super) fn check_same_weights(
    comm: &mut Comm,
    name: &str,
    weights: &[Tensor],
    device: Device,
) -> Result<()> {
    let (mut s, mut q) = (0f64, 0f64);
    for w in weights {
        let w = w.to_kind(Kind::Double);
        s += w.sum(Kind::Double).double_value(&[]);
        q += (&w * &w).sum(Kind::Double).double_value(&[]);
    }
    let hi = Tensor::from_slice(&[s, q]).to_device(device);
    let lo = hi.copy();
    comm.all_reduce(&format!("{name}/weights_max"), &hi, ReduceOp::Max)?;
    comm.all_reduce(&format!("{name}/weights_min"), &lo, ReduceOp::Min)?;
    let (hi, lo) = (
        Vec::<f64>::try_from(&hi.to_device(Device::Cpu)).context("weights fingerprint")?,
        Vec::<f64>::try_from(&lo.to_device(Device::Cpu)).context("weights fingerprint")?,
    );
    if hi != lo {
        bail!(
            "`{name}`: the ranks start from different weights (fingerprints range over \
             {lo:?}..{hi:?}); every rank must build the model from the same seed (set `seed` to a \
             fixed non-zero value) and load the same checkpoint"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_item_once() {
        assert_eq!(shard_indices(7, 0, 3, false), vec![0, 3, 6]);
        assert_eq!(shard_indices(7, 1, 3, false), vec![1, 4]);
        assert_eq!(shard_indices(7, 2, 3, false), vec![2, 5]);
        // Padded: 9 slots, wrapping to the start; equal counts.
        assert_eq!(shard_indices(7, 1, 3, true), vec![1, 4, 0]);
        assert_eq!(shard_indices(7, 2, 3, true), vec![2, 5, 1]);
        let mut all: Vec<usize> = (0..4)
            .flat_map(|r| shard_indices(10, r, 4, false))
            .collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(shard_indices(5, 0, 1, true), vec![0, 1, 2, 3, 4]);
        assert!(shard_indices(0, 0, 2, true).is_empty());
    }

    #[test]
    fn global_rows_tile_the_big_batch() {
        // 2 ranks × 3 micro-batches × 4 rows = rows 0..24, each exactly once, and micro-batch m of
        // both ranks together is micro-batch m of one process with 8 rows.
        let mut rows = vec![];
        for m in 0..3u64 {
            for r in 0..2 {
                let f = global_first_row(m, r, 2, 4);
                assert!(f >= m * 8 && f + 4 <= (m + 1) * 8);
                rows.extend(f..f + 4);
            }
        }
        rows.sort();
        assert_eq!(rows, (0..24).collect::<Vec<_>>());
        assert_eq!(global_first_row(5, 0, 1, 3), 15);
    }

    #[test]
    fn single_process_hooks_are_no_ops() {
        let mut c = Comm::single();
        assert_eq!(shared_draw(&mut c, "exit", || 3).unwrap(), 3);
        let g = Tensor::from_slice(&[1.0f32, 2.0]);
        let loss = GradSync::default()
            .sync_with(&mut c, "g", true, 0.5, &[g.shallow_clone()], &[])
            .unwrap();
        assert_eq!(loss, 0.5);
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![1.0, 2.0]);
    }
}
