//! Flow-matching schedule, noising, x0↔flow conversions and timestep sampling (spec §3).
//! Pure tensor functions: no actors, no models.

pub mod flow;
pub mod schedule;
pub mod timesteps;

pub use flow::{add_noise, flow_target, flow_to_x0, sigma_broadcast, x0_to_flow};
pub use schedule::{try_warp_denoising_step, warp_denoising_step, SigmaTable};
pub use timesteps::{sample_score_timesteps, score_timestep_bounds};
