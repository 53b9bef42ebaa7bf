//! The run driver: config → graph → plan → executor, with logdir, resume, metrics and checkpoints.

use super::exec::Setup;
use super::plan::{Mode, Plan};
use super::serial::run_serial;
use super::supervisor::{Span, Supervisor};
use super::threaded::run_threaded;
use super::wiring::Wiring;
use crate::config::RunConfig;
use crate::dist::DistEnv;
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

/// Under torchrun (several processes): `cuda` becomes `cuda:LOCAL_RANK`; a pinned `cuda:i`
/// is refused (every rank must take its own GPU).
fn rank_device(
    cfg: &RunConfig,
    device: tch::Device,
    env: &DistEnv,
    cuda_devices: usize,
) -> Result<tch::Device> {
    match device {
        tch::Device::Cuda(_) if cfg.device.trim() != "cuda" => bail!(
            "config key `device`: `{}` pins one GPU, but under torchrun ({} processes) every rank \
             takes cuda:LOCAL_RANK; set device: cuda",
            cfg.device,
            env.world_size
        ),
        tch::Device::Cuda(_) if env.local_rank >= cuda_devices => bail!(
            "config key `device`: {} needs cuda:{} (LOCAL_RANK) but this machine has \
             {cuda_devices} CUDA device(s); start at most {cuda_devices} processes per node",
            env.describe(),
            env.local_rank
        ),
        tch::Device::Cuda(_) => Ok(tch::Device::Cuda(env.local_rank)),
        d => Ok(d),
    }
}

/// Where a rank other than 0 lets its actors write (evaluator, sink): a scratch folder removed at
/// the end of the run, so only rank 0 writes the logdir.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Train with `cfg`. Errors name the actor and step that failed.
///
/// Under torchrun (`WORLD_SIZE` > 1, docs/DISTRIBUTED.md) every process trains one replica on its
/// share of the global batch (`batch_size` rows each, keyed by global row), gradients are
/// averaged before each update, and only rank 0 writes the logdir. The run then equals one
/// process with `batch_size × WORLD_SIZE` rows, up to float summation order; its checkpoints
/// record that global batch, so they resume on any number of processes.
/// Every model, checkpoint and prompt file the run names, checked before anything is built or
/// written: one error listing every problem (what to download and which key to set).
fn preflight(cfg: &RunConfig, wiring: &Wiring) -> Result<()> {
    let problems = preflight_problems(cfg, wiring);
    if !problems.is_empty() {
        bail!(
            "the run cannot start, {} problem(s):\n- {}",
            problems.len(),
            problems.join("\n- ")
        );
    }
    Ok(())
}

/// The problems [`preflight`] reports for `cfg` with `pipeline` (its models, checkpoint and
/// prompt files), for `run-pipeline check`, which warns instead of failing: a config can be
/// checked on a machine that does not hold the weights.
pub fn preflight_report(cfg: &RunConfig, pipeline: &crate::graph::Graph) -> Vec<String> {
    preflight_problems(cfg, &Wiring::from_graph(pipeline))
}

fn preflight_problems(cfg: &RunConfig, wiring: &Wiring) -> Vec<String> {
    let mut roles: Vec<&str> = vec![];
    for n in &wiring.nodes {
        if let Some(m) = n.params.get("model").and_then(|v| v.as_str()) {
            let r = match m {
                "critic" => "fake",
                "teacher" => "real",
                r => r,
            };
            for known in ["generator", "fake", "real"] {
                if r == known && !roles.contains(&known) {
                    roles.push(known);
                }
            }
        }
    }
    let mut problems = crate::models::resolve::check_models(cfg, &roles);
    if wiring.nodes.iter().any(|n| n.kind == "prompt_source") {
        problems.extend(crate::text::check_prompt_keys(cfg));
    }
    problems
}

