//! GPU checks of src/cuda (feature `cuda`, needs a CUDA device). Run by scripts/gpu_selftest.sh
//! with `--test-threads=1`: the memory-statistics checks assume no other test allocates meanwhile.
#![cfg(feature = "cuda")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use stillflow::cuda::{
    checkpoint, device_count, device_description, device_properties, memory_stats, record_stream,
    reset_peak, CudaEvent, CudaStream, StreamGuard,
};
use tch::{Device, Kind, Tensor};

const DEV: Device = Device::Cuda(0);

fn need_gpu() {
    assert!(
        tch::Cuda::is_available() && device_count() > 0,
        "no CUDA device: run this on a GPU machine"
    );
}

fn det(shape: &[i64], phase: f64, kind: Kind) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Double, DEV)) * 0.37 + phase)
        .sin()
        .view(shape)
        .to_kind(kind)
}

fn chain(x: &Tensor, iters: usize) -> Tensor {
    let mut y = x.shallow_clone();
    for _ in 0..iters {
        y = y.matmul(x).tanh();
    }
    y
}

#[test]
fn device_properties_and_description() {
    need_gpu();
    let p = device_properties(0).expect("properties");
    println!("device 0: {}", device_description(0));
    assert!(!p.name.is_empty());
    assert!(p.total_bytes > (1u64 << 30) && p.free_bytes <= p.total_bytes);
    assert!(p.compute_capability.0 >= 7 && p.multiprocessors > 0);
    let e = CudaStream::from_pool(99, false)
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|m| m.contains("does not exist")),
        "{e:?}"
    );
}

#[test]
fn current_stream_is_thread_local_and_guard_restores() {
    need_gpu();
    let main_before = CudaStream::current(0).expect("current");
    assert_eq!(main_before, CudaStream::default_stream(0).expect("default"));
    let (pool, seen) = std::thread::spawn(|| {
        let s = CudaStream::from_pool(0, false).expect("pool");
        s.set_current().expect("set_current");
        (s, CudaStream::current(0).expect("worker current"))
    })
    .join()
    .expect("worker");
    println!(
        "main current id={} worker pool id={} worker saw id={}",
        main_before.id(),
        pool.id(),
        seen.id()
    );
    assert_eq!(pool, seen);
    assert_ne!(pool, main_before);
    assert_eq!(
        CudaStream::current(0).expect("current"),
        main_before,
        "main thread unaffected"
    );

    let hp = CudaStream::from_pool(0, true).expect("high-priority pool");
    {
        let _g = StreamGuard::new(&hp).expect("guard");
        assert_eq!(CudaStream::current(0).expect("current"), hp);
    }
    assert_eq!(
        CudaStream::current(0).expect("current"),
        main_before,
        "guard restored"
    );
    assert!(!hp.raw_handle().expect("raw").is_null());
}

#[test]
fn event_handoff_across_threads_and_streams() {
    need_gpu();
    // Tests may seed the global generator; O(1) values so the comparison below has signal.
    tch::manual_seed(7);
    let x = Tensor::randn([2048, 2048], (Kind::Float, DEV)) / (2048f64).sqrt();
    let want: Vec<f64> = (0..4)
        .map(|i| {
            (chain(&x, 4) * (i + 1) as f64)
                .abs()
                .sum(Kind::Double)
                .double_value(&[])
        })
        .collect();
    let (tx, rx) = crossbeam_channel::bounded::<(Tensor, CudaEvent)>(2);
    let xp = x.shallow_clone();
    let producer = std::thread::spawn(move || {
        let s = CudaStream::from_pool(0, false).expect("pool");
        let _g = StreamGuard::new(&s).expect("guard");
        for i in 0..4 {
            let y = chain(&xp, 4) * (i + 1) as f64;
            let mut ev = CudaEvent::new(false).expect("event");
            ev.record(&s).expect("record");
            tx.send((y, ev)).expect("send");
        }
    });
    let consumer = std::thread::spawn(move || {
        let s = CudaStream::from_pool(0, false).expect("pool");
        let _g = StreamGuard::new(&s).expect("guard");
        let mut sums = Vec::new();
        while let Ok((y, ev)) = rx.recv() {
            ev.block(&s).expect("block");
            record_stream(&y, &s).expect("record_stream");
            sums.push(y.abs().sum(Kind::Double));
            drop(y); // safe: the allocator waits for s before reusing the block
        }
        s.synchronize().expect("sync");
        sums.iter()
            .map(|t| t.double_value(&[]))
            .collect::<Vec<f64>>()
    });
    producer.join().expect("producer");
    let got = consumer.join().expect("consumer");
    println!("hand-off sums {got:?} want {want:?}");
    assert_eq!(got.len(), 4);
    for (g, w) in got.iter().zip(&want) {
        assert!(*w > 1e3, "the reference carries signal: {w}");
        assert!((g - w).abs() <= 1e-6 * w, "{g} vs {w}");
    }
}

