//! The plan: which work items each actor handles (its lanes), which lanes each edge carries, and
//! which model version a reader needs for a work item. Pure bookkeeping over the validated graph.
//!
//! Step numbering follows the reference (spec §5): at step s the generator lane runs first when
//! `s % ratio == 0`, then the critic lane. With `k` gradient-accumulation micro-batches each lane
//! item comes k times (micro 0..k).

use super::packet::Work;
use crate::rng::Lane;
use std::collections::{BTreeMap, BTreeSet};

/// How a weights reader may lag behind the version the serial order would give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Serial,
    Exact,
    Async { max_staleness: u64 },
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub ratio: u64,
    pub micro: u32,
    pub start_step: u64,
    /// Exclusive; `u64::MAX` = until stopped.
    pub stop_step: u64,
    /// Lanes of each actor (by name). Empty = a service actor (weights subscriber only).
    pub lanes: BTreeMap<String, BTreeSet<Lane>>,
    /// Period of the checkpoint boundaries (steps; 0 is taken as 1).
    pub checkpoint_every: u64,
}

impl Plan {
    /// Does lane `lane` run at step `s`?
    pub fn lane_runs(&self, lane: Lane, s: u64) -> bool {
        match lane {
            Lane::Generator => s.is_multiple_of(self.ratio),
            Lane::Critic => true,
            Lane::Other => s == self.start_step,
        }
    }

