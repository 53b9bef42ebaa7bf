//! Video files out: MP4 (H.264) and animated GIF, written frame by frame as a generator emits
//! blocks and the VAE decodes them (push-based, so a long clip never has to sit in memory).
//!
//! - [`Mp4Writer`]: H.264 in an MP4 container. The default encoder is OpenH264, compiled from
//!   the source bundled in the `openh264` crate (no system codec, no nasm), muxed by our own
//!   small MP4 writer (`mp4.rs`). The `ffmpeg` binary (libx264) is used ONLY when chosen with
//!   [`VideoEncoder::Ffmpeg`]; nothing switches to it silently.
//! - [`GifWriter`]: animated GIF with a per-frame NeuQuant palette or a fixed 6×7×6 palette,
//!   optionally box-downscaled to keep files small.
//! - [`frames_from_tensor`]: a decoded video tensor in [-1, 1] → RGB u8 frames.
//!
//! Every writer writes to a temporary file beside the target and renames it on `finish`, so the
//! final name never holds half a file; a writer dropped without `finish` removes its temporary.
//! docs/VIDEO.md says why these encoders were chosen.

mod ffmpeg;
mod gif;
mod h264;
mod mp4;

pub use self::gif::{GifOptions, GifPalette, GifWriter};
pub use self::mp4::Mp4Writer;

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Size and rate of a clip. H.264 4:2:0 needs even width and height: [`Mp4Writer`] rejects odd
/// sizes with an error (it does not pad, so the file is always exactly the size asked for);
/// [`GifWriter`] takes any size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoSpec {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// The largest frame rate accepted; anything above is almost surely a unit mistake.
pub const MAX_FPS: u32 = 240;

impl VideoSpec {
    /// Bytes of one RGB u8 frame (H·W·3).
    pub fn frame_bytes(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }

    fn check(&self, path: &Path) -> Result<()> {
        ensure!(
            self.width > 0 && self.height > 0,
            "video {}: frame size {}x{} is empty",
            path.display(),
            self.width,
            self.height
        );
        ensure!(
            (1..=MAX_FPS).contains(&self.fps),
            "video {}: fps {} is outside 1..={MAX_FPS}",
            path.display(),
            self.fps
        );
        Ok(())
    }

    /// Frame `index` must be exactly H·W·3 bytes.
    fn check_frame(&self, path: &Path, index: u64, rgb: &[u8]) -> Result<()> {
        ensure!(
            rgb.len() == self.frame_bytes(),
            "video {}: frame {index} has {} bytes, expected {}x{}x3 = {} (RGB u8, row-major)",
            path.display(),
            rgb.len(),
            self.height,
            self.width,
            self.frame_bytes()
        );
        Ok(())
    }
}

/// What a finished writer wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoSummary {
    pub path: PathBuf,
    pub frames: u64,
    /// Size of the final file.
    pub bytes: u64,
    /// Size of the written picture (a GIF may be downscaled).
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Which encoder made it: "openh264", "ffmpeg/libx264" or "gif".
    pub encoder: String,
}

/// Which H.264 encoder [`Mp4Writer`] uses. `OpenH264` is the default and needs nothing installed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum VideoEncoder {
    /// OpenH264 built from the bundled source, muxed by stillflow's MP4 writer.
    #[default]
    OpenH264,
    /// The `ffmpeg` program (with libx264) fed raw RGB on stdin. Opt-in only; an error if the
    /// program cannot be started. `program` is a name looked up on PATH or a path.
    Ffmpeg { program: PathBuf },
}

impl VideoEncoder {
    /// `ffmpeg` from PATH.
    pub fn ffmpeg() -> Self {
        VideoEncoder::Ffmpeg {
            program: PathBuf::from("ffmpeg"),
        }
    }
}

/// Options of [`Mp4Writer::create_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mp4Options {
    pub encoder: VideoEncoder,
    /// Quantiser, 1 (best) ..= 51 (smallest): a fixed QP for OpenH264, the CRF for libx264.
    /// 20 (the default) measures 36 dB PSNR on tests/video_mp4.rs's clip, near the ~38 dB that
    /// 4:2:0 chroma subsampling alone allows there.
    pub quality: u8,
    /// An IDR (key) frame every this many frames, so players can seek; 0: only the first frame.
    pub keyframe_interval: u32,
}

