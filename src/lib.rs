//! stillflow: distill diffusion models into few-step generators (DMD, SiD, Self-Forcing) with a
//! declarative dataflow graph of actors on libtorch.
//!
//! Dependencies point downward: bin → runtime → actors → (losses, models, optim) → diffusion → tch.
//! `graph` and `config` know nothing of tensors.

pub mod actors;
pub mod checkpoint;
pub mod config;
pub mod cuda;
pub mod diffusion;
pub mod dist;
pub mod eval;
pub mod graph;
pub mod losses;
pub mod models;
pub mod optim;
pub mod profile;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod sample;
pub mod text;
pub mod video;
