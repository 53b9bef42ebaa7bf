//! The comm layer: every collective of a process goes through one `Comm`, which numbers it, names
//! it, and (optionally) checks through the store that every rank issues the same collective at the
//! same position. c10d matches collectives purely by position, so a rank that issues a different
//! one (or one more) would otherwise hang or silently mix unrelated tensors; with the check it
//! stops with an error that names both sides.
//!
//! A single process (world 1) gets the same API with local semantics (reductions are identities,
//! a gather copies), so callers need no `if distributed` branches.
//!
//! Also here: the bucketed gradient all-reduce (flatten into buckets of at most B bytes, sum,
//! divide by the world size, copy back).

use super::env::DistEnv;
use super::group::{describe, GroupOptions, ProcessGroup, ReduceOp};
use anyhow::{bail, Context, Result};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// When to verify the collective order across ranks.
#[derive(Clone, Debug)]
pub struct CommOptions {
    /// Check collective number 1, 1+N, 1+2N, … (0: never). Each check costs one store write and
    /// one read per rank (W−1 reads on rank 0).
    pub check_every: u64,
    /// How long a check waits for the other ranks to reach the same position.
    pub check_timeout: Duration,
}

impl Default for CommOptions {
    /// Every call in debug builds, never in release builds; `STILLFLOW_DIST_CHECK_EVERY=N`
    /// overrides both (see `from_env`).
    fn default() -> Self {
        CommOptions {
            check_every: if cfg!(debug_assertions) { 1 } else { 0 },
            check_timeout: Duration::from_secs(300),
        }
    }
}

impl CommOptions {
    /// The defaults, with `STILLFLOW_DIST_CHECK_EVERY` (a count, 0 = off) applied.
    pub fn from_env() -> Result<Self> {
        let mut o = CommOptions::default();
        if let Ok(v) = std::env::var("STILLFLOW_DIST_CHECK_EVERY") {
            o.check_every = v.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "environment variable STILLFLOW_DIST_CHECK_EVERY={v:?} is not a count (0 = off)"
                )
            })?;
        }
        Ok(o)
    }
}

/// Gradient bucketing for `Comm::all_reduce_mean_bucketed`.
#[derive(Clone, Debug)]
pub struct BucketOptions {
    /// Upper bound on one bucket, in bytes of `reduce_kind` (a single larger tensor gets a bucket
    /// of its own).
    pub bucket_bytes: usize,
    /// The dtype the sum runs in. f32 by default, like the reference's FSDP `reduce_dtype`: bf16
    /// gradients summed over many ranks in bf16 lose too many bits.
    pub reduce_kind: Kind,
}

impl Default for BucketOptions {
    fn default() -> Self {
        BucketOptions {
            bucket_bytes: 25 << 20,
            reduce_kind: Kind::Float,
        }
    }
}

/// The one owner of a process's collectives.
pub struct Comm {
    pg: Option<ProcessGroup>,
    rank: usize,
    world: usize,
    /// Collectives issued so far (the next one is number seq + 1).
    seq: u64,
    /// Order checks done so far.
    checks: u64,
    opts: CommOptions,
}

impl Comm {
    /// One process: no group, local semantics.
    pub fn single() -> Comm {
        Comm {
            pg: None,
            rank: 0,
            world: 1,
            seq: 0,
            checks: 0,
            opts: CommOptions::default(),
        }
    }

    /// Joins the job described by `env` (a single process when it is not distributed).
    pub fn init(env: &DistEnv, group: &GroupOptions, opts: CommOptions) -> Result<Comm> {
        if !env.is_distributed() {
            return Ok(Comm::single());
        }
        Ok(Comm::new(ProcessGroup::from_env(env, group)?, opts))
    }

