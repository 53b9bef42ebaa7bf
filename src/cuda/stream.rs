//! CUDA streams, the RAII stream guard, events and `record_stream`.
//!
//! One implementation serves both builds. A `CudaStream` is either a real c10 stream or the *host
//! stream*: the placeholder for "no CUDA stream" (CPU work, or any build without feature `cuda`).
//! On the host stream every operation is a no-op that succeeds: work issued from Rust is already
//! complete when the call returns, so there is nothing to order or wait for. Events recorded on the
//! host stream take a host timestamp (`Instant`), complete immediately, and `elapsed_ms` between two
//! of them is host wall-clock time. See docs/CUDA.md.
#[cfg(feature = "cuda")]
use super::ffi;
use super::ffi::RawStream;
use anyhow::{bail, Result};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::time::Instant;
use tch::{Device, Tensor};

/// c10::DeviceType values (c10/core/DeviceType.h).
const DEVICE_TYPE_CPU: i8 = 0;

/// A CUDA stream of c10's pool or the default stream, or the host placeholder. Plain data (c10
/// streams are never destroyed), so it is `Copy` and may be sent to any thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CudaStream {
    raw: RawStream,
}

#[cfg(feature = "cuda")]
fn device_arg(device: usize) -> Result<std::ffi::c_int> {
    let n = super::device_count();
    if device >= n {
        bail!("CUDA device {device} does not exist ({n} visible)");
    }
    Ok(device as std::ffi::c_int)
}

impl CudaStream {
    /// The host stream (no CUDA stream): all its operations are immediate no-ops.
    pub const fn host() -> Self {
        Self {
            raw: RawStream {
                id: 0,
                device_index: -1,
                device_type: DEVICE_TYPE_CPU,
            },
        }
    }

    pub fn is_host(&self) -> bool {
        self.raw.device_type == DEVICE_TYPE_CPU
    }

    /// A stream of c10's global pool on `device` (32 per priority, handed out round robin; take one
    /// per actor at setup). Pool streams do not synchronise with the default stream: order them with
    /// events. Without feature `cuda`: the host stream.
    pub fn from_pool(device: usize, high_priority: bool) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            let d = device_arg(device)?;
            let mut raw = Self::host().raw;
            // SAFETY: out-pointer to a repr(C) struct on our stack.
            let rc = unsafe { ffi::sf_stream_from_pool(d, high_priority as _, &mut raw) };
            ffi::check(rc, "getStreamFromPool")?;
            Ok(Self { raw })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (device, high_priority);
            Ok(Self::host())
        }
    }

    /// This thread's current stream on `device` (thread-local in c10). Without `cuda`: host stream.
    pub fn current(device: usize) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            let d = device_arg(device)?;
            let mut raw = Self::host().raw;
            // SAFETY: as in from_pool.
            let rc = unsafe { ffi::sf_stream_current(d, &mut raw) };
            ffi::check(rc, "getCurrentCUDAStream")?;
            Ok(Self { raw })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            Ok(Self::host())
        }
    }

    /// The default (legacy, id 0) stream of `device`. Without `cuda`: host stream.
    pub fn default_stream(device: usize) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            let d = device_arg(device)?;
            let mut raw = Self::host().raw;
            // SAFETY: as in from_pool.
            let rc = unsafe { ffi::sf_stream_default(d, &mut raw) };
            ffi::check(rc, "getDefaultCUDAStream")?;
            Ok(Self { raw })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            Ok(Self::host())
        }
    }

    /// A pool stream for a tch device: the host stream for `Device::Cpu` (or `Mps`/`Vulkan`), so actor
    /// code can take "its stream" without caring where it runs.
    pub fn for_device(device: Device, high_priority: bool) -> Result<Self> {
        match device {
            Device::Cuda(i) => Self::from_pool(i, high_priority),
            _ => Ok(Self::host()),
        }
    }

    /// The current stream for a tch device (host stream for non-CUDA devices).
    pub fn current_for(device: Device) -> Result<Self> {
        match device {
            Device::Cuda(i) => Self::current(i),
            _ => Ok(Self::host()),
        }
    }

    /// Makes this the calling thread's current stream on its device (other threads are unaffected;
    /// the current *device* is not changed: prefer `StreamGuard`, which sets both).
    pub fn set_current(&self) -> Result<()> {
        if self.is_host() {
            return Ok(());
        }
        #[cfg(feature = "cuda")]
        {
            // SAFETY: plain-data argument.
            ffi::check(
                unsafe { ffi::sf_stream_set_current(self.raw) },
                "setCurrentCUDAStream",
            )
        }
        #[cfg(not(feature = "cuda"))]
        unreachable!("only host streams exist without feature `cuda`")
    }

    /// Blocks the host until all work queued on this stream is done.
    pub fn synchronize(&self) -> Result<()> {
        if self.is_host() {
            return Ok(());
        }
        #[cfg(feature = "cuda")]
        {
            // SAFETY: plain-data argument.
            ffi::check(
                unsafe { ffi::sf_stream_synchronize(self.raw) },
                "stream synchronize",
            )
        }
        #[cfg(not(feature = "cuda"))]
        unreachable!("only host streams exist without feature `cuda`")
    }

    /// True when all work queued on this stream is done (always true for the host stream).
    pub fn query(&self) -> Result<bool> {
        if self.is_host() {
            return Ok(true);
        }
        #[cfg(feature = "cuda")]
        {
            let mut done = 0;
            // SAFETY: out-pointer on our stack.
            ffi::check(
                unsafe { ffi::sf_stream_query(self.raw, &mut done) },
                "stream query",
            )?;
            Ok(done != 0)
        }
        #[cfg(not(feature = "cuda"))]
        unreachable!("only host streams exist without feature `cuda`")
    }

    /// c10's stream id (0 for the default stream and for the host stream).
    pub fn id(&self) -> i64 {
        self.raw.id
    }

    /// `Device::Cuda(i)`, or `Device::Cpu` for the host stream.
    pub fn device(&self) -> Device {
        if self.is_host() {
            Device::Cpu
        } else {
            Device::Cuda(self.raw.device_index.max(0) as usize)
        }
    }

    /// The `cudaStream_t` (for interop, e.g. cudarc); null for the host stream.
    pub fn raw_handle(&self) -> Result<*mut c_void> {
        if self.is_host() {
            return Ok(std::ptr::null_mut());
        }
        #[cfg(feature = "cuda")]
        {
            let mut p = std::ptr::null_mut();
            // SAFETY: out-pointer on our stack.
            ffi::check(
                unsafe { ffi::sf_stream_raw(self.raw, &mut p) },
                "stream handle",
            )?;
            Ok(p)
        }
        #[cfg(not(feature = "cuda"))]
        unreachable!("only host streams exist without feature `cuda`")
    }
}

