//! Encoder3d and Decoder3d of the Wan2.1 VAE, under Wan's original parameter names:
//! `{encoder,decoder}.conv1`, `encoder.downsamples.N`, `decoder.upsamples.N`, `*.middle.{0,1,2}`,
//! `*.head.{0,2}`, and the latent 1×1×1 convs `conv1` (after the encoder) / `conv2` (before the
//! decoder). Each forward processes ONE chunk and advances the feature cache.

use super::config::VaeConfig;
use super::layers::{
    AttentionBlock, CausalConv3d, FeatCache, Resample, ResampleMode, ResidualBlock, RmsNorm,
};
use tch::nn;
use tch::Tensor;

/// One entry of Wan's flat `downsamples` / `upsamples` lists.
pub(crate) enum Stage {
    Res(ResidualBlock),
    Resample(Resample),
}

impl Stage {
    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Tensor {
        match self {
            Stage::Res(r) => r.forward(x, cache),
            Stage::Resample(r) => r.forward(x, cache),
        }
    }
}

/// `middle`: residual block, per-frame attention, residual block.
pub(crate) struct Middle {
    res0: ResidualBlock,
    attn: AttentionBlock,
    res1: ResidualBlock,
}

impl Middle {
    fn new(p: &nn::Path, dim: i64) -> Self {
        Middle {
            res0: ResidualBlock::new(&(p / 0), dim, dim),
            attn: AttentionBlock::new(&(p / 1), dim),
            res1: ResidualBlock::new(&(p / 2), dim, dim),
        }
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Tensor {
        let x = self.res0.forward(x, cache);
        let x = self.attn.forward(&x);
        self.res1.forward(&x, cache)
    }
}

/// `head`: RMS_norm (`head.0`), SiLU, causal 3×3×3 conv (`head.2`).
pub(crate) struct Head {
    norm: RmsNorm,
    conv: CausalConv3d,
}

impl Head {
    fn new(p: &nn::Path, cin: i64, cout: i64) -> Self {
        Head {
            norm: RmsNorm::new(&(p / 0), cin, false),
            conv: CausalConv3d::new(&(p / 2), cin, cout, (3, 3), 1, 1, 1),
        }
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Tensor {
        let y = self.norm.forward(x).silu();
        self.conv.forward_cached(&y, cache.next())
    }
}

/// Video [B, 3, t, H, W] chunk → [B, 2·z_dim, t', H/8, W/8] (before `conv1`).
pub(crate) struct Encoder3d {
    conv1: CausalConv3d,
    downsamples: Vec<Stage>,
    middle: Middle,
    head: Head,
}

impl Encoder3d {
    pub fn new(p: &nn::Path, cfg: &VaeConfig) -> Self {
        let dims = cfg.encoder_dims();
        let ds = p / "downsamples";
        let mut downsamples = Vec::new();
        let last = cfg.dim_mult.len() - 1;
        for i in 0..=last {
            let mut cin = dims[i];
            let cout = dims[i + 1];
            for _ in 0..cfg.num_res_blocks {
                let n = downsamples.len();
                downsamples.push(Stage::Res(ResidualBlock::new(&(&ds / n), cin, cout)));
                cin = cout;
            }
            if i != last {
                let mode = if cfg.temperal_downsample[i] {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                let n = downsamples.len();
                downsamples.push(Stage::Resample(Resample::new(&(&ds / n), cout, mode)));
            }
        }
        let top = dims[last + 1];
        Encoder3d {
            conv1: CausalConv3d::new(&(p / "conv1"), 3, dims[0], (3, 3), 1, 1, 1),
            downsamples,
            middle: Middle::new(&(p / "middle"), top),
            head: Head::new(&(p / "head"), top, 2 * cfg.z_dim),
        }
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Tensor {
        cache.begin_chunk();
        let mut x = self.conv1.forward_cached(x, cache.next());
        for s in &self.downsamples {
            x = s.forward(&x, cache);
        }
        let x = self.middle.forward(&x, cache);
        self.head.forward(&x, cache)
    }
}

/// Latent chunk [B, z_dim, k, h, w] (after `conv2`) → video chunk [B, 3, t, 8h, 8w].
pub(crate) struct Decoder3d {
    conv1: CausalConv3d,
    middle: Middle,
    upsamples: Vec<Stage>,
    head: Head,
}

impl Decoder3d {
    pub fn new(p: &nn::Path, cfg: &VaeConfig) -> Self {
        let dims = cfg.decoder_dims();
        let temperal_upsample: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let us = p / "upsamples";
        let mut upsamples = Vec::new();
        let last = cfg.dim_mult.len() - 1;
        for i in 0..=last {
            // Wan2.1: every stage after the first receives the previous upsampler's halved width.
            let mut cin = if i > 0 { dims[i] / 2 } else { dims[i] };
            let cout = dims[i + 1];
            for _ in 0..=cfg.num_res_blocks {
                let n = upsamples.len();
                upsamples.push(Stage::Res(ResidualBlock::new(&(&us / n), cin, cout)));
                cin = cout;
            }
            if i != last {
                let mode = if temperal_upsample[i] {
                    ResampleMode::Upsample3d
                } else {
                    ResampleMode::Upsample2d
                };
                let n = upsamples.len();
                upsamples.push(Stage::Resample(Resample::new(&(&us / n), cout, mode)));
            }
        }
        Decoder3d {
            conv1: CausalConv3d::new(&(p / "conv1"), cfg.z_dim, dims[0], (3, 3), 1, 1, 1),
            middle: Middle::new(&(p / "middle"), dims[0]),
            upsamples,
            head: Head::new(&(p / "head"), dims[last + 1], 3),
        }
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Tensor {
        cache.begin_chunk();
        let x = self.conv1.forward_cached(x, cache.next());
        let mut x = self.middle.forward(&x, cache);
        for s in &self.upsamples {
            x = s.forward(&x, cache);
        }
        self.head.forward(&x, cache)
    }
}

/// The whole network: encoder, `conv1` (2·z → 2·z), `conv2` (z → z), decoder.
pub struct VaeNet {
    pub(crate) encoder: Encoder3d,
    pub(crate) conv1: CausalConv3d,
    pub(crate) conv2: CausalConv3d,
    pub(crate) decoder: Decoder3d,
}

impl VaeNet {
    /// Creates the parameters under `p` (Wan's names): conv weights and biases zero, RMS gammas one.
    pub fn new(p: &nn::Path, cfg: &VaeConfig) -> Self {
        let z = cfg.z_dim;
        VaeNet {
            encoder: Encoder3d::new(&(p / "encoder"), cfg),
            conv1: CausalConv3d::new(&(p / "conv1"), 2 * z, 2 * z, (1, 1), 0, 0, 1),
            conv2: CausalConv3d::new(&(p / "conv2"), z, z, (1, 1), 0, 0, 1),
            decoder: Decoder3d::new(&(p / "decoder"), cfg),
        }
    }
}
