//! ZeRO-1 (`zero_stage: 1`, docs/DISTRIBUTED.md) on CPU with Gloo over 127.0.0.1.
//!
//! - The engine (`dist::ZeroAdamW`) on 2 and 3 ranks with tiny buckets (many rounds, an uneven
//!   split with padding): this test binary re-runs itself as each rank (`SF_ZERO_CASE`), and
//!   every rank compares the sharded update with a replicated AdamW on the mean gradient.
//! - Training: the `run-pipeline` binary started once per rank with torchrun's variables (rank 0
//!   hosts the store), order checks on every collective. ZeRO-1 and the replicated data-parallel
//!   run of the toy DMD pipeline, 2 and 3 ranks, clipping active, a generator update at steps 0
//!   and 5, the EMA started: the same losses, gradient norms and checkpoints.
//! - Checkpoints are world-size independent: a ZeRO-1 checkpoint of 2 ranks resumes in one
//!   replicated process, a replicated one on 3 ZeRO-1 ranks, and a ZeRO-1 run resumed on the
//!   same ranks is bit-identical to the uninterrupted run.
//! - A bad `zero_stage` is a config error naming the key.

mod common;
use common::final_tensors;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use stillflow::dist::{BucketOptions, Comm, CommOptions, DistEnv, GroupOptions, ZeroAdamW};
use stillflow::optim::{grads_total_norm, AdamW, AdamWConfig};
use tch::{Device, Kind, Tensor};

