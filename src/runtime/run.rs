//! The run driver: config → graph → plan → executor, with logdir, resume, metrics and checkpoints.

use super::exec::Setup;
use super::plan::{Mode, Plan};
use super::serial::run_serial;
use super::supervisor::{Span, Supervisor};
use super::threaded::run_threaded;
use super::wiring::Wiring;
use crate::config::RunConfig;
use crate::graph::{DeviceInventory, ScheduleMode};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub resume: bool,
    /// No progress bar.
    pub quiet: bool,
}

#[derive(Debug)]
pub struct RunReport {
    pub logdir: PathBuf,
    pub seed: u64,
    pub mode: Mode,
    pub start_step: u64,
    pub end_step: u64,
    pub wall_s: f64,
    pub history: Vec<serde_json::Value>,
    pub busy: BTreeMap<String, f64>,
    pub spans: Vec<Span>,
    pub gpu_spans: Vec<crate::profile::GpuSpan>,
    pub queue_depths: Vec<crate::profile::QueueDepth>,
    pub checkpoints: Vec<PathBuf>,
    pub stopped_by_signal: bool,
}

impl RunReport {
    pub fn steps_per_s(&self) -> f64 {
        (self.end_step - self.start_step) as f64 / self.wall_s.max(1e-9)
    }
}

