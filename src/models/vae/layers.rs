//! Building blocks of the Wan2.1 VAE and its feature cache.
//!
//! Every 3-D convolution is causal in time: zero padding only on the past side (2·p_t frames),
//! spatial padding symmetric. Video is processed chunk by chunk; each causal conv with a temporal
//! kernel keeps the last `CACHE_T` = 2 frames of its input (fewer if fewer were seen) in a cache
//! slot and prepends them to the next chunk, which makes chunked processing equal to processing
//! the stream at once. Slots are numbered in call order, like Wan's `feat_cache` list.
//!
//! Precision: convs run in the weights' kind (bf16 on GPU); the RMS normalisation is computed in
//! f32 and rounded once, as diffusers does.

use tch::nn::{self, Init};
use tch::Tensor;

/// Frames each causal conv keeps from the previous chunk (its temporal kernel is ≤ 3).
pub const CACHE_T: i64 = 2;

/// One cache slot: what a layer remembers between chunks.
pub(crate) enum Slot {
    /// Nothing seen yet.
    Fresh,
    /// upsample3d after its first chunk, which bypassed `time_conv` (Wan's "Rep" marker): the
    /// time conv starts on the next chunk with zero history.
    Rep,
    /// The last frames of the input seen so far.
    Frames(Tensor),
}

/// The per-stream cache: one slot per cached layer, visited in the same order every chunk.
pub(crate) struct FeatCache {
    slots: Vec<Slot>,
    idx: usize,
}

impl FeatCache {
    pub fn new() -> Self {
        FeatCache {
            slots: Vec::new(),
            idx: 0,
        }
    }

    /// Call before each chunk's forward pass.
    pub fn begin_chunk(&mut self) {
        self.idx = 0;
    }

    /// The next slot in call order (created on the first chunk).
    pub fn next(&mut self) -> &mut Slot {
        if self.idx == self.slots.len() {
            self.slots.push(Slot::Fresh);
        }
        self.idx += 1;
        &mut self.slots[self.idx - 1]
    }

    /// Bytes held by cached frames (for memory checks).
    pub fn bytes(&self) -> i64 {
        self.slots
            .iter()
            .map(|s| match s {
                Slot::Frames(t) => t.numel() as i64 * t.kind().elt_size_in_bytes() as i64,
                _ => 0,
            })
            .sum()
    }
}

/// The last `n` frames (dim 2) as a fresh tensor, so a cache never pins the whole chunk.
fn last_frames(x: &Tensor, n: i64) -> Tensor {
    let t = x.size()[2];
    let n = n.min(t);
    x.narrow(2, t - n, n).copy()
}

/// A 3-D convolution, causal in time. Parameters `weight` [out, in, kt, kh, kw] and `bias`.
pub(crate) struct CausalConv3d {
    w: Tensor,
    /// `w` laid out channels-last (NDHWC strides), made on first CUDA use (after loading): cuDNN
    /// then runs the convolution, and hands on its output, channels-last (see
    /// [`super::set_channels_last`]).
    w_cl: std::cell::OnceCell<Tensor>,
    b: Tensor,
    /// Zero frames padded on the past side when there is no history (2·p_t).
    pad_t: i64,
    pad_hw: i64,
    stride_t: i64,
}

impl CausalConv3d {
    /// `k` = (kt, ks) with kernel [kt, ks, ks]; `pad_t`/`pad_hw` are Conv3d's `padding` values.
    pub fn new(
        p: &nn::Path,
        cin: i64,
        cout: i64,
        k: (i64, i64),
        pad_t: i64,
        pad_hw: i64,
        stride_t: i64,
    ) -> Self {
        // Zero-initialised: weights are loaded (or drawn by `WanVae::random`) afterwards.
        CausalConv3d {
            w: p.var("weight", &[cout, cin, k.0, k.1, k.1], Init::Const(0.0)),
            w_cl: std::cell::OnceCell::new(),
            b: p.var("bias", &[cout], Init::Const(0.0)),
            pad_t: 2 * pad_t,
            pad_hw,
            stride_t,
        }
    }

    /// The convolution of `x` with `past` frames of history (zero frames fill up to `pad_t`).
    fn conv_with(&self, x: &Tensor, past: Option<&Tensor>) -> Tensor {
        let x = x.to_kind(self.w.kind());
        let (input, n_past) = match past {
            Some(p) => (Tensor::cat(&[p, &x], 2), p.size()[2]),
            None => (x, 0),
        };
        let zeros = (self.pad_t - n_past).max(0);
        let input = if zeros > 0 {
            input.constant_pad_nd([0, 0, 0, 0, zeros, 0])
        } else {
            input
        };
        let w = if input.device().is_cuda() && super::channels_last() {
            self.w_cl.get_or_init(|| {
                self.w
                    .permute([0, 2, 3, 4, 1])
                    .contiguous()
                    .permute([0, 4, 1, 2, 3])
            })
        } else {
            &self.w
        };
        input.conv3d(
            w,
            Some(&self.b),
            [self.stride_t, 1, 1],
            [0, self.pad_hw, self.pad_hw],
            [1, 1, 1],
            1,
        )
    }

