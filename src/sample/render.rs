//! Pictures of generated latents: a PNG grid (one row per sample, one column per frame) and an
//! animated GIF over frames (all samples side by side).
//!
//! Two renderings:
//! - **pixels** (C = 1 or 3: pixel-space models): value v ↦ (v·0.5 + 0.5) clamped to [0, 1],
//!   as the reference decodes its videos (spec §7), grey or RGB;
//! - **channels** (toy latents): every channel is an H×W block, blocks on a near-square grid,
//!   colours diverging (blue < 0 < red) on a scale shared by all samples, so a mode's pattern is
//!   recognisable across samples and frames.
//!
//! Latent-space video models (Wan: 16 channels, 60×104) need their VAE to become pictures, which
//! stillflow does not have: `Rendering::None`.

use crate::report::glyph::text_size;
use crate::report::image::Rgb;
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rendering {
    Pixels,
    Channels,
    None,
}

/// How to draw latents of `channels` × `h` × `w` (`toy`: the latents of an embedded toy problem).
pub fn rendering(channels: i64, h: i64, w: i64, toy: bool) -> Rendering {
    if channels == 1 || channels == 3 {
        Rendering::Pixels
    } else if toy || channels * h * w <= 4096 {
        Rendering::Channels
    } else {
        Rendering::None
    }
}

const BG: [u8; 3] = [236, 236, 236];
const INK: [u8; 3] = [40, 40, 40];
const GAP: u32 = 10;
/// Pixels between the channel blocks of one tile.
const SEP: u32 = 2;
/// Target edge of one tile in pixels (small latents are upscaled by whole pixels).
const TILE: u32 = 48;

/// Latents [N, F, C, H, W] as host f32 values with their shape.
pub struct Latents {
    pub shape: [usize; 5],
    pub data: Vec<f32>,
    /// Colour scale of the channel rendering (robust max |v|).
    scale: f32,
}

impl Latents {
    pub fn new(x: &Tensor) -> anyhow::Result<Self> {
        let s = x.size();
        anyhow::ensure!(s.len() == 5, "latents must be [N, F, C, H, W], got {s:?}");
        let shape = [
            s[0] as usize,
            s[1] as usize,
            s[2] as usize,
            s[3] as usize,
            s[4] as usize,
        ];
        let data: Vec<f32> = Vec::try_from(
            x.to_kind(Kind::Float)
                .to_device(tch::Device::Cpu)
                .flatten(0, -1),
        )?;
        // 99th percentile of |v|: one outlier must not wash out every other tile.
        let mut mags: Vec<f32> = data
            .iter()
            .map(|v| v.abs())
            .filter(|v| v.is_finite())
            .collect();
        mags.sort_by(|a, b| a.total_cmp(b));
        let scale = mags
            .get(((mags.len() as f64 * 0.99) as usize).min(mags.len().saturating_sub(1)))
            .copied()
            .unwrap_or(1.0)
            .max(1e-6);
        Ok(Latents { shape, data, scale })
    }

    fn at(&self, n: usize, f: usize, c: usize, y: usize, x: usize) -> f32 {
        let [_, ff, cc, hh, ww] = self.shape;
        self.data[(((n * ff + f) * cc + c) * hh + y) * ww + x]
    }

    /// Channel blocks per row and rows of blocks (channel rendering).
    fn block_grid(&self) -> (usize, usize) {
        let c = self.shape[2];
        let cols = (c as f64).sqrt().ceil().max(1.0) as usize;
        (cols, c.div_ceil(cols))
    }

    /// Whole-pixel upscaling of one latent pixel, so a tile is about `TILE` pixels on its longer
    /// edge.
    fn zoom(&self, mode: Rendering) -> u32 {
        let [_, _, _, h, w] = self.shape;
        let (bc, br) = match mode {
            Rendering::Channels => self.block_grid(),
            _ => (1, 1),
        };
        (TILE / ((bc * w).max(br * h) as u32).max(1)).max(1)
    }

    /// Size in pixels of one frame's tile: channel blocks are separated by `SEP` pixels (thin,
    /// so that they do not read as gaps between frames).
    fn tile_size(&self, mode: Rendering) -> (u32, u32) {
        let [_, _, _, h, w] = self.shape;
        let z = self.zoom(mode);
        match mode {
            Rendering::Channels => {
                let (bc, br) = self.block_grid();
                let (bc, br) = (bc as u32, br as u32);
                (
                    bc * w as u32 * z + (bc - 1) * SEP,
                    br * h as u32 * z + (br - 1) * SEP,
                )
            }
            _ => (w as u32 * z, h as u32 * z),
        }
    }

