//! The reference's `FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)` with
//! `set_timesteps(1000, training=True)` (spec §3): a 1000-entry grid of shifted sigmas and
//! nearest-grid σ(t) lookup.
//!
//! Bit-faithfulness: the reference builds its grid in float32 (`torch.linspace` with the default
//! dtype, then the shift formula on float32 tensors) and widens it to float64 only inside the
//! x0↔flow conversions. [`SigmaTable::new`] / [`SigmaTable::with_steps`] therefore build the grid
//! with libtorch's own float32 `linspace` and float32 arithmetic in the same operation order, and
//! store the (exactly representable) float32 values as f64. [`SigmaTable::exact`] gives the
//! mathematically exact f64 grid for analysis; the two differ by < 1e-6 relative.

use tch::{Device, Kind, Tensor};

/// The shifted σ grid for one shift value.
#[derive(Clone, Debug, PartialEq)]
pub struct SigmaTable {
    pub shift: f64,
    /// σ_i = s·u_i / (1 + (s−1)·u_i), u_i = linspace(1, 0, N+1)[i], i = 0..N−1
    /// (`extra_one_step`: N+1 points, the last (σ = 0) dropped). Strictly decreasing, never 0.
    pub sigmas: Vec<f64>,
    /// t_i = 1000·σ_i (strictly decreasing, t_0 = 1000).
    pub timesteps: Vec<f64>,
}

impl SigmaTable {
    /// The reference-faithful table with `num_train_timestep` = 1000 entries.
    pub fn new(shift: f64) -> Self {
        Self::with_steps(shift, 1000)
    }

    /// The reference-faithful table with `n` entries (float32 grid, see the module docs).
    pub fn with_steps(shift: f64, n: usize) -> Self {
        assert!(n >= 1, "SigmaTable: need at least one timestep");
        assert!(
            shift.is_finite() && shift > 0.0,
            "SigmaTable: shift must be finite and > 0, got {shift}"
        );
        let opts = (Kind::Float, Device::Cpu);
        let u = Tensor::linspace(1.0, 0.0, n as i64 + 1, opts).narrow(0, 0, n as i64);
        // Same op order as the reference: (shift * u) / (1 + (shift - 1) * u), all float32.
        let sig = (&u * shift) / ((&u * (shift - 1.0)) + 1.0);
        let ts = &sig * 1000.0;
        let to_vec = |x: &Tensor| -> Vec<f64> {
            let v: Vec<f32> = Vec::<f32>::try_from(x).expect("float32 CPU tensor to Vec");
            v.into_iter().map(f64::from).collect()
        };
        SigmaTable {
            shift,
            sigmas: to_vec(&sig),
            timesteps: to_vec(&ts),
        }
    }

