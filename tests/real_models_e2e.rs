//! The real job end to end, on tiny stand-ins of the Wan2.1 release saved in the real formats
//! (tests/fixtures/release_tiny, made by scripts/make_release_fixtures.py with diffusers and
//! transformers): Wan's release layout (.pth pickles converted by scripts/import_wan.py) and
//! diffusers' layout. Through the binary, as the README's "Distil a real Wan2.1 model" section:
//! import → encode-prompts (resumable) → train on a .txt prompt list → sample to MP4/GIF (decoded
//! by PyAV, an independent decoder) → and the clear failure of a config whose files are missing.
//! Needs the project venv (torch, av), as `make test` creates it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ok_in(dir: &Path, args: &[&str]) -> String {
    let o = common::cli_in(dir, args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?} failed:\n{out}\n{err}");
    out
}

/// Runs a command that must be refused: exit code 2; its stderr.
fn refused(dir: &Path, args: &[&str]) -> String {
    let o = common::cli_in(dir, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    err
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &dst.join(e.file_name()));
        } else {
            std::fs::copy(&p, dst.join(e.file_name())).unwrap();
        }
    }
}

/// A Wan release folder with its pickles converted, as a user has it after import_wan.py.
fn imported_wan(tmp: &Path) -> PathBuf {
    let dir = tmp.join("wan_models").join("Wan2.1-T2V-1.3B");
    copy_dir(&root().join("tests/fixtures/release_tiny/wan"), &dir);
    let o = Command::new(common::venv_python())
        .arg(root().join("scripts/import_wan.py"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "import_wan.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for f in ["models_t5_umt5-xxl-enc-bf16", "Wan2.1_VAE"] {
        assert!(dir.join(format!("{f}.safetensors")).is_file(), "{f}");
    }
    dir
}

/// `run-pipeline encode-prompts` on the CPU; its stdout.
fn encode(dir: &Path, model: &str, prompts: &str, out: &str) -> String {
    ok_in(
        dir,
        &[
            "encode-prompts",
            "--prompts",
            prompts,
            "--text-encoder",
            model,
            "--out",
            out,
            "--device",
            "cpu",
        ],
    )
}

const PROMPTS: &str = "a red fox runs through snow\n\na  cat   on a piano\nthe sea at dawn\n";

/// The tiny shapes: 3 latent frames of 16×4×4 (9 video frames of 32×32), one frame per block.
fn tiny_sets(model: &str, logdir: &Path) -> Vec<String> {
    vec![
        format!("generator_name={model}"),
        format!("fake_name={model}"),
        format!("real_name={model}"),
        format!("text_encoder_path={model}"),
        "data_path=prompts.txt".into(),
        "image_or_video_shape=[1,3,16,4,4]".into(),
        "num_training_frames=3".into(),
        "num_frame_per_block=1".into(),
        "mixed_precision=false".into(),
        "gradient_checkpointing=false".into(),
        "dfake_gen_update_ratio=2".into(),
        "max_steps=2".into(),
        "log_iters=2".into(),
        "ema_start_step=1000".into(),
        "progress=false".into(),
        "device=cpu".into(),
        format!("logdir={}", logdir.display()),
    ]
}

fn with_sets<'a>(head: &[&'a str], sets: &'a [String]) -> Vec<&'a str> {
    let mut v: Vec<&str> = head.to_vec();
    for s in sets {
        v.push("--set");
        v.push(s);
    }
    v
}

fn decode(video: &Path) -> serde_json::Value {
    let o = Command::new(common::venv_python())
        .arg(root().join("scripts/decode_video.py"))
        .arg(video)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "decode_video.py {}: {}",
        video.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("decoder JSON")
}

