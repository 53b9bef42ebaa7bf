//! A small MLP `Denoiser` for low-dimensional toys (e.g. a 2-D generator or critic against the
//! GMM teacher).
//!
//! Input per sample: the flattened x_t [D = F·C·H·W], a sinusoidal embedding of each frame's t
//! (F·`t_embed` values: cos and sin of t·ω_i, ω_i = 10000^(−i/half)), and the cond embedding
//! mean-pooled over its L rows [text_dim]. `depth` hidden layers of width `hidden` with SiLU, a
//! linear output of D values reshaped to x_t's shape (the flow v ≈ ε − x0).
//!
//! Parameters live on a `tch::nn::Path` (`layers.{i}.weight` [out, in], `layers.{i}.bias`), so
//! optimisers, EMA and checkpoints see them as usual. Initialisation is PyTorch's `nn.Linear`
//! default distribution (uniform ±1/√fan_in for weight and bias) drawn from keyed `crate::rng`
//! streams (seed, purpose `Init`, sub = 2·layer (+1 for the bias)) — never tch's global RNG — so
//! the same seed gives the same network everywhere.

use crate::models::Denoiser;
use crate::rng::{self, Lane, Purpose, RngKey};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// Sizes of an `Mlp`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// [F, C, H, W] of one sample.
    pub shape: [i64; 4],
    /// Last dim of the cond embedding.
    pub text_dim: i64,
    pub hidden: i64,
    /// Number of hidden layers (≥ 1).
    pub depth: usize,
    /// Sinusoidal embedding size per frame timestep (even, ≥ 2).
    pub t_embed: i64,
}

impl MlpConfig {
    /// A 2-D toy preset: shape [1, 2, 1, 1], 3 hidden layers of 128, 32-dim t embedding.
    pub fn toy2d(text_dim: i64) -> Self {
        MlpConfig {
            shape: [1, 2, 1, 1],
            text_dim,
            hidden: 128,
            depth: 3,
            t_embed: 32,
        }
    }
    pub fn dim(&self) -> i64 {
        self.shape.iter().product()
    }
    fn input_dim(&self) -> i64 {
        self.dim() + self.shape[0] * self.t_embed + self.text_dim
    }
}

/// Sinusoidal embedding of timesteps t [B, F] (values in [0, 1000]): float32 [B, F·dim], per frame
/// [cos(t·ω_0..half), sin(t·ω_0..half)] with ω_i = 10000^(−i/half), half = dim/2.
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let b = t.size()[0];
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_slice(&freqs).to_device(t.device());
    let arg = t.to_kind(Kind::Float).unsqueeze(-1) * freqs; // [B, F, half]
    Tensor::cat(&[arg.cos(), arg.sin()], -1).reshape([b, -1])
}

/// The MLP denoiser.
#[derive(Debug)]
pub struct Mlp {
    cfg: MlpConfig,
    /// (weight [out, in], bias [out]) per layer; the last one is the output layer.
    layers: Vec<(Tensor, Tensor)>,
}

impl Mlp {
    /// Create the parameters under `vs` (initialised from keyed draws of `seed`). Panics on
    /// nonsensical sizes (a preset error, not user input).
    pub fn new(vs: &nn::Path, cfg: MlpConfig, seed: u64) -> Self {
        assert!(cfg.depth >= 1, "mlp: depth must be >= 1");
        assert!(
            cfg.t_embed >= 2 && cfg.t_embed % 2 == 0,
            "mlp: t_embed must be even and >= 2"
        );
        assert!(
            cfg.hidden >= 1 && cfg.text_dim >= 0,
            "mlp: bad sizes {cfg:?}"
        );
        let mut dims = vec![cfg.input_dim()];
        dims.extend(std::iter::repeat_n(cfg.hidden, cfg.depth));
        dims.push(cfg.dim());
        let p = vs.sub("layers");
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, io)| {
                let (fan_in, fan_out) = (io[0], io[1]);
                let bound = 1.0 / (fan_in as f64).sqrt();
                let key = RngKey::new(seed, 0, Lane::Other, Purpose::Init);
                let draw = |sub: u64, shape: &[i64]| {
                    let n: i64 = shape.iter().product();
                    let u = rng::uniform_vec(&key.sub(sub), n as usize);
                    let v: Vec<f32> = u.iter().map(|x| ((2.0 * x - 1.0) * bound) as f32).collect();
                    Tensor::from_slice(&v).view(shape)
                };
                let lp = p.sub(i.to_string());
                let w = lp.var_copy("weight", &draw(2 * i as u64, &[fan_out, fan_in]));
                let b = lp.var_copy("bias", &draw(2 * i as u64 + 1, &[fan_out]));
                (w, b)
            })
            .collect();
        Mlp { cfg, layers }
    }

    pub fn config(&self) -> &MlpConfig {
        &self.cfg
    }

    /// The network on flattened inputs: x [B, D], t [B, F] (or [B]: same t for every frame),
    /// cond [B or 1, L, text_dim] → [B, D] float32.
    pub fn forward_flat(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Tensor {
        let b = x.size()[0];
        let f = self.cfg.shape[0];
        let dev = self.layers[0].0.device();
        let cs = cond.size();
        assert!(
            cs.len() == 3 && cs[2] == self.cfg.text_dim && (cs[0] == b || cs[0] == 1),
            "mlp: cond must be [B={b} or 1, L, {}], got {cs:?}",
            self.cfg.text_dim
        );
        let t = t.to_device(dev).to_kind(Kind::Float).reshape([b, -1]);
        let t = if t.size()[1] == 1 {
            t.expand([b, f], false)
        } else {
            t
        };
        assert_eq!(t.size()[1], f, "mlp: t must be [B, F={f}] or [B]");
        let pooled = cond
            .to_device(dev)
            .to_kind(Kind::Float)
            .mean_dim([1i64].as_slice(), false, Kind::Float)
            .expand([b, self.cfg.text_dim], false);
        let mut h = Tensor::cat(
            &[
                x.to_device(dev).to_kind(Kind::Float),
                timestep_embedding(&t, self.cfg.t_embed),
                pooled,
            ],
            1,
        );
        let last = self.layers.len() - 1;
        for (i, (w, bias)) in self.layers.iter().enumerate() {
            h = h.linear(w, Some(bias));
            if i < last {
                h = h.silu();
            }
        }
        h
    }
}

impl Denoiser for Mlp {
    fn flow(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Tensor {
        let size = x_t.size();
        let b = size[0];
        assert_eq!(
            x_t.numel() as i64,
            b * self.cfg.dim(),
            "mlp: x_t {size:?} does not match shape {:?}",
            self.cfg.shape
        );
        self.forward_flat(&x_t.reshape([b, -1]), t, cond)
            .reshape(size.as_slice())
            .to_device(x_t.device())
            .to_kind(x_t.kind())
    }
}