    /// Without history (zero padding on the past side): 1×1×1 convs and whole sequences.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv_with(x, None)
    }

    /// One chunk of a stream: prepends the slot's frames and stores the new last frames. A `Rep`
    /// slot counts as no history.
    pub fn forward_cached(&self, x: &Tensor, slot: &mut Slot) -> Tensor {
        let past = match std::mem::replace(slot, Slot::Fresh) {
            Slot::Frames(p) => Some(p),
            Slot::Fresh | Slot::Rep => None,
        };
        // Last CACHE_T frames of (history ++ x): x alone when it is long enough.
        let keep = match &past {
            Some(p) if x.size()[2] < CACHE_T => {
                let need = CACHE_T - x.size()[2];
                Tensor::cat(&[last_frames(p, need), x.copy()], 2)
            }
            _ => last_frames(x, CACHE_T),
        };
        let y = self.conv_with(x, past.as_ref());
        *slot = Slot::Frames(keep.to_kind(self.w.kind()));
        y
    }
}

/// A plain 2-D convolution (`weight` [out, in, k, k], `bias`).
pub(crate) struct Conv2d {
    w: Tensor,
    b: Tensor,
    stride: i64,
    pad: i64,
}

impl Conv2d {
    pub fn new(p: &nn::Path, cin: i64, cout: i64, k: i64, stride: i64, pad: i64) -> Self {
        Conv2d {
            w: p.var("weight", &[cout, cin, k, k], Init::Const(0.0)),
            b: p.var("bias", &[cout], Init::Const(0.0)),
            stride,
            pad,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.to_kind(self.w.kind()).conv2d(
            &self.w,
            Some(&self.b),
            [self.stride, self.stride],
            [self.pad, self.pad],
            [1, 1],
            1,
        )
    }
}

/// Wan's RMS_norm: F.normalize over channels (dim 1) · √C · gamma (no bias in the VAE).
/// `gamma` is [C, 1, 1, 1] for 5-D video, [C, 1, 1] for the attention's per-frame images.
pub(crate) struct RmsNorm {
    gamma: Tensor,
}

impl RmsNorm {
    pub fn new(p: &nn::Path, dim: i64, images: bool) -> Self {
        let shape: &[i64] = if images {
            &[dim, 1, 1]
        } else {
            &[dim, 1, 1, 1]
        };
        RmsNorm {
            gamma: p.var("gamma", shape, Init::Const(1.0)),
        }
    }

    /// F.normalize(x, dim=1)·√C·γ = x / rms(x)·γ, computed by ATen's fused `rms_norm` over the
    /// channels moved last (a free view of channels-last activations on CUDA; elsewhere a copy):
    /// one pass, f32 accumulation, one rounding, where the per-op form read the activations
    /// ~6 times in f32 (measured on H200: 1.98 ms per norm at 96×4×480×832 in f32, 1.00 in bf16
    /// per-op; scripts/vae_conv_microbench.py). F.normalize clamps ‖x‖ at 1e-12: here
    /// eps = 1e-24 / C inside the mean, the same for any vector that is not ~0.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let nd = x.dim() as i64;
        let c = x.size()[1];
        let mut to_last: Vec<i64> = vec![0];
        to_last.extend(2..nd);
        to_last.push(1);
        let mut to_first: Vec<i64> = vec![0, nd - 1];
        to_first.extend(1..nd - 1);
        let w = self.gamma.reshape([c]).to_kind(x.kind());
        x.permute(to_last.as_slice())
            .rms_norm([c].as_slice(), Some(&w), 1e-24 / c as f64)
            .permute(to_first.as_slice())
            .to_kind(self.gamma.kind())
    }
}

/// RMS_norm → SiLU → causal conv → RMS_norm → SiLU → (dropout) → causal conv, plus a 1×1×1
/// causal conv shortcut when the width changes. Wan names: `residual.{0,2,3,6}`, `shortcut`.
pub(crate) struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub fn new(p: &nn::Path, cin: i64, cout: i64) -> Self {
        let r = p / "residual";
        ResidualBlock {
            norm1: RmsNorm::new(&(&r / 0), cin, false),
            conv1: CausalConv3d::new(&(&r / 2), cin, cout, (3, 3), 1, 1, 1),
            norm2: RmsNorm::new(&(&r / 3), cout, false),
            conv2: CausalConv3d::new(&(&r / 6), cout, cout, (3, 3), 1, 1, 1),
            shortcut: (cin != cout)
                .then(|| CausalConv3d::new(&(p / "shortcut"), cin, cout, (1, 1), 0, 0, 1)),
        }
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Tensor {
        let h = match &self.shortcut {
            Some(s) => s.forward(x),
            None => x.shallow_clone(),
        };
        let y = self.norm1.forward(x).silu();
        let y = self.conv1.forward_cached(&y, cache.next());
        let y = self.norm2.forward(&y).silu();
        let y = self.conv2.forward_cached(&y, cache.next());
        y + h
    }
}