    pub fn new(pg: ProcessGroup, opts: CommOptions) -> Comm {
        Comm {
            rank: pg.rank(),
            world: pg.world_size(),
            pg: Some(pg),
            seq: 0,
            checks: 0,
            opts,
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world
    }
    pub fn is_distributed(&self) -> bool {
        self.pg.is_some()
    }
    /// Collectives issued so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The group's device (CPU for a single process).
    pub fn device(&self) -> Device {
        self.pg.as_ref().map(|p| p.device()).unwrap_or(Device::Cpu)
    }
    pub fn group(&self) -> Option<&ProcessGroup> {
        self.pg.as_ref()
    }

    /// Numbers the next collective and runs the order check when one is due. Returns the group
    /// (None for a single process) and the label used in errors.
    fn begin(
        &mut self,
        op: &str,
        name: &str,
        sig: &str,
    ) -> Result<Option<(&ProcessGroup, String)>> {
        let Some(pg) = self.pg.as_ref() else {
            self.seq += 1;
            return Ok(None);
        };
        self.seq += 1;
        let label = format!("#{} {op} `{name}` {sig}", self.seq);
        let every = self.opts.check_every;
        if every > 0 && (self.seq - 1).is_multiple_of(every) {
            // The check index is used up even when the check fails, so that every rank (all of
            // which fail a mismatched check) moves on to the same fresh keys.
            let k = self.checks;
            self.checks += 1;
            verify_order(pg, k, &label, self.opts.check_timeout)?;
        }
        Ok(Some((pg, label)))
    }

    /// Reduces `t` in place over all ranks.
    pub fn all_reduce(&mut self, name: &str, t: &Tensor, op: ReduceOp) -> Result<()> {
        if let Some((pg, label)) = self.begin("all_reduce", name, &describe(t))? {
            pg.all_reduce(t, op)?.wait().context(label)?;
        }
        Ok(())
    }

    /// In place: the mean of `t` over all ranks (sum, then divide; floating dtypes only).
    pub fn all_reduce_mean(&mut self, name: &str, t: &Tensor) -> Result<()> {
        if !t.is_floating_point() {
            bail!(
                "all_reduce_mean `{name}`: {} is not a floating dtype",
                describe(t)
            );
        }
        self.all_reduce(name, t, ReduceOp::Sum)?;
        if self.world > 1 {
            let _ = t.shallow_clone().g_div_scalar_(self.world as f64);
        }
        Ok(())
    }

    /// Reduces every tensor of `ts` in place in one coalesced operation (one dtype).
    pub fn all_reduce_coalesced(&mut self, name: &str, ts: &[Tensor], op: ReduceOp) -> Result<()> {
        let sig = format!(
            "[{}]",
            ts.iter().map(describe).collect::<Vec<_>>().join(", ")
        );
        if let Some((pg, label)) = self.begin("all_reduce_coalesced", name, &sig)? {
            pg.all_reduce_coalesced(ts, op)?.wait().context(label)?;
        }
        Ok(())
    }

    /// Copies `root`'s `t` into every rank's `t`.
    pub fn broadcast(&mut self, name: &str, t: &Tensor, root: usize) -> Result<()> {
        let sig = format!("{} from {root}", describe(t));
        if let Some((pg, label)) = self.begin("broadcast", name, &sig)? {
            pg.broadcast(t, root)?.wait().context(label)?;
        }
        Ok(())
    }

    /// `root`'s `value` on every rank (e.g. a random draw made once).
    pub fn broadcast_i64(&mut self, name: &str, value: i64, root: usize) -> Result<i64> {
        if self.pg.is_none() {
            self.seq += 1;
            return Ok(value);
        }
        let t = Tensor::from_slice(&[value]).to_device(self.device());
        self.broadcast(name, &t, root)?;
        // Reading the scalar synchronises the stream the broadcast was ordered on.
        Ok(t.int64_value(&[0]))
    }

    /// `output` ← every rank's `input` concatenated along dim 0 in rank order.
    pub fn all_gather(&mut self, name: &str, output: &Tensor, input: &Tensor) -> Result<()> {
        match self.begin("all_gather", name, &describe(input))? {
            Some((pg, label)) => pg.all_gather_into(output, input)?.wait().context(label),
            None => copy_flat(name, output, input),
        }
    }

    /// `output` ← this rank's dim-0 chunk of the reduction of every rank's `input`.
    pub fn reduce_scatter(
        &mut self,
        name: &str,
        output: &Tensor,
        input: &Tensor,
        op: ReduceOp,
    ) -> Result<()> {
        match self.begin("reduce_scatter", name, &describe(input))? {
            Some((pg, label)) => pg
                .reduce_scatter_into(output, input, op)?
                .wait()
                .context(label),
            None => copy_flat(name, output, input),
        }
    }

    /// Returns once every rank got here.
    pub fn barrier(&mut self, name: &str) -> Result<()> {
        if let Some((pg, label)) = self.begin("barrier", name, "")? {
            pg.barrier()?.wait().context(label)?;
        }
        Ok(())
    }

    /// Replaces every gradient in `grads` by its mean over all ranks. The gradients are flattened
    /// in order into buckets of at most `opts.bucket_bytes` (in `opts.reduce_kind`), each bucket is
    /// summed with one all-reduce, divided by the world size and copied back (converting to each
    /// gradient's dtype). Every rank must pass the same shapes in the same order (the order check
    /// compares the buckets). A single process returns at once.
    pub fn all_reduce_mean_bucketed(
        &mut self,
        name: &str,
        grads: &[Tensor],
        opts: &BucketOptions,
    ) -> Result<()> {
        if self.pg.is_none() || grads.is_empty() {
            return Ok(());
        }
        let _g = tch::no_grad_guard();
        let device = self.device();
        let numels: Vec<i64> = grads.iter().map(|g| g.numel() as i64).collect();
        let elem = opts.reduce_kind.elt_size_in_bytes().max(1);
        for (b, range) in plan_buckets(&numels, elem, opts.bucket_bytes)
            .into_iter()
            .enumerate()
        {
            let parts: Vec<Tensor> = grads[range.clone()]
                .iter()
                .map(|g| g.reshape([-1]).to_device(device).to_kind(opts.reduce_kind))
                .collect();
            let flat = Tensor::cat(&parts, 0);
            drop(parts);
            self.all_reduce(&format!("{name}/bucket{b}"), &flat, ReduceOp::Sum)?;
            let _ = flat.shallow_clone().g_div_scalar_(self.world as f64);
            let pieces = flat.split_with_sizes(&numels[range.clone()], 0);
            for (g, p) in grads[range].iter().zip(pieces) {
                // copy_ converts dtype and device back to the gradient's own.
                g.shallow_clone().copy_(&p.view(g.size().as_slice()));
            }
        }
        Ok(())
    }
}

/// Consecutive index ranges of `numels` whose total size (`elem_bytes` each) stays at most
/// `cap_bytes`; a tensor larger than the cap gets a bucket of its own. Depends only on its
/// arguments, so every rank with the same parameter list gets the same buckets.
pub fn plan_buckets(
    numels: &[i64],
    elem_bytes: usize,
    cap_bytes: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = vec![];
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, &n) in numels.iter().enumerate() {
        let sz = n.max(0) as usize * elem_bytes;
        if i > start && bytes + sz > cap_bytes {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += sz;
    }
    if start < numels.len() {
        out.push(start..numels.len());
    }
    out
}

/// World-1 gather/scatter: the output is the input.
fn copy_flat(name: &str, output: &Tensor, input: &Tensor) -> Result<()> {
    if output.numel() != input.numel() {
        bail!(
            "`{name}`: output {} and input {} differ in size (world 1)",
            describe(output),
            describe(input)
        );
    }
    output
        .shallow_clone()
        .copy_(&input.reshape(output.size().as_slice()));
    Ok(())
}

/// Check number `k`: this rank publishes `label`; rank 0 reads every other rank's label, the others
/// read rank 0's. Any difference (or a rank that never arrives) is an error naming both sides.
/// Each rank deletes its own key of check k−2: by the time it passes check k−1, every reader of
/// that older key is done with it.
fn verify_order(pg: &ProcessGroup, k: u64, label: &str, timeout: Duration) -> Result<()> {
    let store = pg.store();
    let (me, world) = (pg.rank(), pg.world_size());
    let key = |check: u64, rank: usize| format!("order/{check}/{rank}");
    store.set(&key(k, me), label.as_bytes())?;
    if k >= 2 {
        store.delete(&key(k - 2, me))?;
    }
    let peers: Vec<usize> = if me == 0 {
        (1..world).collect()
    } else {
        vec![0]
    };
    for r in peers {
        let theirs = store.get(&key(k, r), Some(timeout)).with_context(|| {
            format!(
                "collective order check: rank {r} did not reach the collective this rank ({me}) \
                 issues as {label} within {:.0} s (it is stuck, slower than the timeout, or \
                 issued fewer collectives)",
                timeout.as_secs_f64()
            )
        })?;
        let theirs = String::from_utf8_lossy(&theirs);
        if theirs != label {
            bail!(
                "collective order mismatch: rank {me} issues {label} but rank {r} issues {theirs}. \
                 Every rank must issue the same collectives, with the same shapes, in the same order"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_cap_and_keep_order() {
        // 4-byte elements, cap 40 bytes = 10 elements.
        let b = plan_buckets(&[3, 4, 3, 1, 20, 2, 2], 4, 40);
        assert_eq!(b, vec![0..3, 3..4, 4..5, 5..7]);
        assert!(plan_buckets(&[], 4, 40).is_empty());
        assert_eq!(plan_buckets(&[100], 4, 40), vec![0..1]);
        assert_eq!(plan_buckets(&[1, 1, 1], 4, 1 << 20), vec![0..3]);
    }

    #[test]
    fn single_process_semantics() {
        let mut c = Comm::single();
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        c.all_reduce_mean("x", &t).unwrap();
        c.all_reduce("x", &t, ReduceOp::Max).unwrap();
        c.broadcast("x", &t, 0).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 2.0, 3.0]);
        let out = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        c.all_gather("g", &out, &t).unwrap();
        assert_eq!(Vec::<f32>::try_from(&out).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(c.broadcast_i64("draw", 7, 0).unwrap(), 7);
        c.all_reduce_mean_bucketed("grads", &[t.shallow_clone()], &BucketOptions::default())
            .unwrap();
        c.barrier("b").unwrap();
        assert_eq!(c.seq(), 6);
        let bad = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        assert!(c.all_gather("g", &bad, &t).is_err());
        assert!(c
            .all_reduce_mean("i", &Tensor::from_slice(&[1i64]))
            .is_err());
    }
}