const DEADLINE: Duration = Duration::from_secs(180);
const BIN: &str = env!("CARGO_BIN_EXE_run-pipeline");

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// Starts `make(rank)` for every rank of a `world`-process job on a fresh port and waits for all
/// (killing everything after the deadline: a hang is a failure). Returns (success, output) per
/// rank; the output goes through files, so a chatty rank never blocks on a full pipe.
fn ranks(world: usize, make: impl Fn(usize) -> Command) -> Vec<(bool, String)> {
    let port = free_port().to_string();
    let dir = tempfile::tempdir().expect("a folder for the ranks' output");
    let log = |r: usize| dir.path().join(format!("rank{r}.log"));
    let mut kids: Vec<Child> = (0..world)
        .map(|r| {
            let f = std::fs::File::create(log(r)).expect("a log file");
            let mut c = make(r);
            c.env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("LOCAL_WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("CUDA_VISIBLE_DEVICES", "")
                .env("STILLFLOW_DIST_CHECK_EVERY", "1")
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .env_remove("TORCHELASTIC_RESTART_COUNT")
                .env_remove("TORCHELASTIC_RUN_ID")
                .stdout(Stdio::from(f.try_clone().expect("a log file")))
                .stderr(Stdio::from(f));
            c.spawn().expect("spawn a rank")
        })
        .collect();
    let start = Instant::now();
    let mut status = vec![None; world];
    while status.iter().any(|s| s.is_none()) {
        for (i, k) in kids.iter_mut().enumerate() {
            if status[i].is_none() {
                if let Some(s) = k.try_wait().expect("wait on a rank") {
                    status[i] = Some(s.success());
                }
            }
        }
        if start.elapsed() > DEADLINE {
            for k in kids.iter_mut() {
                let _ = k.kill();
            }
            let outs: Vec<String> = (0..world)
                .map(|r| std::fs::read_to_string(log(r)).unwrap_or_default())
                .collect();
            panic!("a {world}-rank job did not finish within {DEADLINE:?} (a hang):\n{outs:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    status
        .into_iter()
        .enumerate()
        .map(|(r, s)| {
            (
                s.unwrap_or(false),
                std::fs::read_to_string(log(r)).unwrap_or_default(),
            )
        })
        .collect()
}

// ---- the engine on several ranks ----

#[test]
fn engine_on_two_ranks() {
    engine_case(2);
}

#[test]
fn engine_on_three_ranks_with_padding() {
    engine_case(3);
}

fn engine_case(world: usize) {
    let exe = std::env::current_exe().expect("test binary");
    let outs = ranks(world, |_| {
        let mut c = Command::new(&exe);
        c.args(["worker", "--exact", "--nocapture", "--test-threads=1"])
            .env("SF_ZERO_CASE", "engine");
        c
    });
    for (r, (ok, out)) in outs.iter().enumerate() {
        assert!(
            *ok && out.contains(&format!("ZERO-OK rank {r}")),
            "rank {r} of {world}:\n{out}"
        );
    }
}

/// Parameters of 15 + 7 + 12 = 34 elements (3 ranks: S = 12, 2 of padding), the same on every
/// rank.
fn params() -> Vec<(String, Tensor)> {
    [vec![5i64, 3], vec![7], vec![2, 2, 3]]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: i64 = s.iter().product();
            let t = Tensor::arange(n, (Kind::Float, Device::Cpu))
                .g_mul_scalar(0.37 + i as f64)
                .sin()
                .reshape(s.as_slice());
            (format!("p{i}"), t)
        })
        .collect()
}

/// Rank r's gradient at `step` (known to every rank, so each can form the mean itself).
fn grads_of(r: usize, step: usize, like: &[(String, Tensor)]) -> Vec<Tensor> {
    like.iter()
        .enumerate()
        .map(|(i, (_, t))| {
            let n = t.numel() as i64;
            Tensor::arange(n, (Kind::Float, Device::Cpu))
                .g_mul_scalar(1.3 + 0.7 * r as f64 + 0.11 * step as f64 + i as f64)
                .cos()
                .g_mul_scalar(3.0)
                .reshape(t.size().as_slice())
        })
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn engine(comm: &mut Comm) {
    let (rank, world) = (comm.rank(), comm.world_size());
    let cfg = AdamWConfig {
        lr: 0.05,
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let rep = params();
    let mut adam = AdamW::new(
        rep.iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
        cfg,
    )
    .unwrap();
    let sh = params();
    // 5 f32 elements per rank and round: several rounds, the last one short.
    let buckets = BucketOptions {
        bucket_bytes: 20 * world,
        ..BucketOptions::default()
    };
    let mut z = ZeroAdamW::new(&sh, world, rank, cfg, Kind::Float, &buckets).unwrap();
    let l = z.layout();
    assert_eq!(l.total(), 34);
    assert_eq!(l.padding(), if world == 3 { 2 } else { 0 });
    let clip = 4.0;
    for step in 0..4 {
        let mine = grads_of(rank, step, &rep);
        let loss = 0.25 * (rank + 1) as f64;
        let (mean_loss, norm) = z.reduce(comm, "t", false, loss, &mine).unwrap();
        let mean: Vec<Tensor> = (0..rep.len())
            .map(|i| {
                let s = (0..world)
                    .map(|r| grads_of(r, step, &rep)[i].shallow_clone())
                    .reduce(|a, b| a + b)
                    .unwrap();
                s / world as f64
            })
            .collect();
        let want_loss = (1..=world).map(|k| 0.25 * k as f64).sum::<f64>() / world as f64;
        assert!((mean_loss - want_loss).abs() < 1e-12, "{mean_loss}");
        let want = grads_total_norm(&mean).unwrap();
        assert!((norm - want).abs() < 1e-6 * want, "{norm} vs {want}");
        let coef = if norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        assert!(
            step > 0 || coef < 1.0,
            "clipping must be active: norm {norm}"
        );
        adam.step_with_grads(&mean, coef).unwrap();
        z.apply(comm, "t", coef).unwrap();
        for ((n, a), (_, b)) in rep.iter().zip(&sh) {
            let d = max_diff(a, b);
            assert!(d < 1e-6, "step {step}: rank {rank}'s `{n}` differs by {d}");
        }
    }
    // The gathered state is the replicated state, on rank 0 only; every rank takes part.
    let full = z.gather_state(comm, "t/state", rank == 0).unwrap();
    assert_eq!(full.is_some(), rank == 0);
    let st = adam.state_tensors();
    let get = |k: String| st.iter().find(|(x, _)| *x == k).unwrap().1.shallow_clone();
    if let Some(full) = full {
        assert_eq!(full.step, 4);
        for (i, (n, t)) in rep.iter().enumerate() {
            assert!(max_diff(&full.masters[i], t) < 1e-6, "{n}");
            assert!(max_diff(&full.exp_avg[i], &get(format!("exp_avg.{n}"))) < 1e-6);
            assert!(max_diff(&full.exp_avg_sq[i], &get(format!("exp_avg_sq.{n}"))) < 1e-6);
        }
    }
    // The replicated state loaded into a fresh sharded optimizer: one more step on each agrees.
    let fresh: Vec<(String, Tensor)> = params()
        .into_iter()
        .map(|(n, t)| (n, t.zeros_like()))
        .collect();
    let mut z2 = ZeroAdamW::new(&fresh, world, rank, cfg, Kind::Float, &buckets).unwrap();
    let masters: Vec<(String, Tensor)> = rep.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
    z2.load(&masters, &st).unwrap();
    let mine = grads_of(rank, 9, &rep);
    z2.reduce(comm, "t2", false, 0.0, &mine).unwrap();
    z2.apply(comm, "t2", 1.0).unwrap();
    let mean: Vec<Tensor> = (0..rep.len())
        .map(|i| {
            (0..world)
                .map(|r| grads_of(r, 9, &rep)[i].shallow_clone())
                .reduce(|a, b| a + b)
                .unwrap()
                / world as f64
        })
        .collect();
    adam.step_with_grads(&mean, 1.0).unwrap();
    for ((n, a), (_, b)) in rep.iter().zip(&fresh) {
        assert!(max_diff(a, b) < 1e-6, "after load: `{n}`");
    }
}

/// Child only (SF_ZERO_CASE set).
#[test]
fn worker() {
    let Ok(case) = std::env::var("SF_ZERO_CASE") else {
        return;
    };
    let env = DistEnv::from_env().expect("torchrun-style environment");
    tch::set_num_threads(1);
    let group = GroupOptions {
        store_timeout: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        ..GroupOptions::default()
    };
    let opts = CommOptions {
        check_every: 1,
        check_timeout: Duration::from_secs(30),
    };
    let mut comm = Comm::init(&env, &group, opts).expect("join the group");
    match case.as_str() {
        "engine" => engine(&mut comm),
        other => panic!("unknown case {other}"),
    }
    println!("ZERO-OK rank {}", env.rank);
}

// ---- training ----

/// The toy DMD run as a command line: clipping active (the gradient norms are ~1), the EMA
/// started at step 3, a checkpoint every `every` steps.
fn toy(logdir: &Path, steps: u64, batch: u64, zero: u64, every: u64) -> Vec<String> {
    [
        "--config",
        "toy_dmd",
        "--set",
        "toy.eval_samples=16",
        "--set",
        "progress=false",
        "--set",
        "max_grad_norm_generator=0.5",
        "--set",
        "max_grad_norm_critic=0.5",
        "--set",
        "ema_start_step=3",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(
        [
            format!("batch_size={batch}"),
            format!("zero_stage={zero}"),
            format!("log_iters={every}"),
        ]
        .into_iter()
        .flat_map(|s| ["--set".to_string(), s]),
    )
    .chain([
        "--steps".into(),
        steps.to_string(),
        "--logdir".into(),
        logdir.display().to_string(),
    ])
    .collect()
}

/// Trains on `world` processes (1: a plain process); returns rank 0's output.
fn train(world: usize, args: &[String], resume: bool) -> String {
    let outs = ranks(world, |_| {
        let mut c = Command::new(BIN);
        c.args(args);
        if resume {
            c.arg("--resume");
        }
        c
    });
    for (r, (ok, out)) in outs.iter().enumerate() {
        assert!(*ok, "rank {r} of {world} failed:\n{out}");
    }
    outs[0].1.clone()
}

fn metrics(logdir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(logdir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Every loss and gradient norm of `a` and `b`, step by step, within `rel` (relative).
fn assert_metrics_close(a: &Path, b: &Path, rel: f64) {
    let (a, b) = (metrics(a), metrics(b));
    assert_eq!(a.len(), b.len(), "different numbers of steps");
    let keys = [
        "generator_loss",
        "critic_loss",
        "generator_grad_norm",
        "critic_grad_norm",
    ];
    let mut clipped = 0;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["step"], y["step"]);
        for k in keys {
            let (u, v) = (
                x.get(k).and_then(|v| v.as_f64()),
                y.get(k).and_then(|v| v.as_f64()),
            );
            assert_eq!(
                u.is_some(),
                v.is_some(),
                "step {}: {k} in one run only",
                x["step"]
            );
            if let (Some(u), Some(v)) = (u, v) {
                assert!(
                    (u - v).abs() <= rel * v.abs().max(1e-3),
                    "step {}: {k} {u} vs {v}",
                    x["step"]
                );
                if k.ends_with("grad_norm") && v > 0.5 {
                    clipped += 1;
                }
            }
        }
    }
    assert!(clipped >= a.len(), "clipping was not active: {clipped}");
    assert!(
        a.iter()
            .filter(|l| l.get("generator_loss").is_some())
            .count()
            >= 2,
        "fewer than two generator updates"
    );
}

/// The newest checkpoints hold the same tensors (names, dtypes, shapes), and each group of them
/// (a part's model weights, its AdamW `exp_avg`, `exp_avg_sq`, step counts; the EMA) agrees
/// within `rel` in relative L2 distance ‖a − b‖ / ‖b‖ over the whole group. Per element the
/// differences are not small everywhere: parameters whose gradient is mathematically zero (the
/// keys and their bias in a cross-attention over one text token, the key bias of every
/// attention) get pure rounding noise as gradient, which AdamW normalises into steps of O(lr), so
/// any change in summation order moves them visibly (~1e-5 here).
fn assert_checkpoints_close(a: &Path, b: &Path, rel: f64) {
    let (a, b) = (final_tensors(a), final_tensors(b));
    assert_eq!(
        a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    assert!(
        a.iter().any(|(n, _)| n.starts_with("ema/")),
        "the EMA did not start"
    );
    let group = |n: &str| -> String {
        let (part, key) = n.split_once('/').unwrap_or(("", n));
        match key.split('.').collect::<Vec<_>>().as_slice() {
            ["adam", what, ..] => format!("{part}/adam.{what}"),
            ["model", ..] => format!("{part}/model"),
            _ => part.to_string(),
        }
    };
    let mut sums: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!((x.kind(), x.size()), (y.kind(), y.size()), "{n}");
        let (x, y) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double));
        let e = sums.entry(group(n)).or_default();
        e.0 += (&x - &y).square().sum(Kind::Double).double_value(&[]);
        e.1 += y.square().sum(Kind::Double).double_value(&[]);
    }
    assert_eq!(sums.len(), 9, "{sums:?}");
    let dist: Vec<(String, f64)> = sums
        .into_iter()
        .map(|(g, (d, s))| (g, (d / s.max(1e-300)).sqrt()))
        .collect();
    let table: Vec<String> = dist.iter().map(|(g, r)| format!("{g} {r:.2e}")).collect();
    eprintln!("relative L2 distances: {}", table.join(", "));
    for (g, r) in dist {
        assert!(r <= rel, "{g}: relative L2 distance {r:.3e} > {rel:e}");
    }
}

fn assert_bit_identical(a: &Path, b: &Path) {
    common::assert_bit_identical(&final_tensors(a), &final_tensors(b));
    let strip = |v: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        v.into_iter()
            .map(|mut l| {
                if let Some(m) = l.as_object_mut() {
                    m.retain(|k, _| k.ends_with("_loss") || k.ends_with("grad_norm"));
                }
                l
            })
            .collect()
    };
    assert_eq!(strip(metrics(a)), strip(metrics(b)));
}

/// ZeRO-1 against the replicated data-parallel run on the same ranks: the same training up to
/// the gradient norm's summation order (f64 sum of shard norms vs f32 norm of per-tensor norms)
/// and the reduce-scatter's summation order; the checkpoint has the replicated one's layout.
#[test]
fn zero1_trains_like_replicated_data_parallel_on_two_and_three_ranks() {
    let d = tempfile::tempdir().unwrap();
    for world in [2usize, 3] {
        let (rep, zero) = (
            d.path().join(format!("rep{world}")),
            d.path().join(format!("zero{world}")),
        );
        train(world, &toy(&rep, 7, 2, 0, 4), false);
        let out = train(world, &toy(&zero, 7, 2, 1, 4), false);
        // The memory line, once per optimizer, on rank 0; 3 ranks split unevenly.
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("zero_stage 1:"))
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].contains(&format!("for 1/{world} of")), "{out}");
        if world == 3 {
            assert!(!lines[0].contains(" 0 padding"), "no uneven split: {out}");
        }
        assert_metrics_close(&zero, &rep, 1e-6);
        // Observed: ≤ 4e-7 for every group but the critic's weights, 3e-6 there (its
        // zero-gradient cross-attention keys, see `assert_checkpoints_close`).
        assert_checkpoints_close(&zero, &rep, 1e-5);
    }
}

