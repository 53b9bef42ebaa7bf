//! Layered configuration: built-in defaults → `--config` files (in order) → `STILLFLOW__*`
//! environment → `--set a.b=V`. Later layers win. Values of `--set` and the environment are parsed
//! as YAML, so `3e-4`, `[1000, 750]` and `true` get their natural types.
//!
//! Every layer is checked on its own first, so an unknown key or a wrongly typed value is reported
//! with the layer it came from (file path, `--set` expression or environment variable).

mod schema;

pub use schema::*;

use config::{Config, File, FileFormat};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// Configs shipped inside the binary, addressable by name in `--config`.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("toy_dmd", include_str!("../../configs/toy_dmd.yaml")),
    ("toy_sid", include_str!("../../configs/toy_sid.yaml")),
    (
        "self_forcing_dmd",
        include_str!("../../configs/self_forcing_dmd.yaml"),
    ),
    (
        "self_forcing_sid",
        include_str!("../../configs/self_forcing_sid.yaml"),
    ),
];

/// The config `run-pipeline` uses when no `--config` is given.
pub const DEFAULT_EMBEDDED: &str = "toy_dmd";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: cannot read: {err}")]
    Read { source_name: String, err: String },
    #[error("{source_name}: invalid YAML: {err}")]
    Yaml { source_name: String, err: String },
    #[error("{source_name}: unknown key `{key}`{hint}")]
    UnknownKey {
        source_name: String,
        key: String,
        hint: String,
    },
    #[error("{source_name}: key `{key}`: {err}")]
    BadValue {
        source_name: String,
        key: String,
        err: String,
    },
    #[error("bad --set `{expr}`: {why} (expected KEY=VALUE, e.g. --set lr=3e-4)")]
    BadSet { expr: String, why: String },
}

/// One layer: where it came from and its YAML text.
#[derive(Clone, Debug)]
pub struct Layer {
    pub name: String,
    pub yaml: String,
}

/// What the caller asks for.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--config` arguments: paths, or names of embedded configs.
    pub configs: Vec<String>,
    /// `--set` expressions.
    pub sets: Vec<String>,
    /// Environment variables (pass `std::env::vars().collect()`; tests pass their own).
    pub env: Vec<(String, String)>,
    /// Use the embedded default when `configs` is empty.
    pub default_when_empty: bool,
}

/// The result: the typed config, the layers it came from, and ignored keys (key, layer).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: RunConfig,
    pub layers: Vec<String>,
    pub ignored: Vec<(String, String)>,
}

fn embedded(name: &str) -> Option<&'static str> {
    let stem = name.strip_prefix("configs/").unwrap_or(name);
    let stem = stem.strip_suffix(".yaml").unwrap_or(stem);
    EMBEDDED.iter().find(|(n, _)| *n == stem).map(|(_, t)| *t)
}

