//! Score-timestep sampling shared by the DMD/SiD generator loss and the critic loss (spec §3).

use crate::rng::{randint_vec, RngKey};
use tch::{Device, Kind, Tensor};

/// The clamp range [int(0.02·N), int(0.98·N)] of the score timesteps ([20, 980] for N = 1000).
pub fn score_timestep_bounds(num_train_timestep: i64) -> (i64, i64) {
    let n = num_train_timestep as f64;
    ((0.02 * n) as i64, (0.98 * n) as i64)
}

/// Sample score timesteps, shape [batch, frames], float32 on `device`:
/// an integer t uniform in [min_t, max_t) per sample (drawn from `key`), shifted
/// t ← 1000·(s·t/1000)/(1 + (s−1)·t/1000) when s = `shift` > 1, clamped to
/// [int(0.02·N), int(0.98·N)] with N = `num_train_timestep`, repeated over frames.
///
/// The shift is computed in float32 in the reference's operation order, on the host, so the values
/// do not depend on the device. Panics when `max_t <= min_t` (validated earlier by the config).
#[allow(clippy::too_many_arguments)]
pub fn sample_score_timesteps(
    key: &RngKey,
    batch: i64,
    frames: i64,
    min_t: i64,
    max_t: i64,
    shift: f64,
    num_train_timestep: i64,
    device: Device,
) -> Tensor {
    assert!(
        max_t > min_t,
        "score timestep range is empty: min_score_timestep {min_t} >= max {max_t}"
    );
    assert!(batch >= 0 && frames >= 0, "negative batch or frame count");
    let ints = randint_vec(key, min_t, max_t, batch as usize);
    // Long → float32 true division, as `timestep / 1000` does on a long tensor.
    let t = Tensor::from_slice(&ints)
        .to_kind(Kind::Float)
        .view([batch, 1]);
    let t = if shift > 1.0 {
        let u = &t / 1000.0;
        let num = &u * shift;
        let den = (&u * (shift - 1.0)) + 1.0;
        (num / den) * 1000.0
    } else {
        t
    };
    let (lo, hi) = score_timestep_bounds(num_train_timestep);
    t.clamp(lo, hi).repeat([1, frames]).to_device(device)
}
