//! `run-pipeline`: the command-line front end. Parse, load the layered config, hand over.
use clap::{Args, Parser, Subcommand};

/// Print a line to stdout; a closed pipe (`run-pipeline graph | head -1`) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
use std::process::ExitCode;
use stillflow::config::{self, LoadOptions};
use stillflow::graph::DeviceInventory;
use stillflow::runtime::RunOptions;

#[derive(Parser, Debug)]
#[command(
    name = "run-pipeline",
    version,
    about = "stillflow: distill diffusion models into few-step generators (DMD, SiD, Self-Forcing)",
    long_about = "Runs a pipeline graph (pipelines/*.yaml) with a layered config (configs/*.yaml, \
                  Self-Forcing keys). Without a subcommand it trains; with no --config it uses the \
                  embedded toy_dmd config."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Args, Debug, Clone, Default)]
struct Common {
    /// Config file (repeatable; later files win) or an embedded config name (toy_dmd, toy_sid,
    /// self_forcing_dmd, self_forcing_sid).
    #[arg(
        long = "config",
        visible_alias = "config_path",
        global = true,
        value_name = "FILE"
    )]
    configs: Vec<String>,
    /// Override one key: --set a.b=VALUE (VALUE parsed as YAML). Repeatable; applied last.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Output directory (the config key `logdir`).
    #[arg(long, global = true)]
    logdir: Option<String>,
    /// Resume from the newest checkpoint in the logdir.
    #[arg(long, global = true)]
    resume: bool,
    /// Number of steps (the config key `max_steps`).
    #[arg(long, global = true)]
    steps: Option<u64>,
    /// Device: cpu, cuda or cuda:i (the config key `device`).
    #[arg(long, global = true)]
    device: Option<String>,
    /// Serve live Prometheus metrics at ADDR (e.g. 127.0.0.1:9090) during the run.
    #[arg(long, global = true, value_name = "ADDR")]
    prometheus: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train (the default when no subcommand is given).
    Train,
    /// Print the resolved config as JSON.
    Config,
    /// Validate a pipeline or config file without running anything.
    Check { file: String },
    /// Print a pipeline graph (mermaid by default).
    Graph {
        file: Option<String>,
        #[arg(long, default_value = "mermaid", value_parser = ["mermaid", "dot"])]
        format: String,
    },
    /// Print versions, CUDA devices, and check a bf16 matmul against f32.
    Doctor,
    /// Generate samples from a checkpoint (few-step, block-causal, KV cache): latents, PNG grid
    /// and GIF (toy / pixel-space latents), quality report (exact GMM teacher).
    Sample {
        /// A checkpoint folder (LOGDIR/checkpoints/step_NNNNNN) or a logdir (its newest
        /// checkpoint). Without it, the generator of --config (generator_ckpt, else
        /// generator_name: a model folder or random:<preset>).
        #[arg(long, value_name = "DIR")]
        checkpoint: Option<String>,
        /// Prompt list (.txt, one per line), encoded with the config's text_encoder_path.
        #[arg(long, value_name = "FILE")]
        prompts: Option<String>,
        /// Do not decode to MP4/GIF even when vae_path is set (latents only).
        #[arg(long)]
        no_video: bool,
        /// H.264 encoder of the MP4s: openh264 (built in, the default) or ffmpeg (the `ffmpeg`
        /// program with libx264; `ffmpeg:/path/to/ffmpeg` names the program).
        #[arg(long, default_value = "openh264", value_name = "ENCODER")]
        video_encoder: String,
        /// MP4 quantiser, 1 (best) to 51 (smallest): OpenH264's QP or libx264's CRF.
        #[arg(long, default_value_t = 20)]
        video_quality: u8,
        /// Measure inference speed (latency to the first frames, fps; with and without the VAE
        /// decode) instead of writing samples.
        #[arg(long)]
        benchmark: bool,
        /// Timed runs per mode with --benchmark (after 2 warm-up runs).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Use the EMA weights instead of the generator's.
        #[arg(long)]
        use_ema: bool,
        /// Number of samples.
        #[arg(long, default_value_t = 64)]
        num_samples: usize,
        /// Seed of the noise (the same seed gives the same samples).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output folder (default: CHECKPOINT/samples, or CHECKPOINT/samples_ema with --use-ema).
        #[arg(long, value_name = "DIR")]
        out: Option<String>,
        /// Condition every sample on this prompt id (toy: class); default: cycle over all.
        #[arg(long, value_name = "ID")]
        prompt: Option<usize>,
        /// Samples per generator call (default: the config's batch_size).
        #[arg(long)]
        batch_size: Option<usize>,
    },
    /// Encode a prompt list with the umT5 text encoder into the embeddings file `data_path`
    /// takes (cond, uncond = the negative prompt, lens); resumable (a cache beside --out).
    EncodePrompts {
        /// Prompt list, one prompt per line.
        #[arg(long, value_name = "FILE.txt")]
        prompts: String,
        /// The text encoder: a Wan2.1 folder or a diffusers folder (default: text_encoder_path).
        #[arg(long, value_name = "DIR")]
        text_encoder: Option<String>,
        /// Output file (.safetensors).
        #[arg(long, value_name = "FILE")]
        out: String,
        /// Prompts per encoder call.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
    },
    /// Throughput run: train under serial, exact and async, write profiles, print the comparison.
    Profile {
        /// Model FLOPs of one iteration (for MFU); default: none.
        #[arg(long)]
        flops_per_step: Option<f64>,
        /// Schedules to run, comma-separated (some of serial, exact, async).
        #[arg(long, value_delimiter = ',', default_value = "serial,exact,async")]
        schedules: Vec<String>,
    },
    /// Check the c10d plumbing of this launch (see docs/DISTRIBUTED.md).
    #[command(hide = true)]
    DistSelftest,
}

