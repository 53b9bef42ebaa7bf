//! Checkpoints: bit-exact round trip, keep-K, crash safety (staged-but-not-renamed, and a child
//! process killed with SIGKILL in the middle of writing), and every bad input named in the error.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use stillflow::checkpoint::{
    check_config, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint,
    stage_checkpoint, CheckpointParts,
};
use tch::{Device, Kind, Tensor};

fn config() -> Value {
    json!({"lr": 2e-6, "beta1": 0.0, "seed": 7, "logdir": "/x", "max_steps": 100,
           "model_kwargs": {"timestep_shift": 5.0}, "denoising_step_list": [1000, 750, 500, 250]})
}

fn raw_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut v = vec![0u8; n];
    t.copy_data_u8(&mut v, t.numel());
    v
}

fn parts(step: u64, salt: f64) -> CheckpointParts {
    let opt = Device::Cpu;
    let w = (Tensor::arange(24, (Kind::Float, opt)).reshape([2, 3, 4]) * 0.37 + salt).sin();
    // Special values must survive bit for bit.
    let _ = w.get(0).get(0).get(0).fill_(f64::NAN);
    let _ = w.get(0).get(0).get(1).fill_(-0.0);
    let _ = w.get(0).get(0).get(2).fill_(f64::INFINITY);
    let bias = Tensor::from_slice(&[1.5f32, -2.25]);
    let half = (Tensor::arange(5, (Kind::Float, opt)) / 3.0 + salt).to_kind(Kind::BFloat16);
    CheckpointParts::new(
        step,
        config(),
        json!({"versions": {"generator": step / 5, "critic": step}, "seed": 7}),
    )
    .with_part(
        "generator",
        vec![
            ("model.blocks.0.w".into(), w.shallow_clone()),
            ("model.bias".into(), bias),
        ],
    )
    .with_part("critic", vec![("model.x".into(), half)])
    .with_part(
        "optimizer_generator",
        vec![
            ("exp_avg.model.blocks.0.w".into(), w.abs()),
            ("step.model.blocks.0.w".into(), Tensor::from(step as i64)),
        ],
    )
}

fn assert_same(a: &CheckpointParts, b: &CheckpointParts) {
    assert_eq!(a.step, b.step);
    assert_eq!(a.state, b.state);
    assert_eq!(a.config, b.config);
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (part, ta) in &a.tensors {
        let mut ta: Vec<_> = ta.iter().collect();
        ta.sort_by(|x, y| x.0.cmp(&y.0));
        let tb = &b.tensors[part];
        assert_eq!(ta.len(), tb.len(), "{part}");
        for ((na, xa), (nb, xb)) in ta.iter().zip(tb) {
            assert_eq!(na, nb);
            assert_eq!(xa.kind(), xb.kind(), "{part}/{na}");
            assert_eq!(xa.size(), xb.size(), "{part}/{na}");
            assert_eq!(raw_bytes(xa), raw_bytes(xb), "{part}/{na} bytes");
        }
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn round_trip_is_bit_exact() {
    let d = tmp();
    let p = parts(150, 0.0);
    let dir = save_checkpoint(d.path(), &p, 3).unwrap();
    assert_eq!(dir, d.path().join("checkpoints/step_000150"));
    assert!(dir.join("generator.safetensors").is_file() && dir.join("state.json").is_file());
    let back = load_checkpoint(&dir).unwrap();
    assert_same(&p, &back);
    let g = &back.part("generator").unwrap()[1].1; // sorted: model.bias, model.blocks.0.w
    assert!(g.isnan().any().int64_value(&[]) == 1 && g.isinf().any().int64_value(&[]) == 1);
    assert_eq!(
        back.part("optimizer_generator").unwrap()[1].1.size(),
        Vec::<i64>::new()
    );
    assert!(back
        .require_part("generator_ema")
        .unwrap_err()
        .to_string()
        .contains("no part `generator_ema`"));
    // The same config (volatile keys aside) passes; another one names the differing keys.
    let mut same = config();
    same["logdir"] = json!("/elsewhere");
    same["max_steps"] = json!(5000);
    check_config(&back, &same).unwrap();
    let mut other = config();
    other["lr"] = json!(3e-6);
    other["model_kwargs"]["timestep_shift"] = json!(8.0);
    let e = check_config(&back, &other).unwrap_err().to_string();
    assert!(e.contains("`lr`: checkpoint 2e-6, now 3e-6"), "{e}");
    assert!(
        e.contains("`model_kwargs.timestep_shift`: checkpoint 5.0, now 8.0"),
        "{e}"
    );
    assert!(!e.contains("max_steps"), "{e}");
}

#[test]
fn keeps_last_k_and_finds_latest() {
    let d = tmp();
    assert!(latest_checkpoint(d.path()).unwrap().is_none());
    for s in [50u64, 100, 150, 200, 250] {
        save_checkpoint(d.path(), &parts(s, s as f64), 3).unwrap();
    }
    let steps: Vec<u64> = list_checkpoints(d.path())
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, [150, 200, 250]);
    let latest = latest_checkpoint(d.path()).unwrap().unwrap();
    assert_eq!(latest, d.path().join("checkpoints/step_000250"));
    assert_same(&parts(250, 250.0), &load_checkpoint(&latest).unwrap());
    // Steps past 999999 still sort numerically.
    save_checkpoint(d.path(), &parts(1_000_000, 1.0), 0).unwrap();
    assert!(latest_checkpoint(d.path())
        .unwrap()
        .unwrap()
        .ends_with("step_1000000"));
    // Never overwrite.
    let e = save_checkpoint(d.path(), &parts(250, 9.0), 3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("step_000250") && e.contains("refusing to overwrite"),
        "{e}"
    );
    assert_same(
        &parts(250, 250.0),
        &load_checkpoint(&d.path().join("checkpoints/step_000250")).unwrap(),
    );
}

#[test]
fn staged_but_not_renamed_is_invisible_and_cleaned() {
    let d = tmp();
    save_checkpoint(d.path(), &parts(100, 1.0), 2).unwrap();
    let staged = stage_checkpoint(d.path(), &parts(150, 2.0)).unwrap(); // "crash" before rename
    assert!(staged.join("state.json").is_file());
    let latest = latest_checkpoint(d.path()).unwrap().unwrap();
    assert!(latest.ends_with("step_000100"));
    assert_same(&parts(100, 1.0), &load_checkpoint(&latest).unwrap());
    // A truncated leftover too.
    let junk = d.path().join("checkpoints/.tmp-step_000175-1");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("generator.safetensors"), b"\x10\x00").unwrap();
    save_checkpoint(d.path(), &parts(200, 3.0), 2).unwrap();
    assert!(
        !staged.exists() && !junk.exists(),
        "leftovers removed by the next save"
    );
    let names: Vec<String> = std::fs::read_dir(d.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["step_000100", "step_000200"]);
}

