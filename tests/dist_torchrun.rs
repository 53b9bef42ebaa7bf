//! The real launcher on CPU: `torchrun --standalone --nproc_per_node=2 --no-python run-pipeline
//! dist-selftest`. Under torchrun the elastic agent hosts the TCPStore and every rank, rank 0
//! included, must join it as a client (TORCHELASTIC_USE_AGENT_STORE=True); the self-test then
//! runs every collective on Gloo and rank 0 prints the table.

mod common;
use common::final_tensors;
use std::path::{Path, PathBuf};
use std::process::Command;

/// torchrun from the build's virtualenv (scripts/dev-env.sh sets STILLFLOW_VENV; the checkout's
/// .venv otherwise).
fn torchrun() -> PathBuf {
    let venv = std::env::var_os("STILLFLOW_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let t = venv.join("bin/torchrun");
    assert!(
        t.exists(),
        "{} not found: the build's venv (make venv) provides torchrun",
        t.display()
    );
    t
}

#[test]
fn torchrun_two_ranks_run_the_selftest_through_the_agent_store() {
    let out = Command::new(torchrun())
        .args(["--standalone", "--nproc_per_node=2", "--no-python"])
        .arg(env!("CARGO_BIN_EXE_run-pipeline"))
        .arg("dist-selftest")
        // Gloo on CPU even where a GPU is visible; keep the binary's own order checks on.
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("STILLFLOW_DIST_CHECK_EVERY", "1")
        .output()
        .expect("run torchrun");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "torchrun failed:\n{text}");
    assert!(
        text.contains("world 2 backend Gloo")
            && text.contains("torchrun's agent store (every rank a client)")
            && text.contains("| order check catches a mismatch | ok | ok |")
            && text.contains("dist-selftest: PASS"),
        "{text}"
    );
    assert!(!text.contains("FAIL"), "{text}");
}

// ---- data-parallel training through torchrun ----

/// Per-step lines of a run's metrics.jsonl.
fn metrics(logdir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(logdir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// `a` and `b` agree to `rel` (relative) in every loss and gradient norm both log, step by step.
fn assert_losses_close(a: &[serde_json::Value], b: &[serde_json::Value], rel: f64) {
    assert_eq!(a.len(), b.len(), "different numbers of steps");
    let keys = [
        "generator_loss",
        "critic_loss",
        "generator_grad_norm",
        "critic_grad_norm",
    ];
    let mut compared = 0;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["step"], y["step"]);
        for k in keys {
            match (
                x.get(k).and_then(|v| v.as_f64()),
                y.get(k).and_then(|v| v.as_f64()),
            ) {
                (Some(u), Some(v)) => {
                    assert!(
                        (u - v).abs() <= rel * v.abs().max(1e-3),
                        "step {}: {k} {u} vs {v}",
                        x["step"]
                    );
                    compared += 1;
                }
                (None, None) => {}
                (u, v) => panic!(
                    "step {}: {k} logged in one run only ({u:?} vs {v:?})",
                    x["step"]
                ),
            }
        }
    }
    assert!(compared >= a.len(), "too few values compared: {compared}");
}

fn max_abs_diff(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta.to_kind(tch::Kind::Double) - tb.to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// The toy run as a command line (the per-process `batch_size` is set by the caller).
fn toy_args(logdir: &Path, steps: u64, batch: u64) -> Vec<String> {
    [
        "--config",
        "toy_dmd",
        "--set",
        "toy.eval_samples=16",
        "--set",
        "log_iters=4",
        "--set",
        "progress=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--set".into(),
        format!("batch_size={batch}"),
        "--steps".into(),
        steps.to_string(),
        "--logdir".into(),
        logdir.display().to_string(),
    ])
    .collect()
}

