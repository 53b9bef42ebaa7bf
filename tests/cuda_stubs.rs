//! The host-stream semantics of src/cuda/stream.rs (documented in docs/CUDA.md). They hold in every
//! build for the host stream; without feature `cuda` every stream is the host stream.
use std::time::Duration;
use stillflow::cuda::{
    built_with_cuda, device_count, device_description, device_properties, memory_stats,
    record_stream, reset_peak, CudaEvent, CudaStream, MemStats, StreamGuard,
};
use tch::{Device, Kind, Tensor};

#[test]
fn host_stream_is_an_immediate_no_op() {
    let s = CudaStream::host();
    assert!(s.is_host());
    assert_eq!(s.id(), 0);
    assert_eq!(s.device(), Device::Cpu);
    s.set_current().expect("set_current");
    s.synchronize().expect("synchronize");
    assert!(s.query().expect("query"));
    assert!(s.raw_handle().expect("raw").is_null());
    assert_eq!(
        CudaStream::for_device(Device::Cpu, true).expect("for_device"),
        s
    );
    assert_eq!(
        CudaStream::current_for(Device::Cpu).expect("current_for"),
        s
    );
    {
        let g = StreamGuard::new(&s).expect("guard");
        assert_eq!(g.stream(), s);
    }
    let t = Tensor::ones([3], (Kind::Float, Device::Cpu));
    record_stream(&t, &s).expect("record_stream on the host stream");
}

#[test]
fn host_events_complete_at_once_and_time_with_the_host_clock() {
    let s = CudaStream::host();
    let (mut a, mut b) = (
        CudaEvent::new(true).expect("a"),
        CudaEvent::new(true).expect("b"),
    );
    assert!(
        a.query().expect("unrecorded query"),
        "an unrecorded event counts as complete"
    );
    assert!(
        a.elapsed_ms(&b).is_err(),
        "elapsed needs both events recorded"
    );
    a.record(&s).expect("record a");
    std::thread::sleep(Duration::from_millis(30));
    b.record(&s).expect("record b");
    assert!(b.query().expect("query"));
    b.synchronize().expect("synchronize");
    b.block(&s).expect("block");
    let ms = a.elapsed_ms(&b).expect("elapsed");
    assert!((30.0..2000.0).contains(&ms), "host-clock elapsed {ms} ms");
    let back = b.elapsed_ms(&a).expect("reverse elapsed");
    assert!(
        (back + ms).abs() < 1e-9,
        "reverse order gives the negative: {back} vs {ms}"
    );

    let mut c = CudaEvent::new(false).expect("c");
    c.record(&s).expect("record c");
    assert!(!c.timing());
    assert!(a.elapsed_ms(&c).is_err(), "no timing on a non-timing event");

    // Events move between threads with the tensors they guard.
    let h = std::thread::spawn(move || a.query().expect("query on another thread"));
    assert!(h.join().expect("thread"));
}

#[test]
fn without_cuda_every_stream_is_the_host_stream() {
    if built_with_cuda() {
        return; // the GPU behaviour is checked by scripts/gpu_selftest.sh
    }
    assert_eq!(device_count(), 0);
    for s in [
        CudaStream::from_pool(0, false).expect("pool"),
        CudaStream::from_pool(3, true).expect("pool hp"),
        CudaStream::current(0).expect("current"),
        CudaStream::default_stream(1).expect("default"),
        CudaStream::for_device(Device::Cuda(0), false).expect("for_device"),
    ] {
        assert_eq!(s, CudaStream::host());
    }
    assert_eq!(memory_stats(0).expect("stats"), MemStats::default());
    reset_peak(0).expect("reset_peak");
    let e = device_properties(0).err().map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|m| m.contains("`cuda` feature")),
        "{e:?}"
    );
    assert!(device_description(0).contains("`cuda` feature"));
}
