//! The typed configuration: Self-Forcing's keys (spec §6, with the reference's defaults from its
//! `default_config.yaml` and implicit `getattr` defaults) plus stillflow's own keys.
//!
//! Every struct denies unknown fields, so a typo is an error; keys that Self-Forcing yamls carry but
//! stillflow does not use are listed in [`IGNORED_KEYS`] and reported once.

use serde::{Deserialize, Serialize};

/// Keys a Self-Forcing yaml may carry that stillflow accepts and ignores (reported once at start).
pub const IGNORED_KEYS: &[&str] = &[
    "wandb_host",
    "wandb_key",
    "wandb_entity",
    "wandb_project",
    "wandb_save_dir",
    "disable_wandb",
    "sharding_strategy",
    "generator_fsdp_wrap_strategy",
    "real_score_fsdp_wrap_strategy",
    "fake_score_fsdp_wrap_strategy",
    "text_encoder_fsdp_wrap_strategy",
    "text_encoder_cpu_offload",
    "trainer",
    "total_batch_size",
    "load_raw_video",
    "gc_interval",
    "discriminator_lr_multiplier",
    "i2v",
    "ckpt_step",
    "prompt_name",
    "prompt_path",
    "eval_first_n",
    "num_samples",
    "height",
    "width",
    "num_frames",
    "no_save",
    "no_visualize",
    "backward_simulation",
];