/// Single-head self-attention over the H·W positions of each frame (no mixing across time),
/// with 1×1 conv projections. Wan names: `norm`, `to_qkv`, `proj`.
pub(crate) struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
}

impl AttentionBlock {
    pub fn new(p: &nn::Path, dim: i64) -> Self {
        AttentionBlock {
            norm: RmsNorm::new(&(p / "norm"), dim, true),
            to_qkv: Conv2d::new(&(p / "to_qkv"), dim, 3 * dim, 1, 1, 0),
            proj: Conv2d::new(&(p / "proj"), dim, dim, 1, 1, 0),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, t, h, w) = x.size5().expect("VAE attention input is 5-D");
        let frames = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let qkv = self.to_qkv.forward(&self.norm.forward(&frames));
        // [bt, 3c, h, w] → [bt, 1, hw, 3c]; q, k, v are the channel thirds.
        let qkv = qkv.reshape([b * t, 1, 3 * c, h * w]).permute([0, 1, 3, 2]);
        let q = qkv.narrow(3, 0, c);
        let k = qkv.narrow(3, c, c);
        let v = qkv.narrow(3, 2 * c, c);
        let a = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None::<f64>,
            false,
        );
        let a = a
            .squeeze_dim(1)
            .permute([0, 2, 1])
            .reshape([b * t, c, h, w]);
        let out = self.proj.forward(&a);
        let out = out.reshape([b, t, c, h, w]).permute([0, 2, 1, 3, 4]);
        out.to_kind(x.kind()) + x
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// Spatial ×2 up/downsampling per frame, with a temporal ×2 causal conv for the 3-D modes.
/// Wan names: `resample.1` (the 2-D conv), `time_conv`.
pub(crate) struct Resample {
    mode: ResampleMode,
    conv: Conv2d,
    time_conv: Option<CausalConv3d>,
}

impl Resample {
    pub fn new(p: &nn::Path, dim: i64, mode: ResampleMode) -> Self {
        use ResampleMode::*;
        let rp = &(p / "resample") / 1;
        let conv = match mode {
            // Wan2.1 halves the width in its upsampling conv.
            Upsample2d | Upsample3d => Conv2d::new(&rp, dim, dim / 2, 3, 1, 1),
            Downsample2d | Downsample3d => Conv2d::new(&rp, dim, dim, 3, 2, 0),
        };
        let tp = p / "time_conv";
        let time_conv = match mode {
            // Emits 2·dim channels: two output frames per input frame.
            Upsample3d => Some(CausalConv3d::new(&tp, dim, 2 * dim, (3, 1), 1, 0, 1)),
            // Stride 2, no padding: the history frame comes from the cache.
            Downsample3d => Some(CausalConv3d::new(&tp, dim, dim, (3, 1), 0, 0, 2)),
            _ => None,
        };
        Resample {
            mode,
            conv,
            time_conv,
        }
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Tensor {
        use ResampleMode::*;
        let mut x = x.shallow_clone();
        if let (Upsample3d, Some(tc)) = (self.mode, &self.time_conv) {
            let slot = cache.next();
            if matches!(slot, Slot::Fresh) {
                // The first chunk is not doubled in time (1 latent frame → 1 video frame).
                *slot = Slot::Rep;
            } else {
                let (b, c, t, h, w) = x.size5().expect("5-D");
                let y = tc.forward_cached(&x, slot);
                // [b, 2c, t] → frames (t0 first half, t0 second half, t1 first half, …).
                x = y
                    .reshape([b, 2, c, t, h, w])
                    .permute([0, 2, 3, 1, 4, 5])
                    .reshape([b, c, 2 * t, h, w]);
            }
        }
        let (b, c, t, h, w) = x.size5().expect("5-D");
        let f = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let f = match self.mode {
            Upsample2d | Upsample3d => {
                // nearest-exact at an exact ×2 equals nearest: each pixel repeated 2×2.
                let up = f.upsample_nearest2d([2 * h, 2 * w], Some(2.0), Some(2.0));
                self.conv.forward(&up)
            }
            // ZeroPad2d((0, 1, 0, 1)): one column right, one row bottom.
            Downsample2d | Downsample3d => self.conv.forward(&f.constant_pad_nd([0, 1, 0, 1])),
        };
        let (c2, h2, w2) = (f.size()[1], f.size()[2], f.size()[3]);
        let y = f.reshape([b, t, c2, h2, w2]).permute([0, 2, 1, 3, 4]);
        match (self.mode, &self.time_conv) {
            (Downsample3d, Some(tc)) => {
                let slot = cache.next();
                let keep = last_frames(&y, 1);
                match std::mem::replace(slot, Slot::Frames(keep)) {
                    // The first chunk passes unchanged (1 frame stays 1 frame).
                    Slot::Fresh | Slot::Rep => y,
                    // Stride-2 windows over (previous last frame ++ chunk).
                    Slot::Frames(prev) => tc.forward(&Tensor::cat(&[&prev, &y], 2)),
                }
            }
            _ => y,
        }
    }
}
