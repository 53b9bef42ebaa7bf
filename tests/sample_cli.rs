//! `run-pipeline sample` end to end: a tiny toy run is trained once through the binary, then
//! sampled: files and shapes, determinism (same seed → same bytes; sample k the same, up to
//! float rounding, whatever N and the batch size), different seeds differ, `--use-ema` (and its
//! clear error before the EMA exists), `--prompt`, the default output folder, and bad
//! checkpoints failing cleanly.
//! The run's plots (`plots/*.png`) are checked here too, since it is a real run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use tch::{Kind, Tensor};

const BIN: &str = env!("CARGO_BIN_EXE_run-pipeline");

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars() {
        if k.starts_with("STILLFLOW__") {
            c.env_remove(k);
        }
    }
    c
}

fn run(args: &[&str]) -> Output {
    cmd(args).output().expect("spawn run-pipeline")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{args:?} failed:\n{out}\n{err}");
    out
}

/// Runs `args`, expects exit != 0 without a panic and stderr containing every needle.
fn fails(args: &[&str], needles: &[&str]) {
    let o = run(args);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{args:?} should fail:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
    }
}

/// An 11-step toy DMD run (checkpoints at steps 3, 6, 9 and 11; generator updates at steps 0, 5
/// and 10; the EMA starts from version 2, made at step 5), trained once per test process.
fn trained() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sample_cli");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let logdir = root.join("run");
        let l = logdir.to_str().unwrap();
        ok(&[
            "--steps",
            "11",
            "--logdir",
            l,
            "--set",
            "batch_size=2",
            "--set",
            "toy.eval_samples=16",
            "--set",
            "log_iters=3",
            "--set",
            "ema_start_step=6",
            "--set",
            "progress=false",
            "--set",
            "keep_checkpoints=0",
        ]);
        logdir
    })
}

fn ckpt(step: u64) -> PathBuf {
    trained().join(format!("checkpoints/step_{step:06}"))
}

fn out_dir(name: &str) -> PathBuf {
    trained().parent().unwrap().join(name)
}

fn sample(name: &str, extra: &[&str]) -> (PathBuf, String) {
    let out = out_dir(name);
    let c = trained().to_str().unwrap().to_string();
    let o = out.to_str().unwrap().to_string();
    let mut args = vec!["sample", "--checkpoint", &c, "--out", &o];
    args.extend(extra);
    let stdout = ok(&args);
    (out, stdout)
}

fn load(dir: &Path) -> (Tensor, Tensor) {
    let t = Tensor::read_safetensors(dir.join("samples.safetensors")).expect("read samples");
    let get = |k: &str| t.iter().find(|(n, _)| n == k).expect(k).1.shallow_clone();
    (get("latents"), get("prompt_ids"))
}

fn ids(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

#[test]
fn writes_latents_pictures_and_quality() {
    let (out, stdout) = sample("basic", &["--num-samples", "10", "--seed", "7"]);
    let (x, p) = load(&out);
    // toy_dmd: 4 training frames, latents [C, H, W] = [4, 2, 2]
    assert_eq!(x.size(), vec![10, 4, 4, 2, 2]);
    assert_eq!(x.kind(), Kind::Float);
    assert_eq!(ids(&p), (0..10).map(|i| i % 8).collect::<Vec<i64>>());
    assert!(f64::try_from(x.isfinite().all()).unwrap() == 1.0);
    assert!(f64::try_from(x.std(true)).unwrap() > 0.01, "not constant");
    let png = std::fs::read(out.join("grid.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let gif = std::fs::read(out.join("frames.gif")).unwrap();
    assert_eq!(&gif[..6], b"GIF89a");
    // One GIF frame per latent frame.
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut dec = opts.read_info(std::io::Cursor::new(gif)).unwrap();
    let mut frames = 0;
    while dec.read_next_frame().unwrap().is_some() {
        frames += 1;
    }
    assert_eq!(frames, 4);
    let q: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("quality.json")).unwrap()).unwrap();
    for k in [
        "coverage",
        "mass_err_max",
        "precision",
        "std_ratio",
        "sliced_w2",
        "cross_entropy",
    ] {
        assert!(q[k].is_number(), "quality.json lacks {k}: {q}");
    }
    assert_eq!(q["n"].as_u64(), Some(10));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("samples.json")).unwrap()).unwrap();
    assert_eq!(
        meta["step"].as_u64(),
        Some(11),
        "newest checkpoint of the logdir"
    );
    assert_eq!(meta["weights"], "generator");
    assert_eq!(meta["seed"].as_u64(), Some(7));
    for needle in [
        "sliced W2",
        "mode coverage",
        "cross-entropy",
        "grid.png",
        "frames.gif",
    ] {
        assert!(stdout.contains(needle), "stdout lacks {needle}:\n{stdout}");
    }
}

#[test]
fn same_seed_same_bytes_other_seed_differs() {
    let (a, _) = sample("seed7a", &["--num-samples", "6", "--seed", "7"]);
    let (b, _) = sample("seed7b", &["--num-samples", "6", "--seed", "7"]);
    let (c, _) = sample("seed8", &["--num-samples", "6", "--seed", "8"]);
    let bytes = |d: &Path| std::fs::read(d.join("samples.safetensors")).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "same seed, same bytes");
    assert_eq!(
        std::fs::read(a.join("grid.png")).unwrap(),
        std::fs::read(b.join("grid.png")).unwrap()
    );
    let (xa, _) = load(&a);
    let (xc, _) = load(&c);
    assert!(!xa.equal(&xc), "another seed gives other samples");
    // Same prompts, so the difference is the noise: every sample changes.
    let d = (&xa - &xc)
        .abs()
        .flatten(1, -1)
        .amax([1i64].as_slice(), false);
    assert!(
        f64::try_from(d.min()).unwrap() > 1e-4,
        "every sample differs: {d}"
    );
}

