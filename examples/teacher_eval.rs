//! The exact teacher's own few-step quality: Euler on the probability-flow ODE with the exact
//! GMM posterior mean (`Gmm::teacher_sample`), measured with the same metrics and the same
//! prompts (classes cycling) as the in-loop evaluator. The reference row of docs/QUALITY.md.
//!
//! Usage: `teacher_eval [--config NAME|FILE]… [--set k=v]… [--steps 50,4] [--shift S] [--n N]`
//! Prints one JSON line per step count: the `QualityReport` plus `steps`, `shift`, `guidance`.
//! Guidance is the config's `guidance_scale` (reference convention x0 = c + g·(c − u)).

use anyhow::{bail, Context, Result};
use stillflow::actors::evaluator::eval_cond;
use stillflow::actors::zoo;
use stillflow::config::{self, LoadOptions};
use stillflow::eval::quality;
use stillflow::models::toy_text::ToyTextEncoder;
use stillflow::rng::{Lane, Purpose, RngKey};

fn main() -> Result<()> {
    let mut configs = vec![];
    let mut sets = vec![];
    let mut steps: Vec<usize> = vec![50, 4];
    let mut shift: Option<f64> = None;
    let mut n: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--config" => configs.push(val()?),
            "--set" => sets.push(val()?),
            "--steps" => {
                steps = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--steps: comma-separated integers")?
            }
            "--shift" => shift = Some(val()?.parse().context("--shift: a number")?),
            "--n" => n = Some(val()?.parse().context("--n: an integer")?),
            other => bail!("unknown argument `{other}`"),
        }
    }
    if steps.contains(&0) {
        bail!("--steps: step counts must be >= 1");
    }
    let cfg = config::load(&LoadOptions {
        configs,
        sets,
        env: vec![],
        default_when_empty: true,
    })?
    .config;
    let gmm = zoo::toy_gmm(&cfg)?;
    let n = n.unwrap_or(cfg.toy.eval_samples.max(1) as usize);
    // The generator's σ-table shift by default (the grid a few-step sampler would use).
    let shift = shift.unwrap_or(cfg.model_kwargs.timestep_shift);
    let cond = eval_cond(&cfg, n, tch::Device::Cpu);
    let t = &cfg.toy;
    let enc = ToyTextEncoder::new(
        t.num_classes.max(1) as usize,
        t.text_len as usize,
        t.text_dim as usize,
    );
    let uncond = enc.encode(&vec![String::new(); n]);
    let g = cfg.real_guidance_scale.unwrap_or(cfg.guidance_scale);
    for &s in &steps {
        let key = RngKey::new(cfg.seed, 0, Lane::Other, Purpose::Eval).sub(0x7EAC_0000 + s as u64);
        let guidance = if g != 0.0 { Some((&uncond, g)) } else { None };
        let x = gmm.teacher_sample_cfg(&key, n, s, shift, &cond, guidance);
        let q = quality(&gmm, &x, None);
        let mut line = serde_json::to_value(&q)?;
        line["steps"] = s.into();
        line["shift"] = shift.into();
        line["guidance"] = g.into();
        println!("{line}");
    }
    Ok(())
}
