//! [`Mp4Writer`] and stillflow's own MP4 muxer (ISO/IEC 14496-12 boxes, avcC of 14496-15) for
//! one H.264 video track.
//!
//! File layout: `ftyp`, then `mdat` (16-byte large-size header, patched on finish) holding the
//! samples as they are encoded, then `moov` (sample tables are only known at the end). Each
//! sample is one frame: its NAL units, each prefixed by a 4-byte big-endian length. All samples
//! sit in one chunk, so `stsc`/`stco` have one entry. OpenH264 makes no B-frames, so decode
//! order is presentation order and no `ctts` is needed.

use super::ffmpeg::FfmpegWriter;
use super::h264::{AccessUnit, H264Encoder};
use super::{Mp4Options, PendingFile, VideoEncoder, VideoSpec, VideoSummary};
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Writes an H.264 MP4 frame by frame. See [`super`] for the atomic-write guarantee.
pub struct Mp4Writer {
    path: PathBuf,
    spec: VideoSpec,
    frames: u64,
    backend: Backend,
}

enum Backend {
    Native(Box<NativeMp4>),
    Ffmpeg(FfmpegWriter),
}

impl Mp4Writer {
    /// A writer with the default options (OpenH264, QP 20, an IDR every 32 frames).
    pub fn create(path: &Path, spec: VideoSpec) -> Result<Self> {
        Self::create_with(path, spec, &Mp4Options::default())
    }

    /// Checks the spec, starts the encoder and creates the temporary file (so an unwritable
    /// path fails here, before any frame is encoded).
    pub fn create_with(path: &Path, spec: VideoSpec, opts: &Mp4Options) -> Result<Self> {
        spec.check(path)?;
        ensure!(
            spec.width.is_multiple_of(2) && spec.height.is_multiple_of(2),
            "video {}: H.264 4:2:0 needs an even width and height, got {}x{} (frames are not \
             padded: crop or resize them to an even size)",
            path.display(),
            spec.width,
            spec.height
        );
        ensure!(
            (1..=51).contains(&opts.quality),
            "video {}: quality {} is outside 1..=51",
            path.display(),
            opts.quality
        );
        let backend = match &opts.encoder {
            VideoEncoder::OpenH264 => {
                let enc = H264Encoder::new(spec, opts.quality, opts.keyframe_interval)
                    .with_context(|| format!("video {}", path.display()))?;
                Backend::Native(Box::new(NativeMp4::create(path, spec, enc)?))
            }
            VideoEncoder::Ffmpeg { program } => {
                Backend::Ffmpeg(FfmpegWriter::spawn(path, spec, opts, program)?)
            }
        };
        Ok(Mp4Writer {
            path: path.to_path_buf(),
            spec,
            frames: 0,
            backend,
        })
    }