fn output_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// One process, batch 4, 8 steps (the reference); torchrun with 2 processes of batch 2 for 4
/// steps must log the same losses and reach the same weights (up to float summation order: the
/// gradients are summed per rank, then across ranks); only rank 0 writes the logdir; its step-4
/// checkpoint then resumes in one process with batch 4 and ends where the reference ends.
#[test]
fn torchrun_two_ranks_train_like_one_process_with_the_double_batch_and_resume_in_one() {
    let d = tempfile::tempdir().unwrap();
    let (single, dp) = (d.path().join("single"), d.path().join("dp"));
    let bin = env!("CARGO_BIN_EXE_run-pipeline");
    let out = Command::new(bin)
        .args(toy_args(&single, 8, 4))
        .output()
        .expect("run the single process");
    assert!(out.status.success(), "{}", output_text(&out));

    // Rank 1's actors write into a scratch folder under TMPDIR (stillflow-rank1-PID), removed at
    // the end (torchrun keeps its own files there too).
    let tmp = d.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(torchrun())
        .args(["--standalone", "--nproc_per_node=2", "--no-python", bin])
        .args(toy_args(&dp, 4, 2))
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("STILLFLOW_DIST_CHECK_EVERY", "1")
        .env("TMPDIR", &tmp)
        .output()
        .expect("run torchrun");
    let text = output_text(&out);
    assert!(out.status.success(), "torchrun failed:\n{text}");
    // Only rank 0 prints the summary and writes: one metrics line per step, the evaluator's lines
    // once, checkpoints at 4 only, and nothing left in the scratch area.
    assert_eq!(text.matches("outputs in ").count(), 1, "{text}");
    let want = metrics(&single);
    let got = metrics(&dp);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_losses_close(&got, &want[..4], 1e-5);
    // The evaluator's lines: once per generator version (0 and the last, 1), and version 0 as
    // the single process measured it (rank 1 measures other noise rows, so its lines would
    // differ and repeat versions).
    let eval = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("eval.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let same_eval = |a: &serde_json::Value, b: &serde_json::Value| {
        assert_eq!(a["generator_version"], b["generator_version"]);
        let (u, v) = (
            a["sliced_w2"].as_f64().unwrap(),
            b["sliced_w2"].as_f64().unwrap(),
        );
        assert!((u - v).abs() < 1e-4, "sliced_w2 {u} vs {v}");
    };
    let (eval_dp, eval_single) = (eval(&dp), eval(&single));
    let versions: Vec<_> = eval_dp
        .iter()
        .map(|l| l["generator_version"].clone())
        .collect();
    assert_eq!(versions, [0, 1], "{eval_dp:?}");
    same_eval(&eval_dp[0], &eval_single[0]);
    let mut names: Vec<String> = std::fs::read_dir(&dp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "checkpoints",
            "config.resolved.json",
            "eval.jsonl",
            "metrics.jsonl",
            "plots",
            "profile"
        ]
    );
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("stillflow-"))
        .collect();
    assert!(left.is_empty(), "rank 1 left {left:?}");
    let state = std::fs::read_to_string(dp.join("checkpoints/step_000004/state.json")).unwrap();
    assert!(
        state.contains("\"step\": 4") || state.contains("\"step\":4"),
        "{state}"
    );

    // Resume the 2-process checkpoint in one process with the global batch.
    let out = Command::new(bin)
        .args(toy_args(&dp, 8, 4))
        .arg("--resume")
        .output()
        .expect("resume in one process");
    assert!(out.status.success(), "{}", output_text(&out));
    assert_losses_close(&metrics(&dp), &want, 1e-5);
    same_eval(eval(&dp).last().unwrap(), eval_single.last().unwrap());
    let diff = max_abs_diff(&final_tensors(&single), &final_tensors(&dp));
    // Weights and AdamW moments: the per-step differences are float summation order (1e-7
    // relative); AdamW's division by sqrt(v) lets them grow to ~1e-5 in 8 steps at lr 1e-2.
    assert!(diff < 1e-4, "final weights differ by {diff}");

    // A per-process batch that does not match the checkpoint's global batch is refused.
    let out = Command::new(bin)
        .args(toy_args(&dp, 12, 2))
        .arg("--resume")
        .output()
        .expect("resume with the wrong batch");
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("checkpoints record the global batch"),
        "{}",
        output_text(&out)
    );
}

/// The async schedule is refused before anything connects (no peer needed).
#[test]
fn async_schedule_with_several_processes_is_a_config_error() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_run-pipeline"))
        .args(toy_args(&d.path().join("a"), 2, 2))
        .args(["--set", "schedule=async"])
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", "1")
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .expect("run");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("config key `schedule`: async is not supported with 2 processes"),
        "{text}"
    );
    assert!(!d.path().join("a").exists(), "nothing may be written");
}
