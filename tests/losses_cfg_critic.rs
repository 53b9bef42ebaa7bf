//! B0 tests of classifier-free guidance (convention, batched == two calls) and of the critic's
//! denoising loss (consistent form, the reference's σ quirk, x0 target).

use std::cell::Cell;
use stillflow::diffusion::{add_noise, flow_to_x0, SigmaTable};
use stillflow::losses::{
    apply_cfg, cfg_batched, cfg_two_calls, flow_pred_loss, CriticLoss, DenoisingLossType,
};
use stillflow::rng::{randn, Lane, Purpose, RngKey};
use tch::{Device, Kind, Tensor};

fn rn(seed: u64, shape: &[i64], kind: Kind) -> Tensor {
    randn(
        &RngKey::new(seed, 0, Lane::Other, Purpose::Test),
        shape,
        kind,
        Device::Cpu,
    )
}

/// A toy x0 predictor whose rows are independent: it mixes x_t, t and a reduction of the text
/// embedding with non-linear, element-wise operations.
fn toy_score(calls: &Cell<usize>) -> impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor + '_ {
    move |x_t: &Tensor, t: &Tensor, cond: &Tensor| {
        calls.set(calls.get() + 1);
        let b = x_t.size()[0];
        let f = x_t.size()[1];
        let tt = (t / 1000.0).view([b, f, 1, 1, 1]);
        let c = cond
            .tanh()
            .mean_dim(&[1i64, 2][..], false, None)
            .view([b, 1, 1, 1, 1]);
        (x_t * (tt.ones_like() - &tt)).sin() + c * x_t.cos() + &tt
    }
}

#[test]
fn cfg_batched_equals_two_calls_bit_for_bit() {
    for kind in [Kind::Float, Kind::BFloat16, Kind::Double] {
        let shape = [3i64, 2, 4, 3, 5];
        let x_t = rn(1, &shape, kind);
        let t = Tensor::from_slice(&[20.0f32, 20.0, 500.0, 500.0, 980.0, 980.0])
            .view([3, 2])
            .to_kind(kind);
        let cond = rn(2, &[3, 7, 6], kind);
        let uncond = rn(3, &[3, 7, 6], kind);
        let calls = Cell::new(0);
        let f = toy_score(&calls);
        for g in [3.0, 1.5, -0.5] {
            calls.set(0);
            let a = cfg_two_calls(&f, &x_t, &t, &cond, &uncond, g);
            assert_eq!(calls.get(), 2);
            let b = cfg_batched(&f, &x_t, &t, &cond, &uncond, g);
            assert_eq!(calls.get(), 3, "batched form must call the score once");
            assert!(a.equal(&b), "{kind:?} g {g}: batched != two calls");
            assert_eq!(a.kind(), kind);
        }
        // A batch-1 unconditional embedding (negative prompt) is broadcast in both forms.
        let u1 = rn(4, &[1, 7, 6], kind);
        let a = cfg_two_calls(&f, &x_t, &t, &cond, &u1, 3.0);
        let b = cfg_batched(&f, &x_t, &t, &cond, &u1, 3.0);
        assert!(a.equal(&b));
    }
}

#[test]
fn cfg_convention_is_ho_salimans_with_w_equal_g_plus_one() {
    let shape = [2i64, 1, 3, 2, 2];
    let x_t = rn(1, &shape, Kind::Double);
    let t = Tensor::from_slice(&[100.0f64, 700.0]).view([2, 1]);
    let cond = rn(2, &[2, 4, 3], Kind::Double);
    let uncond = rn(3, &[2, 4, 3], Kind::Double);
    let calls = Cell::new(0);
    let f = toy_score(&calls);
    let r_c = f(&x_t, &t, &cond);
    let r_u = f(&x_t, &t, &uncond);
    let g = 3.0;
    let r = cfg_two_calls(&f, &x_t, &t, &cond, &uncond, g);
    // Ho–Salimans: r_u + w (r_c − r_u) with w = g + 1 = 4.
    let hs = &r_u + (&r_c - &r_u) * (g + 1.0);
    assert!(r.allclose(&hs, 1e-12, 1e-12, false));
    // And it is the reference's expression r_c + (r_c − r_u)·g exactly.
    assert!(r.equal(&apply_cfg(&r_c, &r_u, g)));
    // g = 0: the conditional prediction, without evaluating the unconditional branch.
    calls.set(0);
    let r0 = cfg_two_calls(&f, &x_t, &t, &cond, &uncond, 0.0);
    assert_eq!(calls.get(), 1);
    assert!(r0.equal(&r_c));
    let r0b = cfg_batched(&f, &x_t, &t, &cond, &uncond, 0.0);
    assert!(r0b.equal(&r_c));
}

