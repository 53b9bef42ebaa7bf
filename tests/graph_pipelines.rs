//! The shipped pipelines validate; topological order, adjacency, renderings, loading by name/path.

use stillflow::graph::{
    load_pipeline, parse_pipeline, DeviceInventory, Graph, PortType, ScheduleMode, EMBEDDED,
};

fn cpu() -> DeviceInventory {
    DeviceInventory::cpu_only()
}

fn pos(g: &Graph, order: &[usize], name: &str) -> usize {
    let i = g
        .actor_index(name)
        .unwrap_or_else(|| panic!("no actor {name}"));
    order.iter().position(|&x| x == i).expect("actor in order")
}

#[test]
fn shipped_pipelines_validate() {
    for (name, _) in EMBEDDED {
        let g = load_pipeline(name, &cpu()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&g.name, name);
        assert_eq!(g.file, format!("embedded pipeline `{name}`"));
        // Every order contains each actor once.
        let mut o = g.topo_order();
        o.sort_unstable();
        assert_eq!(o, (0..g.actors.len()).collect::<Vec<_>>(), "{name}");
    }
}

#[test]
fn files_on_disk_equal_embedded_and_win_over_names() {
    let a = load_pipeline("pipelines/self_forcing.yaml", &cpu()).expect("file");
    let b = load_pipeline("self_forcing", &cpu()).expect("embedded");
    assert_eq!(a.file, "pipelines/self_forcing.yaml");
    assert_eq!((a.actors, a.edges), (b.actors, b.edges));
    let e = load_pipeline("no_such_pipeline", &cpu())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no_such_pipeline")
            && e.contains("self_forcing, self_forcing_regression, teacher, sample"),
        "{e}"
    );
}

#[test]
fn self_forcing_structure() {
    let g = load_pipeline("self_forcing", &cpu()).expect("valid");
    assert_eq!(g.schedule.mode, ScheduleMode::Exact);
    assert_eq!(g.schedule.max_staleness, 0);
    assert_eq!(g.actors.len(), 17);
    assert_eq!(g.edges.len(), 22);
    let rc = g.actor("rollout_c").expect("rollout_c");
    assert_eq!(rc.stream.as_deref(), Some("rollout"));
    assert_eq!(rc.param_bool("grad"), Some(false));
    assert_eq!(
        g.actor("rollout_g").and_then(|a| a.param_bool("grad")),
        Some(true)
    );
    assert_eq!(
        g.actor("gen_loss").map(|a| a.kind.as_str()),
        Some("distribution_loss")
    );
    // Port types recorded on the edges.
    let ty = |f: &str, t: &str| {
        g.edges
            .iter()
            .find(|e| e.from.to_string() == f && e.to.to_string() == t)
            .map(|e| e.ty)
    };
    assert_eq!(
        ty("rollout_g.samples", "noise_g.samples"),
        Some(PortType::Samples)
    );
    assert_eq!(
        ty("opt_c.weights", "fake_view.weights"),
        Some(PortType::Weights)
    );
    assert_eq!(ty("gen_loss.loss", "opt_g.loss"), Some(PortType::Loss));
    // Default capacity 2, explicit 1 on the weights edges.
    for e in &g.edges {
        assert_eq!(e.capacity, if e.is_weights() { 1 } else { 2 }, "{:?}", e);
    }
    // Adjacency.
    let ins: Vec<String> = g
        .inputs_of("gen_loss")
        .iter()
        .map(|e| e.from.to_string())
        .collect();
    assert_eq!(ins, ["real_score.scored", "fake_view.scored"]);
    let outs: Vec<String> = g
        .outputs_of("opt_g")
        .iter()
        .map(|e| e.to.to_string())
        .collect();
    assert_eq!(
        outs,
        [
            "rollout_g.weights",
            "rollout_c.weights",
            "ema.weights",
            "checkpoint.weights",
            "eval.weights"
        ]
    );
    assert_eq!(g.inputs_of("checkpoint").len(), 3);
    assert!(g.inputs_of("prompts_g").is_empty());
}