/// RAII: makes `stream` (and its device) current on this thread; restores both on drop. Not `Send`:
/// the state it changes is thread-local. A guard for the host stream does nothing.
pub struct StreamGuard {
    handle: *mut c_void,
    stream: CudaStream,
    _not_send: PhantomData<*const ()>,
}

impl StreamGuard {
    pub fn new(stream: &CudaStream) -> Result<Self> {
        #[cfg(feature = "cuda")]
        let handle = if stream.is_host() {
            std::ptr::null_mut()
        } else {
            let mut h = std::ptr::null_mut();
            // SAFETY: out-pointer on our stack; freed in Drop.
            let rc = unsafe { ffi::sf_stream_guard_new(stream.raw, &mut h) };
            ffi::check(rc, "CUDAStreamGuard")?;
            h
        };
        #[cfg(not(feature = "cuda"))]
        let handle = std::ptr::null_mut();
        Ok(Self {
            handle,
            stream: *stream,
            _not_send: PhantomData,
        })
    }

    pub fn stream(&self) -> CudaStream {
        self.stream
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            #[cfg(feature = "cuda")]
            // SAFETY: created by sf_stream_guard_new on this thread (the guard is !Send).
            unsafe {
                ffi::sf_stream_guard_free(self.handle)
            };
        }
    }
}

/// Where an event was last recorded.
#[derive(Debug)]
enum Recorded {
    Never,
    Host(Instant),
    #[cfg(feature = "cuda")]
    Gpu,
}

/// A CUDA event (c10::cuda::CUDAEvent, created lazily on the first GPU record), or its host
/// counterpart when recorded on the host stream. `Send`: hand it over with the tensors it guards.
pub struct CudaEvent {
    #[cfg(feature = "cuda")]
    handle: *mut c_void,
    timing: bool,
    recorded: Recorded,
}

// SAFETY: the C++ event is owned exclusively by this value; CUDA event calls are thread-safe.
unsafe impl Send for CudaEvent {}

