//! YAML text → raw pipeline (actors with checked kinds and parameters, edges with parsed port
//! references), collecting every issue. Cross-references (edges ↔ actors, types, cycles, devices)
//! are checked in validate.rs.

use super::error::{GraphError, Issue};
use super::kinds;
use super::lines::{locate, Lines};
use super::suggest::did_you_mean;
use super::{ActorSpec, PortRef, Schedule, ScheduleMode, DEFAULT_CAPACITY};
use serde_json::Value as J;
use serde_norway::{Mapping, Value as Y};
use std::collections::BTreeMap;

pub(crate) struct RawEdge {
    /// 0-based position in `edges`.
    pub index: usize,
    pub from: Option<PortRef>,
    pub to: Option<PortRef>,
    pub capacity: usize,
    pub line: Option<usize>,
}

impl RawEdge {
    /// `edge #3 (a.b -> c.d)` (1-based, as a person counts).
    pub fn subject(&self) -> String {
        let show = |p: &Option<PortRef>| p.as_ref().map_or("?".to_string(), |p| p.to_string());
        format!(
            "edge #{} ({} -> {})",
            self.index + 1,
            show(&self.from),
            show(&self.to)
        )
    }
}

pub(crate) struct Raw {
    pub name: String,
    pub description: Option<String>,
    pub schedule: Schedule,
    pub actors: Vec<ActorSpec>,
    pub edges: Vec<RawEdge>,
    pub issues: Vec<Issue>,
}

const TOP_KEYS: &[&str] = &["name", "description", "schedule", "actors", "edges"];
const ACTOR_KEYS: &[&str] = &["kind", "device", "stream"];
const EDGE_KEYS: &[&str] = &["from", "to", "capacity"];
const SCHEDULE_KEYS: &[&str] = &["mode", "max_staleness"];

/// Names of actors and streams: they appear in `actor.port`, metrics and file names.
pub(crate) fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
}

fn describe(v: &Y) -> &'static str {
    match v {
        Y::Null => "null",
        Y::Bool(_) => "a boolean",
        Y::Number(_) => "a number",
        Y::String(_) => "a string",
        Y::Sequence(_) => "a list",
        Y::Mapping(_) => "a mapping",
        Y::Tagged(_) => "a tagged value",
    }
}

/// serde_norway value → JSON (params are stored as JSON for the runtime).
fn to_json(v: &Y) -> Result<J, String> {
    Ok(match v {
        Y::Null => J::Null,
        Y::Bool(b) => J::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(J::Number)
                    .ok_or_else(|| format!("non-finite number `{f}`"))?
            }
        }
        Y::String(s) => J::String(s.clone()),
        Y::Sequence(s) => J::Array(s.iter().map(to_json).collect::<Result<_, _>>()?),
        Y::Mapping(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m {
                let k = k.as_str().ok_or("mapping keys must be strings")?;
                o.insert(k.to_string(), to_json(v)?);
            }
            J::Object(o)
        }
        Y::Tagged(t) => return Err(format!("YAML tag `{}` is not supported", t.tag)),
    })
}

struct Ctx<'a> {
    file: &'a str,
    lines: Lines,
    issues: Vec<Issue>,
}

impl Ctx<'_> {
    fn err(&mut self, line: Option<usize>, subject: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            file: self.file.to_string(),
            line,
            subject: subject.into(),
            message: message.into(),
        });
    }

    /// Report keys of `m` not in `allowed` (which must be strings).
    fn unknown_keys(&mut self, m: &Mapping, allowed: &[&str], line: Option<usize>, subj: &str) {
        for k in m.keys() {
            match k.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => {
                    let hint = did_you_mean(k, allowed.iter().copied());
                    let msg = format!("unknown key `{k}`{hint} (allowed: {})", allowed.join(", "));
                    self.err(line, subj, msg);
                }
                None => self.err(
                    line,
                    subj,
                    format!("keys must be strings, found {}", describe(k)),
                ),
            }
        }
    }
}

