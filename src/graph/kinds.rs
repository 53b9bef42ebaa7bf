//! The static catalogue of actor kinds: typed ports and allowed parameters. No model code: this is
//! what the checker needs to reject a bad pipeline before any tensor is made. The runtime's actor
//! registry must implement exactly these kinds (one file each under src/actors/).

use std::fmt;

/// What travels on an edge: a named bundle of tensors (DESIGN §4). `Any` is only an input type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortType {
    /// Text conditioning: `cond` embeddings (+ the cached `uncond` / negative-prompt embeddings).
    Cond,
    /// Clean latents `x0` [B,F,C,H,W] with their `cond` (data: teacher training, toy GMM samples).
    Latents,
    /// A rollout's output: `x0` (with a graph at the exit step in lane g), `cond`, the initial
    /// noise `z`, exit step, model versions. A subtype of `Latents`: every port that takes `Latents` takes `Samples`.
    Samples,
    /// Noised samples: `x0`, `x_t`, `t` [B,F], `eps`, `cond`, versions.
    Noised,
    /// A score's output: the `Noised` fields plus the model's x0 / flow prediction.
    Scored,
    /// A scalar loss (with its autograd graph), its metrics and versions.
    Loss,
    /// A versioned snapshot of one model's parameters. Edges of this type break cycles.
    Weights,
    /// Accepts every type (sinks).
    Any,
}

impl PortType {
    /// Can an output of type `from` feed an input of type `self`?
    pub fn accepts(self, from: PortType) -> bool {
        self == PortType::Any
            || self == from
            || (self == PortType::Latents && from == PortType::Samples)
    }

