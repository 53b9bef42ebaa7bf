//! Loading named tensors (safetensors) into a `VarStore`, with one error that lists every
//! missing, unexpected and mis-shaped tensor. Reusable for checkpoints.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tch::nn::VarStore;
use tch::Tensor;

/// Reads every tensor of a `.safetensors` file (CPU tensors, stored kinds). Corrupt or truncated
/// files give an error naming the file.
pub fn load_named_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot open weights file {}", path.display()))?;
    if meta.len() < 8 {
        bail!(
            "weights file {} is truncated or not a safetensors file ({} bytes; the 8-byte header \
             length is missing)",
            path.display(),
            meta.len()
        );
    }
    Tensor::read_safetensors(path).map_err(|e| {
        anyhow::anyhow!(
            "weights file {} is corrupt or truncated (not a valid safetensors file): {e}",
            path.display()
        )
    })
}

/// Strips checkpoint wrapper prefixes: a leading `model.` and every `_fsdp_wrapped_module.`
/// fragment (spec quirk (d)), so `model._fsdp_wrapped_module.blocks.0.x` → `blocks.0.x`.
pub fn strip_wrapper_prefixes(name: &str) -> String {
    let s = name.replace("_fsdp_wrapped_module.", "");
    match s.strip_prefix("model.") {
        Some(r) => r.to_string(),
        None => s,
    }
}

/// Copies `tensors` into the variables of `vs` (cast to each variable's kind and device).
/// Nothing is copied unless the names and shapes match exactly; otherwise ONE error lists all
/// missing, unexpected and mis-shaped tensors, naming `source_name`.
pub fn copy_into_varstore(
    vs: &VarStore,
    tensors: &[(String, Tensor)],
    source_name: &str,
) -> Result<()> {
    let vars = vs.variables();
    let mut given: BTreeMap<&str, &Tensor> = BTreeMap::new();
    let mut duplicate = BTreeSet::new();
    for (n, t) in tensors {
        if given.insert(n.as_str(), t).is_some() {
            duplicate.insert(n.clone());
        }
    }
    let missing: BTreeSet<&String> = vars
        .keys()
        .filter(|k| !given.contains_key(k.as_str()))
        .collect();
    let unexpected: BTreeSet<&str> = given
        .keys()
        .copied()
        .filter(|k| !vars.contains_key(*k))
        .collect();
    let mut misshaped = Vec::new();
    for (n, v) in &vars {
        if let Some(t) = given.get(n.as_str()) {
            if t.size() != v.size() {
                misshaped.push(format!(
                    "{n}: expected {:?}, found {:?}",
                    v.size(),
                    t.size()
                ));
            }
        }
    }
    misshaped.sort();
    if !missing.is_empty()
        || !unexpected.is_empty()
        || !misshaped.is_empty()
        || !duplicate.is_empty()
    {
        let mut msg = format!(
            "weights from {source_name} do not match the model ({} missing, {} unexpected, {} \
             mis-shaped, {} duplicated):",
            missing.len(),
            unexpected.len(),
            misshaped.len(),
            duplicate.len()
        );
        for m in &missing {
            msg.push_str(&format!("\n  missing: {m}"));
        }
        for u in &unexpected {
            msg.push_str(&format!("\n  unexpected: {u}"));
        }
        for s in &misshaped {
            msg.push_str(&format!("\n  mis-shaped: {s}"));
        }
        for d in &duplicate {
            msg.push_str(&format!("\n  duplicated: {d}"));
        }
        bail!(msg);
    }
    let _guard = tch::no_grad_guard();
    for (n, mut v) in vars {
        let t = given[n.as_str()];
        v.f_copy_(&t.to_kind(v.kind()).to_device(v.device()))
            .with_context(|| format!("copying {n} from {source_name}"))?;
    }
    Ok(())
}
