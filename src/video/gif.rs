//! [`GifWriter`]: animated GIF written frame by frame (loops forever), with an optional integer
//! box downscale and either a per-frame NeuQuant palette (best colours) or a fixed 6×7×6 palette
//! with 4×4 ordered dithering (fast, no per-frame palette cost).

use super::{PendingFile, VideoSpec, VideoSummary};
use anyhow::{ensure, Context, Result};
use std::borrow::Cow;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// How colours are reduced to a GIF's 256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GifPalette {
    /// NeuQuant per frame (the `gif` crate's quantiser, deterministic); `speed` 1 (best) ..= 30
    /// (fastest); 10 is a good default.
    PerFrame { speed: i32 },
    /// One global palette of 6 red × 7 green × 6 blue levels, ordered dithering.
    Fixed676,
}

/// Options of [`GifWriter::create_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GifOptions {
    /// Write every frame shrunk by this integer factor (mean of each factor×factor block; a
    /// leftover edge narrower than the factor is dropped). 1: full size.
    pub downscale: u32,
    pub palette: GifPalette,
}

impl Default for GifOptions {
    fn default() -> Self {
        GifOptions {
            downscale: 1,
            palette: GifPalette::PerFrame { speed: 10 },
        }
    }
}

/// Writes an animated GIF frame by frame; same shape of API as [`super::Mp4Writer`].
pub struct GifWriter {
    path: PathBuf,
    spec: VideoSpec,
    opts: GifOptions,
    out_w: u16,
    out_h: u16,
    frames: u64,
    enc: ::gif::Encoder<BufWriter<File>>,
    /// Declared after `enc`, so a dropped writer closes the file before removing it.
    file: PendingFile,
}

impl GifWriter {
    /// Full size, per-frame NeuQuant palette.
    pub fn create(path: &Path, spec: VideoSpec) -> Result<Self> {
        Self::create_with(path, spec, GifOptions::default())
    }

    pub fn create_with(path: &Path, spec: VideoSpec, opts: GifOptions) -> Result<Self> {
        spec.check(path)?;
        let d = opts.downscale;
        ensure!(
            d >= 1 && d <= spec.width && d <= spec.height,
            "gif {}: downscale factor {d} must be in 1..=min(width, height) = 1..={}",
            path.display(),
            spec.width.min(spec.height)
        );
        if let GifPalette::PerFrame { speed } = opts.palette {
            ensure!(
                (1..=30).contains(&speed),
                "gif {}: NeuQuant speed {speed} is outside 1..=30",
                path.display()
            );
        }
        let (ow, oh) = (spec.width / d, spec.height / d);
        ensure!(
            ow <= u32::from(u16::MAX) && oh <= u32::from(u16::MAX),
            "gif {}: {ow}x{oh} is larger than a GIF can hold (65535x65535)",
            path.display()
        );
        let file = PendingFile::new(path)?;
        let f = File::create(&file.tmp).with_context(|| {
            format!(
                "gif {}: cannot create {}",
                path.display(),
                file.tmp.display()
            )
        })?;
        let global: Vec<u8> = match opts.palette {
            GifPalette::Fixed676 => fixed_palette(),
            GifPalette::PerFrame { .. } => Vec::new(),
        };
        let mut enc = ::gif::Encoder::new(BufWriter::new(f), ow as u16, oh as u16, &global)
            .with_context(|| format!("writing {}", file.tmp.display()))?;
        enc.set_repeat(::gif::Repeat::Infinite)
            .with_context(|| format!("writing {}", file.tmp.display()))?;
        Ok(GifWriter {
            path: path.to_path_buf(),
            spec,
            opts,
            out_w: ow as u16,
            out_h: oh as u16,
            frames: 0,
            enc,
            file,
        })
    }

