//! Block-causal Wan (`CausalWanModel` in Self-Forcing): KV cache, rolling local window with sink
//! frames, and the explicit block-causal mask used to test the cache.
//!
//! Window rule (frames; L = `local_attn_size`, S = `sink_size`). A block of frames [s, e) attends
//! to key frames j < e with, when L ≠ −1, j < S or j ≥ e − (L − S). This is what the reference's
//! rolling cache of L·tokens_per_frame tokens holds after a write: the S sink frames plus the most
//! recent L − S frames (current block included); with e ≤ L nothing has been evicted yet.

use super::model::{SelfPlan, WanModel};
use tch::Tensor;

/// Block-causal options of the generator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CausalOptions {
    /// Frames per chunk (bidirectional inside a chunk). Self-Forcing: 3.
    pub num_frame_per_block: i64,
    /// Attention window in frames, −1 = global.
    pub local_attn_size: i64,
    /// Leading frames kept forever by the rolling window.
    pub sink_size: i64,
}

impl Default for CausalOptions {
    fn default() -> Self {
        CausalOptions {
            num_frame_per_block: 3,
            local_attn_size: -1,
            sink_size: 0,
        }
    }
}

impl CausalOptions {
    /// Whether key frame `j` is visible to a query block that ends (exclusive) at frame `end`.
    pub fn visible(&self, j: i64, end: i64) -> bool {
        j < end
            && (self.local_attn_size < 0
                || j < self.sink_size
                || j >= end - (self.local_attn_size - self.sink_size))
    }

    fn check(&self, block_frames: i64) {
        assert!(
            self.num_frame_per_block > 0,
            "num_frame_per_block must be > 0"
        );
        if self.local_attn_size >= 0 {
            assert!(
                self.local_attn_size >= self.sink_size + block_frames,
                "local_attn_size {} must be ≥ sink_size {} + frames per block {}",
                self.local_attn_size,
                self.sink_size,
                block_frames
            );
        }
    }
}

/// What a `forward_causal` call does with the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CausalMode {
    /// Write this block's K/V at its start frame (the context pass). Frames ≥ start already in
    /// the cache are dropped first, then the window is applied (eviction).
    pub write_cache: bool,
    /// Build a graph: runs with grad enabled and recomputes the text K/V with grad instead of
    /// using the (detached) cached ones. Otherwise the call runs under no_grad.
    pub grad: bool,
}

impl CausalMode {
    /// Intermediate denoising step: read the cache, no graph.
    pub const DENOISE: CausalMode = CausalMode {
        write_cache: false,
        grad: false,
    };
    /// Context pass: write clean K/V, no graph.
    pub const CONTEXT: CausalMode = CausalMode {
        write_cache: true,
        grad: false,
    };
    /// Exit step: with graph through the current block only (past K/V detached).
    pub const GRAD: CausalMode = CausalMode {
        write_cache: false,
        grad: true,
    };
}

/// Per-rollout cache: self-attention K/V of written frames ([B, heads, tokens, d] per layer,
/// always detached, RoPE applied at absolute positions) and the text K/V. One cache per
/// (rollout, prompt batch): the text K/V are reused by every no-grad call.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    pending: Vec<Option<(Tensor, Tensor)>>,
    /// Absolute frame index of each cached frame, ascending (same for every layer).
    frames: Vec<i64>,
    tokens_per_frame: i64,
    cross: Option<Vec<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> KvCache {
        KvCache {
            layers: (0..num_layers).map(|_| None).collect(),
            pending: (0..num_layers).map(|_| None).collect(),
            frames: Vec::new(),
            tokens_per_frame: 0,
            cross: None,
        }
    }

    /// Drops everything (new rollout / new prompts).
    pub fn reset(&mut self) {
        let n = self.layers.len();
        *self = KvCache::new(n);
    }

    /// Absolute indices of the cached frames.
    pub fn cached_frames(&self) -> &[i64] {
        &self.frames
    }

    /// Cached K of one layer [B, heads, tokens, d], if any.
    pub fn keys(&self, layer: usize) -> Option<&Tensor> {
        self.layers.get(layer)?.as_ref().map(|(k, _)| k)
    }

    pub fn has_text_kv(&self) -> bool {
        self.cross.is_some()
    }

    /// Detached K/V of the cached frames visible to the block [start, start+frames).
    pub(crate) fn past(
        &self,
        layer: usize,
        start: i64,
        frames: i64,
        opts: &CausalOptions,
    ) -> Option<(Tensor, Tensor)> {
        let (k, v) = self.layers.get(layer)?.as_ref()?;
        let end = start + frames;
        let pos: Vec<i64> = (0..self.frames.len() as i64)
            .filter(|&p| {
                let j = self.frames[p as usize];
                j < start && opts.visible(j, end)
            })
            .collect();
        if pos.is_empty() {
            return None;
        }
        let tpf = self.tokens_per_frame;
        let contiguous = pos.windows(2).all(|w| w[1] == w[0] + 1);
        if contiguous {
            let (a, n) = (pos[0] * tpf, pos.len() as i64 * tpf);
            return Some((k.narrow(2, a, n), v.narrow(2, a, n)));
        }
        let idx = token_index(&pos, tpf, k.device());
        Some((k.index_select(2, &idx), v.index_select(2, &idx)))
    }

    pub(crate) fn stage(&mut self, layer: usize, k: Tensor, v: Tensor) {
        self.pending[layer] = Some((k, v));
    }

    /// Writes the staged K/V of frames [start, start+frames) and applies the window.
    pub(crate) fn commit(&mut self, start: i64, frames: i64, tpf: i64, opts: &CausalOptions) {
        if self.tokens_per_frame != 0 {
            assert_eq!(
                self.tokens_per_frame, tpf,
                "KvCache: tokens per frame changed"
            );
        }
        self.tokens_per_frame = tpf;
        let end = start + frames;
        // Keep old frames < start that stay visible to later blocks, then append the new ones.
        let keep: Vec<i64> = (0..self.frames.len() as i64)
            .filter(|&p| {
                let j = self.frames[p as usize];
                j < start && opts.visible(j, end)
            })
            .collect();
        let all_kept = keep.len() == self.frames.len();
        let prefix_kept = keep.iter().enumerate().all(|(i, &p)| p == i as i64);
        for li in 0..self.layers.len() {
            let Some((nk, nv)) = self.pending[li].take() else {
                panic!("KvCache: layer {li} was not staged");
            };
            let old = self.layers[li].take();
            let merged = match old {
                Some((k, v)) if !keep.is_empty() => {
                    let (k, v) = if all_kept {
                        (k, v)
                    } else if prefix_kept {
                        let n = keep.len() as i64 * tpf;
                        (k.narrow(2, 0, n), v.narrow(2, 0, n))
                    } else {
                        let idx = token_index(&keep, tpf, k.device());
                        (k.index_select(2, &idx), v.index_select(2, &idx))
                    };
                    (Tensor::cat(&[k, nk], 2), Tensor::cat(&[v, nv], 2))
                }
                _ => (nk, nv),
            };
            self.layers[li] = Some(merged);
        }
        let mut frames: Vec<i64> = keep.iter().map(|&p| self.frames[p as usize]).collect();
        frames.extend(start..end);
        self.frames = frames;
    }
}

