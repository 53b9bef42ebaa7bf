//! The runtime's view of a validated graph: actors in topological order, data edges with the
//! lanes they carry, and weights edges (publisher → reader port).

use crate::graph::Graph;
use crate::rng::Lane;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub kind: String,
    pub device: Option<String>,
    pub stream: Option<String>,
    pub params: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug)]
pub struct DataEdge {
    pub from: usize,
    pub from_port: String,
    pub to: usize,
    pub to_port: String,
    pub capacity: usize,
    pub lanes: BTreeSet<Lane>,
}

#[derive(Clone, Debug)]
pub struct WeightsEdge {
    pub from: usize,
    pub to: usize,
    pub to_port: String,
}

#[derive(Clone, Debug)]
pub struct Wiring {
    /// In topological order (weights edges excluded from the ordering).
    pub nodes: Vec<Node>,
    pub data: Vec<DataEdge>,
    pub weights: Vec<WeightsEdge>,
    pub lanes: Vec<BTreeSet<Lane>>,
    /// Period of the `checkpoint` actor, if the graph has one (it is served by the runtime).
    pub checkpoint_every: Option<u64>,
}

/// The lane an actor starts: rollouts by their `lane`/`grad` parameter, data sources of teacher
/// training run in the critic (denoising) lane.
fn own_lane(n: &Node) -> Option<Lane> {
    match n.kind.as_str() {
        "rollout" => {
            let lane = n.params.get("lane").and_then(|v| v.as_str());
            let grad = n
                .params
                .get("grad")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            Some(match lane {
                Some("g") | Some("generator") => Lane::Generator,
                Some("c") | Some("critic") => Lane::Critic,
                _ if grad => Lane::Generator,
                _ => Lane::Critic,
            })
        }
        "latent_source" => Some(Lane::Critic),
        _ => None,
    }
}

impl Wiring {
    pub fn from_graph(g: &Graph) -> Wiring {
        // `checkpoint` actors are served by the runtime itself (it collects every stateful
        // actor's state at step boundaries), so they and their edges are not threads.
        let mut checkpoint_every = None;
        for a in &g.actors {
            if a.kind == "checkpoint" {
                let every = a.params.get("every").and_then(|v| v.as_u64());
                checkpoint_every = Some(every.unwrap_or(0));
            }
        }
        let order: Vec<usize> = g
            .topo_order()
            .into_iter()
            .filter(|&a| g.actors[a].kind != "checkpoint")
            .collect();
        let pos: BTreeMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, &a)| (g.actors[a].name.as_str(), i))
            .collect();
        let nodes: Vec<Node> = order
            .iter()
            .map(|&a| {
                let s = &g.actors[a];
                Node {
                    name: s.name.clone(),
                    kind: s.kind.clone(),
                    device: s.device.clone(),
                    stream: s.stream.clone(),
                    params: s.params.clone().into_iter().collect(),
                }
            })
            .collect();
        let mut data = vec![];
        let mut weights = vec![];
        for e in &g.edges {
            let (Some(&from), Some(&to)) =
                (pos.get(e.from.actor.as_str()), pos.get(e.to.actor.as_str()))
            else {
                continue;
            };
            if e.ty == crate::graph::PortType::Weights {
                weights.push(WeightsEdge {
                    from,
                    to,
                    to_port: e.to.port.clone(),
                });
            } else {
                data.push(DataEdge {
                    from,
                    from_port: e.from.port.clone(),
                    to,
                    to_port: e.to.port.clone(),
                    capacity: e.capacity,
                    lanes: BTreeSet::new(),
                });
            }
        }
        let mut w = Wiring {
            lanes: vec![BTreeSet::new(); nodes.len()],
            nodes,
            data,
            weights,
            checkpoint_every: checkpoint_every.filter(|&e| e > 0),
        };
        w.assign_lanes();
        w
    }

    /// Lanes flow downstream from the actors that start them; sources take the lanes of what they
    /// feed; an edge carries the lanes both of its ends have.
    fn assign_lanes(&mut self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(l) = own_lane(n) {
                self.lanes[i].insert(l);
            }
        }
        // Downstream (topological order makes one pass enough; repeat for safety).
        for _ in 0..2 {
            for e in &self.data {
                if own_lane(&self.nodes[e.to]).is_none() {
                    let up = self.lanes[e.from].clone();
                    self.lanes[e.to].extend(up);
                }
            }
        }
        // Upstream to pure sources (actors with no data inputs that start no lane).
        for i in (0..self.nodes.len()).rev() {
            let has_inputs = self.data.iter().any(|e| e.to == i);
            if !has_inputs && own_lane(&self.nodes[i]).is_none() {
                let down: BTreeSet<Lane> = self
                    .data
                    .iter()
                    .filter(|e| e.from == i)
                    .flat_map(|e| self.lanes[e.to].iter().copied())
                    .collect();
                self.lanes[i].extend(down);
            }
        }
        for e in &mut self.data {
            e.lanes = self.lanes[e.from]
                .intersection(&self.lanes[e.to])
                .copied()
                .collect();
        }
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn is_source(&self, i: usize) -> bool {
        !self.data.iter().any(|e| e.to == i)
    }

    /// Model a publisher owns (its `model` parameter; `generator` by default).
    pub fn model_of(&self, i: usize) -> String {
        self.nodes[i]
            .params
            .get("model")
            .and_then(|v| v.as_str())
            .unwrap_or("generator")
            .to_string()
    }
}