#[test]
fn critic_loss_consistent_form_quirk_and_x0_target() {
    let (s5, s8) = (SigmaTable::new(5.0), SigmaTable::new(8.0));
    let shape = [3i64, 2, 4, 2, 2];
    let x = rn(1, &shape, Kind::Double);
    let eps = rn(2, &shape, Kind::Double);
    let t = Tensor::from_slice(&[20.0f32, 20.0, 50.0, 50.0, 500.0, 500.0]).view([3, 2]);
    let x_t = add_noise(&s5, &x, &eps, &t);
    // The critic's raw flow, with a graph into a "parameter"; its wrapper makes x0 with shift 8.
    let v_raw = rn(3, &shape, Kind::Double).set_requires_grad(true);
    let critic_x0 = flow_to_x0(&s8, &x_t, &v_raw, &t);

    let consistent = CriticLoss::new(DenoisingLossType::Flow, false);
    assert_eq!(consistent.conversion_table().shift, 8.0);
    let l = consistent.loss(&x, &eps, &x_t, &t, &critic_x0);
    let want = flow_pred_loss(&v_raw, &x, &eps);
    assert!((l.double_value(&[]) - want.double_value(&[])).abs() < 1e-10);
    let want_manual = (&v_raw - (&eps - &x)).square().mean(Kind::Double);
    assert!(want.allclose(&want_manual, 0.0, 0.0, false));
    // Gradient reaches the critic: ∂L/∂v = 2(v − (ε − x))/N.
    l.backward();
    let g_want = (&v_raw.detach() - (&eps - &x)) * (2.0 / v_raw.numel() as f64);
    assert!(v_raw.grad().allclose(&g_want, 1e-9, 1e-12, false));

    // Reference quirk: the flow seen by the loss is v_raw·σ8(t)/σ5(t).
    let quirk = CriticLoss::new(DenoisingLossType::Flow, true);
    assert_eq!(quirk.conversion_table().shift, 5.0);
    let lq = quirk.loss(&x, &eps, &x_t, &t, &critic_x0.detach());
    let ratio = (s8.sigma_tensor(&t) / s5.sigma_tensor(&t)).view([3, 2, 1, 1, 1]);
    let vq = v_raw.detach() * &ratio;
    let want_q = flow_pred_loss(&vq, &x, &eps).double_value(&[]);
    assert!((lq.double_value(&[]) - want_q).abs() < 1e-10);
    assert!((lq.double_value(&[]) - l.double_value(&[])).abs() > 1e-2);
    let r = Vec::<f64>::try_from(ratio.view([-1])).unwrap();
    assert!(
        (r[0] - 1.194).abs() < 0.005 && (r[2] - 1.11).abs() < 0.01,
        "{r:?}"
    );
    assert!((r[4] - 1.0).abs() < 0.01, "{r:?}");

    // x0 target: mean((x0_f − x)²).
    let lx = CriticLoss::new(DenoisingLossType::X0, false).loss(&x, &eps, &x_t, &t, &critic_x0);
    let want_x = (&critic_x0 - &x).square().mean(Kind::Double);
    assert!(lx.allclose(&want_x, 0.0, 0.0, false));

    assert_eq!(
        "flow".parse::<DenoisingLossType>().unwrap(),
        DenoisingLossType::Flow
    );
    assert_eq!(
        "x0".parse::<DenoisingLossType>().unwrap(),
        DenoisingLossType::X0
    );
    assert!("eps".parse::<DenoisingLossType>().is_err());
}
