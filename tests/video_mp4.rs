//! Video files out (src/video): MP4/H.264 from the default pure-build path (OpenH264 + our muxer)
//! decoded by an INDEPENDENT decoder (scripts/decode_video.py: PyAV, i.e. FFmpeg's demuxer and
//! H.264 decoder) and compared with the input; GIFs decoded back with the `gif` crate; bad input;
//! the tensor → RGB mapping. Needs the project venv with `av` (STILLFLOW_VENV or ./.venv; `make
//! venv` installs it).

mod common;

use std::path::Path;
use std::process::Command;
use stillflow::video::{
    frames_from_tensor, GifOptions, GifPalette, GifWriter, Mp4Options, Mp4Writer, VideoEncoder,
    VideoSpec,
};
use tch::Tensor;

/// Decodes `video` with PyAV: (the script's JSON, every frame as rgb24 bytes).
fn decode(video: &Path) -> (serde_json::Value, Vec<u8>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/decode_video.py");
    let rgb = video.with_extension("rgb");
    let out = Command::new(common::venv_python())
        .arg(&script)
        .arg(video)
        .arg("--rgb-out")
        .arg(&rgb)
        .output()
        .expect("running scripts/decode_video.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(3),
        "PyAV (`av`) is missing from the venv, so the MP4 cannot be checked: {stderr}"
    );
    assert!(out.status.success(), "decode_video.py failed: {stderr}");
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("decode_video.py printed JSON");
    (info, std::fs::read(&rgb).expect("decoded frames"))
}

/// A moving-box clip over a gradient that also drifts, so every frame differs. The box moves 2
/// pixels a frame so its edges stay on even pixels: a saturated edge that cuts a 2×2 chroma
/// block is lost by 4:2:0 subsampling itself (not what is tested here; FFmpeg's own
/// RGB → yuv420p → RGB gives 27.5 dB on such frames).
fn clip(w: u32, h: u32, n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|t| {
            let mut f = Vec::with_capacity((w * h * 3) as usize);
            for y in 0..h {
                for x in 0..w {
                    let inside = (x + 64 - 2 * t % 64) % w < w / 4 && (y + 2 * t) % h < h / 3;
                    let px = if inside {
                        [230, 40, 60]
                    } else {
                        [
                            (x * 255 / w) as u8,
                            (y * 255 / h) as u8,
                            (100 + 3 * t + (x + y) % 16) as u8,
                        ]
                    };
                    f.extend_from_slice(&px);
                }
            }
            f
        })
        .collect()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

/// Files left in `dir` (a temporary must never stay behind).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn roundtrip(w: u32, h: u32, n: u32, fps: u32) {
    roundtrip_with(w, h, n, fps, &Mp4Options::default(), "openh264");
}

fn roundtrip_with(w: u32, h: u32, n: u32, fps: u32, opts: &Mp4Options, encoder: &str) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("clip.mp4");
    let spec = VideoSpec {
        width: w,
        height: h,
        fps,
    };
    let frames = clip(w, h, n);
    let mut wr = Mp4Writer::create_with(&path, spec, opts).unwrap();
    for f in &frames {
        wr.push_frame(f).unwrap();
    }
    assert!(
        !path.exists(),
        "the final name must not exist before finish"
    );
    let sum = wr.finish().unwrap();
    assert_eq!(listing(d.path()), vec!["clip.mp4"]);
    assert_eq!(sum.frames, u64::from(n));
    assert_eq!(sum.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(sum.encoder, encoder);

    if let Some(keep) = std::env::var_os("STILLFLOW_KEEP_VIDEO") {
        // Debugging aid: keep a copy of the file to inspect.
        std::fs::copy(&path, Path::new(&keep).join(format!("clip_{w}x{h}.mp4"))).unwrap();
    }
    let (info, rgb) = decode(&path);
    assert_eq!(info["codec"], "h264", "{info}");
    assert_eq!(info["width"], w, "{info}");
    assert_eq!(info["height"], h, "{info}");
    assert_eq!(info["frames"], n, "{info}");
    assert_eq!(info["stream_frames"], n, "{info}");
    assert_eq!(
        (info["fps_num"].clone(), info["fps_den"].clone()),
        (fps.into(), 1.into()),
        "{info}"
    );
    assert_eq!(info["pix_fmt"], "yuv420p", "{info}");
    let input: Vec<u8> = frames.concat();
    assert_eq!(rgb.len(), input.len(), "decoded byte count");
    let per = (w * h * 3) as usize;
    let worst = (0..n as usize)
        .map(|i| psnr(&input[i * per..(i + 1) * per], &rgb[i * per..(i + 1) * per]))
        .fold(f64::INFINITY, f64::min);
    let all = psnr(&input, &rgb);
    println!(
        "{encoder} {w}x{h}x{n} @{fps}: {} bytes, PSNR {all:.2} dB (worst frame {worst:.2} dB), {info}",
        sum.bytes
    );
    assert!(
        all >= 30.0 && worst >= 30.0,
        "PSNR {all:.2} dB, worst frame {worst:.2} dB"
    );
}

