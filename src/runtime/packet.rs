//! What flows on data edges: named tensors plus the bookkeeping (versions, scalars, gradient
//! targets) that lets a downstream optimizer run backward into the producer's parameters.

use crate::rng::Lane;
use std::collections::BTreeMap;
use tch::Tensor;

/// One unit of work: step s, lane (generator or critic), micro-batch index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Work {
    pub step: u64,
    pub lane: Lane,
    pub micro: u32,
}

impl std::fmt::Display for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lane = match self.lane {
            Lane::Generator => "g",
            Lane::Critic => "c",
            Lane::Other => "o",
        };
        write!(f, "step {} lane {lane}", self.step)?;
        if self.micro > 0 {
            write!(f, " micro {}", self.micro)?;
        }
        Ok(())
    }
}

/// A bundle of named tensors travelling on one edge.
#[derive(Default)]
pub struct Packet {
    pub tensors: BTreeMap<String, Tensor>,
    /// Parameters (name, handle) that gradients of this packet's graph should be taken against.
    /// The handles are shallow clones of the producing actor's variables; the optimizer calls
    /// `run_backward` w.r.t. them, so no gradient ever accumulates into another thread's tensors.
    pub grad_targets: Vec<(String, Tensor)>,
    /// Model versions this packet was computed with ("generator" → 12, …).
    pub versions: BTreeMap<String, u64>,
    /// Scalars for metrics (exit step, losses, norms…).
    pub scalars: BTreeMap<String, f64>,
    /// Recorded by the producer on its stream after computing the tensors; the consumer's
    /// stream waits on it (a no-op host event on CPU).
    pub event: Option<crate::cuda::CudaEvent>,
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packet")
            .field("tensors", &self.tensors.keys().collect::<Vec<_>>())
            .field("versions", &self.versions)
            .field("scalars", &self.scalars)
            .finish()
    }
}

impl Packet {
    pub fn new() -> Self {
        Packet::default()
    }

    pub fn with(mut self, name: &str, t: Tensor) -> Self {
        self.tensors.insert(name.to_string(), t);
        self
    }

    pub fn insert(&mut self, name: &str, t: Tensor) {
        self.tensors.insert(name.to_string(), t);
    }

    /// The tensor `name`, or an error naming what the packet does carry.
    pub fn get(&self, name: &str) -> anyhow::Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            anyhow::anyhow!(
                "packet has no tensor `{name}` (it carries: {})",
                self.tensors.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// A copy sharing tensor storage (and autograd graph).
    pub fn shallow_clone(&self) -> Packet {
        Packet {
            tensors: self
                .tensors
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect(),
            grad_targets: self
                .grad_targets
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect(),
            versions: self.versions.clone(),
            scalars: self.scalars.clone(),
            event: None,
        }
    }

    /// Move every tensor that lives on another device to `device` (disaggregated placement: the
    /// producer ran on another GPU). The copy is differentiable, so a graph crosses devices intact
    /// (backward copies the gradient back). Call after the consumer's stream waited on `event`:
    /// ATen orders a cross-device copy after the destination device's current stream.
    pub fn to_device(&mut self, device: tch::Device) -> anyhow::Result<()> {
        for t in self.tensors.values_mut() {
            if t.device() != device {
                *t = t.f_to_device(device)?;
            }
        }
        Ok(())
    }

    /// Carry versions, scalars and gradient targets of `other` into `self` (self wins on clashes).
    pub fn inherit(&mut self, other: &Packet) {
        for (k, v) in &other.versions {
            self.versions.entry(k.clone()).or_insert(*v);
        }
        for (k, v) in &other.scalars {
            self.scalars.entry(k.clone()).or_insert(*v);
        }
        if self.grad_targets.is_empty() {
            self.grad_targets = other
                .grad_targets
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect();
        }
    }
}

/// Packets by port name: the inputs an actor receives for one work item, or the outputs it emits.
pub type Ports = BTreeMap<String, Packet>;
