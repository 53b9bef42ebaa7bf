//! umT5 text encoder (Wan2.1's): parity with transformers' UMT5EncoderModel (which the fixture
//! script also checked against Wan's own T5Encoder), tokenizer parity with the python tokenizer
//! pipeline + Wan's cleaning, the three folder layouts and their errors.
//! Fixtures: tests/fixtures/umt5/, written by scripts/make_umt5_fixture.py.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use stillflow::models::umt5::{
    hf_to_wan, hf_to_wan_tensors, relative_position_bucket, wan_clean, wan_to_hf, TextEncoder,
    Umt5Config, Umt5Encoder, Umt5Tokenizer, WAN_T5_FILE,
};
use stillflow::models::weights::load_named_tensors;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn fx() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/umt5")
}

fn io() -> HashMap<String, Tensor> {
    load_named_tensors(&fx().join("io.safetensors"))
        .expect("io fixture")
        .into_iter()
        .collect()
}

fn meta() -> serde_json::Value {
    let text = std::fs::read_to_string(fx().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json is JSON")
}

fn io_prompts() -> Vec<String> {
    meta()["meta"]["io_prompts"]
        .as_array()
        .expect("io_prompts")
        .iter()
        .map(|p| p.as_str().expect("prompt").to_string())
        .collect()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[])
}

fn hf_tensors() -> Vec<(String, Tensor)> {
    let dir = fx().join("text_encoder");
    let mut shards: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    shards.sort();
    assert!(shards.len() > 1, "the fixture is sharded");
    shards
        .iter()
        .flat_map(|s| load_named_tensors(s).unwrap())
        .collect()
}

fn hf_config() -> Umt5Config {
    Umt5Config::from_hf_json(&fx().join("text_encoder/config.json")).unwrap()
}