#[test]
fn mp4_decodes_independently_64x48() {
    roundtrip(64, 48, 20, 16);
}

/// Not a multiple of the 16-pixel macroblock: OpenH264 crops in the SPS.
#[test]
fn mp4_decodes_independently_40x24() {
    roundtrip(40, 24, 9, 24);
}

fn spec(w: u32, h: u32) -> VideoSpec {
    VideoSpec {
        width: w,
        height: h,
        fps: 16,
    }
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn mp4_bad_input_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("bad.mp4");

    let e = err_text(Mp4Writer::create(&path, spec(41, 24)));
    assert!(e.contains("even") && e.contains("41x24"), "{e}");

    let mut wr = Mp4Writer::create(&path, spec(16, 16)).unwrap();
    let e = err_text(wr.push_frame(&[0u8; 16 * 16 * 3 - 1]));
    assert!(e.contains("767 bytes") && e.contains("768"), "{e}");
    wr.push_frame(&[7u8; 16 * 16 * 3]).unwrap(); // still usable after a rejected frame
    assert_eq!(wr.frames(), 1);
    drop(wr); // dropped without finish: nothing stays behind
    assert_eq!(listing(d.path()), Vec::<String>::new());

    let wr = Mp4Writer::create(&path, spec(16, 16)).unwrap();
    let e = err_text(wr.finish());
    assert!(e.contains("no frames"), "{e}");
    assert_eq!(listing(d.path()), Vec::<String>::new());

    let blocker = d.path().join("a_file");
    std::fs::write(&blocker, b"x").unwrap();
    let e = err_text(Mp4Writer::create(&blocker.join("x.mp4"), spec(16, 16)));
    assert!(e.contains("cannot create") && e.contains("x.mp4"), "{e}");
    let e = err_text(GifWriter::create(&blocker.join("x.gif"), spec(16, 16)));
    assert!(e.contains("cannot create") && e.contains("x.gif"), "{e}");

    let q0 = Mp4Options {
        quality: 0,
        ..Mp4Options::default()
    };
    assert!(err_text(Mp4Writer::create_with(&path, spec(16, 16), &q0)).contains("1..=51"));
    let bad_fps = VideoSpec {
        width: 16,
        height: 16,
        fps: 0,
    };
    assert!(err_text(Mp4Writer::create(&path, bad_fps)).contains("fps"));
}

/// ffmpeg is opt-in only: the default is OpenH264, and a missing program is a clear error
/// (never a silent fall-back).
#[test]
fn ffmpeg_is_opt_in_and_missing_program_is_an_error() {
    assert_eq!(Mp4Options::default().encoder, VideoEncoder::OpenH264);
    let d = tempfile::tempdir().unwrap();
    let opts = Mp4Options {
        encoder: VideoEncoder::Ffmpeg {
            program: d.path().join("no-such-ffmpeg"),
        },
        ..Mp4Options::default()
    };
    let e = err_text(Mp4Writer::create_with(
        &d.path().join("f.mp4"),
        spec(16, 16),
        &opts,
    ));
    assert!(
        e.contains("no-such-ffmpeg") && e.contains("OpenH264"),
        "{e}"
    );
    assert_eq!(listing(d.path()), Vec::<String>::new());

    // A program that exits at once (as ffmpeg does on bad options): an error at push or finish,
    // and no file.
    let opts = Mp4Options {
        encoder: VideoEncoder::Ffmpeg {
            program: "false".into(),
        },
        ..Mp4Options::default()
    };
    let r =
        Mp4Writer::create_with(&d.path().join("f.mp4"), spec(16, 16), &opts).and_then(|mut w| {
            w.push_frame(&[0; 16 * 16 * 3])?;
            w.finish()
        });
    let e = err_text(r);
    assert!(e.contains("`false`"), "{e}");
    assert_eq!(listing(d.path()), Vec::<String>::new());
}

