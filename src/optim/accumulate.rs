//! Gradient accumulation: k micro-batches of B give the gradient of one batch of k·B.
//!
//! With a mean-reduced loss, the batch gradient is the mean of the micro-batch gradients, so each
//! micro-batch loss is backpropagated scaled by 1/k and the gradients add up in `.grad()`. The caller
//! zeroes the gradients before and runs clip + optimizer step after, exactly as for one batch.

use anyhow::{bail, Context, Result};
use tch::Tensor;

/// Runs `micro(i)` for i in 0..k; each must return a scalar loss (mean over its micro-batch) with a
/// graph; backpropagates `loss / k` right away (so only one micro-batch graph is alive at a time) and
/// returns the mean of the k losses (the loss of the whole batch when micro-batches have equal size).
pub fn accumulate_grads<F>(k: usize, mut micro: F) -> Result<f64>
where
    F: FnMut(usize) -> Result<Tensor>,
{
    if k == 0 {
        bail!("gradient accumulation: k must be >= 1");
    }
    let mut sum = 0.0;
    for i in 0..k {
        let loss = micro(i).with_context(|| format!("micro-batch {i} of {k}"))?;
        if loss.numel() != 1 {
            bail!(
                "gradient accumulation: micro-batch {i} returned a loss of shape {:?}, expected a scalar",
                loss.size()
            );
        }
        sum += loss.f_double_value(&[])?;
        let scaled = if k == 1 {
            loss
        } else {
            loss.f_div_scalar(k as f64)?
        };
        scaled
            .f_backward()
            .with_context(|| format!("backward of micro-batch {i} of {k}"))?;
    }
    Ok(sum / k as f64)
}