/// The resolved run configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    // ---- Self-Forcing keys -------------------------------------------------------------------
    /// `dmd` or `sid`.
    pub distribution_loss: String,
    pub generator_ckpt: Option<String>,
    /// Teacher: a model preset (`wan2.1-t2v-1.3b`, `gmm`, …) or a local folder.
    pub real_name: String,
    /// Critic: a model preset or a local folder.
    pub fake_name: String,
    pub denoising_step_list: Vec<f64>,
    pub warp_denoising_step: bool,
    pub ts_schedule: bool,
    pub ts_schedule_max: bool,
    pub num_train_timestep: u32,
    /// Shift applied to sampled score/critic timesteps and the generator's σ table.
    pub timestep_shift: f64,
    /// Real-score CFG: r = r_c + g·(r_c − r_u).
    pub guidance_scale: f64,
    pub real_guidance_scale: Option<f64>,
    pub fake_guidance_scale: Option<f64>,
    /// `flow` (the reference) or `x0`.
    pub denoising_loss_type: String,
    pub mixed_precision: bool,
    /// 0 means: draw a random seed (and record it).
    pub seed: u64,
    pub lr: f64,
    pub lr_critic: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub beta1_critic: f64,
    pub beta2_critic: f64,
    pub weight_decay: f64,
    pub data_path: Option<String>,
    pub batch_size: i64,
    pub sid_alpha: f64,
    /// Weight λ of DMD's regression loss (Yin et al. 2024: λ_reg = 0.25, with LPIPS):
    /// λ·mean((G(z) − ODE_teacher(z))²) is added to the generator loss when the pipeline has an
    /// `ode_target` actor (`pipeline: self_forcing_regression`). 0 = off. Exact teachers only.
    pub regression_weight: f64,
    /// Euler steps of the teacher's probability-flow ODE that makes the regression targets
    /// (uniform σ grid, shift 1: its last step's shrinkage of a mode is ≈ 0.1 % at 200 steps).
    pub regression_ode_steps: u64,
    pub ema_weight: f64,
    pub ema_start_step: u64,
    /// Where the f32 EMA shadow of the generator lives: `""` = with the weights (the GPU in a CUDA
    /// run), `cpu` = host memory, as the reference keeps it. On the GPU it costs 4 bytes per
    /// generator parameter (5.2 GB at 1.3B, replicated on every rank); on the host it costs a
    /// device-to-host copy and a host update per generator version, off the critical path.
    pub ema_device: String,
    /// Checkpoint period in steps.
    pub log_iters: u64,
    pub negative_prompt: String,
    pub dfake_gen_update_ratio: u64,
    /// [B, F, C, H, W]; B and F are overwritten at run time as in the reference.
    pub image_or_video_shape: Vec<i64>,
    pub gradient_checkpointing: bool,
    pub num_frame_per_block: i64,
    pub independent_first_frame: bool,
    pub same_step_across_blocks: bool,
    pub last_step_only: bool,
    pub num_training_frames: i64,
    /// Timestep of the KV-cache context re-run.
    pub context_noise: f64,
    pub causal: bool,
    pub min_score_timestep: i64,
    pub max_grad_norm_generator: f64,
    pub max_grad_norm_critic: f64,
    pub local_attn_size: i64,
    pub sink_size: i64,
    pub model_kwargs: ModelKwargs,

    // ---- stillflow keys ----------------------------------------------------------------------
    /// Pipeline: an embedded name (`self_forcing`, `teacher`, `sample`) or a path to a yaml file.
    pub pipeline: String,
    /// `cpu`, `cuda` or `cuda:i`.
    pub device: String,
    pub logdir: String,
    /// Number of steps (critic updates) to train; 0 = until stopped.
    pub max_steps: u64,
    pub gradient_accumulation_steps: u64,
    /// With `gradient_checkpointing`, which models keep each checkpointed block's unmasked
    /// self-attention output and log-sum-exp from the forward so that backward does not run
    /// attention again (selective checkpointing; docs/WAN.md): `all`, `none`, or a comma-separated
    /// list of `generator`, `fake`, `real` (`true`/`false` = all/none). Same values and gradients;
    /// costs B·N·dim compute-kind elements + B·heads·N f32 per block until backward (~100 MB per
    /// 1.3B block at 32,760 tokens, ~3 GB per checkpointed 1.3B backward).
    #[serde(deserialize_with = "bool_or_string")]
    pub checkpoint_keep_attention: String,
    pub keep_checkpoints: usize,
    /// Write checkpoints at all (benchmarks turn this off: a 1.3B run's state is tens of GB).
    pub save_checkpoints: bool,
    /// Reproduce the reference's shift-5/shift-8 σ mismatch in the critic loss (spec §4.2).
    pub critic_sigma_quirk: bool,
    /// Shift of the σ table inside the real/fake score wrappers (8 in the reference).
    pub score_timestep_shift: f64,
    /// Stop after this many non-finite steps in a row.
    pub max_nonfinite_steps: u64,
    /// Schedule override (`serial`, `exact`, `async`); empty = the pipeline file's.
    pub schedule: String,
    /// Staleness bound for `async`; negative = the pipeline file's. Recommended: `exact` (no
    /// staleness); `async` with 1 only for throughput, after checking quality (docs/PIPELINES.md).
    pub max_staleness: i64,
    /// Optimizer state under data parallelism (docs/DISTRIBUTED.md): 0 = replicated (every rank
    /// keeps the f32 master weights and AdamW moments of the whole model), 1 = ZeRO-1 (each of
    /// the W ranks keeps them for its 1/W shard of the flattened parameters; gradients are
    /// reduce-scattered, the updated weights all-gathered). Same training up to float summation
    /// order; checkpoints are the same either way, so a run may resume with the other stage or
    /// another number of processes.
    pub zero_stage: u64,
    /// The generator's base model: a folder of real weights, a name under `model_root`, a toy
    /// (`wan-tiny`), or `random:<preset>`; with `generator_ckpt` a preset name only gives the
    /// architecture (docs/MODELS.md).
    pub generator_name: String,
    /// Where bare model names are looked up (Self-Forcing's `wan_models/`): `real_name:
    /// Wan2.1-T2V-14B` is the folder `<model_root>/Wan2.1-T2V-14B`.
    pub model_root: String,
    /// Let a preset name that is not a folder build RANDOM weights (benchmarks); off by default,
    /// so a missing download is an error, never a silent random model. `random:<preset>` asks for
    /// random weights for one model.
    pub allow_random_weights: bool,
    /// The umT5 text encoder: a Wan release folder (models_t5_umt5-xxl-enc-bf16.safetensors +
    /// google/umt5-xxl/tokenizer.json) or a diffusers folder (text_encoder/ + tokenizer/).
    /// Needed when `data_path` is a `.txt` prompt list.
    pub text_encoder_path: Option<String>,
    /// The Wan VAE (Wan2.1_VAE.safetensors, a Wan release folder or a diffusers vae/ folder), for
    /// decoding samples to video.
    pub vae_path: Option<String>,
    /// The exact-teacher toy problem (used when a model name is `gmm`).
    pub toy: ToyConfig,
    /// Progress bar on stderr.
    pub progress: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelKwargs {
    pub timestep_shift: f64,
}

