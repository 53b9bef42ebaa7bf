//! Many processes on PyTorch's own distributed engine: torchrun's environment (`env`), c10d
//! stores and process groups through the C++ shim (`group`: Gloo on CPU, NCCL with feature
//! `cuda`), and the comm layer every collective goes through (`comm`: fixed order, names,
//! sequence numbers, optional order checks, bucketed gradient all-reduce) and the data-parallel
//! hooks (`data_parallel`), and ZeRO-1's sharded optimizer state (`zero`). See
//! docs/DISTRIBUTED.md.
pub mod comm;
pub mod data_parallel;
pub mod env;
mod ffi;
pub mod group;
pub mod selftest;
pub mod shard;
pub mod zero;

pub use comm::{plan_buckets, BucketOptions, Comm, CommOptions};
pub use data_parallel::{
    ensure_process_comm, global_first_row, init_process_comm, process_comm, shard_indices,
    shared_draw, with_process_comm, GradSync,
};
pub use env::DistEnv;
pub use group::{BackendKind, GroupOptions, ProcessGroup, ReduceOp, Store};
pub use shard::ShardLayout;
pub use zero::{FullState, ZeroAdamW};
