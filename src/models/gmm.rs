//! The exact denoiser of an isotropic-per-component Gaussian mixture over D = F·C·H·W dims: the
//! embedded default teacher (known ground truth, no downloads).
//!
//! Components k have mean μ_k ∈ R^D, std s_k (covariance s_k²·I), weight π_k and class c_k.
//!
//! **Class conditioning.** The cond embedding [B, L, text_dim] carries a class indicator in row 0,
//! entries `0..num_classes` (see `models::toy_text`). With indicator w (negative entries read as 0)
//! the prior becomes π_k ∝ π_k·w_{c_k}; an all-zero indicator means the whole mixture
//! (unconditional). CFG, guidance scale and the negative prompt therefore have an exact meaning.
//!
//! **Posterior mean.** With x_t = (1−σ)·x0 + σ·ε (per frame σ, because t is [B, F]):
//! x_t | k ~ N((1−σ)μ_k, ((1−σ)²s_k² + σ²)·I), responsibilities by a float64 softmax (log-sum-exp)
//! over log π_k + log N(x_t | k), and
//! E[x0 | x_t, k] = μ_k + (1−σ)s_k² / ((1−σ)²s_k² + σ²) · (x_t − (1−σ)μ_k).
//! E[x0 | x_t] = Σ_k r_k·E[x0 | x_t, k]. All of it in float64, cast back to x_t's kind.
//!
//! **Flow.** `Denoiser::flow` returns v = (x_t − x0)/σ(t), σ from the mixture's own `SigmaTable`
//! (shift given at construction, `DEFAULT_SHIFT` = 8 = the score-wrapper table of spec §3), so a
//! score wrapper converting back with the same table (x0 = x_t − σ·v) recovers x0 exactly.

use crate::diffusion::SigmaTable;
use crate::models::toy_text::ToyTextEncoder;
use crate::models::Denoiser;
use crate::rng::{self, Lane, Purpose, RngKey};
use anyhow::{ensure, Result};
use std::f64::consts::{PI, TAU};
use tch::{Device, Kind, Tensor};

mod teacher;

/// Shift of the σ table used by `flow` unless `with_shift` says otherwise: the shift-8 table of the
/// reference's score wrappers (spec §3).
pub const DEFAULT_SHIFT: f64 = 8.0;

/// An isotropic-per-component Gaussian mixture in video-latent shape, with its exact denoiser.
#[derive(Debug)]
pub struct Gmm {
    shape: [i64; 4],
    /// [K, D] float64 on the CPU.
    means: Tensor,
    stds: Vec<f64>,
    /// Normalised.
    weights: Vec<f64>,
    classes: Vec<usize>,
    num_classes: usize,
    table: SigmaTable,
}

impl Clone for Gmm {
    fn clone(&self) -> Self {
        Gmm {
            shape: self.shape,
            means: self.means.copy(),
            stds: self.stds.clone(),
            weights: self.weights.clone(),
            classes: self.classes.clone(),
            num_classes: self.num_classes,
            table: self.table.clone(),
        }
    }
}