#[test]
fn wan_release_layout_from_prompts_to_mp4() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = imported_wan(t);
    let model_s = model.display().to_string();
    std::fs::write(t.join("prompts.txt"), PROMPTS).unwrap();

    // encode-prompts: 3 prompts (a blank line skipped) + the negative prompt.
    let out = encode(t, &model_s, "prompts.txt", "emb/prompts.safetensors");
    assert!(
        out.contains("3 prompts") && out.contains("4 encoded now"),
        "{out}"
    );
    use stillflow::text::store::EmbeddingsFile;
    let f = EmbeddingsFile::open(&t.join("emb/prompts.safetensors")).unwrap();
    assert_eq!(f.len(), 3);
    assert_eq!(f.dim(), 32, "d_model of the stand-in");
    assert_eq!(f.uncond().size()[0], 1);
    // Each prompt's rows are stored trimmed to its length; the last row (EOS) is not zero, and a
    // padded batch is zero past each prompt's rows.
    let lens: Vec<i64> = (0..3).map(|i| f.rows(i).unwrap().size()[0]).collect();
    let cond = f.batch(&[0, 1, 2]).unwrap().to_kind(Kind::Float);
    for (i, &l) in lens.iter().enumerate() {
        let row = cond.get(i as i64);
        let tail = row.narrow(0, l, cond.size()[1] - l);
        assert!(tail.abs().sum(Kind::Float).double_value(&[]) == 0.0);
        assert!(row.get(l - 1).abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
    // The same prompt encodes the same alone (the encoder, not the batch, decides).
    std::fs::write(t.join("one.txt"), "the sea at dawn\n").unwrap();
    encode(t, &model_s, "one.txt", "emb/one.safetensors");
    let one = EmbeddingsFile::open(&t.join("emb/one.safetensors"))
        .unwrap()
        .rows(0)
        .unwrap();
    let l = lens[2];
    assert_eq!(one.size()[0], l);
    let diff = (one.to_kind(Kind::Float) - cond.get(2).narrow(0, 0, l))
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-5, "batch independence: {diff}");
    // Re-run: up to date. One more prompt: only it is encoded (the cache).
    let out = encode(t, &model_s, "prompts.txt", "emb/prompts.safetensors");
    assert!(
        out.contains("0 encoded now") && out.contains("up to date"),
        "{out}"
    );
    std::fs::write(t.join("prompts.txt"), format!("{PROMPTS}a new prompt\n")).unwrap();
    let out = encode(t, &model_s, "prompts.txt", "emb/prompts.safetensors");
    assert!(
        out.contains("4 prompts") && out.contains("1 encoded now"),
        "{out}"
    );

    // Train two steps on the .txt list: the driver encodes it into the logdir once.
    let logdir = t.join("run");
    let sets = tiny_sets(&model_s, &logdir);
    ok_in(t, &with_sets(&[], &sets));
    assert!(logdir.join("prompts/embeddings.safetensors").is_file());
    assert!(logdir.join("checkpoints").is_dir());

    // Sample to video, streaming: 2 samples, 9 frames of 32×32 each, MP4 and GIF.
    let mut ssets = vec![format!("vae_path={model_s}")];
    ssets.push(format!("text_encoder_path={model_s}"));
    let logdir_s = logdir.display().to_string();
    let args = with_sets(
        &[
            "sample",
            "--checkpoint",
            &logdir_s,
            "--prompts",
            "prompts.txt",
            "--num-samples",
            "2",
            "--out",
            "videos",
        ],
        &ssets,
    );
    let out = ok_in(t, &args);
    assert!(out.contains("first decoded frames after"), "{out}");
    let mut mp4s: Vec<PathBuf> = std::fs::read_dir(t.join("videos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
        .collect();
    mp4s.sort();
    assert_eq!(mp4s.len(), 2, "{mp4s:?}");
    assert!(mp4s[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("000-a_red_fox"));
    for m in &mp4s {
        let v = decode(m);
        assert_eq!(v["codec"], "h264", "{v}");
        assert_eq!(v["frames"], 9, "{v}");
        assert_eq!(
            (v["width"].as_i64(), v["height"].as_i64()),
            (Some(32), Some(32)),
            "{v}"
        );
        assert!(m.with_extension("gif").is_file());
    }
    // Streaming: the frames of each block were decoded and encoded inside the generator's block
    // loop (1 frame for the first latent frame, then 4 per latent frame).
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("videos/video_stream.json")).unwrap())
            .unwrap();
    let frames: Vec<i64> = st["calls"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["frames"].as_i64().unwrap())
        .collect();
    assert_eq!(frames, vec![1, 5, 9], "{st}");
    let lat = Tensor::read_safetensors(t.join("videos/samples.safetensors")).unwrap();
    let lat = &lat.iter().find(|(n, _)| n == "latents").unwrap().1;
    assert_eq!(lat.size(), vec![2, 3, 16, 4, 4]);
}

#[test]
fn diffusers_layout_loads_the_same_models() {
    // The diffusers folder holds the same weights as the Wan one (bf16-rounded): the DiT, the
    // text encoder and the VAE must give the same numbers through both loaders.
    let tmp = tempfile::tempdir().unwrap();
    let wan = imported_wan(tmp.path());
    let dif = root().join("tests/fixtures/release_tiny/diffusers");
    let (_, a) = stillflow::models::wan::load_from_dir(&wan, Device::Cpu, Kind::Float).unwrap();
    let (_, b) = stillflow::models::wan::load_from_dir(&dif, Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(0);
    let x = Tensor::randn([1, 2, 16, 4, 4], (Kind::Float, Device::Cpu));
    let tt = Tensor::from_slice(&[500.0f32, 500.0]).reshape([1, 2]);
    let c = Tensor::randn([1, 7, 32], (Kind::Float, Device::Cpu));
    use stillflow::models::Denoiser;
    let (ya, yb) = tch::no_grad(|| (a.flow(&x, &tt, &c), b.flow(&x, &tt, &c)));
    let d = (&ya - &yb).abs().max().double_value(&[]);
    assert!(d < 1e-5, "DiT, Wan vs diffusers layout: {d}");

    use stillflow::models::umt5::TextEncoder;
    let ta = TextEncoder::load(&wan, Device::Cpu, Kind::Float).unwrap();
    let tb = TextEncoder::load(&dif, Device::Cpu, Kind::Float).unwrap();
    let p = vec!["a red fox runs through snow".to_string()];
    let d = (ta.encode(&p).unwrap() - tb.encode(&p).unwrap())
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-5, "umT5, Wan vs diffusers layout: {d}");

    use stillflow::models::vae::WanVae;
    let va = WanVae::load(&wan, Device::Cpu, Kind::Float).unwrap();
    let vb = WanVae::load(&dif, Device::Cpu, Kind::Float).unwrap();
    let z = Tensor::randn([1, 16, 2, 2, 2], (Kind::Float, Device::Cpu));
    let d = (va.decode(&z).unwrap() - vb.decode(&z).unwrap())
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-5, "VAE, Wan vs diffusers layout: {d}");
}

