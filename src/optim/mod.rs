//! Optimisation: AdamW with explicit, checkpointable state; gradient-norm clipping; the EMA shadow of
//! the generator; gradient accumulation over micro-batches.
//!
//! Everything works on *named* trainable tensors, `Vec<(String, Tensor)>`, taken from a
//! `tch::nn::VarStore` with [`trainable_named`]. The tensors are shallow handles on the store's
//! variables, so an in-place update here is an update of the model. Parameters are f32 masters (mixed
//! precision casts copies for the forward pass); the optimizer only ever sees the f32 tensors and
//! their `.grad()`.

pub mod accumulate;
pub mod adamw;
pub mod clip;
pub mod ema;

pub use accumulate::accumulate_grads;
pub use adamw::{AdamW, AdamWConfig};
pub use clip::{clip_grad_norm, grads_total_norm, total_grad_norm};
pub use ema::Ema;

use tch::Tensor;

/// Named tensors, the unit that optimizers, EMA and checkpoints exchange.
pub type NamedTensors = Vec<(String, Tensor)>;

/// The trainable variables of a VarStore, sorted by name (a stable order for optimizer state and
/// checkpoints; `VarStore::variables()` is a HashMap).
pub fn trainable_named(vs: &tch::nn::VarStore) -> NamedTensors {
    let mut v: NamedTensors = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Shallow copies (same storage) of named tensors, e.g. to hand the same parameters to an optimizer
/// and an EMA.
pub fn shallow_named(v: &[(String, Tensor)]) -> NamedTensors {
    v.iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

/// Copy `src` into the tensors of `dst` (matched by name) without recording grad. Every entry is
/// checked first (missing, unexpected, shape and dtype mismatches, each error naming the key and
/// `what`), so on error nothing has been modified.
pub fn copy_named_into(
    dst: &[(String, Tensor)],
    src: &[(String, Tensor)],
    what: &str,
) -> anyhow::Result<()> {
    use anyhow::bail;
    use std::collections::HashMap;
    let by_name: HashMap<&str, &Tensor> = src.iter().map(|(n, t)| (n.as_str(), t)).collect();
    if by_name.len() != src.len() {
        bail!("{what}: duplicate tensor names");
    }
    let mut missing = Vec::new();
    for (name, d) in dst {
        match by_name.get(name.as_str()) {
            None => missing.push(name.clone()),
            Some(s) => {
                if s.size() != d.size() {
                    bail!(
                        "{what}: tensor `{name}` has shape {:?}, the model expects {:?}",
                        s.size(),
                        d.size()
                    );
                }
                if s.kind() != d.kind() {
                    bail!(
                        "{what}: tensor `{name}` has dtype {:?}, the model expects {:?}",
                        s.kind(),
                        d.kind()
                    );
                }
            }
        }
    }
    if !missing.is_empty() {
        bail!("{what}: missing tensor(s) {}", list_names(&missing));
    }
    let known: std::collections::HashSet<&str> = dst.iter().map(|(n, _)| n.as_str()).collect();
    let extra: Vec<String> = src
        .iter()
        .filter(|(n, _)| !known.contains(n.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    if !extra.is_empty() {
        bail!("{what}: unexpected tensor(s) {}", list_names(&extra));
    }
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, d) in dst {
            let mut d = d.shallow_clone();
            d.f_copy_(by_name[name.as_str()])?;
        }
        Ok(())
    })
}

/// `a`, `b`, `c` … and N more: error messages name keys without flooding the terminal.
pub(crate) fn list_names(names: &[String]) -> String {
    const SHOW: usize = 8;
    let mut s: Vec<String> = names.iter().take(SHOW).map(|n| format!("`{n}`")).collect();
    if names.len() > SHOW {
        s.push(format!("and {} more", names.len() - SHOW));
    }
    s.join(", ")
}
