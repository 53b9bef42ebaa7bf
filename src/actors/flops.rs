//! Model FLOPs of the `self_forcing` pipeline's work, for MFU in `run-pipeline profile`: what each
//! lane computes (rollouts, score passes, backward), averaged over the random exit step, from the
//! Wan FLOP counts of `models::wan::flops`. Recomputation (activation checkpointing) is not model
//! work and is not counted.

use crate::actors::rollout::step_list;
use crate::actors::zoo;
use crate::config::RunConfig;
use crate::diffusion::SigmaTable;
use crate::models::wan::flops::{forward_flops, tokens_per_frame};

/// FLOPs of one critic step, one generator update, and the mean per training step (critic every
/// step, generator every `dfake_gen_update_ratio`-th), per step of `batch_size` samples times
/// `gradient_accumulation_steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepFlops {
    pub critic_step: f64,
    pub generator_update: f64,
    pub per_step: f64,
}

/// None unless the generator and the critic are Wan models (a non-Wan teacher, e.g. the exact GMM,
/// counts as free).
pub fn self_forcing_step_flops(cfg: &RunConfig) -> Option<StepFlops> {
    let gen = zoo::wan_config(&cfg.generator_name, cfg)?;
    let fake = zoo::wan_config(&cfg.fake_name, cfg)?;
    let real = zoo::wan_config(&cfg.real_name, cfg);
    let [b, f, _, h, w] = zoo::latent_shape(cfg);
    let nfpb = cfg.num_frame_per_block.max(1);
    let blocks = f / nfpb;
    let tpf = tokens_per_frame(&gen, h, w);
    let tpb = nfpb * tpf;
    let n_steps = step_list(cfg, &SigmaTable::new(cfg.model_kwargs.timestep_shift))
        .ok()?
        .len() as f64;
    // Visible key frames of the chunk ending at frame `end` (the cache's window rule).
    let visible = |end: i64| {
        if cfg.local_attn_size < 0 {
            end
        } else {
            end.min(cfg.local_attn_size)
        }
    };
    // One pass over every block (one denoising step, or the context pass), per sample.
    let sweep: f64 = (1..=blocks)
        .map(|k| forward_flops(&gen, tpb, visible(k * nfpb) * tpf, false))
        .sum();
    // The context passes skip the last block (its K/V would serve no later block).
    let context_sweep: f64 = (1..blocks)
        .map(|k| forward_flops(&gen, tpb, visible(k * nfpb) * tpf, false))
        .sum();
    let text = forward_flops(&gen, 0, 0, true);
    // Exit step uniform over the steps (or the last): (n+1)/2 denoising passes.
    let passes = if cfg.last_step_only {
        n_steps
    } else {
        (n_steps + 1.0) / 2.0
    };
    let rollout = passes * sweep + context_sweep + text;
    let n_tok = f * tokens_per_frame(&fake, h, w);
    let full = |c: &crate::models::wan::WanConfig| forward_flops(c, n_tok, n_tok, true);
    let cfg_batch = if cfg.guidance_scale != 0.0 { 2.0 } else { 1.0 };
    let real_fwd = real.as_ref().map_or(0.0, |r| cfg_batch * full(r));
    let fake_fwd = full(&fake);
    let critic = rollout + 3.0 * fake_fwd;
    // The exit passes carry the graph: their backward is twice their forward (and the exit calls
    // recompute the text K/V with grad).
    let mut gen_update = rollout + 2.0 * sweep + blocks as f64 * text + real_fwd + fake_fwd;
    if cfg.distribution_loss == "sid" {
        // SiD backpropagates through both score networks' inputs.
        gen_update += 2.0 * (real_fwd + fake_fwd);
    }
    let scale = (b * cfg.gradient_accumulation_steps.max(1) as i64) as f64;
    let ratio = cfg.dfake_gen_update_ratio.max(1) as f64;
    Some(StepFlops {
        critic_step: scale * critic,
        generator_update: scale * gen_update,
        per_step: scale * (critic + gen_update / ratio),
    })
}