/// Resolve `seed: 0` (random) to a concrete seed, as the reference does on rank 0.
pub fn resolve_seed(seed: u64) -> u64 {
    if seed != 0 {
        return seed;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    (t as u64 ^ (std::process::id() as u64).rotate_left(32)) | 1
}

fn ensure_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("logdir {}: cannot create", dir.display()))?;
    let probe = dir.join(".write_probe");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("logdir {}: not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The schedule of a run: the config's `schedule`/`max_staleness` override the pipeline file's.
pub fn resolve_mode(cfg: &RunConfig, file: &crate::graph::Schedule) -> Result<Mode> {
    let staleness = if cfg.max_staleness >= 0 {
        cfg.max_staleness as u64
    } else {
        file.max_staleness
    };
    let mode = if cfg.schedule.is_empty() {
        match file.mode {
            ScheduleMode::Serial => "serial",
            ScheduleMode::Exact => "exact",
            ScheduleMode::Async => "async",
        }
    } else {
        cfg.schedule.as_str()
    };
    Ok(match mode {
        "serial" => Mode::Serial,
        "exact" => Mode::Exact,
        "async" => Mode::Async {
            max_staleness: staleness,
        },
        other => bail!("config key `schedule`: unknown schedule `{other}`"),
    })
}

/// Redraw `logdir/plots/*.png`. A plot that cannot be drawn is reported, never fatal: it must not
/// stop a training run.
fn refresh_plots(logdir: &Path) {
    if let Err(e) = crate::report::write_plots(logdir) {
        eprintln!(
            "warning: plots in {}: {e:#}",
            logdir.join("plots").display()
        );
    }
}

/// Train with `cfg`. Errors name the actor and step that failed.
pub fn train(cfg: RunConfig, opts: &RunOptions) -> Result<RunReport> {
    let device = super::parse_device(&cfg.device).context("config key `device`")?;
    let cuda_devices = tch::Cuda::device_count().max(0) as usize;
    if let tch::Device::Cuda(i) = device {
        if i >= cuda_devices {
            bail!("config key `device`: {} requested but this machine has {cuda_devices} CUDA device(s)", cfg.device);
        }
    }
    let graph = crate::graph::load_pipeline(&cfg.pipeline, &DeviceInventory { cuda_devices })
        .map_err(|e| anyhow!("{e}"))?;
    let wiring = Wiring::from_graph(&graph);
    let mode = resolve_mode(&cfg, &graph.schedule)?;
    let logdir = PathBuf::from(&cfg.logdir);
    ensure_writable(&logdir)?;
    let existing = super::ckpt::latest(&logdir)?;
    let mut cfg = cfg;
    let (start_step, states, seed) = match (&existing, opts.resume) {
        (Some(dir), true) => {
            let r = super::ckpt::read(dir, &cfg)?;
            eprintln!("resuming from {} (step {})", dir.display(), r.step);
            (r.step, r.states, r.seed)
        }
        (None, true) => bail!("--resume: no checkpoint in {}", logdir.display()),
        (Some(dir), false) => bail!(
            "logdir {} already holds checkpoints (newest: {}); pass --resume to continue, or choose another --logdir (nothing was overwritten)",
            logdir.display(),
            dir.display()
        ),
        (None, false) => (0, BTreeMap::new(), resolve_seed(cfg.seed)),
    };
    cfg.seed = seed;
    if opts.resume {
        for n in &wiring.nodes {
            if crate::actors::registry::STATEFUL.contains(&n.kind.as_str())
                && !states.contains_key(&n.name)
            {
                bail!("--resume: the checkpoint has no state for actor `{}` (was the pipeline changed?)", n.name);
            }
        }
    }
    let stop_step = if cfg.max_steps > 0 {
        cfg.max_steps
    } else {
        u64::MAX
    };
    if start_step >= stop_step {
        bail!(
            "nothing to do: the run is at step {start_step} and max_steps is {}",
            cfg.max_steps
        );
    }
    let plan = Arc::new(Plan {
        mode,
        ratio: cfg.dfake_gen_update_ratio,
        micro: cfg.gradient_accumulation_steps as u32,
        start_step,
        stop_step,
        lanes: wiring
            .nodes
            .iter()
            .zip(&wiring.lanes)
            .map(|(n, l)| (n.name.clone(), l.clone()))
            .collect(),
    });
    let cfg = Arc::new(cfg);
    super::ckpt::write_json_atomic(
        &logdir.join("config.resolved.json"),
        &serde_json::to_value(&*cfg)?,
    )?;
    let metrics_path = logdir.join("metrics.jsonl");
    let metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(start_step > 0)
        .write(true)
        .truncate(start_step == 0)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    let setup = Setup {
        wiring: wiring.clone(),
        plan: plan.clone(),
        cfg: cfg.clone(),
        seed,
        device,
        logdir: logdir.clone(),
        build: Arc::new(crate::actors::registry::build),
        resume: states,
        // No checkpoints, no state snapshots: a benchmark (`save_checkpoints: false`) should not
        // spend its last step copying optimizer state to the host.
        stateful_kinds: if cfg.save_checkpoints {
            crate::actors::registry::STATEFUL
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            vec![]
        },
        checkpoint_every: wiring.checkpoint_every.unwrap_or(cfg.log_iters),
    };
    let window = match mode {
        Mode::Async { max_staleness } => cfg.dfake_gen_update_ratio * (max_staleness + 1) + 1,
        _ => cfg.dfake_gen_update_ratio + 1,
    };
    let credits = Arc::new(super::actor::Credits::default());
    credits.stop_at(stop_step);
    let cancel = super::cancel::Cancel::new();
    let mut sup = Supervisor::new(plan.clone(), credits, cancel, setup.stateful(), window);
    sup.metrics_file = Some(metrics_file);
    if cfg.save_checkpoints && (wiring.checkpoint_every.is_some() || !setup.stateful().is_empty()) {
        let (cfg2, logdir2) = (cfg.clone(), logdir.clone());
        sup.checkpoint = Some(Box::new(move |step, states| {
            let dir = super::ckpt::write(&logdir2, step, states, &cfg2)?;
            refresh_plots(&logdir2);
            Ok(dir)
        }));
    }
    let progress = super::progress::progress_bar(&cfg, &plan, opts.quiet);
    if let Some(pb) = progress.clone() {
        sup.on_step = Some(Box::new(move |line| {
            super::progress::progress_update(&pb, line)
        }));
    }
    let t0 = Instant::now();
    let stop_flag = super::signals::install();
    let sup = if mode == Mode::Serial {
        let mut setup = setup;
        let mut sup = sup;
        let r = run_serial(&mut setup, &mut sup, &stop_flag);
        if let Err(e) = r {
            if sup.error.is_none() {
                sup.error = Some(format!("{e:#}"));
            }
        }
        sup
    } else {
        run_threaded(setup, sup)?
    };
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    // Also after a failure: the curves up to it are what one wants to look at.
    refresh_plots(&logdir);
    if let Some(e) = &sup.error {
        bail!("{e}");
    }
    let end_step = sup.completed;
    Ok(RunReport {
        logdir,
        seed,
        mode,
        start_step,
        end_step,
        wall_s: t0.elapsed().as_secs_f64(),
        history: sup.history,
        busy: sup.busy,
        spans: sup.spans,
        gpu_spans: sup.gpu_spans,
        queue_depths: sup
            .queues
            .iter()
            .map(
                |(edge, &(sum, n, max, capacity))| crate::profile::QueueDepth {
                    edge: edge.clone(),
                    mean: sum / n.max(1) as f64,
                    max: max as f64,
                    capacity,
                },
            )
            .collect(),
        checkpoints: sup.checkpoints_written,
        stopped_by_signal: sup.stop_requested
            || stop_flag.load(std::sync::atomic::Ordering::SeqCst),
    })
}
