//! The profile of one run: `profile/trace.json` (Perfetto), `profile/summary.md` and
//! `profile/summary.json` (throughput, per-actor busy time, overlap, step times, memory, MFU) and
//! `profile/metrics.prom` (a Prometheus text snapshot).

use super::prom;
use super::stats::{self, Concurrency, Stat, StepTimes};
use super::trace::{self, GpuSpan};
use crate::runtime::plan::Mode;
use crate::runtime::RunReport;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Mean and maximum fill of one bounded channel (edge), sampled by the runtime.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueDepth {
    pub edge: String,
    pub mean: f64,
    pub max: f64,
    pub capacity: usize,
}

/// Peak memory of one device over the run (CUDA caching allocator statistics).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceMemory {
    pub device: String,
    /// Highest bytes held by live tensors.
    pub peak_allocated: u64,
    /// Highest bytes reserved from the driver (live tensors plus cached free blocks).
    pub peak_reserved: u64,
}

/// What the runtime knows beyond the [`RunReport`]; every field is optional (empty or None =
/// not measured, and the summary says so).
#[derive(Clone, Debug, Default)]
pub struct ProfileExtras {
    /// GPU work per CUDA stream (from CUDA events), in host seconds since run start.
    pub gpu_spans: Vec<GpuSpan>,
    /// Samples per step (batch size × gradient-accumulation micro-batches); 0 is read as 1.
    pub batch_size: u64,
    pub queue_depths: Vec<QueueDepth>,
    pub peak_memory: Vec<DeviceMemory>,
    /// Model FLOPs of one training step (forward + backward of every model, no recomputation).
    pub model_flops_per_step: Option<f64>,
    /// Peak FLOP/s for MFU; None = [`stats::H100_BF16_PEAK_FLOPS`] times the CUDA devices this
    /// process used (allocated memory on), so a pipeline placed on two GPUs is measured against two.
    pub peak_flops: Option<f64>,
}

/// Time per work item of one actor, and its share of the wall time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActorProfile {
    pub actor: String,
    /// Sum of the actor's busy spans (exact, from the runtime's counter).
    pub busy_s: f64,
    /// `busy_s` / wall time.
    pub busy_frac: f64,
    /// Seconds per work item (from the recorded spans).
    pub spans: Stat,
}

/// The numbers of one profiled run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileSummary {
    /// `serial`, `exact` or `async(k)`.
    pub schedule: String,
    pub steps: u64,
    /// Wall time of the run (at least the end of the last span).
    pub wall_s: f64,
    /// steps / wall time (model building included).
    pub steps_per_s: f64,
    /// Steps after the first / time between the first and last step completions.
    pub steady_steps_per_s: f64,
    pub batch_size: u64,
    /// batch_size × steps / wall time.
    pub samples_per_s: f64,
    pub actors: Vec<ActorProfile>,
    /// Actor-span concurrency (sweep line over all spans).
    pub concurrency: Concurrency,
    /// Seconds with ≥ 2 actors busy / wall time.
    pub overlap: f64,
    /// Seconds with ≥ 1 actor busy / wall time.
    pub utilisation: f64,
    /// Overlap within the steady window (first to last step completion), which leaves out model
    /// building and the first step's warm-up. None with fewer than two steps.
    pub steady_overlap: Option<f64>,
    /// Length of that window in seconds (0 when there is none).
    pub steady_window_s: f64,
    pub step_times: StepTimes,
    /// Spans of the generator optimizer (`opt_g`) and the critic optimizer (`opt_c`).
    pub opt_g: Option<Stat>,
    pub opt_c: Option<Stat>,
    /// GPU busy seconds per CUDA stream and the streams' overlap ratio (when GPU spans were given).
    pub gpu_busy: BTreeMap<String, f64>,
    pub gpu_overlap: Option<f64>,
    pub queue_depths: Vec<QueueDepth>,
    pub peak_memory: Vec<DeviceMemory>,
    pub model_flops_per_step: Option<f64>,
    pub peak_flops: f64,
    /// Model FLOPs utilisation at the steady-state rate (or the wall rate when there is none).
    pub mfu: Option<f64>,
}

pub fn mode_name(m: Mode) -> String {
    match m {
        Mode::Serial => "serial".into(),
        Mode::Exact => "exact".into(),
        Mode::Async { max_staleness } => format!("async({max_staleness})"),
    }
}

