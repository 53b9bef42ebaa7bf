//! Building the models actors own, by role, from the config: the generator (block-causal Wan),
//! the critic and the teacher (a Wan preset or folder, the exact GMM, or a small MLP).

use crate::config::RunConfig;
use crate::models::gmm::Gmm;
use crate::models::mlp::{Mlp, MlpConfig};
use crate::models::resolve::{self, Source};
use crate::models::wan::{CausalOptions, WanConfig, WanModel};
use crate::models::Denoiser;
use crate::rng::{Lane, Purpose, RngKey};
use anyhow::{bail, ensure, Context, Result};
use tch::{nn, Device, Kind, Tensor};

/// A network an actor owns, with its variables.
pub enum Net {
    Wan(WanModel),
    Gmm(Gmm),
    Mlp(Mlp),
}

pub struct Model {
    pub vs: nn::VarStore,
    pub net: Net,
    pub name: String,
}

impl Model {
    /// Flow prediction (Denoiser).
    pub fn flow(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Tensor {
        match &self.net {
            Net::Wan(m) => m.flow(x_t, t, &cond.to_kind(m.kind())),
            Net::Gmm(g) => g.flow(x_t, t, cond),
            Net::Mlp(m) => m.flow(x_t, t, cond),
        }
    }

    /// Variables sorted by name (the order used for snapshots, gradients and optimizer state).
    pub fn vars(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn wan(&self) -> Option<&WanModel> {
        match &self.net {
            Net::Wan(m) => Some(m),
            _ => None,
        }
    }

    pub fn gmm(&self) -> Option<&Gmm> {
        match &self.net {
            Net::Gmm(g) => Some(g),
            _ => None,
        }
    }
}

/// The compute precision: bf16 on CUDA with `mixed_precision`, f32 otherwise.
pub fn compute_kind(cfg: &RunConfig, device: Device) -> Kind {
    if cfg.mixed_precision && device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// [B, F, C, H, W] of one training batch (B from `batch_size`, F from `num_training_frames`).
pub fn latent_shape(cfg: &RunConfig) -> [i64; 5] {
    let s = &cfg.image_or_video_shape;
    [
        cfg.batch_size,
        cfg.num_training_frames.max(1),
        s[2],
        s[3],
        s[4],
    ]
}

/// The exact-teacher mixture of the config's `toy` section, in the latent shape.
pub fn toy_gmm(cfg: &RunConfig) -> Result<Gmm> {
    let [_, f, c, h, w] = latent_shape(cfg);
    let t = &cfg.toy;
    let g = match t.kind.as_str() {
        "procedural" => Gmm::procedural(
            f,
            c,
            h,
            w,
            t.num_modes as usize,
            t.num_classes as usize,
            t.mode_std,
            t.mode_scale,
            t.seed,
        )?,
        // The 2-D mixtures are embedded in the latent shape so the same Wan generator trains on
        // them (its patch needs the video shape); the embedded mixture is again an exact Gmm.
        "ring" => embed_in_latent(
            &Gmm::ring(
                t.num_modes as usize,
                t.mode_scale,
                t.mode_std,
                t.num_classes as usize,
            )?,
            [f, c, h, w],
            t.seed,
        )?,
        "imbalanced" => embed_in_latent(
            &Gmm::imbalanced(
                t.num_modes as usize,
                t.mode_scale,
                t.mode_std,
                t.num_classes as usize,
                IMBALANCE_RATIO,
            )?,
            [f, c, h, w],
            t.seed,
        )?,
        other => {
            bail!("config key `toy.kind`: unknown toy `{other}` (procedural, ring, imbalanced)")
        }
    };
    Ok(g.with_shift(cfg.score_timestep_shift))
}

/// Weight ratio heaviest/lightest mode of `toy.kind: imbalanced` (issue 9: weights spanning 10×).
pub const IMBALANCE_RATIO: f64 = 10.0;

/// A low-dimensional mixture `low` (means in R^d, d = low.dim()) placed in a latent of `shape`
/// = [F, C, H, W]: μ_k = Q·m_k with Q the fixed orthonormal D×d frame of `embedding_frame`, each
/// component keeping its isotropic std in all D dims, and its weight and class. Q preserves
/// distances, so the modes stay exactly as separated as in d dims, and the result is a `Gmm` in
/// D dims: the exact denoiser, density and metrics carry over unchanged (Qᵀx of an exact sample
/// is an exact sample of `low`).
pub fn embed_in_latent(low: &Gmm, shape: [i64; 4], seed: u64) -> Result<Gmm> {
    let frame = embedding_frame(shape, low.dim(), seed)?;
    let means = low.means().matmul(&frame.tr()); // [K, D]
    Ok(Gmm::new(
        shape,
        &means,
        low.stds().to_vec(),
        low.weights().to_vec(),
        low.classes().to_vec(),
        low.num_classes(),
    )?
    .with_shift(low.sigma_table().shift))
}

/// The orthonormal D×d frame (float64, D = F·C·H·W) of `embed_in_latent`. Each video frame f
/// gets its own random orthonormal C·H·W×d frame Q_f (QR of a keyed Gaussian matrix, column signs
/// fixed by diag R > 0 so the result does not depend on the QR routine), and Q stacks them scaled
/// by 1/√F: QᵀQ = Σ_f Q_fᵀQ_f / F = I. So every frame shows the mode with the same geometry (the
/// distances shrunk by √F), which makes per-frame mode assignment (frame consistency) as reliable
/// in every frame, and a causal generator must keep later frames on the mode its first block chose.
pub fn embedding_frame(shape: [i64; 4], d_low: i64, seed: u64) -> Result<Tensor> {
    let [f, c, h, w] = shape;
    let chw = c * h * w;
    ensure!(
        chw >= d_low && f >= 1,
        "toy: a {d_low}-dim mixture does not fit frames of C·H·W = {chw} values (latent {shape:?})"
    );
    // Sub-streams "EMBED" + frame: disjoint from `Gmm::procedural`'s (sub = mode index).
    let key =
        |i: i64| RngKey::new(seed, 0, Lane::Other, Purpose::Init).sub(0x454D_4245_4400 + i as u64);
    let blocks: Vec<Tensor> = (0..f)
        .map(|i| {
            let a = crate::rng::randn(&key(i), &[chw, d_low], Kind::Double, Device::Cpu);
            let (q, r) = Tensor::linalg_qr(&a, "reduced");
            q * r.diagonal(0, 0, 1).sign().unsqueeze(0)
        })
        .collect();
    Ok(Tensor::cat(&blocks, 0) / (f as f64).sqrt())
}

fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The Wan architecture a model name stands for (`wan-tiny` comes from the `toy` section; a
/// folder from its config.json; `random:<preset>` and presets from the preset table). For sizes
/// and FLOPs only: building goes through [`crate::models::resolve`].
pub fn wan_config(name: &str, cfg: &RunConfig) -> Option<WanConfig> {
    let lower = name.to_lowercase();
    if lower == "wan-tiny" {
        let t = &cfg.toy;
        let c = cfg.image_or_video_shape[2];
        return Some(WanConfig::tiny(
            t.wan_dim,
            t.wan_layers,
            t.wan_heads,
            t.wan_ffn,
            c,
            t.text_dim,
        ));
    }
    if let Some(p) = lower.strip_prefix(resolve::RANDOM_PREFIX) {
        return WanConfig::preset(p);
    }
    for dir in resolve::candidates(name, cfg) {
        if dir.is_dir() {
            let wd = resolve::wan_dir(&dir).ok()?;
            let file = wd.dir.join("config.json");
            return if wd.diffusers {
                crate::models::wan::diffusers::config_from_json_file(&file).ok()
            } else {
                WanConfig::from_json_file(&file).ok()
            };
        }
    }
    WanConfig::preset(&lower)
}

/// Build the model of `role` ("generator", "fake", "real") named `name` on `device`.
/// Random weights come from keyed draws of (seed, role), so every actor building the same role
/// gets the same numbers.
/// `kind`: the parameters' kind (optimizers keep f32 masters; readers use [`compute_kind`]).
/// `random_init: false` skips the (host-side, keyed) random initialisation for readers whose
/// weights arrive over a weights edge before first use: a 1.3B model takes seconds to draw.
/// The run's options for a Wan model in `role`, whether built from a preset or loaded: causal
/// attention window, block checkpointing and which models keep attention for backward.
fn apply_run_options(m: &mut WanModel, cfg: &RunConfig, role: &str) {
    m.causal = CausalOptions {
        num_frame_per_block: cfg.num_frame_per_block,
        local_attn_size: cfg.local_attn_size,
        sink_size: cfg.sink_size,
    };
    m.checkpoint_blocks = cfg.gradient_checkpointing;
    m.checkpoint_keep_attention = cfg.keeps_attention(role);
}

pub fn build(
    name: &str,
    role: &str,
    cfg: &RunConfig,
    seed: u64,
    device: Device,
    kind: Kind,
    random_init: bool,
) -> Result<Model> {
    let mut vs = nn::VarStore::new(device);
    // New variables are created in `kind` directly: a frozen 14B teacher built in f32 first would
    // need 56 GB on the device before its conversion to bf16 (28 GB).
    vs.set_kind(kind);
    let key = RngKey::new(seed, 0, Lane::Other, Purpose::Init).sub(name_hash(role));
    let key_name = config_key_for(role);
    let from_ckpt = role == "generator" && cfg.generator_ckpt.is_some();
    let net = match resolve::resolve(name, key_name, cfg, from_ckpt)? {
        Source::Toy(t) if t == "gmm" => Net::Gmm(toy_gmm(cfg)?),
        Source::Toy(t) if t == "mlp" => {
            let s = latent_shape(cfg);
            let mc = MlpConfig {
                shape: [s[1], s[2], s[3], s[4]],
                ..MlpConfig::toy2d(cfg.toy.text_dim)
            };
            Net::Mlp(Mlp::new(&vs.root(), mc, key.digest()))
        }
        Source::Toy(_) | Source::Random { .. } | Source::Architecture { .. } => {
            let Some(wc) = wan_config(name, cfg) else {
                bail!("config key `{key_name}`: no Wan architecture for `{name}`");
            };
            let mut m = WanModel::new(&vs.root(), wc)
                .with_context(|| format!("building Wan model `{name}`"))?;
            apply_run_options(&mut m, cfg, role);
            if random_init {
                crate::models::wan::init::init_random(&m, &key);
            }
            if random_init && !wc_is_tiny(name) && !from_ckpt {
                eprintln!("RANDOM WEIGHTS: `{role}` is `{name}` with Wan's random initialisation (no weights loaded)");
            }
            Net::Wan(m)
        }
        Source::Folder(wd) => {
            let (loaded_vs, m) = crate::models::wan::load_from_dir(&wd.dir, device, kind)
                .with_context(|| {
                    format!("loading `{role}` weights from `{name}` (config key `{key_name}`)")
                })?;
            vs = loaded_vs;
            let mut m = m;
            apply_run_options(&mut m, cfg, role);
            Net::Wan(m)
        }
    };
    if kind != Kind::Float {
        vs.set_kind(kind);
    }
    Ok(Model {
        vs,
        net,
        name: name.to_string(),
    })
}

fn wc_is_tiny(name: &str) -> bool {
    name.eq_ignore_ascii_case("wan-tiny")
}

/// Whether the toy prompt set may stand in for prompts: only for generators that are toys or
/// random weights by name (real weights never train or sample on toy prompts silently).
pub fn toy_prompts_allowed(cfg: &RunConfig) -> bool {
    let gen = cfg.generator_name.to_ascii_lowercase();
    resolve::TOY_NAMES.contains(&gen.as_str())
        || gen.starts_with(resolve::RANDOM_PREFIX)
        || cfg.allow_random_weights
}

/// (text_dim, text_len) of the toy text encoder for the generator: the toy's sizes, or the
/// generator's text_dim with Wan's 512 tokens when it differs (a random-weight real-size model).
pub fn toy_text_sizes(cfg: &RunConfig) -> (i64, i64) {
    let t = &cfg.toy;
    let text_dim = wan_config(&cfg.generator_name, cfg)
        .map(|w| w.text_dim)
        .unwrap_or(t.text_dim);
    let text_len = if text_dim == t.text_dim {
        t.text_len
    } else {
        512
    };
    (text_dim, text_len)
}

/// The config key that names a role's model.
pub fn config_key_for(role: &str) -> &'static str {
    match role {
        "generator" => "generator_name",
        "fake" | "critic" => "fake_name",
        "real" | "teacher" => "real_name",
        _ => "model",
    }
}

/// Model name for a role from the config.
pub fn name_for(role: &str, cfg: &RunConfig) -> String {
    match role {
        "generator" => cfg.generator_name.clone(),
        "fake" | "critic" => cfg.fake_name.clone(),
        "real" | "teacher" => cfg.real_name.clone(),
        other => other.to_string(),
    }
}

/// The model of an actor that reads `role`'s weights: built in the compute precision, without
/// random initialisation when its weights arrive over a weights edge before first use.
pub fn build_reader(ctx: &crate::runtime::Ctx, role: &str) -> Result<Model> {
    let cfg = &ctx.cfg;
    let name = name_for(role, cfg);
    build(
        &name,
        role,
        cfg,
        ctx.seed,
        ctx.device,
        compute_kind(cfg, ctx.device),
        !ctx.weights_in.contains_key("weights"),
    )
}
