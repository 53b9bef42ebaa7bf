//! B0 tests of the flow-matching schedule (spec §3): grid numbers, nearest-grid lookup, warped
//! denoising steps, noising/conversions and score-timestep sampling. Reference numbers marked
//! "torch" were produced by torch 2.11 running the reference's formulas in float32.

use stillflow::diffusion::{
    add_noise, flow_target, flow_to_x0, sample_score_timesteps, score_timestep_bounds,
    try_warp_denoising_step, warp_denoising_step, x0_to_flow, SigmaTable,
};
use stillflow::rng::{Lane, Purpose, RngKey};
use tch::{Device, Kind, Tensor};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn grid_numbers_shift5_and_shift8() {
    let s5 = SigmaTable::new(5.0);
    let s8 = SigmaTable::new(8.0);
    assert_eq!(s5.len(), 1000);
    assert_eq!(s5.timesteps[0], 1000.0);
    assert_eq!(s8.timesteps[0], 1000.0);
    // spec §3 (shift 5).
    assert_eq!(s5.timesteps[250], 937.5);
    assert!(close(s5.timesteps[500], 833.333_33, 1e-4));
    assert_eq!(s5.timesteps[750], 625.0);
    assert!(close(s5.timesteps[999], 4.98, 1e-3));
    // Shift 8 by formula: σ = 8u/(1 + 7u) at u = 0.75, 0.5, 0.25, 0.001.
    let f8 = |u: f64| 1000.0 * 8.0 * u / (1.0 + 7.0 * u);
    assert_eq!(s8.timesteps[250], 960.0);
    for (i, u) in [(250, 0.75), (500, 0.5), (750, 0.25), (999, 0.001)] {
        assert!(close(s8.timesteps[i], f8(u), 1e-4), "shift 8 t_{i}");
        assert!(close(
            s5.timesteps[i],
            1000.0 * 5.0 * u / (1.0 + 4.0 * u),
            1e-4
        ));
    }
    assert!(close(s8.timesteps[500], 888.888_89, 1e-4));
    assert!(close(s8.timesteps[750], 727.272_73, 1e-4));
    assert!(close(s8.timesteps[999], 7.944_39, 1e-4));
    // t_i = 1000·σ_i, both strictly decreasing and positive.
    for tab in [&s5, &s8] {
        for w in tab.timesteps.windows(2) {
            assert!(w[0] > w[1]);
        }
        assert!(tab.sigmas.iter().all(|&s| s > 0.0 && s <= 1.0));
        for (s, t) in tab.sigmas.iter().zip(&tab.timesteps) {
            assert!(close(s * 1000.0, *t, 1e-4));
        }
    }
}

#[test]
fn grid_is_bit_identical_to_the_float32_reference() {
    // Exact float32 values (torch) and sequential f64 sums over the whole grid (torch).
    let s5 = SigmaTable::new(5.0);
    let s8 = SigmaTable::new(8.0);
    assert_eq!(s5.timesteps[500], 833.333_312_988_281_2);
    assert_eq!(s5.timesteps[999], 4.980_080_127_716_064_5);
    assert_eq!(s5.timesteps[1], 999.799_804_687_5);
    assert_eq!(s5.timesteps[998], 9.920_635_223_388_672);
    assert_eq!(s8.timesteps[500], 888.888_916_015_625);
    assert_eq!(s8.timesteps[999], 7.944_390_296_936_035);
    assert_eq!(s8.timesteps[998], 15.779_092_788_696_289);
    assert_eq!(s5.timesteps.iter().sum::<f64>(), 747_550.256_361_484_5);
    assert_eq!(s8.timesteps.iter().sum::<f64>(), 803_855.831_360_817);
    assert_eq!(s5.sigmas.iter().sum::<f64>(), 747.550_256_016_198_5);
    // The exact f64 grid differs only at float32 rounding level.
    let e5 = SigmaTable::exact(5.0, 1000);
    for (a, b) in s5.sigmas.iter().zip(&e5.sigmas) {
        assert!((a - b).abs() <= 1e-6 * b, "{a} vs {b}");
    }
}