/// Turn serde_norway's error into ours. Its duplicate-key errors read
/// `PATH: duplicate entry with key "K" at line L column C`, where L is the start of the mapping;
/// a duplicate actor name is reported at its second occurrence instead.
fn yaml_error(e: serde_norway::Error, file: &str, lines: &Lines) -> GraphError {
    let mut line = e.location().map(|l| l.line());
    let mut text = e.to_string();
    if let Some(i) = text.rfind(" at line ") {
        text.truncate(i);
    }
    const DUP: &str = "duplicate entry with key \"";
    let dup = text.find(DUP).map(|i| {
        let path = text[..i].trim_end_matches([' ', ':']).to_string();
        let key = text[i + DUP.len()..]
            .split('"')
            .next()
            .unwrap_or("")
            .to_string();
        (path, key)
    });
    let message = match dup {
        Some((path, k)) if path == "actors" => {
            let at: Vec<usize> = lines
                .actors
                .iter()
                .filter(|(n, _)| *n == k)
                .map(|(_, l)| *l)
                .collect();
            if let [first, second, ..] = at[..] {
                line = Some(second);
                format!("duplicate actor name `{k}` (first at line {first}): actor names must be unique")
            } else {
                format!("duplicate actor name `{k}`: actor names must be unique")
            }
        }
        Some((path, k)) if path.is_empty() => format!("duplicate top-level key `{k}`"),
        Some((path, k)) => format!("duplicate key `{k}` in `{path}`"),
        None => text,
    };
    GraphError::Yaml {
        file: file.to_string(),
        line,
        message,
    }
}

pub(crate) fn parse(text: &str, file: &str) -> Result<Raw, GraphError> {
    let lines = locate(text);
    // Parsing into `Value` (not a derived struct) makes serde_norway reject duplicate keys at
    // every level; a derived map would silently keep the last one.
    let doc: Y = serde_norway::from_str(text).map_err(|e| yaml_error(e, file, &lines))?;
    let mut cx = Ctx {
        file,
        lines,
        issues: Vec::new(),
    };
    let empty = Mapping::new();
    let top = match &doc {
        Y::Mapping(m) => m,
        other => {
            let msg = format!(
                "the file must be a mapping with `name` and `actors`, found {}",
                describe(other)
            );
            cx.err(Some(1), "pipeline", msg);
            &empty
        }
    };
    if !top.is_empty() {
        cx.unknown_keys(top, TOP_KEYS, None, "pipeline");
    }
    let name = match top.get("name") {
        Some(Y::String(s)) if is_ident(s) => s.clone(),
        Some(v) => {
            let l = cx.lines.key("name");
            let msg = format!("`name` must be an identifier (letters, digits, _, -), found {v:?}");
            cx.err(l, "pipeline", msg);
            String::new()
        }
        None if matches!(doc, Y::Mapping(_)) => {
            cx.err(None, "pipeline", "missing `name`");
            String::new()
        }
        None => String::new(),
    };
    let description = match top.get("description") {
        None => None,
        Some(Y::String(s)) => Some(s.clone()),
        Some(v) => {
            let l = cx.lines.key("description");
            cx.err(
                l,
                "pipeline",
                format!("`description` must be a string, found {}", describe(v)),
            );
            None
        }
    };
    let schedule = parse_schedule(&mut cx, top.get("schedule"));
    let actors = match top.get("actors") {
        Some(Y::Mapping(m)) if !m.is_empty() => parse_actors(&mut cx, m),
        Some(Y::Mapping(_)) | Some(Y::Null) => {
            let l = cx.lines.key("actors");
            cx.err(
                l,
                "pipeline",
                "`actors` is empty: a pipeline needs at least one actor",
            );
            Vec::new()
        }
        Some(v) => {
            let l = cx.lines.key("actors");
            let msg = format!(
                "`actors` must be a mapping NAME: {{kind: …}}, found {}",
                describe(v)
            );
            cx.err(l, "pipeline", msg);
            Vec::new()
        }
        None if matches!(doc, Y::Mapping(_)) => {
            cx.err(None, "pipeline", "missing `actors`");
            Vec::new()
        }
        None => Vec::new(),
    };
    let edges = match top.get("edges") {
        None | Some(Y::Null) => Vec::new(),
        Some(Y::Sequence(s)) => s
            .iter()
            .enumerate()
            .map(|(i, e)| parse_edge(&mut cx, i, e))
            .collect(),
        Some(v) => {
            let l = cx.lines.key("edges");
            cx.err(
                l,
                "pipeline",
                format!("`edges` must be a list, found {}", describe(v)),
            );
            Vec::new()
        }
    };
    Ok(Raw {
        name,
        description,
        schedule,
        actors,
        edges,
        issues: cx.issues,
    })
}

