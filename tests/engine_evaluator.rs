//! The evaluator measures the generator as inference does: every block runs the whole few-step
//! list, not the training lanes' random exit step. Its eval.jsonl line for the final generator
//! equals the quality that `run-pipeline sample` reports for the final checkpoint with the same
//! samples, noise and prompts.
mod common;
use common::*;
use stillflow::sample::{sample, SampleOptions};

fn eval_lines(logdir: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(logdir.join("eval.jsonl")).expect("eval.jsonl written");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("eval line is JSON"))
        .collect()
}

#[test]
fn evaluator_runs_the_full_step_list_like_sample() {
    let d = tempfile::tempdir().unwrap();
    let logdir = d.path().join("run");
    let mut sets: Vec<&str> = SMALL.to_vec();
    // Generator updates at steps 0 and 5: versions 0 (evaluated at start) and 2 (at the end).
    sets.push("max_steps=6");
    let c = cfg("toy_dmd", &logdir, &sets);
    let n_steps = c.denoising_step_list.iter().filter(|&&s| s != 0.0).count();
    let eval_samples = c.toy.eval_samples as usize;
    run(c);
    let lines = eval_lines(&logdir);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert_eq!(
            l["denoising_steps"].as_u64(),
            Some(n_steps as u64),
            "the evaluator runs every step of the list: {l}"
        );
    }
    let last = lines.last().unwrap();
    assert_eq!(last["generator_version"].as_u64(), Some(2));

    let resolved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(logdir.join("config.resolved.json")).expect("resolved config"),
    )
    .expect("JSON");
    let seed = resolved["seed"].as_u64().expect("seed");
    let report = sample(&SampleOptions {
        checkpoint: Some(logdir.clone()),
        prompts: None,
        video: true,
        mp4: Default::default(),
        use_ema: false,
        num_samples: eval_samples,
        seed,
        out: Some(d.path().join("samples")),
        prompt: None,
        batch_size: Some(eval_samples),
        overrides: vec![],
    })
    .expect("sample");
    // Through JSON text as eval.jsonl was (serde_json's parser may be off by an ulp, the same way).
    let text = serde_json::to_string(&report.quality.expect("toy quality")).unwrap();
    let q: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut compared = 0;
    for (k, v) in q.as_object().unwrap() {
        if let Some(x) = v.as_f64() {
            assert_eq!(
                last[k].as_f64(),
                Some(x),
                "`{k}`: eval {last} vs sample {q}"
            );
            compared += 1;
        }
    }
    assert!(compared >= 10, "{q}");
}
