//! The runtime: actors on threads (or one thread for `serial`), bounded channels, versioned
//! weights, the actix supervisor, keyed randomness, checkpoints and the run driver.
//! It knows nothing of models: actors (src/actors) do.

pub mod actor;
pub mod cancel;
pub mod ckpt;
pub mod exec;
mod gpu_timer;
pub mod packet;
pub mod plan;
pub mod progress;
pub mod run;
pub mod serial;
pub mod signals;
pub mod summary;
pub mod supervisor;
pub mod threaded;
pub mod weights;
pub mod wiring;

pub use actor::{Actor, ActorState, Ctx, Event};
pub use packet::{Packet, Ports, Work};
pub use plan::{Mode, Plan};
pub use run::{train, RunOptions, RunReport};
pub use wiring::{Node, Wiring};

/// Parse `cpu`, `cuda` or `cuda:i`.
pub fn parse_device(s: &str) -> anyhow::Result<tch::Device> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => Ok(tch::Device::Cuda(i)),
            None => anyhow::bail!("device `{s}`: expected cpu, cuda or cuda:<index>"),
        },
    }
}