    /// The work items of an actor with `lanes`, in order, from `from_step` (inclusive).
    pub fn sequence(
        &self,
        lanes: &BTreeSet<Lane>,
        from_step: u64,
    ) -> impl Iterator<Item = Work> + '_ {
        let lanes = lanes.clone();
        let stop = self.stop_step;
        (from_step..stop).flat_map(move |s| {
            let mut v = vec![];
            for lane in [Lane::Generator, Lane::Critic, Lane::Other] {
                if lanes.contains(&lane) && self.lane_runs(lane, s) {
                    for m in 0..self.micro {
                        v.push(Work {
                            step: s,
                            lane,
                            micro: m,
                        });
                    }
                }
            }
            v
        })
    }

    /// Generator updates done before the generator lane of step `s` (s a multiple of ratio).
    pub fn generator_updates_before(&self, s: u64) -> u64 {
        s.div_ceil(self.ratio)
    }

    /// The version range [lo, hi] of `model` a reader needs for work `w`. `stale_ok` marks readers
    /// allowed to lag under `async` (critic-lane rollouts).
    pub fn required_version(&self, model: &str, w: &Work, stale_ok: bool) -> (u64, u64) {
        let exact = match (model, w.lane) {
            ("generator", Lane::Generator) => self.generator_updates_before(w.step),
            // The critic lane of step s runs after the generator update of step s (if any).
            ("generator", _) => w.step / self.ratio + 1,
            // Critic (and any other trained model): one update per step, before the next step.
            _ => w.step,
        };
        match self.mode {
            Mode::Async { max_staleness } if stale_ok => {
                (exact.saturating_sub(max_staleness), exact)
            }
            // Under async the critic lane may run ahead of the generator lane (its rollouts use an
            // older generator), so the generator lane's frozen critic view takes the newest critic
            // available from version `exact` on: a fresher critic, never an older one.
            Mode::Async { .. } if model != "generator" && w.lane == Lane::Generator => {
                (exact, u64::MAX)
            }
            _ => (exact, exact),
        }
    }

    /// Periodic checkpoint boundaries in (start, stop): the steps before whose work items the
    /// stateful actors hand over their state (the final state at the stop step comes on top).
    pub fn checkpoint_boundaries(&self, stop: u64) -> std::collections::VecDeque<u64> {
        let every = self.checkpoint_every.max(1);
        let start = self.start_step;
        ((start / every + 1) * every..stop)
            .step_by(every as usize)
            .collect()
    }

    /// Is a state handed over at some step b with `lo < b <= hi`: a periodic boundary, or the
    /// planned stop step (a stop by signal lowers it at run time and is not known here)? An actor
    /// whose state after the work of step `lo` stays unchanged until step `hi` uses this to
    /// prepare that state while every rank still runs in lockstep (ZeRO-1's gathers).
    pub fn state_due_in(&self, lo: u64, hi: u64) -> bool {
        let every = self.checkpoint_every.max(1);
        let stop = self.stop_step;
        // The first periodic boundary after both lo and the start step.
        let next = (lo.max(self.start_step) / every + 1).saturating_mul(every);
        let periodic = next <= hi && next < stop;
        let last = stop != u64::MAX && stop > self.start_step && lo < stop && stop <= hi;
        periodic || last
    }

    /// The model version after all updates of steps < `s` (what a checkpoint at `s` holds).
    pub fn version_at(&self, model: &str, s: u64) -> u64 {
        if model == "generator" {
            s.div_ceil(self.ratio)
        } else {
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(mode: Mode) -> Plan {
        Plan {
            mode,
            ratio: 5,
            micro: 1,
            start_step: 0,
            stop_step: 11,
            lanes: BTreeMap::new(),
            checkpoint_every: 4,
        }
    }

    #[test]
    fn sequence_follows_reference_order() {
        let p = plan(Mode::Exact);
        let both: BTreeSet<Lane> = [Lane::Generator, Lane::Critic].into();
        let seq: Vec<(u64, Lane)> = p.sequence(&both, 0).map(|w| (w.step, w.lane)).collect();
        assert_eq!(
            &seq[..3],
            &[(0, Lane::Generator), (0, Lane::Critic), (1, Lane::Critic)]
        );
        assert_eq!(seq.iter().filter(|(_, l)| *l == Lane::Generator).count(), 3); // 0, 5, 10
        assert_eq!(seq.len(), 14);
    }

    #[test]
    fn versions_match_serial_order() {
        let p = plan(Mode::Exact);
        let g = |s| Work {
            step: s,
            lane: Lane::Generator,
            micro: 0,
        };
        let c = |s| Work {
            step: s,
            lane: Lane::Critic,
            micro: 0,
        };
        assert_eq!(p.required_version("generator", &g(0), false), (0, 0));
        assert_eq!(p.required_version("generator", &c(0), false), (1, 1));
        assert_eq!(p.required_version("generator", &c(4), false), (1, 1));
        assert_eq!(p.required_version("generator", &g(5), false), (1, 1));
        assert_eq!(p.required_version("generator", &c(5), false), (2, 2));
        assert_eq!(p.required_version("critic", &g(5), false), (5, 5));
        let a = plan(Mode::Async { max_staleness: 2 });
        assert_eq!(a.required_version("generator", &c(5), true), (0, 2));
        assert_eq!(a.required_version("fake", &g(5), false), (5, u64::MAX));
        assert_eq!(a.required_version("fake", &c(5), false), (5, 5));
        assert_eq!(a.required_version("generator", &c(5), false), (2, 2));
        assert_eq!(p.version_at("generator", 5), 1);
        assert_eq!(p.version_at("generator", 6), 2);
    }

    #[test]
    fn state_hand_overs() {
        let p = plan(Mode::Exact); // boundaries 4, 8 and the stop 11
        assert_eq!(p.checkpoint_boundaries(11), [4, 8]);
        assert!(p.state_due_in(3, 4) && p.state_due_in(0, 5) && p.state_due_in(8, 11));
        assert!(!p.state_due_in(4, 7) && !p.state_due_in(0, 3) && !p.state_due_in(11, 20));
        assert!(p.state_due_in(9, u64::MAX));
        let mut q = p.clone();
        q.start_step = 4;
        q.stop_step = u64::MAX;
        assert!(!q.state_due_in(3, 4) && q.state_due_in(4, 8));
        assert!(!q.state_due_in(9, 11));
        q.checkpoint_every = 1;
        assert!(q.state_due_in(3, 5) && !q.state_due_in(3, 4));
    }
}
