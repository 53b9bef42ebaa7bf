//! Wan2.1-1.3B forward benchmark (harness = false). On CUDA: the bidirectional forward on
//! [1,21,16,60,104] bf16 latents (ms, TFLOP/s with FLOPs = 2·P·N + 4·N²·dim·L, MFU vs 989
//! TFLOP/s dense bf16 H100) and the causal 7-block rollout (4 denoising steps + 1 context pass
//! per block). Without CUDA it says so and does a tiny CPU smoke run.
//!
//!   cargo bench --bench wan_forward            (WAN_BENCH_ITERS=n to change the repeat count)

use std::time::Instant;
use stillflow::models::wan::{CausalMode, KvCache, WanConfig, WanModel};
use stillflow::models::Denoiser;
use tch::nn::VarStore;
use tch::{Cuda, Device, Kind, Tensor};

const PEAK_TFLOPS: f64 = 989.0;

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        Cuda::synchronize(i as i64);
    }
}

/// Weights only need realistic magnitudes for timing: fill on the device (the keyed Wan init
/// of the library draws 1.4e9 numbers on the host, which is slow and irrelevant here).
fn model(cfg: WanConfig, d: Device, kind: Kind) -> (VarStore, WanModel) {
    let mut vs = VarStore::new(d);
    let m = WanModel::new(&vs.root(), cfg).expect("config");
    tch::manual_seed(0);
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let fan_in = if v.dim() > 1 {
                v.size()[1..].iter().product::<i64>()
            } else {
                1
            };
            let r = v.randn_like() / (fan_in as f64).sqrt();
            v.copy_(&r);
        }
    });
    vs.set_kind(kind);
    (vs, m)
}

fn time<F: FnMut()>(d: Device, iters: usize, mut f: F) -> f64 {
    f(); // warm-up (kernels, RoPE tables)
    sync(d);
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync(d);
    t0.elapsed().as_secs_f64() * 1e3 / iters as f64
}

fn run(cfg: WanConfig, d: Device, kind: Kind, shape: [i64; 5], iters: usize) {
    let (_vs, m) = model(cfg.clone(), d, kind);
    let [b, f, c, h, w] = shape;
    let x = Tensor::randn(shape, (kind, d));
    let t = Tensor::full([b, f], 937.5, (Kind::Float, d));
    let cond = Tensor::randn([b, cfg.text_len, cfg.text_dim], (kind, d));
    let _g = tch::no_grad_guard();

    let ms = time(d, iters, || {
        let _ = m.flow(&x, &t, &cond);
    });
    let n = (b * f * cfg.tokens_per_frame(h, w)) as f64;
    let p = cfg.num_params() as f64;
    let flops = 2.0 * p * n + 4.0 * n * n * cfg.dim as f64 * cfg.num_layers as f64;
    let tflops = flops / (ms * 1e-3) / 1e12;
    println!(
        "bidirectional forward {shape:?} {kind:?} on {d:?}: {ms:.1} ms, {:.1} TFLOP/step, \
         {tflops:.1} TFLOP/s, MFU {:.1}% (vs {PEAK_TFLOPS} TFLOP/s)",
        flops / 1e12,
        100.0 * tflops / PEAK_TFLOPS
    );

    // Causal rollout: blocks of 3 frames, 4 steps (no graph) + context pass each.
    let nb = m.causal.num_frame_per_block;
    let blocks = f / nb;
    let ms_roll = time(d, iters.div_ceil(4).max(1), || {
        let mut cache = KvCache::new(cfg.num_layers as usize);
        for i in 0..blocks {
            let s = i * nb;
            let xb = x.narrow(1, s, nb);
            let tb = t.narrow(1, s, nb);
            for _ in 0..4 {
                let _ = m.forward_causal(&xb, &tb, &cond, &mut cache, s, CausalMode::DENOISE);
            }
            let _ = m.forward_causal(
                &xb,
                &tb.zeros_like(),
                &cond,
                &mut cache,
                s,
                CausalMode::CONTEXT,
            );
        }
    });
    println!(
        "causal rollout {blocks} blocks × (4 steps + context) = {} passes: {ms_roll:.1} ms ({:.1} ms/pass)",
        blocks * 5,
        ms_roll / (blocks * 5) as f64
    );
    let _ = c;
}

fn main() {
    let iters: usize = std::env::var("WAN_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    if Cuda::is_available() {
        Cuda::cudnn_set_benchmark(true);
        run(
            WanConfig::t2v_1_3b(),
            Device::Cuda(0),
            Kind::BFloat16,
            [1, 21, 16, 60, 104],
            iters,
        );
    } else {
        println!("wan_forward: this benchmark needs a CUDA GPU (1.3B on [1,21,16,60,104] bf16); running a tiny CPU smoke test instead");
        run(
            WanConfig::tiny(32, 2, 2, 64, 4, 16),
            Device::Cpu,
            Kind::Float,
            [1, 6, 4, 4, 4],
            2,
        );
    }
}
