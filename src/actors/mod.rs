//! Actor kinds, one file each (DESIGN §4), and the registry that builds them.

pub mod denoising_loss;
pub mod distribution_loss;
pub mod ema;
pub mod evaluator;
pub mod flops;
pub mod latent_source;
pub mod noiser;
pub mod ode_target;
pub mod optimizer;
pub mod prompt_source;
pub mod registry;
pub mod rollout;
pub mod score;
pub mod sink;
pub mod zoo;
