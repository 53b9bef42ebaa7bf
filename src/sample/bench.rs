//! `run-pipeline sample --benchmark`: inference speed of the block-causal generator, chunk-wise
//! as Self-Forcing reports it (one video, batch 1): latency to the first decoded frames and
//! frames per second, with and without the VAE decode, after warm-up runs. Every time is taken
//! after a device synchronisation, so it is wall time of finished GPU work.

use super::video::SideDecoder;
use super::{prepare, prompts, SampleOptions};
use crate::cuda::{CudaEvent, CudaStream};
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
    // (decode, channels-last VAE convolutions, cuDNN autotuning): side by side in one run.
    let mut modes: Vec<(bool, bool, bool)> = vec![(false, true, false)];
    if vae.is_some() {
        modes.extend([
            (true, false, false),
            (true, true, false),
            (true, true, true),
        ]);
    }
    for (decode, cl, autotune) in modes {
        crate::models::vae::set_channels_last(cl);
        if p.device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(autotune);
        }
        let mut firsts = vec![];
        let mut totals = vec![];
        for r in 0..warmup + runs {
            let work = Work {
                step: r as u64,
                lane: Lane::Other,
                micro: 0,
            };
            let mut dec = match (&vae, decode) {
                (Some(v), true) => Some(SideDecoder::new(v, p.device)?),
                _ => None,
            };
            sync(p.device);
            let t0 = Instant::now();
            // GPU-side latency: events on the generator's stream at the start, and after the first
            // block's work (its decode, on the side stream, with the VAE).
            let mut start = CudaEvent::new(true)?;
            start.record(&CudaStream::current_for(p.device)?)?;
            let mut first_ev: Option<CudaEvent> = None;
            let mut keep: Vec<Tensor> = vec![];
            let _ = p
                .rollout
                .generate_with(&p.ctx, &work, &c, &mut |_, x0| {
                    let stream = match dec.as_mut() {
                        Some(d) => {
                            keep.push(d.push(x0)?);
                            d.side().copied()
                        }
                        None => None,
                    };
                    if first_ev.is_none() {
                        let mut e = CudaEvent::new(true)?;
                        let s = match stream {
                            Some(s) => s,
                            None => CudaStream::current_for(p.device)?,
                        };
                        e.record(&s)?;
                        first_ev = Some(e);
                    }
                    Ok(())
                })
                .context("benchmark generation")?;
            sync(p.device);
            let total = t0.elapsed().as_secs_f64();
            drop(keep);
            let first = match (&first_ev, p.device.is_cuda()) {
                (Some(e), true) => start.elapsed_ms(e)? / 1e3,
                _ => total,
            };
            if r >= warmup {
                firsts.push(first);
                totals.push(total);
            }
        }
        let total = median(&totals);
        rows.push(BenchRow {
            mode: if decode {
                format!(
                    "generator + VAE decode (side stream{}{})",
                    if cl { ", channels-last" } else { "" },
                    if autotune { ", cuDNN autotune" } else { "" }
                )
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
