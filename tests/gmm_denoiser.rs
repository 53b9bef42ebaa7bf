//! The exact GMM denoiser against closed forms and Monte-Carlo posterior means; class
//! conditioning; flow/x0 round trip.

use stillflow::diffusion::SigmaTable;
use stillflow::models::gmm::Gmm;
use stillflow::models::toy_text::ToyTextEncoder;
use stillflow::models::Denoiser;
use stillflow::rng::{self, Lane, Purpose, RngKey};
use tch::{Device, Kind, Tensor};

fn key(sub: u64) -> RngKey {
    RngKey::new(42, 0, Lane::Other, Purpose::Test).sub(sub)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from(
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max(),
    )
    .unwrap()
}

/// K = 1: E[x0|x_t] = μ + (1−σ)s²/((1−σ)²s² + σ²)·(x_t − (1−σ)μ), per frame σ.
#[test]
fn single_gaussian_matches_affine_closed_form() {
    let shape = [3i64, 2, 2, 2];
    let d: i64 = shape.iter().product();
    let mu = rng::randn(&key(1), &[1, d], Kind::Double, Device::Cpu);
    let s = 0.7;
    let g = Gmm::new(shape, &mu, vec![s], vec![1.0], vec![0], 0).unwrap();
    let b = 4;
    let x_t = rng::randn(&key(2), &[b, 3, 2, 2, 2], Kind::Double, Device::Cpu) * 1.5;
    // Different timesteps per sample and frame.
    let tv: Vec<f64> = vec![
        1000.0, 900.0, 20.0, 500.0, 500.0, 500.0, 0.0, 250.0, 999.0, 137.0, 640.0, 77.0,
    ];
    let t = Tensor::from_slice(&tv).view([b, 3]);
    let cond = Tensor::zeros([b, 1, 1], (Kind::Float, Device::Cpu));
    let x0 = g.x0(&x_t, &t, &cond);
    let table = g.sigma_table();
    let mut expect = Vec::new();
    let xv = Vec::<f64>::try_from(x_t.flatten(0, -1)).unwrap();
    let muv = Vec::<f64>::try_from(mu.flatten(0, -1)).unwrap();
    for i in 0..b as usize {
        for f in 0..3usize {
            let sig = table.sigma(tv[i * 3 + f]);
            let a = 1.0 - sig;
            let gain = a * s * s / (a * a * s * s + sig * sig);
            for j in 0..8usize {
                let m = muv[f * 8 + j];
                expect.push(m + gain * (xv[(i * 3 + f) * 8 + j] - a * m));
            }
        }
    }
    let expect = Tensor::from_slice(&expect).view([b, 3, 2, 2, 2]);
    let err = max_abs(&x0, &expect);
    assert!(err < 1e-12, "max err {err}");
}

/// Self-normalised importance weighting over exact x0 samples: E[x0|x_t] ≈ Σ w_i x0_i / Σ w_i with
/// w_i = N(x_t; (1−σ)x0_i, σ²I). Independent of the closed form.
/// Returns (mean, standard error per coordinate (from the weighted variance and the effective
/// sample size), ESS).
fn mc_posterior_mean(x0s: &Tensor, x_t: &[f64; 2], sigma: f64) -> ([f64; 2], [f64; 2], f64) {
    let a = 1.0 - sigma;
    let q = Tensor::from_slice(x_t).view([1, 2]);
    let d2 = (q - x0s * a)
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
    let logw = d2 * (-0.5 / (sigma * sigma));
    let w = (&logw - logw.max()).exp();
    let wsum = f64::try_from(w.sum(Kind::Double)).unwrap();
    let ess = wsum * wsum / f64::try_from(w.square().sum(Kind::Double)).unwrap();
    let wn = w / wsum;
    let m = (wn.unsqueeze(1) * x0s).sum_dim_intlist([0i64].as_slice(), false, Kind::Double);
    let var = (wn.unsqueeze(1) * (x0s - m.unsqueeze(0)).square()).sum_dim_intlist(
        [0i64].as_slice(),
        false,
        Kind::Double,
    );
    let m = Vec::<f64>::try_from(m).unwrap();
    let v = Vec::<f64>::try_from(var).unwrap();
    let se = [(v[0] / ess).sqrt(), (v[1] / ess).sqrt()];
    ([m[0], m[1]], se, ess)
}

