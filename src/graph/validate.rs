//! Cross-reference checks on a raw pipeline: edges ↔ actors and ports, port directions and types,
//! input connections, cycles that no Weights edge breaks, devices, and model consistency.

use super::error::{GraphError, Issue};
use super::kinds::{Dir, KindSpec, PortSpec, PortType};
use super::parse::{Raw, RawEdge};
use super::suggest::did_you_mean;
use super::{ActorSpec, DeviceInventory, EdgeSpec, Graph};
use std::collections::{BTreeMap, HashMap};

struct V<'a> {
    file: &'a str,
    issues: Vec<Issue>,
}

impl V<'_> {
    fn err(&mut self, line: Option<usize>, subject: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            file: self.file.to_string(),
            line,
            subject: subject.into(),
            message: message.into(),
        });
    }
}

fn port_list(ks: &KindSpec, dir: Dir) -> String {
    let v: Vec<_> = ks
        .ports
        .iter()
        .filter(|p| p.dir == dir)
        .map(|p| p.name)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Find `port` on `actor` in direction `dir`, or report why not.
fn resolve_port(
    v: &mut V,
    e: &RawEdge,
    a: &ActorSpec,
    ks: &'static KindSpec,
    port: &str,
    dir: Dir,
) -> Option<&'static PortSpec> {
    if let Some(p) = ks.port(port, dir) {
        return Some(p);
    }
    let (end, other) = match dir {
        Dir::Out => ("start at an output", Dir::In),
        Dir::In => ("end at an input", Dir::Out),
    };
    let msg = if ks.port(port, other).is_some() {
        format!(
            "wrong direction: `{}.{port}` is an {} port of kind `{}`; an edge must {end} ({}s of `{}`: {})",
            a.name,
            other.name(),
            ks.name,
            dir.name(),
            a.name,
            port_list(ks, dir)
        )
    } else {
        let hint = did_you_mean(
            port,
            ks.ports.iter().filter(|p| p.dir == dir).map(|p| p.name),
        );
        format!(
            "actor `{}` (kind `{}`) has no {} port `{port}`{hint} ({}s: {})",
            a.name,
            ks.name,
            dir.name(),
            dir.name(),
            port_list(ks, dir)
        )
    };
    v.err(e.line, e.subject(), msg);
    None
}

fn check_device(v: &mut V, a: &ActorSpec, inv: &DeviceInventory) {
    let Some(d) = &a.device else { return };
    let subj = format!("actor `{}`", a.name);
    let have = match inv.cuda_devices {
        0 => "no CUDA devices exist here".to_string(),
        1 => "1 CUDA device exists here: cuda:0".to_string(),
        n => format!("{n} CUDA devices exist here: cuda:0..cuda:{}", n - 1),
    };
    let idx = match d.as_str() {
        "cpu" => return,
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => {
                v.err(
                    a.line,
                    subj,
                    format!("bad device `{d}` (expected cpu, cuda or cuda:N)"),
                );
                return;
            }
        },
    };
    if idx >= inv.cuda_devices {
        v.err(
            a.line,
            subj,
            format!("device `{d}` does not exist ({have})"),
        );
    }
}

/// Cycles among data (non-Weights) edges, each as its actors in order. DFS with an explicit path.
fn cycles(n: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut succ = vec![Vec::new(); n];
    for &(a, b) in edges {
        succ[a].push(b);
    }
    // 0 = unseen, 1 = on the current path, 2 = done
    let mut state = vec![0u8; n];
    let mut found: Vec<Vec<usize>> = Vec::new();
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&m) = succ[node].get(*next) {
                *next += 1;
                match state[m] {
                    0 => {
                        state[m] = 1;
                        stack.push((m, 0));
                    }
                    1 => {
                        let start = stack.iter().position(|&(x, _)| x == m).unwrap_or(0);
                        let cyc: Vec<usize> = stack[start..].iter().map(|&(x, _)| x).collect();
                        let mut key = cyc.clone();
                        key.sort_unstable();
                        if !found.iter().any(|c| {
                            let mut k = c.clone();
                            k.sort_unstable();
                            k == key
                        }) {
                            found.push(cyc);
                        }
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                stack.pop();
            }
        }
    }
    found
}

