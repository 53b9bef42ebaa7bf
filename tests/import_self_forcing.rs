//! scripts/import_self_forcing.py: builds a tiny synthetic Self-Forcing `model.pt` with the venv's
//! torch, converts it, and loads the result from Rust (names stripped, values and dtypes exact).
//! Needs the project venv (STILLFLOW_VENV or ./.venv, created by `make test`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/import_self_forcing.py")
}

const MAKE_PT: &str = r#"
import torch
w = torch.arange(16, dtype=torch.float32).reshape(4, 4) * 0.1
sd_g = {"model.blocks.0.self_attn.q.weight": w,
        "model.head.head.bias": (torch.arange(3, dtype=torch.float32) / 3).to(torch.bfloat16),
        "model.blocks.0.ffn.0.weight": w.t(),            # non-contiguous
        "model.scalar": torch.tensor(2.5, dtype=torch.float64)}
sd_c = {"model.blocks.0.self_attn.q.weight": -w, "model.steps": torch.tensor([1, 2, 3])}
sd_e = {"model._fsdp_wrapped_module.blocks.0.self_attn.q.weight": w + 1,
        "_fsdp_wrapped_module.model.head.head.bias": torch.ones(3, dtype=torch.bfloat16)}
torch.save({"generator": sd_g, "critic": sd_c, "generator_ema": sd_e}, sys.argv[1])
"#;

fn load(path: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn names(v: &[(String, Tensor)]) -> Vec<&str> {
    v.iter().map(|(n, _)| n.as_str()).collect()
}

/// Python driver: writes model.pt (good) and bad.pt (colliding keys), then runs the script's
/// `main()` in-process for the option and error cases (one torch import instead of five; torch
/// takes seconds to import on a loaded CI machine). Prints one line per case: `rc|stderr`.
const DRIVER: &str = r#"
import sys, io, contextlib, importlib.util, os
d, script = sys.argv[1], sys.argv[2]
MAKE_PT
t = torch.zeros(2)
torch.save({'generator': {'model.a': t, '_fsdp_wrapped_module.model.a': t}}, os.path.join(d, 'bad.pt'))
open(os.path.join(d, 'junk.pt'), 'wb').write(b'not a pickle')
spec = importlib.util.spec_from_file_location('imp', script)
imp = importlib.util.module_from_spec(spec); spec.loader.exec_module(imp)
cases = [[os.path.join(d, 'model.pt'), os.path.join(d, 'out2'), '--parts', 'generator_ema',
          '--dtype', 'float32', '--keep-model-prefix'],
         [os.path.join(d, 'bad.pt'), os.path.join(d, 'out3')],
         [os.path.join(d, 'junk.pt'), os.path.join(d, 'out4')]]
for args in cases:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = imp.main(args)
    print(f"{rc}|" + err.getvalue().strip().replace("\n", " "))
"#;

#[test]
fn converts_self_forcing_model_pt() {
    let d = tempfile::tempdir().unwrap();
    let driver = DRIVER.replace(
        "MAKE_PT",
        MAKE_PT
            .replace("sys.argv[1]", "os.path.join(d, 'model.pt')")
            .as_str(),
    );
    let out = Command::new(common::venv_python())
        .args(["-c", &driver])
        .arg(d.path())
        .arg(script())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(results.len(), 3, "{results:?}");

    // The real CLI on the good file.
    let pt = d.path().join("model.pt");
    let out = d.path().join("out");
    let st = Command::new(common::venv_python())
        .arg(script())
        .args([pt.as_os_str(), out.as_os_str()])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(String::from_utf8_lossy(&st.stdout).contains("generator.safetensors: 4 tensors"));

    let w = Tensor::arange(16, (Kind::Float, Device::Cpu)).reshape([4, 4]) * 0.1;

    let g = load(&out.join("generator.safetensors"));
    assert_eq!(
        names(&g),
        [
            "blocks.0.ffn.0.weight",
            "blocks.0.self_attn.q.weight",
            "head.head.bias",
            "scalar"
        ]
    );
    assert!(
        g[0].1.equal(&w.tr()),
        "transposed tensor stored in logical order"
    );
    assert!(g[1].1.equal(&w), "bit-exact f32");
    assert_eq!(g[2].1.kind(), Kind::BFloat16);
    assert!(g[2]
        .1
        .equal(&(Tensor::arange(3, (Kind::Float, Device::Cpu)) / 3).to_kind(Kind::BFloat16)));
    assert_eq!(g[3].1.kind(), Kind::Double);
    assert_eq!(g[3].1.size(), Vec::<i64>::new());
    assert_eq!(g[3].1.double_value(&[]), 2.5);

    let c = load(&out.join("critic.safetensors"));
    assert_eq!(names(&c), ["blocks.0.self_attn.q.weight", "steps"]);
    assert!(c[0].1.equal(&-&w));
    assert_eq!(c[1].1.kind(), Kind::Int64);
    assert_eq!(Vec::<i64>::try_from(&c[1].1).unwrap(), [1, 2, 3]);

    // EMA: FSDP fragments removed wherever they were, so the names match the generator's.
    let e = load(&out.join("generator_ema.safetensors"));
    assert_eq!(names(&e), ["blocks.0.self_attn.q.weight", "head.head.bias"]);
    assert!(e[0].1.equal(&(&w + 1.0)));
    assert!(e[1]
        .1
        .equal(&Tensor::ones([3], (Kind::BFloat16, Device::Cpu))));

    // --parts generator_ema --dtype float32 --keep-model-prefix.
    assert!(results[0].starts_with("0|"), "{}", results[0]);
    let out2 = d.path().join("out2");
    assert!(!out2.join("generator.safetensors").exists());
    let e = load(&out2.join("generator_ema.safetensors"));
    assert_eq!(
        names(&e),
        ["model.blocks.0.self_attn.q.weight", "model.head.head.bias"]
    );
    assert_eq!(e[1].1.kind(), Kind::Float);
    assert!(e[0].1.equal(&(&w + 1.0)));

    // Colliding keys: exit code 2, both source keys and the target named, nothing written.
    let msg = &results[1];
    assert!(msg.starts_with("2|"), "{msg}");
    assert!(
        msg.contains("`model.a`")
            && msg.contains("`_fsdp_wrapped_module.model.a`")
            && msg.contains("map to `a`"),
        "{msg}"
    );
    assert!(!d.path().join("out3/generator.safetensors").exists());

    // Not a checkpoint.
    assert!(
        results[2].starts_with("2|") && results[2].contains("junk.pt: cannot load"),
        "{}",
        results[2]
    );
}
