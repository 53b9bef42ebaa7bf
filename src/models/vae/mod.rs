//! The Wan2.1 video VAE (z_dim 16; stride 4 in time, 8 in space): causal 3-D conv encoder and
//! decoder with Wan's chunk-by-chunk feature cache, latent normalisation and weight loading from
//! Wan's release names or a diffusers `AutoencoderKLWan` folder. Frozen: no gradients anywhere.
//! See docs/VAE.md for the layout, key names, cache semantics and memory.
//!
//! Layout is channel-first like Wan: video [B, 3, T, H, W] in [-1, 1], latents [B, 16, F, h, w].

pub mod config;
mod layers;
mod load;
pub mod names;
mod net;

pub use config::{VaeConfig, WAN21_LATENTS_MEAN, WAN21_LATENTS_STD};
pub use layers::CACHE_T;
pub use net::VaeNet;

/// Whether CUDA convolutions run channels-last (weights in NDHWC strides; cuDNN's faster 3-D
/// kernels for bf16). On by default; `sample --benchmark` measures both. Same values either way
/// up to the kernels' summation order.
static CHANNELS_LAST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub fn set_channels_last(on: bool) {
    CHANNELS_LAST.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn channels_last() -> bool {
    CHANNELS_LAST.load(std::sync::atomic::Ordering::Relaxed)
}

use crate::rng::{self, Lane, Purpose, RngKey};
use anyhow::{bail, Result};
use layers::FeatCache;
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

/// A loaded (or random) Wan VAE. Its parameters live in `vs` under Wan's original names.
pub struct WanVae {
    pub vs: VarStore,
    pub cfg: VaeConfig,
    net: VaeNet,
    /// [1, z, 1, 1, 1] float32 on the VAE's device.
    mean: Tensor,
    /// 1 / std, as Wan's `scale[1]` and diffusers' pipelines compute it.
    inv_std: Tensor,
    kind: Kind,
}

impl WanVae {
    /// Builds the model for `cfg` on `device` in `kind` (parameters zero, RMS gammas one) and
    /// freezes it. Fill it with `load`-style copies or use `random`.
    pub fn new(cfg: VaeConfig, device: Device, kind: Kind) -> Result<Self> {
        cfg.validate("VAE config")?;
        let mut vs = VarStore::new(device);
        let net = VaeNet::new(&vs.root(), &cfg);
        vs.set_kind(kind);
        vs.freeze();
        let z = cfg.z_dim;
        let col = |v: &[f64]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .view([1, z, 1, 1, 1])
                .to_device(device)
        };
        let mean = col(&cfg.latents_mean);
        let inv_std = col(&cfg.latents_std).reciprocal();
        Ok(WanVae {
            vs,
            cfg,
            net,
            mean,
            inv_std,
            kind,
        })
    }

    /// Random weights (keyed draws from `seed`, independent of construction order): conv weights
    /// N(0, 1/fan_in), biases N(0, 0.01²), RMS gammas 1 + N(0, 0.1²). For tests and benchmarks.
    pub fn random(cfg: VaeConfig, device: Device, kind: Kind, seed: u64) -> Result<Self> {
        let vae = Self::new(cfg, device, kind)?;
        let key = RngKey::new(seed, 0, Lane::Other, Purpose::Init);
        let _g = tch::no_grad_guard();
        let mut vars: Vec<_> = vae.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (name, mut v)) in vars.into_iter().enumerate() {
            let shape = v.size();
            let n = rng::randn(&key.sub(i as u64), &shape, Kind::Float, Device::Cpu);
            let val = if name.ends_with("gamma") {
                n * 0.1 + 1.0
            } else if shape.len() == 1 {
                n * 0.01
            } else {
                let fan_in: i64 = shape[1..].iter().product();
                n / (fan_in as f64).sqrt()
            };
            v.copy_(&val.to_kind(v.kind()).to_device(v.device()));
        }
        Ok(vae)
    }

    /// The compute kind of the parameters.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Video [B, 3, T, H, W] in [-1, 1] with T = 1 + 4k and H, W multiples of 8 → normalised
    /// latents (mu − mean) / std, [B, z, 1 + k, H/8, W/8], float32. The encoder runs on chunks
    /// of 1, 4, 4, … frames (Wan's schedule), so its working memory is bounded by one chunk.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let s = video.size();
        let (ts, ss) = (self.cfg.time_stride(), self.cfg.space_stride());
        if s.len() != 5 || s[1] != 3 {
            bail!("VAE encode expects video [B, 3, T, H, W], got {s:?}");
        }
        if s[0] < 1 || s[2] < 1 || (s[2] - 1) % ts != 0 {
            bail!(
                "VAE encode needs T = 1 + {ts}·k frames (k ≥ 0), got T = {}",
                s[2]
            );
        }
        if s[3] < ss || s[4] < ss || s[3] % ss != 0 || s[4] % ss != 0 {
            bail!(
                "VAE encode needs H and W to be positive multiples of {ss}, got {}x{}",
                s[3],
                s[4]
            );
        }
        let _g = tch::no_grad_guard();
        let x = video.to_device(self.device()).to_kind(self.kind);
        let mut cache = FeatCache::new();
        let mut outs = Vec::new();
        let mut start = 0;
        while start < s[2] {
            let len = if start == 0 { 1 } else { ts };
            outs.push(
                self.net
                    .encoder
                    .forward(&x.narrow(2, start, len), &mut cache),
            );
            start += len;
        }
        let h = self.net.conv1.forward(&Tensor::cat(&outs, 2));
        let mu = h.narrow(1, 0, self.cfg.z_dim).to_kind(Kind::Float);
        Ok((mu - &self.mean) * &self.inv_std)
    }

    /// Normalised latents [B, z, F, h, w] → video [B, 3, 1 + 4(F − 1), 8h, 8w] in [-1, 1],
    /// float32. Decodes one latent frame at a time through the feature cache (Wan's schedule).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let mut stream = self.decoder_stream();
        stream.push(z)
    }

    /// A streaming decoder: push latent frames in any chunking, get their video frames back.
    pub fn decoder_stream(&self) -> DecodeStream<'_> {
        DecodeStream {
            vae: self,
            cache: FeatCache::new(),
            latent_frames: 0,
            shape: None,
        }
    }
}

