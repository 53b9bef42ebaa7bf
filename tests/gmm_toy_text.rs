//! The toy text encoder: determinism, class indicators, unconditional prompts.

use stillflow::models::toy_text::{ToyTextEncoder, NEGATIVE_PROMPT};
use tch::{Kind, Tensor};

fn vals(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn deterministic_and_shaped() {
    let e = ToyTextEncoder::new(5, 4, 12);
    let p = e.prompts();
    assert_eq!(p.len(), 15);
    assert_eq!(p[0], "class 0");
    assert_eq!(p[7], "a video of class 2");
    let a = e.encode(&p);
    assert_eq!(a.size(), vec![15, 4, 12]);
    assert_eq!(a.kind(), Kind::Float);
    // Same encoder, another instance, another call: identical bits.
    let b = ToyTextEncoder::new(5, 4, 12).encode(&p);
    assert_eq!(vals(&a), vals(&b));
    // Features are prompt-specific: two phrasings of the same class differ outside the indicator
    // but share it.
    let x = e.encode(&["class 2".into(), "a video of class 2".into()]);
    let (r0, r1) = (vals(&x.get(0)), vals(&x.get(1)));
    assert_eq!(r0[..5], r1[..5]);
    assert!(r0[5..]
        .iter()
        .zip(&r1[5..])
        .any(|(u, v)| (u - v).abs() > 0.1));
    // The features look like N(0, 1) draws (mean ≈ 0, var ≈ 1 over many prompts).
    let feats: Vec<f64> = (0..200)
        .flat_map(|i| e.encode_one(&format!("prompt {i}"))[5..].to_vec())
        .map(|v| v as f64)
        .collect();
    let m = feats.iter().sum::<f64>() / feats.len() as f64;
    let v = feats.iter().map(|x| (x - m).powi(2)).sum::<f64>() / feats.len() as f64;
    assert!(m.abs() < 0.05 && (v - 1.0).abs() < 0.05, "mean {m} var {v}");
}

#[test]
fn class_indicator_and_unconditional() {
    let e = ToyTextEncoder::new(4, 3, 8);
    let prompts: Vec<String> = ["class 1", "CLASS 3 in the rain", "", "a red car", "class 7"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let c = e.encode(&prompts);
    let ind =
        Vec::<f64>::try_from(ToyTextEncoder::indicator(&c, 4).unwrap().flatten(0, -1)).unwrap();
    let expect = [
        [0., 1., 0., 0.],
        [0., 0., 0., 1.],
        [0., 0., 0., 0.],
        [0., 0., 0., 0.],
        [0., 0., 0., 0.], // class 7 is out of range: unconditional
    ];
    for (i, row) in expect.iter().enumerate() {
        assert_eq!(&ind[i * 4..i * 4 + 4], row, "prompt {:?}", prompts[i]);
    }
    // The negative (empty) prompt is all zeros, and equals `uncond`.
    assert_eq!(NEGATIVE_PROMPT, "");
    assert!(vals(&c.get(2)).iter().all(|&v| v == 0.0));
    assert_eq!(vals(&e.uncond(2)), vec![0.0; 2 * 3 * 8]);
    // Unknown text: zero indicator but non-zero features.
    assert!(vals(&c.get(3))[4..].iter().any(|&v| v != 0.0));
    // The indicator reader rejects embeddings too narrow for the classes.
    let narrow = Tensor::zeros([1, 1, 3], (Kind::Float, tch::Device::Cpu));
    let err = ToyTextEncoder::indicator(&narrow, 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("4-class"), "{err}");
}