impl Common {
    /// Whether the command line names the logdir (--logdir, --set logdir=…, STILLFLOW__LOGDIR).
    fn logdir_on_command_line(&self) -> bool {
        self.logdir.is_some()
            || self
                .sets
                .iter()
                .any(|s| s.split('=').next().map(str::trim) == Some("logdir"))
            || std::env::var_os("STILLFLOW__LOGDIR").is_some()
    }

    fn load(&self) -> Result<config::Loaded, String> {
        // The user's --set first; the dedicated flags win over them (they are more specific).
        let mut sets: Vec<String> = self.sets.clone();
        if let Some(l) = &self.logdir {
            sets.push(format!("logdir={}", yaml_quote(l)));
        }
        if let Some(s) = self.steps {
            sets.push(format!("max_steps={s}"));
        }
        if let Some(d) = &self.device {
            sets.push(format!("device={}", yaml_quote(d)));
        }
        let opts = LoadOptions {
            configs: self.configs.clone(),
            sets,
            env: std::env::vars().collect(),
            default_when_empty: true,
        };
        let loaded = config::load(&opts).map_err(|e| e.to_string())?;
        if !loaded.ignored.is_empty() {
            let keys: Vec<String> = loaded
                .ignored
                .iter()
                .map(|(k, l)| format!("{k} ({l})"))
                .collect();
            eprintln!(
                "note: keys stillflow does not use were ignored: {}",
                keys.join(", ")
            );
        }
        Ok(loaded)
    }
}

fn inventory() -> DeviceInventory {
    DeviceInventory {
        cuda_devices: tch::Cuda::device_count().max(0) as usize,
    }
}

fn load_graph(file: &str) -> Result<stillflow::graph::Graph, String> {
    stillflow::graph::load_pipeline(file, &inventory()).map_err(|e| e.to_string())
}