#[test]
fn sample_from_a_model_folder_without_checkpoint() {
    // `sample --config` with generator_name = a diffusers folder (no training checkpoint).
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::write(t.join("p.txt"), "a lighthouse in fog\n").unwrap();
    let dif = root().join("tests/fixtures/release_tiny/diffusers");
    let d = dif.display().to_string();
    let sets: Vec<String> = tiny_sets(&d, &t.join("unused"))
        .into_iter()
        .chain([format!("vae_path={d}")])
        .collect();
    let out = ok_in(
        t,
        &with_sets(
            &[
                "sample",
                "--prompts",
                "p.txt",
                "--num-samples",
                "1",
                "--out",
                "v",
            ],
            &sets,
        ),
    );
    assert!(
        out.contains("generator_name") || out.contains("sampled 1"),
        "{out}"
    );
    let v = decode(&t.join("v/000-a_lighthouse_in_fog.mp4"));
    assert_eq!(v["frames"], 9, "{v}");
    // A wrong encoder name is refused before anything runs.
    let err = refused(
        t,
        &with_sets(
            &[
                "sample",
                "--prompts",
                "p.txt",
                "--video-encoder",
                "x264",
                "--out",
                "w",
            ],
            &sets,
        ),
    );
    assert!(err.contains("--video-encoder x264"), "{err}");
    assert!(!t.join("w").exists());
}

#[test]
fn missing_release_files_fail_at_once_with_what_to_download() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let err = refused(
        tmp.path(),
        &["--config", "self_forcing_dmd", "--logdir", "run"],
    );
    assert!(
        t0.elapsed().as_secs() < 30,
        "must fail before building anything"
    );
    for want in [
        "huggingface-cli download Wan-AI/Wan2.1-T2V-14B",
        "wan_models/Wan2.1-T2V-14B",
        "fake_name",
        "text_encoder_path",
        "import_self_forcing.py",
        "random:wan2.1-t2v-14b",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!tmp.path().join("run").exists(), "nothing written");
    // `check` validates the config and only warns about the files (exit 0).
    let o = common::cli_in(tmp.path(), &["check", "self_forcing_dmd"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: on this machine a run would stop with 5 problem(s)")
            && err.contains("huggingface-cli download Wan-AI/Wan2.1-T2V-14B"),
        "{err}"
    );
    // A .txt data_path without a text encoder names both keys, even with random models.
    let err = refused(
        tmp.path(),
        &[
            "--set",
            "generator_name=wan-tiny",
            "--set",
            "fake_name=wan-tiny",
            "--set",
            "real_name=gmm",
            "--set",
            "data_path=nope.txt",
            "--set",
            "image_or_video_shape=[1,3,4,4,4]",
            "--set",
            "num_training_frames=3",
            "--logdir",
            "run2",
        ],
    );
    assert!(
        err.contains("text_encoder_path") && err.contains("data_path") && err.contains("nope.txt"),
        "{err}"
    );
}

