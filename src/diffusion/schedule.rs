//! The reference's `FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)` with
//! `set_timesteps(1000, training=True)` (spec §3): a 1000-entry grid of shifted sigmas and
//! nearest-grid σ(t) lookup.

use tch::{Kind, Tensor};

/// The shifted σ grid for one shift value.
#[derive(Clone, Debug, PartialEq)]
pub struct SigmaTable {
    pub shift: f64,
    /// σ_i = s·u_i / (1 + (s−1)·u_i), u_i = 1 − i/N, i = 0..N−1 (`extra_one_step`: N+1 points, last dropped).
    pub sigmas: Vec<f64>,
    /// t_i = 1000·σ_i (decreasing).
    pub timesteps: Vec<f64>,
}

impl SigmaTable {
    /// The table with `num_train_timestep` (1000) entries.
    pub fn new(shift: f64) -> Self {
        Self::with_steps(shift, 1000)
    }

    pub fn with_steps(shift: f64, n: usize) -> Self {
        // linspace(1, 0, n+1)[:-1], computed the way torch.linspace does it in f64 for these
        // endpoints: u_i = 1 − i·(1/n).
        let sigmas: Vec<f64> = (0..n)
            .map(|i| {
                let u = 1.0 - i as f64 / n as f64;
                shift * u / (1.0 + (shift - 1.0) * u)
            })
            .collect();
        let timesteps = sigmas.iter().map(|s| s * 1000.0).collect();
        SigmaTable {
            shift,
            sigmas,
            timesteps,
        }
    }

    /// Index of the grid timestep nearest to `t` (first one on ties, like torch.argmin).
    pub fn index_of(&self, t: f64) -> usize {
        // timesteps are strictly decreasing: binary search for the neighbourhood.
        let ts = &self.timesteps;
        let pos = ts.partition_point(|&x| x > t); // first index with ts[i] <= t
        let mut best = pos.min(ts.len() - 1);
        if pos > 0 && (ts[pos - 1] - t).abs() <= (ts[best] - t).abs() {
            best = pos - 1;
        }
        best
    }

    /// σ(t) by nearest-grid lookup.
    pub fn sigma(&self, t: f64) -> f64 {
        self.sigmas[self.index_of(t)]
    }

    /// σ(t) for a tensor of timesteps (any shape), as a float64 tensor of the same shape on the
    /// same device.
    pub fn sigma_tensor(&self, t: &Tensor) -> Tensor {
        let flat = t
            .to_kind(Kind::Double)
            .to_device(tch::Device::Cpu)
            .flatten(0, -1);
        let vals: Vec<f64> = Vec::<f64>::try_from(&flat).unwrap_or_default();
        let s: Vec<f64> = vals.iter().map(|&x| self.sigma(x)).collect();
        Tensor::from_slice(&s)
            .view(t.size().as_slice())
            .to_device(t.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_numbers_shift5() {
        let s = SigmaTable::new(5.0);
        assert_eq!(s.timesteps[0], 1000.0);
        assert!((s.timesteps[250] - 937.5).abs() < 1e-9);
        assert!((s.timesteps[500] - 833.333_333_333).abs() < 1e-6);
        assert!((s.timesteps[750] - 625.0).abs() < 1e-9);
        assert!((s.timesteps[999] - 4.975_124_378).abs() < 1e-6);
    }

    #[test]
    fn nearest_lookup() {
        let s5 = SigmaTable::new(5.0);
        let s8 = SigmaTable::new(8.0);
        assert!((s5.sigma(0.0) - 0.004_975).abs() < 1e-5);
        assert!((s8.sigma(0.0) - 0.007_937).abs() < 1e-5);
        assert!((s5.sigma(20.0) - 0.019_69).abs() < 1e-4);
        assert!((s8.sigma(20.0) - 0.023_51).abs() < 1e-4);
        assert_eq!(s5.index_of(1000.0), 0);
        assert_eq!(s5.index_of(2000.0), 0);
    }
}
