//! B0 tests of the DMD and SiD generator losses (spec §4.1, §4.3): surrogate-gradient identity,
//! fixed points, per-sample normaliser, NaN handling, and SiD's gradient against finite
//! differences with closed-form Gaussian scores.

use stillflow::diffusion::{add_noise, SigmaTable};
use stillflow::losses::{dmd_gradient, dmd_loss, dmd_loss_masked, sid_loss};
use stillflow::rng::{randn, Lane, Purpose, RngKey};
use tch::{Device, Kind, Tensor};

fn rn(seed: u64, shape: &[i64]) -> Tensor {
    randn(
        &RngKey::new(seed, 0, Lane::Other, Purpose::Test),
        shape,
        Kind::Double,
        Device::Cpu,
    )
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

const SHAPE: [i64; 5] = [2, 3, 4, 2, 2];

/// (f − r)/mean_{C,F,H,W}|x − r|, written out per sample.
fn manual_dmd_grad(x: &Tensor, r: &Tensor, f: &Tensor) -> Tensor {
    let b = x.size()[0];
    let parts: Vec<Tensor> = (0..b)
        .map(|i| {
            let n = (x.get(i) - r.get(i)).abs().mean(Kind::Double);
            (f.get(i) - r.get(i)) / n
        })
        .collect();
    Tensor::stack(&parts, 0)
}

#[test]
fn dmd_surrogate_gradient_identity() {
    let x = rn(1, &SHAPE).set_requires_grad(true);
    let r = rn(2, &SHAPE);
    let f = rn(3, &SHAPE) * 0.5;
    let out = dmd_loss(&x, &r, &f);
    assert_eq!(out.loss.dim(), 0);
    assert_eq!(out.loss.kind(), Kind::Double);
    let g = manual_dmd_grad(&x.detach(), &r, &f);
    let n = g.numel() as f64;
    // Value: 0.5·mean(grad²); logged norm: mean|grad|.
    let want = 0.5 * g.square().mean(Kind::Double).double_value(&[]);
    assert!((out.loss.double_value(&[]) - want).abs() < 1e-12);
    let want_norm = g.abs().mean(Kind::Double).double_value(&[]);
    assert!((out.dmd_gradient_norm - want_norm).abs() < 1e-12);
    assert!(dmd_gradient(&x, &r, &f).allclose(&g, 1e-12, 1e-12, false));
    // Gradient: ∂L/∂x = grad / N.
    out.loss.backward();
    assert!(max_abs(&(x.grad() - &g / n)) < 1e-15);
}

#[test]
fn dmd_bf16_inputs_give_f64_loss_and_the_same_identity() {
    let x = rn(1, &SHAPE)
        .to_kind(Kind::BFloat16)
        .set_requires_grad(true);
    let r = rn(2, &SHAPE).to_kind(Kind::BFloat16);
    let f = rn(3, &SHAPE).to_kind(Kind::BFloat16);
    let out = dmd_loss(&x, &r, &f);
    assert_eq!(out.loss.kind(), Kind::Double);
    let g = dmd_gradient(&x, &r, &f);
    assert_eq!(g.kind(), Kind::BFloat16);
    out.loss.backward();
    let want = (g.to_kind(Kind::Double) / g.numel() as f64).to_kind(Kind::BFloat16);
    assert!(x.grad().equal(&want));
}

#[test]
fn dmd_fake_equals_real_gives_exactly_zero() {
    let x = rn(1, &SHAPE).set_requires_grad(true);
    let r = rn(2, &SHAPE);
    let out = dmd_loss(&x, &r, &r.copy());
    assert_eq!(out.loss.double_value(&[]), 0.0);
    assert_eq!(out.dmd_gradient_norm, 0.0);
    out.loss.backward();
    assert_eq!(max_abs(&x.grad()), 0.0);
}

#[test]
fn dmd_normaliser_is_per_sample() {
    // Sample 1 is sample 0 scaled by 8 (exact in binary): the normalised gradient is identical,
    // which a batch-global normaliser would not give.
    let s0 = [1, 3, 4, 2, 2];
    let (x0, r0, f0) = (rn(1, &s0), rn(2, &s0), rn(3, &s0));
    let cat = |a: &Tensor| Tensor::cat(&[a, &(a * 8.0)], 0);
    let g = dmd_gradient(&cat(&x0), &cat(&r0), &cat(&f0));
    assert!(g.get(0).equal(&g.get(1)));
    let global = (cat(&f0) - cat(&r0)) / (cat(&x0) - cat(&r0)).abs().mean(Kind::Double);
    assert!(max_abs(&(global - &g)) > 1e-3);
}

#[test]
fn dmd_nan_and_inf_follow_nan_to_num() {
    let x = rn(1, &SHAPE);
    let r = rn(2, &SHAPE);
    let f = rn(3, &SHAPE);
    // A NaN in sample 0's real prediction makes its normaliser NaN: the whole sample → 0.
    let _ = r.get(0).get(1).get(2).get(0).get(1).fill_(f64::NAN);
    let g = dmd_gradient(&x, &r, &f);
    assert_eq!(max_abs(&g.get(0)), 0.0);
    let clean = manual_dmd_grad(
        &x.get(1).unsqueeze(0),
        &r.get(1).unsqueeze(0),
        &f.get(1).unsqueeze(0),
    );
    assert!(g.get(1).allclose(&clean.get(0), 1e-12, 1e-12, false));
    let out = dmd_loss(&x.set_requires_grad(true), &r, &f);
    assert!(out.loss.double_value(&[]).is_finite());
    // x == r (normaliser 0): f − r > 0 → +max, f − r < 0 → lowest, f == r → 0 (0/0 = NaN → 0).
    let xf = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3]);
    let ff = Tensor::from_slice(&[2.0f32, 1.0, 3.0]).view([1, 3]);
    let g = dmd_gradient(&xf, &xf, &ff);
    let v = Vec::<f32>::try_from(g.view([-1])).unwrap();
    assert_eq!(v, vec![f32::MAX, f32::MIN, 0.0]);
}

