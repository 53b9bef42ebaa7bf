//! The Wan2.1 DiT: parameters (named exactly like Wan's state dict) and the forward passes.
//!
//! Precision policy (Wan computes these in float32 even in a bf16 model): the time embedding and
//! projection, the modulation arithmetic (`LN(x)·(1+scale)+shift`, `x + y·gate`), all norms and
//! RoPE run in float32; linears, attention and the residual stream between ops use the model's
//! kind (the VarStore's: f32 on CPU tests, bf16 on GPU).

pub(crate) use super::block::{Attn, Block, Lin};
use super::block::{BlockHp, SelfKeys};
use super::cache::CallPlan;
use super::cache::{CausalOptions, KvCache};
use super::config::WanConfig;
use super::rope::{rope_tables_interleaved, sinusoidal_embedding};
use anyhow::Result;
use std::collections::HashMap;
use std::sync::Mutex;
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

impl Lin {
    fn new(p: &Path, i: i64, o: i64) -> Lin {
        Lin {
            w: p.var("weight", &[o, i], Init::Const(0.)),
            b: p.var("bias", &[o], Init::Const(0.)),
        }
    }
}

impl Attn {
    fn new(p: &Path, dim: i64) -> Attn {
        Attn {
            q: Lin::new(&p.sub("q"), dim, dim),
            k: Lin::new(&p.sub("k"), dim, dim),
            v: Lin::new(&p.sub("v"), dim, dim),
            o: Lin::new(&p.sub("o"), dim, dim),
            norm_q: p.sub("norm_q").var("weight", &[dim], Init::Const(1.)),
            norm_k: p.sub("norm_k").var("weight", &[dim], Init::Const(1.)),
        }
    }
}

/// How self-attention finds its keys (see `cache.rs` for the cached form).
pub(crate) enum SelfPlan<'a> {
    /// Bidirectional over the input tokens.
    Full,
    /// Over the input tokens with a boolean mask [N, N] (true = attend).
    Mask(Tensor),
    /// Through the KV cache with a plan decided for the whole call; `write` stages the current
    /// K/V of concatenating calls for the commit.
    Cache {
        cache: &'a mut KvCache,
        plan: CallPlan,
        write: bool,
    },
}

/// The Wan2.1 DiT (bidirectional `WanModel` and block-causal `CausalWanModel`: same weights).
pub struct WanModel {
    pub cfg: WanConfig,
    /// Block-causal options used by `forward_causal` / `forward_full_causal`.
    pub causal: CausalOptions,
    /// Activation checkpointing of the transformer blocks (config key `gradient_checkpointing`):
    /// when autograd records and something needs a gradient, each block runs through
    /// `crate::cuda::checkpoint` (its activations are recomputed in backward). Same values and
    /// gradients; parameter gradients reach `.grad` only through a plain `backward()`.
    pub checkpoint_blocks: bool,
    /// Selective checkpointing (config key `checkpoint_keep_attention`): a checkpointed block keeps
    /// its unmasked self-attention's output and log-sum-exp from the forward, and its
    /// recomputation reuses them instead of running attention again (bf16 out + f32 lse per block
    /// held until backward). Same values and gradients.
    pub checkpoint_keep_attention: bool,
    pub(crate) patch_w: Tensor,
    pub(crate) patch_b: Tensor,
    pub(crate) text0: Lin,
    pub(crate) text2: Lin,
    pub(crate) time0: Lin,
    pub(crate) time2: Lin,
    pub(crate) time_proj: Lin,
    pub(crate) blocks: Vec<Block>,
    pub(crate) head: Lin,
    pub(crate) head_mod: Tensor,
    /// RoPE tables per (grid, start_frame), in the compute kind (see `rope_for`).
    rope: Mutex<HashMap<[i64; 4], (Tensor, Tensor)>>,
}