#[test]
fn topo_order_respects_data_edges_and_ignores_weights() {
    let g = load_pipeline("self_forcing", &cpu()).expect("valid");
    let o = g.topo_order();
    for e in g.edges.iter().filter(|e| !e.is_weights()) {
        assert!(
            pos(&g, &o, &e.from.actor) < pos(&g, &o, &e.to.actor),
            "{e:?}"
        );
    }
    // Weights edges point backwards (opt_g feeds rollout_g, which comes first).
    assert!(pos(&g, &o, "rollout_g") < pos(&g, &o, "opt_g"));
    // Ties keep file order: the first actors are the two sources, then the first rollout.
    let names: Vec<&str> = o.iter().map(|&i| g.actors[i].name.as_str()).collect();
    assert_eq!(&names[..3], ["prompts_g", "prompts_c", "rollout_g"]);
    let t = load_pipeline("teacher", &cpu()).expect("valid");
    let names: Vec<&str> = t
        .topo_order()
        .iter()
        .map(|&i| t.actors[i].name.as_str())
        .collect();
    assert_eq!(
        names,
        ["data", "noise", "teacher", "loss", "opt", "checkpoint"]
    );
}

#[test]
fn renderings_contain_every_edge() {
    for (name, _) in EMBEDDED {
        let g = load_pipeline(name, &cpu()).expect("valid");
        let m = g.to_mermaid();
        let d = g.to_dot();
        assert!(m.starts_with(&format!("%% pipeline {name}\nflowchart LR\n")));
        assert!(d.starts_with(&format!("digraph \"{name}\" {{")) && d.trim_end().ends_with('}'));
        for a in &g.actors {
            assert!(m.contains(&format!("{}[\"{}<br/><i>{}</i>\"]", a.name, a.name, a.kind)));
            assert!(d.contains(&format!(
                "\"{}\" [label=\"{}\\n({})\"];",
                a.name, a.name, a.kind
            )));
        }
        for e in &g.edges {
            let arrow = if e.is_weights() { "-.->" } else { "-->" };
            let me = format!(
                "{} {arrow}|\"{} → {} : {}\"| {}",
                e.from.actor, e.from.port, e.to.port, e.ty, e.to.actor
            );
            assert!(m.contains(&me), "mermaid lacks {me}\n{m}");
            let style = if e.is_weights() { ", style=dashed" } else { "" };
            let de = format!(
                "\"{}\" -> \"{}\" [label=\"{} → {} : {}\"{style}];",
                e.from.actor, e.to.actor, e.from.port, e.to.port, e.ty
            );
            assert!(d.contains(&de), "dot lacks {de}\n{d}");
        }
        assert_eq!(
            m.matches("--").count() + m.matches("-.->").count(),
            g.edges.len()
        );
        assert_eq!(d.matches(" -> ").count(), g.edges.len());
    }
}

#[test]
fn async_schedule_and_devices_parse() {
    let text = "name: t\nschedule: {mode: async, max_staleness: 3}\nactors:\n  \
                p: {kind: prompt_source, device: cpu}\n  \
                r: {kind: rollout, model: generator, device: 'cuda:1'}\n  \
                s: {kind: sink, device: cuda}\n\
                edges:\n  - {from: p.cond, to: r.cond, capacity: 7}\n  - {from: r.samples, to: s.in}\n";
    let g = parse_pipeline(text, "t.yaml", &DeviceInventory { cuda_devices: 2 }).expect("valid");
    assert_eq!(g.schedule.mode, ScheduleMode::Async);
    assert_eq!(g.schedule.max_staleness, 3);
    assert_eq!(g.actors[1].device.as_deref(), Some("cuda:1"));
    assert_eq!(g.edges[0].capacity, 7);
    assert_eq!(g.actors[0].line, Some(4));
    assert_eq!(g.edges[1].line, Some(9));
    // Without a schedule: exact.
    let g =
        parse_pipeline("name: u\nactors: {s: {kind: prompt_source}}\n", "u", &cpu()).expect("ok");
    assert_eq!(g.schedule.mode, ScheduleMode::Exact);
    assert!(g.edges.is_empty());
}

/// `STILLFLOW_REGEN_DOCS=1 cargo test --release --test graph_pipelines docs` rewrites the
/// generated blocks of docs/PIPELINES.md (catalogue tables, self_forcing mermaid).
fn regenerate_docs(docs: &str, table: &str, mermaid: &str) -> String {
    let start = docs
        .find("| kind | port |")
        .expect("catalogue table in docs");
    let rest = &docs[start..];
    // The two tables end at the first line that is neither a table row nor the blank line between them.
    let mut end = start;
    let mut blank_seen = false;
    for line in rest.split_inclusive('\n') {
        if line.starts_with('|') || (line.trim().is_empty() && !blank_seen) {
            blank_seen |= line.trim().is_empty();
            end += line.len();
        } else {
            break;
        }
    }
    let mut out = format!("{}{}\n{}", &docs[..start], table.trim_end(), &docs[end..]);
    if let Some(m0) = out.find("```mermaid\n") {
        let body = m0 + "```mermaid\n".len();
        let m1 = body + out[body..].find("```").expect("closing fence");
        out = format!("{}{}{}", &out[..body], mermaid, &out[m1..]);
    }
    out
}

