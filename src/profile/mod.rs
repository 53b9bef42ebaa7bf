//! Profiling and environment reports.

pub mod doctor;
