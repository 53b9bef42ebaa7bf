//! `run-pipeline sample --benchmark`: inference speed of the block-causal generator, chunk-wise
//! as Self-Forcing reports it (one video, batch 1): latency to the first decoded frames and
//! frames per second, with and without the VAE decode, after warm-up runs. Every time is taken
//! after a device synchronisation, so it is wall time of finished GPU work.

use super::{prepare, prompts, SampleOptions};
use crate::rng::Lane;
use crate::runtime::Work;
use anyhow::{Context, Result};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Tensor};

/// One configuration's timings (medians over the timed runs).
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub mode: String,
    /// Seconds from the start to the first block's frames (decoded, with the VAE).
    pub first_frames_s: f64,
    pub total_s: f64,
    /// Video frames (with the VAE) or latent-equivalent video frames (without: 1 + 4·(F − 1)).
    pub frames: usize,
    pub fps: f64,
    pub runs: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub shape: Vec<i64>,
    pub steps: Vec<f64>,
    pub rows: Vec<BenchRow>,
}

fn sync(device: Device) {
    if let Device::Cuda(d) = device {
        tch::Cuda::synchronize(d as i64);
    }
}

/// The card's name (nvidia-smi), so every number names the machine it came from.
fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=name",
                "--format=csv,noheader",
                &format!("-i={i}"),
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("cuda:{i} (name unknown: no nvidia-smi)")),
        _ => format!("{device:?} ({} threads)", tch::get_num_threads()),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// Runs `warmup` untimed and `runs` timed generations per mode (generator only; generator +
/// streaming VAE decode when `vae_path` is set).
pub fn benchmark(opts: &SampleOptions, warmup: usize, runs: usize) -> Result<BenchReport> {
    let p = prepare(opts)?;
    let cfg = &p.cfg;
    let (cond, _, _) =
        prompts::conditioning(cfg, 1, opts.prompt, p.device, opts.prompts.as_deref())?;
    let c = cond.narrow(0, 0, 1);
    let vae = prompts::load_vae(cfg, p.device)?;
    let f = cfg.image_or_video_shape[1];
    let video_frames = (1 + 4 * (f - 1)) as usize;
    let _g = tch::no_grad_guard();
    let mut rows = vec![];
    let modes: Vec<bool> = if vae.is_some() {
        vec![false, true]
    } else {
        vec![false]
    };
    for decode in modes {
        let mut firsts = vec![];
        let mut totals = vec![];
        for r in 0..warmup + runs {
            let work = Work {
                step: r as u64,
                lane: Lane::Other,
                micro: 0,
            };
            let mut stream = match (&vae, decode) {
                (Some(v), true) => Some(v.decoder_stream()),
                _ => None,
            };
            sync(p.device);
            let t0 = Instant::now();
            let mut first = None;
            let mut keep: Vec<Tensor> = vec![];
            let _ = p
                .rollout
                .generate_with(&p.ctx, &work, &c, &mut |_, x0| {
                    if let Some(s) = stream.as_mut() {
                        let v = s.push(&x0.permute([0, 2, 1, 3, 4]))?;
                        keep.push(v);
                    }
                    if first.is_none() {
                        sync(p.device);
                        first = Some(t0.elapsed().as_secs_f64());
                    }
                    Ok(())
                })
                .context("benchmark generation")?;
            sync(p.device);
            let total = t0.elapsed().as_secs_f64();
            drop(keep);
            if r >= warmup {
                firsts.push(first.unwrap_or(total));
                totals.push(total);
            }
        }
        let total = median(&totals);
        rows.push(BenchRow {
            mode: if decode {
                "generator + VAE decode".into()
            } else {
                "generator only".into()
            },
            first_frames_s: median(&firsts),
            total_s: total,
            frames: video_frames,
            fps: video_frames as f64 / total,
            runs: totals,
        });
    }
    Ok(BenchReport {
        device: device_name(p.device),
        shape: vec![
            1,
            f,
            cfg.image_or_video_shape[2],
            cfg.image_or_video_shape[3],
            cfg.image_or_video_shape[4],
        ],
        steps: crate::actors::rollout::step_list(
            cfg,
            &crate::diffusion::SigmaTable::new(cfg.model_kwargs.timestep_shift),
        )?,
        rows,
    })
}

/// The report as a markdown table.
pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "inference benchmark on {} (latents {:?}, steps {:?}, batch 1)\n\n| mode | first frames (s) | total (s) | frames | fps |\n|---|---|---|---|---|\n",
        r.device, r.shape, r.steps
    );
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {:.3} | {:.3} | {} | {:.1} |\n",
            row.mode, row.first_frames_s, row.total_s, row.frames, row.fps
        ));
    }
    s
}
