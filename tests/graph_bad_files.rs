//! Bad pipeline files: each case asserts what the message says (file label, line, actor or edge,
//! types), not only that validation fails.

use stillflow::graph::{load_pipeline, parse_pipeline, DeviceInventory, GraphError};

/// A small valid generator lane. Lines: 4 prompts … 10 opt; edges #1..#8 on lines 12..19.
const BASE: &str = "name: mini
schedule: {mode: exact}
actors:
  prompts: {kind: prompt_source}
  roll: {kind: rollout, model: generator, grad: true}
  noise: {kind: noiser}
  real: {kind: score, model: real, cfg: true}
  fake: {kind: score, model: fake}
  loss: {kind: dmd_loss}
  opt: {kind: optimizer, model: generator}
edges:
  - {from: prompts.cond, to: roll.cond}
  - {from: roll.samples, to: noise.samples}
  - {from: noise.noised, to: real.noised}
  - {from: noise.noised, to: fake.noised}
  - {from: real.scored, to: loss.real}
  - {from: fake.scored, to: loss.fake}
  - {from: loss.loss, to: opt.loss}
  - {from: opt.weights, to: roll.weights}
";

fn inv2() -> DeviceInventory {
    DeviceInventory { cuda_devices: 2 }
}

/// Replace `old` (must occur) in BASE and return the error text.
fn err_with(old: &str, new: &str) -> String {
    assert!(BASE.contains(old), "test bug: {old}");
    err(&BASE.replacen(old, new, 1))
}

fn err(text: &str) -> String {
    match parse_pipeline(text, "bad.yaml", &inv2()) {
        Ok(g) => panic!("expected an error, got a graph: {g:?}"),
        Err(e) => e.to_string(),
    }
}

/// Exactly one issue, containing every fragment.
fn one(text: &str, fragments: &[&str]) {
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(lines.len(), 1, "expected one issue:\n{text}");
    has(text, fragments);
}

fn has(text: &str, fragments: &[&str]) {
    for f in fragments {
        assert!(text.contains(f), "missing `{f}` in:\n{text}");
    }
}

#[test]
fn base_is_valid() {
    let g = parse_pipeline(BASE, "bad.yaml", &inv2()).expect("the base case is valid");
    assert_eq!(g.actors.len(), 7);
    assert_eq!(g.edges[7].line, Some(19));
}

#[test]
fn unknown_kind_with_suggestion() {
    let e = err_with("{kind: rollout,", "{kind: rolout,");
    // The kind is unknown, so roll's ports are not checked: one issue, not a cascade.
    one(
        &e,
        &["bad.yaml:5: actor `roll`: unknown actor kind `rolout` (did you mean `rollout`?)"],
    );
    has(&e, &["known: prompt_source, latent_source, rollout"]);
}

#[test]
fn duplicate_actor_names_are_caught() {
    let e = load_pipeline("tests/bad_pipelines/duplicate_actor.yaml", &inv2()).unwrap_err();
    assert!(matches!(e, GraphError::Yaml { line: Some(5), .. }), "{e:?}");
    has(
        &e.to_string(),
        &[
            "tests/bad_pipelines/duplicate_actor.yaml:5: invalid YAML",
            "duplicate actor name `prompts` (first at line 3)",
        ],
    );
}

#[test]
fn duplicate_parameter_key_is_caught() {
    let e = err_with("model: real,", "model: real, model: fake,");
    assert_eq!(
        e,
        "bad.yaml:7: invalid YAML: duplicate key `model` in `actors.real`"
    );
}

#[test]
fn unknown_actor_in_edge() {
    let e = err_with("to: roll.cond}", "to: rol.cond}");
    has(
        &e,
        &["bad.yaml:12: edge #1 (prompts.cond -> rol.cond): `to`: unknown actor `rol` (did you mean `roll`?)"],
    );
    // roll.cond has lost its edge, which is reported at the actor.
    has(&e, &["bad.yaml:5: actor `roll`: required input `cond` (Cond) of kind `rollout` is not connected"]);
}

#[test]
fn unknown_port_lists_the_ports() {
    let e = err_with("to: roll.cond}", "to: roll.cnd}");
    has(
        &e,
        &["edge #1 (prompts.cond -> roll.cnd): actor `roll` (kind `rollout`) has no input port `cnd` \
           (did you mean `cond`?) (inputs: cond, weights)"],
    );
}

