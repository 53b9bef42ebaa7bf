//! CUDA extras that tch 0.24 lacks, through the C++ shim in csrc/ (see docs/CUDA.md):
//! * streams (`CudaStream`, `StreamGuard`), events (`CudaEvent`), `record_stream`;
//! * device properties and caching-allocator statistics (`device_description`, `memory_stats`, ...);
//! * activation checkpointing (`checkpoint`), which works on CPU and CUDA in every build, and the
//!   kept-attention pieces of selective checkpointing (`attention`).
//!
//! Without feature `cuda` the stream and event types exist with host semantics (every stream is the
//! host stream, events complete immediately and time with the host clock), so CPU code compiles and
//! runs unchanged.
pub mod attention;
pub mod checkpoint;
mod ffi;
pub mod fused;
pub mod memory;
pub mod stream;

pub use checkpoint::{checkpoint, clear_grad, try_checkpoint};
pub use memory::{
    device_count, device_description, device_properties, memlog, memlog_enabled, memory_stats,
    reset_peak, DeviceProps, MemStats,
};
pub use stream::{record_stream, CudaEvent, CudaStream, StreamGuard};

/// Whether this binary was built with the CUDA part of the shim (feature `cuda`).
pub const fn built_with_cuda() -> bool {
    cfg!(feature = "cuda")
}
