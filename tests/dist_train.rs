//! The optimizer's data-parallel hook end to end, on CPU with Gloo, through `train` called in
//! process: two processes (this test binary re-run as each rank, with torchrun's variables) train
//! the toy DMD pipeline under the `exact` schedule (two optimizer threads per process sharing the
//! process's comm, which the worker joins itself before `train`, order checks on every
//! collective). Each rank takes its half of the global batch, so both must end where one process
//! with the double batch ends (up to float summation order), with identical weights on both
//! ranks. Ranks that start from different weights must fail clearly.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stillflow::dist::{init_process_comm, CommOptions, DistEnv, GroupOptions};

const STEPS: &str = "max_steps=7";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Runs the `worker` below on 2 ranks; `sets_all` and `sets_rank1` are extra `--set`s
/// (`;`-separated) for both ranks and for rank 1 only.
fn launch(root: &std::path::Path, sets_all: &str, sets_rank1: &str) -> Vec<(bool, String)> {
    let exe = std::env::current_exe().expect("test binary");
    let port = free_port().to_string();
    let mut kids: Vec<_> = (0..2)
        .map(|r| {
            Command::new(&exe)
                .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
                .env("SF_DIST_TRAIN_LOGDIR", root.join(format!("rank{r}")))
                .env(
                    "SF_DIST_TRAIN_SETS",
                    if r == 1 {
                        format!("{sets_all};{sets_rank1}")
                    } else {
                        sets_all.to_string()
                    },
                )
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let start = Instant::now();
    loop {
        let done = kids
            .iter_mut()
            .all(|k| k.try_wait().expect("wait").is_some());
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            for k in kids.iter_mut() {
                let _ = k.kill();
            }
            panic!("the 2-rank training run hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kids.into_iter()
        .map(|k| {
            let o = k.wait_with_output().expect("output");
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).to_string()
                    + &String::from_utf8_lossy(&o.stderr),
            )
        })
        .collect()
}

#[test]
fn two_ranks_train_like_one_process_with_the_double_batch() {
    let d = tempfile::tempdir().unwrap();
    let single = d.path().join("single");
    let mut sets = SMALL.to_vec();
    // SMALL's batch_size=2 per rank; the equivalent single process has 4 rows.
    sets.extend([STEPS, "schedule=exact", "batch_size=4"]);
    let report = run(cfg("toy_dmd", &single, &sets));
    let outs = launch(d.path(), "", "");
    for (r, (ok, out)) in outs.iter().enumerate() {
        assert!(
            *ok && out.contains("DIST-TRAIN-OK"),
            "rank {r} failed:\n{out}"
        );
    }
    // Only rank 0 writes checkpoints; the ranks hold the same replica, so rank 1's weights are
    // rank 0's (checked by GradSync's fingerprint before the first update and by the identical
    // averaged updates after it).
    assert!(
        stillflow::checkpoint::latest_checkpoint(&d.path().join("rank1"))
            .unwrap()
            .is_none()
    );
    let want = final_tensors(&single);
    let got = final_tensors(&d.path().join("rank0"));
    assert_eq!(want.len(), got.len());
    for ((na, a), (nb, b)) in want.iter().zip(&got) {
        assert_eq!(na, nb);
        let diff = (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        // Float summation order only (per-rank sums, then across ranks), grown by AdamW.
        assert!(diff < 1e-4, "{na} differs by {diff}");
    }
    assert!(series(&report, "generator_grad_norm")
        .iter()
        .any(|v| v.is_some()));
}

/// `seed: 0` is drawn on rank 0 and broadcast, and a different fixed seed on rank 1 follows rank
/// 0's: per-process seeds would build different models, which GradSync's fingerprint refuses.
#[test]
fn every_rank_takes_rank_0_s_seed() {
    let d = tempfile::tempdir().unwrap();
    for (all, one) in [("seed=0", ""), ("", "seed=4321")] {
        let outs = launch(d.path(), &format!("{all};max_steps=1"), one);
        for (r, (ok, out)) in outs.iter().enumerate() {
            assert!(*ok, "rank {r} ({all}{one}) failed:\n{out}");
        }
        let _ = std::fs::remove_dir_all(d.path().join("rank0"));
        let _ = std::fs::remove_dir_all(d.path().join("rank1"));
    }
}

/// Rank 1 starts its generator from other weights (`generator_ckpt`): both ranks must stop
/// before the first update instead of averaging the gradients of two different models.
#[test]
fn ranks_with_different_weights_stop_before_the_first_update() {
    let d = tempfile::tempdir().unwrap();
    // Other weights: the generator after one single-process step, as a `generator_ckpt` file.
    let pre = d.path().join("pre");
    let mut sets = SMALL.to_vec();
    sets.push("max_steps=1");
    run(cfg("toy_dmd", &pre, &sets));
    let init: Vec<(String, tch::Tensor)> = final_tensors(&pre)
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix("opt_g/model.").map(|k| (k.to_string(), t)))
        .collect();
    assert!(!init.is_empty());
    let file = d.path().join("init.safetensors");
    tch::Tensor::write_safetensors(&init, &file).unwrap();
    // Replicated and ZeRO-1 optimizer state alike (ZeRO-1 would otherwise stitch the shards of
    // two different models together).
    for zero in ["zero_stage=0", "zero_stage=1"] {
        let outs = launch(
            d.path(),
            zero,
            &format!("generator_ckpt='{}'", file.display()),
        );
        for (r, (ok, out)) in outs.iter().enumerate() {
            assert!(!ok, "rank {r} ({zero}) must fail:\n{out}");
            assert!(
                out.contains("the ranks start from different weights"),
                "rank {r} ({zero}):\n{out}"
            );
        }
    }
}

/// Child only (SF_DIST_TRAIN_LOGDIR set): joins the 2-rank job, then trains the toy pipeline.
#[test]
fn worker() {
    let Some(logdir) = std::env::var_os("SF_DIST_TRAIN_LOGDIR") else {
        return;
    };
    let env = DistEnv::from_env().expect("torchrun-style environment");
    let group = GroupOptions {
        store_timeout: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        ..GroupOptions::default()
    };
    let opts = CommOptions {
        check_every: 1,
        check_timeout: Duration::from_secs(30),
    };
    init_process_comm(&env, &group, opts).expect("join");
    let extra = std::env::var("SF_DIST_TRAIN_SETS").unwrap_or_default();
    let mut sets = SMALL.to_vec();
    sets.extend([STEPS, "schedule=exact"]);
    sets.extend(extra.split(';').filter(|s| !s.is_empty()));
    let cfg = cfg("toy_dmd", std::path::Path::new(&logdir), &sets);
    let r = stillflow::runtime::train(
        cfg,
        &stillflow::runtime::RunOptions {
            resume: false,
            quiet: true,
        },
    );
    match r {
        Ok(_) => println!("DIST-TRAIN-OK rank {}", env.rank),
        Err(e) => panic!("rank {} training failed: {e:#}", env.rank),
    }
}
