//! B1: closed-form Gaussian distillation (DESIGN §11). Target N(μ, Σ) in 2-D with its exact
//! x0-prediction as the "teacher"; affine generator G(z) = A·z + b. DMD and SiD (α ∈ {0.5, 1, 1.2})
//! must drive the closed-form W2 between N(b, AAᵀ) and N(μ, Σ) close to 0, first with an oracle
//! fake score (the exact x0-prediction of N(b, AAᵀ)), then with a small learned MLP critic trained
//! by the critic loss at TTUR ratio 5. Uses the real functions of stillflow::diffusion/losses.
//!
//! Samples are shaped [B, 1, 2, 1, 1] (one frame, two channels), timesteps [B, 1].

use stillflow::diffusion::{add_noise, flow_to_x0, sample_score_timesteps, SigmaTable};
use stillflow::losses::{dmd_loss, sid_loss, CriticLoss, DenoisingLossType};
use stillflow::rng::{randn, Lane, Purpose, RngKey};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

type M2 = [[f64; 2]; 2];

const MU: [f64; 2] = [1.0, -0.5];
const SIGMA: M2 = [[1.0, 0.6], [0.6, 0.8]];

/// Square root of a 2×2 SPD matrix: (M + √det·I)/√(tr + 2√det).
fn sqrtm2(m: M2) -> M2 {
    let s = (m[0][0] * m[1][1] - m[0][1] * m[1][0]).max(0.0).sqrt();
    let t = (m[0][0] + m[1][1] + 2.0 * s).sqrt();
    [
        [(m[0][0] + s) / t, m[0][1] / t],
        [m[1][0] / t, (m[1][1] + s) / t],
    ]
}

fn mul2(a: M2, b: M2) -> M2 {
    let mut c = [[0.0; 2]; 2];
    for i in 0..2 {
        for j in 0..2 {
            c[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j];
        }
    }
    c
}

/// Squared 2-Wasserstein distance between N(m1, s1) and N(m2, s2):
/// ‖m1 − m2‖² + tr(s1 + s2 − 2(s2^½ s1 s2^½)^½).
fn w2_squared(m1: [f64; 2], s1: M2, m2: [f64; 2], s2: M2) -> f64 {
    let r = sqrtm2(s2);
    let cross = sqrtm2(mul2(mul2(r, s1), r));
    let dm = (m1[0] - m2[0]).powi(2) + (m1[1] - m2[1]).powi(2);
    dm + s1[0][0] + s1[1][1] + s2[0][0] + s2[1][1] - 2.0 * (cross[0][0] + cross[1][1])
}

#[test]
fn w2_closed_form_sanity() {
    assert!(w2_squared(MU, SIGMA, MU, SIGMA).abs() < 1e-12);
    // Diagonal case: ‖Δμ‖² + Σ(√a − √b)².
    let w = w2_squared(
        [0.0, 1.0],
        [[4.0, 0.0], [0.0, 1.0]],
        [1.0, 1.0],
        [[1.0, 0.0], [0.0, 9.0]],
    );
    assert!((w - (1.0 + 1.0 + 4.0)).abs() < 1e-12);
    let r = sqrtm2(SIGMA);
    let back = mul2(r, r);
    for i in 0..2 {
        for j in 0..2 {
            assert!((back[i][j] - SIGMA[i][j]).abs() < 1e-12);
        }
    }
}

fn t2(m: [f64; 2]) -> Tensor {
    Tensor::from_slice(&m)
}
fn t22(m: M2) -> Tensor {
    Tensor::from_slice(&[m[0][0], m[0][1], m[1][0], m[1][1]]).view([2, 2])
}

/// Exact E[x0 | x_t] for x0 ~ N(m, S), x_t = (1 − σ)x0 + σε: m + (1−σ)S K⁻¹ (x_t − (1−σ)m) with
/// K = (1−σ)²S + σ²I. x_t [B, 1, 2, 1, 1], sigma [B, 1] float64. Affine in x_t (keeps its graph).
fn gaussian_x0(x_t: &Tensor, sigma: &Tensor, m: &Tensor, s: &Tensor) -> Tensor {
    let sz = x_t.size();
    let xt = x_t.reshape([-1, 2]);
    let sg = sigma.reshape([-1, 1, 1]);
    let a = sg.ones_like() - &sg;
    let eye = Tensor::eye(2, (Kind::Double, Device::Cpu));
    let k = &a * &a * s.unsqueeze(0) + &sg * &sg * eye.unsqueeze(0);
    let gain = (&a * s.unsqueeze(0)).matmul(&k.inverse());
    let centred = (xt - a.squeeze_dim(2) * m.unsqueeze(0)).unsqueeze(2);
    (m.unsqueeze(0) + gain.matmul(&centred).squeeze_dim(2)).reshape(sz.as_slice())
}