#[test]
fn posterior_mean_matches_monte_carlo() {
    let g = Gmm::ring(8, 2.0, 0.3, 4).unwrap();
    let table = g.sigma_table().clone();
    let n = 400_000;
    for (class, sub) in [(None, 10u64), (Some(1), 20)] {
        let x0s = g
            .sample(&key(sub), n, class)
            .to_kind(Kind::Double)
            .reshape([n as i64, 2]);
        let cond = g.class_cond(&[class]);
        for (qi, t) in [300.0, 700.0, 950.0].into_iter().enumerate() {
            let sigma = table.sigma(t);
            // Query points: noised exact samples (typical x_t), plus one off-manifold point.
            let fresh = Vec::<f64>::try_from(
                g.sample(&key(sub + 1 + qi as u64), 2, class)
                    .to_kind(Kind::Double)
                    .flatten(0, -1),
            )
            .unwrap();
            let eps = rng::normal_vec(&key(sub + 5 + qi as u64), 4);
            let mut queries: Vec<[f64; 2]> = (0..2)
                .map(|i| {
                    [
                        (1.0 - sigma) * fresh[2 * i] + sigma * eps[2 * i] as f64,
                        (1.0 - sigma) * fresh[2 * i + 1] + sigma * eps[2 * i + 1] as f64,
                    ]
                })
                .collect();
            queries.push([0.4, -0.3]);
            for q in queries {
                let (mc, se, ess) = mc_posterior_mean(&x0s, &q, sigma);
                assert!(ess > 300.0, "ess {ess} too small for t={t}");
                let x_t = Tensor::from_slice(&q).view([1, 1, 2, 1, 1]);
                let tt = Tensor::from_slice(&[t]).view([1, 1]);
                let ex = Vec::<f64>::try_from(g.x0(&x_t, &tt, &cond).flatten(0, -1)).unwrap();
                for j in 0..2 {
                    // 5 Monte-Carlo standard errors (+ a floor for near-deterministic posteriors).
                    let tol = 5.0 * se[j] + 1e-4;
                    assert!(
                        (ex[j] - mc[j]).abs() < tol,
                        "class {class:?} t={t} q={q:?}: exact {ex:?} vs MC {mc:?} (ess {ess:.0}, se {se:?})"
                    );
                }
            }
        }
    }
}

