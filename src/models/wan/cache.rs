//! Block-causal Wan (`CausalWanModel` in Self-Forcing): KV cache, rolling local window with sink
//! frames, and the explicit block-causal mask used to test the cache.
//!
//! Window rule (frames; L = `local_attn_size`, S = `sink_size`). A block of frames [s, e) attends
//! to key frames j < e with, when L ≠ −1, j < S or j ≥ e − (L − S). This is what the reference's
//! rolling cache of L·tokens_per_frame tokens holds after a write: the S sink frames plus the most
//! recent L − S frames (current block included); with e ≤ L nothing has been evicted yet.

use super::block::SelfKeys;
use super::model::{SelfPlan, WanModel};

use tch::{Device, Kind, Tensor};

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

/// Per-rollout cache: self-attention K/V of written frames and the text K/V. One cache per
/// (rollout, prompt batch): the text K/V are reused by every no-grad call.
///
/// Storage: per layer a preallocated pair of buffers [B, capacity, heads, d] (always detached,
/// RoPE applied at absolute positions) whose first `frames.len()·tokens_per_frame` tokens are the
/// written frames in `frames` order. A no-grad call whose visible past is the tail of that prefix
/// (the usual case) writes its own K/V right after it with `narrow(..).copy_` and attends over one
/// view of the buffer: no concatenation; the context pass then only commits the frames. Other
/// calls (GRAD, rewrites, sink windows) concatenate [sg(past); current] as before.
pub struct KvCache {
    bufs: Vec<Option<(Tensor, Tensor)>>,
    pending: Vec<Option<(Tensor, Tensor)>>,
    /// Absolute frame index of each cached frame, ascending (same for every layer).
    frames: Vec<i64>,
    tokens_per_frame: i64,
    cross: Option<Vec<(Tensor, Tensor)>>,
    /// Frames the first allocation makes room for (`reserve_frames`): a rollout knows its length,
    /// and one full-size buffer means every exit step's past K/V are views of the same storage
    /// (growing by doubling would keep each superseded buffer alive until backward).
    reserve: i64,
}

/// How one forward call uses the cache (decided once per call, same for every layer).
pub(crate) enum CallPlan {
    /// Write the current K/V at token `at` of the buffers, attend over tokens [from, at + n).
    InPlace { from: i64, at: i64 },
    /// Concatenate the selected past tokens (if any) before the current K/V.
    Concat(Option<PastSel>),
}

pub(crate) enum PastSel {
    Range(i64, i64),
    Index(Tensor),
}

impl KvCache {
    pub fn new(num_layers: usize) -> KvCache {
        KvCache {
            bufs: (0..num_layers).map(|_| None).collect(),
            pending: (0..num_layers).map(|_| None).collect(),
            frames: Vec::new(),
            tokens_per_frame: 0,
            cross: None,
            reserve: 0,
        }
    }

    /// Makes the first buffer allocation hold `frames` frames (the whole rollout), so the cache
    /// never reallocates. Call before the first forward; `reset` keeps the reservation.
    pub fn reserve_frames(&mut self, frames: i64) {
        self.reserve = frames.max(0);
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.bufs.len()
    }

    /// Drops everything (new rollout / new prompts).
    pub fn reset(&mut self) {
        let (n, reserve) = (self.bufs.len(), self.reserve);
        *self = KvCache::new(n);
        self.reserve = reserve;
    }

    /// Absolute indices of the cached frames.
    pub fn cached_frames(&self) -> &[i64] {
        &self.frames
    }

    /// Cached K of one layer [B, heads, tokens, d] (a view), if any frame is cached.
    pub fn keys(&self, layer: usize) -> Option<Tensor> {
        let (k, _) = self.bufs.get(layer)?.as_ref()?;
        if self.frames.is_empty() {
            return None;
        }
        let n = self.frames.len() as i64 * self.tokens_per_frame;
        Some(k.narrow(1, 0, n).transpose(1, 2))
    }

    pub fn has_text_kv(&self) -> bool {
        self.cross.is_some()
    }