/// The opt-in ffmpeg path, when an `ffmpeg` program is on PATH (it is not a dependency of
/// stillflow, so without it this test says so and checks nothing more).
#[test]
fn ffmpeg_opt_in_decodes_independently() {
    let found = Command::new("ffmpeg").arg("-version").output().is_ok();
    if !found {
        eprintln!("NOTE: no `ffmpeg` on PATH; the opt-in ffmpeg encoder was not exercised");
        return;
    }
    let opts = Mp4Options {
        encoder: VideoEncoder::ffmpeg(),
        ..Mp4Options::default()
    };
    roundtrip_with(64, 48, 20, 16, &opts, "ffmpeg/libx264");
    // Dropped mid-way: the child is stopped and no file stays behind.
    let d = tempfile::tempdir().unwrap();
    let mut wr = Mp4Writer::create_with(&d.path().join("x.mp4"), spec(16, 16), &opts).unwrap();
    wr.push_frame(&[0; 16 * 16 * 3]).unwrap();
    drop(wr);
    assert_eq!(listing(d.path()), Vec::<String>::new());
}

/// Decodes a GIF with the `gif` crate: (width, height, RGBA frames, delays).
fn read_gif(path: &Path) -> (u16, u16, Vec<Vec<u8>>, Vec<u16>) {
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut dec = opts.read_info(std::fs::File::open(path).unwrap()).unwrap();
    let (w, h) = (dec.width(), dec.height());
    let (mut frames, mut delays) = (Vec::new(), Vec::new());
    while let Some(f) = dec.read_next_frame().unwrap() {
        assert_eq!((f.width, f.height, f.left, f.top), (w, h, 0, 0));
        frames.push(f.buffer.to_vec());
        delays.push(f.delay);
    }
    (w, h, frames, delays)
}

fn mean_abs_err_rgb(rgb: &[u8], rgba: &[u8]) -> f64 {
    let s: u64 = rgb
        .chunks_exact(3)
        .zip(rgba.chunks_exact(4))
        .map(|(a, b)| (0..3).map(|c| u64::from(a[c].abs_diff(b[c]))).sum::<u64>())
        .sum();
    s as f64 / rgb.len() as f64
}