fn parse_schedule(cx: &mut Ctx, v: Option<&Y>) -> Schedule {
    let line = cx.lines.key("schedule");
    let mut sched = Schedule::default();
    let (mode, stale) = match v {
        None | Some(Y::Null) => return sched,
        Some(Y::String(s)) => (Some(Y::String(s.clone())), None),
        Some(Y::Mapping(m)) => {
            cx.unknown_keys(m, SCHEDULE_KEYS, line, "schedule");
            (m.get("mode").cloned(), m.get("max_staleness").cloned())
        }
        Some(v) => {
            let msg = format!(
                "must be a mapping {{mode: serial|exact|async}}, found {}",
                describe(v)
            );
            cx.err(line, "schedule", msg);
            return sched;
        }
    };
    match mode {
        None => cx.err(line, "schedule", "missing `mode` (serial, exact or async)"),
        Some(Y::String(s)) => match ScheduleMode::parse(&s) {
            Some(m) => sched.mode = m,
            None => {
                let hint = did_you_mean(&s, ScheduleMode::NAMES.iter().copied());
                cx.err(
                    line,
                    "schedule",
                    format!("unknown mode `{s}`{hint} (serial, exact or async)"),
                );
            }
        },
        Some(v) => {
            let msg = format!(
                "`mode` must be serial, exact or async, found {}",
                describe(&v)
            );
            cx.err(line, "schedule", msg);
        }
    }
    match (stale, sched.mode) {
        (None, ScheduleMode::Async) => cx.err(
            line,
            "schedule",
            "mode `async` needs `max_staleness` (how many generator versions a critic-lane rollout may lag, >= 0)",
        ),
        (None, _) => {}
        (Some(v), mode) => match v.as_i64() {
            Some(k) if k < 0 => cx.err(line, "schedule", format!("`max_staleness` must be >= 0, found {k}")),
            Some(k) if mode == ScheduleMode::Async => sched.max_staleness = k as u64,
            Some(_) => cx.err(
                line,
                "schedule",
                format!("`max_staleness` is only allowed with mode `async` (mode is `{}`)", mode.name()),
            ),
            None => {
                let msg = format!("`max_staleness` must be an integer >= 0, found {}", describe(&v));
                cx.err(line, "schedule", msg);
            }
        },
    }
    sched
}