/// `check FILE`: a pipeline file (has `actors:`) or a config file; validation only.
fn check(common: &Common, file: &str) -> Result<(), String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e)
            if stillflow::graph::embedded(file).is_none()
                && stillflow::config::EMBEDDED.iter().all(|(n, _)| *n != file) =>
        {
            return Err(format!("{file}: cannot read: {e}"));
        }
        Err(_) => String::new(),
    };
    let is_pipeline = stillflow::graph::embedded(file).is_some()
        || text
            .lines()
            .any(|l| l.starts_with("actors:") || l.starts_with("edges:"));
    if is_pipeline {
        let g = load_graph(file)?;
        say!(
            "{file}: ok (pipeline `{}`: {} actors, {} edges)",
            g.name,
            g.actors.len(),
            g.edges.len()
        );
    } else {
        let opts = Common {
            configs: vec![file.to_string()],
            ..common.clone()
        };
        let loaded = opts.load()?;
        let g = load_graph(&loaded.config.pipeline)?;
        say!("{file}: ok (config; pipeline `{}` validates)", g.name);
        // Files are machine-specific: reported, not fatal (check a config before the weights are
        // on this machine); a run stops on them before building anything.
        let problems = stillflow::runtime::run::preflight_report(&loaded.config, &g);
        if !problems.is_empty() {
            eprintln!(
                "warning: on this machine a run would stop with {} problem(s):\n- {}",
                problems.len(),
                problems.join("\n- ")
            );
        }
    }
    Ok(())
}

/// Start the Prometheus endpoint if `--prometheus ADDR` was given.
fn serve(common: &Common) -> Result<Option<stillflow::profile::PrometheusServer>, String> {
    match &common.prometheus {
        None => Ok(None),
        Some(addr) => {
            let srv = stillflow::profile::serve_prometheus(addr)
                .map_err(|e| format!("--prometheus {addr}: {e:#}"))?;
            eprintln!("live metrics at http://{}/metrics", srv.addr);
            Ok(Some(srv))
        }
    }
}

/// `sample`: the override layers are --config files, STILLFLOW__* variables, --set and --device,
/// applied over the checkpoint's own config.
/// `encode-prompts`: the config supplies the negative prompt, the device and (unless
/// --text-encoder) `text_encoder_path`.
fn encode_prompts(
    common: &Common,
    prompts: String,
    text_encoder: Option<String>,
    out: String,
    batch_size: usize,
) -> Result<(), String> {
    let cfg = common.load()?.config;
    let te = text_encoder
        .or(cfg.text_encoder_path.clone())
        .ok_or("encode-prompts: pass --text-encoder DIR (or set text_encoder_path)")?;
    let device = if common.device.is_some() {
        stillflow::runtime::parse_device(&cfg.device).map_err(|e| format!("--device: {e:#}"))?
    } else {
        tch::Device::cuda_if_available()
    };
    // bf16 on CUDA with mixed_precision (the default), f32 otherwise, as every model of a run.
    let kind = stillflow::actors::zoo::compute_kind(&cfg, device);
    let r = stillflow::text::encode_prompts(&stillflow::text::EncodeOptions {
        prompts: prompts.clone().into(),
        text_encoder: te.clone().into(),
        out: out.into(),
        negative_prompt: cfg.negative_prompt.clone(),
        batch_size,
        device,
        kind,
        progress: cfg.progress,
    })
    .map_err(|e| format!("encode-prompts: {e:#}"))?;
    say!(
        "{}: {} prompts ({} unique with the negative prompt; {} encoded now, {}) on {device:?} → {} cond {:?}",
        prompts,
        r.prompts,
        r.unique,
        r.encoded,
        if r.up_to_date { "file up to date" } else { "rest from the cache" },
        r.out.display(),
        r.shape
    );
    if r.blank_lines > 0 {
        say!("  skipped {} blank line(s)", r.blank_lines);
    }
    say!("  use it with: --set data_path={}", r.out.display());
    Ok(())
}