/// A child stream of `key` for one internal purpose (`tag`), so that e.g. the component draw
/// and the Gaussian noise of `sample` never share ChaCha output. Mixes `tag` into `sub`.
fn child(key: &RngKey, tag: u64) -> RngKey {
    key.sub(key.sub.rotate_left(17) ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl Gmm {
    /// A mixture from explicit parameters. `means` is [K, D] or [K, F, C, H, W] with
    /// D = F·C·H·W of `shape` = [F, C, H, W]; `weights` need not be normalised; `classes[k]` must be
    /// `< num_classes` and every class must own at least one component (`num_classes` may be 0:
    /// unconditional only).
    pub fn new(
        shape: [i64; 4],
        means: &Tensor,
        stds: Vec<f64>,
        weights: Vec<f64>,
        classes: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self> {
        ensure!(
            shape.iter().all(|&s| s >= 1),
            "gmm: shape {shape:?} must be positive"
        );
        let d: i64 = shape.iter().product();
        let k = stds.len();
        ensure!(k >= 1, "gmm: at least one component is needed");
        ensure!(
            weights.len() == k && classes.len() == k,
            "gmm: stds ({k}), weights ({}) and classes ({}) must have one entry per component",
            weights.len(),
            classes.len()
        );
        ensure!(
            means.numel() as i64 == k as i64 * d && means.size()[0] == k as i64,
            "gmm: means must be [K={k}, D={d}] (or [K, F, C, H, W]), got {:?}",
            means.size()
        );
        ensure!(
            stds.iter().all(|s| s.is_finite() && *s > 0.0),
            "gmm: stds must be finite and > 0: {stds:?}"
        );
        ensure!(
            weights.iter().all(|w| w.is_finite() && *w > 0.0),
            "gmm: weights must be finite and > 0: {weights:?}"
        );
        ensure!(
            classes.iter().all(|&c| c < num_classes) || num_classes == 0,
            "gmm: component classes {classes:?} must be < num_classes = {num_classes}"
        );
        for c in 0..num_classes {
            ensure!(classes.contains(&c), "gmm: class {c} owns no component");
        }
        let classes = if num_classes == 0 {
            vec![0; k]
        } else {
            classes
        };
        let total: f64 = weights.iter().sum();
        let means = means
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .reshape([k as i64, d]);
        ensure!(
            bool::try_from(means.isfinite().all()).unwrap_or(false),
            "gmm: means must be finite"
        );
        Ok(Gmm {
            shape,
            means,
            stds,
            weights: weights.iter().map(|w| w / total).collect(),
            classes,
            num_classes,
            table: SigmaTable::new(DEFAULT_SHIFT),
        })
    }

    /// The same mixture whose `flow` uses the σ table of `shift`.
    pub fn with_shift(mut self, shift: f64) -> Self {
        self.table = SigmaTable::new(shift);
        self
    }

    /// The same mixture with new (unnormalised, > 0) component weights.
    pub fn with_weights(self, weights: Vec<f64>) -> Result<Self> {
        let g = Gmm::new(
            self.shape,
            &self.means,
            self.stds.clone(),
            weights,
            self.classes.clone(),
            self.num_classes,
        )?;
        Ok(Gmm {
            table: self.table,
            ..g
        })
    }

    /// `num_modes` modes on a circle of `radius` in 2-D, embedded in shape [F, C, H, W] =
    /// [1, 2, 1, 1]; mode k at angle 2πk/K, equal weights, std `mode_std`. Classes are contiguous
    /// arcs: c_k = ⌊k·num_classes/K⌋ (so each class has a distinct mean unless num_classes = 1).
    pub fn ring(num_modes: usize, radius: f64, mode_std: f64, num_classes: usize) -> Result<Self> {
        Self::ring_weighted(
            num_modes,
            radius,
            mode_std,
            num_classes,
            vec![1.0; num_modes],
        )
    }

    /// `ring` with weights spanning a factor `ratio` geometrically: π_k ∝ ratio^(k/(K−1)), so the
    /// heaviest mode has `ratio` (e.g. 10) times the mass of the lightest.
    pub fn imbalanced(
        num_modes: usize,
        radius: f64,
        mode_std: f64,
        num_classes: usize,
        ratio: f64,
    ) -> Result<Self> {
        ensure!(ratio > 0.0, "gmm: imbalance ratio must be > 0, got {ratio}");
        let denom = (num_modes.max(2) - 1) as f64;
        let w = (0..num_modes)
            .map(|k| ratio.powf(k as f64 / denom))
            .collect();
        Self::ring_weighted(num_modes, radius, mode_std, num_classes, w)
    }

    fn ring_weighted(
        num_modes: usize,
        radius: f64,
        mode_std: f64,
        num_classes: usize,
        weights: Vec<f64>,
    ) -> Result<Self> {
        ensure!(num_modes >= 1, "gmm ring: num_modes must be >= 1");
        ensure!(
            num_classes <= num_modes,
            "gmm ring: num_classes ({num_classes}) must be <= num_modes ({num_modes})"
        );
        let mut m = Vec::with_capacity(2 * num_modes);
        for k in 0..num_modes {
            let a = TAU * k as f64 / num_modes as f64;
            m.extend([radius * a.cos(), radius * a.sin()]);
        }
        let classes = (0..num_modes)
            .map(|k| k * num_classes.max(1) / num_modes)
            .collect();
        Gmm::new(
            [1, 2, 1, 1],
            &Tensor::from_slice(&m).view([num_modes as i64, 2]),
            vec![mode_std; num_modes],
            weights,
            classes,
            num_classes,
        )
    }

    /// A video-shaped mixture with temporal structure. Mode k, channel ch is a travelling plane
    /// wave: μ_k[f, ch, y, x] = scale·a_{k,ch}·cos(2π(κx·x/W + κy·y/H) + φ_{k,ch} + ω_k·f), with
    /// integer spatial frequencies |κx| ≤ min(2, ⌊(W−1)/2⌋), |κy| ≤ min(2, ⌊(H−1)/2⌋) (below
    /// Nyquist, so every frame has the same energy), κ ≠ 0 unless H, W ≤ 2 (then the pattern
    /// is a pure temporal oscillation), per mode and channel; amplitude
    /// a ∈ [0.5, 1], phase φ ∈ [0, 2π) and a per-mode phase velocity |ω_k| ∈ [0.3, 1.0] rad/frame of
    /// random sign. Frame f+1 of a mode is frame f moved along its wave, so a causal generator
    /// must keep later frames consistent with the mode its first frames chose. Equal weights,
    /// std `mode_std`, contiguous classes c_k = ⌊k·num_classes/K⌋. All numbers come from keyed
    /// draws of `seed` (purpose `Init`, sub = k), identical on every machine.
    #[allow(clippy::too_many_arguments)]
    pub fn procedural(
        frames: i64,
        c: i64,
        h: i64,
        w: i64,
        num_modes: usize,
        num_classes: usize,
        mode_std: f64,
        scale: f64,
        seed: u64,
    ) -> Result<Self> {
        ensure!(num_modes >= 1, "gmm procedural: num_modes must be >= 1");
        ensure!(
            num_classes <= num_modes,
            "gmm procedural: num_classes ({num_classes}) must be <= num_modes ({num_modes})"
        );
        ensure!(
            frames >= 1 && c >= 1 && h >= 1 && w >= 1,
            "gmm procedural: shape [{frames}, {c}, {h}, {w}] must be positive"
        );
        let d = (frames * c * h * w) as usize;
        let mut means = Vec::with_capacity(num_modes * d);
        let (kmax_x, kmax_y) = (((w - 1) / 2).min(2), ((h - 1) / 2).min(2));
        for k in 0..num_modes {
            let key = RngKey::new(seed, 0, Lane::Other, Purpose::Init).sub(k as u64);
            let u = rng::uniform_vec(&key, 2 + 5 * c as usize);
            let omega = (0.3 + 0.7 * u[0]) * if u[1] < 0.5 { -1.0 } else { 1.0 };
            let mut chans = Vec::with_capacity(c as usize);
            for ch in 0..c as usize {
                let v = &u[2 + 5 * ch..7 + 5 * ch];
                // A non-zero frequency pair below Nyquist on each axis (0 on axes of size 1),
                // so that every frame of the travelling wave has the same energy.
                let (nx, ny) = (2 * kmax_x + 1, 2 * kmax_y + 1);
                let (kx, ky) = if nx * ny > 1 {
                    let mut idx = ((v[0] * (nx * ny - 1) as f64) as i64).min(nx * ny - 2);
                    if idx >= (nx * ny - 1) / 2 {
                        idx += 1; // skip the centre (0, 0)
                    }
                    ((idx % nx - kmax_x) as f64, (idx / nx - kmax_y) as f64)
                } else {
                    (0.0, 0.0)
                };
                let amp = 0.5 + 0.5 * v[1];
                let phase = TAU * v[2];
                chans.push((kx, ky, amp, phase));
            }
            for f in 0..frames {
                for &(kx, ky, amp, phase) in &chans {
                    for y in 0..h {
                        for x in 0..w {
                            let arg = TAU * (kx * x as f64 / w as f64 + ky * y as f64 / h as f64)
                                + phase
                                + omega * f as f64;
                            means.push(scale * amp * arg.cos());
                        }
                    }
                }
            }
        }
        let classes = (0..num_modes)
            .map(|k| k * num_classes.max(1) / num_modes)
            .collect();
        Gmm::new(
            [frames, c, h, w],
            &Tensor::from_slice(&means).view([num_modes as i64, d as i64]),
            vec![mode_std; num_modes],
            vec![1.0; num_modes],
            classes,
            num_classes,
        )
    }

    // ---- accessors ----

    /// [F, C, H, W] of one sample.
    pub fn shape(&self) -> [i64; 4] {
        self.shape
    }
    /// D = F·C·H·W.
    pub fn dim(&self) -> i64 {
        self.shape.iter().product()
    }
    pub fn num_components(&self) -> usize {
        self.stds.len()
    }
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    /// [K, D] float64 on the CPU.
    pub fn means(&self) -> &Tensor {
        &self.means
    }
    pub fn stds(&self) -> &[f64] {
        &self.stds
    }
    /// Normalised unconditional weights π_k.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    pub fn classes(&self) -> &[usize] {
        &self.classes
    }
    pub fn sigma_table(&self) -> &SigmaTable {
        &self.table
    }

    /// Normalised component weights given a class (None: the whole mixture).
    pub fn component_weights(&self, class: Option<usize>) -> Vec<f64> {
        let w: Vec<f64> = (0..self.num_components())
            .map(|k| match class {
                Some(c) if self.classes[k] != c => 0.0,
                _ => self.weights[k],
            })
            .collect();
        let s: f64 = w.iter().sum();
        if s > 0.0 {
            w.iter().map(|x| x / s).collect()
        } else {
            w
        }
    }

    /// Exact mean of the (class-conditional) mixture, float64 [D].
    pub fn mean(&self, class: Option<usize>) -> Tensor {
        let w = Tensor::from_slice(&self.component_weights(class));
        w.unsqueeze(0).matmul(&self.means).squeeze_dim(0)
    }

    /// A minimal cond embedding for this mixture: float32 [B, 1, num_classes] with one row per
    /// entry (None: unconditional, all zeros). `ToyTextEncoder` gives the full-size equivalent.
    pub fn class_cond(&self, classes: &[Option<usize>]) -> Tensor {
        let k = self.num_classes.max(1);
        let mut v = vec![0f32; classes.len() * k];
        for (i, c) in classes.iter().enumerate() {
            if let Some(c) = c {
                assert!(*c < self.num_classes, "gmm: class {c} out of range");
                v[i * k + c] = 1.0;
            }
        }
        Tensor::from_slice(&v).view([classes.len() as i64, 1, k as i64])
    }

    /// Log prior log π_k(w) per batch row from the cond embedding: float64 [B, K] on the CPU.
    /// `cond` may have batch 1 (broadcast) or `b`.
    fn log_prior(&self, cond: &Tensor, b: i64) -> Result<Tensor> {
        let kk = self.num_components();
        let log_pi: Vec<f64> = self.weights.iter().map(|w| w.ln()).collect();
        let cb = cond.size().first().copied().unwrap_or(0);
        ensure!(
            cb == b || cb == 1,
            "gmm: cond batch {cb} does not match x_t batch {b}"
        );
        let mut out = Vec::with_capacity(b as usize * kk);
        if self.num_classes == 0 {
            (0..b).for_each(|_| out.extend(&log_pi));
        } else {
            let ind = ToyTextEncoder::indicator(cond, self.num_classes)?;
            let ind = Vec::<f64>::try_from(ind.flatten(0, -1))?;
            let nc = self.num_classes;
            for i in 0..b as usize {
                let row = if cb == 1 { 0 } else { i };
                let w: Vec<f64> = ind[row * nc..(row + 1) * nc]
                    .iter()
                    .map(|v| v.max(0.0))
                    .collect();
                if w.iter().sum::<f64>() <= 0.0 {
                    out.extend(&log_pi);
                } else {
                    out.extend((0..kk).map(|k| log_pi[k] + w[self.classes[k]].ln()));
                }
            }
        }
        Ok(Tensor::from_slice(&out).view([b, kk as i64]))
    }

    /// E[x0 | x_t] at explicit noise levels: `sigma` is [B, F] (per frame) or [B] (all frames),
    /// any float kind, values in (0, 1]. Returns float64 with x_t's shape, on x_t's device.
    pub fn x0_at_sigma_f64(&self, x_t: &Tensor, sigma: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let size = x_t.size();
        let [f, c, h, w] = self.shape;
        ensure!(
            size.len() == 5 && size[1..] == [f, c, h, w],
            "gmm: x_t must be [B, {f}, {c}, {h}, {w}], got {size:?}"
        );
        let b = size[0];
        ensure!(
            sigma.numel() as i64 == b || sigma.numel() as i64 == b * f,
            "gmm: t/sigma must be [B={b}, F={f}] or [B], got {:?}",
            sigma.size()
        );
        let dev = x_t.device();
        let chw = c * h * w;
        let x = x_t.to_kind(Kind::Double).reshape([b, f, chw]);
        let s = sigma
            .to_kind(Kind::Double)
            .to_device(dev)
            .reshape([b, -1, 1]);
        let a = 1.0 - &s;
        let logits = self.log_prior(cond, b)?.to_device(dev);
        let means = self.means.to_device(dev);
        let mu = |k: usize| means.get(k as i64).reshape([1, f, chw]);
        let var = |k: usize| &a * &a * self.stds[k].powi(2) + &s * &s; // [B, F|1, 1]
                                                                       // Log-likelihoods of x_t under each component (float64; softmax = log-sum-exp).
        let frames_per_sigma = if s.size()[1] == 1 { f } else { 1 };
        let mut lls = Vec::with_capacity(self.num_components());
        for k in 0..self.num_components() {
            let v = var(k);
            let diff = &x - &a * mu(k);
            let quad =
                (diff.square() / &v).sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Double);
            let logdet =
                (v * (2.0 * PI))
                    .log()
                    .sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Double)
                    * (chw * frames_per_sigma) as f64;
            lls.push((quad + logdet) * -0.5);
        }
        let resp = (logits + Tensor::stack(&lls, 1)).softmax(1, Kind::Double); // [B, K]
        let mut x0 = Tensor::zeros([b, f, chw], (Kind::Double, dev));
        for k in 0..self.num_components() {
            let s2 = self.stds[k].powi(2);
            let gain = &a * s2 / var(k);
            let m = mu(k) + gain * (&x - &a * mu(k));
            x0 += resp.select(1, k as i64).reshape([b, 1, 1]) * m;
        }
        Ok(x0.reshape(size.as_slice()))
    }

    /// E[x0 | x_t] with σ = σ(t) from this mixture's table; cast to x_t's kind.
    pub fn x0(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Tensor {
        let sigma = self.table.sigma_tensor(t);
        self.x0_at_sigma_f64(x_t, &sigma, cond)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .to_kind(x_t.kind())
    }

    /// Exact samples: float32 [n, F, C, H, W] on the CPU, plus the component of each sample.
    /// Component choice and Gaussian noise use distinct child streams of `key`.
    pub fn sample_labeled(
        &self,
        key: &RngKey,
        n: usize,
        class: Option<usize>,
    ) -> (Tensor, Vec<usize>) {
        let w = self.component_weights(class);
        let u = rng::uniform_vec(&child(key, 1), n);
        let comps: Vec<usize> = u
            .iter()
            .map(|&u| {
                let mut acc = 0.0;
                for (k, wk) in w.iter().enumerate() {
                    acc += wk;
                    if u < acc {
                        return k;
                    }
                }
                // Rounding left u ≥ Σw: take the last component with positive weight.
                w.iter().rposition(|&x| x > 0.0).unwrap_or(0)
            })
            .collect();
        let d = self.dim();
        let eps = rng::randn(&child(key, 2), &[n as i64, d], Kind::Double, Device::Cpu);
        let idx = Tensor::from_slice(&comps.iter().map(|&k| k as i64).collect::<Vec<_>>());
        let std = Tensor::from_slice(&comps.iter().map(|&k| self.stds[k]).collect::<Vec<_>>());
        let x = self.means.index_select(0, &idx) + std.unsqueeze(1) * eps;
        let [f, c, h, ww] = self.shape;
        (
            x.to_kind(Kind::Float).reshape([n as i64, f, c, h, ww]),
            comps,
        )
    }

    /// Exact samples: float32 [n, F, C, H, W] on the CPU.
    pub fn sample(&self, key: &RngKey, n: usize, class: Option<usize>) -> Tensor {
        self.sample_labeled(key, n, class).0
    }

    /// Squared distances ‖x_i − μ_k‖²: float64 [N, K] on the CPU; x is [N, …] with D per row.
    pub fn sq_dists(&self, x: &Tensor) -> Tensor {
        let n = x.size()[0];
        let x = x
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .reshape([n, self.dim()]);
        let x2 = x
            .square()
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
        let m2 = self
            .means
            .square()
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
        // Expanded form is fast; clamp the tiny negative values cancellation can leave.
        (x2 + m2.unsqueeze(0) - x.matmul(&self.means.tr()) * 2.0).clamp_min(0.0)
    }

    /// log density of x [N, …] under the (class-conditional) mixture: float64 [N] on the CPU.
    pub fn log_prob_class(&self, x: &Tensor, class: Option<usize>) -> Tensor {
        let d = self.dim() as f64;
        let w = self.component_weights(class);
        let dists = self.sq_dists(x);
        let cols: Vec<Tensor> = (0..self.num_components())
            .map(|k| {
                let s2 = self.stds[k].powi(2);
                let lw = if w[k] > 0.0 {
                    w[k].ln()
                } else {
                    f64::NEG_INFINITY
                };
                dists.select(1, k as i64) * (-0.5 / s2) + (lw - 0.5 * d * (TAU * s2).ln())
            })
            .collect();
        Tensor::stack(&cols, 1).logsumexp([1i64].as_slice(), false)
    }

    /// log density under the whole mixture: float64 [N].
    pub fn log_prob(&self, x: &Tensor) -> Tensor {
        self.log_prob_class(x, None)
    }

    /// Index of the nearest component mean (Euclidean) of each sample of x [N, …].
    pub fn mode_of(&self, x: &Tensor) -> Vec<usize> {
        let am = self.sq_dists(x).argmin(1, false);
        Vec::<i64>::try_from(am)
            .unwrap_or_default()
            .into_iter()
            .map(|k| k as usize)
            .collect()
    }
}

impl Denoiser for Gmm {
    /// v = (x_t − E[x0|x_t])/σ(t), σ from this mixture's table (float64 inside, x_t's kind out).
    fn flow(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Tensor {
        let sigma = self.table.sigma_tensor(t);
        let x0 = self
            .x0_at_sigma_f64(x_t, &sigma, cond)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let b = x_t.size()[0];
        let s = sigma.to_device(x_t.device()).reshape([b, -1, 1, 1, 1]);
        ((x_t.to_kind(Kind::Double) - x0) / s).to_kind(x_t.kind())
    }
}
