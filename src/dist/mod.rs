//! Many processes on PyTorch's own distributed engine (see docs/DISTRIBUTED.md): torchrun's
//! environment (`env`), c10d stores and process groups through the C++ shim (`group`: Gloo on
//! CPU, NCCL with feature `cuda`).
pub mod env;
mod ffi;
pub mod group;

pub use env::DistEnv;
pub use group::{BackendKind, GroupOptions, ProcessGroup, ReduceOp, Store};