fn token_index(pos: &[i64], tpf: i64, device: tch::Device) -> Tensor {
    let idx: Vec<i64> = pos
        .iter()
        .flat_map(|&p| (p * tpf)..((p + 1) * tpf))
        .collect();
    Tensor::from_slice(&idx).to_device(device)
}

/// Boolean block-causal mask [N, N] (true = attend) for `frames` frames of `tpf` tokens with
/// the window rule of `opts`.
pub fn block_causal_mask(
    frames: i64,
    tpf: i64,
    opts: &CausalOptions,
    device: tch::Device,
) -> Tensor {
    let nb = opts.num_frame_per_block;
    let mut allowed = vec![false; (frames * frames) as usize];
    for qf in 0..frames {
        let end = ((qf / nb) + 1) * nb;
        let end = end.min(frames);
        for kf in 0..frames {
            allowed[(qf * frames + kf) as usize] = opts.visible(kf, end);
        }
    }
    let fm = Tensor::from_slice(&allowed).view([frames, frames]);
    // Expand frame-level to token-level: token i belongs to frame i / tpf.
    fm.repeat_interleave_self_int(tpf, 0, None)
        .repeat_interleave_self_int(tpf, 1, None)
        .to_device(device)
}

impl WanModel {
    /// One chunk of the block-causal generator. x_block [B,f,C,H,W] holds absolute frames
    /// [start_frame, start_frame+f), t_block [B,f]. Attends to the cached frames visible to the
    /// chunk (detached) and bidirectionally inside it. See [`CausalMode`].
    pub fn forward_causal(
        &self,
        x_block: &Tensor,
        t_block: &Tensor,
        cond: &Tensor,
        cache: &mut KvCache,
        start_frame: i64,
        mode: CausalMode,
    ) -> Tensor {
        let _guard = if mode.grad {
            None
        } else {
            Some(tch::no_grad_guard())
        };
        assert_eq!(
            cache.layers.len(),
            self.blocks.len(),
            "KvCache has {} layers, model {}",
            cache.layers.len(),
            self.blocks.len()
        );
        assert_eq!(
            self.cfg.patch_size[0], 1,
            "causal Wan needs temporal patch 1"
        );
        let emb = self.embed(x_block, t_block);
        let f = emb.grid[0];
        self.causal.check(f);
        let cross = if mode.grad {
            // Exit step: the text K/V must carry gradients to the text/cross-attn weights.
            self.cross_kv(&self.embed_text(cond))
        } else {
            if cache.cross.is_none() {
                cache.cross = Some(self.cross_kv(&self.embed_text(cond)));
            }
            cache
                .cross
                .as_ref()
                .map(|c| {
                    c.iter()
                        .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let tpf = emb.grid[1] * emb.grid[2];
        let out = self.run_blocks(
            &emb,
            &cross,
            start_frame,
            SelfPlan::Cache {
                cache,
                start_frame,
                frames: f,
                write: mode.write_cache,
            },
        );
        if mode.write_cache {
            cache.commit(start_frame, f, tpf, &self.causal);
        }
        self.head_out(&emb, &out)
    }

    /// The whole sequence at once with an explicit block-causal mask (same window rule as the
    /// cache). For tests: equals chunk-by-chunk `forward_causal` with CONTEXT writes.
    pub fn forward_full_causal(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Tensor {
        assert_eq!(
            self.cfg.patch_size[0], 1,
            "causal Wan needs temporal patch 1"
        );
        let emb = self.embed(x, t);
        self.causal.check(self.causal.num_frame_per_block);
        let mask = block_causal_mask(
            emb.grid[0],
            emb.grid[1] * emb.grid[2],
            &self.causal,
            x.device(),
        );
        let cross = self.cross_kv(&self.embed_text(cond));
        let out = self.run_blocks(&emb, &cross, 0, SelfPlan::Mask(mask));
        self.head_out(&emb, &out)
    }
}
