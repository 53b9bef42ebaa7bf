//! Activation checkpointing (src/cuda/checkpoint.rs) against the plain computation, on CPU.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use stillflow::cuda::{checkpoint, try_checkpoint};
use tch::{Device, Kind, Tensor};

const OPTS: (Kind, Device) = (Kind::Double, Device::Cpu);

/// Deterministic, non-trivial values (tests may seed what they like; no global RNG needed).
fn det(shape: &[i64], phase: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, OPTS) * 0.37 + phase).sin().view(shape)
}

fn leaf(shape: &[i64], phase: f64) -> Tensor {
    det(shape, phase).set_requires_grad(true)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    let d = max_diff(a, b);
    assert!(d <= 1e-12, "{what}: max |diff| = {d}");
    // Guard against comparing two zero tensors: the values must actually carry signal.
    assert!(a.abs().max().double_value(&[]) > 1e-6, "{what} is all zero");
}

struct Mlp {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl Mlp {
    fn new() -> Self {
        Mlp {
            w1: leaf(&[8, 16], 0.1),
            b1: leaf(&[16], 0.2),
            w2: leaf(&[16, 8], 0.3),
            b2: leaf(&[8], 0.4),
        }
    }
    fn params(&self) -> [&Tensor; 4] {
        [&self.w1, &self.b1, &self.w2, &self.b2]
    }
    fn shallow(&self) -> Mlp {
        Mlp {
            w1: self.w1.shallow_clone(),
            b1: self.b1.shallow_clone(),
            w2: self.w2.shallow_clone(),
            b2: self.b2.shallow_clone(),
        }
    }
    /// Residual MLP block; also reports whether its hidden activation carries a graph.
    fn forward(&self, x: &Tensor) -> (Tensor, bool) {
        let h = x.matmul(&self.w1) + &self.b1;
        let has_graph = h.requires_grad();
        ((h.gelu("none").matmul(&self.w2) + &self.b2) + x, has_graph)
    }
    fn zero_grads(&mut self) {
        for p in [&mut self.w1, &mut self.b1, &mut self.w2, &mut self.b2] {
            p.zero_grad();
        }
    }
}

#[test]
fn mlp_block_matches_plain_outputs_and_gradients() {
    let mut mlp = Mlp::new();
    let g = det(&[4, 8], 1.3);

    // Plain computation.
    let x = leaf(&[4, 8], 0.7);
    let (y_plain, _) = mlp.forward(&x);
    (&y_plain * &g).sum(Kind::Double).backward();
    let gx_plain = x.grad().copy();
    let gp_plain: Vec<Tensor> = mlp.params().iter().map(|p| p.grad().copy()).collect();
    mlp.zero_grads();

    // Checkpointed: count calls and record whether each call built a graph.
    let calls = Arc::new(AtomicUsize::new(0));
    let graphs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, gr, m) = (calls.clone(), graphs.clone(), mlp.shallow());
    let x2 = leaf(&[4, 8], 0.7);
    let ys = checkpoint(
        move |xs| {
            c.fetch_add(1, Ordering::SeqCst);
            let (y, has_graph) = m.forward(&xs[0]);
            gr.lock().unwrap().push(has_graph);
            vec![y]
        },
        &[x2.shallow_clone()],
    );
    assert_eq!(ys.len(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "forward runs f once");
    assert!(
        ys[0].requires_grad(),
        "the checkpoint output is part of the graph"
    );
    assert_eq!(max_diff(&ys[0], &y_plain), 0.0, "same forward values");

    (&ys[0] * &g).sum(Kind::Double).backward();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "backward recomputes f once"
    );
    assert_eq!(
        *graphs.lock().unwrap(),
        vec![false, true],
        "forward keeps no graph, the recomputation builds one"
    );
    assert_close(&x2.grad(), &gx_plain, "input gradient");
    for (i, p) in mlp.params().iter().enumerate() {
        assert_close(&p.grad(), &gp_plain[i], &format!("parameter {i} gradient"));
    }
}

#[test]
fn two_inputs_one_without_grad() {
    let w = leaf(&[6, 3], 0.5);
    let a = leaf(&[5, 6], 0.9);
    let b = det(&[5, 6], 2.1); // requires no grad
    let f = |a: &Tensor, b: &Tensor, w: &Tensor| (a * b).tanh().matmul(w);
    let g = det(&[5, 3], 0.2);

    (&f(&a, &b, &w) * &g).sum(Kind::Double).backward();
    let (ga, gw) = (a.grad().copy(), w.grad().copy());
    let mut w = w;
    w.zero_grad();

    let a2 = leaf(&[5, 6], 0.9);
    let wc = w.shallow_clone();
    let ys = checkpoint(
        move |xs| vec![f(&xs[0], &xs[1], &wc)],
        &[a2.shallow_clone(), b.shallow_clone()],
    );
    (&ys[0] * &g).sum(Kind::Double).backward();
    assert_close(&a2.grad(), &ga, "grad of the input that requires grad");
    assert_close(&w.grad(), &gw, "grad of the captured parameter");
    assert!(
        !b.grad().defined(),
        "no gradient for the input that requires none"
    );
}