/// Resolve one `--config` argument to a layer: an existing file wins, else an embedded name.
pub fn config_layer(arg: &str) -> Result<Layer, ConfigError> {
    let p = Path::new(arg);
    if p.exists() {
        let yaml = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
            source_name: arg.to_string(),
            err: e.to_string(),
        })?;
        return Ok(Layer {
            name: arg.to_string(),
            yaml,
        });
    }
    match embedded(arg) {
        Some(t) => Ok(Layer {
            name: format!("embedded config `{arg}`"),
            yaml: t.to_string(),
        }),
        None => Err(ConfigError::Read {
            source_name: arg.to_string(),
            err: format!(
                "no such file, and not an embedded config (embedded: {})",
                EMBEDDED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.split('.').all(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// Turn `a.b=V` into the YAML document `a: {b: V}` (V stays YAML text, parsed by the config crate).
fn nested_yaml(key: &str, value: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        out.push_str(&"  ".repeat(i));
        out.push_str(p);
        out.push(':');
        if i + 1 < parts.len() {
            out.push('\n');
        }
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
    out
}

/// A `--set KEY=VALUE` layer.
pub fn set_layer(expr: &str) -> Result<Layer, ConfigError> {
    let (k, v) = expr.split_once('=').ok_or_else(|| ConfigError::BadSet {
        expr: expr.to_string(),
        why: "no `=`".into(),
    })?;
    let k = k.trim();
    if !valid_key(k) {
        return Err(ConfigError::BadSet {
            expr: expr.into(),
            why: format!("bad key `{k}`"),
        });
    }
    if v.contains('\n') {
        return Err(ConfigError::BadSet {
            expr: expr.into(),
            why: "value spans lines".into(),
        });
    }
    let v = if v.trim().is_empty() {
        "null"
    } else {
        v.trim()
    };
    Ok(Layer {
        name: format!("--set {expr}"),
        yaml: nested_yaml(k, v),
    })
}

/// Layers from `STILLFLOW__A__B=V` variables (sorted for determinism).
pub fn env_layers(env: &[(String, String)]) -> Result<Vec<Layer>, ConfigError> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("STILLFLOW__"))
        .collect();
    vars.sort();
    vars.into_iter()
        .map(|(k, v)| {
            let key = k["STILLFLOW__".len()..].to_lowercase().replace("__", ".");
            let name = format!("environment variable {k}");
            if !valid_key(&key) || v.contains('\n') {
                return Err(ConfigError::BadValue {
                    source_name: name,
                    key,
                    err: "not a KEY=single-line YAML value".into(),
                });
            }
            let v = if v.trim().is_empty() {
                "null"
            } else {
                v.trim()
            };
            Ok(Layer {
                name,
                yaml: nested_yaml(&key, v),
            })
        })
        .collect()
}

fn parse_layer(layer: &Layer) -> Result<Json, ConfigError> {
    if layer.yaml.trim().is_empty() {
        return Ok(Json::Object(Default::default()));
    }
    let cfg = Config::builder()
        .add_source(File::from_str(&layer.yaml, FileFormat::Yaml))
        .build()
        .map_err(|e| ConfigError::Yaml {
            source_name: layer.name.clone(),
            err: e.to_string(),
        })?;
    cfg.try_deserialize::<Json>()
        .map_err(|e| ConfigError::Yaml {
            source_name: layer.name.clone(),
            err: e.to_string(),
        })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Check `v` against the key tree of `known`; strip ignored top-level keys into `ignored`.
fn check_keys(
    v: &mut Json,
    known: &Json,
    prefix: &str,
    layer: &str,
    ignored: &mut Vec<(String, String)>,
) -> Result<(), ConfigError> {
    let (Json::Object(map), Json::Object(kmap)) = (&mut *v, known) else {
        return Ok(());
    };
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match kmap.get(&k) {
            Some(sub) => {
                if let (Some(child), Json::Object(_)) = (map.get_mut(&k), sub) {
                    if child.is_object() {
                        check_keys(child, sub, &full, layer, ignored)?;
                    }
                }
            }
            None if prefix.is_empty() && IGNORED_KEYS.contains(&k.as_str()) => {
                map.remove(&k);
                ignored.push((k, layer.to_string()));
            }
            None => {
                let best = kmap
                    .keys()
                    .map(|c| (edit_distance(&k, c), c))
                    .min()
                    // A hint must share something with the key: `a` is not a typo of `lr`.
                    .filter(|(d, _)| *d <= 3 && *d < k.chars().count())
                    .map(|(_, c)| {
                        format!(
                            " (did you mean `{}`?)",
                            if prefix.is_empty() {
                                c.clone()
                            } else {
                                format!("{prefix}.{c}")
                            }
                        )
                    })
                    .unwrap_or_default();
                return Err(ConfigError::UnknownKey {
                    source_name: layer.to_string(),
                    key: full,
                    hint: best,
                });
            }
        }
    }
    Ok(())
}

fn typed(v: Json, layer: &str) -> Result<RunConfig, ConfigError> {
    serde_path_to_error::deserialize::<_, RunConfig>(v).map_err(|e| ConfigError::BadValue {
        source_name: layer.to_string(),
        key: e.path().to_string(),
        err: e.inner().to_string(),
    })
}

/// Deep-merge `top` into `base` (maps merge, everything else replaces).
fn merge(base: &mut Json, top: Json) {
    match (base, top) {
        (Json::Object(b), Json::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

/// Load the layered config from explicit layers (defaults are implicit, first).
pub fn load_layers(layers: &[Layer]) -> Result<Loaded, ConfigError> {
    let defaults =
        serde_json::to_value(RunConfig::default()).map_err(|e| ConfigError::BadValue {
            source_name: "built-in defaults".into(),
            key: String::new(),
            err: e.to_string(),
        })?;
    let mut merged = defaults.clone();
    let mut ignored = vec![];
    for layer in layers {
        let mut v = parse_layer(layer)?;
        if !v.is_object() {
            return Err(ConfigError::Yaml {
                source_name: layer.name.clone(),
                err: "top level must be a mapping of keys".into(),
            });
        }
        check_keys(&mut v, &defaults, "", &layer.name, &mut ignored)?;
        // Type-check this layer alone (over the defaults) so errors name the layer.
        let mut alone = defaults.clone();
        merge(&mut alone, v.clone());
        typed(alone, &layer.name)?;
        merge(&mut merged, v);
    }
    let config = typed(merged, "merged config")?;
    config.validate()?;
    Ok(Loaded {
        config,
        layers: layers.iter().map(|l| l.name.clone()).collect(),
        ignored,
    })
}

/// Build the layers of `opts` and load them.
pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let mut layers = vec![];
    if opts.configs.is_empty() && opts.default_when_empty {
        layers.push(config_layer(DEFAULT_EMBEDDED)?);
    }
    for c in &opts.configs {
        layers.push(config_layer(c)?);
    }
    layers.extend(env_layers(&opts.env)?);
    for s in &opts.sets {
        layers.push(set_layer(s)?);
    }
    load_layers(&layers)
}

/// The model role a synonym names (`critic` is the fake score, `teacher` the real one).
fn canonical_role(role: &str) -> &str {
    match role {
        "critic" => "fake",
        "teacher" => "real",
        r => r,
    }
}

impl RunConfig {
    /// Semantic checks that serde cannot express; errors name the key.
    /// The model roles (`generator`, `fake`, `real`) of `checkpoint_keep_attention`.
    pub fn keep_attention_roles(&self) -> Result<Vec<&'static str>, String> {
        const ROLES: [&str; 3] = ["generator", "fake", "real"];
        match self.checkpoint_keep_attention.trim() {
            "all" | "true" => return Ok(ROLES.to_vec()),
            "none" | "false" | "" => return Ok(vec![]),
            _ => {}
        }
        let mut out = vec![];
        for r in self.checkpoint_keep_attention.split(',').map(str::trim) {
            let role = canonical_role(r);
            let role = ROLES.iter().copied().find(|x| *x == role).ok_or_else(|| {
                format!(
                    "`{r}`: expected all, none, or a comma-separated list of generator, fake, real"
                )
            })?;
            out.push(role);
        }
        Ok(out)
    }

    /// Does the model in `role` (zoo roles: generator, fake/critic, real/teacher) keep attention?
    pub fn keeps_attention(&self, role: &str) -> bool {
        let role = canonical_role(role);
        self.keep_attention_roles()
            .map(|v| v.contains(&role))
            .unwrap_or(false)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, err: String| {
            Err(ConfigError::BadValue {
                source_name: "config".into(),
                key: key.into(),
                err,
            })
        };
        if !matches!(self.distribution_loss.as_str(), "dmd" | "sid") {
            return bad(
                "distribution_loss",
                format!("`{}`: expected dmd or sid", self.distribution_loss),
            );
        }
        if !matches!(self.denoising_loss_type.as_str(), "flow" | "x0") {
            return bad(
                "denoising_loss_type",
                format!("`{}`: expected flow or x0", self.denoising_loss_type),
            );
        }
        if self.denoising_step_list.is_empty()
            || self
                .denoising_step_list
                .iter()
                .any(|t| !(0.0..=1000.0).contains(t))
        {
            return bad(
                "denoising_step_list",
                "expected a non-empty list of timesteps in [0, 1000]".into(),
            );
        }
        if self.image_or_video_shape.len() != 5 || self.image_or_video_shape.iter().any(|d| *d <= 0)
        {
            return bad(
                "image_or_video_shape",
                "expected [B, F, C, H, W] with positive sizes".into(),
            );
        }
        if self.num_frame_per_block <= 0 {
            return bad("num_frame_per_block", "must be > 0".into());
        }
        if self.dfake_gen_update_ratio == 0 {
            return bad("dfake_gen_update_ratio", "must be >= 1".into());
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps", "must be >= 1".into());
        }
        if self.batch_size <= 0 {
            return bad("batch_size", "must be >= 1".into());
        }
        if self.timestep_shift <= 0.0 {
            return bad("timestep_shift", "must be > 0".into());
        }
        if self.score_timestep_shift <= 0.0 {
            return bad("score_timestep_shift", "must be > 0".into());
        }
        if !(0.0..=1.0).contains(&self.ema_weight) {
            return bad("ema_weight", "must be in [0, 1]".into());
        }
        if !matches!(self.schedule.as_str(), "" | "serial" | "exact" | "async") {
            return bad(
                "schedule",
                format!("`{}`: expected serial, exact or async", self.schedule),
            );
        }
        if !matches!(self.ema_device.as_str(), "" | "cpu") {
            return bad(
                "ema_device",
                format!(
                    "`{}`: expected \"\" (with the weights) or cpu (host memory)",
                    self.ema_device
                ),
            );
        }
        if self.zero_stage > 1 {
            return bad(
                "zero_stage",
                format!(
                    "{}: expected 0 (replicated optimizer state) or 1 (ZeRO-1: f32 masters and \
                     AdamW moments sharded over the processes)",
                    self.zero_stage
                ),
            );
        }
        if let Err(e) = self.keep_attention_roles() {
            return bad("checkpoint_keep_attention", e);
        }
        if !(self.regression_weight >= 0.0 && self.regression_weight.is_finite()) {
            return bad("regression_weight", "must be a finite number >= 0".into());
        }
        if self.regression_ode_steps == 0 {
            return bad("regression_ode_steps", "must be >= 1".into());
        }
        if self.lr < 0.0 {
            return bad("lr", "must be >= 0".into());
        }
        if self.lr_critic < 0.0 {
            return bad("lr_critic", "must be >= 0".into());
        }
        Ok(())
    }

    /// The resolved config as pretty JSON (what `run-pipeline config` prints and runs record).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("<unserializable: {e}>"))
    }
}

/// Where a logdir path points, made absolute for messages.
pub fn display_path(p: &str) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str, yaml: &str) -> Layer {
        Layer {
            name: name.into(),
            yaml: yaml.into(),
        }
    }

    #[test]
    fn nested_set_yaml() {
        assert_eq!(nested_yaml("a.b", "3"), "a:\n  b: 3\n");
        assert_eq!(nested_yaml("lr", "3e-4"), "lr: 3e-4\n");
    }

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("lr_critc", "lr_critic"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
    }

    #[test]
    fn later_layers_win() {
        let got = load_layers(&[l("a.yaml", "lr: 1.0\nseed: 3"), l("b.yaml", "lr: 2.0")]).unwrap();
        assert_eq!(got.config.lr, 2.0);
        assert_eq!(got.config.seed, 3);
    }
}