#[derive(Clone, Copy, Debug)]
enum Method {
    Dmd,
    Sid(f64),
}

#[derive(Clone, Copy, Debug)]
enum Fake {
    Oracle,
    /// Learned MLP critic, `ttur` critic steps per generator step.
    Learned {
        ttur: usize,
    },
}

struct Critic {
    vs: nn::VarStore,
    net: nn::Sequential,
}

impl Critic {
    fn new(seed: i64) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let h = 64;
        let net = nn::seq()
            .add(nn::linear(&p / "l1", 3, h, Default::default()))
            .add_fn(|x| x.silu())
            .add(nn::linear(&p / "l2", h, h, Default::default()))
            .add_fn(|x| x.silu())
            .add(nn::linear(&p / "l3", h, 2, Default::default()));
        let mut vs = vs;
        vs.double();
        Critic { vs, net }
    }

    /// The critic's raw flow at (x_t, σ), converted to x0 with the same shift-5 table that noised
    /// the samples (the consistent form).
    fn x0(&self, table: &SigmaTable, x_t: &Tensor, t: &Tensor, sigma: &Tensor) -> Tensor {
        let b = x_t.size()[0];
        let feats = Tensor::cat(&[x_t.reshape([b, 2]), sigma.reshape([b, 1])], 1);
        let v = self.net.forward(&feats).reshape(x_t.size().as_slice());
        flow_to_x0(table, x_t, &v, t)
    }
}

fn key(step: u64, lane: Lane, purpose: Purpose, sub: u64) -> RngKey {
    RngKey::new(1234, step, lane, purpose).sub(sub)
}

/// Train and return the final squared W2.
fn train(method: Method, fake: Fake, steps: u64, batch: i64) -> f64 {
    let table = SigmaTable::new(5.0);
    let (mu, sig) = (t2(MU), t22(SIGMA));
    let mut gvs = nn::VarStore::new(Device::Cpu);
    let a = gvs
        .root()
        .var_copy("A", &(Tensor::eye(2, (Kind::Float, Device::Cpu)) * 0.3));
    let bvec = gvs
        .root()
        .var_copy("b", &Tensor::zeros([2], (Kind::Float, Device::Cpu)));
    gvs.double();
    let (lr0, clr0) = (2e-2, 2e-3);
    let mut gopt = nn::Adam::default()
        .build(&gvs, lr0)
        .expect("generator Adam");
    let mut critic = match fake {
        Fake::Learned { .. } => {
            let c = Critic::new(7);
            let o = nn::Adam::default().build(&c.vs, clr0).expect("critic Adam");
            Some((c, o))
        }
        Fake::Oracle => None,
    };
    let closs = CriticLoss::with_shifts(DenoisingLossType::Flow, false, 5.0, 5.0);
    let sample_gen = |k: RngKey| {
        let z = randn(&k, &[batch, 2], Kind::Double, Device::Cpu);
        (z.matmul(&a.tr()) + &bvec).view([batch, 1, 2, 1, 1])
    };
    let draw_t = |k: RngKey| {
        let t = sample_score_timesteps(&k, batch, 1, 0, 1000, 5.0, 1000, Device::Cpu);
        let s = table.sigma_tensor(&t);
        (t, s)
    };
    let noise = |k: RngKey| randn(&k, &[batch, 1, 2, 1, 1], Kind::Double, Device::Cpu);
    // A learned critic first fits the initial generator.
    let warmup = 300;
    let critic_step = |c: &Critic, o: &mut nn::Optimizer, step: u64, sub: u64| {
        let x = tch::no_grad(|| sample_gen(key(step, Lane::Critic, Purpose::RolloutNoise, sub)));
        let (t, s) = draw_t(key(step, Lane::Critic, Purpose::ScoreTimestep, sub));
        let eps = noise(key(step, Lane::Critic, Purpose::ScoreNoise, sub));
        let x_t = add_noise(&table, &x, &eps, &t);
        let x0 = c.x0(&table, &x_t, &t, &s);
        o.zero_grad();
        o.backward_step(&closs.loss(&x, &eps, &x_t, &t, &x0));
    };
    if let (Some((c, o)), Fake::Learned { .. }) = (critic.as_mut(), fake) {
        for i in 0..warmup {
            critic_step(c, o, 0, 1000 + i);
        }
    }
    for step in 0..steps {
        // Cosine learning-rate decay lets Adam settle at the fixed point.
        let frac = step as f64 / steps as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * frac).cos());
        gopt.set_lr(lr0 * (0.02 + 0.98 * cosine));
        if let Some((_, o)) = critic.as_mut() {
            o.set_lr(clr0 * (0.1 + 0.9 * cosine));
        }
        if let (Some((c, o)), Fake::Learned { ttur }) = (critic.as_mut(), fake) {
            for j in 0..ttur {
                critic_step(c, o, step, j as u64);
            }
        }
        let x = sample_gen(key(step, Lane::Generator, Purpose::RolloutNoise, 0));
        let (t, s) = draw_t(key(step, Lane::Generator, Purpose::ScoreTimestep, 0));
        let eps = noise(key(step, Lane::Generator, Purpose::ScoreNoise, 0));
        let fake_x0 = |x_t: &Tensor| match critic.as_ref() {
            Some((c, _)) => c.x0(&table, x_t, &t, &s),
            // Oracle: exact x0-prediction of the current N(b, AAᵀ), parameters as constants.
            None => {
                let (ad, bd) = (a.detach(), bvec.detach());
                gaussian_x0(x_t, &s, &bd, &ad.matmul(&ad.tr()))
            }
        };
        let loss = match method {
            Method::Dmd => {
                let x_t = add_noise(&table, &x.detach(), &eps, &t);
                let (r, f) = tch::no_grad(|| (gaussian_x0(&x_t, &s, &mu, &sig), fake_x0(&x_t)));
                dmd_loss(&x, &r, &f).loss
            }
            Method::Sid(alpha) => {
                // x_t keeps its graph to x: the gradient flows through both scores' inputs.
                let x_t = add_noise(&table, &x, &eps, &t);
                let (r, f) = (gaussian_x0(&x_t, &s, &mu, &sig), fake_x0(&x_t));
                sid_loss(&x, &r, &f, alpha).loss
            }
        };
        // zero_grad also discards what the SiD loss left in the critic's parameters.
        gopt.zero_grad();
        if let Some((_, o)) = critic.as_mut() {
            o.zero_grad();
        }
        loss.backward();
        gopt.step();
        if std::env::var_os("B1_TRACE").is_some() && step % 100 == 99 {
            println!(
                "  {method:?} {fake:?} step {}: W2² {:.3e}",
                step + 1,
                current_w2sq(&a, &bvec).0
            );
        }
    }
    let (w2sq, bm, cov) = current_w2sq(&a, &bvec);
    let w2_init = w2_squared([0.0, 0.0], [[0.09, 0.0], [0.0, 0.09]], MU, SIGMA);
    println!(
        "{method:?} {fake:?}: W2² {w2sq:.3e} (W2 {:.3e}; initial W2² {w2_init:.3}) b {bm:?} AAᵀ {cov:?}",
        w2sq.max(0.0).sqrt()
    );
    w2sq
}