#[test]
fn nearest_grid_sigma_lookup() {
    let s5 = SigmaTable::new(5.0);
    let s8 = SigmaTable::new(8.0);
    // spec §3: t = 20, 50, 0.
    assert!(close(s5.sigma(20.0), 0.019_69, 1e-5));
    assert!(close(s8.sigma(20.0), 0.023_51, 1e-5));
    assert!(close(s5.sigma(50.0), 0.0481, 1e-4));
    assert!(close(s8.sigma(50.0), 0.0534, 1e-4));
    assert!(close(s5.sigma(0.0), 0.004_98, 1e-5));
    assert!(close(s8.sigma(0.0), 0.007_94, 1e-5));
    // Exact indices and float32 values (torch argmin).
    assert_eq!(s5.index_of(20.0), 996);
    assert_eq!(s8.index_of(20.0), 997);
    assert_eq!(s5.index_of(50.0), 990);
    assert_eq!(s8.index_of(50.0), 993);
    assert_eq!(s5.index_of(0.0), 999);
    assert_eq!(s5.sigma(20.0), 0.019_685_039_296_746_254);
    assert_eq!(s8.sigma(50.0), 0.053_384_177_386_760_71);
    // Grid points map to themselves; beyond the ends clamp.
    for (i, &t) in s8.timesteps.iter().enumerate() {
        assert_eq!(s8.index_of(t), i);
    }
    assert_eq!(s5.index_of(1e6), 0);
    assert_eq!(s5.index_of(-3.0), 999);
    // Ratio σ8/σ5 that the critic quirk introduces (spec §4.2): ≈1.19 at 20, ≈1.11 at 50.
    assert!(close(s8.sigma(20.0) / s5.sigma(20.0), 1.19, 0.01));
    assert!(close(s8.sigma(50.0) / s5.sigma(50.0), 1.11, 0.01));
    // Ties: exact midpoint between t_1 and t_2 of a coarse grid returns the first index.
    let coarse = SigmaTable::exact(1.0, 4); // 1000, 750, 500, 250
    assert_eq!(coarse.index_of(875.0), 0);
    assert_eq!(coarse.index_of(375.0), 2);
    // sigma_tensor keeps shape, is float64, equals the scalar lookup.
    let t = Tensor::from_slice(&[0.0f32, 20.0, 50.0, 980.0, 999.0, 1000.0]).view([2, 3]);
    let s = s5.sigma_tensor(&t);
    assert_eq!(s.size(), vec![2, 3]);
    assert_eq!(s.kind(), Kind::Double);
    let v = Vec::<f64>::try_from(s.view([-1])).unwrap();
    for (x, tv) in v.iter().zip([0.0, 20.0, 50.0, 980.0, 999.0, 1000.0]) {
        assert_eq!(*x, s5.sigma(tv));
    }
}

#[test]
fn warped_denoising_steps() {
    let s5 = SigmaTable::new(5.0);
    let w = warp_denoising_step(&[1000, 750, 500, 250], &s5);
    assert_eq!(w[0], 1000.0);
    assert_eq!(w[1], 937.5);
    assert!(close(w[2], 833.333_33, 1e-4));
    assert_eq!(w[3], 625.0);
    assert_eq!(warp_denoising_step(&[0], &s5), vec![0.0]);
    assert_eq!(warp_denoising_step(&[1], &s5), vec![s5.timesteps[999]]);
    assert!(try_warp_denoising_step(&[1001], &s5).is_err());
    assert!(try_warp_denoising_step(&[-1], &s5).is_err());
    let s8 = SigmaTable::new(8.0);
    assert_eq!(warp_denoising_step(&[750], &s8), vec![960.0]);
}

fn key(seed: u64) -> RngKey {
    RngKey::new(seed, 0, Lane::Other, Purpose::Test)
}

#[test]
fn add_noise_and_conversions() {
    let s5 = SigmaTable::new(5.0);
    let s8 = SigmaTable::new(8.0);
    let shape = [2i64, 3, 4, 2, 2];
    let x0 = stillflow::rng::randn(&key(1), &shape, Kind::Double, Device::Cpu);
    let eps = stillflow::rng::randn(&key(2), &shape, Kind::Double, Device::Cpu);
    let tv = [20.0f32, 50.0, 500.0, 0.0, 999.0, 937.5];
    let t = Tensor::from_slice(&tv).view([2, 3]);
    let xt = add_noise(&s5, &x0, &eps, &t);
    assert_eq!(xt.kind(), Kind::Double);
    // Element-wise check per (b, f) with the scalar σ (float32-rounded, as the reference's grid).
    for b in 0..2 {
        for f in 0..3 {
            // σ and 1 − σ are float32 in the reference (its grid is float32).
            let sig32 = s5.sigma(tv[(b * 3 + f) as usize] as f64) as f32;
            let (sig, one_minus) = (sig32 as f64, (1.0f32 - sig32) as f64);
            let want = x0.get(b).get(f) * one_minus + eps.get(b).get(f) * sig;
            let diff = (xt.get(b).get(f) - want).abs().max().double_value(&[]);
            assert!(diff < 1e-12, "add_noise (b {b}, f {f}) off by {diff}");
        }
    }
    // Result dtype follows ε.
    let xt_bf = add_noise(&s5, &x0, &eps.to_kind(Kind::BFloat16), &t);
    assert_eq!(xt_bf.kind(), Kind::BFloat16);
    // Conversions: exact flow ε − x0 recovers x0 when σ tables agree; round trip. The residual
    // comes from the float32 (1 − σ) in add_noise (≈3e-8 relative), amplified by 1/σ ≤ 201 in v.
    let v = flow_target(&x0, &eps);
    assert!(v.allclose(&(&eps - &x0), 0.0, 0.0, false));
    let x0_back = flow_to_x0(&s5, &xt, &v, &t);
    assert!(x0_back.allclose(&x0, 1e-7, 1e-7, false));
    let v_back = x0_to_flow(&s5, &xt, &x0, &t);
    assert!(v_back.allclose(&v, 2e-5, 2e-5, false));
    // With the shift-8 table the recovered x0 is wrong at low t (this is why the tables matter).
    let wrong = flow_to_x0(&s8, &xt, &v, &t);
    assert!(!wrong.allclose(&x0, 1e-3, 1e-3, false));
    // float32 inputs: computed in f64, cast back to x_t's dtype.
    let xt32 = xt.to_kind(Kind::Float);
    let v32 = v.to_kind(Kind::Float);
    let x0_32 = flow_to_x0(&s8, &xt32, &v32, &t);
    assert_eq!(x0_32.kind(), Kind::Float);
    let manual = (xt32.to_kind(Kind::Double)
        - s8.sigma_tensor(&t).view([2, 3, 1, 1, 1]) * v32.to_kind(Kind::Double))
    .to_kind(Kind::Float);
    assert!(x0_32.equal(&manual));
    let back = x0_to_flow(&s8, &xt32, &x0_32, &t);
    assert!(back.allclose(&v32, 1e-3, 1e-3, false));
    // Gradients flow through add_noise (SiD relies on it): d x_t / d x0 = 1 − σ.
    let x0g = x0.detach().set_requires_grad(true);
    add_noise(&s5, &x0g, &eps, &t).sum(Kind::Double).backward();
    let g = x0g.grad();
    let one_minus = (1.0f32 - s5.sigma(500.0) as f32) as f64;
    assert!(close(
        g.get(0).get(2).mean(Kind::Double).double_value(&[]),
        one_minus,
        1e-12
    ));
}