#[test]
fn docs_embed_the_current_catalogue() {
    let mut docs = std::fs::read_to_string("docs/PIPELINES.md").expect("docs/PIPELINES.md");
    if std::env::var_os("STILLFLOW_REGEN_DOCS").is_some() {
        let m = load_pipeline("self_forcing", &cpu())
            .expect("valid")
            .to_mermaid();
        docs = regenerate_docs(&docs, &stillflow::graph::kinds::catalogue_markdown(), &m);
        std::fs::write("docs/PIPELINES.md", &docs).expect("write docs");
    }
    let table = stillflow::graph::kinds::catalogue_markdown();
    assert!(
        docs.contains(&table),
        "docs/PIPELINES.md is out of date; paste this table:\n{table}"
    );
    let m = load_pipeline("self_forcing", &cpu())
        .expect("valid")
        .to_mermaid();
    assert!(
        docs.contains(&m),
        "docs/PIPELINES.md: paste this mermaid:\n{m}<<END"
    );
}

/// The two-GPU placement is the shipped pipeline with devices on three actors: it validates where
/// two CUDA devices exist, names the missing device where they don't, and differs from
/// `self_forcing` only in those placements.
#[test]
fn two_gpu_placement_is_self_forcing_with_devices() {
    let two = DeviceInventory { cuda_devices: 2 };
    let g =
        load_pipeline("pipelines/self_forcing_2gpu.yaml", &two).unwrap_or_else(|e| panic!("{e}"));
    let base = load_pipeline("self_forcing", &two).expect("embedded");
    let strip = |g: &Graph| -> Vec<String> {
        g.edges
            .iter()
            .map(|e| format!("{:?}->{:?} {} {:?}", e.from, e.to, e.capacity, e.ty))
            .collect()
    };
    assert_eq!(strip(&g), strip(&base));
    let mut on_1 = vec![];
    for (a, b) in g.actors.iter().zip(&base.actors) {
        assert_eq!(
            (&a.name, &a.kind, &a.params, &a.stream),
            (&b.name, &b.kind, &b.params, &b.stream)
        );
        assert_eq!(b.device, None);
        if let Some(d) = &a.device {
            assert_eq!(d, "cuda:1", "{}", a.name);
            on_1.push(a.name.as_str());
        }
    }
    on_1.sort_unstable();
    assert_eq!(on_1, ["prompts_c", "real_score", "rollout_c"]);
    let e = load_pipeline(
        "pipelines/self_forcing_2gpu.yaml",
        &DeviceInventory { cuda_devices: 1 },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("rollout_c") && e.contains("cuda:1") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn regression_pipeline_is_self_forcing_plus_the_ode_target() {
    let g = load_pipeline("self_forcing_regression", &cpu()).unwrap_or_else(|e| panic!("{e}"));
    let base = load_pipeline("self_forcing", &cpu()).expect("embedded");
    let edges = |g: &Graph| -> Vec<String> {
        g.edges
            .iter()
            .map(|e| format!("{:?}->{:?} {} {:?}", e.from, e.to, e.capacity, e.ty))
            .collect()
    };
    let (with, without) = (edges(&g), edges(&base));
    let extra: Vec<&String> = with.iter().filter(|e| !without.contains(e)).collect();
    assert_eq!(extra.len(), 2, "{extra:?}");
    assert!(extra
        .iter()
        .any(|e| e.contains("rollout_g") && e.contains("ode_target")));
    assert!(extra
        .iter()
        .any(|e| e.contains("ode_target") && e.contains("gen_loss")));
    assert!(without.iter().all(|e| with.contains(e)));
    let kinds: Vec<(&str, &str)> = g
        .actors
        .iter()
        .filter(|a| !base.actors.iter().any(|b| b.name == a.name))
        .map(|a| (a.name.as_str(), a.kind.as_str()))
        .collect();
    assert_eq!(kinds, [("ode_target", "ode_target")]);
}
