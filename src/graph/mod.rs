//! Pipeline files (pipelines/*.yaml) → a validated graph of actors. Pure data and validation: no
//! tch, no models. Everything that can be checked before a tensor exists is checked here — kinds,
//! ports, port types, connections, cycles, schedule, devices, parameters — and ALL problems are
//! reported at once, each naming the file, the actor or edge, and the YAML line where known.
//! docs/PIPELINES.md documents the format and the kinds.

mod error;
pub mod kinds;
mod lines;
mod parse;
mod render;
mod suggest;
mod validate;

pub use error::{GraphError, Issue};
pub use kinds::{Dir, KindSpec, ParamSpec, ParamType, PortSpec, PortType, KINDS, MODELS};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// Pipelines shipped inside the binary, addressable by name (`self_forcing`, `teacher`, `sample`).
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "self_forcing",
        include_str!("../../pipelines/self_forcing.yaml"),
    ),
    (
        "self_forcing_regression",
        include_str!("../../pipelines/self_forcing_regression.yaml"),
    ),
    ("teacher", include_str!("../../pipelines/teacher.yaml")),
    ("sample", include_str!("../../pipelines/sample.yaml")),
];

/// The CUDA devices that exist where the pipeline will run (the caller detects them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInventory {
    pub cuda_devices: usize,
}