impl Default for ModelKwargs {
    fn default() -> Self {
        ModelKwargs {
            timestep_shift: 5.0,
        }
    }
}

/// The embedded exact-teacher problem: a class-conditional Gaussian mixture in a video-latent shape.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ToyConfig {
    /// `procedural` (video-shaped), `ring` (8 modes in a 2-D plane), `imbalanced`.
    pub kind: String,
    pub num_modes: i64,
    pub num_classes: i64,
    /// Within-mode standard deviation.
    pub mode_std: f64,
    /// Distance scale of the mode means.
    pub mode_scale: f64,
    pub seed: u64,
    /// Hidden size / layers / heads of the tiny Wan models used as generator and critic.
    pub wan_dim: i64,
    pub wan_layers: i64,
    pub wan_heads: i64,
    pub wan_ffn: i64,
    pub text_dim: i64,
    pub text_len: i64,
    /// Samples used for quality metrics.
    pub eval_samples: i64,
}

impl Default for ToyConfig {
    fn default() -> Self {
        ToyConfig {
            kind: "procedural".into(),
            num_modes: 8,
            num_classes: 4,
            mode_std: 0.15,
            mode_scale: 1.0,
            seed: 1234,
            wan_dim: 32,
            wan_layers: 2,
            wan_heads: 2,
            wan_ffn: 64,
            text_dim: 16,
            text_len: 4,
            eval_samples: 512,
        }
    }
}

/// The standard Wan negative prompt (Self-Forcing's `negative_prompt`).
pub const WAN_NEGATIVE_PROMPT: &str = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            distribution_loss: "dmd".into(),
            generator_ckpt: None,
            real_name: "Wan2.1-T2V-14B".into(),
            fake_name: "Wan2.1-T2V-1.3B".into(),
            denoising_step_list: vec![1000.0, 750.0, 500.0, 250.0],
            warp_denoising_step: false,
            ts_schedule: false,
            ts_schedule_max: false,
            num_train_timestep: 1000,
            timestep_shift: 5.0,
            guidance_scale: 3.0,
            real_guidance_scale: None,
            fake_guidance_scale: None,
            denoising_loss_type: "flow".into(),
            mixed_precision: true,
            seed: 0,
            lr: 2e-6,
            lr_critic: 4e-7,
            beta1: 0.0,
            beta2: 0.999,
            beta1_critic: 0.0,
            beta2_critic: 0.999,
            weight_decay: 0.01,
            data_path: None,
            batch_size: 1,
            sid_alpha: 1.0,
            regression_weight: 0.0,
            regression_ode_steps: 200,
            ema_weight: 0.99,
            ema_start_step: 200,
            ema_device: String::new(),
            log_iters: 50,
            negative_prompt: WAN_NEGATIVE_PROMPT.into(),
            dfake_gen_update_ratio: 5,
            image_or_video_shape: vec![1, 21, 16, 60, 104],
            gradient_checkpointing: true,
            checkpoint_keep_attention: "fake".into(),
            num_frame_per_block: 3,
            independent_first_frame: false,
            same_step_across_blocks: true,
            last_step_only: false,
            num_training_frames: 21,
            context_noise: 0.0,
            causal: true,
            min_score_timestep: 0,
            max_grad_norm_generator: 10.0,
            max_grad_norm_critic: 10.0,
            local_attn_size: -1,
            sink_size: 0,
            model_kwargs: ModelKwargs::default(),
            pipeline: "self_forcing".into(),
            device: "cpu".into(),
            logdir: "runs/latest".into(),
            max_steps: 0,
            gradient_accumulation_steps: 1,
            keep_checkpoints: 3,
            save_checkpoints: true,
            critic_sigma_quirk: false,
            score_timestep_shift: 8.0,
            max_nonfinite_steps: 20,
            schedule: String::new(),
            max_staleness: -1,
            zero_stage: 0,
            generator_name: "wan2.1-t2v-1.3b".into(),
            model_root: "wan_models".into(),
            allow_random_weights: false,
            text_encoder_path: None,
            vae_path: None,
            toy: ToyConfig::default(),
            progress: true,
        }
    }
}

/// A string key that also takes a YAML boolean (kept as "true"/"false"), for keys that began as
/// booleans (`checkpoint_keep_attention`).
fn bool_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Str(String),
    }
    Ok(match B::deserialize(d)? {
        B::Bool(b) => b.to_string(),
        B::Str(s) => s,
    })
}
