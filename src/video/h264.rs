//! H.264 encoding with OpenH264 (built from the source the `openh264` crate bundles): RGB u8 →
//! I420 in BT.601 limited range (the colour space decoders assume when none is signalled; we
//! also signal it in the SPS's VUI), one access unit per frame, NAL units without start codes.

use super::VideoSpec;
use anyhow::{anyhow, bail, ensure, Context, Result};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, QpRange,
    RateControlMode, VuiConfig,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;

/// NAL unit types (H.264 Table 7-1) that matter here.
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// One encoded frame: its NAL units (no start codes), parameter sets removed (they live in the
/// MP4's avcC box).
pub(crate) struct AccessUnit {
    pub nals: Vec<Vec<u8>>,
    pub keyframe: bool,
}

pub(crate) struct H264Encoder {
    enc: Encoder,
    width: usize,
    height: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
}

impl H264Encoder {
    /// `qp`: fixed quantiser 1..=51; `keyframe_interval`: IDR period in frames (0: first only).
    pub fn new(spec: VideoSpec, qp: u8, keyframe_interval: u32) -> Result<Self> {
        // OpenH264 treats a QP bound of 0 as "unset" and falls back to its default range.
        ensure!(
            (1..=51).contains(&qp),
            "H.264 quality (QP) {qp} is outside 1..=51"
        );
        ensure!(
            spec.width.is_multiple_of(2) && spec.height.is_multiple_of(2),
            "H.264 4:2:0 needs an even width and height, got {}x{} (frames are not padded: \
             crop or resize them to an even size)",
            spec.width,
            spec.height
        );
        // OpenH264's own limit (level 5.2).
        ensure!(
            spec.width.max(spec.height) <= 3840 && spec.width.min(spec.height) <= 2160,
            "OpenH264 encodes at most 3840x2160, got {}x{}",
            spec.width,
            spec.height
        );
        // A pinned QP keeps quality the same whatever the clip. OpenH264's "rate control off"
        // ignores the QP range (it uses a built-in QP of 26), so we use its buffer-based mode,
        // which clamps every frame's QP to [qp, qp] (up to qp+2 on a scene cut). The bitrate
        // only sets the signalled level there. No skipped frames, so the file has exactly as
        // many frames as were pushed; one thread, so the bytes do not depend on the machine.
        let bps = (u64::from(spec.width) * u64::from(spec.height) * u64::from(spec.fps) / 2)
            .clamp(100_000, 50_000_000) as u32;
        let config = EncoderConfig::new()
            .rate_control_mode(RateControlMode::Bufferbased)
            .qp(QpRange::new(qp, qp))
            .skip_frames(false)
            .bitrate(BitRate::from_bps(bps))
            .max_frame_rate(FrameRate::from_hz(spec.fps as f32))
            .intra_frame_period(IntraFramePeriod::from_num_frames(keyframe_interval))
            .vui(VuiConfig::bt601())
            .num_threads(1);
        let enc = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| anyhow!("starting the OpenH264 encoder: {e}"))?;
        let (w, h) = (spec.width as usize, spec.height as usize);
        Ok(H264Encoder {
            enc,
            width: w,
            height: h,
            y: vec![0; w * h],
            u: vec![0; w * h / 4],
            v: vec![0; w * h / 4],
            sps: None,
            pps: None,
        })
    }

    /// The SPS and PPS seen so far (after the first frame).
    pub fn parameter_sets(&self) -> Option<(&[u8], &[u8])> {
        Some((self.sps.as_deref()?, self.pps.as_deref()?))
    }

    /// Encodes one RGB frame (length already checked by the caller).
    pub fn encode(&mut self, rgb: &[u8]) -> Result<AccessUnit> {
        rgb_to_i420(
            rgb,
            self.width,
            self.height,
            &mut self.y,
            &mut self.u,
            &mut self.v,
        );
        let yuv = YUVSlices::new(
            (&self.y, &self.u, &self.v),
            (self.width, self.height),
            (self.width, self.width / 2, self.width / 2),
        );
        let bs = self
            .enc
            .encode(&yuv)
            .map_err(|e| anyhow!("OpenH264 failed to encode a frame: {e}"))?;
        match bs.frame_type() {
            FrameType::IDR | FrameType::I | FrameType::P => {}
            other => bail!("OpenH264 returned a {other:?} frame (frame skipping is off)"),
        }
        let mut nals = Vec::new();
        let mut keyframe = false;
        let mut sps = None;
        let mut pps = None;
        for l in 0..bs.num_layers() {
            let layer = bs.layer(l).context("OpenH264 layer index out of range")?;
            for n in 0..layer.nal_count() {
                let raw = layer
                    .nal_unit(n)
                    .context("OpenH264 NAL index out of range")?;
                let nal = strip_start_code(raw)?;
                match nal[0] & 0x1F {
                    NAL_SPS => sps = Some(nal.to_vec()),
                    NAL_PPS => pps = Some(nal.to_vec()),
                    NAL_AUD => {}
                    t => {
                        keyframe |= t == NAL_IDR;
                        nals.push(nal.to_vec());
                    }
                }
            }
        }
        ensure!(!nals.is_empty(), "OpenH264 returned no picture for a frame");
        // The avcC box holds one SPS/PPS for the whole file; OpenH264 with a constant id
        // repeats the same ones at every IDR. A change would need a new sample entry.
        for (new, old, what) in [(sps, &mut self.sps, "SPS"), (pps, &mut self.pps, "PPS")] {
            if let Some(new) = new {
                match old {
                    Some(o) if *o != new => bail!("OpenH264 changed its {what} mid-stream"),
                    _ => *old = Some(new),
                }
            }
        }
        ensure!(
            self.parameter_sets().is_some(),
            "OpenH264 emitted a picture before its SPS/PPS"
        );
        Ok(AccessUnit { nals, keyframe })
    }
}

