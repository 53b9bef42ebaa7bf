//! Block-causal Wan: KV cache == explicit block-causal mask, local window / sink, modes.

use stillflow::models::wan::{CausalMode, CausalOptions, KvCache, WanConfig, WanModel};
use stillflow::models::weights::{copy_into_varstore, load_named_tensors};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const H: i64 = 4;
const W: i64 = 4;

/// The fixture's diffusers-initialised tiny Wan (every weight non-trivial).
fn model() -> (VarStore, WanModel) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let all = load_named_tensors(&dir.join("wan_tiny.safetensors")).unwrap();
    let w: Vec<_> = all
        .into_iter()
        .filter(|(n, _)| !n.starts_with("io."))
        .collect();
    let cfg = WanConfig::from_json_file(&dir.join("wan_tiny.json")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let m = WanModel::new(&vs.root(), cfg).unwrap();
    copy_into_varstore(&vs, &w, "fixture").unwrap();
    (vs, m)
}

fn inputs(b: i64, f: i64, seed: i64) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(seed);
    let x = Tensor::randn([b, f, 4, H, W], (Kind::Float, Device::Cpu));
    let t = Tensor::rand([b, f], (Kind::Float, Device::Cpu)) * 1000.0;
    let c = Tensor::randn([b, 5, 16], (Kind::Float, Device::Cpu));
    (x, t, c)
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).abs().max().double_value(&[]);
    d / b.abs().max().double_value(&[])
}

/// Chunk-by-chunk with CONTEXT writes (each chunk's output from the writing pass).
fn rollout(m: &WanModel, x: &Tensor, t: &Tensor, c: &Tensor, cache: &mut KvCache) -> Tensor {
    let f = x.size()[1];
    let nb = m.causal.num_frame_per_block;
    let mut outs = Vec::new();
    let mut s = 0;
    while s < f {
        let n = nb.min(f - s);
        outs.push(m.forward_causal(
            &x.narrow(1, s, n),
            &t.narrow(1, s, n),
            c,
            cache,
            s,
            CausalMode::CONTEXT,
        ));
        s += n;
    }
    Tensor::cat(&outs, 1)
}

#[test]
fn kv_cache_equals_block_causal_mask_global() {
    let (_vs, mut m) = model();
    m.causal = CausalOptions {
        num_frame_per_block: 2,
        local_attn_size: -1,
        sink_size: 0,
    };
    let (x, t, c) = inputs(2, 6, 1);
    let full = tch::no_grad(|| m.forward_full_causal(&x, &t, &c));
    let mut cache = KvCache::new(2);
    let blocks = rollout(&m, &x, &t, &c, &mut cache);
    let e = max_rel(&blocks, &full);
    eprintln!("cache vs mask (global): {e:.2e}");
    assert!(e <= 1e-5, "{e}");
    assert_eq!(cache.cached_frames(), &[0, 1, 2, 3, 4, 5]);
    // Causality is real: the full bidirectional forward differs on later blocks only.
    let bidi = tch::no_grad(|| m.forward(&x, &t, &c));
    assert!(max_rel(&bidi.narrow(1, 2, 4), &full.narrow(1, 2, 4)) > 1e-3);
    // ... and a change to the last block does not touch earlier outputs.
    let x2 = x.copy();
    let _ = x2.narrow(1, 4, 2).g_add_scalar_(1.0);
    let full2 = tch::no_grad(|| m.forward_full_causal(&x2, &t, &c));
    assert!(max_rel(&full2.narrow(1, 0, 4), &full.narrow(1, 0, 4)) < 1e-6);
    assert!(max_rel(&full2.narrow(1, 4, 2), &full.narrow(1, 4, 2)) > 1e-3);
}

#[test]
fn first_block_causal_equals_bidirectional_on_that_block() {
    let (_vs, m) = model();
    let (x, t, c) = inputs(1, 3, 2);
    let bidi = tch::no_grad(|| m.forward(&x, &t, &c));
    let mut cache = KvCache::new(2);
    let causal = m.forward_causal(&x, &t, &c, &mut cache, 0, CausalMode::DENOISE);
    let e = max_rel(&causal, &bidi);
    assert!(e <= 1e-5, "{e}");
    assert!(cache.cached_frames().is_empty(), "DENOISE must not write");
    assert!(cache.has_text_kv(), "no-grad calls cache the text K/V");
}