impl ProfileSummary {
    /// Compute the profile of `report`.
    pub fn from_report(report: &RunReport, extras: &ProfileExtras) -> ProfileSummary {
        let spans = &report.spans;
        let span_end = spans.iter().map(|s| s.start_s + s.secs).fold(0.0, f64::max);
        // Spans are timed from the supervisor's clock, started a moment before the driver's:
        // take the larger so every ratio stays within [0, 1].
        let wall = report.wall_s.max(span_end).max(1e-9);
        let steps = report.end_step.saturating_sub(report.start_step);
        let batch = extras.batch_size.max(1);
        let conc = stats::span_concurrency(spans);
        let per = stats::per_actor_spans(spans);
        let mut names: Vec<&String> = report.busy.keys().chain(per.keys()).collect();
        names.sort();
        names.dedup();
        let actors = names
            .into_iter()
            .map(|a| {
                let busy = report
                    .busy
                    .get(a)
                    .copied()
                    .unwrap_or_else(|| per.get(a).map(|s| s.total).unwrap_or(0.0));
                ActorProfile {
                    actor: a.clone(),
                    busy_s: busy,
                    busy_frac: busy / wall,
                    spans: per.get(a).copied().unwrap_or_default(),
                }
            })
            .collect();
        let gen = stats::generator_steps(spans, &report.history);
        let step_times = stats::step_times(&report.history, &gen);
        let steps_per_s = steps as f64 / wall;
        let mut gpu_busy: BTreeMap<String, f64> = BTreeMap::new();
        for g in &extras.gpu_spans {
            *gpu_busy.entry(g.stream.clone()).or_default() += g.secs;
        }
        let window = stats::steady_window(&report.history);
        // In the steady window when there is one (the first step builds models and allocates).
        let gpu_overlap = (!extras.gpu_spans.is_empty()).then(|| {
            let iv = extras.gpu_spans.iter().map(|g| (g.start_s, g.secs));
            match window {
                Some((lo, hi)) => stats::concurrency_in(iv, lo, hi).overlap_s / (hi - lo),
                None => stats::concurrency(iv).overlap_s / wall,
            }
        });
        let used = extras
            .peak_memory
            .iter()
            .filter(|m| m.peak_allocated > 0)
            .count()
            .max(1);
        let peak_flops = extras
            .peak_flops
            .unwrap_or(stats::H100_BF16_PEAK_FLOPS * used as f64);
        let steady = window.map(|(lo, hi)| {
            let c = stats::concurrency_in(spans.iter().map(|s| (s.start_s, s.secs)), lo, hi);
            (c.overlap_s / (hi - lo), hi - lo)
        });
        let rate = if step_times.steady_steps_per_s > 0.0 {
            step_times.steady_steps_per_s
        } else {
            steps_per_s
        };
        ProfileSummary {
            schedule: mode_name(report.mode),
            steps,
            wall_s: wall,
            steps_per_s,
            steady_steps_per_s: step_times.steady_steps_per_s,
            batch_size: batch,
            samples_per_s: (batch * steps) as f64 / wall,
            actors,
            overlap: conc.overlap_s / wall,
            utilisation: conc.busy_s / wall,
            steady_overlap: steady.map(|s| s.0),
            steady_window_s: steady.map(|s| s.1).unwrap_or(0.0),
            concurrency: conc,
            step_times,
            opt_g: per.get("opt_g").copied(),
            opt_c: per.get("opt_c").copied(),
            gpu_busy,
            gpu_overlap,
            queue_depths: extras.queue_depths.clone(),
            peak_memory: extras.peak_memory.clone(),
            model_flops_per_step: extras.model_flops_per_step,
            peak_flops,
            mfu: extras
                .model_flops_per_step
                .map(|f| stats::mfu(f, rate, peak_flops)),
        }
    }