/// Checkpoints move between layouts: ZeRO-1 on 2 ranks → one replicated process, replicated
/// one process → ZeRO-1 on 3 ranks, each continuing like the uninterrupted single process (up to
/// float summation order); and ZeRO-1 resumed on the same 2 ranks is bit-identical to the
/// uninterrupted ZeRO-1 run (a checkpoint every step on resume, so the generator's state at
/// step 5 comes from the restored state, before its first update).
#[test]
fn zero1_checkpoints_resume_on_any_layout() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s);
    // Global batch 6 everywhere: 1 × 6, 2 × 3, 3 × 2.
    train(1, &toy(&p("ref"), 8, 6, 0, 4), false);
    train(2, &toy(&p("zero2"), 8, 3, 1, 4), false);

    train(2, &toy(&p("a"), 4, 3, 1, 4), false);
    copy_dir(&p("a"), &p("c"));
    train(1, &toy(&p("a"), 8, 6, 0, 4), true);
    assert_metrics_close(&p("a"), &p("ref"), 1e-5);
    // Observed ≤ 4e-6 (the critic's weights), as between any two batch layouts.
    assert_checkpoints_close(&p("a"), &p("ref"), 3e-5);

    train(1, &toy(&p("b"), 4, 6, 0, 4), false);
    train(3, &toy(&p("b"), 8, 2, 1, 1), true);
    assert_metrics_close(&p("b"), &p("ref"), 1e-5);
    assert_checkpoints_close(&p("b"), &p("ref"), 3e-5);

    train(2, &toy(&p("c"), 8, 3, 1, 1), true);
    assert_bit_identical(&p("c"), &p("zero2"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

#[test]
fn a_bad_zero_stage_is_a_config_error_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(toy(&d.path().join("x"), 2, 2, 5, 4))
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .expect("run");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("key `zero_stage`: 5: expected 0 (replicated optimizer state) or 1"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
    assert!(!d.path().join("x").exists(), "nothing may be written");
}