    /// Encodes one frame: RGB u8, row-major, exactly H·W·3 bytes.
    pub fn push_frame(&mut self, rgb: &[u8]) -> Result<()> {
        self.spec.check_frame(&self.path, self.frames, rgb)?;
        match &mut self.backend {
            Backend::Native(m) => m.push(rgb),
            Backend::Ffmpeg(f) => f.push(rgb),
        }
        .with_context(|| format!("video {}: frame {}", self.path.display(), self.frames))?;
        self.frames += 1;
        Ok(())
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Writes the index, closes the file and renames it to its final name. Zero frames is an
    /// error (and leaves no file).
    pub fn finish(self) -> Result<VideoSummary> {
        ensure!(
            self.frames > 0,
            "video {}: no frames were pushed; nothing written",
            self.path.display()
        );
        let (bytes, encoder) = match self.backend {
            Backend::Native(m) => (m.finish()?, "openh264"),
            Backend::Ffmpeg(f) => (f.finish()?, "ffmpeg/libx264"),
        };
        Ok(VideoSummary {
            path: self.path,
            frames: self.frames,
            bytes,
            width: self.spec.width,
            height: self.spec.height,
            fps: self.spec.fps,
            encoder: encoder.to_string(),
        })
    }
}

/// Media timescale ticks per frame: timescale = fps × this, so fps is exact and players that
/// dislike tiny timescales are happy.
const TICKS_PER_FRAME: u32 = 1000;
/// Movie (mvhd/tkhd) timescale: milliseconds.
const MOVIE_TIMESCALE: u32 = 1000;
/// The mdat header: 32-bit size 1, "mdat", 64-bit size.
const MDAT_HEADER_LEN: u64 = 16;

struct NativeMp4 {
    file: PendingFile,
    out: BufWriter<File>,
    enc: H264Encoder,
    spec: VideoSpec,
    sample_sizes: Vec<u32>,
    keyframes: Vec<u32>,
    /// File offset of the mdat box (right after ftyp).
    mdat_at: u64,
    mdat_bytes: u64,
}

impl NativeMp4 {
    fn create(path: &Path, spec: VideoSpec, enc: H264Encoder) -> Result<Self> {
        let file = PendingFile::new(path)?;
        let f = File::create(&file.tmp).with_context(|| {
            format!(
                "video {}: cannot create {}",
                path.display(),
                file.tmp.display()
            )
        })?;
        let mut out = BufWriter::new(f);
        let mut head = Vec::new();
        ftyp(&mut head);
        let mdat_at = head.len() as u64;
        head.extend_from_slice(&1u32.to_be_bytes()); // size 1: the 64-bit size follows
        head.extend_from_slice(b"mdat");
        head.extend_from_slice(&0u64.to_be_bytes()); // patched in finish
        out.write_all(&head)
            .with_context(|| format!("writing {}", file.tmp.display()))?;
        Ok(NativeMp4 {
            file,
            out,
            enc,
            spec,
            sample_sizes: Vec::new(),
            keyframes: Vec::new(),
            mdat_at,
            mdat_bytes: 0,
        })
    }

    fn push(&mut self, rgb: &[u8]) -> Result<()> {
        let AccessUnit { nals, keyframe } = self.enc.encode(rgb)?;
        let mut size = 0u64;
        for nal in &nals {
            let len = u32::try_from(nal.len()).context("a NAL unit over 4 GiB")?;
            self.out
                .write_all(&len.to_be_bytes())
                .and_then(|_| self.out.write_all(nal))
                .with_context(|| format!("writing {}", self.file.tmp.display()))?;
            size += 4 + nal.len() as u64;
        }
        let index = self.sample_sizes.len() as u32 + 1; // stss counts from 1
        if index == 1 && !keyframe {
            bail!("the first frame is not an IDR frame");
        }
        if keyframe {
            self.keyframes.push(index);
        }
        self.sample_sizes
            .push(u32::try_from(size).context("a frame over 4 GiB")?);
        self.mdat_bytes += size;
        Ok(())
    }