impl Default for Mp4Options {
    fn default() -> Self {
        Mp4Options {
            encoder: VideoEncoder::OpenH264,
            quality: 20,
            keyframe_interval: 32,
        }
    }
}

/// A file being written under a temporary name beside `target`; removed on drop unless
/// [`PendingFile::commit`] renamed it to `target`.
pub(crate) struct PendingFile {
    pub tmp: PathBuf,
    pub target: PathBuf,
    done: bool,
}

impl PendingFile {
    /// The temporary name: `.<name>.<pid>.tmp` in the target's folder (same file system, so the
    /// rename is atomic; the pid keeps two processes writing one name apart).
    pub fn new(target: &Path) -> Result<Self> {
        let name = target
            .file_name()
            .with_context(|| format!("video path {} has no file name", target.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        Ok(PendingFile {
            tmp: target.with_file_name(tmp_name),
            target: target.to_path_buf(),
            done: false,
        })
    }

    pub fn commit(mut self) -> Result<u64> {
        std::fs::rename(&self.tmp, &self.target).with_context(|| {
            format!(
                "renaming {} to {}",
                self.tmp.display(),
                self.target.display()
            )
        })?;
        self.done = true;
        let bytes = std::fs::metadata(&self.target)
            .with_context(|| format!("reading the size of {}", self.target.display()))?
            .len();
        Ok(bytes)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: the file may never have been created.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A decoded video tensor → one RGB u8 buffer (H·W·3, row-major) per frame.
///
/// Accepts `[3, T, H, W]` (channels first, the VAE's layout) or `[T, H, W, 3]`, any float kind,
/// values nominally in [-1, 1], mapped as Self-Forcing maps its output:
/// `round((x * 0.5 + 0.5).clamp(0, 1) * 255)` (so -1 → 0, 0 → 128, 1 → 255). A shape that is
/// neither, or is both (C = T = 3 and W = 3), and non-finite values are errors.
pub fn frames_from_tensor(video: &Tensor) -> Result<Vec<Vec<u8>>> {
    let size = video.size();
    ensure!(
        size.len() == 4,
        "frames_from_tensor: expected [3, T, H, W] or [T, H, W, 3], got shape {size:?}"
    );
    ensure!(
        video.is_floating_point(),
        "frames_from_tensor: expected a float tensor in [-1, 1], got {:?} of shape {size:?}",
        video.kind()
    );
    let channels_first = size[0] == 3;
    let channels_last = size[3] == 3;
    let thwc = match (channels_first, channels_last) {
        (true, false) => video.permute([1, 2, 3, 0]),
        (false, true) => video.shallow_clone(),
        (true, true) => {
            bail!("frames_from_tensor: shape {size:?} is ambiguous ([3, T, H, W] or [T, H, W, 3]?)")
        }
        (false, false) => {
            bail!("frames_from_tensor: expected [3, T, H, W] or [T, H, W, 3], got shape {size:?}")
        }
    };
    let (t, h, w) = (thwc.size()[0], thwc.size()[1], thwc.size()[2]);
    ensure!(
        t > 0 && h > 0 && w > 0,
        "frames_from_tensor: empty video of shape {size:?}"
    );
    let x = thwc.to_device(tch::Device::Cpu).to_kind(Kind::Float);
    let finite = x.isfinite().all().int64_value(&[]) == 1;
    ensure!(
        finite,
        "frames_from_tensor: the video tensor holds NaN or infinite values"
    );
    // torch rounds half to even; 0 maps to 127.5 exactly, which rounds to 128 either way.
    let u8s = ((x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .contiguous()
        .view([-1]);
    let flat = Vec::<u8>::try_from(&u8s).context("frames_from_tensor: copying the frames out")?;
    let per = (h * w * 3) as usize;
    Ok(flat.chunks_exact(per).map(<[u8]>::to_vec).collect())
}