#[test]
fn class_conditioning_selects_class_modes() {
    let g = Gmm::ring(8, 3.0, 0.2, 4).unwrap(); // classes: {0,1}, {2,3}, {4,5}, {6,7}
    let enc = ToyTextEncoder::new(4, 3, 16);
    let prompts: Vec<String> = ["class 0", "a video of class 2", "", "blurry, low quality"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cond = enc.encode(&prompts);
    let x_t = rng::randn(&key(3), &[4, 1, 2, 1, 1], Kind::Double, Device::Cpu);
    // σ(1000) = 1: x_t carries no information, x0 = the (class) prior mean exactly.
    let t = Tensor::full([4, 1], 1000.0, (Kind::Double, Device::Cpu));
    let x0 = g.x0(&x_t, &t, &cond).reshape([4, 2]);
    let want = Tensor::stack(
        &[g.mean(Some(0)), g.mean(Some(2)), g.mean(None), g.mean(None)],
        0,
    );
    assert!(max_abs(&x0, &want) < 1e-12, "{x0:?} vs {want:?}");
    // The class-0 mean is (3/2)(1 + cos45°, sin45°): well away from the global mean 0.
    let m0 = Vec::<f64>::try_from(g.mean(Some(0))).unwrap();
    assert!((m0[0] - 1.5 * (1.0 + 0.5f64.sqrt())).abs() < 1e-12);
    assert!((m0[1] - 1.5 * 0.5f64.sqrt()).abs() < 1e-12);
    // Same answer from the minimal class_cond embedding.
    let x0b = g.x0(&x_t, &t, &g.class_cond(&[Some(0), Some(2), None, None]));
    assert!(max_abs(&x0b.reshape([4, 2]), &want) < 1e-12);
    // At high (not full) noise x0 approaches the class mean.
    let t = Tensor::full([4, 1], 990.0, (Kind::Double, Device::Cpu));
    let x0 = g.x0(&x_t, &t, &cond).reshape([4, 2]);
    assert!(max_abs(&x0, &want) < 0.1);
    // Low noise near a class-4 mode, but cond = class 0: the prediction must land on a class-0
    // mode (the only ones with prior mass), not on the nearby class-4 one.
    let x_t = Tensor::from_slice(&[-2.9f64, 0.1]).view([1, 1, 2, 1, 1]);
    let t = Tensor::full([1, 1], 300.0, (Kind::Double, Device::Cpu));
    let x0 = g.x0(&x_t, &t, &g.class_cond(&[Some(0)]));
    let modes = g.mode_of(&x0);
    assert!(g.classes()[modes[0]] == 0, "{x0:?}");
    let x0u = g.x0(&x_t, &t, &g.class_cond(&[None]));
    assert_eq!(g.mode_of(&x0u), vec![4]);
}

#[test]
fn flow_round_trip_with_same_table() {
    let g = Gmm::procedural(3, 2, 4, 4, 6, 3, 0.3, 1.0, 7).unwrap();
    let x_t = rng::randn(&key(4), &[2, 3, 2, 4, 4], Kind::Double, Device::Cpu);
    let t = Tensor::from_slice(&[20.0, 400.0, 990.0, 5.0, 650.0, 1000.0]).view([2, 3]);
    let cond = g.class_cond(&[Some(1), None]);
    let v = g.flow(&x_t, &t, &cond);
    let sig = g.sigma_table().sigma_tensor(&t).view([2, 3, 1, 1, 1]);
    let x0_back = &x_t - sig * &v;
    assert!(max_abs(&x0_back, &g.x0(&x_t, &t, &cond)) < 1e-12);
    // A different table changes the flow (at low t) but the same round trip holds.
    let g5 = g.clone().with_shift(5.0);
    let v5 = g5.flow(&x_t, &t, &cond);
    assert!(max_abs(&v5, &v) > 1e-3);
    let s5 = SigmaTable::new(5.0).sigma_tensor(&t).view([2, 3, 1, 1, 1]);
    assert!(max_abs(&(&x_t - s5 * v5), &g5.x0(&x_t, &t, &cond)) < 1e-12);
    // float32 in → float32 out, same values to f32 precision.
    let v32 = g.flow(&x_t.to_kind(Kind::Float), &t.to_kind(Kind::Float), &cond);
    assert_eq!(v32.kind(), Kind::Float);
    assert!(max_abs(&v32, &v) < 1e-3);
}

#[test]
fn exact_samples_moments_and_log_prob() {
    let g = Gmm::imbalanced(8, 4.0, 0.25, 2, 10.0).unwrap();
    let w = g.weights();
    assert!((w[7] / w[0] - 10.0).abs() < 1e-12);
    let n = 50_000;
    let (x, comps) = g.sample_labeled(&key(5), n, None);
    let mut counts = [0usize; 8];
    comps.iter().for_each(|&k| counts[k] += 1);
    for k in 0..8 {
        let p = counts[k] as f64 / n as f64;
        let se = (w[k] * (1.0 - w[k]) / n as f64).sqrt();
        assert!((p - w[k]).abs() < 4.0 * se, "mode {k}: {p} vs {}", w[k]);
    }
    let mean = x.to_kind(Kind::Double).reshape([n as i64, 2]).mean_dim(
        [0i64].as_slice(),
        false,
        Kind::Double,
    );
    assert!(max_abs(&mean, &g.mean(None)) < 0.05);
    // Class samples use only that class's modes.
    let (_, c1) = g.sample_labeled(&key(6), 2000, Some(1));
    assert!(c1.iter().all(|&k| g.classes()[k] == 1));
    // K = 1 log density is the Gaussian's.
    let one = Gmm::new(
        [1, 2, 1, 1],
        &Tensor::from_slice(&[1.0f64, -2.0]).view([1, 2]),
        vec![0.5],
        vec![3.0],
        vec![0],
        0,
    )
    .unwrap();
    let pts = Tensor::from_slice(&[1.0f64, -2.0, 2.0, 0.0]).view([2, 2]);
    let lp = Vec::<f64>::try_from(one.log_prob(&pts)).unwrap();
    let norm = -(2.0 * std::f64::consts::PI * 0.25).ln();
    assert!((lp[0] - norm).abs() < 1e-12);
    assert!((lp[1] - (norm - 5.0 / (2.0 * 0.25))).abs() < 1e-12);
    // Determinism: same key, same samples.
    assert!(max_abs(&g.sample(&key(5), 10, None), &x.narrow(0, 0, 10)) == 0.0);
}

#[test]
fn procedural_is_deterministic_and_temporally_structured() {
    let a = Gmm::procedural(4, 2, 4, 4, 8, 4, 0.2, 1.0, 3).unwrap();
    let b = Gmm::procedural(4, 2, 4, 4, 8, 4, 0.2, 1.0, 3).unwrap();
    assert!(max_abs(a.means(), b.means()) == 0.0);
    let c = Gmm::procedural(4, 2, 4, 4, 8, 4, 0.2, 1.0, 4).unwrap();
    assert!(max_abs(a.means(), c.means()) > 0.1);
    let dists = a.sq_dists(a.means());
    let off = dists + Tensor::eye(8, (Kind::Double, Device::Cpu)) * 1e9;
    let min_d = f64::try_from(off.min()).unwrap().sqrt();
    // Modes are separated: the precision balls (radius² = s²(D + 3√(2D))) are disjoint.
    let radius = stillflow::eval::precision_radius_sq(a.dim(), 0.2).sqrt();
    assert!(
        min_d > 2.0 * radius,
        "min distance {min_d} vs radius {radius}"
    );
    // Every frame differs from the previous one (the phase moves), but all frames have equal
    // energy (a travelling wave).
    let m = a.means().reshape([8, 4, 32]);
    for k in 0..8 {
        let e: Vec<f64> = (0..4i64)
            .map(|f| f64::try_from(m.get(k).get(f).square().sum(Kind::Double)).unwrap())
            .collect();
        for f in 1..4i64 {
            assert!(
                (e[f as usize] - e[0]).abs() < 1e-9 * e[0].max(1.0) + 1e-9,
                "{e:?}"
            );
            let step = max_abs(&m.get(k).get(f), &m.get(k).get(f - 1));
            assert!(step > 0.1, "mode {k} frame {f} does not move");
        }
    }
}