    fn finish(mut self) -> Result<u64> {
        let tmp = self.file.tmp.clone();
        let io =
            |e: std::io::Error| anyhow::Error::new(e).context(format!("writing {}", tmp.display()));
        let (sps, pps) = self
            .enc
            .parameter_sets()
            .context("the encoder produced no SPS/PPS")?;
        let moov = moov(
            &self.spec,
            sps,
            pps,
            &self.sample_sizes,
            &self.keyframes,
            self.mdat_at + MDAT_HEADER_LEN,
        )?;
        self.out.write_all(&moov).map_err(io)?;
        self.out
            .seek(SeekFrom::Start(self.mdat_at + 8))
            .map_err(io)?;
        self.out
            .write_all(&(MDAT_HEADER_LEN + self.mdat_bytes).to_be_bytes())
            .map_err(io)?;
        let f = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        // Data on disk before the rename, so a crash cannot leave a short file under the name.
        f.sync_all().map_err(io)?;
        drop(f);
        self.file.commit()
    }
}

/// Appends a box: 32-bit size, type, body written by `body`.
fn bx(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A full box: a box whose body starts with version (8 bits) and flags (24 bits).
fn full(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    bx(out, kind, |o| {
        o.extend_from_slice(&((u32::from(version) << 24) | (flags & 0xFF_FFFF)).to_be_bytes());
        body(o)
    })
}

fn u16s(o: &mut Vec<u8>, v: &[u16]) {
    v.iter().for_each(|x| o.extend_from_slice(&x.to_be_bytes()));
}

fn u32s(o: &mut Vec<u8>, v: &[u32]) {
    v.iter().for_each(|x| o.extend_from_slice(&x.to_be_bytes()));
}

/// The unity transformation matrix of mvhd/tkhd (16.16 and 2.30 fixed point).
const MATRIX: [u32; 9] = [0x1_0000, 0, 0, 0, 0x1_0000, 0, 0, 0, 0x4000_0000];

fn ftyp(o: &mut Vec<u8>) {
    bx(o, b"ftyp", |o| {
        o.extend_from_slice(b"isom");
        u32s(o, &[0x200]);
        o.extend_from_slice(b"isomavc1mp41");
    });
}

/// The `moov` box: movie header, one video track with its sample tables.
fn moov(
    spec: &VideoSpec,
    sps: &[u8],
    pps: &[u8],
    sizes: &[u32],
    keyframes: &[u32],
    first_offset: u64,
) -> Result<Vec<u8>> {
    let n = u32::try_from(sizes.len()).context("more than 2^32 frames")?;
    let timescale = spec.fps * TICKS_PER_FRAME;
    let media_duration = u32::try_from(u64::from(n) * u64::from(TICKS_PER_FRAME))
        .context("the clip is too long for 32-bit MP4 durations")?;
    let movie_duration =
        u32::try_from(u64::from(n) * u64::from(MOVIE_TIMESCALE) / u64::from(spec.fps))
            .context("the clip is too long for 32-bit MP4 durations")?;
    let (w, h) = (spec.width, spec.height);
    ensure!(w <= 0xFFFF && h <= 0xFFFF, "{w}x{h} is too large for MP4");
    let mut o = Vec::new();
    bx(&mut o, b"moov", |o| {
        full(o, b"mvhd", 0, 0, |o| {
            u32s(o, &[0, 0, MOVIE_TIMESCALE, movie_duration, 0x1_0000]);
            u16s(o, &[0x0100, 0]); // volume 1.0, reserved
            u32s(o, &[0, 0]);
            u32s(o, &MATRIX);
            u32s(o, &[0; 6]); // pre_defined
            u32s(o, &[2]); // next_track_ID
        });
        bx(o, b"trak", |o| {
            // flags: enabled | in movie | in preview
            full(o, b"tkhd", 0, 7, |o| {
                u32s(o, &[0, 0, 1, 0, movie_duration, 0, 0]);
                u16s(o, &[0, 0, 0, 0]); // layer, alternate_group, volume (0: video), reserved
                u32s(o, &MATRIX);
                u32s(o, &[w << 16, h << 16]);
            });
            bx(o, b"mdia", |o| {
                full(o, b"mdhd", 0, 0, |o| {
                    u32s(o, &[0, 0, timescale, media_duration]);
                    u16s(o, &[0x55C4, 0]); // language "und" (packed ISO-639-2), pre_defined
                });
                full(o, b"hdlr", 0, 0, |o| {
                    u32s(o, &[0]);
                    o.extend_from_slice(b"vide");
                    u32s(o, &[0, 0, 0]);
                    o.extend_from_slice(b"VideoHandler\0");
                });
                bx(o, b"minf", |o| {
                    full(o, b"vmhd", 0, 1, |o| u16s(o, &[0, 0, 0, 0]));
                    bx(o, b"dinf", |o| {
                        full(o, b"dref", 0, 0, |o| {
                            u32s(o, &[1]);
                            full(o, b"url ", 0, 1, |_| {}); // flag 1: data in this file
                        })
                    });
                    stbl(
                        o,
                        w as u16,
                        h as u16,
                        sps,
                        pps,
                        sizes,
                        keyframes,
                        first_offset,
                    );
                });
            });
        });
    });
    Ok(o)
}

#[allow(clippy::too_many_arguments)]
fn stbl(
    o: &mut Vec<u8>,
    w: u16,
    h: u16,
    sps: &[u8],
    pps: &[u8],
    sizes: &[u32],
    keyframes: &[u32],
    first_offset: u64,
) {
    let n = sizes.len() as u32;
    bx(o, b"stbl", |o| {
        full(o, b"stsd", 0, 0, |o| {
            u32s(o, &[1]);
            bx(o, b"avc1", |o| {
                o.extend_from_slice(&[0; 6]); // reserved
                u16s(o, &[1, 0, 0]); // data_reference_index, pre_defined, reserved
                u32s(o, &[0, 0, 0]); // pre_defined
                u16s(o, &[w, h]);
                u32s(o, &[0x0048_0000, 0x0048_0000, 0]); // 72 dpi, reserved
                u16s(o, &[1]); // frame_count
                let mut name = [0u8; 32]; // Pascal string
                let label = b"stillflow openh264";
                name[0] = label.len() as u8;
                name[1..=label.len()].copy_from_slice(label);
                o.extend_from_slice(&name);
                u16s(o, &[0x0018, 0xFFFF]); // depth 24, pre_defined -1
                avcc(o, sps, pps);
            });
        });
        full(o, b"stts", 0, 0, |o| u32s(o, &[1, n, TICKS_PER_FRAME]));
        full(o, b"stss", 0, 0, |o| {
            u32s(o, &[keyframes.len() as u32]);
            u32s(o, keyframes);
        });
        full(o, b"stsc", 0, 0, |o| u32s(o, &[1, 1, n, 1]));
        full(o, b"stsz", 0, 0, |o| {
            u32s(o, &[0, n]);
            u32s(o, sizes);
        });
        // One chunk, right after the mdat header (offset 44: always fits 32 bits).
        full(o, b"stco", 0, 0, |o| u32s(o, &[1, first_offset as u32]));
    });
}

/// AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1) with one SPS and one PPS.
fn avcc(o: &mut Vec<u8>, sps: &[u8], pps: &[u8]) {
    bx(o, b"avcC", |o| {
        // configurationVersion, then profile, compatibility flags and level copied from the
        // SPS (its bytes 1..=3), then lengthSizeMinusOne = 3 (4-byte NAL lengths).
        let byte = |i: usize| sps.get(i).copied().unwrap_or(0);
        let profile = byte(1);
        o.extend_from_slice(&[1, profile, byte(2), byte(3), 0xFC | 3]);
        o.push(0xE0 | 1);
        u16s(o, &[sps.len() as u16]);
        o.extend_from_slice(sps);
        o.push(1);
        u16s(o, &[pps.len() as u16]);
        o.extend_from_slice(pps);
        if matches!(profile, 100 | 110 | 122 | 144) {
            // High profiles: chroma 4:2:0, 8-bit luma and chroma, no SPS extensions.
            o.extend_from_slice(&[0xFC | 1, 0xF8, 0xF8, 0]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the boxes of `data` and returns (type, size) of the top-level ones.
    fn top_boxes(data: &[u8]) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 8 <= data.len() {
            let size = u32::from_be_bytes(data[i..i + 4].try_into().unwrap());
            out.push((
                String::from_utf8_lossy(&data[i + 4..i + 8]).into_owned(),
                size,
            ));
            i += size as usize;
        }
        out
    }

    #[test]
    fn moov_box_sizes_add_up() {
        let spec = VideoSpec {
            width: 64,
            height: 48,
            fps: 16,
        };
        let sps = [0x67, 66, 0xC0, 30, 1, 2];
        let m = moov(&spec, &sps, &[0x68, 1], &[10, 20, 30], &[1], 48).unwrap();
        assert_eq!(top_boxes(&m), vec![("moov".to_string(), m.len() as u32)]);
        let avcc = m.windows(4).position(|w| w == b"avcC").unwrap();
        assert_eq!(&m[avcc + 4..avcc + 9], &[1, 66, 0xC0, 30, 0xFF]);
        let stsz = m.windows(4).position(|w| w == b"stsz").unwrap();
        assert_eq!(&m[stsz + 12..stsz + 16], &3u32.to_be_bytes());
    }
}
