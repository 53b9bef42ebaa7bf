//! Individual quality metrics of samples against a known Gaussian mixture (see `eval` for the
//! definitions in one place). Samples are any tensor [N, …] with D = gmm.dim() values per row,
//! any float kind, any device (moved to the CPU, float64).

use crate::eval::chi2::chi2_cdf;
use crate::models::gmm::Gmm;
use crate::rng::{self, RngKey};
use tch::{Device, Kind, Tensor};

fn rows(gmm: &Gmm, samples: &Tensor) -> Tensor {
    let n = samples.size()[0];
    assert_eq!(
        samples.numel() as i64,
        n * gmm.dim(),
        "eval: samples {:?} do not have D = {} values per row",
        samples.size(),
        gmm.dim()
    );
    samples
        .to_kind(Kind::Double)
        .to_device(Device::Cpu)
        .reshape([n, gmm.dim()])
}

/// How many samples fall nearest (Euclidean) to each component: [K].
pub fn mode_counts(gmm: &Gmm, samples: &Tensor) -> Vec<usize> {
    let mut c = vec![0usize; gmm.num_components()];
    for k in gmm.mode_of(&rows(gmm, samples)) {
        c[k] += 1;
    }
    c
}

/// Fraction of the modes with positive expected mass π_k(class) whose empirical mass
/// p̂_k = n_k/N is at least half of it (p̂_k ≥ 0.5·π_k). 0 for no samples.
pub fn mode_coverage(gmm: &Gmm, samples: &Tensor, class: Option<usize>) -> f64 {
    let n = samples.size()[0];
    if n == 0 {
        return 0.0;
    }
    let w = gmm.component_weights(class);
    let counts = mode_counts(gmm, samples);
    let expected: Vec<usize> = (0..w.len()).filter(|&k| w[k] > 0.0).collect();
    let covered = expected
        .iter()
        .filter(|&&k| counts[k] as f64 / n as f64 >= 0.5 * w[k])
        .count();
    covered as f64 / expected.len().max(1) as f64
}

/// (max_k, mean_k) of |p̂_k − π_k(class)| over all K components (mass landing on another class's
/// modes counts as error there).
pub fn mass_error(gmm: &Gmm, samples: &Tensor, class: Option<usize>) -> (f64, f64) {
    let n = samples.size()[0].max(1) as f64;
    let w = gmm.component_weights(class);
    let errs: Vec<f64> = mode_counts(gmm, samples)
        .iter()
        .zip(&w)
        .map(|(&c, &p)| (c as f64 / n - p).abs())
        .collect();
    let max = errs.iter().cloned().fold(0.0, f64::max);
    (max, errs.iter().sum::<f64>() / errs.len() as f64)
}

/// The precision radius² of a component of std s in D dims: s²·(D + 3√(2D)), i.e. the χ²_D mean
/// plus three of its standard deviations (the "3σ ball" generalised to D dims).
pub fn precision_radius_sq(dim: i64, std: f64) -> f64 {
    let d = dim as f64;
    std * std * (d + 3.0 * (2.0 * d).sqrt())
}

/// Fraction of samples inside the precision ball (`precision_radius_sq`) of some component of
/// the target (class) mixture.
pub fn precision(gmm: &Gmm, samples: &Tensor, class: Option<usize>) -> f64 {
    let n = samples.size()[0];
    if n == 0 {
        return 0.0;
    }
    let w = gmm.component_weights(class);
    let dists =
        Vec::<f64>::try_from(gmm.sq_dists(&rows(gmm, samples)).flatten(0, -1)).unwrap_or_default();
    let k = w.len();
    let radii: Vec<f64> = gmm
        .stds()
        .iter()
        .map(|&s| precision_radius_sq(gmm.dim(), s))
        .collect();
    let inside = dists
        .chunks(k)
        .filter(|row| (0..k).any(|j| w[j] > 0.0 && row[j] <= radii[j]))
        .count();
    inside as f64 / n as f64
}

/// What `precision` gives for exact samples of well-separated modes: P(χ²_D ≤ D + 3√(2D))
/// (0.9817 for D = 2, → Φ(3) = 0.99865 from below as D grows). Overlapping modes push the
/// exact value slightly higher.
pub fn expected_precision(dim: i64) -> f64 {
    let d = dim as f64;
    chi2_cdf(d, d + 3.0 * (2.0 * d).sqrt())
}

