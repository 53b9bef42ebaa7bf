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

type Snapshot = (Vec<(String, Tensor)>, Option<crate::cuda::CudaEvent>);

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

    /// Publish `version` (tensors already deep-copied by the caller; `event` recorded on the
    /// publisher's stream after the copy, so readers on other streams wait for it).
    pub fn publish(
        &self,
        version: u64,
        tensors: Vec<(String, Tensor)>,
        event: Option<crate::cuda::CudaEvent>,
    ) {
        let mut g = self.lock();
        g.snapshots.insert(version, (tensors, event));
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
        f: impl FnOnce(u64, &[(String, Tensor)]) -> R,
    ) -> Result<R, Interrupted> {
        let mut g = self.lock();
        loop {
            if cancel.is_cancelled() {
                return Err(Interrupted::Cancelled);
            }
            if let Some((&v, (t, ev))) = g.snapshots.range(lo..=hi).next_back() {
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
                return Ok(f(v, t));
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
        let r = self.with_version(version, version, cancel, |_, t| f(t))?;
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

/// Deep copy of named tensors (detached), e.g. to publish a snapshot.
pub fn deep_copy(src: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let _g = tch::no_grad_guard();
    src.iter()
        .map(|(k, v)| (k.clone(), v.detach().copy()))
        .collect()
}
