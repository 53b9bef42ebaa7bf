//! Profiling and environment reports: `run-pipeline doctor`, and the profile of a run
//! (`profile/trace.json`, `summary.md`, `summary.json`, `metrics.prom`), the live Prometheus
//! endpoint and the three-schedule comparison of `run-pipeline profile`. See docs/PROFILING.md.

pub mod compare;
pub mod doctor;
pub mod prom;
pub mod report;
pub mod stats;
pub mod trace;

pub use compare::{run_profile, run_profile_schedules, run_profile_with, Comparison, ScheduleRun};
pub use prom::{
    record_busy, record_queue, record_step, record_summary, serve_prometheus, PrometheusServer,
};
pub use report::{
    cuda_peak_memory, reset_peak_memory, write_profile, write_run_profile, DeviceMemory,
    ProfileExtras, ProfileSummary, QueueDepth,
};
pub use stats::{mfu, H100_BF16_PEAK_FLOPS};
pub use trace::GpuSpan;
