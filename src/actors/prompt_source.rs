//! `prompt_source`: emits conditioning for each work item — `cond` [B, L, D] and `uncond` (the
//! negative prompt) — from the embedded toy prompt set through the built-in toy text encoder, or
//! from a safetensors file of precomputed embeddings (`cond` [N, L, D], `uncond` [1, L, D]).
//! Prompt choice is a keyed draw (seed, step, lane, Data), so it never depends on timing.

use crate::dist::global_first_row;
use crate::models::toy_text::ToyTextEncoder;
use crate::rng::{randint_vec, Purpose, RngKey};
use crate::runtime::{Actor, Ctx, Packet, Ports, Work};
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

enum Source {
    Toy {
        enc: ToyTextEncoder,
        prompts: Vec<String>,
        negative: String,
    },
    File {
        store: crate::text::store::EmbeddingsFile,
    },
}

pub struct PromptSource {
    src: Source,
    batch: i64,
}

impl PromptSource {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let cfg = &ctx.cfg;
        let batch = cfg.batch_size;
        let file = match ctx.param_str("path").or_else(|| cfg.data_path.clone()) {
            None => {
                // No prompts named: the toy prompt set, but only for models that are toys or
                // random weights by name; real weights never train on toy prompts silently.
                if !crate::actors::zoo::toy_prompts_allowed(cfg) {
                    bail!(
                        "config key `data_path` is not set: name the prompts (a .txt list with \
                         `text_encoder_path`, or a .safetensors from `run-pipeline encode-prompts`); \
                         the toy prompt set is only used with toy or random-weight generators"
                    );
                }
                None
            }
            Some(p) if p.ends_with(".safetensors") => Some(p),
            Some(p) if p.ends_with(".txt") => {
                // The driver encoded the list before the actors started (text::ensure_run_embeddings).
                let enc = crate::text::run_embeddings_path(std::path::Path::new(&cfg.logdir));
                if !enc.is_file() {
                    bail!(
                        "config key `data_path`: the embeddings of {p} are not at {} (the training \
                         driver encodes a .txt list before the actors start; with `text_encoder_path` \
                         set, run through `run-pipeline`)",
                        enc.display()
                    );
                }
                Some(enc.display().to_string())
            }
            Some(p) => bail!(
                "config key `data_path`: {p} is neither a .txt prompt list nor a .safetensors file \
                 of prompt embeddings"
            ),
        };
        let src = match file {
            Some(path) => {
                crate::text::check_sidecar(std::path::Path::new(&path), &cfg.negative_prompt)?;
                let store = crate::text::store::EmbeddingsFile::open(std::path::Path::new(&path))?;
                if let Some(w) = crate::actors::zoo::wan_config(&cfg.generator_name, cfg) {
                    if w.text_dim != store.dim() {
                        bail!(
                            "prompt embeddings {path}: {} dims per token, but the generator \
                             `{}` takes text_dim {} (were they made by another text encoder?)",
                            store.dim(),
                            cfg.generator_name,
                            w.text_dim
                        );
                    }
                }
                Source::File { store }
            }
            None => {
                let t = &cfg.toy;
                let (text_dim, text_len) = crate::actors::zoo::toy_text_sizes(cfg);
                let enc = ToyTextEncoder::new(
                    t.num_classes.max(1) as usize,
                    text_len as usize,
                    text_dim as usize,
                );
                // The reference's Chinese negative prompt names no class: it is unconditional here.
                Source::Toy {
                    prompts: enc.prompts(),
                    enc,
                    negative: cfg.negative_prompt.clone(),
                }
            }
        };
        Ok(PromptSource { src, batch })
    }
}

impl Actor for PromptSource {
    fn process(&mut self, ctx: &mut Ctx, work: Work, _inputs: Ports) -> Result<Ports> {
        // Rank-free key, one draw per global row: micro-batches and data-parallel ranks see what
        // one big batch would (dist::global_first_row).
        let key = RngKey::new(ctx.seed, work.step, work.lane, Purpose::Data);
        let b = self.batch;
        let first = global_first_row(
            work.micro as u64,
            ctx.rank as usize,
            ctx.world as usize,
            b as u64,
        );
        let pick = |n: i64| -> Vec<i64> {
            (0..b as u64)
                .map(|i| randint_vec(&key.row(first + i), 0, n, 1)[0])
                .collect()
        };
        let (cond, uncond) = match &self.src {
            Source::Toy {
                enc,
                prompts,
                negative,
            } => {
                let idx = pick(prompts.len() as i64);
                let chosen: Vec<String> =
                    idx.iter().map(|&i| prompts[i as usize].clone()).collect();
                let neg = vec![negative.clone(); b as usize];
                (
                    enc.encode_on(&chosen, ctx.device),
                    enc.encode_on(&neg, ctx.device),
                )
            }
            Source::File { store } => {
                let idx = pick(store.len() as i64);
                // Only the batch's rows are read; cond and uncond padded to one token count
                // (the scores run them as one batch; zero rows are what the DiT pads with).
                let cond = store.batch(&idx)?;
                let uncond = store.uncond();
                let l = cond.size()[1].max(uncond.size()[1]);
                let pad = |t: &Tensor| t.constant_pad_nd([0, 0, 0, l - t.size()[1]]);
                (
                    pad(&cond).to_kind(Kind::Float).to_device(ctx.device),
                    pad(uncond)
                        .to_kind(Kind::Float)
                        .expand([b, -1, -1], false)
                        .to_device(ctx.device),
                )
            }
        };
        let mut p = Packet::new();
        p.insert("cond", cond);
        p.insert("uncond", uncond);
        Ok([("cond".to_string(), p)].into())
    }
}
