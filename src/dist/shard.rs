//! The flat layout of ZeRO-1 (`dist::zero`): a model's parameters concatenated in order into one
//! vector of N elements, padded with zeros to W·S (S = ⌈N/W⌉); rank r owns [r·S, (r+1)·S). It
//! depends only on the shapes, so every rank agrees. Reads and writes of flat ranges map onto
//! the per-parameter tensors piece by piece.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// A stretch of a flat range that lies on one parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index of the parameter.
    pub param: usize,
    /// Offset inside the flattened parameter.
    pub start: i64,
    /// Offset inside the range.
    pub at: i64,
    pub len: i64,
}

/// Where each parameter lies in the flat vector, and the shards.
#[derive(Clone, Debug)]
pub struct ShardLayout {
    numels: Vec<i64>,
    offsets: Vec<i64>,
    total: i64,
    world: usize,
    shard: i64,
}

impl ShardLayout {
    pub fn new(numels: &[i64], world: usize) -> Result<ShardLayout> {
        if world == 0 {
            bail!("ZeRO-1: world size 0");
        }
        if numels.iter().any(|&n| n < 0) {
            bail!("ZeRO-1: negative parameter size");
        }
        let mut offsets = Vec::with_capacity(numels.len());
        let mut total = 0i64;
        for &n in numels {
            offsets.push(total);
            total += n;
        }
        let w = world as i64;
        Ok(ShardLayout {
            numels: numels.to_vec(),
            offsets,
            total,
            world,
            shard: (total + w - 1) / w,
        })
    }

    /// N: the parameters' elements.
    pub fn total(&self) -> i64 {
        self.total
    }
    /// S: elements per rank (padding included).
    pub fn shard_len(&self) -> i64 {
        self.shard
    }
    pub fn world(&self) -> usize {
        self.world
    }
    /// Zero elements after the last parameter: W·S − N.
    pub fn padding(&self) -> i64 {
        self.shard * self.world as i64 - self.total
    }
    /// First flat index of rank `rank`'s shard.
    pub fn shard_start(&self, rank: usize) -> i64 {
        rank as i64 * self.shard
    }

    /// The pieces of the flat range [a, b) that lie on parameters, in order (the padding and
    /// anything past N lies on none).
    pub fn pieces(&self, a: i64, b: i64) -> Vec<Piece> {
        let (lo, hi) = (a.max(0), b.min(self.total));
        let mut out = vec![];
        if lo >= hi {
            return out;
        }
        // The last parameter starting at or before lo (empty parameters before it are skipped).
        let mut i = self.offsets.partition_point(|&o| o <= lo).saturating_sub(1);
        let mut pos = lo;
        while pos < hi && i < self.numels.len() {
            let start = pos - self.offsets[i];
            let len = (self.numels[i] - start).min(hi - pos);
            if len > 0 {
                out.push(Piece {
                    param: i,
                    start,
                    at: pos - a,
                    len,
                });
                pos += len;
            }
            i += 1;
        }
        out
    }

    /// The flat range [a, b) of `ts` (one tensor per parameter, any shape of the right size) as a
    /// new 1-D tensor of `kind` on `device`, zeros where no parameter lies. Never an alias.
    pub fn read(
        &self,
        ts: &[Tensor],
        a: i64,
        b: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let mut parts = Vec::new();
        let mut filled = 0;
        for p in self.pieces(a, b) {
            parts.push(
                ts[p.param]
                    .f_reshape([-1])?
                    .f_narrow(0, p.start, p.len)?
                    .f_to_device(device)?
                    .f_to_kind(kind)?,
            );
            filled += p.len;
        }
        if filled < b - a || parts.is_empty() {
            parts.push(Tensor::f_zeros([(b - a - filled).max(0)], (kind, device))?);
        }
        // cat copies even a single part.
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    /// Writes the 1-D `src` into the flat range starting at `a` of `ts` (contiguous tensors, one
    /// per parameter); what falls on the padding is dropped. Converts dtype and device.
    pub fn write(&self, ts: &[Tensor], a: i64, src: &Tensor) -> Result<()> {
        let n = src.size1()?;
        for p in self.pieces(a, a + n) {
            let mut dst = ts[p.param].f_view([-1])?.f_narrow(0, p.start, p.len)?;
            dst.f_copy_(&src.f_narrow(0, p.at, p.len)?)?;
        }
        Ok(())
    }

    /// The rounds over a shard: (offset in the shard, length), each at most `chunk` elements.
    pub fn rounds(&self, chunk: i64) -> Vec<(i64, i64)> {
        let c = chunk.max(1);
        (0..self.shard)
            .step_by(c as usize)
            .map(|o| (o, c.min(self.shard - o)))
            .collect()
    }

    /// `ts` matches the layout: one tensor per parameter, each of the parameter's size.
    pub(super) fn check(&self, ts: &[Tensor], what: &str) -> Result<()> {
        if ts.len() != self.numels.len() {
            bail!(
                "ZeRO-1: {} {what} for {} parameters",
                ts.len(),
                self.numels.len()
            );
        }
        for (i, (t, &n)) in ts.iter().zip(&self.numels).enumerate() {
            if t.numel() as i64 != n {
                bail!(
                    "ZeRO-1: {what} {i} has {} elements, its parameter {n}",
                    t.numel()
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_pads_and_maps_ranges() {
        // 3 + 0 + 4 + 2 = 9 elements over 4 ranks: S = 3, 3 zeros of padding.
        let l = ShardLayout::new(&[3, 0, 4, 2], 4).unwrap();
        assert_eq!((l.total(), l.shard_len(), l.padding()), (9, 3, 3));
        let p = |param, start, at, len| Piece {
            param,
            start,
            at,
            len,
        };
        assert_eq!(l.pieces(0, 3), vec![p(0, 0, 0, 3)]);
        assert_eq!(l.pieces(3, 6), vec![p(2, 0, 0, 3)]);
        assert_eq!(l.pieces(6, 9), vec![p(2, 3, 0, 1), p(3, 0, 1, 2)]);
        assert_eq!(l.pieces(9, 12), vec![]);
        assert_eq!(
            l.pieces(2, 8),
            vec![p(0, 2, 0, 1), p(2, 0, 1, 4), p(3, 0, 5, 1)]
        );
        assert_eq!(l.rounds(2), vec![(0, 2), (2, 1)]);
        let ts: Vec<Tensor> = [3i64, 0, 4, 2]
            .iter()
            .scan(0f32, |k, &n| {
                let t = Tensor::arange_start(
                    *k as f64,
                    (*k + n as f32) as f64,
                    (Kind::Float, Device::Cpu),
                );
                *k += n as f32;
                Some(t)
            })
            .collect();
        let flat = l.read(&ts, 6, 12, Kind::Double, Device::Cpu).unwrap();
        assert_eq!(
            Vec::<f64>::try_from(&flat).unwrap(),
            vec![6., 7., 8., 0., 0., 0.]
        );
        let zeros: Vec<Tensor> = ts.iter().map(|t| t.zeros_like()).collect();
        for r in 0..4 {
            let a = l.shard_start(r);
            l.write(
                &zeros,
                a,
                &l.read(&ts, a, a + 3, Kind::Float, Device::Cpu).unwrap(),
            )
            .unwrap();
        }
        for (a, b) in ts.iter().zip(&zeros) {
            assert!(a.equal(b));
        }
    }
}