    /// Adds one frame: RGB u8, row-major, exactly H·W·3 bytes of the spec's size.
    pub fn push_frame(&mut self, rgb: &[u8]) -> Result<()> {
        self.spec.check_frame(&self.path, self.frames, rgb)?;
        let small: Cow<[u8]> = if self.opts.downscale == 1 {
            Cow::Borrowed(rgb)
        } else {
            Cow::Owned(box_downscale(
                rgb,
                self.spec.width as usize,
                self.spec.height as usize,
                self.opts.downscale as usize,
            ))
        };
        let (w, h) = (self.out_w, self.out_h);
        let mut frame = match self.opts.palette {
            GifPalette::PerFrame { speed } => ::gif::Frame::from_rgb_speed(w, h, &small, speed),
            GifPalette::Fixed676 => ::gif::Frame {
                width: w,
                height: h,
                buffer: Cow::Owned(dither_fixed(&small, w as usize)),
                ..::gif::Frame::default()
            },
        };
        frame.delay = delay_cs(self.frames, self.spec.fps);
        self.enc.write_frame(&frame).with_context(|| {
            format!(
                "gif {}: writing frame {} to {}",
                self.path.display(),
                self.frames,
                self.file.tmp.display()
            )
        })?;
        self.frames += 1;
        Ok(())
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Writes the trailer and renames the file to its final name; zero frames is an error.
    pub fn finish(self) -> Result<VideoSummary> {
        ensure!(
            self.frames > 0,
            "gif {}: no frames were pushed; nothing written",
            self.path.display()
        );
        let tmp = self.file.tmp.clone();
        let buf = self
            .enc
            .into_inner()
            .with_context(|| format!("writing {}", tmp.display()))?;
        let f = buf
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        drop(f);
        let bytes = self.file.commit()?;
        Ok(VideoSummary {
            path: self.path,
            frames: self.frames,
            bytes,
            width: u32::from(self.out_w),
            height: u32::from(self.out_h),
            fps: self.spec.fps,
            encoder: "gif".to_string(),
        })
    }
}

/// GIF delays are whole centiseconds; frame i gets round(100(i+1)/fps) − round(100i/fps), so
/// 16 fps alternates 6 and 7 cs and the clip's total length stays exact.
fn delay_cs(i: u64, fps: u32) -> u16 {
    let fps = u64::from(fps);
    let at = |k: u64| (100 * k + fps / 2) / fps;
    (at(i + 1) - at(i)) as u16
}

/// Mean of each d×d block (integer factor), dropping a leftover edge.
fn box_downscale(rgb: &[u8], w: usize, h: usize, d: usize) -> Vec<u8> {
    let (ow, oh) = (w / d, h / d);
    let mut out = Vec::with_capacity(ow * oh * 3);
    let n = (d * d) as u32;
    for oy in 0..oh {
        for ox in 0..ow {
            let mut s = [0u32; 3];
            for y in oy * d..(oy + 1) * d {
                let row = &rgb[(y * w + ox * d) * 3..(y * w + (ox + 1) * d) * 3];
                for px in row.chunks_exact(3) {
                    for c in 0..3 {
                        s[c] += u32::from(px[c]);
                    }
                }
            }
            out.extend(s.iter().map(|v| ((v + n / 2) / n) as u8));
        }
    }
    out
}

const LEVELS: [usize; 3] = [6, 7, 6];

/// The 252 colours of the fixed palette, index = (r·7 + g)·6 + b.
fn fixed_palette() -> Vec<u8> {
    let level = |i: usize, n: usize| ((i * 255 + (n - 1) / 2) / (n - 1)) as u8;
    let mut p = Vec::with_capacity(252 * 3);
    for r in 0..LEVELS[0] {
        for g in 0..LEVELS[1] {
            for b in 0..LEVELS[2] {
                p.extend_from_slice(&[level(r, 6), level(g, 7), level(b, 6)]);
            }
        }
    }
    p
}

/// 4×4 Bayer thresholds in (0, 1), for ordered dithering.
const BAYER4: [f32; 16] = [
    0.5, 8.5, 2.5, 10.5, 12.5, 4.5, 14.5, 6.5, 3.5, 11.5, 1.5, 9.5, 15.5, 7.5, 13.5, 5.5,
];

/// Maps each pixel to the fixed palette, rounding up or down per the Bayer threshold so flat
/// gradients do not band.
fn dither_fixed(rgb: &[u8], w: usize) -> Vec<u8> {
    rgb.chunks_exact(3)
        .enumerate()
        .map(|(i, px)| {
            let t = BAYER4[(i / w % 4) * 4 + i % w % 4] / 16.0;
            let q = |c: usize| {
                let steps = (LEVELS[c] - 1) as f32;
                let x = f32::from(px[c]) / 255.0 * steps;
                ((x.floor() + if x.fract() > t { 1.0 } else { 0.0 }) as usize).min(LEVELS[c] - 1)
            };
            ((q(0) * 7 + q(1)) * 6 + q(2)) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_keep_the_clip_length() {
        let total: u32 = (0..16).map(|i| u32::from(delay_cs(i, 16))).sum();
        assert_eq!(total, 100);
        assert_eq!(delay_cs(0, 16), 6);
        assert_eq!(delay_cs(0, 10), 10);
    }

    #[test]
    fn downscale_averages_blocks() {
        // 3x2 image, factor 2: one output pixel from the left 2x2 block, the last column dropped.
        let rgb = [
            0, 0, 0, 10, 20, 30, 99, 99, 99, 2, 4, 6, 4, 8, 12, 99, 99, 99,
        ];
        assert_eq!(box_downscale(&rgb, 3, 2, 2), vec![4, 8, 12]);
    }

    #[test]
    fn fixed_palette_maps_primaries_exactly() {
        let p = fixed_palette();
        assert_eq!(p.len(), 252 * 3);
        let idx = dither_fixed(&[255, 255, 255, 0, 0, 0, 255, 0, 0], 3);
        assert_eq!(&p[idx[0] as usize * 3..][..3], &[255, 255, 255]);
        assert_eq!(&p[idx[1] as usize * 3..][..3], &[0, 0, 0]);
        assert_eq!(&p[idx[2] as usize * 3..][..3], &[255, 0, 0]);
    }
}
