//! `run-pipeline sample`: few-step block-causal generation from a checkpoint, or from the
//! generator a config names (`generator_ckpt` / `generator_name`; see `source.rs`) (spec §7).
//!
//! From a checkpoint, the generator is rebuilt from the checkpoint's own resolved config (override layers —
//! `--config`, `STILLFLOW__*`, `--set`, `--device` — go on top), loaded with the generator's
//! weights or, with `--use-ema`, the EMA shadow, and run by the training rollout
//! (`actors::rollout::Rollout::generate`: blocks of `num_frame_per_block` frames, the warped
//! few-step list, the KV cache) with every step run (`last_step_only`: inference has no random
//! exit step). Randomness is keyed by (seed, row), so the same seed gives the same bytes and
//! sample k gets the same noise whatever N or the batch size (results agree to float rounding).
//!
//! Outputs (in `--out`, default `<checkpoint>/samples`, or `samples_ema` with `--use-ema`):
//! `samples.safetensors` (`latents` [N, F, C, H, W] f32, `prompt_ids` [N] i64), `samples.json`
//! (provenance), for toy and pixel-space latents `grid.png` and `frames.gif`, and with an exact
//! GMM teacher `quality.json` (the metrics of `crate::eval` against exact teacher samples). With
//! `vae_path`, per sample `NNN-prompt.mp4` and `.gif`, decoded block by block while the generator
//! runs (`video.rs`), and `video_stream.json`; `--benchmark` times that loop (`bench.rs`).

pub mod bench;
mod prompts;
pub mod render;
mod source;
pub mod video;

use crate::actors::rollout::Rollout;
use crate::actors::zoo;
use crate::checkpoint;
use crate::config::{self, Layer, RunConfig};
use crate::eval::{quality, QualityReport};
use crate::rng::Lane;
use crate::runtime::actor::{Credits, WeightsIn};
use crate::runtime::cancel::Cancel;
use crate::runtime::weights::WeightsHub;
use crate::runtime::{Ctx, Mode, Plan, Work};
use anyhow::{bail, ensure, Context, Result};
use render::{Latents, Rendering};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// What to sample.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// A checkpoint folder (`…/checkpoints/step_NNNNNN`) or a logdir (its newest checkpoint);
    /// None: the generator of the config (`generator_ckpt`, else `generator_name`).
    pub checkpoint: Option<PathBuf>,
    /// A prompt list (.txt, one per line) encoded with the config's `text_encoder_path`.
    pub prompts: Option<PathBuf>,
    pub use_ema: bool,
    pub num_samples: usize,
    /// Any value, 0 included, is used as given.
    pub seed: u64,
    pub out: Option<PathBuf>,
    /// Condition every sample on this prompt id (toy: class; embedding file: row); default:
    /// cycle over all of them.
    pub prompt: Option<usize>,
    /// Samples per generator call (default: the config's `batch_size`).
    pub batch_size: Option<usize>,
    /// Config layers applied over the checkpoint's config (without a checkpoint: the config).
    pub overrides: Vec<Layer>,
    /// Write MP4/GIF through the config's `vae_path` (when the latents are the VAE's).
    pub video: bool,
    /// The MP4 encoder (OpenH264 from source by default; `ffmpeg` only when asked) and quality.
    pub mp4: crate::video::Mp4Options,
}

/// What was written.
#[derive(Debug)]
pub struct SampleReport {
    /// The checkpoint, or the config's generator source.
    pub checkpoint: PathBuf,
    pub step: u64,
    pub weights: String,
    pub out: PathBuf,
    pub files: Vec<PathBuf>,
    pub shape: Vec<i64>,
    pub quality: Option<QualityReport>,
    pub latents: Tensor,
    /// Streaming video: seconds to the first decoded frames, and per-block events.
    pub first_frames_s: Option<f64>,
}

/// The checkpoint folder `p` names: itself if it holds state.json, else the newest checkpoint of
/// the logdir `p`.
pub fn resolve_checkpoint(p: &Path) -> Result<PathBuf> {
    if !p.exists() {
        bail!("checkpoint {} does not exist", p.display());
    }
    if p.join(checkpoint::STATE_FILE).is_file() {
        return Ok(p.to_path_buf());
    }
    if p.is_dir() {
        if let Some(dir) = checkpoint::latest_checkpoint(p)? {
            return Ok(dir);
        }
    }
    bail!(
        "{} is neither a checkpoint (no {}) nor a logdir holding checkpoints/step_*",
        p.display(),
        checkpoint::STATE_FILE
    )
}