    pub(crate) fn text_kv(&self) -> Option<Vec<(Tensor, Tensor)>> {
        self.cross.as_ref().map(|c| {
            c.iter()
                .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()))
                .collect()
        })
    }

    pub(crate) fn set_text_kv(&mut self, kv: Vec<(Tensor, Tensor)>) {
        self.cross = Some(kv);
    }

    /// Slots (positions in `frames`) of the cached frames visible to the block [start, start+f).
    fn visible_slots(&self, start: i64, frames: i64, opts: &CausalOptions) -> Vec<i64> {
        let end = start + frames;
        (0..self.frames.len() as i64)
            .filter(|&p| {
                let j = self.frames[p as usize];
                j < start && opts.visible(j, end)
            })
            .collect()
    }

    /// Decides how the call for frames [start, start+frames) reads (and maybe writes) the cache.
    /// `shape` = [B, heads, head_dim] of the K/V; in-place needs no graph (`grad` false).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plan(
        &mut self,
        start: i64,
        frames: i64,
        tpf: i64,
        grad: bool,
        opts: &CausalOptions,
        shape: [i64; 3],
        kind: Kind,
        device: Device,
    ) -> CallPlan {
        if self.tokens_per_frame != 0 && !self.frames.is_empty() {
            assert_eq!(
                self.tokens_per_frame, tpf,
                "KvCache: tokens per frame changed"
            );
        }
        self.tokens_per_frame = tpf;
        let pos = self.visible_slots(start, frames, opts);
        let contiguous = pos.windows(2).all(|w| w[1] == w[0] + 1);
        let tail = pos
            .last()
            .is_none_or(|&p| p + 1 == self.frames.len() as i64);
        if !grad && contiguous && tail && (!pos.is_empty() || self.frames.is_empty()) {
            let committed = self.frames.len() as i64 * tpf;
            self.ensure_capacity(committed + frames * tpf, shape, kind, device);
            let from = pos.first().map_or(committed, |&p| p * tpf);
            return CallPlan::InPlace {
                from,
                at: committed,
            };
        }
        if pos.is_empty() {
            return CallPlan::Concat(None);
        }
        if contiguous {
            return CallPlan::Concat(Some(PastSel::Range(pos[0] * tpf, pos.len() as i64 * tpf)));
        }
        CallPlan::Concat(Some(PastSel::Index(token_index(&pos, tpf, device))))
    }

    /// Grows every layer's buffers to hold `tokens` (doubling, at least the reservation), keeping
    /// the committed tokens.
    fn ensure_capacity(&mut self, tokens: i64, shape: [i64; 3], kind: Kind, device: Device) {
        let [b, h, d] = shape;
        let committed = self.frames.len() as i64 * self.tokens_per_frame;
        for slot in self.bufs.iter_mut() {
            let cap = slot.as_ref().map_or(0, |(k, _)| k.size()[1]);
            if let Some((k, _)) = slot.as_ref() {
                assert_eq!(
                    k.size()[0],
                    b,
                    "KvCache: batch size changed (one cache per batch)"
                );
            }
            if cap >= tokens {
                continue;
            }
            let new_cap = tokens
                .max(2 * cap)
                .max(self.reserve * self.tokens_per_frame);
            let nk = Tensor::empty([b, new_cap, h, d], (kind, device));
            let nv = Tensor::empty([b, new_cap, h, d], (kind, device));
            if let Some((k, v)) = slot.take() {
                if committed > 0 {
                    nk.narrow(1, 0, committed).copy_(&k.narrow(1, 0, committed));
                    nv.narrow(1, 0, committed).copy_(&v.narrow(1, 0, committed));
                }
            }
            *slot = Some((nk, nv));
        }
    }

    /// The self-attention keys of `layer` for this call's plan.
    pub(crate) fn self_keys(&self, layer: usize, plan: &CallPlan) -> SelfKeys {
        let buf = self.bufs[layer].as_ref();
        match plan {
            CallPlan::InPlace { from, at } => {
                let (k, v) = buf.expect("KvCache: in-place plan without buffers");
                SelfKeys::Buffer {
                    k: k.shallow_clone(),
                    v: v.shallow_clone(),
                    from: *from,
                    at: *at,
                }
            }
            CallPlan::Concat(None) => SelfKeys::Full,
            CallPlan::Concat(Some(sel)) => {
                let (k, v) = buf.expect("KvCache: past frames without buffers");
                let (k, v) = match sel {
                    PastSel::Range(a, n) => (k.narrow(1, *a, *n), v.narrow(1, *a, *n)),
                    PastSel::Index(idx) => (k.index_select(1, idx), v.index_select(1, idx)),
                };
                SelfKeys::Concat(k.transpose(1, 2), v.transpose(1, 2))
            }
        }
    }

    /// Stages the current K/V [B, n, heads, d] (detached) of a concatenating call for `commit`.
    pub(crate) fn stage(&mut self, layer: usize, k: Tensor, v: Tensor) {
        self.pending[layer] = Some((k, v));
    }

    /// Writes frames [start, start+frames) (already in the buffers for an in-place plan, staged
    /// otherwise), drops cached frames ≥ start and evicts frames that left the window.
    pub(crate) fn commit(
        &mut self,
        start: i64,
        frames: i64,
        opts: &CausalOptions,
        plan: &CallPlan,
    ) {
        let tpf = self.tokens_per_frame;
        let end = start + frames;
        let keep = self.visible_slots(start, frames, opts);
        let mut new_frames: Vec<i64> = keep.iter().map(|&p| self.frames[p as usize]).collect();
        new_frames.extend(start..end);
        match plan {
            CallPlan::InPlace { from, at } => {
                // The kept frames are the slots [from/tpf, at/tpf), followed by the new tokens.
                if *from > 0 {
                    let n = at + frames * tpf - from;
                    for slot in self.bufs.iter_mut() {
                        if let Some((k, v)) = slot.as_mut() {
                            let (nk, nv) = (k.empty_like(), v.empty_like());
                            nk.narrow(1, 0, n).copy_(&k.narrow(1, *from, n));
                            nv.narrow(1, 0, n).copy_(&v.narrow(1, *from, n));
                            *slot = Some((nk, nv));
                        }
                    }
                }
            }
            CallPlan::Concat(_) => {
                for li in 0..self.bufs.len() {
                    let Some((nk, nv)) = self.pending[li].take() else {
                        panic!("KvCache: layer {li} was not staged");
                    };
                    let merged = match self.bufs[li].as_ref() {
                        Some((k, v)) if !keep.is_empty() => {
                            let idx = token_index(&keep, tpf, k.device());
                            (
                                Tensor::cat(&[k.index_select(1, &idx), nk], 1),
                                Tensor::cat(&[v.index_select(1, &idx), nv], 1),
                            )
                        }
                        _ => (nk, nv),
                    };
                    self.bufs[li] = Some(merged);
                }
            }
        }
        self.frames = new_frames;
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
            cache.num_layers(),
            self.blocks.len(),
            "KvCache has {} layers, model {}",
            cache.num_layers(),
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
            if !cache.has_text_kv() {
                cache.set_text_kv(self.cross_kv(&self.embed_text(cond)));
            }
            cache.text_kv().unwrap_or_default()
        };
        let tpf = emb.grid[1] * emb.grid[2];
        let plan = cache.plan(
            start_frame,
            f,
            tpf,
            mode.grad,
            &self.causal,
            [emb.batch, self.cfg.num_heads, self.cfg.head_dim()],
            self.kind(),
            x_block.device(),
        );
        let commit = mode.write_cache.then(|| match &plan {
            CallPlan::InPlace { from, at } => CallPlan::InPlace {
                from: *from,
                at: *at,
            },
            CallPlan::Concat(_) => CallPlan::Concat(None),
        });
        let out = self.run_blocks(
            &emb,
            &cross,
            start_frame,
            SelfPlan::Cache {
                cache: &mut *cache,
                plan,
                write: mode.write_cache,
            },
        );
        if let Some(cp) = commit {
            cache.commit(start_frame, f, &self.causal, &cp);
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