#[test]
fn score_timesteps_match_reference_values() {
    assert_eq!(score_timestep_bounds(1000), (20, 980));
    // [k, k+1) forces the integer draw; expected values from torch (float32 shift formula).
    let cases5 = [
        (0, 20.0),
        (4, 20.0),
        (5, 24.509_801_864_624_023),
        (100, 357.142_852_783_203_1),
        (500, 833.333_312_988_281_2),
        (907, 979.904_846_191_406_2),
        (908, 980.0),
        (999, 980.0),
    ];
    let cases8 = [(4, 31.128_406_524_658_203), (100, 470.588_226_318_359_4)];
    for (shift, cases) in [(5.0, &cases5[..]), (8.0, &cases8[..])] {
        for &(k, want) in cases {
            let t = sample_score_timesteps(&key(3), 1, 1, k, k + 1, shift, 1000, Device::Cpu);
            assert_eq!(t.kind(), Kind::Float);
            assert_eq!(t.double_value(&[0, 0]), want, "shift {shift}, raw t {k}");
        }
    }
    // shift <= 1: no transform, only the clamp.
    let t = sample_score_timesteps(&key(3), 1, 1, 300, 301, 1.0, 1000, Device::Cpu);
    assert_eq!(t.double_value(&[0, 0]), 300.0);
}

#[test]
fn score_timesteps_distribution_frames_and_keys() {
    let (b, f) = (20_000i64, 3i64);
    let t = sample_score_timesteps(&key(11), b, f, 0, 1000, 5.0, 1000, Device::Cpu);
    assert_eq!(t.size(), vec![b, f]);
    // Repeated over frames.
    assert!(t
        .narrow(1, 1, 2)
        .equal(&t.narrow(1, 0, 1).expand([b, 2], false)));
    let col = Vec::<f32>::try_from(t.select(1, 0)).unwrap();
    assert!(col.iter().all(|&x| (20.0..=980.0).contains(&x)));
    let n = col.len() as f64;
    let at980 = col.iter().filter(|&&x| x == 980.0).count() as f64 / n;
    let at20 = col.iter().filter(|&&x| x == 20.0).count() as f64 / n;
    // Raw t ∈ [908, 999] → 980 (9.2%), raw t ∈ [0, 4] → 20 (0.5%). 4σ binomial bands.
    assert!(
        (at980 - 0.092).abs() < 4.0 * (0.092f64 * 0.908 / n).sqrt(),
        "{at980}"
    );
    assert!(
        (at20 - 0.005).abs() < 4.0 * (0.005f64 * 0.995 / n).sqrt(),
        "{at20}"
    );
    // Nothing strictly between 979.91 and 980 and values are shifted (mean well above 500).
    let mean = col.iter().map(|&x| x as f64).sum::<f64>() / n;
    assert!(mean > 700.0 && mean < 760.0, "mean {mean}");
    // Determinism by key.
    let again = sample_score_timesteps(&key(11), b, f, 0, 1000, 5.0, 1000, Device::Cpu);
    assert!(t.equal(&again));
    let other = sample_score_timesteps(&key(12), b, f, 0, 1000, 5.0, 1000, Device::Cpu);
    assert!(!t.equal(&other));
    // min_t/max_t bound the raw draw (ts_schedule): raw ∈ [600, 700) → shifted ∈ [882.4, 921.1].
    let s = sample_score_timesteps(&key(5), 500, 1, 600, 700, 5.0, 1000, Device::Cpu);
    let lo = s.min().double_value(&[]);
    let hi = s.max().double_value(&[]);
    assert!(lo >= 882.35 && hi <= 921.1 && hi > lo, "{lo} {hi}");
}
