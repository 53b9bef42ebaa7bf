//! Errors of the pipeline checker. Every message names the file; issues also name the actor or edge
//! and, where the locator found it, the YAML line.

use std::fmt;

/// One problem found in a pipeline file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// The file label (path or `embedded pipeline `name``).
    pub file: String,
    /// 1-based YAML line, where known.
    pub line: Option<usize>,
    /// What the issue is about: `actor `x``, `edge #3 (a.b -> c.d)`, `schedule`, `pipeline`.
    pub subject: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}: {}", self.file, l, self.subject, self.message),
            None => write!(f, "{}: {}: {}", self.file, self.subject, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The file could not be read (and is not an embedded pipeline name).
    #[error("{path}: cannot read pipeline: {err}")]
    Read { path: String, err: String },
    /// Not valid YAML (includes duplicate keys, which YAML forbids).
    #[error("{file}{}: invalid YAML: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Yaml {
        file: String,
        line: Option<usize>,
        message: String,
    },
    /// Valid YAML, invalid pipeline: ALL issues found, in file order where possible.
    #[error("{}", render(file, issues))]
    Invalid { file: String, issues: Vec<Issue> },
}

impl GraphError {
    /// The individual issues (one for `Read` / `Yaml`).
    pub fn issues(&self) -> Vec<String> {
        match self {
            GraphError::Invalid { issues, .. } => issues.iter().map(|i| i.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

fn render(file: &str, issues: &[Issue]) -> String {
    let n = issues.len();
    let mut s = format!(
        "{file}: invalid pipeline ({n} error{}):",
        if n == 1 { "" } else { "s" }
    );
    for i in issues {
        s.push_str("\n  ");
        s.push_str(&i.to_string());
    }
    s
}
