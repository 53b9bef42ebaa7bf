//! The small MLP denoiser: keyed initialisation, shapes/kinds, and that it learns the exact GMM
//! teacher's flow on a 2-D toy (flow-matching regression).

use stillflow::models::gmm::Gmm;
use stillflow::models::mlp::{timestep_embedding, Mlp, MlpConfig};
use stillflow::models::Denoiser;
use stillflow::rng::{self, Lane, Purpose, RngKey};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn key(sub: u64) -> RngKey {
    RngKey::new(3, 0, Lane::Other, Purpose::Test).sub(sub)
}

#[test]
fn keyed_init_shapes_and_embedding() {
    let cfg = MlpConfig::toy2d(4);
    let vs1 = nn::VarStore::new(Device::Cpu);
    let vs2 = nn::VarStore::new(Device::Cpu);
    let a = Mlp::new(&vs1.root(), cfg.clone(), 11);
    let b = Mlp::new(&vs2.root(), cfg.clone(), 11);
    let names: Vec<String> = {
        let mut v: Vec<String> = vs1.variables().keys().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(names.len(), 2 * (cfg.depth + 1));
    assert!(names.contains(&"layers.0.weight".to_string()));
    for n in &names {
        let (x, y) = (&vs1.variables()[n], &vs2.variables()[n]);
        assert!(x.equal(y), "{n} differs for the same seed");
    }
    // Weight bound ±1/√fan_in (fan_in of layer 0 = D + F·t_embed + text_dim = 2 + 32 + 4).
    let w0 = &vs1.variables()["layers.0.weight"];
    let bound = 1.0 / 38f64.sqrt();
    assert!(f64::try_from(w0.abs().max()).unwrap() <= bound);
    assert!(f64::try_from(w0.abs().max()).unwrap() > 0.9 * bound);
    // Shapes and kinds follow x_t.
    let x = rng::randn(&key(1), &[5, 1, 2, 1, 1], Kind::Double, Device::Cpu);
    let t = Tensor::full([5, 1], 500.0, (Kind::Float, Device::Cpu));
    let cond = Tensor::zeros([1, 3, 4], (Kind::Float, Device::Cpu));
    let v = a.flow(&x, &t, &cond);
    assert_eq!(v.size(), x.size());
    assert_eq!(v.kind(), Kind::Double);
    assert!(v.equal(&b.flow(&x, &t, &cond)));
    // Sinusoidal embedding: t = 0 gives [1…1, 0…0]; ω_0 = 1 so entry 0 is cos t.
    let e = timestep_embedding(&Tensor::from_slice(&[0.0f32, 2.0]).view([1, 2]), 8);
    let e = Vec::<f32>::try_from(e.flatten(0, -1)).unwrap();
    assert_eq!(&e[..8], &[1., 1., 1., 1., 0., 0., 0., 0.]);
    assert!((e[8] - 2f32.cos()).abs() < 1e-6 && (e[12] - 2f32.sin()).abs() < 1e-6);
}

#[test]
fn learns_the_teacher_flow_on_a_2d_toy() {
    // Flow-matching regression of the MLP onto the exact teacher's flow, conditional on class.
    // Tiny matmuls: intra-op threads only oversubscribe a shared CI machine (15× slower here).
    tch::set_num_threads(1);
    let g = Gmm::ring(4, 2.0, 0.3, 2).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let mlp = Mlp::new(
        &vs.root(),
        MlpConfig {
            hidden: 64,
            depth: 2,
            ..MlpConfig::toy2d(2)
        },
        1,
    );
    let mut opt = nn::Adam::default().build(&vs, 3e-3).unwrap();
    let b = 256i64;
    let batch = |step: u64| {
        let classes: Vec<Option<usize>> = (0..b)
            .map(|i| match (i as u64 + step) % 3 {
                0 => None,
                k => Some(k as usize - 1),
            })
            .collect();
        let cond = g.class_cond(&classes);
        let x_t = rng::randn(&key(100 + step), &[b, 1, 2, 1, 1], Kind::Float, Device::Cpu) * 1.5;
        let u = rng::uniform_vec(&key(10_000 + step), b as usize);
        let t = Tensor::from_slice(&u.iter().map(|x| (x * 1000.0) as f32).collect::<Vec<_>>())
            .view([b, 1]);
        let target = g.flow(&x_t, &t, &cond);
        (x_t, t, cond, target)
    };
    let (xe, te, ce, ve) = batch(999_999);
    let eval_loss =
        |m: &Mlp| f64::try_from((m.flow(&xe, &te, &ce) - &ve).square().mean(Kind::Float)).unwrap();
    let before = eval_loss(&mlp);
    for step in 0..300 {
        let (x_t, t, cond, target) = batch(step);
        let loss = (mlp.flow(&x_t, &t, &cond) - target)
            .square()
            .mean(Kind::Float);
        opt.backward_step(&loss);
    }
    let after = eval_loss(&mlp);
    println!("held-out flow MSE: {before:.4} → {after:.4}");
    assert!(after < 0.2 * before, "{before} → {after}");
}