/// Streaming decode state: the feature cache (the last ≤ 2 frames seen by each causal conv, so
/// memory does not grow with the video length) and the number of latent frames pushed.
pub struct DecodeStream<'a> {
    vae: &'a WanVae,
    cache: FeatCache,
    latent_frames: i64,
    /// (B, h, w) of the first push; later pushes must match.
    shape: Option<(i64, i64, i64)>,
}

impl DecodeStream<'_> {
    /// Decodes the next `k ≥ 1` latent frames [B, z, k, h, w] (normalised) into their video
    /// frames [B, 3, t, 8h, 8w] in [-1, 1], float32: the stream's first latent frame gives 1
    /// frame, every later one 4. Any chunking gives the same frames as one `decode` call.
    pub fn push(&mut self, z: &Tensor) -> Result<Tensor> {
        let vae = self.vae;
        let s = z.size();
        if s.len() != 5 || s[1] != vae.cfg.z_dim || s[2] < 1 {
            bail!(
                "VAE decode expects latents [B, {}, F ≥ 1, h, w], got {s:?}",
                vae.cfg.z_dim
            );
        }
        let bhw = (s[0], s[3], s[4]);
        match self.shape {
            None => self.shape = Some(bhw),
            Some(prev) if prev != bhw => bail!(
                "VAE decoder stream: chunk has (B, h, w) = {bhw:?} but the stream started with \
                 {prev:?}"
            ),
            Some(_) => {}
        }
        let _g = tch::no_grad_guard();
        let z = z.to_device(vae.device()).to_kind(Kind::Float);
        // Wan: z / scale[1] + scale[0] with scale = [mean, 1/std] (diffusers' pipelines alike).
        let raw = (z / &vae.inv_std + &vae.mean).to_kind(vae.kind);
        let mut outs = Vec::with_capacity(s[2] as usize);
        for i in 0..s[2] {
            // conv2 (1×1×1) per latent frame too, so every chunking computes bitwise the same.
            let x = vae.net.conv2.forward(&raw.narrow(2, i, 1));
            let y = vae.net.decoder.forward(&x, &mut self.cache);
            outs.push(y.clamp(-1.0, 1.0).to_kind(Kind::Float));
        }
        self.latent_frames += s[2];
        Ok(Tensor::cat(&outs, 2))
    }

    /// Latent frames pushed so far.
    pub fn latent_frames(&self) -> i64 {
        self.latent_frames
    }

    /// Video frames produced so far: 1 + 4(F − 1) (0 before the first push).
    pub fn video_frames(&self) -> i64 {
        if self.latent_frames == 0 {
            0
        } else {
            1 + self.vae.cfg.time_stride() * (self.latent_frames - 1)
        }
    }

    /// Bytes held by the feature cache (bounded by the chunk shape, not the video length).
    pub fn cache_bytes(&self) -> i64 {
        self.cache.bytes()
    }
}

/// Builds the network's parameters under `p` (Wan's names) without a `WanVae` wrapper, for
/// callers that own the `VarStore` (e.g. to inspect names and shapes).
pub fn build_net(p: &nn::Path, cfg: &VaeConfig) -> Result<VaeNet> {
    cfg.validate("VAE config")?;
    Ok(VaeNet::new(p, cfg))
}