/// The checkpoint's resolved config with `overrides` on top.
fn config_from(dir: &Path, stored: &Value, overrides: &[Layer]) -> Result<RunConfig> {
    let mut layers = vec![Layer {
        name: format!("{} (config)", dir.join(checkpoint::STATE_FILE).display()),
        yaml: serde_json::to_string(stored)?,
    }];
    layers.extend(overrides.iter().cloned());
    Ok(config::load_layers(&layers)?.config)
}

/// The part holding the weights to sample with and the tensor-name prefix to strip.
fn pick_part(state: &checkpoint::StateFile, use_ema: bool) -> Result<(String, &'static str)> {
    let actors = state.state.get("actors").and_then(|a| a.as_object());
    let actors = actors.cloned().unwrap_or_default();
    let file = |n: &str| format!("{n}.safetensors");
    if use_ema {
        // The EMA actor's state: {"active", "start_version", …}.
        let Some((name, st)) = actors
            .iter()
            .find(|(_, v)| v.get("start_version").is_some())
        else {
            bail!(
                "--use-ema: checkpoint of step {} has no EMA (its pipeline has no `ema` actor)",
                state.step
            );
        };
        if st.get("active").and_then(|v| v.as_bool()) != Some(true) {
            let start = state
                .config
                .get("ema_start_step")
                .and_then(|v| v.as_u64())
                .map_or(String::new(), |s| format!(" (ema_start_step = {s})"));
            bail!(
                "--use-ema: checkpoint of step {} has no EMA weights yet: the EMA starts later{start}; \
                 sample without --use-ema or from a later checkpoint",
                state.step
            );
        }
        ensure!(
            state.parts.contains_key(name.as_str()),
            "checkpoint of step {}: EMA state `{name}` but no {}",
            state.step,
            file(name)
        );
        return Ok((name.clone(), ""));
    }
    let Some((name, _)) = actors
        .iter()
        .find(|(_, v)| v.get("role").and_then(|r| r.as_str()) == Some("generator"))
    else {
        bail!(
            "checkpoint of step {} has no generator optimizer state (parts: {})",
            state.step,
            state.parts.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    Ok((name.clone(), "model."))
}

/// A context for driving the rollout outside a running graph.
fn standalone_ctx(
    cfg: Arc<RunConfig>,
    seed: u64,
    device: Device,
    out: &Path,
    weights_arrive: bool,
) -> Ctx {
    let plan = Arc::new(Plan {
        mode: Mode::Serial,
        ratio: cfg.dfake_gen_update_ratio,
        micro: 1,
        start_step: 0,
        stop_step: 1,
        lanes: BTreeMap::new(),
        checkpoint_every: 0,
    });
    // A weights input tells the model builder that weights arrive before first use (they come
    // from the checkpoint below), so it skips the random initialisation.
    let mut weights_in = BTreeMap::new();
    if weights_arrive {
        weights_in.insert(
            "weights".to_string(),
            WeightsIn {
                model: "generator".into(),
                hub: Arc::new(WeightsHub::new("generator", 1)),
                loaded: None,
                aliased: false,
            },
        );
    }
    Ctx {
        name: "sample".into(),
        kind: "rollout".into(),
        cfg,
        params: BTreeMap::from([
            ("model".to_string(), json!("generator")),
            ("grad".to_string(), json!(false)),
        ]),
        seed,
        rank: 0,
        world: 1,
        device,
        plan,
        cancel: Cancel::new(),
        credits: Arc::new(Credits::default()),
        events: None,
        weights_in,
        weights_out: None,
        logdir: out.to_path_buf(),
    }
}

/// Everything generation needs, built once (`sample` and `sample --benchmark`).
pub(crate) struct Prepared {
    pub cfg: Arc<RunConfig>,
    pub ctx: Ctx,
    pub rollout: Rollout,
    pub device: Device,
    pub out: PathBuf,
    src_dir: PathBuf,
    src_step: u64,
    src_part: String,
}

/// Builds the generator (weights from the checkpoint or the config) and its context.
pub(crate) fn prepare(opts: &SampleOptions) -> Result<Prepared> {
    ensure!(opts.num_samples >= 1, "--num-samples must be >= 1");
    let src = match &opts.checkpoint {
        Some(c) => source::from_checkpoint(c, opts)?,
        None => source::from_config(opts)?,
    };
    let mut cfg = src.cfg;
    // Inference runs the whole few-step list in every block (spec §7).
    cfg.last_step_only = true;
    let device = crate::runtime::parse_device(&cfg.device).context("config key `device`")?;
    if let Device::Cuda(i) = device {
        let n = tch::Cuda::device_count().max(0) as usize;
        ensure!(
            i < n,
            "config key `device`: {} requested but this machine has {n} CUDA device(s)",
            cfg.device
        );
    } else {
        // One intra-op thread: reductions then never depend on the thread count (same bytes).
        tch::set_num_threads(1);
    }
    let out = opts.out.clone().unwrap_or_else(|| src.default_out.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let cfg = Arc::new(cfg);
    let ctx = standalone_ctx(cfg.clone(), opts.seed, device, &out, src.weights.is_some());
    let rollout = Rollout::new(&ctx).context("building the generator")?;
    if let Some(weights) = &src.weights {
        let kinds: BTreeMap<&str, Kind> = rollout
            .vars()
            .iter()
            .map(|(k, v)| (k.as_str(), v.kind()))
            .collect();
        let weights: Vec<(String, Tensor)> = weights
            .iter()
            .map(|(k, t)| {
                let t = match kinds.get(k.as_str()) {
                    Some(&kind) => t.to_kind(kind),
                    None => t.shallow_clone(),
                };
                (k.clone(), t)
            })
            .collect();
        crate::optim::copy_named_into(rollout.vars(), &weights, &src.label)?;
    }
    Ok(Prepared {
        cfg,
        ctx,
        rollout,
        device,
        out,
        src_dir: src.dir,
        src_step: src.step,
        src_part: src.part,
    })
}

/// Generate samples and write them (see the module doc).
pub fn sample(opts: &SampleOptions) -> Result<SampleReport> {
    let Prepared {
        cfg,
        ctx,
        rollout,
        device,
        out,
        src_dir,
        src_step,
        src_part,
    } = prepare(opts)?;
    let n = opts.num_samples;
    let chunk = opts
        .batch_size
        .unwrap_or(cfg.batch_size.max(1) as usize)
        .clamp(1, n);
    let (cond, ids, labels) =
        prompts::conditioning(&cfg, n, opts.prompt, device, opts.prompts.as_deref())?;
    let vae = if opts.video {
        prompts::load_vae(&cfg, device)?
    } else {
        None
    };
    let _g = tch::no_grad_guard();
    let mut outs = vec![];
    let mut videos = vec![];
    let mut stream = vec![];
    let mut first_frames_s = None;
    // Every call is a full chunk (rows micro·chunk…): sample k is keyed by row k whatever N is.
    for (m, first) in (0..n).step_by(chunk).enumerate() {
        let rows: Vec<i64> = (first..first + chunk).map(|i| (i % n) as i64).collect();
        let c = cond.index_select(0, &Tensor::from_slice(&rows).to_device(device));
        let work = Work {
            step: 0,
            lane: Lane::Other,
            micro: m as u32,
        };
        let bases: Vec<Option<PathBuf>> = (first..first + chunk)
            .map(|i| (i < n).then(|| video::base_path(&out, i, &labels[i])))
            .collect();
        let gif_scale = if cfg.image_or_video_shape[4] * 8 > 512 {
            2
        } else {
            1
        };
        let mut sink = match vae.as_ref() {
            Some(v) => Some(video::VideoSink::new(
                v,
                bases,
                gif_scale,
                device,
                opts.mp4.clone(),
            )?),
            None => None,
        };
        let (x, _, _) = rollout.generate_with(&ctx, &work, &c, &mut |blk, x0| {
            if let Some(s) = sink.as_mut() {
                s.push_block(blk, x0)?;
            }
            Ok(())
        })?;
        if let Some(s) = sink {
            let (paths, events) = s.finish()?;
            if first_frames_s.is_none() {
                // Seconds from the start of the first generator call to its first frames in
                // the encoders (the sink is made right before the call).
                first_frames_s = events.first().map(|e| e.at_s);
            }
            stream.push(events);
            videos.extend(paths);
        }
        let x = x.to_kind(Kind::Float).to_device(Device::Cpu);
        outs.push(x.narrow(0, 0, chunk.min(n - first) as i64));
    }
    if vae.is_none() && opts.video && cfg.image_or_video_shape[2] == 16 && cfg.vae_path.is_none() {
        eprintln!("note: no MP4/GIF: set `vae_path` (the Wan VAE) to decode the latents to video");
    }
    let latents = Tensor::cat(&outs, 0);
    let mut rep = write_outputs(
        opts, &cfg, &src_dir, src_step, &src_part, &out, latents, &ids, &labels,
    )?;
    if !stream.is_empty() {
        // When each block's frames were decoded and encoded, per generator call: the proof that
        // video comes out while the generator still runs (frames grow block by block).
        let path = out.join("video_stream.json");
        crate::runtime::ckpt::write_json_atomic(
            &path,
            &json!({"first_frames_s": first_frames_s, "calls": stream}),
        )?;
        videos.push(path);
    }
    rep.files.splice(0..0, videos);
    rep.first_frames_s = first_frames_s;
    Ok(rep)
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    opts: &SampleOptions,
    cfg: &RunConfig,
    dir: &Path,
    step: u64,
    part: &str,
    out: &Path,
    latents: Tensor,
    ids: &[i64],
    labels: &[String],
) -> Result<SampleReport> {
    let mut files = vec![];
    let path = out.join("samples.safetensors");
    let id_t = Tensor::from_slice(ids);
    Tensor::write_safetensors(&[("latents", &latents), ("prompt_ids", &id_t)], &path)
        .with_context(|| format!("writing {}", path.display()))?;
    files.push(path);

    let shape = latents.size();
    let toy = cfg.real_name.eq_ignore_ascii_case("gmm");
    let mode = render::rendering(shape[2], shape[3], shape[4], toy);
    if mode != Rendering::None {
        let lat = Latents::new(&latents)?;
        let path = out.join("grid.png");
        crate::report::image::write_png(&path, &render::grid(&lat, labels, mode, 64))?;
        files.push(path);
        let path = out.join("frames.gif");
        crate::report::image::write_gif(&path, &render::animation(&lat, mode, 64), 50)?;
        files.push(path);
    }

    let quality = if toy {
        let gmm = zoo::toy_gmm(cfg)?;
        // Cycling prompts cover the classes uniformly: the target is the whole mixture.
        let class = opts.prompt.filter(|_| cfg.toy.num_classes > 0);
        let q = quality(&gmm, &latents, class);
        let path = out.join("quality.json");
        crate::runtime::ckpt::write_json_atomic(&path, &serde_json::to_value(&q)?)?;
        files.push(path);
        Some(q)
    } else {
        None
    };
    let weights = if opts.use_ema { "ema" } else { "generator" };
    let meta = json!({
        "checkpoint": dir.display().to_string(),
        "step": step,
        "weights": weights,
        "part": part,
        "seed": opts.seed,
        "num_samples": opts.num_samples,
        "shape": shape,
        "prompt_ids": ids,
        "prompts": labels,
        "denoising_step_list": cfg.denoising_step_list,
        "warp_denoising_step": cfg.warp_denoising_step,
        "num_frame_per_block": cfg.num_frame_per_block,
        "files": files.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect::<Vec<_>>(),
    });
    let path = out.join("samples.json");
    crate::runtime::ckpt::write_json_atomic(&path, &meta)?;
    files.push(path);
    Ok(SampleReport {
        checkpoint: dir.to_path_buf(),
        step,
        weights: weights.into(),
        out: out.to_path_buf(),
        files,
        shape,
        quality,
        latents,
        first_frames_s: None,
    })
}

/// The quality report as a table (metric, value, what exact samples give).
pub fn quality_table(q: &QualityReport) -> String {
    let class = q
        .class
        .map_or("all classes".to_string(), |c| format!("class {c}"));
    let rows: Vec<(&str, String, String)> = vec![
        (
            "mode coverage",
            format!("{:.3}", q.coverage),
            format!("1 ({} modes)", q.modes),
        ),
        (
            "mass error (max)",
            format!("{:.4}", q.mass_err_max),
            "0".into(),
        ),
        (
            "mass error (mean)",
            format!("{:.4}", q.mass_err_mean),
            "0".into(),
        ),
        (
            "precision",
            format!("{:.3}", q.precision),
            format!("{:.3}", q.precision_expected),
        ),
        ("std ratio", format!("{:.3}", q.std_ratio), "1".into()),
        (
            "sliced W2",
            format!("{:.4}", q.sliced_w2),
            format!("{:.4} (floor)", q.sliced_w2_floor),
        ),
        (
            "cross-entropy (nats)",
            format!("{:.3}", q.cross_entropy),
            format!("{:.3}", q.cross_entropy_exact),
        ),
        (
            "frame consistency",
            format!("{:.3}", q.frame_consistency),
            "1".into(),
        ),
    ];
    let mut s = format!(
        "quality vs the exact teacher ({} samples, {class}):\n  {:<22} {:>10}  {}\n",
        q.n, "metric", "value", "exact samples"
    );
    for (m, v, e) in rows {
        s.push_str(&format!("  {m:<22} {v:>10}  {e}\n"));
    }
    s
}