    /// The key numbers as one Markdown table (for a README).
    pub fn markdown_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| metric | value |");
        let _ = writeln!(s, "|---|---|");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "| {k} | {v} |");
        };
        row("schedule", self.schedule.clone());
        row("steps", self.steps.to_string());
        row("wall time", format!("{:.3} s", self.wall_s));
        row("steps/s (wall)", format!("{:.3}", self.steps_per_s));
        row(
            "steps/s (steady)",
            fmt_opt(self.steady_steps_per_s > 0.0, self.steady_steps_per_s, 3),
        );
        row("samples/s", format!("{:.3}", self.samples_per_s));
        row(
            "time per generator step (mean / median)",
            pair(&self.step_times.generator),
        );
        row(
            "time per critic-only step (mean / median)",
            pair(&self.step_times.critic_only),
        );
        row(
            "opt_g update (mean / median)",
            self.opt_g.as_ref().map(pair).unwrap_or_else(|| "-".into()),
        );
        row(
            "opt_c update (mean / median)",
            self.opt_c.as_ref().map(pair).unwrap_or_else(|| "-".into()),
        );
        row(
            "overlap (≥ 2 actors busy / wall)",
            format!("{:.3}", self.overlap),
        );
        row(
            "overlap in the steady window",
            self.steady_overlap
                .map(|o| format!("{o:.3}"))
                .unwrap_or_else(|| "-".into()),
        );
        row(
            "max concurrency",
            self.concurrency.max_concurrency.to_string(),
        );
        if let Some(o) = self.gpu_overlap {
            row("GPU stream overlap", format!("{o:.3}"));
        }
        for m in &self.peak_memory {
            row(
                &format!("peak memory {}", m.device),
                format!("{:.2} GiB", m.peak_allocated as f64 / GIB),
            );
        }
        if let Some(m) = self.mfu {
            row("MFU", format!("{:.1} %", 100.0 * m));
        }
        s
    }

    /// The whole `summary.md`.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Profile: schedule {}\n", self.schedule);
        s.push_str(&self.markdown_table());
        let _ = writeln!(s, "\n## Actors\n");
        let _ = writeln!(s, "| actor | busy s | busy % of wall | items | mean s/item | median s/item | max s/item |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        let mut a: Vec<&ActorProfile> = self.actors.iter().collect();
        a.sort_by(|x, y| y.busy_s.total_cmp(&x.busy_s).then(x.actor.cmp(&y.actor)));
        for p in a {
            let _ = writeln!(
                s,
                "| {} | {:.4} | {:.1} % | {} | {:.5} | {:.5} | {:.5} |",
                p.actor,
                p.busy_s,
                100.0 * p.busy_frac,
                p.spans.n,
                p.spans.mean,
                p.spans.median,
                p.spans.max
            );
        }
        let c = &self.concurrency;
        let _ = writeln!(s, "\n## Concurrency\n");
        let _ = writeln!(s, "| actors busy at once | seconds | % of wall |");
        let _ = writeln!(s, "|---|---|---|");
        let idle = c.idle_s(self.wall_s);
        let _ = writeln!(s, "| 0 | {idle:.4} | {:.1} % |", 100.0 * idle / self.wall_s);
        for (k, t) in c.time_at.iter().enumerate().skip(1) {
            let _ = writeln!(s, "| {k} | {t:.4} | {:.1} % |", 100.0 * t / self.wall_s);
        }
        let _ = writeln!(
            s,
            "\noverlap = {:.4} s with ≥ 2 actors busy / {:.4} s wall = {:.3}; some actor busy {:.1} % of the wall time.",
            c.overlap_s,
            self.wall_s,
            self.overlap,
            100.0 * self.utilisation
        );
        let st = &self.step_times;
        let _ = writeln!(
            s,
            "\n## Step times (first step left out: it includes model building)\n"
        );
        let _ = writeln!(s, "| steps | n | mean s | median s | min s | max s |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for (k, v) in [
            ("generator + critic", &st.generator),
            ("critic only", &st.critic_only),
            ("all", &st.all),
        ] {
            let _ = writeln!(
                s,
                "| {k} | {} | {:.5} | {:.5} | {:.5} | {:.5} |",
                v.n, v.mean, v.median, v.min, v.max
            );
        }
        let _ = writeln!(s, "\n## GPU\n");
        if self.gpu_busy.is_empty() {
            let _ = writeln!(
                s,
                "No GPU stream spans were recorded (CPU run, or CUDA-event timing off)."
            );
        } else {
            let _ = writeln!(s, "| stream | busy s | % of wall |");
            let _ = writeln!(s, "|---|---|---|");
            for (k, v) in &self.gpu_busy {
                let _ = writeln!(s, "| {k} | {v:.4} | {:.1} % |", 100.0 * v / self.wall_s);
            }
        }
        if self.peak_memory.is_empty() {
            let _ = writeln!(s, "\nPeak memory: not measured.");
        } else {
            let _ = writeln!(s, "\n| device | peak allocated GiB | peak reserved GiB |");
            let _ = writeln!(s, "|---|---|---|");
            for m in &self.peak_memory {
                let _ = writeln!(
                    s,
                    "| {} | {:.3} | {:.3} |",
                    m.device,
                    m.peak_allocated as f64 / GIB,
                    m.peak_reserved as f64 / GIB
                );
            }
        }
        match (self.model_flops_per_step, self.mfu) {
            (Some(f), Some(m)) => {
                let _ = writeln!(
                    s,
                    "\nMFU = {:.3e} model FLOPs/step × {:.4} steps/s / {:.3e} peak FLOP/s = {:.2} %",
                    f,
                    if self.steady_steps_per_s > 0.0 { self.steady_steps_per_s } else { self.steps_per_s },
                    self.peak_flops,
                    100.0 * m
                );
            }
            _ => {
                let _ = writeln!(s, "\nMFU: not computed (no model FLOPs per step given).");
            }
        }
        let _ = writeln!(s, "\n## Queues\n");
        if self.queue_depths.is_empty() {
            let _ = writeln!(s, "Queue depths: not sampled.");
        } else {
            let _ = writeln!(s, "| edge | mean depth | max depth | capacity |");
            let _ = writeln!(s, "|---|---|---|---|");
            for q in &self.queue_depths {
                let _ = writeln!(
                    s,
                    "| {} | {:.2} | {:.0} | {} |",
                    q.edge, q.mean, q.max, q.capacity
                );
            }
        }
        s
    }
}

