//! Wan2.1-1.3B benchmark (harness = false). On CUDA, bf16, latents [1,21,16,60,104]
//! (N = 32,760 tokens), random weights:
//! * bidirectional forward (no graph): median ms over WAN_BENCH_ITERS runs (default 5) after a
//!   warm-up, TFLOP/s with FLOPs = 2·P·N + 4·N²·dim·L, MFU vs 989 TFLOP/s (dense bf16 H100);
//! * forward + backward (loss = mean(out²)) with and without activation checkpointing: ms and
//!   peak allocated memory (caching allocator);
//! * the causal rollout of 7 blocks × (4 DENOISE passes + 1 CONTEXT pass): total ms.
//!
//! Prints a markdown table and writes it to $OUT/wan_bench.md when OUT is set. Without CUDA it
//! runs a tiny CPU smoke version.
//!
//!   cargo bench --bench wan_forward

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;
use stillflow::models::wan::{CausalMode, KvCache, WanConfig, WanModel};
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

/// Median wall time (ms) of `iters` synchronised runs after one warm-up run.
fn median_ms<F: FnMut()>(d: Device, iters: usize, mut f: F) -> f64 {
    f();
    sync(d);
    let mut ts: Vec<f64> = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            f();
            sync(d);
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[ts.len() / 2]
}

fn peak_gib(d: Device) -> Option<f64> {
    match d {
        Device::Cuda(i) => stillflow::cuda::memory_stats(i)
            .ok()
            .map(|s| s.peak as f64 / (1u64 << 30) as f64),
        _ => None,
    }
}

fn reset_peak(d: Device) {
    if let Device::Cuda(i) = d {
        let _ = stillflow::cuda::reset_peak(i);
    }
}

struct Row(String, String, String);

fn run(cfg: WanConfig, d: Device, kind: Kind, shape: [i64; 5], iters: usize) -> Vec<Row> {
    let (vs, mut m) = model(cfg.clone(), d, kind);
    let [b, f, _c, h, w] = shape;
    tch::manual_seed(1);
    let x = Tensor::randn(shape, (kind, d));
    let t = Tensor::full([b, f], 937.5, (Kind::Float, d));
    let cond = Tensor::randn([b, cfg.text_len, cfg.text_dim], (kind, d));
    let n = (b * f * cfg.tokens_per_frame(h, w)) as f64;
    let p = cfg.num_params() as f64;
    let flops = 2.0 * p * n + 4.0 * n * n * cfg.dim as f64 * cfg.num_layers as f64;
    let mfu = |ms: f64| {
        let tf = flops / (ms * 1e-3) / 1e12;
        format!("{tf:.0} TFLOP/s, MFU {:.1} %", 100.0 * tf / PEAK_TFLOPS)
    };
    let mut rows = vec![Row(
        "FLOPs per forward".into(),
        format!("{:.4e}", flops),
        format!("N = {n}, P = {p}"),
    )];
    let fwd = |m: &WanModel| tch::no_grad(|| m.forward(&x, &t, &cond));

    // Forward (ATen picks the SDPA kernel: cuDNN attention on H100 with torch 2.11).
    let ms = median_ms(d, iters, || {
        let _ = fwd(&m);
    });
    rows.push(Row(
        "forward (no graph)".into(),
        format!("{ms:.1} ms"),
        mfu(ms),
    ));

    // Forward + backward with and without checkpointing (parameters require grad).
    let bw_iters = iters.clamp(1, 3);
    for ckpt in [true, false] {
        m.checkpoint_blocks = ckpt;
        sync(d);
        reset_peak(d);
        let r = catch_unwind(AssertUnwindSafe(|| {
            median_ms(d, bw_iters, || {
                for (_, mut v) in vs.variables() {
                    v.zero_grad();
                }
                let out = m.forward(&x, &t, &cond);
                out.to_kind(Kind::Float)
                    .square()
                    .mean(Kind::Float)
                    .backward();
            })
        }));
        let label = format!(
            "forward+backward, checkpointing {}",
            if ckpt { "on" } else { "off" }
        );
        match r {
            Ok(ms) => rows.push(Row(
                label,
                format!("{ms:.1} ms"),
                format!(
                    "peak allocated {}; {:.0} TFLOP/s (3× forward FLOPs)",
                    peak_gib(d).map_or("n/a".into(), |g| format!("{g:.1} GiB")),
                    3.0 * flops / (ms * 1e-3) / 1e12
                ),
            )),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "panic".into());
                let first = msg
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(120)
                    .collect::<String>();
                rows.push(Row(label, "failed".into(), first));
            }
        }
        for (_, mut v) in vs.variables() {
            v.zero_grad();
        }
    }
    m.checkpoint_blocks = false;

    // Causal rollout: blocks of 3 frames, 4 DENOISE steps + 1 CONTEXT pass each.
    let nb = m.causal.num_frame_per_block;
    let blocks = f / nb;
    let roll = || {
        let mut cache = KvCache::new(cfg.num_layers as usize);
        for i in 0..blocks {
            let s = i * nb;
            let xb = x.narrow(1, s, nb);
            let tb = t.narrow(1, s, nb);
            for _ in 0..4 {
                let _ = m.forward_causal(&xb, &tb, &cond, &mut cache, s, CausalMode::DENOISE);
            }
            let tc = tb.zeros_like();
            let _ = m.forward_causal(&xb, &tc, &cond, &mut cache, s, CausalMode::CONTEXT);
        }
    };
    reset_peak(d);
    let ms = median_ms(d, iters.clamp(1, 3), roll);
    rows.push(Row(
        format!("causal rollout, {blocks} blocks × (4 DENOISE + 1 CONTEXT)"),
        format!("{ms:.1} ms"),
        format!(
            "{:.1} ms/pass; peak {}",
            ms / (blocks * 5) as f64,
            peak_gib(d).map_or("n/a".into(), |g| format!("{g:.1} GiB"))
        ),
    ));
    rows
}

fn main() {
    let iters: usize = std::env::var("WAN_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (title, rows) = if Cuda::is_available() {
        Cuda::cudnn_set_benchmark(true);
        let name = stillflow::cuda::device_description(0);
        (
            format!("Wan2.1-1.3B, bf16, [1,21,16,60,104], {name}, median of {iters}"),
            run(
                WanConfig::t2v_1_3b(),
                Device::Cuda(0),
                Kind::BFloat16,
                [1, 21, 16, 60, 104],
                iters,
            ),
        )
    } else {
        println!("wan_forward: the real benchmark needs a CUDA GPU; running a tiny CPU smoke test");
        (
            "tiny Wan on CPU (smoke test)".to_string(),
            run(
                WanConfig::tiny(32, 2, 2, 64, 4, 16),
                Device::Cpu,
                Kind::Float,
                [1, 6, 4, 4, 4],
                2,
            ),
        )
    };
    let mut md = format!("### {title}\n\n| what | time | notes |\n|---|---|---|\n");
    for Row(a, b, c) in &rows {
        md.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    println!("{md}");
    if let Ok(out) = std::env::var("OUT") {
        let p = std::path::Path::new(&out).join("wan_bench.md");
        if let Err(e) = std::fs::write(&p, &md) {
            eprintln!("could not write {}: {e}", p.display());
        }
    }
}
