//! A plotters backend that draws text with an embedded 8×8 bitmap font.
//!
//! plotters renders text through a font engine: `ttf` needs system fonts (fontconfig), which CI
//! machines and containers often lack, and `ab_glyph` needs a font file shipped with us. Without
//! either, plotters can lay text out but panics when it draws it. This wrapper forwards all
//! drawing to the bitmap backend and answers `draw_text` / `estimate_text_size` itself with the
//! public-domain 8×8 glyphs of the `font8x8` crate (ASCII), scaled by whole pixels, so charts
//! render identically everywhere and need no font at all.

use plotters::prelude::BitMapBackend;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

/// Pixels per glyph cell edge at scale 1.
const CELL: i32 = 8;

pub struct GlyphBackend<'a> {
    inner: BitMapBackend<'a>,
}

impl<'a> GlyphBackend<'a> {
    /// Draw into an RGB buffer of `w·h·3` bytes.
    pub fn with_buffer(buf: &'a mut [u8], (w, h): (u32, u32)) -> Self {
        GlyphBackend {
            inner: BitMapBackend::with_buffer(buf, (w, h)),
        }
    }
}

/// Whole-pixel scale for a font size in plotters' units (roughly pixels of the em box): sizes up
/// to ~20 draw 8 px glyphs, larger ones 16 px, and so on.
pub fn glyph_scale(size: f64) -> i32 {
    ((size / 14.0).round() as i32).max(1)
}

/// Width and height in pixels of `text` at font size `size`.
pub fn text_size(text: &str, size: f64) -> (u32, u32) {
    let s = glyph_scale(size);
    let n = text.chars().count() as i32;
    ((n * CELL * s) as u32, (CELL * s) as u32)
}

/// The 8 rows of a character's glyph (bit i of a row = column i, left to right); `?` for
/// characters outside ASCII.
pub fn glyph(c: char) -> [u8; 8] {
    let i = c as usize;
    if i < 128 {
        font8x8::legacy::BASIC_LEGACY[i]
    } else {
        font8x8::legacy::BASIC_LEGACY[b'?' as usize]
    }
}

impl DrawingBackend for GlyphBackend<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let s = glyph_scale(style.size());
        let (tw, th) = text_size(text, style.size());
        let (tw, th) = (tw as i32, th as i32);
        // Offsets of the anchor inside the unrotated text box.
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Center => -tw / 2,
            HPos::Right => -tw,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -th / 2,
            VPos::Bottom => -th,
        };
        let trans = style.transform();
        let (w, h) = self.get_size();
        for (k, c) in text.chars().enumerate() {
            let rows = glyph(c);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) == 0 {
                        continue;
                    }
                    for sy in 0..s {
                        for sx in 0..s {
                            let x = (k as i32 * CELL + col) * s + sx + dx;
                            let y = r as i32 * s + sy + dy;
                            let (x, y) = trans.transform(x, y);
                            let (x, y) = (pos.0 + x, pos.1 + y);
                            if x >= 0 && y >= 0 && (x as u32) < w && (y as u32) < h {
                                self.inner.draw_pixel((x, y), color)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        Ok(text_size(text, style.size()))
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_box_scales_with_size_and_length() {
        assert_eq!(text_size("abc", 12.0), (24, 8));
        assert_eq!(text_size("abc", 28.0), (48, 16));
        assert_eq!(text_size("", 12.0), (0, 8));
    }

    #[test]
    fn letters_have_ink_and_space_has_none() {
        assert!(glyph('A').iter().any(|r| *r != 0));
        assert!(glyph(' ').iter().all(|r| *r == 0));
        assert_eq!(glyph('é'), glyph('?'));
    }
}
