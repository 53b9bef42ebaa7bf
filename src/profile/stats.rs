//! The numbers of a profile, computed from busy spans and per-step metrics lines: exact overlap
//! (sweep line), per-actor span statistics, per-update step times and MFU.

use crate::rng::Lane;
use crate::runtime::supervisor::Span;
use std::collections::{BTreeMap, BTreeSet};

/// Dense bf16 peak of one H100 SXM (989 TFLOP/s without sparsity), the MFU denominator by default.
pub const H100_BF16_PEAK_FLOPS: f64 = 989e12;

/// Concurrency of a set of busy intervals, measured exactly by a sweep over their end points.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Concurrency {
    /// Seconds during which at least one interval is open (length of the union).
    pub busy_s: f64,
    /// Seconds during which at least two intervals are open.
    pub overlap_s: f64,
    /// Largest number of intervals open at the same time.
    pub max_concurrency: usize,
    /// `time_at[k]`: seconds during which exactly k intervals are open, for k ≥ 1 (index 0 unused
    /// and left 0: idle time depends on the window, see [`Concurrency::idle_s`]).
    pub time_at: Vec<f64>,
}

impl Concurrency {
    /// Idle seconds within a window of `wall_s`.
    pub fn idle_s(&self, wall_s: f64) -> f64 {
        (wall_s - self.busy_s).max(0.0)
    }
}

/// Sweep the half-open intervals `[start, start + len)`. Intervals that only touch (one ends where
/// the next starts) do not overlap: at equal times ends are processed before starts.
/// Non-finite or negative lengths are ignored.
pub fn concurrency(intervals: impl IntoIterator<Item = (f64, f64)>) -> Concurrency {
    // (time, +1 start / -1 end); sorting by (time, delta) puts -1 before +1 at equal times.
    let mut ev: Vec<(f64, i32)> = vec![];
    for (s, len) in intervals {
        if s.is_finite() && len.is_finite() && len > 0.0 {
            ev.push((s, 1));
            ev.push((s + len, -1));
        }
    }
    ev.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut c = Concurrency::default();
    let mut open: i64 = 0;
    let mut last = f64::NAN;
    for (t, d) in ev {
        if open > 0 {
            let dt = t - last;
            let k = open as usize;
            if c.time_at.len() <= k {
                c.time_at.resize(k + 1, 0.0);
            }
            c.time_at[k] += dt;
            c.busy_s += dt;
            if k >= 2 {
                c.overlap_s += dt;
            }
        }
        open += d as i64;
        c.max_concurrency = c.max_concurrency.max(open.max(0) as usize);
        last = t;
    }
    c
}

/// [`concurrency`] of the intervals clipped to the window `[lo, hi)`.
pub fn concurrency_in(
    intervals: impl IntoIterator<Item = (f64, f64)>,
    lo: f64,
    hi: f64,
) -> Concurrency {
    concurrency(intervals.into_iter().filter_map(|(s, len)| {
        let (a, b) = (s.max(lo), (s + len).min(hi));
        (b > a).then_some((a, b - a))
    }))
}

/// The steady-state window: from the first to the last step completion (`time_s` of the first
/// and last metrics lines). None with fewer than two lines.
pub fn steady_window(history: &[serde_json::Value]) -> Option<(f64, f64)> {
    let t: Vec<f64> = history
        .iter()
        .filter_map(|l| l.get("time_s")?.as_f64())
        .collect();
    match (t.first(), t.last()) {
        (Some(&a), Some(&b)) if t.len() > 1 && b > a => Some((a, b)),
        _ => None,
    }
}

/// Concurrency of the actors' busy spans.
pub fn span_concurrency(spans: &[Span]) -> Concurrency {
    concurrency(spans.iter().map(|s| (s.start_s, s.secs)))
}

/// Mean, median and extremes of a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stat {
    pub n: usize,
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub total: f64,
}

impl Stat {
    /// Statistics of `xs` (non-finite values dropped); all zeros when empty.
    pub fn of(xs: impl IntoIterator<Item = f64>) -> Stat {
        let mut v: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Stat::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let total: f64 = v.iter().sum();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        Stat {
            n,
            mean: total / n as f64,
            median,
            min: v[0],
            max: v[n - 1],
            total,
        }
    }
}

/// Span statistics of each actor (seconds per work item).
pub fn per_actor_spans(spans: &[Span]) -> BTreeMap<String, Stat> {
    let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in spans {
        by.entry(s.actor.as_str()).or_default().push(s.secs);
    }
    by.into_iter()
        .map(|(a, v)| (a.to_string(), Stat::of(v)))
        .collect()
}

/// Steps whose generator lane ran: those with a generator-lane span, or (without spans) those
/// whose metrics line carries `generator_loss`.
pub fn generator_steps(spans: &[Span], history: &[serde_json::Value]) -> BTreeSet<u64> {
    let from_spans: BTreeSet<u64> = spans
        .iter()
        .filter(|s| s.work.lane == Lane::Generator)
        .map(|s| s.work.step)
        .collect();
    if !from_spans.is_empty() {
        return from_spans;
    }
    history
        .iter()
        .filter(|l| l.get("generator_loss").is_some())
        .filter_map(|l| l.get("step").and_then(|v| v.as_u64()))
        .collect()
}

