//! Flow-matching schedule, noising, x0↔flow conversions and timestep sampling (spec §3).
//! Pure tensor functions: no actors, no models.

pub mod schedule;

pub use schedule::SigmaTable;
