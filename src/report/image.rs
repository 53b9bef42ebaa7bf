//! RGB images: an in-memory canvas, PNG and animated-GIF files (written to a temporary name and
//! renamed, so a reader never sees half a file).

use anyhow::{ensure, Context, Result};
use std::io::BufWriter;
use std::path::Path;

/// An 8-bit RGB image, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb {
    pub w: u32,
    pub h: u32,
    pub data: Vec<u8>,
}

impl Rgb {
    pub fn new(w: u32, h: u32, fill: [u8; 3]) -> Self {
        let mut data = Vec::with_capacity((w * h * 3) as usize);
        for _ in 0..w * h {
            data.extend_from_slice(&fill);
        }
        Rgb { w, h, data }
    }

    /// Fill the rectangle at (x, y) of size (w, h), clipped to the image.
    pub fn fill_rect(&mut self, x: u32, y: u32, w: u32, h: u32, c: [u8; 3]) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let i = ((yy * self.w + xx) * 3) as usize;
                self.data[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Copy `src` into this image with its top-left corner at (x, y), clipped.
    pub fn blit(&mut self, src: &Rgb, x: u32, y: u32) {
        for sy in 0..src.h {
            let ty = y + sy;
            if ty >= self.h {
                break;
            }
            let n = src.w.min(self.w.saturating_sub(x)) as usize;
            let s = (sy * src.w * 3) as usize;
            let t = ((ty * self.w + x) * 3) as usize;
            self.data[t..t + 3 * n].copy_from_slice(&src.data[s..s + 3 * n]);
        }
    }
}

fn tmp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn finish(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Write `img` as an 8-bit RGB PNG.
pub fn write_png(path: &Path, img: &Rgb) -> Result<()> {
    ensure!(
        img.data.len() == (img.w * img.h * 3) as usize && img.w > 0 && img.h > 0,
        "write_png {}: {}x{} image with {} bytes",
        path.display(),
        img.w,
        img.h,
        img.data.len()
    );
    let tmp = tmp_path(path);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), img.w, img.h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc
        .write_header()
        .with_context(|| format!("writing {}", tmp.display()))?;
    wr.write_image_data(&img.data)
        .with_context(|| format!("writing {}", tmp.display()))?;
    wr.finish()
        .with_context(|| format!("writing {}", tmp.display()))?;
    finish(&tmp, path)
}

/// Write `frames` (all the same size) as an animated GIF that loops forever, `delay_cs`
/// hundredths of a second per frame. Colours are quantised per frame (NeuQuant; deterministic).
pub fn write_gif(path: &Path, frames: &[Rgb], delay_cs: u16) -> Result<()> {
    let first = frames
        .first()
        .with_context(|| format!("write_gif {}: no frames", path.display()))?;
    let (w, h) = (first.w, first.h);
    ensure!(
        w <= u16::MAX as u32 && h <= u16::MAX as u32,
        "write_gif {}: {w}x{h} is larger than a GIF can hold",
        path.display()
    );
    let tmp = tmp_path(path);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut enc = gif::Encoder::new(BufWriter::new(file), w as u16, h as u16, &[])
        .with_context(|| format!("writing {}", tmp.display()))?;
    enc.set_repeat(gif::Repeat::Infinite)
        .with_context(|| format!("writing {}", tmp.display()))?;
    for (i, f) in frames.iter().enumerate() {
        ensure!(
            f.w == w && f.h == h,
            "write_gif {}: frame {i} is {}x{}, the first is {w}x{h}",
            path.display(),
            f.w,
            f.h
        );
        let mut frame = gif::Frame::from_rgb_speed(w as u16, h as u16, &f.data, 10);
        frame.delay = delay_cs;
        enc.write_frame(&frame)
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    drop(enc);
    finish(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rects_and_blits_clip() {
        let mut a = Rgb::new(4, 3, [0, 0, 0]);
        a.fill_rect(2, 1, 10, 10, [255, 0, 0]);
        assert_eq!(&a.data[((4 + 2) * 3)..((4 + 2) * 3 + 3)], &[255, 0, 0]);
        assert_eq!(&a.data[..3], &[0, 0, 0]);
        let b = Rgb::new(3, 3, [9, 9, 9]);
        a.blit(&b, 2, 2);
        assert_eq!(&a.data[((2 * 4 + 3) * 3)..], &[9, 9, 9]);
        assert_eq!(
            &a.data[((2 * 4 + 1) * 3)..((2 * 4 + 1) * 3 + 3)],
            &[0, 0, 0]
        );
    }

    #[test]
    fn png_and_gif_files_have_their_signatures() {
        let d = tempfile::tempdir().unwrap();
        let mut img = Rgb::new(5, 4, [10, 20, 30]);
        img.fill_rect(0, 0, 2, 2, [200, 100, 0]);
        let p = d.path().join("a.png");
        write_png(&p, &img).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let g = d.path().join("a.gif");
        write_gif(&g, &[img.clone(), Rgb::new(5, 4, [0, 0, 0])], 20).unwrap();
        let bytes = std::fs::read(&g).unwrap();
        assert_eq!(&bytes[..6], b"GIF89a");
        assert!(write_gif(&g, &[img, Rgb::new(2, 2, [0, 0, 0])], 20).is_err());
    }
}