/// W2² of the generator N(b, AAᵀ) to the target, with b and AAᵀ.
fn current_w2sq(a: &Tensor, bvec: &Tensor) -> (f64, [f64; 2], M2) {
    let am = Vec::<f64>::try_from(a.detach().view([-1])).expect("A");
    let bm = Vec::<f64>::try_from(bvec.detach()).expect("b");
    let cov = [
        [am[0] * am[0] + am[1] * am[1], am[0] * am[2] + am[1] * am[3]],
        [am[2] * am[0] + am[3] * am[1], am[2] * am[2] + am[3] * am[3]],
    ];
    let bm = [bm[0], bm[1]];
    (w2_squared(bm, cov, MU, SIGMA), bm, cov)
}

#[test]
fn b1_oracle_fake_score_dmd_and_sid_converge() {
    tch::set_num_threads(1);
    for method in [
        Method::Dmd,
        Method::Sid(0.5),
        Method::Sid(1.0),
        Method::Sid(1.2),
    ] {
        let w2sq = train(method, Fake::Oracle, 500, 256);
        // Measured W2²: DMD 9e-16, SiD α=0.5 4e-14, α=1 6e-11, α=1.2 3e-9; bound W2 < 3.2e-3.
        assert!(
            w2sq < 1e-5,
            "{method:?} oracle: W2² = {w2sq:.3e} (bound 1e-5)"
        );
    }
}

#[test]
fn b1_learned_critic_dmd_and_sid_converge() {
    tch::set_num_threads(1);
    for method in [Method::Dmd, Method::Sid(1.2)] {
        let w2sq = train(method, Fake::Learned { ttur: 5 }, 600, 128);
        // The critic's approximation error sets a floor: measured W2² ≈ 9e-4 (DMD) and ≈ 4e-4
        // (SiD α = 1.2), from 2.17 at the start. Bound: W2² < 5e-3 (W2 < 0.071).
        assert!(
            w2sq < 5e-3,
            "{method:?} learned critic: W2² = {w2sq:.3e} (bound 5e-3)"
        );
    }
}
