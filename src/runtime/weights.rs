//! Versioned weight snapshots (the implementation of weights edges).
//!
//! The owner of a model (its optimizer actor) publishes a deep copy after every update; readers
//! wait for a version in an allowed range and copy it into their own tensors. Nobody ever reads a
//! tensor that its owner mutates in place.

use super::cancel::{Cancel, Interrupted};
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use tch::Tensor;

struct Snapshot {
    tensors: Vec<(String, Tensor)>,
    event: Option<crate::cuda::CudaEvent>,
    /// The tensors are a private copy nobody writes again (async snapshots), so readers may alias
    /// them instead of copying; false when the owner publishes its live master weights.
    immutable: bool,
}

/// A published version as a reader sees it.
pub struct Published<'a> {
    pub tensors: &'a [(String, Tensor)],
    pub immutable: bool,
}

struct Inner {
    snapshots: BTreeMap<u64, Snapshot>,
    /// Versions that every-version subscribers (EMA, …) have consumed, by subscriber id.
    consumed: Vec<Option<u64>>,
    keep: usize,
    closed: bool,
}

pub struct WeightsHub {
    pub model: String,
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl WeightsHub {
    /// `keep`: how many recent versions to retain for readers that may lag (staleness bound + 2
    /// under async, 1 otherwise).
    pub fn new(model: &str, keep: usize) -> Self {
        WeightsHub {
            model: model.to_string(),
            inner: Mutex::new(Inner {
                snapshots: BTreeMap::new(),
                consumed: vec![],
                keep: keep.max(1),
                closed: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means another thread panicked mid-publish; the runtime is shutting down
        // anyway, and the data (tensors by value) is still structurally valid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a subscriber that must see every version from `first` on; returns its id.
    pub fn subscribe_every(&self, first: u64) -> usize {
        let mut g = self.lock();
        g.consumed.push(first.checked_sub(1));
        g.consumed.len() - 1
    }

    /// Publish `version` (`event` recorded on the publisher's stream after the tensors were
    /// written, so readers on other streams wait for it). `immutable`: the tensors are a copy the
    /// publisher never writes again, so readers may alias them (see [`alias_or_copy_named`]).
    pub fn publish(
        &self,
        version: u64,
        tensors: Vec<(String, Tensor)>,
        event: Option<crate::cuda::CudaEvent>,
        immutable: bool,
    ) {
        let mut g = self.lock();
        g.snapshots.insert(
            version,
            Snapshot {
                tensors,
                event,
                immutable,
            },
        );
        // Prune: keep the newest `keep`, and anything an every-version subscriber has not seen.
        let min_needed = g
            .consumed
            .iter()
            .map(|c| c.map(|v| v + 1).unwrap_or(0))
            .min();
        while g.snapshots.len() > g.keep {
            let Some((&oldest, _)) = g.snapshots.iter().next() else {
                break;
            };
            if min_needed.is_some_and(|m| oldest >= m) {
                break;
            }
            g.snapshots.remove(&oldest);
        }
        drop(g);
        self.cv.notify_all();
    }

    /// Wait until every every-version subscriber has consumed `version` (or later).
    pub fn wait_consumed(&self, version: u64, cancel: &Cancel) -> Result<(), Interrupted> {
        let mut g = self.lock();
        while g.consumed.iter().any(|c| c.is_none_or(|c| c < version)) {
            if cancel.is_cancelled() {
                return Err(Interrupted::Cancelled);
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(20))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(())
    }

    /// No more versions will come (the owner finished).
    pub fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }

    pub fn latest_version(&self) -> Option<u64> {
        self.lock().snapshots.keys().next_back().copied()
    }

    /// Wait for the newest version in [lo, hi] and call `f` with it. Versions above `hi` are
    /// never used (exact schedules ask lo == hi).
    pub fn with_version<R>(
        &self,
        lo: u64,
        hi: u64,
        cancel: &Cancel,
        f: impl FnOnce(u64, Published<'_>) -> R,
    ) -> Result<R, Interrupted> {
        let mut g = self.lock();
        loop {
            if cancel.is_cancelled() {
                return Err(Interrupted::Cancelled);
            }
            if let Some((&v, snap)) = g.snapshots.range(lo..=hi).next_back() {
                let (t, ev) = (&snap.tensors, &snap.event);
                if let (Some(ev), Some((_, t0))) = (ev, t.first()) {
                    // Make the reader's current stream wait for the publisher's copy.
                    if let Ok(s) = crate::cuda::CudaStream::current_for(t0.device()) {
                        let _ = ev.block(&s);
                        // The reader's copies run on its stream after the lock is released; the
                        // publisher may prune this snapshot meanwhile, so the allocator must not
                        // hand its memory out again before the reader's stream is done with it.
                        if !s.is_host() {
                            for (_, x) in t.iter() {
                                let _ = crate::cuda::record_stream(x, &s);
                            }
                        }
                    }
                }
                return Ok(f(
                    v,
                    Published {
                        tensors: t,
                        immutable: snap.immutable,
                    },
                ));
            }
            if let Some(&first) = g.snapshots.keys().next().filter(|&&first| first > hi) {
                return Err(Interrupted::Gone { oldest: first });
            }
            if g.closed {
                return Err(Interrupted::Closed);
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// For every-version subscribers: wait for exactly `version`, call `f`, mark it consumed.
    pub fn consume<R>(
        &self,
        sub: usize,
        version: u64,
        cancel: &Cancel,
        f: impl FnOnce(&[(String, Tensor)]) -> R,
    ) -> Result<R, Interrupted> {
        let r = self.with_version(version, version, cancel, |_, p| f(p.tensors))?;
        let mut g = self.lock();
        if let Some(c) = g.consumed.get_mut(sub) {
            *c = Some(version);
        }
        drop(g);
        self.cv.notify_all();
        Ok(r)
    }
}

/// Copy `src` into `dst` by name without recording gradients. Errors name missing/mis-shaped entries.
pub fn copy_named(dst: &[(String, Tensor)], src: &[(String, Tensor)]) -> anyhow::Result<()> {
    let _g = tch::no_grad_guard();
    let map: BTreeMap<&str, &Tensor> = src.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (name, d) in dst {
        let s = map
            .get(name.as_str())
            .ok_or_else(|| anyhow::anyhow!("weight snapshot lacks `{name}`"))?;
        anyhow::ensure!(
            s.size() == d.size(),
            "weight `{name}`: snapshot shape {:?} != model shape {:?}",
            s.size(),
            d.size()
        );
        let mut d = d.shallow_clone();
        d.copy_(s);
    }
    Ok(())
}

/// Make `dst` hold the published weights: alias them (no copy, no memory) when the snapshot is
/// immutable and kind, shape and device match; copy otherwise. Aliasing keeps a reader's model on
/// the snapshot's storage until its next sync, which under `async` saves one model-sized buffer per
/// reader (2.6 GB per 1.3B-parameter bf16 reader). The reader must never write its weights in
/// place (readers don't: they only run forward/backward). `dst_aliased`: `dst` aliases an earlier
/// snapshot, so a copy must go to fresh storage instead of into that snapshot. Returns whether
/// it aliased.
pub fn alias_or_copy_named(
    dst: &[(String, Tensor)],
    src: Published<'_>,
    dst_aliased: bool,
) -> anyhow::Result<bool> {
    let map: BTreeMap<&str, &Tensor> = src.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let aliasable = src.immutable
        && alias_enabled()
        && dst.iter().all(|(name, d)| {
            map.get(name.as_str()).is_some_and(|s| {
                s.size() == d.size() && s.kind() == d.kind() && s.device() == d.device()
            })
        });
    if !aliasable {
        if dst_aliased {
            let _g = tch::no_grad_guard();
            for (_, d) in dst {
                let mut d = d.shallow_clone();
                let fresh = d.detach().copy();
                d.set_data(&fresh);
            }
        }
        copy_named(dst, src.tensors)?;
        return Ok(false);
    }
    let _g = tch::no_grad_guard();
    for (name, d) in dst {
        if let Some(s) = map.get(name.as_str()) {
            // set_data swaps the variable's storage in place: every handle on it (the model's
            // VarStore included) now reads the snapshot; requires_grad and .grad stay the var's.
            let mut d = d.shallow_clone();
            d.set_data(&s.detach());
        }
    }
    Ok(true)
}

/// `STILLFLOW_ALIAS_WEIGHTS=0` makes readers copy every snapshot (a diagnostic switch: the
/// behaviour before aliasing, at one model copy per reader more memory).
fn alias_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("STILLFLOW_ALIAS_WEIGHTS").map_or(true, |v| v != "0"))
}

/// Deep copy of named tensors (detached), e.g. to publish a snapshot.
pub fn deep_copy(src: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let _g = tch::no_grad_guard();
    src.iter()
        .map(|(k, v)| (k.clone(), v.detach().copy()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn named(v: &[f32]) -> Vec<(String, Tensor)> {
        vec![("w".to_string(), Tensor::from_slice(v))]
    }

    fn read(hub: &WeightsHub, dst: &[(String, Tensor)]) -> bool {
        read_v(hub, 0, dst, false)
    }

    fn read_v(hub: &WeightsHub, v: u64, dst: &[(String, Tensor)], aliased: bool) -> bool {
        hub.with_version(v, v, &Cancel::new(), |_, p| {
            alias_or_copy_named(dst, p, aliased)
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn immutable_snapshots_are_aliased_and_live_masters_copied() {
        let dst = named(&[0.0, 0.0]);
        let before = dst[0].1.data_ptr();

        let live = WeightsHub::new("g", 1);
        live.publish(0, named(&[1.0, 2.0]), None, false);
        assert!(!read(&live, &dst));
        assert_eq!(dst[0].1.data_ptr(), before, "a live master must be copied");
        assert_eq!(Vec::<f32>::try_from(&dst[0].1).unwrap(), [1.0, 2.0]);

        let hub = WeightsHub::new("g", 1);
        let snap = named(&[3.0, 4.0]);
        let snap_ptr = snap[0].1.data_ptr();
        hub.publish(0, snap, None, true);
        assert!(read(&hub, &dst));
        assert_eq!(
            dst[0].1.data_ptr(),
            snap_ptr,
            "an immutable snapshot is aliased"
        );
        assert_eq!(Vec::<f32>::try_from(&dst[0].1).unwrap(), [3.0, 4.0]);

        // A later live version must not be copied into the aliased snapshot.
        hub.publish(1, named(&[7.0, 8.0]), None, false);
        let kept = hub.with_version(0, 1, &Cancel::new(), |v, _| v).unwrap();
        assert_eq!(kept, 1);
        assert!(!read_v(&hub, 1, &dst, true));
        assert_ne!(dst[0].1.data_ptr(), snap_ptr);
        assert_eq!(Vec::<f32>::try_from(&dst[0].1).unwrap(), [7.0, 8.0]);
    }

    #[test]
    fn aliasing_keeps_requires_grad_and_falls_back_on_kind_mismatch() {
        let dst = vec![(
            "w".to_string(),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
        )];
        let hub = WeightsHub::new("g", 1);
        hub.publish(0, named(&[5.0, 6.0]), None, true);
        assert!(read(&hub, &dst));
        assert!(dst[0].1.requires_grad());

        let bf = vec![(
            "w".to_string(),
            Tensor::zeros([2], (Kind::BFloat16, tch::Device::Cpu)),
        )];
        assert!(
            !read(&hub, &bf),
            "a bf16 reader of an f32 snapshot converts by copying"
        );
        assert_eq!(
            Vec::<f32>::try_from(bf[0].1.to_kind(Kind::Float)).unwrap(),
            [5.0, 6.0]
        );
    }
}
