//! SIGINT / SIGTERM on a running `run-pipeline` write a checkpoint and exit 0.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn signal_test(sig: &str) {
    let d = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_run-pipeline"))
        .args([
            "--logdir",
            &d.path().display().to_string(),
            "--steps",
            "100000",
        ])
        .args([
            "--set",
            "progress=false",
            "--set",
            "batch_size=2",
            "--set",
            "toy.eval_samples=8",
            "--set",
            "log_iters=100000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run-pipeline");
    let metrics = d.path().join("metrics.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&metrics)
        .map(|s| s.lines().count())
        .unwrap_or(0)
        < 3
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "did not stop after {sig}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "exit {status:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stopped by signal"), "{stdout}");
    let ckpt = stillflow::checkpoint::latest_checkpoint(d.path())
        .unwrap()
        .expect("a checkpoint at stop");
    let parts = stillflow::checkpoint::load_checkpoint(&ckpt).unwrap();
    assert!(parts.step >= 3, "checkpoint at step {}", parts.step);
}

#[test]
fn sigint_checkpoints_and_exits_cleanly() {
    signal_test("-INT");
}

#[test]
fn sigterm_checkpoints_and_exits_cleanly() {
    signal_test("-TERM");
}