#[test]
fn dmd_mask_averages_selected_elements() {
    let x = rn(1, &SHAPE).set_requires_grad(true);
    let (r, f) = (rn(2, &SHAPE), rn(3, &SHAPE));
    let mask = rn(4, &SHAPE).gt(0.3);
    let m = mask.sum(Kind::Int64).int64_value(&[]) as f64;
    let out = dmd_loss_masked(&x, &r, &f, Some(&mask));
    let g = manual_dmd_grad(&x.detach(), &r, &f);
    let want = 0.5
        * g.masked_select(&mask)
            .square()
            .sum(Kind::Double)
            .double_value(&[])
        / m;
    assert!((out.loss.double_value(&[]) - want).abs() < 1e-12);
    out.loss.backward();
    let want_grad = g * mask.to_kind(Kind::Double) / m;
    assert!(max_abs(&(x.grad() - want_grad)) < 1e-15);
}

#[test]
fn sid_fixed_point_and_alpha_one_reduction() {
    // f == r (both functions of x): loss and gradient exactly 0.
    let x = rn(1, &SHAPE).set_requires_grad(true);
    let c = rn(2, &SHAPE);
    let r = &x * 0.5 + &c;
    let f = &x * 0.5 + &c;
    let out = sid_loss(&x, &r, &f, 1.2);
    assert_eq!(out.loss.double_value(&[]), 0.0);
    assert_eq!(out.dmd_gradient_norm, 0.0);
    out.loss.backward();
    assert_eq!(max_abs(&x.grad()), 0.0);

    // α = 1: ℓ = (r − f)(f − x)/norm; general α by its formula.
    let x = rn(1, &SHAPE);
    let (r, f) = (rn(2, &SHAPE), rn(3, &SHAPE));
    let norm = (&x - &r)
        .abs()
        .mean_dim(&[1i64, 2, 3, 4][..], true, Kind::Double);
    let l1 = ((&r - &f) * (&f - &x) / &norm)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!((sid_loss(&x, &r, &f, 1.0).loss.double_value(&[]) - l1).abs() < 1e-12);
    let a = 0.5;
    let la = ((&r - &f) * ((&r - &x) - (&r - &f) * a) / &norm)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!((sid_loss(&x, &r, &f, a).loss.double_value(&[]) - la).abs() < 1e-12);
}

#[test]
fn sid_normaliser_is_per_sample_and_nan_safe() {
    let s0 = [1, 3, 4, 2, 2];
    let (x0, r0, f0) = (rn(1, &s0), rn(2, &s0), rn(3, &s0));
    let (x1, r1, f1) = (rn(4, &s0) * 4.0, rn(5, &s0) * 4.0, rn(6, &s0) * 4.0);
    let l0 = sid_loss(&x0, &r0, &f0, 1.2).loss.double_value(&[]);
    let l1 = sid_loss(&x1, &r1, &f1, 1.2).loss.double_value(&[]);
    let cat = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 0);
    let both = sid_loss(&cat(&x0, &x1), &cat(&r0, &r1), &cat(&f0, &f1), 1.2);
    assert!((both.loss.double_value(&[]) - 0.5 * (l0 + l1)).abs() < 1e-12);
    // Homogeneity: scaling x, r, f of a sample by 4 scales its loss by 16/4 = 4.
    let l0x4 = sid_loss(&(&x0 * 4.0), &(&r0 * 4.0), &(&f0 * 4.0), 1.2)
        .loss
        .double_value(&[]);
    assert!((l0x4 - 4.0 * l0).abs() < 1e-12 * l0.abs().max(1.0));
    // A NaN in sample 1's r: its ℓ is NaN everywhere (NaN normaliser) → 0; the loss stays finite.
    let r1n = r1.copy();
    let _ = r1n.get(0).get(0).get(0).get(0).get(0).fill_(f64::NAN);
    let nan = sid_loss(&cat(&x0, &x1), &cat(&r0, &r1n), &cat(&f0, &f1), 1.2);
    assert!((nan.loss.double_value(&[]) - 0.5 * l0).abs() < 1e-12);
}

