//! Streaming video out for `sample`: each block of latents the causal generator emits is decoded
//! at once by the VAE's causal decoder (its feature cache carries the frames before), and the
//! decoded frames go straight into the MP4 (H.264) and GIF encoders. So the first frames exist —
//! decoded and encoded — before the last block is generated, and memory is bounded by one block.

use crate::cuda::{record_stream, CudaEvent, CudaStream, StreamGuard};
use crate::models::vae::{DecodeStream, WanVae};
use crate::video::{frames_from_tensor, GifOptions, GifWriter, Mp4Options, Mp4Writer, VideoSpec};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

/// Output frame rate of Wan2.1 videos (Self-Forcing writes 16 fps).
pub const FPS: u32 = 16;

/// The VAE's streaming decoder on a side CUDA stream: a block's decode waits (event) for the
/// generator's work queued so far on the current stream, then runs beside the next block's
/// generation. Results live on the side stream: read them inside [`SideDecoder::with_side`], which
/// orders the reads after their decode. On CPU everything runs inline.
pub struct SideDecoder<'a> {
    stream: DecodeStream<'a>,
    side: Option<CudaStream>,
}

impl<'a> SideDecoder<'a> {
    pub fn new(vae: &'a WanVae, device: Device) -> Result<Self> {
        let side = if device.is_cuda() {
            Some(CudaStream::for_device(device, false)?)
        } else {
            None
        };
        Ok(SideDecoder {
            stream: vae.decoder_stream(),
            side,
        })
    }

    /// Queues the decode of x0 [B, k, C, h, w] (stillflow's layout); returns [B, 3, t, H, W].
    pub fn push(&mut self, x0: &Tensor) -> Result<Tensor> {
        let z = x0.permute([0, 2, 1, 3, 4]); // → [B, C, k, h, w], the VAE's layout
        let Some(side) = &self.side else {
            return self.stream.push(&z);
        };
        let mut ready = CudaEvent::new(false)?;
        ready.record(&CudaStream::current_for(x0.device())?)?;
        ready.block(side)?;
        let _g = StreamGuard::new(side)?;
        // x0 was made on the generator's stream: keep its memory until the side stream is done.
        record_stream(x0, side)?;
        self.stream.push(&z)
    }

    /// Runs `f` with the side stream current (a no-op wrapper on CPU).
    pub fn with_side<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match &self.side {
            None => f(),
            Some(s) => {
                let _g = StreamGuard::new(s)?;
                f()
            }
        }
    }

    /// The side stream (None on CPU).
    pub fn side(&self) -> Option<&CudaStream> {
        self.side.as_ref()
    }
}

/// One row's writers.
struct Row {
    mp4: Mp4Writer,
    gif: Option<GifWriter>,
    mp4_path: PathBuf,
    gif_path: PathBuf,
}

/// What one decoded block produced, for the streaming report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BlockEvent {
    pub block: usize,
    /// Frames per video after this block.
    pub frames: usize,
    /// Seconds since the sink was created, after the frames were encoded.
    pub at_s: f64,
}

/// Decodes blocks of latents and encodes them as they arrive.
pub struct VideoSink<'a> {
    dec: SideDecoder<'a>,
    /// The last block's decoded frames, not yet encoded (block index, [B, 3, t, H, W]).
    pending: Option<(usize, Tensor)>,
    rows: Vec<Option<Row>>,
    spec: Option<VideoSpec>,
    /// (mp4, gif) base paths per row; None for padding rows of a chunk.
    bases: Vec<Option<PathBuf>>,
    gif_scale: u32,
    mp4: Mp4Options,
    t0: Instant,
    pub events: Vec<BlockEvent>,
    frames: usize,
}

