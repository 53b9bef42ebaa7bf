//! The teacher's own deterministic sampler on the exact mixture: Euler on the probability-flow
//! ODE (the teacher rows of the quality benchmark, and DMD's regression targets).

use super::Gmm;
use crate::rng::{self, RngKey};
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

impl Gmm {
    /// The shifted σ grid of `teacher_sample`: σ_i = s·u_i/(1 + (s−1)u_i), u_i = 1 − i/steps,
    /// i = 0..=steps (so σ_0 = 1 and σ_steps = 0).
    pub fn euler_grid(steps: usize, shift: f64) -> Vec<f64> {
        (0..=steps)
            .map(|i| {
                let u = 1.0 - i as f64 / steps as f64;
                shift * u / (1.0 + (shift - 1.0) * u)
            })
            .collect()
    }

    /// The teacher's exact deterministic sampler: Euler on the probability-flow ODE
    /// dx/dσ = v(x, σ) = (x − E[x0|x, σ])/σ from σ = 1 (x ~ N(0, I), drawn from `key`) down to
    /// σ = 0 on `euler_grid(steps, shift)`. σ is the exact grid value, not a table lookup. The last
    /// step (to σ = 0) lands on E[x0|x, σ_{steps−1}], so 1 step returns the mixture mean.
    /// `cond` is [n or 1, L, text_dim]. Returns float32 [n, F, C, H, W] on the CPU.
    pub fn teacher_sample(
        &self,
        key: &RngKey,
        n: usize,
        steps: usize,
        shift: f64,
        cond: &Tensor,
    ) -> Tensor {
        self.teacher_sample_cfg(key, n, steps, shift, cond, None)
    }

    /// `teacher_sample` with classifier-free guidance in the reference's convention (spec §4.1):
    /// x0 = x0_c + g·(x0_c − x0_u), with `guidance = Some((uncond, g))`.
    pub fn teacher_sample_cfg(
        &self,
        key: &RngKey,
        n: usize,
        steps: usize,
        shift: f64,
        cond: &Tensor,
        guidance: Option<(&Tensor, f64)>,
    ) -> Tensor {
        let [f, c, h, w] = self.shape;
        let x = rng::randn(key, &[n as i64, f, c, h, w], Kind::Double, Device::Cpu);
        self.teacher_ode(&x, steps, shift, cond, guidance)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .to_kind(Kind::Float)
    }

    /// The probability-flow ODE of `teacher_sample_cfg` from a given noise `z` [n, F, C, H, W]
    /// (any kind and device; float64 inside): the deterministic teacher map z ↦ x0 that DMD's
    /// regression loss pairs with the generator's own noise. Returns float64 on z's device.
    pub fn teacher_ode(
        &self,
        z: &Tensor,
        steps: usize,
        shift: f64,
        cond: &Tensor,
        guidance: Option<(&Tensor, f64)>,
    ) -> Result<Tensor> {
        ensure!(steps >= 1, "gmm teacher ODE: steps must be >= 1");
        let n = z.size()[0];
        let dev = z.device();
        let mut x = z.to_kind(Kind::Double);
        let grid = Self::euler_grid(steps, shift);
        for i in 0..steps {
            let s = Tensor::full([n], grid[i], (Kind::Double, dev));
            let mut pred = self.x0_at_sigma_f64(&x, &s, cond)?;
            if let Some((uncond, g)) = guidance {
                let pu = self.x0_at_sigma_f64(&x, &s, uncond)?;
                pred = &pred + (&pred - pu) * g;
            }
            let v = (&x - pred) / grid[i];
            x = &x + v * (grid[i + 1] - grid[i]);
        }
        Ok(x)
    }
}