impl CudaEvent {
    /// `timing`: whether `elapsed_ms` may be used (timing events cost a little more on the GPU).
    pub fn new(timing: bool) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            let mut handle = std::ptr::null_mut();
            // SAFETY: out-pointer on our stack; freed in Drop. Creates no CUDA object yet.
            ffi::check(
                unsafe { ffi::sf_event_new(timing as _, &mut handle) },
                "CUDAEvent",
            )?;
            Ok(Self {
                handle,
                timing,
                recorded: Recorded::Never,
            })
        }
        #[cfg(not(feature = "cuda"))]
        Ok(Self {
            timing,
            recorded: Recorded::Never,
        })
    }

    pub fn timing(&self) -> bool {
        self.timing
    }

    /// Records the event after all work queued so far on `stream` (host stream: takes a timestamp).
    pub fn record(&mut self, stream: &CudaStream) -> Result<()> {
        if stream.is_host() {
            self.recorded = Recorded::Host(Instant::now());
            return Ok(());
        }
        #[cfg(feature = "cuda")]
        {
            // SAFETY: live handle; plain-data stream.
            ffi::check(
                unsafe { ffi::sf_event_record(self.handle, stream.raw) },
                "event record",
            )?;
            self.recorded = Recorded::Gpu;
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        unreachable!("only host streams exist without feature `cuda`")
    }

    /// Makes `stream` wait (on the GPU, the host does not block) for the work this event covers.
    /// A no-op for the host stream, for a host-recorded event and for a never-recorded event.
    pub fn block(&self, stream: &CudaStream) -> Result<()> {
        #[cfg(feature = "cuda")]
        if matches!(self.recorded, Recorded::Gpu) && !stream.is_host() {
            // SAFETY: live handle; plain-data stream.
            return ffi::check(
                unsafe { ffi::sf_event_block(self.handle, stream.raw) },
                "event block",
            );
        }
        let _ = stream;
        Ok(())
    }

    /// Blocks the host until the recorded work is done (immediate for host or unrecorded events).
    pub fn synchronize(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if matches!(self.recorded, Recorded::Gpu) {
            // SAFETY: live handle.
            return ffi::check(
                unsafe { ffi::sf_event_synchronize(self.handle) },
                "event synchronize",
            );
        }
        Ok(())
    }

    /// True when the recorded work is done; true for host-recorded and never-recorded events (as
    /// cudaEventQuery on an unrecorded event).
    pub fn query(&self) -> Result<bool> {
        #[cfg(feature = "cuda")]
        if matches!(self.recorded, Recorded::Gpu) {
            let mut done = 0;
            // SAFETY: live handle; out-pointer on our stack.
            ffi::check(
                unsafe { ffi::sf_event_query(self.handle, &mut done) },
                "event query",
            )?;
            return Ok(done != 0);
        }
        Ok(true)
    }

    /// Milliseconds from `self` to `end`. Both need timing enabled and must have been recorded on the
    /// same kind of stream; GPU events must be complete (call `end.synchronize()` first, or read it a
    /// step later). Host events give host wall-clock time.
    pub fn elapsed_ms(&self, end: &CudaEvent) -> Result<f64> {
        if !self.timing || !end.timing {
            bail!("elapsed_ms needs two events created with timing enabled");
        }
        match (&self.recorded, &end.recorded) {
            (Recorded::Host(a), Recorded::Host(b)) => {
                let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
                Ok(if b >= a {
                    ms(b.duration_since(*a))
                } else {
                    -ms(a.duration_since(*b))
                })
            }
            #[cfg(feature = "cuda")]
            (Recorded::Gpu, Recorded::Gpu) => {
                let mut ms = 0f32;
                // SAFETY: live handles; out-pointer on our stack.
                ffi::check(
                    unsafe { ffi::sf_event_elapsed_ms(self.handle, end.handle, &mut ms) },
                    "event elapsed_time",
                )?;
                Ok(ms as f64)
            }
            (Recorded::Never, _) | (_, Recorded::Never) => {
                bail!("elapsed_ms: both events must be recorded first")
            }
            #[cfg(feature = "cuda")]
            _ => bail!("elapsed_ms: one event was recorded on a GPU stream, the other on the host"),
        }
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        if !self.handle.is_null() {
            // SAFETY: created by sf_event_new, owned exclusively by self.
            unsafe { ffi::sf_event_free(self.handle) };
        }
    }
}

/// Tells the CUDA caching allocator that `stream` uses `t`'s memory, so the block is not reused
/// before the work queued on `stream` so far is done (the consumer side of a cross-stream hand-off:
/// `event.block(&mine)?; record_stream(&t, &mine)?`). A no-op for the host stream and for tensors
/// not on a CUDA device (the CUDA caching allocator does not manage them).
pub fn record_stream(t: &Tensor, stream: &CudaStream) -> Result<()> {
    if stream.is_host() || !t.device().is_cuda() {
        return Ok(());
    }
    #[cfg(feature = "cuda")]
    {
        // SAFETY: live tensor; plain-data stream.
        ffi::check(
            unsafe { ffi::sf_record_stream(t.as_ptr(), stream.raw) },
            "record_stream",
        )
    }
    #[cfg(not(feature = "cuda"))]
    unreachable!("only host streams exist without feature `cuda`")
}