/// Inputs after embedding: tokens, per-frame time embeddings and the token grid.
pub(crate) struct Embedded {
    pub x: Tensor,
    /// e [B, Fp, dim] f32 (head modulation).
    pub e: Tensor,
    /// e0 [B, Fp, 6, dim] f32 (block modulation).
    pub e0: Tensor,
    pub grid: [i64; 3],
    pub batch: i64,
    pub out_kind: Kind,
}

impl WanModel {
    /// Creates the variables under `root` with Wan's state-dict names (values: zeros/ones; call
    /// `init::init_random` or load weights).
    pub fn new(root: &Path, cfg: WanConfig) -> Result<WanModel> {
        cfg.validate()?;
        let d = cfg.dim;
        let [pt, ph, pw] = cfg.patch_size;
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let b = root.sub("blocks").sub(i);
                Block {
                    self_attn: Attn::new(&b.sub("self_attn"), d),
                    cross_attn: Attn::new(&b.sub("cross_attn"), d),
                    norm3_w: b.sub("norm3").var("weight", &[d], Init::Const(1.)),
                    norm3_b: b.sub("norm3").var("bias", &[d], Init::Const(0.)),
                    ffn0: Lin::new(&b.sub("ffn").sub("0"), d, cfg.ffn_dim),
                    ffn2: Lin::new(&b.sub("ffn").sub("2"), cfg.ffn_dim, d),
                    modulation: b.var("modulation", &[1, 6, d], Init::Const(0.)),
                }
            })
            .collect();
        let pe = root.sub("patch_embedding");
        Ok(WanModel {
            patch_w: pe.var("weight", &[d, cfg.in_dim, pt, ph, pw], Init::Const(0.)),
            patch_b: pe.var("bias", &[d], Init::Const(0.)),
            text0: Lin::new(&root.sub("text_embedding").sub("0"), cfg.text_dim, d),
            text2: Lin::new(&root.sub("text_embedding").sub("2"), d, d),
            time0: Lin::new(&root.sub("time_embedding").sub("0"), cfg.freq_dim, d),
            time2: Lin::new(&root.sub("time_embedding").sub("2"), d, d),
            time_proj: Lin::new(&root.sub("time_projection").sub("1"), d, 6 * d),
            blocks,
            head: Lin::new(&root.sub("head").sub("head"), d, cfg.out_dim * pt * ph * pw),
            head_mod: root
                .sub("head")
                .var("modulation", &[1, 2, d], Init::Const(0.)),
            cfg,
            causal: CausalOptions::default(),
            checkpoint_blocks: false,
            checkpoint_keep_attention: true,
            rope: Mutex::new(HashMap::new()),
        })
    }

    /// The compute kind (the parameters' kind).
    pub fn kind(&self) -> Kind {
        self.patch_w.kind()
    }

    /// Bidirectional forward (Wan's `WanModel`). x [B,F,C,H,W], t [B,F] (per-frame, as the
    /// block-causal model uses it) or [B], cond [B,L,text_dim]. Returns the flow prediction with
    /// x's shape and kind.
    pub fn forward(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Tensor {
        let emb = self.embed(x, t);
        let ctx = self.embed_text(cond);
        let cross = self.cross_kv(&ctx);
        let out = self.run_blocks(&emb, &cross, 0, SelfPlan::Full);
        self.head_out(&emb, &out)
    }

    /// Patchify + time embedding (RoPE is applied per plan in `run_blocks`).
    pub(crate) fn embed(&self, x: &Tensor, t: &Tensor) -> Embedded {
        let s = x.size();
        assert_eq!(s.len(), 5, "Wan: x must be [B,F,C,H,W], got {s:?}");
        let (b, f, c, h, w) = (s[0], s[1], s[2], s[3], s[4]);
        let [pt, ph, pw] = self.cfg.patch_size;
        assert_eq!(
            c, self.cfg.in_dim,
            "Wan: x has {c} channels, model expects {}",
            self.cfg.in_dim
        );
        assert!(
            f % pt == 0 && h % ph == 0 && w % pw == 0,
            "Wan: latent [F={f},H={h},W={w}] not divisible by patch {:?}",
            self.cfg.patch_size
        );
        let grid = [f / pt, h / ph, w / pw];
        let n = grid.iter().product::<i64>();
        // Conv3d with kernel = stride is a linear map of non-overlapping patches; the weight
        // [dim, C, pt, ph, pw] flattens in (C, pt, ph, pw) order, tokens in Wan's (f, h, w) order.
        let patches = x
            .to_kind(self.kind())
            .view(&[b, grid[0], pt, c, grid[1], ph, grid[2], pw][..])
            .permute([0, 1, 4, 6, 3, 2, 5, 7])
            .reshape([b, n, c * pt * ph * pw]);
        let wmat = self.patch_w.view([self.cfg.dim, -1]);
        let tokens = patches.linear(&wmat, Some(&self.patch_b));
        let tf = match t.dim() {
            1 => t.view([b, 1]).expand([b, f], false),
            2 => t.shallow_clone(),
            _ => panic!("Wan: t must be [B,F] or [B], got {:?}", t.size()),
        };
        assert_eq!(tf.size(), vec![b, f], "Wan: t must be [B,F] = [{b},{f}]");
        // With a temporal patch > 1 each token frame takes the timestep of its first latent frame.
        let tf = if pt > 1 { tf.slice(1, 0, f, pt) } else { tf };
        let (e, e0) = self.time_embed(&tf);
        Embedded {
            x: tokens,
            e,
            e0,
            grid,
            batch: b,
            out_kind: x.kind(),
        }
    }

    /// t [B, Fp] → (e [B,Fp,dim], e0 [B,Fp,6,dim]) in float32.
    pub(crate) fn time_embed(&self, t: &Tensor) -> (Tensor, Tensor) {
        let (b, f) = (t.size()[0], t.size()[1]);
        let d = self.cfg.dim;
        let sin = sinusoidal_embedding(self.cfg.freq_dim, t).to_kind(Kind::Float);
        let e = self.time2.fwd_f32(&self.time0.fwd_f32(&sin).silu());
        let e0 = self.time_proj.fwd_f32(&e.silu()).view([b, f, 6, d]);
        (e.view([b, f, d]), e0)
    }

    /// Zero-pads cond to text_len (Wan pads T5 outputs to 512 and attends to all positions) and
    /// applies Linear → GELU(tanh) → Linear. Longer cond is used as is.
    pub(crate) fn embed_text(&self, cond: &Tensor) -> Tensor {
        let s = cond.size();
        assert!(
            s.len() == 3 && s[2] == self.cfg.text_dim,
            "Wan: cond must be [B,L,{}], got {s:?}",
            self.cfg.text_dim
        );
        let c = cond.to_kind(self.kind());
        let c = if s[1] < self.cfg.text_len {
            c.constant_pad_nd([0, 0, 0, self.cfg.text_len - s[1]])
        } else {
            c
        };
        self.text2.fwd(&self.text0.fwd(&c).gelu("tanh"))
    }

    fn heads(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        x.view([s[0], s[1], self.cfg.num_heads, self.cfg.head_dim()])
    }

    /// RMSNorm in the input's kind (ATen accumulates bf16 in f32).
    fn rms(&self, x: &Tensor, w: &Tensor) -> Tensor {
        x.rms_norm([self.cfg.dim], Some(w), self.cfg.eps)
    }

    /// Cross-attention K/V of every layer, [B, heads, L, d] each.
    pub(crate) fn cross_kv(&self, ctx: &Tensor) -> Vec<(Tensor, Tensor)> {
        let kind = self.kind();
        self.blocks
            .iter()
            .map(|blk| {
                let a = &blk.cross_attn;
                let k = self.heads(&self.rms(&a.k.fwd(ctx), &a.norm_k).to_kind(kind));
                let v = self.heads(&a.v.fwd(ctx));
                (k.transpose(1, 2), v.transpose(1, 2))
            })
            .collect()
    }

    /// Interleaved cos/sin tables in the compute kind for a grid starting at `start_frame`
    /// (cached per shape and kind: built once on the host, then no host work per call).
    pub(crate) fn rope_for(&self, grid: [i64; 3], start_frame: i64) -> (Tensor, Tensor) {
        let key = [grid[0], grid[1], grid[2], start_frame];
        let kind = self.kind();
        let mut map = self.rope.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|(c, _)| c.kind() != kind) {
            map.remove(&key);
        }
        let (c, s) = map.entry(key).or_insert_with(|| {
            rope_tables_interleaved(
                grid,
                start_frame,
                self.cfg.rope_split(),
                kind,
                self.patch_w.device(),
            )
        });
        (c.shallow_clone(), s.shallow_clone())
    }

    /// All blocks. `start_frame` is the absolute index of the first token frame (RoPE offset).
    pub(crate) fn run_blocks(
        &self,
        emb: &Embedded,
        cross: &[(Tensor, Tensor)],
        start_frame: i64,
        mut plan: SelfPlan,
    ) -> Tensor {
        let [f, gh, gw] = emb.grid;
        let hp = BlockHp {
            dim: self.cfg.dim,
            heads: self.cfg.num_heads,
            head_dim: self.cfg.head_dim(),
            eps: self.cfg.eps,
            shape: [emb.batch, f, gh * gw],
        };
        let (cos, sin) = self.rope_for(emb.grid, start_frame);
        let mut x = emb.x.shallow_clone();
        for (li, blk) in self.blocks.iter().enumerate() {
            let (ck, cv) = &cross[li];
            let (keys, stage) = match &mut plan {
                SelfPlan::Full => (SelfKeys::Full, false),
                SelfPlan::Mask(m) => (SelfKeys::Mask(m.shallow_clone()), false),
                SelfPlan::Cache { cache, plan, write } => (
                    cache.self_keys(li, plan),
                    *write && matches!(plan, CallPlan::Concat(_)),
                ),
            };
            let (y, k, v) = blk.forward_maybe_ckpt(
                self.checkpoint_blocks,
                self.checkpoint_keep_attention,
                &hp,
                &x,
                &emb.e0,
                &cos,
                &sin,
                ck,
                cv,
                keys,
            );
            if stage {
                if let SelfPlan::Cache { cache, .. } = &mut plan {
                    cache.stage(li, k.detach(), v.detach());
                }
            }
            x = y;
        }
        x
    }

    /// Head (2-way modulation with the un-projected e) and unpatchify to [B, F, C, H, W].
    pub(crate) fn head_out(&self, emb: &Embedded, x: &Tensor) -> Tensor {
        let (b, d) = (emb.batch, self.cfg.dim);
        let [f, gh, gw] = emb.grid;
        let [pt, ph, pw] = self.cfg.patch_size;
        let c = self.cfg.out_dim;
        let m = self.head_mod.to_kind(Kind::Float).unsqueeze(0) + emb.e.unsqueeze(2);
        let (shift, scale) = (m.select(2, 0).unsqueeze(2), m.select(2, 1).unsqueeze(2));
        let xn = x.to_kind(Kind::Float).view([b, f, gh * gw, d]).layer_norm(
            [d],
            None::<&Tensor>,
            None::<&Tensor>,
            self.cfg.eps,
            true,
        );
        let xn = (xn * (scale + 1.0) + shift).to_kind(self.kind());
        let y = self.head.fwd(&xn);
        // Head features are ordered (pt, ph, pw, c) as in Wan's unpatchify einsum.
        y.view(&[b, f, gh, gw, pt, ph, pw, c][..])
            .permute([0, 1, 4, 7, 2, 5, 3, 6])
            .reshape([b, f * pt, c, gh * ph, gw * pw])
            .to_kind(emb.out_kind)
    }
}

impl crate::models::Denoiser for WanModel {
    /// The bidirectional forward (`WanModel`), with per-frame timesteps.
    fn flow(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Tensor {
        self.forward(x_t, t, cond)
    }
}