#[test]
fn sample_k_does_not_depend_on_n_or_batch_size() {
    let (a, _) = sample(
        "n6",
        &["--num-samples", "6", "--seed", "3", "--batch-size", "6"],
    );
    let (b, _) = sample(
        "n4b3",
        &["--num-samples", "4", "--seed", "3", "--batch-size", "3"],
    );
    let (xa, _) = load(&a);
    let (xb, _) = load(&b);
    let head = xa.narrow(0, 0, 4);
    assert!(
        head.allclose(&xb, 1e-5, 1e-5, false),
        "max diff {}",
        (&head - &xb).abs().max()
    );
}

#[test]
fn use_ema_and_its_absence() {
    let (g, _) = sample("gen", &["--num-samples", "4", "--seed", "1"]);
    let (e, stdout) = sample("ema", &["--num-samples", "4", "--seed", "1", "--use-ema"]);
    assert!(stdout.contains("ema weights"), "{stdout}");
    let (xg, _) = load(&g);
    let (xe, _) = load(&e);
    // The shadow has averaged versions 2 and 3: not the generator's weights.
    assert!(!xg.equal(&xe), "EMA weights differ from the generator's");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.join("samples.json")).unwrap()).unwrap();
    assert_eq!(meta["weights"], "ema");
    // At step 3 the generator is at version 1: no EMA yet.
    let c3 = ckpt(3);
    fails(
        &[
            "sample",
            "--checkpoint",
            c3.to_str().unwrap(),
            "--use-ema",
            "--num-samples",
            "2",
        ],
        &["--use-ema", "no EMA weights yet", "ema_start_step = 6"],
    );
}

#[test]
fn fixed_prompt_and_default_output_folder() {
    let c3 = ckpt(3);
    let stdout = ok(&[
        "sample",
        "--checkpoint",
        c3.to_str().unwrap(),
        "--num-samples",
        "5",
        "--prompt",
        "3",
    ]);
    let out = c3.join("samples");
    assert!(stdout.contains("class 3"), "{stdout}");
    let (x, p) = load(&out);
    assert_eq!(x.size()[0], 5);
    assert_eq!(ids(&p), vec![3; 5]);
    let q: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("quality.json")).unwrap()).unwrap();
    assert_eq!(q["class"].as_u64(), Some(3));
    fails(
        &[
            "sample",
            "--checkpoint",
            c3.to_str().unwrap(),
            "--prompt",
            "8",
        ],
        &["--prompt 8", "8 classes"],
    );
}

#[test]
fn bad_checkpoints_fail_cleanly() {
    fails(
        &["sample", "--checkpoint", "/nonexistent/ckpt"],
        &["/nonexistent/ckpt", "does not exist"],
    );
    let empty = out_dir("not_a_checkpoint");
    std::fs::create_dir_all(&empty).unwrap();
    fails(
        &["sample", "--checkpoint", empty.to_str().unwrap()],
        &[empty.to_str().unwrap(), "neither a checkpoint"],
    );
    // A copy of the last checkpoint with a flipped byte in the generator's file.
    let bad = out_dir("corrupt/step_000006");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(ckpt(6)).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, bad.join(p.file_name().unwrap())).unwrap();
        }
    }
    let target = std::fs::read_dir(&bad)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".safetensors") && n.contains("_g")
        })
        .expect("the generator optimizer's part");
    let mut bytes = std::fs::read(&target).unwrap();
    let i = bytes.len() - 5;
    bytes[i] ^= 0xff;
    std::fs::write(&target, bytes).unwrap();
    fails(
        &["sample", "--checkpoint", bad.to_str().unwrap()],
        &[target.to_str().unwrap(), "corrupt"],
    );
    std::fs::write(bad.join("state.json"), "{ not json").unwrap();
    fails(
        &["sample", "--checkpoint", bad.to_str().unwrap()],
        &["state.json", "not a valid checkpoint"],
    );
    fails(
        &[
            "sample",
            "--checkpoint",
            ckpt(6).to_str().unwrap(),
            "--steps",
            "3",
        ],
        &["--steps", "does not apply"],
    );
    fails(
        &[
            "sample",
            "--checkpoint",
            ckpt(6).to_str().unwrap(),
            "--set",
            "lr_critc=1",
        ],
        &["lr_critc"],
    );
}

/// PNG → (width, height, RGB bytes).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn has_colour(px: &[u8], c: [u8; 3]) -> usize {
    px.chunks(3).filter(|p| *p == c).count()
}

#[test]
fn the_run_drew_its_plots() {
    let dir = trained().join("plots");
    for name in ["losses", "grad_norms", "quality"] {
        let p = dir.join(format!("{name}.png"));
        let (w, h, px) = decode_png(&p);
        assert_eq!((w, h), (960, 720), "{name}: two panels");
        let colours: std::collections::HashSet<&[u8]> = px.chunks(3).collect();
        assert!(colours.len() > 8, "{name}: {} colours only", colours.len());
        // Text (captions, tick labels) is drawn in black by the bitmap font.
        assert!(has_colour(&px, [0, 0, 0]) > 500, "{name}: no text or axes");
    }
    let (_, _, px) = decode_png(&dir.join("losses.png"));
    assert!(
        has_colour(&px, [31, 119, 180]) > 50,
        "generator curve (blue)"
    );
    assert!(
        has_colour(&px, [255, 127, 14]) > 50,
        "critic curve (orange)"
    );
    let (_, _, px) = decode_png(&dir.join("quality.png"));
    assert!(
        has_colour(&px, [44, 160, 44]) > 20,
        "coverage curve (green)"
    );
}
