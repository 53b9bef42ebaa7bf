//! `sink`: consumes anything. With `format: safetensors` it writes the `x` latents of every
//! `every`-th step to `logdir/samples/`. `fail_at_step` / `panic_at_step` inject a failure
//! (used by the supervisor's no-hang tests).

use crate::runtime::{Actor, Ctx, Ports, Work};
use anyhow::{bail, Context, Result};

pub struct Sink {
    format: String,
    every: u64,
    fail_at: Option<u64>,
    panic_at: Option<u64>,
}

impl Sink {
    pub fn new(ctx: &Ctx) -> Result<Self> {
        let format = ctx.param_str("format").unwrap_or_else(|| "none".into());
        if !matches!(format.as_str(), "none" | "safetensors") {
            bail!(
                "sink `{}`: unknown format `{format}` (none, safetensors)",
                ctx.name
            );
        }
        let int = |k: &str| ctx.params.get(k).and_then(|v| v.as_u64());
        Ok(Sink {
            format,
            every: int("every").unwrap_or(1).max(1),
            fail_at: int("fail_at_step"),
            panic_at: int("panic_at_step"),
        })
    }
}

impl Actor for Sink {
    fn process(&mut self, ctx: &mut Ctx, work: Work, inputs: Ports) -> Result<Ports> {
        if self.fail_at == Some(work.step) {
            bail!("injected failure (fail_at_step = {})", work.step);
        }
        if self.panic_at == Some(work.step) {
            panic!("injected panic (panic_at_step = {})", work.step);
        }
        if self.format == "safetensors" && work.step % self.every == 0 && work.micro == 0 {
            let dir = ctx.logdir.join("samples");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (port, p) in &inputs {
                if let Ok(x) = p.get("x") {
                    let path = dir.join(format!(
                        "{}_{port}_step{:06}.safetensors",
                        ctx.name, work.step
                    ));
                    let x = x
                        .detach()
                        .to_kind(tch::Kind::Float)
                        .to_device(tch::Device::Cpu);
                    tch::Tensor::write_safetensors(&[("x", &x)], &path)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
            }
        }
        Ok(Ports::new())
    }
}