#[test]
fn parameters_get_gradients_when_no_input_requires_grad() {
    let mut mlp = Mlp::new();
    let x = det(&[3, 8], 0.3);
    let (y, _) = mlp.forward(&x);
    y.pow_tensor_scalar(2).sum(Kind::Double).backward();
    let want: Vec<Tensor> = mlp.params().iter().map(|p| p.grad().copy()).collect();
    mlp.zero_grads();

    let m = mlp.shallow();
    let ys = checkpoint(move |xs| vec![m.forward(&xs[0]).0], &[x.shallow_clone()]);
    ys[0].pow_tensor_scalar(2).sum(Kind::Double).backward();
    for (i, p) in mlp.params().iter().enumerate() {
        assert_close(&p.grad(), &want[i], &format!("parameter {i} gradient"));
    }
}

#[test]
fn several_outputs_one_unused() {
    let a = leaf(&[4], 0.1);
    let f = |x: &Tensor| vec![x.exp(), x.sin() * 3.0];
    // Plain: only the second output enters the loss.
    f(&a)[1].sum(Kind::Double).backward();
    let want = a.grad().copy();
    let a2 = leaf(&[4], 0.1);
    let ys = checkpoint(move |xs| f(&xs[0]), &[a2.shallow_clone()]);
    assert_eq!(ys.len(), 2);
    ys[1].sum(Kind::Double).backward();
    assert_close(&a2.grad(), &want, "gradient through the used output");
}

#[test]
fn under_no_grad_it_is_a_plain_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let w = leaf(&[3, 3], 0.4);
    let x = leaf(&[2, 3], 0.6);
    let want = x.matmul(&w).detach();
    let wc = w.shallow_clone();
    let ys = tch::no_grad(|| {
        checkpoint(
            move |xs| {
                c.fetch_add(1, Ordering::SeqCst);
                vec![xs[0].matmul(&wc)]
            },
            &[x.shallow_clone()],
        )
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(!ys[0].requires_grad());
    assert_eq!(max_diff(&ys[0], &want), 0.0);
}

/// Counts live copies of the closure's captured state.
struct Token(Arc<AtomicUsize>);
impl Drop for Token {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn closure_lives_as_long_as_the_graph() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let tok = Token(dropped.clone());
    let x = leaf(&[3], 0.2);
    let ys = checkpoint(
        move |xs| {
            let _keep = &tok;
            vec![xs[0].exp()]
        },
        &[x.shallow_clone()],
    );
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        0,
        "graph alive: closure alive"
    );
    let loss = ys[0].sum(Kind::Double);
    drop(ys);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        0,
        "loss still references the node"
    );
    loss.backward();
    assert_close(&x.grad(), &det(&[3], 0.2).exp(), "d/dx sum(exp x)");
    drop(loss);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "graph freed: closure dropped once"
    );
}

#[test]
fn errors_and_panics_come_back_as_errors() {
    let x = leaf(&[2], 0.0);
    let e = try_checkpoint(|_| anyhow::bail!("bad block"), &[x.shallow_clone()])
        .err()
        .map(|e| format!("{e:#}"));
    assert!(
        e.as_deref().is_some_and(|m| m.contains("bad block")),
        "{e:?}"
    );

    let e = try_checkpoint(
        |_| -> anyhow::Result<Vec<Tensor>> { panic!("boom") },
        &[x.shallow_clone()],
    )
    .err()
    .map(|e| format!("{e:#}"));
    assert!(e.as_deref().is_some_and(|m| m.contains("boom")), "{e:?}");

    // A recomputation that fails surfaces where backward is called.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let ys = try_checkpoint(
        move |xs| {
            if c.fetch_add(1, Ordering::SeqCst) > 0 {
                anyhow::bail!("recompute failed");
            }
            Ok(vec![xs[0].exp()])
        },
        &[x.shallow_clone()],
    )
    .expect("forward succeeds");
    let err = ys[0]
        .sum(Kind::Double)
        .f_backward()
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|m| m.contains("recompute failed")),
        "{err:?}"
    );
}

#[test]
fn backward_on_another_thread() {
    let w = leaf(&[4, 4], 0.8);
    let x = leaf(&[2, 4], 0.5);
    x.matmul(&w).tanh().sum(Kind::Double).backward();
    let want = w.grad().copy();
    let mut w = w;
    w.zero_grad();

    let wc = w.shallow_clone();
    let ys = checkpoint(
        move |xs| vec![xs[0].matmul(&wc).tanh()],
        &[det(&[2, 4], 0.5)],
    );
    let loss = ys[0].sum(Kind::Double);
    std::thread::spawn(move || loss.backward())
        .join()
        .expect("backward thread");
    assert_close(
        &w.grad(),
        &want,
        "parameter gradient from a backward on another thread",
    );
}
