//! The optimizer's data-parallel hook end to end, on CPU with Gloo: two processes train the toy DMD
//! pipeline under the `exact` schedule (two optimizer threads per process sharing the process's
//! comm, order checks on every collective). Both ranks see the same data (the runtime does not
//! shard yet), so the mean of their gradients is their gradient and both must reproduce the
//! single-process run bit for bit. Ranks that start from different weights must fail clearly.

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

/// Runs the `worker` below on 2 ranks; `sets_rank1` are extra `--set`s for rank 1 only.
fn launch(root: &std::path::Path, sets_rank1: &str) -> Vec<(bool, String)> {
    let exe = std::env::current_exe().expect("test binary");
    let port = free_port().to_string();
    let mut kids: Vec<_> = (0..2)
        .map(|r| {
            Command::new(&exe)
                .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
                .env("SF_DIST_TRAIN_LOGDIR", root.join(format!("rank{r}")))
                .env("SF_DIST_TRAIN_SETS", if r == 1 { sets_rank1 } else { "" })
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
fn two_ranks_with_the_same_data_reproduce_the_single_process_run() {
    let d = tempfile::tempdir().unwrap();
    let single = d.path().join("single");
    let mut sets = SMALL.to_vec();
    sets.extend([STEPS, "schedule=exact"]);
    let report = run(cfg("toy_dmd", &single, &sets));
    let outs = launch(d.path(), "");
    for (r, (ok, out)) in outs.iter().enumerate() {
        assert!(
            *ok && out.contains("DIST-TRAIN-OK"),
            "rank {r} failed:\n{out}"
        );
    }
    let want = final_tensors(&single);
    for r in 0..2 {
        let got = final_tensors(&d.path().join(format!("rank{r}")));
        assert_bit_identical(&want, &got);
    }
    assert!(series(&report, "generator_grad_norm")
        .iter()
        .any(|v| v.is_some()));
}

#[test]
fn ranks_with_different_weights_stop_before_the_first_update() {
    let d = tempfile::tempdir().unwrap();
    let outs = launch(d.path(), "seed=4321");
    for (r, (ok, out)) in outs.iter().enumerate() {
        assert!(!ok, "rank {r} must fail:\n{out}");
        assert!(
            out.contains("the ranks start from different weights"),
            "rank {r}:\n{out}"
        );
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
    if !extra.is_empty() {
        sets.push(extra.as_str());
    }
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