/// A Self-Forcing generator pickle (`{"generator": state_dict}` with `model.` prefixes, as
/// ode_init.pt and model.pt hold it), made with torch from the stand-in DiT scaled by `scale`.
const MAKE_ODE_INIT: &str = r#"
import json, struct, sys, torch
raw = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]; h = json.loads(raw[8:8 + n]); base = 8 + n
dt = {'F32': torch.float32, 'BF16': torch.bfloat16, 'F16': torch.float16}
sd = {}
for k, v in h.items():
    if k == '__metadata__':
        continue
    a, b = v['data_offsets']
    t = torch.frombuffer(bytearray(raw[base + a:base + b]), dtype=dt[v['dtype']]).reshape(v['shape'])
    sd['model.' + k] = t * float(sys.argv[3])
torch.save({'generator': sd}, sys.argv[2])
"#;

#[test]
fn self_forcing_ode_init_converts_and_drives_the_generator() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let wan = root().join("tests/fixtures/release_tiny/wan");
    let dit = wan.join("diffusion_pytorch_model.safetensors");
    let mut ckpts = vec![];
    for (name, scale) in [("same", "1.0"), ("half", "0.5")] {
        let pt = t.join(format!("ode_init_{name}.pt"));
        let o = Command::new(common::venv_python())
            .args(["-c", MAKE_ODE_INIT])
            .arg(&dit)
            .arg(&pt)
            .arg(scale)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = t.join(format!("ode_{name}"));
        let o = Command::new(common::venv_python())
            .arg(root().join("scripts/import_self_forcing.py"))
            .arg(&pt)
            .arg(&out)
            .args(["--parts", "generator"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ckpts.push(out.join("generator.safetensors"));
    }
    std::fs::write(t.join("p.txt"), "a boat on a lake\n").unwrap();
    // Sampling from the folder alone, and with generator_ckpt over it: the unscaled checkpoint
    // gives the same latents, the scaled one different ones (the checkpoint is what is used).
    // The release folder's .pth files are not converted here: the text encoder is the diffusers one.
    let dif = root().join("tests/fixtures/release_tiny/diffusers");
    let sample = |ckpt: Option<&Path>, out: &str| -> Tensor {
        let mut sets = tiny_sets(&wan.display().to_string(), &t.join("unused"));
        sets.push(format!("text_encoder_path={}", dif.display()));
        if let Some(c) = ckpt {
            sets.push(format!("generator_ckpt={}", c.display()));
        }
        ok_in(
            t,
            &with_sets(
                &[
                    "sample",
                    "--prompts",
                    "p.txt",
                    "--num-samples",
                    "1",
                    "--no-video",
                    "--out",
                    out,
                ],
                &sets,
            ),
        );
        let l = Tensor::read_safetensors(t.join(out).join("samples.safetensors")).unwrap();
        l.into_iter().find(|(n, _)| n == "latents").unwrap().1
    };
    let base = sample(None, "a");
    let same = sample(Some(&ckpts[0]), "b");
    let half = sample(Some(&ckpts[1]), "c");
    assert_eq!((&base - &same).abs().max().double_value(&[]), 0.0);
    assert!((&base - &half).abs().max().double_value(&[]) > 1e-3);
    // And training starts from it (two steps through the CLI).
    let mut sets = tiny_sets(&wan.display().to_string(), &t.join("run"));
    sets.push(format!("generator_ckpt={}", ckpts[1].display()));
    sets.push("data_path=p.txt".into());
    sets.push(format!("text_encoder_path={}", dif.display()));
    ok_in(t, &with_sets(&[], &sets));
    // A .pt given directly is refused with the conversion command.
    let err = refused(
        t,
        &[
            "--set",
            &format!("generator_ckpt={}", t.join("ode_init_half.pt").display()),
            "--set",
            "generator_name=wan-tiny",
            "--set",
            "fake_name=wan-tiny",
            "--set",
            "real_name=gmm",
            "--logdir",
            "r2",
        ],
    );
    assert!(
        err.contains("import_self_forcing.py") && err.contains("ode_init_half.pt"),
        "{err}"
    );
}
