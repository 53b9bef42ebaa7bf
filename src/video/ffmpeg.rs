//! The opt-in `ffmpeg` path of [`super::Mp4Writer`]: raw RGB frames piped to an `ffmpeg` child
//! that encodes with libx264 into the temporary file. Chosen only by
//! [`super::VideoEncoder::Ffmpeg`]; if the program is missing or fails, that is an error.

use super::{Mp4Options, PendingFile, VideoSpec};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

pub(crate) struct FfmpegWriter {
    /// `None` once committed.
    file: Option<PendingFile>,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Collects ffmpeg's stderr so a full pipe never blocks it and errors can quote it.
    stderr: Option<JoinHandle<String>>,
    program: String,
}

impl FfmpegWriter {
    pub fn spawn(path: &Path, spec: VideoSpec, opts: &Mp4Options, program: &Path) -> Result<Self> {
        let file = PendingFile::new(path)?;
        // Fail on an unwritable path here, as the OpenH264 path does, not after encoding.
        std::fs::File::create(&file.tmp).with_context(|| {
            format!(
                "video {}: cannot create {}",
                path.display(),
                file.tmp.display()
            )
        })?;
        let name = program.display().to_string();
        let mut child = Command::new(program)
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
            .args(["-s", &format!("{}x{}", spec.width, spec.height)])
            .args(["-r", &spec.fps.to_string(), "-i", "pipe:0"])
            .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
            .args(["-crf", &opts.quality.to_string()])
            // Same colour space as the OpenH264 path: BT.601, limited range, signalled.
            .args(["-colorspace", "smpte170m", "-color_primaries", "smpte170m"])
            .args(["-color_trc", "smpte170m", "-color_range", "tv"])
            .args(["-vf", "scale=out_color_matrix=bt601:out_range=tv"])
            .args(keyint_args(opts.keyframe_interval))
            .args(["-f", "mp4"])
            .arg(&file.tmp)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "video {}: cannot run `{name}` (VideoEncoder::Ffmpeg was chosen; install \
                     ffmpeg with libx264 or use the default VideoEncoder::OpenH264)",
                    path.display()
                )
            })?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        });
        Ok(FfmpegWriter {
            file: Some(file),
            child,
            stdin,
            stderr,
            program: name,
        })
    }

    pub fn push(&mut self, rgb: &[u8]) -> Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            bail!("`{}` stdin is closed", self.program);
        };
        if let Err(e) = stdin.write_all(rgb) {
            // ffmpeg exited (bad options, no libx264, disk full): say what it said.
            self.stdin = None;
            let _ = self.child.wait();
            let said = self.stderr_text();
            bail!("`{}` stopped reading frames ({e}): {said}", self.program);
        }
        Ok(())
    }

    fn stderr_text(&mut self) -> String {
        let s = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let s = s.trim();
        // The tail is where ffmpeg says what went wrong.
        let mut start = s.len().saturating_sub(2000);
        while !s.is_char_boundary(start) {
            start += 1;
        }
        match &s[start..] {
            "" => "(no message)".to_string(),
            tail => tail.to_string(),
        }
    }

    pub fn finish(mut self) -> Result<u64> {
        drop(self.stdin.take()); // EOF: ffmpeg flushes and writes the index
        let status = self
            .child
            .wait()
            .with_context(|| format!("waiting for `{}`", self.program))?;
        if !status.success() {
            let said = self.stderr_text();
            bail!("`{}` failed ({status}): {said}", self.program);
        }
        self.file
            .take()
            .context("ffmpeg writer already finished")?
            .commit()
    }
}

fn keyint_args(interval: u32) -> Vec<String> {
    if interval == 0 {
        vec![]
    } else {
        vec!["-g".into(), interval.to_string()]
    }
}

impl Drop for FfmpegWriter {
    fn drop(&mut self) {
        // Dropped without finish (or after an error): stop the child we started and reap it;
        // PendingFile removes the temporary.
        if self.stdin.take().is_some() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