fn sample(
    common: &Common,
    benchmark: Option<usize>,
    mut opts: stillflow::sample::SampleOptions,
) -> Result<(), String> {
    for (flag, given) in [
        ("--resume", common.resume),
        ("--steps", common.steps.is_some()),
        ("--logdir (use --out)", common.logdir.is_some()),
        ("--prometheus", common.prometheus.is_some()),
    ] {
        if given {
            return Err(format!("sample: {flag} does not apply to sampling"));
        }
    }
    let mut layers = vec![];
    for c in &common.configs {
        layers.push(config::config_layer(c).map_err(|e| e.to_string())?);
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    layers.extend(config::env_layers(&env).map_err(|e| e.to_string())?);
    let mut sets = common.sets.clone();
    if let Some(d) = &common.device {
        sets.push(format!("device={}", yaml_quote(d)));
    }
    for s in &sets {
        layers.push(config::set_layer(s).map_err(|e| e.to_string())?);
    }
    opts.overrides = layers;
    if let Some(runs) = benchmark {
        let r = stillflow::sample::bench::benchmark(&opts, 2, runs.max(1))
            .map_err(|e| format!("sample --benchmark: {e:#}"))?;
        say!("{}", stillflow::sample::bench::table(&r).trim_end());
        return Ok(());
    }
    let r = stillflow::sample::sample(&opts).map_err(|e| format!("sample: {e:#}"))?;
    say!(
        "sampled {} x {:?} from {} (step {}, {} weights, seed {})",
        r.shape[0],
        &r.shape[1..],
        r.checkpoint.display(),
        r.step,
        r.weights,
        opts.seed
    );
    if let Some(t) = r.first_frames_s {
        say!("  first decoded frames after {t:.2} s (streaming decode)");
    }
    if let Some(q) = &r.quality {
        say!("{}", stillflow::sample::quality_table(q).trim_end());
    }
    for f in &r.files {
        say!("  wrote {}", f.display());
    }
    Ok(())
}

/// `--video-encoder` / `--video-quality`.
fn mp4_options(encoder: &str, quality: u8) -> Result<stillflow::video::Mp4Options, String> {
    use stillflow::video::{Mp4Options, VideoEncoder};
    let encoder = match encoder {
        "openh264" => VideoEncoder::OpenH264,
        "ffmpeg" => VideoEncoder::ffmpeg(),
        e => match e.strip_prefix("ffmpeg:") {
            Some(p) if !p.is_empty() => VideoEncoder::Ffmpeg { program: p.into() },
            _ => {
                return Err(format!(
                    "--video-encoder {e}: expected openh264, ffmpeg or ffmpeg:/path/to/ffmpeg"
                ))
            }
        },
    };
    if !(1..=51).contains(&quality) {
        return Err(format!("--video-quality {quality}: expected 1 to 51"));
    }
    Ok(Mp4Options {
        encoder,
        quality,
        ..Mp4Options::default()
    })
}

fn yaml_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd.unwrap_or(Cmd::Train) {
        Cmd::Config => {
            let loaded = cli.common.load()?;
            eprintln!("layers: built-in defaults, {}", loaded.layers.join(", "));
            say!("{}", loaded.config.to_json_pretty());
            Ok(())
        }
        Cmd::Check { file } => check(&cli.common, &file),
        Cmd::Graph { file, format } => {
            let file = match file {
                Some(f) => f,
                None => cli.common.load()?.config.pipeline,
            };
            let g = load_graph(&file)?;
            say!(
                "{}",
                if format == "dot" {
                    g.to_dot()
                } else {
                    g.to_mermaid()
                }
            );
            Ok(())
        }
        Cmd::EncodePrompts {
            prompts,
            text_encoder,
            out,
            batch_size,
        } => encode_prompts(&cli.common, prompts, text_encoder, out, batch_size),
        Cmd::Sample {
            checkpoint,
            prompts,
            no_video,
            video_encoder,
            video_quality,
            benchmark,
            runs,
            use_ema,
            num_samples,
            seed,
            out,
            prompt,
            batch_size,
        } => sample(
            &cli.common,
            benchmark.then_some(runs),
            stillflow::sample::SampleOptions {
                checkpoint: checkpoint.map(Into::into),
                prompts: prompts.map(Into::into),
                video: !no_video,
                mp4: mp4_options(&video_encoder, video_quality)?,
                use_ema,
                num_samples,
                seed,
                out: out.map(Into::into),
                prompt,
                batch_size,
                overrides: vec![],
            },
        ),
        Cmd::Doctor => stillflow::profile::doctor::run().map_err(|e| format!("doctor: {e:#}")),
        Cmd::DistSelftest => match stillflow::dist::selftest::run() {
            Ok(true) => Ok(()),
            Ok(false) => Err("dist-selftest: some checks failed".into()),
            Err(e) => Err(format!("dist-selftest: {e:#}")),
        },
        Cmd::Profile {
            flops_per_step,
            schedules,
        } => {
            let loaded = cli.common.load()?;
            let _srv = serve(&cli.common)?;
            // Model FLOPs per step: given, or counted for Wan generator/critic pipelines.
            let flops = flops_per_step.or_else(|| {
                stillflow::actors::flops::self_forcing_step_flops(&loaded.config)
                    .map(|f| f.per_step)
            });
            let extras = stillflow::profile::ProfileExtras {
                model_flops_per_step: flops,
                batch_size: (loaded.config.batch_size as u64)
                    * loaded.config.gradient_accumulation_steps,
                ..Default::default()
            };
            let opts = RunOptions {
                resume: false,
                quiet: false,
            };
            let names: Vec<&str> = schedules.iter().map(|s| s.trim()).collect();
            let cmp =
                stillflow::profile::run_profile_schedules(&loaded.config, &opts, &extras, &names)
                    .map_err(|e| format!("profile: {e:#}"))?;
            say!("{}", cmp.markdown_table());
            if let Some((name, err)) = cmp.failed.first() {
                return Err(format!("profile: the `{name}` run failed: {err}"));
            }
            Ok(())
        }
        Cmd::Train => {
            let loaded = cli.common.load()?;
            // Under torchrun only rank 0 serves metrics and writes the profile and the summary
            // (the other ranks train the same replica; docs/DISTRIBUTED.md). A broken launch
            // environment is reported by `train` itself.
            let rank = stillflow::dist::DistEnv::from_env()
                .map(|e| e.rank)
                .unwrap_or(0);
            let _srv = if rank == 0 { serve(&cli.common)? } else { None };
            let opts = RunOptions {
                resume: cli.common.resume,
                quiet: false,
            };
            let mut loaded = loaded;
            // A logdir from a config file (not --logdir / --set / STILLFLOW__LOGDIR) gets a fresh
            // numbered folder when it already holds a run, so `make run` works every time; a
            // single process only (under torchrun every rank must name the same folder).
            let world = stillflow::dist::DistEnv::from_env()
                .map(|e| e.world_size)
                .unwrap_or(1);
            if !cli.common.logdir_on_command_line() && world == 1 {
                let base = std::path::PathBuf::from(&loaded.config.logdir);
                let (dir, moved) = stillflow::runtime::ckpt::run_folder(&base, opts.resume)
                    .map_err(|e| format!("{e:#}"))?;
                if moved {
                    eprintln!(
                        "note: {} already holds a run; {} {} (pass --logdir to choose the folder)",
                        base.display(),
                        if opts.resume {
                            "resuming the newest,"
                        } else {
                            "this run writes to"
                        },
                        dir.display()
                    );
                    loaded.config.logdir = dir.display().to_string();
                }
            }
            let cfg = loaded.config.clone();
            let report =
                stillflow::runtime::train(loaded.config, &opts).map_err(|e| format!("{e:#}"))?;
            if rank != 0 {
                return Ok(());
            }
            let extras = stillflow::profile::ProfileExtras {
                batch_size: (cfg.batch_size as u64) * cfg.gradient_accumulation_steps,
                peak_memory: stillflow::profile::cuda_peak_memory(),
                model_flops_per_step: stillflow::actors::flops::self_forcing_step_flops(&cfg)
                    .map(|f| f.per_step),
                ..Default::default()
            };
            let prof = stillflow::profile::write_run_profile(&report, &extras)
                .map_err(|e| format!("writing the profile: {e:#}"))?;
            say!(
                "{}",
                stillflow::runtime::summary::render(&cfg, &report).trim_end()
            );
            say!(
                "  profile/summary.md, profile/trace.json (overlap {:.2}), profile/metrics.prom",
                prof.overlap
            );
            let plots = report.logdir.join("plots");
            let mut pngs: Vec<String> = std::fs::read_dir(&plots)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".png"))
                        .collect()
                })
                .unwrap_or_default();
            pngs.sort();
            if !pngs.is_empty() {
                say!("  plots/: {}", pngs.join(", "));
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    // Expandable segments let the caching allocator grow blocks in place instead of keeping
    // differently-sized free blocks: the long rollouts and score passes of a step otherwise
    // fragment memory. Set before anything touches CUDA; a user's own setting wins.
    if std::env::var_os("PYTORCH_CUDA_ALLOC_CONF").is_none() {
        std::env::set_var("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True");
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