/// Allocates a block on stream A, uses it on stream B under long work, frees it, allocates again on
/// A: returns whether the second allocation got the same address.
fn reused_after_free(mark_use_on_b: bool) -> bool {
    let a = CudaStream::from_pool(0, false).expect("pool a");
    let b = CudaStream::from_pool(0, false).expect("pool b");
    let _ga = StreamGuard::new(&a).expect("guard a");
    let t = Tensor::ones([4096, 4096], (Kind::Float, DEV));
    let p1 = t.data_ptr() as usize;
    let mut ev = CudaEvent::new(false).expect("event");
    ev.record(&a).expect("record");
    let outs = {
        let _gb = StreamGuard::new(&b).expect("guard b");
        ev.block(&b).expect("block");
        (0..30).map(|_| t.matmul(&t)).collect::<Vec<_>>()
    };
    if mark_use_on_b {
        record_stream(&t, &b).expect("record_stream");
    }
    drop(t);
    let t2 = Tensor::empty([4096, 4096], (Kind::Float, DEV));
    let same = t2.data_ptr() as usize == p1;
    b.synchronize().expect("sync b");
    drop(outs);
    same
}

#[test]
fn record_stream_keeps_the_block_until_the_other_stream_is_done() {
    need_gpu();
    let plain = reused_after_free(false);
    let recorded = reused_after_free(true);
    println!("block reused right after free: without record_stream={plain} with={recorded}");
    assert!(
        plain,
        "control: the caching allocator reuses a freed block on its stream at once"
    );
    assert!(
        !recorded,
        "record_stream must delay reuse while stream B still works"
    );
}

#[test]
fn event_timing() {
    need_gpu();
    let x = det(&[4096, 4096], 0.3, Kind::BFloat16) / 64.0;
    let _ = chain(&x, 2);
    tch::Cuda::synchronize(0);
    let s = CudaStream::current(0).expect("current");
    let (mut a, mut b) = (
        CudaEvent::new(true).expect("a"),
        CudaEvent::new(true).expect("b"),
    );
    let t0 = Instant::now();
    a.record(&s).expect("record a");
    let y = chain(&x, 20);
    b.record(&s).expect("record b");
    b.synchronize().expect("sync");
    let host_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert!(b.query().expect("query"));
    let ms = a.elapsed_ms(&b).expect("elapsed");
    println!("event-timed 20 chained 4096^2 bf16 matmuls: {ms:.3} ms (host {host_ms:.3} ms)");
    assert!(
        ms > 0.0 && ms <= host_ms + 0.5,
        "gpu {ms} ms vs host {host_ms} ms"
    );
    drop(y);
    let mut c = CudaEvent::new(false).expect("c");
    c.record(&s).expect("record c");
    assert!(a.elapsed_ms(&c).is_err(), "non-timing event");
}

#[test]
fn memory_stats_follow_allocations() {
    need_gpu();
    tch::Cuda::synchronize(0);
    reset_peak(0).expect("reset");
    let s0 = memory_stats(0).expect("stats");
    assert_eq!(
        s0.peak, s0.allocated,
        "reset_peak sets the peak to the current value"
    );
    let big = Tensor::zeros([64 << 20], (Kind::Float, DEV)); // 256 MiB
    let s1 = memory_stats(0).expect("stats");
    drop(big);
    let s2 = memory_stats(0).expect("stats");
    println!("memory: before {s0:?}\n        with 256 MiB {s1:?}\n        after free {s2:?}");
    assert!(s1.allocated >= s0.allocated + (256 << 20));
    assert!(s1.reserved >= s1.allocated && s1.peak >= s1.allocated);
    assert_eq!(s2.allocated, s0.allocated, "freed");
    assert!(s2.peak >= s1.allocated, "the peak remembers");
    assert!(
        s2.reserved >= s1.allocated,
        "the cache keeps the block reserved"
    );
    reset_peak(0).expect("reset");
    let s3 = memory_stats(0).expect("stats");
    assert_eq!(s3.peak, s3.allocated);
}

