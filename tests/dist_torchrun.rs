//! The real launcher on CPU: `torchrun --standalone --nproc_per_node=2 --no-python run-pipeline
//! dist-selftest`. Under torchrun the elastic agent hosts the TCPStore and every rank, rank 0
//! included, must join it as a client (TORCHELASTIC_USE_AGENT_STORE=True); the self-test then
//! runs every collective on Gloo and rank 0 prints the table.

use std::path::PathBuf;
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