#[test]
fn gif_decodes_back() {
    let d = tempfile::tempdir().unwrap();
    let (w, h, n) = (64, 48, 20);
    let frames = clip(w, h, n);
    // Mean absolute colour error bounds (per channel, of 255): NeuQuant measures 7.9 here (it
    // samples too few pixels of such tiny frames to do better), the dithered fixed palette 17.
    for (name, opts, size, max_err) in [
        ("full.gif", GifOptions::default(), (64, 48), 12.0),
        (
            "half.gif",
            GifOptions {
                downscale: 2,
                palette: GifPalette::PerFrame { speed: 10 },
            },
            (32, 24),
            0.0,
        ),
        (
            "fixed.gif",
            GifOptions {
                downscale: 1,
                palette: GifPalette::Fixed676,
            },
            (64, 48),
            24.0,
        ),
    ] {
        let path = d.path().join(name);
        let mut wr = GifWriter::create_with(&path, spec(w, h), opts).unwrap();
        for f in &frames {
            wr.push_frame(f).unwrap();
        }
        assert!(!path.exists());
        let sum = wr.finish().unwrap();
        assert_eq!(
            (sum.width, sum.height, sum.frames),
            (size.0, size.1, u64::from(n))
        );
        let (gw, gh, got, delays) = read_gif(&path);
        assert_eq!((u32::from(gw), u32::from(gh)), size, "{name}");
        assert_eq!(got.len(), n as usize, "{name}");
        // 16 fps: delays alternate 6/7 cs and 16 frames last exactly one second.
        assert_eq!(delays[..16].iter().map(|&x| u32::from(x)).sum::<u32>(), 100);
        if size == (w, h) {
            let err = mean_abs_err_rgb(&frames[5], &got[5]);
            println!("{name}: {} bytes, mean abs error {err:.2}/255", sum.bytes);
            assert!(err < max_err, "{name}: mean abs colour error {err:.2}");
        }
    }
    // Odd sizes are fine for GIF; bad input errors like the MP4 writer's.
    let mut wr = GifWriter::create(&d.path().join("odd.gif"), spec(7, 5)).unwrap();
    assert!(err_text(wr.push_frame(&[0; 10])).contains("expected 5x7x3 = 105"));
    wr.push_frame(&[9; 105]).unwrap();
    assert_eq!(wr.finish().unwrap().frames, 1);
    let wr = GifWriter::create(&d.path().join("none.gif"), spec(8, 8)).unwrap();
    assert!(err_text(wr.finish()).contains("no frames"));
    assert!(!d.path().join("none.gif").exists());
    let big = GifOptions {
        downscale: 9,
        ..GifOptions::default()
    };
    assert!(err_text(GifWriter::create_with(
        &d.path().join("b.gif"),
        spec(8, 8),
        big
    ))
    .contains("downscale"));
}

#[test]
fn tensor_to_frames_mapping() {
    // [3, T=2, H=1, W=4]: -1 → 0, 0 → 128, 1 → 255, out of range clamps, 0.5 → 191.
    let vals = [-1.0f32, 0.0, 1.0, 0.5, -3.0, 2.0, -0.5, 0.25];
    let data: Vec<f32> = vals.repeat(3);
    let cthw = Tensor::from_slice(&data).reshape([3, 2, 1, 4]);
    let frames = frames_from_tensor(&cthw).unwrap();
    assert_eq!(frames.len(), 2);
    let expect = |v: &[u8]| v.iter().flat_map(|&x| [x, x, x]).collect::<Vec<u8>>();
    assert_eq!(frames[0], expect(&[0, 128, 255, 191]));
    assert_eq!(frames[1], expect(&[0, 255, 64, 159]));
    // [T, H, W, 3] gives the same frames; channels stay in R, G, B order.
    let thwc = cthw.permute([1, 2, 3, 0]).contiguous();
    assert_eq!(frames_from_tensor(&thwc).unwrap(), frames);
    let rgb = Tensor::from_slice(&[-1.0f32, 0.0, 1.0]).reshape([1, 1, 1, 3]);
    assert_eq!(frames_from_tensor(&rgb).unwrap(), vec![vec![0, 128, 255]]);
    let half = Tensor::from_slice(&[1.0f32, -1.0, 0.0]).reshape([3, 1, 1, 1]);
    assert_eq!(
        frames_from_tensor(&half.to_kind(tch::Kind::BFloat16)).unwrap(),
        vec![vec![255, 0, 128]]
    );

    assert!(err_text(frames_from_tensor(&Tensor::zeros(
        [2, 2, 2, 2],
        tch::kind::FLOAT_CPU
    )))
    .contains("[3, T, H, W]"));
    assert!(err_text(frames_from_tensor(&Tensor::zeros(
        [3, 3, 2, 3],
        tch::kind::FLOAT_CPU
    )))
    .contains("ambiguous"));
    assert!(err_text(frames_from_tensor(&Tensor::zeros(
        [3, 1, 2, 2],
        tch::kind::INT64_CPU
    )))
    .contains("float"));
    let nan = Tensor::from_slice(&[f32::NAN, 0.0, 0.0]).reshape([1, 1, 1, 3]);
    assert!(err_text(frames_from_tensor(&nan)).contains("NaN"));
}