struct Block {
    w1: Tensor,
    w2: Tensor,
}
impl Block {
    /// Same parameters (shared storage): what a checkpointed closure captures.
    fn shallow(&self) -> Block {
        Block {
            w1: self.w1.shallow_clone(),
            w2: self.w2.shallow_clone(),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.w1).gelu("none").matmul(&self.w2) + x
    }
}

fn blocks(n: usize, width: i64, kind: Kind) -> Vec<Block> {
    (0..n)
        .map(|i| {
            let w = |p: f64| {
                (det(&[width, width], p, kind) / (width as f64).sqrt()).set_requires_grad(true)
            };
            Block {
                w1: w(i as f64),
                w2: w(i as f64 + 0.5),
            }
        })
        .collect()
}

#[test]
fn checkpoint_on_cuda_matches_plain_and_saves_memory() {
    need_gpu();
    let bs = blocks(6, 256, Kind::Double);
    let x = det(&[64, 256], 0.9, Kind::Double).set_requires_grad(true);
    let mut y = x.shallow_clone();
    for b in &bs {
        y = b.forward(&y);
    }
    y.pow_tensor_scalar(2).mean(Kind::Double).backward();
    // Free the plain graph: its AccumulateGrad nodes belong to the default stream.
    let y = y.detach();
    let gx = x.grad().copy();
    let gw: Vec<Tensor> = bs.iter().map(|b| b.w1.grad().copy()).collect();
    for b in &bs {
        let _ = b.w1.grad().zero_();
        let _ = b.w2.grad().zero_();
    }

    // Checkpointed, on a pool stream, each block its own checkpoint; record the recomputing threads.
    let s = CudaStream::from_pool(0, false).expect("pool");
    let _g = StreamGuard::new(&s).expect("guard");
    let calls = Arc::new(AtomicUsize::new(0));
    let threads = Arc::new(Mutex::new(Vec::new()));
    let x2 = det(&[64, 256], 0.9, Kind::Double).set_requires_grad(true);
    let mut y2 = x2.shallow_clone();
    for b in &bs {
        let (b, c, th) = (b.shallow(), calls.clone(), threads.clone());
        y2 = checkpoint(
            move |xs| {
                c.fetch_add(1, Ordering::SeqCst);
                th.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(std::thread::current().id());
                vec![b.forward(&xs[0])]
            },
            &[y2],
        )
        .remove(0);
    }
    let fd = (&y2 - &y).abs().max().double_value(&[]);
    assert!(fd < 1e-10, "same forward (diff {fd})");
    y2.pow_tensor_scalar(2).mean(Kind::Double).backward();
    s.synchronize().expect("sync");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        12,
        "6 forwards + 6 recomputations"
    );
    let main = std::thread::current().id();
    let th = threads.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "checkpoint on cuda: {} recomputations on a thread other than the caller's",
        th[6..].iter().filter(|t| **t != main).count()
    );
    let d = (&x2.grad() - &gx).abs().max().double_value(&[]);
    assert!(
        d < 1e-10 && gx.abs().max().double_value(&[]) > 1e-8,
        "input grad diff {d}"
    );
    for (b, want) in bs.iter().zip(&gw) {
        let d = (&b.w1.grad() - want).abs().max().double_value(&[]);
        assert!(d < 1e-10, "parameter grad diff {d}");
    }
}

#[test]
fn checkpoint_lowers_peak_memory() {
    need_gpu();
    let bs = blocks(8, 2048, Kind::Float);
    let peak_of = |ckpt: bool| -> u64 {
        tch::Cuda::synchronize(0);
        let base = memory_stats(0).expect("stats").allocated;
        reset_peak(0).expect("reset");
        let x = det(&[4096, 2048], 0.2, Kind::Float).set_requires_grad(true);
        let mut y = x.shallow_clone();
        for b in &bs {
            y = if ckpt {
                let b = b.shallow();
                checkpoint(move |xs| vec![b.forward(&xs[0])], &[y]).remove(0)
            } else {
                b.forward(&y)
            };
        }
        let loss = y.mean(Kind::Float);
        tch::Cuda::synchronize(0);
        let peak = memory_stats(0).expect("stats").peak - base;
        loss.backward();
        tch::Cuda::synchronize(0);
        peak
    };
    let plain = peak_of(false);
    let ckpt = peak_of(true);
    println!(
        "forward peak over baseline, 8 blocks of [4096x2048] f32: plain {:.0} MiB, checkpointed {:.0} MiB",
        plain as f64 / 1048576.0,
        ckpt as f64 / 1048576.0
    );
    assert!(
        ckpt * 2 < plain,
        "checkpointing keeps only block inputs: {ckpt} vs {plain}"
    );
}