#[test]
fn edge_from_an_input_port() {
    let e = err_with(
        "{from: noise.noised, to: real.noised}",
        "{from: roll.cond, to: real.noised}",
    );
    has(
        &e,
        &["bad.yaml:14: edge #3 (roll.cond -> real.noised): wrong direction: `roll.cond` is an input \
           port of kind `rollout`; an edge must start at an output (outputs of `roll`: samples)"],
    );
}

#[test]
fn edge_to_an_output_port() {
    let e = err_with("to: roll.cond}", "to: roll.samples}");
    has(
        &e,
        &[
            "wrong direction: `roll.samples` is an output port",
            "must end at an input",
        ],
    );
}

#[test]
fn port_type_mismatch_names_both_types() {
    let e = err_with(
        "{from: real.scored, to: loss.real}",
        "{from: noise.noised, to: loss.real}",
    );
    one(
        &e,
        &[
            "bad.yaml:16: edge #5 (noise.noised -> loss.real): port type mismatch: `noise.noised` \
           produces Noised but `loss.real` takes Scored",
        ],
    );
}

#[test]
fn samples_feed_latents_but_not_the_reverse() {
    // Samples is a subtype of Latents (the base case feeds roll.samples to a noiser); plain
    // Latents are not Noised.
    let text = "name: t\nactors:\n  d: {kind: latent_source}\n  s: {kind: score, model: teacher}\n\
                edges:\n  - {from: d.x0, to: s.noised}\n";
    one(
        &err(text),
        &["`d.x0` produces Latents but `s.noised` takes Noised"],
    );
}

#[test]
fn unconnected_required_input() {
    let e = err_with("  - {from: fake.scored, to: loss.fake}\n", "");
    one(&e, &["bad.yaml:9: actor `loss`: required input `fake` (Scored) of kind `dmd_loss` is not connected"]);
}

#[test]
fn two_edges_into_a_single_input() {
    let e = err_with(
        "  - {from: fake.scored, to: loss.fake}\n",
        "  - {from: fake.scored, to: loss.fake}\n  - {from: real.scored, to: loss.fake}\n",
    );
    one(
        &e,
        &["actor `loss`: input `fake` has 2 edges (from `fake.scored`, from `real.scored`) but accepts exactly one"],
    );
}

#[test]
fn capacity_zero() {
    let e = err_with("to: noise.samples}", "to: noise.samples, capacity: 0}");
    one(
        &e,
        &[
            "bad.yaml:13: edge #2 (roll.samples -> noise.samples): capacity must be >= 1",
            "found 0",
        ],
    );
    let e = err_with("to: noise.samples}", "to: noise.samples, capacity: two}");
    has(&e, &["capacity must be an integer >= 1, found a string"]);
}

#[test]
fn cycle_without_weights_edge_names_its_actors() {
    let e = load_pipeline("tests/bad_pipelines/cycle.yaml", &inv2())
        .unwrap_err()
        .to_string();
    has(
        &e,
        &[
            "tests/bad_pipelines/cycle.yaml:7: cycle without a Weights edge: noise -> real -> loss -> noise",
            "`loss.loss` produces Loss but `noise.samples` takes Latents",
        ],
    );
    // The Weights edge opt -> roll closes a legal cycle and is not reported.
    assert!(!e.contains("opt ->") && !e.contains("roll ->"), "{e}");
    // A self-loop is a cycle too.
    let e = err_with(
        "to: real.noised}",
        "to: real.noised}\n  - {from: real.scored, to: real.weights}",
    );
    has(
        &e,
        &[
            "real -> real",
            "`real.scored` produces Scored but `real.weights` takes Weights",
        ],
    );
}

#[test]
fn schedule_errors() {
    let e = err_with("{mode: exact}", "{mode: exakt}");
    one(
        &e,
        &["bad.yaml:2: schedule: unknown mode `exakt` (did you mean `exact`?)"],
    );
    let e = err_with("{mode: exact}", "{mode: exact, max_staleness: 1}");
    one(
        &e,
        &["schedule: `max_staleness` is only allowed with mode `async` (mode is `exact`)"],
    );
    let e = err_with("{mode: exact}", "{mode: async, max_staleness: -1}");
    one(&e, &["schedule: `max_staleness` must be >= 0, found -1"]);
    let e = err_with("{mode: exact}", "{mode: async}");
    one(&e, &["schedule: mode `async` needs `max_staleness`"]);
    let e = err_with("{mode: exact}", "{mode: exact, staleness: 1}");
    one(&e, &["schedule: unknown key `staleness`"]);
}

