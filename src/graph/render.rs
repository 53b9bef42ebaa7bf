//! Mermaid and Graphviz renderings of a graph. Weights edges are dashed: they close the training
//! loop and are left out of the topological order.

use super::Graph;
use std::fmt::Write;

/// Mermaid node ids must be plain words; actor names are identifiers but may contain `-`.
fn id(name: &str) -> String {
    name.replace('-', "_")
}

pub(crate) fn mermaid(g: &Graph) -> String {
    let mut s = format!("%% pipeline {}\nflowchart LR\n", g.name);
    for a in &g.actors {
        let _ = writeln!(s, "  {}[\"{}<br/><i>{}</i>\"]", id(&a.name), a.name, a.kind);
    }
    for e in &g.edges {
        let arrow = if e.is_weights() { "-.->" } else { "-->" };
        let _ = writeln!(
            s,
            "  {} {arrow}|\"{} → {} : {}\"| {}",
            id(&e.from.actor),
            e.from.port,
            e.to.port,
            e.ty,
            id(&e.to.actor)
        );
    }
    s
}

pub(crate) fn dot(g: &Graph) -> String {
    let mut s = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n",
        g.name
    );
    for a in &g.actors {
        let _ = writeln!(s, "  \"{}\" [label=\"{}\\n({})\"];", a.name, a.name, a.kind);
    }
    for e in &g.edges {
        let style = if e.is_weights() { ", style=dashed" } else { "" };
        let _ = writeln!(
            s,
            "  \"{}\" -> \"{}\" [label=\"{} → {} : {}\"{style}];",
            e.from.actor, e.to.actor, e.from.port, e.to.port, e.ty
        );
    }
    s.push_str("}\n");
    s
}