    pub fn name(self) -> &'static str {
        match self {
            PortType::Cond => "Cond",
            PortType::Latents => "Latents",
            PortType::Samples => "Samples",
            PortType::Noised => "Noised",
            PortType::Scored => "Scored",
            PortType::Loss => "Loss",
            PortType::Weights => "Weights",
            PortType::Any => "Any",
        }
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

impl Dir {
    pub fn name(self) -> &'static str {
        match self {
            Dir::In => "input",
            Dir::Out => "output",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct PortSpec {
    pub name: &'static str,
    pub dir: Dir,
    pub ty: PortType,
    /// Inputs only: must be connected. Outputs are never required (unconnected output = dropped).
    pub required: bool,
    /// Inputs only: accepts several edges (each edge is its own stream of packets).
    pub multi: bool,
    pub doc: &'static str,
}

/// The type a parameter's value must have.
#[derive(Clone, Copy, Debug)]
pub enum ParamType {
    Bool,
    /// Integer ≥ the bound.
    Int(i64),
    /// Any number.
    Float,
    /// Non-empty string.
    Str,
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// A model name: one of [`MODELS`].
    Model,
    /// An integer ≥ 1, or a string naming a config key that holds one (e.g. `log_iters`).
    IntOrKey,
    /// A number, or a string naming a config key that holds one (e.g. `lr_critic`).
    FloatOrKey,
}

impl ParamType {
    /// A short description of the accepted values, for error messages and docs.
    pub fn describe(self) -> String {
        match self {
            ParamType::Bool => "a boolean (true/false)".into(),
            ParamType::Int(min) => format!("an integer >= {min}"),
            ParamType::Float => "a number".into(),
            ParamType::Str => "a non-empty string".into(),
            ParamType::Enum(v) => format!("one of {}", v.join(", ")),
            ParamType::Model => format!("a model name (one of {})", MODELS.join(", ")),
            ParamType::IntOrKey => "an integer >= 1 or the name of a config key".into(),
            ParamType::FloatOrKey => "a number or the name of a config key".into(),
        }
    }

    /// Check a value (already converted to JSON). Returns the reason on failure.
    pub fn check(self, v: &serde_json::Value) -> Result<(), String> {
        use serde_json::Value as J;
        let ok = match (self, v) {
            (ParamType::Bool, J::Bool(_)) => true,
            (ParamType::Int(min), J::Number(n)) => n.as_i64().is_some_and(|i| i >= min),
            (ParamType::Float | ParamType::FloatOrKey, J::Number(_)) => true,
            (ParamType::IntOrKey, J::Number(n)) => n.as_i64().is_some_and(|i| i >= 1),
            (ParamType::Str | ParamType::IntOrKey | ParamType::FloatOrKey, J::String(s)) => {
                !s.is_empty()
            }
            (ParamType::Enum(allowed), J::String(s)) => allowed.contains(&s.as_str()),
            (ParamType::Model, J::String(s)) => MODELS.contains(&s.as_str()),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {}, found {}", self.describe(), show(v)))
        }
    }
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("boolean `{b}`"),
        serde_json::Value::Number(n) => format!("number `{n}`"),
        serde_json::Value::String(s) => format!("string `{s}`"),
        serde_json::Value::Array(_) => "a list".into(),
        serde_json::Value::Object(_) => "a mapping".into(),
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub required: bool,
    pub doc: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub struct KindSpec {
    pub name: &'static str,
    pub doc: &'static str,
    pub ports: &'static [PortSpec],
    pub params: &'static [ParamSpec],
}

impl KindSpec {
    pub fn port(&self, name: &str, dir: Dir) -> Option<&'static PortSpec> {
        self.ports.iter().find(|p| p.name == name && p.dir == dir)
    }
    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// Model names a `model` parameter may take. The config resolves each to weights:
/// `generator` (generator_ckpt / generator_name), `real` (real_name), `fake` (fake_name),
/// `teacher` (a model trained from data by teacher.yaml).
pub const MODELS: &[&str] = &["generator", "real", "fake", "teacher"];

const fn inp(name: &'static str, ty: PortType, doc: &'static str) -> PortSpec {
    PortSpec {
        name,
        dir: Dir::In,
        ty,
        required: true,
        multi: false,
        doc,
    }
}
const fn opt_in(name: &'static str, ty: PortType, doc: &'static str) -> PortSpec {
    PortSpec {
        required: false,
        ..inp(name, ty, doc)
    }
}
const fn multi_in(name: &'static str, ty: PortType, doc: &'static str) -> PortSpec {
    PortSpec {
        multi: true,
        ..inp(name, ty, doc)
    }
}
const fn out(name: &'static str, ty: PortType, doc: &'static str) -> PortSpec {
    PortSpec {
        name,
        dir: Dir::Out,
        ty,
        required: false,
        multi: false,
        doc,
    }
}
const fn req(name: &'static str, ty: ParamType, doc: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        required: true,
        doc,
    }
}
const fn opt(name: &'static str, ty: ParamType, doc: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        required: false,
        doc,
    }
}

use ParamType as P;
use PortType as T;

const LANE: ParamType = P::Enum(&["g", "c"]);
const LOSS_PORTS: &[PortSpec] = &[
    inp("real", T::Scored, "teacher (real) score, CFG applied"),
    inp("fake", T::Scored, "critic (fake) score, frozen view"),
    opt_in(
        "target",
        T::Latents,
        "ode_target: adds regression_weight·MSE",
    ),
    out("loss", T::Loss, "generator loss"),
];

/// Every actor kind. Order = documentation order.
pub const KINDS: &[KindSpec] = &[
    KindSpec {
        name: "prompt_source",
        doc: "prompt file or embedded set → cond (+ cached uncond / negative prompt) embeddings",
        ports: &[out("cond", T::Cond, "conditioning for one batch")],
        params: &[
            opt(
                "prompts",
                P::Str,
                "prompt file or embedded set (default: config data_path)",
            ),
            opt(
                "batch_size",
                P::Int(1),
                "prompts per packet (default: config batch_size)",
            ),
            opt(
                "lane",
                LANE,
                "lane whose keyed draws this source makes (g or c)",
            ),
        ],
    },
    KindSpec {
        name: "latent_source",
        doc: "data samples x0 with their cond (teacher training, toy GMM samples)",
        ports: &[out("x0", T::Latents, "clean latents and their cond")],
        params: &[
            opt(
                "dataset",
                P::Str,
                "latent file or embedded toy (default: config toy)",
            ),
            opt(
                "batch_size",
                P::Int(1),
                "samples per packet (default: config batch_size)",
            ),
        ],
    },
    KindSpec {
        name: "rollout",
        doc: "Self-Forcing block-causal rollout of the generator (spec §2)",
        ports: &[
            inp("cond", T::Cond, "prompts to generate for"),
            opt_in(
                "weights",
                T::Weights,
                "newer weights of `model`; unconnected = the weights loaded at start",
            ),
            out("samples", T::Samples, "x0, cond, exit step, versions"),
        ],
        params: &[
            req(
                "model",
                P::Model,
                "which model generates (normally generator)",
            ),
            opt(
                "grad",
                P::Bool,
                "keep the graph at the exit step (lane g); default false",
            ),
            opt(
                "lane",
                LANE,
                "g: generator lane, c: critic lane (keys the RNG, credits)",
            ),
        ],
    },
    KindSpec {
        name: "noiser",
        doc: "timestep sampling with shift and clamp (spec §3) and x_t = (1-σ)x0 + σε",
        ports: &[
            inp(
                "samples",
                T::Latents,
                "clean samples (Samples or data Latents)",
            ),
            out("noised", T::Noised, "x0, x_t, t, eps, cond"),
        ],
        params: &[opt(
            "lane",
            LANE,
            "lane for the keyed RNG (default: the rollout's)",
        )],
    },
    KindSpec {
        name: "score",
        doc: "wraps a Denoiser: x_t, t, cond → x0 / flow prediction",
        ports: &[
            inp("noised", T::Noised, "what to denoise"),
            opt_in(
                "weights",
                T::Weights,
                "frozen view of a model trained elsewhere (versioned snapshots)",
            ),
            out("scored", T::Scored, "the Noised fields plus the prediction"),
        ],
        params: &[
            req("model", P::Model, "real, fake, teacher, …"),
            opt(
                "trainable",
                P::Bool,
                "forward with grad into the parameters; default false",
            ),
            opt(
                "cfg",
                P::Bool,
                "classifier-free guidance: cond+uncond in one batch; default false",
            ),
            opt(
                "guidance_scale",
                P::FloatOrKey,
                "CFG scale (default: config guidance_scale)",
            ),
            opt(
                "role",
                P::Str,
                "label in metric names (default: the actor name)",
            ),
        ],
    },
    KindSpec {
        name: "dmd_loss",
        doc: "DMD generator loss (spec §4.1)",
        ports: LOSS_PORTS,
        params: &[],
    },
    KindSpec {
        name: "sid_loss",
        doc: "SiD generator loss (spec §4.3)",
        ports: LOSS_PORTS,
        params: &[opt(
            "alpha",
            P::FloatOrKey,
            "SiD α (default: config sid_alpha)",
        )],
    },
    KindSpec {
        name: "distribution_loss",
        doc: "dmd_loss or sid_loss, chosen by `loss` (default: config distribution_loss)",
        ports: LOSS_PORTS,
        params: &[
            opt(
                "loss",
                P::Enum(&["from_config", "dmd", "sid"]),
                "default from_config",
            ),
            opt("alpha", P::FloatOrKey, "SiD α (default: config sid_alpha)"),
        ],
    },
    KindSpec {
        name: "ode_target",
        doc: "exact teacher's ODE from the rollout's noise z: DMD's regression targets",
        ports: &[
            inp("samples", T::Samples, "a rollout's samples (with z)"),
            out("target", T::Latents, "y = ODE(z), cond"),
        ],
        params: &[opt("steps", P::Int(1), "default: regression_ode_steps")],
    },
    KindSpec {
        name: "denoising_loss",
        doc: "critic / teacher loss: flow or x0 target (spec §4.2)",
        ports: &[
            inp("scored", T::Scored, "prediction and its target fields"),
            out("loss", T::Loss, "denoising loss"),
        ],
        params: &[opt(
            "target",
            P::Enum(&["flow", "x0"]),
            "default: config denoising_loss_type",
        )],
    },
    KindSpec {
        name: "optimizer",
        doc: "backward, clip, AdamW (own state), publishes weights v+1",
        ports: &[
            inp("loss", T::Loss, "loss to minimise"),
            out("weights", T::Weights, "versioned weights after each step"),
        ],
        params: &[
            req(
                "model",
                P::Model,
                "the model this optimizer owns and updates",
            ),
            opt(
                "lr",
                P::FloatOrKey,
                "learning rate or its config key (default `lr`)",
            ),
            opt("beta1", P::FloatOrKey, "or config key (default `beta1`)"),
            opt("beta2", P::FloatOrKey, "or config key (default `beta2`)"),
            opt(
                "weight_decay",
                P::FloatOrKey,
                "or config key (default `weight_decay`)",
            ),
            opt("clip", P::FloatOrKey, "max grad norm or config key"),
            opt(
                "ratio",
                P::IntOrKey,
                "update on steps s with s % ratio == 0 (e.g. dfake_gen_update_ratio); default 1",
            ),
        ],
    },
    KindSpec {
        name: "ema",
        doc: "EMA shadow of a model, updated after each weights version",
        ports: &[
            inp("weights", T::Weights, "weights to average"),
            out("weights", T::Weights, "the shadow"),
        ],
        params: &[
            opt("decay", P::FloatOrKey, "default config ema_weight"),
            opt("start_step", P::IntOrKey, "default config ema_start_step"),
        ],
    },
    KindSpec {
        name: "checkpoint",
        doc: "periodic atomic checkpoints of every weights input",
        ports: &[multi_in(
            "weights",
            T::Weights,
            "weights to save (one edge per model)",
        )],
        params: &[opt(
            "every",
            P::IntOrKey,
            "period in steps (default config log_iters)",
        )],
    },
    KindSpec {
        name: "evaluator",
        doc: "in-loop metrics on a model's weights",
        ports: &[inp("weights", T::Weights, "weights to evaluate")],
        params: &[
            opt(
                "every",
                P::IntOrKey,
                "period in steps (default config log_iters)",
            ),
            opt("num_samples", P::Int(1), "samples per evaluation"),
        ],
    },
    KindSpec {
        name: "sink",
        doc: "consumes anything: writes samples / drops packets",
        ports: &[multi_in("in", T::Any, "anything")],
        params: &[
            opt(
                "format",
                P::Enum(&["none", "safetensors"]),
                "default none; safetensors writes the `x` latents",
            ),
            opt("every", P::IntOrKey, "write every N steps (default 1)"),
            opt(
                "dir",
                P::Str,
                "output folder under the logdir (default samples)",
            ),
            opt(
                "fail_at_step",
                P::Int(0),
                "fault injection: return an error at this step (supervisor tests)",
            ),
            opt(
                "panic_at_step",
                P::Int(0),
                "fault injection: panic at this step (supervisor tests)",
            ),
        ],
    },
];

pub fn kind(name: &str) -> Option<&'static KindSpec> {
    KINDS.iter().find(|k| k.name == name)
}

/// The catalogue as Markdown tables (ports, then parameters). docs/PIPELINES.md embeds this text
/// verbatim and a test keeps the two equal.
pub fn catalogue_markdown() -> String {
    let mut s = String::from(
        "| kind | port | dir | type | required | multi | meaning |\n|---|---|---|---|---|---|---|\n",
    );
    let yes = |b: bool| if b { "yes" } else { "" };
    for k in KINDS {
        for p in k.ports {
            s += &format!(
                "| `{}` | `{}` | {} | {} | {} | {} | {} |\n",
                k.name,
                p.name,
                if p.dir == Dir::In { "in" } else { "out" },
                p.ty,
                yes(p.required),
                yes(p.multi),
                p.doc
            );
        }
    }
    s += "\n| kind | parameter | type | required | meaning |\n|---|---|---|---|---|\n";
    for k in KINDS {
        for p in k.params {
            s += &format!(
                "| `{}` | `{}` | {} | {} | {} |\n",
                k.name,
                p.name,
                p.ty.describe(),
                yes(p.required),
                p.doc
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_consistent() {
        for (i, k) in KINDS.iter().enumerate() {
            assert!(KINDS[..i].iter().all(|o| o.name != k.name), "{}", k.name);
            for p in k.ports {
                assert!(
                    p.dir == Dir::In || (!p.required && !p.multi),
                    "{}.{}",
                    k.name,
                    p.name
                );
                assert!(
                    p.dir == Dir::In || p.ty != PortType::Any,
                    "{}.{}",
                    k.name,
                    p.name
                );
            }
        }
    }

    #[test]
    fn subtyping_and_any() {
        assert!(PortType::Latents.accepts(PortType::Samples));
        assert!(!PortType::Samples.accepts(PortType::Latents));
        assert!(PortType::Any.accepts(PortType::Weights));
        assert!(!PortType::Scored.accepts(PortType::Noised));
    }

    #[test]
    fn param_checks() {
        use serde_json::json;
        assert!(ParamType::Int(1).check(&json!(0)).is_err());
        assert!(ParamType::IntOrKey.check(&json!("log_iters")).is_ok());
        assert!(ParamType::Model.check(&json!("genrator")).is_err());
        let e = ParamType::Bool.check(&json!("yes")).unwrap_err();
        assert!(e.contains("boolean") && e.contains("`yes`"), "{e}");
    }
}