/// Wall time per step, split by whether the generator lane ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StepTimes {
    /// Steps where the generator lane ran (a generator update plus a critic update).
    pub generator: Stat,
    /// Steps where only the critic lane ran (one critic update).
    pub critic_only: Stat,
    /// All steps counted (the first, warm-up step excluded).
    pub all: Stat,
    /// Steady-state throughput: steps completed after the first / time between the first and the
    /// last completion (`time_s` of the metrics lines). 0 with fewer than two lines.
    pub steady_steps_per_s: f64,
}

/// Split the `step_time_s` of the metrics lines by lane. The first line is left out: its time
/// includes building the models and the first allocations, not a training step.
pub fn step_times(history: &[serde_json::Value], gen_steps: &BTreeSet<u64>) -> StepTimes {
    let lines: Vec<(u64, f64, f64)> = history
        .iter()
        .filter_map(|l| {
            let step = l.get("step")?.as_u64()?;
            let dt = l.get("step_time_s")?.as_f64()?;
            let t = l.get("time_s").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            Some((step, dt, t))
        })
        .collect();
    let rest = if lines.len() > 1 {
        &lines[1..]
    } else {
        &lines[..0]
    };
    let mut st = StepTimes {
        generator: Stat::of(
            rest.iter()
                .filter(|l| gen_steps.contains(&l.0))
                .map(|l| l.1),
        ),
        critic_only: Stat::of(
            rest.iter()
                .filter(|l| !gen_steps.contains(&l.0))
                .map(|l| l.1),
        ),
        all: Stat::of(rest.iter().map(|l| l.1)),
        steady_steps_per_s: 0.0,
    };
    if let (Some(first), Some(last)) = (lines.first(), lines.last()) {
        let dt = last.2 - first.2;
        if lines.len() > 1 && dt > 0.0 {
            st.steady_steps_per_s = (lines.len() - 1) as f64 / dt;
        }
    }
    st
}

/// Model FLOPs utilisation: achieved model FLOP/s over the peak. `flops_per_step` counts the
/// model's forward and backward FLOPs of one training step (not recomputation).
pub fn mfu(flops_per_step: f64, steps_per_s: f64, peak_flops: f64) -> f64 {
    if peak_flops <= 0.0 {
        return 0.0;
    }
    flops_per_step * steps_per_s / peak_flops
}

/// Name of a span in traces: `rollout_c step 12 c` (plus ` micro m` for m > 0).
pub fn span_name(s: &Span) -> String {
    let lane = lane_letter(s.work.lane);
    let mut n = format!("{} step {} {lane}", s.actor, s.work.step);
    if s.work.micro > 0 {
        n.push_str(&format!(" micro {}", s.work.micro));
    }
    n
}

pub fn lane_letter(l: Lane) -> &'static str {
    match l {
        Lane::Generator => "g",
        Lane::Critic => "c",
        Lane::Other => "o",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_counts_touching_intervals_as_disjoint() {
        let c = concurrency([(0.0, 1.0), (1.0, 1.0)]);
        assert_eq!(c.overlap_s, 0.0);
        assert_eq!(c.busy_s, 2.0);
        assert_eq!(c.max_concurrency, 1);
    }

    #[test]
    fn nested_and_triple_overlap() {
        // [0,4) [1,3) [2,5): 1 open on [0,1), 2 on [1,2), 3 on [2,3), 2 on [3,4), 1 on [4,5).
        let c = concurrency([(0.0, 4.0), (1.0, 2.0), (2.0, 3.0)]);
        assert_eq!(c.busy_s, 5.0);
        assert_eq!(c.overlap_s, 3.0);
        assert_eq!(c.max_concurrency, 3);
        assert_eq!(c.time_at, vec![0.0, 2.0, 2.0, 1.0]);
        assert_eq!(c.idle_s(6.0), 1.0);
        // Clipped to [2.5, 4.5): [2.5,3) has 3 open, [3,4) 2, [4,4.5) 1.
        let w = concurrency_in([(0.0, 4.0), (1.0, 2.0), (2.0, 3.0)], 2.5, 4.5);
        assert_eq!(w.time_at, vec![0.0, 0.5, 1.0, 0.5]);
        assert_eq!(w.overlap_s, 1.5);
    }

    #[test]
    fn stat_median_even_and_odd() {
        let s = Stat::of([3.0, 1.0, 2.0]);
        assert_eq!(
            (s.n, s.mean, s.median, s.min, s.max),
            (3, 2.0, 2.0, 1.0, 3.0)
        );
        let s = Stat::of([4.0, 1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!((s.n, s.median, s.total), (4, 2.5, 10.0));
        assert_eq!(Stat::of([]), Stat::default());
    }

    #[test]
    fn mfu_is_achieved_over_peak() {
        assert!((mfu(989e12, 0.5, H100_BF16_PEAK_FLOPS) - 0.5).abs() < 1e-12);
        assert_eq!(mfu(1.0, 1.0, 0.0), 0.0);
    }
}
