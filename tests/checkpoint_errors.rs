//! Every bad checkpoint input gives an error that names the file (or key) at fault.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use stillflow::checkpoint::{load_checkpoint, save_checkpoint, CheckpointParts};
use tch::{Device, Kind, Tensor};

fn saved(root: &Path) -> PathBuf {
    let w = (Tensor::arange(64, (Kind::Float, Device::Cpu)) * 0.1)
        .sin()
        .reshape([8, 8]);
    let p = CheckpointParts::new(
        10,
        json!({"lr": 1e-3, "seed": 3}),
        json!({"versions": {"generator": 2}}),
    )
    .with_part(
        "generator",
        vec![
            ("a.weight".into(), w),
            (
                "a.bias".into(),
                Tensor::zeros([8], (Kind::Float, Device::Cpu)),
            ),
        ],
    )
    .with_part(
        "critic",
        vec![("b".into(), Tensor::ones([3], (Kind::Float, Device::Cpu)))],
    );
    save_checkpoint(root, &p, 3).unwrap()
}

fn err(dir: &Path) -> String {
    format!("{:#}", load_checkpoint(dir).unwrap_err())
}

fn edit_state(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join("state.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn truncated_file_is_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = saved(d.path());
    let f = dir.join("generator.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
    let e = err(&dir);
    assert!(
        e.contains("generator.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn flipped_byte_is_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = saved(d.path());
    let f = dir.join("critic.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&f, &bytes).unwrap();
    let e = err(&dir);
    assert!(
        e.contains("critic.safetensors") && e.contains("corrupt"),
        "{e}"
    );
}

#[test]
fn garbage_file_with_matching_manifest_is_named() {
    // Replace a file by garbage and forge size + checksum: the safetensors parser must catch it.
    let d = tempfile::tempdir().unwrap();
    let dir = saved(d.path());
    let f = dir.join("critic.safetensors");
    let garbage = b"\xff\xff\xff\xff\x00\x00\x00\x00{not json".to_vec();
    std::fs::write(&f, &garbage).unwrap();
    let sum = stillflow::checkpoint::files::checksum64(&garbage);
    edit_state(&dir, |v| {
        v["parts"]["critic"]["bytes"] = json!(garbage.len());
        v["parts"]["critic"]["checksum"] = json!(format!("{sum:016x}"));
    });
    let e = err(&dir);
    assert!(
        e.contains("cannot read checkpoint file") && e.contains("critic.safetensors"),
        "{e}"
    );
}

#[test]
fn missing_file_is_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = saved(d.path());
    std::fs::remove_file(dir.join("critic.safetensors")).unwrap();
    let e = err(&dir);
    assert!(
        e.contains("critic.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn wrong_shape_and_missing_key_are_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = saved(d.path());
    edit_state(&dir, |v| {
        v["parts"]["generator"]["tensors"]["a.weight"]["shape"] = json!([4, 16])
    });
    let e = err(&dir);
    assert!(
        e.contains("generator.safetensors")
            && e.contains("`a.weight`")
            && e.contains("[8, 8]")
            && e.contains("[4, 16]"),
        "{e}"
    );

    let dir = saved(&d.path().join("2"));
    edit_state(&dir, |v| {
        v["parts"]["generator"]["tensors"]["a.extra"] = json!({"dtype": "Float", "shape": [1]})
    });
    let e = err(&dir);
    assert!(
        e.contains("generator.safetensors") && e.contains("missing `a.extra`"),
        "{e}"
    );

    let dir = saved(&d.path().join("3"));
    edit_state(&dir, |v| {
        v["parts"]["generator"]["tensors"]
            .as_object_mut()
            .unwrap()
            .remove("a.bias");
    });
    let e = err(&dir);
    assert!(
        e.contains("generator.safetensors") && e.contains("unexpected `a.bias`"),
        "{e}"
    );
}

#[test]
fn bad_state_json_is_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = saved(d.path());
    std::fs::write(dir.join("state.json"), b"{\"format\": ").unwrap();
    let e = err(&dir);
    assert!(
        e.contains("state.json") && e.contains("not a valid checkpoint state file"),
        "{e}"
    );

    let dir = saved(&d.path().join("2"));
    std::fs::remove_file(dir.join("state.json")).unwrap();
    assert!(err(&dir).contains("state.json"));

    let dir = saved(&d.path().join("3"));
    edit_state(&dir, |v| v["config"]["lr"] = json!(5.0));
    let e = err(&dir);
    assert!(e.contains("state.json") && e.contains("fingerprint"), "{e}");

    let dir = saved(&d.path().join("4"));
    edit_state(&dir, |v| v["step"] = json!(11));
    let e = err(&dir);
    assert!(
        e.contains("records step 11") && e.contains("step_000010"),
        "{e}"
    );

    let e = err(&d.path().join("nope"));
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
}

#[test]
fn unwritable_logdir_is_named_and_nothing_is_written() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("a_file");
    std::fs::write(&file, b"x").unwrap();
    let p = CheckpointParts::new(1, json!({}), json!({}));
    let e = format!(
        "{:#}",
        save_checkpoint(&file.join("logdir"), &p, 3).unwrap_err()
    );
    assert!(
        e.contains("cannot create checkpoint directory") && e.contains("a_file/logdir/checkpoints"),
        "{e}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");

    let bad = CheckpointParts::new(1, json!({}), json!({})).with_part("../evil", vec![]);
    let e = format!("{:#}", save_checkpoint(d.path(), &bad, 3).unwrap_err());
    assert!(e.contains("`../evil`"), "{e}");
    assert!(stillflow::checkpoint::latest_checkpoint(d.path())
        .unwrap()
        .is_none());
}
