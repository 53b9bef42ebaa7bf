//! Multi-process tests of src/dist on CPU: c10d Gloo over 127.0.0.1, 2 and 3 ranks.
//!
//! Each parent test re-runs this test binary once per rank with only the `worker` test selected and
//! the torchrun-style variables set (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
//! MASTER_PORT), plus `SF_DIST_CASE` naming what the worker does. Every assertion about values runs
//! inside the workers; the parent checks that each rank exited 0 and printed its success marker
//! (so a worker that silently did nothing cannot pass), and kills everything after a deadline, so
//! a hang is a failure, not a stuck CI.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stillflow::dist::{
    BucketOptions, Comm, CommOptions, DistEnv, GroupOptions, ProcessGroup, ReduceOp,
};
use tch::{Device, Kind, Tensor};

const DEADLINE: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

struct RankOutput {
    ok: bool,
    out: String,
}

/// Runs `case` on `world` ranks; returns each rank's exit status and combined output.
fn launch(case: &str, world: usize, extra_env: &[(&str, &str)]) -> Vec<RankOutput> {
    let exe = std::env::current_exe().expect("test binary path");
    let port = free_port().to_string();
    let mut children: Vec<Child> = (0..world)
        .map(|r| {
            let mut c = Command::new(&exe);
            c.args(["worker", "--exact", "--nocapture", "--test-threads=1"])
                .env("SF_DIST_CASE", case)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("LOCAL_WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .env_remove("TORCHELASTIC_RESTART_COUNT")
                .env_remove("TORCHELASTIC_RUN_ID")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in extra_env {
                c.env(k, v);
            }
            c.spawn().expect("spawn a rank")
        })
        .collect();
    let start = Instant::now();
    let mut status = vec![None; world];
    while status.iter().any(|s| s.is_none()) {
        for (i, ch) in children.iter_mut().enumerate() {
            if status[i].is_none() {
                if let Some(s) = ch.try_wait().expect("wait on a rank") {
                    status[i] = Some(s.success());
                }
            }
        }
        if start.elapsed() > DEADLINE {
            for ch in children.iter_mut() {
                let _ = ch.kill();
            }
            let outs: Vec<String> = children.iter_mut().map(read_all).collect();
            panic!("case `{case}` did not finish within {DEADLINE:?} (a hang):\n{outs:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    children
        .iter_mut()
        .zip(status)
        .map(|(ch, s)| RankOutput {
            ok: s.unwrap_or(false),
            out: read_all(ch),
        })
        .collect()
}

fn read_all(ch: &mut Child) -> String {
    let mut s = String::new();
    if let Some(o) = ch.stdout.as_mut() {
        let _ = o.read_to_string(&mut s);
    }
    if let Some(e) = ch.stderr.as_mut() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn assert_all_ok(case: &str, outs: &[RankOutput]) {
    for (r, o) in outs.iter().enumerate() {
        let marker = format!("DIST-OK {case} rank {r}");
        assert!(
            o.ok && o.out.contains(&marker),
            "rank {r} of `{case}` failed or did not finish its case:\n{}",
            o.out
        );
    }
}

#[test]
fn collectives_on_two_ranks() {
    assert_all_ok("collectives", &launch("collectives", 2, &[]));
}

#[test]
fn collectives_on_three_ranks() {
    assert_all_ok("collectives", &launch("collectives", 3, &[]));
}

#[test]
fn order_mismatch_is_a_clear_error_on_every_rank() {
    assert_all_ok("mismatch", &launch("mismatch", 2, &[]));
}

#[test]
fn a_rank_that_never_arrives_is_a_timeout_error_not_a_hang() {
    assert_all_ok("absent", &launch("absent", 2, &[]));
}

#[test]
fn a_half_set_environment_fails_before_connecting() {
    // WORLD_SIZE=2 without MASTER_PORT: the worker must fail on the environment, naming it.
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
        .env("SF_DIST_CASE", "bad_env")
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env_remove("MASTER_PORT")
        .output()
        .expect("run the worker");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("DIST-OK bad_env rank 0"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// The worker: runs only as a child of the tests above (SF_DIST_CASE set), a no-op otherwise.

#[test]
fn worker() {
    let Ok(case) = std::env::var("SF_DIST_CASE") else {
        return;
    };
    let env = match DistEnv::from_env() {
        Ok(e) => e,
        Err(e) => {
            assert_eq!(case, "bad_env", "unexpected environment error: {e:#}");
            let m = format!("{e:#}");
            assert!(m.contains("MASTER_PORT is not set"), "{m}");
            println!("DIST-OK bad_env rank 0");
            return;
        }
    };
    tch::set_num_threads(1);
    let group = GroupOptions {
        store_timeout: Duration::from_secs(20),
        timeout: Duration::from_secs(20),
        ..GroupOptions::default()
    };
    let check_timeout = if case == "absent" { 2 } else { 20 };
    let opts = CommOptions {
        check_every: 1,
        check_timeout: Duration::from_secs(check_timeout),
    };
    let mut comm = Comm::init(&env, &group, opts).expect("join the group");
    assert_eq!((comm.rank(), comm.world_size()), (env.rank, env.world_size));
    match case.as_str() {
        "collectives" => collectives(&mut comm),
        "mismatch" => mismatch(&mut comm),
        "absent" => absent(&mut comm),
        other => panic!("unknown case {other}"),
    }
    println!("DIST-OK {case} rank {}", env.rank);
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).expect("to vec")
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

fn collectives(comm: &mut Comm) {
    let (r, w) = (comm.rank() as f64, comm.world_size() as f64);
    let ranks: Vec<f64> = (0..comm.world_size()).map(|x| x as f64).collect();
    let opts = (Kind::Float, Device::Cpu);

    // all_reduce: sum, max, min of [r, 2r+1, -r].
    let mk = || Tensor::from_slice(&[r as f32, (2.0 * r + 1.0) as f32, -r as f32]);
    let sum_r: f64 = ranks.iter().sum();
    let t = mk();
    comm.all_reduce("sum", &t, ReduceOp::Sum).unwrap();
    assert_eq!(vec_f64(&t), vec![sum_r, 2.0 * sum_r + w, -sum_r]);
    let t = mk();
    comm.all_reduce("max", &t, ReduceOp::Max).unwrap();
    assert_eq!(vec_f64(&t), vec![w - 1.0, 2.0 * (w - 1.0) + 1.0, 0.0]);
    let t = mk();
    comm.all_reduce("min", &t, ReduceOp::Min).unwrap();
    assert_eq!(vec_f64(&t), vec![0.0, 1.0, -(w - 1.0)]);
    let t = mk();
    comm.all_reduce_mean("mean", &t).unwrap();
    assert!(close(
        &vec_f64(&t),
        &[sum_r / w, 2.0 * sum_r / w + 1.0, -sum_r / w],
        1e-6
    ));

    // broadcast from the last rank.
    let root = comm.world_size() - 1;
    let b = Tensor::full([2, 2], 10.0 + r, opts);
    comm.broadcast("bcast", &b, root).unwrap();
    assert_eq!(vec_f64(&b), vec![10.0 + root as f64; 4]);
    assert_eq!(
        comm.broadcast_i64("draw", 1000 + r as i64, 0).unwrap(),
        1000
    );

    // all_gather: rank i contributes [i, i+0.5] → the concatenation in rank order.
    let inp = Tensor::from_slice(&[r as f32, r as f32 + 0.5]);
    let out = Tensor::zeros([comm.world_size() as i64 * 2], opts);
    comm.all_gather("gather", &out, &inp).unwrap();
    let want: Vec<f64> = ranks.iter().flat_map(|&i| [i, i + 0.5]).collect();
    assert_eq!(vec_f64(&out), want);

    // reduce_scatter: rank i contributes x_i[j] = 10 i + j (j < 2W); rank r gets chunk r of Σ_i.
    let n = 2 * comm.world_size();
    let inp = Tensor::from_slice(
        &(0..n)
            .map(|j| (10.0 * r + j as f64) as f32)
            .collect::<Vec<_>>(),
    );
    let out = Tensor::zeros([2], opts);
    comm.reduce_scatter("rs", &out, &inp, ReduceOp::Sum)
        .unwrap();
    let want: Vec<f64> = (0..2)
        .map(|k| ranks.iter().map(|&i| 10.0 * i + (2.0 * r + k as f64)).sum())
        .collect();
    assert_eq!(vec_f64(&out), want);

    // allreduce_coalesced: two tensors of different shapes, one dtype.
    let a = Tensor::full([3], r + 1.0, opts);
    let c = Tensor::full([2, 2], 2.0 * r, opts);
    comm.all_reduce_coalesced(
        "coalesced",
        &[a.shallow_clone(), c.shallow_clone()],
        ReduceOp::Sum,
    )
    .unwrap();
    assert_eq!(vec_f64(&a), vec![sum_r + w; 3]);
    assert_eq!(vec_f64(&c), vec![2.0 * sum_r; 4]);

    // Bucketed gradient mean: mixed dtypes and shapes, a bucket cap that forces several buckets,
    // against the elementwise mean computed from every rank's (deterministic) gradients.
    let shapes: [&[i64]; 5] = [&[4, 3], &[7], &[2, 2, 2], &[1], &[16]];
    let kinds = [
        Kind::Float,
        Kind::Double,
        Kind::Float,
        Kind::Float,
        Kind::BFloat16,
    ];
    let grad_of = |rank: f64, i: usize| -> Tensor {
        let n: i64 = shapes[i].iter().product();
        (Tensor::arange(n, (Kind::Double, Device::Cpu)) * (i as f64 + 1.0) + rank * 3.0 - 1.0)
            .to_kind(kinds[i])
            .reshape(shapes[i])
    };
    let grads: Vec<Tensor> = (0..shapes.len()).map(|i| grad_of(r, i)).collect();
    let bopts = BucketOptions {
        bucket_bytes: 40, // 10 f32 values: buckets {12}, {7}, {8, 1}, {16}
        reduce_kind: Kind::Float,
    };
    comm.all_reduce_mean_bucketed("grads", &grads, &bopts)
        .unwrap();
    for (i, g) in grads.iter().enumerate() {
        assert_eq!(g.kind(), kinds[i], "dtype kept");
        assert_eq!(g.size(), shapes[i].to_vec(), "shape kept");
        let mean = ranks
            .iter()
            .map(|&k| grad_of(k, i).to_kind(Kind::Double))
            .fold(
                Tensor::zeros(shapes[i], (Kind::Double, Device::Cpu)),
                |acc, x| acc + x,
            )
            / w;
        let tol = if kinds[i] == Kind::BFloat16 {
            1e-2
        } else {
            1e-6
        };
        assert!(
            close(&vec_f64(g), &vec_f64(&mean), tol),
            "grad {i}: {g} vs {mean}"
        );
    }

    comm.barrier("end").unwrap();
    // Every call above went through the comm layer in the same order on every rank.
    assert_eq!(comm.seq(), 9 + 4 + 1);
}

fn mismatch(comm: &mut Comm) {
    let t = Tensor::from_slice(&[1.0f32, 2.0]);
    comm.all_reduce("warmup", &t, ReduceOp::Sum).unwrap();
    // Rank 0 all-reduces `grads`, the others broadcast `exit_step`: both sides must refuse to
    // issue the collective and name what each rank does.
    let err = if comm.rank() == 0 {
        comm.all_reduce("grads", &t, ReduceOp::Sum)
    } else {
        comm.broadcast("exit_step", &t, 0)
    }
    .expect_err("a mismatched collective must fail");
    let m = format!("{err:#}");
    println!("rank {} got: {m}", comm.rank());
    assert!(m.contains("collective order mismatch"), "{m}");
    assert!(
        m.contains("all_reduce `grads`") && m.contains("broadcast `exit_step`"),
        "{m}"
    );
    assert!(m.contains("#2"), "the message names the position: {m}");
}

fn absent(comm: &mut Comm) {
    let t = Tensor::from_slice(&[1.0f32]);
    comm.all_reduce("first", &t, ReduceOp::Sum).unwrap();
    if comm.rank() == 0 {
        // Rank 1 leaves without a second collective: rank 0 must get an error within the check
        // timeout (2 s), not hang.
        let start = Instant::now();
        let err = comm
            .all_reduce("second", &t, ReduceOp::Sum)
            .expect_err("peer is gone");
        let m = format!("{err:#}");
        println!("rank 0 got: {m}");
        assert!(m.contains("rank 1 did not reach"), "{m}");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn process_group_rejects_wrong_devices_and_sizes_without_peers() {
    // A world of one still builds a real Gloo group (this process hosts the store).
    let env = DistEnv {
        world_size: 1,
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        ..DistEnv::single()
    };
    let pg = ProcessGroup::from_env(&env, &GroupOptions::default()).expect("world-1 group");
    let t = Tensor::from_slice(&[1.0f32, 2.0]);
    pg.all_reduce(&t, ReduceOp::Sum).unwrap().wait().unwrap();
    assert_eq!(vec_f64(&t), vec![1.0, 2.0]);
    let strided = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)).transpose(0, 1);
    let e = format!(
        "{:#}",
        pg.all_reduce(&strided, ReduceOp::Sum)
            .err()
            .expect("non-contiguous")
    );
    assert!(e.contains("not contiguous"), "{e}");
    let out = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let e = format!(
        "{:#}",
        pg.all_gather_into(&out, &t).err().expect("size mismatch")
    );
    assert!(e.contains("want world (1) × 2 = 2"), "{e}");
    pg.store().set("k", b"v").unwrap();
    assert_eq!(pg.store().get("k", None).unwrap(), b"v".to_vec());
    assert_eq!(pg.store().add("n", 2).unwrap(), 2);
    assert!(pg.store().delete("k").unwrap());
    let e = format!(
        "{:#}",
        pg.store()
            .get("missing", Some(Duration::from_millis(200)))
            .unwrap_err()
    );
    assert!(e.contains("store get `missing`"), "{e}");
}