impl<'a> VideoSink<'a> {
    /// `bases[i]`: the output path without extension for row i (None: a padding row, not written).
    /// `gif_scale`: integer downscale of the GIF (1 = full size).
    pub fn new(
        vae: &'a WanVae,
        bases: Vec<Option<PathBuf>>,
        gif_scale: u32,
        device: Device,
        mp4: Mp4Options,
    ) -> Result<Self> {
        Ok(VideoSink {
            mp4,
            dec: SideDecoder::new(vae, device)?,
            pending: None,
            rows: bases.iter().map(|_| None).collect(),
            spec: None,
            bases,
            gif_scale,
            t0: Instant::now(),
            events: vec![],
            frames: 0,
        })
    }

    /// Queues the decode of block x0 [B, k, C, h, w] (stillflow's layout) and encodes the frames
    /// of the block before, whose decode ran beside this block's generation. On CPU (no side
    /// stream) a block is encoded at once.
    pub fn push_block(&mut self, block: usize, x0: &Tensor) -> Result<()> {
        let _g = tch::no_grad_guard();
        if let Some((b, v)) = self.pending.take() {
            self.encode(b, &v)?;
        }
        let video = self.dec.push(x0).context("VAE decode of a block")?;
        if self.dec.side().is_some() {
            self.pending = Some((block, video));
        } else {
            self.encode(block, &video)?;
        }
        Ok(())
    }

    /// Copies decoded frames [B, 3, t, H, W] to the host (after their decode) and encodes them.
    fn encode(&mut self, block: usize, video: &Tensor) -> Result<()> {
        let video = self.dec.with_side(|| Ok(video.to_device(Device::Cpu)))?;
        let size = video.size();
        ensure!(size.len() == 5, "VAE decode returned shape {size:?}");
        let (t, h, w) = (size[2], size[3], size[4]);
        let spec = *self.spec.get_or_insert(VideoSpec {
            width: w as u32,
            height: h as u32,
            fps: FPS,
        });
        for (i, base) in self.bases.iter().enumerate() {
            let Some(base) = base else { continue };
            if self.rows[i].is_none() {
                let mp4_path = base.with_extension("mp4");
                let gif_path = base.with_extension("gif");
                let gif_opts = GifOptions {
                    downscale: self.gif_scale,
                    ..GifOptions::default()
                };
                self.rows[i] = Some(Row {
                    mp4: Mp4Writer::create_with(&mp4_path, spec, &self.mp4)?,
                    gif: Some(GifWriter::create_with(&gif_path, spec, gif_opts)?),
                    mp4_path,
                    gif_path,
                });
            }
            let row = self.rows[i].as_mut().context("video row")?;
            let frames = frames_from_tensor(&video.get(i as i64))?;
            for f in &frames {
                row.mp4.push_frame(f)?;
                if let Some(g) = row.gif.as_mut() {
                    g.push_frame(f)?;
                }
            }
        }
        self.frames += t as usize;
        self.events.push(BlockEvent {
            block,
            frames: self.frames,
            at_s: self.t0.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    /// Frames per video so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Encodes the last block, finishes every file (atomic renames); returns the paths written
    /// and when each block's frames were encoded.
    pub fn finish(mut self) -> Result<(Vec<PathBuf>, Vec<BlockEvent>)> {
        if let Some((b, v)) = self.pending.take() {
            self.encode(b, &v)?;
        }
        let mut out = vec![];
        for row in self.rows.into_iter().flatten() {
            row.mp4.finish()?;
            out.push(row.mp4_path);
            if let Some(g) = row.gif {
                g.finish()?;
                out.push(row.gif_path);
            }
        }
        Ok((out, self.events))
    }
}

/// A file-name-safe short form of a prompt: `{idx:03}-{words}`.
pub fn file_stem(idx: usize, label: &str) -> String {
    let mut s: String = label
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    let s: String = s.trim_matches('_').chars().take(60).collect();
    if s.is_empty() {
        format!("{idx:03}")
    } else {
        format!("{idx:03}-{s}")
    }
}

/// The base path (no extension) of sample `idx` in `out`.
pub fn base_path(out: &Path, idx: usize, label: &str) -> PathBuf {
    out.join(file_stem(idx, label))
}