#[test]
fn devices_that_do_not_exist() {
    let e = err_with(
        "noise: {kind: noiser}",
        "noise: {kind: noiser, device: 'cuda:3'}",
    );
    one(&e, &["bad.yaml:6: actor `noise`: device `cuda:3` does not exist (2 CUDA devices exist here: cuda:0..cuda:1)"]);
    let e = err_with(
        "noise: {kind: noiser}",
        "noise: {kind: noiser, device: gpu}",
    );
    one(
        &e,
        &["actor `noise`: bad device `gpu` (expected cpu, cuda or cuda:N)"],
    );
    let text = BASE.replacen(
        "noise: {kind: noiser}",
        "noise: {kind: noiser, device: cuda}",
        1,
    );
    let e = parse_pipeline(&text, "cpu.yaml", &DeviceInventory::cpu_only()).unwrap_err();
    has(
        &e.to_string(),
        &["cpu.yaml:6: actor `noise`: device `cuda` does not exist (no CUDA devices exist here)"],
    );
    assert!(parse_pipeline(&text, "x", &inv2()).is_ok());
}

#[test]
fn unknown_parameter_with_suggestion() {
    let e = err_with("grad: true}", "gard: true}");
    has(
        &e,
        &["bad.yaml:5: actor `roll`: unknown parameter `gard` for kind `rollout` (did you mean `grad`?) \
           (allowed: model, grad, lane, kind, device, stream)"],
    );
}

#[test]
fn bad_parameter_types() {
    let e = err_with("grad: true}", "grad: \"yes\"}");
    has(&e, &["actor `roll`: parameter `grad` of kind `rollout`: expected a boolean (true/false), found string `yes`"]);
    let e = err_with("model: real,", "model: reel,");
    has(&e, &["parameter `model` of kind `score`: expected a model name (one of generator, real, fake, teacher), found string `reel`"]);
    let e = err_with("{kind: dmd_loss}", "{kind: sid_loss, alpha: [1]}");
    one(&e, &["parameter `alpha` of kind `sid_loss`: expected a number or the name of a config key, found a list"]);
    let e = err_with("{kind: noiser}", "{kind: noiser, stream: 3}");
    has(
        &e,
        &["actor `noise`: `stream` must be a string, found a number"],
    );
}

#[test]
fn missing_kind_and_missing_required_param() {
    let e = err_with("noise: {kind: noiser}", "noise: {lane: g}");
    has(
        &e,
        &["bad.yaml:6: actor `noise`: missing `kind` (one of: prompt_source, latent_source"],
    );
    let e = err_with("{kind: optimizer, model: generator}", "{kind: optimizer}");
    has(
        &e,
        &["bad.yaml:10: actor `opt`: kind `optimizer` needs parameter `model` (a model name"],
    );
}

#[test]
fn empty_or_missing_actors() {
    one(
        &err("name: e\nactors: {}\n"),
        &["bad.yaml:2: pipeline: `actors` is empty"],
    );
    one(
        &err("name: e\nactors:\n"),
        &["bad.yaml:2: pipeline: `actors` is empty"],
    );
    one(&err("name: e\n"), &["bad.yaml: pipeline: missing `actors`"]);
    one(
        &err("- just\n- a list\n"),
        &["bad.yaml:1: pipeline: the file must be a mapping"],
    );
}

#[test]
fn malformed_port_references() {
    let e = err_with("{from: prompts.cond,", "{from: prompts,");
    one(&e, &["bad.yaml:12: edge #1 (? -> roll.cond): malformed `from`: `prompts` (expected `actor.port`)"]);
    let e = err_with("to: roll.cond}", "to: roll.cond.x}");
    has(&e, &["malformed `to`: `roll.cond.x`"]);
    let e = err_with("to: roll.cond}", "too: roll.cond}");
    has(
        &e,
        &[
            "missing `to` (`actor.port`)",
            "unknown key `too` (did you mean `to`?)",
        ],
    );
}

#[test]
fn top_level_typos_and_bad_names() {
    let e = err(&BASE.replacen("edges:", "edgs:", 1));
    has(
        &e,
        &["pipeline: unknown key `edgs` (did you mean `edges`?)"],
    );
    let e = err_with("  fake: {kind", "  fa.ke: {kind");
    has(
        &e,
        &["bad.yaml:8: actor `fa.ke`: actor names must be identifiers"],
    );
    one(
        &err(&BASE.replacen("name: mini", "name: [x]", 1)),
        &["bad.yaml:1: pipeline: `name` must be an identifier"],
    );
}