fn parse_actors(cx: &mut Ctx, m: &Mapping) -> Vec<ActorSpec> {
    let mut out = Vec::new();
    for (k, v) in m {
        let Some(name) = k.as_str() else {
            let l = cx.lines.key("actors");
            cx.err(
                l,
                "actors",
                format!("actor names must be strings, found {}", describe(k)),
            );
            continue;
        };
        let line = cx.lines.actor(name);
        let subj = format!("actor `{name}`");
        if !is_ident(name) {
            let msg = "actor names must be identifiers (letters, digits, _, -; no `.`)";
            cx.err(line, &subj, msg);
        }
        let empty = Mapping::new();
        let body = match v {
            Y::Mapping(b) => b,
            other => {
                let msg = format!("must be a mapping {{kind: …}}, found {}", describe(other));
                cx.err(line, &subj, msg);
                &empty
            }
        };
        let mut spec = ActorSpec {
            name: name.to_string(),
            kind: String::new(),
            device: None,
            stream: None,
            params: BTreeMap::new(),
            line,
        };
        let string_field = |cx: &mut Ctx, key: &str| match body.get(key) {
            None => None,
            Some(Y::String(s)) => Some(s.clone()),
            Some(v) => {
                cx.err(
                    line,
                    &subj,
                    format!("`{key}` must be a string, found {}", describe(v)),
                );
                None
            }
        };
        let kind = string_field(cx, "kind");
        spec.device = string_field(cx, "device");
        spec.stream = string_field(cx, "stream");
        if let Some(s) = &spec.stream {
            if !is_ident(s) {
                cx.err(
                    line,
                    &subj,
                    format!("stream name `{s}` must be an identifier"),
                );
            }
        }
        let ks = match kind {
            None if !body.contains_key("kind") => {
                let all: Vec<_> = kinds::KINDS.iter().map(|k| k.name).collect();
                cx.err(
                    line,
                    &subj,
                    format!("missing `kind` (one of: {})", all.join(", ")),
                );
                None
            }
            None => None,
            Some(k) => {
                spec.kind = k.clone();
                let found = kinds::kind(&k);
                if found.is_none() {
                    let hint = did_you_mean(&k, kinds::KINDS.iter().map(|k| k.name));
                    let all: Vec<_> = kinds::KINDS.iter().map(|k| k.name).collect();
                    let msg = format!("unknown actor kind `{k}`{hint} (known: {})", all.join(", "));
                    cx.err(line, &subj, msg);
                }
                found
            }
        };
        for (pk, pv) in body {
            let Some(pk) = pk.as_str() else {
                cx.err(
                    line,
                    &subj,
                    format!("parameter names must be strings, found {}", describe(pk)),
                );
                continue;
            };
            if ACTOR_KEYS.contains(&pk) {
                continue;
            }
            let jv = match to_json(pv) {
                Ok(j) => j,
                Err(e) => {
                    cx.err(line, &subj, format!("parameter `{pk}`: {e}"));
                    continue;
                }
            };
            if let Some(ks) = ks {
                match ks.param(pk) {
                    Some(ps) => {
                        if let Err(e) = ps.ty.check(&jv) {
                            cx.err(
                                line,
                                &subj,
                                format!("parameter `{pk}` of kind `{}`: {e}", ks.name),
                            );
                        }
                    }
                    None => {
                        let names = ks.params.iter().map(|p| p.name);
                        let hint =
                            did_you_mean(pk, names.clone().chain(ACTOR_KEYS.iter().copied()));
                        let allowed: Vec<_> = names.chain(ACTOR_KEYS.iter().copied()).collect();
                        let msg = format!(
                            "unknown parameter `{pk}` for kind `{}`{hint} (allowed: {})",
                            ks.name,
                            allowed.join(", ")
                        );
                        cx.err(line, &subj, msg);
                    }
                }
            }
            spec.params.insert(pk.to_string(), jv);
        }
        if let Some(ks) = ks {
            for p in ks.params.iter().filter(|p| p.required) {
                if !body.contains_key(p.name) {
                    let msg = format!(
                        "kind `{}` needs parameter `{}` ({})",
                        ks.name,
                        p.name,
                        p.ty.describe()
                    );
                    cx.err(line, &subj, msg);
                }
            }
        }
        out.push(spec);
    }
    out
}

fn parse_port_ref(s: &str) -> Option<PortRef> {
    let (a, p) = s.split_once('.')?;
    (is_ident(a) && is_ident(p)).then(|| PortRef {
        actor: a.to_string(),
        port: p.to_string(),
    })
}

fn parse_edge(cx: &mut Ctx, index: usize, v: &Y) -> RawEdge {
    let line = cx.lines.edge(index);
    let mut e = RawEdge {
        index,
        from: None,
        to: None,
        capacity: DEFAULT_CAPACITY,
        line,
    };
    let Y::Mapping(m) = v else {
        let msg = format!(
            "must be a mapping {{from: a.out, to: b.in}}, found {}",
            describe(v)
        );
        cx.err(line, e.subject(), msg);
        return e;
    };
    let mut bad = Vec::new();
    for key in ["from", "to"] {
        let r = match m.get(key) {
            None => {
                bad.push(format!("missing `{key}` (`actor.port`)"));
                None
            }
            Some(Y::String(s)) => {
                let r = parse_port_ref(s);
                if r.is_none() {
                    bad.push(format!("malformed `{key}`: `{s}` (expected `actor.port`)"));
                }
                r
            }
            Some(other) => {
                bad.push(format!(
                    "`{key}` must be a string `actor.port`, found {}",
                    describe(other)
                ));
                None
            }
        };
        if key == "from" {
            e.from = r;
        } else {
            e.to = r;
        }
    }
    match m.get("capacity") {
        None => {}
        Some(c) => match c.as_i64() {
            Some(n) if n >= 1 => e.capacity = n as usize,
            Some(n) => bad.push(format!(
                "capacity must be >= 1 (an edge holds at least one packet), found {n}"
            )),
            None => bad.push(format!(
                "capacity must be an integer >= 1, found {}",
                describe(c)
            )),
        },
    }
    let subj = e.subject();
    cx.unknown_keys(m, EDGE_KEYS, line, &subj);
    for b in bad {
        cx.err(line, &subj, b);
    }
    e
}
