//! EMA shadow of the generator (Self-Forcing's `EMA_FSDP`, spec §5).
//!
//! The shadow does not exist until [`Ema::maybe_start`] is called with `step >= start_step` (the
//! reference creates it at the end of a step, after `step += 1`, from the current weights); from then
//! on [`Ema::update`], called only after generator optimizer steps, applies
//! `shadow ← w·shadow + (1 − w)·θ` in f32. The shadow may live on another device than the weights
//! (the reference keeps it on CPU).

use anyhow::{bail, Result};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

use super::{list_names, NamedTensors};

pub struct Ema {
    weight: f64,
    start_step: u64,
    device: Option<Device>,
    shadow: Option<NamedTensors>,
}

impl Ema {
    /// `weight` = decay w in [0, 1] (0.99 in Self-Forcing), `start_step` = 200 there.
    pub fn new(weight: f64, start_step: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&weight) {
            bail!("EMA: weight must be in [0, 1], got {weight}");
        }
        Ok(Ema {
            weight,
            start_step,
            device: None,
            shadow: None,
        })
    }

    /// Keep the shadow on `device` (default: each weight's own device).
    pub fn on_device(mut self, device: Device) -> Self {
        self.device = Some(device);
        self
    }

    pub fn weight(&self) -> f64 {
        self.weight
    }
    pub fn start_step(&self) -> u64 {
        self.start_step
    }
    pub fn is_active(&self) -> bool {
        self.shadow.is_some()
    }

    /// The shadow weights (None before the start step).
    pub fn shadow(&self) -> Option<&[(String, Tensor)]> {
        self.shadow.as_deref()
    }

    fn copy_of(&self, t: &Tensor) -> Result<Tensor> {
        let dev = self.device.unwrap_or(t.device());
        Ok(t.f_to_kind(Kind::Float)?
            .f_to_device(dev)?
            .f_detach_copy()?)
    }

    /// Creates the shadow from `params` if `step >= start_step` and it does not exist yet.
    /// Returns whether it was created now.
    pub fn maybe_start(&mut self, step: u64, params: &[(String, Tensor)]) -> Result<bool> {
        if self.shadow.is_some() || step < self.start_step {
            return Ok(false);
        }
        let shadow = tch::no_grad(|| -> Result<NamedTensors> {
            params
                .iter()
                .map(|(n, t)| Ok((n.clone(), self.copy_of(t)?)))
                .collect()
        })?;
        self.shadow = Some(shadow);
        Ok(true)
    }

    /// `shadow ← w·shadow + (1 − w)·θ` for every shadowed name (no-op before the start; returns
    /// whether an update happened). Every shadowed name must be present in `params`.
    pub fn update(&mut self, params: &[(String, Tensor)]) -> Result<bool> {
        let w = self.weight;
        let Some(shadow) = self.shadow.as_mut() else {
            return Ok(false);
        };
        let by_name: HashMap<&str, &Tensor> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let missing: Vec<String> = shadow
            .iter()
            .filter(|(n, _)| !by_name.contains_key(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        if !missing.is_empty() {
            bail!("EMA update: weights missing {}", list_names(&missing));
        }
        tch::no_grad(|| -> Result<()> {
            for (name, s) in shadow.iter_mut() {
                let theta = by_name[name.as_str()]
                    .f_detach()?
                    .f_to_kind(Kind::Float)?
                    .f_to_device(s.device())?;
                let _ = s.f_mul_scalar_(w)?;
                let _ = s.f_add_(&theta.f_mul_scalar(1.0 - w)?)?;
            }
            Ok(())
        })?;
        Ok(true)
    }

    /// The shadow as named tensors for a checkpoint (None before the start step).
    pub fn state_tensors(&self) -> Option<NamedTensors> {
        self.shadow.as_ref().map(|s| super::shallow_named(s))
    }

    /// Restores a saved shadow (or its absence). With `Some`, the names and shapes must match
    /// `params` exactly (errors name the key; the EMA is unchanged on error).
    pub fn load_state(
        &mut self,
        saved: Option<&[(String, Tensor)]>,
        params: &[(String, Tensor)],
    ) -> Result<()> {
        let Some(saved) = saved else {
            self.shadow = None;
            return Ok(());
        };
        // Fresh f32 tensors shaped like the weights, then a validated copy.
        let fresh = tch::no_grad(|| -> Result<NamedTensors> {
            params
                .iter()
                .map(|(n, t)| Ok((n.clone(), self.copy_of(t)?)))
                .collect()
        })?;
        super::copy_named_into(&fresh, saved, "EMA state")?;
        self.shadow = Some(fresh);
        Ok(())
    }
}