pub(crate) fn validate(raw: Raw, file: &str, inv: &DeviceInventory) -> Result<Graph, GraphError> {
    let mut v = V {
        file,
        issues: raw.issues,
    };
    let index: HashMap<&str, usize> = raw
        .actors
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.as_str(), i))
        .collect();
    for a in &raw.actors {
        check_device(&mut v, a, inv);
    }
    // Resolve edges. `edges` keeps those whose two ports resolved (even with a type mismatch, so
    // cycles are still checked); `into` records every edge whose input end resolved, so a bad
    // producer does not also make its consumer look unconnected.
    let mut edges: Vec<(EdgeSpec, &'static PortSpec)> = Vec::new();
    let mut into: BTreeMap<(usize, &str), Vec<String>> = BTreeMap::new();
    for e in &raw.edges {
        let mut ends: [Option<&'static PortSpec>; 2] = [None, None];
        for (k, (r, dir)) in [(&e.from, Dir::Out), (&e.to, Dir::In)]
            .into_iter()
            .enumerate()
        {
            // A malformed reference was reported by the parser.
            let Some(r) = r else { continue };
            let Some(&ai) = index.get(r.actor.as_str()) else {
                let hint = did_you_mean(&r.actor, raw.actors.iter().map(|a| a.name.as_str()));
                let which = if dir == Dir::Out { "from" } else { "to" };
                v.err(
                    e.line,
                    e.subject(),
                    format!("`{which}`: unknown actor `{}`{hint}", r.actor),
                );
                continue;
            };
            let a = &raw.actors[ai];
            // An actor with an unknown kind was reported already; its ports cannot be checked.
            if let Some(ks) = a.spec() {
                ends[k] = resolve_port(&mut v, e, a, ks, &r.port, dir);
                if let (Dir::In, Some(p)) = (dir, ends[k]) {
                    let src = e.from.as_ref().map_or("?".into(), |f| f.to_string());
                    into.entry((ai, p.name)).or_default().push(src);
                }
            }
        }
        let ([Some(pf), Some(pt)], Some(from), Some(to)) = (ends, &e.from, &e.to) else {
            continue;
        };
        if !pt.ty.accepts(pf.ty) {
            let msg = format!(
                "port type mismatch: `{from}` produces {} but `{to}` takes {}",
                pf.ty, pt.ty
            );
            v.err(e.line, e.subject(), msg);
        }
        let spec = EdgeSpec {
            from: from.clone(),
            to: to.clone(),
            capacity: e.capacity,
            ty: pf.ty,
            line: e.line,
        };
        edges.push((spec, pt));
    }
    // Input connections: each input has <= 1 edge unless multi; required inputs have >= 1.
    for (ai, a) in raw.actors.iter().enumerate() {
        let Some(ks) = a.spec() else { continue };
        for p in ks.ports.iter().filter(|p| p.dir == Dir::In) {
            let got = into.get(&(ai, p.name)).map_or(&[][..], |v| &v[..]);
            if got.is_empty() && p.required {
                let msg = format!(
                    "required input `{}` ({}) of kind `{}` is not connected",
                    p.name, p.ty, ks.name
                );
                v.err(a.line, format!("actor `{}`", a.name), msg);
            }
            if got.len() > 1 && !p.multi {
                let list: Vec<String> = got.iter().map(|f| format!("from `{f}`")).collect();
                let msg = format!(
                    "input `{}` has {} edges ({}) but accepts exactly one",
                    p.name,
                    got.len(),
                    list.join(", ")
                );
                v.err(a.line, format!("actor `{}`", a.name), msg);
            }
        }
    }
    // Cycles must pass through a Weights edge (which delivers the *next* version).
    let data: Vec<(usize, usize)> = edges
        .iter()
        .filter(|(e, _)| !e.is_weights())
        .map(|(e, _)| (index[e.from.actor.as_str()], index[e.to.actor.as_str()]))
        .collect();
    for cyc in cycles(raw.actors.len(), &data) {
        let mut names: Vec<&str> = cyc.iter().map(|&i| raw.actors[i].name.as_str()).collect();
        names.push(names[0]);
        let msg = format!(
            "{} — a cycle must pass through a Weights edge (which delivers the next version)",
            names.join(" -> ")
        );
        v.err(raw.actors[cyc[0]].line, "cycle without a Weights edge", msg);
    }
    // Model checks reason about the whole graph; on a graph that is already broken they would
    // only repeat earlier errors in other words.
    if v.issues.is_empty() {
        check_models(&mut v, &raw.actors, &edges, &index, &data);
    }
    if !v.issues.is_empty() {
        v.issues.sort_by_key(|i| i.line.unwrap_or(0));
        return Err(GraphError::Invalid {
            file: file.to_string(),
            issues: v.issues,
        });
    }
    Ok(Graph {
        name: raw.name,
        description: raw.description,
        file: file.to_string(),
        schedule: raw.schedule,
        actors: raw.actors,
        edges: edges.into_iter().map(|(e, _)| e).collect(),
    })
}

/// Which model's weights an actor emits: an optimizer's `model`; an EMA's input's model.
fn weights_model<'a>(
    ai: usize,
    actors: &'a [ActorSpec],
    edges: &[(EdgeSpec, &'static PortSpec)],
    index: &HashMap<&str, usize>,
    depth: usize,
) -> Option<&'a str> {
    let a = &actors[ai];
    match a.kind.as_str() {
        "optimizer" => a.param_str("model"),
        "ema" if depth < actors.len() => edges
            .iter()
            .find(|(e, _)| e.to.actor == a.name && e.is_weights())
            .and_then(|(e, _)| {
                weights_model(
                    index[e.from.actor.as_str()],
                    actors,
                    edges,
                    index,
                    depth + 1,
                )
            }),
        _ => None,
    }
}

/// Model consistency: Weights edges carry the consumer's model; one optimizer per model; an
/// optimizer's loss must depend on an actor that computes gradients for its model.
fn check_models(
    v: &mut V,
    actors: &[ActorSpec],
    edges: &[(EdgeSpec, &'static PortSpec)],
    index: &HashMap<&str, usize>,
    data: &[(usize, usize)],
) {
    for (e, _) in edges.iter().filter(|(e, _)| e.ty == PortType::Weights) {
        let to = &actors[index[e.to.actor.as_str()]];
        let src = weights_model(index[e.from.actor.as_str()], actors, edges, index, 0);
        if let (Some(m), Some(want)) = (src, to.param_str("model")) {
            if m != want {
                let subj = format!("edge ({} -> {})", e.from, e.to);
                let msg = format!(
                    "carries weights of model `{m}` into `{}`, whose model is `{want}`",
                    to.name
                );
                v.err(e.line, subj, msg);
            }
        }
    }
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for (ai, a) in actors
        .iter()
        .enumerate()
        .filter(|(_, a)| a.kind == "optimizer")
    {
        let Some(m) = a.param_str("model") else {
            continue;
        };
        if let Some(first) = owner.insert(m, &a.name) {
            let msg =
                format!("model `{m}` already has an optimizer, `{first}`; a model has one owner");
            v.err(a.line, format!("actor `{}`", a.name), msg);
        }
        // Everything upstream of the optimizer through data edges.
        let mut seen = vec![false; actors.len()];
        let mut todo = vec![ai];
        while let Some(x) = todo.pop() {
            for &(p, c) in data {
                if c == x && !seen[p] {
                    seen[p] = true;
                    todo.push(p);
                }
            }
        }
        let grads = actors.iter().enumerate().any(|(i, u)| {
            seen[i]
                && u.param_str("model") == Some(m)
                && ((u.kind == "rollout" && u.param_bool("grad") == Some(true))
                    || (u.kind == "score" && u.param_bool("trainable") == Some(true)))
        });
        // Every other user of the model must receive its new versions, or it would keep the
        // initial weights forever.
        for u in actors
            .iter()
            .filter(|u| u.name != a.name && u.param_str("model") == Some(m))
        {
            let fed = edges
                .iter()
                .any(|(e, _)| e.to.actor == u.name && e.is_weights());
            let has_port = u
                .spec()
                .is_some_and(|k| k.port("weights", Dir::In).is_some());
            if has_port && !fed {
                let msg = format!(
                    "uses model `{m}`, which optimizer `{}` updates, but its `weights` input is not \
                     connected (it would keep the initial weights forever)",
                    a.name
                );
                v.err(u.line, format!("actor `{}`", u.name), msg);
            }
        }
        if !grads {
            let msg = format!(
                "updates model `{m}`, but nothing upstream of its loss computes gradients for `{m}` \
                 (needs a rollout with grad: true or a score with trainable: true and model: {m})"
            );
            v.err(a.line, format!("actor `{}`", a.name), msg);
        }
    }
}
