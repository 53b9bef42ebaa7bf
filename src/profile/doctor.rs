//! `run-pipeline doctor`: what libtorch this binary loaded, which devices it sees, and whether a
//! bf16 matmul on each agrees with an f32 reference.

use crate::rng::{self, Lane, Purpose, RngKey};
use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind};

/// The libtorch shared library this process actually loaded (from /proc/self/maps).
fn loaded_libtorch() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("libtorch_cpu.so"))
        .map(str::to_string)
}

/// Version of the torch package next to a `.../torch/lib/libtorch_cpu.so` path.
fn torch_version_near(lib: &str) -> Option<String> {
    let root = std::path::Path::new(lib).parent()?.parent()?;
    let text = std::fs::read_to_string(root.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
}

/// bf16 matmul of n×n keyed-random matrices against the f32 product: (max relative error, GFLOP/s).
pub fn bf16_check(device: Device, n: i64) -> (f64, f64) {
    let k = RngKey::new(1, 0, Lane::Other, Purpose::Test);
    let a = rng::randn(&k, &[n, n], Kind::Float, device);
    let b = rng::randn(&k.sub(1), &[n, n], Kind::Float, device);
    let reference = a.matmul(&b);
    let (ab, bb) = (a.to_kind(Kind::BFloat16), b.to_kind(Kind::BFloat16));
    let got = ab.matmul(&bb).to_kind(Kind::Float);
    let scale = reference.abs().max().double_value(&[]).max(1e-12);
    let err = (&got - &reference).abs().max().double_value(&[]) / scale;
    // Throughput: a few timed repetitions after a warm-up.
    let _ = ab.matmul(&bb);
    sync(device);
    let reps = if device.is_cuda() { 20 } else { 2 };
    let t0 = Instant::now();
    for _ in 0..reps {
        let _ = ab.matmul(&bb);
    }
    sync(device);
    let secs = t0.elapsed().as_secs_f64();
    let flops = 2.0 * (n as f64).powi(3) * reps as f64;
    (err, flops / secs / 1e9)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn run() -> Result<()> {
    println!(
        "stillflow {} (tch 0.24.0, built against libtorch {})",
        env!("CARGO_PKG_VERSION"),
        env!("STILLFLOW_TORCH_VERSION")
    );
    match loaded_libtorch() {
        Some(p) => println!(
            "loaded libtorch: {p} (torch {})",
            torch_version_near(&p).unwrap_or_else(|| "version unknown".into())
        ),
        None => println!("loaded libtorch: (not found in /proc/self/maps)"),
    }
    println!(
        "cuda feature: {}",
        if cfg!(feature = "cuda") { "on" } else { "off" }
    );
    let cuda = tch::Cuda::is_available();
    let n_dev = tch::Cuda::device_count();
    println!(
        "CUDA available: {cuda}; devices: {n_dev}; cuDNN: {}",
        tch::Cuda::cudnn_is_available()
    );
    for i in 0..n_dev {
        println!(
            "  cuda:{i}: {}",
            crate::cuda::device_description(i as usize)
        );
    }
    let (err, gflops) = bf16_check(Device::Cpu, 256);
    println!("cpu   bf16 matmul 256²: max rel err vs f32 {err:.2e} ({gflops:.1} GFLOP/s)");
    anyhow::ensure!(err < 2e-2, "bf16 matmul on cpu disagrees with f32: {err}");
    for i in 0..n_dev {
        let d = Device::Cuda(i as usize);
        let (err, _) = bf16_check(d, 1024);
        let (_, gflops) = bf16_check(d, 8192);
        println!(
            "cuda:{i} bf16 matmul 1024²: max rel err vs f32 {err:.2e}; 8192² throughput {:.1} TFLOP/s",
            gflops / 1e3
        );
        anyhow::ensure!(
            err < 2e-2,
            "bf16 matmul on cuda:{i} disagrees with f32: {err}"
        );
    }
    println!("doctor: ok");
    Ok(())
}