/// Removes an Annex B start code (00 00 01 or 00 00 00 01).
fn strip_start_code(nal: &[u8]) -> Result<&[u8]> {
    let body = if nal.starts_with(&[0, 0, 0, 1]) {
        &nal[4..]
    } else if nal.starts_with(&[0, 0, 1]) {
        &nal[3..]
    } else {
        nal
    };
    ensure!(!body.is_empty(), "OpenH264 returned an empty NAL unit");
    Ok(body)
}

/// RGB u8 → planar I420, BT.601 limited range (Y in 16..=235, Cb/Cr in 16..=240). Chroma is
/// computed from the mean of each 2×2 block's RGB (the matrix is linear, so this equals the
/// mean of the per-pixel Cb/Cr). `w` and `h` are even.
pub(crate) fn rgb_to_i420(
    rgb: &[u8],
    w: usize,
    h: usize,
    y: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
) {
    let to_u8 = |x: f32| x.round().clamp(0.0, 255.0) as u8;
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        let (r, g, b) = (px[0] as f32, px[1] as f32, px[2] as f32);
        y[i] = to_u8(16.0 + (219.0 / 255.0) * (0.299 * r + 0.587 * g + 0.114 * b));
    }
    let cw = w / 2;
    for cy in 0..h / 2 {
        for cx in 0..cw {
            let mut s = [0f32; 3];
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let p = ((2 * cy + dy) * w + 2 * cx + dx) * 3;
                for c in 0..3 {
                    s[c] += rgb[p + c] as f32;
                }
            }
            let (r, g, b) = (s[0] / 4.0, s[1] / 4.0, s[2] / 4.0);
            let k = 224.0 / 255.0;
            u[cy * cw + cx] = to_u8(128.0 + k * (-0.168_736 * r - 0.331_264 * g + 0.5 * b));
            v[cy * cw + cx] = to_u8(128.0 + k * (0.5 * r - 0.418_688 * g - 0.081_312 * b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bt601_limited_range_extremes() {
        let (mut y, mut u, mut v) = ([0u8; 4], [0u8; 1], [0u8; 1]);
        rgb_to_i420(&[0; 12], 2, 2, &mut y, &mut u, &mut v);
        assert_eq!((y[0], u[0], v[0]), (16, 128, 128));
        rgb_to_i420(&[255; 12], 2, 2, &mut y, &mut u, &mut v);
        assert_eq!((y[0], u[0], v[0]), (235, 128, 128));
        let red: Vec<u8> = [255, 0, 0].repeat(4);
        rgb_to_i420(&red, 2, 2, &mut y, &mut u, &mut v);
        assert_eq!((y[0], v[0]), (81, 240));
    }

    #[test]
    fn start_codes_are_stripped() {
        assert_eq!(
            strip_start_code(&[0, 0, 0, 1, 0x65, 9]).unwrap(),
            &[0x65, 9]
        );
        assert_eq!(strip_start_code(&[0, 0, 1, 0x67]).unwrap(), &[0x67]);
        assert!(strip_start_code(&[0, 0, 1]).is_err());
    }
}