    /// The exact float64 grid (u_i = 1 − i/n), for analysis and comparisons.
    pub fn exact(shift: f64, n: usize) -> Self {
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

    /// Number of grid points (1000 for the training table).
    pub fn len(&self) -> usize {
        self.sigmas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sigmas.is_empty()
    }

    /// Index of the grid timestep nearest to `t`, i.e. `argmin_i |t_i − t|` computed in f64,
    /// first index on ties (torch.argmin semantics). NaN gives 0, as torch.argmin does (the first
    /// NaN wins).
    pub fn index_of(&self, t: f64) -> usize {
        if t.is_nan() {
            return 0;
        }
        // Timesteps are strictly decreasing: find the first index with t_i <= t and compare it
        // with its left neighbour. `<=` keeps the lower (first) index on exact ties.
        let ts = &self.timesteps;
        let pos = ts.partition_point(|&x| x > t);
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
    /// same device. On CPU the lookup runs on the host; elsewhere it runs on the device as the
    /// reference does (argmin over |t_i − t| in float64), which avoids a device→host sync. Both
    /// paths give identical indices (tested).
    pub fn sigma_tensor(&self, t: &Tensor) -> Tensor {
        if t.device() == Device::Cpu {
            self.sigma_tensor_host(t)
        } else {
            self.sigma_tensor_argmin(t)
        }
    }

    /// Host path of [`Self::sigma_tensor`].
    #[doc(hidden)]
    pub fn sigma_tensor_host(&self, t: &Tensor) -> Tensor {
        let flat = t
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .contiguous()
            .view([-1]);
        let vals: Vec<f64> = Vec::<f64>::try_from(&flat).expect("float64 CPU tensor to Vec");
        let s: Vec<f64> = vals.iter().map(|&x| self.sigma(x)).collect();
        Tensor::from_slice(&s)
            .view(t.size().as_slice())
            .to_device(t.device())
    }

    /// Device path of [`Self::sigma_tensor`]: the reference's
    /// `sigmas[argmin(|timesteps[None] − t[:, None]|, dim=1)]` in float64.
    #[doc(hidden)]
    pub fn sigma_tensor_argmin(&self, t: &Tensor) -> Tensor {
        let dev = t.device();
        let ts = Tensor::from_slice(&self.timesteps).to_device(dev);
        let sg = Tensor::from_slice(&self.sigmas).to_device(dev);
        let flat = t.detach().to_kind(Kind::Double).reshape([-1, 1]);
        let idx = (ts.unsqueeze(0) - flat).abs().argmin(1, false);
        sg.index_select(0, &idx).view(t.size().as_slice())
    }
}

/// The reference's `warp_denoising_step`: each denoising step s (an integer in [0, N]) is replaced
/// by `cat(timesteps, [0])[N − s]`, i.e. the grid timestep at index N − s (0 for s = 0).
/// Shift 5: [1000, 750, 500, 250] → [1000, 937.5, 833.33…, 625].
///
/// Panics with a clear message when a step is outside [0, N]; use [`try_warp_denoising_step`] for
/// steps read from user configuration.
pub fn warp_denoising_step(steps: &[i64], table: &SigmaTable) -> Vec<f64> {
    match try_warp_denoising_step(steps, table) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Fallible form of [`warp_denoising_step`].
pub fn try_warp_denoising_step(steps: &[i64], table: &SigmaTable) -> anyhow::Result<Vec<f64>> {
    let n = table.len() as i64;
    steps
        .iter()
        .map(|&s| {
            if !(0..=n).contains(&s) {
                anyhow::bail!(
                    "denoising_step_list: step {s} is outside [0, {n}] (warp_denoising_step \
                     indexes cat(timesteps, [0]) at {n} − step)"
                );
            }
            let i = (n - s) as usize;
            Ok(if i == table.len() {
                0.0
            } else {
                table.timesteps[i]
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_device_paths_agree_including_ties() {
        for shift in [1.0, 3.0, 5.0, 8.0] {
            let tab = SigmaTable::new(shift);
            // Grid points, exact midpoints between neighbours (ties), out of range values.
            let mut ts: Vec<f64> = tab.timesteps.clone();
            ts.extend(tab.timesteps.windows(2).map(|w| 0.5 * (w[0] + w[1])));
            ts.extend([-5.0, 0.0, 1e-9, 20.0, 50.0, 980.0, 1000.0, 1000.5, 2000.0]);
            ts.extend((0..=1000).map(|i| i as f64));
            let t = Tensor::from_slice(&ts);
            let a = tab.sigma_tensor_host(&t);
            let b = tab.sigma_tensor_argmin(&t);
            assert!(a.equal(&b), "shift {shift}: host and argmin lookups differ");
        }
    }

    #[test]
    fn tie_takes_first_index() {
        let tab = SigmaTable::exact(1.0, 4); // timesteps 1000, 750, 500, 250
        assert_eq!(tab.index_of(625.0), 1);
        assert_eq!(tab.index_of(875.0), 0);
        assert_eq!(tab.index_of(0.0), 3);
        assert_eq!(tab.index_of(f64::NAN), 0);
    }
}