const GIB: f64 = (1u64 << 30) as f64;

fn pair(s: &Stat) -> String {
    if s.n == 0 {
        "-".into()
    } else {
        format!("{:.4} s / {:.4} s (n={})", s.mean, s.median, s.n)
    }
}

fn fmt_opt(ok: bool, v: f64, digits: usize) -> String {
    if ok {
        format!("{v:.digits$}")
    } else {
        "-".into()
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Write `trace.json`, `summary.md`, `summary.json` and `metrics.prom` into `dir` (created if
/// needed; the runtime passes `<logdir>/profile`) and return the numbers.
pub fn write_profile(
    dir: &Path,
    report: &RunReport,
    extras: &ProfileExtras,
) -> Result<ProfileSummary> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // GPU spans and queue depths measured by the runtime, unless the caller supplies its own.
    let mut merged;
    let mut extras = extras;
    if extras.gpu_spans.is_empty() && !report.gpu_spans.is_empty()
        || extras.queue_depths.is_empty() && !report.queue_depths.is_empty()
    {
        merged = extras.clone();
        if merged.gpu_spans.is_empty() {
            merged.gpu_spans = report.gpu_spans.clone();
        }
        if merged.queue_depths.is_empty() {
            merged.queue_depths = report.queue_depths.clone();
        }
        extras = &merged;
    }
    let summary = ProfileSummary::from_report(report, extras);
    let trace = trace::trace_events(&report.spans, &extras.gpu_spans);
    write(&dir.join("trace.json"), &serde_json::to_string(&trace)?)?;
    write(&dir.join("summary.md"), &summary.markdown())?;
    write(
        &dir.join("summary.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    write(
        &dir.join("metrics.prom"),
        &prom::snapshot(&summary, &report.spans),
    )?;
    Ok(summary)
}

/// [`write_profile`] into `<report.logdir>/profile`.
pub fn write_run_profile(report: &RunReport, extras: &ProfileExtras) -> Result<ProfileSummary> {
    write_profile(&report.logdir.join("profile"), report, extras)
}

/// Peak memory of every visible CUDA device since the last [`reset_peak_memory`] (empty without
/// CUDA). Call after a run to fill [`ProfileExtras::peak_memory`].
pub fn cuda_peak_memory() -> Vec<DeviceMemory> {
    (0..crate::cuda::device_count())
        .filter_map(|i| {
            crate::cuda::memory::memory_stats(i)
                .ok()
                .map(|m| DeviceMemory {
                    device: format!("cuda:{i}"),
                    peak_allocated: m.peak,
                    peak_reserved: m.reserved_peak,
                })
        })
        .collect()
}

/// Reset the peak counters of every visible CUDA device (before a profiled run).
pub fn reset_peak_memory() {
    for i in 0..crate::cuda::device_count() {
        let _ = crate::cuda::memory::reset_peak(i);
    }
}