#[test]
fn local_window_with_sink_matches_mask_and_evicts() {
    let (_vs, mut m) = model();
    m.causal = CausalOptions {
        num_frame_per_block: 1,
        local_attn_size: 3,
        sink_size: 1,
    };
    let (x, t, c) = inputs(1, 6, 3);
    let full = tch::no_grad(|| m.forward_full_causal(&x, &t, &c));
    let mut cache = KvCache::new(2);
    let blocks = rollout(&m, &x, &t, &c, &mut cache);
    let e = max_rel(&blocks, &full);
    eprintln!("cache vs mask (local 3, sink 1): {e:.2e}");
    assert!(e <= 1e-5, "{e}");
    // Window of 3 frames: sink frame 0 plus the 2 most recent.
    assert_eq!(cache.cached_frames(), &[0, 4, 5]);
    assert_eq!(cache.keys(0).unwrap().size()[2], 3 * (H / 2) * (W / 2));
    // Frame 2 is outside the window of the last block, frame 0 (sink) is inside.
    let last = |m: &WanModel, x: &Tensor| {
        tch::no_grad(|| m.forward_full_causal(x, &t, &c)).narrow(1, 5, 1)
    };
    let base = last(&m, &x);
    let x_mid = x.copy();
    let _ = x_mid.narrow(1, 2, 1).g_add_scalar_(1.0);
    assert!(max_rel(&last(&m, &x_mid), &base) < 1e-6);
    let x_sink = x.copy();
    let _ = x_sink.narrow(1, 0, 1).g_add_scalar_(1.0);
    assert!(max_rel(&last(&m, &x_sink), &base) > 1e-4);
    // Without the sink the first frame is forgotten too.
    m.causal.sink_size = 0;
    let base0 = last(&m, &x);
    assert!(max_rel(&last(&m, &x_sink), &base0) < 1e-6);
    let mut cache0 = KvCache::new(2);
    let b0 = rollout(&m, &x, &t, &c, &mut cache0);
    assert!(max_rel(&b0, &tch::no_grad(|| m.forward_full_causal(&x, &t, &c))) <= 1e-5);
    assert_eq!(cache0.cached_frames(), &[3, 4, 5]);
}

#[test]
fn rewriting_a_block_overwrites_its_slot() {
    let (_vs, m) = model();
    let (x, t, c) = inputs(1, 6, 4);
    let mut cache = KvCache::new(2);
    let _ = rollout(&m, &x, &t, &c, &mut cache);
    // Re-write block 1 (frames 3..6) with other content: the cache keeps frames 0..6, and the
    // result equals a fresh rollout of the modified input.
    let x2 = x.copy();
    let _ = x2.narrow(1, 3, 3).g_mul_scalar_(-0.5);
    let o = m.forward_causal(
        &x2.narrow(1, 3, 3),
        &t.narrow(1, 3, 3),
        &c,
        &mut cache,
        3,
        CausalMode::CONTEXT,
    );
    assert_eq!(cache.cached_frames(), &[0, 1, 2, 3, 4, 5]);
    let mut fresh = KvCache::new(2);
    let r = rollout(&m, &x2, &t, &c, &mut fresh);
    assert!(max_rel(&o, &r.narrow(1, 3, 3)) <= 1e-5);
    let k1 = cache.keys(1).unwrap();
    let k2 = fresh.keys(1).unwrap();
    assert!(max_rel(&k1, &k2) <= 1e-5);
}

#[test]
fn grad_mode_graph_reaches_current_block_and_text_not_past() {
    let (vs, m) = model();
    let (x, t, c) = inputs(1, 6, 5);
    let mut cache = KvCache::new(2);
    let _ = m.forward_causal(
        &x.narrow(1, 0, 3),
        &t.narrow(1, 0, 3),
        &c,
        &mut cache,
        0,
        CausalMode::CONTEXT,
    );
    let past_k = cache.keys(0).unwrap().shallow_clone();
    assert!(!past_k.requires_grad(), "cached K/V are detached");
    let xb = x.narrow(1, 3, 3).detach().set_requires_grad(true);
    let cg = c.detach().set_requires_grad(true);
    let tb = t.narrow(1, 3, 3);
    let denoise = m.forward_causal(&xb.detach(), &tb, &c, &mut cache, 3, CausalMode::DENOISE);
    assert!(!denoise.requires_grad());
    let out = m.forward_causal(&xb, &tb, &cg, &mut cache, 3, CausalMode::GRAD);
    assert!(
        max_rel(&out.detach(), &denoise) <= 1e-5,
        "GRAD and DENOISE agree numerically"
    );
    assert_eq!(cache.cached_frames(), &[0, 1, 2], "GRAD does not write");
    out.square().sum(Kind::Float).backward();
    assert!(xb.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // Text K/V recomputed with grad: the gradient reaches cond and the text embedding.
    assert!(cg.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    let vars = vs.variables();
    assert!(
        vars["text_embedding.0.weight"]
            .grad()
            .abs()
            .sum(Kind::Float)
            .double_value(&[])
            > 0.0
    );
    assert!(
        vars["blocks.1.cross_attn.k.weight"]
            .grad()
            .abs()
            .sum(Kind::Float)
            .double_value(&[])
            > 0.0
    );
}