/// Pooled within-mode std over true std: samples are assigned to their nearest mean; for every
/// mode with n_k ≥ 2, ss_k = Σ‖x − x̄_k‖² around the samples' own mean x̄_k; the ratio is
/// sqrt(Σ_k ss_k / Σ_k (n_k − 1)·D·s_k²). 1 for exact samples, 2 for samples spread twice as
/// wide around the means, 0 for collapsed modes. NaN if no mode has two samples.
pub fn std_ratio(gmm: &Gmm, samples: &Tensor) -> f64 {
    let x = rows(gmm, samples);
    let modes = gmm.mode_of(&x);
    let d = gmm.dim() as f64;
    let (mut ss, mut expected) = (0.0, 0.0);
    for k in 0..gmm.num_components() {
        let idx: Vec<i64> = (0..modes.len() as i64)
            .filter(|&i| modes[i as usize] == k)
            .collect();
        if idx.len() < 2 {
            continue;
        }
        let xk = x.index_select(0, &Tensor::from_slice(&idx));
        let centred = &xk - xk.mean_dim([0i64].as_slice(), true, Kind::Double);
        ss += f64::try_from(centred.square().sum(Kind::Double)).unwrap_or(f64::NAN);
        expected += (idx.len() - 1) as f64 * d * gmm.stds()[k].powi(2);
    }
    if expected > 0.0 {
        (ss / expected).sqrt()
    } else {
        f64::NAN
    }
}

/// Sliced Wasserstein-2 between two sample sets [Na, …] and [Nb, …] with the same D:
/// `num_projections` directions θ_p uniform on the unit sphere (keyed draws of `key`), the 1-D
/// W2² of the projected sets from sorted values (quantile levels (i + ½)/M, M = max(Na, Nb),
/// nearest order statistic), and SW2 = sqrt(mean_p W2²_p). For sets that differ by a shift δ,
/// SW2 = ‖δ‖·sqrt(mean_p (θ_p·δ̂)²) ≈ ‖δ‖/√D.
pub fn sliced_w2(a: &Tensor, b: &Tensor, num_projections: usize, key: &RngKey) -> f64 {
    let (na, nb) = (a.size()[0], b.size()[0]);
    assert!(na > 0 && nb > 0, "sliced_w2: empty sample set");
    let d = a.numel() as i64 / na;
    assert_eq!(
        b.numel() as i64,
        nb * d,
        "sliced_w2: sets of different dims"
    );
    let theta = projections(d, num_projections, key);
    let proj = |x: &Tensor, n: i64| {
        x.to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .reshape([n, d])
            .matmul(&theta)
            .sort(0, false)
            .0
    };
    let (pa, pb) = (proj(a, na), proj(b, nb));
    let m = na.max(nb);
    let levels = |n: i64| {
        let idx: Vec<i64> = (0..m)
            .map(|i| ((((i as f64 + 0.5) / m as f64) * n as f64) as i64).min(n - 1))
            .collect();
        Tensor::from_slice(&idx)
    };
    let qa = if na == m {
        pa
    } else {
        pa.index_select(0, &levels(na))
    };
    let qb = if nb == m {
        pb
    } else {
        pb.index_select(0, &levels(nb))
    };
    let w2sq = (qa - qb).square().mean(Kind::Double);
    f64::try_from(w2sq).unwrap_or(f64::NAN).sqrt()
}

/// Unit directions [D, P] (columns), from normal draws of `key` normalised.
pub fn projections(dim: i64, num_projections: usize, key: &RngKey) -> Tensor {
    let g = rng::randn(
        key,
        &[dim, num_projections as i64],
        Kind::Double,
        Device::Cpu,
    );
    let norms = g
        .square()
        .sum_dim_intlist([0i64].as_slice(), true, Kind::Double)
        .sqrt();
    g / norms
}

/// Cross-entropy of the samples under the true (class-conditional) density, −mean log p(x), in
/// nats. For exact samples it estimates the entropy of the target.
pub fn cross_entropy(gmm: &Gmm, samples: &Tensor, class: Option<usize>) -> f64 {
    let lp = gmm.log_prob_class(&rows(gmm, samples), class);
    -f64::try_from(lp.mean(Kind::Double)).unwrap_or(f64::NAN)
}

/// Fraction of samples whose frames all pick the same nearest mode (per-frame distance
/// ‖x_f − μ_{k,f}‖²): a causal generator that switches modes between frames scores below 1.
/// Always 1 for F = 1.
pub fn frame_consistency(gmm: &Gmm, samples: &Tensor) -> f64 {
    let x = rows(gmm, samples);
    let n = x.size()[0];
    let [f, c, h, w] = gmm.shape();
    if n == 0 {
        return 0.0;
    }
    let chw = c * h * w;
    let x = x.reshape([n, f, chw]);
    // Per-frame squared distances [N, K, F] (one component at a time to bound memory); argmin over
    // K gives [N, F].
    let cols: Vec<Tensor> = (0..gmm.num_components() as i64)
        .map(|k| {
            (&x - gmm.means().get(k).reshape([1, f, chw]))
                .square()
                .sum_dim_intlist([2i64].as_slice(), false, Kind::Double)
        })
        .collect();
    let per_frame = Tensor::stack(&cols, 1).argmin(1, false);
    let first = per_frame.narrow(1, 0, 1);
    let same = per_frame.eq_tensor(&first).all_dim(1, false);
    f64::try_from(same.to_kind(Kind::Double).mean(Kind::Double)).unwrap_or(f64::NAN)
}