/// E[x0 | x_t] for x0 ~ N(m, S) in 2-D and x_t = (1 − σ)x0 + σε: affine in x_t.
/// x_t is [B, F, 2, 1, 1], sigma [B, F] float64; m [2], s [2, 2].
fn gaussian_x0(x_t: &Tensor, sigma: &Tensor, m: &Tensor, s: &Tensor) -> Tensor {
    let sz = x_t.size();
    let xt = x_t.reshape([-1, 2]);
    let sg = sigma.reshape([-1, 1, 1]);
    let a = sg.ones_like() - &sg;
    let eye = Tensor::eye(2, (Kind::Double, Device::Cpu));
    let k = &a * &a * s.unsqueeze(0) + &sg * &sg * eye.unsqueeze(0);
    let gain = (&a * s.unsqueeze(0)).matmul(&k.inverse()); // S(1−σ)K⁻¹, [N,2,2]
    let centred = (xt - &a.squeeze_dim(2) * m.unsqueeze(0)).unsqueeze(2);
    (m.unsqueeze(0) + gain.matmul(&centred).squeeze_dim(2)).reshape(sz.as_slice())
}

#[test]
fn sid_gradient_matches_finite_differences() {
    let table = SigmaTable::new(5.0);
    let shape = [1i64, 2, 2, 1, 1]; // one sample, two frames, 2-D
    let eps = rn(7, &shape);
    let t = Tensor::from_slice(&[400.0f64, 400.0]).view([1, 2]);
    let sigma = table.sigma_tensor(&t);
    let m_real = Tensor::from_slice(&[1.0f64, -0.5]);
    let s_real = Tensor::from_slice(&[1.0f64, 0.6, 0.6, 0.8]).view([2, 2]);
    let m_fake = Tensor::from_slice(&[0.2f64, 0.1]);
    let s_fake = Tensor::from_slice(&[0.5f64, -0.1, -0.1, 0.7]).view([2, 2]);
    for alpha in [0.5, 1.0, 1.2] {
        let scores = |x: &Tensor| {
            let xt = add_noise(&table, x, &eps, &t);
            (
                gaussian_x0(&xt, &sigma, &m_real, &s_real),
                gaussian_x0(&xt, &sigma, &m_fake, &s_fake),
            )
        };
        let x = rn(8, &shape).set_requires_grad(true);
        let (r, f) = scores(&x);
        sid_loss(&x, &r, &f, alpha).loss.backward();
        let auto = Vec::<f64>::try_from(x.grad().view([-1])).unwrap();
        // The normaliser is a stop-gradient constant: differentiate L(x')·n(x') and divide by n(x).
        let x0 = x.detach();
        let norm_of = |x: &Tensor| {
            let (r, _) = scores(x);
            (x - r).abs().mean(Kind::Double).double_value(&[])
        };
        let lval = |x: &Tensor| {
            let (r, f) = scores(x);
            sid_loss(x, &r, &f, alpha).loss.double_value(&[])
        };
        let n0 = norm_of(&x0);
        let h = 1e-6;
        let mut max_err: f64 = 0.0;
        let mut max_naive: f64 = 0.0;
        for i in 0..4 {
            let dx = Tensor::zeros([4], (Kind::Double, Device::Cpu));
            let _ = dx.get(i).fill_(h);
            let dx = dx.view(shape);
            let (xp, xm) = (&x0 + &dx, &x0 - &dx);
            let fd = (lval(&xp) * norm_of(&xp) - lval(&xm) * norm_of(&xm)) / (2.0 * h) / n0;
            let naive = (lval(&xp) - lval(&xm)) / (2.0 * h);
            max_err = max_err.max((fd - auto[i as usize]).abs());
            max_naive = max_naive.max((naive - auto[i as usize]).abs());
        }
        assert!(
            max_err < 1e-7,
            "alpha {alpha}: autograd vs FD off by {max_err}"
        );
        // The test can tell a differentiated normaliser apart.
        assert!(max_naive > 1e-4, "alpha {alpha}: {max_naive}");
        // Gradient flows through the scores: detaching r and f changes it.
        let x2 = x0.copy().set_requires_grad(true);
        let (r2, f2) = scores(&x2);
        sid_loss(&x2, &r2.detach(), &f2.detach(), alpha)
            .loss
            .backward();
        let detached = Vec::<f64>::try_from(x2.grad().view([-1])).unwrap();
        let gap = auto
            .iter()
            .zip(&detached)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(gap > 1e-3, "alpha {alpha}: {gap}");
    }
}
