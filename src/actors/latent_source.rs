//! `latent_source`: data samples x0 for teacher training — exact samples of the toy GMM (keyed),
//! with the class prompt that selects their mixture component's class.

use crate::actors::zoo;
use crate::dist::global_first_row;
use crate::models::gmm::Gmm;
use crate::models::toy_text::ToyTextEncoder;
use crate::rng::{randint_vec, Purpose, RngKey};
use crate::runtime::{Actor, Ctx, Packet, Ports, Work};
use anyhow::Result;

pub struct LatentSource {
    gmm: Gmm,
    enc: ToyTextEncoder,
}

impl LatentSource {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let t = &ctx.cfg.toy;
        Ok(LatentSource {
            gmm: zoo::toy_gmm(&ctx.cfg)?,
            enc: ToyTextEncoder::new(
                t.num_classes.max(1) as usize,
                t.text_len as usize,
                t.text_dim as usize,
            ),
        })
    }
}

impl Actor for LatentSource {
    fn process(&mut self, ctx: &mut Ctx, work: Work, _inputs: Ports) -> Result<Ports> {
        // Rank-free key, keyed by global row (dist::global_first_row): W ranks with batch B
        // sample what one process with batch W·B does.
        let key = RngKey::new(ctx.seed, work.step, work.lane, Purpose::Data);
        let b = ctx.cfg.batch_size as usize;
        let k = self.gmm.num_classes().max(1) as i64;
        let first = global_first_row(
            work.micro as u64,
            ctx.rank as usize,
            ctx.world as usize,
            b as u64,
        );
        let classes: Vec<i64> = (0..b as u64)
            .map(|i| randint_vec(&key.sub(1 << 32).row(first + i), 0, k, 1)[0])
            .collect();
        let mut x = Vec::with_capacity(b);
        let mut prompts = Vec::with_capacity(b);
        for (i, c) in classes.iter().enumerate() {
            let class = (self.gmm.num_classes() > 0).then_some(*c as usize);
            x.push(self.gmm.sample(&key.row(first + i as u64), 1, class));
            prompts.push(class.map(|c| format!("class {c}")).unwrap_or_default());
        }
        let x = tch::Tensor::cat(&x, 0)
            .to_device(ctx.device)
            .to_kind(zoo::compute_kind(&ctx.cfg, ctx.device));
        let mut p = Packet::new();
        p.insert("x", x);
        p.insert("cond", self.enc.encode_on(&prompts, ctx.device));
        p.insert(
            "uncond",
            self.enc.encode_on(&vec![String::new(); b], ctx.device),
        );
        Ok([("x0".to_string(), p)].into())
    }
}