    /// The picture of frame `f` of sample `n`, upscaled.
    pub fn tile(&self, n: usize, f: usize, mode: Rendering) -> Rgb {
        let [_, _, c, h, w] = self.shape;
        let (tw, th) = self.tile_size(mode);
        let z = self.zoom(mode);
        // The background shows between channel blocks; white would read as value 0.
        let mut img = Rgb::new(tw, th, BG);
        match mode {
            Rendering::Pixels => {
                for y in 0..h {
                    for x in 0..w {
                        let px = |ch: usize| {
                            let v = self.at(n, f, ch.min(c - 1), y, x);
                            ((v * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8
                        };
                        let rgb = if c == 3 {
                            [px(0), px(1), px(2)]
                        } else {
                            [px(0); 3]
                        };
                        img.fill_rect(x as u32 * z, y as u32 * z, z, z, rgb);
                    }
                }
            }
            _ => {
                let (bc, _) = self.block_grid();
                for ch in 0..c {
                    let bx = (ch % bc) as u32 * (w as u32 * z + SEP);
                    let by = (ch / bc) as u32 * (h as u32 * z + SEP);
                    for y in 0..h {
                        for x in 0..w {
                            let v = self.at(n, f, ch, y, x) / self.scale;
                            let (px, py) = (bx + x as u32 * z, by + y as u32 * z);
                            img.fill_rect(px, py, z, z, diverging(v));
                        }
                    }
                }
            }
        }
        img
    }
}

/// Blue (−1) → white (0) → red (+1), clamped; NaN is black.
pub fn diverging(v: f32) -> [u8; 3] {
    if !v.is_finite() {
        return [0, 0, 0];
    }
    let t = v.clamp(-1.0, 1.0);
    let m = ((1.0 - t.abs()) * 255.0).round() as u8;
    if t >= 0.0 {
        [255, m, m]
    } else {
        [m, m, 255]
    }
}

/// Draw `text` with the embedded 8×8 font (scale 1), top-left at (x, y), clipped.
pub fn draw_text(img: &mut Rgb, x: u32, y: u32, text: &str, color: [u8; 3]) {
    for (k, ch) in text.chars().enumerate() {
        let rows = crate::report::glyph::glyph(ch);
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) != 0 {
                    img.fill_rect(x + k as u32 * 8 + col, y + r as u32, 1, 1, color);
                }
            }
        }
    }
}

/// The grid: one row per sample (labelled), one column per frame (labelled).
pub fn grid(lat: &Latents, labels: &[String], mode: Rendering, max_rows: usize) -> Rgb {
    let [n, f, ..] = lat.shape;
    let rows = n.min(max_rows);
    let probe = lat.tile(0, 0, mode);
    let (tw, th) = (probe.w, probe.h);
    let label_w = labels
        .iter()
        .take(rows)
        .map(|l| text_size(l, 12.0).0)
        .max()
        .unwrap_or(0)
        + 2 * GAP;
    let head = 8 + 2 * GAP;
    let w = label_w + f as u32 * (tw + GAP) + GAP;
    let h = head + rows as u32 * (th + GAP);
    let mut img = Rgb::new(w, h, BG);
    for fr in 0..f {
        let x = label_w + fr as u32 * (tw + GAP);
        draw_text(&mut img, x, GAP, &format!("f{fr}"), INK);
    }
    for s in 0..rows {
        let y = head + s as u32 * (th + GAP);
        if let Some(l) = labels.get(s) {
            draw_text(&mut img, GAP, y + th.saturating_sub(8) / 2, l, INK);
        }
        for fr in 0..f {
            img.blit(&lat.tile(s, fr, mode), label_w + fr as u32 * (tw + GAP), y);
        }
    }
    img
}

/// GIF frames: frame `f` of every sample (up to `max_samples`) on a near-square grid, with a
/// "frame f/F" caption.
pub fn animation(lat: &Latents, mode: Rendering, max_samples: usize) -> Vec<Rgb> {
    let [n, f, ..] = lat.shape;
    let k = n.min(max_samples).max(1);
    let cols = (k as f64).sqrt().ceil() as usize;
    let rows = k.div_ceil(cols);
    let probe = lat.tile(0, 0, mode);
    let (tw, th) = (probe.w, probe.h);
    let head = 8 + 2 * GAP;
    let w = (cols as u32 * (tw + GAP) + GAP).max(text_size("frame 00/00", 12.0).0 + 2 * GAP);
    let h = head + rows as u32 * (th + GAP);
    (0..f)
        .map(|fr| {
            let mut img = Rgb::new(w, h, BG);
            draw_text(&mut img, GAP, GAP, &format!("frame {}/{f}", fr + 1), INK);
            for s in 0..k.min(n) {
                let (c, r) = ((s % cols) as u32, (s / cols) as u32);
                img.blit(
                    &lat.tile(s, fr, mode),
                    GAP + c * (tw + GAP),
                    head + r * (th + GAP),
                );
            }
            img
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renderings_by_shape() {
        assert_eq!(rendering(3, 64, 64, false), Rendering::Pixels);
        assert_eq!(rendering(1, 8, 8, false), Rendering::Pixels);
        assert_eq!(rendering(4, 2, 2, true), Rendering::Channels);
        assert_eq!(rendering(16, 60, 104, false), Rendering::None);
    }

    #[test]
    fn diverging_colours() {
        assert_eq!(diverging(0.0), [255, 255, 255]);
        assert_eq!(diverging(1.0), [255, 0, 0]);
        assert_eq!(diverging(-5.0), [0, 0, 255]);
        assert_eq!(diverging(f32::NAN), [0, 0, 0]);
    }

    #[test]
    fn grid_has_one_tile_per_sample_and_frame() {
        let x = Tensor::arange(2 * 3 * 4 * 2 * 2, (Kind::Float, tch::Device::Cpu))
            .reshape([2, 3, 4, 2, 2])
            - 24.0;
        let lat = Latents::new(&x).unwrap();
        // 4 channels of 2×2 → 2×2 blocks of 2×2 pixels zoomed ×12, 2-pixel separators: 50 px.
        let t = lat.tile(0, 0, Rendering::Channels);
        assert_eq!((t.w, t.h), (50, 50));
        let g = grid(&lat, &["a".into(), "b".into()], Rendering::Channels, 64);
        assert!(g.w >= 3 * 50 && g.h >= 2 * 50);
        let a = animation(&lat, Rendering::Channels, 64);
        assert_eq!(a.len(), 3);
        assert_ne!(a[0], a[2], "frames differ");
    }
}