const CHILD_ENV: &str = "STILLFLOW_CKPT_SIGKILL_CHILD";

/// The child half of the SIGKILL test: saves big checkpoints in a loop until killed.
fn child_loop(logdir: &Path) {
    let big = (Tensor::arange(6_000_000, (Kind::Float, Device::Cpu)) * 1e-3).sin();
    for s in 2..200u64 {
        let p = CheckpointParts::new(s, config(), json!({}))
            .with_part("generator", vec![("w".into(), &big + s as f64)])
            .with_part("critic", vec![("w".into(), &big - s as f64)]);
        save_checkpoint(logdir, &p, 0).unwrap();
    }
}

fn tmp_dirs(ck: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(ck)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigkill_mid_write_leaves_previous_intact() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child_loop(Path::new(&dir));
        return;
    }
    let d = tmp();
    let first = parts(1, 0.5);
    save_checkpoint(d.path(), &first, 0).unwrap();
    let ck = d.path().join("checkpoints");
    let mut kills_mid_write = 0;
    // Kill at several points: right after a temp dir appears, and after partial files exist.
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "sigkill_mid_write_leaves_previous_intact",
                "--exact",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, d.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        loop {
            let tmps = tmp_dirs(&ck);
            let partial = tmps.iter().any(|t| {
                if round == 0 {
                    true
                } else {
                    t.join("generator.safetensors").exists()
                }
            });
            if partial {
                child.kill().unwrap(); // SIGKILL
                kills_mid_write += 1;
                break;
            }
            assert!(t0.elapsed().as_secs() < 60, "child never started a save");
            if let Some(st) = child.try_wait().unwrap() {
                panic!("child exited early: {st}");
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        child.wait().unwrap();
        // Whatever the child finished is complete; the first checkpoint is untouched.
        assert_same(&first, &load_checkpoint(&ck.join("step_000001")).unwrap());
        for (_, p) in list_checkpoints(d.path()).unwrap() {
            load_checkpoint(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        }
        let latest = latest_checkpoint(d.path()).unwrap().unwrap();
        load_checkpoint(&latest).unwrap();
        // Next save (by a fresh process, as the resumed run) cleans the leftovers.
        assert!(!tmp_dirs(&ck).is_empty(), "the kill landed mid-write");
        let next = list_checkpoints(d.path()).unwrap().last().unwrap().0 + 1000;
        save_checkpoint(d.path(), &parts(next, 0.0), 0).unwrap();
        assert!(tmp_dirs(&ck).is_empty());
    }
    assert_eq!(kills_mid_write, 3);
}