impl DeviceInventory {
    pub fn cpu_only() -> Self {
        DeviceInventory { cuda_devices: 0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleMode {
    /// Step by step on one thread: the reference.
    Serial,
    /// Overlap only what data dependencies allow; must equal `Serial` (bit-exact on CPU).
    Exact,
    /// Critic-lane rollouts may use a generator up to `max_staleness` versions old.
    Async,
}

impl ScheduleMode {
    pub const NAMES: &'static [&'static str] = &["serial", "exact", "async"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "serial" => Some(ScheduleMode::Serial),
            "exact" => Some(ScheduleMode::Exact),
            "async" => Some(ScheduleMode::Async),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ScheduleMode::Serial => "serial",
            ScheduleMode::Exact => "exact",
            ScheduleMode::Async => "async",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub mode: ScheduleMode,
    /// 0 unless `mode` is `Async`.
    pub max_staleness: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            mode: ScheduleMode::Exact,
            max_staleness: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ActorSpec {
    pub name: String,
    pub kind: String,
    /// `cpu`, `cuda` or `cuda:i`; `None` = the run's `--device`.
    pub device: Option<String>,
    /// CUDA stream name; actors naming the same stream share it. `None` = the actor's own stream.
    pub stream: Option<String>,
    /// Kind-specific parameters (checked against the catalogue), in file order.
    pub params: BTreeMap<String, serde_json::Value>,
    pub line: Option<usize>,
}

impl ActorSpec {
    pub fn param(&self, name: &str) -> Option<&serde_json::Value> {
        self.params.get(name)
    }
    pub fn param_bool(&self, name: &str) -> Option<bool> {
        self.params.get(name).and_then(|v| v.as_bool())
    }
    pub fn param_str(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(|v| v.as_str())
    }
    /// The catalogue entry (always present in a validated graph).
    pub fn spec(&self) -> Option<&'static KindSpec> {
        kinds::kind(&self.kind)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRef {
    pub actor: String,
    pub port: String,
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.actor, self.port)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EdgeSpec {
    pub from: PortRef,
    pub to: PortRef,
    /// Channel bound (backpressure); ≥ 1, default 2.
    pub capacity: usize,
    /// The type carried: the producing port's type.
    pub ty: PortType,
    pub line: Option<usize>,
}

impl EdgeSpec {
    /// Weights edges deliver the next version of a model: they break cycles and are left out of
    /// the topological order.
    pub fn is_weights(&self) -> bool {
        self.ty == PortType::Weights
    }
}

/// A validated pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub name: String,
    pub description: Option<String>,
    /// Where it came from (path or `embedded pipeline `name``), for runtime error messages.
    pub file: String,
    pub schedule: Schedule,
    /// In file order.
    pub actors: Vec<ActorSpec>,
    /// In file order.
    pub edges: Vec<EdgeSpec>,
}

/// The default capacity of an edge.
pub const DEFAULT_CAPACITY: usize = 2;

/// Load a pipeline: an existing file wins, else an embedded name (`self_forcing`,
/// `pipelines/self_forcing.yaml` and `self_forcing.yaml` all name the embedded one).
pub fn load_pipeline(path_or_embedded: &str, inv: &DeviceInventory) -> Result<Graph, GraphError> {
    let p = Path::new(path_or_embedded);
    if p.is_file() {
        let text = std::fs::read_to_string(p).map_err(|e| GraphError::Read {
            path: path_or_embedded.to_string(),
            err: e.to_string(),
        })?;
        return parse_pipeline(&text, path_or_embedded, inv);
    }
    match embedded(path_or_embedded) {
        Some((name, text)) => parse_pipeline(text, &format!("embedded pipeline `{name}`"), inv),
        None => Err(GraphError::Read {
            path: path_or_embedded.to_string(),
            err: format!(
                "no such file, and not an embedded pipeline (embedded: {})",
                EMBEDDED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// The embedded pipeline a name refers to, if any.
pub fn embedded(name: &str) -> Option<(&'static str, &'static str)> {
    let stem = name.strip_prefix("pipelines/").unwrap_or(name);
    let stem = stem.strip_suffix(".yaml").unwrap_or(stem);
    EMBEDDED.iter().find(|(n, _)| *n == stem).copied()
}

/// Parse and validate pipeline text. `file_label` names the source in every message.
pub fn parse_pipeline(
    text: &str,
    file_label: &str,
    inv: &DeviceInventory,
) -> Result<Graph, GraphError> {
    let raw = parse::parse(text, file_label)?;
    validate::validate(raw, file_label, inv)
}

impl Graph {
    pub fn actor_index(&self, name: &str) -> Option<usize> {
        self.actors.iter().position(|a| a.name == name)
    }

    pub fn actor(&self, name: &str) -> Option<&ActorSpec> {
        self.actors.iter().find(|a| a.name == name)
    }

    /// Edges into `actor`, in file order.
    pub fn inputs_of(&self, actor: &str) -> Vec<&EdgeSpec> {
        self.edges.iter().filter(|e| e.to.actor == actor).collect()
    }

    /// Edges out of `actor`, in file order.
    pub fn outputs_of(&self, actor: &str) -> Vec<&EdgeSpec> {
        self.edges
            .iter()
            .filter(|e| e.from.actor == actor)
            .collect()
    }

    /// Actor indices in an order where every producer comes before its consumers, Weights edges
    /// excluded (they carry the *next* version). Ties keep file order, so the order is
    /// deterministic. A validated graph is acyclic without its Weights edges, so all actors appear.
    pub fn topo_order(&self) -> Vec<usize> {
        topo(self.actors.len(), self.data_edges())
    }

    /// (producer, consumer) actor indices of the non-Weights edges.
    fn data_edges(&self) -> Vec<(usize, usize)> {
        self.edges
            .iter()
            .filter(|e| !e.is_weights())
            .filter_map(|e| {
                Some((
                    self.actor_index(&e.from.actor)?,
                    self.actor_index(&e.to.actor)?,
                ))
            })
            .collect()
    }

    /// Mermaid flowchart (Weights edges dashed).
    pub fn to_mermaid(&self) -> String {
        render::mermaid(self)
    }

    /// Graphviz DOT (Weights edges dashed).
    pub fn to_dot(&self) -> String {
        render::dot(self)
    }
}

/// Kahn's algorithm, lowest index first among ready nodes. Nodes on cycles are left out.
pub(crate) fn topo(n: usize, edges: Vec<(usize, usize)>) -> Vec<usize> {
    let mut indeg = vec![0usize; n];
    let mut succ = vec![Vec::new(); n];
    for (a, b) in edges {
        indeg[b] += 1;
        succ[a].push(b);
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &j in &succ[i] {
            indeg[j] -= 1;
            if indeg[j] == 0 {
                ready.insert(j);
            }
        }
    }
    order
}
