//! Best-effort YAML line locator. serde_norway reports positions only in its errors, so the lines
//! of top-level keys, actors and edge items are found by scanning block-style YAML (the style of
//! every shipped pipeline). Flow-style sections (`actors: {a: …}` on one line) give the section's
//! line, or none; a missing line only makes a message less precise, never wrong.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub(crate) struct Lines {
    pub top: HashMap<String, usize>,
    /// Every actor key found under `actors:`, in order (duplicates included).
    pub actors: Vec<(String, usize)>,
    /// Line of each `- ` item under `edges:`, in order.
    pub edges: Vec<usize>,
}

impl Lines {
    pub fn actor(&self, name: &str) -> Option<usize> {
        self.actors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| *l)
            .or_else(|| self.top.get("actors").copied())
    }
    pub fn edge(&self, i: usize) -> Option<usize> {
        self.edges
            .get(i)
            .copied()
            .or_else(|| self.top.get("edges").copied())
    }
    pub fn key(&self, k: &str) -> Option<usize> {
        self.top.get(k).copied()
    }
}

/// `key` of a `key: …` / `key:` line (quotes removed), if the line starts with one.
fn mapping_key(s: &str) -> Option<String> {
    let (quoted, body) = match s.chars().next()? {
        q @ ('"' | '\'') => (Some(q), &s[1..]),
        _ => (None, s),
    };
    if let Some(q) = quoted {
        let end = body.find(q)?;
        let rest = &body[end + 1..];
        return rest
            .trim_start()
            .starts_with(':')
            .then(|| body[..end].to_string());
    }
    let bytes = body.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') {
            let k = body[..i].trim_end();
            return (!k.is_empty() && !k.starts_with(['-', '{', '[', '#'])).then(|| k.to_string());
        }
    }
    None
}

pub(crate) fn locate(text: &str) -> Lines {
    let mut lines = Lines::default();
    let mut section = String::new();
    let mut child_indent: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim_start_matches(' ');
        if trimmed.trim().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = raw.len() - trimmed.len();
        if indent == 0 && !trimmed.starts_with('-') {
            if let Some(k) = mapping_key(trimmed) {
                lines.top.entry(k.clone()).or_insert(n);
                section = k;
                child_indent = None;
            }
            continue;
        }
        let ci = *child_indent.get_or_insert(indent);
        if indent != ci {
            continue;
        }
        match section.as_str() {
            "actors" => {
                if let Some(k) = mapping_key(trimmed) {
                    lines.actors.push((k, n));
                }
            }
            "edges" if trimmed.starts_with('-') => lines.edges.push(n),
            _ => {}
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_actors_and_edges() {
        let text = "name: x\n# c\nactors:\n  a: {kind: sink}\n  \"b c\":\n    kind: rollout\n\
                    edges:\n- {from: a.x, to: b.y}\n-   from: q.r\n    to: s.t\n";
        let l = locate(text);
        assert_eq!(l.key("name"), Some(1));
        assert_eq!(l.actors, vec![("a".into(), 4), ("b c".into(), 5)]);
        assert_eq!(l.edges, vec![8, 9]);
        assert_eq!(l.actor("zz"), Some(3));
    }
}