#[test]
fn invalid_yaml_reports_the_line() {
    let e = err_with("  noise: {kind: noiser}", "  noise: {kind: noiser");
    has(&e, &["bad.yaml:", "invalid YAML"]);
    let e = parse_pipeline("a: 1\n---\nb: 2\n", "two.yaml", &inv2())
        .unwrap_err()
        .to_string();
    has(&e, &["two.yaml", "invalid YAML", "more than one document"]);
}

#[test]
fn weights_of_the_wrong_model() {
    let e = err_with(
        "to: roll.weights}",
        "to: roll.weights}\n  - {from: opt.weights, to: fake.weights}",
    );
    one(
        &e,
        &["bad.yaml:20: edge (opt.weights -> fake.weights): carries weights of model `generator` into `fake`, whose model is `fake`"],
    );
}

#[test]
fn optimizer_without_gradients() {
    let e = err_with("grad: true}", "grad: false}");
    one(
        &e,
        &["bad.yaml:10: actor `opt`: updates model `generator`, but nothing upstream of its loss computes gradients for `generator`"],
    );
}

#[test]
fn user_of_an_optimized_model_without_weights_edge() {
    let e = err_with("  - {from: opt.weights, to: roll.weights}\n", "");
    one(
        &e,
        &["bad.yaml:5: actor `roll`: uses model `generator`, which optimizer `opt` updates, but its `weights` input is not connected"],
    );
}

#[test]
fn two_optimizers_for_one_model() {
    let text = BASE
        .replacen(
            "  opt: {kind: optimizer, model: generator}\n",
            "  opt: {kind: optimizer, model: generator}\n  opt2: {kind: optimizer, model: generator}\n",
            1,
        )
        .replacen(
            "to: opt.loss}",
            "to: opt.loss}\n  - {from: loss.loss, to: opt2.loss}",
            1,
        );
    one(
        &err(&text),
        &["bad.yaml:11: actor `opt2`: model `generator` already has an optimizer, `opt`; a model has one owner"],
    );
}

#[test]
fn all_errors_are_collected_in_line_order() {
    let e = load_pipeline("tests/bad_pipelines/many_errors.yaml", &inv2()).unwrap_err();
    let f = "tests/bad_pipelines/many_errors.yaml";
    let want = [
        format!("{f}:2: schedule: `max_staleness` is only allowed with mode `async` (mode is `serial`)"),
        format!("{f}:6: actor `prompts`: unknown actor kind `prompt_sauce` (did you mean `prompt_source`?)"),
        format!("{f}:8: actor `roll`: unknown parameter `gard` for kind `rollout` (did you mean `grad`?)"),
        format!("{f}:12: actor `write`: device `cuda:3` does not exist"),
        format!("{f}:17: edge #2 (roll.samples -> write.in): capacity must be >= 1"),
    ];
    let issues = e.issues();
    assert_eq!(issues.len(), want.len(), "{e}");
    for (got, w) in issues.iter().zip(&want) {
        assert!(got.starts_with(w.as_str()), "got `{got}`, want `{w}…`");
    }
    assert!(e
        .to_string()
        .starts_with(&format!("{f}: invalid pipeline (5 errors):")));
}

#[test]
fn mutilated_files_give_errors_not_panics() {
    // Every single-line deletion and every truncation of the shipped self_forcing file either
    // validates or yields an error naming the file; none panics.
    let (_, text) = stillflow::graph::embedded("self_forcing").expect("embedded");
    let lines: Vec<&str> = text.lines().collect();
    let mut errors = 0;
    for i in 0..lines.len() {
        let mut v = lines.clone();
        v.remove(i);
        if let Err(e) = parse_pipeline(&v.join("\n"), "cut.yaml", &inv2()) {
            assert!(e.to_string().starts_with("cut.yaml"), "{e}");
            errors += 1;
        }
    }
    for n in (0..text.len())
        .step_by(7)
        .filter(|&n| text.is_char_boundary(n))
    {
        if let Err(e) = parse_pipeline(&text[..n], "cut.yaml", &inv2()) {
            assert!(e.to_string().starts_with("cut.yaml"), "{e}");
        }
    }
    // Most deletions of actor or edge lines break the graph (a checkpoint input is one that does
    // not); block-style keys of opt_g/opt_c break it too, so failures outnumber such lines.
    let significant = lines
        .iter()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- {") || (l.starts_with("  ") && t.contains(": {kind"))
        })
        .count();
    assert!(errors >= significant, "{errors} < {significant}");
}