pub fn train(cfg: RunConfig, opts: &RunOptions) -> Result<RunReport> {
    let env = DistEnv::from_env().context("the torchrun environment")?;
    let (rank, world) = (env.rank, env.world_size);
    let device = super::parse_device(&cfg.device).context("config key `device`")?;
    let cuda_devices = tch::Cuda::device_count().max(0) as usize;
    if let tch::Device::Cuda(i) = device {
        if i >= cuda_devices {
            bail!("config key `device`: {} requested but this machine has {cuda_devices} CUDA device(s)", cfg.device);
        }
    }
    let device = if world > 1 {
        rank_device(&cfg, device, &env, cuda_devices)?
    } else {
        device
    };
    let graph = crate::graph::load_pipeline(&cfg.pipeline, &DeviceInventory { cuda_devices })
        .map_err(|e| anyhow!("{e}"))?;
    let wiring = Wiring::from_graph(&graph);
    if cfg.regression_weight > 0.0 && !wiring.nodes.iter().any(|n| n.kind == "ode_target") {
        bail!(
            "config key `regression_weight` is {} but pipeline {} has no `ode_target` actor to \
             make the regression targets (use pipeline: self_forcing_regression)",
            cfg.regression_weight,
            cfg.pipeline
        );
    }
    preflight(&cfg, &wiring)?;
    let mode = resolve_mode(&cfg, &graph.schedule)?;
    if world > 1 {
        if let Mode::Async { .. } = mode {
            bail!(
                "config key `schedule`: async is not supported with {world} processes yet: its two \
                 optimizer threads are not ordered by data, so their gradient all-reduces would \
                 not come in the same order on every rank (use schedule: exact or serial)"
            );
        }
        if let Some(n) = wiring
            .nodes
            .iter()
            .find(|n| n.device.as_deref().is_some_and(|d| d.starts_with("cuda")))
        {
            bail!(
                "pipeline {}: actor `{}` pins device {}, but under torchrun every rank runs the \
                 whole pipeline on its own GPU (cuda:LOCAL_RANK); remove the actor's `device`",
                cfg.pipeline,
                n.name,
                n.device.as_deref().unwrap_or_default()
            );
        }
    }
    if matches!(mode, Mode::Async { .. }) && device.is_cuda() && !opts.quiet {
        // Measured on H100 80GB (1.3B bench config): two of four async runs aborted with a CUDA
        // illegal memory access before the optimizer recorded its stream on the gradients it
        // reads; the four runs since completed. Too few for a week-long job (README, Known issues).
        eprintln!(
            "warning: schedule `async` on CUDA is experimental: two of four 1.3B runs aborted \
             before a stream-safety fix, four since completed (README, Known issues); use `exact` \
             for long runs"
        );
    }
    // Joins the job (a no-op for a single process); every collective below and in the
    // optimizers goes through this process's comm.
    crate::dist::ensure_process_comm(
        &env,
        device,
        &crate::dist::GroupOptions::default(),
        crate::dist::CommOptions::from_env()?,
    )?;
    let logdir = PathBuf::from(&cfg.logdir);
    if rank == 0 {
        ensure_writable(&logdir)?;
    }
    // What checkpoints record and resume against: the equivalent single process, whose batch is
    // the global one.
    let global_cfg = |c: &RunConfig| {
        let mut g = c.clone();
        g.batch_size *= world as i64;
        g
    };
    let existing = super::ckpt::latest(&logdir)?;
    let mut cfg = cfg;
    let (start_step, states, seed) = match (&existing, opts.resume) {
        (Some(dir), true) => {
            let r = super::ckpt::read(dir, &global_cfg(&cfg)).with_context(|| {
                format!(
                    "checkpoints record the global batch (batch_size × processes; here {} × {world})",
                    cfg.batch_size
                )
            })?;
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
    // Every rank must train the same replica from the same step: rank 0's seed (`seed: 0` is
    // drawn there) and a check of the resume step.
    let seed = match crate::dist::process_comm() {
        Some(mut comm) => {
            let seed = crate::dist::shared_draw(&mut comm, "seed", || seed as i64)? as u64;
            let step0 = crate::dist::shared_draw(&mut comm, "start_step", || start_step as i64)?;
            if step0 as u64 != start_step {
                bail!(
                    "rank {rank} starts at step {start_step} but rank 0 at step {step0}: every \
                     rank must see the same checkpoints in {}",
                    logdir.display()
                );
            }
            if rank == 0 {
                let backend = comm.group().map(|g| format!("{:?}", g.backend()));
                eprintln!(
                    "data parallel: {world} processes, backend {}, {device:?} on rank 0, \
                     global batch {} ({} per process)",
                    backend.unwrap_or_default(),
                    cfg.batch_size * world as i64,
                    cfg.batch_size
                );
            }
            seed
        }
        None => seed,
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
    // A `.txt` prompt list is encoded once (resumable cache) before the actors start.
    crate::text::ensure_run_embeddings(&cfg, device, rank)?;
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
        checkpoint_every: wiring.checkpoint_every.unwrap_or(cfg.log_iters),
    });
    let cfg = Arc::new(cfg);
    let (metrics_file, scratch) = if rank == 0 {
        super::ckpt::write_json_atomic(
            &logdir.join("config.resolved.json"),
            &serde_json::to_value(&*cfg)?,
        )?;
        let metrics_path = logdir.join("metrics.jsonl");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(start_step > 0)
            .write(true)
            .truncate(start_step == 0)
            .open(&metrics_path)
            .with_context(|| format!("opening {}", metrics_path.display()))?;
        (Some(f), Scratch(None))
    } else {
        let d = std::env::temp_dir().join(format!("stillflow-rank{rank}-{}", std::process::id()));
        std::fs::create_dir_all(&d)
            .with_context(|| format!("rank {rank}: creating scratch folder {}", d.display()))?;
        (None, Scratch(Some(d)))
    };
    let setup = Setup {
        wiring: wiring.clone(),
        plan: plan.clone(),
        cfg: cfg.clone(),
        seed,
        rank: rank as u32,
        world: world as u32,
        device,
        logdir: scratch.0.clone().unwrap_or_else(|| logdir.clone()),
        build: Arc::new(crate::actors::registry::build),
        resume: states,
        // No checkpoints, no state snapshots: a benchmark (`save_checkpoints: false`) should not
        // spend its last step copying optimizer state to the host. Ranks other than 0 write no
        // checkpoints (the state is replicated).
        stateful_kinds: if cfg.save_checkpoints && rank == 0 {
            crate::actors::registry::STATEFUL
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            vec![]
        },
    };
    let window = match mode {
        Mode::Async { max_staleness } => cfg.dfake_gen_update_ratio * (max_staleness + 1) + 1,
        _ => cfg.dfake_gen_update_ratio + 1,
    };
    let credits = Arc::new(super::actor::Credits::default());
    credits.stop_at(stop_step);
    let cancel = super::cancel::Cancel::new();
    let mut sup = Supervisor::new(plan.clone(), credits, cancel, setup.stateful(), window);
    sup.metrics_file = metrics_file;
    if rank == 0
        && cfg.save_checkpoints
        && (wiring.checkpoint_every.is_some() || !setup.stateful().is_empty())
    {
        let (cfg2, logdir2) = (global_cfg(&cfg), logdir.clone());
        sup.checkpoint = Some(Box::new(move |step, states| {
            let dir = super::ckpt::write(&logdir2, step, states, &cfg2)?;
            refresh_plots(&logdir2);
            Ok(dir)
        }));
    }
    let progress = super::progress::progress_bar(&cfg, &plan, opts.quiet || rank != 0);
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
    if rank == 0 {
        refresh_plots(&logdir);
    }
    drop(scratch);
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
