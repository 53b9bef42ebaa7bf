//! `run-pipeline profile`: the same config trained under the three schedules (serial, exact,
//! async with staleness 1), one profile each, and a comparison table.

use super::report::{
    cuda_peak_memory, reset_peak_memory, write_run_profile, ProfileExtras, ProfileSummary,
};
use crate::config::RunConfig;
use crate::runtime::{train, RunOptions, RunReport};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::PathBuf;

/// The schedules compared, in order; the first is the baseline of the speed-up.
pub const SCHEDULES: [&str; 3] = ["serial", "exact", "async"];

/// One profiled run of the comparison.
#[derive(Clone, Debug)]
pub struct ScheduleRun {
    /// `serial`, `exact` or `async`.
    pub name: String,
    pub logdir: PathBuf,
    pub summary: ProfileSummary,
    /// Last logged losses (serial and exact must agree: same numbers, different overlap).
    pub last_generator_loss: Option<f64>,
    pub last_critic_loss: Option<f64>,
}

/// The three runs and their comparison.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    pub runs: Vec<ScheduleRun>,
    /// Schedules whose run failed, with the error.
    pub failed: Vec<(String, String)>,
}

fn last(r: &RunReport, key: &str) -> Option<f64> {
    r.history
        .iter()
        .rev()
        .find_map(|l| l.get(key).and_then(|v| v.as_f64()))
}

impl ScheduleRun {
    pub fn from_report(name: &str, report: &RunReport, summary: ProfileSummary) -> Self {
        ScheduleRun {
            name: name.to_string(),
            logdir: report.logdir.clone(),
            last_generator_loss: last(report, "generator_loss"),
            last_critic_loss: last(report, "critic_loss"),
            summary,
        }
    }

    /// The rate compared: steady-state steps/s when measured, else steps over the wall time.
    pub fn rate(&self) -> f64 {
        let s = &self.summary;
        if s.steady_steps_per_s > 0.0 {
            s.steady_steps_per_s
        } else {
            s.steps_per_s
        }
    }
}

impl Comparison {
    /// Speed-up of run `i` over the first run (serial), by [`ScheduleRun::rate`].
    pub fn speedup(&self, i: usize) -> Option<f64> {
        let base = self.runs.first()?.rate();
        let r = self.runs.get(i)?.rate();
        (base > 0.0).then(|| r / base)
    }

    /// One row per schedule. Per-step times leave out the first (warm-up) step; `s/iter` is the
    /// steady-state time per step, which averages critic-only and generator steps in their ratio
    /// when the run covers whole generator periods.
    pub fn markdown_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| schedule | steps | wall s | s/iter (steady) | speed-up vs serial | s per critic-only step | s per generator step | MFU | peak GiB | overlap (actors) | overlap (GPU streams) | last generator loss | last critic loss |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let f = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_else(|| "-".into());
        let stat = |st: &super::stats::Stat| {
            if st.n > 0 {
                format!("{:.3}", st.mean)
            } else {
                "-".into()
            }
        };
        for (i, r) in self.runs.iter().enumerate() {
            let p = &r.summary;
            let rate = r.rate();
            let peak = p
                .peak_memory
                .iter()
                .map(|m| m.peak_allocated)
                .max()
                .map(|b| format!("{:.1}", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.schedule,
                p.steps,
                p.wall_s,
                if rate > 0.0 {
                    format!("{:.3}", 1.0 / rate)
                } else {
                    "-".into()
                },
                self.speedup(i)
                    .map(|x| format!("{x:.2}×"))
                    .unwrap_or_else(|| "-".into()),
                stat(&p.step_times.critic_only),
                stat(&p.step_times.generator),
                p.mfu
                    .map(|m| format!("{:.1} %", 100.0 * m))
                    .unwrap_or_else(|| "-".into()),
                peak,
                p.steady_overlap
                    .map(|o| format!("{o:.2}"))
                    .unwrap_or_else(|| format!("{:.2}", p.overlap)),
                p.gpu_overlap
                    .map(|o| format!("{o:.2}"))
                    .unwrap_or_else(|| "-".into()),
                f(r.last_generator_loss),
                f(r.last_critic_loss),
            );
        }
        for (name, err) in &self.failed {
            // The first line of the error is enough for the table (the log has the rest).
            let first = err
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(160)
                .collect::<String>();
            let _ = writeln!(
                s,
                "| {name} | failed: {} |||||||||||| ",
                first.replace('|', "/")
            );
        }
        s
    }
}

/// The config of one schedule's run: `schedule` overridden, staleness 1 for async, and the logdir
/// `<logdir>/<schedule>`.
pub fn schedule_config(cfg: &RunConfig, schedule: &str) -> RunConfig {
    let mut c = cfg.clone();
    c.schedule = schedule.to_string();
    if schedule == "async" {
        c.max_staleness = 1;
    }
    c.logdir = PathBuf::from(&cfg.logdir)
        .join(schedule)
        .to_string_lossy()
        .into_owned();
    c
}

/// Train `cfg` under serial, exact and async (staleness 1), write each run's profile into
/// `<logdir>/<schedule>/profile/`, and the comparison into `<logdir>/profile_comparison.md`.
pub fn run_profile(cfg: &RunConfig, opts: &RunOptions) -> Result<Comparison> {
    run_profile_with(cfg, opts, &ProfileExtras::default())
}

/// [`run_profile`] with extras applied to every run (model FLOPs per step, peak FLOP/s). The
/// batch size and the CUDA peak memory are filled in per run.
pub fn run_profile_with(
    cfg: &RunConfig,
    opts: &RunOptions,
    extras: &ProfileExtras,
) -> Result<Comparison> {
    run_profile_schedules(cfg, opts, extras, &SCHEDULES)
}

/// [`run_profile_with`] for chosen schedules (a subset of [`SCHEDULES`], in that order). A schedule
/// that fails (e.g. out of memory) is recorded in the comparison and the others still run; the
/// caller decides what a failure means (`run-pipeline profile` exits non-zero after the table).
pub fn run_profile_schedules(
    cfg: &RunConfig,
    opts: &RunOptions,
    extras: &ProfileExtras,
    schedules: &[&str],
) -> Result<Comparison> {
    if let Some(bad) = schedules.iter().find(|s| !SCHEDULES.contains(s)) {
        anyhow::bail!("profile: unknown schedule `{bad}` (expected some of serial, exact, async)");
    }
    let mut cmp = Comparison::default();
    for name in SCHEDULES.iter().filter(|s| schedules.contains(s)) {
        let c = schedule_config(cfg, name);
        reset_peak_memory();
        let report = match train(c, opts) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("profile: the `{name}` run failed: {e:#}");
                cmp.failed.push((name.to_string(), format!("{e:#}")));
                continue;
            }
        };
        let mut ex = extras.clone();
        ex.batch_size = (cfg.batch_size.max(1) as u64) * cfg.gradient_accumulation_steps.max(1);
        if ex.peak_memory.is_empty() {
            ex.peak_memory = cuda_peak_memory();
        }
        let summary = write_run_profile(&report, &ex)?;
        cmp.runs
            .push(ScheduleRun::from_report(name, &report, summary));
    }
    let path = PathBuf::from(&cfg.logdir).join("profile_comparison.md");
    std::fs::create_dir_all(&cfg.logdir).with_context(|| format!("creating {}", cfg.logdir))?;
    let mut text = String::from("# Schedules compared\n\n");
    text.push_str(&cmp.markdown_table());
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(cmp)
}