/// A Wan release folder (Wan names; config read from the shapes) built from the fixture.
fn wan_folder() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        fx().join("wan_names.safetensors"),
        d.path().join(WAN_T5_FILE),
    )
    .unwrap();
    let tok = d.path().join("google/umt5-xxl");
    std::fs::create_dir_all(&tok).unwrap();
    std::fs::copy(
        fx().join("tokenizer/tokenizer.json"),
        tok.join("tokenizer.json"),
    )
    .unwrap();
    d
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let to = dst.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &to);
        } else {
            std::fs::copy(&p, &to).unwrap();
        }
    }
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn tokenizer_matches_python_pipeline() {
    let m = meta();
    let cases = m["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let tok_path = fx().join("tokenizer/tokenizer.json");
    let mut toks: HashMap<usize, Umt5Tokenizer> = HashMap::new();
    for c in cases {
        let text = c["text"].as_str().unwrap().to_string();
        let n = c["text_len"].as_u64().unwrap() as usize;
        assert_eq!(
            wan_clean(&text),
            c["clean"].as_str().unwrap(),
            "cleaning of {text:?}"
        );
        let tok = toks
            .entry(n)
            .or_insert_with(|| Umt5Tokenizer::from_file(&tok_path, n).unwrap());
        let (ids, mask) = tok.encode_ids(std::slice::from_ref(&text)).unwrap();
        let want: Vec<i64> = serde_json::from_value(c["ids"].clone()).unwrap();
        let want_mask: Vec<i64> = serde_json::from_value(c["mask"].clone()).unwrap();
        assert_eq!(ids[0], want, "ids of {text:?} (text_len {n})");
        assert_eq!(mask[0], want_mask, "mask of {text:?} (text_len {n})");
    }
    // A padded batch gives the same rows as one prompt at a time; tensors are [B, L] int64.
    let texts: Vec<String> = cases
        .iter()
        .filter(|c| c["text_len"] == 16)
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let (ids, mask) = toks[&16].encode(&texts).unwrap();
    assert_eq!(ids.size(), [texts.len() as i64, 16]);
    assert_eq!(ids.kind(), Kind::Int64);
    for (i, t) in texts.iter().enumerate() {
        let (one, one_mask) = toks[&16].encode(std::slice::from_ref(t)).unwrap();
        assert!(ids.get(i as i64).equal(&one.get(0)));
        assert!(mask.get(i as i64).equal(&one_mask.get(0)));
    }
}

#[test]
fn buckets_match_transformers() {
    let io = io();
    for (nb, md) in [(32, 128), (12, 20)] {
        let got = relative_position_bucket(&io["rel"], nb, md);
        assert!(
            got.equal(&io[&format!("buckets_{nb}_{md}")]),
            "buckets ({nb}, {md})"
        );
    }
}

#[test]
fn encoder_matches_transformers() {
    let io = io();
    let cfg = hf_config();
    assert_eq!(
        (cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.num_layers),
        (32, 6, 4, 3)
    );
    let vs = VarStore::new(Device::Cpu);
    let m = Umt5Encoder::new(&vs.root(), &cfg).unwrap();
    stillflow::models::weights::copy_into_varstore(&vs, &hf_to_wan_tensors(hf_tensors()), "fx")
        .unwrap();
    let out = tch::no_grad(|| m.forward(&io["ids"], &io["mask"]));
    let err = rel_err(&out, &io["out"]);
    eprintln!("umT5 parity (transformers names) rel err = {err:.3e}");
    assert!(err <= 1e-4, "relative error {err}");
    // The test can fail, and distances past max_distance matter: change only layer 0's buckets
    // for |distance| >= ~90 (the last bucket of each direction).
    let pos = vs.variables()["blocks.0.pos_embedding.embedding.weight"].shallow_clone();
    tch::no_grad(|| {
        let _ = pos.get(15).g_add_scalar_(0.5);
        let _ = pos.get(31).g_add_scalar_(0.5);
    });
    let out2 = tch::no_grad(|| m.forward(&io["ids"], &io["mask"]));
    assert!(rel_err(&out2, &io["out"]) > 1e-3);
}

#[test]
fn text_encoder_loads_diffusers_root_and_text_encoder_folder() {
    let want = io()["out"].shallow_clone();
    for dir in [fx(), fx().join("text_encoder")] {
        let te = TextEncoder::load(&dir, Device::Cpu, Kind::Float).unwrap();
        assert_eq!(te.files.layout, "diffusers");
        assert_eq!((te.text_len(), te.dim()), (512, 32));
        let out = te.encode(&io_prompts()).unwrap();
        assert_eq!(out.size(), [2, 512, 32]);
        assert!(!out.requires_grad());
        let err = rel_err(&out, &want);
        eprintln!("umT5 TextEncoder ({}) rel err = {err:.3e}", dir.display());
        assert!(err <= 1e-4, "relative error {err}");
    }
}

#[test]
fn text_encoder_loads_wan_release_folder() {
    let d = wan_folder();
    let te = TextEncoder::load(d.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(te.files.layout, "wan");
    // The size read from the shapes is the one of transformers' config.json.
    assert_eq!(te.model.cfg, hf_config());
    let out = te.encode(&io_prompts()).unwrap();
    let err = rel_err(&out, &io()["out"]);
    eprintln!("umT5 TextEncoder (Wan names) rel err = {err:.3e}");
    assert!(err <= 1e-4, "relative error {err}");
}

#[test]
fn name_table_matches_the_wan_named_fixture() {
    // wan_names.safetensors was written by the fixture script's own table, which it checked by
    // loading it into Wan's T5Encoder (strict) and matching transformers' output.
    let hf = hf_tensors();
    for (n, _) in &hf {
        let w = hf_to_wan(n).unwrap_or_else(|| panic!("no Wan name for {n}"));
        assert_eq!(wan_to_hf(&w).as_deref(), Some(n.as_str()));
    }
    let mine: HashMap<String, Tensor> = hf_to_wan_tensors(hf).into_iter().collect();
    let wan: HashMap<String, Tensor> = load_named_tensors(&fx().join("wan_names.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let mut a: Vec<&String> = mine.keys().collect();
    let mut b: Vec<&String> = wan.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for (n, t) in &wan {
        assert!(t.equal(&mine[n]), "{n}");
    }
    assert_eq!(
        hf_to_wan("encoder.embed_tokens.weight").unwrap(),
        "token_embedding.weight"
    );
    assert_eq!(
        hf_to_wan("decoder.block.0.layer.0.SelfAttention.q.weight"),
        None
    );
}

#[test]
fn zero_past_length_and_batch_independence() {
    let te = TextEncoder::load(&fx(), Device::Cpu, Kind::Float).unwrap();
    let p = io_prompts();
    let lens: Vec<i64> = serde_json::from_value(meta()["meta"]["io_lengths"].clone()).unwrap();
    let both = te.encode(&p).unwrap();
    for (i, &n) in lens.iter().enumerate() {
        let row = both.get(i as i64);
        assert_eq!(row.narrow(0, n, 512 - n).abs().max().double_value(&[]), 0.0);
        assert!(row.narrow(0, n - 1, 1).abs().max().double_value(&[]) > 0.0);
        let alone = te.encode(std::slice::from_ref(&p[i])).unwrap();
        let err = rel_err(&alone.get(0), &row);
        assert!(err <= 1e-6, "prompt {i} alone vs in a batch: {err}");
    }
}

#[test]
fn bfloat16_follows_wan_mixed_precision() {
    // Wan2.1 runs its T5Encoder in bf16 with f32 norm statistics and softmax; the fixture holds
    // that output (Wan's own code, bf16 on CPU). bf16 rounding alone moves the result ~2e-2
    // from float32, so agreement far below that shows the same casts in the same places.
    let io = io();
    let te = TextEncoder::load(&fx(), Device::Cpu, Kind::BFloat16).unwrap();
    let out = te.encode(&io_prompts()).unwrap();
    assert_eq!(out.kind(), Kind::BFloat16);
    let vs_f32 = rel_err(&out, &io["out"]);
    eprintln!("umT5 bf16: rel err vs f32 reference = {vs_f32:.3e}");
    assert!(vs_f32 <= 5e-2, "relative error vs float32 {vs_f32}");
    match io.get("out_bf16_wan") {
        Some(wan) => {
            let vs_wan = rel_err(&out, wan);
            eprintln!("umT5 bf16: rel err vs Wan's bf16 T5Encoder = {vs_wan:.3e}");
            assert!(
                vs_wan <= 2e-3,
                "relative error vs Wan's bf16 output {vs_wan}"
            );
        }
        None => eprintln!("fixture made without --wan-repo: no Wan bf16 reference"),
    }
}

#[test]
fn xxl_config_is_wan_s() {
    let x = Umt5Config::xxl();
    // 11.36 GB of bf16 in Wan's models_t5_umt5-xxl-enc-bf16.pth.
    assert_eq!(x.num_params(), 5_680_910_336);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("config.json");
    std::fs::write(
        &p,
        r#"{"model_type": "umt5", "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64,
            "num_layers": 24, "vocab_size": 256384, "feed_forward_proj": "gated-gelu",
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-06, "tie_word_embeddings": false}"#,
    )
    .unwrap();
    assert_eq!(Umt5Config::from_hf_json(&p).unwrap(), x);
    std::fs::write(&p, r#"{"model_type": "umt5", "feed_forward_proj": "relu"}"#).unwrap();
    assert!(err_text(Umt5Config::from_hf_json(&p)).contains("relu"));
    std::fs::write(&p, r#"{"model_type": "t5"}"#).unwrap();
    assert!(err_text(Umt5Config::from_hf_json(&p)).contains("config.json"));
}

#[test]
fn missing_files_are_named() {
    let load = |d: &Path| TextEncoder::load(d, Device::Cpu, Kind::Float);
    // Wan folder without its tokenizer.
    let d = wan_folder();
    std::fs::remove_file(d.path().join("google/umt5-xxl/tokenizer.json")).unwrap();
    let e = err_text(load(d.path()));
    assert!(e.contains("google/umt5-xxl/tokenizer.json"), "{e}");
    // Wan folder without weights; then with only the .pth.
    let d = wan_folder();
    std::fs::remove_file(d.path().join(WAN_T5_FILE)).unwrap();
    let e = err_text(load(d.path()));
    assert!(e.contains(WAN_T5_FILE), "{e}");
    std::fs::write(d.path().join("models_t5_umt5-xxl-enc-bf16.pth"), b"x").unwrap();
    let e = err_text(load(d.path()));
    assert!(e.contains("import_wan.py") && e.contains(".pth"), "{e}");
    // An empty folder says what to download.
    let d = tempfile::tempdir().unwrap();
    let e = err_text(load(d.path()));
    assert!(e.contains("Wan2.1-T2V-1.3B-Diffusers"), "{e}");
    // A diffusers root without tokenizer/.
    let d = tempfile::tempdir().unwrap();
    copy_dir(&fx().join("text_encoder"), &d.path().join("text_encoder"));
    let e = err_text(load(d.path()));
    assert!(e.contains("tokenizer/tokenizer.json"), "{e}");
    // A shard named by the index is missing.
    copy_dir(&fx().join("tokenizer"), &d.path().join("tokenizer"));
    std::fs::remove_file(
        d.path()
            .join("text_encoder/model-00002-of-00004.safetensors"),
    )
    .unwrap();
    let e = err_text(load(d.path()));
    assert!(e.contains("model-00002-of-00004.safetensors"), "{e}");
}

#[test]
fn wrong_or_missing_weights_are_listed() {
    let load = |d: &Path| TextEncoder::load(d, Device::Cpu, Kind::Float);
    // config.json disagrees with the weights: every ffn tensor is mis-shaped.
    let d = tempfile::tempdir().unwrap();
    copy_dir(&fx(), d.path());
    let cfg_path = d.path().join("text_encoder/config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, text.replace("\"d_ff\": 48", "\"d_ff\": 40")).unwrap();
    let e = err_text(load(d.path()));
    assert!(e.contains("model-00001-of-00004.safetensors"), "{e}");
    assert!(
        e.contains("mis-shaped: blocks.0.ffn.fc1.weight: expected [40, 32], found [48, 32]"),
        "{e}"
    );
    // A Wan file without its final norm and with a stray tensor.
    let d = wan_folder();
    let f = d.path().join(WAN_T5_FILE);
    let mut t: Vec<(String, Tensor)> = load_named_tensors(&f)
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != "norm.weight")
        .collect();
    t.push((
        "head.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    Tensor::write_safetensors(&t, &f).unwrap();
    let e = err_text(load(d.path()));
    assert!(e.contains(WAN_T5_FILE), "{e}");
    assert!(
        e.contains("missing: norm.weight") && e.contains("unexpected: head.weight"),
        "{e}"
    );
    // A tokenizer with more tokens than the embedding rows.
    let d = wan_folder();
    let f = d.path().join(WAN_T5_FILE);
    let t: Vec<(String, Tensor)> = load_named_tensors(&f)
        .unwrap()
        .into_iter()
        .map(|(n, t)| match n.as_str() {
            "token_embedding.weight" => (n, t.narrow(0, 0, 100)),
            _ => (n, t),
        })
        .collect();
    Tensor::write_safetensors(&t, &f).unwrap();
    let e = err_text(load(d.path()));
    assert!(
        e.contains("tokenizer.json") && e.contains("embeds only 100"),
        "{e}"
    );
}
