//! Many processes on PyTorch's own distributed engine (see docs/DISTRIBUTED.md): torchrun's
//! environment (`env`).
pub mod env;

pub use env::DistEnv;
