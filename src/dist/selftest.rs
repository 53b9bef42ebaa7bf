//! `run-pipeline dist-selftest`: checks the c10d plumbing of a launch (torchrun, or a single
//! process) on the backend it would train with — NCCL on GPUs in a cuda build, Gloo otherwise —
//! and prints one table (rank 0) of every check on every rank, plus an all-reduce bandwidth line.
//! scripts/dist_gpu_check.sh runs it under torchrun on 2 GPUs.

use super::comm::{BucketOptions, Comm, CommOptions};
use super::env::DistEnv;
use super::group::{default_device, GroupOptions, ReduceOp};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

type Check = (&'static str, Result<()>);

fn expect_eq(got: Vec<f64>, want: Vec<f64>, tol: f64) -> Result<()> {
    let ok = got.len() == want.len()
        && got
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() <= tol * (1.0 + b.abs()));
    if ok {
        Ok(())
    } else {
        anyhow::bail!("got {got:?}, want {want:?}")
    }
}

fn host(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1]))
        .unwrap_or_default()
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Runs every check; Ok(true) when all passed on every rank.
pub fn run() -> Result<bool> {
    let env = DistEnv::from_env()?;
    let device = default_device(&env);
    let group = GroupOptions {
        device: Some(device),
        store_timeout: Duration::from_secs(120),
        timeout: Duration::from_secs(120),
        ..GroupOptions::default()
    };
    let opts = CommOptions {
        check_every: 1,
        check_timeout: Duration::from_secs(120),
    };
    let mut comm = Comm::init(&env, &group, opts).context("joining the process group")?;
    let backend = comm
        .group()
        .map(|g| format!("{:?}", g.backend()))
        .unwrap_or_else(|| "none (single process)".into());
    let (r, w) = (comm.rank() as f64, comm.world_size() as f64);
    let ranks: Vec<f64> = (0..comm.world_size()).map(|x| x as f64).collect();
    let sum_r: f64 = ranks.iter().sum();
    let f32d = (Kind::Float, device);
    let mut checks: Vec<Check> = vec![];

    let t = Tensor::from_slice(&[r as f32 + 1.0, -(r as f32)]).to_device(device);
    let res = comm.all_reduce("sum", &t, ReduceOp::Sum);
    checks.push((
        "all_reduce sum",
        res.and_then(|_| expect_eq(host(&t), vec![sum_r + w, -sum_r], 0.0)),
    ));

    let t = Tensor::from_slice(&[r as f32]).to_device(device);
    let res = comm.all_reduce("max", &t, ReduceOp::Max);
    checks.push((
        "all_reduce max",
        res.and_then(|_| expect_eq(host(&t), vec![w - 1.0], 0.0)),
    ));

    let root = comm.world_size() - 1;
    let t = Tensor::full([3], 7.0 + r, f32d);
    let res = comm.broadcast("bcast", &t, root);
    checks.push((
        "broadcast",
        res.and_then(|_| expect_eq(host(&t), vec![7.0 + root as f64; 3], 0.0)),
    ));

    let res = comm.broadcast_i64("draw", 100 + r as i64, 0);
    checks.push((
        "broadcast_i64",
        res.and_then(|v| expect_eq(vec![v as f64], vec![100.0], 0.0)),
    ));

    let inp = Tensor::from_slice(&[r as f32, r as f32 + 0.25]).to_device(device);
    let out = Tensor::zeros([2 * comm.world_size() as i64], f32d);
    let res = comm.all_gather("gather", &out, &inp);
    let want: Vec<f64> = ranks.iter().flat_map(|&i| [i, i + 0.25]).collect();
    checks.push((
        "all_gather",
        res.and_then(|_| expect_eq(host(&out), want, 0.0)),
    ));

    let n = 2 * comm.world_size();
    let v: Vec<f32> = (0..n).map(|j| (10.0 * r + j as f64) as f32).collect();
    let inp = Tensor::from_slice(&v).to_device(device);
    let out = Tensor::zeros([2], f32d);
    let res = comm.reduce_scatter("rs", &out, &inp, ReduceOp::Sum);
    let want: Vec<f64> = (0..2)
        .map(|k| ranks.iter().map(|&i| 10.0 * i + 2.0 * r + k as f64).sum())
        .collect();
    checks.push((
        "reduce_scatter",
        res.and_then(|_| expect_eq(host(&out), want, 0.0)),
    ));

    let a = Tensor::full([5], r + 1.0, f32d);
    let b = Tensor::full([2, 3], 2.0 * r, f32d);
    let res = comm.all_reduce_coalesced(
        "coalesced",
        &[a.shallow_clone(), b.shallow_clone()],
        ReduceOp::Sum,
    );
    checks.push((
        "all_reduce_coalesced",
        res.and_then(|_| {
            expect_eq(host(&a), vec![sum_r + w; 5], 0.0)?;
            expect_eq(host(&b), vec![2.0 * sum_r; 6], 0.0)
        }),
    ));

    // bf16 gradients, f32 reduction, several buckets: the mean of (rank + 1)·(1, 2, 3, …).
    let grads: Vec<Tensor> = [1000i64, 3, 4096, 17]
        .iter()
        .map(|&n| (Tensor::arange(n, f32d).remainder(8.0) + 1.0) * (r + 1.0))
        .map(|t| t.to_kind(Kind::BFloat16))
        .collect();
    let bopts = BucketOptions {
        bucket_bytes: 8 << 10,
        reduce_kind: Kind::Float,
    };
    let res = comm.all_reduce_mean_bucketed("grads", &grads, &bopts);
    let mean_scale = (sum_r + w) / w;
    checks.push((
        "bucketed grad mean",
        res.and_then(|_| {
            for g in &grads {
                let want = (Tensor::arange(g.numel() as i64, (Kind::Double, Device::Cpu))
                    .remainder(8.0)
                    + 1.0)
                    * mean_scale;
                expect_eq(host(g), host(&want), 1e-2)?;
            }
            Ok(())
        }),
    ));

    // The order check must refuse a mismatched collective on every rank, before NCCL sees it.
    if comm.is_distributed() {
        let t = Tensor::zeros([1], f32d);
        let res = if comm.rank() == 0 {
            comm.all_reduce("mismatch_a", &t, ReduceOp::Sum)
        } else {
            comm.broadcast("mismatch_b", &t, 0)
        };
        checks.push((
            "order check catches a mismatch",
            match res {
                Err(e) if format!("{e:#}").contains("collective order mismatch") => Ok(()),
                Err(e) => Err(e.context("wrong error")),
                Ok(()) => Err(anyhow::anyhow!("the mismatched collective ran")),
            },
        ));
    }

    checks.push(("barrier", comm.barrier("barrier")));

    // Bandwidth: 5 all-reduces of 256 MB (f32; 16 MB on CPU, where this is only a smoke test),
    // after a warm-up; bus bandwidth as nccl-tests reports it (2(W−1)/W · bytes / time).
    let mb: i64 = if device.is_cuda() { 256 } else { 16 };
    let big = Tensor::ones([mb << 18], f32d);
    let mut bw = String::from("-");
    let res = (|| -> Result<()> {
        comm.all_reduce("bw_warmup", &big, ReduceOp::Sum)?;
        sync(device);
        let iters = 5;
        let t0 = Instant::now();
        for i in 0..iters {
            comm.all_reduce(&format!("bw{i}"), &big, ReduceOp::Sum)?;
        }
        sync(device);
        let s = t0.elapsed().as_secs_f64() / iters as f64;
        let bytes = (big.numel() * 4) as f64;
        let bus = 2.0 * (w - 1.0) / w * bytes / s / 1e9;
        bw = format!(
            "{:.2} ms per {mb} MB all_reduce, bus bandwidth {bus:.1} GB/s",
            s * 1e3
        );
        Ok(())
    })();
    checks.push(("all_reduce bandwidth x5", res));

    // Gather every rank's pass/fail vector to rank 0 through the group itself.
    let mine: Vec<f32> = checks
        .iter()
        .map(|(_, r)| if r.is_ok() { 1.0 } else { 0.0 })
        .collect();
    let nchk = mine.len();
    let flags = Tensor::from_slice(&mine).to_device(device);
    let all = Tensor::zeros([(nchk * comm.world_size()) as i64], f32d);
    comm.all_gather("results", &all, &flags)?;
    let all = host(&all);
    for (name, res) in &checks {
        if let Err(e) = res {
            eprintln!("rank {}: {name} FAILED: {e:#}", comm.rank());
        }
    }
    let all_ok = all.iter().all(|&x| x == 1.0);
    if comm.rank() == 0 {
        let store = if !env.is_distributed() {
            "none"
        } else if env.use_agent_store {
            "torchrun's agent store (every rank a client)"
        } else {
            "hosted by rank 0"
        };
        println!(
            "dist-selftest: world {} backend {backend} device {device:?} ({}), store: {store}",
            comm.world_size(),
            env.describe()
        );
        let head: Vec<String> = (0..comm.world_size())
            .map(|i| format!("rank {i}"))
            .collect();
        println!("| check | {} |", head.join(" | "));
        println!("|---|{}", "---|".repeat(comm.world_size()));
        for (c, (name, _)) in checks.iter().enumerate() {
            let cells: Vec<&str> = (0..comm.world_size())
                .map(|i| {
                    if all[i * nchk + c] == 1.0 {
                        "ok"
                    } else {
                        "FAIL"
                    }
                })
                .collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
        println!("rank 0: {bw}");
        println!("dist-selftest: {}", if all_ok { "PASS" } else { "FAIL" });
    }
    Ok(all_ok)
}
