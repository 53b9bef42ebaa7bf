//! Things people look at: plots of a run (`plots.rs`), images and animations (`image.rs`), and
//! the bitmap-font plotters backend both use for text (`glyph.rs`). No tensors, no models.

pub mod glyph;
pub mod image;
pub mod plots;

pub use plots::write_plots;
